"""
The door's quick upgrade (L{peatio_ws.websocket._autobahn}) against
Autobahn's own C{processHandshake}, its oracle: for every request, the
same bytes answered, the same request handed to C{onConnect} and the same
handshake state left on the connection, whether the quick parser read it or
left it to Autobahn. The usual requests must be read by the quick parser
(else these tests would pass by never using it); the rest must not be.
"""

from __future__ import annotations

from typing import Any, ClassVar

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.testing.frames import SAMPLE_KEY, client_frame, upgrade_request
from peatio_ws.websocket._autobahn import BoundedServerProtocol, bake_options
from tests.support.corpus import BAD_HANDSHAKES, UNUSUAL_HANDSHAKES, handshake_with
from tests.support.fuzzing import examples, upgrade_headers

#: What Autobahn's handshake leaves on the connection, compared attribute by attribute.
STATE = (
    "state",
    "data",
    "http_request_data",
    "http_status_line",
    "http_headers",
    "http_request_uri",
    "http_request_path",
    "http_request_params",
    "http_request_host",
    "websocket_version",
    "websocket_protocols",
    "websocket_origin",
    "websocket_extensions",
    "_wskey",
    "http_response_data",
    "websocket_protocol_in_use",
    "wasNotCleanReason",
)
_MISSING = "<not set>"

#: Requests of the usual shape: the quick parser must read each.
USUAL: dict[str, bytes] = {
    "plain": handshake_with([]),
    "Origin": handshake_with([("Origin", "https://exchange.example.com")]),
    "Origin with a port": handshake_with([("Origin", "http://127.0.0.1:3000")]),
    "Origin null": handshake_with([("Origin", "null")]),
    "Origin file://, null to Autobahn": handshake_with([("Origin", "file://")]),
    "Chrome's offer": handshake_with([("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")]),
    "Firefox's offer": handshake_with([("Sec-WebSocket-Extensions", "permessage-deflate")]),
    "subprotocols": handshake_with([("Sec-WebSocket-Protocol", "chat, superchat")]),
    "ranger, query": handshake_with([], "/api/v2/ranger/public/?stream=global.tickers&stream=btcusd.trades"),
    "empty query": handshake_with([], "/?"),
    "query with ? and ;": handshake_with([], "/x?a=1;b=2?c"),
    "Authorization": handshake_with([("Authorization", "Bearer aaa.bbb.ccc")]),
    "host without port": upgrade_request("/", "exchange.example.com", [], key=SAMPLE_KEY),
    "IPv6 host": upgrade_request("/", "[::1]:8080", [], key=SAMPLE_KEY),
    "IPv6 host, no port": upgrade_request("/", "[::1]", [], key=SAMPLE_KEY),
    "Connection list": b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "spaces around values": b"GET / HTTP/1.1\r\nHost:  x \r\nUpgrade:websocket\r\nConnection: Upgrade\t\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "a frame after the head": handshake_with([]) + client_frame(b"ping"),
    "cookie and user agent": handshake_with([("Cookie", "a=" + "x" * 2000), ("User-Agent", "Mozilla/5.0 (X11)")]),
}

#: Requests Autobahn must read: odd, refused, or outside the quick grammar.
UNUSUAL: dict[str, bytes] = {
    **BAD_HANDSHAKES,
    "Host twice": handshake_with([("Host", "y")]),
    "a fragment": handshake_with([], "/#x"),
    "path parameters": handshake_with([], "/a;b"),
    "network-path": handshake_with([], "//evil/x"),
    "absolute URI": handshake_with([], "http://x/"),
    "a bad key": upgrade_request("/", "x", [], key="short=="),
    "version 013": handshake_with([]).replace(b"Version: 13\r\n", b"Version: 013\r\n"),
    "an unknown offer": handshake_with([("Sec-WebSocket-Extensions", "x-webkit-deflate-frame")]),
    "offer parameters": handshake_with([("Sec-WebSocket-Extensions", "permessage-deflate; server_max_window_bits=10")]),
    "a broken offer": handshake_with([("Sec-WebSocket-Extensions", "permessage-deflate; bogus=1")]),
    "subprotocol twice": handshake_with([("Sec-WebSocket-Protocol", "chat, chat")]),
    "Origin without host": handshake_with([("Origin", "http://")]),
    "port not a number": upgrade_request("/", "x:+80", [], key=SAMPLE_KEY),
    "empty port": upgrade_request("/", "x:", [], key=SAMPLE_KEY),
    "obs-fold": handshake_with([]).replace(b"\r\n\r\n", b"\r\n folded\r\n\r\n"),
    "empty value": handshake_with([("X-Empty", "")]),
    "non-ASCII value": handshake_with([]).replace(b"\r\n\r\n", b"\r\nX-Name: caf\xc3\xa9\r\n\r\n"),
    "tab inside a value": handshake_with([]).replace(b"\r\n\r\n", b"\r\nX-Tab: a\tb\r\n\r\n"),
    "lower-case method": handshake_with([]).replace(b"GET", b"get", 1),
    "bare LF": handshake_with([]).replace(b"\r\nUpgrade", b"\nUpgrade"),
    "Connection without upgrade": handshake_with([]).replace(b"Connection: Upgrade", b"Connection: keep-alive"),
    "no Connection": handshake_with([]).replace(b"Connection: Upgrade\r\n", b""),
    "Upgrade: h2c": handshake_with([]).replace(b"Upgrade: websocket", b"Upgrade: h2c"),
}


