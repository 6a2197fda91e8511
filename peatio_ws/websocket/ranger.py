# -*- test-case-name: tests.unit.test_ranger -*-
"""
The ranger dialect (SPEC §7: Peatio 2.x ranger and rango, what baseapp
speaks): streams chosen in the URL and by subscribe messages, the JWT in
the upgrade request's C{Authorization} header, public market streams beside
the private ones.

Chosen at the upgrade request (L{speaks_ranger}), never later. A header
that does not verify, or none on a C{…/private} path, refuses the upgrade
with HTTP 401: never a silent anonymous session. After that the
connection's limits, keep-alive, expiry (4001), revocation (4003) and
shutdown are the connection's, as for the legacy dialect.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast
from weakref import WeakSet

from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from peatio_ws.auth import AuthError, Claims
from peatio_ws.logs import logger
from peatio_ws.streams.names import Stream, parse_stream
from peatio_ws.websocket.limits import parse_client_json
from peatio_ws.websocket.tokens import check_token

if TYPE_CHECKING:
    from peatio_ws.websocket.connection import StreamProtocol

__all__ = ["RANGER", "RangerDialect", "RangerReply", "query_streams", "speaks_ranger", "wants_member"]

_log = logger("peatio_ws.protocol")
_STATE_OPEN = WebSocketProtocol.STATE_OPEN


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def _error(text: str) -> bytes:
    return _compact({"error": text})


class RangerReply:
    """The exact texts of SPEC §7 (rango's), compact JSON."""

    NOT_JSON = _error("Could not parse message: invalid JSON")
    NOT_OBJECT = _error("Could not parse message: not a JSON object")
    NOT_TEXT = _error("Could not parse message: binary frames are not accepted")
    STREAMS_TYPE = _error("Could not parse message: streams must be a list of strings")
    BAD_STREAM = _error(
        "Could not parse message: invalid stream name (letters, digits, '_' and '-', at most one '.')"
    )
    NO_STREAMS = _error("No streams provided")
    INVALID_EVENT = _error("Could not parse Type: Invalid event")

    @staticmethod
    def too_many(limit: int) -> bytes:
        return _error(f"Too many streams: at most {limit} on one connection")

    @staticmethod
    def subscriptions(message: str, streams: Iterable[str]) -> bytes:
        """C{{"success":{"message":"subscribed"|"unsubscribed","streams":[…]}}}."""
        return _compact({"success": {"message": message, "streams": list(streams)}})


# -- choosing the dialect ---------------------------------------------------------------


_STREAM_PARAMETER = re.compile(r"(?:^|[&;])stream=")


def _last_segment(path: str) -> str:
    return path.rstrip("/").rpartition("/")[2]


def wants_member(path: str) -> bool:
    """Whether C{path}'s last segment is C{private} (a trailing C{/} allowed): a token is required."""
    return _last_segment(path) == "private"


def speaks_ranger(path: str, headers: Mapping[str, Any], params: Mapping[str, Any], query: str = "") -> bool:
    """
    SPEC §7: ranger when the path's last segment is C{public} or C{private},
    or the request has an C{Authorization} header, or its query has
    C{stream=} (even empty: C{params}, parsed, drops blank values, so the
    raw C{query} is looked at too). C{headers} have lower-case names (as
    Autobahn gives them).
    """
    return (
        _last_segment(path) in ("public", "private")
        or "authorization" in headers
        or "stream" in params
        or _STREAM_PARAMETER.search(query) is not None
    )


def query_streams(params: Mapping[str, Iterable[str]]) -> list[str]:
    """
    The stream names of the query: every C{stream=} value (already
    URL-decoded), each possibly a comma list; empty names skipped, order kept.
    """
    names: list[str] = []
    for value in params.get("stream", ()):
        names.extend(name for name in value.split(",") if name)
    return names


def bearer_token(header: str) -> str | None:
    """The token of C{Bearer <JWT>} (the scheme's case is not significant, RFC 7235), else None."""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


# -- the dialect -----------------------------------------------------------------------------


class RangerDialect:
    """
    A connection's subscriptions are on the connection (see
    L{peatio_ws.streams.hub}); the dialect holds only the connections whose
    upgrade waits on the revocation check.
    """

    name = "ranger"

    def __init__(self) -> None:
        #: Upgrades waiting on the revocation check. Meanwhile Autobahn reads
        #: whatever else arrives as another upgrade request: answered, it
        #: would open the connection twice.
        self._checking: WeakSet[StreamProtocol] = WeakSet()

    # -- the upgrade request ------------------------------------------------------

    def upgrading(self, conn: StreamProtocol, request: ConnectionRequest) -> Deferred[None] | None:
        """
        Keep the query's streams and check the token before the upgrade:
        raises (or the Deferred fails with) L{ConnectionDeny} 401 when it
        does not verify or a private path has none.
        """
        if conn in self._checking:
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST, "Upgrade request already received")
        conn.ranger_streams = query_streams(request.params)
        header = request.headers.get("authorization")
        if header is None:
            if wants_member(request.path):
                self._refuse(conn, "no_token")
            return None
        token = bearer_token(header)
        if token is None:
            self._refuse(conn, "token_type")
        factory = conn.factory
        try:
            result = check_token(factory.verifier, factory.revocation, cast(str, token), conn.conn_id)
        except AuthError as e:
            self._refuse(conn, e.reason)
        if isinstance(result, Claims):
            conn.ranger_claims = result
            return None

        def verified(claims: Claims) -> None:
            conn.ranger_claims = claims

        def failed(failure: Failure) -> None:
            failure.trap(AuthError)
            self._refuse(conn, cast(AuthError, failure.value).reason)

        checking = self._checking
        checking.add(conn)

        def checked(outcome: Any) -> Any:
            checking.discard(conn)
            if conn.state == WebSocketProtocol.STATE_CLOSED:
                # The connection went while the check ran (the client left, or
                # sent a second upgrade request). Autobahn would still complete
                # the upgrade, opening (registering, subscribing, counting) a
                # connection gone for good, or answer one that is closed: the
                # upgrade ends here, answered neither way.
                return Deferred()
            return outcome

        return result.addBoth(checked).addCallbacks(verified, failed)

    @staticmethod
    def _refuse(conn: StreamProtocol, reason: str) -> None:
        """Count and log (throttled) a 401 for C{reason}, the rule that failed (never the token)."""
        conn.factory.metrics.auth_by("failure", reason).inc()
        conn.count_refusal(401, "unauthorized", "authentication failed: {reason}", reason=reason)
        raise ConnectionDeny(401, "Unauthorized")

    # -- open ----------------------------------------------------------------------------

    def opened(self, conn: StreamProtocol) -> None:
        """Authenticate (the header's token), subscribe the query's streams, replay, then say what is subscribed."""
        factory = conn.factory
        claims = conn.ranger_claims
        conn.ranger_claims = None
        conn.subscriptions = {}
        auth = "public"
        flowing = None
        if claims is not None:
            auth = "private"
            # Before the registry learns of it: its private events are filtered from the start.
            conn.private_streams = set()
            flowing = conn.authenticated(claims)
            factory.metrics.auth_by("success", "ok").inc()
            conn.log_line("authenticated as {uid}", uid_in_head=False)
        factory.metrics.ranger_connections_by(auth).inc()
        factory.metrics.ranger_connections_total_by(auth).inc()
        if flowing is None:
            self._open_streams(conn)
        else:
            # The subscribed reply goes once the member's events reach us; messages wait till then.
            conn.hold_messages(flowing.addCallback(lambda _: self._open_streams(conn)))

    def carried_on(
        self, conn: StreamProtocol, claims: Claims | None, streams: tuple[str, ...], primed: tuple[str, ...]
    ) -> None:
        """
        The member and the subscriptions again, without a reply or a
        replay: a subscriber that held a market's order book (C{primed})
        goes on getting its increments from the store the previous program
        left; one that was waiting for a snapshot still waits.
        """
        factory = conn.factory
        conn.subscriptions = {}
        auth = "public"
        if claims is not None:
            auth = "private"
            conn.private_streams = set()
            conn.authenticated(claims, wait=False)
        factory.metrics.ranger_connections_by(auth).inc()
        parsed = [parse_stream(name) for name in streams]
        factory.hub.subscribe(conn, [stream for stream in parsed if stream is not None], carried=primed)

    def _open_streams(self, conn: StreamProtocol) -> None:
        """Subscribe the query's streams, replay, then say what is subscribed."""
        if conn.subscriptions is None or conn.state != _STATE_OPEN:
            return
        names, conn.ranger_streams = conn.ranger_streams, []
        streams, error = self._streams(names, conn, lenient=True)
        if error is not None:
            conn.reply(error)
        self._subscribe(conn, streams, "subscribed")

    def closed(self, conn: StreamProtocol) -> None:
        """Every subscription goes; the connection is no longer counted."""
        factory = conn.factory
        if conn.subscriptions is None:
            return
        factory.hub.forget(conn)
        conn.subscriptions = None
        auth = "private" if conn.private_streams is not None else "public"
        factory.metrics.ranger_connections_by(auth).dec()

    # -- messages ------------------------------------------------------------------------

    def received(self, conn: StreamProtocol, payload: bytes, is_binary: bool) -> None:
        """Answer one client message; the connection stays open after every error."""
        if is_binary:
            conn.reply(RangerReply.NOT_TEXT)
            return
        if payload == b"ping":
            conn.reply(b"pong")
            return
        try:
            message = parse_client_json(payload)
        except ValueError:
            conn.reply(RangerReply.NOT_JSON)
            return
        if not isinstance(message, dict):
            conn.reply(RangerReply.NOT_OBJECT)
            return
        event = message.get("event")
        if event != "subscribe" and event != "unsubscribe":
            conn.reply(RangerReply.INVALID_EVENT)
            return
        if "streams" not in message:
            conn.reply(RangerReply.NO_STREAMS)
            return
        names = message["streams"]
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            conn.reply(RangerReply.STREAMS_TYPE)
            return
        if not names:
            conn.reply(RangerReply.NO_STREAMS)
            return
        if event == "unsubscribe":
            unsubscribe: list[Stream] = []
            for name in names:
                stream = parse_stream(name)
                if stream is None:
                    conn.reply(RangerReply.BAD_STREAM)
                    return
                unsubscribe.append(stream)
            conn.factory.hub.unsubscribe(conn, unsubscribe)
            conn.reply(RangerReply.subscriptions("unsubscribed", cast(dict[str, Stream], conn.subscriptions)))
            return
        streams, error = self._streams(names, conn, lenient=False)
        if error is not None:
            # All or nothing: a message with a bad name, or too many, changes nothing.
            conn.reply(error)
            return
        self._subscribe(conn, streams, "subscribed")

    # -- subscribing ---------------------------------------------------------------------

    @staticmethod
    def _streams(names: list[str], conn: StreamProtocol, lenient: bool) -> tuple[list[Stream], bytes | None]:
        """
        The new streams C{names} would add (valid names, not subscribed yet,
        private ones only for a member, within RANGER_MAX_STREAMS) and the
        error to send when some are refused. C{lenient} (the URL's names:
        the connection must open with what it can have) takes the valid ones
        up to the limit; otherwise a refusal refuses them all.
        """
        limit = conn.factory.settings.ranger_max_streams
        current = cast(dict[str, Stream], conn.subscriptions)
        member = conn.private_streams is not None
        wanted: dict[str, Stream] = {}
        error: bytes | None = None
        for name in names:
            stream = parse_stream(name)
            if stream is None:
                error = error or RangerReply.BAD_STREAM
                continue
            if name in current or name in wanted or (stream.ident is None and not member):
                # Already subscribed; or private for an anonymous connection: not subscribed, not listed.
                continue
            if len(current) + len(wanted) >= limit:
                error = RangerReply.too_many(limit)
                if lenient:
                    continue
                break
            wanted[name] = stream
        if error is not None and not lenient:
            return [], error
        return list(wanted.values()), error

    @staticmethod
    def _subscribe(conn: StreamProtocol, streams: list[Stream], message: str) -> None:
        """Subscribe C{streams}, write the order-book replay, then the subscribed reply."""
        replay = conn.factory.hub.subscribe(conn, streams) if streams else []
        if replay:
            conn.send_replay(replay)
        conn.reply(RangerReply.subscriptions(message, cast(dict[str, Stream], conn.subscriptions)))


#: The one ranger dialect every ranger connection shares.
RANGER = RangerDialect()
