"""
C{python -m bench.syscalls [--connections N] [--rounds R] [--daemon-env K=V]}:
the system calls and the CPU of one connection's life on the real daemon.

Each life is what a reconnecting client costs: TCP accept, the upgrade, the
challenge, an RS256 login (the Redis revocation check included), then the
client's close and the server's close of TCP. The clients are
L{bench.wsclient}'s (plain asyncio, 50 lives in flight). After 200 lives of
warm-up:

 - with C{strace -c -f} attached to the daemon (a Debian package; skipped
   when absent), the system calls per life by name: what a change to the
   send or close path saves is counted exactly, whatever the machine's noise;
 - then, without strace, the daemon's CPU per life (from
   C{/proc/<pid>/stat}), R rounds: that figure moves by ±20% between runs on
   a shared VM, so it says where a change stands only when the change is
   bigger than that.

Every process started here (the daemon, strace) is stopped by its PID;
every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.wsclient import connect
from peatio_ws.testing import make_token
from tests.support.daemon import DaemonProcess
from tests.support.probes import cpu_seconds, metric
from tests.support.waiting import until_blocking

IN_FLIGHT = 50


async def _lives(host: str, port: int, tokens: list[str]) -> None:
    """One connection life per token, IN_FLIGHT at a time."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def life(token: str) -> None:
        async with gate:
            client = await connect(host, port, token, None, 30.0)
            client.close()

    await asyncio.gather(*(life(t) for t in tokens))


def _run(daemon: DaemonProcess, tokens: list[str]) -> None:
    asyncio.run(_lives("127.0.0.1", daemon.port, tokens))
    # The daemon's side of the close (its close of TCP, the close line) done.
    until_blocking(lambda: metric(daemon.metrics(), "peatio_ws_connections") == 0, 30, "every connection closed")


def _strace_counts(path: Path) -> dict[str, int]:
    """C{strace -c}'s table: calls by system call."""
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            try:
                counts[parts[-1]] = int(parts[3])
            except ValueError:
                continue
    return counts


def measure(n: int, rounds: int, daemon_env: dict[str, str]) -> dict[str, Any]:
    env = {"RABBITMQ_PRIVATE_BINDING": "all", "WEBSOCKET_MAX_CONNECTIONS_PER_IP": "0", **daemon_env}
    daemon = DaemonProcess(env=env).start()
    try:
        now = time.time()
        tokens = [make_token(now=now, uid=f"SC{i:06d}", exp=None) for i in range(200 + n * (rounds + 1))]
        _run(daemon, tokens[:200])
        result: dict[str, Any] = {"connections": n, "daemon_env": env, "syscalls": None, "cpu_us": []}
        used = 200
        strace = shutil.which("strace")
        if strace is not None:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "strace.txt"
                tracer = subprocess.Popen(
                    [strace, "-c", "-f", "-p", str(daemon.pid), "-o", str(out)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    time.sleep(1.0)  # attached
                    _run(daemon, tokens[used : used + n])
                finally:
                    tracer.send_signal(signal.SIGINT)
                    try:
                        tracer.wait(30)
                    except subprocess.TimeoutExpired:
                        tracer.kill()
                        tracer.wait(5)
                used += n
                counts = _strace_counts(out) if out.exists() else {}
                result["syscalls"] = {k: v / n for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
        for _ in range(rounds):
            before = cpu_seconds(daemon.pid)
            _run(daemon, tokens[used : used + n])
            used += n
            result["cpu_us"].append(1e6 * (cpu_seconds(daemon.pid) - before) / n)
        return result
    finally:
        daemon.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--daemon-env", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    daemon_env = dict(kv.split("=", 1) for kv in args.daemon_env)
    r = measure(args.connections, args.rounds, daemon_env)
    calls = r["syscalls"]
    if calls is None:
        print("syscalls: strace is not installed (apt-get install strace); CPU only")
    else:
        top = ", ".join(f"{name} {per:.1f}" for name, per in list(calls.items())[:10])
        print(f"system calls per connection life ({r['connections']:,} lives): {sum(calls.values()):.1f}: {top}")
    cpu = ", ".join(f"{x:.0f}" for x in r["cpu_us"])
    print(f"daemon CPU per connection life, µs ({len(r['cpu_us'])} rounds of {r['connections']:,}): {cpu}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
