"""
Tests for L{peatio_ws.websocket}: every rule of SPEC §3, driven over a fake
transport with a fake clock.
"""

from __future__ import annotations

import json
import sys
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.framing import text_frame
from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry
from peatio_ws.testing import OMIT, MembershipRecorder, generate_rsa_key, make_token, settings_for_tests
from peatio_ws.testing.factory import stream_factory
from peatio_ws.testing.frames import SAMPLE_KEY, upgrade_request
from peatio_ws.testing.wsclient import Client, client_frame
from peatio_ws.websocket import CloseCode, StreamFactory
from peatio_ws.websocket.connection import EVENTS_FLOWING_WAIT, LET_GO_SECONDS
from peatio_ws.websocket.factory import PING_SLICE, PING_SLICE_GAP
from peatio_ws.websocket.legacy import LEGACY, new_challenge
from peatio_ws.websocket.limits import MAX_EMPTY_FRAGMENTS, MAX_FRAMES_PER_MESSAGE, MAX_JSON_DEPTH, MAX_REQUEST_HEAD
from peatio_ws.websocket.origins import normalize_origin

AUTHENTICATED = {"success": {"message": "Authenticated."}}
TOKEN_TYPE = {"error": {"message": "Token type is not provided or invalid."}}
AUTH_FAILED = {"error": {"message": "Authentication failed."}}
HANDLING = {"error": {"message": "Error while handling message."}}
EXPIRED = {"error": {"message": "Token expired."}}


class FakeRevocation:
    """Stands in for the Redis revocation check."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.pending: list[Deferred[bool]] = []
        self.hold = False
        self.broken = False

    def is_revoked(self, jti: str) -> Deferred[bool]:
        if self.broken:
            return fail(RuntimeError("redis is down"))
        if self.hold:
            d: Deferred[bool] = Deferred()
            self.pending.append(d)
            return d
        return succeed(jti in self.revoked)


class ProtocolTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.build()

    def build(self, **overrides: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.settings = settings_for_tests(**overrides)
        self.metrics = Metrics()
        self.registry = Registry(self.metrics)
        self.observer = MembershipRecorder()
        self.registry.add_observer(self.observer)
        self.revocation = FakeRevocation()
        self.factory = stream_factory(
            self.settings, self.clock, registry=self.registry, metrics=self.metrics, revocation=self.revocation
        )

    def connect(self, **kw: Any) -> Client:
        client = Client.connect(self.factory, **kw)
        self.addCleanup(client.lose)
        [challenge] = client.messages()
        self.assertEqual(list(challenge), ["challenge"])
        return client

    def token(self, **claims: Any) -> str:
        return make_token(now=self.clock.seconds(), **claims)

    def authenticate(self, client: Client, **claims: Any) -> None:
        client.send_json({"jwt": "Bearer " + self.token(**claims)})
        self.assertEqual(client.messages(), [AUTHENTICATED])

    def publish(self, uid: str, event: str = "order", payload: bytes = b'{"id":1}') -> int:
        return self.registry.deliver(uid, event, payload)


class ChallengeTests(ProtocolTestCase):
    def test_challenge_shape(self) -> None:
        """The challenge is 54 URL-safe base64 characters (40 random bytes, no padding)."""
        client = Client.connect(self.factory)
        self.addCleanup(client.lose)
        [message] = client.messages()
        challenge = message["challenge"]
        self.assertEqual(len(challenge), 54)
        self.assertRegex(challenge, r"^[A-Za-z0-9_-]{54}$")

    def writes_of(self, request: bytes, path: str = "/") -> list[bytes]:
        """What a connection wrote, write by write, for C{request} (an upgrade and whatever follows it)."""
        writes: list[bytes] = []

        class Counting(StringTransport):
            def write(self, data: bytes) -> None:
                writes.append(data)
                super().write(data)

        address = IPv4Address("TCP", "127.0.0.1", 50000)
        protocol = self.factory.buildProtocol(address)
        transport = Counting(peerAddress=address)
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        protocol.dataReceived(request)
        return writes

    def test_one_write_with_the_101(self) -> None:
        """The 101 and the challenge leave in one write; what the client pipelined is answered after them."""
        [both] = self.writes_of(upgrade_request("/", "localhost:8080", key=SAMPLE_KEY))
        head, _, frame = both.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        self.assertEqual(list(json.loads(frame[2:])), ["challenge"])
        first, pong = self.writes_of(upgrade_request("/", "localhost:8080", key=SAMPLE_KEY) + client_frame(b"ping"))
        self.assertTrue(first.startswith(b"HTTP/1.1 101 "))
        self.assertEqual(pong, text_frame(b"pong"))

    def test_ranger_one_write(self) -> None:
        """The ranger dialect's first message leaves with the 101 too."""
        [both] = self.writes_of(upgrade_request("/public", "localhost:8080"))
        head, _, frame = both.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        self.assertEqual(json.loads(frame[2:]), {"success": {"message": "subscribed", "streams": []}})

    def test_the_101_alone(self) -> None:
        """A dialect that said nothing on opening: the 101 is written once the upgrade is answered."""
        self.patch(LEGACY, "opened", lambda conn: None)
        [only] = self.writes_of(upgrade_request("/", "localhost:8080"))
        self.assertTrue(only.startswith(b"HTTP/1.1 101 "), only[:100])
        self.assertTrue(only.endswith(b"\r\n\r\n"), only[-100:])

    def test_challenge_fresh(self) -> None:
        """Every connection gets a different challenge."""
        seen = {new_challenge() for _ in range(100)}
        self.assertEqual(len(seen), 100)
        a = Client.connect(self.factory)
        b = Client.connect(self.factory)
        self.addCleanup(a.lose)
        self.addCleanup(b.lose)
        self.assertNotEqual(a.messages(), b.messages())

    def test_any_path(self) -> None:
        """Any request path is accepted."""
        for path in ("/", "/api/v2/ranger", "/anything/else?x=1"):
            client = Client.connect(self.factory, path=path)
            self.addCleanup(client.lose)
            self.assertIn("challenge", client.messages()[0])


