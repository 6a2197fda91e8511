"""
A restart in place, end to end: the real C{twistd -n peatio-ws} sent
SIGUSR2 replaces itself by a fresh start of its command line in the same
process, and its clients (the C{websockets} library, not Autobahn) go on
on the same connections: no close, no new login, and the events published
while it restarted delivered.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from websockets.sync.client import connect

from peatio_ws.testing import make_token
from tests.support.cases import DaemonTestCase, new_uid
from tests.support.daemon import DaemonProcess
from tests.support.sockets import held_listener
from tests.support.waiting import until_blocking


class RestartInPlaceTests(DaemonTestCase):
    def start(self, **env: str) -> DaemonProcess:
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        return self.start_daemon(
            RABBITMQ_HANDOVER_FILE=str(directory / "queue.json"),
            JWT_HANDOVER_FILE=str(directory / "tokens.json"),
            # What is left on the shared broker after the test goes by itself, yet not
            # while a restart on a busy machine takes a few seconds.
            RABBITMQ_QUEUE_EXPIRES="30",
            **env,
        )

    def restart(self, daemon: DaemonProcess, carried: int) -> None:
        os.kill(daemon.pid, signal.SIGUSR2)
        daemon.wait_log(f"restart in place: {carried} connections carried over", seconds=30)
        self.assertIsNone(daemon.exited(), "the process is the same one, still running")

    def test_connections_go_on(self) -> None:
        """
        A member's connection stays open across the restart, in the same
        process; what was published while the program restarted and after
        reaches it, in order; it is still the member (no new login); ping
        is answered.
        """
        daemon = self.start()
        uid = new_uid()
        ws = self.client()
        self.login(ws, uid)
        self.publish(uid, "order", {"id": 1})
        self.assertEqual(self.recv(ws), {"order": {"id": 1}})
        os.kill(daemon.pid, signal.SIGUSR2)
        # Published while the program restarts: it waits in the queue the next one consumes.
        self.publish(uid, "order", {"id": 2})
        daemon.wait_log("restart in place: 1 connections carried over", seconds=30)
        self.publish(uid, "order", {"id": 3})
        self.assertEqual(self.recv(ws), {"order": {"id": 2}})
        self.assertEqual(self.recv(ws), {"order": {"id": 3}})
        ws.send("ping")
        self.assertEqual(self.recv(ws), "pong")
        # The port was carried too: a newcomer is served.
        other = new_uid()
        newcomer = self.client()
        self.login(newcomer, other)
        self.publish(other, "order", {"id": 4})
        self.assertEqual(self.recv(newcomer), {"order": {"id": 4}})
        self.assertIsNone(daemon.exited())
        # Healthy again once the fresh program's Redis and RabbitMQ links are up.
        until_blocking(lambda: daemon.health()[0] == 200, 10, "the restarted daemon to be healthy")
        log = daemon.log_text()
        self.assertIn("restart in place: 1 connections carried, 0 told 1001, in ", log)
        self.assertNotIn("Traceback", log)

    def test_ranger_subscriptions_go_on(self) -> None:
        """A ranger connection keeps its member and its subscriptions: its private events still come."""
        daemon = self.start()
        uid = new_uid()
        token = make_token(uid=uid)
        url = daemon.url + "api/v2/ranger/private/?stream=order&stream=global.tickers"
        ws = connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10, close_timeout=10)
        self.addCleanup(ws.close)
        reply = json.loads(ws.recv(timeout=10))
        self.assertEqual(reply, {"success": {"message": "subscribed", "streams": ["order", "global.tickers"]}})
        self.restart(daemon, 1)
        self.publish(uid, "trade", {"id": "not subscribed"})
        self.publish(uid, "order", {"id": "after"})
        self.assertEqual(json.loads(ws.recv(timeout=10)), {"order": {"id": "after"}})

    def test_unauthenticated_keeps_its_deadline(self) -> None:
        """A connection that has not logged in is carried too, and may still log in."""
        daemon = self.start()
        ws = self.client()
        self.assertIn("challenge", self.recv(ws))
        self.restart(daemon, 1)
        uid = new_uid()
        ws.send(json.dumps({"jwt": "Bearer " + make_token(uid=uid)}))
        self.assertEqual(self.recv(ws), {"success": {"message": "Authenticated."}})
        self.publish(uid, "order", {"id": "x"})
        self.assertEqual(self.recv(ws), {"order": {"id": "x"}})

    def test_refused_without_queue_handover(self) -> None:
        """Without RABBITMQ_HANDOVER_FILE the queue would go with the program: refused, nothing changes."""
        daemon = self.start_daemon()
        uid = new_uid()
        ws = self.client()
        self.login(ws, uid)
        os.kill(daemon.pid, signal.SIGUSR2)
        daemon.wait_log("restart in place refused: RABBITMQ_HANDOVER_FILE is not set")
        ws.send("ping")
        self.assertEqual(self.recv(ws), "pong")
        self.publish(uid, "order", {"id": 1})
        self.assertEqual(self.recv(ws), {"order": {"id": 1}})

    def test_restarts_twice(self) -> None:
        """The fresh program can itself restart in place, once it consumes again."""
        daemon = self.start()
        uid = new_uid()
        ws = self.client()
        self.login(ws, uid)
        self.restart(daemon, 1)
        consuming = "RabbitMQ consuming: accepting WebSocket connections"
        until_blocking(lambda: daemon.log_text().count(consuming) == 2, 30, "the fresh program to consume")
        self.restart(daemon, 1)
        self.publish(uid, "order", {"id": "twice"})
        self.assertEqual(self.recv(ws, timeout=20), {"order": {"id": "twice"}})
        self.assertEqual(daemon.log_text().count("restart in place: 1 connections carried over"), 2)

    def test_restarts_again_at_once(self) -> None:
        """
        A second reload as soon as the first is done, before the fresh
        program consumes from the queue it took over: that queue is left to
        the next program again, and nobody is closed.
        """
        daemon = self.start()
        uid = new_uid()
        ws = self.client()
        self.login(ws, uid)
        self.restart(daemon, 1)
        os.kill(daemon.pid, signal.SIGUSR2)
        self.publish(uid, "order", {"id": "between"})
        until_blocking(
            lambda: daemon.log_text().count("restart in place: 1 connections carried over") == 2,
            30,
            "the second restart",
        )
        self.publish(uid, "order", {"id": "after"})
        self.assertEqual(self.recv(ws, timeout=20), {"order": {"id": "between"}})
        self.assertEqual(self.recv(ws, timeout=20), {"order": {"id": "after"}})
        log = daemon.log_text()
        self.assertNotIn("told 1001", log.replace("0 told 1001", ""))
        self.assertNotIn("Traceback", log)

    def test_socket_activated(self) -> None:
        """
        Started with a socket from the service manager: the restart in
        place carries that listening socket too, and the connections.
        """
        held = held_listener(self)
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        daemon = DaemonProcess(
            env={"RABBITMQ_HANDOVER_FILE": str(directory / "queue.json"), "RABBITMQ_QUEUE_EXPIRES": "30"},
            port=held.getsockname()[1],
            listening=held,
        )
        self.addCleanup(daemon.cleanup)
        daemon.start()
        self.daemon = daemon
        uid = new_uid()
        ws = self.client()
        self.login(ws, uid)
        self.restart(daemon, 1)
        daemon.wait_log("listening on the socket passed by the program this one replaced")
        self.publish(uid, "order", {"id": 1})
        self.assertEqual(self.recv(ws), {"order": {"id": 1}})
        newcomer = self.client()
        self.login(newcomer, new_uid())
