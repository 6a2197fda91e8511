# -*- test-case-name: peatio_ws.test.test_http -*-
"""
The monitoring HTTP side: C{/health} and C{/metrics} (SPEC §6).

C{/health} answers 200 when the listener, RabbitMQ and Redis are all up, and
503 naming what is down otherwise; either way the JSON body names every
component and its state. C{/metrics} is Prometheus' text format.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request

from peatio_ws.metrics import Metrics

__all__ = ["HealthResource", "MetricsResource", "monitoring_root"]


class HealthResource(Resource):
    """C{GET /health}: each component's state; 503 when any is down."""

    isLeaf = True

    def __init__(self, checks: Mapping[str, Callable[[], bool]]) -> None:
        super().__init__()
        self._checks = checks

    def render_GET(self, request: Request) -> bytes:
        states = {name: ("up" if check() else "down") for name, check in self._checks.items()}
        down = [name for name, state in states.items() if state != "up"]
        body: dict[str, object] = {"status": "ok" if not down else "unavailable", "components": states}
        if down:
            body["down"] = down
            request.setResponseCode(503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode("utf-8") + b"\n"

    def render_HEAD(self, request: Request) -> bytes:
        self.render_GET(request)
        return b""


class MetricsResource(Resource):
    """C{GET /metrics}: the daemon's own registry in Prometheus text format."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._metrics.registry)


def monitoring_root(metrics: Metrics, checks: Mapping[str, Callable[[], bool]]) -> Resource:
    """The resource tree: /health and /metrics; anything else is 404."""
    root = Resource()
    root.putChild(b"health", HealthResource(checks))
    root.putChild(b"metrics", MetricsResource(metrics))
    return root
