"""
C{python -m bench [SCENARIO ...] [--quick] [--profile]}: run the benchmark
scenarios (all by default) and print the table of figures next to the goals.

Scenarios: throughput, latency (both on one daemon: 1,000 members x 1
connection), fanout (1 member x 200 connections), capacity (15,000 idle
authenticated connections: memory, then latency), auth (handshakes + RS256
per second), scale (2 daemons with SO_REUSEPORT), baseline (websockets +
aio-pika bridge), floor (plain TCP sockets); the ranger dialect's public
fan-out (L{bench.public}): public (one market's ob-inc to 1, 100, 1,000 and
10,000 subscribers, and its floor), tickers (global.tickers to 15,000),
replay (a new ob-inc subscriber with 1,000 stored increments); storm
(1,000 / 5,000 / 15,000 authenticated clients, the daemon restarted, every
client back at once: L{bench.storm}); inplace (the same clients, the daemon
restarted in place with SIGUSR2, every connection carried over:
L{bench.inplace}); bindings (15,000 logins at once waiting for their
members' bindings, with and without the covering binding: L{bench.bindings}).

Results also go to bench/results/<date>.json (and the profiles, with
C{--profile}, next to it), with PNG charts beside it (<date>-<chart>.png;
C{python -m bench.charts FILE} draws them again from a saved file).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import bindings, charts, inplace, public, storm
from bench.scenarios import Bench, Options
from bench.sysinfo import machine
from bench.workers import event_loop_name, raise_nofile

SCENARIOS = (
    "throughput",
    "latency",
    "clients",
    "fanout",
    "capacity",
    "auth",
    "scale",
    "baseline",
    "floor",
    "broker",
    "hotpath",
    "public",
    "tickers",
    "replay",
    "storm",
    "inplace",
    "bindings",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"one of {', '.join(SCENARIOS)} (default: all)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test in about a minute")
    p.add_argument("--profile", action="store_true", help="py-spy profiles of the daemon in each scenario")
    p.add_argument("-v", "--verbose", action="store_true", help="print the profiles as they are taken")
    p.add_argument("--events", type=int, help="events in the throughput burst")
    p.add_argument("--members", type=int, help="members (1 connection each) for throughput/latency")
    p.add_argument("--capacity", type=int, help="connections for the capacity scenario")
    p.add_argument("--fanout-connections", type=int, help="connections of the one member in the fan-out scenarios")
    p.add_argument("--clients", type=int, help="load-generating client processes")
    p.add_argument("--latency-seconds", type=float, help="how long each steady-rate latency run publishes")
    p.add_argument(
        "--latency-rate",
        type=float,
        help="events/s of the steady-rate latency run (default 2,000; at a higher rate it is the daemon's CPU"
        " per event at a pace the broker keeps, not at whatever batching a burst makes)",
    )
    p.add_argument(
        "--public-sizes", help="subscriber counts of the public ob-inc scenario, comma-separated (1,100,1000,10000)"
    )
    p.add_argument("--tickers-connections", type=int, help="subscribers of global.tickers in the tickers scenario")
    p.add_argument("--storm-sizes", help="clients of the storm scenario, comma-separated (1000,5000,15000)")
    p.add_argument(
        "--daemon-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the daemons (e.g. RABBITMQ_PREFETCH=5000); repeatable",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - {*SCENARIOS, "all"}
    if unknown:
        parser.error(f"unknown scenario {', '.join(sorted(unknown))} (choose from {', '.join(SCENARIOS)})")
    chosen = set(args.scenarios) - {"all"} or set(SCENARIOS)
    o = Options(profile=args.profile, verbose=args.verbose)
    if args.quick:
        o = o.quick()
    if args.events:
        o.events = args.events
    if args.members:
        o.members = args.members
    if args.capacity:
        o.capacity = args.capacity
    if args.fanout_connections:
        o.fanout_connections = args.fanout_connections
    if args.clients:
        o.client_procs = args.clients
    if args.latency_seconds:
        o.latency_seconds = args.latency_seconds
    if args.latency_rate:
        o.latency_rate = args.latency_rate
    if args.public_sizes:
        o.public_sizes = tuple(int(x) for x in args.public_sizes.split(","))
    if args.tickers_connections:
        o.tickers_connections = args.tickers_connections
    for item in args.daemon_env:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--daemon-env wants KEY=VALUE, got {item!r}")
        o.daemon_env[key] = value
    nofile = raise_nofile()
    if "capacity" in chosen and nofile < o.capacity + 1000:
        print(f"open-file limit is {nofile}: capacity lowered to {nofile - 1000}", file=sys.stderr)
        o.capacity = max(100, nofile - 1000)
    if "tickers" in chosen and nofile < o.tickers_connections + 1000:
        print(f"open-file limit is {nofile}: tickers subscribers lowered to {nofile - 1000}", file=sys.stderr)
        o.tickers_connections = max(100, nofile - 1000)
    t0 = time.monotonic()
    info = machine()
    info["client_loop"] = event_loop_name()
    bench = Bench(o)
    bench.log("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    steps: list[tuple[str, Callable[[], None]]] = []
    if chosen & {"throughput", "latency"}:
        steps.append(("delivery", lambda: bench.delivery("throughput" in chosen, "latency" in chosen)))
    if "hotpath" in chosen:
        steps.append(("hotpath", bench.hotpath))
    if "clients" in chosen:
        steps.append(("clients", bench.clients_sensitivity))
    for name in ("fanout", "capacity", "auth", "scale", "baseline", "floor", "broker"):
        if name in chosen:
            steps.append((name, getattr(bench, name)))
    for name, run in (("replay", public.replay), ("public", public.obinc), ("tickers", public.tickers)):
        if name in chosen:
            steps.append((name, functools.partial(run, bench)))
    if "storm" in chosen:
        sizes = [int(x) for x in args.storm_sizes.split(",")] if args.storm_sizes else None
        steps.append(("storm", functools.partial(storm.bench_step, bench, args.quick, sizes)))
    if "inplace" in chosen:
        sizes = [int(x) for x in args.storm_sizes.split(",")] if args.storm_sizes else None
        steps.append(("inplace", functools.partial(inplace.bench_step, bench, args.quick, sizes)))
    if "bindings" in chosen:
        steps.append(("bindings", functools.partial(bindings.bench_step, bench, args.quick)))
    failed = []
    for name, step in steps:
        try:
            step()
        except Exception as e:
            failed.append(name)
            bench.notes.append(f"{name} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            bench.log(f"{name} FAILED:\n{traceback.format_exc()}")
    elapsed = time.monotonic() - t0
    path = bench.save(info)
    print()
    print(render(info, bench.results, bench.notes, elapsed))
    for text in bench.profiles.values():
        print()
        print(text)
    print(f"\nresults: {path}")
    print(draw_charts(path))
    return 1 if failed else 0


def draw_charts(path: Path) -> str:
    """PNG charts of the results file C{path}, beside it (L{bench.charts}); what was written, in words."""
    try:
        written, missing = charts.render([path], path.parent, prefix=path.stem + "-")
    except ImportError:
        return "charts: none (matplotlib is missing: .venv/bin/pip install -r bench/requirements.txt)"
    except Exception as e:
        return f"charts: failed: {type(e).__name__}: {e}"
    text = "charts: " + (", ".join(str(p) for p in written) if written else "none")
    return text + (f" (no figures for {', '.join(missing)})" if missing else "")


# ---------------------------------------------------------------------------
# The table


def _f(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _lat(r: dict[str, Any] | None) -> str:
    if not r or not r.get("latency", {}).get("n"):
        return "-"
    p = r["latency"]
    return f"{p['p50']:.2f} / {p['p99']:.2f} / {p['max']:.1f}"


def _loss(r: dict[str, Any] | None) -> str:
    if not r:
        return ""
    return f"{r['received']:,}/{r['expected']:,} received, {r['order_errors']} out of order"


def _cpu(r: dict[str, Any] | None) -> str:
    if not r or "cpu" not in r:
        return ""
    return ", ".join(f"{k} {v:.0f}%" for k, v in r["cpu"].items() if k != "idle" or v >= 5)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _upper(r: dict[str, Any]) -> str:
    """Public latency: p50 / p99 / max (upper bounds), and the p99's lower bound."""
    p, low = r.get("latency", {}), r.get("latency_low", {})
    if not p.get("n"):
        return "-"
    return f"{p['p50']:.1f} / {p['p99']:.1f} / {p['max']:.1f} ms (p99 >= {low.get('p99', 0):.1f})"


