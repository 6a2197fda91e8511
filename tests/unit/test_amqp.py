"""
Unit tests for L{peatio_ws.amqp.consumer}: the L{EventConsumer} service.

No sockets and no real time: the consumer runs on a L{MemoryReactorClock};
its connection attempts are answered by L{FakeBroker} (from
L{peatio_ws.testing.amqp}), which speaks AMQP 0-9-1 frames (encoded with
txAMQP's own codec) into the real protocol's C{dataReceived}, so the
delivery fast path is exercised byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.amqp import (
    BIND_BATCH,
    CLEAN_CLOSE_TIMEOUT,
    CONNECT_TIMEOUT,
    MAX_UID_BYTES,
    STOP_TIMEOUT,
    EventConsumer,
)
from peatio_ws.amqp._txamqp import ACK_INTERVAL
from peatio_ws.amqp.consumer import BIND_CHANNEL
from peatio_ws.auth import Claims
from peatio_ws.config import KEYS, Settings
from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry
from peatio_ws.service import STOP_STEP_TIMEOUT
from peatio_ws.streams.names import parse_stream
from peatio_ws.testing.amqp import EventsConnection as FakeConnection
from peatio_ws.testing.amqp import FakeBroker, Harness, bind_keys

#: RABBITMQ_STORM_BINDING_AT's default.
COVER_AT = Settings().rabbitmq_storm_binding_at


def refused_at_set_up(test: SynchronousTestCase, h: Harness, method: str, code: int, text: str) -> None:
    """
    Start C{h}'s consumer on a broker that refuses C{method} with C{code}:
    the attempt fails, the connection is dropped, and one "set-up failed"
    line gives the broker's code and words.
    """
    h.start()
    broker = h.accept()
    broker.fail[method] = (code, text)
    broker.pump()
    test.assertTrue(broker.lost)
    test.assertFalse(h.consumer.up)
    [line] = h.logged("set-up failed")
    test.assertIn(f"{code} {text.split(' ', 1)[0]}", formatEvent(line))


class ConnectTests(SynchronousTestCase):
    """Connecting, declaring and starting to consume."""

    def test_connects_with_settings(self) -> None:
        """The endpoint is built from the separate RABBITMQ_* keys."""
        h = Harness(
            self,
            rabbitmq_host="broker.example",
            rabbitmq_port=5673,
            rabbitmq_user="peatio",
            rabbitmq_password="s3cret",
            rabbitmq_vhost="exchange",
            rabbitmq_heartbeat=15,
        )
        h.start()
        host, port, *_ = h.reactor.tcpClients[0]
        self.assertEqual((host, port), ("broker.example", 5673))
        broker = h.connect()
        start_ok = broker.named("connection.start-ok")[0]
        response = start_ok["response"]
        raw = response if isinstance(response, bytes) else response.encode()
        self.assertIn(b"LOGIN", raw)
        self.assertIn(b"peatio", raw)
        self.assertIn(b"s3cret", raw)
        self.assertEqual(start_ok["client_properties"]["connection_name"], h.consumer.queue_name)
        self.assertEqual(broker.named("connection.tune-ok")[0]["heartbeat"], 15)
        self.assertEqual(broker.named("connection.open")[0]["virtual_host"], "exchange")
        self.assertTrue(h.consumer.up)
        d = h.consumer.stopService()
        broker.pump()
        self.successResultOf(d)

    def test_declares_and_consumes(self) -> None:
        """
        A non-durable topic exchange as Peatio declares it; a queue that
        outlives a disconnect (not exclusive, not auto-delete, x-expires in
        ms); the prefetch; a consumer with manual acks.
        """
        h = Harness(self, rabbitmq_prefetch=321, rabbitmq_queue_expires=42.5)
        broker = h.consuming()
        exchange = broker.named("exchange.declare")[0]
        self.assertEqual(
            (exchange["exchange"], exchange["type"], exchange["durable"], exchange["passive"]),
            ("peatio.events.test", "topic", False, False),
        )
        # reserved-2 is RabbitMQ's auto-delete bit.
        self.assertFalse(exchange["reserved_2"])
        queue = broker.named("queue.declare")[0]
        self.assertEqual(queue["queue"], h.consumer.queue_name)
        self.assertRegex(queue["queue"], r"^peatio-ws\.[A-Za-z0-9_-]+\.[0-9a-f]{16}$")
        self.assertEqual(
            (queue["durable"], queue["exclusive"], queue["auto_delete"], queue["passive"]), (False, False, False, False)
        )
        self.assertEqual(queue["arguments"], {"x-expires": 42500})
        self.assertEqual(broker.named("basic.qos")[0]["prefetch_count"], 321)
        consume = broker.named("basic.consume")[0]
        self.assertEqual((consume["queue"], consume["no_ack"]), (h.consumer.queue_name, False))
        self.assertEqual(h.value("peatio_ws_rabbitmq_up"), 1)
        self.assertEqual(h.value("peatio_ws_rabbitmq_connects_total"), 1)

    def test_binds_members_before_consuming(self) -> None:
        """Members already connected are bound before the consumer starts."""
        h = Harness(self)
        h.join("ID1")
        h.join("ID2")
        broker = h.consuming()
        names = broker.names()
        self.assertEqual(sorted(bind_keys(broker)), [b"private.ID1.*", b"private.ID2.*"])
        self.assertLess(max(i for i, n in enumerate(names) if n == "queue.bind"), names.index("basic.consume"))
        for fields in broker.named("queue.bind"):
            self.assertEqual((fields["queue"], fields["exchange"]), (h.consumer.queue_name, "peatio.events.test"))
        self.assertEqual(h.value("peatio_ws_rabbitmq_bindings"), 2)
        self.assertEqual(h.consumer.bound, {"ID1", "ID2"})

    def test_binds_members_joined_before_construction(self) -> None:
        """Members the registry had before the consumer observed it are bound too (registry.members())."""
        h = Harness(self)
        registry = Registry(h.metrics)
        registry.authenticate(FakeConnection("early"), Claims(uid="EARLY", jti="j", expires_at=None))
        registry.authenticate(FakeConnection("bad"), Claims(uid="BAD.UID", jti="k", expires_at=None))
        h.consumer = EventConsumer(h.settings, registry, h.metrics, reactor=h.reactor)
        broker = h.consuming()
        self.assertEqual(bind_keys(broker), [b"private.EARLY.*"])

    def test_when_consuming(self) -> None:
        """when_consuming() fires once consuming, and at once after that."""
        h = Harness(self)
        d = h.consumer.when_consuming()
        h.start()
        self.assertNoResult(d)
        self.assertFalse(h.consumer.up)
        h.connect()
        self.assertIsNone(self.successResultOf(d))
        self.assertIsNone(self.successResultOf(h.consumer.when_consuming()))

    def test_log_lines(self) -> None:
        """One line for connecting, and one for consuming naming the queue and the binding count."""
        h = Harness(self)
        h.join("ID1")
        h.consuming()
        self.assertEqual(len(h.logged("connecting to localhost:5672")), 1)
        [line] = h.logged("connected and consuming")
        self.assertEqual(line["queue"], h.consumer.queue_name)
        self.assertEqual(line["bindings"], 1)

    def test_queue_name_per_consumer(self) -> None:
        """Every consumer (process) has its own queue name."""
        self.assertNotEqual(Harness(self).consumer.queue_name, Harness(self).consumer.queue_name)


class BindingTests(SynchronousTestCase):
    """Bindings follow the members, with a grace period before unbinding."""

    def test_bind_on_join(self) -> None:
        """A member's first connection binds private.<uid>.* at once; more connections change nothing."""
        h = Harness(self)
        broker = h.consuming()
        h.join("ID1")
        broker.pump()
        h.join("ID1")
        h.consumer.member_joined("ID1")
        broker.pump()
        self.assertEqual(bind_keys(broker), [b"private.ID1.*"])
        self.assertEqual(h.value("peatio_ws_rabbitmq_bindings"), 1)

    def test_events_flowing_once_bound(self) -> None:
        """
        authenticate() returns a Deferred firing once the member's binding is
        in place (bind-ok), and None for a member already bound: a dialect
        says "Authenticated." only then, so nothing published after is missed.
        """
        h = Harness(self)
        broker = h.consuming()
        conn = FakeConnection("ID1-a")
        flowing = h.registry.authenticate(conn, Claims(uid="ID1", jti="j1", expires_at=None))
        assert flowing is not None
        fired: list[object] = []
        flowing.addCallback(fired.append)
        self.assertEqual(fired, [])
        broker.pump()
        self.assertEqual(bind_keys(broker), [b"private.ID1.*"])
        self.assertEqual(fired, [None])
        second = h.registry.authenticate(FakeConnection("ID1-b"), Claims(uid="ID1", jti="j2", expires_at=None))
        self.assertIsNone(second)

    def _flowing(self, h: Harness, uid: str) -> list[object]:
        """Authenticate a connection of C{uid}; what its events_flowing Deferred fired with (so far)."""
        flowing = h.registry.authenticate(FakeConnection(f"{uid}-a"), Claims(uid=uid, jti=uid, expires_at=None))
        assert flowing is not None, f"{uid}: nothing to wait for"
        fired: list[object] = []
        flowing.addCallback(fired.append)
        return fired

    def test_events_flowing_waits_for_the_first_connection(self) -> None:
        """
        A member authenticated at start-up, before the consumer consumes,
        waits for the binding the set-up makes: told at once, it would miss
        the events published until then without knowing.
        """
        h = Harness(self)
        h.start()
        self.assertFalse(h.consumer.up)
        fired = self._flowing(h, "ID2")
        h.reactor.advance(1)
        self.assertEqual(fired, [])
        broker = h.connect()
        self.assertTrue(h.consumer.up)
        self.assertIn(b"private.ID2.*", bind_keys(broker))
        self.assertEqual(fired, [None])

    def test_events_flowing_waits_across_a_reconnect(self) -> None:
        """
        Waiters are not released when the broker goes away, and a member
        joining while it is away waits too: both for the next connection's
        bindings. A member bound before waits for nothing.
        """
        h = Harness(self)
        broker = h.consuming()
        waiting = self._flowing(h, "ID2")
        broker.drop()
        self.assertFalse(h.consumer.up)
        joined = self._flowing(h, "ID3")
        self.assertEqual((waiting, joined), ([], []))
        h.reactor.advance(30)
        second = h.connect()
        self.assertEqual(sorted(bind_keys(second)), [b"private.ID2.*", b"private.ID3.*"])
        self.assertEqual((waiting, joined), ([None], [None]))
        self.assertIsNone(h.registry.authenticate(FakeConnection("ID3-b"), Claims(uid="ID3", jti="x", expires_at=None)))

    def test_events_flowing_given_up(self) -> None:
        """A waiter cancelled (the connection gave up waiting) is forgotten, the others still fire."""
        h = Harness(self)
        h.start()
        given_up = h.registry.authenticate(FakeConnection("ID2-a"), Claims(uid="ID2", jti="a", expires_at=None))
        assert given_up is not None
        given_up.addErrback(lambda f: None)
        kept = self._flowing(h, "ID3")
        given_up.cancel()
        self.assertEqual(list(h.consumer._flowing), ["ID3"])
        h.connect()
        self.assertEqual(kept, [None])
        self.assertEqual(h.consumer._flowing, {})

    def test_events_flowing_never_hangs(self) -> None:
        """Waiters are released when the consumer stops; a consumer not running is waited for by no one."""
        h = Harness(self)
        self.assertIsNone(h.registry.authenticate(FakeConnection("ID1-a"), Claims(uid="ID1", jti="i", expires_at=None)))
        broker = h.consuming()
        fired = self._flowing(h, "ID2")
        broker.drop()
        h.consumer.stopService()
        self.assertEqual(fired, [None])
        self.assertIsNone(h.registry.authenticate(FakeConnection("ID3-a"), Claims(uid="ID3", jti="k", expires_at=None)))

    def test_canary_bound_at_set_up(self) -> None:
        """Every connection binds the canary (a key no producer uses) before consuming."""
        h = Harness(self)
        broker = h.consuming()
        [canary] = bind_keys(broker, canary=True)
        self.assertEqual(canary, b"peatio-ws.canary." + h.consumer.queue_name.encode())
        names = broker.names()
        self.assertLess(names.index("queue.bind"), names.index("basic.consume"))

    def test_bindings_lost_with_the_queue_kept(self) -> None:
        """
        A reconnect finding the queue but not the canary binding (the exchange
        was deleted, or the broker restarted a quorum queue): events may have
        been lost, every member is told (1012), and all is bound again.
        """
        h = Harness(self)
        conn = h.join("ID1")
        broker = h.consuming()
        broker.drop()
        h.reactor.advance(30)
        second = h.accept(returns={b"peatio-ws.canary." + h.consumer.queue_name.encode()})
        second.pump()
        self.assertTrue(h.consumer.up)
        self.assertEqual(conn.lost, 1)
        self.assertEqual(h.value("peatio_ws_rabbitmq_queue_lost_total"), 1)
        [probe] = [p for p in second.published if p.routing_key.startswith(b"peatio-ws.canary.")]
        self.assertTrue(probe.mandatory)

    def test_bindings_kept_tell_no_one(self) -> None:
        """A reconnect finding the queue and the canary binding routed: nothing lost, no one told."""
        h = Harness(self)
        conn = h.join("ID1")
        broker = h.consuming()
        broker.drop()
        h.reactor.advance(30)
        h.connect()
        self.assertTrue(h.consumer.up)
        self.assertEqual(conn.lost, 0)
        self.assertEqual(h.value("peatio_ws_rabbitmq_queue_lost_total"), 0)

    def test_join_while_disconnected(self) -> None:
        """A member joining before the connection is bound once connected."""
        h = Harness(self)
        h.start()
        h.join("ID1")
        self.assertEqual(h.consumer.bound, set())
        broker = h.connect()
        self.assertEqual(bind_keys(broker), [b"private.ID1.*"])

    def test_unbind_after_delay(self) -> None:
        """The binding goes RABBITMQ_UNBIND_DELAY seconds after the last connection left."""
        h = Harness(self, rabbitmq_unbind_delay=5)
        broker = h.consuming()
        a, b = h.join("ID1"), h.join("ID1")
        broker.pump()
        h.leave(a)
        h.reactor.advance(10)
        broker.pump()
        self.assertEqual(bind_keys(broker, "queue.unbind"), [])
        h.leave(b)
        h.reactor.advance(4.9)
        broker.pump()
        self.assertEqual(bind_keys(broker, "queue.unbind"), [])
        h.reactor.advance(0.1)
        broker.pump()
        self.assertEqual(bind_keys(broker, "queue.unbind"), [b"private.ID1.*"])
        self.assertEqual(h.value("peatio_ws_rabbitmq_bindings"), 0)
        self.assertEqual(h.consumer.bound, set())

    def test_comes_back_within_delay(self) -> None:
        """A member back within the delay keeps its binding: no unbind, no second bind."""
        h = Harness(self, rabbitmq_unbind_delay=5)
        broker = h.consuming()
        conn = h.join("ID1")
        broker.pump()
        h.leave(conn)
        h.reactor.advance(3)
        h.join("ID1")
        h.reactor.advance(10)
        broker.pump()
        self.assertEqual(bind_keys(broker), [b"private.ID1.*"])
        self.assertEqual(bind_keys(broker, "queue.unbind"), [])
        # Nothing pending but the health probe's next tick.
        self.assertEqual(h.reactor.getDelayedCalls(), [h.consumer._prober.call])

    def test_zero_delay(self) -> None:
        """With no delay the unbind happens on the next turn of the reactor."""
        h = Harness(self, rabbitmq_unbind_delay=0)
        broker = h.consuming()
        conn = h.join("ID1")
        broker.pump()
        h.leave(conn)
        h.reactor.advance(0)
        broker.pump()
        self.assertEqual(bind_keys(broker, "queue.unbind"), [b"private.ID1.*"])

    def test_invalid_uids_never_bound(self) -> None:
        """uids that are empty or carry '.', '*' or '#' are logged and skipped."""
        h = Harness(self)
        broker = h.consuming()
        for uid in ["", "a.b", "ID*", "#", "x" * (MAX_UID_BYTES + 1)]:
            h.consumer.member_joined(uid)
            h.consumer.member_left(uid)
        h.reactor.advance(100)
        broker.pump()
        self.assertEqual(bind_keys(broker), [])
        self.assertEqual(bind_keys(broker, "queue.unbind"), [])
        self.assertEqual(len(h.logged("Not binding member")), 5)

    def test_leave_while_bind_in_flight(self) -> None:
        """A member leaving while its bind is in flight ends unbound."""
        h = Harness(self, rabbitmq_unbind_delay=0)
        broker = h.consuming()
        broker.hold.add("queue.bind")
        conn = h.join("ID1")
        broker.pump()
        h.leave(conn)
        h.reactor.advance(0)
        broker.pump()
        self.assertEqual(bind_keys(broker, "queue.unbind"), [])
        broker.release()
        broker.pump()
        self.assertEqual(bind_keys(broker, "queue.unbind"), [b"private.ID1.*"])
        self.assertEqual(h.consumer.bound, set())

    def _retried_and_bound(self, h: Harness) -> None:
        """No traceback; the next connection, after the retry delay, binds ID1 and consumes."""
        self.assertEqual(self.flushLoggedErrors(), [])
        h.reactor.advance(2)
        broker = h.connect()
        self.assertTrue(h.consumer.up)
        self.assertEqual(bind_keys(broker), [b"private.ID1.*"])
        self.assertEqual(h.consumer.bound, {"ID1"})

    def test_member_bind_refused(self) -> None:
        """
        A member's bind the broker refuses (it closes the channel): one line
        with its words, a reconnect, and the member bound on the next connection.
        """
        h = Harness(self)
        broker = h.consuming()
        broker.fail["queue.bind"] = (403, "ACCESS_REFUSED - no write access")
        h.join("ID1")
        broker.pump()
        self.assertTrue(broker.lost)
        [line] = h.logged("binding failed")
        self.assertIn("403 ACCESS_REFUSED", formatEvent(line))
        self.assertEqual(h.logged("closed our channel"), [])
        self.assertEqual(h.consumer.bound, set())
        self._retried_and_bound(h)

    def test_member_bind_refused_during_set_up(self) -> None:
        """Refused while the set-up binds the members: the set-up fails, with the broker's words, and is retried."""
        h = Harness(self)
        h.join("ID1")
        refused_at_set_up(self, h, "queue.bind", 403, "ACCESS_REFUSED - no write access")
        self._retried_and_bound(h)

    def test_answer_not_asked(self) -> None:
        """
        An answer to no bind or unbind of ours, or of the other kind than the
        oldest in flight: the books cannot be trusted; reconnect (which binds everyone again).
        """
        for sent_first in ["queue.bind-ok", "queue.unbind-ok"]:
            h = Harness(self)
            broker = h.consuming()
            broker.hold.add("queue.bind")
            h.join("ID1")
            broker.pump()
            broker.send(BIND_CHANNEL, "queue.unbind-ok")
            if sent_first == "queue.bind-ok":
                broker.outbox.insert(0, broker.method(BIND_CHANNEL, "queue.bind-ok"))
            broker.pump()
            self.assertTrue(broker.lost)
            self.assertEqual(len(h.logged("was not asked; reconnecting")), 1)
            self.assertEqual(h.consumer.bound, {"ID1"} if sent_first == "queue.bind-ok" else set())
            self.assertEqual(self.flushLoggedErrors(), [])

    def test_join_while_consume_in_flight(self) -> None:
        """
        A member joining while the set-up waits for basic.consume-ok: its bind
        goes out on the binds' own channel, and is answered first; txAMQP
        gets the consume-ok, we the bind-ok.
        """
        h = Harness(self)
        h.start()
        broker = h.accept()
        broker.hold.add("basic.consume")
        broker.pump()
        self.assertFalse(h.consumer.up)
        h.join("ID1")
        broker.pump()
        self.assertEqual(bind_keys(broker), [b"private.ID1.*"])
        self.assertEqual(h.consumer.bound, {"ID1"})
        self.assertFalse(h.consumer.up)
        broker.release()
        broker.pump()
        self.assertTrue(h.consumer.up)
        self.assertEqual(h.consumer.bound, {"ID1"})
        self.assertEqual(h.value("peatio_ws_rabbitmq_bindings"), 1)

    def test_back_while_unbind_in_flight(self) -> None:
        """
        A member back while its unbind is in flight (still bound in the
        books) waits: told at once, it would miss what is published between
        the unbind-ok and its new bind-ok. It is told at that bind-ok.
        """
        h = Harness(self, rabbitmq_unbind_delay=0)
        broker = h.consuming()
        conn = h.join("ID1")
        broker.pump()
        self.assertEqual(h.consumer.bound, {"ID1"})
        broker.hold.add("queue.unbind")
        h.leave(conn)
        h.reactor.advance(0)
        broker.pump()
        self.assertEqual(bind_keys(broker, "queue.unbind"), [b"private.ID1.*"])
        back = self._flowing(h, "ID1")  # asserts it has something to wait for
        broker.pump()
        self.assertEqual(back, [])
        broker.release()
        broker.pump()
        self.assertEqual(bind_keys(broker), [b"private.ID1.*", b"private.ID1.*"])
        self.assertEqual(back, [None])
        self.assertEqual(h.consumer.bound, {"ID1"})

    def test_many_members_pipelined(self) -> None:
        """Binds go out pipelined, at most BIND_BATCH in flight, more as the answers come; not one round trip each."""
        h = Harness(self)
        broker = h.consuming()
        broker.hold.add("queue.bind")
        for i in range(BIND_BATCH + 5):
            h.consumer.member_joined(f"U{i}")
        broker.pump()
        self.assertEqual(len(broker.held), BIND_BATCH)
        broker.release(3)
        broker.pump()
        self.assertEqual(len(bind_keys(broker)), BIND_BATCH + 3)
        broker.release()
        broker.pump()
        self.assertEqual(len(bind_keys(broker)), BIND_BATCH + 5)
        self.assertEqual(h.value("peatio_ws_rabbitmq_bindings"), BIND_BATCH + 5)
        self.assertEqual(h.logged("logins wait"), [])  # no login waited: no covering binding

    def test_storm_covered(self) -> None:
        """
        COVER_AT logins waiting for their bindings (a reconnect storm): the
        covering binding (private.*.*) goes up after the binds already out;
        once it is answered every login still waiting is told, and new ones
        at once, their own binds still in flight; once each member is bound
        it goes.
        """
        h = Harness(self)
        broker = h.consuming()
        broker.hold.add("queue.bind")
        first = [self._flowing(h, f"U{i}") for i in range(COVER_AT)]
        late = [self._flowing(h, f"L{i}") for i in range(3)]
        broker.pump()
        keys = bind_keys(broker)
        self.assertEqual(keys[COVER_AT], b"private.*.*")
        self.assertEqual(len(keys), COVER_AT + 4)
        self.assertEqual(len(h.logged("logins wait for their members' bindings")), 1)
        broker.release(COVER_AT - 1)
        broker.pump()
        self.assertEqual(sum(map(len, first)), COVER_AT - 1)  # each told by its own bind-ok
        self.assertEqual(late, [[], [], []])
        broker.release(2)  # the last of the first, then the covering binding
        broker.pump()
        self.assertEqual(late, [[None], [None], [None]])  # their own binds are still held
        self.assertEqual(h.consumer.bound, {f"U{i}" for i in range(COVER_AT)})
        self.assertIsNone(
            h.registry.authenticate(FakeConnection("N-a"), Claims(uid="NEW", jti="n", expires_at=None))
        )
        self.assertEqual(bind_keys(broker, "queue.unbind"), [])
        broker.release()
        broker.pump()
        self.assertIn("NEW", h.consumer.bound)
        self.assertEqual(len(h.consumer.bound), COVER_AT + 4)
        self.assertEqual(bind_keys(broker, "queue.unbind"), [b"private.*.*"])
        self.assertEqual(len(h.logged("every member bound")), 1)
        # Calm again: a login waits for its own binding.
        self.assertEqual(self._flowing(h, "CALM"), [])
        broker.pump()
        self.assertIn("CALM", h.consumer.bound)
        self.assertEqual(bind_keys(broker).count(b"private.*.*"), 1)

    def test_storm_binding_at(self) -> None:
        """RABBITMQ_STORM_BINDING_AT: how many waiting logins make a storm; 0: the covering binding never goes up."""
        for at, covered in [(3, True), (0, False)]:
            h = Harness(self, rabbitmq_storm_binding_at=at)
            broker = h.consuming()
            broker.hold.add("queue.bind")
            for i in range(max(3, COVER_AT)):
                self._flowing(h, f"U{i}")
            broker.pump()
            self.assertEqual(b"private.*.*" in bind_keys(broker), covered, at)
            if covered:
                self.assertEqual(bind_keys(broker)[3], b"private.*.*")
            broker.release()
            broker.pump()
            self.assertEqual(len(h.consumer.bound), max(3, COVER_AT))

    def test_storm_cover_unbinding_covers_no_one(self) -> None:
        """A login while the covering binding is being unbound waits for its own binding."""
        h = Harness(self)
        broker = h.consuming()
        broker.hold.add("queue.unbind")
        for i in range(COVER_AT):
            self._flowing(h, f"U{i}")
        broker.pump()
        self.assertEqual(bind_keys(broker, "queue.unbind"), [b"private.*.*"])
        self.assertEqual(len(broker.held), 1)
        late = self._flowing(h, "LATE")
        broker.pump()
        self.assertEqual(late, [])
        broker.release()
        broker.pump()
        self.assertEqual(late, [None])
        self.assertIn("LATE", h.consumer.bound)

    def test_storm_during_set_up(self) -> None:
        """
        RABBITMQ_STORM_BINDING_AT members to bind at set-up (logins waiting
        while the broker was away, or a queue that was new): the covering
        binding first, the members' after it; consuming, and every login
        told, once the covering one is up, their own binds still in flight.
        """
        h = Harness(self)
        broker = h.consuming()
        broker.drop()
        waiting = [self._flowing(h, f"U{i}") for i in range(COVER_AT)]
        h.reactor.advance(30)
        second = h.accept()
        second.hold.add("queue.bind")
        second.pump()
        self.assertEqual(len(bind_keys(second)), COVER_AT + 1)
        self.assertEqual(bind_keys(second)[0], b"private.*.*")
        self.assertNotIn("basic.consume", second.names())
        self.assertEqual(sum(map(len, waiting)), 0)
        second.release(1)
        second.pump()
        self.assertTrue(h.consumer.up)
        self.assertEqual(sum(map(len, waiting)), COVER_AT)
        self.assertEqual(h.consumer.bound, set())
        second.release()
        second.pump()
        self.assertEqual(len(h.consumer.bound), COVER_AT)
        self.assertEqual(bind_keys(second, "queue.unbind"), [b"private.*.*"])

    def test_cover_lost_with_the_connection(self) -> None:
        """
        The connection lost while the covering binding is up: the next
        connection decides afresh, counting only the members to bind (here
        three; the hundred who left meanwhile are only unbound), and
        unbinds the covering binding the queue may have kept.
        """
        h = Harness(self, rabbitmq_unbind_delay=0)
        broker = h.consuming()
        broker.hold.add("queue.bind")
        for i in range(COVER_AT):
            h.join(f"U{i}")  # each login waits for its binding
        late = [self._flowing(h, f"L{i}") for i in range(3)]
        broker.pump()
        broker.release(COVER_AT + 1)  # the hundred U, then the covering binding
        broker.pump()
        self.assertEqual(late, [[None], [None], [None]])
        self.assertEqual(bind_keys(broker, "queue.unbind"), [])  # the L's are not bound yet
        broker.drop()
        for conn in list(h.conns.values()):
            h.leave(conn)
        h.reactor.advance(30)
        second = h.connect()
        self.assertTrue(h.consumer.up)
        self.assertEqual(h.consumer.bound, {"L0", "L1", "L2"})
        self.assertNotIn(b"private.*.*", bind_keys(second))
        unbinds = bind_keys(second, "queue.unbind")
        self.assertEqual(unbinds[0], b"private.*.*")
        self.assertEqual(len(unbinds), COVER_AT + 1)
        self.assertEqual(len(h.logged("which the last connection may have left")), 1)
        # Gone for good: the connection after that one has nothing to undo.
        second.drop()
        h.reactor.advance(30)
        third = h.connect()
        self.assertNotIn(b"private.*.*", bind_keys(third, "queue.unbind"))


    def test_reconnect_restores_bindings(self) -> None:
        """
        After a reconnect every current member is bound again (the queue may
        have expired), and members who left meanwhile are unbound.
        """
        h = Harness(self, rabbitmq_unbind_delay=1)
        broker = h.consuming()
        h.join("ID1")
        b = h.join("ID2")
        broker.pump()
        broker.drop()
        self.assertFalse(h.consumer.up)
        h.leave(b)
        h.join("ID3")
        h.reactor.advance(60)
        broker2 = h.connect()
        self.assertTrue(h.consumer.up)
        self.assertEqual(sorted(bind_keys(broker2)), [b"private.ID1.*", b"private.ID3.*"])
        self.assertEqual(bind_keys(broker2, "queue.unbind"), [b"private.ID2.*"])
        self.assertEqual(h.consumer.bound, {"ID1", "ID3"})
        self.assertEqual(broker2.named("queue.declare")[0]["queue"], h.consumer.queue_name)
        self.assertEqual(h.value("peatio_ws_rabbitmq_connects_total"), 2)


