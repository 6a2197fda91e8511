"""
Unit tests for L{peatio_ws.redis.service}: the outage policy, state and
logging, re-subscription, the health probe and the re-check after a
reconnect.

No sockets and no real time: connections are fakes handed to the service's
connection hooks, and time is a L{task.Clock}. The wiring into txredisapi is
in L{tests.unit.test_redis_txredisapi}, the message format in
L{tests.unit.test_redis_keys}.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.auth import Claims
from peatio_ws.config import RedisAddress, Settings
from peatio_ws.metrics import Metrics
from peatio_ws.redis import (
    REVOCATIONS_CHANNEL,
    RevocationService,
    RevocationUnavailable,
    revoked_key,
)
from peatio_ws.redis import service as redis_module
from peatio_ws.redis.service import COMMAND_TIMEOUT, PING_INTERVAL, PING_TIMEOUT, RECHECK_BATCH, RECHECK_RETRY
from peatio_ws.registry import Registry
from peatio_ws.testing import FakeConnection


class FakeLink:
    """A Redis connection: answers EXISTS from a set of keys, or hangs."""

    def __init__(self, revoked: set[str] | None = None) -> None:
        self.revoked = revoked if revoked is not None else set()
        self.hang = False
        self.error: Exception | None = None
        self.exists_calls: list[tuple[str, ...]] = []
        self.pings: list[Deferred[object]] = []
        self.subscriptions: list[str] = []
        self.subscribe_result: Deferred[object] | None = None
        self.aborted = False
        #: The answer to the next EXISTS only, fired by the test.
        self.hold: Deferred[int] | None = None

    def exists(self, *keys: str) -> Deferred[int]:
        self.exists_calls.append(keys)
        if self.hold is not None:
            held, self.hold = self.hold, None
            return held
        if self.hang:
            return Deferred()
        if self.error is not None:
            return fail(self.error)
        return succeed(sum(1 for key in keys if key in self.revoked))

    def ping(self) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        self.pings.append(d)
        return d

    def subscribe(self, channel: str) -> Deferred[object]:
        self.subscriptions.append(channel)
        if self.subscribe_result is not None:
            return self.subscribe_result
        return succeed(["subscribe", channel, 1])

    def abort(self) -> None:
        self.aborted = True


class OfflineRevocationService(RevocationService):
    """The service with its sockets left out: tests drive the connection hooks."""

    def _connect(self) -> None:
        pass

    async def _disconnect(self) -> None:
        pass


def revocation_count(metrics: Metrics, by: str) -> float:
    value = metrics.registry.get_sample_value("peatio_ws_revocations_total", {"by": by})
    return value or 0.0


def redis_up(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("peatio_ws_redis_up")


class Harness:
    """A started offline service with a registry, metrics, a clock and a log."""

    def __init__(self, case: SynchronousTestCase, policy: str = "allow") -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.registry = Registry(self.metrics)
        self.settings = dataclasses.replace(Settings(), redis_revocation_when_down=policy)
        self.events: list[dict[str, Any]] = []
        observer: Any = self.events.append
        case.patch(redis_module, "log", Logger(namespace="peatio_ws.redis", observer=observer))
        self.service = OfflineRevocationService(self.settings, self.registry, self.metrics, self.clock)
        self.service.startService()
        case.addCleanup(self.stop)

    def stop(self) -> None:
        if self.service.running:
            self.service.stopService()

    def connect(self, cmd: FakeLink | None = None, sub: FakeLink | None = None) -> tuple[FakeLink, FakeLink]:
        cmd = cmd or FakeLink()
        sub = sub or FakeLink()
        self.service._command_ready(cmd)
        self.service._subscriber_ready(sub)
        return cmd, sub

    def session(self, conn_id: str, uid: str, jti: str) -> FakeConnection:
        conn = FakeConnection(conn_id)
        self.registry.authenticate(conn, Claims(uid=uid, jti=jti, expires_at=None))
        return conn

    def logged(self, text: str, level: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if text in e.get("log_format", "") and (level is None or e["log_level"].name == level)
        ]


class PolicyTests(SynchronousTestCase):
    """is_revoked while connected, and when Redis cannot answer."""

    def test_revoked_and_not(self) -> None:
        """Connected: the answer is whether the key exists."""
        h = Harness(self)
        cmd, _ = h.connect(FakeLink({revoked_key("bad")}))
        self.assertIs(self.successResultOf(h.service.is_revoked("bad")), True)
        self.assertIs(self.successResultOf(h.service.is_revoked("good")), False)
        self.assertEqual(cmd.exists_calls[-1], (revoked_key("good"),))

    def test_down_allow_answers_at_once(self) -> None:
        """Down, allow: False at once, without touching Redis or waiting."""
        h = Harness(self, "allow")
        self.assertIs(self.successResultOf(h.service.is_revoked("any")), False)

    def test_down_deny_fails_at_once(self) -> None:
        """Down, deny: RevocationUnavailable at once."""
        h = Harness(self, "deny")
        self.failureResultOf(h.service.is_revoked("any"), RevocationUnavailable)

    def test_command_connection_enough(self) -> None:
        """The check only needs the command connection, not the subscriber."""
        h = Harness(self, "deny")
        h.service._command_ready(FakeLink({revoked_key("x")}))
        self.assertFalse(h.service.up)
        self.assertIs(self.successResultOf(h.service.is_revoked("x")), True)

    def test_timeout_allow(self) -> None:
        """A check that takes too long answers False after the bound, and is re-checked later."""
        h = Harness(self, "allow")
        cmd, _ = h.connect()
        h.clock.advance(0)
        cmd.hang = True
        d = h.service.is_revoked("slow")
        h.clock.advance(COMMAND_TIMEOUT - 0.01)
        self.assertNoResult(d)
        h.clock.advance(0.02)
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(len(h.logged("could not answer", "warn")), 1)
        # The session accepted unchecked is looked at again soon.
        cmd.hang = False
        conn = h.session("c1", "U1", "slow")
        cmd.revoked.add(revoked_key("slow"))
        h.clock.advance(RECHECK_RETRY)
        self.assertEqual(conn.revoked, 1)
        self.successResultOf(h.service.is_revoked("other"))
        self.assertEqual(len(h.logged("answers revocation checks again", "info")), 1)

    def test_timeout_deny(self) -> None:
        """A check that takes too long fails with RevocationUnavailable under deny."""
        h = Harness(self, "deny")
        cmd, _ = h.connect()
        cmd.hang = True
        d = h.service.is_revoked("slow")
        h.clock.advance(COMMAND_TIMEOUT)
        self.failureResultOf(d, RevocationUnavailable)

    def test_error_follows_policy(self) -> None:
        """A Redis error reply (LOADING, NOAUTH, ...) is treated like an outage."""
        for policy in ("allow", "deny"):
            h = Harness(self, policy)
            cmd, _ = h.connect()
            cmd.error = RuntimeError("LOADING Redis is loading the dataset in memory")
            d = h.service.is_revoked("x")
            if policy == "allow":
                self.assertIs(self.successResultOf(d), False)
            else:
                failure = self.failureResultOf(d, RevocationUnavailable)
                self.assertIn("LOADING", failure.getErrorMessage())

    def test_checks_asked_meanwhile_go_together(self) -> None:
        """
        The first check goes at once; those asked while it is out go in one
        EXISTS when it answers, and only if that counts something, one per
        key to learn which: each answered as if alone.
        """
        h = Harness(self)
        cmd, _ = h.connect(FakeLink({revoked_key("bad")}))
        pending: Deferred[int] = Deferred()
        cmd.hold = pending
        first = h.service.is_revoked("first")
        self.assertEqual(cmd.exists_calls, [(revoked_key("first"),)])
        later = [h.service.is_revoked(jti) for jti in ("a", "bad", "c")]
        self.assertEqual(len(cmd.exists_calls), 1)
        pending.callback(0)
        self.assertIs(self.successResultOf(first), False)
        self.assertEqual([self.successResultOf(d) for d in later], [False, True, False])
        keys = (revoked_key("a"), revoked_key("bad"), revoked_key("c"))
        self.assertEqual(cmd.exists_calls[1:], [keys, *[(key,) for key in keys]])
        # None revoked: one EXISTS for the lot.
        pending2: Deferred[int] = Deferred()
        cmd.hold = pending2
        h.service.is_revoked("d")
        rest = [h.service.is_revoked(jti) for jti in ("e", "f")]
        calls = len(cmd.exists_calls)
        pending2.callback(0)
        self.assertEqual([self.successResultOf(d) for d in rest], [False, False])
        self.assertEqual(cmd.exists_calls[calls:], [(revoked_key("e"), revoked_key("f"))])

    def test_batch_failure_follows_policy_for_each(self) -> None:
        """Checks waiting behind one that fails: each follows the outage policy; one cancelled is left alone."""
        h = Harness(self, "deny")
        cmd, _ = h.connect()
        pending: Deferred[int] = Deferred()
        cmd.hold = pending
        first = h.service.is_revoked("x")
        waiting = [h.service.is_revoked(jti) for jti in ("y", "z")]
        waiting[0].cancel()
        self.failureResultOf(waiting[0])
        cmd.error = RuntimeError("LOADING")
        pending.errback(RuntimeError("LOADING"))
        self.failureResultOf(first, RevocationUnavailable)
        self.failureResultOf(waiting[1], RevocationUnavailable)

    def test_lost_while_checking(self) -> None:
        """A check in flight when the connection drops follows the policy."""
        h = Harness(self, "deny")
        cmd, _ = h.connect()
        pending: Deferred[int] = Deferred()
        cmd.exists = lambda *keys: pending  # type: ignore[method-assign]
        d = h.service.is_revoked("x")
        h.service._command_lost(cmd)
        pending.errback(ConnectionError("Lost connection"))
        self.failureResultOf(d, RevocationUnavailable)
        self.failureResultOf(h.service.is_revoked("y"), RevocationUnavailable)


class StateTests(SynchronousTestCase):
    """up, the gauge, logging, subscription and re-subscription."""

    def test_up_needs_both(self) -> None:
        """Up only once the command connection is ready and the channel is subscribed."""
        h = Harness(self)
        self.assertFalse(h.service.up)
        self.assertEqual(redis_up(h.metrics), 0)
        waiting = h.service.when_connected()
        cmd = FakeLink()
        h.service._command_ready(cmd)
        self.assertFalse(h.service.up)
        sub = FakeLink()
        sub.subscribe_result = Deferred()
        h.service._subscriber_ready(sub)
        self.assertEqual(sub.subscriptions, [REVOCATIONS_CHANNEL])
        self.assertFalse(h.service.up)
        self.assertNoResult(waiting)
        sub.subscribe_result.callback(["subscribe", REVOCATIONS_CHANNEL, 1])
        self.assertTrue(h.service.up)
        self.assertEqual(redis_up(h.metrics), 1)
        self.successResultOf(waiting)
        self.successResultOf(h.service.when_connected())
        self.assertEqual(len(h.logged("Connected to Redis")), 1)

    def test_outage_logged_once(self) -> None:
        """An outage is logged once however many retries fail, and the recovery once."""
        h = Harness(self)
        cmd, sub = h.connect()
        h.service._subscriber_lost(sub)
        self.assertFalse(h.service.up)
        self.assertEqual(redis_up(h.metrics), 0)
        h.service._command_lost(cmd)
        for _ in range(5):
            h.service._note_outage("Connection refused")
        warnings = h.logged("is unavailable", "warn")
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["reason"], "the subscriber connection was lost")
        self.assertIn("REDIS_REVOCATION_WHEN_DOWN=allow", warnings[0]["policy"])
        h.clock.advance(7)
        h.connect()
        self.assertTrue(h.service.up)
        back = h.logged("is back after", "info")
        self.assertEqual(len(back), 1)
        self.assertEqual(back[0]["seconds"], 7)
        # A second outage is logged again.
        h.service._command_lost(h.service._cmd)  # type: ignore[arg-type]
        self.assertEqual(len(h.logged("is unavailable", "warn")), 2)

    def test_never_connected(self) -> None:
        """A failure before the first connection starts the (single) outage log."""
        h = Harness(self, "deny")
        for _ in range(3):
            h.service._connect_failed(Failure(ConnectionRefusedError("Connection refused")))
        warnings = h.logged("is unavailable", "warn")
        self.assertEqual(len(warnings), 1)
        self.assertIn("Connection refused", warnings[0]["reason"])
        self.assertIn("deny", warnings[0]["policy"])

    def test_auth_error_logged_once(self) -> None:
        """A refused AUTH is an error line, once per distinct message."""
        h = Harness(self)
        for _ in range(3):
            h.service._redis_error("Redis error: could not auth: WRONGPASS invalid username-password pair")
        errors = h.logged("refused the connection", "error")
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["error"], "could not auth: WRONGPASS invalid username-password pair")
        self.assertEqual(len(h.logged("is unavailable", "warn")), 1)

    def test_password_not_logged(self) -> None:
        """The address in logs never carries the password."""
        h = Harness(self)
        h.service._address = RedisAddress("redis.internal", 6380, 3, "s3cret", True)
        h.service._note_outage("x")
        self.assertEqual(h.logged("is unavailable")[0]["address"], "rediss://redis.internal:6380/3")
        self.assertNotIn("s3cret", repr(h.events))

    def test_resubscribes_after_reconnect(self) -> None:
        """Every new subscriber connection subscribes again."""
        h = Harness(self)
        _, sub = h.connect()
        h.service._subscriber_lost(sub)
        self.assertFalse(h.service.up)
        again = FakeLink()
        h.service._subscriber_ready(again)
        self.assertEqual(again.subscriptions, [REVOCATIONS_CHANNEL])
        self.assertTrue(h.service.up)

    def test_subscribe_failure_reconnects(self) -> None:
        """SUBSCRIBE failing or hanging drops the connection so it is made again."""
        h = Harness(self)
        h.service._command_ready(FakeLink())
        failing = FakeLink()
        failing.subscribe_result = fail(RuntimeError("NOPERM"))
        h.service._subscriber_ready(failing)
        self.assertTrue(failing.aborted)
        hanging = FakeLink()
        hanging.subscribe_result = Deferred()
        h.service._subscriber_ready(hanging)
        self.assertFalse(hanging.aborted)
        h.clock.advance(PING_TIMEOUT)
        self.assertTrue(hanging.aborted)
        self.assertFalse(h.service.up)

    def test_stale_events_ignored(self) -> None:
        """A lost event for a connection already replaced changes nothing."""
        h = Harness(self)
        h.connect()
        h.service._command_lost(FakeLink())
        h.service._subscriber_lost(FakeLink())
        self.assertTrue(h.service.up)

    def test_ping(self) -> None:
        """A connection that does not answer PING is dropped; one that does is kept."""
        h = Harness(self)
        cmd, sub = h.connect()
        h.clock.advance(PING_INTERVAL)
        self.assertEqual(len(sub.pings), 1)
        # The command connection also carries the health probes (ProbeTests).
        for ping in cmd.pings:
            ping.callback("PONG")
        h.clock.advance(PING_TIMEOUT)
        self.assertFalse(cmd.aborted)
        self.assertTrue(sub.aborted)

    def test_stop(self) -> None:
        """Stopping cancels waiters and pending work, reports down, logs no outage."""
        h = Harness(self)
        waiting = h.service.when_connected()
        h.service._command_ready(FakeLink())
        self.successResultOf(h.service.stopService())
        self.failureResultOf(waiting, CancelledError)
        self.assertFalse(h.service.up)
        self.assertEqual(redis_up(h.metrics), 0)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(h.logged("is unavailable"), [])
        self.assertIs(self.successResultOf(h.service.is_revoked("x")), False)

    def test_stop_when_up(self) -> None:
        """Stopping a connected service leaves no timers and reports down."""
        h = Harness(self)
        h.connect()
        self.assertTrue(h.service.up)
        self.successResultOf(h.service.stopService())
        self.assertFalse(h.service.up)
        self.assertEqual(redis_up(h.metrics), 0)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(h.logged("is unavailable"), [])

    def test_cancel_waiter(self) -> None:
        """A cancelled when_connected is forgotten."""
        h = Harness(self)
        waiting = h.service.when_connected()
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        h.connect()
        self.assertEqual(h.service._ready_waiters, [])


class ProbeTests(SynchronousTestCase):
    """
    The health probe: one PING at a time on the command connection every
    HEALTH_PROBE_INTERVAL; unanswered for HEALTH_PROBE_TIMEOUT means down
    ("stalled"), and the answer means up again.
    """

    def setUp(self) -> None:
        self.h = Harness(self, "deny")
        self.interval = self.h.settings.health_probe_interval
        self.timeout = self.h.settings.health_probe_timeout
        self.cmd, self.sub = self.h.connect()
        self.assertLess(self.interval + self.timeout, PING_INTERVAL)  # the other PINGs stay out of the way

    def stall(self) -> None:
        """Let the first probe go unanswered for the whole timeout."""
        # Two steps: Clock.advance moves time first, then runs what is due.
        self.h.clock.advance(self.interval)
        self.h.clock.advance(self.timeout)

    def test_outstanding_within_timeout_is_up(self) -> None:
        """A probe unanswered for less than the timeout changes nothing."""
        self.h.clock.advance(self.interval)
        self.assertEqual(len(self.cmd.pings), 1)
        self.assertEqual(self.sub.pings, [])
        self.h.clock.advance(self.timeout - 0.001)
        self.assertTrue(self.h.service.up)
        self.assertEqual(self.h.service.health, "up")
        self.assertEqual(redis_up(self.h.metrics), 1)

    def test_overdue_is_down(self) -> None:
        """Unanswered for the timeout: down, named "stalled", gauge 0, the outage logged once."""
        self.stall()
        self.assertFalse(self.h.service.up)
        self.assertEqual(self.h.service.health, "stalled")
        self.assertEqual(redis_up(self.h.metrics), 0)
        [warning] = self.h.logged("is unavailable", "warn")
        self.assertIn("no answer to PING for 5 s", warning["reason"])
        # Not dropped for this: the answer may still come.
        self.assertFalse(self.cmd.aborted)

    def test_answer_is_up_again(self) -> None:
        """The late answer ends the outage: up, gauge 1, logged, live sessions re-checked."""
        conn = self.h.session("c1", "U1", "j1")
        self.stall()
        self.cmd.revoked.add(revoked_key("j1"))
        self.cmd.pings[0].callback("PONG")
        self.assertTrue(self.h.service.up)
        self.assertEqual(self.h.service.health, "up")
        self.assertEqual(redis_up(self.h.metrics), 1)
        self.assertEqual(len(self.h.logged("is back after", "info")), 1)
        self.assertEqual(conn.revoked, 1)

    def test_answer_read_after_a_pause_counts(self) -> None:
        """
        An answer read in the reactor turn after the deadline (this process
        was paused; timers run before reads) still counts: no outage.
        """
        self.h.clock.advance(self.interval)
        # Read in the turn the deadline comes due (scheduled after it, at the same time).
        self.h.clock.callLater(self.timeout, self.cmd.pings[0].callback, "PONG")
        self.h.clock.advance(self.timeout)
        self.assertTrue(self.h.service.up)
        self.assertEqual(self.h.logged("is unavailable"), [])

    def test_error_reply_is_an_answer(self) -> None:
        """An error reply (LOADING, ...) shows Redis is there: not stalled."""
        self.stall()
        self.cmd.pings[0].errback(RuntimeError("LOADING"))
        self.assertTrue(self.h.service.up)

    def test_one_outstanding_at_most(self) -> None:
        """No PING piles up behind an unanswered one; the next goes out a tick after the answer."""
        for _ in range(6):
            self.h.clock.advance(self.interval)
        self.assertEqual(len(self.cmd.pings), 1)
        self.cmd.pings[0].callback("PONG")
        self.assertEqual(len(self.cmd.pings), 1)
        self.h.clock.advance(self.interval)
        self.assertEqual(len(self.cmd.pings), 2)

    def test_deny_fails_fast_while_stalled(self) -> None:
        """Stalled, deny: a check fails at once, without sending EXISTS to the silent server."""
        self.stall()
        calls = len(self.cmd.exists_calls)
        self.failureResultOf(self.h.service.is_revoked("x"), RevocationUnavailable)
        self.assertEqual(len(self.cmd.exists_calls), calls)

    def test_allow_answers_while_stalled(self) -> None:
        """
        Stalled, allow: logins go on (False at once); no re-check is sent to
        the silent server, and the session accepted unchecked is checked when
        it answers.
        """
        h = Harness(self, "allow")
        cmd, _ = h.connect()
        h.clock.advance(self.interval)
        h.clock.advance(self.timeout)
        self.assertIs(self.successResultOf(h.service.is_revoked("late")), False)
        conn = h.session("c2", "U2", "late")
        h.clock.advance(RECHECK_RETRY)
        self.assertEqual(cmd.exists_calls, [])
        cmd.revoked.add(revoked_key("late"))
        cmd.pings[0].callback("PONG")
        self.assertEqual(conn.revoked, 1)

    def test_new_connection_clears_stall(self) -> None:
        """A lost stalled connection is plain "down"; a new one (it answered AUTH/SELECT) is up."""
        self.stall()
        self.h.service._command_lost(self.cmd)
        self.assertEqual(self.h.service.health, "down")
        fresh = FakeLink()
        self.h.service._command_ready(fresh)
        self.assertTrue(self.h.service.up)
        # A late answer on the old connection changes nothing.
        self.cmd.pings[0].callback("PONG")
        self.assertTrue(self.h.service.up)
        self.h.clock.advance(self.interval)
        self.assertEqual(len(fresh.pings), 1)

    def test_stop_forgets_probe(self) -> None:
        """Stopping with a probe out leaves no timer behind."""
        self.h.clock.advance(self.interval)
        self.successResultOf(self.h.service.stopService())
        self.assertEqual(self.h.clock.getDelayedCalls(), [])


class MessageTests(SynchronousTestCase):
    """Live revocation through channel messages."""

    def test_by_jti(self) -> None:
        """{"jti": J} ends the sessions of that token only, and is counted."""
        h = Harness(self)
        h.connect()
        a = h.session("a", "U1", "J1")
        b = h.session("b", "U1", "J2")
        h.service._message_received(REVOCATIONS_CHANNEL.encode(), b'{"jti":"J1"}')
        self.assertEqual((a.revoked, b.revoked), (1, 0))
        self.assertEqual(h.registry.jtis(), ["J2"])
        self.assertEqual(revocation_count(h.metrics, "jti"), 1)

    def test_by_uid(self) -> None:
        """{"uid": U} ends every session of that member, and is counted."""
        h = Harness(self)
        h.connect()
        a = h.session("a", "U1", "J1")
        b = h.session("b", "U1", "J2")
        c = h.session("c", "U2", "J3")
        h.service._message_received(REVOCATIONS_CHANNEL, '{"uid":"U1"}')
        self.assertEqual((a.revoked, b.revoked, c.revoked), (1, 1, 0))
        self.assertEqual(revocation_count(h.metrics, "uid"), 2)
        self.assertEqual(h.registry.members(), ["U2"])

    def test_unknown_names(self) -> None:
        """A revocation naming nobody here is fine (other nodes may hold them)."""
        h = Harness(self)
        h.service._message_received(REVOCATIONS_CHANNEL.encode(), b'{"uid":"nobody"}')
        self.assertEqual(revocation_count(h.metrics, "uid"), 0)

    def test_malformed_ignored(self) -> None:
        """Malformed messages are logged briefly and change nothing."""
        h = Harness(self)
        a = h.session("a", "U1", "J1")
        for payload in (b"\xff", b"nope", b"[1]", b'{"jti":""}', b"{}", 7):
            h.service._message_received(REVOCATIONS_CHANNEL.encode(), payload)  # type: ignore[arg-type]
        self.assertEqual(a.revoked, 0)
        self.assertEqual(len(h.logged("Ignoring a message", "warn")), 6)

    def test_other_channel_ignored(self) -> None:
        """Only the revocations channel counts."""
        h = Harness(self)
        a = h.session("a", "U1", "J1")
        h.service._message_received(b"something-else", b'{"jti":"J1"}')
        self.assertEqual(a.revoked, 0)

    def test_connection_error_not_fatal(self) -> None:
        """A connection failing to close does not stop the service handling messages."""
        h = Harness(self)

        class Broken(FakeConnection):
            def revoke(self) -> None:
                raise RuntimeError("boom")

        broken = Broken("x")
        h.registry.authenticate(broken, Claims(uid="U1", jti="J1", expires_at=None))
        h.service._message_received(REVOCATIONS_CHANNEL, '{"jti":"J1"}')
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 0)
        self.assertEqual(len(h.logged("revoking the sessions", "critical")), 1)
        ok = h.session("y", "U2", "J2")
        h.service._message_received(REVOCATIONS_CHANNEL, '{"jti":"J2"}')
        self.assertEqual(ok.revoked, 1)


class RecheckTests(SynchronousTestCase):
    """Live sessions are checked again whenever Redis comes (back) up."""

    def test_on_connect(self) -> None:
        """Sessions whose token was revoked meanwhile are ended when Redis is up."""
        h = Harness(self)
        a = h.session("a", "U1", "J1")
        b = h.session("b", "U2", "J2")
        cmd = FakeLink({revoked_key("J2")})
        h.connect(cmd)
        self.assertEqual((a.revoked, b.revoked), (0, 1))
        self.assertEqual(revocation_count(h.metrics, "jti"), 1)
        self.assertEqual(h.registry.jtis(), ["J1"])
        self.assertEqual(len(h.logged("Re-checked", "info")), 1)

    def test_after_reconnect(self) -> None:
        """Authenticated during an outage, revoked meanwhile: ended on reconnect."""
        h = Harness(self)
        cmd, sub = h.connect()
        h.service._command_lost(cmd)
        self.assertIs(self.successResultOf(h.service.is_revoked("J9")), False)
        late = h.session("late", "U9", "J9")
        again = FakeLink({revoked_key("J9")})
        h.service._command_ready(again)
        self.assertEqual(late.revoked, 1)
        # Also when only the subscriber was lost (messages may have been missed).
        h2 = h.session("later", "U8", "J8")
        h.service._subscriber_lost(sub)
        again.revoked.add(revoked_key("J8"))
        h.service._subscriber_ready(FakeLink())
        self.assertEqual(h2.revoked, 1)

    def test_batches(self) -> None:
        """One EXISTS per batch; per-key EXISTS only for a batch with a hit."""
        h = Harness(self)
        total = RECHECK_BATCH * 2 + 3
        conns = [h.session(f"c{i}", f"U{i}", f"J{i}") for i in range(total)]
        hit = RECHECK_BATCH + 7
        cmd = FakeLink({revoked_key(f"J{hit}")})
        h.connect(cmd)
        self.assertEqual([i for i, c in enumerate(conns) if c.revoked], [hit])
        batches = [call for call in cmd.exists_calls if len(call) > 1]
        single = [call for call in cmd.exists_calls if len(call) == 1]
        self.assertEqual([len(call) for call in batches], [RECHECK_BATCH, RECHECK_BATCH, 3])
        # Only the batch with the hit is asked key by key.
        self.assertEqual(single, [(revoked_key(f"J{i}"),) for i in range(RECHECK_BATCH, 2 * RECHECK_BATCH)])

    def test_nothing_to_check(self) -> None:
        """No live session: no command at all."""
        h = Harness(self)
        cmd, _ = h.connect()
        self.assertEqual(cmd.exists_calls, [])
        self.assertEqual(self.successResultOf(h.service.recheck()), 0)

    def test_failure_retried(self) -> None:
        """A re-check that times out is tried again later."""
        h = Harness(self)
        conn = h.session("a", "U1", "J1")
        cmd = FakeLink({revoked_key("J1")})
        cmd.hang = True
        h.connect(cmd)
        h.clock.advance(COMMAND_TIMEOUT)
        self.assertEqual(conn.revoked, 0)
        self.assertEqual(len(h.logged("failed", "info")), 1)
        cmd.hang = False
        h.clock.advance(RECHECK_RETRY)
        self.assertEqual(conn.revoked, 1)

    def test_down(self) -> None:
        """Asked while down, a re-check of live sessions fails; it runs again on the next connect."""
        h = Harness(self)
        conn = h.session("a", "U1", "J1")
        self.failureResultOf(h.service.recheck(), RevocationUnavailable)
        h.connect(FakeLink({revoked_key("J1")}))
        self.assertEqual(conn.revoked, 1)

    def test_requests_during_a_run(self) -> None:
        """A request made while a run is in flight gets a run of its own afterwards."""
        h = Harness(self)
        a = h.session("a", "U1", "J1")
        cmd, _ = h.connect()
        first_reply: Deferred[int] = Deferred()
        replies = [first_reply]
        cmd.exists = lambda *keys: replies.pop(0) if replies else succeed(1)  # type: ignore[method-assign]
        first = h.service.recheck()
        second = h.service.recheck()
        self.assertNoResult(second)
        first_reply.callback(0)
        self.assertEqual(self.successResultOf(first), 0)
        self.assertEqual(self.successResultOf(second), 1)
        self.assertEqual(a.revoked, 1)