class AuthenticationTests(ProtocolTestCase):
    def test_success(self) -> None:
        """A good token gets exactly the success reply and registers the connection."""
        client = self.connect()
        self.authenticate(client, uid="U1")
        self.assertEqual(len(self.registry.connections("U1")), 1)
        self.assertEqual(client.protocol.claims.uid, "U1")

    def test_reply_bytes_exact(self) -> None:
        """Replies are compact JSON with one key, byte for byte."""
        client = self.connect()
        client.send_json({"jwt": "Bearer " + self.token()})
        [frame] = client.received()
        self.assertEqual(frame.payload, b'{"success":{"message":"Authenticated."}}')
        client.send("nope")
        [frame] = client.received()
        self.assertEqual(frame.payload, b'{"error":{"message":"Error while handling message."}}')

    def test_token_type(self) -> None:
        """A non-string value, or a first word other than exactly Bearer, is a token-type error."""
        client = self.connect()
        token = self.token()
        for value in (None, 1, ["Bearer", token], {"a": 1}, True, "bearer " + token, "Token " + token, token, "",
                      "BEARER " + token, " Bearer " + token):
            client.send_json({"jwt": value})
            self.assertEqual(client.messages(), [TOKEN_TYPE], value)
        self.assertIsNone(client.close_code())

    def test_failed(self) -> None:
        """A token that does not verify gets Authentication failed; the connection stays open."""
        client = self.connect()
        other = generate_rsa_key()
        for value in ("Bearer", "Bearer ", "Bearer x.y.z", "Bearer " + make_token(other, now=self.clock.seconds()),
                      "Bearer " + self.token(sub="api"), "Bearer " + self.token(uid=OMIT),
                      "Bearer " + self.token(exp=self.clock.seconds() - 10)):
            client.send_json({"jwt": value})
            self.assertEqual(client.messages(), [AUTH_FAILED], value)
        self.assertIsNone(client.close_code())
        self.authenticate(client)

    def test_handling_errors(self) -> None:
        """Not JSON, not an object, no jwt key, binary frames, deep JSON: Error while handling message."""
        client = self.connect()
        for payload in ("not json", "[1,2]", '"jwt"', "42", "null", '{"token":"Bearer x"}', "{}",
                        "[" * 5000 + "]" * 5000, "1" * 5000, "\u00e9\u4e2d"):
            client.send(payload)
            self.assertEqual(client.messages(), [HANDLING], payload[:20])
        client.send(b'{"jwt":"Bearer x"}', opcode=2)
        self.assertEqual(client.messages(), [HANDLING])
        self.assertIsNone(client.close_code())
        self.authenticate(client)

    def test_json_depth_bound(self) -> None:
        """
        Nesting past MAX_JSON_DEPTH (1024, the parser's own bound) is refused
        the same way whatever the call stack's depth; brackets inside strings
        do not count.
        """
        self.assertEqual(MAX_JSON_DEPTH, 1024)
        client = self.connect()
        # '{"jwt":' is one level: MAX_JSON_DEPTH levels in all is the deepest accepted.
        deep = b'{"jwt":' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}"
        client.send(deep)
        self.assertEqual(client.messages(), [HANDLING])
        at_limit = b'{"jwt":' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b"}"
        client.send(at_limit)
        self.assertEqual(client.messages(), [TOKEN_TYPE])
        brackets_in_string = json.dumps({"jwt": "Bearer " + "[{" * 2000}).encode()
        client.send(brackets_in_string)
        self.assertEqual(client.messages(), [AUTH_FAILED])

    def test_strict_json(self) -> None:
        """What is not strict JSON (RFC 8259) is Error while handling message, even beside a jwt."""
        client = self.connect()
        for payload in (b'{"jwt":"Bearer x","n":NaN}', b'{"jwt":"Bearer x","n":Infinity}',
                        b'{"jwt":"Bearer x","n":1e999}', b'{"jwt":"Bearer \\ud800"}', b'{"jwt":"Bearer x"} x'):
            client.send(payload)
            self.assertEqual(client.messages(), [HANDLING], payload)
        client.send(b'{"jwt":"Bearer x","n":1e308}')
        self.assertEqual(client.messages(), [AUTH_FAILED])

    def test_internal_failure(self) -> None:
        """An unexpected failure inside the server is reported as Error while handling message."""
        client = self.connect()

        def broken(token: str) -> Any:
            raise ZeroDivisionError()

        self.patch(self.factory.verifier, "verify", broken)
        client.send_json({"jwt": "Bearer " + self.token()})
        self.assertEqual(client.messages(), [HANDLING])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_ping(self) -> None:
        """The text frame ping is answered with the text frame pong, exactly."""
        client = self.connect()
        client.send("ping")
        [frame] = client.received()
        self.assertEqual((frame.opcode, frame.payload), (1, b"pong"))
        client.send("PING")
        self.assertEqual(client.messages(), [HANDLING])

    def test_revoked_at_auth(self) -> None:
        """A token whose jti is revoked fails to authenticate."""
        client = self.connect()
        self.revocation.revoked.add("JTI-1")
        client.send_json({"jwt": "Bearer " + self.token(jti="JTI-1")})
        self.assertEqual(client.messages(), [AUTH_FAILED])
        self.assertEqual(len(self.registry), 0)

    def test_revoked_after_a_login(self) -> None:
        """
        A token that already logged in once (and so is remembered by the
        verifier) is refused once its session is revoked: Redis is asked
        on every login.
        """
        token = self.token(jti="JTI-1")
        first = self.connect()
        first.send_json({"jwt": "Bearer " + token})
        self.assertEqual(first.messages(), [AUTHENTICATED])
        self.revocation.revoked.add("JTI-1")
        second = self.connect()
        second.send_json({"jwt": "Bearer " + token})
        self.assertEqual(second.messages(), [AUTH_FAILED])

    def test_revocation_unavailable(self) -> None:
        """When the revocation check fails outright, authentication fails (deny policy)."""
        client = self.connect()
        self.revocation.broken = True
        client.send_json({"jwt": "Bearer " + self.token()})
        self.assertEqual(client.messages(), [AUTH_FAILED])

    def test_messages_wait_for_pending_check(self) -> None:
        """Messages sent while a revocation check is pending are answered afterwards, in order."""
        client = self.connect()
        self.revocation.hold = True
        client.send_json({"jwt": "Bearer " + self.token(uid="A")})
        client.send("ping")
        client.send("junk")
        self.assertEqual(client.messages(), [])
        self.revocation.pending.pop().callback(False)
        self.assertEqual(client.messages(), [AUTHENTICATED, "pong", HANDLING])

    def test_closed_while_checking(self) -> None:
        """A connection that closes during the revocation check is never registered."""
        client = self.connect()
        self.revocation.hold = True
        client.send_json({"jwt": "Bearer " + self.token(uid="A")})
        client.lose()
        self.revocation.pending.pop().callback(False)
        self.assertEqual(len(self.registry), 0)

    def test_attempt_limit(self) -> None:
        """Past WEBSOCKET_AUTH_ATTEMPTS_PER_MINUTE the connection is told and closed with 4029."""
        self.build(websocket_auth_attempts_per_minute=3)
        client = self.connect()
        for _ in range(3):
            client.send_json({"jwt": "Bearer bad"})
            self.assertEqual(client.messages(), [AUTH_FAILED])
        client.send_json({"jwt": "Bearer bad"})
        self.assertEqual(client.messages(), [{"error": {"message": "Too many authentication attempts."}}])
        self.assertEqual(client.close_code(), CloseCode.TOO_MANY_ATTEMPTS)

    def test_attempt_window_slides(self) -> None:
        """Attempts older than a minute no longer count."""
        self.build(websocket_auth_attempts_per_minute=2, websocket_auth_timeout=0.0)
        client = self.connect()
        for _ in range(5):
            client.send_json({"jwt": "Bearer bad"})
            self.assertEqual(client.messages(), [AUTH_FAILED])
            self.clock.advance(31)
        self.assertIsNone(client.close_code())


