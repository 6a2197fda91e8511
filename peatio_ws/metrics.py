# -*- test-case-name: tests.unit.test_http -*-
"""
The daemon's Prometheus metrics.

One L{Metrics} object per daemon, on its own registry (not the global one), so
tests can build as many daemons as they like and read each one's figures.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from math import inf
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["Children", "Metrics", "RepeatedHistogram"]

_Labelled = TypeVar("_Labelled", Counter, Gauge)


class RepeatedHistogram(Collector):
    """
    A Prometheus histogram that takes C{count} observations of one value in
    one call. The delivery latency is the same for every event of one read
    from RabbitMQ (from the read to the writes, which happen once per read),
    so it is observed once per read, not once per event as
    C{prometheus_client.Histogram.observe} would (~1.5 µs an event). The
    same exposition: C{_bucket{le}}, C{_count}, C{_sum}. Reactor thread only.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        bounds = sorted(float(b) for b in buckets)
        self._bounds = (*bounds, inf) if not bounds or bounds[-1] != inf else tuple(bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float, count: int = 1) -> None:
        """C{count} observations of C{value} (seconds)."""
        self._counts[bisect_left(self._bounds, value)] += count
        self._sum += value * count

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=())
        cumulative = 0
        buckets = []
        for bound, count in zip(self._bounds, self._counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        family.add_metric((), buckets, self._sum)
        yield family

    def describe(self) -> Iterable[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=())


class Children(Generic[_Labelled]):
    """
    A labelled metric's children, by label values (in the metric's label
    order), kept once made: C{labels()} checks its arguments and takes a lock
    on every call, several times a connection's life. The values come from
    code (reasons, close codes, dialects), never from clients, so the set
    stays small, as prometheus_client's own does.
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _Labelled) -> None:
        self._metric: _Labelled = metric
        self._children: dict[tuple[str, ...], _Labelled] = {}

    def __call__(self, *values: str) -> _Labelled:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    """Every metric the daemon exports; collaborators update them directly."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.connections = Gauge("peatio_ws_connections", "Open WebSocket connections", registry=r)
        self.connections_total = Counter("peatio_ws_connections_accepted", "WebSocket connections accepted", registry=r)
        self.authenticated_connections = Gauge(
            "peatio_ws_authenticated_connections", "Authenticated WebSocket connections", registry=r
        )
        self.members = Gauge("peatio_ws_members", "Distinct members with an authenticated connection", registry=r)
        self.auth = Counter(
            "peatio_ws_authentications",
            "Authentication attempts by result and reason",
            ["result", "reason"],
            registry=r,
        )
        self.closes = Counter("peatio_ws_closes", "Connections closed by the server, by reason", ["reason"], registry=r)
        self.rejected = Counter(
            "peatio_ws_connections_rejected", "Connections refused at the handshake, by reason", ["reason"], registry=r
        )
        self.events_received = Counter(
            "peatio_ws_events_received", "Events received from RabbitMQ, by event type", ["event"], registry=r
        )
        self.events_delivered = Counter(
            "peatio_ws_events_delivered", "Event copies written to WebSocket connections, by event type", ["event"],
            registry=r,
        )
        self.events_dropped = Counter(
            "peatio_ws_events_dropped", "Events dropped, by reason (malformed, bad_routing_key, no_connection, ...)",
            ["reason"], registry=r,
        )
        self.delivery_latency = RepeatedHistogram(
            "peatio_ws_delivery_latency_seconds",
            "Time from receiving an event from the broker to writing it to the connections",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.inbound_limited = Counter(
            "peatio_ws_inbound_limited",
            "Connections closed for what they sent: over the frame or byte rate (1008), too many frames "
            "in one message (1008), a request head too large (431), a handshake not finished in time",
            ["limit"],
            registry=r,
        )
        self.handshakes = Gauge(
            "peatio_ws_handshakes", "Sockets accepted whose WebSocket upgrade request is not complete yet", registry=r
        )
        self.slow_consumer_closes = Counter(
            "peatio_ws_slow_consumer_closes", "Connections closed (4008) for not keeping up", registry=r
        )
        self.broker_up = Gauge(
            "peatio_ws_rabbitmq_up",
            "1 when connected to RabbitMQ, consuming, and answering (a probe unanswered for HEALTH_PROBE_TIMEOUT "
            "drops the connection)",
            registry=r,
        )
        self.broker_reconnects = Counter(
            "peatio_ws_rabbitmq_connects", "Successful RabbitMQ (re)connections", registry=r
        )
        self.queue_lost = Counter(
            "peatio_ws_rabbitmq_queue_lost",
            "Times this process's queue was found gone (deleted, expired, or lost by the broker): every "
            "authenticated connection was closed with 1012",
            registry=r,
        )
        self.broker_cancels = Counter(
            "peatio_ws_rabbitmq_consumer_cancelled",
            "Times RabbitMQ cancelled our consumer (consumer_cancel_notify: the queue was deleted)",
            registry=r,
        )
        self.bindings = Gauge("peatio_ws_rabbitmq_bindings", "Member bindings on this process's queue", registry=r)
        self.redis_up = Gauge(
            "peatio_ws_redis_up",
            "1 when connected to Redis and answering (0 once a PING is unanswered for HEALTH_PROBE_TIMEOUT)",
            registry=r,
        )
        self.revocations = Counter(
            "peatio_ws_revocations", "Live sessions ended by revocation, by what named them", ["by"], registry=r
        )
        self.dialect_connections = Gauge(
            "peatio_ws_dialect_connections", "Open WebSocket connections by dialect (legacy, ranger)", ["dialect"],
            registry=r,
        )
        # ranger's own names (peatio-core's ranger exports these), so its dashboards keep working.
        self.ranger_connections = Gauge(
            "ranger_connections_current",
            "Open ranger-dialect connections, by auth (private: a member's, public: anonymous; ranger's values)",
            ["auth"],
            registry=r,
        )
        self.ranger_connections_total = Counter(
            "ranger_connections",
            "Ranger-dialect connections opened, by auth (private: a member's, public: anonymous; ranger's values)",
            ["auth"],
            registry=r,
        )
        self.public_events_received = Counter(
            "peatio_ws_public_events_received", "Public events received from RabbitMQ, by stream family", ["event"],
            registry=r,
        )
        self.public_copies = Counter(
            "peatio_ws_public_copies", "Public event copies written to WebSocket connections, by stream family",
            ["event"], registry=r,
        )
        self.listener_up = Gauge("peatio_ws_listener_up", "1 while the WebSocket port is listening", registry=r)
        # The children a connection's life touches, by label values in each metric's label order.
        self.auth_by = Children(self.auth)
        self.closes_by = Children(self.closes)
        self.rejected_by = Children(self.rejected)
        self.inbound_limited_by = Children(self.inbound_limited)
        self.dialect_connections_by = Children(self.dialect_connections)
        self.ranger_connections_by = Children(self.ranger_connections)
        self.ranger_connections_total_by = Children(self.ranger_connections_total)
        # Memory, CPU and open files against LimitNOFILE: what an operator
        # sizing a host for tens of thousands of sockets watches.
        ProcessCollector(registry=r)
