"""
The Grafana dashboard (ops/grafana/peatio-ws.json) and the Prometheus alert
rules (ops/prometheus/peatio-ws.rules.yml) against the real daemon: every
metric any panel or rule queries must be one a running daemon exports, so
the dashboard and the code never drift apart. The rules also pass
C{promtool check rules} and their unit tests C{promtool test rules}
(Debian's C{prometheus} package; C{make test} installs it, and there a
missing promtool fails the test instead of skipping it).

The same daemon's log, after a short life with every kind of client, holds
no object repr (C{<... object at 0x...>}).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from peatio_ws.testing import make_token
from tests.support.cases import DaemonTestCase, new_uid
from tests.support.paths import REPO

DASHBOARD = REPO / "ops" / "grafana" / "peatio-ws.json"
RULES = REPO / "ops" / "prometheus" / "peatio-ws.rules.yml"
RULE_TESTS = REPO / "ops" / "prometheus" / "peatio-ws.rules.test.yml"

#: PromQL words that are not metric names (keywords, aggregation modifiers, set operators).
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless", "inf",
     "nan", "atan2"}
)
#: Sample names each Prometheus metric type exposes, from its family name.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "untyped": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


def metric_names(expr: str) -> set[str]:
    """
    The metric names a PromQL expression reads: identifiers that are not
    functions (followed by "("), keywords, label names (inside {...} or in
    by/without/on/ignoring/group_* lists), durations, numbers, strings or
    Grafana variables.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "", text)  # Grafana variables
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def exported_names(exposition: str) -> set[str]:
    """Every sample name the metric families of C{exposition} can expose (counter foo: foo_total, ...)."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        for suffix in _SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
        names.update(sample.name for sample in family.samples)
    return names


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expr) of every query of every panel, rows' nested panels included."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield panel.get("title", "?"), target["expr"]
            yield from walk(panel.get("panels", []))

    yield from walk(dashboard.get("panels", []))


def rule_exprs(rules: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(rule name, expr) of every alerting or recording rule."""
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            yield rule.get("alert") or rule.get("record") or "?", str(rule["expr"])


def promtool() -> str:
    """promtool's path; skip without it, except under `make test` or CI, where it must be installed."""
    path = shutil.which("promtool")
    if path is not None:
        return path
    message = "promtool is not installed (Debian: apt-get install prometheus)"
    if os.environ.get("PEATIO_WS_MAKE_TEST") == "1" or os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        raise AssertionError(f"{message}; `make test` installs it (PREPARE_EXTRA_PACKAGES)")
    raise SkipTest(message)


class ParserTests(SynchronousTestCase):
    """The PromQL name extraction the drift check relies on."""

    def test_names(self) -> None:
        expr = (
            'histogram_quantile(0.99, sum by (le) (rate(peatio_ws_delivery_latency_seconds_bucket{job=~"$job", '
            'instance=~"$instance"}[$__rate_interval]))) / clamp_min(sum without (instance) '
            "(rate(foo_total[5m] offset 1h)), 1e-9) and on (job) bar > 0.5 unless ignoring(x) baz"
        )
        self.assertEqual(
            metric_names(expr), {"peatio_ws_delivery_latency_seconds_bucket", "foo_total", "bar", "baz"}
        )

    def test_exported_names(self) -> None:
        exposition = (
            "# HELP a_total x\n# TYPE a_total counter\n"
            "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 0.0\nh_count 0.0\nh_sum 0.0\n"
            "# HELP g x\n# TYPE g gauge\ng 1.0\n"
        )
        names = exported_names(exposition)
        self.assertTrue({"a_total", "h_bucket", "h_sum", "h_count", "g"} <= names, names)
        self.assertNotIn("a", names)
        self.assertNotIn("g_total", names)


class DashboardTests(DaemonTestCase):
    def exercise(self) -> None:
        """Some of everything: a login, a failed one, a refresh, a malformed message, a close."""
        ws = self.client()
        uid = new_uid()
        self.login(ws, uid)
        ws.send(json.dumps({"jwt": "Bearer not.a.token"}))
        self.recv(ws)
        self.login_again(ws, uid)
        ws.send("not json")
        self.recv(ws)
        ws.close()
        other = self.client()
        self.recv(other)
        other.close(code=4000, reason="bye")

    def login_again(self, ws: Any, uid: str) -> None:
        ws.send(json.dumps({"jwt": "Bearer " + make_token(uid=uid)}))
        self.recv(ws)

    def test_every_queried_metric_is_exported(self) -> None:
        """Every metric in every panel's and every rule's PromQL is on a real daemon's /metrics."""
        daemon = self.start_daemon()
        self.exercise()
        exported = exported_names(daemon.metrics())
        dashboard = json.loads(DASHBOARD.read_text())
        rules = yaml.safe_load(RULES.read_text())
        queried: dict[str, set[str]] = {}
        for where, exprs in (("panel", dashboard_exprs(dashboard)), ("rule", rule_exprs(rules))):
            for title, expr in exprs:
                names = metric_names(expr)
                self.assertTrue(names, f"{where} {title!r}: no metric found in {expr!r}")
                for name in names:
                    queried.setdefault(name, set()).add(f"{where} {title!r}")
        missing = {name: sorted(used) for name, used in queried.items() if name not in exported}
        self.assertEqual(missing, {}, "queried but not exported by the daemon")
        # The panels the issue asks for are there.
        text = DASHBOARD.read_text()
        for name in (
            "peatio_ws_connections", "peatio_ws_members", "peatio_ws_authentications_total",
            "peatio_ws_events_received_total", "peatio_ws_events_delivered_total", "peatio_ws_events_dropped_total",
            "peatio_ws_delivery_latency_seconds_bucket", "peatio_ws_slow_consumer_closes_total",
            "peatio_ws_revocations_total", "peatio_ws_closes_total", "peatio_ws_inbound_limited_total",
            "peatio_ws_handshakes", "peatio_ws_rabbitmq_up", "peatio_ws_redis_up",
            "peatio_ws_rabbitmq_queue_lost_total", "process_cpu_seconds_total", "process_resident_memory_bytes",
            "process_open_fds",
        ):
            self.assertIn(name, text)
        self.assertIn("histogram_quantile", text)
        # No object repr anywhere in the daemon's log, shutdown included.
        daemon.stop()
        log = daemon.log_text()
        self.assertIn(" closed by client: 4000 bye", log)
        # Connection ids carry the process's prefix, which the start line names.
        [prefix] = re.findall(r"connection ids (\w+)-1, ", log)
        self.assertRegex(log, rf"connection {prefix}-\d+ from tcp4:127\.0\.0\.1:\d+ \(legacy\) opened")
        self.assertEqual(re.findall(r".*object at 0x[0-9a-f]+.*", log), [])

    def test_rules_pass_promtool(self) -> None:
        """promtool accepts the alert rules, and their unit tests (each alert fires when it should) pass."""
        tool = promtool()
        result = subprocess.run(
            [tool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60, check=False
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("4 rules found", result.stdout + result.stderr)
        result = subprocess.run(
            [tool, "test", "rules", RULE_TESTS.name],
            cwd=str(RULE_TESTS.parent),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCESS", result.stdout + result.stderr)
