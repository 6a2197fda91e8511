# -*- test-case-name: tests.unit.test_http -*-
"""
The monitoring HTTP side: C{/health} and C{/metrics} (SPEC §6).

C{/health} answers 200 when the listener, RabbitMQ and Redis are all up, and
503 naming what is down otherwise; either way the JSON body names every
component and its state, so a load balancer can use the status and a human
the body. C{/metrics} is the daemon's own Prometheus registry (text format,
or OpenMetrics when the scraper asks for it).

Only C{GET} and C{HEAD} of exactly those two paths are served; any other
path is a short plain-text 404, any other method a 405. Requests are not access-logged: probes
every few seconds would drown the lifecycle lines.

The port is often reachable from more than the scraper (METRICS_HOST is
0.0.0.0 by default), so it is built to cost an unfriendly client almost
nothing (L{MonitoringChannel}): a request that is not C{GET}/C{HEAD} (405),
or that announces a body (413), is answered from its head alone and the
connection closed, before a byte of the body is read, so nothing is spooled
to a temporary file or held in memory; the head is capped (L{MAX_HEAD_BYTES},
L{MAX_HEADERS}) and must arrive whole within L{HEAD_TIMEOUT} seconds of the
connection opening or of the previous response, however slowly it trickles in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from io import BytesIO
from typing import Any

from prometheus_client.exposition import choose_encoder
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from peatio_ws.logs import logger
from peatio_ws.metrics import Metrics

__all__ = [
    "HEAD_TIMEOUT",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "HealthResource",
    "MetricsResource",
    "MonitoringChannel",
    "MonitoringSite",
    "monitoring_root",
    "monitoring_site",
]

log = logger("peatio_ws.http")

#: A component's state: True ("up") or False ("down"), or a word for /health
#: ("up", or anything else, such as "stalled", which counts as down).
HealthCheck = Callable[[], bool | str]

_ALLOWED = b"GET, HEAD"

#: Seconds a client has to send one whole request head, counted from the
#: connection opening or from the end of the previous response; also how long
#: an idle keep-alive connection is kept. Bytes trickling in do not extend it.
HEAD_TIMEOUT = 10.0
#: Seconds after a timed-out connection was closed before it is aborted (a
#: peer that does not read our FIN-bound data cannot hold the socket).
ABORT_TIMEOUT = 5.0
#: Longest request head (request line plus headers), and longest line, in
#: bytes. Prometheus and load-balancer probes send a few hundred.
MAX_HEAD_BYTES = 8192
#: Most header lines in one request.
MAX_HEADERS = 64


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
        """
        C{{name: state}}: "up", "down", or the word a check returned (such
        as "stalled"); a check that raises counts as down.
        """
        states = {}
        for name, check in self._checks.items():
            try:
                result = check()
            except Exception:
                log.failure("health check {component} failed", component=name)
                result = False
            states[name] = result if isinstance(result, str) else "up" if result else "down"
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


def _refusal(code: int, text: str, allow: bytes | None = None) -> bytes:
    """A complete response that ends the connection, written without a Request."""
    body = text.encode("utf-8") + b"\n"
    head = [
        b"HTTP/1.1 %d %s" % (code, RESPONSES.get(code, b"Error")),
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: %d" % len(body),
        b"Cache-Control: no-store",
        b"Connection: close",
    ]
    if allow is not None:
        head.append(b"Allow: " + allow)
    return b"\r\n".join(head) + b"\r\n\r\n" + body


_METHOD_NOT_ALLOWED = _refusal(405, "Method not allowed", _ALLOWED)
_BODY_REFUSED = _refusal(413, "Request bodies are not accepted")


class _BodilessRequest(Request):
    """
    A Request that never spools a body: L{MonitoringChannel} refuses every
    request announcing one before this is reached, so the body is always
    empty; this makes sure no later change can bring the temp file back.
    """

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()


class MonitoringChannel(HTTPChannel):
    """
    HTTPChannel for the monitoring port: requests with a body or another
    method are refused from their head alone, and the head is small and on
    a deadline (see the module docstring).
    """

    #: Longest line (LineReceiver drops the connection beyond it).
    MAX_LENGTH = MAX_HEAD_BYTES
    #: Request line plus header lines, in bytes (400 beyond it).
    totalHeadersSize = MAX_HEAD_BYTES
    #: Header lines (400 beyond it).
    maxHeaders = MAX_HEADERS

    _refused = False
    _abort_call: IDelayedCall | None = None

    site: MonitoringSite

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.open_channels += 1

    def allHeadersReceived(self) -> None:
        """Refuse (and close) here, before Twisted picks a place for the body."""
        refusal = self._refuse_head()
        if refusal is None:
            super().allHeadersReceived()
            return
        self._refused = True
        assert self.transport is not None
        self.transport.write(refusal)
        # Stops reading at once: the rest of the body stays in the kernel,
        # and is dropped with the socket.
        self.loseConnection()

    def _refuse_head(self) -> bytes | None:
        # Twisted 26.10: HTTPChannel.lineReceived keeps the request line's
        # method in the private _command until allContentReceived; no public
        # name has it before the body is read. The rest is public: self.length
        # is the announced Content-Length, None for chunked.
        method = getattr(self, "_command", None)
        if method not in (b"GET", b"HEAD"):
            return _METHOD_NOT_ALLOWED
        if self.length != 0:
            return _BODY_REFUSED
        return None

    def allContentReceived(self) -> None:
        # Reached right after allHeadersReceived when a refused request had
        # Content-Length: 0; a refused request is never processed.
        if not self._refused:
            super().allContentReceived()

    def dataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def resetTimeout(self) -> None:
        """
        Never pushed back by incoming bytes: the idle timeout becomes a
        deadline for each request head, so a client sending one byte every
        few seconds (slow loris) is cut like a silent one. (HTTPChannel
        still disarms it while a request is served and re-arms it after.)
        """

    def timeoutConnection(self) -> None:
        # HTTPChannel's own logs an info line per timed-out client: a scraper
        # keeping connections alive between scrapes would fill the log.
        self._abort_call = self.callLater(ABORT_TIMEOUT, self._abort)
        self.loseConnection()

    def _abort(self) -> None:
        self._abort_call = None
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.site.open_channels -= 1
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        super().connectionLost(reason)


#: Connections the monitoring port holds at once.
MAX_CONNECTIONS = 64


class MonitoringSite(Site):
    """
    A quiet Site (no access-log line per probe, no factory start/stop
    lines) speaking plain HTTP/1.1 through L{MonitoringChannel}.
    """

    noisy = False
    #: Not Site's HTTP/2-negotiating wrapper: this port is plain TCP.
    protocol = MonitoringChannel  # type: ignore[assignment]
    requestFactory = _BodilessRequest

    def __init__(
        self,
        resource: IResource,
        reactor: Any = None,
        timeout: float = HEAD_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__(resource, timeout=timeout, reactor=reactor)
        self.max_connections = max_connections
        self.open_channels = 0

    def buildProtocol(self, addr: Any) -> Any:
        # A scraper or a load balancer's probe needs one connection at a time:
        # past the cap a new one is closed at once, so a flood of connections
        # to this port cannot make the daemon hold thousands of them.
        if self.open_channels >= self.max_connections:
            return None
        return super().buildProtocol(addr)

    def log(self, request: Any) -> None:
        pass


def monitoring_site(metrics: Metrics, checks: Mapping[str, HealthCheck], reactor: Any = None) -> MonitoringSite:
    """The monitoring HTTP factory, on C{reactor} (the global one by default)."""
    return MonitoringSite(monitoring_root(metrics, checks), reactor=reactor)
