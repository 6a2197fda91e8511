"""
Test kit for the RabbitMQ side: a fake broker that speaks AMQP 0-9-1
frames, and an L{EventConsumer} on a memory reactor wired to it.

No sockets and no real time: L{Harness} runs the consumer on a
L{MemoryReactorClock}; its connection attempts are answered by
L{FakeBroker}, which decodes what the client writes (with txAMQP's own
codec), answers it, and feeds what it has to say into the real protocol's
C{dataReceived}, so the delivery fast path is exercised byte for byte.
L{FakeBroker} also plays the broker for a L{Publisher}: it assembles the
messages published (L{FakeBroker.published}) and confirms or returns them
when told to.
"""

from __future__ import annotations

import json
import struct
from typing import Any, NamedTuple, cast

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.amqp import EventConsumer
from peatio_ws.amqp._txamqp import FrameCodec, load_spec
from peatio_ws.amqp.consumer import CANARY_PREFIX
from peatio_ws.auth import Claims
from peatio_ws.config import Settings
from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry
from peatio_ws.streams import PublicHub
from peatio_ws.testing.fakes import FakeConnection

__all__ = ["EventsConnection", "FakeBroker", "Harness", "Published", "bind_keys", "spec"]

_specs: dict[str, Any] = {}


def spec(path: str | None = None) -> Any:
    """The AMQP spec at C{path} (AMQP_SPEC's default when None), loaded once per process."""
    path = path or Settings().amqp_spec
    loaded = _specs.get(path)
    if loaded is None:
        loaded = _specs[path] = load_spec(path)
    return loaded


class EventsConnection(FakeConnection):
    """A registry connection that records the frames it is sent, and decodes them back to events."""

    def events(self) -> list[dict[str, Any]]:
        """The JSON messages sent, unframed."""
        out = []
        for frame in self.frames:
            n = frame[1] & 0x7F
            start = 2 if n < 126 else 4 if n == 126 else 10
            out.append(json.loads(frame[start:].decode("utf-8")))
        return out


class _BrokerTransport(StringTransport):
    def __init__(self, broker: FakeBroker) -> None:
        super().__init__()
        self.broker = broker
        self.aborted = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self.broker.received(data)

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


_REPLIES: dict[str, tuple[str, Any]] = {
    "connection.open": ("connection.open-ok", lambda f: {}),
    "channel.open": ("channel.open-ok", lambda f: {}),
    "exchange.declare": ("exchange.declare-ok", lambda f: {}),
    "exchange.delete": ("exchange.delete-ok", lambda f: {}),
    "queue.declare": ("queue.declare-ok", lambda f: {"queue": f["queue"]}),
    "basic.qos": ("basic.qos-ok", lambda f: {}),
    "queue.bind": ("queue.bind-ok", lambda f: {}),
    "queue.unbind": ("queue.unbind-ok", lambda f: {}),
    "basic.consume": ("basic.consume-ok", lambda f: {"consumer_tag": f["consumer_tag"]}),
    "basic.cancel": ("basic.cancel-ok", lambda f: {"consumer_tag": f["consumer_tag"]}),
    "queue.delete": ("queue.delete-ok", lambda f: {}),
    "channel.close": ("channel.close-ok", lambda f: {}),
    "connection.close": ("connection.close-ok", lambda f: {}),
    "confirm.select": ("confirm.select-ok", lambda f: {}),
}


