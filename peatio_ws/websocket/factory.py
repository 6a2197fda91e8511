# -*- test-case-name: tests.unit.test_protocol -*-
"""
The WebSocket factory: builds connections, holds what they share (settings,
verifier, registry, revocation check, metrics, clock, admission), chooses
each connection's dialect at its upgrade request, and keeps the keep-alive
sweep and the shutdown of all connections.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from peatio_ws.auth import TokenVerifier
from peatio_ws.config import Settings
from peatio_ws.logs import LineThrottle, logger
from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry
from peatio_ws.streams import PublicHub
from peatio_ws.websocket._autobahn import (
    bake_options,
    quiet_debug_arguments,
    use_bucket_timer,
    use_small_frame_masker,
)
from peatio_ws.websocket.admission import Admission
from peatio_ws.websocket.connection import Dialect, StreamProtocol
from peatio_ws.websocket.legacy import LEGACY
from peatio_ws.websocket.limits import byte_burst
from peatio_ws.websocket.origins import OriginPolicy
from peatio_ws.websocket.ranger import RANGER, speaks_ranger

if TYPE_CHECKING:
    from peatio_ws.redis import RevocationService

__all__ = ["PING_FRAME", "PING_SLICE", "PING_SLICE_GAP", "StreamFactory", "new_id_prefix"]

_log = logger("peatio_ws.protocol")
_STATE_OPEN = WebSocketProtocol.STATE_OPEN

#: Connections pinged at a time. Slices of this size go out L{PING_SLICE_GAP}
#: apart (the whole sweep within a quarter of the interval), so pings and the
#: pongs coming back are spread out and an event waits behind one small
#: slice at most (docs/benchmarks.md: 15,000 connections).
PING_SLICE = 20
PING_SLICE_GAP = 0.02
#: A ping frame (final, no payload), written like an event frame: Autobahn's
#: sendPing costs several times more, and nothing of ours needs it to know.
PING_FRAME = b"\x89\x00"


def new_id_prefix() -> str:
    """8 random lower-case base32 characters (40 bits): this process's connection id prefix."""
    return base64.b32encode(os.urandom(5)).decode("ascii").lower()


class StreamFactory(WebSocketServerFactory):
    """
    Builds L{StreamProtocol}s and holds what they share. The keep-alive is
    one sweep timer for all connections, not one per connection.
    """

    protocol = StreamProtocol  # type: ignore[assignment]
    #: Not Twisted's "Starting factory <StreamFactory object at 0x…>": the service logs the start.
    noisy = False

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
        hub: PublicHub | None = None,
    ) -> None:
        quiet_debug_arguments()
        use_small_frame_masker()
        super().__init__(url, server="peatio-ws")
        use_bucket_timer(self, clock)
        self.settings = settings
        self.registry = registry
        self.verifier = verifier
        self.metrics = metrics
        self.clock = clock
        self.revocation = revocation
        #: The ranger dialect's public streams and order books (shared with the broker consumer).
        self.hub = hub if hub is not None else PublicHub(registry, metrics, settings.ranger_orderbook_max_increments)
        self.origins = OriginPolicy(settings.websocket_allowed_origins)
        #: Lines a client can cause at will (refusals, limits) are written at most once a second per kind.
        self.log_throttle = LineThrottle(clock)
        self.admission = Admission(settings, metrics, clock, self.log_throttle)
        self.connections: set[StreamProtocol] = set()
        # Counted when scraped, not set at every open and close.
        metrics.connections.set_function(self.connections.__len__)
        self.byte_burst = byte_burst(settings.websocket_inbound_bytes_per_second, settings.websocket_max_message_size)
        #: Connection ids are "<prefix>-<n>": the prefix, random per process
        #: (40 bits), makes them unique across processes and restarts.
        self.id_prefix = new_id_prefix()
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
            # Timed by the BucketTimer on the injected clock (at most 0.2 s
            # late, never early); 0 (none) in most unit tests.
            closeHandshakeTimeout=settings.websocket_close_timeout if handshake_timeouts else 0,
            # The handshake deadline is ours (Admission, on the injected clock).
            openHandshakeTimeout=0,
            autoPingInterval=0,
            tcpNoDelay=True,
            allowedOrigins=["*"],
            allowNullOrigin=True,
        )

    # -- Autobahn's options, on the protocol class once per factory ----------------------

    def resetProtocolOptions(self) -> None:
        super().resetProtocolOptions()
        self.protocol = cast(Any, bake_options(type(self).protocol, self))

    def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None:
        super().setProtocolOptions(*args, **kwargs)
        self.protocol = cast(Any, bake_options(type(self).protocol, self))

    def buildProtocol(self, addr: Any) -> StreamProtocol:  # type: ignore[override]
        proto = cast(StreamProtocol, super().buildProtocol(addr))
        self._next_id += 1
        proto.conn_id = f"{self.id_prefix}-{self._next_id}"
        return proto

    def dialect_for(self, request: ConnectionRequest, query: str = "") -> Dialect:
        """
        The protocol a connection speaks, chosen from its upgrade request
        (SPEC §7; C{query}: the raw query string), never later.
        """
        if speaks_ranger(request.path, request.headers, request.params, query):
            return RANGER
        return LEGACY

    # -- bookkeeping ---------------------------------------------------------------

    def dialect_named(self, name: str) -> Dialect:
        """The dialect called C{name} (a connection carried across a restart names its own)."""
        return RANGER if name == RANGER.name else LEGACY

    def connection_opened(self, proto: StreamProtocol, carried: bool = False) -> None:
        """C{proto} is open; C{carried}: it was open before a restart in place (not counted as a new one)."""
        self.connections.add(proto)
        if not carried:
            self.metrics.connections_total.inc()
        self.metrics.dialect_connections_by(proto.dialect.name).inc()

    def connection_closed(self, proto: StreamProtocol) -> bool:
        """Forget C{proto}; True the first time only."""
        if proto not in self.connections:
            return False
        self.connections.discard(proto)
        self.metrics.dialect_connections_by(proto.dialect.name).dec()
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
                # The close line says it: closed by server: 1006 missed its ping.
                self.metrics.closes_by("ping_timeout").inc()
                proto.drop("missed its ping")
            else:
                proto.awaiting_pong = True
                proto.send_frame(PING_FRAME, control=True)
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
        the close handshake timeout, after which Autobahn drops them); sockets
        still in their handshake are dropped.
        """
        self.stop_pinging()
        self.admission.drop_all()
        waiting: list[Deferred[Any]] = []
        for proto in tuple(self.connections):
            waiting.append(proto.is_closed)
            proto.going_away()
        return DeferredList(waiting, consumeErrors=True)

    def live(self) -> Iterable[StreamProtocol]:
        return tuple(self.connections)
