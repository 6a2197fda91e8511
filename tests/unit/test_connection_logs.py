"""
The log lines of a connection (issue 16, docs/deploy.md "A trader got
nothing"): every line carries the connection id, the peer, the dialect and,
once known, the uid; every connection that opened gets one close line saying
who closed it, the code and the reason, on every close path; an
authentication failure names the rule, never the token; a same-uid refresh
logs once. On Twisted's fakes, with a fake clock.
"""

from __future__ import annotations

import json
import re
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry
from peatio_ws.testing import make_token, settings_for_tests
from peatio_ws.testing.factory import stream_factory
from peatio_ws.testing.frames import CLOSE, PING, client_frame, close_payload
from peatio_ws.testing.wsclient import Client
from peatio_ws.websocket import CloseCode
from peatio_ws.websocket.factory import new_id_prefix

REJECTED = "peatio_ws_connections_rejected_total"

AUTHENTICATED = {"success": {"message": "Authenticated."}}


class ConnectionLogTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []

        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "peatio_ws.protocol":
                self.events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.build()

    def build(self, **overrides: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.settings = settings_for_tests(**overrides)
        self.metrics = Metrics()
        self.registry = Registry(self.metrics)
        self.factory = stream_factory(self.settings, self.clock, registry=self.registry, metrics=self.metrics)

    def connect(self, **kw: Any) -> Client:
        client = Client.connect(self.factory, **kw)
        self.addCleanup(client.lose)
        client.messages()
        return client

    def login(self, client: Client, uid: str = "ID1A2B3C4D5E", **claims: Any) -> str:
        token = make_token(uid=uid, now=self.clock.seconds(), **claims)
        client.send_json({"jwt": "Bearer " + token})
        self.assertEqual(client.messages(), [AUTHENTICATED])
        return token

    def lines(self, containing: str = "") -> list[tuple[str, dict[str, Any]]]:
        """(text, event) of every line logged so far whose text contains C{containing}."""
        out = [(formatEvent(e), e) for e in self.events]
        return [(text, e) for text, e in out if containing in text]

    def close_line(self, client: Client) -> dict[str, Any]:
        """The one close line of C{client}'s connection."""
        conn_id = client.protocol.conn_id
        found = [e for text, e in self.lines(" closed by ") if e.get("conn_id") == conn_id]
        self.assertEqual(len(found), 1, [t for t, _ in self.lines()])
        return found[0]

    def assert_close(self, event: dict[str, Any], by: str, code: int, reason: str, uid: str | None = None) -> None:
        self.assertEqual((event["by"], event["code"], event["reason"]), (by, code, reason))
        self.assertEqual(event.get("uid"), uid)
        self.assertEqual(event["dialect"], "legacy")
        self.assertIn("127.0.0.1", event["peer"])
        text = formatEvent(event)
        self.assertIn(f"closed by {by}: {code} {reason}".rstrip(), text)
        if uid is not None:
            self.assertIn(f" of {uid} ", text)


class ConnectionIdTests(ConnectionLogTestCase):
    def test_prefix_and_counter(self) -> None:
        """Ids are "<random prefix>-<n>": one prefix per factory (process), a counter after it."""
        a, b = self.connect(), self.connect()
        prefix, n = a.protocol.conn_id.rsplit("-", 1)
        self.assertRegex(prefix, r"^[a-z2-7]{8}$")
        self.assertEqual(b.protocol.conn_id, f"{prefix}-{int(n) + 1}")

    def test_unique_across_processes(self) -> None:
        """Another process (another factory, or a restart) has another prefix."""
        first = self.connect().protocol.conn_id
        self.build()
        self.assertNotEqual(self.connect().protocol.conn_id, first)
        self.assertEqual(len({new_id_prefix() for _ in range(1000)}), 1000)


class LineFieldTests(ConnectionLogTestCase):
    def test_open_line(self) -> None:
        """The open line carries the id, the peer and the dialect, as fields and in the text."""
        client = self.connect()
        [(text, event)] = self.lines(" opened")
        self.assertEqual(event["conn_id"], client.protocol.conn_id)
        self.assertEqual(event["dialect"], "legacy")
        self.assertEqual(event["peer"], "tcp4:127.0.0.1:50000")
        self.assertNotIn("uid", event)
        self.assertEqual(text, f"connection {client.protocol.conn_id} from tcp4:127.0.0.1:50000 (legacy) opened")

    def test_uid_once_known(self) -> None:
        """After authentication, lines carry the uid."""
        client = self.connect()
        self.login(client, uid="IDAAAAAAAAAA")
        [(text, event)] = self.lines(" authenticated")
        self.assertEqual(event["uid"], "IDAAAAAAAAAA")
        head = f"connection {client.protocol.conn_id} from tcp4:127.0.0.1:50000 (legacy)"
        self.assertEqual(text, f"{head} authenticated as IDAAAAAAAAAA")
        client.send_json({"jwt": "Bearer x.y.z"})
        [(text, event)] = self.lines("authentication failed")
        self.assertEqual(event["uid"], "IDAAAAAAAAAA")
        self.assertTrue(text.endswith("authentication failed: malformed (was IDAAAAAAAAAA)"), text)

    def test_failure_names_the_rule_never_the_token(self) -> None:
        """A failed authentication says which rule failed; the token is nowhere in the log."""
        client = self.connect()
        token = make_token(uid="IDAAAAAAAAAA", now=self.clock.seconds(), aud="someone-else")
        client.send_json({"jwt": "Bearer " + token})
        [(text, event)] = self.lines("authentication failed")
        self.assertEqual(event["reason"], "audience")
        self.assertIn("authentication failed: audience", text)
        everything = json.dumps([(t, {k: str(v) for k, v in e.items()}) for t, e in self.lines()])
        self.assertNotIn(token.split(".")[1], everything)
        self.assertNotIn(token.split(".")[2][:20], everything)

    def test_same_uid_refresh_logs_once(self) -> None:
        """A fresh token for the same member: one line, "refreshed its token"."""
        client = self.connect()
        self.login(client, uid="IDAAAAAAAAAA", jti="J1")
        before = len(self.events)
        self.login(client, uid="IDAAAAAAAAAA", jti="J2")
        self.assertEqual([formatEvent(e) for e in self.events[before:]], [
            f"connection {client.protocol.conn_id} of IDAAAAAAAAAA from tcp4:127.0.0.1:50000 (legacy) "
            "refreshed its token"
        ])

    def test_no_object_reprs(self) -> None:
        """No line anywhere in a connection's life shows an object repr."""
        client = self.connect()
        self.login(client)
        client.send("not json")
        client.answer_close()
        for text, _ in self.lines():
            self.assertNotRegex(text, r"object at 0x|<\w+(\.\w+)+ ")


class CloseLineTests(ConnectionLogTestCase):
    def test_client_close(self) -> None:
        """The client's close frame: closed by client, its code and reason."""
        client = self.connect()
        self.login(client, uid="IDAAAAAAAAAA")
        client.protocol.dataReceived(_client_close(4321, b"bye now"))
        client.lose()
        self.assert_close(self.close_line(client), "client", 4321, "bye now", "IDAAAAAAAAAA")

    def test_client_close_without_reason(self) -> None:
        """A close frame with a code and no reason: the line ends with the code."""
        client = self.connect()
        client.answer_close()
        event = self.close_line(client)
        self.assert_close(event, "client", 1000, "")
        self.assertTrue(formatEvent(event).endswith("closed by client: 1000"), formatEvent(event))

    def test_client_drops_tcp(self) -> None:
        """TCP gone without a close frame: closed by client, 1006."""
        client = self.connect()
        client.lose()
        self.assert_close(self.close_line(client), "client", 1006, "connection lost without a close frame")

    def test_auth_timeout(self) -> None:
        client = self.connect()
        self.clock.advance(60)
        client.answer_close()
        self.assert_close(self.close_line(client), "server", CloseCode.AUTH_TIMEOUT, "Authentication timeout")

    def test_token_expired(self) -> None:
        client = self.connect()
        self.login(client, uid="IDAAAAAAAAAA", exp=int(self.clock.seconds()) + 30)
        self.clock.advance(300)
        client.answer_close()
        self.assert_close(self.close_line(client), "server", CloseCode.TOKEN_EXPIRED, "Token expired", "IDAAAAAAAAAA")

    def test_revoked(self) -> None:
        client = self.connect()
        self.login(client, uid="IDAAAAAAAAAA", jti="J1")
        self.registry.revoke(jti="J1")
        client.answer_close()
        self.assert_close(self.close_line(client), "server", CloseCode.REVOKED, "Session revoked", "IDAAAAAAAAAA")

    def test_too_many_attempts(self) -> None:
        self.build(websocket_auth_attempts_per_minute=2)
        client = self.connect()
        for _ in range(3):
            client.send_json({"jwt": "Bearer x.y.z"})
        client.answer_close()
        self.assert_close(
            self.close_line(client), "server", CloseCode.TOO_MANY_ATTEMPTS, "Too many authentication attempts"
        )

    def test_shutdown(self) -> None:
        client = self.connect()
        self.login(client, uid="IDAAAAAAAAAA")
        self.factory.close_all()
        client.answer_close()
        event = self.close_line(client)
        self.assert_close(event, "server", CloseCode.GOING_AWAY, "Server shutting down", "IDAAAAAAAAAA")

    def test_message_too_big(self) -> None:
        """Autobahn's own close (1009) is the server's too."""
        client = self.connect()
        client.send("x" * (self.settings.websocket_max_message_size + 1))
        client.answer_close()
        event = self.close_line(client)
        self.assertEqual((event["by"], event["code"]), ("server", CloseCode.MESSAGE_TOO_BIG))

    def test_inbound_flood(self) -> None:
        self.build(websocket_inbound_frames_per_second=5)
        client = self.connect()
        for _ in range(20):
            client.send(b"", opcode=PING)
        client.lose()
        self.assert_close(self.close_line(client), "server", CloseCode.POLICY_VIOLATION, "Too many messages")

    def test_missed_ping(self) -> None:
        """Dropped after a missed ping: closed by server, 1006, no close frame."""
        client = self.connect()
        self.login(client, uid="IDAAAAAAAAAA")
        self.factory.start_pinging()
        self.addCleanup(self.factory.stop_pinging)
        self.clock.advance(10)
        self.clock.advance(10)
        client.lose()
        self.assert_close(self.close_line(client), "server", CloseCode.ABNORMAL, "missed its ping", "IDAAAAAAAAAA")

    def test_slow_consumer(self) -> None:
        """4008: closed by server, logged as a warning."""
        self.build(websocket_max_buffer=100_000)
        client = self.connect()
        self.login(client, uid="IDAAAAAAAAAA")
        client.protocol.pauseProducing()
        payload = json.dumps({"x": "y" * 10_000}).encode()
        for _ in range(12):
            self.registry.deliver("IDAAAAAAAAAA", "order", payload)
        client.lose()
        event = self.close_line(client)
        self.assert_close(event, "server", CloseCode.SLOW_CONSUMER, "Too slow", "IDAAAAAAAAAA")
        self.assertEqual(event["log_level"].name, "warn")

    def test_refused_at_handshake(self) -> None:
        """A refusal (per-address limit) says who, the HTTP status and why, with the connection id."""
        self.build(websocket_max_connections_per_ip=1)
        self.connect()
        refused = Client.connect(self.factory, expect_open=False)
        self.addCleanup(refused.lose)
        [(text, event)] = self.lines("refused")
        self.assertEqual((event["by"], event["code"], event["reason"]), ("server", 503, "per_ip_limit"))
        self.assertEqual(event["conn_id"], refused.protocol.conn_id)
        self.assertRegex(text, r"^connection \S+-\d+ from tcp4:127\.0\.0\.1:50000 refused at the handshake")

    def test_origin_refusals_throttled(self) -> None:
        """Origin refusals are throttled like the other refusals: one line a second, then a count."""
        self.build(websocket_allowed_origins=("https://exchange.example.com",))
        for _ in range(5):
            client = Client.connect(self.factory, origin="https://evil.example", expect_open=False)
            self.addCleanup(client.lose)
        self.assertEqual(len(self.lines("refused")), 1)
        self.clock.advance(1)
        client = Client.connect(self.factory, origin="https://evil.example", expect_open=False)
        self.addCleanup(client.lose)
        [_, (text, _)] = self.lines("refused")
        self.assertIn("(4 more not logged)", text)

    def autobahn_lines(self) -> list[str]:
        """What Autobahn itself logged (captured from setUp on)."""
        return [formatEvent(e) for e in self.all_events if str(e.get("log_namespace", "")).startswith("autobahn")]

    def raw(self, request: bytes) -> StringTransport:
        """A socket that sends C{request} as its whole upgrade request; what the server wrote back."""
        address = IPv4Address("TCP", "127.0.0.1", 50000)
        protocol = self.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        protocol.dataReceived(request)
        self.addCleanup(protocol.connectionLost)
        return transport

    def test_bad_requests_counted_and_throttled(self) -> None:
        """
        A request Autobahn refuses itself (not an upgrade): HTTP 426, counted
        as bad_request, one throttled line of ours, and none of Autobahn's
        two per refusal, which any client could multiply at will.
        """
        self.all_events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.all_events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        not_an_upgrade = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
        transports = [self.raw(not_an_upgrade) for _ in range(5)]
        for transport in transports:
            self.assertEqual(transport.value(), b"HTTP/1.1 426 HTTP Upgrade header missing\r\n\r\n")
            self.assertTrue(transport.disconnecting)
        [(text, event)] = self.lines("refused")
        self.assertEqual((event["by"], event["code"]), ("server", 426))
        self.assertIn("refused at the handshake: closed by server: HTTP 426 HTTP Upgrade header missing", text)
        self.assertEqual(self.metrics.registry.get_sample_value(REJECTED, {"reason": "bad_request"}), 5)
        self.assertEqual(self.autobahn_lines(), [])

    def test_our_refusals_counted_once(self) -> None:
        """A refusal of ours (per-address limit, origin) is one count and one line, none from Autobahn."""
        self.all_events = []
        observer = cast(ILogObserver, self.all_events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.build(websocket_max_connections_per_ip=1, websocket_allowed_origins=("https://exchange.example.com",))
        self.connect(origin="https://exchange.example.com")
        for origin, host in (("https://exchange.example.com", "127.0.0.1"), ("https://evil.example", "127.0.0.2")):
            client = Client.connect(self.factory, origin=origin, host=host, expect_open=False)
            self.addCleanup(client.lose)
        self.assertEqual(len(self.lines("refused")), 2)
        samples = {
            reason: self.metrics.registry.get_sample_value(REJECTED, {"reason": reason})
            for reason in ("per_ip_limit", "origin", "bad_request")
        }
        self.assertEqual(samples, {"per_ip_limit": 1, "origin": 1, "bad_request": None})
        self.assertEqual(self.autobahn_lines(), [])

    def test_every_opened_connection_has_one_close_line(self) -> None:
        """However it ends, each connection that opened gets exactly one close line."""
        clients = [self.connect() for _ in range(4)]
        self.login(clients[0], uid="IDAAAAAAAAAA", jti="J1")
        clients[1].lose()
        self.registry.revoke(jti="J1")
        self.clock.advance(60)
        self.factory.close_all()
        for client in clients:
            client.answer_close()
        ids = [e["conn_id"] for _, e in self.lines(" closed by ")]
        self.assertEqual(sorted(ids), sorted(c.protocol.conn_id for c in clients))
        for text, _ in self.lines(" closed by "):
            self.assertRegex(text, re.compile(r" closed by (client|server): \d{4} "))


def _client_close(code: int, reason: bytes) -> bytes:
    return client_frame(close_payload(code, reason), CLOSE)
