"""
Tools for the fault-injection suite (C{test_chaos*}): a WebSocket client on
the reactor, raw-socket clients that misbehave on purpose, a publisher that
knows what RabbitMQ accepted (publisher confirms + C{mandatory}), broker and
process probes, and the figures every test records.

Every wait is bounded and fails naming what did not happen. Nothing here
measures elapsed time for an assertion: the tests assert on counts.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import struct
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from txamqp.client import TwistedDelegate
from txamqp.content import Content
from txamqp.endpoint import AMQEndpoint
from txamqp.factory import AMQFactory
from txamqp.protocol import AMQClient

from peatio_ws import _txamqp_compat
from peatio_ws.testing import client_frame, make_token
from tests.support.daemon import DaemonProcess
from tests.support.helpers import HOST, PASSWORD, PORT, USER, Publisher, rabbitmqctl, sleep, within

#: "full" runs the long version of every fault test (``make chaos``); the
#: default is the quick one ``make test`` runs, which still injects every kind.
FULL = os.environ.get("PEATIO_WS_CHAOS", "").strip().lower() == "full"

#: RabbitMQ's extended 0-9-1 spec: the only one with confirm.select and basic.nack.
RABBIT_SPEC = "/usr/share/amqp/specs/0-9-1-rabbit/amqp0-9-1.stripped.extended.xml"


def scaled(quick: int, full: int) -> int:
    """C{full} under PEATIO_WS_CHAOS=full, else C{quick}."""
    return full if FULL else quick


# ---------------------------------------------------------------------------
# Figures


_FIGURES_FILE = "chaos-figures.txt"


def record(test: str, figures: dict[str, Any]) -> None:
    """
    Print C{figures} as a small table, and append them (one JSON line) to
    C{chaos-figures.txt} in the trial temp directory (trial's working
    directory), where ``make chaos`` collects them.
    """
    width = max((len(k) for k in figures), default=0)
    lines = [f"  {k.ljust(width)}  {v}" for k, v in figures.items()]
    text = f"\n[chaos] {test} ({'full' if FULL else 'quick'})\n" + "\n".join(lines) + "\n"
    print(text, flush=True)
    with open(_FIGURES_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps({"test": test, "mode": "full" if FULL else "quick", **figures}, default=str) + "\n")


# ---------------------------------------------------------------------------
# Waiting


async def until(condition: Callable[[], bool], seconds: float, what: str, interval: float = 0.02) -> None:
    """Poll C{condition} until it holds; fail naming C{what} after C{seconds}."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await sleep(interval)


async def until_async(condition: Callable[[], Any], seconds: float, what: str, interval: float = 0.1) -> None:
    """L{until} for a condition that is a coroutine function."""
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await sleep(interval)


# ---------------------------------------------------------------------------
# A WebSocket client on the reactor (not Autobahn: the daemon is Autobahn).


