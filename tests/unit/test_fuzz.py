"""
Hostile input at unit level, property-based (hypothesis): arbitrary text
and binary frames, fragmented messages, raw garbage after the handshake,
deep JSON, huge numbers, invalid UTF-8 and oversized frames at the
WebSocket handler; forged and mangled JWTs at the verifier and through the
handler; arbitrary routing keys and bodies, and garbage frames, at the
RabbitMQ consumer.

The properties: every input gets the reply or close SPEC §3 documents (or
the one RFC 6455 mandates: 1002 for protocol errors, 1007 for a text frame
that is not UTF-8), no exception ever escapes a handler, and no event of
one member ever reaches another connection.

Fast and bounded: in-memory transports, a fake clock, C{deadline=None} and
a bounded number of examples (more with PEATIO_WS_CHAOS=full).
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Callable
from typing import Any, ClassVar

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.amqp import parse_routing_key
from peatio_ws.amqp._txamqp import ACK_INTERVAL
from peatio_ws.auth import AuthError
from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry
from peatio_ws.testing import (
    Client,
    Frame,
    b64url,
    client_frame,
    craft_token,
    make_token,
    settings_for_tests,
)
from peatio_ws.testing.amqp import FakeBroker, Harness, bind_keys
from peatio_ws.testing.factory import stream_factory
from peatio_ws.websocket import Reply
from tests.support.corpus import (
    BAD_HANDSHAKES,
    NOW,
    PROTOCOL_VIOLATIONS,
    UNUSUAL_HANDSHAKES,
    VICTIM,
    forged_tokens,
)
from tests.support.corpus import handshake_with as upgrade_request
from tests.support.corpus import victim_claims as _claims
from tests.support.fuzzing import FULL, examples, upgrade_headers
from tests.support.oracle import expected_reply, forwardable, private_key_names

DOCUMENTED = {
    Reply.AUTHENTICATED,
    Reply.TOKEN_TYPE,
    Reply.AUTH_FAILED,
    Reply.HANDLING_ERROR,
    Reply.TOKEN_EXPIRED,
    Reply.TOO_MANY_ATTEMPTS,
    b"pong",
}
MAX_MESSAGE = 16384


# ---------------------------------------------------------------------------
# Strategies


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40)
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=12,
    )


_bearerish = st.one_of(
    st.text(max_size=60),
    st.builds(lambda s: "Bearer " + s, st.text(max_size=60)),
    st.sampled_from(["Bearer", "Bearer ", "bearer x", " Bearer x", "Bearer\tx", "BEARER x", "Bearer  x.y.z"]),
)

_messages = st.one_of(
    # Arbitrary text.
    st.text(max_size=300).map(lambda s: s.encode("utf-8")),
    # JSON objects, with and without a jwt key.
    st.dictionaries(st.text(max_size=6), _json_values(), max_size=4).map(lambda d: json.dumps(d).encode()),
    st.builds(lambda v, extra: json.dumps({"jwt": v, **extra}).encode(), _bearerish | _json_values(),
              st.dictionaries(st.text(max_size=5), _json_values(), max_size=2)),
    # Any JSON value at the top.
    _json_values().map(lambda v: json.dumps(v).encode()),
    # Deep nesting, inside and outside a jwt object.
    st.integers(1, 7000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 5000).map(lambda n: b'{"jwt":' + b"[" * n + b"]" * n + b"}"),
    st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    # Huge numbers: past Python's 4300-digit int limit, past float range.
    st.integers(1, 16000).map(lambda n: b'{"jwt":' + b"9" * n + b"}"),
    st.integers(1, 16000).map(lambda n: b"1" * n),
    st.sampled_from(
        [b'{"jwt":1e999999}', b'{"jwt":-1e400}', b'{"jwt":NaN}', b"Infinity", b'{"jwt":0.' + b"0" * 9000 + b"1}"]
    ),
    # Duplicate keys and odd JSON.
    st.sampled_from([b'{"jwt":"Bearer x","jwt":1}', b'{"jwt":1,"jwt":"Bearer x"}', b'{"jwt":"Bearer \\u0000"}',
                     b'{"jwt":"Bearer \\ud800"}', b"\xef\xbb\xbf{}", b'{"jwt":"Bearer x"} trailing', b" ping",
                     b"ping\n", b"PING", b"ping\x00", b""]),
)


# ---------------------------------------------------------------------------


class _FuzzCase(SynchronousTestCase):
    """Counts the inputs each test tried, and records the count with the chaos figures."""

    def setUp(self) -> None:
        self.inputs = 0
        self.addCleanup(self._record)

    def count(self, n: int = 1) -> None:
        self.inputs += n

    def _record(self) -> None:
        name = self.id().rsplit(".", 2)
        mode = "full" if FULL else "quick"
        line = {"test": f"fuzz: {name[-2]}.{name[-1]}", "mode": mode, "inputs tried": self.inputs}
        with open("chaos-figures.txt", "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


class _Room:
    """A factory on a fake clock, with a victim member authenticated, and a way to check for leaks."""

    def __init__(
        self, test: SynchronousTestCase, registry: Registry | None = None, metrics: Metrics | None = None,
        pump: Callable[[], object] = lambda: None, **overrides: Any,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        options: dict[str, Any] = {"websocket_auth_attempts_per_minute": 0}
        options.update(overrides)
        self.settings = settings_for_tests(**options)
        self.metrics = metrics if metrics is not None else Metrics()
        self.registry = registry if registry is not None else Registry(self.metrics)
        self.factory = stream_factory(self.settings, self.clock, registry=self.registry, metrics=self.metrics)
        self.test = test
        self.victim = self.connect()
        self.victim.send_json({"jwt": "Bearer " + make_token(uid=VICTIM, now=NOW)})
        # With a consumer, "Authenticated." waits for the member's binding: let the broker answer.
        pump()
        test.assertEqual(self.victim.received()[0].payload, Reply.AUTHENTICATED)
        self.sequence = 0

    def connect(self) -> Client:
        client = Client.connect(self.factory)
        self.test.addCleanup(client.lose)
        [challenge] = client.received()
        self.test.assertEqual(list(json.loads(challenge.payload)), ["challenge"])
        return client

    def check_no_leak(self, *others: Client) -> None:
        """A victim event now reaches the victim, once, and none of C{others}."""
        self.sequence += 1
        secret = json.dumps({"id": self.sequence, "secret": "victim-only"}).encode()
        self.registry.deliver(VICTIM, "order", secret)
        [frame] = self.victim.received()
        self.test.assertEqual(frame.payload, b'{"order":' + secret + b"}")
        for other in others:
            for f in other.received():
                self.test.assertNotIn(b"victim-only", f.payload)


def text_payloads(frames: list[Frame]) -> list[bytes]:
    return [f.payload for f in frames if f.opcode == 1]


def close_codes(frames: list[Frame]) -> list[int | None]:
    return [f.close_code for f in frames if f.opcode == 8]


class MessageFuzzTests(_FuzzCase):
    """Arbitrary client messages at the handler."""

    def setUp(self) -> None:
        super().setUp()
        self.room = _Room(self)

    @examples(400)
    @given(st.lists(st.tuples(_messages, st.booleans()), min_size=1, max_size=5))
    def test_messages_get_documented_replies(self, messages: list[tuple[bytes, bool]]) -> None:
        """
        Each message gets exactly its documented reply (one frame), or 1009
        when over WEBSOCKET_MAX_MESSAGE_SIZE; otherwise the connection stays
        open. No victim event reaches the sender.
        """
        client = self.room.connect()
        for payload, binary in messages:
            self.count()
            client.send(payload, opcode=2 if binary else 1)
            frames = client.received()
            if len(payload) > MAX_MESSAGE:
                self.assertEqual(close_codes(frames), [1009])
                break
            self.assertEqual(text_payloads(frames), [expected_reply(payload, binary)], payload[:60])
            self.assertEqual(close_codes(frames), [])
        self.room.check_no_leak(client)
        self.assertEqual(len(self.room.registry.connections(VICTIM)), 1)

    @examples(200)
    @given(_messages, st.lists(st.integers(0, 400), min_size=1, max_size=6))
    def test_fragmented_messages(self, payload: bytes, cuts: list[int]) -> None:
        """A message split into continuation frames gets the same reply as in one frame."""
        self.count()
        assume(len(payload) <= MAX_MESSAGE)
        client = self.room.connect()
        points = sorted({min(c, len(payload)) for c in cuts} | {0, len(payload)})
        pieces = [payload[a:b] for a, b in itertools.pairwise(points)] or [b""]
        for i, piece in enumerate(pieces):
            opcode = 1 if i == 0 else 0
            fin = 0x80 if i == len(pieces) - 1 else 0
            frame = bytearray(client_frame(piece, opcode))
            frame[0] = fin | opcode
            client.protocol.dataReceived(bytes(frame))
        frames = client.received()
        self.assertEqual(text_payloads(frames), [expected_reply(payload, False)])
        self.room.check_no_leak(client)

    @examples(300)
    @given(st.binary(min_size=1, max_size=2000))
    def test_invalid_utf8_text(self, data: bytes) -> None:
        """A text frame that is not UTF-8 is closed with 1007 (RFC 6455); valid UTF-8 is an ordinary message."""
        self.count()
        client = self.room.connect()
        client.send(data)
        frames = client.received()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            self.assertEqual(text_payloads(frames), [])
            self.assertEqual(close_codes(frames), [1007])
        else:
            self.assertEqual(text_payloads(frames), [expected_reply(data, False)])
        self.room.check_no_leak(client)

    @examples(300)
    @given(st.binary(max_size=600))
    def test_garbage_after_handshake(self, data: bytes) -> None:
        """
        Raw bytes after the handshake never raise out of the handler: the
        server answers what parses as frames with documented replies,
        and closes (1002 for protocol errors, 1007, 1009, or the client's
        own code echoed) or waits for more.
        """
        self.count()
        client = self.room.connect()
        client.protocol.dataReceived(data)
        frames = client.received()
        for payload in text_payloads(frames):
            self.assertIn(payload, DOCUMENTED)
        self.room.check_no_leak(client)

    @examples(100)
    @given(st.integers(MAX_MESSAGE + 1, 4 * MAX_MESSAGE), st.booleans(), st.booleans())
    def test_oversized(self, size: int, binary: bool, fragmented: bool) -> None:
        """A message over the limit, whole or in fragments, is closed with 1009."""
        self.count()
        client = self.room.connect()
        payload = b'{"jwt":"Bearer ' + b"a" * size + b'"}'
        if fragmented:
            half = len(payload) // 2
            first = bytearray(client_frame(payload[:half], 2 if binary else 1))
            first[0] &= 0x7F
            client.protocol.dataReceived(bytes(first))
            client.protocol.dataReceived(client_frame(payload[half:], 0))
        else:
            client.send(payload, opcode=2 if binary else 1)
        frames = client.received()
        self.assertEqual(close_codes(frames), [1009])
        # The size limit fired, not another (a frame budget would be 1008).
        [reason] = [frame.close_reason for frame in frames if frame.close_reason is not None]
        self.assertIn(f"exceeds payload limit of {MAX_MESSAGE} octets", reason)
        self.assertEqual(text_payloads(frames), [])
        self.room.check_no_leak(client)

    def test_protocol_violations(self) -> None:
        """Unmasked frames, reserved bits, unknown opcodes, big or fragmented control frames: 1002."""
        for name, data in PROTOCOL_VIOLATIONS.items():
            self.count()
            client = self.room.connect()
            client.protocol.dataReceived(data)
            frames = client.received()
            self.assertEqual(text_payloads(frames), [], name)
            self.assertEqual(close_codes(frames), [1002], name)
            self.room.check_no_leak(client)

    def test_bad_close_codes_and_reasons(self) -> None:
        """A client close with a reserved code or a non-UTF-8 reason gets 1002 / 1007; a valid one 1000."""
        for payload, expected in (
            (struct.pack("!H", 1005), 1002),
            (struct.pack("!H", 999), 1002),
            (struct.pack("!H", 1000) + b"\xff", 1007),
            (struct.pack("!H", 4000) + b"ok", 1000),
        ):
            self.count()
            client = self.room.connect()
            client.send(payload, opcode=8)
            self.assertEqual(close_codes(client.received()), [expected], payload)
            self.room.check_no_leak(client)


class RequestFloodTests(_FuzzCase):
    """
    A client that sends but never reads: its transport asks us to pause
    (its buffer is full); what is written for it from then on is bounded by
    WEBSOCKET_MAX_BUFFER, then it is closed with 4008 (SPEC §3.4: the
    server never buffers without bound). Without this, every small message
    bought about 40 bytes of server memory for a reply nobody reads.
    """

    #: The inbound rate budget would close these floods with 1008 first; here
    #: it is off, to see the bound on what is written for a client.
    UNMETERED: ClassVar[dict[str, Any]] = {
        "websocket_inbound_frames_per_second": 0,
        "websocket_inbound_bytes_per_second": 0,
    }

    def flood(self, frame: bytes, **overrides: Any) -> tuple[int, Client, _Room]:
        room = _Room(self, websocket_max_buffer=65536, **self.UNMETERED, **overrides)
        client = room.connect()
        # What the TCP transport does when its write buffer is full.
        client.protocol.pauseProducing()
        start = len(client.transport.value())
        for _ in range(20000):
            client.protocol.dataReceived(frame)
            if client.protocol.state != client.protocol.STATE_OPEN:
                break
        return len(client.transport.value()) - start, client, room

    def test_bounded(self) -> None:
        """Junk, "ping", jwt attempts and ping frames: at most the buffer limit, then 4008."""
        frames = {
            "junk": client_frame(b"x"),
            "ping text": client_frame(b"ping"),
            "jwt attempts": client_frame(b'{"jwt":"Bearer x"}'),
            "token type errors": client_frame(b'{"jwt":1}'),
            "ping frames": client_frame(b"p" * 125, 9),
        }
        for name, frame in frames.items():
            self.count()
            written, client, room = self.flood(frame)
            self.assertLessEqual(written, 65536 + 200, name)
            self.assertEqual(close_codes(client.received()), [4008], name)
            self.assertEqual(room.metrics.registry.get_sample_value("peatio_ws_slow_consumer_closes_total"), 1, name)
            room.check_no_leak(client)

    def test_resumed_in_time(self) -> None:
        """A client that reads again before the limit (the transport resumes us) is not cut off."""
        self.count()
        room = _Room(self, websocket_max_buffer=65536, **self.UNMETERED)
        client = room.connect()
        for _ in range(10):
            client.protocol.pauseProducing()
            for _ in range(500):
                client.send("x")
            client.protocol.resumeProducing()
        self.assertEqual(close_codes(client.received()), [])
        self.assertEqual(client.protocol.state, client.protocol.STATE_OPEN)


# ---------------------------------------------------------------------------
# Hostile handshakes.


class HandshakeFuzzTests(_FuzzCase):
    """The opening handshake: unusual headers accepted, broken requests refused, nothing raises."""

    def handshake(self, request: bytes) -> tuple[int | None, Any]:
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        room = getattr(self, "room", None) or _Room(self)
        self.room = room
        address = IPv4Address("TCP", "127.0.0.1", 50001)
        proto = room.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        proto.makeConnection(transport)
        proto.dataReceived(request)
        head = transport.value().split(b"\r\n", 1)[0]
        parts = head.split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        # Closed at once: the examples all come from one address, and connections
        # left open until the end would meet the per-address limit (503) in the long run.
        proto.connectionLost(Failure(ConnectionDone()))
        return status, transport

    def test_unusual_but_valid(self) -> None:
        """What browsers and libraries send (extension offers, subprotocols, Origin null, big cookies): 101."""
        for name, headers in UNUSUAL_HANDSHAKES.items():
            self.count()
            status, transport = self.handshake(upgrade_request(headers))
            self.assertEqual(status, 101, name)
            # No extension is negotiated: frames stay uncompressed.
            self.assertNotIn(b"sec-websocket-extensions", transport.value().lower(), name)

    def test_broken_requests(self) -> None:
        """
        Requests that are no usable upgrade get a 4xx (505 for HTTP/1.0; nothing
        for bytes that are not HTTP), never an exception.
        """
        for name, request in BAD_HANDSHAKES.items():
            self.count()
            status, _ = self.handshake(request)
            self.assertTrue(status is None or 400 <= status < 500 or status == 505, (name, status))

    @examples(200)
    @given(
        upgrade_headers((32, 126), 80, 5),
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40),
    )
    def test_arbitrary_headers(self, headers: list[tuple[str, str]], path: str) -> None:
        """Any extra header values and any path: 101 or a 4xx, never an exception; a 101 gets its challenge."""
        self.count()
        status, transport = self.handshake(upgrade_request(headers, "/" + path))
        self.assertTrue(status == 101 or (status is not None and 400 <= status < 500), status)
        if status == 101:
            self.assertIn(b'{"challenge": "', transport.value())


# ---------------------------------------------------------------------------
# Forged and mangled tokens.


class TokenFuzzTests(_FuzzCase):
    """Forged and mangled tokens, at the verifier and through the handler."""

    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.clock.advance(NOW)
        self.verifier = settings_for_tests().token_verifier(self.clock)
        self.valid = make_token(uid=VICTIM, now=NOW)

    def assert_refused(self, token: str, label: str = "") -> str:
        try:
            claims = self.verifier.verify(token)
        except AuthError as e:
            return e.reason
        self.fail(f"{label or token[:80]!r} was accepted for {claims.uid}")

    def test_forged_tokens_refused(self) -> None:
        """
        Every forgery fails with AuthError (never another exception), and
        through the handler gets Authentication failed.
        """
        tokens = forged_tokens()
        reasons = {label: self.assert_refused(token, label) for label, token in tokens.items()}
        self.assertNotIn("", reasons.values())
        room = _Room(self, websocket_max_message_size=2 * 1024 * 1024)
        for label, token in tokens.items():
            self.count()
            client = room.connect()
            client.send_json({"jwt": "Bearer " + token})
            frames = client.received()
            self.assertEqual(text_payloads(frames), [Reply.AUTH_FAILED], label)
            self.assertEqual(room.registry.claims(client.protocol), None, label)
            room.check_no_leak(client)

    def test_one_megabyte_token_default_limit(self) -> None:
        """A 1 MB token with the default WEBSOCKET_MAX_MESSAGE_SIZE is closed with 1009 before any verification."""
        self.count()
        room = _Room(self)
        client = room.connect()
        frame = client_frame(json.dumps({"jwt": "Bearer " + "A" * 1_000_000}).encode())
        # As TCP hands it over: at most 64 KiB per read.
        for start in range(0, len(frame), 65536):
            client.protocol.dataReceived(frame[start : start + 65536])
        self.assertEqual(close_codes(client.received()), [1009])
        self.assertEqual(
            room.metrics.registry.get_sample_value("peatio_ws_authentications_total", {"result": "failure",
                                                                                      "reason": "malformed"}),
            None,
        )

    @examples(300)
    @given(st.data())
    def test_truncated_and_mutated(self, data: st.DataObject) -> None:
        """
        Any prefix, or any one-character change, of a valid token fails,
        unless base64's slack bits make it decode to the very same bytes.
        """
        self.count()
        token = self.valid
        if data.draw(st.booleans()):
            cut = data.draw(st.integers(0, len(token) - 1))
            mangled = token[:cut]
        else:
            index = data.draw(st.integers(0, len(token) - 1))
            char = data.draw(st.characters(codec="ascii"))
            assume(char != token[index])
            mangled = token[:index] + char + token[index + 1 :]
        try:
            claims = self.verifier.verify(mangled)
        except AuthError:
            return
        # Accepted: then it must decode to exactly the original header, claims and signature.
        self.assertEqual(claims.uid, VICTIM)
        self.assertEqual(_decoded(mangled), _decoded(token))

    @examples(300)
    @given(st.one_of(st.text(max_size=2000), st.lists(st.text(max_size=300), min_size=1, max_size=6).map(".".join),
                     st.lists(st.binary(max_size=300).map(b64url), min_size=3, max_size=3).map(".".join)))
    def test_arbitrary_strings(self, token: str) -> None:
        """Arbitrary text, and three arbitrary base64url segments, always fail with AuthError."""
        self.count()
        self.assert_refused(token)

    @examples(150)
    @given(
        st.dictionaries(st.sampled_from(["alg", "typ", "kid", "jku", "crit", "b64", "zip", "enc", "cty", "x5c"]),
                        _json_values(), max_size=5),
        st.dictionaries(st.text(max_size=6), _json_values(), max_size=5),
    )
    def test_arbitrary_headers_and_claims_unsigned(self, header: dict[str, Any], claims: dict[str, Any]) -> None:
        """Any header and any claims, with a made-up signature, fail with AuthError."""
        self.count()
        self.assert_refused(craft_token(header, claims, b"\x01" * 256))
        self.assert_refused(craft_token({**header, "alg": "RS256"}, {**_claims(), **claims}, b"\x01" * 256))

    @examples(150)
    @given(st.dictionaries(st.sampled_from(["sub", "jti", "uid", "exp", "nbf", "iat", "aud", "iss"]),
                           _json_values(), min_size=1, max_size=4))
    def test_claims_of_any_type_signed(self, overrides: dict[str, Any]) -> None:
        """Correctly signed tokens with claims of any JSON type: AuthError or valid claims, never another exception."""
        self.count()
        token = make_token(now=NOW, **overrides)
        try:
            claims = self.verifier.verify(token)
        except AuthError:
            return
        self.assertIsInstance(claims.uid, str)
        self.assertTrue(claims.uid.strip())
        self.assertIsInstance(claims.jti, str)


def _decoded(token: str) -> list[bytes]:
    import base64

    return [base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)) for part in token.split(".")]


# ---------------------------------------------------------------------------
# Hostile members: uids that look like routing-key wildcards.


class HostileUidTests(_FuzzCase):
    """Members whose (genuinely signed) uid is a wildcard or contains dots never see another's events."""

    UIDS = ("*", "#", "ID*", "ID#", f"{VICTIM}.*", f"{VICTIM}.order", "private", ".", f"{VICTIM} ", VICTIM.lower())

    def test_wildcard_uids_get_nothing_of_others(self) -> None:
        """
        A hostile uid that cannot be a routing key (wildcards, dots) fails to
        authenticate although the token is genuine (bad_uid); the others
        authenticate and receive only events published for that exact uid.
        """
        self.count()
        harness = Harness(self, rabbitmq_unbind_delay=0.0)
        broker = harness.consuming()
        room = _Room(self, registry=harness.registry, metrics=harness.metrics, pump=broker.pump)
        victim = room.victim
        hostile = {}
        for uid in self.UIDS:
            client = room.connect()
            client.send_json({"jwt": "Bearer " + make_token(uid=uid, now=NOW)})
            broker.pump()
            # The reference rule: a routing-key word has none of . * #
            bindable = not any(c in uid for c in ".*#")
            expected = Reply.AUTHENTICATED if bindable else Reply.AUTH_FAILED
            self.assertEqual(text_payloads(client.received()), [expected], uid)
            hostile[uid] = client
        self.assertEqual(
            room.metrics.registry.get_sample_value(
                "peatio_ws_authentications_total", {"result": "failure", "reason": "bad_uid"}
            ),
            7,
        )
        broker.pump()
        bound = {k.decode() for k in _bind_keys(broker)}
        self.assertEqual(bound, {f"private.{VICTIM}.*", "private.private.*", f"private.{VICTIM.lower()}.*",
                                 f"private.{VICTIM} .*"})
        # Whatever reaches the queue (a catch-all binding, a hostile producer), events go to their exact uid only.
        for key in [f"private.{VICTIM}.order", "private.*.order", "private.#.order", f"private.{VICTIM}.*",
                    f"private.{VICTIM}.order.x", f"private..{VICTIM}", f"private.{VICTIM}", "private.ID*.order"]:
            broker.deliver(key.encode(), b'{"secret":"' + key.encode() + b'"}')
        broker.pump()
        got = {uid: [f.payload for f in c.received() if f.opcode == 1] for uid, c in hostile.items()}
        for uid in self.UIDS:
            self.assertEqual(got[uid], [], uid)
        # The victim gets its own, including an event literally named "*" by a producer.
        self.assertEqual(
            text_payloads(victim.received()),
            [b'{"order":{"secret":"private.' + VICTIM.encode() + b'.order"}}',
             b'{"*":{"secret":"private.' + VICTIM.encode() + b'.*"}}'],
        )


