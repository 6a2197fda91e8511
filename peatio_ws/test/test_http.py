"""
Tests for L{peatio_ws.http}: /health and /metrics, served by the real
L{MonitoringSite} over an in-memory transport (no network).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.http import monitoring_site
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
