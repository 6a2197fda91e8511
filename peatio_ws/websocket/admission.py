# -*- test-case-name: tests.unit.test_protocol -*-
"""
Who may open a socket, and for how long it may take its handshake: the
pace of new sockets (WEBSOCKET_NEW_CONNECTIONS_PER_SECOND: in a reconnect
storm, a quick 503 to the excess rather than a reactor starved for the
connections already open), the per-address limit
(WEBSOCKET_MAX_CONNECTIONS_PER_IP), the process-wide cap on sockets still in
their upgrade request (WEBSOCKET_MAX_HANDSHAKES), and their deadline
(WEBSOCKET_HANDSHAKE_TIMEOUT) kept by one sweep timer for all.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime

from peatio_ws.config import Settings
from peatio_ws.deadlines import Deadlines
from peatio_ws.logs import LineThrottle, held_note, logger
from peatio_ws.metrics import Metrics
from peatio_ws.websocket.limits import refill

if TYPE_CHECKING:
    from peatio_ws.websocket.connection import StreamProtocol

__all__ = ["Admission"]

_log = logger("peatio_ws.protocol")


class Admission:
    """Counts sockets per address from accept to close, and drops handshakes past their deadline."""

    def __init__(self, settings: Settings, metrics: Metrics, clock: IReactorTime, log_throttle: LineThrottle) -> None:
        self._settings = settings
        self._log_throttle = log_throttle
        self._metrics = metrics
        self._clock = clock
        self.per_ip: dict[str, int] = {}
        #: Sockets whose upgrade request is not complete, oldest first, dropped at their deadline.
        self._handshaking: Deadlines[StreamProtocol] = Deadlines(
            clock, settings.websocket_handshake_timeout, self._expired
        )
        # Counted when scraped, not set at every accept and upgrade.
        metrics.handshakes.set_function(lambda: len(self._handshaking))
        #: The new-socket budget (a token bucket: tokens, when filled), full at first.
        self._pace = [math.inf, 0.0]

    def admit(self, proto: StreamProtocol) -> str | None:
        """
        Count a new socket against the limits: None when admitted (it is
        counted for its address and its handshake deadline runs), else the
        reason it is refused.
        """
        settings = self._settings
        rate = settings.websocket_new_connections_per_second
        if rate > 0:
            now = self._clock.seconds()
            pace = self._pace
            tokens = refill(pace[0], pace[1], now, rate, rate)
            if tokens < 1:
                pace[0], pace[1] = tokens, now
                return "pace"
            pace[0], pace[1] = tokens - 1, now
        cap = settings.websocket_max_handshakes
        if cap > 0 and len(self._handshaking) >= cap:
            return "handshake_limit"
        ip = proto.client_ip
        limit = settings.websocket_max_connections_per_ip
        count = self.per_ip.get(ip, 0)
        if limit > 0 and count >= limit:
            return "per_ip_limit"
        self.per_ip[ip] = count + 1
        self._handshaking.add(proto)
        return None

    def count(self, proto: StreamProtocol) -> None:
        """Count a socket that is open already (carried across a restart in place): no limit, no deadline."""
        self.per_ip[proto.client_ip] = self.per_ip.get(proto.client_ip, 0) + 1

    def room(self) -> int:
        """
        How many more sockets may start their handshake now: the listening
        port accepts no more than this per poll, so a reconnect storm waits
        in the kernel's accept queue instead of being answered 503 at the
        cap (C{sys.maxsize} when WEBSOCKET_MAX_HANDSHAKES is 0, no cap).
        """
        cap = self._settings.websocket_max_handshakes
        return cap - len(self._handshaking) if cap > 0 else sys.maxsize

    def release(self, ip: str) -> None:
        """A socket admitted from C{ip} is gone."""
        count = self.per_ip.get(ip, 0) - 1
        if count > 0:
            self.per_ip[ip] = count
        else:
            self.per_ip.pop(ip, None)

    def handshake_done(self, proto: StreamProtocol) -> None:
        """C{proto} finished its handshake, or is gone: its deadline no longer applies."""
        self._handshaking.discard(proto)

    def _expired(self, expired: list[StreamProtocol]) -> None:
        """Drop the sockets past their handshake deadline (oldest first)."""
        self._metrics.inbound_limited_by("handshake_timeout").inc(len(expired))
        held = self._log_throttle("handshake_timeout")
        if held is not None:
            _log.info(
                "{count} socket(s) did not finish their handshake in time, the first from {peer}; "
                "dropping{held}",
                count=len(expired),
                peer=expired[0].peer,
                held=held_note(held),
            )
        for proto in expired:
            proto.mute()
            proto.dropConnection(abort=True)

    def drop_all(self) -> None:
        """Shutdown: every socket still in its handshake is dropped, and the sweep stops."""
        for proto in self._handshaking.clear():
            proto.dropConnection(abort=True)
