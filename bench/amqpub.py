"""
A minimal AMQP 0-9-1 publisher for the benchmark, on a blocking socket.

Just enough of the protocol to log in, open a channel and publish: every
frame of a message is built with bytes formatting, many messages go out in
one C{sendall}, and RabbitMQ's flow control (it stops reading our socket
when it cannot keep up) makes "as fast as the broker takes them" exact. Its
own cost per message is in docs/benchmarks.md: it is not what limits the
figures. (A load generator, so not the suites' txAMQP publisher,
L{tests.support.publisher}.)
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Sequence

from bench import events

_FRAME = struct.Struct("!BHI")
_METHOD, _HEADER, _BODY, _HEARTBEAT = 1, 2, 3, 8
_END = b"\xce"


class AmqpError(Exception):
    """The broker refused something (or closed the connection)."""


def _shortstr(s: bytes) -> bytes:
    return bytes((len(s),)) + s


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _FRAME.pack(kind, channel, len(payload)) + payload + _END


def _method(channel: int, class_id: int, method_id: int, args: bytes) -> bytes:
    return _frame(_METHOD, channel, struct.pack("!HH", class_id, method_id) + args)


class Publisher:
    """One connection, channel 1, no confirms; bodies are published as bytes."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5672,
        user: str = "guest",
        password: str = "guest",  # noqa: S107 (the local broker's default account)
        vhost: str = "/",
        timeout: float = 10.0,
    ) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._rx = b""
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self._expect(0, 10, 10)  # connection.start
        response = b"\x00" + user.encode() + b"\x00" + password.encode()
        self.sock.sendall(
            _method(
                0,
                10,
                11,
                struct.pack("!I", 0)
                + _shortstr(b"PLAIN")
                + struct.pack("!I", len(response))
                + response
                + _shortstr(b"en_US"),
            )
        )
        tune = self._expect(0, 10, 30)
        channel_max, frame_max, _ = struct.unpack("!HIH", tune[:8])
        self.frame_max = min(frame_max or 131072, 131072)
        self.sock.sendall(_method(0, 10, 31, struct.pack("!HIH", channel_max, self.frame_max, 0)))
        self.sock.sendall(_method(0, 10, 40, _shortstr(vhost.encode()) + _shortstr(b"") + b"\x00"))
        self._expect(0, 10, 41)
        self.sock.sendall(_method(1, 20, 10, _shortstr(b"")))
        self._expect(1, 20, 11)
        self._method_frames: dict[tuple[bytes, bytes], bytes] = {}

    # -- reading -------------------------------------------------------------

    def _read_frame(self) -> tuple[int, int, bytes]:
        while True:
            if len(self._rx) >= 7:
                kind, channel, size = _FRAME.unpack_from(self._rx)
                if len(self._rx) >= size + 8:
                    payload = self._rx[7 : 7 + size]
                    self._rx = self._rx[size + 8 :]
                    return kind, channel, payload
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AmqpError("RabbitMQ closed the connection")
            self._rx += chunk

    def _expect(self, channel: int, class_id: int, method_id: int) -> bytes:
        """Read frames until method C{class_id.method_id} on C{channel}; raise on a close."""
        while True:
            kind, ch, payload = self._read_frame()
            if kind != _METHOD:
                continue
            cid, mid = struct.unpack("!HH", payload[:4])
            if (cid, mid) in ((10, 50), (20, 40)):  # connection.close, channel.close
                code = struct.unpack("!H", payload[4:6])[0]
                text = payload[7 : 7 + payload[6]].decode("utf-8", "replace")
                raise AmqpError(f"RabbitMQ closed {'the connection' if cid == 10 else 'the channel'}: {code} {text}")
            if ch == channel and (cid, mid) == (class_id, method_id):
                return payload[4:]

    # -- publishing ----------------------------------------------------------

    def message(self, exchange: bytes, routing_key: bytes, body: bytes) -> bytes:
        """The three frames of one basic.publish (body in one frame: it is small)."""
        method = self._method_frames.get((exchange, routing_key))
        if method is None:
            method = _method(1, 60, 40, b"\x00\x00" + _shortstr(exchange) + _shortstr(routing_key) + b"\x00")
            self._method_frames[(exchange, routing_key)] = method
        return (
            method
            + _frame(_HEADER, 1, struct.pack("!HHQH", 60, 0, len(body), 0))
            + _FRAME.pack(_BODY, 1, len(body))
            + body
            + _END
        )

    def sync(self) -> None:
        """A round trip (basic.qos): the broker has read everything sent before it."""
        self.sock.sendall(_method(1, 60, 10, struct.pack("!IHB", 0, 0, 0)))
        self._expect(1, 60, 11)

    def delete_exchange(self, exchange: str) -> None:
        """Remove a benchmark's exchange (they are not auto-deleted)."""
        self.sock.sendall(_method(1, 40, 20, b"\x00\x00" + _shortstr(exchange.encode()) + b"\x00"))
        self._expect(1, 40, 21)

    def close(self) -> None:
        try:
            self.sock.sendall(_method(0, 10, 50, struct.pack("!H", 200) + _shortstr(b"bye") + b"\x00\x00\x00\x00"))
            self.sock.settimeout(2)
            self._expect(0, 10, 51)
        except (OSError, AmqpError):
            pass
        self.sock.close()


