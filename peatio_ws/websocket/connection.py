# -*- test-case-name: tests.unit.test_protocol -*-
"""
One client connection, whatever its dialect: admission, the inbound bounds,
authentication state and its timers, back-pressure on what is written, and
every way a connection ends.

What the client says and what it is answered is the dialect's
(L{peatio_ws.websocket.legacy}): the connection calls its dialect when it
opens and for each message. Events are not sent through Autobahn's
C{sendMessage}: the registry frames each event once and L{send_frame}
writes the ready frame; replies are framed the same way, which also keeps
the inbound message limit from applying to what the server sends.

Time comes from the factory's injected clock, so every timer is testable
with L{twisted.internet.task.Clock}.

Logs (docs/deploy.md, "A trader got nothing"): every line about a connection
goes through L{StreamProtocol.log_line} and carries its C{conn_id} (unique
across processes and restarts: a random per-process prefix and a counter),
C{peer}, C{dialect} and, once known, C{uid}, as fields and in the text. Every
connection that opened gets exactly one close line saying who closed it
(C{by}: client or server), the C{code} and the C{reason}.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from peatio_ws.auth import Claims
from peatio_ws.framing import text_frame
from peatio_ws.logs import held_note, logger
from peatio_ws.streams.names import Stream
from peatio_ws.websocket import _transport
from peatio_ws.websocket._autobahn import BoundedServerProtocol
from peatio_ws.websocket.limits import refill
from peatio_ws.websocket.replies import CloseCode, Reply

if TYPE_CHECKING:
    from peatio_ws.websocket.factory import StreamFactory

__all__ = ["Dialect", "StreamProtocol"]

# Not "log": Autobahn's protocol has its own self.log, and replacing it floods
# the log with per-frame debug lines.
_log = logger("peatio_ws.protocol")

_STATE_OPEN = WebSocketProtocol.STATE_OPEN
_STATE_CONNECTING = WebSocketProtocol.STATE_CONNECTING
_STATE_CLOSED = WebSocketProtocol.STATE_CLOSED

#: Messages that may wait behind an authentication still checking Redis.
MAX_QUEUED_MESSAGES = 16
#: Seconds the reply to an authentication may wait for the member's binding
#: (L{StreamProtocol.authenticated}). Long enough for a restarted node's whole
#: membership: RabbitMQ binds about 1,000 a second, so 15,000 members take
#: 15 s, and a member told before its binding exists misses events unknowingly.
EVENTS_FLOWING_WAIT = 30.0
#: Seconds a client closed for its inbound budget has to close its side before it is dropped.
LET_GO_SECONDS = 1.0


class Dialect(Protocol):
    """A protocol front door: what a connection says once open, and how it answers messages."""

    #: In every log line of its connections ("legacy").
    name: str

    def upgrading(self, conn: StreamProtocol, request: ConnectionRequest) -> Deferred[None] | None:
        """
        Before the upgrade: raise (or fail the Deferred with) Autobahn's
        C{ConnectionDeny} to refuse it; a Deferred while a check runs.
        """

    def opened(self, conn: StreamProtocol) -> None:
        """The upgrade succeeded: greet the client."""

    def received(self, conn: StreamProtocol, payload: bytes, is_binary: bool) -> Deferred[Any] | None:
        """Answer one message; a Deferred while the answer waits (later messages wait for it)."""

    def closed(self, conn: StreamProtocol) -> None:
        """The connection is gone (every close path, once): let go of what the dialect holds for it."""

    def carried_on(
        self, conn: StreamProtocol, claims: Claims | None, streams: tuple[str, ...], primed: tuple[str, ...]
    ) -> None:
        """
        Carried across a restart in place: restore the member and the
        subscriptions (primed on the order books of the markets C{primed}
        names), silently.
        """


@implementer(IPushProducer)
class StreamProtocol(BoundedServerProtocol):
    """One client connection. Also the transport's push producer, to see back-pressure."""

    factory: StreamFactory
    # A TCP or TLS transport: also a consumer we register as producer with.
    transport: Any

    conn_id = "-"
    claims: Claims | None = None
    #: How the server ended the connection, for its close line: (code, reason,
    #: uid at the time); None while it has not (or the client ended it).
    _server_close: tuple[int, str, str | None] | None = None
    dialect: Dialect
    _socket: Any = None
    #: Token buckets of the inbound budget: tokens left and when last filled
    #: (class defaults: a bucket never used is full).
    #: [frame tokens, when filled, byte tokens, when filled], made on first
    #: use. One attribute, not four: each instance attribute costs memory on
    #: every idle connection, and four more pushed Autobahn's ~80-attribute
    #: instance dict past a resize (+1.7 KiB per connection, measured).
    _budget: list[float] | None = None
    #: The drop of a client being let go after a 1008 (L{_let_go}).
    _drop_call: IDelayedCall | None = None
    #: Ranger dialect state (SPEC §7), set only on its connections: the
    #: subscriptions (insertion-ordered), the private event names wanted
    #: (a set for a member: the registry filters on it; None: every event),
    #: and, between the upgrade request and the open, the query's streams
    #: and the header token's claims.
    subscriptions: dict[str, Stream] | None = None
    private_streams: set[str] | None = None
    ranger_streams: list[str] = []  # noqa: RUF012 (never mutated: replaced per connection)
    ranger_claims: Claims | None = None
    #: Event frames that arrived between the registry's learning of this
    #: member and the dialect's reply saying so (L{authenticated}): written
    #: right after that reply, never before it. None when nothing waits for
    #: a reply; with their bytes, counted against WEBSOCKET_MAX_BUFFER.
    _holding: list[bytes] | None = None
    _holding_size = 0
    #: Bytes of the last order-book replay the transport may still hold: not
    #: counted as held (SPEC §7). Only the last replay's, and never more than
    #: the transport holds (it sends in order, so what it holds of a replay
    #: only shrinks): a client that does not read and subscribes again and
    #: again is not given room for each replay.
    _exempt = 0
    #: Carried across a restart in place, open already (L{handoff}).
    carried = False

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
        self.attempts: list[float] = []
        self.client_ip = ""
        self._counted = False

    # -- logs ----------------------------------------------------------------------

    @property
    def dialect_name(self) -> str:
        dialect = getattr(self, "dialect", None)
        return getattr(dialect, "name", "-") if dialect is not None else "-"

    def log_line(
        self, text: str, level: str = "info", uid: str | None = None, uid_in_head: bool = True, **fields: Any
    ) -> None:
        """
        Log one line about this connection: C{text} (a format string of
        code, never of client data) after "connection <id>[ of <uid>] from
        <peer> (<dialect>)", with those as fields (C{uid} once known;
        C{uid_in_head} False when C{text} names it already).
        """
        if uid is None and self.claims is not None:
            uid = self.claims.uid
        head = "connection {conn_id} of {uid} from {peer} ({dialect}) " if uid and uid_in_head else (
            "connection {conn_id} from {peer} ({dialect}) "
        )
        if uid:
            fields["uid"] = uid
        getattr(_log, level)(
            head + text, conn_id=self.conn_id, peer=self.peer, dialect=self.dialect_name, **fields
        )

    def _close_line(self, was_clean: bool | None, code: int | None, reason: str | None, uid: str | None) -> None:
        """The one close line of a connection that opened: who closed it, the code, the reason."""
        ours = self._server_close
        if ours is not None:
            by, code, reason, uid = "server", ours[0], ours[1], ours[2] or uid
        elif (sent := self.close_sent()) is not None:
            # Autobahn closed it itself (1009 message too big, 1002/1007 protocol errors).
            by, (code, reason) = "server", sent
        else:
            by = "client"
            if not was_clean:
                code, reason = CloseCode.ABNORMAL, "connection lost without a close frame"
        reason = (reason or "")[:123]
        self.log_line(
            "closed by {by}: {code}{why}",
            level="warn" if code == CloseCode.SLOW_CONSUMER else "info",
            uid=uid,
            by=by,
            code=code if code is not None else CloseCode.NO_STATUS,
            reason=reason,
            why=" " + reason if reason else "",
        )

    # -- connection lifecycle -------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.client_ip = getattr(peer, "host", "") or ""
        super().connectionMade()
        self.transport.registerProducer(self, True)
        # Plain TCP (not TLS): events may go straight to the socket (send_frame).
        self._socket = _transport.direct_socket(self.transport)
        if self.carried:
            # Open already (the previous program admitted it): counted, never refused.
            self.factory.admission.count(self)
            self._counted = True
            return
        # Admitted from the first byte, not once the upgrade request is read:
        # sockets still in their handshake count against the per-address and
        # the global limits, and the handshake deadline starts now.
        refusal = self.factory.admission.admit(self)
        if refusal is None:
            self._counted = True
        else:
            self.refuse_with(503, "Service Unavailable", refusal)

    def refuse_with(self, code: int, text: str, reason: str) -> None:
        """Answer the upgrade request with HTTP C{code}, counted under C{reason}, and close."""
        self.count_refusal(code, reason)
        # A 503 says when to come back, spread over a few seconds: clients of a
        # restarted node that honour it do not all return at the same instant.
        headers = [("Retry-After", str(random.randint(1, 5)))] if code == 503 else None  # noqa: S311 (jitter)
        self.refuse(code, text, headers)

    def refusal_headers(self, code: int) -> list[tuple[str, str]] | None:
        """A 401 says which scheme it wants (RFC 9110 requires it): a Bearer token in Authorization."""
        return [("WWW-Authenticate", 'Bearer realm="peatio-ws"')] if code == 401 else None

    def handshake_failed(self, code: int, reason: str) -> None:
        """Autobahn refused the upgrade request (not one, or malformed): counted as bad_request, logged throttled."""
        self.count_refusal(code, "bad_request", reason=reason[:200])

    def count_refusal(self, code: int, label: str, why: str = "{reason}", **fields: Any) -> None:
        """
        A refusal at the handshake with HTTP C{code}: counted under C{label}
        (L{refusal_counted} set, so it is not counted again); one line saying
        C{why} (a format over C{fields}; the field C{reason} is C{label}
        unless given), unless too many of its kind came lately.
        """
        factory = self.factory
        self.refusal_counted = True
        factory.metrics.rejected_by(label).inc()
        held = factory.log_throttle(label)
        if held is not None:
            fields.setdefault("reason", label)
            _log.info(
                "connection {conn_id} from {peer} refused at the handshake: closed by server: HTTP {code} "
                + why
                + "{held}",
                conn_id=self.conn_id,
                peer=self.peer,
                by="server",
                code=code,
                held=held_note(held),
                **fields,
            )

    # Autobahn runs onConnect through txaio.as_future: a Deferred is waited for.
    def onConnect(self, request: ConnectionRequest) -> Deferred[None] | None:  # type: ignore[override]
        """Check the Origin, choose the dialect and let it check the request, before the upgrade."""
        factory = self.factory
        origin = request.headers.get("origin")
        if not factory.origins.allows(origin):
            self.count_refusal(403, "origin", "origin {origin} not allowed", origin=(origin or "")[:200])
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "Origin not allowed")
        self.dialect = factory.dialect_for(request, urlsplit(self.http_request_uri).query)
        return self.dialect.upgrading(self, request)

    def onOpen(self) -> None:
        factory = self.factory
        self.forget_handshake()
        factory.admission.handshake_done(self)
        factory.connection_opened(self)
        self.log_line("opened")
        self.dialect.opened(self)

    def carried_on(
        self, dialect: str, claims: Claims | None, streams: tuple[str, ...], primed: tuple[str, ...] = ()
    ) -> None:
        """
        Open again after a restart in place (L{handoff.adopt}): counted as
        open, the member and the subscriptions restored by C{dialect},
        nothing said to the client.
        """
        factory = self.factory
        self.dialect = factory.dialect_named(dialect)
        factory.connection_opened(self, carried=True)
        self.dialect.carried_on(self, claims, streams, primed)

    @property
    def busy(self) -> bool:
        """Whether a message is being handled, queued, or events wait for a reply."""
        return self._busy is not None or bool(self._queued) or self._holding is not None

    def stop_timers(self) -> None:
        """Cancel this connection's own timers (at its end; at a restart in place, the next program sets them again)."""
        for call in (self._drop_call, self._auth_timer, self._expiry_timer):
            self._cancel(call)
        self._drop_call = self._auth_timer = self._expiry_timer = None

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._forget(wasClean, code, reason)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        try:
            super().connectionLost(reason)
        finally:
            self._forget(False, None, None)

    def _forget(self, was_clean: bool | None = None, code: int | None = None, reason: str | None = None) -> None:
        """
        Undo everything this connection holds; idempotent, runs on every close
        path. The first call for a connection that opened writes its close line
        (C{was_clean}, C{code}, C{reason}: what Autobahn's onClose says).
        """
        self.stop_timers()
        self._queued.clear()
        self._holding = None
        self._holding_size = 0
        factory = self.factory
        factory.admission.handshake_done(self)
        uid = self.claims.uid if self.claims is not None else None
        if self.claims is not None:
            factory.registry.deauthenticate(self)
            self.claims = None
        if factory.connection_closed(self):
            self.dialect.closed(self)
            self._close_line(was_clean, code, reason, uid)
        if self._counted:
            self._counted = False
            factory.admission.release(self.client_ip)

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()

    def ended_by_server(self, code: int, reason: str) -> None:
        """Note, for the close line, that the server ends this connection with C{code} for C{reason}."""
        if self._server_close is None:
            claims = self.claims
            self._server_close = (code, reason, claims.uid if claims is not None else None)

    def close_with(self, code: int, reason: str, reply: bytes | None = None) -> None:
        """Send C{reply} (if any), then the closing handshake with C{code}."""
        if self.state != _STATE_OPEN:
            return
        self.ended_by_server(code, reason)
        self.factory.metrics.closes_by(str(code)).inc()
        if reply is not None:
            self.write(text_frame(reply))
        self.stop_events()
        if code == 1000 or 3000 <= code <= 4999:
            self.sendClose(code, reason)
        else:
            # 1001 and 1012, which Autobahn's sendClose refuses.
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8"), isReply=False)

    def going_away(self) -> None:
        """Server shutdown: 1001, which Autobahn's sendClose refuses."""
        if self.state == _STATE_OPEN:
            self.ended_by_server(CloseCode.GOING_AWAY, "Server shutting down")
            self.stop_events()
            self.sendCloseFrame(code=CloseCode.GOING_AWAY, reasonUtf8=b"Server shutting down", isReply=False)
        elif self.state != _STATE_CLOSED and self.transport is not None:
            self.transport.abortConnection()

    def stop_events(self) -> None:
        """No more events for this connection: it leaves the registry."""
        if self.claims is not None:
            self.factory.registry.deauthenticate(self)
            self.claims = None

    def events_lost(self) -> None:
        """
        Events for this member may have been lost (its queue was gone, SPEC
        §8): close 1012 so the client reconnects and resyncs from the REST API.
        """
        self.close_with(CloseCode.SERVICE_RESTART, "Events may have been lost: reconnect and resync")

    def drop(self, reason: str) -> None:
        """Drop the TCP connection at once, without a close frame (1006 in the close line)."""
        if self.state == _STATE_OPEN:
            self.ended_by_server(CloseCode.ABNORMAL, reason)
        self.dropConnection(abort=True)

    def revoke(self) -> None:
        """The session's token was revoked (SPEC §5): reply, then close 4003 (the close line says so)."""
        self.close_with(CloseCode.REVOKED, "Session revoked", Reply.AUTH_FAILED)

    # -- the inbound bounds (the hooks of BoundedServerProtocol) ----------------------

    def request_head_too_large(self) -> None:
        self.factory.metrics.inbound_limited_by("request_head").inc()
        self.refuse_with(431, "Request Header Fields Too Large", "request_head_too_large")

    def too_many_frames(self) -> None:
        self._over_budget("message_frames", "Too many frames in one message")

    def inbound_frame(self) -> None:
        """Take one frame from the frame budget; past it, close 1008."""
        factory = self.factory
        rate = factory.settings.websocket_inbound_frames_per_second
        if rate <= 0:
            return
        now = factory.clock.seconds()
        budget = self._budget
        if budget is None:
            budget = self._budget = [math.inf, 0.0, math.inf, 0.0]
        tokens = refill(budget[0], budget[1], now, rate, 2.0 * rate) - 1
        budget[0] = tokens
        budget[1] = now
        if tokens < 0:
            self._over_budget("frames", "Too many messages")

    def inbound_bytes(self, size: int) -> bool:
        """Take C{size} bytes from the byte budget; past it, close 1008 and drop them."""
        factory = self.factory
        rate = factory.settings.websocket_inbound_bytes_per_second
        if rate <= 0:
            return True
        now = factory.clock.seconds()
        budget = self._budget
        if budget is None:
            budget = self._budget = [math.inf, 0.0, math.inf, 0.0]
        tokens = refill(budget[2], budget[3], now, rate, factory.byte_burst) - size
        budget[2] = tokens
        budget[3] = now
        if tokens < 0:
            self._over_budget("bytes", "Too much data")
            return False
        return True

    def _let_go(self) -> None:
        """
        After the close frame to a client over its budget: half-close, so the
        frame is followed by FIN rather than lost to a reset, read and discard
        (muted) until the client closes its side, and drop it after
        L{LET_GO_SECONDS} whatever it does. Waiting for a closing handshake
        instead would hold the socket for WEBSOCKET_CLOSE_TIMEOUT: a flooder
        reconnecting could pile up thousands.
        """
        transport = self.transport
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None or transport.disconnecting:
            self.dropConnection(abort=False)
            return
        transport.resumeProducing()
        half_close()
        self._drop_call = self.factory.clock.callLater(LET_GO_SECONDS, self._drop_now)

    def _drop_now(self) -> None:
        self._drop_call = None
        if self.transport is not None:
            self.transport.abortConnection()

    def _over_budget(self, limit: str, reason: str) -> None:
        """Close 1008 for what the client sent, and stop reading from it."""
        factory = self.factory
        factory.metrics.inbound_limited_by(limit).inc()
        claims = self.claims
        held = factory.log_throttle(limit)
        if held is not None:
            self.log_line(
                "over its inbound {limit} limit: {reason}; closing{held}",
                uid=claims.uid if claims is not None else None,
                limit=limit,
                reason=reason,
                held=held_note(held),
            )
        if self.state == _STATE_OPEN:
            self.ended_by_server(CloseCode.POLICY_VIOLATION, reason)
            factory.metrics.closes_by(str(CloseCode.POLICY_VIOLATION)).inc()
            self.stop_events()
            self.fail(CloseCode.POLICY_VIOLATION, reason)
            self._let_go()
        elif self.state == _STATE_CONNECTING:
            self.mute()
            self.dropConnection(abort=True)
        else:
            self.mute()

    # -- authentication state -------------------------------------------------------

    def start_auth_timer(self) -> None:
        """(Re)start WEBSOCKET_AUTH_TIMEOUT: unauthenticated by then, closed 4002."""
        timeout = self.factory.settings.websocket_auth_timeout
        self._cancel(self._auth_timer)
        self._auth_timer = None
        if timeout > 0:
            self._auth_timer = self.factory.clock.callLater(timeout, self._auth_timed_out)

    def _auth_timed_out(self) -> None:
        self._auth_timer = None
        if self.claims is None:
            self.close_with(CloseCode.AUTH_TIMEOUT, "Authentication timeout")

    def authenticated(self, claims: Claims, wait: bool = True) -> Deferred[None] | None:
        """
        The member is C{claims}: events from now on, until the token expires
        (4001). Returns a Deferred firing once the member's events reach
        this process (its binding is in place; at most L{EVENTS_FLOWING_WAIT}
        seconds), or None when they already do: the dialect tells the client
        it is authenticated then, so nothing published after is missed. Not
        C{wait} (a connection carried across a restart in place: no reply
        to send, its member's binding handed over with the queue): None.
        """
        factory = self.factory
        flowing = factory.registry.authenticate(self, claims, wait)
        self.claims = claims
        self._cancel(self._auth_timer)
        self._auth_timer = None
        self._cancel(self._expiry_timer)
        self._expiry_timer = None
        if claims.expires_at is not None:
            delay = max(0.0, claims.expires_at - factory.clock.seconds())
            self._expiry_timer = factory.clock.callLater(delay, self._token_expired)
        if flowing is None:
            return None
        # Bounded: a broker slow to bind must not hold the reply for ever (it is then sent regardless).
        flowing.addTimeout(EVENTS_FLOWING_WAIT, factory.clock)
        flowing.addErrback(lambda failure: None)
        # The registry already hands this connection the member's events:
        # one that overtakes the binding's answer (deliveries and binds go on
        # different channels; a covering binding) waits for the dialect's
        # reply, which the caller chains on the Deferred returned, and
        # follows it.
        holding: list[bytes] = []
        self._holding, self._holding_size = holding, 0
        told: Deferred[None] = Deferred()

        def reply_then_release(_: object) -> None:
            told.callback(None)
            self._release(holding)

        flowing.addCallback(reply_then_release)
        return told

    def _release(self, holding: list[bytes]) -> None:
        """Write the events held while the reply to an authentication waited (L{authenticated}), in order."""
        if self._holding is not holding:
            return
        self._holding = None
        self._holding_size = 0
        if holding:
            self.send_frames(holding)

    def unauthenticated(self) -> None:
        """A failed re-authentication: no more events, and the auth timeout runs again."""
        if self.claims is None:
            return
        self.factory.registry.deauthenticate(self)
        self.claims = None
        self._cancel(self._expiry_timer)
        self._expiry_timer = None
        self.start_auth_timer()

    def _token_expired(self) -> None:
        self._expiry_timer = None
        self.close_with(CloseCode.TOKEN_EXPIRED, "Token expired", Reply.TOKEN_EXPIRED)

    # -- messages ------------------------------------------------------------------

    def onPong(self, payload: bytes) -> None:
        self.awaiting_pong = False

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.awaiting_pong = False
        if self._busy is not None:
            if len(self._queued) >= MAX_QUEUED_MESSAGES:
                self.reply(Reply.HANDLING_ERROR)
            else:
                self._queued.append((payload, isBinary))
            return
        self._handle(payload, isBinary)

    def _handle(self, payload: bytes, is_binary: bool) -> None:
        try:
            pending = self.dialect.received(self, payload, is_binary)
        except Exception:
            claims = self.claims
            _log.failure(
                "connection {conn_id} from {peer} ({dialect}): failure handling a message",
                conn_id=self.conn_id,
                peer=self.peer,
                dialect=self.dialect_name,
                uid=claims.uid if claims is not None else None,
            )
            self.reply(Reply.HANDLING_ERROR)
            return
        if pending is not None:
            self._busy = pending
            pending.addBoth(self._finished_pending)

    def hold_messages(self, pending: Deferred[Any]) -> None:
        """Queue the client's messages until C{pending} fires (the dialect is still answering the open)."""
        self._busy = pending
        pending.addBoth(self._finished_pending)

    def _finished_pending(self, result: object) -> None:
        self._busy = None
        while self._queued and self._busy is None and self.state == _STATE_OPEN:
            self._handle(*self._queued.pop(0))

    def reply(self, message: bytes) -> None:
        """
        Send one text message. A reply is unsent data like an event: a client
        that sends but never reads must not make the server buffer replies
        without bound.
        """
        if self.state == _STATE_OPEN and self._room_for(len(message) + 4):
            self.write(text_frame(message))

    def onPing(self, payload: bytes) -> None:
        # Autobahn answers every client ping with a pong: held like any other write.
        if self.state == _STATE_OPEN and self._room_for(len(payload) + 2):
            super().onPing(payload)

    # -- what the registry calls -----------------------------------------------------

    def send_frame(self, frame: bytes, control: bool = False) -> bool:
        """
        Write a ready event frame (or a C{control} frame: a ping, never held
        behind the reply to an authentication). While the transport has asked
        us to pause (its buffer is full: the client is not reading), count
        what piles up and close with 4008 past WEBSOCKET_MAX_BUFFER instead
        of buffering without bound.
        """
        if self.state != _STATE_OPEN:
            return False
        holding = self._holding
        if holding is not None and not control:
            # Bounded like a client that does not read: what waits for the
            # reply counts with what the transport holds.
            waiting = self._holding_size + len(frame)
            if self._held_bytes() + waiting > self.factory.settings.websocket_max_buffer:
                self.factory.metrics.slow_consumer_closes.inc()
                self.close_with(CloseCode.SLOW_CONSUMER, "Too slow")
                return False
            holding.append(frame)
            self._holding_size = waiting
            return True
        if self._paused:
            if self._held_bytes() + len(frame) > self.factory.settings.websocket_max_buffer:
                # The close line (a warning) says it: closed by server: 4008 Too slow.
                self.factory.metrics.slow_consumer_closes.inc()
                self.close_with(CloseCode.SLOW_CONSUMER, "Too slow")
                return False
            self._written_while_paused += len(frame)
        _transport.write(self.transport, self._socket, frame)
        return True

    #: The last frames joined by L{send_frames} when given as a tuple, and
    #: their bytes, shared by every connection (one list, changed in place):
    #: the registry gives every subscriber of a market the same tuple in a
    #: read, joined once. (Immutable, and held here, so the same object is
    #: always the same frames.)
    _joined: list[Any] = [(), b""]  # noqa: RUF012

    def send_frames(self, frames: list[bytes] | tuple[bytes, ...]) -> bool:
        """
        Write several ready event frames, in order, in one write (see
        L{Registry.end_batch}); the same limits as L{send_frame}.
        """
        if len(frames) == 1:
            data = frames[0]
        else:
            joined = self._joined
            if joined[0] is frames:
                data = joined[1]
            else:
                data = b"".join(frames)
                if type(frames) is tuple:
                    joined[0] = frames
                    joined[1] = data
        if self._paused or self._holding is not None or self.state != _STATE_OPEN:
            return self.send_frame(data)
        _transport.write(self.transport, self._socket, data)
        return True

    def send_replay(self, frames: list[bytes]) -> None:
        """
        Write an order-book replay (snapshot and increments, bounded by
        RANGER_ORDERBOOK_MAX_INCREMENTS) in one write: never counted against
        WEBSOCKET_MAX_BUFFER, so subscribing never trips the slow-consumer close.
        Only the latest replay is exempt: what earlier ones left unsent counts.
        """
        if self.state != _STATE_OPEN:
            return
        data = b"".join(frames)
        self.write(data)
        held = _transport.held_bytes(self.transport)
        # (A transport that does not say what it holds: the estimate never counts writes like this one.)
        self._exempt = 0 if held is None else min(len(data), held)

    def write_now(self, frame: bytes) -> None:
        """
        Write ready bytes, with no limit applied (the caller checked, or it is a
        close path): a frame of ours, or what Autobahn writes (the 101, a close).
        """
        _transport.write(self.transport, self._socket, frame)

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
            self.close_with(CloseCode.SLOW_CONSUMER, "Too slow (does not read its replies)")
            return False
        self._written_while_paused += size
        return True

    def _held_bytes(self) -> int:
        """Bytes the transport holds beyond the kernel: exact for TCP, else an upper bound."""
        held = _transport.held_bytes(self.transport)
        if held is None:
            return self._written_while_paused
        exempt = self._exempt
        if not exempt:
            return held
        if held < exempt:
            self._exempt = exempt = held
        return held - exempt

    # -- IPushProducer: the transport tells us when its buffer is full ----------------

    def pauseProducing(self) -> None:
        self._paused = True
        self._written_while_paused = 0

    def resumeProducing(self) -> None:
        self._paused = False
        self._written_while_paused = 0
        if self._exempt:
            self._exempt = 0

    def stopProducing(self) -> None:
        self._paused = True
