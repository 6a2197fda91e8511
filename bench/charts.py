"""
C{python -m bench.charts [RESULTS.json ...] [--out DIR]}: PNG charts of
saved benchmark results (C{bench/results/<date>.json}, what C{make bench}
writes), without running the benchmark again. C{make bench} calls L{render}
itself after each run.

Charts (each only when the results hold its figures):

 - C{latency}: delivery latency, publish to receipt, at a steady rate: the
   percentiles (p50, p90, p99, p99.9, max) of peatio-ws with 1,000
   connections, with the capacity scenario's connections, and of the
   baseline bridge; below, the distribution itself when the run recorded it
   (C{latency_histogram}, runs from issue 16 on);
 - C{delivery}: events/s delivered against members (one connection each),
   peatio-ws beside the baseline bridge, the loopback floor and the broker
   floor; one point per results file, so several runs with different
   C{--members} draw the curve;
 - C{fanout}: copies/s against subscribers (connections of one member),
   peatio-ws and the baseline, likewise one point per file;
 - C{memory}: daemon RSS against idle authenticated connections (the
   capacity scenario: before and after connecting them, per file);
 - C{comparison}: peatio-ws beside the baseline and the floors, as bars:
   delivery events/s, fan-out copies/s, CPU per event (of the one file
   with the most of these figures: sizes differ between files).

matplotlib is a bench-only dependency (bench/requirements.txt), never the
daemon's.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CHARTS", "main", "render"]

RESULTS = Path(__file__).resolve().parent / "results"

#: The charts, in the order docs/benchmarks.md shows them.
CHARTS = ("latency", "delivery", "fanout", "memory", "comparison")

_PERCENTILES = (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p999", "p99.9"), ("max", "max"))
_LINESTYLES = ("-", "--", ":", "-.")
_COLORS = {"peatio-ws": "#1f77b4", "baseline": "#d62728", "floor": "#7f7f7f", "broker": "#2ca02c", "scale": "#9467bd"}


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _title(runs: Sequence[dict[str, Any]]) -> str:
    m = runs[0].get("machine", {})
    dates = sorted({str(r.get("machine", {}).get("date", "?")) for r in runs})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} .. {dates[-1]}"
    return f"{m.get('nproc', '?')} x {m.get('cpu', '?')}, {when}"


def _lat(r: dict[str, Any] | None) -> dict[str, Any] | None:
    if not r:
        return None
    p = r.get("latency")
    return p if isinstance(p, dict) and p.get("n") else None


def _latency(plt: Any, runs: Sequence[dict[str, Any]]) -> Any:
    series: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for index, run in enumerate(runs):
        res, opts = run.get("results", {}), run.get("options", {})
        cap = res.get("capacity") or {}
        candidates = (
            (f"peatio-ws, {opts.get('members', '?'):,} conns", res.get("latency"), "peatio-ws"),
            (f"peatio-ws, {cap.get('connections', 0):,} conns", cap.get("latency"), "scale"),
            (f"baseline, {opts.get('members', '?'):,} conns", res.get("baseline_latency"), "baseline"),
        )
        for label, r, color in candidates:
            if _lat(r) is not None:
                assert r is not None
                # Several files: one line style per file, one colour per kind of server.
                style = {"color": _COLORS[color], "linestyle": _LINESTYLES[index % len(_LINESTYLES)]}
                series.append((label, r, style))
    if not series:
        return None
    histograms = [(label, r["latency_histogram"], style) for label, r, style in series if r.get("latency_histogram")]
    rows = 2 if histograms else 1
    fig, axes = plt.subplots(rows, 1, figsize=(8, 4.2 * rows), squeeze=False)
    ax = axes[0][0]
    xs = list(range(len(_PERCENTILES)))
    for label, r, style in series:
        p = r["latency"]
        rate = runs[0].get("options", {}).get("latency_rate", 2000)
        ax.plot(xs, [p[k] for k, _ in _PERCENTILES], marker="o", label=f"{label} (n={p['n']:,})", **style)
    ax.set_xticks(xs, [name for _, name in _PERCENTILES])
    ax.set_yscale("log")
    ax.set_ylabel("ms, publish to receipt (log)")
    ax.set_title(f"Delivery latency at a steady {rate:,.0f} events/s: percentiles")
    ax.axhline(5, color="#999999", linestyle="--", linewidth=1)
    ax.text(0, 5, " goal: p99 < 5 ms", va="bottom", fontsize=8, color="#666666")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if histograms:
        hx = axes[1][0]
        for label, hist, style in histograms:
            edges, counts = hist["edges_ms"], hist["counts"]
            total = max(1, sum(counts))
            hx.stairs([c / total for c in counts], edges, label=label, **style)
        hx.set_xscale("log")
        hx.set_xlabel("ms, publish to receipt (log)")
        hx.set_ylabel("share of events")
        hx.set_title("Delivery latency: distribution")
        hx.grid(True, which="both", alpha=0.3)
        hx.legend(fontsize=8)
    fig.suptitle(_title(runs), fontsize=8, y=0.995)
    fig.tight_layout()
    return fig


_X = Callable[[dict[str, Any], dict[str, Any]], Any]


def _points(runs: Sequence[dict[str, Any]], key: str, x: _X) -> list[tuple[float, float]]:
    out = []
    for run in runs:
        res, opts = run.get("results", {}), run.get("options", {})
        r = res.get(key)
        if r and r.get("rate"):
            xv = x(r, opts)
            if xv:
                out.append((float(xv), float(r["rate"])))
    return sorted(out)


def _scaling(plt: Any, runs: Sequence[dict[str, Any]], lines: Sequence[tuple[str, str, Any, str]],
             title: str, xlabel: str, ylabel: str) -> Any:
    found = [(label, pts, color) for label, key, x, color in lines if (pts := _points(runs, key, x))]
    if not found:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, pts, color in found:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label, color=_COLORS[color])
        for px, py in pts:
            ax.annotate(f"{py:,.0f}", (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if all(len(pts) == 1 for _, pts, _ in found):
        ax.text(0.01, 0.01, "one run: one point per line (run with other sizes, chart the files together)",
                transform=ax.transAxes, fontsize=7, color="#666666")
    fig.suptitle(_title(runs), fontsize=8, y=0.995)
    fig.tight_layout()
    return fig


def _delivery(plt: Any, runs: Sequence[dict[str, Any]]) -> Any:
    members = lambda r, o: o.get("members")  # noqa: E731
    return _scaling(
        plt,
        runs,
        (
            ("peatio-ws", "throughput", members, "peatio-ws"),
            ("peatio-ws, 2 processes (SO_REUSEPORT)", "scale", members, "scale"),
            ("baseline (websockets + aio-pika)", "baseline_throughput", members, "baseline"),
            ("floor: plain TCP sends", "floor", members, "floor"),
            ("broker floor: RabbitMQ to a do-nothing consumer", "broker", members, "broker"),
        ),
        "Delivery, events published flat out: events/s against members (1 connection each)",
        "members",
        "events/s delivered (log)",
    )


def _fanout(plt: Any, runs: Sequence[dict[str, Any]]) -> Any:
    conns = lambda r, o: r.get("connections") or o.get("fanout_connections")  # noqa: E731
    base = lambda r, o: o.get("fanout_connections")  # noqa: E731
    return _scaling(
        plt,
        runs,
        (
            ("peatio-ws", "fanout", conns, "peatio-ws"),
            ("baseline (websockets + aio-pika)", "baseline_fanout", base, "baseline"),
        ),
        "Fan-out: event copies/s against subscribers (connections of one member)",
        "subscribers",
        "copies/s written (log)",
    )


def _memory(plt: Any, runs: Sequence[dict[str, Any]]) -> Any:
    caps = [run["results"]["capacity"] for run in runs if run.get("results", {}).get("capacity")]
    if not caps:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for cap in sorted(caps, key=lambda c: c["connections"]):
        n = cap["connections"]
        xs, ys = [0, n], [cap["rss_before_kib"] / 1024, cap["rss_after_kib"] / 1024]
        ax.plot(xs, ys, marker="o", color=_COLORS["peatio-ws"],
                label=f"{n:,} connections: {cap['kib_per_connection']:.2f} KiB each")
        ax.annotate(f"{ys[1]:.0f} MiB", (xs[1], ys[1]), textcoords="offset points", xytext=(-40, 6), fontsize=8)
    top = max(c["connections"] for c in caps)
    base = min(c["rss_before_kib"] for c in caps) / 1024
    ax.plot([0, top], [base, base + 12 * top / 1024], linestyle="--", color="#999999", linewidth=1,
            label="goal: 12 KiB per connection")
    ax.set_xlabel("idle authenticated connections")
    ax.set_ylabel("daemon RSS (MiB)")
    ax.set_title("Memory: daemon RSS against connections (capacity scenario)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(_title(runs), fontsize=8, y=0.995)
    fig.tight_layout()
    return fig


def _comparison(plt: Any, runs: Sequence[dict[str, Any]]) -> Any:
    # One run's figures side by side (sizes differ between runs): the one with the most of them, the last on ties.
    keys = ("throughput", "baseline_throughput", "floor", "broker", "fanout", "baseline_fanout", "floor_paced")
    chosen = max(reversed(runs), key=lambda r: sum(bool(r.get("results", {}).get(k)) for k in keys))
    res = chosen.get("results", {})
    panels: list[tuple[str, list[tuple[str, float, str]]]] = []
    delivery = [
        (label, float(res[key]["rate"]), color)
        for label, key, color in (
            ("peatio-ws", "throughput", "peatio-ws"),
            ("baseline", "baseline_throughput", "baseline"),
            ("floor\n(plain TCP)", "floor", "floor"),
            ("broker\nfloor", "broker", "broker"),
        )
        if res.get(key, {}).get("rate")
    ]
    if delivery:
        panels.append(("delivery: events/s (log)", delivery))
    fan = [
        (label, float(res[key]["rate"]), color)
        for label, key, color in (("peatio-ws", "fanout", "peatio-ws"), ("baseline", "baseline_fanout", "baseline"))
        if res.get(key, {}).get("rate")
    ]
    if fan:
        panels.append(("fan-out: copies/s (log)", fan))
    cpu = [
        (label, float(res[key]["server_us_per_event"]), color)
        for label, key, color in (
            ("peatio-ws", "throughput", "peatio-ws"),
            ("baseline", "baseline_throughput", "baseline"),
            ("floor,\npaced", "floor_paced", "floor"),
        )
        if res.get(key, {}).get("server_us_per_event")
    ]
    if cpu:
        panels.append(("server CPU per event copy: µs (lower is better)", cpu))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.5), squeeze=False)
    for ax, (title, bars) in zip(axes[0], panels, strict=True):
        ax.bar([b[0] for b in bars], [b[1] for b in bars], color=[_COLORS[b[2]] for b in bars])
        for i, (_, value, _) in enumerate(bars):
            ax.annotate(f"{value:,.1f}" if value < 100 else f"{value:,.0f}", (i, value), ha="center",
                        textcoords="offset points", xytext=(0, 3), fontsize=8)
        if "log" in title:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    opts = chosen.get("options", {})
    fig.suptitle(
        f"peatio-ws beside the baseline bridge and the floors: {opts.get('members', '?'):,} members, fan-out to "
        f"{opts.get('fanout_connections', '?'):,} ({_title([chosen])})",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


_BUILDERS: dict[str, Callable[[Any, Sequence[dict[str, Any]]], Any]] = {
    "latency": _latency,
    "delivery": _delivery,
    "fanout": _fanout,
    "memory": _memory,
    "comparison": _comparison,
}


def render(paths: Sequence[Path], out: Path, prefix: str = "") -> tuple[list[Path], list[str]]:
    """
    Draw every chart the results files C{paths} have figures for into
    C{out} as C{<prefix><chart>.png}; returns the files written and the
    charts left out for want of figures.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [_load(p) for p in paths]
    out.mkdir(parents=True, exist_ok=True)
    written, missing = [], []
    for name in CHARTS:
        fig = _BUILDERS[name](plt, runs)
        if fig is None:
            missing.append(name)
            continue
        target = out / f"{prefix}{name}.png"
        fig.savefig(target, dpi=100)
        plt.close(fig)
        written.append(target)
    return written, missing


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.charts", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("results", nargs="*", type=Path, help="results files (default: the newest in bench/results/)")
    p.add_argument("--out", type=Path, help="directory for the PNGs, named <chart>.png (default: beside the "
                   "first results file, named <its name>-<chart>.png)")
    args = p.parse_args(argv)
    paths: list[Path] = args.results
    if not paths:
        found = sorted(RESULTS.glob("*.json"))
        if not found:
            p.error("no results file given and none in bench/results/ (run `make bench` first)")
        paths = [found[-1]]
    try:
        if args.out is not None:
            written, missing = render(paths, args.out)
        else:
            written, missing = render(paths, paths[0].parent, prefix=paths[0].stem + "-")
    except ImportError:
        print("bench.charts: matplotlib is missing: .venv/bin/pip install -r bench/requirements.txt", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    if missing:
        print(f"no figures for: {', '.join(missing)} (those scenarios did not run)", file=sys.stderr)
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
