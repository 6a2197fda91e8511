"""Tests for the restart-in-place benchmark's own arithmetic (L{bench.inplace}): what it counts, not the daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench.inplace import LogTail, analyse, rows

MS = 1_000_000


class AnalyseTests(SynchronousTestCase):
    def test_classes(self) -> None:
        """
        Event i went to member i % N with seq i // N + 1: before the signal,
        during the restart (until healthy), after; lost, late and latency per class.
        """
        members = 2
        stamps = [0, 10 * MS, 100 * MS, 110 * MS, 3000 * MS, 3010 * MS]
        # (member, seq, ts, received): event 3 (member 1, seq 2) never arrives; event 2 arrives 1.5 s late.
        received = [
            (0, 1, 0, 1 * MS),
            (1, 1, 10 * MS, 12 * MS),
            (0, 2, 100 * MS, 1600 * MS),
            (0, 3, 3000 * MS, 3001 * MS),
            (1, 3, 3010 * MS, 3012 * MS),
            (1, 9, 5, 6),  # not an event published here
            (0, 1, 0, 2 * MS),  # event 0 again
        ]
        out = analyse(members, stamps, received, t_signal=50 * MS, t_healthy=2000 * MS)
        fields = ("published", "delivered", "lost", "late")
        counts = {k: tuple(out[k][f] for f in fields) for k in ("before", "during", "after")}
        self.assertEqual(
            counts,
            {"before": (2, 2, 0, 0), "during": (2, 1, 1, 1), "after": (2, 2, 0, 0)},
        )
        self.assertEqual(out["during"]["latency"]["max"], 1500.0)
        self.assertEqual(out["unknown_frames"], 1)
        self.assertEqual(out["duplicates"], 1)
        self.assertEqual(out["before"]["latency"]["max"], 2.0, "the first copy counts")

    def test_row(self) -> None:
        """The row meets its goal only with no connection closed and no event lost (under 5 s at 15,000)."""
        events: dict[str, Any] = {
            k: {"published": 1, "lost": 0, "latency": {"p99": 10.0}} for k in ("before", "during", "after")
        }
        events["duplicates"] = 0
        r = {
            "n": 15_000,
            "events": events,
            "cpu": {"until_healthy_s": 2.0, "per_connection_us": 133.0},
            "closed": {},
            "healthy_s": 2.2,
            "carried_s": 2.0,
            "reconnect_attempts": 0,
            "load_before": [1.0, 1.0, 1.0],
        }
        self.assertTrue(rows([r])[0][3])
        self.assertFalse(rows([{**r, "closed": {"1001": 1}}])[0][3])
        self.assertFalse(rows([{**r, "healthy_s": 5.5}])[0][3])
        self.assertFalse(rows([{**r, "events": {**events, "duplicates": 1}}])[0][3])


class LogTailTests(SynchronousTestCase):
    def test_only_new_whole_lines(self) -> None:
        path = Path(self.mktemp())
        path.write_text("old line\n")
        tail = LogTail(path)
        with path.open("a") as f:
            f.write("one\ntw")
        self.assertEqual(tail.read(), ["one"])
        with path.open("a") as f:
            f.write("o\n")
        self.assertEqual(tail.read(), ["two"])
        self.assertEqual(tail.find("tw"), "two")
        self.assertIsNone(tail.find("old"))
