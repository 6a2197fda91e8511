"""
C{python -m bench.syscalls [--connections N] [--rounds R] [--daemon-env K=V]
[--server daemon|floor|floor-jwt|baseline] [--again]}: the system calls and the CPU
of one connection's life on the real daemon; on L{bench.lifefloor}'s bare
Twisted server (C{floor}; C{floor-jwt} with the RS256 check): what Twisted
and the kernel alone cost per life here; or on the baseline bridge
(L{bench.baseline.bridge}: asyncio, websockets, aio-pika, PyJWT; it binds
each member's routing key, as the daemon's default C{member} binding does).
The same clients, the same meters.

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
   bigger than that;
 - with C{--profile}, one more round under py-spy: the server's CPU per life
   shared out by what its samples were doing (L{bench.storm.classify}'s
   groups).

Every process started here (the server measured, strace, py-spy)
is stopped by its PID;
every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import baseline
from bench.profile import Profiler, py_spy
from bench.storm import GROUPS, IDLE, group_profile
from bench.wsclient import connect
from peatio_ws.testing import make_token, public_key_b64, rsa_key
from tests.support.daemon import DaemonProcess, stop_child
from tests.support.paths import REPO
from tests.support.probes import cpu_seconds, metric, open_fds
from tests.support.waiting import until_blocking

SERVERS = ("daemon", "floor", "floor-jwt", "baseline")

IN_FLIGHT = 50


async def _lives(host: str, port: int, tokens: list[str]) -> None:
    """One connection life per token, IN_FLIGHT at a time."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def life(token: str) -> None:
        async with gate:
            client = await connect(host, port, token, None, 30.0)
            client.close()

    await asyncio.gather(*(life(t) for t in tokens))


class _Server:
    """What is measured: its PID, its port, and whether every connection it had is closed on its side."""

    def __init__(self, pid: int, port: int, closed: Callable[[], bool]) -> None:
        self.pid = pid
        self.port = port
        self.closed = closed


@contextlib.contextmanager
def _server(kind: str, daemon_env: dict[str, str]) -> Iterator[_Server]:
    if kind == "daemon":
        env = {"RABBITMQ_PRIVATE_BINDING": "all", "WEBSOCKET_MAX_CONNECTIONS_PER_IP": "0", **daemon_env}
        daemon = DaemonProcess(env=env).start()
        try:
            yield _Server(daemon.pid, daemon.port, lambda: metric(daemon.metrics(), "peatio_ws_connections") == 0)
        finally:
            daemon.cleanup()
        return
    if kind == "baseline":
        with baseline.running(f"peatio-ws-bench.{uuid.uuid4().hex[:12]}", public_key_b64(rsa_key())) as bridge:
            idle = open_fds(bridge.pid)
            yield _Server(bridge.pid, bridge.port, lambda: open_fds(bridge.pid) <= idle)
        return
    env = {**os.environ, "PYTHONPATH": str(REPO), "JWT_PUBLIC_KEY": public_key_b64(rsa_key())}
    args = [sys.executable, "-m", "bench.lifefloor"] + (["--jwt"] if kind == "floor-jwt" else [])
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        idle = open_fds(proc.pid)
        yield _Server(proc.pid, port, lambda: open_fds(proc.pid) <= idle)
    finally:
        stop_child(proc)


def _run(server: _Server, tokens: list[str]) -> None:
    asyncio.run(_lives("127.0.0.1", server.port, tokens))
    # The server's side of the close (its close of TCP, the close line) done.
    until_blocking(server.closed, 30, "every connection closed")


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


