"""
C{peatio-ws publish} as a child process against the real RabbitMQ on localhost.
"""


from __future__ import annotations

import json
import os
import sys
import uuid

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from peatio_ws.config import Settings
from tests.support.paths import REPO

ORDER_FIELDS = {
    "id", "side", "ord_type", "price", "avg_price", "state", "market", "created_at",
    "origin_volume", "remaining_volume", "executed_volume", "trades_count",
}  # fmt: skip
TRADE_FIELDS = {"id", "price", "amount", "total", "market", "side", "created_at", "order_id"}


class PublishToRabbitMQTests(TestCase):
    """
    publish as a child process against the real RabbitMQ on localhost (which
    must be running), read back by a consumer bound like the daemon's.
    """

    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        from txamqp.endpoint import AMQEndpoint
        from txamqp.factory import AMQFactory

        from peatio_ws.amqp import _txamqp as _txamqp_compat

        _txamqp_compat.install()  # bodies as bytes, whatever they hold
        settings = Settings()
        self.exchange = f"peatio-ws-test.{uuid.uuid4().hex}"
        self.uid = f"ID{uuid.uuid4().hex[:10].upper()}"
        endpoint = AMQEndpoint(reactor, "localhost", 5672, username="guest", password="guest", vhost="/", timeout=5)
        try:
            self.client = await endpoint.connect(AMQFactory(spec=settings.amqp_spec)).addTimeout(10, reactor)
        except Exception as e:
            raise AssertionError(f"RabbitMQ is not reachable on localhost:5672 ({e}); this test needs it") from None
        self.addCleanup(self.disconnect)
        self.channel = await self.client.channel(1)
        await self.channel.channel_open()
        await self.channel.exchange_declare(exchange=self.exchange, type="topic", durable=False)
        declared = await self.channel.queue_declare(exclusive=True, auto_delete=True)
        self.queue = declared.queue
        await self.channel.queue_bind(queue=self.queue, exchange=self.exchange, routing_key=f"private.{self.uid}.*")

    async def disconnect(self) -> None:
        await self.channel.exchange_delete(exchange=self.exchange)
        await self.channel.channel_close()
        channel0 = await self.client.channel(0)
        await channel0.connection_close().addTimeout(5, reactor)
        gone = self.client.disconnected.wait()
        self.client.transport.loseConnection()
        await gone.addTimeout(5, reactor)

    async def publish(self, *args: str) -> tuple[str, str, int]:
        env = {**os.environ, "PYTHONPATH": str(REPO), "RABBITMQ_EVENTS_EXCHANGE": self.exchange}
        argv = ["-m", "peatio_ws.cli", "publish", "--uid", self.uid, *args]
        d = getProcessOutputAndValue(sys.executable, argv, env=env)
        out, err, code = await d.addTimeout(30, reactor)
        return out.decode(), err.decode(), code

    async def fetch(self, count: int) -> list[tuple[str, bytes]]:
        """count messages from the queue: (routing key, body)."""
        got: list[tuple[str, bytes]] = []
        for _ in range(100):
            reply = await self.channel.basic_get(queue=self.queue, no_ack=True)
            if reply.method.name == "get-ok":
                got.append((reply.routing_key, reply.content.body))
                if len(got) == count:
                    return got
            else:
                await deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"only {len(got)} of {count} messages arrived")

    async def test_samples(self) -> None:
        """--count sample orders, then a sample trade, arrive with Peatio's routing keys and fields."""
        out, err, code = await self.publish("--count", "3")
        self.assertEqual(code, 0, err)
        self.assertIn(f"private.{self.uid}.order", out)
        _, err, code = await self.publish("--event", "trade")
        self.assertEqual(code, 0, err)
        messages = await self.fetch(4)
        keys = [f"private.{self.uid}.order"] * 3 + [f"private.{self.uid}.trade"]
        self.assertEqual([key for key, _ in messages], keys)
        orders = [json.loads(body) for _, body in messages[:3]]
        for order in orders:
            self.assertEqual(set(order), ORDER_FIELDS)
        self.assertEqual(len({order["id"] for order in orders}), 3)
        self.assertEqual(set(json.loads(messages[3][1])), TRADE_FIELDS)

    async def test_given_json(self) -> None:
        """--json is sent byte for byte, as UTF-8 (non-ASCII included)."""
        payload = '{"currency": "btc", "note": "é ü 日本", "balance": "1.5"}'
        _, err, code = await self.publish("--event", "balance", "--json", payload)
        self.assertEqual(code, 0, err)
        [(key, body)] = await self.fetch(1)
        self.assertEqual(key, f"private.{self.uid}.balance")
        self.assertIsInstance(body, bytes)
        self.assertEqual(body, payload.encode("utf-8"))

    async def test_unreachable(self) -> None:
        """RabbitMQ unreachable: exit 1, one line, no traceback."""
        env = {**os.environ, "PYTHONPATH": str(REPO), "RABBITMQ_PORT": "1"}
        d = getProcessOutputAndValue(sys.executable, ["-m", "peatio_ws.cli", "publish", "--uid", "U"], env=env)
        out, err, code = await d.addTimeout(30, reactor)
        self.assertEqual((out, code), (b"", 1))
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn(b"could not connect", err)
