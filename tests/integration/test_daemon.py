"""
End-to-end: the real daemon process (``twistd -n peatio-ws``) with the real
RabbitMQ and Redis, driven by the ``websockets`` library (not Autobahn), as a
client that only knows Peatio's published WebSocket API would.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from peatio_ws.testing import make_token
from tests.support.broker import queue_name_from_log
from tests.support.cases import DaemonTestCase
from tests.support.daemon import DaemonProcess
from tests.support.oracle import AUTHENTICATED


class EndToEndTests(DaemonTestCase):
    def setUp(self) -> None:
        self.start_daemon()

    def test_protocol(self) -> None:
        """Challenge, the exact replies, and events of the member only, through the real broker."""
        alice, bob = f"ID{uuid.uuid4().hex[:10].upper()}", f"ID{uuid.uuid4().hex[:10].upper()}"
        a1, a2, b = self.client(), self.client(), self.client()
        challenge = self.recv(a1)["challenge"]
        self.assertRegex(challenge, r"^[A-Za-z0-9_-]{54}$")
        a1.send(json.dumps({"jwt": "Token abc"}))
        self.assertEqual(self.recv(a1), {"error": {"message": "Token type is not provided or invalid."}})
        a1.send(json.dumps({"jwt": "Bearer abc"}))
        self.assertEqual(self.recv(a1), {"error": {"message": "Authentication failed."}})
        a1.send("not json")
        self.assertEqual(self.recv(a1), {"error": {"message": "Error while handling message."}})
        a1.send("ping")
        self.assertEqual(a1.recv(timeout=10), "pong")
        a1.send(json.dumps({"jwt": "Bearer " + make_token(uid=alice)}))
        self.assertEqual(self.recv(a1), AUTHENTICATED)
        self.login(a2, alice)
        self.login(b, bob)

        order = {"id": 1, "side": "buy", "ord_type": "limit", "price": "100.5", "market": "btcusd",
                 "state": "wait", "created_at": "2026-11-24T00:00:00Z", "note": "比特币"}
        self.publish(alice, "order", order)
        self.assertEqual(self.recv(a1), {"order": order})
        self.assertEqual(self.recv(a2), {"order": order})
        trade = {"id": 9, "price": "100.5", "amount": "1", "total": "100.5", "market": "btcusd", "side": "buy"}
        self.publish(bob, "trade", trade)
        self.assertEqual(self.recv(b), {"trade": trade})
        # Nothing of Bob's reached Alice: her next message is her own.
        self.publish(alice, "balance", {"currency": "btc", "balance": "1.0"})
        self.assertEqual(self.recv(a1), {"balance": {"currency": "btc", "balance": "1.0"}})

    def test_health_and_metrics(self) -> None:
        """/health names every component as up; /metrics exposes the daemon's figures."""
        status, body = self.daemon.health()
        self.assertEqual(status, 200)
        self.assertEqual(body["components"], {"listener": "up", "rabbitmq": "up", "redis": "up"})
        ws = self.client()
        self.login(ws, "IDMETRICS0001")
        text = self.daemon.metrics()
        self.assertIn("peatio_ws_connections 1.0", text)
        self.assertIn('peatio_ws_authentications_total{reason="ok",result="success"} 1.0', text)
        self.assertIn("peatio_ws_rabbitmq_up 1.0", text)

    def test_expiry_closes(self) -> None:
        """A token that expires while connected gets Token expired. and close 4001."""
        ws = self.client()
        # Eight seconds: logging in must finish before exp even on a loaded machine (2 s was flaky there).
        self.login(ws, "IDEXPIRY0001", exp=int(time.time()) + 8)
        self.assertEqual(self.recv(ws, timeout=30), {"error": {"message": "Token expired."}})
        self.assertEqual(self.close_code(ws), 4001)

    def test_too_big(self) -> None:
        """A message over WEBSOCKET_MAX_MESSAGE_SIZE closes with 1009, received by the client."""
        ws = self.client()
        self.recv(ws)
        ws.send("x" * 20000)
        self.assertEqual(self.close_code(ws), 1009)

    def test_shutdown_1001(self) -> None:
        """SIGTERM closes every client with 1001 and the daemon exits."""
        clients = [self.client() for _ in range(3)]
        self.login(clients[0], "IDSHUTDOWN01")
        for ws in clients[1:]:
            self.recv(ws)
        self.daemon.stop()
        for ws in clients:
            self.assertEqual(self.close_code(ws), 1001)
        self.assertIn("shutdown complete", self.daemon.log_text())  # written before it exits


class RestartTests(DaemonTestCase):
    """
    A restart with RABBITMQ_HANDOVER_FILE and JWT_HANDOVER_FILE: the next
    daemon consumes the queue the first one left, and remembers its tokens.
    """

    def test_queue_handed_over(self) -> None:
        """
        SIGTERM leaves the queue and its binding; the next daemon (same port,
        exchange and file) takes the queue over, binding and all, before it
        accepts anyone, and the member, logged in again, receives its events.
        (Events published in between are consumed before anyone is back, and
        dropped: tests.integration.test_amqp_broker shows them waiting.)
        """
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        env = {
            "RABBITMQ_HANDOVER_FILE": str(directory / "queue.json"),
            "JWT_HANDOVER_FILE": str(directory / "tokens.json"),
            # What is left on the shared broker after the test goes soon.
            "RABBITMQ_QUEUE_EXPIRES": "5",
        }
        first = self.start_daemon(**env)
        uid = f"ID{uuid.uuid4().hex[:10].upper()}"
        token = make_token(uid=uid)
        ws = self.client()
        self.login(ws, uid, token)
        first.stop()
        self.assertEqual(self.close_code(ws), 1001)
        queue = queue_name_from_log(first.log_text())  # stopped: every line is written
        self.assertIn(f"left queue {queue} and its 1 member bindings to the next process", first.log_text())
        self.assertTrue((directory / "queue.json").exists())
        self.assertIn("1 remembered tokens left for the next process", first.log_text())

        second = DaemonProcess(env=env, port=first.port, exchange=first.exchange)
        self.addCleanup(second.cleanup)
        second.start()
        self.daemon = second
        second.wait_log(
            f"took over queue {queue} from the previous process",
            f"connected and consuming from {queue} (1 bindings)",
            "1 tokens the previous process verified are remembered",
        )
        self.assertFalse((directory / "queue.json").exists())
        ws = self.client()
        self.login(ws, uid, token)  # the same token: no signature check, the revocation check as always
        self.publish(uid, "order", {"id": "after"})
        self.assertEqual(self.recv(ws), {"order": {"id": "after"}})