def _profiled(server: _Server, tokens: list[str]) -> dict[str, float]:
    """One round under py-spy: µs of the server's CPU per life, by group (idle left out)."""
    with tempfile.TemporaryDirectory() as tmp:
        before = cpu_seconds(server.pid)
        t0 = time.monotonic()
        # py-spy records for a fixed time: as long as a round takes, guessed from a first one.
        _run(server, tokens[: len(tokens) // 4])
        seconds = 4 * (time.monotonic() - t0)
        profiler = Profiler(server.pid, seconds + 1.0, Path(tmp) / "profile.txt", rate=500)
        _run(server, tokens[len(tokens) // 4 :])
        cpu = cpu_seconds(server.pid) - before
        path = profiler.finish(seconds + 60.0)
        groups = group_profile(path) if path is not None else {}
    busy = sum(v for g, v in groups.items() if g != IDLE)
    if not busy:
        return {}
    # The CPU of both parts of the round, shared by the busy samples of the second (the larger).
    per = 1e6 * cpu / len(tokens) / busy
    return {g: groups[g] * per for g in GROUPS if g != IDLE and groups.get(g)}


def measure(
    n: int,
    rounds: int,
    daemon_env: dict[str, str],
    kind: str = "daemon",
    profile: bool = False,
    again: bool = False,
) -> dict[str, Any]:
    """
    @param again: every measured life presents one of the same C{n} tokens,
        each of which has logged in before (members reconnecting to a
        process that stayed up), instead of a token never seen.
    """
    with _server(kind, daemon_env) as server:
        now = time.time()
        # With an expiry: the baseline bridge (PyJWT) refuses a token without one.
        life = 3 * 3600
        count = 200 + n * (1 if again else rounds + 2)
        tokens = [make_token(now=now, uid=f"SC{i:06d}", lifetime=life) for i in range(count)]
        if again:
            # The same n tokens round after round; the warm-up logs each in once.
            tokens = tokens[:200] + tokens[200:] * (rounds + 2)
            _run(server, tokens[200 : 200 + n])
        _run(server, tokens[:200])
        result: dict[str, Any] = {
            "server": kind,
            "connections": n,
            "daemon_env": daemon_env,
            "again": again,
            "syscalls": None,
            "cpu_us": [],
        }
        used = 200
        strace = shutil.which("strace")
        if strace is not None:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "strace.txt"
                tracer = subprocess.Popen(
                    [strace, "-c", "-f", "-p", str(server.pid), "-o", str(out)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    time.sleep(1.0)  # attached
                    _run(server, tokens[used : used + n])
                finally:
                    stop_child(tracer, signal.SIGINT, 30)  # SIGINT: strace prints its table
                used += n
                counts = _strace_counts(out) if out.exists() else {}
                result["syscalls"] = {k: v / n for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
        for _ in range(rounds):
            before = cpu_seconds(server.pid)
            _run(server, tokens[used : used + n])
            used += n
            result["cpu_us"].append(1e6 * (cpu_seconds(server.pid) - before) / n)
        if profile and py_spy() is not None:
            result["profile_us"] = _profiled(server, tokens[used : used + n])
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--daemon-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--server", choices=SERVERS, default="daemon")
    parser.add_argument("--profile", action="store_true", help="one more round under py-spy, by group")
    parser.add_argument(
        "--again", action="store_true", help="each life presents a token that logged in before (a reconnect)"
    )
    args = parser.parse_args(argv)
    daemon_env = dict(kv.split("=", 1) for kv in args.daemon_env)
    r = measure(args.connections, args.rounds, daemon_env, args.server, args.profile, args.again)
    calls = r["syscalls"]
    if calls is None:
        print("syscalls: strace is not installed (apt-get install strace); CPU only")
    else:
        top = ", ".join(f"{name} {per:.1f}" for name, per in list(calls.items())[:10])
        print(f"system calls per connection life ({r['connections']:,} lives): {sum(calls.values()):.1f}: {top}")
    cpu = ", ".join(f"{x:.0f}" for x in r["cpu_us"])
    tokens = "tokens that logged in before" if r["again"] else "new tokens"
    rounds = f"{len(r['cpu_us'])} rounds of {r['connections']:,}, {tokens}"
    print(f"{r['server']} CPU per connection life, µs ({rounds}): {cpu}")
    if args.profile and "profile_us" not in r:
        print("profile: py-spy is not installed (pip install -r bench/requirements.txt)")
    for group, us in sorted(r.get("profile_us", {}).items(), key=lambda kv: -kv[1]):
        print(f"  {us:6.0f} µs  {group}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
