"""
The public fan-out scenarios (the ranger dialect, SPEC §7): one event framed
once and written to many anonymous subscribers of a public stream.

 - C{obinc}: one market's C{ob-inc} to 1, 100, 1,000 and 10,000 subscribers
   (the same connections, added between the sizes): a burst published flat
   out (copies/s delivered, the daemon's CPU per copy), then a steady rate
   of C{min(10,000, 1,000,000 / subscribers)} events/s (copies/s delivered
   and the publish -> client latency);
 - C{tickers}: C{global.tickers} (ten markets, ~2.6 kB) to 15,000
   subscribers, the same two runs;
 - C{replay}: a new C{ob-inc} subscriber of a market storing a snapshot and
   1,000 increments, one after the other: the time from its connect to the
   subscribed reply and the daemon's CPU per subscriber, beside a market
   storing only the snapshot (the difference is the replay).

The subscribers are L{bench.wsclient.PublicClient}s; the events are
L{bench.events.public_body}s, each with its sequence and the publisher's
clock. Latency is recorded per client read (see L{PublicClient}): the
percentiles given are upper bounds (each frame counted with the oldest
frame of its read), with the lower bounds beside them.
"""

from __future__ import annotations

import contextlib
import time
from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bench import events
from bench.profile import Profiler
from bench.sysinfo import CpuMeter
from bench.workers import Worker, call_all, floor_main
from tests.support.daemon import DaemonProcess
from tests.support.paths import REPO
from tests.support.probes import metric
from tests.support.waiting import until_blocking

if TYPE_CHECKING:
    from bench.scenarios import Bench

RESULTS = REPO / "bench" / "results"

__all__ = ["obinc", "replay", "tickers", "weighted_percentiles"]

MARKET = "btcusd"
#: Size of each bench ob-inc body (Peatio's are 60-150 bytes) and global.tickers body (ten markets).
OB_INC_SIZE = 128
TICKERS_SIZE = 2600


def path_for(stream: str) -> str:
    """The URL baseapp opens for one public stream."""
    return f"/api/v2/ranger/public/?stream={stream}"


