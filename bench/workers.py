"""
Load-generating processes and how the coordinator drives them.

Each worker is a separate process (spawned, so it shares nothing with the
coordinator) that reads commands from a pipe and answers each with one
dict. L{Worker} is the coordinator's handle; every wait on a worker is
bounded, and a worker that does not answer in time is killed.

 - client workers (L{client_main}): an asyncio loop with many L{BenchClient}s;
 - the publisher (L{publisher_main}): L{bench.amqpub.Publisher};
 - the floor (L{floor_main}): plain TCP sockets written with the same frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from multiprocessing.connection import Connection
from typing import Any

_ctx = multiprocessing.get_context("spawn")


def json_child(module: str, *args: str, timeout: float = 600.0) -> Any:
    """
    Run C{python -m module *args} in a process of its own (a measurement that
    runs a reactor, or wants a fresh interpreter) and return the JSON of the
    last line it printed; bounded by C{timeout}, and an error if it fails.
    """
    out = subprocess.run(
        [sys.executable, "-m", module, *args], check=True, capture_output=True, text=True, timeout=timeout
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def raise_nofile() -> int:
    """Soft open-file limit up to the hard one (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class WorkerError(Exception):
    """A worker failed a command, died, or did not answer in time."""


class Worker:
    """The coordinator's handle on one worker process."""

    def __init__(self, name: str, target: Callable[[Connection], None]) -> None:
        self.name = name
        self._conn, child = _ctx.Pipe()
        self.process = _ctx.Process(target=target, args=(child,), name=name, daemon=True)
        self.process.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def send(self, cmd: str, **args: Any) -> None:
        self._conn.send((cmd, args))

    def recv(self, timeout: float) -> dict[str, Any]:
        if not self._conn.poll(timeout):
            self.kill()
            raise WorkerError(f"{self.name}: no answer within {timeout:.0f} s")
        try:
            reply: dict[str, Any] = self._conn.recv()
        except EOFError:
            raise WorkerError(f"{self.name}: died (exit {self.process.exitcode})") from None
        if "error" in reply:
            raise WorkerError(f"{self.name}: {reply['error']}")
        return reply

    def call(self, cmd: str, wait: float = 60.0, **args: Any) -> dict[str, Any]:
        """Run C{cmd} in the worker; its answer, within C{wait} seconds."""
        self.send(cmd, **args)
        return self.recv(wait)

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self.send("exit")
            self.process.join(5)
        self.kill()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def call_all(
    workers: Sequence[Worker], cmd: str, wait: float, per_worker: Sequence[dict[str, Any]] | None = None, **args: Any
) -> list[dict[str, Any]]:
    """Send C{cmd} to every worker at once, then collect every answer (within C{wait} s overall)."""
    for i, w in enumerate(workers):
        w.send(cmd, **args, **(per_worker[i] if per_worker else {}))
    deadline = time.monotonic() + wait
    return [w.recv(max(0.1, deadline - time.monotonic())) for w in workers]


def _serve(conn: Connection, handlers: dict[str, Callable[..., dict[str, Any]]]) -> None:
    """A synchronous command loop (publisher, floor)."""
    while True:
        try:
            cmd, args = conn.recv()
        except EOFError:
            return
        if cmd == "exit":
            return
        try:
            conn.send(handlers[cmd](**args))
        except Exception as e:
            conn.send({"error": f"{cmd}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"})


# ---------------------------------------------------------------------------
# Client workers


def event_loop_name() -> str:
    """The asyncio loop the clients run on: uvloop when installed (cheaper per read), else the stdlib's."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_client(main: Coroutine[Any, Any, None]) -> None:
    """Run a client worker's C{main} with the most descriptors allowed, on uvloop when installed."""
    raise_nofile()
    if event_loop_name() == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def client_main(conn: Connection) -> None:
    run_client(_client_loop(conn))


async def _client_loop(conn: Connection) -> None:
    from bench.wsclient import ClientPool

    pool = ClientPool()
    tokens: dict[str, str] = {}

    async def prepare(key_pem: bytes, uids: list[str], lifetime: float) -> dict[str, Any]:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        from peatio_ws.testing import make_token

        key: Any = load_pem_private_key(key_pem, password=None)
        t = time.monotonic()
        for uid in uids:
            if uid not in tokens:
                tokens[uid] = make_token(key, uid=uid, lifetime=lifetime, email=f"{uid.lower()}@bench.invalid")
        return {"tokens": len(tokens), "seconds": time.monotonic() - t}

    async def open_(
        host: str,
        port: int,
        uids: list[str],
        concurrency: int,
        timeout: float,
        raw: bool = False,
        time_limit: float = 120.0,
    ) -> dict[str, Any]:
        specs = [(uid, None if raw else tokens[uid]) for uid in uids]
        return await pool.open(host, port, specs, concurrency, timeout, time.monotonic() + time_limit)

    async def open_public(
        host: str,
        port: int,
        path: str | None,
        stream: str,
        size: int,
        n: int,
        concurrency: int,
        timeout: float,
        time_limit: float = 120.0,
    ) -> dict[str, Any]:
        from bench.events import PublicLayout

        layout = PublicLayout(stream, size)
        return await pool.open_public(host, port, path, layout, n, concurrency, timeout, time.monotonic() + time_limit)

    async def replay_probe(host: str, port: int, path: str, stream: str, size: int, n: int, timeout: float) -> Any:
        from bench.events import PublicLayout

        return await pool.replay_probe(host, port, path, PublicLayout(stream, size), n, timeout)

    async def expect(counts: dict[str, int], latency: bool = False) -> dict[str, Any]:
        pool.expect(counts, latency)
        return {"expected": sum(c.expected for c in pool.clients)}

    async def wait(timeout: float, idle: float, latencies: bool = False) -> dict[str, Any]:
        await pool.wait(timeout, idle)
        return pool.report(latencies)

    async def report(latencies: bool = False) -> dict[str, Any]:
        return pool.report(latencies)

    async def close() -> dict[str, Any]:
        n = len(pool.clients)
        pool.close()
        await asyncio.sleep(0.2)
        return {"closed": n}

    handlers: dict[str, Callable[..., Any]] = {
        "prepare": prepare,
        "open": open_,
        "open_public": open_public,
        "replay_probe": replay_probe,
        "expect": expect,
        "wait": wait,
        "report": report,
        "close": close,
    }
    await serve_commands(conn, handlers, pool.close)


async def serve_commands(
    conn: Connection, handlers: dict[str, Callable[..., Any]], on_exit: Callable[[], None]
) -> None:
    """
    A client worker's command loop, on its asyncio loop: each C{(command,
    kwargs)} the coordinator sends is answered with what its handler returns,
    or C{{"error": ...}}; C{exit} or the pipe's end calls C{on_exit} and ends it.
    """
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()

    def readable() -> None:
        # uvloop made the pipe non-blocking when it started watching it: a message longer than one
        # read (a member list) would fail half-read. The coordinator writes each one whole at once.
        os.set_blocking(conn.fileno(), True)
        try:
            while conn.poll():
                commands.put_nowait(conn.recv())
        except EOFError:
            loop.remove_reader(conn.fileno())
            commands.put_nowait(None)

    loop.add_reader(conn.fileno(), readable)
    while True:
        item = await commands.get()
        if item is None or item[0] == "exit":
            on_exit()
            return
        cmd, args = item
        try:
            result = await handlers[cmd](**args)
        except Exception as e:
            result = {"error": f"{cmd}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"}
        # The same for a big answer (latency samples): it would fail half-written.
        os.set_blocking(conn.fileno(), True)
        conn.send(result)


# ---------------------------------------------------------------------------
# The publisher


def publisher_main(conn: Connection) -> None:
    from bench import amqpub

    state: dict[str, amqpub.Publisher] = {}

    def connect(host: str = "127.0.0.1", port: int = 5672) -> dict[str, Any]:
        state["pub"] = amqpub.Publisher(host, port)
        return {"ok": True}

    def burst(exchange: str, uids: list[str], n: int) -> dict[str, Any]:
        return amqpub.publish_burst(state["pub"], exchange, uids, n)

    def rate(exchange: str, uids: list[str], rate: float, duration: float) -> dict[str, Any]:
        return amqpub.publish_rate(state["pub"], exchange, uids, rate, duration)

    def delete_exchange(exchange: str) -> dict[str, Any]:
        state["pub"].delete_exchange(exchange)
        return {"ok": True}

    def bodies(exchange: str, routing_key: str, bodies: list[bytes]) -> dict[str, Any]:
        return amqpub.publish_bodies(state["pub"], exchange, routing_key, bodies)

    def public_burst(exchange: str, routing_key: str, seq0: int, n: int, tail: bytes, size: int) -> dict[str, Any]:
        return amqpub.publish_public_burst(state["pub"], exchange, routing_key, seq0, n, tail, size)

    def public_rate(
        exchange: str, routing_key: str, seq0: int, rate: float, duration: float, tail: bytes, size: int
    ) -> dict[str, Any]:
        return amqpub.publish_public_rate(state["pub"], exchange, routing_key, seq0, rate, duration, tail, size)

    def close() -> dict[str, Any]:
        pub = state.pop("pub", None)
        if pub is not None:
            pub.close()
        return {"ok": True}

    _serve(
        conn,
        {
            "connect": connect,
            "burst": burst,
            "rate": rate,
            "delete_exchange": delete_exchange,
            "bodies": bodies,
            "public_burst": public_burst,
            "public_rate": public_rate,
            "close": close,
        },
    )


def hotpath_main(conn: Connection) -> None:
    """The in-process microbenchmarks (L{bench.hotpath}), in a process of their own."""

    def run() -> dict[str, Any]:
        from bench import hotpath

        return {
            "delivery": hotpath.delivery(),
            "public": hotpath.public_fanout(),
            "connect": hotpath.connect(),
            "bindings": hotpath.bindings(),
        }

    _serve(conn, {"run": run})


def sink_main(conn: Connection) -> None:
    """The broker floor's consumer (L{bench.amqpub.SinkConsumer})."""
    from bench import amqpub

    state: dict[str, amqpub.SinkConsumer] = {}

    def connect(host: str = "127.0.0.1", port: int = 5672) -> dict[str, Any]:
        state["sink"] = amqpub.SinkConsumer(host, port)
        return {"ok": True}

    def setup(exchange: str, uids: list[str], prefetch: int = 2000) -> dict[str, Any]:
        state["sink"].setup(exchange, uids, prefetch)
        return {"ok": True}

    def drain(n: int) -> dict[str, Any]:
        return state["sink"].drain(n)

    def close() -> dict[str, Any]:
        sink = state.pop("sink", None)
        if sink is not None:
            sink.close()
        return {"ok": True}

    _serve(conn, {"connect": connect, "setup": setup, "drain": drain, "close": close})


# ---------------------------------------------------------------------------
# The floor: the same frames written to plain TCP sockets, nothing else


def floor_main(conn: Connection) -> None:
    from bench import events
    from peatio_ws.testing.frames import server_frame

    raise_nofile()
    state: dict[str, Any] = {}

    def listen() -> dict[str, Any]:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(4096)
        state["listener"] = s
        state["socks"] = []
        return {"port": s.getsockname()[1]}

    def accept(n: int, wait_s: float) -> dict[str, Any]:
        s: socket.socket = state["listener"]
        deadline = time.monotonic() + wait_s
        socks: list[socket.socket] = state["socks"]
        while len(socks) < n and time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                c, _ = s.accept()
            except TimeoutError:
                break
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.setblocking(True)
            socks.append(c)
        return {"accepted": len(socks)}

    def burst(n: int, members: int, rate: float = 0.0) -> dict[str, Any]:
        """
        Event i goes to connection i % members (one connection per member), one
        send each: as fast as possible, or at C{rate} per second.
        """
        socks: list[socket.socket] = state["socks"][:members]
        m = len(socks)
        seqs = [0] * m
        frame, message, body = server_frame, events.message, events.body
        t0 = time.monotonic()
        i = 0
        while i < n:
            due = n if not rate else min(n, int((time.monotonic() - t0) * rate) + 1)
            if due <= i:
                time.sleep(0.0005)
                continue
            for k in range(i, due):
                j = k % m
                seqs[j] += 1
                socks[j].sendall(frame(message(body(seqs[j], k))))
            i = due
        return {"t0": t0, "t1": time.monotonic(), "sent": n}

    def public(n: int, rate: float, stream: str, tail: bytes, size: int) -> dict[str, Any]:
        """
        C{n} public events of C{stream}, each pass writing every event due
        (all of them for a burst, C{rate} 0) to every connection in one send:
        what the daemon does per read, without the broker, Twisted or WebSocket
        bookkeeping. Each event is stamped with the time it was due.
        """
        from peatio_ws.framing import event_message, text_frame

        socks: list[socket.socket] = state["socks"]
        seq0 = state.get("public_seq", events.SEQ0) + 1
        t0 = time.monotonic()
        t0_ns = time.monotonic_ns()
        i = passes = 0
        while i < n:
            due = n if not rate else min(n, int((time.monotonic() - t0) * rate) + 1)
            if due <= i:
                time.sleep(0.0005)
                continue
            data = b"".join(
                text_frame(
                    event_message(
                        stream,
                        events.public_body(seq0 + k, tail, size, None if not rate else t0_ns + int(1e9 * k / rate)),
                    )
                )
                for k in range(i, due)
            )
            for c in socks:
                c.sendall(data)
            passes += 1
            i = due
        state["public_seq"] = seq0 + n - 1
        return {"t0": t0, "t1": time.monotonic(), "sent": n, "passes": passes, "max_late": 0.0}

    def close() -> dict[str, Any]:
        for c in state.get("socks", []):
            c.close()
        if "listener" in state:
            state["listener"].close()
        return {"ok": True}

    _serve(conn, {"listen": listen, "accept": accept, "burst": burst, "public": public, "close": close})


def worker_pids(workers: Sequence[Worker]) -> list[int]:
    return [w.pid for w in workers if w.process.is_alive()]


def getpid() -> int:
    return os.getpid()
