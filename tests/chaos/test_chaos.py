"""
Fault injection against the real daemon (``twistd -n peatio-ws``), the real
RabbitMQ and the real Redis: broker faults during a steady stream of
numbered events (this module, on a RabbitMQ node each test starts for
itself: L{tests.support.servers.PrivateRabbit}), a cluster node killed
(C{test_chaos_cluster}), Redis outages, misbehaving clients, and hostile
input (the other C{test_chaos_*} modules).

``make test`` runs the quick version (every fault kind injected at least
once); ``make chaos`` sets PEATIO_WS_CHAOS=full for more rounds, longer
outages and more connections. Every test prints its figures and appends
them to C{chaos-figures.txt} in the trial temp directory.

What "delivered" means here. The publisher works like Peatio's producer (a
topic exchange declared non-durable on every connection) but in confirm
mode with C{mandatory}, so each event ends as one of: I{accepted} (the
broker confirmed it and routed it to a queue: ours, the only one bound for
the member), I{returned} (no binding at that moment), I{nacked},
I{unconfirmed} (the publisher's connection went first) or I{not sent}
(no connection). The member is a front end as SPEC §8 asks for
(L{tests.support.streams.Member}): closed with 1012, it reconnects and
resyncs, and the tracking goes on across its connections.

The promise checked (SPEC §8), "never a silent gap": every accepted event
reaches the member, once or more, first copies in publishing order; or it
is lost while the member is told, i.e. the connection the member had when
the event was published was closed with 1012, so the reconnect and its
resync came after it (L{tests.support.streams.Continuity}). Where the
queue is found intact with its bindings (a forced close, a frozen daemon
whose queue survived, a cluster node lost under a quorum queue) nothing is
lost and no one is told; duplicates only for messages in flight at a fault. Where the
queue is gone (RabbitMQ's app stopped under a classic queue, which does not
survive it; the queue expired while the daemon was cut off; an operator
deleted it) the events it held are lost by the broker: the tests count
them, check that they are those held at that moment, and that every
member was told.
"""

from __future__ import annotations

import operator
import os
import signal
import time
from functools import partial

from twisted.internet.defer import Deferred

from tests.support.broker import queue_name_from_log
from tests.support.cases import ChaosTestCase, new_uid
from tests.support.daemon import DaemonProcess
from tests.support.figures import FULL, record, scaled
from tests.support.publisher import (
    ACCEPTED,
    NACKED,
    NOT_SENT,
    RETURNED,
    UNCONFIRMED,
    ConfirmingPublisher,
    Publisher,
)
from tests.support.servers import PrivateRabbit, private_rabbit
from tests.support.streams import Continuity, Member, SteadyStream, finish
from tests.support.waiting import sleep, until

CONNECTS = "peatio_ws_rabbitmq_connects_total"
QUEUE_LOST = "peatio_ws_rabbitmq_queue_lost_total"
CANCELLED = "peatio_ws_rabbitmq_consumer_cancelled_total"
CLOSES = "peatio_ws_closes_total"


class _Stream:
    """One daemon, one member (a front end that reconnects when told), and a steady publisher for that member."""

    daemon: DaemonProcess
    queue: str
    member: Member
    publisher: ConfirmingPublisher
    stream: SteadyStream

    @property
    def uid(self) -> str:
        return self.member.uid

    @property
    def binding(self) -> tuple[str, str]:
        """The member's binding, as rabbitmqctl lists it."""
        return (self.daemon.exchange, f"private.{self.uid}.*")


