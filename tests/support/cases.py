"""
The base test cases that run the real daemon and clean up everything they
started: L{DaemonTestCase} (synchronous, driven by the C{websockets}
library as a client knowing only the published API would) and
L{ChaosTestCase} (on the reactor: daemons, confirming publishers, reactor
and raw-socket clients, probes).
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from peatio_ws.testing import make_token
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.figures import FULL
from tests.support.oracle import AUTHENTICATED
from tests.support.probes import metric
from tests.support.publisher import ConfirmingPublisher, Publisher
from tests.support.raw_client import RawClient
from tests.support.reactor_client import WsClient, ws_connect
from tests.support.waiting import until

__all__ = ["ChaosTestCase", "DaemonTestCase", "new_uid"]


def new_uid(prefix: str = "ID") -> str:
    """A member uid no other test uses (Barong's shape: ID + 10 hex digits)."""
    return prefix + uuid.uuid4().hex[:10].upper()


class DaemonTestCase(SynchronousTestCase):
    """One daemon per test, and clients of the C{websockets} library (not Autobahn) on it."""

    daemon: DaemonProcess

    def start_daemon(self, **env: str) -> DaemonProcess:
        daemon = DaemonProcess(env=env)
        self.addCleanup(daemon.cleanup)
        daemon.start()
        self.daemon = daemon
        return daemon

    def client(self) -> ClientConnection:
        ws = connect(self.daemon.url, open_timeout=10, close_timeout=10)
        self.addCleanup(ws.close)
        return ws

    def recv(self, ws: ClientConnection, timeout: float = 10.0) -> Any:
        message = ws.recv(timeout=timeout)
        try:
            return json.loads(message)
        except ValueError:
            return message

    def login(self, ws: ClientConnection, uid: str, **claims: Any) -> None:
        self.assertIn("challenge", self.recv(ws))
        ws.send(json.dumps({"jwt": "Bearer " + make_token(uid=uid, **claims)}))
        self.assertEqual(self.recv(ws), AUTHENTICATED)

    def publish(self, uid: str, event: str, payload: dict[str, Any]) -> None:
        result = run_cli(
            "publish", "--uid", uid, "--event", event, "--json", json.dumps(payload),
            env={"RABBITMQ_EVENTS_EXCHANGE": self.daemon.exchange},
        )
        self.assertEqual(result.returncode, 0, result.stderr)

    def close_code(self, ws: ClientConnection, timeout: float = 15.0) -> int | None:
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        except ConnectionClosed as e:
            return e.rcvd.code if e.rcvd is not None else None
        except TimeoutError:
            return None
        return None


class ChaosTestCase(TestCase):
    """Starts real daemons, publishers and clients, and cleans every one up."""

    timeout = 900 if FULL else 240
    #: Whether L{start_daemon} waits for /health to say every component is up (else: for it to answer).
    wait_healthy = True

    def start_daemon(self, **env: str) -> DaemonProcess:
        """A daemon with C{env}, started; stopped, and its exchange removed, at cleanup."""
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
        daemon.start(wait_healthy=self.wait_healthy)
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
