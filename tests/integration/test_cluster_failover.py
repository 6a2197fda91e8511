"""
SPEC §8 on a real RabbitMQ cluster, the short version ``make test`` runs
(``make chaos`` runs the long one: L{tests.chaos.test_chaos_cluster}).

A private three-node cluster (L{tests.support.servers.PrivateRabbitCluster},
one for the class's one test: a cluster start takes tens of seconds); the
daemon consumes its quorum queue (RABBITMQ_QUEUE_TYPE=quorum) from node A,
RABBITMQ_HOST listing all three nodes, A first; three members receive a
steady stream of numbered events that a confirming publisher sends through
node C. Node A is SIGKILLed: the daemon fails over to B, finds its queue
intact there, and nothing accepted is lost; no one is told (1012), since
nothing could be lost; duplicates (what was in flight) are allowed and
counted.
"""

from __future__ import annotations

from tests.support.cases import ClusterFailoverCase
from tests.support.figures import record
from tests.support.servers import private_rabbit_cluster


class ClusterFailoverTests(ClusterFailoverCase):
    """A node of the cluster killed under the daemon: failover, nothing lost, no one told."""

    timeout = 600

    async def test_node_killed_nothing_lost(self) -> None:
        cluster = await private_rabbit_cluster(self)
        a, b, _ = cluster.nodes
        await self.start_stream(cluster, members=3, publish_via=2)
        self.assertIs(await self.daemon_node(), a)
        info = await self.queue_info()
        self.assertEqual((info["type"], info["durable"]), ("quorum", True))
        self.assertEqual(sorted(info["members"]), cluster.names)
        leader = info["leader"]
        await self.more_events(100, "before the kill")

        killed, back = await self.fail_over(b)
        self.assertIs(killed, a)
        await self.more_events(100, "after the failover")
        figures = await self.finish()
        after = await self.queue_info()
        record(
            "cluster: the daemon's node killed, quorum queue (short version)",
            {
                "nodes killed": 1,
                "members": len(self.members),
                **figures.figures(),
                **self.per_member(figures),
                "queue leader before / after": f"{leader} / {after['leader']}",
                "seconds until the daemon consumed again": round(back, 2),
                "daemon found its queue gone": int(self.gauge(self.daemon, "peatio_ws_rabbitmq_queue_lost_total")),
                "cluster start (s)": round(cluster.start_seconds or 0, 1),
            },
        )
        self.assert_no_silent_gap(figures, self.members, told=0)
        self.assertEqual(figures.lost, 0)
        self.assertTrue(figures.in_order)
        self.assertEqual([m.reconnects for m in self.members], [0] * len(self.members))
        self.assertNotEqual(after["leader"], a.node)
        self.assertEqual(self.gauge(self.daemon, "peatio_ws_rabbitmq_queue_lost_total"), 0)
        self.assertEqual(self.gauge(self.daemon, "peatio_ws_closes_total", reason="1012"), 0)
        self.assert_alive(self.daemon)
