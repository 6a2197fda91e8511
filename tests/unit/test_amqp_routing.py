"""
Unit tests for L{peatio_ws.amqp.routing}: the event contract's pure helpers
(moved from test_amqp unchanged).
"""

from __future__ import annotations

import orjson
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.amqp import MAX_UID_BYTES, binding_key, event_label, parse_routing_key, valid_json, valid_uid


class HelperTests(SynchronousTestCase):
    """The pure helpers: uids, routing keys, labels, JSON."""

    def test_valid_uid(self) -> None:
        """Only uids that make a literal topic routing key are bindable."""
        good = ["ID1A2B3C4D5E", "u", "user-1_x", "Ü", "x" * MAX_UID_BYTES]
        bad = ["", ".", "a.b", "ID*", "*", "#", "a#b", "x" * (MAX_UID_BYTES + 1), "é" * 200, "\ud800"]
        for uid in good:
            self.assertTrue(valid_uid(uid), uid)
        for uid in bad:
            self.assertFalse(valid_uid(uid), uid)

    def test_binding_key(self) -> None:
        """The binding is private.<uid>.*, as UTF-8 bytes."""
        self.assertEqual(binding_key("ID1"), b"private.ID1.*")
        self.assertEqual(binding_key("币"), "private.币.*".encode())

    def test_parse_routing_key(self) -> None:
        """Exactly private.<uid>.<event> with both parts non-empty, else None."""
        table: list[tuple[bytes, tuple[str, str] | None]] = [
            (b"private.ID1.order", ("ID1", "order")),
            (b"private.ID1.trade", ("ID1", "trade")),
            (b"private.ID1.deposit_address", ("ID1", "deposit_address")),
            ("private.币.order".encode(), ("币", "order")),
            (b"public.btcusd.trades", None),
            (b"public.ID1.order", None),
            (b"Private.ID1.order", None),
            (b"private.ID1", None),
            (b"private", None),
            (b"", None),
            (b"private.ID1.order.extra", None),
            (b"private..order", None),
            (b"private.ID1.", None),
            (b".ID1.order", None),
            (b"private.\xff.order", None),
            (b"private.ID1.\xfe", None),
        ]
        for key, expected in table:
            self.assertEqual(parse_routing_key(key), expected, key)

    def test_event_label(self) -> None:
        """Event names are labels only when they look like one; else "other"."""
        self.assertEqual(event_label("order"), "order")
        self.assertEqual(event_label("deposit_address"), "deposit_address")
        self.assertEqual(event_label("x" * 32), "x" * 32)
        for weird in ["Order", "x" * 33, "order1", "or-der", "", "ордер", "order\n"]:
            self.assertEqual(event_label(weird), "other", weird)

    def test_valid_json(self) -> None:
        """Any single JSON value in UTF-8; nothing a browser would reject."""
        for body in [b"{}", b'{"a":1}', b"[1,2]", b'"s"', b"1", b"null", b' {"a": "\xe5\xb8\x81"} \n']:
            self.assertTrue(valid_json(body), body)
        bad = [
            b"",
            b"not json",
            b"{",
            b'{"a":1}x',
            b'{"a":NaN}',
            b"Infinity",
            b"\xef\xbb\xbf{}",
            b'{"a":"\xff"}',
            '{"a":1}'.encode("utf-16"),
            b"[" * 100000 + b"]" * 100000,
        ]
        for body in bad:
            self.assertFalse(valid_json(body), body[:20])

    def test_valid_json_second_look(self) -> None:
        """
        JSON that orjson refuses but is valid (an escaped lone surrogate, a
        number beyond a double) is still forwardable: the second look says so.
        """
        for body in [b'"\\ud800"', b'{"a":"\\udfff"}', b"1e400", b'{"price":-1e999}']:
            with self.assertRaises(orjson.JSONDecodeError):
                orjson.loads(body)
            self.assertTrue(valid_json(body), body)