def _public_rows(res: dict[str, Any], row: Callable[..., None]) -> None:
    """The public fan-out's rows (bench.public): ob-inc by subscribers, its floor, global.tickers, the replay."""

    def run(r: dict[str, Any]) -> str:
        return (
            f"{_loss(r)}; server {r['server_us_per_event']:.2f} µs CPU per copy, {r['daemon_core']:.0f}% of a core; "
            f"{r['events_per_read']:.1f} frames per client read; CPU: {_cpu(r)}"
        )

    for item in res.get("public_obinc", []):
        n, b, st = item["subscribers"], item["burst"], item["steady"]
        row(f"9. public: 1 market's ob-inc x {n:,} subscribers, burst (copies/s)", "-", _f(b["rate"]), None, run(b))
        goal = n >= 10_000
        offered = st["offered_rate"] * n
        row(
            f"9b. the same, steady {st['offered_rate']:,.0f} events/s ({offered:,.0f} copies/s offered): "
            "copies/s delivered; latency p50 / p99 / max",
            ">= 1,000,000/s, p99 < 50 ms" if goal else "-",
            f"{_f(st['rate'])}; {_upper(st)}",
            # Copies/s: the burst's capacity, and every copy of the 1,000,000/s offered delivered.
            (b["rate"] >= 1e6 and not st["missing"] and st["latency"].get("p99", 1e9) < 50) if goal else None,
            run(st),
        )
    fl = res.get("public_floor")
    if fl and "burst" in fl:
        n = fl["subscribers"]
        row(
            f"9c. floor: the same frames to {n:,} plain TCP sockets, one send each per pass: burst; steady",
            "-",
            f"{_f(fl['burst']['rate'])}; {_f(fl['steady']['rate'])}, {_upper(fl['steady'])}",
            None,
            f"burst: {run(fl['burst'])}; steady: {run(fl['steady'])}",
        )
    t = res.get("public_tickers")
    if t:
        n = t["subscribers"]
        row(
            f"10. public: global.tickers x {n:,} subscribers, burst (copies/s)",
            "-",
            _f(t["burst"]["rate"]),
            None,
            run(t["burst"]),
        )
        st = t["steady"]
        row(
            f"10b. the same, steady {st['offered_rate']:g} events/s: copies/s delivered; latency p50 / p99 / max",
            "-",
            f"{_f(st['rate'])}; {_upper(st)}",
            None,
            run(st),
        )
    for stored, r in sorted(res.get("public_replay", {}).items(), key=lambda kv: int(kv[0])):
        row(
            f"11. a new ob-inc subscriber, {int(stored):,} increments stored: connect to subscribed reply "
            "p50 / p99 (ms); daemon CPU per subscriber",
            "-",
            f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f}; {r['daemon_ms_per_subscriber']:.2f} ms",
            None,
            f"{r['subscribers']} one after the other, each closed once subscribed; "
            f"{r['replayed_per_subscriber']:.0f} frames replayed each, {r['replay_errors']} gaps",
        )


