"""
A restart in place under N clients (SIGUSR2, C{systemctl reload}; issue 18):
the storm scenario's set-up (L{bench.storm}), but the daemon is not
stopped: it replaces itself by a fresh start in the same process and
carries every connection over (docs/deploy.md section 11).

C{python -m bench.inplace [--sizes 1000,5000,15000] [--repeat 3] [--rate 2000] [--held-socket]}

For each size N: N members, one connection each, pre-signed RS256 tokens,
connected calmly and bound; a publisher sends private events round-robin
over the N members throughout, each stamped with the clock
(L{bench.events}); the daemon gets SIGUSR2 (its units' C{ExecReload=}); the
clients do nothing but read (a client that is closed reconnects at once,
as the storm's policy C{none}, and is counted).

Figures per restart: the time from the signal until the fresh program has
taken the connections (its log line), until it is healthy (/health 200:
RabbitMQ consuming, Redis up) and until the events published meanwhile
have all arrived; how many connections were carried, closed, reconnected;
every event published (all are owed: no member ever stops being
authenticated): lost, late (over 1 s), latency p50/p99/max, before the
signal, during the restart (until healthy) and after; the daemon's CPU
from the signal until healthy, per connection (the stopping program's
steps, the exec and start-up, the adoption), from C{/proc} of its PID,
which the exec keeps.

The daemon runs with RABBITMQ_HANDOVER_FILE (a temporary directory of the
bench's) and RABBITMQ_QUEUE_EXPIRES=60, so the queue it leaves at the end
goes by itself. Results go to bench/results/<date>-inplace.json. All
processes started here are stopped by their PID; every wait is bounded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.storm import (
    LATE_NS,
    RESULTS,
    StormOptions,
    Storms,
    _cpu,
    _ms,
    _ns,
    _s,
    daemon_env,
    daemon_revision,
    end,
    percentiles_ms,
)
from bench.workers import Worker, call_all, event_loop_name

#: Log lines of the fresh program and of the stopping one (peatio_ws.service).
CARRIED_OVER = "connections carried over"
CARRIED = "connections carried, "


class LogTail:
    """The lines a daemon's log gains from now on (read from where it was, not whole: it grows to megabytes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size
        self.lines: list[str] = []

    def read(self) -> list[str]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        fresh = data[:end].decode("utf-8", "replace").splitlines()
        self.lines += fresh
        return fresh

    def find(self, text: str) -> str | None:
        return next((line for line in self.lines if text in line), None)


def analyse(
    n_members: int, stamps: Sequence[int], received: Sequence[tuple[int, int, int, int]], t_signal: int, t_healthy: int
) -> dict[str, Any]:
    """
    Every event published: event i went to member i % N with seq i // N + 1,
    published at C{stamps[i]}; C{before} the signal, C{during} the restart
    (until the daemon was healthy again), C{after}: published, delivered,
    lost, late (over 1 s), latency; and events received twice.
    """
    n = len(stamps)
    latency = [-1] * n
    unknown = duplicates = 0
    for member, seq, ts, recv in received:
        i = (seq - 1) * n_members + member
        if not 0 <= i < n or stamps[i] != ts:
            unknown += 1
            continue
        if latency[i] >= 0:
            duplicates += 1
            continue
        latency[i] = recv - ts
    out: dict[str, Any] = {}
    for name, low, high in (("before", 0, t_signal), ("during", t_signal, t_healthy), ("after", t_healthy, 2**63)):
        got = [latency[i] for i in range(n) if low <= stamps[i] < high and latency[i] >= 0]
        published = sum(1 for ts in stamps if low <= ts < high)
        out[name] = {
            "published": published,
            "delivered": len(got),
            "lost": published - len(got),
            "late": sum(1 for x in got if x > LATE_NS),
            "latency": percentiles_ms(got),
        }
    out["unknown_frames"] = unknown
    out["duplicates"] = duplicates
    return out