class Published(NamedTuple):
    """One message a client published, as the broker assembled it."""

    channel: int
    exchange: str
    routing_key: bytes
    mandatory: bool
    #: The content header's properties, by (pythonized) name: content_type, delivery_mode, ...
    properties: dict[str, Any]
    body: bytes


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _as_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class FakeBroker:
    """
    The broker's side of one connection. What the client writes is decoded
    and answered; what the broker sends waits in C{outbox} until L{pump}
    feeds it to the client (in one piece, or in C{chunk}-byte pieces).

    C{hold} names methods to leave unanswered (until L{release}), C{fail}
    methods to refuse (C{name: (code, text)}; neither applies to the
    consumer's canary binding, so that they reach the members' binds),
    C{silent} makes it say nothing at all. C{queue_consumers} is what a passive
    C{queue.declare} finds (None: no such queue). C{spec} is the path of the spec to speak (AMQP_SPEC's
    default when None; RabbitMQ's extended one for publisher confirms).
    """

    def __init__(
        self,
        protocol: Any,
        frame_max: int = 131072,
        chunk: int | None = None,
        spec_path: str | None = None,
        returns: set[bytes] | None = None,
    ) -> None:
        self.spec = spec(spec_path)
        self.codec = FrameCodec(self.spec)
        self.protocol = protocol
        self.frame_max = frame_max
        self.chunk = chunk
        self.transport = _BrokerTransport(self)
        self.inbox = b""
        self.initialized = False
        self.outbox: list[bytes] = []
        self.methods: list[tuple[str, dict[str, Any]]] = []
        self.acks: list[tuple[int, bool]] = []
        self.hold: set[str] = set()
        self.held: list[tuple[int, str, dict[str, Any]]] = []
        self.fail: dict[str, tuple[int, str]] = {}
        #: What a passive queue.declare finds: the queue's consumers, or (None) no queue (404).
        self.queue_consumers: int | None = 0
        self.silent = False
        self.lost = False
        self.next_tag = 1
        self.consumer_tag = ""
        self.exchange = ""
        #: Messages published by the client, whole, in order.
        self.published: list[Published] = []
        #: Routing keys nothing routes: a message published to one with mandatory is returned.
        self.returns = returns if returns is not None else set()
        #: Per channel: the basic.publish being assembled (fields, header, body so far).
        self._incoming: dict[int, list[Any]] = {}
        protocol.makeConnection(self.transport)

    # -- from the client ---------------------------------------------------

    def received(self, data: bytes) -> None:
        self.inbox += data
        if not self.initialized:
            if len(self.inbox) < 8:
                return
            assert self.inbox[:4] == b"AMQP", self.inbox[:8]
            self.inbox = self.inbox[8:]
            self.initialized = True
            if not self.silent:
                self.send(
                    0,
                    "connection.start",
                    version_major=0,
                    version_minor=9,
                    server_properties={"product": "fake"},
                    mechanisms="AMQPLAIN PLAIN",
                    locales="en_US",
                )
        while len(self.inbox) >= 8:
            (size,) = struct.unpack_from("!I", self.inbox, 3)
            if len(self.inbox) < size + 8:
                return
            packet, self.inbox = self.inbox[: size + 8], self.inbox[size + 8 :]
            frame = self.codec.decode(packet)
            if frame.kind == "method":
                self.methods.append((frame.name, frame.fields))
                if frame.name == "basic.publish":
                    self._incoming[frame.channel] = [frame.fields, None, []]
                else:
                    self.answer(frame.channel, frame.name, frame.fields)
            elif frame.kind in ("header", "body"):
                self._content(frame.channel, frame.kind, frame.fields, frame.size, frame.body)

    def _content(self, channel: int, kind: str, properties: dict[str, Any], size: int, body: bytes) -> None:
        incoming = self._incoming.get(channel)
        assert incoming is not None, f"content on channel {channel} without basic.publish"
        if kind == "header":
            incoming[1] = (size, properties)
        else:
            incoming[2].append(body)
        size, properties = incoming[1]
        content = b"".join(incoming[2])
        if len(content) >= size:
            del self._incoming[channel]
            fields = incoming[0]
            message = Published(
                channel,
                _as_str(fields["exchange"]),
                _as_bytes(fields["routing_key"]),
                bool(fields["mandatory"]),
                properties,
                content,
            )
            self.published.append(message)
            if message.mandatory and message.routing_key in self.returns:
                self.return_message(message)

    def answer(self, channel: int, name: str, fields: dict[str, Any]) -> None:
        if name == "basic.ack":
            self.acks.append((fields["delivery_tag"], fields["multiple"]))
            return
        if name == "connection.start-ok":
            self.send(0, "connection.tune", channel_max=0, frame_max=self.frame_max, heartbeat=0)
            return
        if name in ("connection.tune-ok", "connection.close-ok", "channel.close-ok") or self.silent:
            return
        canary = name == "queue.bind" and _as_bytes(fields.get("routing_key", b"")).startswith(CANARY_PREFIX)
        if (name in self.hold and not canary) or any(held[0] == channel for held in self.held):
            # A broker answers a channel's methods in order: hold what follows too.
            self.held.append((channel, name, fields))
            return
        self._reply(channel, name, fields, canary)

    def _reply(self, channel: int, name: str, fields: dict[str, Any], canary: bool) -> None:
        if name in self.fail and not canary:
            code, text = self.fail[name]
            klass = name.partition(".")[0]
            ids = {"class_id": self.codec.class_id(klass), "method_id": 0}
            if klass == "connection":
                self.send(0, "connection.close", reply_code=code, reply_text=text, **ids)
            else:
                self.send(channel, "channel.close", reply_code=code, reply_text=text, **ids)
            return
        if name == "queue.declare" and fields["passive"]:
            if self.queue_consumers is None:
                ids = {"class_id": self.codec.class_id("queue"), "method_id": 0}
                self.send(channel, "channel.close", reply_code=404, reply_text="NOT_FOUND - no queue", **ids)
            else:
                self.send(channel, "queue.declare-ok", queue=fields["queue"], consumer_count=self.queue_consumers)
            return
        if name == "basic.consume":
            self.consumer_tag = fields["consumer_tag"]
        if name == "exchange.declare":
            self.exchange = fields["exchange"]
        reply, make = _REPLIES[name]
        self.send(channel, reply, **make(fields))

    def release(self, count: int | None = None) -> None:
        """
        Answer everything held back, and hold nothing from now on; with
        C{count}, answer only the first C{count} held, in order, and keep
        holding (the rest, what follows them, and the methods in C{hold}).
        """
        if count is not None:
            first, self.held = self.held[:count], self.held[count:]
            for channel, name, fields in first:
                self._reply(channel, name, fields, canary=False)
            return
        held, self.held = self.held, []
        for channel, name, fields in held:
            self.hold.discard(name)
            self.answer(channel, name, fields)

    def named(self, name: str) -> list[dict[str, Any]]:
        """The fields of every C{name} method the client sent."""
        return [f for n, f in self.methods if n == name]

    def names(self) -> list[str]:
        return [n for n, _ in self.methods]

    # -- to the client -----------------------------------------------------

    def method(self, channel: int, name: str, **fields: Any) -> bytes:
        return self.codec.method(channel, name, **fields)

    def send(self, channel: int, name: str, **fields: Any) -> None:
        self.outbox.append(self.method(channel, name, **fields))

    def content(self, channel: int, body: bytes) -> bytes:
        """A content header and the body frames of C{body}, split at frame_max."""
        data = self.codec.header(channel, "basic", len(body))
        step = self.frame_max - 8
        for i in range(0, len(body), step):
            data += self.codec.body(channel, body[i : i + step])
        return data

    def delivery(self, routing_key: bytes, body: bytes, channel: int = 1) -> bytes:
        """The frames of one basic.deliver, the body split at frame_max."""
        tag = self.next_tag
        self.next_tag += 1
        data = self.method(
            channel,
            "basic.deliver",
            consumer_tag=self.consumer_tag,
            delivery_tag=tag,
            redelivered=False,
            exchange=self.exchange,
            routing_key=routing_key,
        )
        return data + self.content(channel, body)

    def deliver(self, routing_key: bytes | str, body: bytes | str, channel: int = 1) -> int:
        """Queue one delivery; returns its delivery tag."""
        key = routing_key.encode() if isinstance(routing_key, str) else routing_key
        data = body.encode() if isinstance(body, str) else body
        self.outbox.append(self.delivery(key, data, channel))
        return self.next_tag - 1

    def confirm(self, delivery_tag: int, multiple: bool = False, channel: int = 1, ok: bool = True) -> None:
        """Queue a publisher confirm (C{basic.ack}), or with C{ok=False} a C{basic.nack}."""
        name = "basic.ack" if ok else "basic.nack"
        self.send(channel, name, delivery_tag=delivery_tag, multiple=multiple)

    def return_message(self, message: Published, reply_code: int = 312, reply_text: str = "NO_ROUTE") -> None:
        """Queue the C{basic.return} of a message published with C{mandatory}."""
        self.outbox.append(
            self.method(
                message.channel,
                "basic.return",
                reply_code=reply_code,
                reply_text=reply_text,
                exchange=message.exchange,
                routing_key=message.routing_key,
            )
            + self.content(message.channel, message.body)
        )

    def pump(self) -> None:
        """Feed the client until neither side has anything more to say."""
        while True:
            if self.lost:
                self.outbox = []
                return
            if self.transport.disconnecting:
                self.outbox = []
                self.lost = True
                reason = ConnectionLost() if self.transport.aborted else ConnectionDone()
                self.protocol.connectionLost(Failure(reason))
                return
            if not self.outbox:
                return
            data = b"".join(self.outbox)
            self.outbox = []
            step = self.chunk or len(data)
            for i in range(0, len(data), step):
                if self.transport.disconnecting:
                    break
                self.protocol.dataReceived(data[i : i + step])

    def drop(self) -> None:
        """The TCP connection breaks."""
        self.lost = True
        self.protocol.connectionLost(Failure(ConnectionLost("gone")))