def render(info: dict[str, str], res: dict[str, Any], notes: list[str], elapsed: float) -> str:
    """The results as a Markdown table, with the goals."""
    tp = res.get("throughput")
    lat = res.get("latency")
    fan = res.get("fanout")
    cap = res.get("capacity")
    auth = res.get("auth", {})
    scale = res.get("scale")
    b_tp = res.get("baseline_throughput")
    b_lat = res.get("baseline_latency")
    b_fan = res.get("baseline_fanout")
    floor = res.get("floor")
    paced = res.get("floor_paced")
    broker = res.get("broker")
    hot = res.get("hotpath")
    rows: list[tuple[str, str, str, str]] = []

    def row(what: str, goal: str, value: str, met: bool | None, note: str = "") -> None:
        mark = "" if met is None else (" ✅" if met else " ❌")
        rows.append((what, goal, value + mark, note))

    def us(r: dict[str, Any] | None) -> str:
        return f"{r['server_us_per_event']:.1f} µs CPU per copy" if r and "server_us_per_event" in r else ""

    if tp:
        ok = tp["rate"] >= 25000 and not tp["missing"] and not tp["order_errors"]
        row(
            "1. delivery, 1,000 members x 1 conn (events/s)",
            ">= 25,000, none lost",
            _f(tp["rate"]),
            ok,
            f"{_loss(tp)}; daemon {us(tp)}; CPU, % of one core: {_cpu(tp)}",
        )
    for procs, r in sorted(res.get("clients", {}).items()):
        row(
            f"1b. delivery, clients in {procs} process(es) (events/s)",
            "-",
            _f(r["rate"]),
            None,
            f"{_loss(r)}; daemon {us(r)}; CPU: {_cpu(r)}",
        )
    if lat:
        p = lat["latency"]
        rate = lat.get("offered_rate", 2000.0)
        row(
            f"2. latency at {rate:,.0f} events/s, p50 / p99 / max (ms)",
            "p99 < 5 ms" if rate == 2000.0 else "-",
            _lat(lat),
            bool(p.get("n")) and p["p99"] < 5 and not lat["missing"] if rate == 2000.0 else None,
            f"{_loss(lat)}; daemon {us(lat)}; CPU: {_cpu(lat)}",
        )
    if fan:
        row(
            f"3. fan-out, 1 member x {fan['connections']} conns (copies/s)",
            "-",
            f"{_f(fan['rate'])} ({_f(fan['events_per_s'])} events/s)",
            None,
            f"{_loss(fan)}; daemon {us(fan)}; CPU: {_cpu(fan)}",
        )
    if cap:
        row(
            f"4. capacity: {cap['connections']:,} idle authenticated conns, RSS per conn (KiB)",
            "< 12 KiB",
            _f(cap["kib_per_connection"], 2),
            cap["kib_per_connection"] < 12 and cap["connections"] >= 15000,
            f"daemon RSS {cap['rss_before_kib'] / 1024:.0f} -> {cap['rss_after_kib'] / 1024:.0f} MiB; "
            f"connected at {_f(cap['connect']['rate'])}/s; all bound {cap['bindings_settled_s']:.1f} s later",
        )
        cl = cap["latency"]
        row(
            f"4b. latency with {cap['connections']:,} connected, p50 / p99 / max (ms)",
            "p99 < 5 ms",
            _lat(cl),
            bool(cl["latency"].get("n")) and cl["latency"]["p99"] < 5 and not cl["missing"],
            f"{_loss(cl)}; CPU: {_cpu(cl)}",
        )
    for label, text in (("new", "a new member each (a bind each)"), ("repeat", "members already bound")):
        a = auth.get(label)
        if a:
            row(
                f"5. auth: handshakes + RS256 per s, {text}",
                ">= 1,500/s",
                _f(a["rate"]),
                a["rate"] >= 1500,
                f"{a['opened']:,}/{a['requested']:,} ok; client-side p50 {a['p50_ms']:.1f} ms, "
                f"p99 {a['p99_ms']:.1f} ms; CPU: {_cpu(a)}",
            )
    if b_tp:
        row(
            "6a. baseline (websockets + aio-pika): delivery (events/s)",
            "-",
            _f(b_tp["rate"]),
            None,
            f"{_loss(b_tp)}; bridge {us(b_tp)}; CPU: {_cpu(b_tp)}",
        )
    if b_lat:
        row("6b. baseline: latency at 2,000/s, p50 / p99 / max (ms)", "-", _lat(b_lat), None, _loss(b_lat))
    if b_fan:
        row(
            f"6c. baseline: fan-out 1 x {b_fan['connections']} (copies/s)",
            "-",
            _f(b_fan["rate"]),
            None,
            f"{_loss(b_fan)}; bridge {us(b_fan)}",
        )
    bc = res.get("baseline_connect_1000")
    pc = res.get("connect_1000")
    if bc and pc:
        row(
            "6d. connect + auth of 1,000 new members (/s): peatio-ws vs baseline",
            "-",
            f"{_f(pc['rate'])} vs {_f(bc['rate'])}",
            None,
        )
    if floor:
        row(
            "6e. floor: the same frames, plain TCP, one send each, flat out (events/s)",
            "-",
            _f(floor["rate"]),
            None,
            f"{_loss(floor)}; sender {us(floor)}; CPU: {_cpu(floor)}",
        )
    if paced:
        row(
            f"6f. floor paced at {paced['paced']:,.0f}/s: the sender's CPU per event",
            "-",
            us(paced),
            None,
            f"{_loss(paced)}; CPU: {_cpu(paced)}",
        )
    if broker:
        row(
            "6g. broker floor: RabbitMQ to a do-nothing consumer (events/s)",
            "-",
            _f(broker["rate"]),
            None,
            f"RabbitMQ {broker['rabbitmq_us_per_event']:.1f} µs CPU per event; CPU: {_cpu(broker)}",
        )
    if tp and b_tp:
        row("6h. peatio-ws / baseline, delivery", "-", _ratio(tp["rate"], b_tp["rate"]), None)
    if lat and b_lat and lat["latency"].get("n") and b_lat["latency"].get("n"):
        row(
            "6i. peatio-ws / baseline, p99 latency (lower is better)",
            "-",
            _ratio(lat["latency"]["p99"], b_lat["latency"]["p99"]),
            None,
        )
    if fan and b_fan:
        row("6j. peatio-ws / baseline, fan-out", "-", _ratio(fan["rate"], b_fan["rate"]), None)
    if tp and floor:
        row(
            "6k. peatio-ws / floor, delivery",
            "-",
            _ratio(tp["rate"], floor["rate"]),
            None,
            f"per event: daemon {us(tp)} vs the paced floor's {us(paced)}" if paced else "",
        )
    if tp and broker:
        row("6l. peatio-ws / broker floor, delivery", "-", _ratio(tp["rate"], broker["rate"]), None)
    if scale:
        one = tp["rate"] if tp else None
        row(
            f"7. delivery with 2 daemons ({scale['mode'].replace('_', ' ')}) (events/s)",
            "scales with cores",
            f"{_f(scale['rate'])} (1 daemon: {_f(one)}; {_ratio(scale['rate'], one)})",
            None,
            f"connections per daemon {[int(x) for x in scale['split']]}; {_loss(scale)}; CPU: {_cpu(scale)}",
        )
    if hot:
        d, c = hot["delivery"], hot["connect"]
        pub = hot.get("public")
        books = hot.get("bindings")
        row(
            "8. in-process hot paths (Python CPU, no kernel)",
            "-",
            f"{d['us_per_event']:.1f} µs per event; {c['us_per_connection']:.0f} µs per connect + auth"
            + (
                f" ({c['us_per_connection_again']:.0f} with a token seen before)"
                if "us_per_connection_again" in c
                else ""
            )
            + (f"; {pub['us_per_copy']:.3f} µs per public copy" if pub else "")
            + (f"; {books['us_per_member']:.2f} µs per member's binding books" if books else ""),
            None,
            f"{c['kib_per_connection']:.2f} KiB kept per connection (tracemalloc, with the test client)"
            + ("; public: 10,000 ob-inc subscribers, 25 increments per read" if pub else ""),
        )
    _public_rows(res, row)
    for what, goal, value, met, note in storm.rows(res.get("storm", [])):
        row(what, goal, value, met, note)
    for what, goal, value, met, note in inplace.rows(res.get("inplace", [])):
        row(what, goal, value, met, note)
    for what, goal, value, met, note in bindings.rows(res.get("bindings", [])):
        row(what, goal, value, met, note)
    lines = [
        f"peatio-ws benchmark, {info['date']}: {info['nproc']} x {info['cpu']}, {info['memory']}, "
        f"Linux {info['kernel']}; Python {info['python']}, Twisted {info['twisted']}, Autobahn {info['autobahn']}, "
        f"txaio {info['txaio']}, txAMQP {info['txamqp']}, orjson {info['orjson']}; RabbitMQ {info['rabbitmq']}, "
        f"Redis {info['redis']}; clients: {info.get('client_loop', '?')}; reactor {res.get('reactor', '?')}; "
        f"took {elapsed:.0f} s",
        "",
        "| measure | goal | measured | notes |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    if notes:
        lines.append("")
        lines += [f"* {n}" for n in notes]
    return "\n".join(lines)
