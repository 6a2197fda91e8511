"""
Tests for L{bench.lifefloor}, the bare Twisted server that is the floor of a
connection's life: it must do on the wire what the daemon does for one life
(a correct 101, the challenge, the reply to a token, the close answered), or
the floor it measures is not the same life.
"""

from __future__ import annotations

import base64
import time

from twisted.internet.protocol import Factory
from twisted.trial.unittest import SynchronousTestCase

from bench.lifefloor import Life, rs256_check
from peatio_ws.testing import Client, make_token, public_key_pem, rsa_key
from peatio_ws.testing.frames import CLOSE, close_payload


def _factory(check: bool) -> Factory:
    class Checked(Life):
        verify = staticmethod(rs256_check(public_key_pem(rsa_key()).encode())) if check else None

    return Factory.forProtocol(Checked)


class LifeFloorTests(SynchronousTestCase):
    def test_upgrade_accept_key(self) -> None:
        """The 101 carries RFC 6455's accept key for the request's key (the RFC's own example), then the challenge."""
        client = Client.connect(_factory(False))
        self.assertIn(b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", client.transport.value())
        [challenge] = client.messages()
        self.assertEqual(set(challenge), {"challenge"})

    def test_life(self) -> None:
        """A valid RS256 token is answered Authenticated.; the client's close is answered and TCP closed."""
        client = Client.connect(_factory(True))
        client.messages()
        client.send_json({"jwt": "Bearer " + make_token(now=time.time(), exp=None)})
        self.assertEqual(client.messages(), [{"success": {"message": "Authenticated."}}])
        client.send(close_payload(1000), CLOSE)
        self.assertEqual(client.close_code(), 1000)
        self.assertTrue(client.transport.disconnecting)

    def test_bad_signature(self) -> None:
        """A token whose signature does not verify ends the connection unanswered."""
        client = Client.connect(_factory(True))
        client.messages()
        head, body, _ = make_token(now=time.time(), exp=None).split(".")
        forged = base64.urlsafe_b64encode(b"\0" * 256).rstrip(b"=").decode()
        client.send_json({"jwt": f"Bearer {head}.{body}.{forged}"})
        self.assertEqual(client.messages(), [])
        self.assertTrue(client.transport.disconnecting)
