"""
Redis stopped under two running daemons, one per REDIS_REVOCATION_WHEN_DOWN
policy (SPEC §5): authentication follows the policy while it is down, events
keep flowing, /health and /metrics show the outage, and everything recovers
when Redis returns (revocation through the channel included).

The Redis stopped is a redis-server of the test's own
(L{tests.support.servers.PrivateRedis}), the daemons' REDIS_URL; never the
machine's. The daemons use the machine's RabbitMQ, which is not faulted.
"""

from __future__ import annotations

import json
from functools import partial

from peatio_ws.redis import REVOCATIONS_CHANNEL
from peatio_ws.testing import make_token
from tests.support.cases import ChaosTestCase, new_uid
from tests.support.daemon import DaemonProcess
from tests.support.figures import record, scaled
from tests.support.oracle import AUTHENTICATED
from tests.support.reactor_client import WsClient
from tests.support.servers import private_redis
from tests.support.streams import SeqTracker, SteadyStream, at_least
from tests.support.waiting import until

AUTH_FAILED = {"error": {"message": "Authentication failed."}}


class RedisFaultTests(ChaosTestCase):
    async def test_redis_stopped(self) -> None:
        """
        Redis down: the allow daemon accepts new logins, the deny daemon
        refuses them (the connection stays open); live sessions keep
        receiving events on both; /health names redis; nothing crashes.
        Redis back: /health is 200, the refused connection logs in, and a
        revocation published on the channel ends sessions on both daemons.
        """
        redis = private_redis(self)
        daemons = {
            "allow": self.start_daemon(REDIS_URL=redis.url),
            "deny": self.start_daemon(REDIS_URL=redis.url, REDIS_REVOCATION_WHEN_DOWN="deny"),
        }
        members = {policy: new_uid() for policy in daemons}
        live: dict[str, WsClient] = {}
        streams: dict[str, SteadyStream] = {}
        seqs: dict[str, SeqTracker] = {}
        for policy, daemon in daemons.items():
            live[policy] = await self.client(daemon, members[policy])
            seqs[policy] = SeqTracker(live[policy])
            await self.until_metric(daemon, "peatio_ws_rabbitmq_bindings", lambda v: v == 1, 10, "the binding")
            streams[policy] = SteadyStream(await self.publisher(daemon), members[policy], per_tick=1, interval=0.02)
            self.addCleanup(streams[policy].stop)
            streams[policy].start()

        rounds = scaled(1, 3)
        logins = scaled(5, 50)
        figures: dict[str, int] = {"outages injected": rounds, "logins tried while down (per daemon)": 0}
        allowed = refused = 0
        refused_clients: list[WsClient] = []
        events_during = dict.fromkeys(daemons, 0)
        for _ in range(rounds):
            redis.stop()
            for policy, daemon in daemons.items():
                await until(partial(self.redis_down, daemon), 30, f"/health of the {policy} daemon to name redis")
                self.assertEqual(self.gauge(daemon, "peatio_ws_redis_up"), 0)
            before = {policy: len(seqs[policy]) for policy in daemons}
            for _ in range(logins):
                reply = await (await self.client(daemons["allow"])).login(make_token(uid=new_uid()))
                self.assertEqual(reply, AUTHENTICATED)
                allowed += 1
                client = await self.client(daemons["deny"])
                self.assertEqual(await client.login(make_token(uid=new_uid())), AUTH_FAILED)
                refused += 1
                refused_clients.append(client)
            # Live sessions still get their events while Redis is down.
            for policy in daemons:
                target = before[policy] + 20
                await live[policy].wait(partial(at_least, seqs[policy], target), 20, f"events on {policy}")
                events_during[policy] += len(seqs[policy]) - before[policy]
            figures["logins tried while down (per daemon)"] += logins
            redis.start()
            for policy, daemon in daemons.items():
                await until(partial(self.healthy, daemon), 30, f"the {policy} daemon to see Redis back")
                self.assertEqual(self.gauge(daemon, "peatio_ws_redis_up"), 1)

        # The connections refused during the outage are still open and can log in now.
        for client in refused_clients[-3:]:
            self.assertFalse(client.lost)
            client.send_text(json.dumps({"jwt": "Bearer " + make_token(uid=new_uid())}))
            self.assertEqual(await client.next_json(), AUTHENTICATED)
        # Subscribed again after the restart: a revocation ends the sessions it names.
        for policy in daemons:
            redis.cli("publish", REVOCATIONS_CHANNEL, json.dumps({"uid": members[policy]}))
        for policy in daemons:
            client = live[policy]
            await client.gone(15)
            self.assertIn(AUTH_FAILED, client.json_messages()[-3:])
            self.assertEqual(client.close_code, 4003)

        unavailable = self.gauge(
            daemons["deny"], "peatio_ws_authentications_total", result="failure", reason="revocation_unavailable"
        )
        record(
            "redis: stopped and started under two daemons (allow / deny)",
            {
                **figures,
                "allow: logins accepted while down": allowed,
                "deny: logins refused while down": refused,
                "deny: revocation_unavailable counted": int(unavailable),
                "events delivered to live sessions while down": sum(events_during.values()),
                "revocations after recovery (sessions ended)": 2,
            },
        )
        self.assertEqual(allowed, rounds * logins)
        self.assertEqual(refused, rounds * logins)
        self.assertEqual(unavailable, rounds * logins)
        for daemon in daemons.values():
            self.assert_alive(daemon)
            daemon.wait_log("is back after")

    def healthy(self, daemon: DaemonProcess) -> bool:
        return daemon.health()[0] == 200

    def redis_down(self, daemon: DaemonProcess) -> bool:
        status, body = daemon.health()
        return status == 503 and isinstance(body, dict) and body.get("down") == ["redis"]
