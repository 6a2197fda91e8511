"""
Tests for L{peatio_ws.remembered} (the tokens a process verified, left to
the next process) and L{peatio_ws.statefile} (how such a file is written
and taken), and for the verifier's side: L{TokenVerifier.remembered},
L{TokenVerifier.adopt} and L{TokenVerifier.settings_digest}.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws import remembered, statefile
from peatio_ws.auth import Claims, TokenVerifier
from peatio_ws.remembered import FORMAT, Remembered, RememberedError
from peatio_ws.testing import generate_rsa_key, make_token, rsa_key, settings_for_tests

NOW = 1_700_000_000.0
DIGEST = hashlib.sha256(b"a token").digest()


def document(**fields: Any) -> bytes:
    tokens = [[DIGEST.hex(), "U1", "J", None]]
    raw: dict[str, Any] = {"format": FORMAT, "settings": "s", "left_at": NOW, "tokens": tokens}
    raw.update(fields)
    return json.dumps(raw).encode()


class FormatTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """What is written is read back: digests, uid, jti, expiry (or none), in order."""
        tokens = [(DIGEST, Claims("ID1", "j-1", NOW + 60.5)), (bytes(32), Claims("ID2", "j-2", None))]
        data = Remembered("abc", tokens, NOW).to_json()
        self.assertEqual(Remembered.from_json(data), Remembered("abc", tokens, NOW))

    def test_refused(self) -> None:
        """Each malformed part is named in one line."""
        cases = {
            b"[]": "not a JSON object",
            b"{": "not JSON",
            document(format=2): "format 2, this version reads 1",
            document(settings=None): "settings: missing or not a string",
            document(left_at="now"): "left_at: missing or not a number",
            document(left_at=True): "left_at: missing or not a number",
            document(tokens={}): "tokens: missing or not a list",
        }
        bad_entries = [
            [DIGEST.hex()[:-2], "U1", "J", None],
            ["zz" * 32, "U1", "J", None],
            [DIGEST.hex(), "U.1", "J", None],
            [DIGEST.hex(), "U1", " ", None],
            [DIGEST.hex(), "U1", "J", "soon"],
            [DIGEST.hex(), "U1", "J", float("nan")],
            [DIGEST.hex(), "U1", "J"],
            "entry",
        ]
        for entry in bad_entries:
            cases[document(tokens=[[DIGEST.hex(), "U1", "J", 1.0], entry])] = (
                "tokens[1]: not [SHA-256 hex, uid, jti, expiry or null]"
            )
        for data, message in cases.items():
            self.assertEqual(str(self.assertRaises(RememberedError, Remembered.from_json, data)), message, data)

    def test_take_and_leave(self) -> None:
        """leave writes a file of the user's only; take reads it once, then there is none."""
        path = os.path.join(self.mktemp() + "-dir", "tokens.json")
        os.makedirs(os.path.dirname(path))
        self.assertIsNone(remembered.take(path))
        count = remembered.leave(path, "abc", [(DIGEST, Claims("ID1", "j", None))], NOW)
        self.assertEqual(count, 1)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(remembered.take(path), Remembered("abc", [(DIGEST, Claims("ID1", "j", None))], NOW))
        self.assertIsNone(remembered.take(path))
        self.assertEqual(os.listdir(os.path.dirname(path)), [])

    def test_file_errors(self) -> None:
        """A file too large is refused and removed; a directory that is gone cannot be written."""
        path = os.path.join(self.mktemp() + "-dir", "tokens.json")
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(b" " * (remembered.MAX_BYTES + 1))
        error = self.assertRaises(RememberedError, remembered.take, path)
        self.assertEqual(str(error), f"larger than {remembered.MAX_BYTES} bytes")
        self.assertFalse(os.path.exists(path))
        os.rmdir(os.path.dirname(path))
        error = self.assertRaises(RememberedError, remembered.leave, path, "abc", [], NOW)
        self.assertTrue(str(error).startswith("cannot write it: "), str(error))


class StateFileTests(SynchronousTestCase):
    def test_whole_or_nothing(self) -> None:
        """A write that fails leaves neither the file nor its temporary file."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "state.json")
        os.mkdir(path)  # a directory where the file should go: the rename fails
        self.assertRaises(statefile.StateFileError, statefile.leave, path, b"data")
        self.assertEqual(os.listdir(directory), ["state.json"])

    def test_replaces(self) -> None:
        """A second write replaces the first, whole."""
        path = os.path.join(self.mktemp(), "state.json")
        os.makedirs(os.path.dirname(path))
        statefile.leave(path, b"first, and longer")
        statefile.leave(path, b"second")
        self.assertEqual(statefile.take(path, 100), b"second")

    def test_exactly_the_bound(self) -> None:
        """A file of exactly max_bytes is taken; one byte more is not."""
        path = os.path.join(self.mktemp(), "state.json")
        os.makedirs(os.path.dirname(path))
        statefile.leave(path, b"x" * 10)
        self.assertEqual(statefile.take(path, 10), b"x" * 10)
        statefile.leave(path, b"x" * 11)
        self.assertRaises(statefile.StateFileError, statefile.take, path, 10)


class VerifierSideTests(SynchronousTestCase):
    def verifier(self, **overrides: Any) -> TokenVerifier:
        clock = Clock()
        clock.advance(NOW)
        self.clock = clock
        return settings_for_tests(**overrides).token_verifier(clock)

    def test_settings_digest(self) -> None:
        """The same settings give the same digest; another key, algorithm list, issuer, audience or leeway not."""
        same = self.verifier().settings_digest
        self.assertEqual(self.verifier().settings_digest, same)
        others = [
            self.verifier(jwt_issuer="barong"),
            self.verifier(jwt_audience=("other",)),
            self.verifier(jwt_expiration_leeway=1.0),
            self.verifier(jwt_not_before_leeway=1.0),
            self.verifier(jwt_issued_at_leeway=1.0),
            TokenVerifier(rsa_key().public_key(), ["RS256", "PS256"], Clock()),
            TokenVerifier(generate_rsa_key().public_key(), ["RS256"], Clock()),
        ]
        digests = {v.settings_digest for v in others}
        self.assertEqual(len(digests), len(others))
        self.assertNotIn(same, digests)

    def test_remembered_and_adopted(self) -> None:
        """What one verifier remembers (least recent first, unexpired), another adopts in the same order."""
        first = self.verifier()
        a, b, c = (make_token(now=NOW, jti=f"J-{n}", exp=NOW + 10 * (n + 1)) for n in range(3))
        for token in (a, b, c, a):
            first.verify(token)
        self.clock.advance(10)  # a (10 s) has expired; b (20 s) and c (30 s) have not
        digests = [digest for digest, _ in first.remembered()]
        self.assertEqual(digests, [hashlib.sha256(t.encode()).digest() for t in (b, c)])
        second = TokenVerifier(rsa_key().public_key(), ["RS256"], self.clock, remember=1)
        self.assertEqual(second.adopt(first.remembered()), 1)
        self.assertEqual([claims.jti for _, claims in second.remembered()], ["J-2"])