def weighted_percentiles(values: Sequence[int], weights: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max in ms of C{values} (ns), each counted C{weights} times."""
    if not values:
        return {"n": 0}
    pairs = sorted(zip(values, weights, strict=True))
    total = sum(weights)
    out: dict[str, float] = {"n": total}
    marks = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)]
    seen = 0
    k = 0
    for value, weight in pairs:
        seen += weight
        while k < len(marks) and seen >= marks[k][1] * total:
            out[marks[k][0]] = value / 1e6
            k += 1
        if k == len(marks):
            break
    out["max"] = pairs[-1][0] / 1e6
    return out


def _aggregate(reports: list[dict[str, Any]]) -> dict[str, Any]:
    from bench.scenarios import _aggregate as counts

    out = counts([{**r, "latencies": b""} for r in reports])
    highs, lows, weights = array("q"), array("q"), array("q")
    for r in reports:
        highs.frombytes(r.get("latencies", b""))
        lows.frombytes(r.get("latency_lows", b""))
        weights.frombytes(r.get("latency_weights", b""))
    out["latency"] = weighted_percentiles(highs, weights)
    out["latency_low"] = weighted_percentiles(lows, weights)
    out["latency_reads"] = len(weights)
    return out


class _Stream:
    """One public stream of a running daemon: its publisher, its subscribers, and the last sequence published."""

    def __init__(
        self,
        bench: Bench,
        daemon: DaemonProcess,
        workers: list[Worker],
        pub: Worker,
        stream: str,
        tail: bytes,
        size: int,
    ) -> None:
        self.b = bench
        self.d = daemon
        self.workers = workers
        self.pub = pub
        self.stream = stream
        self.key = "public." + stream
        self.tail = tail
        self.size = size
        self.seq = events.SEQ0
        self.per_worker = [0] * len(workers)

    @property
    def subscribers(self) -> int:
        return sum(self.per_worker)

    def subscribe(self, total: int, concurrency: int) -> dict[str, Any]:
        """Open subscribers up to C{total}, spread over the workers; the connect figures."""
        w = len(self.workers)
        add = [max(0, total // w + (1 if i < total % w else 0) - self.per_worker[i]) for i in range(w)]
        replies = call_all(
            self.workers,
            "open_public",
            240,
            [{"n": k} for k in add],
            host="127.0.0.1",
            port=self.d.port,
            path=path_for(self.stream),
            stream=self.stream,
            size=self.size,
            concurrency=concurrency,
            timeout=30.0,
            time_limit=180.0,
        )
        opened = sum(r["opened"] for r in replies)
        errors: dict[str, int] = {}
        for r in replies:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        for i, r in enumerate(replies):
            self.per_worker[i] += r["opened"]
        t0, t1 = min(r["t0"] for r in replies), max(r["t1"] for r in replies)
        if errors:
            self.b.log(f"connect errors: {errors}")
        if opened < sum(add) * 0.99:
            raise RuntimeError(f"only {opened} of {sum(add)} subscribers opened: {errors}")
        return {
            "opened": opened,
            "errors": errors,
            "rate": opened / (t1 - t0) if t1 > t0 and opened else 0.0,
            "replayed": sum(r["replayed"] for r in replies),
            "replay_errors": sum(r["replay_errors"] for r in replies),
        }

    def burst(self, n: int) -> dict[str, Any]:
        """C{n} events as fast as the broker takes them: copies/s delivered, daemon CPU per copy."""
        call_all(self.workers, "expect", 30, counts={self.stream: n})
        groups = self.b.groups([self.d.pid], self.workers, self.pub)
        meter = CpuMeter(groups).start()
        profiler = self._profiler(f"{self.name}-burst", max(1.0, n * self.subscribers / 2e6))
        timeout = 60 + n * self.subscribers / 100_000
        sent = self.pub.call(
            "public_burst",
            wait=timeout,
            exchange=self.d.exchange,
            routing_key=self.key,
            seq0=self.seq + 1,
            n=n,
            tail=self.tail,
            size=self.size,
        )
        reports = call_all(self.workers, "wait", timeout + 30, timeout=timeout, idle=5.0)
        r = self._result(reports, meter, sent, profiler)
        self.seq += n
        return r

    def steady(self, rate: float, seconds: float) -> dict[str, Any]:
        """Events at a steady C{rate}: copies/s delivered and the latency of every copy (bounded per read)."""
        n = int(rate * seconds)
        call_all(self.workers, "expect", 30, counts={self.stream: n}, latency=True)
        groups = self.b.groups([self.d.pid], self.workers, self.pub)
        meter = CpuMeter(groups).start()
        profiler = self._profiler(f"{self.name}-steady", seconds)
        sent = self.pub.call(
            "public_rate",
            wait=seconds + 30,
            exchange=self.d.exchange,
            routing_key=self.key,
            seq0=self.seq + 1,
            rate=rate,
            duration=seconds,
            tail=self.tail,
            size=self.size,
        )
        reports = call_all(self.workers, "wait", 90, timeout=60, idle=3.0, latencies=True)
        r = self._result(reports, meter, sent, profiler)
        r["offered_rate"] = rate
        r["publisher_max_late_ms"] = 1000 * sent["max_late"]
        self.seq += n
        return r

    @property
    def name(self) -> str:
        return f"{self.stream}-x{self.subscribers}"

    def _profiler(self, name: str, seconds: float) -> Profiler | None:
        if not self.b.o.profile:
            return None
        return Profiler(self.d.pid, seconds, RESULTS / f"{self.b.stamp}-{name}.txt")

    def _result(
        self, reports: list[dict[str, Any]], meter: CpuMeter, sent: dict[str, Any], profiler: Profiler | None
    ) -> dict[str, Any]:
        cpu = meter.stop()
        if profiler is not None:
            self.b._profile_done(profiler.out.stem.split("-", 2)[-1], profiler)
        r = _aggregate(reports)
        r["subscribers"] = self.subscribers
        r["published"] = sent["sent"]
        r["publish_rate"] = sent["sent"] / max(1e-9, sent["t1"] - sent["t0"])
        r["cpu"] = cpu
        r["cpu_others"] = meter.top_others
        r["server_us_per_event"] = 1e6 * meter.seconds["daemon"] / max(1, r["received"])
        r["daemon_core"] = cpu["daemon"]
        return r


def _book_state(d: DaemonProcess, market: str, sequence: int, increments: int, timeout: float = 30.0) -> None:
    """Until the daemon's book of C{market} is at C{sequence}, replayable, with C{increments} stored."""

    def there() -> bool:
        text = d.metrics()
        return (
            metric(text, "peatio_ws_orderbook_sequence", market=market) == sequence
            and metric(text, "peatio_ws_orderbook_replayable", market=market) == 1
            and metric(text, "peatio_ws_orderbook_increments", market=market) == increments
        )

    until_blocking(there, timeout, f"the {market} book at {sequence} with {increments} increments")


def _snapshot(s: _Stream, market: str) -> None:
    """A snapshot at the current sequence (the primed do not get it): the store is replayable, empty."""
    s.pub.call(
        "bodies",
        wait=30,
        exchange=s.d.exchange,
        routing_key=f"public.{market}.ob-snap",
        bodies=[events.snapshot_body(s.seq)],
    )
    _book_state(s.d, market, s.seq, 0)


def _log_run(b: Bench, name: str, r: dict[str, Any]) -> None:
    lat, low = r["latency"], r["latency_low"]
    text = (
        f"{name}: {r['received']:,}/{r['expected']:,} copies in {r['window_s']:.2f} s = {r['rate']:,.0f} copies/s; "
        f"missing {r['missing']}, out of order {r['order_errors']}; daemon {r['server_us_per_event']:.2f} µs CPU "
        f"per copy ({r['daemon_core']:.0f}% of a core); {r['events_per_read']:.1f} frames per client read"
    )
    if lat.get("n"):
        text += (
            f"; latency p50 {lat['p50']:.1f} / p99 {lat['p99']:.1f} / max {lat['max']:.1f} ms "
            f"(lower bounds {low['p50']:.1f} / {low['p99']:.1f})"
        )
    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in r["cpu"].items())
    b.log(text + f"; cpu {cpu}" + (f" (other: {', '.join(r['cpu_others'])})" if r.get("cpu_others") else ""))
    if r["missing"] or r["order_errors"] or r["extra"]:
        b.notes.append(
            f"{name}: {r['missing']} copies missing, {r['extra']} extra, {r['order_errors']} out of order "
            f"(close codes {r['close_codes']})"
        )


