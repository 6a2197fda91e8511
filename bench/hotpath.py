"""
In-process microbenchmarks of the daemon's two hot paths, free of the
kernel, the broker and the noise of other processes: the Python CPU each
costs, for comparing one code change with the next.

 - delivery: AMQP bytes as RabbitMQ sends them (C{basic.deliver} + header +
   body, 64 KiB per read as Twisted reads) through the real consumer,
   registry and L{StreamProtocol}s (on in-memory transports) to the
   written frame: microseconds per event;
 - connect: the WebSocket handshake, challenge and RS256 authentication of
   one connection through the real factory and protocol: microseconds per
   connection, and the memory each connection keeps (tracemalloc);
 - bindings: the consumer's bookkeeping of one member's binding in a storm
   of logins (L{Bindings}: join, take, bind-ok): microseconds per member.

C{python -m bench hotpath}.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from bench import events
from peatio_ws.amqp import EventConsumer
from peatio_ws.config import Settings
from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry
from peatio_ws.testing import Client, client_frame, make_token, rsa_key, settings_for_tests
from peatio_ws.testing.amqp import FakeBroker
from peatio_ws.testing.factory import stream_factory
from peatio_ws.testing.frames import server_frame
from peatio_ws.websocket import StreamFactory


def _factory(settings: Settings, registry: Registry, metrics: Metrics, clock: Clock) -> StreamFactory:
    return stream_factory(settings, clock, registry=registry, metrics=metrics)


def _connect(factory: StreamFactory, token: str, broker: FakeBroker | None = None) -> Client:
    client = Client.connect(factory)
    client.messages()
    client.send_json({"jwt": "Bearer " + token})
    reply = client.messages()
    if not reply and broker is not None:
        # The reply waits for the member's binding (bind-ok) when a consumer is there.
        broker.pump()
        reply = client.messages()
    assert reply == [{"success": {"message": "Authenticated."}}], reply
    client.transport.clear()
    return client


def delivery(members: int = 1000, n: int = 100_000, read_size: int = 65536) -> dict[str, float]:
    """Python CPU per event from AMQP bytes to written WebSocket frames (members x 1 connection)."""
    clock = Clock()
    clock.advance(time.time())
    settings = settings_for_tests(
        websocket_auth_timeout=0.0, rabbitmq_heartbeat=0, rabbitmq_events_exchange="peatio.events.bench"
    )
    metrics = Metrics()
    registry = Registry(metrics)
    reactor = MemoryReactorClock()
    consumer = EventConsumer(settings, registry, metrics, reactor=reactor)
    consumer.startService()
    host, port, amqp_factory, _, _ = reactor.tcpClients[0]
    broker = FakeBroker(amqp_factory.buildProtocol(IPv4Address("TCP", host, port)))
    broker.pump()
    assert consumer.up
    factory = _factory(settings, registry, metrics, clock)
    uids = [f"HP{i:05d}" for i in range(members)]
    clients = [_connect(factory, make_token(now=clock.seconds(), uid=uid, exp=None), broker) for uid in uids]
    broker.pump()  # the binds
    keys = [f"private.{uid}.{events.EVENT}".encode() for uid in uids]
    wire = b"".join(broker.delivery(keys[i % members], events.body(i // members + 1, i)) for i in range(n))
    chunks = [wire[i : i + read_size] for i in range(0, len(wire), read_size)]
    protocol: Any = broker.protocol
    gc.collect()
    t0 = time.process_time()
    for chunk in chunks:
        protocol.dataReceived(chunk)
    cpu = time.process_time() - t0
    written = sum(len(c.transport.value()) for c in clients)
    expected = sum(len(server_frame(events.message(events.body(i // members + 1, i)))) for i in range(n))
    assert written == expected, (written, expected)
    consumer.stopService()
    return {"events": n, "us_per_event": 1e6 * cpu / n}


def public_fanout(subscribers: int = 10_000, reads: int = 8, per_read: int = 25) -> dict[str, float]:
    """
    Python CPU per copy of one market's ob-inc, from AMQP bytes to frames
    written on C{subscribers} anonymous ranger connections (in memory):
    C{reads} reads of C{per_read} increments each, as the daemon gets them
    when the broker delivers faster than it writes.
    """
    from peatio_ws.streams import PublicHub

    clock = Clock()
    clock.advance(time.time())
    settings = settings_for_tests(
        websocket_auth_timeout=0.0, rabbitmq_heartbeat=0, rabbitmq_events_exchange="peatio.events.bench"
    )
    metrics = Metrics()
    registry = Registry(metrics)
    hub = PublicHub(registry, metrics, settings.ranger_orderbook_max_increments)
    reactor = MemoryReactorClock()
    consumer = EventConsumer(settings, registry, metrics, reactor=reactor, hub=hub)
    consumer.startService()
    host, port, amqp_factory, _, _ = reactor.tcpClients[0]
    broker = FakeBroker(amqp_factory.buildProtocol(IPv4Address("TCP", host, port)))
    broker.pump()
    assert consumer.up
    factory = _factory(settings, registry, metrics, clock)
    factory.hub = hub
    protocol: Any = broker.protocol
    seq = events.SEQ0
    protocol.dataReceived(broker.delivery(b"public.btcusd.ob-snap", events.snapshot_body(seq)))
    path = "/api/v2/ranger/public/?stream=btcusd.ob-inc"
    clients = [Client.connect(factory, path=path) for _ in range(subscribers)]
    for c in clients:
        c.transport.clear()
    cpu = 0.0
    size = 0
    gc.collect()
    for _ in range(reads):
        wire = b"".join(
            broker.delivery(b"public.btcusd.ob-inc", events.public_body(seq + i, events.OB_INC_TAIL, 128))
            for i in range(1, per_read + 1)
        )
        seq += per_read
        t0 = time.process_time()
        protocol.dataReceived(wire)
        cpu += time.process_time() - t0
        size = len(clients[-1].transport.value())
        for c in clients:
            c.transport.clear()
    assert size == per_read * events.PublicLayout("btcusd.ob-inc", 128).frame, size
    consumer.stopService()
    copies = subscribers * reads * per_read
    return {"copies": copies, "us_per_copy": 1e6 * cpu / copies, "ms_per_read": 1000 * cpu / reads}


def connect_kit(tokens: int, prefix: str) -> tuple[StreamFactory, list[str]]:
    """A real factory on a fake clock (no auth timeout) and C{tokens} RS256 tokens of distinct members."""
    clock = Clock()
    clock.advance(time.time())
    settings = settings_for_tests(websocket_auth_timeout=0.0)
    metrics = Metrics()
    factory = _factory(settings, Registry(metrics), metrics, clock)
    rsa_key()
    return factory, [make_token(now=clock.seconds(), uid=f"{prefix}{i:05d}", exp=None) for i in range(tokens)]


def connect(n: int = 3000) -> dict[str, float]:
    """
    Python CPU per handshake + authentication with a token never seen (the
    RS256 check included), then with one that logged in before (the verifier
    remembers it), and tracemalloc bytes kept per connection (a new token's:
    its remembered claims included).
    """
    factory, tokens = connect_kit(100 + 2 * n, "HC")
    keep = [_connect(factory, tokens[i]) for i in range(100)]  # warm-up
    fresh, memory = tokens[100 : 100 + n], tokens[100 + n :]
    # What the test client itself spends masking the token (subtracted).
    t0 = time.process_time()
    for token in fresh:
        client_frame(b'{"jwt":"Bearer ' + token.encode() + b'"}')
    own = time.process_time() - t0
    gc.collect()
    t0 = time.process_time()
    keep += [_connect(factory, token) for token in fresh]
    cpu = time.process_time() - t0 - own
    gc.collect()
    t0 = time.process_time()
    keep += [_connect(factory, token) for token in fresh]
    cpu_again = time.process_time() - t0 - own
    del keep
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [_connect(factory, token) for token in memory]
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    # The test client's own objects (transport, frames list) are counted too: an upper bound.
    per = (after - before) / len(kept)
    return {
        "connections": n,
        "us_per_connection": 1e6 * cpu / n,
        "us_per_connection_again": 1e6 * cpu_again / n,
        "kib_per_connection": per / 1024,
    }


def bindings(members: int = 15_000, rounds: int = 7) -> dict[str, float]:
    """Python time per member of a storm of logins through L{Bindings} (join, take, bind-ok), best of C{rounds}."""
    from peatio_ws.amqp.bindings import Bindings
    from peatio_ws.amqp.consumer import BIND_BATCH, UNBIND_BATCH

    uids = [f"HB{i:05d}" for i in range(members)]
    best = float("inf")
    for _ in range(rounds):
        books = Bindings(Clock(), 5.0, lambda: None)
        t0 = time.perf_counter()
        for uid in uids:
            books.join(uid)
            for member, bind in books.take(BIND_BATCH, UNBIND_BATCH):
                books.done(member, bind)
        best = min(best, time.perf_counter() - t0)
    return {"members": members, "us_per_member": 1e6 * best / members}


def main() -> int:
    d = delivery()
    print(f"delivery (in-process, 1,000 members x 1 connection): {d['us_per_event']:.1f} µs Python CPU per event")
    f = public_fanout()
    print(
        f"public fan-out (in-process, 10,000 ob-inc subscribers, 25 increments per read): {f['us_per_copy']:.3f} µs "
        f"Python CPU per copy, {f['ms_per_read']:.1f} ms per read"
    )
    c = connect()
    print(
        f"connect + auth (in-process): {c['us_per_connection']:.0f} µs Python CPU per connection with a new "
        f"token, {c['us_per_connection_again']:.0f} with one that logged in before; "
        f"{c['kib_per_connection']:.2f} KiB kept per connection (tracemalloc, incl. the test client's objects)"
    )
    b = bindings()
    print(
        f"bindings (in-process, a storm of 15,000 logins): {b['us_per_member']:.2f} µs per member "
        "(join, take, bind-ok)"
    )
    return 0
