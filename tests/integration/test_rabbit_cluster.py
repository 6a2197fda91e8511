"""
A RabbitMQ cluster of the test's own (L{PrivateRabbitCluster}: three
nodes on this machine, joined with C{rabbitmqctl join_cluster}), and what
SPEC §8 counts on from it: a quorum queue keeps its messages when the node
it was declared on (its leader) is killed, they are consumed from another
node, and a consumer on a surviving node keeps receiving across the
leader's loss. Publishing goes through the project's own publisher
(L{peatio_ws.amqp.Publisher}, in confirm mode); declaring and consuming
through its txAMQP client.

One cluster, started once, for the one test: a cluster start takes tens of
seconds (the test's log says how long: boot, join, restart of a node).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python import log
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.support.publisher import Publisher
from tests.support.servers import PrivateRabbit, PrivateRabbitCluster, private_rabbit_cluster
from tests.support.waiting import until, within

#: Persistent messages published to the queue whose leader is killed.
KEPT = 200


class _Consumer:
    """
    A consumer of one queue on its own channel of a L{Publisher}'s
    connection (txAMQP), acking each message as it comes; records the
    bodies, the redelivered flags, and how its delivery queue ended.
    """

    def __init__(self, publisher: Publisher, queue: str, tag: str) -> None:
        self.publisher = publisher
        self.queue = queue
        self.tag = tag
        self.bodies: list[bytes] = []
        self.redelivered = 0
        #: Why the delivery queue ended (the channel or connection closed); None while it runs.
        self.ended: Failure | None = None
        self.channel: Any = None
        self._deliveries: Any = None

    async def start(self) -> _Consumer:
        client = self.publisher.client
        self.channel = await client.channel(max(client.channels) + 1)
        await within(self.channel.channel_open(), 10, "channel.open")
        await within(self.channel.basic_qos(prefetch_count=100), 10, "basic.qos")
        reply = await within(
            self.channel.basic_consume(queue=self.queue.encode(), consumer_tag=self.tag.encode()),
            10,
            f"basic.consume of {self.queue}",
        )
        self._deliveries = await client.queue(reply.consumer_tag)
        self._next()
        return self

    def _next(self) -> None:
        self._deliveries.get().addCallbacks(self._got, self._end)

    def _got(self, msg: Any) -> None:
        self.bodies.append(bytes(msg.content.body))
        self.redelivered += bool(msg.redelivered)
        self.channel.basic_ack(delivery_tag=msg.delivery_tag).addErrback(self._end)
        self._next()

    def _end(self, failure: Failure) -> None:
        if self.ended is None:
            self.ended = failure

    @property
    def alive(self) -> bool:
        """Its channel and connection are open, and the broker has not ended its deliveries."""
        return self.ended is None and not self.channel.closed and not self.publisher.closed


class RabbitClusterTests(TestCase):
    """One private three-node cluster, its quorum queues, and a node killed under them."""

    timeout = 600

    cluster: PrivateRabbitCluster

    async def connect(self, node: PrivateRabbit) -> Publisher:
        """The project's publisher (confirm mode) on C{node}; closed (or dropped, if the node is gone) afterwards."""
        publisher = await Publisher.connect(node.settings, confirm=True, seconds=30)
        self.addCleanup(lambda: Deferred.fromCoroutine(publisher.close(force=True)))
        return publisher

    async def declare_quorum(self, publisher: Publisher, queue: str) -> None:
        await within(
            publisher.channel.queue_declare(queue=queue.encode(), durable=True, arguments={"x-queue-type": "quorum"}),
            30,
            f"the declaration of the quorum queue {queue}",
        )

    async def queue_info(self, queue: str) -> dict[str, Any]:
        """C{rabbitmqctl list_queues} of C{queue}: type, leader, members, online, messages."""
        out = await self.cluster.ctl(
            "list_queues", "name", "type", "durable", "leader", "members", "online", "messages",
            "--formatter", "json",
        )  # fmt: skip
        for info in json.loads(out):
            if info["name"] == queue:
                return dict(info)
        raise AssertionError(f"queue {queue!r} not listed by the cluster:\n{out}")

    async def test_quorum_queue_survives_its_leader_kill(self) -> None:
        """
        The cluster forms (every node sees the three running); a durable
        quorum queue declared on node A, led by A, keeps every confirmed
        message when A's VM is SIGKILLed, and they are consumed, in order,
        from node B; a consumer connected to B of another quorum queue led
        by A is neither cancelled nor closed, and goes on receiving; A
        started again rejoins as the same node.
        """
        self.cluster = cluster = await private_rabbit_cluster(self)
        a, b, _ = cluster.nodes
        log.msg(
            f"private RabbitMQ cluster started in {cluster.start_seconds:.1f} s "
            f"(boot of the 3 nodes together {cluster.phase_seconds['boot']:.1f} s, "
            f"joins {cluster.phase_seconds['join']:.1f} s; each node's boot "
            f"{', '.join(f'{n.start_seconds[0]:.1f}' for n in cluster.nodes)} s); RABBITMQ_HOST={cluster.hosts}"
        )

        # The cluster formed: each node sees all three running.
        self.assertEqual(await cluster.views(), {name: sorted(cluster.names) for name in cluster.names})

        kept = f"peatio-ws-test.kept.{uuid.uuid4().hex}"
        live = f"peatio-ws-test.live.{uuid.uuid4().hex}"
        on_a = await self.connect(a)
        await self.declare_quorum(on_a, kept)
        await self.declare_quorum(on_a, live)
        for queue in (kept, live):
            info = await self.queue_info(queue)
            self.assertEqual((info["type"], info["durable"], info["leader"]), ("quorum", True, a.node), info)
            self.assertEqual(sorted(info["members"]), sorted(cluster.names), info)

        # A consumer on B of a queue led by A: it receives what is published on A.
        on_b = await self.connect(b)
        consumer = await _Consumer(on_b, live, "live-on-b").start()
        before = [f"before {i}".encode() for i in range(5)]
        for body in before:
            on_a.publish("", live, body)
        kept_bodies = [json.dumps({"seq": i}).encode() for i in range(KEPT)]
        for body in kept_bodies:
            on_a.publish("", kept, body, properties={"delivery-mode": 2})
        # The broker confirms in order: the last confirm covers them all.
        await within(on_a.publish("", kept, b"last", properties={"delivery-mode": 2}), 30, "the confirms")
        kept_bodies.append(b"last")
        await until(lambda: len(consumer.bodies) == len(before), 30, "the consumer on B to receive 5 messages")

        # SIGKILL A's VM: the leader of both queues.
        killed = time.monotonic()
        a.kill()
        self.assertFalse(a.running)

        async def led_elsewhere() -> bool:
            try:
                leaders = {(await self.queue_info(q))["leader"] for q in (kept, live)}
            except AssertionError:
                return False
            return a.node not in leaders and "" not in leaders

        await until(led_elsewhere, 90, f"both quorum queues to elect a leader other than {a.node}", interval=0.3)
        elected = time.monotonic() - killed
        info = await self.queue_info(kept)
        self.assertNotIn(a.node, info["online"], info)
        # (Its "messages" count is not asserted: a new leader reports 0 until its next tick.)

        # The consumer on B went on: nothing cancelled or closed, and it receives what B is sent now.
        after = [f"after {i}".encode() for i in range(5)]
        for body in after:
            on_b.publish("", live, body)
        await within(on_b.publish("", live, b"after last"), 30, "the confirms on B")
        after.append(b"after last")
        await until(
            lambda: len(consumer.bodies) >= len(before + after) or not consumer.alive,
            30,
            "the consumer on B to receive the messages published after the kill",
        )
        self.assertTrue(consumer.alive, f"the consumer on B ended: {consumer.ended}")
        self.assertEqual(consumer.bodies, before + after)
        self.assertEqual(consumer.redelivered, 0)

        # Every confirmed message of the queue led by A, consumed from B, in order.
        drained = await _Consumer(on_b, kept, "kept-on-b").start()
        await until(
            lambda: len(drained.bodies) >= len(kept_bodies) or not drained.alive,
            60,
            f"{len(kept_bodies)} messages of {kept} from B",
        )
        self.assertEqual(drained.bodies, kept_bodies)

        # A again, on its data: it rejoins as the same node.
        restarted = time.monotonic()
        await a.start()
        await cluster.await_running()
        rejoined = time.monotonic() - restarted
        self.assertEqual(await cluster.views(), {name: sorted(cluster.names) for name in cluster.names})
        info = await self.queue_info(kept)
        self.assertEqual(sorted(info["members"]), sorted(cluster.names), info)
        log.msg(
            f"quorum queues re-led {elected:.1f} s after the kill of {a.node}; "
            f"it restarted and rejoined in {rejoined:.1f} s"
        )
