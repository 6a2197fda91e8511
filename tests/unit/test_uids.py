"""
Tests for L{peatio_ws.uids}: which member uids the daemon can serve, with
every boundary of the rule pinned (the byte bound, both ends of each
refused character range).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.uids import MAX_UID_BYTES, valid_uid


def of_bytes(size: int, tail: str = "") -> str:
    """A uid of exactly C{size} bytes of UTF-8: ASCII padding, then C{tail}."""
    return "u" * (size - len(tail.encode("utf-8"))) + tail


class ValidUidTests(SynchronousTestCase):
    def test_bound(self) -> None:
        """The binding C{private.<uid>.*} is at most 255 bytes, an AMQP shortstr: 245 bytes of uid."""
        self.assertEqual(MAX_UID_BYTES, 245)
        self.assertEqual(len(b"private." + of_bytes(MAX_UID_BYTES).encode() + b".*"), 255)

    def test_bytes_not_characters(self) -> None:
        """The bound counts UTF-8 bytes: exactly at it is served, one byte over is not."""
        for tail in ("", "é", "中", "😀"):
            self.assertTrue(valid_uid(of_bytes(MAX_UID_BYTES, tail)), tail)
            self.assertFalse(valid_uid(of_bytes(MAX_UID_BYTES + 1, tail)), tail)
        # Fewer characters than the bound, more bytes.
        self.assertFalse(valid_uid("é" * 123))
        self.assertTrue(valid_uid("é" * 122))

    def test_length_in_characters(self) -> None:
        """More characters than the bound is refused whatever they are."""
        self.assertTrue(valid_uid("u" * MAX_UID_BYTES))
        self.assertFalse(valid_uid("u" * (MAX_UID_BYTES + 1)))

    def test_empty(self) -> None:
        self.assertFalse(valid_uid(""))

    def test_topic_specials(self) -> None:
        """".", "*" and "#" would make the binding a pattern: refused wherever they are."""
        for special in ".*#":
            for uid in (special, f"a{special}", f"{special}a", f"a{special}b"):
                self.assertFalse(valid_uid(uid), uid)

    def test_control_characters(self) -> None:
        """C0, DEL and C1 refused; the characters just outside each range served."""
        for code in (0x00, 0x0A, 0x0D, 0x1F, 0x7F, 0x80, 0x9F):
            self.assertFalse(valid_uid(f"ID{chr(code)}1"), hex(code))
        for code in (0x20, 0x7E, 0xA0):
            self.assertTrue(valid_uid(f"ID{chr(code)}1"), hex(code))

    def test_surrogates(self) -> None:
        """Lone surrogates (no UTF-8 encoding) refused; the code points around them served."""
        for code in (0xD800, 0xDBFF, 0xDC00, 0xDFFF):
            self.assertFalse(valid_uid(f"ID{chr(code)}"), hex(code))
        for code in (0xD7FF, 0xE000, 0xFFFD, 0x10FFFF):
            self.assertTrue(valid_uid(f"ID{chr(code)}"), hex(code))

    def test_barong_uids(self) -> None:
        """What Barong issues, and other printable ids, are served."""
        for uid in ("ID1A2B3C4D5E", "u", "user-1_x", "Ü", "币", "a b", "a/b:c@d"):
            self.assertTrue(valid_uid(uid), uid)