def _bind_keys(broker: FakeBroker) -> list[bytes]:
    return bind_keys(broker)


# ---------------------------------------------------------------------------
# The RabbitMQ side.


class AmqpFuzzTests(_FuzzCase):
    """Arbitrary routing keys and bodies, and garbage frames, at the consumer."""

    MEMBERS = ("IDA", "IDB", "*", "#")

    def setUp(self) -> None:
        super().setUp()
        self.harness = Harness(self)
        self.broker = self.harness.consuming()
        self.conns = {uid: self.harness.join(uid) for uid in self.MEMBERS}
        self.broker.pump()

    @examples(500)
    @given(st.binary(max_size=255))
    def test_parse_routing_key(self, key: bytes) -> None:
        """Never raises, and agrees with the reference reading of SPEC §4's key (a regular expression)."""
        self.count()
        self.assertEqual(parse_routing_key(key), private_key_names(key))

    @examples(300)
    @given(
        st.one_of(
            st.binary(max_size=255),
            st.builds(lambda u, e: f"private.{u}.{e}".encode(), st.sampled_from((*MEMBERS, "", "IDC", "ida")),
                      st.text(max_size=12).filter(lambda t: "." not in t)).filter(lambda k: len(k) <= 255),
            st.sampled_from([b"private..order", b"private.IDA", b"private.IDA.", b"private.IDA.order.x",
                             b"public.IDA.order", b"private.IDA.\xff", b"private.\xff\xfe.order",
                             b"PRIVATE.IDA.order", b""]),
        ),
        st.one_of(st.binary(max_size=200), _json_values().map(lambda v: json.dumps(v).encode()),
                  st.sampled_from([b"NaN", b'{"a":Infinity}', b"[" * 3000 + b"]" * 3000, b"\xef\xbb\xbf{}"])),
    )
    def test_deliveries(self, key: bytes, body: bytes) -> None:
        """
        Any message reaches exactly the connections of the uid its key
        names exactly (body forwarded as published), or none; it is always
        acknowledged; the consumer keeps running.
        """
        self.count()
        before = {uid: len(c.frames) for uid, c in self.conns.items()}
        tag = self.broker.deliver(key, body)
        self.broker.pump()
        self.assertTrue(self.harness.consumer.up)
        self.harness.reactor.advance(ACK_INTERVAL)  # acks within the interval of the last one go when it is up
        self.broker.pump()
        self.assertEqual(self.broker.acks[-1][0], tag)
        # Who should get it, decided by the reference model, not by the consumer's own functions.
        named = private_key_names(key)
        for uid, conn in self.conns.items():
            new = conn.frames[before[uid]:]
            if named is not None and named[0] == uid and forwardable(body):
                [frame] = new
                self.assertTrue(frame.endswith(body + b"}"))
            else:
                self.assertEqual(new, [], (uid, key, body[:40]))

    @examples(200)
    @given(st.binary(min_size=1, max_size=400))
    def test_garbage_frames(self, data: bytes) -> None:
        """
        Garbage from the broker never raises out of the protocol: it is
        ignored, waited on (an incomplete frame), or the connection is
        dropped and the consumer tries again.
        """
        self.count()
        harness = Harness(self)
        broker = harness.consuming()
        harness.join("IDA")
        broker.pump()
        client = harness.consumer._connection
        assert client is not None
        client.dataReceived(data)
        broker.pump()
        errors = self.flushLoggedErrors()
        if not harness.consumer.up:
            self.assertTrue(broker.lost)
            harness.reactor.advance(30)
            self.assertEqual(len(harness.reactor.tcpClients), 2, "no reconnection attempt")
        else:
            # Garbage the consumer kept its connection over was ignored or waited on, not failed on.
            self.assertEqual(errors, [], "an error was logged, yet the connection was kept")