class WsClient(Protocol):
    """
    A minimal RFC 6455 client: handshake, masked frames out, unfragmented
    server frames in (what the daemon sends), pings answered unless told
    not to, the closing handshake answered.
    """

    #: A TCP transport (abortConnection too).
    transport: Any

    def __init__(self, path: str = "/", headers: Iterable[tuple[str, str]] = (), answer_pings: bool = True) -> None:
        self.path = path
        self.headers = list(headers)
        self.answer_pings = answer_pings
        #: The HTTP status of the handshake (101 when accepted).
        self.status: int | None = None
        #: Text messages (str) and binary messages (bytes), in arrival order.
        self.messages: list[str | bytes] = []
        self.close_code: int | None = None
        self.pings = 0
        self.lost = False
        #: Called with every text message as it arrives.
        self.on_text: Callable[[str], None] | None = None
        self._buf = bytearray()
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []

    # -- protocol ------------------------------------------------------------

    def connectionMade(self) -> None:
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        lines = [
            f"GET {self.path} HTTP/1.1",
            "Host: 127.0.0.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in self.headers),
        ]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        if self.status is None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buf[:end])
            del self._buf[: end + 4]
            self.status = int(head.split(b" ", 2)[1])
            if self.status != 101:
                self.transport.loseConnection()
        if self.status == 101:
            self._frames()
        self._notify()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.lost = True
        self._notify()

    def _frames(self) -> None:
        buf = self._buf
        off = 0
        while len(buf) - off >= 2:
            b0, b1 = buf[off], buf[off + 1]
            n = b1 & 0x7F
            i = off + 2
            if n == 126:
                if len(buf) - i < 2:
                    break
                (n,) = struct.unpack_from("!H", buf, i)
                i += 2
            elif n == 127:
                if len(buf) - i < 8:
                    break
                (n,) = struct.unpack_from("!Q", buf, i)
                i += 8
            if len(buf) - i < n:
                break
            payload = bytes(buf[i : i + n])
            off = i + n
            self._frame(b0 & 0x0F, payload)
        del buf[:off]

    def _frame(self, opcode: int, payload: bytes) -> None:
        if opcode == 1:
            text = payload.decode("utf-8")
            self.messages.append(text)
            if self.on_text is not None:
                self.on_text(text)
        elif opcode == 2:
            self.messages.append(payload)
        elif opcode == 9:
            self.pings += 1
            if self.answer_pings and not self.lost:
                self.transport.write(client_frame(payload, 10))
        elif opcode == 8:
            self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if not self.lost:
                self.transport.write(client_frame(payload[:2], 8))
                self.transport.loseConnection()

    def _notify(self) -> None:
        for waiter in list(self._waiters):
            condition, d = waiter
            if d.called:
                self._waiters.remove(waiter)
            elif condition() or self.lost:
                self._waiters.remove(waiter)
                d.callback(None)

    # -- use -----------------------------------------------------------------

    async def wait(self, condition: Callable[[], bool], seconds: float, what: str) -> None:
        """Until C{condition} holds (checked on every read); fails if it does not, or the connection goes."""
        if not condition():
            d: Deferred[None] = Deferred()
            self._waiters.append((condition, d))
            await within(d, seconds, what)
        if not condition():
            raise AssertionError(f"connection lost (close code {self.close_code}) while waiting for {what}")

    async def next_json(self, seconds: float = 10.0) -> Any:
        """The next message not read yet through this method, as JSON (or as text)."""
        index = getattr(self, "_read", 0)
        await self.wait(lambda: len(self.messages) > index, seconds, f"message #{index + 1}")
        self._read = index + 1
        return _loads(self.messages[index])

    def json_messages(self) -> list[Any]:
        return [_loads(m) for m in self.messages]

    def send_text(self, text: str | bytes) -> None:
        data = text.encode("utf-8") if isinstance(text, str) else text
        self.transport.write(client_frame(data, 1))

    def send_raw(self, data: bytes) -> None:
        self.transport.write(data)

    async def login(self, token: str, seconds: float = 10.0) -> Any:
        """Read the challenge, send the token, return the reply."""
        challenge = await self.next_json(seconds)
        assert isinstance(challenge, dict) and "challenge" in challenge, challenge
        self.send_text(json.dumps({"jwt": "Bearer " + token}))
        return await self.next_json(seconds)

    async def close(self, seconds: float = 10.0, code: int = 1000) -> None:
        """The closing handshake from our side; waits until the connection is gone."""
        if not self.lost:
            self.transport.write(client_frame(struct.pack("!H", code), 8))
            d: Deferred[None] = Deferred()
            self._waiters.append((lambda: self.lost, d))
            try:
                await within(d, seconds, "the server to complete the close")
            finally:
                self.abort()

    def abort(self) -> None:
        if not self.lost and self.transport is not None:
            self.transport.abortConnection()

    async def gone(self, seconds: float = 15.0) -> None:
        """Until the server closed the connection."""
        if not self.lost:
            d: Deferred[None] = Deferred()
            self._waiters.append((lambda: self.lost, d))
            await within(d, seconds, "the connection to close")


def _loads(message: str | bytes) -> Any:
    try:
        return json.loads(message)
    except ValueError:
        return message


