"""
Unit tests for L{peatio_ws.redis.keys}: the revoked key and the messages
accepted on the revocations channel.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.redis import parse_revocation, revocation_message, revoked_key


class ParseRevocationTests(SynchronousTestCase):
    """The messages accepted on the revocations channel."""

    def test_jti(self) -> None:
        """A JSON object with a jti names that token."""
        self.assertEqual(parse_revocation(b'{"jti":"abc"}'), [("jti", "abc")])

    def test_uid(self) -> None:
        """A JSON object with a uid names that member; str input works too."""
        self.assertEqual(parse_revocation('{"uid": "ID123"}'), [("uid", "ID123")])

    def test_both_and_extra_keys(self) -> None:
        """Both names are honoured and extra keys (a reason, a time) are ignored."""
        payload = json.dumps({"uid": "U", "jti": "J", "reason": "stolen", "at": 1}).encode()
        self.assertEqual(parse_revocation(payload), [("jti", "J"), ("uid", "U")])

    def test_non_ascii(self) -> None:
        """Values are UTF-8 text, not just ASCII."""
        self.assertEqual(parse_revocation('{"uid":"Ünïcødé"}'.encode()), [("uid", "Ünïcødé")])

    def test_rejected(self) -> None:
        """Everything else is refused with a short reason."""
        cases: list[tuple[Any, str]] = [
            (b"\xff\xfe", "not UTF-8"),
            (b"jti=abc", "not JSON"),
            (b"", "not JSON"),
            (b'["jti", "abc"]', "not a JSON object"),
            (b"42", "not a JSON object"),
            (b"{}", "names neither jti nor uid"),
            (b'{"sub":"x"}', "names neither jti nor uid"),
            (b'{"jti":""}', "jti is not a non-blank string"),
            (b'{"jti":"   "}', "jti is not a non-blank string"),
            (b'{"uid":null}', "uid is not a non-blank string"),
            (b'{"uid":123}', "uid is not a non-blank string"),
            (b'{"jti":"ok","uid":["x"]}', "uid is not a non-blank string"),
            (7, "not text"),
        ]
        for payload, reason in cases:
            with self.assertRaises(ValueError, msg=repr(payload)) as caught:
                parse_revocation(payload)
            self.assertEqual(str(caught.exception), reason, repr(payload))

    def test_revocation_message_round_trip(self) -> None:
        """What the CLI publishes is what the service parses."""
        self.assertEqual(parse_revocation(revocation_message(jti="J1")), [("jti", "J1")])
        self.assertEqual(parse_revocation(revocation_message(uid="U1")), [("uid", "U1")])
        self.assertRaises(ValueError, revocation_message)
        self.assertRaises(ValueError, revocation_message, jti="J", uid="U")

    def test_key(self) -> None:
        """The revoked key is the documented name."""
        self.assertEqual(revoked_key("abc"), "peatio-ws:revoked:abc")