class Binder:
    """A registry observer standing in for the consumer: members' bindings complete when the test says."""

    def __init__(self) -> None:
        self.pending: dict[str, Deferred[None]] = {}

    def member_joined(self, uid: str) -> None:
        self.pending[uid] = Deferred()

    def member_left(self, uid: str) -> None:
        pass

    def events_flowing(self, uid: str) -> Deferred[None] | None:
        d = self.pending.get(uid)
        if d is None or d.called:
            return None
        waiter: Deferred[None] = Deferred()
        d.addCallback(lambda _: waiter.callback(None))
        return waiter


class EventsFlowingTests(ProtocolTestCase):
    """SPEC §3.2: after "Authenticated." the connection receives the member's events: the reply waits for that."""

    def setUp(self) -> None:
        super().setUp()
        self.binder = Binder()
        self.registry.add_observer(self.binder)

    def test_reply_waits_for_the_binding(self) -> None:
        client = self.connect()
        client.send_json({"jwt": "Bearer " + self.token(uid="IDWAIT")})
        self.assertEqual(client.messages(), [])
        # Messages sent meanwhile wait too, answered in order afterwards.
        client.send("ping")
        self.assertEqual(client.messages(), [])
        self.binder.pending["IDWAIT"].callback(None)
        self.assertEqual(client.messages(), [AUTHENTICATED, "pong"])
        self.assertEqual(self.publish("IDWAIT"), 1)

    def test_reply_sent_regardless_after_the_wait(self) -> None:
        """A broker slow to bind holds the reply EVENTS_FLOWING_WAIT seconds at most."""
        client = self.connect()
        client.send_json({"jwt": "Bearer " + self.token(uid="IDSLOW")})
        self.clock.advance(EVENTS_FLOWING_WAIT - 0.01)
        self.assertEqual(client.messages(), [])
        self.clock.advance(0.02)
        self.assertEqual(client.messages(), [AUTHENTICATED])

    def test_no_wait_when_already_flowing(self) -> None:
        """A second connection of a bound member is answered at once."""
        first = self.connect()
        first.send_json({"jwt": "Bearer " + self.token(uid="IDBOUND")})
        self.binder.pending["IDBOUND"].callback(None)
        self.assertEqual(first.messages(), [AUTHENTICATED])
        second = self.connect()
        self.authenticate(second, uid="IDBOUND")

    def test_events_meanwhile_follow_the_reply(self) -> None:
        """
        Events that reach the connection before its binding's answer (they
        overtake it: deliveries and binds travel on different channels)
        are written after "Authenticated.", in order, never before it.
        """
        client = self.connect()
        client.send_json({"jwt": "Bearer " + self.token(uid="IDEARLY")})
        self.assertEqual(self.publish("IDEARLY", "order", b'{"id":1}'), 1)
        self.assertEqual(self.publish("IDEARLY", "trade", b'{"id":2}'), 1)
        self.assertEqual(client.messages(), [])
        self.binder.pending["IDEARLY"].callback(None)
        self.assertEqual(client.messages(), [AUTHENTICATED, {"order": {"id": 1}}, {"trade": {"id": 2}}])
        self.publish("IDEARLY", "order", b'{"id":3}')
        self.assertEqual(client.messages(), [{"order": {"id": 3}}])

    def test_events_meanwhile_after_the_wait(self) -> None:
        """Held events follow the reply sent regardless after EVENTS_FLOWING_WAIT too."""
        client = self.connect()
        client.send_json({"jwt": "Bearer " + self.token(uid="IDLATE")})
        self.publish("IDLATE", "order", b'{"id":1}')
        self.clock.advance(EVENTS_FLOWING_WAIT + 0.01)
        self.assertEqual(client.messages(), [AUTHENTICATED, {"order": {"id": 1}}])

    def test_events_meanwhile_bounded(self) -> None:
        """What waits for the reply counts against WEBSOCKET_MAX_BUFFER: past it, 4008."""
        limit = 10_000
        self.build(websocket_max_buffer=limit)
        self.binder = Binder()
        self.registry.add_observer(self.binder)
        client = self.connect()
        client.send_json({"jwt": "Bearer " + self.token(uid="IDFLOOD")})
        frame = text_frame(b"x" * 996)
        for _ in range(limit // len(frame)):
            self.assertTrue(client.protocol.send_frame(frame))
        self.assertIsNone(client.close_code())
        self.assertFalse(client.protocol.send_frame(frame))
        self.assertEqual(client.close_code(), CloseCode.SLOW_CONSUMER)
        self.assertEqual(self.metrics.slow_consumer_closes._value.get(), 1)

    def test_pings_not_held(self) -> None:
        """A keep-alive ping goes out while the reply waits (else the client would miss it through no fault)."""
        client = self.connect()
        client.send_json({"jwt": "Bearer " + self.token(uid="IDPING")})
        self.factory._ping_sweep()
        self.assertEqual([f.opcode for f in client.received()], [9])
        self.binder.pending["IDPING"].callback(None)
        self.assertEqual(client.messages(), [AUTHENTICATED])

    def test_closed_while_waiting(self) -> None:
        """A client gone before its binding is in place gets nothing, and nothing fails."""
        client = self.connect()
        client.send_json({"jwt": "Bearer " + self.token(uid="IDGONE")})
        client.lose()
        self.binder.pending["IDGONE"].callback(None)
        self.assertEqual(client.messages(), [])
        self.assertEqual(len(self.registry), 0)


class ReauthenticationTests(ProtocolTestCase):
    def test_same_uid(self) -> None:
        """Same uid again: the token is replaced, the member is not subscribed twice."""
        client = self.connect()
        self.authenticate(client, uid="U1", jti="first")
        self.authenticate(client, uid="U1", jti="second")
        self.assertEqual(self.observer.events, [("joined", "U1")])
        self.assertEqual(client.protocol.claims.jti, "second")
        self.assertEqual(self.registry.jtis(), ["second"])
        self.assertEqual(self.publish("U1"), 1)

    def test_other_uid(self) -> None:
        """Another uid: the connection moves to the new member."""
        client = self.connect()
        self.authenticate(client, uid="U1")
        self.authenticate(client, uid="U2")
        self.assertEqual(self.observer.events, [("joined", "U1"), ("left", "U1"), ("joined", "U2")])
        self.assertEqual(self.publish("U1"), 0)
        self.assertEqual(self.publish("U2"), 1)

    def test_failure_deauthenticates(self) -> None:
        """A failed re-authentication leaves the connection unauthenticated and without events."""
        client = self.connect()
        self.authenticate(client, uid="U1")
        client.send_json({"jwt": "Bearer nonsense"})
        self.assertEqual(client.messages(), [AUTH_FAILED])
        self.assertEqual(self.publish("U1"), 0)
        self.assertIsNone(client.protocol.claims)
        self.authenticate(client, uid="U1")
        self.assertEqual(self.publish("U1"), 1)

    def test_failure_restarts_auth_timeout(self) -> None:
        """A connection that lost its authentication must authenticate again in time."""
        client = self.connect()
        self.authenticate(client, uid="U1", exp=OMIT)
        self.clock.advance(120)
        client.send_json({"jwt": "Bearer nonsense"})
        client.messages()
        self.clock.advance(self.settings.websocket_auth_timeout)
        self.assertEqual(client.close_code(), CloseCode.AUTH_TIMEOUT)


class EventTests(ProtocolTestCase):
    def test_only_own_events(self) -> None:
        """Events go to every connection of their member and to no one else."""
        a1, a2, b, anon = self.connect(), self.connect(), self.connect(), self.connect()
        self.authenticate(a1, uid="A")
        self.authenticate(a2, uid="A")
        self.authenticate(b, uid="B")
        self.assertEqual(self.publish("A", "order", b'{"id":7,"market":"btcusd"}'), 2)
        expected = [{"order": {"id": 7, "market": "btcusd"}}]
        self.assertEqual(a1.messages(), expected)
        self.assertEqual(a2.messages(), expected)
        self.assertEqual(b.messages(), [])
        self.assertEqual(anon.messages(), [])

    def test_payload_forwarded_as_published(self) -> None:
        """The payload bytes are forwarded untouched inside {"<event>": …}."""
        client = self.connect()
        self.authenticate(client, uid="A")
        payload = '{"price":"0.10000000","market":"比特币/usd","x":1e400}'.encode()
        self.publish("A", "trade", payload)
        [frame] = client.received()
        self.assertEqual(frame.payload, b'{"trade":' + payload + b"}")

    def test_large_event(self) -> None:
        """Events larger than the inbound message limit are delivered."""
        client = self.connect()
        self.authenticate(client, uid="A")
        payload = json.dumps({"blob": "x" * 200_000}).encode()
        self.publish("A", "balance", payload)
        [frame] = client.received()
        self.assertEqual(frame.json, {"balance": {"blob": "x" * 200_000}})

    def test_batch_in_one_write(self) -> None:
        """The frames of a batch reach a connection in one write, in order."""
        client = self.connect()
        self.authenticate(client, uid="A")
        writes: list[bytes] = []
        original = client.transport.write

        def write(data: bytes) -> None:
            writes.append(data)
            original(data)

        client.transport.write = write  # type: ignore[method-assign]
        self.registry.begin_batch()
        self.publish("A", "order", b'{"id":1}')
        self.publish("A", "trade", b'{"id":2}')
        self.registry.end_batch()
        self.assertEqual(len(writes), 1)
        self.assertEqual(client.messages(), [{"order": {"id": 1}}, {"trade": {"id": 2}}])

    def test_order_kept(self) -> None:
        """Events of one member arrive in the order they were delivered."""
        client = self.connect()
        self.authenticate(client, uid="A")
        for i in range(300):
            self.publish("A", "order", json.dumps({"id": i}).encode())
        self.assertEqual([m["order"]["id"] for m in client.messages()], list(range(300)))


class TimerTests(ProtocolTestCase):
    def test_token_expiry(self) -> None:
        """At exp (plus leeway) the server says Token expired. and closes with 4001."""
        client = self.connect()
        self.authenticate(client, uid="A", exp=int(self.clock.seconds()) + 30)
        self.clock.advance(29)
        self.assertEqual(client.messages(), [])
        self.clock.advance(2)
        self.assertEqual(client.messages(), [EXPIRED])
        self.assertEqual(client.close_code(), CloseCode.TOKEN_EXPIRED)
        self.assertEqual(self.publish("A"), 0)

    def test_expiry_leeway(self) -> None:
        """JWT_EXPIRATION_LEEWAY extends the deadline."""
        self.build(jwt_expiration_leeway=60.0)
        client = self.connect()
        self.authenticate(client, exp=int(self.clock.seconds()) + 30)
        self.clock.advance(80)
        self.assertIsNone(client.close_code())
        self.clock.advance(11)
        self.assertEqual(client.close_code(), CloseCode.TOKEN_EXPIRED)

    def test_fresh_token_postpones_expiry(self) -> None:
        """A fresh token before exp replaces the deadline."""
        client = self.connect()
        self.authenticate(client, exp=int(self.clock.seconds()) + 30)
        self.clock.advance(20)
        self.authenticate(client, exp=int(self.clock.seconds()) + 100)
        self.clock.advance(50)
        self.assertIsNone(client.close_code())
        self.clock.advance(51)
        self.assertEqual(client.close_code(), CloseCode.TOKEN_EXPIRED)

    def test_no_exp_never_expires(self) -> None:
        """A token without exp does not expire."""
        client = self.connect()
        self.authenticate(client, exp=OMIT)
        self.clock.advance(10 * 365 * 86400)
        self.assertIsNone(client.close_code())

    def test_auth_timeout(self) -> None:
        """An unauthenticated connection is closed with 4002 after WEBSOCKET_AUTH_TIMEOUT."""
        client = self.connect()
        self.clock.advance(59)
        self.assertIsNone(client.close_code())
        self.clock.advance(1)
        self.assertEqual(client.close_code(), CloseCode.AUTH_TIMEOUT)

    def test_auth_timeout_cancelled(self) -> None:
        """Authenticating in time cancels the auth timeout."""
        client = self.connect()
        self.clock.advance(30)
        self.authenticate(client, exp=OMIT)
        self.clock.advance(3600)
        self.assertIsNone(client.close_code())

    def test_auth_timeout_zero(self) -> None:
        """WEBSOCKET_AUTH_TIMEOUT 0 lets an unauthenticated connection stay forever."""
        self.build(websocket_auth_timeout=0.0, websocket_ping_interval=0.0)
        client = self.connect()
        self.clock.advance(86400)
        self.assertIsNone(client.close_code())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ping_sweep(self) -> None:
        """Ping frames go out every interval; a peer that misses the pong is dropped."""
        alive, dead = self.connect(), self.connect()
        self.factory.start_pinging()
        self.addCleanup(self.factory.stop_pinging)
        self.clock.advance(10)
        self.assertEqual([f.opcode for f in alive.received()], [9])
        self.assertEqual([f.opcode for f in dead.received()], [9])
        alive.send(b"", opcode=10)
        self.clock.advance(10)
        self.assertEqual([f.opcode for f in alive.received()], [9])
        self.assertFalse(alive.transport.disconnecting)
        self.assertTrue(dead.transport.disconnecting)

    def test_ping_sweep_in_slices(self) -> None:
        """Many connections are pinged PING_SLICE at a time, PING_SLICE_GAP apart; all within the sweep."""
        clients = [self.connect() for _ in range(2 * PING_SLICE + 1)]
        self.factory.start_pinging()
        self.addCleanup(self.factory.stop_pinging)
        self.clock.advance(10)
        pinged = [c for c in clients if [f.opcode for f in c.received()] == [9]]
        self.assertEqual(len(pinged), PING_SLICE)
        self.clock.advance(PING_SLICE_GAP)
        self.clock.advance(PING_SLICE_GAP)
        pinged += [c for c in clients if [f.opcode for f in c.received()] == [9]]
        self.assertEqual(len({id(c) for c in pinged}), len(clients))
        for c in clients:
            c.send(b"", opcode=10)
        self.clock.advance(10)
        self.clock.advance(PING_SLICE_GAP)
        self.clock.advance(PING_SLICE_GAP)
        self.assertFalse(any(c.transport.disconnecting for c in clients))

    def test_no_timers_left(self) -> None:
        """Closing a connection cancels its timers."""
        client = self.connect()
        self.authenticate(client, exp=int(self.clock.seconds()) + 300)
        client.lose()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class LimitTests(ProtocolTestCase):
    def test_message_too_big(self) -> None:
        """A message larger than WEBSOCKET_MAX_MESSAGE_SIZE closes with 1009, the reason naming that limit."""
        client = self.connect()
        limit = self.settings.websocket_max_message_size
        client.send("x" * (limit + 1))
        self.assertEqual(client.close_code(), CloseCode.MESSAGE_TOO_BIG)
        [close] = [frame for frame in client.frames if frame.close_code is not None]
        self.assertEqual(
            close.close_reason, f"received WebSocket message size {limit + 1} exceeds payload limit of {limit} octets"
        )

    def test_message_at_limit(self) -> None:
        """A message of exactly the limit is handled normally."""
        client = self.connect()
        client.send(" " * (self.settings.websocket_max_message_size - 2) + "{}")
        self.assertEqual(client.messages(), [HANDLING])

    def test_slow_consumer(self) -> None:
        """Past WEBSOCKET_MAX_BUFFER held for a client that is not reading, it is closed with 4008."""
        self.build(websocket_max_buffer=100_000)
        client = self.connect()
        self.authenticate(client, uid="A")
        client.protocol.pauseProducing()
        payload = json.dumps({"x": "y" * 10_000}).encode()
        sent = [self.publish("A", "order", payload) for _ in range(12)]
        self.assertEqual(sent[:9], [1] * 9)
        self.assertIn(0, sent)
        self.assertEqual(client.close_code(), CloseCode.SLOW_CONSUMER)
        self.assertEqual(len(self.registry), 0)
        self.assertEqual(self.metrics.slow_consumer_closes._value.get(), 1)

    def test_resume_resets(self) -> None:
        """A client that catches up (the transport resumes us) is not cut off."""
        self.build(websocket_max_buffer=100_000)
        client = self.connect()
        self.authenticate(client, uid="A")
        payload = json.dumps({"x": "y" * 10_000}).encode()
        for _ in range(5):
            client.protocol.pauseProducing()
            for _ in range(8):
                self.assertEqual(self.publish("A", "order", payload), 1)
            client.protocol.resumeProducing()
        self.assertIsNone(client.close_code())

    def test_origin_allowed(self) -> None:
        """With WEBSOCKET_ALLOWED_ORIGINS set, listed origins (and clients without Origin) connect."""
        self.build(websocket_allowed_origins=("https://exchange.example.com", "https://*.example.org"))
        for origin in ("https://exchange.example.com", "https://EXCHANGE.example.com:443", "https://a.example.org",
                       None):
            client = Client.connect(self.factory, origin=origin)
            self.addCleanup(client.lose)

    def test_origin_refused(self) -> None:
        """Other origins are refused at the handshake with 403."""
        self.build(websocket_allowed_origins=("https://exchange.example.com",))
        for origin in ("https://evil.example.com", "http://exchange.example.com", "null",
                       "https://exchange.example.com:8443", "https://exchange.example.com.evil.io"):
            client = Client.connect(self.factory, origin=origin, expect_open=False)
            self.addCleanup(client.lose)
            self.assertEqual(client.handshake_status(), 403, origin)

    def test_any_origin_by_default(self) -> None:
        """Unset WEBSOCKET_ALLOWED_ORIGINS accepts any Origin."""
        client = Client.connect(self.factory, origin="https://anything.example")
        self.addCleanup(client.lose)

    def test_per_ip_limit(self) -> None:
        """WEBSOCKET_MAX_CONNECTIONS_PER_IP refuses more connections from one address with 503."""
        self.build(websocket_max_connections_per_ip=2)
        a = self.connect(host="10.0.0.1")
        self.connect(host="10.0.0.1")
        refused = Client.connect(self.factory, host="10.0.0.1", expect_open=False)
        self.addCleanup(refused.lose)
        self.assertEqual(refused.handshake_status(), 503)
        self.connect(host="10.0.0.2")
        a.lose()
        self.connect(host="10.0.0.1")

    def test_normalize_origin(self) -> None:
        """Origins compare by scheme, host and non-default port, case-insensitively."""
        self.assertEqual(normalize_origin("HTTPS://Example.COM:443"), "https://example.com")
        self.assertEqual(normalize_origin("http://example.com:8080/"), "http://example.com:8080")
        self.assertIsNone(normalize_origin("null"))
        self.assertIsNone(normalize_origin("http://[bad"))


class LifecycleTests(ProtocolTestCase):
    def test_revoke(self) -> None:
        """A revoked session gets Authentication failed. and close 4003."""
        client = self.connect()
        self.authenticate(client, uid="A", jti="J1")
        self.assertEqual(self.registry.revoke(jti="J1"), 1)
        self.assertEqual(client.messages(), [AUTH_FAILED])
        self.assertEqual(client.close_code(), CloseCode.REVOKED)
        self.assertEqual(self.publish("A"), 0)

    def test_shutdown(self) -> None:
        """On shutdown every client gets close code 1001."""
        clients = [self.connect() for _ in range(3)]
        self.authenticate(clients[0])
        done = self.factory.close_all()
        for client in clients:
            self.assertEqual(client.close_code(), CloseCode.GOING_AWAY)
        self.assertNoResult(done)
        for client in clients:
            client.answer_close()
        self.successResultOf(done)

    def test_no_leak(self) -> None:
        """Many connect/authenticate/close cycles, on every close path, leave nothing behind."""
        for i in range(300):
            client = self.connect(host=f"10.0.{i % 7}.1")
            self.authenticate(client, uid=f"U{i % 13}", exp=int(self.clock.seconds()) + 1000)
            if i % 3 == 0:
                client.lose()
            elif i % 3 == 1:
                self.registry.revoke(uid=f"U{i % 13}")
                client.answer_close()
            else:
                self.factory.close_all()
                client.answer_close()
        self.assertEqual(len(self.registry), 0)
        self.assertEqual(self.registry.members(), [])
        self.assertEqual(self.registry.jtis(), [])
        self.assertEqual(self.factory.connections, set())
        self.assertEqual(self.factory.admission.per_ip, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])
        joined = sum(1 for e in self.observer.events if e[0] == "joined")
        left = sum(1 for e in self.observer.events if e[0] == "left")
        self.assertEqual(joined, left)