async def ws_connect(port: int, seconds: float = 10.0, **kwargs: Any) -> WsClient:
    """Connect a L{WsClient} to 127.0.0.1:C{port} and wait for the handshake answer."""
    client = WsClient(**kwargs)
    await within(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10), client), seconds, "TCP")
    await client.wait(lambda: client.status is not None, seconds, "the handshake answer")
    return client


# ---------------------------------------------------------------------------
# Raw blocking sockets: clients that misbehave (never read, never answer).


class RawClient:
    """
    A blocking socket speaking just enough WebSocket to get in, then doing
    what a broken client does: nothing. C{rcvbuf} is set before connecting,
    so the kernel advertises a small window from the start.
    """

    def __init__(self, port: int, rcvbuf: int | None = None, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self._buf = b""

    def handshake(self) -> int:
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        self.sock.sendall(
            (
                "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode("ascii")
        )
        while b"\r\n\r\n" not in self._buf:
            self._recv()
        head, _, self._buf = self._buf.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1])

    def _recv(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self._buf += chunk

    def read_frame(self) -> tuple[int, bytes]:
        """One server frame (opcode, payload)."""
        while True:
            frame = _split_frame(self._buf)
            if frame is not None:
                opcode, payload, self._buf = frame
                return opcode, payload
            self._recv()

    def read_json(self) -> Any:
        opcode, payload = self.read_frame()
        assert opcode == 1, (opcode, payload[:100])
        return json.loads(payload)

    def send_text(self, text: str) -> None:
        self.sock.sendall(client_frame(text.encode("utf-8"), 1))

    def login(self, token: str) -> Any:
        assert "challenge" in self.read_json()
        self.send_text(json.dumps({"jwt": "Bearer " + token}))
        return self.read_json()

    def drain(self, limit: int = 256 * 1024 * 1024, timeout: float = 10.0) -> tuple[int, int | None]:
        """
        Read everything the server sends, until its close frame or EOF:
        (bytes of text frames read, close code or None).
        """
        self.sock.settimeout(timeout)
        text_bytes = 0
        total = 0
        try:
            while total < limit:
                frame = _split_frame(self._buf)
                if frame is None:
                    chunk = self.sock.recv(1 << 20)
                    if not chunk:
                        return text_bytes, None
                    total += len(chunk)
                    self._buf += chunk
                    continue
                opcode, payload, self._buf = frame
                if opcode == 1:
                    text_bytes += len(payload)
                elif opcode == 8:
                    return text_bytes, struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        except (ConnectionError, TimeoutError, OSError):
            return text_bytes, None
        return text_bytes, None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _split_frame(buf: bytes) -> tuple[int, bytes, bytes] | None:
    if len(buf) < 2:
        return None
    n = buf[1] & 0x7F
    i = 2
    if n == 126:
        if len(buf) < 4:
            return None
        (n,) = struct.unpack_from("!H", buf, 2)
        i = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        (n,) = struct.unpack_from("!Q", buf, 2)
        i = 10
    if len(buf) < i + n:
        return None
    return buf[0] & 0x0F, buf[i : i + n], buf[i + n :]


# ---------------------------------------------------------------------------
# A publisher that knows what the broker accepted.


class _ConfirmDelegate(TwistedDelegate):
    """Hands confirms and returns to the publisher."""

    publisher: ConfirmingPublisher

    def basic_ack(self, ch: Any, msg: Any) -> None:
        self.publisher._confirmed(self.client, msg.delivery_tag, msg.multiple, "accepted")

    def basic_nack(self, ch: Any, msg: Any) -> None:
        self.publisher._confirmed(self.client, msg.delivery_tag, msg.multiple, "nacked")

    def basic_return_(self, ch: Any, msg: Any) -> None:
        self.publisher._returned(msg)


class _PublisherClient(AMQClient):
    publisher: ConfirmingPublisher

    def connectionLost(self, reason: Failure) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.publisher._lost(self)


class _PublisherFactory(AMQFactory):
    protocol = _PublisherClient
    noisy = False

    def __init__(self, publisher: ConfirmingPublisher) -> None:
        super().__init__(spec=RABBIT_SPEC)
        self.publisher = publisher

    def buildProtocol(self, addr: Any) -> _PublisherClient:
        delegate = _ConfirmDelegate()
        delegate.publisher = self.publisher
        client = _PublisherClient(delegate, vhost=self._vhost, spec=self._spec, heartbeat=self._heartbeat)
        client.publisher = self.publisher
        return client


#: What became of a published event, as far as the publisher can know.
ACCEPTED = "accepted"  # confirmed, and routed (not returned): it is in our queue
RETURNED = "returned"  # unroutable at that moment (no binding): returned, never queued
NACKED = "nacked"  # the broker refused it
UNCONFIRMED = "unconfirmed"  # the connection went before the confirm: unknown
NOT_SENT = "not_sent"  # no connection to the broker at all: never sent


class ConfirmingPublisher:
    """
    Publishes numbered events the way Peatio's producer does (topic exchange,
    declared non-durable on every connection), in confirm mode and with
    C{mandatory}, so every event ends as exactly one of L{ACCEPTED},
    L{RETURNED}, L{NACKED}, L{UNCONFIRMED} or L{NOT_SENT}. Reconnects by
    itself (every 0.25 s) after the broker goes away.
    """

    def __init__(self, exchange: str) -> None:
        _txamqp_compat.install()
        self.exchange = exchange
        self.outcome: dict[int, str] = {}
        #: Monotonic time of publishing, and of the confirm, per sequence number.
        self.published_at: dict[int, float] = {}
        self.confirmed_at: dict[int, float] = {}
        self.connects = 0
        self._client: _PublisherClient | None = None
        self._channel: Any = None
        self._pending: dict[int, int] = {}  # delivery tag -> seq
        self._next_tag = 1
        self._returned_seqs: set[int] = set()
        self._stopped = False
        self._connecting: Deferred[None] | None = None
        #: While True, the publisher does not reconnect (events are L{NOT_SENT}).
        self.hold_reconnect = False

    @property
    def connected(self) -> bool:
        return self._channel is not None

    async def start(self, seconds: float = 15.0) -> None:
        await self._connect_until(seconds)

    async def _connect_once(self) -> None:
        endpoint = AMQEndpoint(reactor, HOST, PORT, username=USER, password=PASSWORD, vhost="/", timeout=5)
        client: _PublisherClient = await within(endpoint.connect(_PublisherFactory(self)), 10, "the publisher login")
        try:
            channel = await client.channel(1)
            await channel.channel_open()
            await channel.confirm_select()
            await channel.exchange_declare(exchange=self.exchange.encode(), type="topic", durable=False)
        except Exception:
            client.transport.abortConnection()
            raise
        self._client, self._channel = client, channel
        self._pending = {}
        self._next_tag = 1
        self.connects += 1

    async def _connect_until(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopped:
            if self.hold_reconnect:
                deadline = time.monotonic() + seconds
                await sleep(0.05)
                continue
            try:
                await self._connect_once()
                return
            except Exception as e:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the publisher could not connect to RabbitMQ within {seconds} s: {e}") from e
                await sleep(0.25)

    def _lost(self, client: _PublisherClient) -> None:
        if client is not self._client:
            return
        for seq in self._pending.values():
            self.outcome[seq] = UNCONFIRMED
        self._pending = {}
        self._client = self._channel = None
        if not self._stopped and self._connecting is None:
            self._connecting = Deferred.fromCoroutine(self._reconnect())

    async def _reconnect(self) -> None:
        try:
            await self._connect_until(120)
        finally:
            self._connecting = None

    def publish(self, seq: int, routing_key: str | bytes, body: bytes) -> bool:
        """Publish event C{seq}; False (and L{NOT_SENT}) when not connected."""
        self.published_at[seq] = time.monotonic()
        channel = self._channel
        client = self._client
        if channel is None or client is None or client.transport is None or client.closed or channel.closed:
            self.outcome[seq] = NOT_SENT
            return False
        tag = self._next_tag
        self._next_tag += 1
        self._pending[tag] = seq
        self.outcome[seq] = UNCONFIRMED
        key = routing_key.encode() if isinstance(routing_key, str) else routing_key
        d = channel.basic_publish(
            exchange=self.exchange.encode(), routing_key=key, content=Content(body), mandatory=True
        )
        # Fails only when the connection is going: the confirm never comes, and _lost says so.
        d.addErrback(lambda _: None)
        return True

    def _confirmed(self, client: Any, tag: int, multiple: bool, result: str) -> None:
        if client is not self._client:
            return
        tags = [t for t in self._pending if t <= tag] if multiple else [tag]
        now = time.monotonic()
        for t in tags:
            seq = self._pending.pop(t, None)
            if seq is None:
                continue
            self.confirmed_at[seq] = now
            if result == ACCEPTED and seq in self._returned_seqs:
                self.outcome[seq] = RETURNED
            else:
                self.outcome[seq] = result

    def _returned(self, msg: Any) -> None:
        try:
            seq = json.loads(msg.content.body)["seq"]
        except (ValueError, KeyError, TypeError):
            return
        self._returned_seqs.add(seq)

    @property
    def unsettled(self) -> int:
        return len(self._pending)

    def counts(self) -> Counter[str]:
        return Counter(self.outcome.values())

    def seqs(self, outcome: str) -> list[int]:
        return sorted(s for s, o in self.outcome.items() if o == outcome)

    async def settle(self, seconds: float = 15.0) -> None:
        """Until every publish on the current connection is confirmed."""
        await until(lambda: not self._pending, seconds, f"{len(self._pending)} publisher confirms")

    async def stop(self, delete_exchange: bool = True) -> None:
        """Close; by default delete the test's exchange first (it is not auto-deleted)."""
        self._stopped = True
        client, channel = self._client, self._channel
        self._client = self._channel = None
        if channel is not None and delete_exchange:
            # Best effort: the broker may be gone.
            with contextlib.suppress(Exception):
                await within(channel.exchange_delete(exchange=self.exchange.encode()), 5, "exchange.delete")
        if client is not None and not client.closed:
            lost = client.disconnected.wait()
            with contextlib.suppress(Exception):
                await client.close(within=2)
            try:
                await within(lost, 5, "the publisher's connection to close")
            except AssertionError:
                client.transport.abortConnection()
        if self._connecting is not None:
            await within(self._connecting, 130, "the publisher's reconnect loop to stop")


# ---------------------------------------------------------------------------
# Broker, daemon and process probes.


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text C{text} (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def rss_kib(pid: int) -> int:
    """Resident set size of process C{pid} in KiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    """How many file descriptors process C{pid} has open (Linux)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def queue_name_from_log(log_text: str) -> str:
    """The daemon's queue, from its "consuming from <queue>" log line."""
    found = re.findall(r"consuming from (peatio-ws\.\S+)", log_text)
    if not found:
        raise AssertionError(f"no 'consuming from' line in the daemon log:\n{log_text[-3000:]}")
    return found[-1]


async def bindings_of(queue: str) -> list[tuple[str, str]]:
    """(exchange, routing key) of every binding to C{queue}, the default exchange's excepted."""
    listing = await rabbitmqctl("list_bindings", "source_name", "destination_name", "routing_key")
    out = []
    for line in listing.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1] == queue and parts[0]:
            out.append((parts[0], parts[2]))
    return out


async def closed_by_peer(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes C{sock} (EOF or reset) within C{seconds}; polls without blocking."""
    # Not merely MSG_DONTWAIT: a socket with a timeout waits for readability first.
    sock.setblocking(False)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if sock.recv(1) == b"":
                return True
        except BlockingIOError:
            pass
        except OSError:
            return True
        await sleep(0.05)
    return False


async def queue_exists(queue: str) -> bool:
    listing = await rabbitmqctl("list_queues", "name")
    return queue in listing.split()


async def exchange_exists(exchange: str) -> bool:
    listing = await rabbitmqctl("list_exchanges", "name")
    return exchange in listing.split()


def broker_port_open() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=1):
            return True
    except OSError:
        return False


async def broker_ready() -> bool:
    """RabbitMQ's app runs and its AMQP port accepts."""
    if not broker_port_open():
        return False
    try:
        await rabbitmqctl("await_startup")
    except AssertionError:
        return False
    return True


async def stop_broker_app() -> None:
    await rabbitmqctl("stop_app")


async def start_broker_app(seconds: float = 60.0) -> None:
    """start_app, then until the port accepts and await_startup succeeds."""
    await rabbitmqctl("start_app")
    await until_async(broker_ready, seconds, "RabbitMQ to accept connections again")


async def ensure_broker_running() -> None:
    """Cleanup: whatever happened, leave RabbitMQ running."""
    if broker_port_open():
        try:
            await rabbitmqctl("await_startup")
            return
        except AssertionError:
            pass
    await start_broker_app()


# ---------------------------------------------------------------------------
# Steady streams of numbered events, and what became of them.


class SteadyStream:
    """
    Publishes numbered order events for member C{uid} at a steady pace
    (C{per_tick} every C{interval} seconds) until stopped.
    """

    def __init__(self, publisher: ConfirmingPublisher, uid: str, per_tick: int = 2, interval: float = 0.01) -> None:
        self.publisher = publisher
        self.uid = uid
        self.per_tick = per_tick
        self.interval = interval
        self.next_seq = 0
        self._loop: Any = None

    def publish_batch(self) -> None:
        """Publish the next C{per_tick} events now."""
        for _ in range(self.per_tick):
            seq = self.next_seq
            self.next_seq += 1
            body = json.dumps(
                {"seq": seq, "id": seq, "side": "buy", "ord_type": "limit", "price": "100.5", "state": "wait",
                 "market": "btcusd", "remaining_volume": "1.0", "executed_volume": "0.0"},
                separators=(",", ":"),
            ).encode()
            self.publisher.publish(seq, f"private.{self.uid}.order", body)

    def start(self) -> None:
        from twisted.internet.task import LoopingCall

        self._loop = LoopingCall(self.publish_batch)
        self._loop.clock = reactor
        self._loop.start(self.interval)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()


class SeqTracker:
    """The C{seq} of every C{event} a client receives, in arrival order, parsed as they come."""

    def __init__(self, client: WsClient, event: str = "order") -> None:
        self.event = event
        self.prefix = '{"' + event + '":'
        self.arrivals: list[int] = []
        self.unique: set[int] = set()
        client.on_text = self.feed

    def feed(self, text: str) -> None:
        if text.startswith(self.prefix):
            seq = json.loads(text)[self.event]["seq"]
            self.arrivals.append(seq)
            self.unique.add(seq)

    def __len__(self) -> int:
        return len(self.arrivals)


def at_least(tracker: SeqTracker, count: int) -> bool:
    """Whether C{tracker} has seen C{count} events (for L{WsClient.wait} with functools.partial)."""
    return len(tracker) >= count


def delivery_figures(received: list[int], publisher: ConfirmingPublisher) -> dict[str, Any]:
    """
    What was published, what the broker accepted into our queue, what the
    client got: duplicates (extra copies), lost (accepted, never delivered),
    and whether first copies arrived in publishing order.
    """
    counts = publisher.counts()
    first: list[int] = []
    seen: set[int] = set()
    for seq in received:
        if seq not in seen:
            seen.add(seq)
            first.append(seq)
    accepted = set(publisher.seqs(ACCEPTED))
    return {
        "published": len(publisher.outcome),
        "accepted": counts[ACCEPTED],
        "returned (unroutable)": counts[RETURNED],
        "nacked": counts[NACKED],
        "unconfirmed (connection lost)": counts[UNCONFIRMED],
        "not sent (broker down)": counts[NOT_SENT],
        "delivered": len(seen),
        "duplicates": len(received) - len(seen),
        "lost": len(accepted - seen),
        "delivered but not confirmed": len(seen - accepted),
        "in order": first == sorted(first),
    }


# ---------------------------------------------------------------------------
# The test case base.

AUTHENTICATED = {"success": {"message": "Authenticated."}}
AUTH_FAILED = {"error": {"message": "Authentication failed."}}


def new_uid(prefix: str = "ID") -> str:
    """A member uid no other test uses (Barong's shape: ID + 10 hex digits)."""
    return prefix + uuid.uuid4().hex[:10].upper()


class ChaosTestCase(TestCase):
    """Starts real daemons, publishers and clients, and cleans every one up."""

    timeout = 900 if FULL else 240

    def start_daemon(self, **env: str) -> DaemonProcess:
        daemon = DaemonProcess(env=env)

        async def stop() -> None:
            # SIGTERM with the reactor running, so that clients still open can
            # answer the daemon's 1001 instead of making it wait them out.
            process = daemon.process
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(AssertionError):
                    await until(lambda: process.poll() is not None, 25, "the daemon to exit")
            daemon.cleanup()
            # The daemon declared its exchange (as Peatio does, never auto-deleted): remove it.
            with contextlib.suppress(Exception):
                publisher = await Publisher.connect()
                try:
                    await publisher.delete_exchange(daemon.exchange)
                finally:
                    await publisher.close()

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        daemon.start()
        return daemon

    async def publisher(self, daemon: DaemonProcess) -> ConfirmingPublisher:
        publisher = ConfirmingPublisher(daemon.exchange)
        self.addCleanup(lambda: Deferred.fromCoroutine(publisher.stop()))
        await publisher.start()
        return publisher

    async def client(self, daemon: DaemonProcess, uid: str | None = None, **kwargs: Any) -> WsClient:
        """A connected client; logged in as C{uid} when given."""
        client = await ws_connect(daemon.port, **kwargs)
        self.addCleanup(client.abort)
        if uid is not None:
            reply = await client.login(make_token(uid=uid))
            self.assertEqual(reply, AUTHENTICATED)
        return client

    def raw(self, daemon: DaemonProcess, **kwargs: Any) -> RawClient:
        client = RawClient(daemon.port, **kwargs)
        self.addCleanup(client.close)
        return client

    def gauge(self, daemon: DaemonProcess, name: str, **labels: str) -> float:
        return metric(daemon.metrics(), name, **labels)

    async def until_metric(
        self,
        daemon: DaemonProcess,
        name: str,
        condition: Callable[[float], bool],
        seconds: float,
        what: str,
        **labels: str,
    ) -> float:
        await until(lambda: condition(self.gauge(daemon, name, **labels)), seconds, what, interval=0.1)
        return self.gauge(daemon, name, **labels)

    def assert_alive(self, daemon: DaemonProcess) -> None:
        """The daemon process still runs and says every component is up."""
        assert daemon.process is not None
        self.assertIsNone(daemon.process.poll(), f"the daemon died:\n{daemon.log_text()[-5000:]}")
        status, body = daemon.health()
        self.assertEqual(status, 200, body)
        self.assertNotIn("Traceback", daemon.log_text())


# ---------------------------------------------------------------------------
# ``python -m tests.support.chaos_helpers FILE``: the summary ``make chaos`` prints.


def summary(path: str) -> str:
    """The figures recorded in C{path} (JSON lines), as one plain-text report."""
    lines = []
    fuzz = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        entry = json.loads(raw)
        test, mode = entry.pop("test"), entry.pop("mode")
        if test.startswith("fuzz: "):
            fuzz.append((test.removeprefix("fuzz: "), entry.get("inputs tried", 0)))
            continue
        lines.append(f"{test} ({mode})")
        width = max((len(k) for k in entry), default=0)
        lines.extend(f"    {k.ljust(width)}  {v}" for k, v in entry.items())
    if fuzz:
        lines.append("unit-level hostile input (inputs tried)")
        width = max(len(name) for name, _ in fuzz)
        lines.extend(f"    {name.ljust(width)}  {count}" for name, count in sorted(fuzz))
        lines.append(f"    {'total'.ljust(width)}  {sum(c for _, c in fuzz)}")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(summary(sys.argv[1]))
