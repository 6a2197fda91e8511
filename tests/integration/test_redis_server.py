"""
L{peatio_ws.redis} and C{peatio-ws revoke} against the real Redis on
127.0.0.1:6379, and a Redis restart in the middle of a run (L{RestartTests},
on a redis-server of the test's own: the machine's is never stopped).

These tests fail when Redis is not running. Every key, jti and uid is
unique to the test and removed afterwards; every wait is bounded.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from peatio_ws.auth import Claims
from peatio_ws.config import RedisAddress, Settings
from peatio_ws.metrics import Metrics
from peatio_ws.redis import (
    REVOCATIONS_CHANNEL,
    RedisClient,
    RedisUnavailable,
    RevocationService,
    RevocationUnavailable,
    connect_client,
    revocation_message,
    revoked_key,
)
from peatio_ws.redis import service as redis_module
from peatio_ws.registry import Registry
from peatio_ws.testing import FakeConnection
from tests.support import redis_helpers as rh
from tests.support.servers import PrivateRedis, private_redis


def revocations(metrics: Metrics, by: str) -> float:
    return metrics.registry.get_sample_value("peatio_ws_revocations_total", {"by": by}) or 0.0


def redis_up(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("peatio_ws_redis_up")


class RedisTestCase(TestCase):
    """Checks Redis is there, and gives each test a client, a registry and metrics."""

    timeout = 90

    async def setUp(self) -> None:  # type: ignore[override]
        self.address = self.redis_address()
        self.metrics = Metrics()
        self.registry = Registry(self.metrics)
        self.events: list[dict[str, Any]] = []
        observer: Any = self.events.append
        self.patch(redis_module, "log", Logger(namespace="peatio_ws.redis", observer=observer))
        self.keys: list[str] = []
        self.client = await self.connect_client()

    def redis_address(self) -> RedisAddress:
        """The Redis the test uses: the machine's (checked to answer)."""
        rh.require_redis()
        return rh.ADDRESS

    async def connect_client(self, address: RedisAddress | None = None) -> RedisClient:
        client = await connect_client(address or self.address, timeout=5)
        self.addCleanup(client.close)
        return client

    def service(self, **changes: Any) -> RevocationService:
        """A started service; stopped (and checked to stop in time) at cleanup."""
        settings = dataclasses.replace(Settings(), **{"redis_url": self.address, **changes})
        service = RevocationService(settings, self.registry, self.metrics)
        service.startService()
        self.addCleanup(lambda: rh.bounded(service.stopService(), 10))
        return service

    async def revoke_key(self, jti: str, client: RedisClient | None = None) -> None:
        key = revoked_key(jti)
        self.keys.append(key)
        await (client or self.client).set(key, "1", 300)

    async def tearDown(self) -> None:  # type: ignore[override]
        if self.keys and rh.ping_sync():
            client = await connect_client(rh.ADDRESS, timeout=5)
            await client.delete(*self.keys)
            await client.close()

    def session(self, uid: str, jti: str) -> FakeConnection:
        conn = FakeConnection(rh.unique("conn"))
        self.registry.authenticate(conn, Claims(uid=uid, jti=jti, expires_at=None))
        return conn

    def logged(self, text: str) -> list[dict[str, Any]]:
        return [e for e in self.events if text in e.get("log_format", "")]