UPGRADE_HEAD = (
    b"GET / HTTP/1.1\r\nHost: localhost:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def raw_connect(factory: StreamFactory, host: str = "127.0.0.1") -> tuple[Any, StringTransport]:
    """A socket accepted by the server that has sent nothing yet."""
    address = IPv4Address("TCP", host, 50000)
    protocol = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport


def fragment(payload: bytes, opcode: int, fin: bool) -> bytes:
    """One masked client frame, final or not (opcode 0: continuation)."""
    frame = client_frame(payload, opcode)
    return bytes([(0x80 if fin else 0) | opcode]) + frame[1:]


def status(transport: StringTransport) -> int:
    return int(transport.value().split(b" ", 2)[1])


class HostileInputTests(ProtocolTestCase):
    """What one client can make the server hold or burn is bounded (issue 12)."""

    def rejected(self, reason: str) -> float | None:
        return self.metrics.registry.get_sample_value("peatio_ws_connections_rejected_total", {"reason": reason})

    def limited(self, limit: str) -> float | None:
        return self.metrics.registry.get_sample_value("peatio_ws_inbound_limited_total", {"limit": limit})

    def test_request_head_at_limit(self) -> None:
        """An upgrade request head of exactly MAX_REQUEST_HEAD bytes is accepted."""
        protocol, transport = raw_connect(self.factory)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        padding = MAX_REQUEST_HEAD - len(UPGRADE_HEAD) - len(b"X-Pad: \r\n\r\n")
        head = UPGRADE_HEAD + b"X-Pad: " + b"a" * padding + b"\r\n\r\n"
        self.assertEqual(len(head), MAX_REQUEST_HEAD)
        protocol.dataReceived(head)
        self.assertEqual(status(transport), 101)

    def test_request_head_over_limit(self) -> None:
        """One byte more is answered 431 and closed, whether or not its end has arrived."""
        for complete in (True, False):
            protocol, transport = raw_connect(self.factory)
            self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
            padding = MAX_REQUEST_HEAD + 1 - len(UPGRADE_HEAD) - len(b"X-Pad: \r\n\r\n")
            head = UPGRADE_HEAD + b"X-Pad: " + b"a" * padding + b"\r\n\r\n"
            self.assertEqual(len(head), MAX_REQUEST_HEAD + 1)
            protocol.dataReceived(head if complete else head[:-4] + b"a" * 4)
            self.assertEqual(status(transport), 431, complete)
            self.assertTrue(transport.disconnecting)
            self.assertEqual(transport.producerState, "paused")
        self.assertEqual(self.rejected("request_head_too_large"), 2)
        self.assertEqual(self.limited("request_head"), 2)

    def test_request_head_never_ending(self) -> None:
        """A head sent a byte at a time is searched as it comes, its end found across reads, and capped."""
        protocol, transport = raw_connect(self.factory)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        for byte in UPGRADE_HEAD + b"\r\n":
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(status(transport), 101)
        protocol, transport = raw_connect(self.factory)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        protocol.dataReceived(UPGRADE_HEAD)
        while not transport.disconnecting:
            protocol.dataReceived(b"X-More: " + b"b" * 1000 + b"\r\n")
        self.assertEqual(status(transport), 431)
        self.assertLessEqual(len(protocol.data), MAX_REQUEST_HEAD + 1100)

    def test_handshake_timeout(self) -> None:
        """A socket that does not finish its upgrade request within WEBSOCKET_HANDSHAKE_TIMEOUT is dropped."""
        self.build(websocket_handshake_timeout=3.0)
        slow, slow_transport = raw_connect(self.factory)
        self.addCleanup(slow.connectionLost, Failure(ConnectionDone()))
        slow.dataReceived(UPGRADE_HEAD)
        self.clock.advance(1.0)
        late, late_transport = raw_connect(self.factory)
        self.addCleanup(late.connectionLost, Failure(ConnectionDone()))
        done = self.connect()
        self.clock.advance(1.999)
        self.assertFalse(slow_transport.disconnecting)
        self.clock.advance(0.001)
        self.assertTrue(slow_transport.disconnecting)
        self.assertFalse(late_transport.disconnecting)
        self.clock.advance(1.0)
        self.assertTrue(late_transport.disconnecting)
        self.assertFalse(done.transport.disconnecting)
        self.assertEqual(self.limited("handshake_timeout"), 2)
        self.assertEqual(self.metrics.registry.get_sample_value("peatio_ws_handshakes"), 0)
        # No sweep left behind: only the open connection's auth timer.
        self.assertEqual([cast(Any, call).func.__name__ for call in self.clock.getDelayedCalls()], ["_auth_timed_out"])

    def test_gauges_follow_sockets(self) -> None:
        """Open connections and sockets in their handshake, as a scrape reads them, from accept to close."""

        def gauges() -> tuple[float | None, float | None]:
            sample = self.metrics.registry.get_sample_value
            return sample("peatio_ws_connections"), sample("peatio_ws_handshakes")

        self.assertEqual(gauges(), (0, 0))
        raw, _ = raw_connect(self.factory)
        self.assertEqual(gauges(), (0, 1))
        client = self.connect()
        self.assertEqual(gauges(), (1, 1))
        raw.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(gauges(), (1, 0))
        client.answer_close()
        self.assertEqual(gauges(), (0, 0))

    def test_handshaking_sockets_count_per_address(self) -> None:
        """Sockets that have sent nothing yet count against WEBSOCKET_MAX_CONNECTIONS_PER_IP: the next gets 503."""
        self.build(websocket_max_connections_per_ip=2)
        for _ in range(2):
            protocol, _transport = raw_connect(self.factory, "10.0.0.1")
            self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        refused, transport = raw_connect(self.factory, "10.0.0.1")
        self.addCleanup(refused.connectionLost, Failure(ConnectionDone()))
        self.assertEqual(status(transport), 503)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.rejected("per_ip_limit"), 1)
        other, other_transport = raw_connect(self.factory, "10.0.0.2")
        self.addCleanup(other.connectionLost, Failure(ConnectionDone()))
        self.assertEqual(other_transport.value(), b"")

    def test_global_handshake_cap(self) -> None:
        """Past WEBSOCKET_MAX_HANDSHAKES sockets in their handshake, the next gets 503; a finished one frees a place."""
        self.build(websocket_max_handshakes=2)
        first, _ = raw_connect(self.factory, "10.0.0.1")
        self.addCleanup(first.connectionLost, Failure(ConnectionDone()))
        second, _ = raw_connect(self.factory, "10.0.0.2")
        self.addCleanup(second.connectionLost, Failure(ConnectionDone()))
        refused, transport = raw_connect(self.factory, "10.0.0.3")
        self.addCleanup(refused.connectionLost, Failure(ConnectionDone()))
        self.assertEqual(status(transport), 503)
        self.assertEqual(self.rejected("handshake_limit"), 1)
        first.dataReceived(UPGRADE_HEAD + b"\r\n")
        admitted, transport = raw_connect(self.factory, "10.0.0.3")
        self.addCleanup(admitted.connectionLost, Failure(ConnectionDone()))
        self.assertEqual(transport.value(), b"")

    def test_handshake_room(self) -> None:
        """
        The room the listening port accepts into (per poll): the cap less the
        sockets in their handshake, down to none; a finished one frees a
        place; no cap is room without end.
        """
        self.build(websocket_max_handshakes=2)
        room = self.factory.admission.room
        self.assertEqual(room(), 2)
        first, _ = raw_connect(self.factory, "10.0.0.1")
        self.addCleanup(first.connectionLost, Failure(ConnectionDone()))
        second, _ = raw_connect(self.factory, "10.0.0.2")
        self.addCleanup(second.connectionLost, Failure(ConnectionDone()))
        self.assertEqual(room(), 0)
        refused, _ = raw_connect(self.factory, "10.0.0.3")
        self.addCleanup(refused.connectionLost, Failure(ConnectionDone()))
        self.assertEqual(room(), 0)
        first.dataReceived(UPGRADE_HEAD + b"\r\n")
        self.assertEqual(room(), 1)
        self.build(websocket_max_handshakes=0)
        self.assertEqual(self.factory.admission.room(), sys.maxsize)

    def test_new_connections_paced(self) -> None:
        """
        WEBSOCKET_NEW_CONNECTIONS_PER_SECOND=3: three sockets at once are
        admitted (a second's worth), the fourth gets 503 at once with a
        Retry-After of 1 to 5 s; a third of a second later one more is admitted.
        """
        self.build(websocket_new_connections_per_second=3)
        for n in range(3):
            admitted, transport = raw_connect(self.factory, f"10.0.0.{n}")
            self.addCleanup(admitted.connectionLost, Failure(ConnectionDone()))
            self.assertEqual(transport.value(), b"")
        refused, transport = raw_connect(self.factory, "10.0.1.1")
        self.addCleanup(refused.connectionLost, Failure(ConnectionDone()))
        self.assertEqual(status(transport), 503)
        self.assertRegex(transport.value().decode("latin-1"), r"\r\nRetry-After: [1-5]\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.rejected("pace"), 1)
        self.clock.advance(1 / 3 - 0.001)
        early, transport = raw_connect(self.factory, "10.0.1.2")
        self.addCleanup(early.connectionLost, Failure(ConnectionDone()))
        self.assertEqual(status(transport), 503)
        self.clock.advance(0.002)
        later, transport = raw_connect(self.factory, "10.0.1.3")
        self.addCleanup(later.connectionLost, Failure(ConnectionDone()))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.rejected("pace"), 2)

    def test_pace_off_by_default(self) -> None:
        """0 (the default): no pace; 200 sockets in the same instant are all admitted."""
        self.assertEqual(self.settings.websocket_new_connections_per_second, 0)
        for n in range(200):
            admitted, transport = raw_connect(self.factory, f"10.1.{n // 250}.{n % 250}")
            self.addCleanup(admitted.connectionLost, Failure(ConnectionDone()))
            self.assertEqual(transport.value(), b"")
        self.assertIsNone(self.rejected("pace"))

    def test_frames_per_message(self) -> None:
        """A message may come in MAX_FRAMES_PER_MESSAGE frames; one more closes 1008."""
        for frames, code in ((MAX_FRAMES_PER_MESSAGE, None), (MAX_FRAMES_PER_MESSAGE + 1, CloseCode.POLICY_VIOLATION)):
            self.build(websocket_inbound_frames_per_second=0)
            client = self.connect()
            client.protocol.dataReceived(fragment(b"{", 1, False))
            for _ in range(frames - 2):
                client.protocol.dataReceived(fragment(b" ", 0, False))
            client.protocol.dataReceived(fragment(b"}", 0, True))
            if code is None:
                self.assertEqual(client.messages(), [HANDLING])
            self.assertEqual(client.close_code(), code, frames)
        self.assertEqual(self.limited("message_frames"), 1)

    def test_empty_fragments(self) -> None:
        """At most MAX_EMPTY_FRAGMENTS empty non-final frames in a message; one more closes 1008."""
        for empties, code in ((MAX_EMPTY_FRAGMENTS, None), (MAX_EMPTY_FRAGMENTS + 1, CloseCode.POLICY_VIOLATION)):
            client = self.connect()
            client.protocol.dataReceived(fragment(b"pi", 1, False))
            for _ in range(empties):
                client.protocol.dataReceived(fragment(b"", 0, False))
            client.protocol.dataReceived(fragment(b"ng", 0, True))
            if code is None:
                self.assertEqual(client.messages(), ["pong"])
            self.assertEqual(client.close_code(), code, empties)

    def test_endless_empty_continuations(self) -> None:
        """Endless empty continuation frames are cut off at once and nothing more is read or stored."""
        self.build(websocket_inbound_frames_per_second=0)
        client = self.connect()
        client.protocol.dataReceived(fragment(b"x", 1, False))
        empty = fragment(b"", 0, False)
        client.protocol.dataReceived(empty * 10_000)
        self.assertEqual(client.close_code(), CloseCode.POLICY_VIOLATION)
        self.assertEqual(client.transport.producerState, "paused")
        client.protocol.dataReceived(empty * 10_000)
        self.assertLessEqual(len(client.protocol.message_data or ()), MAX_EMPTY_FRAGMENTS + 1)
        self.assertEqual(client.protocol.data, b"")

    def test_frame_rate(self) -> None:
        """Bursts of twice WEBSOCKET_INBOUND_FRAMES_PER_SECOND pass; one frame more closes 1008 and stops reading."""
        self.build(websocket_inbound_frames_per_second=10)
        client = self.connect()
        for _ in range(20):
            client.send(b"ping")
        self.assertEqual(client.messages(), ["pong"] * 20)
        self.clock.advance(1.0)
        for _ in range(10):
            client.send(b"ping")
        self.assertEqual(client.messages(), ["pong"] * 10)
        self.assertIsNone(client.close_code())
        client.send(b"ping")
        self.assertEqual(client.messages(), [])
        self.assertEqual(client.close_code(), CloseCode.POLICY_VIOLATION)
        self.assertEqual(client.transport.producerState, "paused")
        # Closed at once after the close frame: no waiting for a handshake it will not read.
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual(self.limited("frames"), 1)
        self.assertEqual(
            self.metrics.registry.get_sample_value("peatio_ws_closes_total", {"reason": "1008"}), 1
        )

    def test_pongs_count_as_frames(self) -> None:
        """Unsolicited pongs and pings are frames like any other."""
        self.build(websocket_inbound_frames_per_second=10)
        client = self.connect()
        for _ in range(20):
            client.send(b"", opcode=10)
        self.assertIsNone(client.close_code())
        client.send(b"", opcode=10)
        self.assertEqual(client.close_code(), CloseCode.POLICY_VIOLATION)

    def test_byte_rate(self) -> None:
        """The byte budget: its burst passes to the byte, one byte more closes 1008; it refills at its rate."""
        self.build(
            websocket_inbound_bytes_per_second=1000,
            websocket_inbound_frames_per_second=0,
            websocket_max_message_size=64,
        )
        burst = self.factory.byte_burst
        self.assertEqual(burst, MAX_REQUEST_HEAD + 2 * (64 + 14))
        client = self.connect()
        left = int(burst) - len(UPGRADE_HEAD) - 2
        ping = client_frame(b"ping")
        while left - len(ping) >= 6 + 50:
            client.protocol.dataReceived(ping)
            left -= len(ping)
        client.protocol.dataReceived(client_frame(b" " * (left - 6)))
        self.assertIsNone(client.close_code())
        self.clock.advance(0.0105)  # ten and a half bytes' worth
        client.protocol.dataReceived(ping)
        self.assertIsNone(client.close_code())
        client.protocol.dataReceived(b"\x81")
        self.assertEqual(client.close_code(), CloseCode.POLICY_VIOLATION)
        self.assertEqual(self.limited("bytes"), 1)

    def test_budget_off(self) -> None:
        """0 turns each budget off."""
        self.build(websocket_inbound_frames_per_second=0, websocket_inbound_bytes_per_second=0)
        client = self.connect()
        for _ in range(1000):
            client.send(b"ping")
        self.assertEqual(len(client.messages()), 1000)
        self.assertIsNone(client.close_code())

    def test_compression_declined(self) -> None:
        """A permessage-deflate offer is declined (no extension in the 101); a frame with RSV1 set is 1002."""
        protocol, transport = raw_connect(self.factory)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        protocol.dataReceived(
            UPGRADE_HEAD + b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        )
        head = transport.value().partition(b"\r\n\r\n")[0].lower()
        self.assertTrue(head.startswith(b"http/1.1 101"), head)
        self.assertNotIn(b"sec-websocket-extensions", head)
        client = Client(protocol, transport)
        client.messages()
        compressed = client_frame(b"ping")
        protocol.dataReceived(bytes([compressed[0] | 0x40]) + compressed[1:])
        self.assertEqual(client.close_code(), 1002)


