"""
C{python -m bench.gcpolicy [--connections N] [--rounds R]}: what the
garbage collector costs while many connections arrive, under each
GC_POLICY (L{peatio_ws.collector}).

Each round runs every policy in a fresh interpreter (the policy is
process-wide and C{gc.freeze} cannot be taken back cleanly), which builds
the real factory, applies the policy as twistd would, then connects and
authenticates N connections in process (L{bench.hotpath}) and keeps them.
Printed per run: Python CPU per connection, the full and young collections
(count, seconds, from C{gc.callbacks}) and the longest pause. In process:
no kernel, broker or other processes, so the collector's share is seen
clearly; the machine's noise still moves the CPU figure by ±15%.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from typing import Any

from bench import hotpath
from bench.workers import json_child
from peatio_ws import collector


def one(policy: str, n: int) -> dict[str, Any]:
    """One policy in this process: N connections kept; what the collector did meanwhile."""
    # 500 tokens, repeated: past the first 500 logins each token is one the
    # verifier remembers (no RS256 check), so the µs per connection here are
    # lower than before it did (e75c444); the policies are compared alike.
    factory, tokens = hotpath.connect_kit(500, "GC")
    kept = [hotpath._connect(factory, tokens[i % 500]) for i in range(100)]  # warm-up
    collector.apply(policy)
    seen = {"full": 0, "young": 0, "full_s": 0.0, "young_s": 0.0, "longest_s": 0.0}
    started = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        took = time.perf_counter() - started[0]
        kind = "full" if info["generation"] == 2 else "young"
        seen[kind] += 1
        seen[kind + "_s"] += took
        seen["longest_s"] = max(seen["longest_s"], took)

    gc.callbacks.append(timed)
    t0 = time.process_time()
    kept += [hotpath._connect(factory, tokens[i % 500]) for i in range(n)]
    cpu = time.process_time() - t0
    gc.callbacks.remove(timed)
    return {"policy": policy, "connections": n, "us_per_connection": 1e6 * cpu / n, **seen}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=15_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.connections)))
        return 0
    for n in range(args.rounds):
        for policy in collector.POLICIES:
            r = json_child("bench.gcpolicy", "--one", policy, "--connections", str(args.connections))
            print(
                f"round {n + 1} GC_POLICY={policy}: {r['connections']:,} connections, "
                f"{r['us_per_connection']:.0f} µs Python CPU each; full collections {r['full']} "
                f"({r['full_s']:.2f} s), young {r['young']} ({r['young_s']:.2f} s), "
                f"longest pause {1000 * r['longest_s']:.0f} ms"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