class BindAllTests(SynchronousTestCase):
    """RABBITMQ_PRIVATE_BINDING=all: one binding for every private event, none per member."""

    def test_one_binding_at_set_up_none_per_member(self) -> None:
        """The set-up binds private.*.* (with the canary); members joining and leaving bind nothing."""
        h = Harness(self, rabbitmq_private_binding="all")
        h.join("ID1")
        broker = h.consuming()
        conn = h.join("ID2")
        h.leave(conn)
        h.reactor.advance(60)
        broker.pump()
        self.assertEqual(bind_keys(broker), [b"private.*.*"])
        self.assertEqual(bind_keys(broker, "queue.unbind"), [])
        self.assertEqual(h.consumer.bound, frozenset())
        names = broker.names()
        self.assertLess(names.index("queue.bind"), names.index("basic.consume"))

    def test_events_flowing_once_consuming(self) -> None:
        """No wait once consuming; before, a login waits for the set-up (which binds for everyone at once)."""
        h = Harness(self, rabbitmq_private_binding="all")
        h.start()
        early = h.registry.authenticate(FakeConnection("ID1-a"), Claims(uid="ID1", jti="a", expires_at=None))
        assert early is not None
        fired: list[object] = []
        early.addCallback(fired.append)
        h.connect()
        self.assertEqual(fired, [None])
        self.assertIsNone(h.registry.authenticate(FakeConnection("ID2-a"), Claims(uid="ID2", jti="b", expires_at=None)))

    def test_members_elsewhere_dropped_unexamined(self) -> None:
        """
        An event for a member connected here is delivered as always; one for
        a member connected elsewhere is dropped (no_connection) before its
        body is even checked, and acked.
        """
        h = Harness(self, rabbitmq_private_binding="all")
        here = h.join("ID1")
        broker = h.consuming()
        broker.deliver("private.ELSEWHERE.order", "not json")
        broker.deliver("private.ID1.order", '{"id":1}')
        tag = broker.deliver("private.ELSEWHERE.trade", "{}")
        broker.pump()
        self.assertEqual(here.events(), [{"order": {"id": 1}}])
        self.assertEqual(h.dropped("no_connection"), 2)
        self.assertEqual(h.dropped("malformed"), 0)
        self.assertEqual(h.value("peatio_ws_events_received_total", event="order"), 1)
        self.assertEqual(broker.acks[-1], (tag, True))

    def test_setting(self) -> None:
        """member (the default) or all, any case; anything else is refused."""
        self.assertEqual(Settings().rabbitmq_private_binding, "member")
        self.assertEqual(KEYS["RABBITMQ_PRIVATE_BINDING"]("All"), "all")
        self.assertRaises(ValueError, KEYS["RABBITMQ_PRIVATE_BINDING"], "none")


