"""
Fault injection against the real daemon (``twistd -n peatio-ws``), the real
RabbitMQ and the real Redis: broker faults during a steady stream of
numbered events (this module, on a RabbitMQ node each test starts for
itself: L{tests.support.servers.PrivateRabbit}), Redis outages, misbehaving
clients, and hostile input (the other C{test_chaos_*} modules).

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
(no connection). The promise checked: every accepted event reaches the
member's connection, once or more, first copies in publishing order;
duplicates only for messages in flight at a fault. Where the broker
itself destroys the queue (RabbitMQ's app stopped: non-durable queues and
exchanges do not survive; or the queue expired while the daemon was cut
off), the events held in it are lost by the broker; the tests count them
and check they are exactly those held at that moment, and that everything
accepted after the daemon restored its queue and bindings is delivered.
"""

from __future__ import annotations

import operator
import os
import signal
from functools import partial
from typing import Any

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
from tests.support.reactor_client import WsClient
from tests.support.servers import PrivateRabbit, private_rabbit
from tests.support.streams import SeqTracker, SteadyStream, delivery_figures
from tests.support.waiting import sleep, until

CONNECTS = "peatio_ws_rabbitmq_connects_total"


class _Stream:
    """One daemon, one member with one client, and a steady publisher for that member."""

    daemon: DaemonProcess
    queue: str
    uid: str
    client: WsClient
    seqs: SeqTracker
    publisher: ConfirmingPublisher
    stream: SteadyStream


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
        s.queue = queue_name_from_log(s.daemon.log_text())
        s.uid = new_uid()
        s.client = await self.client(s.daemon, s.uid)
        s.seqs = SeqTracker(s.client)
        await self.until_metric(s.daemon, "peatio_ws_rabbitmq_bindings", lambda v: v == 1, 10, "the member's binding")
        s.publisher = ConfirmingPublisher(s.daemon.exchange, self.rabbit.settings)
        publisher = s.publisher
        self.addCleanup(lambda: Deferred.fromCoroutine(publisher.stop()))
        await publisher.start()
        s.stream = SteadyStream(s.publisher, s.uid)
        self.addCleanup(s.stream.stop)
        return s

    async def more_events(self, s: _Stream, count: int, what: str) -> None:
        target = len(s.seqs) + count
        await s.client.wait(lambda: len(s.seqs) >= target, 30, f"{count} events {what}")

    async def finish(self, s: _Stream, may_be_lost: set[int] | None = None) -> dict[str, Any]:
        """Stop publishing, wait for every confirm and every accepted event; the figures."""
        s.stream.stop()
        await s.publisher.settle()
        accepted = set(s.publisher.seqs(ACCEPTED)) - (may_be_lost or set())
        await s.client.wait(
            lambda: accepted <= s.seqs.unique, 30, f"{len(accepted - s.seqs.unique)} accepted events to arrive"
        )
        # Anything still on its way (a redelivery) arrives before a marker published now.
        marker = s.stream.next_seq
        s.stream.publish_batch()
        await s.publisher.settle()
        await s.client.wait(lambda: marker in s.seqs.unique, 15, "the final marker event")
        return delivery_figures(s.seqs.arrivals, s.publisher)

    def assert_duplicates_in_flight(self, s: _Stream, windows: list[tuple[int, int]]) -> None:
        """
        Every extra copy is of an event whose first copy arrived before the
        daemon was back, and which came again after the fault began.
        """
        first: dict[int, int] = {}
        for index, seq in enumerate(s.seqs.arrivals):
            if seq not in first:
                first[seq] = index
                continue
            ok = any(first[seq] < back and index >= fault for fault, back in windows)
            self.assertTrue(ok, f"event {seq} delivered again at #{index} (first at #{first[seq]}), outside any fault")

    # -- tests --------------------------------------------------------------

    async def test_connection_force_closed(self) -> None:
        """
        rabbitmqctl close_connection on the daemon's connection, during a
        steady stream: the daemon reconnects to the same queue and every
        accepted event is delivered, in order; extra copies only of
        messages in flight at the fault.
        """
        s = await self.stream()
        s.stream.start()
        rounds = scaled(1, 8)
        windows: list[tuple[int, int]] = []
        for n in range(rounds):
            await self.more_events(s, 100, "before the fault")
            connects = self.gauge(s.daemon, CONNECTS)
            fault = len(s.seqs)
            await self.rabbit.close_connection(s.queue, "chaos: forced close")
            await self.until_metric(s.daemon, CONNECTS, partial(operator.lt, connects), 30, f"reconnect #{n + 1}")
            windows.append((fault, len(s.seqs)))
        await self.more_events(s, 100, "after the last reconnect")
        figures = await self.finish(s)
        self.assert_duplicates_in_flight(s, windows)
        record("broker: connection force-closed", {"faults injected": rounds, **figures})

        self.assertEqual(figures["lost"], 0)
        self.assertTrue(figures["in order"])
        counts = s.publisher.counts()
        self.assertEqual((counts[RETURNED], counts[NACKED], counts[UNCONFIRMED], counts[NOT_SENT]), (0, 0, 0, 0))
        self.assertEqual(self.gauge(s.daemon, CONNECTS), rounds + 1)
        self.assertEqual(await self.rabbit.bindings_of(s.queue), [(s.daemon.exchange, f"private.{s.uid}.*")])
        self.assert_alive(s.daemon)

    async def test_broker_app_restarted(self) -> None:
        """
        rabbitmqctl stop_app / start_app during a steady stream. RabbitMQ
        3.10 deletes non-durable queues and exchanges when its app stops: the
        events in our queue at that moment are lost by the broker, and
        nothing can accept events while it is down. Checked: the daemon stays
        up, re-declares the exchange and its queue and restores the member's
        binding by itself (the publisher is held back until then), and every
        event accepted afterwards is delivered; the lost ones are exactly
        the tail the queue held when the broker stopped.

        In a "backlog" round the daemon is frozen (SIGSTOP) until its queue
        holds 100 events beyond the prefetch window, so that the stop
        destroys a known backlog: the loss is measured, not just possible.
        """
        s = await self.stream(RABBITMQ_PREFETCH="50")
        assert s.daemon.process is not None
        pid = s.daemon.process.pid
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
            if backlog:
                os.kill(pid, signal.SIGSTOP)
                try:
                    await until(lambda: self.ready_at_least(s.queue, 100), 30, "a backlog in the queue", interval=0.1)
                    ready, _ = await self.rabbit.queue_counts(s.queue)
                    held_at_stop += ready
                    await self.rabbit.stop_app()
                finally:
                    os.kill(pid, signal.SIGCONT)
            else:
                await self.rabbit.stop_app()
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
            # The daemon alone brought back the exchange, its queue and the binding.
            self.assertTrue(await self.rabbit.exchange_exists(s.daemon.exchange))
            self.assertTrue(await self.rabbit.queue_exists(s.queue))
            self.assertEqual(await self.rabbit.bindings_of(s.queue), [(s.daemon.exchange, f"private.{s.uid}.*")])
            epoch_start = s.stream.next_seq
            s.publisher.hold_reconnect = False
            await until(lambda: s.publisher.connected, 30, "the publisher to reconnect")
        await self.more_events(s, 100, "after the last restart")

        accepted = s.publisher.seqs(ACCEPTED)
        # Published before the broker had stopped, and not yet delivered: held by the queue the broker deleted.
        at_risk = {x for start, stop in epochs for x in accepted if start <= x < stop}
        figures = await self.finish(s, may_be_lost=at_risk - s.seqs.unique)
        lost = sorted(set(accepted) - s.seqs.unique)
        for start, stop in epochs:
            epoch_lost = [x for x in lost if start <= x < stop]
            if epoch_lost:
                # A tail: everything accepted in the epoch before the first lost one arrived, nothing after it did.
                head = [x for x in accepted if start <= x < epoch_lost[0]]
                tail = [x for x in accepted if epoch_lost[0] <= x < stop]
                self.assertTrue(set(head) <= s.seqs.unique, "an event before the lost tail is missing")
                self.assertEqual(tail, epoch_lost, "lost events are not the tail held at the stop")
        self.assertTrue(set(lost) <= at_risk, f"lost events published after the broker stopped: {set(lost) - at_risk}")
        record(
            "broker: app stopped and started (stop_app/start_app)",
            {
                "faults injected": rounds,
                "outage (s, excluding stop/start)": outage,
                **figures,
                "held in the queue at stop (rabbitmqctl, backlog rounds)": held_at_stop,
                "lost: held in the queue at stop": len(lost),
                "non-durable queue+exchange kept by the broker": witnesses_kept,
                "daemon reconnects": int(self.gauge(s.daemon, CONNECTS)) - 1,
                "daemon found its queue gone": int(self.gauge(s.daemon, "peatio_ws_rabbitmq_queue_lost_total")),
            },
        )
        self.assertTrue(figures["in order"])
        self.assertEqual(figures["duplicates"], 0)
        # Lost: what the queue held (and maybe a few confirmed between the count and the stop).
        self.assertGreaterEqual(len(lost), held_at_stop)
        self.assertEqual(self.gauge(s.daemon, CONNECTS), rounds + 1)
        self.assertEqual(self.gauge(s.daemon, "peatio_ws_rabbitmq_queue_lost_total"), rounds)
        self.assert_alive(s.daemon)

    async def test_daemon_frozen_queue_survives(self) -> None:
        """
        The daemon frozen (SIGSTOP) until the broker drops its connection
        (missed heartbeats), but not for as long as the queue's x-expires: on
        SIGCONT it reconnects to the same queue and every accepted event,
        including those published while it was away, is delivered.
        """
        s = await self.stream(RABBITMQ_HEARTBEAT="1", RABBITMQ_QUEUE_EXPIRES="120")
        assert s.daemon.process is not None
        pid = s.daemon.process.pid
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        s.stream.start()
        rounds = scaled(1, 3)
        windows = []
        for n in range(rounds):
            await self.more_events(s, 100, "before the freeze")
            fault = len(s.seqs)
            os.kill(pid, signal.SIGSTOP)
            try:
                await until(
                    lambda: self.connection_gone(s.queue), 30, "RabbitMQ to drop the frozen daemon", interval=0.1
                )
                self.assertTrue(await self.rabbit.queue_exists(s.queue))
            finally:
                os.kill(pid, signal.SIGCONT)
            await self.until_metric(s.daemon, CONNECTS, partial(operator.le, n + 2), 30, "the reconnect after SIGCONT")
            windows.append((fault, len(s.seqs)))
        await self.more_events(s, 100, "after the last freeze")
        figures = await self.finish(s)
        self.assert_duplicates_in_flight(s, windows)
        record("broker: daemon frozen past its heartbeat (queue kept)", {"faults injected": rounds, **figures})
        self.assertEqual(figures["lost"], 0)
        self.assertTrue(figures["in order"])
        self.assert_alive(s.daemon)

    async def test_daemon_frozen_queue_expired(self) -> None:
        """
        The daemon frozen for longer than x-expires: the broker deletes the
        queue and the events in it. On SIGCONT the daemon declares a new one,
        restores the binding, logs that the queue was gone and counts it;
        every event accepted after that is delivered. Lost: only events
        published while the daemon was frozen.
        """
        s = await self.stream(RABBITMQ_HEARTBEAT="1", RABBITMQ_QUEUE_EXPIRES="2")
        assert s.daemon.process is not None
        pid = s.daemon.process.pid
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
        self.assertEqual(await self.rabbit.bindings_of(s.queue), [(s.daemon.exchange, f"private.{s.uid}.*")])
        await self.more_events(s, 100, "after the queue was re-declared")
        accepted = s.publisher.seqs(ACCEPTED)
        at_risk = {x for x in accepted if x < resumed} - s.seqs.unique
        figures = await self.finish(s, may_be_lost=at_risk)
        lost = set(accepted) - s.seqs.unique
        record(
            "broker: daemon frozen past the queue's x-expires",
            {"faults injected": 1, **figures, "lost: queue expired": len(lost),
             "published while frozen": resumed - frozen},
        )
        self.assertTrue(lost <= at_risk, f"lost events published after SIGCONT: {sorted(lost - at_risk)[:10]}")
        self.assertTrue(all(x >= frozen - 2000 for x in lost))  # at most a prefetch window before the freeze
        self.assertTrue(figures["in order"])
        # What the broker returned while no queue was bound is counted by the publisher...
        self.assertGreater(s.publisher.counts()[RETURNED], 0)
        # ...and the daemon says it found its queue gone.
        self.assertIn("was gone", s.daemon.log_text())
        self.assertEqual(self.gauge(s.daemon, "peatio_ws_rabbitmq_queue_lost_total"), 1)
        self.assert_alive(s.daemon)

    # -- probes -------------------------------------------------------------------

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
