"""
The load-generating WebSocket client: plain asyncio, written for this
benchmark (not Autobahn, so the client does not measure the server's own
library), cheap per message.

One L{BenchClient} per connection: HTTP upgrade, challenge, C{{"jwt":"Bearer
…"}}, then it counts the event frames it receives, checks each carries the
next sequence number of its member, and (when asked) records publish ->
receipt latency. Framing is L{peatio_ws.testing.frames}, the codec of every
test client; client frames are masked with its zero key (RFC 6455 allows any
key; the server unmasks the same way whatever the key is), so the client
spends nothing on XOR. Pings are answered, as a browser does.

L{client_worker} runs many clients in one process, driven by the coordinator
through a pipe (see L{bench.workers}).
"""

from __future__ import annotations

import asyncio
import time
from array import array
from typing import Any, cast

from bench.events import SEQ_AT, TS_GAP
from peatio_ws.testing import frames
from peatio_ws.testing.frames import CLOSE, NO_STATUS, PING, PONG, TEXT, ZERO_MASK, close_code, frame_at

_monotonic_ns = time.monotonic_ns

HANDSHAKE, AUTH, OPEN, CLOSED = 0, 1, 2, 3
#: Receipts slower than this are also kept with their time (to see when they happen).
SLOW_NS = 2_000_000


def client_frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """A final client frame, masked with the zero key."""
    return frames.client_frame(payload, opcode, mask=ZERO_MASK)


class ClientError(Exception):
    """The server refused the upgrade or the token, or the connection ended early."""


class BenchClient(asyncio.Protocol):
    """One connection: authenticates, then counts and checks event frames."""

    def __init__(self, host: str, port: int, token: str | None, latencies: array[int] | None) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.transport: asyncio.Transport | None = None
        self.state = HANDSHAKE if token is not None else OPEN
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.latencies = latencies
        self.reset(0)
        self.close_code: int | None = None
        self.other = 0

    def reset(self, expected: int) -> None:
        """Start counting afresh: C{expected} events, seq 1 first."""
        self.expected = expected
        self.count = 0
        self.next_seq = 1
        self.order_errors = 0
        self.first = 0
        self.last = 0
        self.reads = 0
        self.slow: list[tuple[int, int]] = []

    # -- asyncio ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports do not subclass asyncio.Transport; they behave as one.)
        self.transport = cast(asyncio.Transport, transport)
        if self.token is None:  # raw TCP (the floor): frames from the first byte
            self.ready.set_result(None)
            return
        self.transport.write(frames.upgrade_request("/", f"{self.host}:{self.port}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        if not self.ready.done():
            self.ready.set_exception(ClientError(f"connection lost before authentication ({exc or 'closed'})"))

    def data_received(self, data: bytes) -> None:
        now = _monotonic_ns()
        if self.buf:
            data = self.buf + data
            self.buf = b""
        pos = 0
        if self.state == HANDSHAKE:
            i = data.find(b"\r\n\r\n")
            if i < 0:
                self.buf = data
                return
            status = data[: data.find(b"\r\n")]
            if b" 101 " not in status:
                self._fail(f"upgrade refused: {status.decode('latin-1')}")
                return
            pos = i + 4
            self.state = AUTH
        latencies = self.latencies
        self.reads += 1
        while (found := frame_at(data, pos)) is not None:
            first, start, end = found
            if first == 0x81 and self.state == OPEN and data[start + 2] == 0x6F:  # {"o...: an event
                s = start + SEQ_AT
                e = data.index(b",", s, end)
                seq = int(data[s:e])
                if seq != self.next_seq:
                    self.order_errors += 1
                self.next_seq = seq + 1
                self.count += 1
                if not self.first:
                    self.first = now
                self.last = now
                if latencies is not None:
                    t = e + TS_GAP
                    lat = now - int(data[t : data.index(b",", t, end)])
                    latencies.append(lat)
                    if lat > SLOW_NS and len(self.slow) < 1000:
                        self.slow.append((now, lat))
            else:
                self._control(first & 0x0F, data[start:end])
            pos = end
        if pos < len(data):
            self.buf = data[pos:]

    # -- everything but events -------------------------------------------------------

    def _control(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if opcode == PING:
            transport.write(client_frame(payload, PONG))
        elif opcode == CLOSE:
            code = close_code(payload)
            self.close_code = NO_STATUS if code is None else code
            if self.state != CLOSED:
                transport.write(client_frame(payload[:2], CLOSE))
            self.state = CLOSED
            transport.close()
            if not self.ready.done():
                self.ready.set_exception(ClientError(f"closed with {self.close_code} before authentication"))
        elif opcode == TEXT and self.state == AUTH:
            if payload.startswith(b'{"challenge":'):
                assert self.token is not None
                transport.write(client_frame(b'{"jwt":"Bearer ' + self.token.encode() + b'"}'))
            elif payload.startswith(b'{"success":'):
                self.state = OPEN
                if not self.ready.done():
                    self.ready.set_result(None)
            else:
                self._fail(f"auth reply {payload[:80]!r}")
        elif opcode != PONG:
            self.other += 1

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ClientError(why))
        if self.transport is not None:
            self.transport.abort()
        self.state = CLOSED

    def close(self) -> None:
        """A clean close: our close frame, then the server closes TCP."""
        if self.transport is not None and self.state != CLOSED:
            self.transport.write(client_frame(frames.close_payload(1000), CLOSE))
            self.state = CLOSED
        # Do not wait for the server: the process is about to exit.
        if self.transport is not None:
            self.transport.close()


async def connect(host: str, port: int, token: str | None, latencies: array[int] | None, timeout: float) -> BenchClient:
    """One authenticated connection (or raw TCP when C{token} is None)."""
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: BenchClient(host, port, token, latencies), host, port), timeout
    )
    try:
        await asyncio.wait_for(asyncio.shield(proto.ready), timeout)
    except BaseException:
        if proto.transport is not None:
            proto.transport.abort()
        raise
    return proto