class HalfClosingTransport(StringTransport):
    """A StringTransport that, like TCP, can close its write side alone."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class LetGoTests(ProtocolTestCase):
    """A client closed 1008 for its budget: FIN after the close frame, then dropped within LET_GO_SECONDS."""

    def test_half_close_then_drop(self) -> None:
        self.build(websocket_inbound_frames_per_second=1)
        address = IPv4Address("TCP", "127.0.0.1", 50000)
        protocol = self.factory.buildProtocol(address)
        transport = HalfClosingTransport(peerAddress=address)
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        protocol.dataReceived(UPGRADE_HEAD + b"\r\n")
        client = Client(protocol, transport)
        client.messages()
        for _ in range(3):
            protocol.dataReceived(client_frame(b"ping"))
        self.assertEqual(client.close_code(), CloseCode.POLICY_VIOLATION)
        # The close frame is followed by FIN; reading goes on (discarded) to see the client leave.
        self.assertTrue(transport.write_closed)
        self.assertEqual(transport.producerState, "producing")
        self.assertFalse(transport.aborted)
        written = transport.value()
        protocol.dataReceived(client_frame(b"ping") * 100)
        self.assertEqual(transport.value(), written)
        self.clock.advance(LET_GO_SECONDS - 0.001)
        self.assertFalse(transport.aborted)
        self.clock.advance(0.001)
        self.assertTrue(transport.aborted)

    def test_client_leaving_cancels_the_drop(self) -> None:
        self.build(websocket_inbound_frames_per_second=1)
        address = IPv4Address("TCP", "127.0.0.1", 50000)
        protocol = self.factory.buildProtocol(address)
        transport = HalfClosingTransport(peerAddress=address)
        protocol.makeConnection(transport)
        protocol.dataReceived(UPGRADE_HEAD + b"\r\n")
        for _ in range(3):
            protocol.dataReceived(client_frame(b"ping"))
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([c for c in self.clock.getDelayedCalls() if cast(Any, c).func.__name__ == "_drop_now"], [])


class BoundaryTests(ProtocolTestCase):
    """Limits pinned at their exact boundary (a `>` turned `>=`, or a late timer, fails here)."""

    def test_token_expiry_to_the_millisecond(self) -> None:
        """The 4001 comes exactly at exp: not a millisecond before."""
        client = self.connect()
        exp = int(self.clock.seconds()) + 30
        self.authenticate(client, uid="A", exp=exp)
        self.clock.advance(exp - self.clock.seconds() - 0.001)
        self.assertEqual(client.messages(), [])
        self.assertIsNone(client.close_code())
        self.clock.advance(0.001)
        self.assertEqual(client.messages(), [EXPIRED])
        self.assertEqual(client.close_code(), CloseCode.TOKEN_EXPIRED)

    def test_slow_consumer_limit_is_inclusive(self) -> None:
        """While paused, exactly WEBSOCKET_MAX_BUFFER bytes may be held; one byte more closes 4008."""
        limit = 65536
        self.build(websocket_max_buffer=limit)
        client = self.connect()
        self.authenticate(client, uid="A")
        client.protocol.pauseProducing()
        frame = text_frame(b"x" * 996)
        self.assertEqual(len(frame), 1000)
        for _ in range(limit // len(frame)):
            self.assertTrue(client.protocol.send_frame(frame))
        rest = limit - (limit // len(frame)) * len(frame)
        last = text_frame(b"y" * (rest - 4))  # 126 <= rest - 4 < 65536: a 4-byte header
        self.assertEqual(len(last), rest)
        self.assertTrue(client.protocol.send_frame(last))
        self.assertIsNone(client.close_code())
        self.assertFalse(client.protocol.send_frame(text_frame(b"")))
        self.assertEqual(client.close_code(), CloseCode.SLOW_CONSUMER)
