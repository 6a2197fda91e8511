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

from bench.events import SEQ_AT, SEQ_DIGITS, TS_BASE, TS_DIGITS, TS_GAP, PublicLayout
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


class PublicClient(BenchClient):
    """
    One ranger connection (SPEC §7), anonymous, subscribed to one public
    stream in its URL: it reads the order-book replay and the subscribed
    reply, then counts and checks that stream's bench events
    (L{bench.events.public_body}).

    Cheap per frame, since at 10,000 subscribers the clients receive as many
    frames as the daemon writes: the events of one stream all have the same
    length (L{PublicLayout}), so a read holding only whole event frames is
    checked from its first and last frame (their header and prefix, and that
    the sequence numbers between them account for every frame), and any
    other read is walked frame by frame. Latency is recorded per read, not
    per frame: the oldest frame's (an upper bound for every frame of the
    read) and the newest one's (a lower bound), each weighted by the number
    of frames in the read.
    """

    def __init__(self, host: str, port: int, path: str | None, layout: PublicLayout) -> None:
        super().__init__(host, port, None, None)
        #: None: raw TCP (the floor), event frames from the first byte.
        self.path = path
        self.layout = layout
        self.state = HANDSHAKE if path is not None else OPEN
        #: Upper and lower latency bound (ns) and frame count of each read, when recording.
        self.weights: array[int] | None = None
        self.lows: array[int] | None = None
        self.next_seq = 0
        #: The replay read before the subscribed reply: frames, and sequence gaps in it.
        self.replayed = 0
        self.replay_errors = 0
        self.snapshot_seq: int | None = None
        # The order book's snapshot frames, for a book stream (replayed, or sent to a waiting subscriber).
        stream = layout.stream
        self._snap_prefix = (
            b'{"' + stream[: -len("ob-inc")].encode() + b'ob-snap":' if stream.endswith(".ob-inc") else None
        )
        self.subscribed_at = 0

    def reset(self, expected: int) -> None:
        """Count afresh; the sequence goes on from the last one seen (set by the replay, or the first event)."""
        next_seq = getattr(self, "next_seq", 0)
        super().reset(expected)
        self.next_seq = next_seq

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.path is None:
            self.ready.set_result(None)
            return
        self.transport.write(frames.upgrade_request(self.path, f"{self.host}:{self.port}"))

    def data_received(self, data: bytes) -> None:
        now = _monotonic_ns()
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if self.state == HANDSHAKE:
            i = data.find(b"\r\n\r\n")
            if i < 0:
                self.buf = data
                return
            status = data[: data.find(b"\r\n")]
            if b" 101 " not in status:
                self._fail(f"upgrade refused: {status.decode('latin-1')}")
                return
            data = data[i + 4 :]
            self.state = AUTH
        layout = self.layout
        size = layout.frame
        n = len(data) // size
        self.reads += 1
        if n and self.state == OPEN and data.startswith(layout.head) and data.startswith(layout.head, (n - 1) * size):
            # The fast path: n whole event frames (and the start of the next frame, maybe).
            s = layout.seq_at
            first = int(data[s : s + SEQ_DIGITS])
            s += (n - 1) * size
            last = int(data[s : s + SEQ_DIGITS])
            if last - first == n - 1:
                if first != self.next_seq and self.next_seq:
                    self.order_errors += 1
                self.next_seq = last + 1
                self.count += n
                if not self.first:
                    self.first = now
                self.last = now
                if self.latencies is not None:
                    t = layout.ts_at
                    self.latencies.append(now - int(data[t : t + TS_DIGITS]) + TS_BASE)
                    t += (n - 1) * size
                    cast(array, self.lows).append(now - int(data[t : t + TS_DIGITS]) + TS_BASE)
                    cast(array, self.weights).append(n)
                pos = n * size
                if pos < len(data):
                    self._walk(data, pos, now)
                return
        self._walk(data, 0, now)

    def _walk(self, data: bytes, pos: int, now: int) -> None:
        """Every frame of C{data} from C{pos}, one at a time; what is incomplete is kept for the next read."""
        layout = self.layout
        prefix = layout.prefix
        while (found := frame_at(data, pos)) is not None:
            first, start, end = found
            if first == 0x81 and data.startswith(prefix, start):
                s = start + len(prefix)
                seq = int(data[s : s + SEQ_DIGITS])
                if self.state == OPEN:
                    if seq != self.next_seq and self.next_seq:
                        self.order_errors += 1
                    self.count += 1
                    if not self.first:
                        self.first = now
                    self.last = now
                    if self.latencies is not None:
                        t = s + SEQ_DIGITS + TS_GAP
                        lat = now - int(data[t : t + TS_DIGITS]) + TS_BASE
                        self.latencies.append(lat)
                        cast(array, self.lows).append(lat)
                        cast(array, self.weights).append(1)
                else:  # replayed
                    self.replayed += 1
                    if seq != self.next_seq:
                        self.replay_errors += 1
                self.next_seq = seq + 1
            elif first == 0x81 and self._snap_prefix is not None and data.startswith(self._snap_prefix, start):
                # {"<m>.ob-snap":{"asks":...,"sequence":N}: the book starts again after N.
                body = data[start:end]
                i = body.rindex(b'"sequence":') + len(b'"sequence":')
                j = i
                while body[j : j + 1].isdigit():
                    j += 1
                self.snapshot_seq = int(body[i:j])
                self.next_seq = self.snapshot_seq + 1
                if self.state != OPEN:
                    self.replayed += 1
                else:
                    self.other += 1
            elif first == 0x81 and self.state == AUTH and data.startswith(b'{"success":{"message":"subscribed"', start):
                self.state = OPEN
                self.subscribed_at = now
                if not self.ready.done():
                    self.ready.set_result(None)
            elif first == 0x81 and data.startswith(b'{"error":', start):
                self.other += 1
                if self.state == AUTH:
                    self._fail(f"reply {data[start:end][:120]!r}")
                    return
            else:
                self._control(first & 0x0F, data[start:end])
            pos = end
        if pos < len(data):
            self.buf = data[pos:]


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