class _Recorder(BoundedServerProtocol):
    """Records what C{onConnect} is handed and answers as the test says; counts the quick parser's verdicts."""

    answer: ClassVar[Any] = None
    requests: ClassVar[list[ConnectionRequest]]
    quick: ClassVar[list[bool]]

    def connectionMade(self) -> None:
        super().connectionMade()
        # As the daemon's protocol does: Autobahn unregisters it when it drops the connection.
        transport: Any = self.transport
        transport.registerProducer(self, True)

    def onConnect(self, request: ConnectionRequest) -> Any:
        self.requests.append(request)
        answer = type(self).answer
        if isinstance(answer, Exception):
            raise answer
        return answer() if callable(answer) else answer

    def _quick_upgrade(self, size: int) -> bool:
        taken = super()._quick_upgrade(size)
        self.quick.append(taken)
        return taken


class QuickUpgradeTests(SynchronousTestCase):
    def run_one(self, request: bytes, quick: bool, answer: Any = None) -> tuple[bytes, list[Any], dict[str, Any], bool]:
        """The answer written, the requests onConnect saw, the state left, and whether the quick parser read it."""
        factory = WebSocketServerFactory(server="peatio-ws")
        factory.setProtocolOptions(
            webStatus=False, failByDrop=False, openHandshakeTimeout=0, closeHandshakeTimeout=0, autoPingInterval=0,
            allowedOrigins=["*"], allowNullOrigin=True,
        )
        attributes = {"quick_upgrade": quick, "answer": answer, "requests": [], "quick": []}
        base: Any = type("Recorder", (_Recorder,), attributes)
        factory.protocol = bake_options(base, factory)
        address = IPv4Address("TCP", "127.0.0.1", 50000)
        proto: Any = factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        proto.makeConnection(transport)
        proto.dataReceived(request)
        state = {name: getattr(proto, name, _MISSING) for name in STATE}
        seen = [{slot: getattr(r, slot) for slot in ConnectionRequest.__slots__} for r in base.requests]
        taken = any(base.quick)
        proto.connectionLost(Failure(ConnectionDone()))
        return transport.value(), seen, state, taken

    def assertSame(self, name: str, request: bytes, answer: Any = None) -> bool:
        """The quick path and Autobahn's leave the same; whether the quick parser read C{request}."""
        written, seen, state, taken = self.run_one(request, True, answer)
        autobahn_written, autobahn_seen, autobahn_state, _ = self.run_one(request, False, answer)
        self.assertEqual(written, autobahn_written, name)
        self.assertEqual(seen, autobahn_seen, name)
        self.assertEqual(state, autobahn_state, name)
        return taken

    def test_usual_requests_read_quickly(self) -> None:
        """Each usual request: the quick parser reads it, and everything is as Autobahn leaves it (101)."""
        for name, request in USUAL.items():
            self.assertTrue(self.assertSame(name, request), f"{name}: the quick parser left it to Autobahn")
            written, *_ = self.run_one(request, True)
            self.assertTrue(written.startswith(b"HTTP/1.1 101 "), (name, written[:80]))

    def test_unusual_requests_left_to_autobahn(self) -> None:
        """Odd, broken and refused requests go to Autobahn, which answers them as always."""
        for name, request in {**UNUSUAL, **{k: handshake_with(v) for k, v in UNUSUAL_HANDSHAKES.items()}}.items():
            taken = self.assertSame(name, request)
            if name in UNUSUAL:
                self.assertFalse(taken, f"{name}: the quick parser read it")

    def test_refusals(self) -> None:
        """onConnect refusing at once, or later through a Deferred, or succeeding later: as Autobahn answers."""
        cases: dict[str, Any] = {
            "denied at once": ConnectionDeny(403, "Origin not allowed"),
            "denied later": lambda: fail(ConnectionDeny(401, "Unauthorized")),
            "accepted later": lambda: succeed(None),
            "still checking": Deferred,
        }
        for name, answer in cases.items():
            self.assertTrue(self.assertSame(name, USUAL["plain"], answer), name)

    def test_on_connect_failing(self) -> None:
        """A bug in onConnect: HTTP 500 with Autobahn's reason; the quick path logs the failure."""
        written, _, state, taken = self.run_one(USUAL["plain"], True, RuntimeError("boom"))
        autobahn_written, _, autobahn_state, _ = self.run_one(USUAL["plain"], False, RuntimeError("boom"))
        self.assertTrue(taken)
        self.assertEqual(written, autobahn_written)
        self.assertTrue(written.startswith(b"HTTP/1.1 500 Internal server error: boom"), written)
        self.assertEqual(state, autobahn_state)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @examples(300)
    @given(
        upgrade_headers((9, 255), 60, 4),
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40),
    )
    def test_arbitrary_requests(self, headers: list[tuple[str, str]], path: str) -> None:
        """
        Any values for the headers that decide (each replacing the usual one,
        or added when it is not there) and any path: the quick path and
        Autobahn's answer and leave the same.
        """
        usual = {"Host": "localhost:8080", "Upgrade": "websocket", "Connection": "Upgrade",
                 "Sec-WebSocket-Key": SAMPLE_KEY, "Sec-WebSocket-Version": "13"}
        lines = {**usual, **dict(headers)}
        head = f"GET /{path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in lines.items()) + "\r\n"
        request = head.encode("latin-1")
        if b"\r\n\r\n" in request[:-4]:
            return
        self.assertSame(repr((headers, path)), request)