class ProbeTests(SynchronousTestCase):
    """
    The health probe: a passive declare of our queue on HEALTH_CHANNEL
    every HEALTH_PROBE_INTERVAL, one at a time; unanswered for
    HEALTH_PROBE_TIMEOUT, the connection is reported down and dropped.
    """

    def setUp(self) -> None:
        self.h = Harness(self, health_probe_interval=2.0, health_probe_timeout=5.0)
        self.h.join("ID1")
        self.broker = self.consuming()

    def consuming(self) -> FakeBroker:
        """Answer the next connection attempt (starting the consumer first if needed); record channels."""
        if not self.h.consumer.running:
            self.h.start()
        broker = self.h.connect()
        #: (channel, method) of everything the client sends from now on.
        self.channels: list[tuple[int, str]] = []
        answer = broker.answer

        def recording(channel: int, name: str, fields: dict[str, Any]) -> None:
            self.channels.append((channel, name))
            answer(channel, name, fields)

        broker.answer = recording  # type: ignore[method-assign]
        self.assertTrue(self.h.consumer.up)
        return broker

    def tick(self, seconds: float = 2.0) -> None:
        """Let C{seconds} pass with the broker answering what it is not told to hold."""
        self.h.reactor.advance(seconds)
        self.broker.pump()

    def probes(self) -> list[dict[str, Any]]:
        return [f for f in self.broker.named("queue.declare") if f["passive"]]

    def test_round_trip(self) -> None:
        """A passive declare of our own queue, on a channel of its own opened once per connection."""
        for _ in range(3):
            self.tick()
        self.assertEqual([p["queue"] for p in self.probes()], [self.h.consumer.queue_name] * 3)
        self.assertEqual(self.channels.count((3, "channel.open")), 1)
        self.assertEqual({c for c, n in self.channels if n in ("queue.declare", "channel.open")}, {3})
        self.assertTrue(self.h.consumer.up)
        self.assertEqual(self.h.value("peatio_ws_rabbitmq_up"), 1)

    def test_outstanding_within_timeout_is_up(self) -> None:
        """A probe out for less than the timeout changes nothing, and events keep flowing meanwhile."""
        self.broker.hold.add("queue.declare")
        self.tick()
        self.assertEqual(len(self.probes()), 1)
        self.h.reactor.advance(5.0 - 0.001)
        tag = self.broker.deliver("private.ID1.order", "{}")
        self.broker.pump()
        self.assertEqual(self.broker.acks[-1], (tag, True))
        self.assertTrue(self.h.consumer.up)
        self.assertFalse(self.broker.transport.disconnecting)

    def test_one_outstanding_at_most(self) -> None:
        """No probe piles up behind an unanswered one; the next goes out a tick after the answer."""
        self.broker.hold.add("queue.declare")
        self.tick()
        self.tick()
        self.tick(0.9)
        self.assertEqual(len(self.probes()), 1)
        self.broker.release()
        self.broker.pump()
        self.tick()
        self.assertEqual(len(self.probes()), 2)
        self.assertTrue(self.h.consumer.up)

    def test_overdue_drops_and_reconnects(self) -> None:
        """
        Unanswered for the timeout: down at once (gauge 0), one warning, the
        connection aborted; the reconnect starts and brings it up again.
        """
        self.broker.hold.add("queue.declare")
        self.tick()
        self.h.reactor.advance(5.0)
        self.assertFalse(self.h.consumer.up)
        self.assertEqual(self.h.value("peatio_ws_rabbitmq_up"), 0)
        self.assertTrue(self.broker.transport.aborted)
        self.broker.pump()
        self.assertEqual(len(self.h.logged("did not answer a health probe within 5 s")), 1)
        self.assertEqual(self.h.logged("connection lost"), [])
        self.h.reactor.advance(2)
        self.broker = self.consuming()
        self.assertEqual(self.h.value("peatio_ws_rabbitmq_up"), 1)
        self.assertEqual(self.h.value("peatio_ws_rabbitmq_connects_total"), 2)
        # The new connection is probed afresh (its own channel).
        self.tick()
        self.assertEqual(self.channels, [(3, "channel.open"), (3, "queue.declare")])

    def test_answer_read_after_a_pause_counts(self) -> None:
        """
        An answer read in the reactor turn after the deadline (this process
        was paused; timers run before reads) still counts: no reconnect.
        """
        self.broker.hold.add("queue.declare")
        self.tick()

        def answer() -> None:
            # Read in the turn the deadline comes due (scheduled after it, at the same time).
            self.broker.release()
            self.broker.pump()

        self.h.reactor.callLater(5.0, answer)
        self.h.reactor.advance(5.0)
        self.assertTrue(self.h.consumer.up)
        self.assertFalse(self.broker.transport.disconnecting)

    def test_not_while_down(self) -> None:
        """No probe is sent while not consuming; a probe out when the connection drops is forgotten."""
        self.broker.hold.add("queue.declare")
        self.tick()
        self.broker.drop()
        self.assertFalse(self.h.consumer.up)
        self.assertEqual(len(self.h.logged("connection lost")), 1)
        self.h.reactor.advance(5.0)
        self.assertEqual(self.h.logged("did not answer a health probe"), [])

    def test_queue_gone_reconnects(self) -> None:
        """Our queue gone (the broker closes the probe channel with 404): reconnect, which declares it."""
        self.broker.fail["queue.declare"] = (404, "NOT_FOUND - no queue")
        self.tick()
        self.assertTrue(self.broker.transport.aborted)
        self.assertFalse(self.h.consumer.up)
        self.assertEqual(len(self.h.logged("closed our channel")), 1)

    def test_stop_with_probe_out(self) -> None:
        """Stopping with a probe out ends cleanly and leaves no timer behind."""
        self.broker.hold.add("queue.declare")
        self.tick()
        d = self.h.consumer.stopService()
        self.broker.release()
        self.broker.pump()
        self.successResultOf(d)
        self.assertEqual(self.h.reactor.getDelayedCalls(), [])
        self.assertEqual(self.h.logged("did not answer a health probe"), [])