async def connect_public(host: str, port: int, path: str | None, layout: PublicLayout, timeout: float) -> PublicClient:
    """One anonymous ranger connection on C{path}, once it has its subscribed reply (None: raw TCP, the floor)."""
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: PublicClient(host, port, path, layout), host, port), timeout
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
        #: For public clients (latency per read): the lower bounds and the frames of each read.
        self.lows: array[int] = array("q")
        self.weights: array[int] = array("q")
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
        del self.lows[:]
        del self.weights[:]
        self.record_latency = latency
        lat = self.latencies if latency else None
        for uid, c in zip(self.uids, self.clients, strict=True):
            c.reset(counts.get(uid, 0))
            c.latencies = lat
            if isinstance(c, PublicClient):
                c.lows = self.lows if latency else None
                c.weights = self.weights if latency else None

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
            "latency_lows": self.lows.tobytes() if with_latencies else b"",
            "latency_weights": self.weights.tobytes() if with_latencies else b"",
            "slow": sorted(x for c in clients for x in c.slow)[:2000] if with_latencies else [],
        }

    async def open_public(
        self,
        host: str,
        port: int,
        path: str | None,
        layout: PublicLayout,
        n: int,
        concurrency: int,
        timeout: float,
        deadline: float,
    ) -> dict[str, Any]:
        """Open C{n} anonymous ranger connections on C{path} (one public stream), each until its subscribed reply."""
        sem = asyncio.Semaphore(concurrency)
        errors: dict[str, int] = {}
        times = array("d")
        opened: list[PublicClient] = []

        async def one() -> None:
            async with sem:
                if time.monotonic() > deadline:
                    errors["deadline"] = errors.get("deadline", 0) + 1
                    return
                t = time.monotonic()
                try:
                    proto = await connect_public(host, port, path, layout, timeout)
                except (TimeoutError, OSError, ClientError) as e:
                    key = (type(e).__name__ + (f": {e}" if isinstance(e, ClientError) else ""))[:120]
                    errors[key] = errors.get(key, 0) + 1
                    return
                times.append(time.monotonic() - t)
                opened.append(proto)

        t0 = time.monotonic()
        await asyncio.gather(*(one() for _ in range(n)))
        t1 = time.monotonic()
        for proto in opened:
            self.uids.append(layout.stream)
            self.clients.append(proto)
        return {
            "opened": len(opened),
            "errors": errors,
            "t0": t0,
            "t1": t1,
            "times": list(times),
            "replayed": sum(c.replayed for c in opened),
            "replay_errors": sum(c.replay_errors for c in opened),
        }

    async def replay_probe(
        self, host: str, port: int, path: str, layout: PublicLayout, n: int, timeout: float
    ) -> dict[str, Any]:
        """
        C{n} new subscribers, one after the other, each closed once
        subscribed: the time from the connect to the subscribed reply, and
        the replay each read before it.
        """
        times = array("d")
        replayed: list[int] = []
        errors = 0
        for _ in range(n):
            t = _monotonic_ns()
            proto = await connect_public(host, port, path, layout, timeout)
            times.append((proto.subscribed_at - t) / 1e9)
            replayed.append(proto.replayed)
            errors += proto.replay_errors
            proto.close()
        await asyncio.sleep(0.2)
        return {"times": list(times), "replayed": replayed, "replay_errors": errors}

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.clients = []
        self.uids = []
