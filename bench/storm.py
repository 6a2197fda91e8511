"""
The reconnect storm (issue 18): N authenticated clients on one daemon, the
daemon restarted, every client back at once.

C{python -m bench.storm [--quick] [--sizes 1000,5000,15000] [--policies none,jitter] [--paces 0,500]}
(C{python -m bench storm} runs it with the other scenarios).

For each size N:

 1. N members, one connection each, pre-signed RS256 tokens, connected
    calmly (100 handshakes in flight per client process) to the real
    C{twistd -n peatio-ws} (L{tests.support.daemon.DaemonProcess}), every
    binding in place;
 2. a publisher sends private events round-robin over the N members at a
    steady rate, each stamped with the clock (L{bench.events});
 3. the daemon gets SIGTERM (its clients get 1001); once it has exited, a
    new one is started on the same port, with the same exchange and key
    (and C{WEBSOCKET_NEW_CONNECTIONS_PER_SECOND} as the run asks);
 4. every client reconnects by itself, by one of two policies:
    - C{none}: at once after the 1001, and a failed attempt (refused while
      no daemon listens, HTTP 503, reset) again after a fixed C{--retry}
      (0.5 s: no growth, no jitter);
    - C{jitter}: what docs/protocol.md section 6 and examples/client.js do:
      after a 1001 a delay uniform in 0-5 s; after a failed attempt full
      jitter, C{uniform(0, min(30 s, 1 s x 2^attempt))}, the attempt count
      growing (like a browser, it does not see a 503's Retry-After);
 5. until every member is authenticated again and bound, then 2 s more.

With C{--processes P} (P > 1) the node is P daemons sharing the port
(C{WEBSOCKET_REUSE_PORT}, docs/deploy.md section 8) and one of them is
restarted, as in a rolling restart: its clients (about N/P, "moved")
reconnect to the processes still listening, and to the new one once it
listens; each storm restarts the process with the most connections. With
C{--surge} the replacement is started (and healthy) first and the old one
stopped then, so its clients spread over every process (with one process,
a blue-green restart: two on the port for the moment, every client moves to
the replacement; docs/deploy.md section 8). The CPU of the
storm is then the new daemon's and the others' from the SIGTERM until all
are bound, per moved connection.

Figures per storm: the time from the SIGTERM, and from the moment the new
daemon listened (the first TCP connect the clients got), until every member
is authenticated again; attempts and why they failed (refused, HTTP 503,
accept-queue overflows from /proc/net/netstat); the events published
meanwhile: those published while the member was authenticated (before the
SIGTERM, or after its new "Authenticated."), lost? late (over 1 s)? their
latency p50/p99; how long RabbitMQ's flow control blocked the publisher;
the daemon CPU per connection life, from /proc of the daemon PIDs started
here: the calm connect's CPU per connection (upgrade, token, Redis check,
binding) plus the old daemon's CPU from its SIGTERM to its exit (exact,
from wait4) per connection; and, as an upper bound, all the new daemon's CPU
from its start until every member is bound, less its start-up cost
(measured once, with no client), per connection (retries, 503s, events and
pings included). With C{--profile}, py-spy samples the new daemon from its
first moments until all are bound; the samples are grouped (upgrade
parsing, JWT, Redis check, binding, logging, metrics, ...) and shared out
in microseconds per connection.

Results go to bench/results/<date>-storm.json. All processes started here
are stopped by their PID; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

from bench.events import MESSAGE_PREFIX, SEQ_AT, TS_GAP
from bench.scenarios import bound_gauge
from bench.workers import Worker, call_all, event_loop_name, raise_nofile, run_client, serve_commands

RESULTS = Path(__file__).resolve().parent / "results"

#: Client policies (see the module's docstring).
POLICIES = ("none", "jitter")
#: After a 1001, the delay docs/protocol.md recommends: uniform in 0..RESTART_SPREAD seconds.
RESTART_SPREAD = 5.0
#: Full-jitter backoff after a failed attempt (docs/protocol.md, examples/client.js).
BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
#: Latency past which an event counts as late (the issue's goal: p99 under 1 s).
LATE_NS = 1_000_000_000

_HANDSHAKE, _AUTH, _OPEN, _DONE = 0, 1, 2, 3


# ---------------------------------------------------------------------------
# The clients (in worker processes)


class Member:
    """One member and its one connection, across reconnects."""

    __slots__ = (
        "attempt_n",
        "attempts",
        "back_ns",
        "code",
        "conn",
        "down_ns",
        "index",
        "last_seq",
        "token",
        "uid",
        "up",
        "waiter",
    )

    def __init__(self, index: int, uid: str, token: str) -> None:
        self.index = index
        self.uid = uid
        self.token = token
        self.conn: StormConnection | None = None
        #: Authenticated right now.
        self.up = False
        #: In the storm: when the server closed its connection, with what code, and when it was authenticated again.
        self.down_ns = 0
        self.code = 0
        self.back_ns = 0
        #: Attempts in the storm, and the backoff's exponent.
        self.attempts = 0
        self.attempt_n = 0
        self.last_seq = 0
        #: The calm connect waits on this (True: authenticated).
        self.waiter: asyncio.Future[bool] | None = None


class StormPool:
    """The members of one client process, their reconnect policy, and the events they receive."""

    def __init__(self, host: str, port: int, attempt_timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.attempt_timeout = attempt_timeout
        self.members: list[Member] = []
        self.request = b""
        self.armed = False
        self.policy = "jitter"
        self.retry = 0.5
        self.rng = random.Random()
        self.failures: Counter[str] = Counter()
        self.back = 0
        self.attempt_times: array[int] = array("q")
        # Events received: member index, seq, publish time, receipt time.
        self.ev_member: array[int] = array("q")
        self.ev_seq: array[int] = array("q")
        self.ev_ts: array[int] = array("q")
        self.ev_recv: array[int] = array("q")
        self.order_errors = 0
        self.pending: set[asyncio.Task[None]] = set()
        #: In the storm: the first attempt that got a TCP connection (the new daemon listens).
        self.first_tcp_ns = 0
        self.stopped = False

    # -- attempts ----------------------------------------------------------------

    def start(self, m: Member) -> None:
        if self.stopped:
            return
        task = asyncio.get_running_loop().create_task(self._attempt(m))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _attempt(self, m: Member) -> None:
        m.attempts += 1
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: StormConnection(self, m), self.host, self.port), self.attempt_timeout
            )
        except ConnectionRefusedError:
            self.failed(m, "refused")
        except ConnectionResetError:
            self.failed(m, "reset at connect")
        except TimeoutError:
            self.failed(m, "connect timeout")
        except OSError as e:
            self.failed(m, f"OSError {e.errno}")

    def authenticated(self, m: Member, now: int) -> None:
        m.up = True
        if m.waiter is not None and not m.waiter.done():
            m.waiter.set_result(True)
        if self.armed and m.down_ns and not m.back_ns:
            m.back_ns = now
            self.back += 1

    def failed(self, m: Member, kind: str) -> None:
        """An attempt that did not get to authentication."""
        m.conn = None
        self.failures[kind] += 1
        if m.waiter is not None and not m.waiter.done():
            m.waiter.set_result(False)
            return
        if not self.armed:
            return
        if self.policy == "none":
            delay = self.retry
        else:
            delay = self.rng.uniform(0.0, min(BACKOFF_CAP, BACKOFF_BASE * 2**m.attempt_n))
            m.attempt_n += 1
        asyncio.get_running_loop().call_later(delay, self.start, m)

    def closed(self, m: Member, code: int, now: int) -> None:
        """The server closed (or lost) an authenticated connection."""
        m.conn = None
        m.up = False
        if not self.armed:
            return
        if not m.down_ns:
            m.down_ns = now
            m.code = code
        if self.policy == "none":
            delay = 0.0
        elif code == 1001:
            delay = self.rng.uniform(0.0, RESTART_SPREAD)
        else:
            delay = self.rng.uniform(0.0, min(BACKOFF_CAP, BACKOFF_BASE * 2**m.attempt_n))
            m.attempt_n += 1
        if m.back_ns:  # closed again after it was back: it must come back again
            self.back -= 1
            m.back_ns = 0
        asyncio.get_running_loop().call_later(delay, self.start, m)

    # -- commands ------------------------------------------------------------------

    async def open(self, concurrency: int, rounds: int = 3) -> dict[str, Any]:
        """The calm connect: every member once, C{concurrency} at a time (failures tried again, C{rounds} in all)."""
        self.request = _upgrade_request(self.host, self.port)
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(concurrency)
        t0 = time.monotonic()

        async def one(m: Member) -> None:
            async with sem:
                m.waiter = loop.create_future()
                self.start(m)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(m.waiter), self.attempt_timeout + 5)
                m.waiter = None

        for _ in range(rounds):
            todo = [m for m in self.members if not m.up]
            if not todo:
                break
            await asyncio.gather(*(one(m) for m in todo))
        return {
            "opened": sum(1 for m in self.members if m.up),
            "seconds": time.monotonic() - t0,
            "failures": dict(self.failures),
        }

    def arm(self, policy: str, retry: float, seed: int) -> None:
        """From now on a close brings the member back by C{policy}; storm figures start afresh."""
        self.policy = policy
        self.retry = retry
        self.rng = random.Random(seed)
        self.failures = Counter()
        self.back = 0
        self.first_tcp_ns = 0
        for m in self.members:
            m.down_ns = m.back_ns = m.code = m.attempts = m.attempt_n = m.last_seq = 0
        self.reset_events()
        self.armed = True

    def reset_events(self) -> None:
        for a in (self.ev_member, self.ev_seq, self.ev_ts, self.ev_recv):
            del a[:]
        self.order_errors = 0

    def status(self) -> dict[str, Any]:
        return {
            "members": len(self.members),
            "up": sum(1 for m in self.members if m.up),
            "down": sum(1 for m in self.members if m.down_ns),
            "back": self.back,
            "attempts": sum(m.attempts for m in self.members),
        }

    def report(self) -> dict[str, Any]:
        ms = self.members
        return {
            "index": array("q", [m.index for m in ms]).tobytes(),
            "down_ns": array("q", [m.down_ns for m in ms]).tobytes(),
            "back_ns": array("q", [m.back_ns for m in ms]).tobytes(),
            "codes": dict(Counter(m.code for m in ms if m.down_ns)),
            "attempts": array("q", [m.attempts for m in ms]).tobytes(),
            "failures": dict(self.failures),
            "ev_member": self.ev_member.tobytes(),
            "ev_seq": self.ev_seq.tobytes(),
            "ev_ts": self.ev_ts.tobytes(),
            "ev_recv": self.ev_recv.tobytes(),
            "order_errors": self.order_errors,
            "first_tcp_ns": self.first_tcp_ns,
        }

    def close(self) -> None:
        self.armed = False
        self.stopped = True
        for task in self.pending:
            task.cancel()
        for m in self.members:
            if m.conn is not None:
                m.conn.close()


def _upgrade_request(host: str, port: int) -> bytes:
    # One request for all: the key's only use is the accept hash (RFC 6455 4.1: "randomly selected" per
    # connection; the server cannot tell, and it spares the clients os.urandom per attempt).
    from peatio_ws.testing import frames

    return frames.upgrade_request("/", f"{host}:{port}")


class StormConnection(asyncio.Protocol):
    """One attempt of one member: upgrade, challenge, token, then events until the server closes."""

    def __init__(self, pool: StormPool, member: Member) -> None:
        self.pool = pool
        self.m = member
        self.transport: asyncio.Transport | None = None
        self.phase = _HANDSHAKE
        self.buf = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)
        self.m.conn = self
        pool = self.pool
        if pool.armed and self.m.down_ns and not pool.first_tcp_ns:
            pool.first_tcp_ns = time.monotonic_ns()
        t.write(pool.request)
        self.timer = asyncio.get_running_loop().call_later(self.pool.attempt_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self.timer = None
        if self.phase in (_HANDSHAKE, _AUTH):
            self._fail("timeout before auth")

    def _fail(self, kind: str) -> None:
        if self.phase == _DONE:
            return
        self.phase = _DONE
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.abort()
        self.pool.failed(self.m, kind)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.phase == _OPEN:
            self.phase = _DONE
            self.pool.closed(self.m, 1006, time.monotonic_ns())
        elif self.phase != _DONE:
            self._fail("lost before 101" if self.phase == _HANDSHAKE else "lost before auth")

    def data_received(self, data: bytes) -> None:
        from peatio_ws.testing.frames import CLOSE, PING, PONG, close_code, frame_at

        now = time.monotonic_ns()
        if self.buf:
            data = self.buf + data
            self.buf = b""
        pos = 0
        if self.phase == _HANDSHAKE:
            i = data.find(b"\r\n\r\n")
            if i < 0:
                self.buf = data
                return
            status = data[: data.find(b"\r\n")].split(b" ", 2)
            if len(status) < 2 or status[1] != b"101":
                self._fail(f"HTTP {status[1].decode('latin-1') if len(status) > 1 else '?'}")
                return
            pos = i + 4
            self.phase = _AUTH
        transport = self.transport
        assert transport is not None
        pool = self.pool
        m = self.m
        while (found := frame_at(data, pos)) is not None:
            first, start, end = found
            opcode = first & 0x0F
            if opcode == 1 and self.phase == _OPEN and data.startswith(MESSAGE_PREFIX, start):
                s = start + SEQ_AT
                e = data.index(b",", s, end)
                seq = int(data[s:e])
                t = e + TS_GAP
                ts = int(data[t : data.index(b",", t, end)])
                if seq <= m.last_seq:
                    pool.order_errors += 1
                m.last_seq = seq
                pool.ev_member.append(m.index)
                pool.ev_seq.append(seq)
                pool.ev_ts.append(ts)
                pool.ev_recv.append(now)
            elif opcode == 1 and self.phase == _AUTH:
                payload = data[start:end]
                if payload.startswith(b'{"challenge":'):
                    transport.write(_client_frame(b'{"jwt":"Bearer ' + m.token.encode() + b'"}'))
                elif payload.startswith(b'{"success":'):
                    self.phase = _OPEN
                    if self.timer is not None:
                        self.timer.cancel()
                        self.timer = None
                    pool.authenticated(m, now)
                else:
                    self._fail(f"auth reply {payload[:60].decode('utf-8', 'replace')}")
                    return
            elif opcode == PING:
                transport.write(_client_frame(data[start:end], PONG))
            elif opcode == CLOSE:
                code = close_code(data[start:end]) or 1005
                transport.write(_client_frame(data[start : start + 2], CLOSE))
                transport.close()
                if self.phase == _OPEN:
                    self.phase = _DONE
                    pool.closed(m, code, now)
                else:
                    self._fail(f"close {code} before auth")
                return
            pos = end
        if pos < len(data):
            self.buf = data[pos:]

    def close(self) -> None:
        """A clean close from our side (the run is over)."""
        if self.transport is not None and self.phase != _DONE:
            from peatio_ws.testing.frames import CLOSE, close_payload

            self.phase = _DONE
            self.transport.write(_client_frame(close_payload(1000), CLOSE))
            self.transport.close()


def _client_frame(payload: bytes, opcode: int = 1) -> bytes:
    from peatio_ws.testing.frames import ZERO_MASK, client_frame

    return client_frame(payload, opcode, mask=ZERO_MASK)


def storm_client_main(conn: Connection) -> None:
    """A client worker process (L{bench.workers.Worker} target)."""
    run_client(_client_loop(conn))


async def _client_loop(conn: Connection) -> None:
    state: dict[str, Any] = {}

    def pool() -> StormPool:
        return cast(StormPool, state["pool"])

    async def prepare(key_pem: bytes, members: list[tuple[int, str]], host: str, port: int) -> dict[str, Any]:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        from peatio_ws.testing import make_token

        key: Any = load_pem_private_key(key_pem, password=None)
        t = time.monotonic()
        p = StormPool(host, port)
        p.members = [
            Member(i, uid, make_token(key, uid=uid, lifetime=3 * 3600, email=f"{uid.lower()}@bench.invalid"))
            for i, uid in members
        ]
        state["pool"] = p
        return {"tokens": len(p.members), "seconds": time.monotonic() - t}

    async def open_(concurrency: int) -> dict[str, Any]:
        return await pool().open(concurrency)

    async def arm(policy: str, retry: float, seed: int) -> dict[str, Any]:
        pool().arm(policy, retry, seed)
        return {"ok": True}

    async def status() -> dict[str, Any]:
        return pool().status()

    async def report() -> dict[str, Any]:
        return pool().report()

    async def close() -> dict[str, Any]:
        p = state.get("pool")
        if p is not None:
            p.close()
        await asyncio.sleep(0.2)
        return {"ok": True}

    handlers: dict[str, Callable[..., Any]] = {
        "prepare": prepare,
        "open": open_,
        "arm": arm,
        "status": status,
        "report": report,
        "close": close,
    }
    def on_exit() -> None:
        p = state.get("pool")
        if p is not None:
            p.close()

    await serve_commands(conn, handlers, on_exit)


# ---------------------------------------------------------------------------
# The publisher (a worker process): a steady rate until told to stop


def storm_publisher_main(conn: Connection) -> None:
    from bench import amqpub, events

    pub: amqpub.Publisher | None = None
    while True:
        try:
            cmd, args = conn.recv()
        except EOFError:
            return
        if cmd == "exit":
            return
        try:
            if cmd == "connect":
                pub = amqpub.Publisher()
                # RabbitMQ's flow control blocks publishers for tens of seconds while it churns through
                # thousands of bindings: a stall to measure, not a failure (the coordinator waits longer).
                pub.sock.settimeout(600)
                reply: dict[str, Any] = {"ok": True}
            elif cmd == "run":
                assert pub is not None
                reply = _publish_until_stopped(conn, pub, events, **args)
            elif cmd == "close":
                if pub is not None:
                    pub.close()
                pub = None
                reply = {"ok": True}
            else:
                reply = {"error": f"unknown command {cmd}"}
        except Exception as e:
            reply = {"error": f"{cmd}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"}
        conn.send(reply)


def _publish_until_stopped(
    conn: Connection, pub: Any, events: Any, exchange: str, uids: list[str], rate: float, max_seconds: float
) -> dict[str, Any]:
    """
    Events round-robin over C{uids} (event i: member i % N, its seq i // N + 1)
    at C{rate} per second until a C{stop} arrives (or C{max_seconds}); the
    publish time of every event (the C{ts} it carries).
    """
    ex = exchange.encode()
    keys = [f"private.{uid}.{events.EVENT}".encode() for uid in uids]
    n = len(uids)
    stamps: array[int] = array("q")
    make, body = pub.message, events.body
    t0 = time.monotonic()
    sent = 0
    late = 0.0
    #: Time spent in sendall calls that blocked over 50 ms (RabbitMQ's flow control), and the longest.
    blocked = longest = 0.0
    while time.monotonic() - t0 < max_seconds:
        if conn.poll():
            cmd, _ = conn.recv()
            if cmd == "stop":
                break
        now = time.monotonic()
        due = int((now - t0) * rate) + 1
        if due > sent:
            late = max(late, (now - t0) - sent / rate)
            parts = []
            for i in range(sent, due):
                ts = time.monotonic_ns()
                stamps.append(ts)
                parts.append(make(ex, keys[i % n], body(i // n + 1, i, ts)))
            t = time.monotonic()
            pub.sock.sendall(b"".join(parts))
            took = time.monotonic() - t
            if took > 0.05:
                blocked += took
                longest = max(longest, took)
            sent = due
        else:
            time.sleep(max(0.0, min(0.002, t0 + sent / rate - now)))
    t1 = time.monotonic()
    pub.sync()
    return {
        "t0": t0,
        "t1": t1,
        "sent": sent,
        "max_late": late,
        "blocked_s": blocked,
        "longest_block_s": longest,
        "stamps": stamps.tobytes(),
    }


# ---------------------------------------------------------------------------
# The coordinator


#: With C{--pin}: the CPU the daemons have to themselves.
PINNED_CPU = 0


@dataclass
class StormOptions:
    sizes: tuple[int, ...] = (1000, 5000, 15_000)
    policies: tuple[str, ...] = POLICIES
    #: WEBSOCKET_NEW_CONNECTIONS_PER_SECOND of the restarted daemon, one storm each (0: off).
    paces: tuple[int, ...] = (0, 500)
    #: Private events per second, round-robin over the members, through each storm.
    rate: float = 2000.0
    #: Policy C{none}: the fixed delay before a failed attempt is tried again.
    retry: float = 0.5
    client_procs: int = 2
    concurrency: int = 100
    #: A storm not absorbed by then is cut short (its figures say how many came back).
    deadline: float = 120.0
    #: Publishing before the SIGTERM, and the steady window after all are bound.
    before: float = 1.0
    after: float = 2.0
    profile: bool = False
    verbose: bool = False
    daemon_env: dict[str, str] = field(default_factory=dict)
    #: Daemons sharing the port; the storm restarts one of them (a rolling restart's step).
    processes: int = 1
    #: With several: the replacement is started (and healthy) before the old one is stopped.
    surge: bool = False
    #: What is restarted: the daemon, or the baseline bridge (L{bench.baseline}; one process, no pacing).
    server: str = "daemon"
    #: The listening socket held by the bench and passed to each daemon, as a systemd .socket unit
    #: does (socket activation): it outlives the restart, so reconnects queue instead of being refused.
    held_socket: bool = False
    #: The daemons on CPU 0 alone and everything the bench starts (clients, publisher, itself) on
    #: the others, as when the clients are other machines. RabbitMQ and Redis are not the bench's:
    #: they stay where they are.
    pin: bool = False

    def quick(self) -> StormOptions:
        return dataclasses.replace(self, sizes=(1000,), daemon_env=dict(self.daemon_env))


def daemon_revision() -> str:
    """The checkout's commit, and whether peatio_ws/ differs from it (the daemon measured)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "?"
    return head + (" + uncommitted changes in peatio_ws/" if git("status", "--porcelain", "peatio_ws") else "")


def _ns() -> int:
    return time.monotonic_ns()


def _cpu(pid: int) -> float:
    from tests.support.probes import cpu_seconds

    return cpu_seconds(pid)


def _listen_overflows() -> tuple[int, int]:
    """TcpExt ListenOverflows and ListenDrops (machine-wide): connections the accept queue had no room for."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            d = dict(zip(names.split()[1:], (int(v) for v in values.split()[1:]), strict=False))
            return d.get("ListenOverflows", 0), d.get("ListenDrops", 0)
    return 0, 0


def percentiles_ms(values_ns: Sequence[int]) -> dict[str, float]:
    if not values_ns:
        return {"n": 0}
    v = sorted(values_ns)
    n = len(v)

    def at(q: float) -> float:
        return v[min(n - 1, int(q * (n - 1) + 0.5))] / 1e6

    return {"n": n, "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": v[-1] / 1e6}


def analyse_events(
    n_members: int,
    stamps: Sequence[int],
    down_ns: Sequence[int],
    back_ns: Sequence[int],
    received: Sequence[tuple[int, int, int, int]],
    t_term: int,
    t_all: int,
    t_bound: int,
    t_up: int = 0,
    bin_ns: int = 500_000_000,
) -> dict[str, Any]:
    """
    The events of one storm. Event i went to member i % N with seq i // N + 1,
    published at C{stamps[i]}. Owed: published before the SIGTERM (C{before}),
    or after the member was authenticated again (C{after}; those published
    before C{t_all}, while others were still reconnecting, are the storm's:
    C{during}). Published in between (the member had no authenticated
    connection): C{gap}, not owed (no replay: docs/protocol.md, section 5).
    C{received}: (member, seq, ts, receipt) per event frame. C{timeline}:
    per C{bin_ns} of publish time from C{t_up} (the new daemon ready), the
    owed events published, delivered, over 100 ms, and their worst latency.
    """
    n = len(stamps)
    got = bytearray(n)
    latency = [0] * n
    unknown = 0
    for member, seq, ts, recv in received:
        i = (seq - 1) * n_members + member
        if not 0 <= i < n or stamps[i] != ts:
            unknown += 1
            continue
        got[i] = 1
        latency[i] = recv - ts
    classes: dict[str, Any] = {}
    lat: dict[str, list[int]] = {"before": [], "after": [], "during": [], "gap": []}
    counts = {k: [0, 0] for k in lat}  # published, delivered
    lost_after_success: list[int] = []  # ns after the member's success
    lost_after_bound = 0
    bins: dict[int, list[int]] = {}
    for i in range(n):
        j = i % n_members
        ts = stamps[i]
        back = back_ns[j]
        keys: tuple[str, ...]
        if ts < t_term:
            keys = ("before",)
        elif back and ts >= back:
            keys = ("after", "during") if ts < t_all else ("after",)
        else:
            keys = ("gap",)
        for k in keys:
            counts[k][0] += 1
            if got[i]:
                counts[k][1] += 1
                lat[k].append(latency[i])
        if keys[0] != "gap":
            b = bins.setdefault((ts - t_up) // bin_ns, [0, 0, 0, 0])
            b[0] += 1
            if got[i]:
                b[1] += 1
                b[2] += latency[i] > 100_000_000
                b[3] = max(b[3], latency[i])
        if keys[0] == "after" and not got[i]:
            lost_after_success.append(ts - back)
            if ts >= t_bound:
                lost_after_bound += 1
    for k, (published, delivered) in counts.items():
        c: dict[str, Any] = {"published": published, "delivered": delivered, "latency": percentiles_ms(lat[k])}
        if k != "gap":
            c["lost"] = published - delivered
            c["late"] = sum(1 for x in lat[k] if x > LATE_NS)
        classes[k] = c
    lost_after_success.sort()
    classes["after"]["lost_after_bound"] = lost_after_bound
    classes["after"]["lost_ms_after_success"] = percentiles_ms(lost_after_success)
    classes["unknown_frames"] = {"n": unknown}
    classes["timeline"] = [
        {"from_up_s": k * bin_ns / 1e9, "owed": b[0], "delivered": b[1], "over_100ms": b[2], "max_ms": b[3] / 1e6}
        for k, b in sorted(bins.items())
    ]
    return classes


class Storms:
    """One run of the storm scenario: the key, the figures, the output."""

    def __init__(self, o: StormOptions, log: Callable[[str], None] | None = None) -> None:
        from peatio_ws.testing import generate_rsa_key, private_key_pem, public_key_b64

        self.o = o
        key = generate_rsa_key()
        self.key_pem = private_key_pem(key).encode()
        self.public_key = public_key_b64(key)
        self.results: list[dict[str, Any]] = []
        self.profiles: dict[str, Any] = {}
        self.notes: list[str] = []
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        #: With --held-socket, the listening socket of the storm under way (passed to each daemon).
        self.held: socket.socket | None = None
        self._log = log

    def log(self, text: str) -> None:
        if self._log is not None:
            self._log(text)
        else:
            print(f"[{time.strftime('%H:%M:%S')}] storm: {text}", flush=True)

    # -- what it starts ----------------------------------------------------------

    def _daemon(self, port: int, exchange: str, pace: int) -> Any:
        from tests.support.daemon import DaemonProcess

        if self.o.server == "baseline":
            from bench.baseline import BridgeProcess

            return BridgeProcess(port, exchange, self.public_key)

        env = {
            "JWT_PUBLIC_KEY": self.public_key,
            **self.o.daemon_env,
            "WEBSOCKET_NEW_CONNECTIONS_PER_SECOND": str(pace),
        }
        if self.o.processes > 1 or self.o.surge:
            env["WEBSOCKET_REUSE_PORT"] = "true"
        cpus = {PINNED_CPU} if self.o.pin else None
        return DaemonProcess(env=env, port=port, exchange=exchange, listening=self.held, cpus=cpus)

    @contextlib.contextmanager
    def _workers(self, n: int) -> Iterator[list[Worker]]:
        workers = [Worker(f"storm-clients-{i}", storm_client_main) for i in range(n)]
        try:
            yield workers
        finally:
            for w in workers:
                with contextlib.suppress(Exception):
                    w.call("close", wait=30)
                w.stop()

    @contextlib.contextmanager
    def _publisher(self) -> Iterator[Worker]:
        w = Worker("storm-publisher", storm_publisher_main)
        try:
            w.call("connect", wait=30)
            yield w
        finally:
            with contextlib.suppress(Exception):
                w.call("close", wait=10)
            w.stop()

    # -- the scenario ----------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        mask = os.sched_getaffinity(0)
        if self.o.pin:
            # The clients and the publisher are started by this process: they inherit it.
            os.sched_setaffinity(0, mask - {PINNED_CPU})
        try:
            for n in self.o.sizes:
                try:
                    self.size(n)
                except Exception as e:
                    first = str(e).splitlines()[0] if str(e) else ""
                    self.notes.append(f"storm N={n} failed: {type(e).__name__}: {first}")
                    self.log(f"N={n} FAILED:\n{traceback.format_exc()}")
        finally:
            os.sched_setaffinity(0, mask)
        return self.results

    def size(self, n: int) -> None:
        o = self.o
        raise_nofile()
        uids = [f"SR{n // 1000}K{i:05d}" for i in range(n)]
        exchange = f"peatio-ws-bench.{uuid.uuid4().hex[:12]}"
        from tests.support.daemon import free_port

        port = free_port()
        if o.held_socket:
            self.held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.held.bind(("127.0.0.1", port))
            self.held.listen(65535)
        try:
            self._size(n, uids, exchange, port)
        finally:
            if self.held is not None:
                self.held.close()
                self.held = None

    def _size(self, n: int, uids: list[str], exchange: str, port: int) -> None:
        o = self.o
        storms = [(policy, pace) for pace in o.paces for policy in o.policies]
        self.log(f"N={n:,}: {len(storms)} storms ({', '.join(f'{p}/pace {r}' for p, r in storms)})")
        with self._workers(o.client_procs) as workers, self._publisher() as pub:
            w = len(workers)
            t = time.monotonic()
            call_all(
                workers,
                "prepare",
                600,
                [{"members": [(i, uids[i]) for i in range(k, n, w)]} for k in range(w)],
                key_pem=self.key_pem,
                host="127.0.0.1",
                port=port,
            )
            self.log(f"N={n:,}: {n:,} tokens signed in {time.monotonic() - t:.1f} s")
            # Unpaced: the calm connect must get everyone in (pacing is the restarted daemon's).
            #: The daemons running now (L{storm} replaces the first): the ones to stop, whatever happens.
            current: list[Any] = []
            try:
                for _ in range(o.processes):
                    current.append(self._daemon(port, exchange, 0))
                    current[-1].start(timeout=60)
                daemon = current[0]
                startup_cpu = _cpu(daemon.pid)
                cpu0 = sum(_cpu(d.pid) for d in current)
                t0 = time.monotonic()
                replies = call_all(workers, "open", 600, concurrency=o.concurrency)
                opened = sum(r["opened"] for r in replies)
                connect_s = time.monotonic() - t0
                if opened < n:
                    raise RuntimeError(f"only {opened} of {n} connected: {[r['failures'] for r in replies]}")
                bound_s = self._wait_bound(current, n, 180)
                calm = {
                    "connections": n,
                    "seconds": connect_s,
                    "rate": n / connect_s,
                    "bound_s": bound_s,
                    "daemon_us_per_connection": 1e6 * (sum(_cpu(d.pid) for d in current) - cpu0) / n,
                    "startup_cpu_s": startup_cpu,
                }
                self.log(
                    f"N={n:,}: connected calmly in {connect_s:.1f} s ({n / connect_s:,.0f}/s), all bound "
                    f"{bound_s:.1f} s later; daemon {calm['daemon_us_per_connection']:.0f} µs CPU per connection "
                    f"(incl. binding); its start-up {startup_cpu:.2f} s CPU"
                )
                for k, (policy, pace) in enumerate(storms):
                    r = self.storm(n, uids, workers, pub, current, port, exchange, policy, pace, calm, k)
                    r["calm_connect"] = calm
                    self.results.append(r)
                    self.log(self.summary(r))
            finally:
                for d in current:
                    d.cleanup()

    def summary(self, r: dict[str, Any]) -> str:
        """One storm's figures, in a line."""
        return summary_line(r)

    def begin(
        self, n: int, uids: list[str], workers: list[Worker], pub: Worker, exchange: str, policy: str, k: int
    ) -> tuple[float, list[Any], tuple[float, float, float]]:
        """
        How busy the machine is (CPU % and its top processes, load average),
        then the clients armed with C{policy} and the events flowing for
        L{StormOptions.before} seconds: the start of every storm.
        """
        from bench.sysinfo import busy_now

        o = self.o
        busy, top = busy_now(1.0)
        load = os.getloadavg()
        call_all(workers, "arm", 30, policy=policy, retry=o.retry, seed=1000 * n + k)
        pub.send("run", exchange=exchange, uids=uids, rate=o.rate, max_seconds=o.deadline + 180)
        time.sleep(o.before)
        return busy, top, load

    def _bound(self, daemons: Sequence[Any]) -> float:
        """
        Members whose events reach the node: the bound gauges of C{daemons},
        summed. The baseline bridge has none, and needs none: it binds a
        member before it answers its login, so every member back is bound.
        """
        from tests.support.probes import metric

        if not all(getattr(d, "has_metrics", True) for d in daemons):
            return math.inf
        return sum(metric(d.metrics(), bound_gauge(self.o.daemon_env)) for d in daemons)

    def _wait_bound(self, daemons: Sequence[Any], n: int, timeout: float) -> float:
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            with contextlib.suppress(OSError):
                if self._bound(daemons) >= n:
                    return time.monotonic() - t
            time.sleep(0.1)
        raise RuntimeError(f"the {n} bindings not in place after {timeout:.0f} s")

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
        """
        One restart of C{current[0]} under C{n} clients (the others, if any,
        keep serving): its figures; C{current[0]} is then the new daemon.
        """
        from bench.sysinfo import CpuMeter, rabbitmq_pids
        from tests.support.probes import metric

        o = self.o
        revision = daemon_revision()
        startup_cpu = calm["startup_cpu_s"]
        label = f"N={n:,} {policy} pace={pace}"
        busy, top, load = self.begin(n, uids, workers, pub, exchange, policy, k)
        groups = {"clients": [x.pid for x in workers], "rabbitmq": rabbitmq_pids(), "publisher": [pub.pid]}
        meter = CpuMeter(groups).start()
        overflows0 = _listen_overflows()
        #: The old daemon's connections: the clients this storm moves.
        moved = n
        if len(current) > 1:
            # The process with the most connections goes: a rolling restart meets it sooner or later.
            counts = [0] * len(current)
            for i, d in enumerate(current):
                with contextlib.suppress(OSError):
                    counts[i] = int(metric(d.metrics(), "peatio_ws_connections"))
            busiest = max(range(len(current)), key=counts.__getitem__)
            current.insert(0, current.pop(busiest))
            moved = counts[busiest]
        old = current[0]
        others = current[1:]
        surged = None
        if o.surge:
            # The replacement first: it listens and consumes before the old one stops, so the
            # old one's clients spread over every process, the new one included (with one
            # process: a blue-green restart, everyone moves to the replacement).
            surged = self._daemon(port, exchange, pace)
            current.append(surged)  # in the list the caller stops, whatever happens next
            t_spawn = _ns()
            surged.start(timeout=60)
            t_surged = _ns()
        cpu_others0 = sum(_cpu(d.pid) for d in others)
        cpu_old0 = _cpu(old.pid)
        closing = (
            _SpyUntilStopped(old.pid, RESULTS / f"{self.stamp}-storm-{n}-{policy}-{pace}-close.txt")
            if o.profile
            else None
        )
        t_term = _ns()
        t_term_wall = time.time()
        assert old.process is not None
        old.process.send_signal(signal.SIGTERM)
        # The baseline bridge unbinds each member on its way out: with 15,000, over a minute.
        cpu_old = _reap(old, 60.0 if o.server == "daemon" else 300.0)
        old_status = old.process.returncode
        t_exit = _ns()
        # The replacement starts first, as systemd would start it at once: reading the old
        # log (45,000 lines at 15,000) and stopping its profiler wait until the storm is over.
        started: list[Any] = []
        starter = None
        if surged is not None:
            current.remove(surged)
            new = current[0] = surged
            started.append(t_surged)
        else:
            # The new daemon starts in a thread (its /health waits behind the storm), so that the
            # profiler can follow it from its first moments and the clients can be watched meanwhile.
            new = current[0] = self._daemon(port, exchange, pace)
            t_spawn = _ns()

            def start() -> None:
                try:
                    new.start(timeout=o.deadline)
                    started.append(_ns())
                except Exception as e:
                    started.append(e)

            starter = threading.Thread(target=start, name="storm-daemon-start", daemon=True)
            starter.start()
        try:
            profiler = None
            if o.profile:
                until = time.monotonic() + 10
                while new.process is None and time.monotonic() < until:
                    time.sleep(0.005)
                if new.process is not None:
                    profiler = _SpyUntilStopped(new.pid, RESULTS / f"{self.stamp}-storm-{n}-{policy}-{pace}.txt")
            # Until every member the old daemon had is back (the clients say), then until every
            # binding is in place (/metrics, read only then: a scrape costs the daemon CPU).
            deadline = time.monotonic() + o.deadline
            back = 0
            t_bound = 0
            #: Every 0.2 s: s after the SIGTERM, members back, the new daemon's CPU s, accept-queue overflows.
            timeline: list[tuple[float, int, float, int]] = []
            while time.monotonic() < deadline:
                if started and isinstance(started[0], Exception):
                    raise started[0]
                if back < moved:
                    st = call_all(workers, "status", 30)
                    back = sum(s["back"] for s in st)
                    timeline.append(
                        (
                            round((_ns() - t_term) / 1e9, 2),
                            back,
                            _cpu(new.pid) if new.process is not None else 0.0,
                            _listen_overflows()[0] - overflows0[0],
                        )
                    )
                    if back < moved:
                        time.sleep(0.2)
                    continue
                bindings = 0.0
                with contextlib.suppress(OSError):
                    bindings = self._bound([new, *others])
                if bindings >= n:
                    t_bound = _ns()
                    break
                # A scrape costs the daemon ~30 ms with 15,000 sockets (prometheus_client lists
                # /proc/self/fd): read twice a second, not twenty times, or the scrapes become
                # a measurable part of the storm's CPU (py-spy: ~25 µs a connection at 0.05 s).
                time.sleep(0.5)
            cpu_bound = _cpu(new.pid)
            cpu_others = sum(_cpu(d.pid) for d in others) - cpu_others0
            t_done = _ns()
        except BaseException:
            # The old daemon's profiler and log are otherwise dealt with below.
            if closing is not None:
                closing.stop()
            old.cleanup()
            raise
        profile = profiler.stop() if profiler is not None else None
        close_profile = closing.stop() if closing is not None else None
        old_problems = _log_problems(old)
        old_timeline = _log_timeline(old, t_term_wall)
        old.cleanup()
        if starter is not None:
            starter.join(max(1.0, deadline - time.monotonic()))
        t_up = started[0] if started and isinstance(started[0], int) else 0
        time.sleep(o.after)
        pub.send("stop")
        published = pub.recv(660)
        time.sleep(1.0)
        cpu = meter.stop()
        overflows1 = _listen_overflows()
        reports = call_all(workers, "report", 120)
        metrics_texts = []
        for d in (new, *others):
            with contextlib.suppress(OSError):
                metrics_texts.append(d.metrics())
        rejected = {
            reason: sum(metric(text, "peatio_ws_connections_rejected_total", reason=reason) for text in metrics_texts)
            for reason in ("pace", "handshake_limit", "per_ip_limit", "connection_limit")
        }
        # Per member (by global index): when it went down and came back, and its attempts.
        down = [0] * n
        backs = [0] * n
        attempts = [0] * n
        failures: Counter[str] = Counter()
        codes: Counter[int] = Counter()
        received: list[tuple[int, int, int, int]] = []
        order_errors = 0
        first_tcp = [rep["first_tcp_ns"] for rep in reports if rep["first_tcp_ns"]]
        for rep in reports:
            idx = array("q", rep["index"])
            for a, target in ((rep["down_ns"], down), (rep["back_ns"], backs), (rep["attempts"], attempts)):
                for i, v in zip(idx, array("q", a), strict=True):
                    target[i] = v
            failures.update(rep["failures"])
            codes.update({int(c): v for c, v in rep["codes"].items()})
            received.extend(
                zip(
                    array("q", rep["ev_member"]),
                    array("q", rep["ev_seq"]),
                    array("q", rep["ev_ts"]),
                    array("q", rep["ev_recv"]),
                    strict=True,
                )
            )
            order_errors += rep["order_errors"]
        came_back = sorted(b for b in backs if b)
        t_all = came_back[-1] if came_back else 0
        t_first = came_back[0] if came_back else 0
        #: When the new daemon was listening: the first TCP connect of an attempt to it (the clients').
        t_listen = min(first_tcp) if first_tcp else t_first
        stamps = array("q", published["stamps"])
        ev = analyse_events(
            n, stamps, down, backs, received, t_term, t_all or _ns(), t_bound or t_done, t_listen or t_spawn
        )
        cpu_open = cpu_bound - startup_cpu
        storm_s = (t_done - t_listen) / 1e9 if t_listen else 0.0
        back_ms = sorted(b - t_listen for b in came_back)

        def since(t: int, t0: int) -> float | None:
            return (t - t0) / 1e9 if t and t0 else None

        r: dict[str, Any] = {
            "n": n,
            "server": o.server,
            "processes": len(current),
            "moved": moved,
            "surge": surged is not None,
            "held_socket": o.held_socket,
            "pinned": o.pin,
            "revision": revision,
            "policy": policy,
            "pace": pace,
            "retry_s": o.retry if policy == "none" else None,
            "rate": o.rate,
            "load_before": [round(x, 2) for x in load],
            "busy_before_pct": busy,
            "busy_before_top": top,
            "came_back": len(came_back),
            "all_back": len(came_back) >= moved,
            "times_from_term_s": {
                "old_exited": since(t_exit, t_term),
                "new_spawned": since(t_spawn, t_term),
                "new_listening": since(t_listen, t_term),
                "first_back": since(t_first, t_term),
                "all_back": since(t_all, t_term),
                "all_bound": since(t_bound, t_term),
                "new_healthy": since(t_up, t_term),
            },
            "all_back_from_term_s": since(t_all, t_term),
            "all_back_from_listen_s": since(t_all, t_listen),
            "all_bound_from_listen_s": since(t_bound, t_listen),
            "back_from_listen_ms": percentiles_ms(back_ms),
            "codes": dict(codes),
            "attempts": sum(attempts),
            "attempts_per_member": sum(attempts) / max(1, moved),
            "failures": dict(failures),
            "rejected": rejected,
            "listen_overflows": overflows1[0] - overflows0[0],
            "listen_drops": overflows1[1] - overflows0[1],
            "order_errors": order_errors,
            "old_exit_status": old_status,
            "old_log_problems": old_problems,
            "new_log_problems": _log_problems(new),
            "old_log_timeline": old_timeline,
            "new_log_timeline": _log_timeline(new, t_term_wall),
            "events": ev,
            "published": published["sent"],
            "publisher_max_late_ms": 1000 * published["max_late"],
            "publisher_blocked_s": published["blocked_s"],
            "publisher_longest_block_s": published["longest_block_s"],
            "cpu": {
                "old_close_s": cpu_old - cpu_old0,
                "new_at_all_bound_s": cpu_bound,
                "startup_s": startup_cpu,
                "storm_s": storm_s,
                "busy_cores": cpu_open / storm_s if storm_s else None,
                "close_us": 1e6 * (cpu_old - cpu_old0) / n,
                "calm_connect_us": calm["daemon_us_per_connection"],
                "open_us_storm": 1e6 * cpu_open / n,
                "life_us_calm": calm["daemon_us_per_connection"] + 1e6 * (cpu_old - cpu_old0) / n,
                "life_us_storm": 1e6 * (cpu_open + cpu_old - cpu_old0) / n,
                # Several processes: what the storm cost the node (the new daemon, the others
                # and the old one's close) per moved connection; their events and pings included.
                "others_storm_s": cpu_others,
                "moved_life_us_storm": 1e6 * (cpu_open + cpu_others + cpu_old - cpu_old0) / max(1, moved),
            },
            "machine_cpu": cpu,
            "machine_cpu_others": meter.top_others,
            "timeline": timeline,
        }
        if profile is not None:
            from bench.profile import format_summary, summarize

            r["profile"] = {
                "path": str(profile),
                "groups": group_profile(profile),
                "cpu_s": cpu_open,
                "connections": n,
            }
            self.profiles[label] = r["profile"]
            text = format_profile(label, r["profile"]) + "\n" + format_summary(label, summarize(profile))
            r["profile"]["text"] = text
            if o.verbose:
                print(text, flush=True)
        if close_profile is not None:
            from bench.profile import format_summary, summarize

            close_label = f"{label}, the old daemon from its SIGTERM to its exit"
            r["close_profile"] = {
                "path": str(close_profile),
                "text": format_summary(close_label, summarize(close_profile)),
            }
            if o.verbose:
                print(r["close_profile"]["text"], flush=True)
        return r


def _log_problems(d: Any, keep: int = 5) -> dict[str, Any]:
    """Tracebacks, errors and warnings in a daemon's log: how many, and the first few lines."""
    try:
        lines = d.log_text().splitlines()
    except (OSError, ValueError):
        return {"lines": 0}
    marks = ("Traceback", "Unhandled", "[ERROR]", "error", "warn", "WARN")
    bad = [line for line in lines if any(m in line for m in marks)]
    return {"lines": len(lines), "problems": len(bad), "first": [line[:300] for line in bad[:keep]]}


#: Log lines that mark a daemon's start and stop (their first occurrence is kept, with its second).
_KEY_LINES = (
    "shutting down: closing",
    "did not close in time",
    "took longer than",
    "RabbitMQ: consumer stopped",
    "shutdown complete",
    "peatio-ws listening on",
    "RabbitMQ: connected and consuming",
    "RabbitMQ: left queue",
    "RabbitMQ: took over queue",
    "JWT_HANDOVER_FILE",
    "Redis:",
    " authenticated as ",
)


def _log_timeline(d: Any, t0_wall: float) -> list[str]:
    """
    The first line of each of L{_KEY_LINES} in a daemon's log (and the last
    "authenticated" one), each prefixed with its second relative to
    C{t0_wall} (the log's clock has whole seconds: +-1 s).
    """
    import datetime

    try:
        lines = d.log_text().splitlines()
    except (OSError, ValueError):
        return []
    found: dict[str, str] = {}
    last_auth = ""
    for line in lines:
        for key in _KEY_LINES:
            if key in line:
                found.setdefault(key, line)
                if key == " authenticated as ":
                    last_auth = line
    picked = sorted({*found.values(), *([last_auth] if last_auth else [])}, key=lines.index)
    out = []
    for line in picked:
        try:
            wall = datetime.datetime.strptime(line[:24], "%Y-%m-%dT%H:%M:%S%z").timestamp()
            out.append(f"{wall - int(t0_wall):+.0f} s: {line[25:][:220]}")
        except ValueError:
            out.append(line[:220])
    return out


def _reap(d: Any, timeout: float = 60.0) -> float:
    """
    Wait (bounded) for the daemon C{d} we sent SIGTERM to; its total CPU
    seconds (user + system, exact, from wait4's rusage). SIGKILL (by its
    PID) if it hangs.
    """
    proc: subprocess.Popen[bytes] = d.process
    pid = proc.pid
    deadline = time.monotonic() + timeout
    while True:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got == pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return float(usage.ru_utime + usage.ru_stime)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            raise RuntimeError(f"the daemon {pid} did not exit within {timeout:.0f} s of its SIGTERM; killed")
        time.sleep(0.005)


class _SpyUntilStopped:
    """py-spy record on one process until L{stop} (SIGINT to that py-spy, by its PID: it writes what it has)."""

    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        from bench.profile import py_spy

        self.out = out
        exe = py_spy()
        self.process: subprocess.Popen[bytes] | None = None
        if exe is None:
            return
        self.process = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> Path | None:
        from tests.support.daemon import stop_child

        if self.process is None:
            return None
        stop_child(self.process, signal.SIGINT, 30)
        return self.out if self.out.exists() else None


# ---------------------------------------------------------------------------
# The profile, grouped

#: Sample groups, by the functions and files in a sample's stack (see L{classify}).
IDLE = "idle (epoll wait)"
STARTUP = "start-up (twistd, imports, services)"
GROUPS = (
    IDLE,
    STARTUP,
    "event delivery (the events published meanwhile)",
    "monitoring requests (the bench's /health and /metrics)",
    "logging",
    "metrics",
    "JWT (RS256 verify, claims)",
    "Redis check",
    "binding (AMQP bind, txAMQP)",
    "keep-alive pings",
    "admission (HTTP 503 refusals)",
    "upgrade parsing (HTTP handshake)",
    "auth message (JSON, dialect, registry)",
    "WebSocket frames (challenge, token, replies, budgets)",
    "close / teardown",
    "accept, connectionMade",
    "socket writes buffered by Twisted",
    "reactor (dispatch, timers)",
    "other",
)

#: Stack-wide markers (a function name's substring), in order, once the innermost frame has not decided.
_MARKERS = (
    ("_ping_sweep", "keep-alive pings"),
    ("refuse_with", "admission (HTTP 503 refusals)"),
    ("failHandshake", "admission (HTTP 503 refusals)"),
    ("processHandshake", "upgrade parsing (HTTP handshake)"),
    ("StreamProtocol.onConnect", "upgrade parsing (HTTP handshake)"),
    ("connectionLost", "close / teardown"),
    ("_forget", "close / teardown"),
    ("onClose", "close / teardown"),
    ("dropConnection", "close / teardown"),
    ("_closeConnection", "close / teardown"),
    ("sendClose", "close / teardown"),
    ("_authenticate", "auth message (JSON, dialect, registry)"),
    ("Registry.authenticate", "auth message (JSON, dialect, registry)"),
    ("processData", "WebSocket frames (challenge, token, replies, budgets)"),
    ("consumeData", "WebSocket frames (challenge, token, replies, budgets)"),
    ("onOpen", "WebSocket frames (challenge, token, replies, budgets)"),
    ("onMessage", "WebSocket frames (challenge, token, replies, budgets)"),
    ("sendMessage", "WebSocket frames (challenge, token, replies, budgets)"),
    ("_dataReceived", "WebSocket frames (challenge, token, replies, budgets)"),
    ("connectionMade", "accept, connectionMade"),
    ("buildProtocol", "accept, connectionMade"),
    ("Port.doRead", "accept, connectionMade"),
    ("writeSomeData", "socket writes buffered by Twisted"),
    ("doWrite", "socket writes buffered by Twisted"),
)
_DELIVERY = (
    "_handle_delivery",
    "_read_done",
    "Registry.deliver",
    "Registry.fan_out",
    "Registry.end_batch",
    "DeliveryReader",
)


def _frame(frame: str) -> tuple[str, str]:
    """C{"Class.func (path/file.py:12)"} -> (C{"Class.func"}, the path from its package: C{"jwt/api_jws.py"})."""
    func, _, rest = frame.strip().partition(" (")
    path = rest.rsplit(":", 1)[0].rstrip(")")
    for marker in ("site-packages/", "/peatio_ws/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/peatio_ws/":
                path = "peatio_ws/" + path
            break
    return func, path


def classify(frames: Sequence[str]) -> str:
    """
    The group of one py-spy sample (its frames, outermost first): idle,
    start-up (outside the reactor's loop) and event delivery first; then its
    innermost frame that is logging, metrics, JWT, Redis or AMQP code, unless
    the connection's own code is further in (called back by Redis' or
    RabbitMQ's answer); then the first of L{_MARKERS} anywhere in the stack.
    """
    parsed = [_frame(f) for f in frames]
    if not parsed:
        return "other"
    funcs = [f for f, _ in parsed]
    if funcs[-1].endswith("doPoll"):
        return IDLE
    if not any(f.endswith("mainLoop") for f in funcs):
        return STARTUP
    stack = ";".join(funcs)
    if any(m in stack for m in _DELIVERY):
        return "event delivery (the events published meanwhile)"
    if "MonitoringChannel" in stack or "peatio_ws/http.py" in ";".join(p for _, p in parsed):
        return "monitoring requests (the bench's /health and /metrics)"
    for _func, path in reversed(parsed):
        if path.startswith("peatio_ws/websocket/"):
            # The connection's own code, called back when Redis or RabbitMQ answered
            # (the reply, the log line): the markers below say what it was doing.
            break
        if path.startswith(("twisted/logger/", "peatio_ws/logs.py")):
            return "logging"
        if path.startswith(("prometheus_client/", "peatio_ws/metrics.py")):
            return "metrics"
        if path.startswith(("jwt/", "cryptography/", "peatio_ws/auth.py", "peatio_ws/_pyjwt.py")):
            return "JWT (RS256 verify, claims)"
        if path.startswith(("txredisapi", "peatio_ws/redis/")):
            return "Redis check"
        if path.startswith(("txamqp/", "peatio_ws/amqp/")):
            return "binding (AMQP bind, txAMQP)"
    for marker, group in _MARKERS:
        if marker in stack:
            return group
    if parsed[-1][1].startswith(("twisted/internet/", "twisted/python/")):
        return "reactor (dispatch, timers)"
    return "other"


def group_profile(path: Path) -> dict[str, float]:
    """Samples per group (L{classify}) of a raw py-spy profile."""
    counts: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        counts[classify(frames)] += int(count)
    return {g: float(counts.get(g, 0)) for g in GROUPS}


def profile_rows(p: dict[str, Any]) -> list[tuple[str, float, float]]:
    """
    (group, % of the busy samples, µs per connection) from a storm's
    profile: the new daemon's CPU less its start-up (C{cpu_s}) shared by
    the busy groups but start-up.
    """
    groups = p["groups"]
    busy = sum(v for g, v in groups.items() if g not in (IDLE, STARTUP))
    if not busy:
        return []
    per = 1e6 * p["cpu_s"] / max(1, p["connections"])
    return [(g, 100 * v / busy, per * v / busy) for g, v in groups.items() if g not in (IDLE, STARTUP) and v]


def format_profile(label: str, p: dict[str, Any]) -> str:
    rows = profile_rows(p)
    lines = [
        f"profile of the new daemon, {label}: {p['cpu_s']:.2f} s CPU from its start until all were bound, less "
        f"its start-up; {p['connections']:,} connections; by group (% of the busy samples but start-up's, "
        f"≈ µs per connection; {int(p['groups'].get(STARTUP, 0))} start-up and {int(p['groups'].get(IDLE, 0))} "
        "idle samples left out):"
    ]
    lines += [f"  {pct:5.1f}%  {us:6.0f} µs  {g}" for g, pct, us in sorted(rows, key=lambda x: -x[1])]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Output


def _ms(p: dict[str, Any]) -> str:
    return "-" if not p.get("n") else f"{p['p50']:.0f} / {p['p99']:.0f} / {p['max']:.0f}"


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _node(r: dict[str, Any]) -> str:
    """What one storm restarted, for its line, its row and the bench table: "" for one daemon."""
    if r.get("server") == "baseline":
        return " (the baseline bridge)"
    marks = (("held_socket", "socket held"), ("pinned", "daemon on a CPU of its own"))
    notes = [text for key, text in marks if r.get(key)]
    if r.get("processes", 1) <= 1:
        if r.get("surge"):
            notes.insert(0, "blue-green: the new one started first")
        return f" ({'; '.join(notes)})" if notes else ""
    how = "the new one started first" if r.get("surge") else "one restarted in place"
    return (
        f" ({r['processes']} processes, {how}: {r['moved']:,} moved, "
        f"{r['cpu']['moved_life_us_storm']:.0f} µs of the node's CPU each{''.join('; ' + n for n in notes)})"
    )


def summary_line(r: dict[str, Any]) -> str:
    ev, c, t = r["events"], r["cpu"], r["times_from_term_s"]
    after, during = ev["after"], ev["during"]
    back = (
        f"all {r.get('moved', r['n']):,} back {_s(r['all_back_from_term_s'])} s after the SIGTERM, "
        f"{_s(r['all_back_from_listen_s'])} s after the new daemon listened (at {_s(t['new_listening'])} s; "
        f"old one gone at {_s(t['old_exited'])} s, new one healthy at {_s(t['new_healthy'])} s)"
        if r["all_back"]
        else f"only {r['came_back']:,} of {r.get('moved', r['n']):,} back"
    )
    rejected = {k: int(v) for k, v in r["rejected"].items() if v}
    return (
        f"N={r['n']:,}{_node(r)} {r['policy']} pace={r['pace']}: {back}; "
        f"{r['attempts_per_member']:.2f} attempts per member, "
        f"failures {r['failures']}, rejected {rejected}, accept-queue overflows {r['listen_overflows']}; "
        f"events owed after re-auth {after['published']:,}: lost {after['lost']} ({after['lost_after_bound']} after "
        f"all were bound; lost ones published up to {after['lost_ms_after_success'].get('max', 0):.0f} ms after the "
        f"member's success), late {after['late']}, p50/p99/max {_ms(after['latency'])} ms; during the storm "
        f"{during['published']:,}, p50/p99/max {_ms(during['latency'])} ms; published before the SIGTERM lost "
        f"{ev['before']['lost']}; publisher blocked by RabbitMQ {r['publisher_blocked_s']:.1f} s (longest "
        f"{r['publisher_longest_block_s']:.1f} s); daemon CPU per connection life {c['life_us_calm']:.0f} µs "
        f"(calm connect {c['calm_connect_us']:.0f} + close {c['close_us']:.0f}), {c['life_us_storm']:.0f} in the storm "
        f"(all its CPU, retries and events included; the daemon {c['busy_cores'] or 0:.2f} cores busy); load "
        f"{r['load_before']}"
    )


def render(results: Sequence[dict[str, Any]], info: dict[str, str] | None = None) -> str:
    """The storms as a Markdown table."""
    lines = []
    if info:
        lines.append(
            f"peatio-ws reconnect storms, {info.get('date', '?')}: {info.get('nproc', '?')} x {info.get('cpu', '?')}, "
            f"Linux {info.get('kernel', '?')}; Python {info.get('python', '?')}, Twisted {info.get('twisted', '?')}, "
            f"Autobahn {info.get('autobahn', '?')}; RabbitMQ {info.get('rabbitmq', '?')}; clients "
            f"{info.get('client_loop', '?')}; peatio-ws {info.get('revision', '?')}"
        )
        lines.append("")
    lines += [
        "| N | backoff | pacing /s | new daemon listening (s after SIGTERM) | all re-authenticated: s after "
        "SIGTERM / after listening | attempts per member; HTTP 503s; accept-queue overflows | events owed after "
        "re-auth: lost (after all bound) / late > 1 s / p50, p99, max ms | of them during the storm: p99 ms | "
        "publisher blocked by RabbitMQ, s (longest) | daemon CPU µs per connection life: calm connect + close / "
        "all of the storm's | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ev, c = r["events"], r["cpu"]
        a, d = ev["after"], ev["during"]
        back = (
            f"{_s(r['all_back_from_term_s'])} / {_s(r['all_back_from_listen_s'])}"
            if r["all_back"]
            else f"{r['came_back']:,} of {r.get('moved', r['n']):,}"
        )
        http503 = int(r["failures"].get("HTTP 503", 0))
        dp99 = f"{d['latency']['p99']:.0f}" if d["latency"].get("n") else "-"
        n = f"{r['n']:,}{_node(r)}"
        lines.append(
            f"| {n} | {r['policy']} | {r['pace'] or 'off'} | {_s(r['times_from_term_s']['new_listening'])} | "
            f"{back} | {r['attempts_per_member']:.2f}; {http503:,}; {r['listen_overflows']:,} | "
            f"{a['lost']:,} ({a['lost_after_bound']}) / {a['late']:,} / {_ms(a['latency'])} | {dp99} | "
            f"{r['publisher_blocked_s']:.1f} ({r['publisher_longest_block_s']:.1f}) | "
            f"{c['life_us_calm']:.0f} / {c['life_us_storm']:.0f} | {r['load_before'][0]:.1f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.storm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="1,000 clients only")
    p.add_argument("--sizes", help="clients per storm, comma-separated (default 1000,5000,15000)")
    p.add_argument("--policies", help="client policies, comma-separated: none, jitter (default both)")
    p.add_argument("--paces", help="WEBSOCKET_NEW_CONNECTIONS_PER_SECOND values, comma-separated (default 0,500)")
    p.add_argument("--rate", type=float, help="private events per second through each storm (default 2000)")
    p.add_argument("--retry", type=float, help="policy none: seconds before a failed attempt is retried (0.5)")
    p.add_argument("--clients", type=int, help="client processes (default 2)")
    p.add_argument("--processes", type=int, help="daemons sharing the port; one is restarted (default 1)")
    p.add_argument(
        "--surge",
        action="store_true",
        help="start the replacement (SO_REUSEPORT), then stop the old; with one process a blue-green restart",
    )
    p.add_argument("--baseline", action="store_true", help="restart the baseline bridge instead (one process)")
    p.add_argument(
        "--pin",
        action="store_true",
        help=f"the daemons on CPU {PINNED_CPU} alone, the bench's clients and publisher on the others",
    )
    p.add_argument("--profile", action="store_true", help="py-spy profile of each new daemon, grouped")
    p.add_argument(
        "--held-socket",
        action="store_true",
        help="hold the listening socket and pass it to each daemon, as systemd socket activation does",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--daemon-env", action="append", default=[], metavar="KEY=VALUE")
    return p


def options_from(args: argparse.Namespace) -> StormOptions:
    o = StormOptions(profile=args.profile, verbose=args.verbose)
    if args.quick:
        o = o.quick()
    if args.sizes:
        o.sizes = tuple(int(x) for x in args.sizes.split(","))
    if args.policies:
        o.policies = tuple(x for x in args.policies.split(","))
        bad = set(o.policies) - set(POLICIES)
        if bad:
            raise SystemExit(f"unknown policy {', '.join(sorted(bad))} (choose from {', '.join(POLICIES)})")
    if args.paces:
        o.paces = tuple(int(x) for x in args.paces.split(","))
    if args.rate:
        o.rate = args.rate
    if args.retry is not None:
        o.retry = args.retry
    if args.clients:
        o.client_procs = args.clients
    if args.processes:
        o.processes = args.processes
    o.surge = args.surge
    o.held_socket = args.held_socket
    o.pin = args.pin
    if args.baseline:
        if o.processes > 1:
            raise SystemExit("--baseline runs one bridge: not with --processes")
        o.server = "baseline"
        o.paces = (0,)
    cpus = os.sched_getaffinity(0)
    if o.pin and (o.server != "daemon" or PINNED_CPU not in cpus or len(cpus) < 2):
        raise SystemExit(f"--pin: the daemon only, with CPU {PINNED_CPU} and another one available")
    if o.held_socket and (o.processes > 1 or o.surge or o.server != "daemon"):
        raise SystemExit("--held-socket: one daemon restarted in place only, not the baseline bridge")
    if o.surge and o.server != "daemon":
        raise SystemExit("--surge: the daemon only, not the baseline bridge")
    o.daemon_env.update(daemon_env(args.daemon_env))
    return o


def daemon_env(items: Sequence[str]) -> dict[str, str]:
    """The daemon's environment from C{--daemon-env KEY=VALUE} options."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--daemon-env wants KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def save(storms: Storms, info: dict[str, str]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{storms.stamp}-storm.json"
    data = {"machine": info, "options": storms.o.__dict__, "results": storms.results, "notes": storms.notes}
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    from bench.sysinfo import machine

    args = build_parser().parse_args(argv)
    o = options_from(args)
    info = machine()
    info["client_loop"] = event_loop_name()
    info["revision"] = daemon_revision()
    storms = Storms(o)
    storms.log("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    storms.run()
    path = save(storms, info)
    print()
    print(render(storms.results, info))
    for r in storms.results:
        for key in ("profile", "close_profile"):
            if key in r:
                print()
                print(r[key]["text"])
    return end(storms.notes, path)


def end(notes: Sequence[str], path: Path) -> int:
    """Print what went wrong and where the results are; the exit status (1 if anything went wrong)."""
    for note in notes:
        print(f"* {note}")
    print(f"\nresults: {path}")
    return 1 if notes else 0


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------------------
# In `python -m bench` (bench.cli): one step, and its rows in the table


def bench_step(bench: Any, quick: bool = False, sizes: Sequence[int] | None = None) -> None:
    """The storm scenario as a step of L{bench.cli}: figures in C{bench.results["storm"]}."""
    o = StormOptions(profile=bench.o.profile, verbose=bench.o.verbose, daemon_env=dict(bench.o.daemon_env))
    if quick:
        o = o.quick()
    if sizes:
        o.sizes = tuple(sizes)
    # Then a rolling restart's step at the largest size: two processes on the port, the
    # replacement started first (docs/deploy.md, "Rolling restarts").
    rolling = dataclasses.replace(o, sizes=(max(o.sizes),), paces=(0,), processes=2, surge=True, profile=False)
    # And the baseline bridge, at the smallest size only: at 15,000 one storm of it takes over
    # four minutes (`python -m bench.storm --baseline --sizes 15000` measures it).
    bridge = dataclasses.replace(
        o, sizes=(min(o.sizes),), policies=("none",), paces=(0,), server="baseline", profile=False
    )
    results: list[dict[str, Any]] = []
    notes: list[str] = []
    try:
        for opts in (o, rolling, bridge):
            storms = Storms(opts, log=lambda text: bench.log(f"storm: {text}"))
            storms.stamp = bench.stamp
            try:
                storms.run()
            finally:
                results.extend(storms.results)
                notes.extend(storms.notes)
                for r in storms.results:
                    if "profile" in r:
                        bench.profiles[f"storm {r['n']} {r['policy']} {r['pace']}"] = r["profile"]["text"]
                    if "close_profile" in r:
                        bench.profiles[f"storm {r['n']} {r['policy']} {r['pace']} close"] = r["close_profile"]["text"]
    finally:
        bench.results["storm"] = results
        bench.notes.extend(notes)
    if notes:
        raise RuntimeError("; ".join(notes))


def rows(results: Sequence[dict[str, Any]]) -> list[tuple[str, str, str, bool | None, str]]:
    """One row of bench.cli's table per storm: (measure, goal, value, met, notes)."""
    out = []
    for r in results:
        ev, c = r["events"], r["cpu"]
        a = ev["after"]
        p99 = a["latency"].get("p99")
        after_listen = r["all_back_from_listen_s"]
        big = r["n"] >= 15_000
        met = (
            r["all_back"]
            and after_listen is not None
            and (after_listen < 5 or not big)
            and not a["lost"]
            and (p99 is None or p99 < 1000)
            and c["life_us_calm"] <= 300
        )
        if r.get("server") == "baseline":
            met = None  # the goals are the daemon's; the bridge's row is for comparison
        out.append(
            (
                f"12. storm: {r['n']:,} clients{_node(r)}, backoff {r['policy']}, pacing {r['pace'] or 'off'}: "
                "all back, s after the new daemon listened (after SIGTERM); events owed after re-auth: lost / "
                "late > 1 s / p99 ms; daemon CPU µs per connection life: calm connect + close (all of the storm's)",
                ("< 5 s; " if big else "") + "none lost, p99 < 1 s; <= 300 µs",
                f"{_s(after_listen)} ({_s(r['all_back_from_term_s'])}); {a['lost']:,} / {a['late']:,} / "
                f"{'-' if p99 is None else f'{p99:,.0f}'}; {c['life_us_calm']:,.0f} ({c['life_us_storm']:,.0f})",
                met,
                f"{r['came_back']:,}/{r.get('moved', r['n']):,} back; "
                f"{r['attempts_per_member']:.2f} attempts per member, "
                f"{int(r['failures'].get('HTTP 503', 0)):,} HTTP 503, {r['listen_overflows']:,} accept-queue "
                f"overflows; lost after all were bound: {a['lost_after_bound']}; close {c['close_us']:,.0f} µs of "
                f"the CPU; publisher blocked by RabbitMQ {r['publisher_blocked_s']:.1f} s; load "
                f"{r['load_before'][0]:.1f}",
            )
        )
    return out
