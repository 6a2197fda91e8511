"""
Tests for L{peatio_ws.http}: /health and /metrics, served by the real
L{MonitoringSite} over an in-memory transport (no network).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.http import (
    ABORT_TIMEOUT,
    HEAD_TIMEOUT,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MonitoringChannel,
    _BodilessRequest,
    monitoring_site,
)
from peatio_ws.metrics import Metrics


@dataclass
class Response:
    code: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


def parse_response(raw: bytes) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(int(status.split()[1]), headers, body)


class MonitoringTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.metrics = Metrics()
        self.up = {"listener": True, "rabbitmq": True, "redis": True}
        checks = {name: (lambda name=name: self.up[name]) for name in self.up}
        self.site = monitoring_site(self.metrics, checks, self.reactor)
        self.site.doStart()
        self.addCleanup(self.site.doStop)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> Response:
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        lines = [f"{method} {path} HTTP/1.1", "Host: monitoring", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        raw = transport.value()
        channel.connectionLost(None)
        return parse_response(raw)

    # -- /health ------------------------------------------------------------------

    def test_health_all_up(self) -> None:
        """200 and a JSON body naming every component as up."""
        response = self.request("GET", "/health")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers["content-type"], "application/json")
        self.assertEqual(response.headers["cache-control"], "no-store")
        self.assertEqual(
            response.json,
            {"status": "ok", "components": {"listener": "up", "rabbitmq": "up", "redis": "up"}},
        )

    def test_health_down_names_component(self) -> None:
        """503, and the body says which components are down."""
        self.up["redis"] = False
        response = self.request("GET", "/health")
        self.assertEqual(response.code, 503)
        self.assertEqual(response.json["status"], "unavailable")
        self.assertEqual(response.json["down"], ["redis"])
        self.assertEqual(response.json["components"], {"listener": "up", "rabbitmq": "up", "redis": "down"})
        self.up["rabbitmq"] = self.up["listener"] = False
        self.assertEqual(self.request("GET", "/health").json["down"], ["listener", "rabbitmq", "redis"])

    def test_health_check_raising_is_down(self) -> None:
        """A check that raises reports its component down (and is logged), not a 500."""
        site = monitoring_site(self.metrics, {"redis": lambda: 1 / 0 > 0}, self.reactor)
        self.site = site
        response = self.request("GET", "/health")
        self.assertEqual(response.code, 503)
        self.assertEqual(response.json["down"], ["redis"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_health_trailing_slash(self) -> None:
        """C{/health/} is the same resource; C{/health/x} is not."""
        self.assertEqual(self.request("GET", "/health/").code, 200)
        self.assertEqual(self.request("GET", "/health/x").code, 404)

    def test_head(self) -> None:
        """HEAD: GET's status and headers (Content-Length included), no body."""
        get = self.request("GET", "/health")
        head = self.request("HEAD", "/health")
        self.assertEqual(head.code, 200)
        self.assertEqual(head.body, b"")
        self.assertEqual(head.headers["content-length"], str(len(get.body)))
        self.up["listener"] = False
        self.assertEqual(self.request("HEAD", "/health").code, 503)
        metrics = self.request("HEAD", "/metrics")
        self.assertEqual(metrics.code, 200)
        self.assertEqual(metrics.body, b"")

    # -- /metrics -----------------------------------------------------------------

    def test_metrics(self) -> None:
        """Prometheus text format from the daemon's own registry."""
        self.metrics.connections.set(3)
        self.metrics.auth.labels(result="failure", reason="expired").inc()
        self.metrics.redis_up.set(1)
        response = self.request("GET", "/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers["content-type"].startswith("text/plain; version=0.0.4"))
        families = {f.name: f for f in text_string_to_metric_families(response.body.decode("utf-8"))}
        self.assertEqual(families["peatio_ws_connections"].samples[0].value, 3)
        self.assertEqual(families["peatio_ws_redis_up"].samples[0].value, 1)
        [sample] = [s for s in families["peatio_ws_authentications"].samples if s.name.endswith("_total")]
        self.assertEqual(sample.labels, {"result": "failure", "reason": "expired"})
        # The process-wide default registry is not what is served.
        self.assertNotIn("python_info", families)

    def test_metrics_openmetrics(self) -> None:
        """A scraper asking for OpenMetrics gets it."""
        response = self.request("GET", "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers["content-type"].startswith("application/openmetrics-text"))
        self.assertTrue(response.body.endswith(b"# EOF\n"))

    # -- everything else ------------------------------------------------------------

    def test_unknown_paths_404(self) -> None:
        """Only /health and /metrics exist."""
        for path in ("/", "/healthz", "/metrics/x", "/favicon.ico", "/health/../metrics/x"):
            response = self.request("GET", path)
            self.assertEqual(response.code, 404, path)
            self.assertTrue(response.headers["content-type"].startswith("text/plain"), path)

    def test_other_methods_405(self) -> None:
        """POST and friends get 405 with an Allow header."""
        for method in ("POST", "PUT", "DELETE"):
            response = self.request(method, "/health")
            self.assertEqual(response.code, 405, method)
            self.assertEqual(response.headers["allow"], "GET, HEAD")

    def test_no_access_log(self) -> None:
        """Probes do not write an access-log line (or any other log event)."""
        events: list[dict] = []
        observer: Any = events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.request("GET", "/health")
        self.request("HEAD", "/health")
        self.request("GET", "/metrics")
        self.request("GET", "/nope")
        self.assertEqual(events, [])


class HostileInputTests(SynchronousTestCase):
    """
    The monitoring port refuses bodies and other methods from the request
    head alone, bounds the head, and gives each head a deadline; driven
    byte for byte through the real L{MonitoringChannel} on a
    L{StringTransport}, with time on a L{MemoryReactorClock}.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.metrics = Metrics()
        self.site = monitoring_site(self.metrics, {"redis": lambda: True}, self.reactor)
        self.site.doStart()
        self.addCleanup(self.site.doStop)
        self.events: list[dict] = []
        observer: Any = self.events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def connect(self) -> tuple[MonitoringChannel, StringTransport]:
        channel = self.site.buildProtocol(None)
        assert isinstance(channel, MonitoringChannel)
        transport = StringTransport()
        channel.makeConnection(transport)
        self.addCleanup(channel.connectionLost, Failure(ConnectionDone()))
        return channel, transport

    def refused(self, head: bytes, body: bytes = b"") -> tuple[Response, MonitoringChannel, StringTransport]:
        """Send C{head} and C{body} in one read; the response, the channel and its transport."""
        channel, transport = self.connect()
        channel.dataReceived(head + body)
        return parse_response(transport.value()), channel, transport

    def assertRefusedUnread(self, channel: MonitoringChannel, transport: StringTransport) -> None:
        """Closed, nothing made to hold a body, and later bytes are ignored."""
        self.assertTrue(transport.disconnecting)
        [request] = channel.requests
        self.assertIsNone(request.content)
        written = transport.value()
        channel.dataReceived(b"x" * 65536)
        self.assertEqual(transport.value(), written)
        self.assertIsNone(request.content)

    def test_post_huge_length_405_unread(self) -> None:
        """POST announcing 10 GiB: 405 at once, connection closed, the body bytes never read into anything."""
        response, channel, transport = self.refused(
            b"POST /health HTTP/1.1\r\nHost: m\r\nContent-Length: 10737418240\r\n\r\n", b"A" * 65536
        )
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers["allow"], "GET, HEAD")
        self.assertEqual(response.headers["connection"], "close")
        self.assertEqual(response.body, b"Method not allowed\n")
        self.assertEqual(int(response.headers["content-length"]), len(response.body))
        self.assertRefusedUnread(channel, transport)

    def test_other_methods_refused_without_body(self) -> None:
        """Any method but GET/HEAD is refused from the head, on any path, even without a body."""
        for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"PATCH", b"CONNECT"):
            response, _, transport = self.refused(method + b" /nope HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            self.assertEqual(response.code, 405, method)
            self.assertTrue(transport.disconnecting, method)
            # Refused before the request was processed: one response only.
            self.assertEqual(transport.value().count(b"HTTP/1.1 "), 1, method)

    def test_get_with_body_413(self) -> None:
        """GET or HEAD announcing a body: 413, closed, body unread."""
        for method in (b"GET", b"HEAD"):
            response, channel, transport = self.refused(
                method + b" /health HTTP/1.1\r\nContent-Length: 5\r\n\r\n", b"hello"
            )
            self.assertEqual(response.code, 413, method)
            self.assertEqual(response.headers["connection"], "close")
            self.assertRefusedUnread(channel, transport)

    def test_chunked_refused(self) -> None:
        """A chunked body (no length at all) is refused too: 413 for GET, 405 for POST."""
        for method, code in ((b"GET", 413), (b"POST", 405)):
            response, channel, transport = self.refused(
                method + b" /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhello\r\n"
            )
            self.assertEqual(response.code, code, method)
            self.assertRefusedUnread(channel, transport)

    def test_expect_continue_not_invited(self) -> None:
        """A refused request with Expect: 100-continue is not told to send its body."""
        response, _, transport = self.refused(
            b"PUT /health HTTP/1.1\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n"
        )
        self.assertEqual(response.code, 405)
        self.assertNotIn(b"100 Continue", transport.value())

    def test_get_and_head_still_served(self) -> None:
        """GET and HEAD (Content-Length: 0 allowed), keep-alive included, are served as before."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET /health HTTP/1.1\r\nHost: m\r\n\r\n")
        self.assertEqual(parse_response(transport.value()).code, 200)
        self.assertFalse(transport.disconnecting)
        transport.clear()
        channel.dataReceived(b"HEAD /health HTTP/1.1\r\nHost: m\r\nContent-Length: 0\r\n\r\n")
        head = parse_response(transport.value())
        self.assertEqual((head.code, head.body), (200, b""))
        transport.clear()
        channel.dataReceived(b"GET /metrics HTTP/1.0\r\n\r\n")
        self.assertEqual(parse_response(transport.value()).code, 200)

    def test_pipelined_body_after_good_request(self) -> None:
        """A POST pipelined behind a GET: the GET is answered, the POST refused, and the connection closed."""
        channel, transport = self.connect()
        channel.dataReceived(
            b"GET /health HTTP/1.1\r\nHost: m\r\n\r\n"
            b"POST /health HTTP/1.1\r\nHost: m\r\nContent-Length: 999999999\r\n\r\n" + b"B" * 1000
        )
        raw = transport.value()
        self.assertEqual(raw.count(b"HTTP/1.1 200 "), 1)
        self.assertEqual(raw.count(b"HTTP/1.1 405 "), 1)
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(channel.requests[-1].content)

    def test_long_line_dropped(self) -> None:
        """A line longer than MAX_HEAD_BYTES, even unfinished, drops the connection."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET /health HTTP/1.1\r\nX-Long: " + b"a" * MAX_HEAD_BYTES)
        self.assertTrue(transport.disconnecting)

    def test_head_too_big_400(self) -> None:
        """More than MAX_HEAD_BYTES of headers in all: 400 and closed."""
        channel, transport = self.connect()
        line = b"X-Pad: " + b"p" * 1000 + b"\r\n"
        channel.dataReceived(b"GET /health HTTP/1.1\r\n" + line * (MAX_HEAD_BYTES // len(line) + 1))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertTrue(transport.disconnecting)

    def test_too_many_headers_400(self) -> None:
        """More than MAX_HEADERS header lines: 400 and closed."""
        channel, transport = self.connect()
        # (Twisted takes in a header line once the next line starts.)
        channel.dataReceived(b"GET /health HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_HEADERS + 2))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertTrue(transport.disconnecting)

    def test_slow_loris(self) -> None:
        """
        A head trickling in, a byte at a time within the idle limit, is cut
        HEAD_TIMEOUT after the connection opened; aborted ABORT_TIMEOUT
        later if still there; no log line.
        """
        channel, transport = self.connect()
        head = b"GET /health HTTP/1.1\r\nX-Slow: " + b"z" * 100
        step = HEAD_TIMEOUT / 20
        for byte in head[:19]:
            channel.dataReceived(bytes([byte]))
            self.reactor.advance(step)
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(head[19:20])
        self.reactor.advance(step)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        self.assertEqual(transport.value(), b"")
        self.reactor.advance(ABORT_TIMEOUT)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.events, [])

    def test_idle_keep_alive_closed(self) -> None:
        """A kept-alive connection gets HEAD_TIMEOUT for its next head, counted from the last response."""
        channel, transport = self.connect()
        self.reactor.advance(HEAD_TIMEOUT - 1)
        channel.dataReceived(b"GET /health HTTP/1.1\r\nHost: m\r\n\r\n")
        self.assertEqual(parse_response(transport.value()).code, 200)
        self.reactor.advance(HEAD_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_closed_before_timeout_leaves_no_timer(self) -> None:
        """A connection that goes away cancels its deadline and abort timers."""
        channel, _ = self.connect()
        self.reactor.advance(HEAD_TIMEOUT)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 2)  # the abort, and Site's log-date timer
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)

    def test_no_temp_file_for_any_length(self) -> None:
        """Even if a body-bearing request got through, its content would be in memory, never a temp file."""
        request = _BodilessRequest(self.connect()[0])
        request.gotLength(10 * 2**30)
        self.assertIsInstance(request.content, BytesIO)

    def test_health_state_words(self) -> None:
        """A check may name its state; any word but "up" is down (503), and is shown as given."""
        site = monitoring_site(self.metrics, {"redis": lambda: "stalled", "rabbitmq": lambda: "up"}, self.reactor)
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        response = parse_response(transport.value())
        self.assertEqual(response.code, 503)
        self.assertEqual(response.json["components"], {"redis": "stalled", "rabbitmq": "up"})
        self.assertEqual(response.json["down"], ["redis"])


class ConnectionCapTests(SynchronousTestCase):
    """The monitoring port holds at most C{max_connections} connections; more are closed at once."""

    def test_cap(self) -> None:
        reactor = MemoryReactorClock()
        site = monitoring_site(Metrics(), {"redis": lambda: True}, reactor)
        site.max_connections = 2
        channels = []
        for _ in range(2):
            channel = site.buildProtocol(None)
            channel.makeConnection(StringTransport())
            channels.append(channel)
        self.assertIsNone(site.buildProtocol(None))
        channels[0].connectionLost(Failure(ConnectionDone()))
        again = site.buildProtocol(None)
        self.assertIsNotNone(again)
        again.makeConnection(StringTransport())
        self.assertEqual(site.open_channels, 2)
        for channel in (channels[1], again):
            channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(site.open_channels, 0)