class DeliveryTests(SynchronousTestCase):
    """What happens to each message."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.a1, self.a2 = self.h.join("ID1"), self.h.join("ID1")
        self.b1 = self.h.join("ID2")
        self.broker = self.h.consuming()

    def test_delivered_to_member(self) -> None:
        """An event reaches every connection of its member, and only them; it is counted and acked."""
        tag = self.broker.deliver("private.ID1.order", '{"id":1,"market":"btcusd"}')
        self.broker.pump()
        for conn in (self.a1, self.a2):
            self.assertEqual(conn.events(), [{"order": {"id": 1, "market": "btcusd"}}])
        self.assertEqual(self.b1.frames, [])
        self.assertEqual(self.h.value("peatio_ws_events_received_total", event="order"), 1)
        self.assertEqual(self.h.value("peatio_ws_events_delivered_total", event="order"), 2)
        self.assertEqual(self.h.value("peatio_ws_delivery_latency_seconds_count"), 1)
        self.assertEqual(self.broker.acks, [(tag, True)])

    def test_latency_per_event_observed_once_per_read(self) -> None:
        """
        One read of three events, two delivered: the latency histogram counts
        the two (an event nobody took is not delivered), in one observation.
        """
        self.broker.deliver("private.ID1.order", '{"id":1}')
        self.broker.deliver("private.NOBODY.order", '{"id":2}')
        self.broker.deliver("private.ID2.trade", '{"id":3}')
        self.broker.pump()
        self.assertEqual(self.h.value("peatio_ws_delivery_latency_seconds_count"), 2)
        self.assertEqual(self.h.value("peatio_ws_delivery_latency_seconds_bucket", le="+Inf"), 2)
        self.broker.deliver("private.ID2.trade", '{"id":4}')
        self.broker.pump()
        self.assertEqual(self.h.value("peatio_ws_delivery_latency_seconds_count"), 3)

    def test_payload_forwarded_as_published(self) -> None:
        """The payload bytes are forwarded untouched (not re-encoded), non-ASCII included."""
        body = '{"market":"比特币/人民币", "price" : 1.50}'.encode()
        self.broker.deliver("private.ID2.trade", body)
        self.broker.pump()
        self.assertEqual(self.b1.frames, [bytes([0x81, len(body) + 10]) + b'{"trade":' + body + b"}"])

    def test_no_connection(self) -> None:
        """An event for a member not connected here is counted as dropped, and acked."""
        tag = self.broker.deliver("private.NOBODY.order", "{}")
        self.broker.pump()
        self.assertEqual(self.h.dropped("no_connection"), 1)
        self.assertEqual(self.h.value("peatio_ws_events_received_total", event="order"), 1)
        self.assertEqual(self.broker.acks, [(tag, True)])

    def test_bad_routing_keys(self) -> None:
        """Keys of any other shape are counted, acked and never delivered."""
        keys = [
            b"public.btcusd.trades",
            b"private.ID1",
            b"private.ID1.order.x",
            b"private..order",
            b"private.ID1.",
            b"private",
            b"",
            b"private.\xff.order",
        ]
        for key in keys:
            self.broker.deliver(key, "{}")
        self.broker.pump()
        self.assertEqual(self.h.dropped("bad_routing_key"), len(keys))
        self.assertEqual(self.a1.frames + self.b1.frames, [])
        self.assertEqual(self.broker.acks, [(len(keys), True)])

    def test_malformed_bodies(self) -> None:
        """
        A body that is not JSON is counted, acked, never delivered, and logged
        with a short prefix only; the consumer goes on.
        """
        secret = b"x" * 40 + b"SECRET-TAIL"
        bodies = [b"not json", b"", b"\xff\xfe", b'{"a":NaN}', b"{" + secret]
        for body in bodies:
            self.broker.deliver("private.ID1.order", body)
        self.h.reactor.advance(2)
        self.broker.deliver("private.ID1.order", b"{" + secret)
        tag = self.broker.deliver("private.ID1.order", b'{"ok":true}')
        self.broker.pump()
        self.assertEqual(self.h.dropped("malformed"), len(bodies) + 1)
        self.assertEqual(self.a1.events(), [{"order": {"ok": True}}])
        self.assertEqual(self.broker.acks, [(tag, True)])
        lines = self.h.logged("not JSON")
        self.assertEqual(len(lines), 1)  # at most one line a second
        text = formatEvent(lines[0])
        self.assertIn("private.ID1.order", text)
        self.assertNotIn("SECRET", text)
        self.h.reactor.advance(2)
        self.broker.deliver("private.ID1.order", b"{" + secret)
        self.broker.pump()
        lines = self.h.logged("not JSON")
        self.assertEqual(len(lines), 2)
        self.assertEqual(lines[1]["suppressed"], len(bodies))
        self.assertNotIn("SECRET", formatEvent(lines[1]))

    def test_event_labels_bounded(self) -> None:
        """An odd event name is delivered under its own name but counted as "other"."""
        self.broker.deliver("private.ID1.Weird-Name", "{}")
        self.broker.pump()
        self.assertEqual(self.a1.events(), [{"Weird-Name": {}}])
        self.assertEqual(self.h.value("peatio_ws_events_received_total", event="other"), 1)
        self.assertEqual(self.h.value("peatio_ws_events_received_total", event="Weird-Name"), 0)

    def test_order_kept(self) -> None:
        """A member's events arrive in the broker's order, across reads."""
        for i in range(300):
            self.broker.deliver("private.ID1.order" if i % 3 else "private.ID1.trade", json.dumps({"i": i}))
        self.broker.chunk = 1000
        self.broker.pump()
        seen = [next(iter(e.values()))["i"] for e in self.a1.events()]
        self.assertEqual(seen, list(range(300)))

    def test_registry_failure(self) -> None:
        """An unexpected error while delivering is logged and counted; the message is still acked."""

        def explode(uid: str, event: str, payload: bytes) -> int:
            raise RuntimeError("boom")

        self.h.registry.deliver = explode  # type: ignore[method-assign]
        tag = self.broker.deliver("private.ID1.order", "{}")
        self.broker.pump()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.h.dropped("error"), 1)
        self.assertEqual(self.broker.acks, [(tag, True)])
        self.assertTrue(self.h.consumer.up)


def ack_timers(h: Harness) -> list[Any]:
    """The timers of pending acks on the harness's reactor."""
    return [c for c in h.reactor.getDelayedCalls() if getattr(getattr(c, "func", None), "__name__", "") == "flush_ack"]


