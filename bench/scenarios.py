"""
The benchmark scenarios. Each starts what it needs (the real daemon with
C{twistd -n peatio-ws}, the baseline bridge, or the floor), drives it from
separate load processes, checks that every event arrived in order, records
its figures in L{Bench.results}, and stops everything it started. Every
wait is bounded.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import re
import time
import uuid
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import baseline, events
from bench.profile import Profiler, format_summary, summarize
from bench.sysinfo import CpuMeter, busy_now, rabbitmq_pids
from bench.workers import Worker, call_all, client_main, floor_main, hotpath_main, publisher_main, sink_main
from peatio_ws.testing import generate_rsa_key, private_key_pem, public_key_b64
from tests.support.daemon import DaemonProcess, free_port
from tests.support.paths import REPO
from tests.support.probes import metric, rss_kib
from tests.support.waiting import until_blocking

RESULTS = REPO / "bench" / "results"


def bound_gauge(daemon_env: dict[str, str]) -> str:
    """The gauge counting members whose events reach the daemon: its bindings, or (one binding for all) its members."""
    if daemon_env.get("RABBITMQ_PRIVATE_BINDING", "").strip().lower() == "all":
        return "peatio_ws_members"
    return "peatio_ws_rabbitmq_bindings"


@dataclass
class Options:
    """Sizes of every scenario (C{--quick} scales them down)."""

    members: int = 1000
    events: int = 240_000
    latency_rate: float = 2000.0
    latency_seconds: float = 8.0
    fanout_connections: int = 200
    fanout_events: int = 10_000
    capacity: int = 15_000
    auth_connections: int = 4000
    baseline_events: int = 60_000
    baseline_fanout_events: int = 1000
    floor_events: int = 240_000
    #: Load-client processes (why two: docs/benchmarks.md, "What limits delivery throughput").
    client_procs: int = 2
    #: For the capacity scenario: 15,000 connections within 20,000 files per process.
    capacity_procs: int = 4
    concurrency: int = 100
    #: Public fan-out (bench.public): subscribers of one market's ob-inc, added size after size.
    public_sizes: tuple[int, ...] = (1, 100, 1000, 10_000)
    #: A burst is this many copies (events x subscribers), within these many events.
    public_copies: int = 3_000_000
    public_min_events: int = 300
    public_max_events: int = 30_000
    #: The steady run offers this many copies/s (the issue's goal), within this many events/s.
    public_offered: float = 1_000_000.0
    public_max_rate: float = 2000.0
    tickers_connections: int = 15_000
    tickers_events: int = 100
    tickers_rate: float = 10.0
    replay_probes: int = 200
    replay_increments: int = 1000
    profile: bool = False
    verbose: bool = False
    daemon_env: dict[str, str] = field(default_factory=dict)

    def quick(self) -> Options:
        return Options(
            members=200,
            events=40_000,
            latency_rate=2000.0,
            latency_seconds=3.0,
            fanout_connections=100,
            fanout_events=1000,
            capacity=2000,
            auth_connections=1000,
            baseline_events=10_000,
            baseline_fanout_events=300,
            floor_events=40_000,
            client_procs=2,
            capacity_procs=2,
            concurrency=50,
            public_sizes=(1, 100, 1000),
            public_copies=1_000_000,
            public_min_events=100,
            public_max_events=10_000,
            tickers_connections=2000,
            tickers_events=100,
            replay_probes=50,
            profile=self.profile,
            verbose=self.verbose,
            daemon_env=self.daemon_env,
        )


def percentiles(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max in milliseconds."""
    if not samples_ns:
        return {"n": 0}
    v = sorted(samples_ns)
    n = len(v)

    def at(q: float) -> float:
        return v[min(n - 1, int(q * (n - 1) + 0.5))] / 1e6

    return {"n": n, "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "p999": at(0.999), "max": v[-1] / 1e6}


#: Bucket edges of the latency distribution kept with each run (bench.charts draws it):
#: ten a decade, 0.01 ms to 1 s.
HISTOGRAM_EDGES_MS = [10 ** (k / 10) for k in range(-20, 31)]


def histogram(samples_ns: Sequence[int]) -> dict[str, Any]:
    """Counts of C{samples_ns} (nanoseconds) between L{HISTOGRAM_EDGES_MS} (the edges clamp what is outside)."""
    edges = HISTOGRAM_EDGES_MS
    counts = [0] * (len(edges) - 1)
    last = len(counts) - 1
    for ns in samples_ns:
        ms = ns / 1e6
        i = bisect.bisect_right(edges, ms) - 1
        counts[min(max(i, 0), last)] += 1
    return {"edges_ms": edges, "counts": counts}


def _aggregate(reports: list[dict[str, Any]]) -> dict[str, Any]:
    keys = (
        "connections",
        "open",
        "received",
        "reads",
        "expected",
        "missing",
        "extra",
        "complete",
        "order_errors",
        "other",
    )
    out: dict[str, Any] = {k: sum(r[k] for r in reports) for k in keys}
    firsts = [r["first"] for r in reports if r["first"]]
    lasts = [r["last"] for r in reports if r["last"]]
    out["first"] = min(firsts) if firsts else 0
    out["last"] = max(lasts) if lasts else 0
    out["close_codes"] = sorted({c for r in reports for c in r["close_codes"]})
    lat = array("q")
    for r in reports:
        if r.get("latencies"):
            lat.frombytes(r["latencies"])
    out["latency"] = percentiles(lat)
    if lat:
        out["latency_histogram"] = histogram(lat)
    out["slow"] = sorted(x for r in reports for x in r.get("slow", []))
    window = (out["last"] - out["first"]) / 1e9
    out["window_s"] = window
    out["rate"] = out["received"] / window if window > 0 else 0.0
    out["events_per_read"] = out["received"] / out["reads"] if out["reads"] else 0.0
    return out


def _metric(daemon: DaemonProcess, name: str) -> float:
    """One unlabelled metric from the daemon's /metrics."""
    return metric(daemon.metrics(), name)


class Bench:
    """Shared state of one run: the signing key, the figures, the output."""

    def __init__(self, options: Options) -> None:
        self.o = options
        key = generate_rsa_key()
        self.key_pem = private_key_pem(key).encode()
        self.public_key = public_key_b64(key)
        self.results: dict[str, Any] = {}
        self.notes: list[str] = []
        self.profiles: dict[str, str] = {}
        self.rabbitmq = rabbitmq_pids()
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.stamp = time.strftime("%Y%m%d-%H%M%S")

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    # -- what scenarios start -------------------------------------------------------

    @contextlib.contextmanager
    def daemon(self, env: dict[str, str] | None = None) -> Iterator[DaemonProcess]:
        d = DaemonProcess(env={"JWT_PUBLIC_KEY": self.public_key, **self.o.daemon_env, **(env or {})})
        try:
            d.start(timeout=60)
            if self.o.verbose:
                self.log(f"daemon pid {d.pid} on port {d.port}")
            yield d
        finally:
            d.cleanup()

    @contextlib.contextmanager
    def clients(self, n: int | None = None) -> Iterator[list[Worker]]:
        workers = [Worker(f"clients-{i}", client_main) for i in range(n or self.o.client_procs)]
        try:
            yield workers
        finally:
            for w in workers:
                with contextlib.suppress(Exception):
                    w.call("close", wait=30)
                w.stop()

    @contextlib.contextmanager
    def publisher(self, exchange: str) -> Iterator[Worker]:
        w = Worker("publisher", publisher_main)
        try:
            w.call("connect", wait=30)
            yield w
        finally:
            with contextlib.suppress(Exception):
                w.call("delete_exchange", wait=10, exchange=exchange)
            with contextlib.suppress(Exception):
                w.call("close", wait=10)
            w.stop()

    @contextlib.contextmanager
    def baseline_bridge(self, exchange: str) -> Iterator[int]:
        with baseline.running(exchange, self.public_key) as bridge:
            self.baseline_pid = bridge.pid
            yield bridge.port

    # -- steps -----------------------------------------------------------------------

    def connect(
        self,
        workers: list[Worker],
        port: int,
        conn_uids: Sequence[str],
        raw: bool = False,
        concurrency: int | None = None,
        time_limit: float = 180.0,
    ) -> tuple[dict[str, Any], list[list[str]]]:
        """
        Open one connection per entry of C{conn_uids} (connection i in worker
        i % W) and authenticate it; returns the connect figures and each
        worker's uids.
        """
        w = len(workers)
        per = [list(conn_uids[i::w]) for i in range(w)]
        if not raw:
            call_all(
                workers,
                "prepare",
                300,
                [{"uids": sorted(set(p))} for p in per],
                key_pem=self.key_pem,
                lifetime=3 * 3600,
            )
        replies = call_all(
            workers,
            "open",
            time_limit + 30,
            [{"uids": p} for p in per],
            host="127.0.0.1",
            port=port,
            concurrency=concurrency or self.o.concurrency,
            timeout=30.0,
            raw=raw,
            time_limit=time_limit,
        )
        opened = sum(r["opened"] for r in replies)
        errors: dict[str, int] = {}
        for r in replies:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        t0 = min(r["t0"] for r in replies)
        t1 = max(r["t1"] for r in replies)
        times = sorted(t for r in replies for t in r["times"])
        result = {
            "requested": len(conn_uids),
            "opened": opened,
            "errors": errors,
            "seconds": t1 - t0,
            "rate": opened / (t1 - t0) if t1 > t0 else 0.0,
            "p50_ms": 1000 * times[len(times) // 2] if times else 0.0,
            "p99_ms": 1000 * times[int(0.99 * (len(times) - 1))] if times else 0.0,
        }
        if errors:
            self.log(f"connect errors: {errors}")
        if opened < len(conn_uids) * 0.99:
            raise RuntimeError(f"only {opened} of {len(conn_uids)} connections opened: {errors}")
        return result, per

    def wait_bindings(self, daemons: Sequence[DaemonProcess], n: int, timeout: float = 120.0) -> float:
        """
        Until the daemons' queues carry C{n} member bindings (events published
        before are lost); with RABBITMQ_PRIVATE_BINDING=all, until C{n} members
        are in (one binding covers them all once the daemon consumes).
        """
        t = time.monotonic()
        bound = [0.0]
        gauge = bound_gauge(self.o.daemon_env)

        def settled() -> bool:
            bound[0] = sum(_metric(d, gauge) for d in daemons)
            return bound[0] >= n

        try:
            until_blocking(settled, timeout, f"{n} bindings")
        except AssertionError:
            raise RuntimeError(f"only {bound[0]:.0f} of {n} bindings after {timeout:.0f} s") from None
        return time.monotonic() - t

    def quiet(self, name: str) -> None:
        """Note it when something else keeps the machine busy before a scenario (it skews the figures)."""
        busy, top = busy_now(1.0)
        if busy > 15:
            text = f"{name}: before it, other processes kept {busy:.0f}% of a core busy ({', '.join(top)})"
            self.notes.append(text)
            self.log(text)

    def groups(
        self, servers: Sequence[int], workers: Sequence[Worker], publisher: Worker | None, server_name: str = "daemon"
    ) -> dict[str, list[int]]:
        self.rabbitmq = rabbitmq_pids() or self.rabbitmq
        g: dict[str, list[int]] = {
            server_name: list(servers),
            "rabbitmq": self.rabbitmq,
            "clients": [w.pid for w in workers],
        }
        if publisher is not None:
            g["publisher"] = [publisher.pid]
        return g

    def burst(
        self,
        name: str,
        workers: list[Worker],
        per: list[list[str]],
        publisher: Worker,
        exchange: str,
        members: Sequence[str],
        n: int,
        groups: dict[str, list[int]],
        profile_pid: int | None = None,
        expected_rate: float = 5000.0,
    ) -> dict[str, Any]:
        """
        Publish C{n} events round-robin over C{members} as fast as the broker
        takes them; every connection of member i expects its share, in order.
        """
        counts = dict(zip(members, events.expected_counts(n, len(members)), strict=True))
        call_all(workers, "expect", 30, [{"counts": {u: counts.get(u, 0) for u in set(p)}} for p in per])
        meter = CpuMeter(groups).start()
        profiler = None
        if profile_pid is not None and self.o.profile:
            path = RESULTS / f"{self.stamp}-{name}.txt"
            profiler = Profiler(profile_pid, min(20.0, max(2.0, n / expected_rate)), path)
        timeout = n / 1000.0 + 60
        pub = publisher.call("burst", wait=timeout, exchange=exchange, uids=list(members), n=n)
        reports = call_all(workers, "wait", timeout + 30, timeout=timeout, idle=5.0)
        cpu = meter.stop()
        result = _aggregate(reports)
        result["published"] = pub["sent"]
        result["publish_rate"] = pub["sent"] / max(1e-9, pub["t1"] - pub["t0"])
        result["cpu"] = cpu
        result["cpu_others"] = meter.top_others
        server = next(iter(groups))
        result["server_us_per_event"] = 1e6 * meter.seconds[server] / max(1, result["received"])
        if profiler is not None:
            self._profile_done(name, profiler)
        return result

    def steady(
        self,
        name: str,
        workers: list[Worker],
        per: list[list[str]],
        publisher: Worker,
        exchange: str,
        members: Sequence[str],
        groups: dict[str, list[int]],
        profile_pid: int | None = None,
    ) -> dict[str, Any]:
        """Publish at a steady rate (each event stamped); every receipt's latency is recorded."""
        rate, seconds = self.o.latency_rate, self.o.latency_seconds
        n = int(rate * seconds)
        counts = dict(zip(members, events.expected_counts(n, len(members)), strict=True))
        call_all(
            workers, "expect", 30, [{"counts": {u: counts.get(u, 0) for u in set(p)}, "latency": True} for p in per]
        )
        meter = CpuMeter(groups).start()
        profiler = None
        if profile_pid is not None and self.o.profile:
            profiler = Profiler(profile_pid, seconds, RESULTS / f"{self.stamp}-{name}.txt")
        pub = publisher.call(
            "rate", wait=seconds + 30, exchange=exchange, uids=list(members), rate=rate, duration=seconds
        )
        reports = call_all(workers, "wait", 60, timeout=30, idle=3.0, latencies=True)
        cpu = meter.stop()
        result = _aggregate(reports)
        result["published"] = pub["sent"]
        result["publish_rate"] = pub["sent"] / max(1e-9, pub["t1"] - pub["t0"])
        result["publisher_max_late_ms"] = 1000 * pub["max_late"]
        result["offered_rate"] = rate
        result["cpu"] = cpu
        result["cpu_others"] = meter.top_others
        server = next(iter(groups))
        result["server_us_per_event"] = 1e6 * meter.seconds[server] / max(1, result["received"])
        if profiler is not None:
            self._profile_done(name, profiler)
        return result

    def _profile_done(self, name: str, profiler: Profiler) -> None:
        path = profiler.finish()
        if path is None:
            self.notes.append(f"{name}: no profile (py-spy missing or failed)")
            return
        text = format_summary(name, summarize(path))
        self.profiles[name] = text
        if self.o.verbose:
            print(text, flush=True)

    def check(self, name: str, r: dict[str, Any]) -> None:
        lost = r["missing"]
        if lost or r["order_errors"] or r["extra"]:
            self.notes.append(
                f"{name}: {lost} events missing, {r['extra']} extra, {r['order_errors']} out of order "
                f"(close codes {r['close_codes']})"
            )
        self.log(
            f"{name}: {r['received']:,}/{r['expected']:,} received in {r['window_s']:.2f} s = {r['rate']:,.0f}/s; "
            f"missing {lost}, out of order {r['order_errors']}; publish {r.get('publish_rate', 0):,.0f}/s; "
            + (f"server {r['server_us_per_event']:.1f} µs CPU per copy; " if "server_us_per_event" in r else "")
            + f"{r['events_per_read']:.2f} events per client read; "
            + ("latency " + _lat(r["latency"]) + "; " if r["latency"].get("n") else "")
            + "cpu "
            + _cpu(r["cpu"])
            + (f" (other: {', '.join(r['cpu_others'])})" if r.get("cpu_others") else "")
        )

    # -- scenarios ---------------------------------------------------------------------

    def members(self, prefix: str, n: int) -> list[str]:
        return [f"{prefix}{i:05d}" for i in range(n)]

    def delivery(self, throughput: bool = True, latency: bool = True) -> None:
        """1,000 members x 1 connection: throughput (burst) and latency (steady 2,000/s)."""
        o = self.o
        members = self.members("BM", o.members)
        self.quiet("delivery")
        self.log(f"delivery: {o.members} members x 1 connection")
        with self.daemon() as d, self.clients() as workers:
            connected, per = self.connect(workers, d.port, members)
            self.results["connect_1000"] = connected
            self.wait_bindings([d], len(members))
            self.log(f"connected {connected['opened']} in {connected['seconds']:.2f} s ({connected['rate']:,.0f}/s)")
            self._reactor_check(d)
            with self.publisher(d.exchange) as pub:
                groups = self.groups([d.pid], workers, pub)
                pid = d.pid
                if throughput:
                    # A short warm-up (connections, code paths, broker queue).
                    self.burst("warmup", workers, per, pub, d.exchange, members, min(o.events, 20_000), groups)
                    r = self.burst(
                        "throughput", workers, per, pub, d.exchange, members, o.events, groups, pid, expected_rate=20000
                    )
                    self.results["throughput"] = r
                    self.check("throughput", r)
                if latency:
                    r = self.steady("latency", workers, per, pub, d.exchange, members, groups, pid)
                    self.results["latency"] = r
                    self.check("latency", r)

    def clients_sensitivity(self) -> None:
        """Delivery throughput with the same 1,000 connections spread over 1, 2 and 4 client processes."""
        o = self.o
        members = self.members("BK", o.members)
        n = max(o.members, o.events // 2)
        self.quiet("clients")
        out = {}
        for procs in (1, 2, 4):
            self.log(f"clients: {o.members} members x 1 connection in {procs} client process(es)")
            with self.daemon() as d, self.clients(procs) as workers:
                _, per = self.connect(workers, d.port, members)
                self.wait_bindings([d], len(members))
                with self.publisher(d.exchange) as pub:
                    groups = self.groups([d.pid], workers, pub)
                    self.burst("clients-warmup", workers, per, pub, d.exchange, members, min(n, 20_000), groups)
                    r = self.burst(f"clients-{procs}", workers, per, pub, d.exchange, members, n, groups)
                    self.check(f"throughput, clients in {procs} process(es)", r)
                    out[str(procs)] = r
        self.results["clients"] = out

    def fanout(self) -> None:
        """One member with 200 connections: event copies per second."""
        o = self.o
        uid = "BFAN00000"
        self.quiet("fan-out")
        self.log(f"fan-out: 1 member x {o.fanout_connections} connections")
        with self.daemon() as d, self.clients() as workers:
            _, per = self.connect(workers, d.port, [uid] * o.fanout_connections)
            self.wait_bindings([d], 1)
            with self.publisher(d.exchange) as pub:
                groups = self.groups([d.pid], workers, pub)
                self.burst("fanout-warmup", workers, per, pub, d.exchange, [uid], min(200, o.fanout_events), groups)
                r = self.burst(
                    "fanout",
                    workers,
                    per,
                    pub,
                    d.exchange,
                    [uid],
                    o.fanout_events,
                    groups,
                    d.pid,
                    expected_rate=1000,
                )
                r["connections"] = o.fanout_connections
                r["events_per_s"] = r["rate"] / o.fanout_connections
                self.results["fanout"] = r
                self.check("fanout (copies)", r)

    def capacity(self) -> None:
        """15,000 authenticated idle connections: memory per connection, then latency with them connected."""
        o = self.o
        members = self.members("BC", o.capacity)
        self.quiet("capacity")
        self.log(f"capacity: {o.capacity} connections ({len(members)} members)")
        with self.daemon() as d, self.clients(self.o.capacity_procs) as workers:
            pid = d.pid
            # Warm up (first-connection imports and caches), then the "before" figure.
            _warm, _ = self.connect(workers, d.port, self.members("BW", 50))
            call_all(workers, "close", 30)
            time.sleep(2.0)
            before = rss_kib(pid)
            meter = CpuMeter(self.groups([pid], workers, None)).start()
            profiler = Profiler(pid, 8, RESULTS / f"{self.stamp}-connect.txt") if o.profile else None
            connected, per = self.connect(workers, d.port, members)
            cpu = meter.stop()
            if profiler is not None:
                self._profile_done("connect", profiler)
            bind_wait = self.wait_bindings([d], len(members), timeout=180)
            time.sleep(2.0)
            after = rss_kib(pid)
            n = connected["opened"]
            r: dict[str, Any] = {
                "connections": n,
                "rss_before_kib": before,
                "rss_after_kib": after,
                "kib_per_connection": (after - before) / n if n else 0.0,
                "connect": connected,
                "connect_cpu": cpu,
                "bindings_settled_s": bind_wait,
                "daemon_connections": _metric(d, "peatio_ws_authenticated_connections"),
            }
            self.log(
                f"capacity: {n} connected at {connected['rate']:,.0f}/s; RSS {before / 1024:.1f} -> "
                f"{after / 1024:.1f} MiB = {r['kib_per_connection']:.2f} KiB per connection; cpu {_cpu(cpu)}"
            )
            with self.publisher(d.exchange) as pub:
                groups = self.groups([pid], workers, pub)
                lat = self.steady("capacity-latency", workers, per, pub, d.exchange, members, groups, pid)
            r["latency"] = lat
            self.check("latency with all connected", lat)
            self.results["capacity"] = r

    def auth(self) -> None:
        """Handshake + RS256 authentication per second: new members (each a bind), then known members."""
        o = self.o
        members = self.members("BA", o.auth_connections)
        self.quiet("auth")
        self.log(f"auth: {o.auth_connections} connections of new members, then as many of the same members")
        with self.daemon() as d, self.clients() as workers:
            pid = d.pid
            self.connect(workers, d.port, self.members("BW", 50))  # warm-up
            call_all(
                workers,
                "prepare",
                300,
                [{"uids": members[i :: len(workers)]} for i in range(len(workers))],
                key_pem=self.key_pem,
                lifetime=3 * 3600,
            )
            out: dict[str, Any] = {}
            for label in ("new", "repeat"):
                meter = CpuMeter(self.groups([pid], workers, None)).start()
                profiler = Profiler(pid, 3, RESULTS / f"{self.stamp}-auth-{label}.txt") if o.profile else None
                r, _ = self.connect(workers, d.port, members)
                r["cpu"] = meter.stop()
                if profiler is not None:
                    self._profile_done(f"auth-{label}", profiler)
                out[label] = r
                self.log(
                    f"auth ({label} members): {r['opened']}/{r['requested']} in {r['seconds']:.2f} s = "
                    f"{r['rate']:,.0f}/s (p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms); cpu {_cpu(r['cpu'])}"
                )
                if label == "new":
                    self.wait_bindings([d], len(members) + 50, timeout=120)
            self.results["auth"] = out

    def scale(self) -> None:
        """Delivery with 2 daemon processes sharing the port (SO_REUSEPORT)."""
        o = self.o
        members = self.members("BS", o.members)
        exchange = f"peatio-ws-bench.{uuid.uuid4().hex[:12]}"
        port = free_port()
        env = {"WEBSOCKET_PORT": str(port), "WEBSOCKET_REUSE_PORT": "true", "RABBITMQ_EVENTS_EXCHANGE": exchange}
        self.quiet("scale")
        self.log("scale: 2 daemons on one port (WEBSOCKET_REUSE_PORT=true)")
        mode = "reuse_port"
        with contextlib.ExitStack() as stack:
            try:
                daemons = [stack.enter_context(self.daemon(env)) for _ in range(2)]
                ports = [port, port]
            except RuntimeError as e:
                self.notes.append(f"scale: SO_REUSEPORT daemons failed ({str(e).splitlines()[0]}); two ports instead")
                mode = "two_ports"
                stack.close()
                env2 = {"RABBITMQ_EVENTS_EXCHANGE": exchange}
                daemons = [stack.enter_context(self.daemon(env2)) for _ in range(2)]
                ports = [daemons[0].port, daemons[1].port]
            workers = stack.enter_context(self.clients())
            if ports[0] == ports[1]:
                _, per = self.connect(workers, port, members)
            else:
                half = len(workers) // 2
                _, per_a = self.connect(workers[:half], ports[0], members[::2])
                _, per_b = self.connect(workers[half:], ports[1], members[1::2])
                per = per_a + per_b
            self.wait_bindings(daemons, len(members))
            split = [_metric(d, "peatio_ws_authenticated_connections") for d in daemons]
            pids = [d.pid for d in daemons]
            pub = stack.enter_context(self.publisher(exchange))
            groups = self.groups(pids, workers, pub, "daemons")
            self.burst("scale-warmup", workers, per, pub, exchange, members, min(o.events, 20_000), groups)
            r = self.burst("scale", workers, per, pub, exchange, members, o.events, groups)
            r["mode"] = mode
            r["split"] = split
            self.results["scale"] = r
            self.check(f"2 daemons ({mode}, connections {split})", r)

    def baseline(self) -> None:
        """The websockets + aio-pika bridge doing the same jobs."""
        o = self.o
        members = self.members("BB", o.members)
        exchange = f"peatio-ws-bench.{uuid.uuid4().hex[:12]}"
        self.quiet("baseline")
        self.log("baseline: websockets + aio-pika bridge")
        with self.publisher(exchange) as pub, self.baseline_bridge(exchange) as port, self.clients() as workers:
            connected, per = self.connect(workers, port, members)
            self.results["baseline_connect_1000"] = connected
            self.log(f"baseline connected {connected['opened']} at {connected['rate']:,.0f}/s")
            groups = self.groups([self.baseline_pid], workers, pub, "baseline")
            self.burst("baseline-warmup", workers, per, pub, exchange, members, min(o.baseline_events, 5000), groups)
            r = self.burst(
                "baseline-throughput",
                workers,
                per,
                pub,
                exchange,
                members,
                o.baseline_events,
                groups,
                expected_rate=3000,
            )
            self.results["baseline_throughput"] = r
            self.check("baseline throughput", r)
            r = self.steady("baseline-latency", workers, per, pub, exchange, members, groups)
            self.results["baseline_latency"] = r
            self.check("baseline latency", r)
        with self.publisher(exchange) as pub, self.baseline_bridge(exchange) as port, self.clients() as workers:
            uid = "BBFAN0000"
            _, per = self.connect(workers, port, [uid] * o.fanout_connections)
            groups = self.groups([self.baseline_pid], workers, pub, "baseline")
            r = self.burst(
                "baseline-fanout",
                workers,
                per,
                pub,
                exchange,
                [uid],
                o.baseline_fanout_events,
                groups,
                expected_rate=200,
            )
            r["events_per_s"] = r["rate"] / o.fanout_connections
            self.results["baseline_fanout"] = r
            self.check("baseline fan-out (copies)", r)

    def hotpath(self) -> None:
        """The daemon's Python CPU per event and per connection, in-process (see L{bench.hotpath})."""
        self.log("hot paths, in-process")
        w = Worker("hotpath", hotpath_main)
        try:
            r = w.call("run", wait=300)
        finally:
            w.stop()
        self.results["hotpath"] = r
        self.log(
            f"hot paths: delivery {r['delivery']['us_per_event']:.1f} µs per event; public fan-out to 10,000 "
            f"{r['public']['us_per_copy']:.3f} µs per copy; connect + auth "
            f"{r['connect']['us_per_connection']:.0f} µs, {r['connect']['kib_per_connection']:.2f} KiB per connection"
        )

    def broker(self) -> None:
        """RabbitMQ alone: the same publisher, a consumer that does nothing (the broker's share of the work)."""
        o = self.o
        self.quiet("broker")
        members = self.members("BR", o.members)
        exchange = f"peatio-ws-bench.{uuid.uuid4().hex[:12]}"
        self.log(f"broker floor: {o.events:,} events to a do-nothing consumer ({o.members} bindings)")
        sink = Worker("sink", sink_main)
        try:
            sink.call("connect", wait=30)
            sink.call("setup", wait=60, exchange=exchange, uids=members)
            with self.publisher(exchange) as pub:
                groups = {"rabbitmq": rabbitmq_pids() or self.rabbitmq, "publisher": [pub.pid], "consumer": [sink.pid]}
                meter = CpuMeter(groups).start()
                sink.send("drain", n=o.events)
                sent = pub.call("burst", wait=o.events / 1000 + 60, exchange=exchange, uids=members, n=o.events)
                got = sink.recv(o.events / 1000 + 90)
                cpu = meter.stop()
            window = got["last"] - got["first"]
            r = {
                "received": got["received"],
                "expected": o.events,
                "rate": got["received"] / window if window > 0 else 0.0,
                "publish_rate": sent["sent"] / max(1e-9, sent["t1"] - sent["t0"]),
                "cpu": cpu,
                "cpu_others": meter.top_others,
                "rabbitmq_us_per_event": 1e6 * meter.seconds["rabbitmq"] / max(1, got["received"]),
            }
            self.results["broker"] = r
            self.log(
                f"broker floor: {r['received']:,}/{o.events:,} in {window:.2f} s = {r['rate']:,.0f}/s; RabbitMQ "
                f"{r['rabbitmq_us_per_event']:.1f} µs CPU per event; cpu {_cpu(cpu)}"
            )
        finally:
            with contextlib.suppress(Exception):
                sink.call("close", wait=10)
            sink.stop()

    def floor(self) -> None:
        """The same frames written to plain TCP sockets by one Python process: the cost floor."""
        o = self.o
        self.quiet("floor")
        self.log(f"floor: {o.members} plain TCP connections, one send per event")
        w = Worker("floor", floor_main)
        try:
            port = w.call("listen")["port"]
            members = self.members("BF", o.members)
            with self.clients() as workers:
                for i, worker in enumerate(workers):
                    worker.send(
                        "open",
                        uids=members[i :: len(workers)],
                        host="127.0.0.1",
                        port=port,
                        concurrency=o.concurrency,
                        timeout=30.0,
                        raw=True,
                        time_limit=60.0,
                    )
                accepted = w.call("accept", wait=70, n=len(members), wait_s=60.0)
                for worker in workers:
                    worker.recv(90)
                per = [members[i :: len(workers)] for i in range(len(workers))]
                # The floor does not know which accepted socket is which member: every
                # connection gets the same number of events, in order, seq 1, 2, ...
                groups = {"floor": [w.pid], "clients": [x.pid for x in workers]}
                # Flat out, then at the pace peatio-ws delivered in its burst (or of its
                # steady-rate run, or 20,000/s): on loopback a send costs the sender more
                # when it wakes an idle client.
                tp = (
                    self.results.get("throughput", {}).get("rate")
                    or self.results.get("latency", {}).get("offered_rate")
                    or 20000.0
                )
                for label, rate in (("floor", 0.0), ("floor_paced", float(int(tp)))):
                    n = o.floor_events if not rate else int(min(o.floor_events, rate * 8))
                    counts = events.expected_counts(n, len(members))
                    call_all(workers, "expect", 30, [{"counts": {u: counts[0] for u in p}} for p in per])
                    meter = CpuMeter(groups).start()
                    sent = w.call("burst", wait=300, n=counts[0] * len(members), members=len(members), rate=rate)
                    reports = call_all(workers, "wait", 120, timeout=60, idle=5.0)
                    r = _aggregate(reports)
                    r["cpu"] = meter.stop()
                    r["paced"] = rate
                    r["publish_rate"] = sent["sent"] / max(1e-9, sent["t1"] - sent["t0"])
                    r["server_us_per_event"] = 1e6 * meter.seconds["floor"] / max(1, r["received"])
                    r["accepted"] = accepted["accepted"]
                    self.results[label] = r
                    self.check(label if not rate else f"floor at {rate:,.0f}/s", r)
        finally:
            with contextlib.suppress(Exception):
                w.call("close", wait=10)
            w.stop()

    def _reactor_check(self, d: DaemonProcess) -> None:
        m = re.search(r"reactor class: ([\w.]*\w)", d.log_text())
        self.results["reactor"] = m.group(1) if m else "?"

    def save(self, machine: dict[str, str]) -> Path:
        path = RESULTS / f"{self.stamp}.json"
        data = {
            "machine": machine,
            "options": self.o.__dict__,
            "results": self.results,
            "notes": self.notes,
            "profiles": self.profiles,
        }
        path.write_text(json.dumps(data, indent=2, default=str))
        return path


def _lat(p: dict[str, float]) -> str:
    if not p.get("n"):
        return "-"
    return f"p50 {p['p50']:.2f} / p99 {p['p99']:.2f} / max {p['max']:.1f} ms (n={p['n']:,})"


def _cpu(c: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}%" for k, v in c.items())
