# -*- test-case-name: tests.unit.test_protocol -*-
"""
The client-facing WebSocket protocol (SPEC §3).

One L{StreamProtocol} per connection: challenge on open, C{{"jwt": "Bearer …"}}
authentication with exactly the documented replies, token expiry, the auth
timeout, C{ping}/C{pong}, back-pressure on event delivery, and the bounds on
what a client may send (request head, handshake time, frames per message, an
inbound rate budget). Nothing is sent through Autobahn's C{sendMessage}: the
registry frames each event once and L{StreamProtocol.send_frame} writes the
ready frame; the challenge and replies are framed the same way. That also
keeps the inbound message limit from applying to what the server sends.

Time comes from the factory's injected clock, so every timer is testable with
L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import math
import os
from collections.abc import Iterable
from types import FunctionType
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import orjson
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import tcp
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from peatio_ws.auth import AuthError, Claims, TokenVerifier
from peatio_ws.config import Settings
from peatio_ws.framing import text_frame
from peatio_ws.logs import logger
from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry

if TYPE_CHECKING:
    from peatio_ws.redis import RevocationService

__all__ = ["CloseCode", "Reply", "StreamFactory", "StreamProtocol", "normalize_origin", "parse_client_json"]

# Not "log": Autobahn's protocol has its own self.log, and replacing it floods
# the log with per-frame debug lines.
_log = logger("peatio_ws.protocol")

_STATE_OPEN = WebSocketProtocol.STATE_OPEN


def _message(kind: str, text: str) -> bytes:
    return json.dumps({kind: {"message": text}}, separators=(",", ":")).encode("utf-8")


class Reply:
    """The exact server messages of SPEC §3 (compact JSON, one key each)."""

    AUTHENTICATED = _message("success", "Authenticated.")
    TOKEN_TYPE = _message("error", "Token type is not provided or invalid.")
    AUTH_FAILED = _message("error", "Authentication failed.")
    HANDLING_ERROR = _message("error", "Error while handling message.")
    TOKEN_EXPIRED = _message("error", "Token expired.")
    TOO_MANY_ATTEMPTS = _message("error", "Too many authentication attempts.")


class CloseCode:
    """Close codes the server sends (SPEC §3.4)."""

    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    TOKEN_EXPIRED = 4001
    AUTH_TIMEOUT = 4002
    REVOKED = 4003
    SLOW_CONSUMER = 4008
    TOO_MANY_ATTEMPTS = 4029


#: Messages that may wait behind an authentication still checking Redis.
_MAX_QUEUED_MESSAGES = 16

#: Deepest JSON nesting a client message may have: orjson's own fixed bound.
#: Client messages are parsed in C without recursion, so no Python-level depth
#: scan is needed and whether a deep message parses never depends on the stack.
MAX_JSON_DEPTH = 1024


def parse_client_json(payload: bytes) -> Any:
    """
    A client message as strict JSON (RFC 8259: no NaN or Infinity, no number
    that overflows a double, no lone surrogate, at most L{MAX_JSON_DEPTH}
    levels), or raise C{ValueError}.
    """
    return orjson.loads(payload)


#: Largest upgrade request head (request line and headers) a client may send.
#: Browsers send well under 2 KiB; nginx's default limit is 8 KiB per line.
#: Larger: HTTP 431 and closed.
MAX_REQUEST_HEAD = 16384
#: Frames one client message may be split into, and how many of them may be
#: empty and not final. Every frame costs a buffer entry and a Python call
#: whatever its length, so the byte limit alone does not bound a message made
#: of many small or empty frames. Browsers send each message in one frame.
MAX_FRAMES_PER_MESSAGE = 64
MAX_EMPTY_FRAGMENTS = 4
#: A frame header is at most 14 bytes: the bytes budget's burst allows two
#: of the largest messages with their headers on top of a request head.
_FRAME_OVERHEAD = 14

#: Connections pinged at a time. Pinging 15,000 connections at once took 70
#: to 135 ms just to write the pings, then their sends and the 15,000 pongs
#: coming back at once: events waited up to 0.4 s behind them (p99 0.3 s at
#: 2,000 events/s). Slices of this size go out L{PING_SLICE_GAP} apart (the
#: whole sweep within a quarter of the interval), so pings and pongs are
#: spread out and an event waits behind one small slice at most.
PING_SLICE = 20
PING_SLICE_GAP = 0.02
#: A ping frame (final, no payload), written like an event frame: Autobahn's
#: sendPing costs several times more, and nothing of ours needs it to know.
PING_FRAME = b"\x89\x00"


def new_challenge() -> str:
    """40 random bytes, URL-safe base64 without padding: 54 characters."""
    return base64.urlsafe_b64encode(os.urandom(40)).rstrip(b"=").decode("ascii")


def normalize_origin(origin: str) -> str | None:
    """
    C{scheme://host[:port]} in lower case with the scheme's default port
    dropped, or None for an origin that is not a URL (C{null}, junk).
    """
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    default = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(scheme)
    netloc = parts.hostname.lower() if port in (None, default) else f"{parts.hostname.lower()}:{port}"
    return f"{scheme}://{netloc}"


@implementer(IPushProducer)
class StreamProtocol(WebSocketServerProtocol):
    """One client connection. Also the transport's push producer, to see back-pressure."""

    factory: StreamFactory
    # A TCP or TLS transport: also a consumer we register as producer with.
    transport: Any

    conn_id = "-"
    claims: Claims | None = None
    _socket: Any = None
    # Class-level defaults, written per connection only when they change:
    # each instance attribute costs memory on every idle connection.
    #: How far the upgrade request has been searched for its end.
    _head_scanned = 0
    #: Frames (and empty non-final frames) of the message being received.
    _message_frames = 0
    _empty_fragments = 0
    #: Token buckets of the inbound budget: tokens left and when last filled.
    _frame_tokens = math.inf
    _frames_at = 0.0
    _byte_tokens = math.inf
    _bytes_at = 0.0
    #: Set once the server refused what the client sent: read no more.
    _muted = False

    def __init__(self) -> None:
        super().__init__()
        self.challenge = ""
        self.awaiting_pong = False
        self._auth_timer: IDelayedCall | None = None
        self._expiry_timer: IDelayedCall | None = None
        self._busy: Deferred[Any] | None = None
        # Lists, not deques: both stay short (queued messages are capped, attempts
        # are limited per minute), and an empty deque costs 760 bytes.
        self._queued: list[tuple[bytes, bool]] = []
        self._paused = False
        self._written_while_paused = 0
        self._attempts: list[float] = []
        self._client_ip = ""
        self._counted = False
        self._close_reason = ""

    # -- connection lifecycle -------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self._client_ip = getattr(peer, "host", "") or ""
        super().connectionMade()
        self.transport.registerProducer(self, True)
        # Plain TCP (not TLS): events may go straight to the socket (send_frame).
        self._socket = self.transport.socket if isinstance(self.transport, tcp.Connection) else None
        # Admitted from the first byte, not once the upgrade request is read:
        # sockets still in their handshake count against the per-address and
        # the global limits, and the handshake deadline starts now.
        refusal = self.factory.admit(self)
        if refusal is None:
            self._counted = True
        else:
            self.refuse(503, "Service Unavailable", refusal)

    def refuse(self, code: int, text: str, reason: str) -> None:
        """Answer the upgrade request with HTTP C{code} and close; read nothing more."""
        self.factory.metrics.rejected.labels(reason=reason).inc()
        _log.info("refused {peer}: {reason}", peer=self.peer, reason=reason)
        self._mute()
        self.failHandshake(text, code)

    def _mute(self) -> None:
        """Stop reading from this client: nothing it sends from now on is looked at."""
        self._muted = True
        self.data = b""
        transport = self.transport
        if transport is not None and not transport.disconnecting:
            transport.pauseProducing()

    def onConnect(self, request: ConnectionRequest) -> None:
        """Check the Origin before the upgrade."""
        factory = self.factory
        origin = request.headers.get("origin")
        if factory.allowed_origins and origin is not None and not factory.origin_allowed(origin):
            factory.metrics.rejected.labels(reason="origin").inc()
            _log.info("refused {peer}: origin {origin!r} not allowed", peer=self.peer, origin=origin[:200])
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "Origin not allowed")

    # -- what the client sends, bounded before Autobahn buffers or parses it ----------

    def _dataReceived(self, data: bytes) -> None:
        if self._muted:
            return
        if not self._spend_bytes(len(data)):
            return
        super()._dataReceived(data)

    def processHandshake(self) -> None:
        """
        Look for the end of the upgrade request in the bytes not searched
        yet only, and refuse a request head over L{MAX_REQUEST_HEAD}.
        """
        data = self.data
        scanned = self._head_scanned
        end = data.find(b"\r\n\r\n", scanned - 3 if scanned > 3 else 0)
        if end < 0:
            if len(data) > MAX_REQUEST_HEAD:
                self.factory.metrics.inbound_limited.labels(limit="request_head").inc()
                self.refuse(431, "Request Header Fields Too Large", "request_head_too_large")
            else:
                self._head_scanned = len(data)
            return
        if end + 4 > MAX_REQUEST_HEAD:
            self.factory.metrics.inbound_limited.labels(limit="request_head").inc()
            self.refuse(431, "Request Header Fields Too Large", "request_head_too_large")
            return
        super().processHandshake()

    def onFrameBegin(self) -> None:
        # Autobahn's frame state is set up first either way, so that the rest
        # of a refused frame is skipped the usual way (failedByMe).
        super().onFrameBegin()
        if not self.failedByMe:
            self._spend_frame()

    def onMessageBegin(self, isBinary: bool) -> None:
        self._message_frames = self._empty_fragments = 0
        super().onMessageBegin(isBinary)

    def onMessageFrameBegin(self, length: int) -> None:
        super().onMessageFrameBegin(length)
        if self.failedByMe:
            return
        self._message_frames += 1
        if length == 0 and not self.current_frame.fin:
            self._empty_fragments += 1
        if self._message_frames > MAX_FRAMES_PER_MESSAGE or self._empty_fragments > MAX_EMPTY_FRAGMENTS:
            self._over_budget("message_frames", "Too many frames in one message")

    def _spend_frame(self) -> bool:
        """Take one frame from the frame budget; False (and closing 1008) when it is spent."""
        rate = self.factory.settings.websocket_inbound_frames_per_second
        if rate <= 0:
            return True
        now = self.factory.clock.seconds()
        tokens = min(2.0 * rate, self._frame_tokens + (now - self._frames_at) * rate) - 1
        self._frame_tokens = tokens
        self._frames_at = now
        if tokens < 0:
            self._over_budget("frames", "Too many messages")
            return False
        return True

    def _spend_bytes(self, size: int) -> bool:
        """Take C{size} bytes from the byte budget; False (and closing 1008) when it is spent."""
        factory = self.factory
        rate = factory.settings.websocket_inbound_bytes_per_second
        if rate <= 0:
            return True
        now = factory.clock.seconds()
        tokens = min(factory.byte_burst, self._byte_tokens + (now - self._bytes_at) * rate) - size
        self._byte_tokens = tokens
        self._bytes_at = now
        if tokens < 0:
            self._over_budget("bytes", "Too much data")
            return False
        return True

    def _over_budget(self, limit: str, reason: str) -> None:
        """Close 1008 for what the client sent, and stop reading from it."""
        factory = self.factory
        factory.metrics.inbound_limited.labels(limit=limit).inc()
        claims = self.claims
        _log.info(
            "connection {conn_id} from {peer}{uid}: {reason}; closing",
            conn_id=self.conn_id,
            peer=self.peer,
            uid=f" of {claims.uid}" if claims is not None else "",
            reason=reason,
        )
        if self.state == _STATE_OPEN:
            self._close_reason = f"{CloseCode.POLICY_VIOLATION} {reason}"
            factory.metrics.closes.labels(reason=str(CloseCode.POLICY_VIOLATION)).inc()
            self._stop_events()
            self._fail_connection(CloseCode.POLICY_VIOLATION, reason)
            self._mute()
        elif self.state == WebSocketProtocol.STATE_CONNECTING:
            self._mute()
            self.dropConnection(abort=True)
        else:
            self._mute()

    def onOpen(self) -> None:
        factory = self.factory
        # Autobahn keeps the raw handshake request and response and the parsed
        # headers (for its own test suite); nothing reads them once open: ~1.2 KB
        # per connection.
        self.http_request_data = b""
        self.http_response_data = ""
        self.http_headers = {}
        factory.handshake_done(self)
        factory.connection_opened(self)
        self.challenge = new_challenge()
        self._write(text_frame(json.dumps({"challenge": self.challenge}).encode("ascii")))
        self._start_auth_timer()
        _log.info("connection {conn_id} opened from {peer}", conn_id=self.conn_id, peer=self.peer)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._forget()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        try:
            super().connectionLost(reason)
        finally:
            self._forget()

    def _forget(self) -> None:
        """Undo everything this connection holds; idempotent, runs on every close path."""
        self._cancel(self._auth_timer)
        self._cancel(self._expiry_timer)
        self._auth_timer = self._expiry_timer = None
        self._queued.clear()
        factory = self.factory
        factory.handshake_done(self)
        if self.claims is not None:
            factory.registry.deauthenticate(self)
            self.claims = None
        if factory.connection_closed(self):
            _log.info(
                "connection {conn_id} closed{reason}",
                conn_id=self.conn_id,
                reason=f" ({self._close_reason})" if self._close_reason else "",
            )
        if self._counted:
            self._counted = False
            factory.release(self._client_ip)

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()

    def close_with(self, code: int, reason: str, reply: bytes | None = None) -> None:
        """Send C{reply} (if any), then the closing handshake with C{code}."""
        if self.state != _STATE_OPEN:
            return
        self._close_reason = f"{code} {reason}"
        self.factory.metrics.closes.labels(reason=str(code)).inc()
        if reply is not None:
            self._write(text_frame(reply))
        self._stop_events()
        self.sendClose(code, reason)

    def going_away(self) -> None:
        """Server shutdown: 1001, which Autobahn's sendClose refuses."""
        if self.state == _STATE_OPEN:
            self._close_reason = "1001 shutdown"
            self._stop_events()
            self.sendCloseFrame(code=CloseCode.GOING_AWAY, reasonUtf8=b"Server shutting down", isReply=False)
        elif self.state != WebSocketProtocol.STATE_CLOSED and self.transport is not None:
            self.transport.abortConnection()

    def _stop_events(self) -> None:
        if self.claims is not None:
            self.factory.registry.deauthenticate(self)
            self.claims = None

    # -- timers ------------------------------------------------------------------

    def _start_auth_timer(self) -> None:
        timeout = self.factory.settings.websocket_auth_timeout
        self._cancel(self._auth_timer)
        self._auth_timer = None
        if timeout > 0:
            self._auth_timer = self.factory.clock.callLater(timeout, self._auth_timed_out)

    def _auth_timed_out(self) -> None:
        self._auth_timer = None
        if self.claims is None:
            _log.info("connection {conn_id} did not authenticate in time", conn_id=self.conn_id)
            self.close_with(CloseCode.AUTH_TIMEOUT, "Authentication timeout")

    def _token_expired(self) -> None:
        self._expiry_timer = None
        claims = self.claims
        _log.info("connection {conn_id} token of {uid} expired", conn_id=self.conn_id, uid=claims and claims.uid)
        self.close_with(CloseCode.TOKEN_EXPIRED, "Token expired", Reply.TOKEN_EXPIRED)

    # -- messages ------------------------------------------------------------------

    def onPong(self, payload: bytes) -> None:
        self.awaiting_pong = False

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.awaiting_pong = False
        if self._busy is not None:
            if len(self._queued) >= _MAX_QUEUED_MESSAGES:
                self._reply(Reply.HANDLING_ERROR)
            else:
                self._queued.append((payload, isBinary))
            return
        self._handle(payload, isBinary)

    def _handle(self, payload: bytes, is_binary: bool) -> None:
        try:
            pending = self._process(payload, is_binary)
        except Exception:
            _log.failure("connection {conn_id}: failure handling a message", conn_id=self.conn_id)
            self._reply(Reply.HANDLING_ERROR)
            return
        if pending is not None:
            self._busy = pending
            pending.addBoth(self._finished_pending)

    def _finished_pending(self, result: object) -> None:
        self._busy = None
        while self._queued and self._busy is None and self.state == _STATE_OPEN:
            self._handle(*self._queued.pop(0))

    def _reply(self, message: bytes) -> None:
        # A reply is unsent data like an event: a client that sends but never
        # reads must not make the server buffer replies without bound.
        if self.state == _STATE_OPEN and self._room_for(len(message) + 4):
            # Framed here, not by sendMessage: Autobahn applies the inbound
            # message limit to what it sends too.
            self._write(text_frame(message))

    def onPing(self, payload: bytes) -> None:
        # Autobahn answers every client ping with a pong: held like any other write.
        if self.state == _STATE_OPEN and self._room_for(len(payload) + 2):
            super().onPing(payload)

    def _process(self, payload: bytes, is_binary: bool) -> Deferred[None] | None:
        """Handle one client message; a Deferred while a revocation check runs."""
        if is_binary:
            self._reply(Reply.HANDLING_ERROR)
            return None
        if payload == b"ping":
            self._reply(b"pong")
            return None
        try:
            message = parse_client_json(payload)
        except ValueError:
            self._reply(Reply.HANDLING_ERROR)
            return None
        if not isinstance(message, dict) or "jwt" not in message:
            self._reply(Reply.HANDLING_ERROR)
            return None
        value = message["jwt"]
        if not isinstance(value, str):
            self._reply(Reply.TOKEN_TYPE)
            return None
        kind, _, token = value.partition(" ")
        if kind != "Bearer":
            self._reply(Reply.TOKEN_TYPE)
            return None
        return self._authenticate(token.strip())

    def _over_attempt_limit(self) -> bool:
        limit = self.factory.settings.websocket_auth_attempts_per_minute
        if limit <= 0:
            return False
        now = self.factory.clock.seconds()
        attempts = self._attempts
        while attempts and attempts[0] <= now - 60:
            attempts.pop(0)
        attempts.append(now)
        return len(attempts) > limit

    def _authenticate(self, token: str) -> Deferred[None] | None:
        factory = self.factory
        if self._over_attempt_limit():
            factory.metrics.auth.labels(result="failure", reason="rate_limited").inc()
            self.close_with(CloseCode.TOO_MANY_ATTEMPTS, "Too many authentication attempts", Reply.TOO_MANY_ATTEMPTS)
            return None
        try:
            claims = factory.verifier.verify(token)
        except AuthError as e:
            self._auth_failed(e.reason)
            return None
        revocation = factory.revocation
        if revocation is None:
            self._auth_succeeded(claims)
            return None
        checking = revocation.is_revoked(claims.jti)

        def checked(revoked: bool) -> None:
            if revoked:
                self._auth_failed("revoked")
            else:
                self._auth_succeeded(claims)

        def unavailable(failure: Failure) -> None:
            _log.warn(
                "connection {conn_id}: revocation check failed: {error}",
                conn_id=self.conn_id,
                error=failure.getErrorMessage(),
            )
            self._auth_failed("revocation_unavailable")

        return checking.addCallbacks(checked, unavailable)

    def _auth_failed(self, reason: str) -> None:
        factory = self.factory
        factory.metrics.auth.labels(result="failure", reason=reason).inc()
        if self.state != _STATE_OPEN:
            return
        previous = self.claims
        if previous is not None:
            # A failed re-authentication drops the old one: no more events.
            factory.registry.deauthenticate(self)
            self.claims = None
            self._cancel(self._expiry_timer)
            self._expiry_timer = None
            self._start_auth_timer()
        _log.info(
            "connection {conn_id} authentication failed: {reason}{was}",
            conn_id=self.conn_id,
            reason=reason,
            was=f" (was {previous.uid})" if previous is not None else "",
        )
        self._reply(Reply.AUTH_FAILED)

    def _auth_succeeded(self, claims: Claims) -> None:
        factory = self.factory
        if self.state != _STATE_OPEN:
            return
        previous = self.claims
        factory.registry.authenticate(self, claims)
        self.claims = claims
        self._cancel(self._auth_timer)
        self._auth_timer = None
        self._cancel(self._expiry_timer)
        self._expiry_timer = None
        if claims.expires_at is not None:
            delay = max(0.0, claims.expires_at - factory.clock.seconds())
            self._expiry_timer = factory.clock.callLater(delay, self._token_expired)
        factory.metrics.auth.labels(result="success", reason="ok").inc()
        if previous is None:
            _log.info("connection {conn_id} authenticated as {uid}", conn_id=self.conn_id, uid=claims.uid)
        elif previous.uid != claims.uid:
            _log.info(
                "connection {conn_id} re-authenticated as {uid} (was {old})",
                conn_id=self.conn_id,
                uid=claims.uid,
                old=previous.uid,
            )
        self._reply(Reply.AUTHENTICATED)

    # -- what the registry calls -----------------------------------------------------

    def send_frame(self, frame: bytes) -> bool:
        """
        Write a ready event frame. While the transport has asked us to pause
        (its buffer is full: the client is not reading), count what piles up
        and close with 4008 past WEBSOCKET_MAX_BUFFER instead of buffering
        without bound.
        """
        if self.state != _STATE_OPEN:
            return False
        if self._paused:
            if self._held_bytes() + len(frame) > self.factory.settings.websocket_max_buffer:
                self.factory.metrics.slow_consumer_closes.inc()
                _log.warn(
                    "connection {conn_id} of {uid} is not keeping up; closing",
                    conn_id=self.conn_id,
                    uid=self.claims and self.claims.uid,
                )
                self.close_with(CloseCode.SLOW_CONSUMER, "Too slow")
                return False
            self._written_while_paused += len(frame)
        self._write(frame)
        return True

    def _write(self, frame: bytes) -> None:
        """Write a ready frame: straight to the socket when Twisted holds nothing for it."""
        transport = self.transport
        sock = self._socket
        if (
            sock is not None
            and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)
            and transport.connected
            and not transport.disconnecting
        ):
            # Twisted holds nothing for this connection: send now. transport.write
            # would register the socket with epoll, wait for the next poll, send
            # from doWrite and unregister it: two epoll_ctl calls and a dispatch
            # per connection and reactor turn, a third of the daemon's CPU per
            # event. Whatever the kernel does not take goes to transport.write, in
            # order, and from then on everything does until Twisted has sent it.
            try:
                sent = sock.send(frame)
            except OSError:
                sent = 0  # would block, or broken: transport.write finds out and closes
            if sent == len(frame):
                return
            frame = frame[sent:]
        transport.write(frame)

    def send_frames(self, frames: list[bytes]) -> bool:
        """Write several ready event frames, in order, in one write (see L{Registry.end_batch})."""
        return self.send_frame(frames[0] if len(frames) == 1 else b"".join(frames))

    def _room_for(self, size: int) -> bool:
        """
        Whether C{size} more bytes (a reply, a pong) may be written. While the
        transport is paused, past WEBSOCKET_MAX_BUFFER the connection is
        closed with 4008 instead, as for events.
        """
        if not self._paused:
            return True
        if self._held_bytes() + size > self.factory.settings.websocket_max_buffer:
            self.factory.metrics.slow_consumer_closes.inc()
            _log.warn("connection {conn_id} does not read its replies; closing", conn_id=self.conn_id)
            self.close_with(CloseCode.SLOW_CONSUMER, "Too slow")
            return False
        self._written_while_paused += size
        return True

    def _held_bytes(self) -> int:
        """Bytes the transport holds beyond the kernel: exact for TCP, else an upper bound."""
        transport = self.transport
        buffer = getattr(transport, "dataBuffer", None)
        temp = getattr(transport, "_tempDataLen", None)
        offset = getattr(transport, "offset", None)
        if isinstance(buffer, (bytes, memoryview)) and isinstance(temp, int) and isinstance(offset, int):
            return len(buffer) - offset + temp
        return self._written_while_paused

    def revoke(self) -> None:
        """The session's token was revoked (SPEC §5): reply, then close 4003."""
        _log.info(
            "connection {conn_id} of {uid}: session revoked",
            conn_id=self.conn_id,
            uid=self.claims and self.claims.uid,
        )
        self.close_with(CloseCode.REVOKED, "Session revoked", Reply.AUTH_FAILED)

    # -- IPushProducer: the transport tells us when its buffer is full ----------------

    def pauseProducing(self) -> None:
        self._paused = True
        self._written_while_paused = 0

    def resumeProducing(self) -> None:
        self._paused = False
        self._written_while_paused = 0

    def stopProducing(self) -> None:
        self._paused = True


