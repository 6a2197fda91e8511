"""
L{peatio_ws.amqp.EventConsumer} against the real RabbitMQ on localhost:5672.

Each test uses its own exchange (C{peatio-ws-test.<uuid>}), and removes it
and the consumer's queue afterwards. They fail, never skip, when the broker
is not reachable. Connections are fakes in the real L{Registry}.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from peatio_ws.amqp import EventConsumer, bindings
from peatio_ws.amqp import Publisher as AmqpPublisher
from peatio_ws.auth import Claims
from peatio_ws.config import Settings
from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry
from tests.support import broker
from tests.support.broker import HOST, PASSWORD, PORT, USER, close_connection_named, queue_counts, rabbitmqctl
from tests.support.daemon import free_port
from tests.support.publisher import Publisher
from tests.support.waiting import sleep, within
from tests.support.waiting import until as wait_for


class FakeConnection:
    """A registry connection that records the frames it is sent."""

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        self.frames: list[bytes] = []
        self.lost = 0

    def send_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True

    def revoke(self) -> None:
        pass

    def events_lost(self) -> None:
        """Told that events may have been lost (the daemon would close it with 1012)."""
        self.lost += 1

    def payloads(self) -> list[bytes]:
        """The raw messages sent, unframed."""
        out = []
        for frame in self.frames:
            n = frame[1] & 0x7F
            out.append(frame[2 if n < 126 else 4 if n == 126 else 10 :])
        return out

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.payloads()]


class EventConsumerBrokerTests(TestCase):
    """The consumer, a publisher and a unique exchange on the real broker."""

    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        self.exchange = f"peatio-ws-test.{uuid.uuid4().hex}"
        self.publisher = await Publisher.connect()
        self.addCleanup(lambda: Deferred.fromCoroutine(self.publisher.close()))
        await self.publisher.declare_exchange(self.exchange)
        self.addCleanup(lambda: Deferred.fromCoroutine(self.publisher.delete_exchange(self.exchange)))
        self.metrics = Metrics()
        self.registry = Registry(self.metrics)
        self.conns: list[FakeConnection] = []

    async def consumer(self, carried: bool = False, **settings: Any) -> EventConsumer:
        """
        Start a consumer on this test's exchange; stopped (and its queue
        deleted) afterwards. C{carried}: told that connections were carried
        across a restart in place before it starts.
        """
        base = Settings(
            rabbitmq_host=HOST,
            rabbitmq_port=PORT,
            rabbitmq_user=USER,
            rabbitmq_password=PASSWORD,
            rabbitmq_events_exchange=self.exchange,
            rabbitmq_unbind_delay=0.2,
            rabbitmq_queue_expires=60,
            rabbitmq_heartbeat=10,
        )
        consumer = EventConsumer(dataclasses.replace(base, **settings), self.registry, self.metrics)
        if carried:
            consumer.carried_over()
        consumer.startService()

        async def stop() -> None:
            await within(consumer.stopService(), 15, "the consumer to stop")
            await self.publisher.delete_queue(consumer.queue_name)

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        await within(consumer.when_consuming(), 10, "the consumer to start consuming")
        return consumer

    def join(self, uid: str) -> FakeConnection:
        conn = FakeConnection(f"{uid}-{len(self.conns)}")
        self.conns.append(conn)
        self.registry.authenticate(conn, Claims(uid=uid, jti=f"jti-{conn.conn_id}", expires_at=None))
        return conn

    def publish(self, routing_key: str, payload: Any) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
        self.publisher.publish(self.exchange, routing_key, body)

    def value(self, name: str, **labels: str) -> float:
        v = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    # -- tests ----------------------------------------------------------------

    async def test_routes_to_member_only(self) -> None:
        """Each event reaches every connection of its member on this process, and no one else."""
        a = [self.join("IDAAAA") for _ in range(3)]
        b = [self.join("IDBBBB") for _ in range(2)]
        await self.consumer()
        for i in range(10):
            self.publish("private.IDAAAA.order", {"id": i, "who": "a"})
            self.publish("private.IDBBBB.trade", {"id": i, "who": "b"})
            self.publish("private.IDCCCC.order", {"id": i, "who": "c"})
            self.publish("public.btcusd.trades", {"id": i})
        await wait_for(lambda: all(len(c.frames) == 10 for c in a + b), 10, "10 events on every connection")
        # A marker after everything: nothing else arrives before it.
        self.publish("private.IDAAAA.order", {"marker": True})
        await wait_for(lambda: all(len(c.frames) == 11 for c in a), 10, "the marker")
        for conn in a:
            self.assertEqual(conn.events(), [{"order": {"id": i, "who": "a"}} for i in range(10)] + [
                {"order": {"marker": True}}
            ])
        for conn in b:
            self.assertEqual(conn.events(), [{"trade": {"id": i, "who": "b"}} for i in range(10)])
        self.assertEqual(self.value("peatio_ws_events_received_total", event="order"), 11)
        self.assertEqual(self.value("peatio_ws_events_delivered_total", event="order"), 33)
        self.assertEqual(self.value("peatio_ws_events_delivered_total", event="trade"), 20)
        # Not bound, so never routed here.
        self.assertEqual(self.value("peatio_ws_events_dropped_total", reason="no_connection"), 0)

    async def test_bind_all(self) -> None:
        """
        RABBITMQ_PRIVATE_BINDING=all on the real broker: the queue has one
        private binding, private.*.*, whoever connects; members here get
        their events, in order; members connected elsewhere are dropped.
        """
        a = self.join("IDALLA")
        consumer = await self.consumer(rabbitmq_private_binding="all")
        b = self.join("IDALLB")
        bindings = await broker.bindings_of(consumer.queue_name)
        self.assertEqual(
            sorted(key for _, key in bindings), sorted([f"peatio-ws.canary.{consumer.queue_name}", "private.*.*"])
        )
        for i in range(20):
            self.publish("private.IDALLA.order", {"seq": i})
            self.publish("private.IDELSEWHERE.order", {"seq": i})
            self.publish("private.IDALLB.trade", {"seq": i})
        await wait_for(lambda: len(a.frames) == 20 and len(b.frames) == 20, 10, "20 events for each member here")
        self.assertEqual(a.events(), [{"order": {"seq": i}} for i in range(20)])
        self.assertEqual(b.events(), [{"trade": {"seq": i}} for i in range(20)])
        await wait_for(
            lambda: self.value("peatio_ws_events_dropped_total", reason="no_connection") == 20,
            10,
            "the 20 events of the member connected elsewhere dropped",
        )
        self.assertEqual(consumer.bound, frozenset())

    async def test_order_preserved(self) -> None:
        """A member's events arrive in publishing order."""
        conn = self.join("IDORDER")
        await self.consumer()
        for i in range(500):
            self.publish("private.IDORDER.order" if i % 2 else "private.IDORDER.trade", {"seq": i})
        await wait_for(lambda: len(conn.frames) == 500, 15, "500 events")
        self.assertEqual([next(iter(e.values()))["seq"] for e in conn.events()], list(range(500)))

    async def test_bind_unbind_as_members_come_and_go(self) -> None:
        """Bound while a member has a connection, unbound after the delay, kept if it comes back in time."""
        consumer = await self.consumer(rabbitmq_unbind_delay=0.3)
        self.assertEqual(consumer.bound, set())
        first = self.join("IDCOME")
        await wait_for(lambda: "IDCOME" in consumer.bound, 5, "the binding of IDCOME")
        self.assertEqual(self.value("peatio_ws_rabbitmq_bindings"), 1)
        self.publish("private.IDCOME.order", {"n": 1})
        await wait_for(lambda: len(first.frames) == 1, 5, "the first event")

        # Leaves and comes back within the delay: the binding stays throughout.
        self.registry.deauthenticate(first)
        second = self.join("IDCOME")
        await sleep(0.5)
        self.assertIn("IDCOME", consumer.bound)
        self.publish("private.IDCOME.order", {"n": 2})
        await wait_for(lambda: len(second.frames) == 1, 5, "the event after coming back")

        # Leaves for good: unbound after the delay; its events no longer reach the queue.
        self.registry.deauthenticate(second)
        await wait_for(lambda: "IDCOME" not in consumer.bound, 5, "IDCOME to be unbound")
        self.assertEqual(self.value("peatio_ws_rabbitmq_bindings"), 0)
        other = self.join("IDOTHER")
        await wait_for(lambda: "IDOTHER" in consumer.bound, 5, "the binding of IDOTHER")
        self.publish("private.IDCOME.order", {"n": 3})
        self.publish("private.IDOTHER.order", {"marker": True})
        await wait_for(lambda: len(other.frames) == 1, 5, "the marker")
        self.assertEqual(self.value("peatio_ws_events_received_total", event="order"), 3)
        self.assertEqual(self.value("peatio_ws_events_dropped_total", reason="no_connection"), 0)

    async def test_storm_covered(self) -> None:
        """
        RABBITMQ_STORM_BINDING_AT + 50 logins at once (a reconnect storm) on the real broker:
        each is told its events flow, through the covering binding
        (private.*.*) or its own, and an event published the moment it is
        told reaches it; once every member is bound the covering binding is
        gone, the queue has exactly the members' bindings, and each later
        event arrives once.
        """
        logged: list[str] = []

        def observe(event: Any) -> None:
            logged.append(formatEvent(event))

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        consumer = await self.consumer(rabbitmq_unbind_delay=60)
        uids = [f"IDSTORM{i:04d}" for i in range(Settings().rabbitmq_storm_binding_at + 50)]
        conns: dict[str, FakeConnection] = {}
        for uid in uids:
            conn = conns[uid] = FakeConnection(f"{uid}-0")
            told = self.registry.authenticate(conn, Claims(uid=uid, jti=f"jti-{uid}", expires_at=None))
            if told is None:
                self.publish(f"private.{uid}.order", {"n": 1})
            else:
                told.addCallback(lambda _, key: self.publish(key, {"n": 1}), f"private.{uid}.order")
        await wait_for(lambda: all(len(c.frames) == 1 for c in conns.values()), 20, "the first event of everyone")
        self.assertEqual(len([line for line in logged if "logins wait for their members' bindings" in line]), 1)
        await wait_for(lambda: any("every member bound" in line for line in logged), 20, "the covering binding to go")
        self.assertEqual(consumer.bound, frozenset(uids))

        async def unbound() -> bool:
            return "private.*.*" not in [key for _, key in await broker.bindings_of(consumer.queue_name)]

        for _ in range(50):
            if await unbound():
                break
            await sleep(0.1)
        keys = sorted(key for _, key in await broker.bindings_of(consumer.queue_name))
        self.assertEqual(keys, sorted([f"peatio-ws.canary.{consumer.queue_name}"] + [f"private.{u}.*" for u in uids]))
        for uid in uids:
            self.publish(f"private.{uid}.order", {"n": 2})
        self.publish("private.IDELSEWHERE.order", {"n": 2})
        await wait_for(lambda: all(len(c.frames) == 2 for c in conns.values()), 20, "the second event of everyone")
        await sleep(0.3)
        for conn in conns.values():
            self.assertEqual(conn.events(), [{"order": {"n": 1}}, {"order": {"n": 2}}])

    async def test_forced_close_loses_nothing(self) -> None:
        """
        The broker closing the consumer's connection while events are being
        published loses none: the queue outlives the gap, the consumer
        reconnects to it, and every event arrives (in order).
        """
        conn = self.join("IDCLOSE")
        consumer = await self.consumer()
        sent: list[int] = []

        def publish_some() -> None:
            for _ in range(5):
                self.publish("private.IDCLOSE.order", {"seq": len(sent)})
                sent.append(len(sent))

        loop = LoopingCall(publish_some)
        loop.clock = reactor
        loop.start(0.02)
        try:
            await wait_for(lambda: len(conn.frames) >= 50, 10, "events before the close")
            await close_connection_named(consumer.queue_name)
            await wait_for(lambda: not consumer.up, 10, "the consumer to notice the close")
            published_during_gap = len(sent)
            await within(consumer.when_consuming(), 15, "the consumer to reconnect")
            self.assertGreater(len(sent), published_during_gap)
            await sleep(0.3)
        finally:
            loop.stop()
        total = len(sent)
        seqs: list[int] = []
        await wait_for(
            lambda: len({e["order"]["seq"] for e in conn.events()}) == total, 15, f"all {total} events after reconnect"
        )
        for e in conn.events():
            if e["order"]["seq"] not in seqs:
                seqs.append(e["order"]["seq"])
        # Messages delivered but not yet acked when the connection went may
        # come again (at-least-once); none is lost and the order holds.
        self.assertEqual(seqs, list(range(total)))
        self.assertEqual(self.value("peatio_ws_rabbitmq_connects_total"), 2)
        self.assertEqual(self.value("peatio_ws_rabbitmq_up"), 1)
        # The queue was intact: nothing was lost, no one is told so (SPEC §8).
        self.assertEqual(conn.lost, 0)
        self.assertEqual(self.value("peatio_ws_rabbitmq_queue_lost_total"), 0)

    async def test_non_ascii_and_large_bodies(self) -> None:
        """Non-ASCII UTF-8 bodies and a 1 MB body arrive byte for byte."""
        conn = self.join("IDUTF8")
        await self.consumer()
        chinese = json.dumps({"market": "比特币/人民币", "side": "买", "price": "1.5"}, ensure_ascii=False).encode()
        large = json.dumps({"blob": "数" * (350 * 1024)}, ensure_ascii=False).encode()
        self.assertGreater(len(large), 1024 * 1024)
        self.publisher.publish(self.exchange, "private.IDUTF8.order", chinese)
        self.publisher.publish(self.exchange, "private.IDUTF8.trade", large)
        self.publisher.publish(self.exchange, "private.IDUTF8.order", chinese)
        await wait_for(lambda: len(conn.frames) == 3, 15, "three events")
        self.assertEqual(
            conn.payloads(),
            [b'{"order":' + chinese + b"}", b'{"trade":' + large + b"}", b'{"order":' + chinese + b"}"],
        )

    async def test_the_publisher(self) -> None:
        """
        peatio_ws.amqp.Publisher in confirm mode: a message routed nowhere
        comes back and is still confirmed; non-ASCII and multi-frame bodies
        are confirmed and reach the member byte for byte.
        """
        conn = self.join("IDPUB")
        await self.consumer()
        returns: list[tuple[bytes, bytes, int, str]] = []
        publisher = await AmqpPublisher.connect(
            reactor,
            host=HOST,
            port=PORT,
            user=USER,
            password=PASSWORD,
            exchange=self.exchange,
            confirms=True,
            on_return=lambda *args: returns.append(args),
        )
        self.addCleanup(lambda: Deferred.fromCoroutine(publisher.close()))
        await within(publisher.publish("private.NOBODY.order", b"{}", mandatory=True), 10, "the confirm")
        self.assertEqual(returns, [(b"private.NOBODY.order", b"{}", 312, "NO_ROUTE")])
        chinese = json.dumps({"market": "比特币/人民币"}, ensure_ascii=False).encode()
        large = json.dumps({"blob": "数" * (100 * 1024)}, ensure_ascii=False).encode()
        confirms = [publisher.publish("private.IDPUB.order", body) for body in (chinese, large, chinese)]
        for d in confirms:
            await within(d, 10, "the confirms")
        self.assertEqual(publisher.unconfirmed, 0)
        await wait_for(lambda: len(conn.frames) == 3, 15, "three events")
        self.assertEqual(conn.payloads(), [b'{"order":' + body + b"}" for body in (chinese, large, chinese)])

    async def test_malformed_and_stray_messages(self) -> None:
        """
        Bodies that are not JSON, and messages with other routing keys, are
        counted and acknowledged, and the consumer goes on.
        """
        conn = self.join("IDBAD")
        consumer = await self.consumer()
        for body in [b"not json", b"\xff\xfe\x00", b"", b'{"a":NaN}', b"{" + "币".encode() * 10]:
            self.publisher.publish(self.exchange, "private.IDBAD.order", body)
        # Straight into the queue through the default exchange: the routing
        # key is the queue name, not private.<uid>.<event>.
        self.publisher.publish("", consumer.queue_name, b"{}")
        self.publish("private.IDBAD.order", {"ok": True})
        await wait_for(lambda: len(conn.frames) == 1, 10, "the good event")
        self.assertEqual(conn.events(), [{"order": {"ok": True}}])
        self.assertEqual(self.value("peatio_ws_events_dropped_total", reason="malformed"), 5)
        self.assertEqual(self.value("peatio_ws_events_dropped_total", reason="bad_routing_key"), 1)
        # Every message was acknowledged: nothing ready, nothing unacked.
        ready, unacked = await queue_counts(consumer.queue_name)
        self.assertEqual((ready, unacked), (0, 0))

    async def test_queue_survives_and_stop_deletes_it(self) -> None:
        """
        The queue is shared-declarable with the same arguments (not exclusive,
        x-expires in ms), and a clean stop deletes it.
        """
        consumer = await self.consumer(rabbitmq_queue_expires=45)
        ok = await self.publisher.redeclare_queue(consumer.queue_name, {"x-expires": 45000})
        self.assertEqual(ok.consumer_count, 1)
        self.assertTrue(consumer.up)
        await within(consumer.stopService(), 15, "the consumer to stop")
        self.assertFalse(consumer.up)
        self.assertFalse(await self.publisher.queue_exists(consumer.queue_name))

    async def test_restart_hands_the_queue_over(self) -> None:
        """
        RABBITMQ_HANDOVER_FILE: a clean stop keeps the queue and its bindings;
        events published before the next process consumes wait in it; the
        next process (a new registry) consumes the same queue, binds no one
        handed over, and unbinds the member that did not come back.
        """
        self.patch(bindings, "HANDED_UNBIND_DELAY", 0.5)
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "queue.json")
        self.join("IDKEEP")
        self.join("IDGOES")
        first = await self.consumer(rabbitmq_handover_file=path, rabbitmq_unbind_delay=0.5)
        await wait_for(lambda: first.bound == {"IDKEEP", "IDGOES"}, 10, "both members bound")
        await within(first.stopService(), 15, "the first consumer to stop")
        self.assertTrue(os.path.exists(path))
        self.assertIn((self.exchange, "private.IDKEEP.*"), await broker.bindings_of(first.queue_name))
        self.publish("private.IDKEEP.order", {"id": "meanwhile"})

        self.metrics = Metrics()
        self.registry = Registry(self.metrics)
        back = self.join("IDKEEP")
        second = await self.consumer(rabbitmq_handover_file=path, rabbitmq_unbind_delay=0.5)
        self.assertEqual(second.queue_name, first.queue_name)
        self.assertFalse(os.path.exists(path))
        await wait_for(lambda: back.events() == [{"order": {"id": "meanwhile"}}], 10, "the event that waited")
        await wait_for(lambda: second.bound == {"IDKEEP"}, 10, "IDGOES unbound after the delay")
        self.assertEqual(
            sorted(await broker.bindings_of(second.queue_name)),
            sorted([(self.exchange, f"peatio-ws.canary.{second.queue_name}"), (self.exchange, "private.IDKEEP.*")]),
        )
        self.publish("private.IDKEEP.order", {"id": "after"})
        await wait_for(lambda: len(back.frames) == 2, 10, "an event after the take-over")

    async def test_carried_members_told_when_the_handed_queue_is_gone(self) -> None:
        """
        A restart in place carries a member's connection, counting on the
        queue left for it; if that queue is gone when the next program comes
        to consume it, what was published meanwhile may be lost: the member
        is told (1012), never left with a silent gap (SPEC §8).
        """
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "queue.json")
        self.join("IDCARRY")
        first = await self.consumer(rabbitmq_handover_file=path)
        await wait_for(lambda: first.bound == {"IDCARRY"}, 10, "the member bound")
        await within(first.stopService(), 15, "the first consumer to stop")
        await self.publisher.delete_queue(first.queue_name)

        self.metrics = Metrics()
        self.registry = Registry(self.metrics)
        carried = self.join("IDCARRY")  # joined before the next consumer runs, as a carried connection is
        second = await self.consumer(rabbitmq_handover_file=path, carried=True)
        await wait_for(lambda: carried.lost == 1, 10, "1012 to the carried member")
        self.assertEqual(self.value("peatio_ws_rabbitmq_queue_lost_total"), 1)
        self.assertEqual(second.queue_name, first.queue_name)

    # -- continuity (SPEC §8) ------------------------------------------------------

    async def test_deleted_queue_is_never_a_silent_gap(self) -> None:
        """
        An operator deletes the queue while we consume: the broker cancels
        our consumer (consumer_cancel_notify), every authenticated
        connection is told (1012), the queue comes back with its bindings,
        and events flow again.
        """
        first = self.join("IDGONE1")
        other = self.join("IDGONE2")
        consumer = await self.consumer()
        self.publish("private.IDGONE1.order", {"id": 1})
        await wait_for(lambda: len(first.frames) == 1, 10, "the first event")
        await self.publisher.delete_queue(consumer.queue_name)
        await wait_for(lambda: first.lost == 1 and other.lost == 1, 15, "1012 to every authenticated connection")
        self.assertEqual(self.value("peatio_ws_rabbitmq_consumer_cancelled_total"), 1)
        self.assertEqual(self.value("peatio_ws_rabbitmq_queue_lost_total"), 1)
        self.assertEqual(len(self.registry), 0)
        await within(consumer.when_consuming(), 15, "the consumer to consume again")
        back = self.join("IDGONE1")
        await wait_for(lambda: "IDGONE1" in consumer.bound, 10, "the member bound again")
        self.publish("private.IDGONE1.order", {"id": 2})
        await wait_for(lambda: back.events() == [{"order": {"id": 2}}], 10, "events after the queue came back")
        self.assertEqual(first.lost, 1)

    async def test_quorum_queue(self) -> None:
        """RABBITMQ_QUEUE_TYPE=quorum: the process queue is a durable quorum queue, and events flow."""
        conn = self.join("IDQUORUM")
        consumer = await self.consumer(rabbitmq_queue_type="quorum")
        listing = await rabbitmqctl("list_queues", "name", "type", "durable")
        [line] = [row for row in listing.splitlines() if row.startswith(consumer.queue_name + "\t")]
        self.assertEqual(line.split("\t")[1:], ["quorum", "true"])
        for i in range(20):
            self.publish("private.IDQUORUM.trade", {"id": i})
        await wait_for(lambda: len(conn.frames) == 20, 10, "20 events through the quorum queue")
        self.assertEqual([e["trade"]["id"] for e in conn.events()], list(range(20)))

    async def test_nodes_tried_in_turn(self) -> None:
        """RABBITMQ_HOST lists nodes: a node that refuses sends the consumer to the next one."""
        conn = self.join("IDNODES")
        refusing = free_port()
        await self.consumer(rabbitmq_host=f"127.0.0.1:{refusing},{HOST}:{PORT}")
        self.publish("private.IDNODES.order", {"id": 1})
        await wait_for(lambda: len(conn.frames) == 1, 10, "an event through the second node")

    async def test_bindings_lost_with_the_queue_kept_are_told(self) -> None:
        """
        The exchange is deleted (as a broker restart deletes Peatio's
        non-durable exchange, and every binding with it, while a quorum queue
        survives): on its next connection the consumer finds the queue but not
        its canary binding, tells every member (1012), and binds all again.
        """
        conn = self.join("IDBINDS")
        consumer = await self.consumer(rabbitmq_queue_type="quorum")
        await self.publisher.delete_exchange(self.exchange)
        await close_connection_named(consumer.queue_name)
        await wait_for(lambda: conn.lost == 1, 20, "1012 for the lost bindings")
        self.assertEqual(self.value("peatio_ws_rabbitmq_queue_lost_total"), 1)
        await within(consumer.when_consuming(), 15, "the consumer to consume again")
        back = self.join("IDBINDS")
        await wait_for(lambda: "IDBINDS" in consumer.bound, 10, "the member bound again")
        await self.publisher.declare_exchange(self.exchange)
        self.publish("private.IDBINDS.order", {"id": 3})
        await wait_for(lambda: back.events() == [{"order": {"id": 3}}], 10, "events after the bindings came back")