class RevocationServiceTests(RedisTestCase):
    """The service against a healthy Redis."""

    async def test_revoked_key(self) -> None:
        """A jti with a revoked key is revoked; others are not."""
        service = self.service()
        await rh.bounded(service.when_connected(), 10)
        self.assertTrue(service.up)
        self.assertEqual(redis_up(self.metrics), 1)
        jti = rh.unique("jti")
        self.assertIs(await service.is_revoked(jti), False)
        await self.revoke_key(jti)
        self.assertIs(await service.is_revoked(jti), True)

    async def test_live_revocation_by_jti(self) -> None:
        """A {"jti"} message ends the sessions of that token, and only those."""
        service = self.service()
        await rh.bounded(service.when_connected(), 10)
        uid, jti, other = rh.unique("uid"), rh.unique("jti"), rh.unique("jti")
        target, kept = self.session(uid, jti), self.session(uid, other)
        receivers = await self.client.publish(REVOCATIONS_CHANNEL, revocation_message(jti=jti))
        self.assertGreaterEqual(receivers, 1)
        await rh.wait_for(lambda: target.revoked, 5, "the session to be revoked")
        self.assertEqual(kept.revoked, 0)
        self.assertEqual(self.registry.jtis(), [other])
        self.assertEqual(revocations(self.metrics, "jti"), 1)

    async def test_live_revocation_by_uid(self) -> None:
        """A {"uid"} message ends every session of that member."""
        service = self.service()
        await rh.bounded(service.when_connected(), 10)
        uid, bystander = rh.unique("uid"), rh.unique("uid")
        a, b = self.session(uid, rh.unique("jti")), self.session(uid, rh.unique("jti"))
        c = self.session(bystander, rh.unique("jti"))
        await self.client.publish(REVOCATIONS_CHANNEL, revocation_message(uid=uid))
        await rh.wait_for(lambda: a.revoked and b.revoked, 5, "both sessions to be revoked")
        self.assertEqual(c.revoked, 0)
        self.assertEqual(self.registry.members(), [bystander])
        self.assertEqual(revocations(self.metrics, "uid"), 2)

    async def test_malformed_messages(self) -> None:
        """Garbage on the channel is ignored and the next message still works."""
        service = self.service()
        await rh.bounded(service.when_connected(), 10)
        jti = rh.unique("jti")
        conn = self.session(rh.unique("uid"), jti)
        for garbage in ("not json", "12345", '{"jti": ""}', '["x"]', "\u00ff\u00fe"):
            await self.client.publish(REVOCATIONS_CHANNEL, garbage)
        await self.client.publish(REVOCATIONS_CHANNEL, json.dumps({"jti": jti, "reason": "test"}))
        await rh.wait_for(lambda: conn.revoked, 5, "the session to be revoked")
        self.assertEqual(len(self.logged("Ignoring a message")), 5)
        self.assertTrue(service.up)

    async def test_recheck_on_connect(self) -> None:
        """A session whose token is revoked by key is ended once Redis is reached."""
        jti, fine = rh.unique("jti"), rh.unique("jti")
        await self.revoke_key(jti)
        revoked, kept = self.session(rh.unique("uid"), jti), self.session(rh.unique("uid"), fine)
        service = self.service()
        await rh.bounded(service.when_connected(), 10)
        await rh.wait_for(lambda: revoked.revoked, 5, "the re-check to revoke the session")
        self.assertEqual(kept.revoked, 0)
        self.assertEqual(await rh.bounded(service.recheck(), 5), 0)

    async def test_database(self) -> None:
        """The database number of REDIS_URL is used (SELECT)."""
        other_db = dataclasses.replace(rh.ADDRESS, db=9)
        client9 = await self.connect_client(other_db)
        jti = rh.unique("jti")
        await client9.set(revoked_key(jti), "1", 60)
        self.addCleanup(lambda: client9.delete(revoked_key(jti)))
        service9 = self.service(redis_url=other_db)
        await rh.bounded(service9.when_connected(), 10)
        self.assertIs(await service9.is_revoked(jti), True)
        self.assertEqual(await self.client.exists(revoked_key(jti)), 0)

    async def test_wrong_password(self) -> None:
        """A refused AUTH: down, logged once as an error, the policy answers at once."""
        with_password = dataclasses.replace(rh.ADDRESS, password="not-the-password")
        with self.assertRaises(RedisUnavailable) as caught:
            await connect_client(with_password, timeout=5)
        self.assertIn("could not auth", str(caught.exception))
        self.assertNotIn("not-the-password", str(caught.exception))
        allow = self.service(redis_url=with_password)
        deny = RevocationService(
            dataclasses.replace(Settings(), redis_url=with_password, redis_revocation_when_down="deny"),
            Registry(),
            Metrics(),
        )
        deny.startService()
        self.addCleanup(lambda: rh.bounded(deny.stopService(), 10))
        await rh.wait_for(lambda: self.logged("refused the connection"), 5, "the AUTH error to be logged")
        await rh.sleep(1.5)  # a few retries
        self.assertFalse(allow.up)
        self.assertEqual(redis_up(self.metrics), 0)
        self.assertIs(self.successResultOf(allow.is_revoked("x")), False)
        self.failureResultOf(deny.is_revoked("x"), RevocationUnavailable)
        errors = self.logged("refused the connection")
        self.assertEqual({e["log_level"].name for e in errors}, {"error"})
        self.assertEqual(len(errors), 2)  # once per service, not once per retry
        self.assertNotIn("not-the-password", repr(self.events))

    async def test_unreachable(self) -> None:
        """Nothing listening: down, one outage line however many retries, clean stop."""
        closed_port = dataclasses.replace(rh.ADDRESS, port=1)
        service = self.service(redis_url=closed_port)
        await rh.sleep(2.5)
        self.assertFalse(service.up)
        self.assertEqual(len(self.logged("is unavailable")), 1)
        self.assertIs(self.successResultOf(service.is_revoked("x")), False)