class BrokerFaultTests(ChaosTestCase):
    """
    RabbitMQ failing under the daemon while events flow: a RabbitMQ node of
    the test's own (L{PrivateRabbit}), which the daemon and the publisher
    use and the test stops, starts and queries; never the machine's.
    """

    rabbit: PrivateRabbit

    async def setUp(self) -> None:  # type: ignore[override]
        self.rabbit = await private_rabbit(self)

    async def stream(self, **env: str) -> _Stream:
        s = _Stream()
        s.daemon = self.start_daemon(**self.rabbit.daemon_env, **env)
        s.queue = queue_name_from_log(s.daemon.wait_log("consuming from"))
        s.member = await self.member(s.daemon, new_uid())
        await self.until_metric(s.daemon, "peatio_ws_rabbitmq_bindings", lambda v: v == 1, 10, "the member's binding")
        s.publisher = ConfirmingPublisher(s.daemon.exchange, self.rabbit.settings)
        publisher = s.publisher
        self.addCleanup(lambda: Deferred.fromCoroutine(publisher.stop()))
        await publisher.start()
        s.stream = SteadyStream(s.publisher, s.uid)
        self.addCleanup(s.stream.stop)
        return s

    async def more_events(self, s: _Stream, count: int, what: str) -> None:
        target = len(s.member) + count
        await s.member.wait(lambda: len(s.member) >= target, 30, f"{count} events {what}")

    async def finish(self, s: _Stream) -> Continuity:
        """Stop publishing, wait for every confirm and every accepted event (or the member told); the figures."""
        return await finish([s.member], s.stream, s.publisher)

    def assert_duplicates_in_flight(self, s: _Stream, windows: list[tuple[int, int]]) -> None:
        """
        Every extra copy is of an event whose first copy arrived before the
        daemon was back, and which came again after the fault began.
        """
        first: dict[int, int] = {}
        for index, seq in enumerate(s.member.arrivals):
            if seq not in first:
                first[seq] = index
                continue
            ok = any(first[seq] < back and index >= fault for fault, back in windows)
            self.assertTrue(ok, f"event {seq} delivered again at #{index} (first at #{first[seq]}), outside any fault")

    async def assert_bound(self, s: _Stream) -> None:
        """The member's binding is (back) on the daemon's queue (beside the order books' public one)."""

        async def bound() -> bool:
            return s.binding in await self.rabbit.bindings_of(s.queue)

        await until(bound, 30, f"the binding of {s.uid} on {s.queue}", interval=0.2)

    def told_metric(self, s: _Stream) -> int:
        return int(self.gauge(s.daemon, CLOSES, reason="1012"))

    # -- the queue found intact: nothing lost, no one told ---------------------------------

    async def test_connection_force_closed(self) -> None:
        """
        rabbitmqctl close_connection on the daemon's connection, during a
        steady stream: the daemon reconnects to the same queue, which it
        finds intact, so no one is told (no 1012) and every accepted event
        is delivered, in order; extra copies only of messages in flight at
        the fault.
        """
        s = await self.stream()
        s.stream.start()
        rounds = scaled(1, 8)
        windows: list[tuple[int, int]] = []
        for n in range(rounds):
            await self.more_events(s, 100, "before the fault")
            connects = self.gauge(s.daemon, CONNECTS)
            fault = len(s.member)
            await self.rabbit.close_connection(s.queue, "chaos: forced close")
            await self.until_metric(s.daemon, CONNECTS, partial(operator.lt, connects), 30, f"reconnect #{n + 1}")
            windows.append((fault, len(s.member)))
        await self.more_events(s, 100, "after the last reconnect")
        figures = await self.finish(s)
        record("broker: connection force-closed", {"faults injected": rounds, **figures.figures()})

        self.assert_no_silent_gap(figures, [s.member], told=0)
        self.assert_duplicates_in_flight(s, windows)
        self.assertEqual(figures.lost, 0)
        self.assertTrue(figures.in_order)
        self.assertEqual(s.member.reconnects, 0)
        counts = s.publisher.counts()
        self.assertEqual((counts[RETURNED], counts[NACKED], counts[UNCONFIRMED], counts[NOT_SENT]), (0, 0, 0, 0))
        self.assertEqual(self.gauge(s.daemon, CONNECTS), rounds + 1)
        self.assertEqual((self.gauge(s.daemon, QUEUE_LOST), self.told_metric(s)), (0, 0))
        self.assertIn(s.binding, await self.rabbit.bindings_of(s.queue))
        self.assert_alive(s.daemon)

    async def test_daemon_frozen_queue_survives(self) -> None:
        """
        The daemon frozen (SIGSTOP) until the broker drops its connection
        (missed heartbeats), but not for as long as the queue's x-expires: on
        SIGCONT it reconnects to the same queue, intact, and tells no one;
        every accepted event, including those published while it was away,
        is delivered.
        """
        s = await self.stream(RABBITMQ_HEARTBEAT="1", RABBITMQ_QUEUE_EXPIRES="120")
        pid = s.daemon.pid
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        s.stream.start()
        rounds = scaled(1, 3)
        windows = []
        for n in range(rounds):
            await self.more_events(s, 100, "before the freeze")
            fault = len(s.member)
            os.kill(pid, signal.SIGSTOP)
            try:
                await until(
                    lambda: self.connection_gone(s.queue), 30, "RabbitMQ to drop the frozen daemon", interval=0.1
                )
                self.assertTrue(await self.rabbit.queue_exists(s.queue))
            finally:
                os.kill(pid, signal.SIGCONT)
            await self.until_metric(s.daemon, CONNECTS, partial(operator.le, n + 2), 30, "the reconnect after SIGCONT")
            windows.append((fault, len(s.member)))
        await self.more_events(s, 100, "after the last freeze")
        figures = await self.finish(s)
        record(
            "broker: daemon frozen past its heartbeat (queue kept)", {"faults injected": rounds, **figures.figures()}
        )
        self.assert_no_silent_gap(figures, [s.member], told=0)
        self.assert_duplicates_in_flight(s, windows)
        self.assertEqual(figures.lost, 0)
        self.assertTrue(figures.in_order)
        self.assertEqual((self.gauge(s.daemon, QUEUE_LOST), self.told_metric(s)), (0, 0))
        self.assert_alive(s.daemon)

    async def test_broker_app_restarted_quorum(self) -> None:
        """
        RABBITMQ_QUEUE_TYPE=quorum, then rabbitmqctl stop_app / start_app
        during a steady stream, with a backlog in the queue (the daemon
        frozen until it holds 100 events beyond the prefetch window): the
        quorum queue survives with its messages. The exchange is
        non-durable, as Peatio declares it, so it and every binding are gone:
        a producer publishing before the daemon binds again loses events
        (ours, with mandatory, gets them back). The daemon finds its canary
        binding gone, so it tells the member (1012), once per restart, and
        binds again; the member reconnects and resyncs. Checked: no silent
        gap; every accepted event delivered or told; extra copies only of
        what was in flight at the stop.
        """
        s = await self.stream(RABBITMQ_PREFETCH="50", RABBITMQ_QUEUE_TYPE="quorum")
        listing = await self.rabbit.ctl("list_queues", "name", "type", "durable")
        self.assertIn(f"{s.queue}\tquorum\ttrue", listing.splitlines())
        pid = s.daemon.pid
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        s.stream.start()
        backlogs = [True] if not FULL else [True, False, True]
        outage = scaled(1, 4)
        held_at_stop = 0
        windows: list[tuple[int, int]] = []
        for n, backlog in enumerate(backlogs):
            await self.more_events(s, 100, "before the broker stops")
            fault = len(s.member)
            s.publisher.hold_reconnect = True
            held_at_stop += await self.stop_app(s, backlog)
            await until(lambda: s.daemon.health()[0] == 503, 30, "/health to report RabbitMQ down")
            await sleep(outage)
            await self.rabbit.start_app()
            s.publisher.hold_reconnect = False
            await until(lambda: s.daemon.health()[0] == 200, 60, f"the daemon back on RabbitMQ (round {n + 1})")
            self.assertTrue(await self.rabbit.queue_exists(s.queue))
            # The queue survived, its bindings did not: the member is told, and comes back.
            await s.member.wait(partial(self.told_and_back, s, n + 1), 30, "the 1012 and the member back")
            await self.assert_bound(s)
            await until(lambda: s.publisher.connected, 30, "the publisher to reconnect")
            await self.more_events(s, 100, "after the restart")
            windows.append((fault, len(s.member)))
        figures = await self.finish(s)
        record(
            "broker: app stopped and started, quorum queue (stop_app/start_app)",
            {
                "faults injected": len(backlogs),
                "outage (s, excluding stop/start)": outage,
                **figures.figures(),
                "held in the queue at stop (rabbitmqctl, backlog rounds)": held_at_stop,
                "daemon reconnects": int(self.gauge(s.daemon, CONNECTS)) - 1,
                "daemon found its queue gone": int(self.gauge(s.daemon, QUEUE_LOST)),
            },
        )
        self.assert_no_silent_gap(figures, [s.member], told=len(backlogs))
        self.assert_duplicates_in_flight(s, windows)
        self.assertEqual(s.member.reconnects, len(backlogs))
        self.assertEqual(self.gauge(s.daemon, CONNECTS), len(backlogs) + 1)
        self.assertEqual((self.gauge(s.daemon, QUEUE_LOST), self.told_metric(s)), (len(backlogs), len(backlogs)))
        self.assert_alive(s.daemon)

    # -- the queue gone: what it held is lost, and every member is told ---------------------

    async def test_broker_app_restarted(self) -> None:
        """
        rabbitmqctl stop_app / start_app during a steady stream, on the
        default classic queue. RabbitMQ 3.10 deletes non-durable queues and
        exchanges when its app stops: the events in our queue at that moment
        are lost by the broker, and nothing can accept events while it is
        down. Checked: the daemon stays up, re-declares the exchange and its
        queue by itself (the publisher is held back until then), finds its
        queue was gone and closes the member's connection with 1012; the
        member reconnects, its binding comes back, and every event accepted
        afterwards is delivered. The lost ones are the tail the queue held
        when the broker stopped (or accepted between the 1012 and the
        reconnect), and the member was told of every one: no silent gap.

        In a "backlog" round the daemon is frozen (SIGSTOP) until its queue
        holds 100 events beyond the prefetch window, so that the stop
        destroys a known backlog: the loss is measured, not just possible.
        """
        s = await self.stream(RABBITMQ_PREFETCH="50")
        pid = s.daemon.pid
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        s.stream.start()
        backlogs = [True] if not FULL else [False, True, False]
        rounds = len(backlogs)
        outage = scaled(1, 4)
        epochs: list[tuple[int, int]] = []  # [first seq, seq when the broker had stopped) per epoch
        epoch_start = 0
        witnesses_kept = 0
        held_at_stop = 0
        for n, backlog in enumerate(backlogs):
            await self.more_events(s, 100, "before the broker stops")
            # A witness nobody re-declares: shows what the broker keeps over a restart.
            witness = f"peatio-ws-witness.{new_uid()}"
            await self.declare_witness(witness)
            s.publisher.hold_reconnect = True
            held_at_stop += await self.stop_app(s, backlog)
            stopped = s.stream.next_seq
            epochs.append((epoch_start, stopped))
            await until(lambda: s.daemon.health()[0] == 503, 30, "/health to report RabbitMQ down")
            _, body = s.daemon.health()
            self.assertEqual(body["down"], ["rabbitmq"])
            await sleep(outage)
            await self.rabbit.start_app()
            kept = (await self.rabbit.queue_exists(witness), await self.rabbit.exchange_exists(witness))
            self.assertEqual(kept, (False, False), "RabbitMQ kept a non-durable queue or exchange over stop_app")
            witnesses_kept += any(kept)
            await until(lambda: s.daemon.health()[0] == 200, 60, f"the daemon back on RabbitMQ (round {n + 1})")
            # The daemon alone brought back the exchange and its queue, and told the member.
            self.assertTrue(await self.rabbit.exchange_exists(s.daemon.exchange))
            self.assertTrue(await self.rabbit.queue_exists(s.queue))
            await s.member.wait(partial(self.told_and_back, s, n + 1), 30, "the 1012 and the member back")
            await self.assert_bound(s)
            epoch_start = s.stream.next_seq
            s.publisher.hold_reconnect = False
            await until(lambda: s.publisher.connected, 30, "the publisher to reconnect")
        await self.more_events(s, 100, "after the last restart")

        figures = await self.finish(s)
        accepted = s.publisher.seqs(ACCEPTED)
        lost = sorted(set(accepted) - s.member.unique)
        record(
            "broker: app stopped and started, classic queue (stop_app/start_app)",
            {
                "faults injected": rounds,
                "outage (s, excluding stop/start)": outage,
                **figures.figures(),
                "held in the queue at stop (rabbitmqctl, backlog rounds)": held_at_stop,
                "non-durable queue+exchange kept by the broker": witnesses_kept,
                "daemon reconnects": int(self.gauge(s.daemon, CONNECTS)) - 1,
                "daemon found its queue gone": int(self.gauge(s.daemon, QUEUE_LOST)),
            },
        )
        self.assert_no_silent_gap(figures, [s.member], told=rounds)
        for start, stop in epochs:
            epoch_lost = [x for x in lost if start <= x < stop]
            if epoch_lost:
                # A tail: everything accepted in the epoch before the first lost one arrived, nothing after it did.
                head = [x for x in accepted if start <= x < epoch_lost[0]]
                tail = [x for x in accepted if epoch_lost[0] <= x < stop]
                self.assertTrue(set(head) <= s.member.unique, "an event before the lost tail is missing")
                self.assertEqual(tail, epoch_lost, "lost events are not the tail held at the stop")
        # Lost after the stop: only between a 1012 and the member's reconnect.
        after_stops = [x for x in lost if not any(start <= x < stop for start, stop in epochs)]
        self.assertLessEqual(len(after_stops), figures.lost_after_told)
        self.assertTrue(figures.in_order)
        self.assertEqual(figures.duplicates, 0)
        # Lost: what the queue held (and maybe a few confirmed between the count and the stop).
        self.assertGreaterEqual(len(lost), held_at_stop)
        self.assertEqual(self.gauge(s.daemon, CONNECTS), rounds + 1)
        self.assertEqual((self.gauge(s.daemon, QUEUE_LOST), self.told_metric(s)), (rounds, rounds))
        self.assert_alive(s.daemon)

    async def test_daemon_frozen_queue_expired(self) -> None:
        """
        The daemon frozen for longer than x-expires: the broker deletes the
        queue and the events in it. On SIGCONT the daemon finds its queue
        gone, closes the member's connection with 1012, declares a new one;
        the member reconnects and its binding comes back; every event
        accepted after that is delivered. Lost: only events published before
        the member was back (while the daemon was frozen, while it found its
        queue gone, or between the 1012 and the reconnect), and the member was
        told of every one.
        """
        s = await self.stream(RABBITMQ_HEARTBEAT="1", RABBITMQ_QUEUE_EXPIRES="2")
        pid = s.daemon.pid
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        s.stream.start()
        await self.more_events(s, 100, "before the freeze")
        frozen = s.stream.next_seq
        os.kill(pid, signal.SIGSTOP)
        try:
            await until(lambda: self.queue_gone(s.queue), 60, "the queue to expire", interval=0.1)
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = s.stream.next_seq
        await self.until_metric(s.daemon, CONNECTS, lambda v: v >= 2, 30, "the reconnect after SIGCONT")
        await until(lambda: s.daemon.health()[0] == 200, 30, "the daemon healthy again")
        await s.member.wait(partial(self.told_and_back, s, 1), 30, "the 1012 and the member back")
        await self.assert_bound(s)
        await self.more_events(s, 100, "after the queue was re-declared")
        figures = await self.finish(s)
        accepted = s.publisher.seqs(ACCEPTED)
        lost = set(accepted) - s.member.unique
        record(
            "broker: daemon frozen past the queue's x-expires",
            {"faults injected": 1, **figures.figures(), "published while frozen": resumed - frozen},
        )
        self.assert_no_silent_gap(figures, [s.member], told=1)
        # Lost after SIGCONT: only what was published before the member was back (the daemon needs a moment to
        # find its queue gone and say 1012; until the member's new binding, events for it go nowhere).
        back = s.member.session.opened
        assert back is not None
        late = sorted(x for x in lost if x >= resumed and figures.published_at(x) >= back)
        self.assertEqual(late, [], "lost although published after the member was back")
        self.assertTrue(all(x >= frozen - 2000 for x in lost))  # at most a prefetch window before the freeze
        self.assertTrue(figures.in_order)
        # What the broker returned while no queue was bound is counted by the publisher...
        self.assertGreater(s.publisher.counts()[RETURNED], 0)
        # ...and the daemon says it found its queue gone, and told its connections.
        s.daemon.wait_log("was gone")
        self.assertEqual((self.gauge(s.daemon, QUEUE_LOST), self.told_metric(s)), (1, 1))
        self.assert_alive(s.daemon)

    async def test_queue_deleted_by_operator(self) -> None:
        """
        An operator deletes the daemon's queue while it consumes, during a
        steady stream: with rabbitmqctl delete_queue on the node, or with
        queue.delete from another AMQP client. The broker cancels the
        consumer (consumer_cancel_notify), so the daemon learns it while
        connected and closes the member's connection with 1012 at once; it
        declares the queue again, the member reconnects, its binding comes
        back and events flow. In a "backlog" round the daemon is frozen
        until the queue holds 100 events, then the queue is deleted: those
        are lost, and the member is told of every one.
        """
        s = await self.stream(RABBITMQ_PREFETCH="50")
        pid = s.daemon.pid
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        s.stream.start()
        ways = [("rabbitmqctl", False), ("amqp", True)]
        if FULL:
            ways += [("amqp", False), ("rabbitmqctl", True)]
        held = 0
        to_1012: list[float] = []
        for n, (how, backlog) in enumerate(ways):
            await self.more_events(s, 100, "before the queue is deleted")
            if backlog:
                os.kill(pid, signal.SIGSTOP)
                try:
                    await until(lambda: self.ready_at_least(s.queue, 100), 30, "a backlog in the queue", interval=0.1)
                    held += (await self.rabbit.queue_counts(s.queue))[0]
                    await self.delete_queue(s.queue, how)
                finally:
                    os.kill(pid, signal.SIGCONT)
            else:
                await self.delete_queue(s.queue, how)
            deleted = time.monotonic()
            await s.member.wait(partial(self.told_at_least, s, n + 1), 30, f"the 1012 after delete #{n + 1} ({how})")
            closed = [x.closed for x in s.member.sessions if x.told][-1]
            assert closed is not None
            to_1012.append(closed - deleted)
            await s.member.wait_connected()
            await self.assert_bound(s)
            await self.more_events(s, 100, "after the queue came back")
        figures = await self.finish(s)
        record(
            "broker: queue deleted by an operator (rabbitmqctl delete_queue, queue.delete)",
            {
                "faults injected": len(ways),
                **figures.figures(),
                "held in the queue at the delete (rabbitmqctl, backlog rounds)": held,
                "seconds from the delete to the 1012 (max)": round(max(to_1012), 2),
                "consumer cancelled by the broker": int(self.gauge(s.daemon, CANCELLED)),
                "daemon found its queue gone": int(self.gauge(s.daemon, QUEUE_LOST)),
            },
        )
        self.assert_no_silent_gap(figures, [s.member], told=len(ways))
        self.assertGreaterEqual(figures.lost, held)
        self.assertTrue(figures.in_order)
        # Learnt while connected: from the broker's basic.cancel, not from a connection lost.
        self.assertEqual(self.gauge(s.daemon, CANCELLED), len(ways))
        self.assertEqual((self.gauge(s.daemon, QUEUE_LOST), self.told_metric(s)), (len(ways), len(ways)))
        self.assert_alive(s.daemon)

    # -- faults and probes ----------------------------------------------------------------

    async def stop_app(self, s: _Stream, backlog: bool) -> int:
        """
        rabbitmqctl stop_app; with C{backlog}, first freeze the daemon until
        its queue holds 100 ready events. How many it held (0 without).
        """
        if not backlog:
            await self.rabbit.stop_app()
            return 0
        os.kill(s.daemon.pid, signal.SIGSTOP)
        try:
            await until(lambda: self.ready_at_least(s.queue, 100), 30, "a backlog in the queue", interval=0.1)
            ready, _ = await self.rabbit.queue_counts(s.queue)
            await self.rabbit.stop_app()
        finally:
            os.kill(s.daemon.pid, signal.SIGCONT)
        return ready

    async def delete_queue(self, queue: str, how: str) -> None:
        """Delete C{queue} as an operator would: C{rabbitmqctl delete_queue}, or queue.delete over AMQP."""
        if how == "rabbitmqctl":
            await self.rabbit.ctl("delete_queue", queue)
            return
        publisher = await Publisher.connect(self.rabbit.settings)
        try:
            await publisher.delete_queue(queue)
        finally:
            await publisher.close()

    @staticmethod
    def told_at_least(s: _Stream, count: int) -> bool:
        return s.member.told >= count

    @staticmethod
    def told_and_back(s: _Stream, count: int) -> bool:
        """The member was told (1012) C{count} times, and is connected again."""
        return s.member.told >= count and s.member.connected

    async def ready_at_least(self, queue: str, count: int) -> bool:
        ready, _ = await self.rabbit.queue_counts(queue)
        return ready >= count

    async def declare_witness(self, name: str) -> None:
        """A non-durable topic exchange and queue (bound), declared once, as Peatio and peatio-ws declare theirs."""
        publisher = await Publisher.connect(self.rabbit.settings)
        try:
            await publisher.declare_exchange(name)
            await publisher.channel.queue_declare(
                queue=name.encode(), durable=False, exclusive=False, auto_delete=False, arguments={"x-expires": 600000}
            )
            await publisher.channel.queue_bind(queue=name.encode(), exchange=name.encode(), routing_key=b"#")
        finally:
            await publisher.close()

    async def connection_gone(self, name: str) -> bool:
        return not await self.rabbit.has_connection(name)

    async def queue_gone(self, queue: str) -> bool:
        return not await self.rabbit.queue_exists(queue)