class ClientPool:
    """The connections of one worker process and their figures."""

    def __init__(self) -> None:
        self.clients: list[BenchClient] = []
        self.uids: list[str] = []
        self.latencies: array[int] = array("q")
        self.record_latency = False

    async def open(
        self,
        host: str,
        port: int,
        specs: list[tuple[str, str | None]],
        concurrency: int,
        timeout: float,
        deadline: float,
    ) -> dict[str, Any]:
        """Open and authenticate one connection per (uid, token); report timings and failures."""
        sem = asyncio.Semaphore(concurrency)
        errors: dict[str, int] = {}
        times = array("d")
        opened: list[tuple[str, BenchClient]] = []

        async def one(uid: str, token: str | None) -> None:
            async with sem:
                if time.monotonic() > deadline:
                    errors["deadline"] = errors.get("deadline", 0) + 1
                    return
                t = time.monotonic()
                try:
                    proto = await connect(host, port, token, self.latencies, timeout)
                except (TimeoutError, OSError, ClientError) as e:
                    key = type(e).__name__ + (f": {e}" if isinstance(e, ClientError) else "")
                    errors[key[:120]] = errors.get(key[:120], 0) + 1
                    return
                times.append(time.monotonic() - t)
                opened.append((uid, proto))

        t0 = time.monotonic()
        await asyncio.gather(*(one(uid, token) for uid, token in specs))
        t1 = time.monotonic()
        for uid, proto in opened:
            self.uids.append(uid)
            self.clients.append(proto)
        return {"opened": len(opened), "errors": errors, "t0": t0, "t1": t1, "times": list(times)}

    def expect(self, counts: dict[str, int], latency: bool) -> None:
        """Reset counting; each connection of member U expects C{counts[U]} events."""
        del self.latencies[:]
        self.record_latency = latency
        lat = self.latencies if latency else None
        for uid, c in zip(self.uids, self.clients, strict=True):
            c.reset(counts.get(uid, 0))
            c.latencies = lat

    def done(self) -> bool:
        return all(c.count >= c.expected or c.state == CLOSED for c in self.clients)

    def received(self) -> int:
        return sum(c.count for c in self.clients)

    async def wait(self, timeout: float, idle: float) -> None:
        """Until every connection has what it expects, nothing arrived for C{idle} s, or C{timeout}."""
        deadline = time.monotonic() + timeout
        last_total = -1
        last_change = time.monotonic()
        while time.monotonic() < deadline and not self.done():
            await asyncio.sleep(0.05)
            total = self.received()
            if total != last_total:
                last_total, last_change = total, time.monotonic()
            elif time.monotonic() - last_change > idle:
                break

    def report(self, with_latencies: bool) -> dict[str, Any]:
        clients = self.clients
        firsts = [c.first for c in clients if c.first]
        lasts = [c.last for c in clients if c.last]
        return {
            "connections": len(clients),
            "open": sum(1 for c in clients if c.state == OPEN),
            "received": sum(c.count for c in clients),
            "reads": sum(c.reads for c in clients),
            "expected": sum(c.expected for c in clients),
            "missing": sum(max(0, c.expected - c.count) for c in clients),
            "extra": sum(max(0, c.count - c.expected) for c in clients),
            "complete": sum(1 for c in clients if c.count == c.expected and not c.order_errors),
            "order_errors": sum(c.order_errors for c in clients),
            "close_codes": sorted({c.close_code for c in clients if c.close_code is not None}),
            "other": sum(c.other for c in clients),
            "first": min(firsts) if firsts else 0,
            "last": max(lasts) if lasts else 0,
            "latencies": self.latencies.tobytes() if with_latencies else b"",
            "slow": sorted(x for c in clients for x in c.slow)[:2000] if with_latencies else [],
        }

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.clients = []
        self.uids = []