class FastPathTests(SynchronousTestCase):
    """Frame assembly and acknowledgement in L{_txamqp.DeliveryClient}."""

    def consuming(self, **kwargs: Any) -> tuple[Harness, FakeBroker, FakeConnection]:
        h = Harness(self)
        conn = h.join("ID1")
        broker = h.consuming(**kwargs)
        return h, broker, conn

    def test_multi_frame_bodies(self) -> None:
        """Bodies spanning several frames arrive whole, however the bytes are split."""
        for chunk in [None, 1, 7, 4095, 4097, 10000]:
            _, broker, conn = self.consuming(frame_max=4096, chunk=chunk)
            body = json.dumps({"market": "币" * 5000, "chunk": chunk}).encode()
            self.assertGreater(len(body), 3 * 4096)
            broker.deliver("private.ID1.order", body)
            broker.deliver("private.ID1.trade", b'{"small":1}')
            broker.pump()
            self.assertEqual(
                conn.frames,
                [
                    struct.pack("!BBH", 0x81, 126, len(body) + 10) + b'{"order":' + body + b"}",
                    b"\x81\x15" + b'{"trade":{"small":1}}',
                ],
                chunk,
            )

    def test_large_body(self) -> None:
        """A 1 MB body over 128 KB frames, fed in 64 KB reads."""
        _, broker, conn = self.consuming(chunk=65536)
        body = json.dumps({"blob": "a" * (1024 * 1024)}).encode()
        broker.deliver("private.ID1.order", body)
        broker.pump()
        self.assertEqual(len(conn.frames), 1)
        self.assertTrue(conn.frames[0].endswith(body + b"}"))

    def test_empty_body(self) -> None:
        """A zero-length body (header, no body frame) completes: malformed, acked."""
        h, broker, _ = self.consuming()
        tag = broker.deliver("private.ID1.order", b"")
        broker.pump()
        self.assertEqual(h.dropped("malformed"), 1)
        self.assertEqual(broker.acks, [(tag, True)])

    def test_heartbeat_between_frames(self) -> None:
        """A heartbeat (channel 0) between a delivery's frames goes its own way."""
        _, broker, conn = self.consuming(frame_max=4096)
        body = b'{"a":"' + b"x" * 5000 + b'"}'
        data = broker.delivery(b"private.ID1.order", body)
        heartbeat = b"\x08\x00\x00\x00\x00\x00\x00\xce"
        cut = data.index(b"\xce", 40) + 1  # after the method frame
        broker.outbox.append(data[:cut] + heartbeat + data[cut:])
        broker.pump()
        self.assertEqual(conn.events(), [{"order": {"a": "x" * 5000}}])

    def test_unexpected_frame_drops_connection(self) -> None:
        """A method frame where a content header must come is a protocol error: the connection is dropped."""
        h, broker, _ = self.consuming()
        data = broker.delivery(b"private.ID1.order", b"{}")
        method_end = data.index(b"\xce") + 1
        broker.outbox.append(data[:method_end] + data)
        broker.pump()
        self.assertTrue(broker.transport.aborted)
        self.assertFalse(h.consumer.up)
        self.assertEqual(len(self.flushLoggedErrors()), 1)

    def test_one_ack_per_read(self) -> None:
        """All messages of one read are acked by one basic.ack(multiple) for the highest tag, at once."""
        _, broker, _ = self.consuming()
        for i in range(100):
            broker.deliver("private.ID1.order", json.dumps({"i": i}))
        broker.pump()
        self.assertEqual(broker.acks, [(100, True)])

    def test_acks_at_most_once_per_interval(self) -> None:
        """
        Reads within ACK_INTERVAL of the last ack are acked together, for the
        highest tag, when the interval is up (not a moment before); a read
        after a quiet interval is acked at once.
        """
        h, broker, _ = self.consuming()
        broker.deliver("private.ID1.order", "{}")
        broker.pump()
        self.assertEqual(broker.acks, [(1, True)])
        h.reactor.advance(ACK_INTERVAL / 2)
        for _ in range(3):
            broker.deliver("private.ID1.order", "{}")
            broker.pump()
        self.assertEqual(broker.acks, [(1, True)])
        self.assertEqual(len(ack_timers(h)), 1)
        h.reactor.advance(ACK_INTERVAL / 2 - 1e-6)
        self.assertEqual(broker.acks, [(1, True)])
        h.reactor.advance(1e-6)
        broker.pump()
        self.assertEqual(broker.acks, [(1, True), (4, True)])
        h.reactor.advance(ACK_INTERVAL)
        broker.deliver("private.ID1.order", "{}")
        broker.pump()
        self.assertEqual(broker.acks, [(1, True), (4, True), (5, True)])
        self.assertEqual(ack_timers(h), [])

    def test_ack_at_once_at_half_the_prefetch(self) -> None:
        """Half the prefetch window unacked is acked at once, interval or not: the broker never waits."""
        h = Harness(self, rabbitmq_prefetch=10)
        h.join("ID1")
        broker = h.consuming()
        broker.deliver("private.ID1.order", "{}")
        broker.pump()
        for n in range(1, 6):
            broker.deliver("private.ID1.order", "{}")
            broker.pump()
            self.assertEqual(len(broker.acks), 1 if n < 5 else 2, n)
        self.assertEqual(broker.acks, [(1, True), (6, True)])
        h.reactor.advance(ACK_INTERVAL)
        broker.pump()
        self.assertEqual(broker.acks, [(1, True), (6, True)])

    def test_prefetch_one_acks_every_read(self) -> None:
        """With a prefetch of 1 every read is acked at once (the broker sends nothing more until then)."""
        h = Harness(self, rabbitmq_prefetch=1)
        h.join("ID1")
        broker = h.consuming()
        for _ in range(3):
            broker.deliver("private.ID1.order", "{}")
            broker.pump()
        self.assertEqual(broker.acks, [(1, True), (2, True), (3, True)])

    def test_pending_ack_dropped_with_the_connection(self) -> None:
        """A connection lost with an ack pending writes nothing later and leaves no timer behind."""
        h, broker, _ = self.consuming()
        for _ in range(2):
            broker.deliver("private.ID1.order", "{}")
            broker.pump()
        self.assertEqual(broker.acks, [(1, True)])
        self.assertEqual(len(ack_timers(h)), 1)
        broker.drop()
        self.assertEqual(ack_timers(h), [])
        h.reactor.advance(ACK_INTERVAL)
        self.assertEqual(broker.acks, [(1, True)])

    def test_clean_stop_acks_what_is_pending(self) -> None:
        """A clean stop acks what was handled once the consumer is cancelled, before deleting the queue."""
        h, broker, _ = self.consuming()
        for _ in range(2):
            broker.deliver("private.ID1.order", "{}")
            broker.pump()
        d = h.consumer.stopService()
        broker.pump()
        names = broker.names()
        self.assertEqual(names[names.index("basic.cancel") :][:3], ["basic.cancel", "basic.ack", "queue.delete"])
        self.assertEqual(broker.acks, [(1, True), (2, True)])
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_queue_left_takes_nothing_after_the_last_ack(self) -> None:
        """
        A clean stop that leaves the queue (RABBITMQ_HANDOVER_FILE): what
        arrives after its last ack is neither handed to the connections nor
        acked. Closing puts it back in the queue for the next process, whose
        clients (carried over by a restart in place) would otherwise get it twice.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        h = Harness(self, rabbitmq_handover_file=os.path.join(directory, "queue.json"))
        conn = h.join("ID1")
        broker = h.consuming()
        broker.deliver("private.ID1.order", '{"i":1}')
        broker.pump()
        # In flight when the stop begins: it reaches the client before the close-ok.
        broker.deliver("private.ID1.order", '{"i":2}')
        d = h.consumer.stopService()
        broker.pump()
        self.assertEqual(conn.events(), [{"order": {"i": 1}}])
        self.assertEqual(broker.acks, [(1, True)])
        self.assertIsNone(self.successResultOf(d))

    def test_ack_after_handing_over(self) -> None:
        """A message is acked only after the connections were given it; a half-read one is not acked yet."""
        acks_seen: list[int] = []
        h = Harness(self)
        broker_box: list[FakeBroker] = []
        conn = FakeConnection("c", on_send=lambda frame: acks_seen.append(len(broker_box[0].acks)))
        h.registry.authenticate(conn, Claims(uid="ID1", jti="j", expires_at=None))
        broker_box.append(h.consuming())
        broker = broker_box[0]
        data = broker.delivery(b"private.ID1.order", b'{"i":1}') + broker.delivery(b"private.ID1.order", b'{"i":2}')
        broker.outbox.append(data[:-3])
        broker.pump()
        self.assertEqual(acks_seen, [0])
        self.assertEqual(broker.acks, [(1, True)])
        h.reactor.advance(ACK_INTERVAL)
        broker.outbox.append(data[-3:])
        broker.pump()
        self.assertEqual(acks_seen, [0, 1])
        self.assertEqual(broker.acks, [(1, True), (2, True)])

    def test_heartbeat_timeout(self) -> None:
        """Deliveries count as traffic for the heartbeat check; silence drops the connection."""
        h = Harness(self, rabbitmq_heartbeat=10)
        h.join("ID1")
        broker = h.consuming()
        for _ in range(10):
            h.reactor.advance(20)
            broker.deliver("private.ID1.order", "{}")
            broker.pump()
        self.assertFalse(broker.transport.disconnecting)
        h.reactor.advance(31)
        broker.pump()
        self.assertTrue(broker.transport.aborted)
        self.assertFalse(h.consumer.up)

    def test_heartbeat_check_moved_not_recreated(self) -> None:
        """Each read moves the pending heartbeat check: no new timer (and garbage) per read."""
        h = Harness(self, rabbitmq_heartbeat=10)
        h.join("ID1")
        broker = h.consuming()
        client = h.consumer._connection
        assert client is not None
        check = client.checkHB
        calls = len(h.reactor.getDelayedCalls())
        for _ in range(5):
            h.reactor.advance(1)
            broker.deliver("private.ID1.order", "{}")
            broker.pump()
        self.assertIs(client.checkHB, check)
        self.assertTrue(check.active())
        self.assertEqual(len(h.reactor.getDelayedCalls()), calls)


class LifecycleTests(SynchronousTestCase):
    """Losing, regaining and closing the connection."""

    def test_lost_and_reconnect(self) -> None:
        """A lost connection is logged, shows as down, and is replaced after a back-off."""
        h = Harness(self)
        broker = h.consuming()
        broker.drop()
        self.assertFalse(h.consumer.up)
        self.assertEqual(h.value("peatio_ws_rabbitmq_up"), 0)
        self.assertEqual(len(h.logged("connection lost")), 1)
        self.assertEqual(len(h.logged("reconnect scheduled")), 1)
        self.assertEqual(len(h.reactor.tcpClients), 1)
        h.reactor.advance(2)
        self.assertEqual(len(h.reactor.tcpClients), 2)
        h.connect()
        self.assertTrue(h.consumer.up)
        self.assertEqual(h.value("peatio_ws_rabbitmq_connects_total"), 2)

    def test_broker_closes_connection(self) -> None:
        """The broker's reason for closing the connection is in the log line."""
        h = Harness(self)
        broker = h.consuming()
        broker.send(0, "connection.close", reply_code=320, reply_text="CONNECTION_FORCED - test", class_id=0,
                    method_id=0)
        broker.pump()
        self.assertFalse(h.consumer.up)
        self.assertIn("connection.close-ok", broker.names())
        [line] = h.logged("connection lost")
        self.assertIn("320 CONNECTION_FORCED - test", formatEvent(line))

    def test_channel_closed_by_broker(self) -> None:
        """The broker closing the consumer channel drops the connection, so everything is set up again."""
        h = Harness(self)
        h.join("ID1")
        broker = h.consuming()
        broker.send(1, "channel.close", reply_code=404, reply_text="NOT_FOUND - no queue", class_id=0, method_id=0)
        broker.pump()
        self.assertTrue(broker.transport.aborted)
        self.assertFalse(h.consumer.up)
        h.reactor.advance(2)
        broker2 = h.connect()
        self.assertTrue(h.consumer.up)
        self.assertEqual(bind_keys(broker2), [b"private.ID1.*"])

    def test_declare_refused(self) -> None:
        """A declare the broker refuses fails the attempt cleanly; the next one may succeed."""
        h = Harness(self)
        refused_at_set_up(self, h, "exchange.declare", 406, "PRECONDITION_FAILED - inequivalent arg 'durable'")
        self.assertEqual(self.flushLoggedErrors(), [])
        h.reactor.advance(2)
        h.connect()
        self.assertTrue(h.consumer.up)

    def test_login_refused(self) -> None:
        """The broker closing the connection during login fails the attempt cleanly and retries."""
        h = Harness(self)
        h.start()
        broker = h.accept()
        broker.fail["connection.open"] = (530, "NOT_ALLOWED - access to vhost refused")
        broker.pump()
        self.assertTrue(broker.lost)
        self.assertEqual(len(h.logged("connection attempt failed")), 1)
        self.assertEqual(self.flushLoggedErrors(), [])
        h.reactor.advance(2)
        h.connect()
        self.assertTrue(h.consumer.up)

    def test_refused(self) -> None:
        """A refused TCP connection is logged and retried, with a growing delay."""
        h = Harness(self)
        h.start()
        h.refuse()
        self.assertEqual(len(h.logged("connection attempt failed")), 1)
        delays = [h.reactor.getDelayedCalls()[0].getTime() - h.reactor.seconds()]
        for _ in range(6):
            h.reactor.advance(delays[-1])
            h.refuse()
            delays.append(h.reactor.getDelayedCalls()[0].getTime() - h.reactor.seconds())
        self.assertGreater(delays[-1], delays[0] + 1)
        self.assertLessEqual(delays[-1], 11)

    def test_handshake_timeout(self) -> None:
        """A broker that accepts TCP but never speaks is given up on after CONNECT_TIMEOUT."""
        h = Harness(self)
        h.start()
        broker = h.accept()
        broker.silent = True
        broker.pump()
        h.reactor.advance(CONNECT_TIMEOUT)
        broker.pump()
        self.assertTrue(broker.transport.aborted)
        self.assertEqual(len(h.logged("connection attempt failed")), 1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_stop_cleanly(self) -> None:
        """
        stopService cancels the consumer, deletes the queue, closes the
        channel and the connection, and fires once the connection is closed.
        """
        h = Harness(self, rabbitmq_unbind_delay=5)
        conn = h.join("ID1")
        broker = h.consuming()
        h.leave(conn)
        d = h.consumer.stopService()
        broker.pump()
        self.assertEqual(
            broker.names()[-4:], ["basic.cancel", "queue.delete", "channel.close", "connection.close"]
        )
        self.assertEqual(broker.named("queue.delete")[0]["queue"], h.consumer.queue_name)
        self.assertTrue(broker.transport.disconnecting)
        self.assertTrue(broker.lost)
        self.assertIsNone(self.successResultOf(d))
        self.assertFalse(h.consumer.up)
        self.assertEqual(h.value("peatio_ws_rabbitmq_up"), 0)
        self.assertEqual(h.reactor.getDelayedCalls(), [])
        self.assertEqual(h.logged("connection lost"), [])
        self.assertEqual(h.logged("reconnect scheduled"), [])

    def test_stop_unresponsive_broker(self) -> None:
        """
        A broker that does not answer cannot hold the stop up for long: after
        CLEAN_CLOSE_TIMEOUT the connection is closed (with a warning), and
        aborted at STOP_TIMEOUT.
        """
        h = Harness(self)
        broker = h.consuming()
        broker.hold.add("basic.cancel")
        d = h.consumer.stopService()
        broker.pump()
        self.assertNoResult(d)
        h.reactor.advance(CLEAN_CLOSE_TIMEOUT - 0.001)
        self.assertFalse(broker.transport.disconnecting)
        h.reactor.advance(0.001)
        self.assertTrue(broker.transport.disconnecting)
        self.assertNoResult(d)
        self.assertEqual(len(h.logged("clean close did not finish")), 1)
        h.reactor.advance(STOP_TIMEOUT - CLEAN_CLOSE_TIMEOUT - 0.001)
        self.assertFalse(broker.transport.aborted)
        h.reactor.advance(0.001)
        self.assertTrue(broker.transport.aborted)
        broker.pump()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_stop_answered_in_the_turn_of_the_deadline(self) -> None:
        """
        The cancel-ok read in the turn the clean close's deadline comes due
        (the process was busy telling clients 1001) is in time: the close
        goes on cleanly, no warning.
        """
        h = Harness(self)
        broker = h.consuming()
        broker.hold.add("basic.cancel")
        d = h.consumer.stopService()
        broker.pump()

        def answer() -> None:
            broker.release()
            broker.pump()

        h.reactor.callLater(CLEAN_CLOSE_TIMEOUT, answer)
        h.reactor.advance(CLEAN_CLOSE_TIMEOUT)
        broker.pump()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(broker.names()[-2:], ["channel.close", "connection.close"])
        self.assertEqual(h.logged("clean close did not finish"), [])
        self.assertFalse(broker.transport.aborted)

    def test_stop_while_the_queue_is_deleted(self) -> None:
        """
        A queue.delete RabbitMQ takes long to answer (thousands of bindings)
        is not waited for past CLEAN_CLOSE_TIMEOUT: one info line names the
        queue and its bindings, no warning; the stop ends within STOP_TIMEOUT.
        """
        h = Harness(self)
        for uid in ("ID1", "ID2", "ID3"):
            h.join(uid)
        broker = h.consuming()
        broker.pump()
        broker.hold.add("queue.delete")
        d = h.consumer.stopService()
        broker.pump()
        h.reactor.advance(CLEAN_CLOSE_TIMEOUT)
        broker.pump()
        [line] = h.logged("still deleting")
        self.assertEqual(
            formatEvent(line),
            f"RabbitMQ: still deleting {h.consumer.queue_name} and its 3 bindings after {CLEAN_CLOSE_TIMEOUT} s;"
            " closing the connection without waiting (RabbitMQ finishes the delete by itself)",
        )
        self.assertEqual(h.logged("clean close did not finish"), [])
        self.assertTrue(broker.lost)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_stop_losing_the_broker_while_deleting(self) -> None:
        """A connection lost while the queue is deleted is a warning with its reason, not the info line."""
        h = Harness(self)
        h.join("ID1")
        broker = h.consuming()
        broker.pump()
        broker.hold.add("queue.delete")
        d = h.consumer.stopService()
        broker.pump()
        broker.drop()
        self.assertEqual(h.logged("still deleting"), [])
        self.assertEqual(len(h.logged("clean close did not finish")), 1)
        h.reactor.advance(STOP_TIMEOUT)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_stop_fits_the_service_step(self) -> None:
        """The consumer's own bound is under the service's step bound, so the consumer says why it stopped waiting."""
        self.assertLess(CLEAN_CLOSE_TIMEOUT, STOP_TIMEOUT)
        self.assertLess(STOP_TIMEOUT, STOP_STEP_TIMEOUT)

    def test_stop_with_bind_in_flight(self) -> None:
        """
        A bind still in flight when the stop starts neither holds the stop
        up nor fails it, even refused because the queue was deleted before
        it (the binds have their own channel): no line, no reconnect.
        """
        h = Harness(self)
        broker = h.consuming()
        broker.hold.add("queue.bind")
        broker.hold.add("queue.delete")
        h.join("ID1")
        broker.pump()
        d = h.consumer.stopService()
        broker.pump()
        self.assertNoResult(d)
        self.assertEqual([name for _, name, _ in broker.held], ["queue.bind", "queue.delete"])
        broker.fail["queue.bind"] = (404, "NOT_FOUND - no queue")
        broker.release(1)
        broker.pump()
        self.assertFalse(broker.transport.disconnecting)
        broker.release()
        broker.pump()
        self.successResultOf(d)
        names = broker.names()
        self.assertEqual(names[names.index("basic.cancel"):], [
            "basic.cancel", "queue.delete", "channel.close-ok", "channel.close", "connection.close"
        ])  # the close-ok answers the broker's close of the binds' channel
        self.assertFalse(broker.transport.aborted)
        self.assertEqual(h.logged("binding failed"), [])
        self.assertEqual(h.logged("closed our channel"), [])
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_stop_while_connecting(self) -> None:
        """Stopping before the broker answered ends the attempt and fails when_consuming waiters."""
        h = Harness(self)
        waiter = h.consumer.when_consuming()
        h.start()
        self.successResultOf(h.consumer.stopService())
        self.failureResultOf(waiter, CancelledError)
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_stop_during_set_up(self) -> None:
        """Stopping while declaring drops the half-made connection quietly."""
        h = Harness(self)
        h.start()
        broker = h.accept()
        broker.hold.add("queue.declare")
        broker.pump()
        d = h.consumer.stopService()
        broker.pump()
        self.assertTrue(broker.lost)
        self.successResultOf(d)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(h.logged("set-up failed"), [])
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_stop_while_waiting_to_retry(self) -> None:
        """Stopping between attempts cancels the retry."""
        h = Harness(self)
        h.start()
        h.refuse()
        self.successResultOf(h.consumer.stopService())
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_members_after_stop(self) -> None:
        """Members leaving after the stop schedule nothing."""
        h = Harness(self)
        conn = h.join("ID1")
        broker = h.consuming()
        d = h.consumer.stopService()
        broker.pump()
        self.successResultOf(d)
        h.leave(conn)
        h.join("ID2")
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_settings_replace(self) -> None:
        """Settings built with dataclasses.replace work as well (what the integration tests do)."""
        settings = dataclasses.replace(Settings(), rabbitmq_events_exchange="x.y")
        consumer = EventConsumer(settings, Registry(), Metrics(), reactor=MemoryReactorClock())
        self.assertFalse(consumer.up)


class PublicSubscriber(FakeConnection):
    """A ranger connection as the hub sees it (subscriptions, private_streams), recording each write."""

    def __init__(self, conn_id: str, member: bool = False) -> None:
        super().__init__(conn_id)
        self.subscriptions: dict[str, Any] = {}
        self.private_streams: set[str] | None = set() if member else None
        self.writes: list[list[bytes]] = []

    def send_frames(self, frames: list[bytes]) -> bool:
        self.writes.append(list(frames))
        self.frames.extend(frames)
        return True


class PublicEventTests(SynchronousTestCase):
    """SPEC §7: public.<id>.<event> from start-up, handed to the hub; only with a hub."""

    def subscribe(self, h: Harness, conn: PublicSubscriber, *names: str) -> list[bytes]:
        assert h.hub is not None
        parsed = [parse_stream(name) for name in names]
        return h.hub.subscribe(conn, [p for p in parsed if p is not None])

    def received(self, h: Harness, event: str) -> float:
        return h.value("peatio_ws_public_events_received_total", event=event)

    def test_no_hub_no_public_binding(self) -> None:
        """Without a hub nothing public is bound, and a public key is just a bad one."""
        h = Harness(self)
        h.join("ID1")
        broker = h.consuming()
        self.assertEqual(bind_keys(broker), [b"private.ID1.*"])
        broker.deliver("public.btcusd.trades", "{}")
        broker.pump()
        self.assertEqual(h.dropped("bad_routing_key"), 1)

    def test_binds_public_at_set_up(self) -> None:
        """With a hub, public.*.* is bound at set-up, before consuming, whoever is connected."""
        h = Harness(self, public=True)
        broker = h.consuming()
        names = broker.names()
        self.assertEqual(bind_keys(broker), [b"public.*.*"])
        [fields] = [f for f in broker.named("queue.bind") if f["routing_key"] in ("public.*.*", b"public.*.*")]
        self.assertEqual((fields["queue"], fields["exchange"]), (h.consumer.queue_name, "peatio.events.test"))
        self.assertLess(names.index("queue.bind"), names.index("basic.consume"))
        # Only members count as member bindings.
        self.assertEqual(h.value("peatio_ws_rabbitmq_bindings"), 0)

    def test_public_binding_only_at_set_up(self) -> None:
        """Members coming and going bind and unbind their own key only; a reconnect binds public.*.* again."""
        h = Harness(self, public=True, rabbitmq_unbind_delay=0)
        h.join("ID0")
        broker = h.consuming()
        self.assertEqual(sorted(bind_keys(broker)), [b"private.ID0.*", b"public.*.*"])
        conn = h.join("ID1")
        broker.pump()
        h.leave(conn)
        h.reactor.advance(0)
        broker.pump()
        self.assertEqual(bind_keys(broker).count(b"public.*.*"), 1)
        self.assertEqual(bind_keys(broker, "queue.unbind"), [b"private.ID1.*"])
        broker.drop()
        h.reactor.advance(60)
        broker2 = h.connect()
        self.assertEqual(sorted(bind_keys(broker2)), [b"private.ID0.*", b"public.*.*"])

    def test_handed_to_the_hub(self) -> None:
        """public.<id>.<event> reaches the subscribers of <id>.<event>, payload as published; acked."""
        h = Harness(self, public=True)
        broker = h.consuming()
        subscriber, other = PublicSubscriber("s"), PublicSubscriber("o")
        self.subscribe(h, subscriber, "btcusd.trades")
        self.subscribe(h, other, "ethusd.trades")
        body = b'{"tid":1, "price":"1.5"}'
        tag = broker.deliver("public.btcusd.trades", body)
        broker.pump()
        self.assertEqual(subscriber.events(), [{"btcusd.trades": {"tid": 1, "price": "1.5"}}])
        self.assertTrue(subscriber.frames[0].endswith(b'{"btcusd.trades":' + body + b"}"))
        self.assertEqual(other.frames, [])
        self.assertEqual(broker.acks, [(tag, True)])
        self.assertEqual(self.received(h, "trades"), 1)
        self.assertEqual(h.value("peatio_ws_public_copies_total", event="trades"), 1)
        self.assertEqual(h.dropped("bad_routing_key") + h.dropped("no_connection"), 0)

    def test_one_write_per_read_in_broker_order(self) -> None:
        """A read's public and private frames reach a connection in one write, in the broker's order."""
        h = Harness(self, public=True)
        member = PublicSubscriber("m", member=True)
        self.subscribe(h, member, "order", "btcusd.trades")
        h.registry.authenticate(member, Claims(uid="ID1", jti="j", expires_at=None))
        broker = h.consuming()
        broker.deliver("public.btcusd.trades", '{"n":1}')
        broker.deliver("private.ID1.order", '{"n":2}')
        broker.deliver("private.ID1.trade", '{"n":3}')
        broker.deliver("public.btcusd.trades", '{"n":4}')
        broker.pump()
        self.assertEqual(len(member.writes), 1)
        self.assertEqual(
            member.events(), [{"btcusd.trades": {"n": 1}}, {"order": {"n": 2}}, {"btcusd.trades": {"n": 4}}]
        )

    def test_order_books_warm_from_start_up(self) -> None:
        """Order-book events with no subscriber are stored: the first subscriber is replayed at once."""
        h = Harness(self, public=True)
        broker = h.consuming()
        broker.deliver("public.btcusd.ob-snap", '{"asks":[],"bids":[],"sequence":1}')
        broker.deliver("public.btcusd.ob-inc", '{"asks":["1","2"],"sequence":2}')
        broker.pump()
        replay = self.subscribe(h, PublicSubscriber("late"), "btcusd.ob-inc")
        self.assertEqual(
            [json.loads(f[2:]) for f in replay],
            [{"btcusd.ob-snap": {"asks": [], "bids": [], "sequence": 1}},
             {"btcusd.ob-inc": {"asks": ["1", "2"], "sequence": 2}}],
        )

    def test_malformed_public_body(self) -> None:
        """A public body that is not JSON is counted, logged, acked and never reaches the hub."""
        h = Harness(self, public=True)
        broker = h.consuming()
        subscriber = PublicSubscriber("s")
        self.subscribe(h, subscriber, "btcusd.trades", "btcusd.ob-inc")
        bodies = [b"not json", b"", b"\xff", b'{"a":NaN}', b'{"sequence":1']
        for body in bodies:
            broker.deliver("public.btcusd.trades", body)
        tag = broker.deliver("public.btcusd.ob-snap", b"{")
        broker.pump()
        self.assertEqual(h.dropped("malformed"), len(bodies) + 1)
        self.assertEqual(subscriber.frames, [])
        self.assertEqual(self.received(h, "trades") + self.received(h, "ob-snap"), 0)
        self.assertEqual(broker.acks, [(tag, True)])
        [line] = h.logged("not JSON")
        self.assertIn("public.btcusd.trades", formatEvent(line))
        # The book never saw the malformed snapshot: not followed, not broken.
        assert h.hub is not None
        book = h.hub.books["btcusd"]
        self.assertEqual((book.sequence, book.broken), (None, False))

    def test_bad_public_keys(self) -> None:
        """Public keys of any other shape are counted as bad keys, acked, and never reach the hub."""
        h = Harness(self, public=True)
        broker = h.consuming()
        subscriber = PublicSubscriber("s")
        self.subscribe(h, subscriber, "btcusd.trades")
        keys = [
            b"public", b"public.", b"public.btcusd", b"public.btcusd.trades.x", b"public..trades",
            b"public.btcusd.", b"public.btc*.trades", b"public.btcusd.#", b"public.\xff.trades",
            b"public." + b"a" * 65 + b".trades", b"public.btcusd." + b"t" * 65,
        ]
        for key in keys:
            broker.deliver(key, "{}")
        tag = broker.deliver("public.btcusd.trades", "{}")
        broker.pump()
        self.assertEqual(h.dropped("bad_routing_key"), len(keys))
        self.assertEqual(len(subscriber.frames), 1)
        self.assertEqual(self.received(h, "trades"), 1)
        self.assertEqual(sum(self.received(h, e) for e in ("other", "trades")), 1)
        self.assertEqual(broker.acks, [(tag, True)])

    def test_part_length_boundary(self) -> None:
        """Parts of MAX_PART (64) characters are public keys; 65 are not."""
        h = Harness(self, public=True)
        broker = h.consuming()
        broker.deliver(b"public." + b"a" * 64 + b"." + b"b" * 64, "{}")
        broker.deliver(b"public." + b"a" * 65 + b".b", "{}")
        broker.pump()
        self.assertEqual(self.received(h, "other"), 1)
        self.assertEqual(h.dropped("bad_routing_key"), 1)

    def test_hub_failure(self) -> None:
        """An unexpected error in the hub is logged and counted; the message is acked, the consumer goes on."""
        h = Harness(self, public=True)
        broker = h.consuming()
        assert h.hub is not None

        def explode(ident: str, event: str, body: bytes) -> int:
            raise RuntimeError("boom")

        h.hub.publish = explode  # type: ignore[method-assign]
        tag = broker.deliver("public.btcusd.trades", "{}")
        broker.pump()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(h.dropped("error"), 1)
        self.assertEqual(broker.acks, [(tag, True)])
        self.assertTrue(h.consumer.up)
