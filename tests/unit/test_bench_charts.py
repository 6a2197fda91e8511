"""
Tests for L{bench.charts} (the PNG charts of a results file) and the
latency distribution L{bench.scenarios} keeps for them. The charts need
matplotlib (bench/requirements.txt): without it those tests are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from bench import charts
from bench.scenarios import HISTOGRAM_EDGES_MS, histogram, percentiles


def _results() -> dict[str, Any]:
    lat_ns = [200_000 + 1_000 * i for i in range(1000)]
    lat = {"latency": percentiles(lat_ns), "latency_histogram": histogram(lat_ns), "rate": 2000.0}
    return {
        "machine": {"date": "2026-12-02 15:00 UTC", "nproc": 2, "cpu": "test"},
        "options": {"members": 1000, "fanout_connections": 200, "latency_rate": 2000.0},
        "results": {
            "throughput": {"rate": 24000.0, "server_us_per_event": 25.0, "latency": {"n": 0}},
            "latency": lat,
            "baseline_throughput": {"rate": 6000.0, "server_us_per_event": 150.0},
            "baseline_latency": lat,
            "fanout": {"rate": 1_300_000.0, "connections": 200},
            "baseline_fanout": {"rate": 80_000.0},
            "floor": {"rate": 250_000.0},
            "floor_paced": {"rate": 24000.0, "server_us_per_event": 7.0},
            "broker": {"rate": 44_000.0},
            "capacity": {
                "connections": 15000, "rss_before_kib": 64_000, "rss_after_kib": 188_000,
                "kib_per_connection": 8.27, "latency": lat,
            },
        },
    }


class HistogramTests(SynchronousTestCase):
    def test_counts_every_sample(self) -> None:
        """Every sample lands in one bucket; those outside the edges in the first or last."""
        samples = [1, 150_000, 150_001, 2_000_000, 10**12]
        h = histogram(samples)
        self.assertEqual(h["edges_ms"], HISTOGRAM_EDGES_MS)
        self.assertEqual(len(h["counts"]), len(HISTOGRAM_EDGES_MS) - 1)
        self.assertEqual(sum(h["counts"]), len(samples))
        self.assertEqual(h["counts"][0], 1)
        self.assertEqual(h["counts"][-1], 1)


class ChartTests(SynchronousTestCase):
    def setUp(self) -> None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            message = "matplotlib is not installed (the test extras and bench/requirements.txt have it)"
            if os.environ.get("PEATIO_WS_MAKE_TEST") == "1":
                # Under make test a missing dependency fails, never skips.
                self.fail(message)
            raise SkipTest(message) from None
        self.dir = Path(tempfile.mkdtemp(prefix="peatio-ws-charts-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_all_charts(self) -> None:
        """A results file with every scenario gives every chart, as PNG."""
        path = self.dir / "run.json"
        path.write_text(json.dumps(_results()))
        written, missing = charts.render([path], self.dir, prefix="run-")
        self.assertEqual([p.name for p in written], [f"run-{name}.png" for name in charts.CHARTS])
        self.assertEqual(missing, [])
        for p in written:
            self.assertEqual(p.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")

    def test_partial_results(self) -> None:
        """A run of some scenarios only: the charts it has figures for, and the names of the others."""
        data = _results()
        data["results"] = {"fanout": data["results"]["fanout"]}
        path = self.dir / "part.json"
        path.write_text(json.dumps(data))
        self.assertEqual(charts.main([str(path), "--out", str(self.dir)]), 0)
        self.assertEqual(sorted(p.name for p in self.dir.glob("*.png")), ["comparison.png", "fanout.png"])