def obinc(b: Bench) -> None:
    """One market's ob-inc to growing numbers of subscribers."""
    o = b.o
    stream = f"{MARKET}.ob-inc"
    b.quiet("public ob-inc")
    out: list[dict[str, Any]] = []
    with b.daemon() as d, b.clients() as workers, b.publisher(d.exchange) as pub:
        s = _Stream(b, d, workers, pub, stream, events.OB_INC_TAIL, OB_INC_SIZE)
        for n in o.public_sizes:
            _snapshot(s, MARKET)
            b.log(f"public ob-inc: {n:,} subscribers of {stream}")
            connected = s.subscribe(n, o.concurrency)
            if connected["replay_errors"]:
                b.notes.append(f"ob-inc {n}: {connected['replay_errors']} gaps in the replays")
            burst_n = max(o.public_min_events, min(o.public_max_events, o.public_copies // n))
            r = s.burst(burst_n)
            _log_run(b, f"ob-inc x {n:,}, burst of {burst_n:,}", r)
            rate = min(o.public_max_rate, o.public_offered / n)
            steady = s.steady(rate, o.latency_seconds)
            _log_run(b, f"ob-inc x {n:,}, steady {rate:,.0f} events/s", steady)
            out.append({"subscribers": n, "connect": connected, "burst": r, "steady": steady})
            b.results["public_obinc"] = out
    if o.public_sizes:
        largest = max(o.public_sizes)
        b.log(f"public floor: {largest:,} plain TCP sockets, one send per socket and pass")
        b.results["public_floor"] = floor(b, largest)


def floor(b: Bench, n: int, size: int = OB_INC_SIZE, tail: bytes = events.OB_INC_TAIL) -> dict[str, Any]:
    """
    The floor of the public fan-out on this machine: one Python process
    writing each pass's events to C{n} plain TCP sockets, one send per
    socket and pass (L{bench.workers.floor_main}'s C{public}), at the
    largest size's burst and steady rate, read by the same clients.
    """
    o = b.o
    stream = f"{MARKET}.ob-inc"
    layout_args = {"stream": stream, "size": size}
    w = Worker("floor", floor_main)
    out: dict[str, Any] = {"subscribers": n}
    try:
        port = w.call("listen")["port"]
        with b.clients() as workers:
            for i, worker in enumerate(workers):
                worker.send(
                    "open_public",
                    host="127.0.0.1",
                    port=port,
                    path=None,
                    n=n // len(workers) + (1 if i < n % len(workers) else 0),
                    concurrency=o.concurrency,
                    timeout=30.0,
                    time_limit=120.0,
                    **layout_args,
                )
            accepted = w.call("accept", wait=130, n=n, wait_s=120.0)
            for worker in workers:
                worker.recv(150)
            groups = {"floor": [w.pid], "clients": [x.pid for x in workers]}
            burst_n = max(o.public_min_events, min(o.public_max_events, o.public_copies // n))
            rate = min(o.public_max_rate, o.public_offered / n)
            # The first event tells the clients where the sequence starts.
            call_all(workers, "expect", 30, counts={stream: 1})
            w.call("public", wait=60, n=1, rate=0.0, tail=tail, **layout_args)
            call_all(workers, "wait", 60, timeout=30, idle=5.0)
            for label, k, r_ in (("burst", burst_n, 0.0), ("steady", int(rate * o.latency_seconds), rate)):
                call_all(workers, "expect", 30, counts={stream: k}, latency=bool(r_))
                meter = CpuMeter(groups).start()
                sent = w.call("public", wait=300, n=k, rate=r_, tail=tail, **layout_args)
                reports = call_all(workers, "wait", 360, timeout=300, idle=5.0, latencies=bool(r_))
                cpu = meter.stop()
                r = _aggregate(reports)
                r.update(
                    subscribers=accepted["accepted"],
                    published=sent["sent"],
                    passes=sent["passes"],
                    cpu=cpu,
                    cpu_others=meter.top_others,
                    server_us_per_event=1e6 * meter.seconds["floor"] / max(1, r["received"]),
                    daemon_core=cpu["floor"],
                )
                if r_:
                    r["offered_rate"] = r_
                out[label] = r
                _log_run(b, f"floor x {n:,}, {label}", r)
    finally:
        with contextlib.suppress(Exception):
            w.call("close", wait=10)
        w.stop()
    return out


def tickers(b: Bench) -> None:
    """global.tickers (ten markets) to o.tickers_connections subscribers."""
    o = b.o
    stream = "global.tickers"
    n = o.tickers_connections
    b.quiet("public tickers")
    b.log(f"public tickers: {n:,} subscribers of {stream}")
    with b.daemon() as d, b.clients(o.capacity_procs) as workers, b.publisher(d.exchange) as pub:
        s = _Stream(b, d, workers, pub, stream, events.TICKERS_TAIL, TICKERS_SIZE)
        connected = s.subscribe(n, o.concurrency)
        b.log(f"public tickers: {connected['opened']:,} subscribed at {connected['rate']:,.0f}/s")
        # The clients learn the sequence from the first event they get.
        s.burst(1)
        r = s.burst(o.tickers_events)
        _log_run(b, f"tickers x {n:,}, burst of {o.tickers_events}", r)
        steady = s.steady(o.tickers_rate, o.latency_seconds)
        _log_run(b, f"tickers x {n:,}, steady {o.tickers_rate:g} events/s", steady)
        b.results["public_tickers"] = {"subscribers": n, "connect": connected, "burst": r, "steady": steady}


def replay(b: Bench) -> None:
    """A new ob-inc subscriber with 1,000 stored increments replayed, beside one with the snapshot alone."""
    o = b.o
    b.quiet("public replay")
    out: dict[str, Any] = {}
    with b.daemon() as d, b.clients(1) as workers, b.publisher(d.exchange) as pub:
        for market, stored in (("ltcusd", 0), ("ethusd", o.replay_increments)):
            bodies = [events.snapshot_body(events.SEQ0)] + [
                events.public_body(events.SEQ0 + i, events.OB_INC_TAIL, OB_INC_SIZE) for i in range(1, stored + 1)
            ]
            pub.call("bodies", wait=60, exchange=d.exchange, routing_key=f"public.{market}.ob-snap", bodies=bodies[:1])
            if stored:
                pub.call(
                    "bodies", wait=60, exchange=d.exchange, routing_key=f"public.{market}.ob-inc", bodies=bodies[1:]
                )
            _book_state(d, market, events.SEQ0 + stored, stored)
            stream = f"{market}.ob-inc"
            args = {
                "host": "127.0.0.1",
                "port": d.port,
                "path": path_for(stream),
                "stream": stream,
                "size": OB_INC_SIZE,
                "timeout": 30.0,
            }
            workers[0].call("replay_probe", wait=120, n=20, **args)  # warm-up
            meter = CpuMeter(b.groups([d.pid], workers, None)).start()
            t0 = time.monotonic()
            got = workers[0].call("replay_probe", wait=300, n=o.replay_probes, **args)
            wall = time.monotonic() - t0
            cpu = meter.stop()
            times = sorted(got["times"])
            k = len(times)
            r = {
                "stored_increments": stored,
                "subscribers": k,
                "replayed_per_subscriber": sum(got["replayed"]) / max(1, k),
                "replay_errors": got["replay_errors"],
                "p50_ms": 1000 * times[k // 2],
                "p99_ms": 1000 * times[min(k - 1, int(0.99 * (k - 1) + 0.5))],
                "max_ms": 1000 * times[-1],
                "daemon_ms_per_subscriber": 1000 * meter.seconds["daemon"] / max(1, k),
                "wall_s": wall,
                "cpu": cpu,
            }
            if r["replayed_per_subscriber"] != stored + 1 or r["replay_errors"]:
                b.notes.append(
                    f"replay {market}: {r['replayed_per_subscriber']:.1f} frames replayed per subscriber "
                    f"(expected {stored + 1}), {r['replay_errors']} gaps"
                )
            b.log(
                f"replay of {stored:,} increments + snapshot: {k} new subscribers one after the other; to the "
                f"subscribed reply p50 {r['p50_ms']:.2f} / p99 {r['p99_ms']:.2f} / max {r['max_ms']:.2f} ms; daemon "
                f"{r['daemon_ms_per_subscriber']:.3f} ms CPU per subscriber (connect, replay, close)"
            )
            out[str(stored)] = r
    b.results["public_replay"] = out