class InPlaceRestarts(Storms):
    """The storm scenario's clients, publisher and daemon; the restart is SIGUSR2 instead of SIGTERM."""

    def __init__(self, o: StormOptions, repeat: int = 1, log: Any = None) -> None:
        super().__init__(dataclasses.replace(o, policies=("none",), paces=(0,) * repeat), log)
        self.state_dir = tempfile.mkdtemp(prefix="peatio-ws-inplace-")

    def _daemon(self, port: int, exchange: str, pace: int) -> Any:
        daemon = super()._daemon(port, exchange, pace)
        daemon.env.setdefault("RABBITMQ_HANDOVER_FILE", os.path.join(self.state_dir, "queue.json"))
        daemon.env.setdefault("RABBITMQ_QUEUE_EXPIRES", "60")
        return daemon

    def run(self) -> list[dict[str, Any]]:
        try:
            return super().run()
        finally:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def summary(self, r: dict[str, Any]) -> str:
        return summary_line(r)

    def storm(
        self,
        n: int,
        uids: list[str],
        workers: list[Worker],
        pub: Worker,
        current: list[Any],
        port: int,
        exchange: str,
        policy: str,
        pace: int,
        calm: dict[str, Any],
        k: int,
    ) -> dict[str, Any]:
        o = self.o
        d = current[0]
        busy, top, load = self.begin(n, uids, workers, pub, exchange, policy, k)
        tail = LogTail(d.log_path)
        cpu0 = _cpu(d.pid)
        t_signal = _ns()
        os.kill(d.pid, signal.SIGUSR2)
        deadline = time.monotonic() + o.deadline
        t_carried = t_healthy = 0
        cpu_carried = cpu_healthy = 0.0
        while time.monotonic() < deadline:
            if d.exited() is not None:
                raise RuntimeError(f"the daemon exited with status {d.exited()}:\n{d.tail()}")
            if not t_carried:
                tail.read()
                if tail.find(CARRIED_OVER) is not None:
                    t_carried, cpu_carried = _ns(), _cpu(d.pid)
            elif not t_healthy:
                try:
                    status, _ = d.health()
                except OSError:
                    status = 0
                if status == 200:
                    t_healthy, cpu_healthy = _ns(), _cpu(d.pid)
                    break
            time.sleep(0.02)
        if not t_healthy:
            raise RuntimeError(f"not carried over and healthy within {o.deadline:.0f} s")
        time.sleep(o.after)
        pub.send("stop")
        published = pub.recv(660)
        time.sleep(1.0)
        tail.read()
        reports = call_all(workers, "report", 120)
        received: list[tuple[int, int, int, int]] = []
        closes: Counter[int] = Counter()
        attempts = 0
        for rep in reports:
            closes.update({int(c): v for c, v in rep["codes"].items()})
            attempts += sum(array("q", rep["attempts"]))
            received.extend(
                zip(
                    array("q", rep["ev_member"]),
                    array("q", rep["ev_seq"]),
                    array("q", rep["ev_ts"]),
                    array("q", rep["ev_recv"]),
                    strict=True,
                )
            )
        events = analyse(n, array("q", published["stamps"]), received, t_signal, t_healthy)
        carried_line = tail.find(CARRIED) or ""
        over_line = tail.find(CARRIED_OVER) or ""
        return {
            "kind": "in_place",
            "n": n,
            "revision": daemon_revision(),
            "held_socket": o.held_socket,
            "rate": o.rate,
            "load_before": [round(x, 2) for x in load],
            "busy_before_pct": busy,
            "busy_before_top": top,
            "carried_s": (t_carried - t_signal) / 1e9,
            "healthy_s": (t_healthy - t_signal) / 1e9,
            "closed": dict(closes),
            "reconnect_attempts": attempts,
            "log": {"stopping": carried_line.split("] ", 1)[-1], "fresh": over_line.split("] ", 1)[-1]},
            "events": events,
            "publisher_blocked_s": published["blocked_s"],
            "cpu": {
                "until_carried_s": cpu_carried - cpu0,
                "until_healthy_s": cpu_healthy - cpu0,
                "per_connection_us": 1e6 * (cpu_healthy - cpu0) / n,
                "calm_connect_us": calm["daemon_us_per_connection"],
            },
        }


def summary_line(r: dict[str, Any]) -> str:
    ev, c = r["events"], r["cpu"]
    during, after = ev["during"], ev["after"]
    lost = sum(ev[k]["lost"] for k in ("before", "during", "after"))
    return (
        f"N={r['n']:,} in place: carried over {_s(r['carried_s'])} s after the signal, healthy at "
        f"{_s(r['healthy_s'])} s; closed {r['closed'] or 'none'}, reconnect attempts {r['reconnect_attempts']}; "
        f"events published {sum(ev[k]['published'] for k in ('before', 'during', 'after')):,}, lost {lost}, "
        f"twice {ev['duplicates']}; "
        f"during the restart {during['published']:,}: late {during['late']:,}, p50/p99/max "
        f"{_ms(during['latency'])} ms; after {after['published']:,}: p99 {_ms(after['latency'])} ms; daemon CPU "
        f"{c['until_healthy_s']:.2f} s until healthy, {c['per_connection_us']:.0f} µs a connection; load "
        f"{r['load_before']}"
    )