def publish_burst(
    pub: Publisher, exchange: str, uids: Sequence[str], n: int, batch: int = 200, time_limit: float = 120.0
) -> dict[str, float]:
    """
    C{n} events round-robin over C{uids} (member i gets seq 1, 2, ...), as fast
    as the broker reads them. Returns start, end and count.
    """
    ex = exchange.encode()
    keys = [f"private.{uid}.{events.EVENT}".encode() for uid in uids]
    seqs = [0] * len(uids)
    m = len(uids)
    t0 = time.monotonic()
    deadline = t0 + time_limit
    sent = 0
    make = pub.message
    body = events.body
    while sent < n and time.monotonic() < deadline:
        parts = []
        for i in range(sent, min(n, sent + batch)):
            j = i % m
            seqs[j] += 1
            parts.append(make(ex, keys[j], body(seqs[j], i)))
        pub.sock.sendall(b"".join(parts))
        sent += len(parts)
    t1 = time.monotonic()
    pub.sync()
    return {"t0": t0, "t1": t1, "sent": sent, "synced": time.monotonic()}


def publish_rate(pub: Publisher, exchange: str, uids: Sequence[str], rate: float, duration: float) -> dict[str, float]:
    """
    Events round-robin over C{uids} at a steady C{rate} per second for
    C{duration} seconds, each stamped with the clock just before it is sent.
    """
    ex = exchange.encode()
    keys = [f"private.{uid}.{events.EVENT}".encode() for uid in uids]
    seqs = [0] * len(uids)
    m = len(uids)
    n = int(rate * duration)
    t0 = time.monotonic()
    sent = 0
    late = 0.0
    make = pub.message
    body = events.body
    while sent < n:
        now = time.monotonic()
        if now > t0 + duration + 10:
            break
        due = min(n, int((now - t0) * rate) + 1)
        if due > sent:
            late = max(late, (now - t0) - sent / rate)
            parts = []
            for i in range(sent, due):
                j = i % m
                seqs[j] += 1
                parts.append(make(ex, keys[j], body(seqs[j], i)))
            pub.sock.sendall(b"".join(parts))
            sent = due
        else:
            time.sleep(max(0.0, min(0.0005, t0 + sent / rate - now)))
    t1 = time.monotonic()
    pub.sync()
    return {"t0": t0, "t1": t1, "sent": sent, "max_late": late}