class RestartTests(RedisTestCase):
    """Redis stopped and started again under a running service: a redis-server of the test's own."""

    timeout = 120
    redis: PrivateRedis

    def redis_address(self) -> RedisAddress:
        self.redis = private_redis(self)
        return self.redis.address

    async def tearDown(self) -> None:  # type: ignore[override]
        """Nothing to delete: the private server and its keys go at cleanup."""

    async def test_restart(self) -> None:
        """
        The outage shows in up and the gauge; checks follow the policy at
        once; after Redis is back the service reconnects, subscribes again,
        re-checks the sessions made meanwhile, and revocation works again.
        """
        service = self.service()
        await rh.bounded(service.when_connected(), 10)
        uid, jti = rh.unique("uid"), rh.unique("jti")
        before = self.session(uid, jti)

        self.redis.stop()
        await rh.wait_for(lambda: not service.up, 10, "the service to notice the outage")
        self.assertEqual(redis_up(self.metrics), 0)
        self.assertIs(self.successResultOf(service.is_revoked(rh.unique("jti"))), False)
        # A token accepted unchecked during the outage...
        during_jti = rh.unique("jti")
        during = self.session(rh.unique("uid"), during_jti)
        await rh.sleep(1.5)  # a few failed reconnection attempts

        self.redis.start()
        # ...and revoked while the service was away.
        client = await self.connect_client()
        await self.revoke_key(during_jti, client)
        was_up = service.up
        await rh.bounded(service.when_connected(), 20)
        self.assertEqual(redis_up(self.metrics), 1)
        if not was_up:
            # The usual order: the key was there before the service came back.
            await rh.wait_for(lambda: during.revoked, 5, "the re-check to end the session")
        else:
            # Reconnected within the few milliseconds before the SET: the
            # automatic re-check could not see it; an explicit one must.
            self.assertEqual(await rh.bounded(service.recheck(), 5), 1)
        self.assertEqual(during.revoked, 1)
        self.assertEqual(before.revoked, 0)

        # Subscribed again: live revocation works.
        receivers = await client.publish(REVOCATIONS_CHANNEL, revocation_message(uid=uid))
        self.assertGreaterEqual(receivers, 1)
        await rh.wait_for(lambda: before.revoked, 5, "the live revocation after the restart")
        # And the key check works on the new connection.
        fresh = rh.unique("jti")
        await self.revoke_key(fresh, client)
        self.assertIs(await service.is_revoked(fresh), True)

        self.assertEqual(len(self.logged("is unavailable")), 1)
        self.assertEqual(len(self.logged("is back after")), 1, [e.get("log_format") for e in self.events])


class RevokeCommandTests(RedisTestCase):
    """C{peatio-ws revoke} as a child process, against the same Redis."""

    async def peatio_ws(self, *args: str, **env: str) -> tuple[str, str, int]:
        return await rh.run(sys.executable, "-m", "peatio_ws.cli", *args, env=rh.cli_env(**env))

    async def test_revoke_jti(self) -> None:
        """revoke --jti sets the key with its TTL and ends the live session now."""
        service = self.service()
        await rh.bounded(service.when_connected(), 10)
        jti = rh.unique("jti")
        self.keys.append(revoked_key(jti))
        conn = self.session(rh.unique("uid"), jti)
        out, err, code = await self.peatio_ws("revoke", "--jti", jti, "--ttl", "120")
        self.assertEqual(code, 0, err)
        self.assertEqual(await self.client.exists(revoked_key(jti)), 1)
        ttl = int(rh.cli("ttl", revoked_key(jti)))
        self.assertTrue(0 < ttl <= 120, ttl)
        self.assertIn(jti, out)
        self.assertIn("subscriber", out)
        await rh.wait_for(lambda: conn.revoked, 5, "the live session to end")
        self.assertIs(await service.is_revoked(jti), True)

    async def test_revoke_jti_without_ttl(self) -> None:
        """Without --ttl the key does not expire (and the output says so)."""
        jti = rh.unique("jti")
        self.keys.append(revoked_key(jti))
        out, err, code = await self.peatio_ws("revoke", "--jti", jti)
        self.assertEqual(code, 0, err)
        self.assertEqual(rh.cli("ttl", revoked_key(jti)), "-1")
        self.assertIn("no expiry", out)

    async def test_revoke_uid(self) -> None:
        """revoke --uid publishes and reports how many subscribers received it."""
        service = self.service()
        await rh.bounded(service.when_connected(), 10)
        uid = rh.unique("uid")
        conn = self.session(uid, rh.unique("jti"))
        out, err, code = await self.peatio_ws("revoke", "--uid", uid)
        self.assertEqual(code, 0, err)
        await rh.wait_for(lambda: conn.revoked, 5, "the live session to end")
        self.assertRegex(out, r"received by [1-9]\d* subscriber")

    async def test_unreachable(self) -> None:
        """Redis unreachable: exit 1 with one line on stderr, no traceback."""
        out, err, code = await self.peatio_ws("revoke", "--uid", "U1", REDIS_URL="redis://127.0.0.1:1/0")
        self.assertEqual(code, 1)
        self.assertEqual(out, "")
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("cannot connect to Redis at redis://127.0.0.1:1/0", err)
        self.assertNotIn("Traceback", err)

    async def test_bad_redis_url(self) -> None:
        """A malformed REDIS_URL is a one-line configuration error (exit 2)."""
        out, err, code = await self.peatio_ws("revoke", "--uid", "U1", REDIS_URL="http://nope")
        self.assertEqual((out, code), ("", 2))
        self.assertEqual(
            err.strip(),
            "peatio-ws: configuration error: REDIS_URL: must be a redis:// or rediss:// URL, got 'http://nope'",
        )