class StreamFactory(WebSocketServerFactory):
    """
    Builds L{StreamProtocol}s and holds what they share: settings, the
    verifier, the registry, the revocation check, metrics and the clock. Also
    the keep-alive sweep: one timer for all connections, not one per connection.
    """

    protocol = StreamProtocol  # type: ignore[assignment]

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        verifier: TokenVerifier,
        metrics: Metrics,
        clock: IReactorTime,
        revocation: RevocationService | None = None,
        url: str | None = None,
        handshake_timeouts: bool = True,
    ) -> None:
        super().__init__(url, server="peatio-ws")
        self.settings = settings
        self.registry = registry
        self.verifier = verifier
        self.metrics = metrics
        self.clock = clock
        self.revocation = revocation
        patterns = (x.lower() if "*" in x else normalize_origin(x) for x in settings.websocket_allowed_origins)
        self.allowed_origins = tuple(p for p in patterns if p)
        self.connections: set[StreamProtocol] = set()
        self._per_ip: dict[str, int] = {}
        #: Sockets whose upgrade request is not complete, with their deadlines, oldest first.
        self._handshaking: dict[StreamProtocol, float] = {}
        self._handshake_call: IDelayedCall | None = None
        #: The inbound byte budget's burst: two seconds' worth, and at least a
        #: request head and two of the largest messages.
        self.byte_burst = float(
            max(
                2 * settings.websocket_inbound_bytes_per_second,
                MAX_REQUEST_HEAD + 2 * (settings.websocket_max_message_size + _FRAME_OVERHEAD),
            )
        )
        self._next_id = 0
        self._ping_call: IDelayedCall | None = None
        # One call: setProtocolOptions resets options it is not given.
        self.setProtocolOptions(
            webStatus=False,
            maxMessagePayloadSize=settings.websocket_max_message_size,
            maxFramePayloadSize=settings.websocket_max_message_size,
            # Without this a too-big message is answered by dropping TCP, and
            # the client sees 1006 instead of 1009.
            failByDrop=False,
            # Autobahn's timer rounds down: 1 s often drops the close frame.
            closeHandshakeTimeout=settings.websocket_close_timeout if handshake_timeouts else 0,
            # The handshake deadline is ours (WEBSOCKET_HANDSHAKE_TIMEOUT, on
            # the injected clock, one timer for all sockets).
            openHandshakeTimeout=0,
            autoPingInterval=0,
            tcpNoDelay=True,
            allowedOrigins=["*"],
            allowNullOrigin=True,
        )

    # -- Autobahn's options, copied once per factory instead of once per connection ----

    def resetProtocolOptions(self) -> None:
        super().resetProtocolOptions()
        self._bake_options()

    def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None:
        super().setProtocolOptions(*args, **kwargs)
        self._bake_options()

    def _bake_options(self) -> None:
        """
        Build this factory's protocol class with Autobahn's options as class
        attributes. Autobahn's C{_connectionMade} otherwise copies the ~45
        options (C{CONFIG_ATTRS}) from the factory into every new connection
        and pretty-prints them all for a debug log line even when debug is
        off: ~40% of the CPU of a handshake plus authentication, and 45
        instance attributes per connection. With the options on the class
        and C{CONFIG_ATTRS} empty, the copy and the C{pformat} do nothing.
        """
        base = type(self).protocol
        options = {name: getattr(self, name) for name in base.CONFIG_ATTRS}
        # A function-valued option (perMessageCompressionAccept) would become a
        # method on the class and get the connection as an extra argument.
        options = {k: staticmethod(v) if isinstance(v, FunctionType) else v for k, v in options.items()}
        baked = type(base.__name__, (base,), {**options, "CONFIG_ATTRS": (), "__module__": base.__module__})
        self.protocol = cast(type[StreamProtocol], baked)

    def buildProtocol(self, addr: Any) -> StreamProtocol:  # type: ignore[override]
        proto = cast(StreamProtocol, super().buildProtocol(addr))
        self._next_id += 1
        proto.conn_id = f"c{self._next_id}"
        return proto

    # -- bookkeeping ---------------------------------------------------------------

    def origin_allowed(self, origin: str) -> bool:
        """Whether a browser's Origin is in WEBSOCKET_ALLOWED_ORIGINS (C{*} wildcards allowed)."""
        normalized = normalize_origin(origin)
        if normalized is None:
            return False
        return any(fnmatch.fnmatchcase(normalized, pattern) for pattern in self.allowed_origins)

    def admit(self, proto: StreamProtocol) -> str | None:
        """
        Count a new socket against the limits: None when admitted (it is
        counted for its address and its handshake deadline runs), else the
        reason it is refused.
        """
        settings = self.settings
        cap = settings.websocket_max_handshakes
        if cap > 0 and len(self._handshaking) >= cap:
            return "handshake_limit"
        ip = proto._client_ip
        limit = settings.websocket_max_connections_per_ip
        count = self._per_ip.get(ip, 0)
        if limit > 0 and count >= limit:
            return "per_ip_limit"
        self._per_ip[ip] = count + 1
        self._handshaking[proto] = self.clock.seconds() + settings.websocket_handshake_timeout
        self.metrics.handshakes.set(len(self._handshaking))
        if self._handshake_call is None:
            self._handshake_call = self.clock.callLater(settings.websocket_handshake_timeout, self._handshake_sweep)
        return None

    def release(self, ip: str) -> None:
        count = self._per_ip.get(ip, 0) - 1
        if count > 0:
            self._per_ip[ip] = count
        else:
            self._per_ip.pop(ip, None)

    def handshake_done(self, proto: StreamProtocol) -> None:
        """C{proto} finished its handshake, or is gone: its deadline no longer applies."""
        handshaking = self._handshaking
        if handshaking.pop(proto, None) is not None:
            self.metrics.handshakes.set(len(handshaking))
            call = self._handshake_call
            if not handshaking and call is not None:
                # No socket left to watch: no timer either.
                call.cancel()
                self._handshake_call = None

    def _handshake_sweep(self) -> None:
        """
        Drop the sockets past their handshake deadline. Deadlines are made in
        order with one timeout, so the oldest come first and the sweep stops
        at the first one still in time.
        """
        self._handshake_call = None
        now = self.clock.seconds()
        expired = []
        next_deadline = None
        for proto, deadline in self._handshaking.items():
            if deadline > now:
                next_deadline = deadline
                break
            expired.append(proto)
        for proto in expired:
            self._handshaking.pop(proto, None)
            self.metrics.inbound_limited.labels(limit="handshake_timeout").inc()
            _log.info("connection from {peer} did not finish its handshake in time; dropping", peer=proto.peer)
            proto._mute()
            proto.dropConnection(abort=True)
        self.metrics.handshakes.set(len(self._handshaking))
        if next_deadline is not None:
            self._handshake_call = self.clock.callLater(next_deadline - now, self._handshake_sweep)

    def connection_opened(self, proto: StreamProtocol) -> None:
        self.connections.add(proto)
        self.metrics.connections.set(len(self.connections))
        self.metrics.connections_total.inc()

    def connection_closed(self, proto: StreamProtocol) -> bool:
        """Forget C{proto}; True the first time only."""
        if proto not in self.connections:
            return False
        self.connections.discard(proto)
        self.metrics.connections.set(len(self.connections))
        return True

    # -- keep-alive ----------------------------------------------------------------

    def start_pinging(self) -> None:
        """Every WEBSOCKET_PING_INTERVAL: drop who missed the last ping, ping the rest."""
        interval = self.settings.websocket_ping_interval
        if interval > 0 and self._ping_call is None:
            self._ping_call = self.clock.callLater(interval, self._ping_sweep)

    def stop_pinging(self) -> None:
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.cancel()
        self._ping_call = None

    def _ping_sweep(self, protos: tuple[StreamProtocol, ...] | None = None, start: int = 0) -> None:
        """Ping (or drop) L{PING_SLICE} connections; the next slice a little later."""
        if protos is None:
            protos = tuple(self.connections)
        end = start + PING_SLICE
        for proto in protos[start:end]:
            if proto.state != _STATE_OPEN:
                continue
            if proto.awaiting_pong:
                _log.info("connection {conn_id} missed its ping; dropping", conn_id=proto.conn_id)
                self.metrics.closes.labels(reason="ping_timeout").inc()
                proto.dropConnection(abort=True)
            else:
                proto.awaiting_pong = True
                proto.send_frame(PING_FRAME)
        if end < len(protos):
            slices = -(-len(protos) // PING_SLICE)
            gap = min(PING_SLICE_GAP, self.settings.websocket_ping_interval / 4 / slices)
            self._ping_call = self.clock.callLater(gap, self._ping_sweep, protos, end)
        else:
            self._ping_call = None
            self.start_pinging()

    # -- shutdown ----------------------------------------------------------------------

    def close_all(self) -> Deferred[Any]:
        """
        Close every connection with 1001 and fire when all are gone (bounded by
        the close handshake timeout, after which Autobahn drops them).
        """
        self.stop_pinging()
        if self._handshake_call is not None and self._handshake_call.active():
            self._handshake_call.cancel()
        self._handshake_call = None
        for proto in tuple(self._handshaking):
            self.handshake_done(proto)
            proto.dropConnection(abort=True)
        waiting: list[Deferred[Any]] = []
        for proto in tuple(self.connections):
            waiting.append(proto.is_closed)
            proto.going_away()
        return DeferredList(waiting, consumeErrors=True)

    def live(self) -> Iterable[StreamProtocol]:
        return tuple(self.connections)