class SinkConsumer(Publisher):
    """
    The broker's floor: a consumer that does nothing with what it gets.
    One queue bound like the daemon's (C{private.<uid>.*} per member), the
    same prefetch, one C{basic.ack(multiple)} per read; it counts deliveries.
    """

    def setup(self, exchange: str, uids: Sequence[str], prefetch: int = 2000) -> None:
        ex = exchange.encode()
        self.sock.sendall(
            _method(1, 40, 10, b"\x00\x00" + _shortstr(ex) + _shortstr(b"topic") + b"\x00" + struct.pack("!I", 0))
        )
        self._expect(1, 40, 11)
        # queue.declare: server-named, exclusive + auto-delete.
        self.sock.sendall(_method(1, 50, 10, b"\x00\x00" + _shortstr(b"") + b"\x0c" + struct.pack("!I", 0)))
        declared = self._expect(1, 50, 11)
        self.queue = declared[1 : 1 + declared[0]]
        for uid in uids:
            key = f"private.{uid}.*".encode()
            self.sock.sendall(
                _method(
                    1,
                    50,
                    20,
                    b"\x00\x00"
                    + _shortstr(self.queue)
                    + _shortstr(ex)
                    + _shortstr(key)
                    + b"\x00"
                    + struct.pack("!I", 0),
                )
            )
        for _ in uids:
            self._expect(1, 50, 21)
        self.sock.sendall(_method(1, 60, 10, struct.pack("!IHB", 0, prefetch, 0)))
        self._expect(1, 60, 11)
        self.sock.sendall(
            _method(
                1, 60, 20, b"\x00\x00" + _shortstr(self.queue) + _shortstr(b"sink") + b"\x00" + struct.pack("!I", 0)
            )
        )
        self._expect(1, 60, 21)

    def drain(self, n: int, time_limit: float = 120.0, idle: float = 5.0) -> dict[str, float]:
        """Take C{n} deliveries (acking once per read); first/last receipt times and the count."""
        got = 0
        first = last = 0.0
        buf = self._rx
        self._rx = b""
        deadline = time.monotonic() + time_limit
        self.sock.settimeout(idle)
        ack_prefix = _FRAME.pack(_METHOD, 1, 13) + struct.pack("!HH", 60, 80)
        while got < n and time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                break
            if not chunk:
                raise AmqpError("RabbitMQ closed the connection")
            now = time.monotonic()
            buf += chunk
            off = 0
            tag = 0
            end = len(buf)
            while end - off >= 7:
                kind, _, size = _FRAME.unpack_from(buf, off)
                if end - off < size + 8:
                    break
                if kind == _METHOD and buf[off + 7 : off + 11] == b"\x00\x3c\x00\x3c":  # basic.deliver
                    p = off + 11
                    p += 1 + buf[p]
                    (tag,) = struct.unpack_from("!Q", buf, p)
                elif kind == _BODY:
                    got += 1
                off += size + 8
            buf = buf[off:]
            if tag:
                self.sock.sendall(ack_prefix + struct.pack("!QB", tag, 1) + _END)
            if not first:
                first = now
            last = now
        return {"received": got, "first": first, "last": last}


# ---------------------------------------------------------------------------
# Public events (SPEC §7): public.<id>.<event>, one sequence for the stream


def publish_bodies(pub: Publisher, exchange: str, routing_key: str, bodies: Sequence[bytes]) -> dict[str, float]:
    """C{bodies} as they are (a snapshot, a store's increments), in order; synced when they are in."""
    ex, key = exchange.encode(), routing_key.encode()
    t0 = time.monotonic()
    for i in range(0, len(bodies), 200):
        pub.sock.sendall(b"".join(pub.message(ex, key, b) for b in bodies[i : i + 200]))
    t1 = time.monotonic()
    pub.sync()
    return {"t0": t0, "t1": t1, "sent": len(bodies)}


def publish_public_burst(
    pub: Publisher,
    exchange: str,
    routing_key: str,
    seq0: int,
    n: int,
    tail: bytes,
    size: int,
    batch: int = 200,
    time_limit: float = 120.0,
) -> dict[str, float]:
    """C{n} public events of C{size} bytes, sequence C{seq0}, C{seq0 + 1}, ..., as fast as the broker takes them."""
    ex, key = exchange.encode(), routing_key.encode()
    make, body = pub.message, events.public_body
    t0 = time.monotonic()
    deadline = t0 + time_limit
    sent = 0
    while sent < n and time.monotonic() < deadline:
        parts = [make(ex, key, body(seq0 + i, tail, size)) for i in range(sent, min(n, sent + batch))]
        pub.sock.sendall(b"".join(parts))
        sent += len(parts)
    t1 = time.monotonic()
    pub.sync()
    return {"t0": t0, "t1": t1, "sent": sent, "synced": time.monotonic()}


def publish_public_rate(
    pub: Publisher, exchange: str, routing_key: str, seq0: int, rate: float, duration: float, tail: bytes, size: int
) -> dict[str, float]:
    """Public events at a steady C{rate} per second for C{duration} seconds, each stamped just before it is sent."""
    ex, key = exchange.encode(), routing_key.encode()
    make, body = pub.message, events.public_body
    n = int(rate * duration)
    t0 = time.monotonic()
    sent = 0
    late = 0.0
    while sent < n:
        now = time.monotonic()
        if now > t0 + duration + 10:
            break
        due = min(n, int((now - t0) * rate) + 1)
        if due > sent:
            late = max(late, (now - t0) - sent / rate)
            pub.sock.sendall(b"".join(make(ex, key, body(seq0 + i, tail, size)) for i in range(sent, due)))
            sent = due
        else:
            time.sleep(max(0.0, min(0.0005, t0 + sent / rate - now)))
    t1 = time.monotonic()
    pub.sync()
    return {"t0": t0, "t1": t1, "sent": sent, "max_late": late}