# ---------------------------------------------------------------------------


class Harness:
    """
    An EventConsumer on a memory reactor, with its real registry and
    metrics; with C{public=True}, also a real L{PublicHub} (C{hub}) for the
    public events (SPEC §7).
    """

    def __init__(self, test: SynchronousTestCase, *, public: bool = False, **settings: Any) -> None:
        defaults: dict[str, Any] = {
            "rabbitmq_heartbeat": 0,
            "rabbitmq_events_exchange": "peatio.events.test",
            # Most tests let time pass without pumping the fake broker, which
            # the health probe would (rightly) take for a silent broker:
            # ProbeTests set a real interval.
            "health_probe_interval": 3600.0,
        }
        defaults.update(settings)
        self.test = test
        self.settings = Settings(**defaults)
        self.reactor = MemoryReactorClock()
        self.metrics = Metrics()
        self.registry = Registry(self.metrics)
        self.hub = (
            PublicHub(self.registry, self.metrics, self.settings.ranger_orderbook_max_increments) if public else None
        )
        self.consumer = EventConsumer(self.settings, self.registry, self.metrics, reactor=self.reactor, hub=self.hub)
        self.attempts = 0
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        test.addCleanup(globalLogPublisher.removeObserver, observer)
        self.conns: dict[str, EventsConnection] = {}

    def start(self) -> None:
        self.consumer.startService()

    def accept(self, **kwargs: Any) -> FakeBroker:
        """Accept the consumer's latest connection attempt (a fake broker, not pumped yet)."""
        self.test.assertEqual(len(self.reactor.tcpClients), self.attempts + 1, "no connection attempt pending")
        host, port, factory, _, _ = self.reactor.tcpClients[self.attempts]
        self.attempts += 1
        return FakeBroker(factory.buildProtocol(IPv4Address("TCP", host, port)), **kwargs)

    def connect(self, **kwargs: Any) -> FakeBroker:
        """Answer the consumer's latest connection attempt with a fake broker, all the way."""
        broker = self.accept(**kwargs)
        broker.pump()
        return broker

    def refuse(self) -> None:
        """Refuse the latest connection attempt."""
        factory = self.reactor.tcpClients[self.attempts][2]
        self.attempts += 1
        factory.clientConnectionFailed(self.reactor.connectors[-1], Failure(ConnectionRefusedError()))

    def consuming(self, **kwargs: Any) -> FakeBroker:
        self.start()
        broker = self.connect(**kwargs)
        self.test.assertTrue(self.consumer.up)
        return broker

    def join(self, uid: str, conn_id: str | None = None) -> EventsConnection:
        conn = EventsConnection(conn_id or f"{uid}-{len(self.conns)}")
        self.conns[conn.conn_id] = conn
        self.registry.authenticate(conn, Claims(uid=uid, jti=f"jti-{conn.conn_id}", expires_at=None))
        return conn

    def leave(self, conn: EventsConnection) -> None:
        self.registry.deauthenticate(conn)

    def value(self, name: str, **labels: str) -> float:
        v = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    def dropped(self, reason: str) -> float:
        return self.value("peatio_ws_events_dropped_total", reason=reason)

    def logged(self, text: str) -> list[LogEvent]:
        return [e for e in self.events if text in formatEvent(e)]


def bind_keys(broker: FakeBroker, name: str = "queue.bind", canary: bool = False) -> list[bytes]:
    """
    The routing keys of every bind (or unbind) the client sent, as bytes;
    the consumer's canary binding (set up on every connection) only with C{canary}.
    """
    keys = [_as_bytes(f["routing_key"]) for f in broker.named(name)]
    return [k for k in keys if canary or not k.startswith(CANARY_PREFIX)]
