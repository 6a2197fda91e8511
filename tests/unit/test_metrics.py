"""L{peatio_ws.metrics.RepeatedHistogram}, against prometheus_client's own Histogram as the oracle."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.metrics import Children, Metrics, RepeatedHistogram

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def exposition(registry: CollectorRegistry) -> list[str]:
    """The text exposition's sample lines, without C{_created} (which only prometheus_client's has)."""
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if not line.startswith("#") and "_created" not in line]


def both() -> tuple[CollectorRegistry, RepeatedHistogram, CollectorRegistry, Histogram]:
    mine, theirs = CollectorRegistry(), CollectorRegistry()
    return (
        mine,
        RepeatedHistogram("x_seconds", "doc", BUCKETS, mine),
        theirs,
        Histogram("x_seconds", "doc", buckets=BUCKETS, registry=theirs),
    )


class RepeatedHistogramTests(SynchronousTestCase):
    def test_empty(self) -> None:
        mine, _, theirs, _ = both()
        self.assertEqual(exposition(mine), exposition(theirs))

    def test_bounds(self) -> None:
        """A value on a bound counts in that bucket (le: less or equal), past the last in +Inf."""
        mine, h, theirs, oracle = both()
        for value in (0.0, 0.0001, 0.00010001, 1.0, 1.5, 1e9):
            h.observe(value)
            oracle.observe(value)
        self.assertEqual(exposition(mine), exposition(theirs))
        self.assertIn('x_seconds_bucket{le="0.0001"} 2.0', exposition(mine))
        self.assertIn('x_seconds_bucket{le="+Inf"} 6.0', exposition(mine))

    @given(st.lists(st.tuples(st.floats(0, 5, allow_nan=False), st.integers(1, 50)), max_size=30))
    def test_same_as_observing_count_times(self, observations: list[tuple[float, int]]) -> None:
        """C{observe(v, n)} is C{n} times C{Histogram.observe(v)} (sums compared to float precision)."""
        mine, h, theirs, oracle = both()
        for value, count in observations:
            h.observe(value, count)
            for _ in range(count):
                oracle.observe(value)
        ours, expected = exposition(mine), exposition(theirs)
        self.assertEqual([x for x in ours if "_sum" not in x], [x for x in expected if "_sum" not in x])
        [our_sum] = [float(x.split()[-1]) for x in ours if "_sum" in x]
        [their_sum] = [float(x.split()[-1]) for x in expected if "_sum" in x]
        self.assertAlmostEqual(our_sum, their_sum, delta=1e-9 * max(1.0, their_sum))

    def test_unsorted_buckets(self) -> None:
        mine = CollectorRegistry()
        h = RepeatedHistogram("y_seconds", "doc", (1.0, 0.1, float("inf")), mine)
        rng = random.Random(1)
        for _ in range(100):
            h.observe(rng.random() * 2)
        lines = exposition(mine)
        self.assertEqual(
            [x.split("}")[0] for x in lines if "_bucket" in x],
            ['y_seconds_bucket{le="0.1"', 'y_seconds_bucket{le="1.0"', 'y_seconds_bucket{le="+Inf"'],
        )
        self.assertIn("y_seconds_count 100.0", lines)

    def test_the_daemons(self) -> None:
        """The daemon's delivery latency is one, with its buckets."""
        metrics = Metrics()
        self.assertIsInstance(metrics.delivery_latency, RepeatedHistogram)
        metrics.delivery_latency.observe(0.003, 7)
        self.assertIn('peatio_ws_delivery_latency_seconds_bucket{le="0.005"} 7.0', exposition(metrics.registry))


class ChildrenTests(SynchronousTestCase):
    """L{Children}: prometheus_client's own child for the same label values, made once."""

    def test_same_child(self) -> None:
        """The child is the one C{labels()} gives, by values in the metric's label order."""
        metrics = Metrics()
        child = metrics.auth_by("failure", "expired")
        self.assertIs(child, metrics.auth.labels(result="failure", reason="expired"))
        self.assertIs(metrics.auth_by("failure", "expired"), child)
        child.inc()
        value = metrics.registry.get_sample_value(
            "peatio_ws_authentications_total", {"result": "failure", "reason": "expired"}
        )
        self.assertEqual(value, 1.0)

    def test_wrong_count(self) -> None:
        """Too few values fail as C{labels()} does, and nothing is kept."""
        metrics = Metrics()
        self.assertRaises(ValueError, metrics.auth_by, "failure")
        self.assertEqual(metrics.auth_by._children, {})

    def test_every_labelled_metric_has_its_children(self) -> None:
        """Each C{*_by} belongs to the metric of its name."""
        metrics = Metrics()
        for name, value in vars(metrics).items():
            if isinstance(value, Children):
                self.assertIs(value._metric, getattr(metrics, name.removesuffix("_by")))
