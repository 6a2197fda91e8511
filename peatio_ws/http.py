# -*- test-case-name: peatio_ws.test.test_http -*-
"""
The monitoring HTTP side: C{/health} and C{/metrics} (SPEC §6).

C{/health} answers 200 when the listener, RabbitMQ and Redis are all up, and
503 naming what is down otherwise; either way the JSON body names every
component and its state, so a load balancer can use the status and a human
the body. C{/metrics} is the daemon's own Prometheus registry (text format,
or OpenMetrics when the scraper asks for it).

Only C{GET} and C{HEAD} of exactly those two paths are served; anything else
is a short plain-text 404 or 405. Requests are not access-logged: probes
every few seconds would drown the lifecycle lines.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client.exposition import choose_encoder
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from peatio_ws.metrics import Metrics

__all__ = ["HealthResource", "MetricsResource", "MonitoringSite", "monitoring_root", "monitoring_site"]

log = Logger()

HealthCheck = Callable[[], bool]

_ALLOWED = b"GET, HEAD"


def _plain(request: Request, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return text.encode("utf-8") + b"\n"


class _Endpoint(Resource):
    """
    A leaf serving one exact path with GET and HEAD: C{/health/x} is 404,
    other methods 405. HEAD sends GET's headers (with its Content-Length)
    and no body, without Twisted's "faking a HEAD request" log line.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        if request.postpath not in ([], [b""]):
            return _plain(request, 404, "Not found")
        if request.method == b"GET":
            return self.content(request)
        if request.method == b"HEAD":
            body = self.content(request)
            request.setHeader(b"content-length", b"%d" % len(body))
            return b""
        request.setHeader(b"allow", _ALLOWED)
        return _plain(request, 405, "Method not allowed")

    def content(self, request: Request) -> bytes:
        raise NotImplementedError


class HealthResource(_Endpoint):
    """C{/health}: each component's state; 503 when any is down."""

    def __init__(self, checks: Mapping[str, HealthCheck]) -> None:
        super().__init__()
        self._checks = checks

    def states(self) -> dict[str, str]:
        """C{{name: "up" | "down"}}; a check that raises counts as down."""
        states = {}
        for name, check in self._checks.items():
            try:
                up = bool(check())
            except Exception:
                log.failure("health check {component} failed", component=name)
                up = False
            states[name] = "up" if up else "down"
        return states

    def content(self, request: Request) -> bytes:
        states = self.states()
        down = [name for name, state in states.items() if state != "up"]
        body: dict[str, object] = {"status": "ok" if not down else "unavailable", "components": states}
        if down:
            body["down"] = down
            request.setResponseCode(503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode("utf-8") + b"\n"


class MetricsResource(_Endpoint):
    """C{/metrics}: the daemon's own registry in Prometheus' exposition format."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def content(self, request: Request) -> bytes:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        body: bytes = encoder(self._metrics.registry)
        return body


class _Root(Resource):
    """C{/}: only the named children exist; everything else is a plain 404."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return _NotFound()

    def render(self, request: Request) -> bytes:
        return _plain(request, 404, "Not found: try /health or /metrics")


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return _plain(request, 404, "Not found")


def monitoring_root(metrics: Metrics, checks: Mapping[str, HealthCheck]) -> Resource:
    """The resource tree: /health and /metrics; anything else is 404."""
    root = _Root()
    root.putChild(b"health", HealthResource(checks))
    root.putChild(b"metrics", MetricsResource(metrics))
    return root


class MonitoringSite(Site):
    """A quiet Site: no access-log line per probe, no factory start/stop lines."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def monitoring_site(metrics: Metrics, checks: Mapping[str, HealthCheck], reactor: Any = None) -> MonitoringSite:
    """The monitoring HTTP factory, on C{reactor} (the global one by default)."""
    return MonitoringSite(monitoring_root(metrics, checks), reactor=reactor)
