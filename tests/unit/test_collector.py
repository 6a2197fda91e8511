"""L{peatio_ws.collector}: GC_POLICY."""

from __future__ import annotations

import gc
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from peatio_ws import collector
from peatio_ws.config import KEYS, Settings


class FakeCollector:
    """Records what is asked of the C{gc} module."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def collect(self) -> int:
        self.calls.append(("collect", ()))
        return 0

    def freeze(self) -> None:
        self.calls.append(("freeze", ()))

    def set_threshold(self, *thresholds: int) -> None:
        self.calls.append(("set_threshold", thresholds))

    def get_freeze_count(self) -> int:
        return 68_000


class ApplyTests(SynchronousTestCase):
    def test_tuned(self) -> None:
        """Collect first (so garbage is not frozen), freeze, then the thresholds."""
        fake = FakeCollector()
        self.assertEqual(collector.apply("tuned", fake), 68_000)
        self.assertEqual(fake.calls, [("collect", ()), ("freeze", ()), ("set_threshold", (10_000, 20, 100))])

    def test_python(self) -> None:
        """CPython's default: nothing is touched."""
        fake = FakeCollector()
        self.assertIsNone(collector.apply("python", fake))
        self.assertEqual(fake.calls, [])

    def test_unknown(self) -> None:
        self.assertRaises(ValueError, collector.apply, "off", FakeCollector())

    def test_real_gc(self) -> None:
        """
        The real C{gc} module has what C{tuned} uses, and does what it says
        (restored afterwards: the test process is shared).
        """
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.addCleanup(gc.unfreeze)
        frozen = collector.apply("tuned")
        self.assertIsNotNone(frozen)
        self.assertGreater(frozen or 0, 1000)
        self.assertEqual(gc.get_threshold(), collector.THRESHOLDS)


class SettingTests(SynchronousTestCase):
    def test_default_tuned(self) -> None:
        self.assertEqual(Settings().gc_policy, "tuned")

    def test_values(self) -> None:
        parse = KEYS["GC_POLICY"]
        self.assertEqual([parse(v) for v in ("tuned", "Python")], ["tuned", "python"])
        self.assertRaises(ValueError, parse, "off")
        self.assertEqual(set(collector.POLICIES), {"tuned", "python"})
