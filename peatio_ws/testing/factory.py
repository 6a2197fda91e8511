"""A ready L{StreamFactory} for tests and benchmarks that drive connections in memory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peatio_ws.config import Settings
from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry
from peatio_ws.websocket import StreamFactory

if TYPE_CHECKING:
    from peatio_ws.redis import RevocationService

__all__ = ["stream_factory"]


def stream_factory(
    settings: Settings,
    clock: Any,
    *,
    registry: Registry | None = None,
    metrics: Metrics | None = None,
    revocation: RevocationService | Any | None = None,
    handshake_timeouts: bool = False,
) -> StreamFactory:
    """
    A L{StreamFactory} with the verifier C{settings} describe, on C{clock},
    with a registry and metrics of its own unless given. Autobahn's
    closing-handshake timeout is off by default (C{handshake_timeouts}): on
    C{clock}, a test that does not advance it would leave it pending.
    """
    metrics = metrics if metrics is not None else Metrics()
    registry = registry if registry is not None else Registry(metrics)
    return StreamFactory(
        settings,
        registry,
        settings.token_verifier(clock),
        metrics,
        clock,
        revocation,
        handshake_timeouts=handshake_timeouts,
    )