def render(results: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| N | carried over / healthy, s after SIGUSR2 | closed; reconnects | events: published / lost / twice | "
        "published during the restart: late > 1 s / p50, p99, max ms | daemon CPU until healthy: s; µs a "
        "connection | load avg |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ev, c = r["events"], r["cpu"]
        d = ev["during"]
        published = sum(ev[k]["published"] for k in ("before", "during", "after"))
        lost = sum(ev[k]["lost"] for k in ("before", "during", "after"))
        lines.append(
            f"| {r['n']:,} | {_s(r['carried_s'])} / {_s(r['healthy_s'])} | "
            f"{sum(r['closed'].values())}; {r['reconnect_attempts']} | {published:,} / {lost} / {ev['duplicates']} | "
            f"{d['late']:,} / {_ms(d['latency'])} | {c['until_healthy_s']:.2f}; {c['per_connection_us']:.0f} | "
            f"{r['load_before'][0]:.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from bench.sysinfo import machine

    p = argparse.ArgumentParser(
        prog="python -m bench.inplace", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="1000,5000,15000", help="clients, comma-separated")
    p.add_argument("--repeat", type=int, default=1, help="restarts in place per size (default 1)")
    p.add_argument("--rate", type=float, default=2000.0, help="private events per second (default 2000)")
    p.add_argument("--held-socket", action="store_true", help="the listening socket held by the bench (systemd's)")
    p.add_argument("--daemon-env", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    o = StormOptions(
        sizes=tuple(int(x) for x in args.sizes.split(",")),
        rate=args.rate,
        held_socket=args.held_socket,
        daemon_env=daemon_env(args.daemon_env),
    )
    info = machine()
    info["client_loop"] = event_loop_name()
    info["revision"] = daemon_revision()
    restarts = InPlaceRestarts(o, repeat=args.repeat)
    restarts.log("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    restarts.run()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{restarts.stamp}-inplace.json"
    path.write_text(json.dumps({"machine": info, "results": restarts.results, "notes": restarts.notes}, indent=2))
    print()
    print(render(restarts.results))
    return end(restarts.notes, path)


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------------------
# In `python -m bench` (bench.cli): one step, and its rows in the table


def bench_step(bench: Any, quick: bool = False, sizes: Sequence[int] | None = None) -> None:
    """The restart in place as a step of L{bench.cli}: figures in C{bench.results["inplace"]}."""
    o = StormOptions(daemon_env=dict(bench.o.daemon_env))
    o.sizes = tuple(sizes) if sizes else (1000,) if quick else (1000, 15_000)
    restarts = InPlaceRestarts(o, log=lambda text: bench.log(f"inplace: {text}"))
    restarts.stamp = bench.stamp
    try:
        restarts.run()
    finally:
        bench.results["inplace"] = restarts.results
        bench.notes.extend(restarts.notes)
    if restarts.notes:
        raise RuntimeError("; ".join(restarts.notes))


def rows(results: Sequence[dict[str, Any]]) -> list[tuple[str, str, str, bool | None, str]]:
    """One row of bench.cli's table per restart in place: (measure, goal, value, met, notes)."""
    out = []
    for r in results:
        ev, c = r["events"], r["cpu"]
        lost = sum(ev[k]["lost"] for k in ("before", "during", "after"))
        closed = sum(r["closed"].values())
        during = ev["during"]["latency"]
        big = r["n"] >= 15_000
        out.append(
            (
                f"12b. restart in place (SIGUSR2): {r['n']:,} clients: carried over and healthy, s after the "
                "signal; connections closed; events lost (all owed); published during it: p99 ms",
                ("< 5 s; " if big else "") + "none closed, none lost",
                f"{_s(r['carried_s'])} / {_s(r['healthy_s'])}; {closed}; {lost}; {during.get('p99', 0):,.0f}",
                r["healthy_s"] < (5 if big else math.inf) and not closed and not lost and not ev["duplicates"],
                f"daemon CPU {c['until_healthy_s']:.2f} s until healthy ({c['per_connection_us']:.0f} µs a "
                f"connection); {r['reconnect_attempts']} reconnects; after it p99 "
                f"{ev['after']['latency'].get('p99', 0):,.0f} ms; load {r['load_before'][0]:.1f}",
            )
        )
    return out
