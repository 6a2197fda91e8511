"""
Restarts in place (SIGUSR2, `systemctl reload`) of the real daemon while a
steady stream of numbered events flows to several members, on the machine's
RabbitMQ and Redis (the daemon's own queue; no fault in the broker).

The promise checked is stronger than SPEC §8's "never a silent gap": a
restart in place closes no one, so every accepted event reaches its member
exactly once, in publishing order, on the connection it had from the start
(L{tests.support.streams.Continuity}).
"""

from __future__ import annotations

import os
import signal
from functools import partial
from pathlib import Path

from twisted.internet.defer import Deferred

from tests.support.cases import ChaosTestCase, new_uid
from tests.support.daemon import DaemonProcess
from tests.support.figures import record, scaled
from tests.support.publisher import ConfirmingPublisher
from tests.support.streams import Member, SteadyStream, at_least, finish
from tests.support.waiting import until

CARRIED_OVER = "connections carried over"


class RestartInPlaceChaosTests(ChaosTestCase):
    @staticmethod
    def carried(daemon: DaemonProcess, restarts: int) -> bool:
        return daemon.log_text().count(CARRIED_OVER) == restarts

    @staticmethod
    def healthy(daemon: DaemonProcess) -> bool:
        return daemon.health()[0] == 200

    @staticmethod
    async def more_events(members: list[Member], what: str, count: int = 20) -> None:
        for m in members:
            await m.wait(partial(at_least, m, len(m) + count), 30, f"{count} events {what}")

    async def test_restarts_in_place_under_a_steady_stream(self) -> None:
        """
        Members on one daemon, events flowing to each, the daemon restarted
        in place again and again: nothing lost, nothing twice, in order, no
        connection closed or made again, and the same process throughout.
        """
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        daemon = self.start_daemon(
            RABBITMQ_HANDOVER_FILE=str(directory / "queue.json"),
            # Unused between two programs for a second or two; gone by itself after the test.
            RABBITMQ_QUEUE_EXPIRES="60",
        )
        pid = daemon.pid
        members: list[Member] = [await self.member(daemon, new_uid()) for _ in range(scaled(3, 10))]
        await self.until_metric(
            daemon, "peatio_ws_rabbitmq_bindings", lambda v: v == len(members), 10, "every member's binding"
        )
        publisher = ConfirmingPublisher(daemon.exchange)
        self.addCleanup(lambda: Deferred.fromCoroutine(publisher.stop()))
        await publisher.start()
        stream = SteadyStream(publisher, [m.uid for m in members])
        self.addCleanup(stream.stop)
        stream.start()
        rounds = scaled(3, 10)
        for n in range(rounds):
            await self.more_events(members, "before the restart")
            os.kill(pid, signal.SIGUSR2)
            await until(partial(self.carried, daemon, n + 1), 30, f"restart {n + 1} carried over", 0.1)
            await until(partial(self.healthy, daemon), 30, f"healthy after restart {n + 1}", 0.1)
        await self.more_events(members, "after the last restart")
        figures = await finish(members, stream, publisher)
        record("restart in place under a steady stream", {"restarts": rounds, **figures.figures()})
        self.assert_no_silent_gap(figures, members, told=0)
        self.assertEqual((figures.lost, figures.duplicates, figures.reconnects), (0, 0, 0))
        self.assertTrue(figures.in_order)
        self.assertEqual([len(m.sessions) for m in members], [1] * len(members), "every member on its first connection")
        self.assertEqual(daemon.pid, pid)
        carried = f"restart in place: {len(members)} connections carried over, 0 lost"
        self.assertEqual(daemon.log_text().count(carried), rounds)
        self.assert_alive(daemon)
