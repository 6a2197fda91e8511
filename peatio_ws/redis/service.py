# -*- test-case-name: tests.unit.test_redis,tests.integration.test_redis_server -*-
"""
Token revocation through Redis: the key and the channel described in
L{peatio_ws.redis.keys}.

L{RevocationService} keeps two connections (made in
L{peatio_ws.redis._txredisapi}; txredisapi 1.6 reconnects with backoff through
C{ClientService}): one for commands and one subscribed to the channel.
txredisapi does not subscribe again after a reconnect, so this module does,
every time the subscriber connection comes up.

Outage policy (REDIS_REVOCATION_WHEN_DOWN). Redis counts as down while
either connection is not usable; C{up} and the C{peatio_ws_redis_up} gauge
say so, and the outage is logged once when it starts and once when it ends.

  - C{allow} (default): the daemon keeps serving. While the command
    connection is down, L{RevocationService.is_revoked} answers C{False} at
    once (it never waits for a timeout), so tokens are accepted unchecked.
    A check that fails or takes longer than one second while connected is
    treated the same way. Revocation messages published while the subscriber
    connection is down are lost (Redis pub/sub does not queue them).
  - C{deny}: while the command connection is down, or when a check fails or
    times out, L{RevocationService.is_revoked} fails at once with
    L{RevocationUnavailable}; the connection is told "Authentication
    failed." Sessions that are already authenticated are left alone.

Redis that is connected but silent (the server stalled, frozen, or a
half-open link) is noticed within seconds: every HEALTH_PROBE_INTERVAL the
command connection is sent a PING unless one is still unanswered (so
at most one is ever outstanding), and once a PING has been unanswered for
HEALTH_PROBE_TIMEOUT, Redis counts as down ("stalled" in C{/health}, the
gauge at 0) and L{RevocationService.is_revoked} answers by the policy at
once instead of waiting out each check; when the answer arrives it is up
again. The connection is not dropped for this (the PING every PING_INTERVAL
on both connections does that, after PING_TIMEOUT), so a server that
resumes is up again at once.

Either way, every time both connections are back (and after every
reconnect, or stall), the C{jti} of every live session is checked again against the
revoked keys, one round trip per batch, and sessions whose token was revoked
meanwhile are ended like a live revocation. A check that failed or timed out
while connected schedules the same re-check a few seconds later. What cannot
be recovered is a C{{"uid": ...}} message published during the outage: it has
no key, so operators should check the receiver count that C{PUBLISH} (and
C{peatio-ws revoke}) reports, and revoke by C{jti} with a key when a session
must not survive an outage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from peatio_ws.config import Settings
from peatio_ws.deadlines import LateCall
from peatio_ws.logs import logger
from peatio_ws.metrics import Metrics
from peatio_ws.redis._txredisapi import LinkFactory, error_text
from peatio_ws.redis.endpoint import WatchedEndpoint, client_endpoint, describe
from peatio_ws.redis.keys import REVOCATIONS_CHANNEL, parse_revocation, revoked_key
from peatio_ws.registry import Registry

__all__ = ["RevocationService", "RevocationUnavailable"]

log = logger("peatio_ws.redis")

#: Seconds a single revocation check (or a re-check batch) may take.
COMMAND_TIMEOUT = 1.0
#: Seconds SUBSCRIBE and health-check PINGs may take before the connection
#: is dropped and made again.
PING_TIMEOUT = 5.0
#: Seconds between health-check PINGs: a half-open connection (a silent
#: network failure) would otherwise keep the subscriber deaf for hours.
PING_INTERVAL = 15.0
#: Seconds before a re-check that could not finish is tried again.
RECHECK_RETRY = 5.0
#: Keys per EXISTS during a re-check.
RECHECK_BATCH = 500
#: Seconds stopService waits for the connections to close before aborting them.
STOP_TIMEOUT = 5.0


class RevocationUnavailable(Exception):
    """
    Redis could not say whether a token is revoked and the policy is C{deny}.

    Callers answer "Authentication failed." (reason C{revocation_unavailable}).
    """


# ---------------------------------------------------------------------------
# What the service needs of the reactor and of a connection (typed).


class _DelayedCall(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class _Clock(Protocol):
    """The part of the reactor this module schedules with (IReactorTime)."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, f: Callable[..., object], /, *args: Any, **kwargs: Any) -> _DelayedCall: ...


class _Link(Protocol):
    """What the service needs of one Redis connection."""

    def exists(self, *keys: str) -> Deferred[int]: ...

    def ping(self) -> Deferred[object]: ...

    def subscribe(self, channel: str) -> Deferred[object]: ...

    def abort(self) -> None: ...


def _reason(error: BaseException | Failure) -> str:
    value = error.value if isinstance(error, Failure) else error
    if isinstance(value, DeferredTimeout | CancelledError):
        return "timed out"
    return str(value) or type(value).__name__


def _answer(result: bool | Failure, d: Deferred[bool]) -> None:
    """Fire C{d} with C{result}, unless its caller gave up on it (cancelled)."""
    if not d.called:
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)


# ---------------------------------------------------------------------------


class RevocationService(Service):
    """
    Answers "is this token revoked?" and ends live sessions revoked through
    the channel. See the module docstring for what happens while Redis is down.
    """

    def __init__(self, settings: Settings, registry: Registry, metrics: Metrics, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        #: Untyped on purpose: Twisted's zope interfaces are opaque to mypy here.
        self._reactor: Any = reactor
        self._clock: _Clock = reactor
        self._address = settings.redis_url
        self._deny = settings.redis_revocation_when_down == "deny"
        self._registry = registry
        self._metrics = metrics
        self._metrics.redis_up.set(0)

        self._factories: list[LinkFactory] = []
        self._cmd: _Link | None = None
        #: The subscriber connection, usable but perhaps not subscribed yet.
        self._sub_conn: _Link | None = None
        #: The same connection once SUBSCRIBE succeeded.
        self._sub: _Link | None = None
        self._up = False
        self._stopping = False
        self._outage_since: float | None = None
        self._last_error: str | None = None
        self._slow = False
        #: Revocation checks asked while one EXISTS is out: sent together when it answers.
        self._checks: list[tuple[str, Deferred[bool]]] = []
        self._checking = False
        self._ready_waiters: list[Deferred[None]] = []
        self._pinger: LoopingCall | None = None

        self._probe_interval = settings.health_probe_interval
        self._probe_timeout = settings.health_probe_timeout
        self._prober: LoopingCall | None = None
        #: The command connection the one outstanding probe PING was sent on.
        self._probe_link: _Link | None = None
        self._probe_late_call: LateCall | None = None
        #: The command connection left a probe unanswered for the probe timeout.
        self._stalled = False

        self._recheck_running = False
        self._recheck_waiting: list[Deferred[int]] = []
        self._recheck_retry: _DelayedCall | None = None

    # -- public ------------------------------------------------------------

    @property
    def up(self) -> bool:
        """
        True while both connections are usable, the channel is subscribed,
        and Redis answers (no probe unanswered for the probe timeout).
        """
        return self._up

    @property
    def health(self) -> str:
        """For /health: "up", "stalled" (connected but not answering) or "down"."""
        if self._up:
            return "up"
        return "stalled" if self._stalled and self._cmd is not None else "down"

    def when_connected(self) -> Deferred[None]:
        """
        Fires once Redis is up (at once if it is); fails with CancelledError
        when the service stops first. Callers bound the wait themselves.
        """
        if self._up:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._ready_waiters.remove(d))
        self._ready_waiters.append(d)
        return d

    def is_revoked(self, jti: str) -> Deferred[bool]:
        """
        Whether a key revokes token C{jti}. When Redis cannot answer, the
        outage policy decides: C{allow} answers False, C{deny} fails with
        L{RevocationUnavailable}; while disconnected, without waiting.
        """
        cmd = self._cmd
        if cmd is None:
            return self._unanswered("Redis is down", connected=False)
        if self._stalled:
            # Known not to answer: do not make every login wait out COMMAND_TIMEOUT.
            return self._unanswered(f"Redis has not answered PING for {self._probe_timeout:g} s", connected=True)
        d: Deferred[bool] = Deferred()
        self._checks.append((jti, d))
        if not self._checking:
            Deferred.fromCoroutine(self._run_checks())
        return d

    def recheck(self) -> Deferred[int]:
        """
        Check the token of every live session against the revoked keys and
        end those revoked. Fires with how many sessions were ended; fails
        when Redis could not answer. Requests made while one runs are served
        by another run after it, so none misses a session.
        """
        d: Deferred[int] = Deferred()
        self._recheck_waiting.append(d)
        if not self._recheck_running:
            Deferred.fromCoroutine(self._run_rechecks())
        return d

    # -- service -------------------------------------------------------------

    def startService(self) -> None:
        """Start connecting; twistd ignores the result, so failures are logged and retried."""
        super().startService()
        self._stopping = False
        self._connect()
        self._pinger = LoopingCall(self._ping)
        self._pinger.clock = self._reactor
        self._pinger.start(PING_INTERVAL, now=False)
        self._prober = LoopingCall(self._probe)
        self._prober.clock = self._reactor
        self._prober.start(self._probe_interval, now=False)

    def _connect(self) -> None:
        """Open both connections; each reconnects by itself (the seam unit tests replace)."""
        address = self._address
        endpoint = WatchedEndpoint(client_endpoint(self._reactor, address), self._connect_failed)
        self._factories = [
            LinkFactory(
                address,
                subscriber=False,
                on_ready=self._command_ready,
                on_lost=self._command_lost,
                on_error=self._redis_error,
            ),
            LinkFactory(
                address,
                subscriber=True,
                on_ready=self._subscriber_ready,
                on_lost=self._subscriber_lost,
                on_error=self._redis_error,
                on_message=self._message_received,
            ),
        ]
        for factory in self._factories:
            factory.startConnecting(endpoint)

    def stopService(self) -> Deferred[None]:
        """Close both connections and stop reconnecting, within L{STOP_TIMEOUT} seconds."""
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        self._pinger = None
        if self._prober is not None and self._prober.running:
            self._prober.stop()
        self._prober = None
        self._forget_probe()
        self._stalled = False
        if self._recheck_retry is not None and self._recheck_retry.active():
            self._recheck_retry.cancel()
        self._recheck_retry = None
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.errback(CancelledError("the revocation service stopped"))
        await self._disconnect()
        self._cmd = self._sub_conn = self._sub = None
        self._set_up(False)

    async def _disconnect(self) -> None:
        """Close both connections and stop reconnecting (the seam unit tests replace)."""
        factories, self._factories = self._factories, []
        closing = gatherResults([f.disconnect() for f in factories], consumeErrors=True)
        closing.addTimeout(STOP_TIMEOUT, self._reactor)
        try:
            await closing
        except Exception as e:
            log.warn("Redis connections did not close cleanly ({error}); dropping them", error=_reason(e))
            for factory in factories:
                factory.abort_all()

    # -- connection events ----------------------------------------------------

    def _command_ready(self, link: _Link) -> None:
        self._cmd = link
        # A new connection has just answered (AUTH/SELECT): not stalled.
        self._forget_probe()
        self._stalled = False
        self._update_state()

    def _command_lost(self, link: _Link) -> None:
        if self._cmd is link:
            self._cmd = None
            self._forget_probe()
            self._stalled = False
            self._update_state("the command connection was lost")

    def _subscriber_ready(self, link: _Link) -> None:
        self._sub_conn = link
        Deferred.fromCoroutine(self._subscribe(link))

    async def _subscribe(self, link: _Link) -> None:
        try:
            await link.subscribe(REVOCATIONS_CHANNEL).addTimeout(PING_TIMEOUT, self._reactor)
        except Exception as e:
            if self._sub_conn is link and not self._stopping:
                log.warn(
                    "SUBSCRIBE {channel} failed ({error}); reconnecting", channel=REVOCATIONS_CHANNEL, error=_reason(e)
                )
                link.abort()
            return
        if self._sub_conn is link:
            self._sub = link
            self._update_state()

    def _subscriber_lost(self, link: _Link) -> None:
        if self._sub_conn is link:
            self._sub_conn = self._sub = None
            self._update_state("the subscriber connection was lost")

    def _connect_failed(self, reason: Failure) -> None:
        self._note_outage(reason.getErrorMessage())

    def _redis_error(self, why: str) -> None:
        # AUTH or SELECT refused: a configuration problem, worth an error line.
        why = error_text(why)
        if why != self._last_error:
            self._last_error = why
            log.error("Redis at {address} refused the connection: {error}", address=describe(self._address), error=why)
        self._note_outage(why)

    def _update_state(self, reason: str = "") -> None:
        up = self.running and self._cmd is not None and self._sub is not None and not self._stalled
        if up == self._up:
            return
        if up:
            self._set_up(True)
            if self._outage_since is not None:
                log.info(
                    "Redis at {address} is back after {seconds:.1f} s; re-checking {sessions} live sessions",
                    address=describe(self._address),
                    seconds=self._clock.seconds() - self._outage_since,
                    sessions=len(self._registry.jtis()),
                )
            else:
                log.info("Connected to Redis at {address}", address=describe(self._address))
            self._outage_since = None
            self._last_error = None
            waiters, self._ready_waiters = self._ready_waiters, []
            for d in waiters:
                d.callback(None)
            self._start_recheck()
        else:
            self._set_up(False)
            if not self._stopping:
                self._note_outage(reason)

    def _set_up(self, up: bool) -> None:
        self._up = up
        self._metrics.redis_up.set(1 if up else 0)

    def _note_outage(self, reason: str) -> None:
        """Log the start of an outage, once, however many retries follow."""
        if self._stopping or self._up or self._outage_since is not None:
            return
        self._outage_since = self._clock.seconds()
        log.warn(
            "Redis at {address} is unavailable ({reason}); retrying in the background. "
            "Until it is back, revocation checks {policy}",
            address=describe(self._address),
            reason=reason or "not connected",
            policy=(
                "fail and new authentications are refused (REDIS_REVOCATION_WHEN_DOWN=deny)"
                if self._deny
                else "are skipped and tokens are accepted (REDIS_REVOCATION_WHEN_DOWN=allow); "
                "live sessions are re-checked when it returns"
            ),
        )

    def _message_received(self, channel: bytes | str, payload: bytes | str) -> None:
        """A channel message: end the sessions it names, or log why not."""
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        if channel != REVOCATIONS_CHANNEL:
            return
        try:
            targets = parse_revocation(payload)
        except ValueError as e:
            log.warn("Ignoring a message on {channel}: {problem}", channel=channel, problem=str(e))
            return
        for by, value in targets:
            try:
                count = self._registry.revoke(**{by: value})
            except Exception:
                log.failure("revoking the sessions of {by} {value}", by=by, value=value)
                continue
            self._metrics.revocations.labels(by=by).inc(count)
            log.info("Revocation of {by} {value}: {count} live session(s) ended", by=by, value=value, count=count)

    # -- revocation checks ----------------------------------------------------------

    def _unanswered(self, why: str, *, connected: bool) -> Deferred[bool]:
        if self._deny:
            return fail(RevocationUnavailable(f"revocation cannot be checked: {why}"))
        if connected:
            # Accepted unchecked while Redis is connected: nothing else would
            # look at this session again, so re-check soon.
            self._schedule_recheck()
        return succeed(False)

    async def _run_checks(self) -> None:
        """
        Answer the revocation checks: the first at once, then, each time an
        answer comes, every check asked meanwhile in one EXISTS (per key
        only if it counts something). A reconnect storm's logins then cost
        Redis and txredisapi one command per round trip, not one each.
        """
        self._checking = True
        try:
            while self._checks:
                batch, self._checks = self._checks, []
                cmd = self._cmd
                try:
                    if cmd is None:
                        raise RevocationUnavailable("Redis is down")
                    flags = await self._revoked_flags([jti for jti, _ in batch], cmd)
                except Exception as e:
                    if not self._slow and cmd is not None and self._cmd is cmd:
                        self._slow = True
                        log.warn("Redis could not answer a revocation check ({error})", error=_reason(e))
                    connected = cmd is not None and self._cmd is cmd
                    for _, d in batch:
                        self._unanswered(_reason(e), connected=connected).addBoth(_answer, d)
                    continue
                if self._slow:
                    self._slow = False
                    log.info("Redis answers revocation checks again")
                for (_, d), flag in zip(batch, flags, strict=True):
                    _answer(flag, d)
        finally:
            self._checking = False

    def _start_recheck(self) -> None:
        def failed(f: Failure) -> None:
            log.info("Re-checking live sessions against revocations failed ({error})", error=_reason(f))
            self._schedule_recheck()

        self.recheck().addErrback(failed)

    def _schedule_recheck(self) -> None:
        if self._stopping or not self.running:
            return
        if self._recheck_retry is not None and self._recheck_retry.active():
            return

        def due() -> None:
            self._recheck_retry = None
            # While stalled, the end of the stall starts the re-check.
            if self._cmd is not None and not self._stalled:
                self._start_recheck()

        self._recheck_retry = self._clock.callLater(RECHECK_RETRY, due)

    async def _run_rechecks(self) -> None:
        self._recheck_running = True
        try:
            while self._recheck_waiting:
                waiting, self._recheck_waiting = self._recheck_waiting, []
                try:
                    revoked = await self._recheck_once()
                except Exception:
                    failure = Failure()
                    for d in waiting:
                        d.errback(failure)
                else:
                    for d in waiting:
                        d.callback(revoked)
        finally:
            self._recheck_running = False

    async def _recheck_once(self) -> int:
        jtis = self._registry.jtis()
        revoked = 0
        for start in range(0, len(jtis), RECHECK_BATCH):
            batch = jtis[start : start + RECHECK_BATCH]
            flags = await self._revoked_flags(batch)
            for jti, flag in zip(batch, flags, strict=True):
                if flag:
                    count = self._registry.revoke(jti=jti)
                    self._metrics.revocations.labels(by="jti").inc(count)
                    revoked += count
        if jtis:
            log.info(
                "Re-checked {checked} live token(s) against revocations: {revoked} session(s) ended",
                checked=len(jtis),
                revoked=revoked,
            )
        return revoked

    async def _revoked_flags(self, jtis: Sequence[str], cmd: _Link | None = None) -> list[bool]:
        """
        One EXISTS over the whole batch (on C{cmd}, else the current command
        connection); only when it counts something (and there is more than
        one key), one EXISTS per key, pipelined, to learn which.
        """
        if cmd is None:
            cmd = self._cmd
        if cmd is None:
            raise RevocationUnavailable("Redis is down")
        keys = [revoked_key(jti) for jti in jtis]
        total = await cmd.exists(*keys).addTimeout(COMMAND_TIMEOUT, self._reactor)
        if not total or len(keys) == 1:
            return [bool(total)] * len(keys)
        each = gatherResults([cmd.exists(key) for key in keys], consumeErrors=True)
        counts = await each.addTimeout(COMMAND_TIMEOUT, self._reactor)
        return [bool(count) for count in counts]

    # -- health ----------------------------------------------------------------

    def _probe(self) -> None:
        """Every HEALTH_PROBE_INTERVAL: PING the command connection, unless a PING is still out."""
        link = self._cmd
        if link is None or self._probe_link is not None or self._stopping:
            return
        self._probe_link = link
        # Decided after the next read: when this process itself was paused
        # (SIGSTOP, a VM migration), the answer may be waiting unread.
        self._probe_late_call = LateCall(self._clock, self._probe_timeout, lambda: self._probe_overdue(link))
        link.ping().addBoth(self._probe_answered, link)

    def _probe_answered(self, result: object, link: _Link) -> None:
        # An error reply is an answer too (Redis is there); a lost connection
        # is dealt with by _command_lost, which already forgot this probe.
        if self._probe_link is not link:
            return
        self._forget_probe()
        if self._stalled:
            self._stalled = False
            self._update_state()  # logs "is back after" when this ends the outage

    def _probe_overdue(self, link: _Link) -> None:
        self._probe_late_call = None
        if self._probe_link is not link or self._cmd is not link or self._stopping:
            return
        self._stalled = True
        # Logs the outage (once) when this starts it.
        self._update_state(f"connected, but no answer to PING for {self._probe_timeout:g} s (HEALTH_PROBE_TIMEOUT)")

    def _forget_probe(self) -> None:
        """Drop the outstanding probe (its connection changed or the service stops)."""
        self._probe_link = None
        if self._probe_late_call is not None:
            self._probe_late_call.cancel()
        self._probe_late_call = None

    def _ping(self) -> None:
        """PING both connections; drop one that does not answer so it is made again."""
        for link in {id(x): x for x in (self._cmd, self._sub_conn) if x is not None}.values():
            Deferred.fromCoroutine(self._ping_one(link))

    async def _ping_one(self, link: _Link) -> None:
        try:
            await link.ping().addTimeout(PING_TIMEOUT, self._reactor)
        except Exception as e:
            if not self._stopping and link in (self._cmd, self._sub_conn):
                log.warn("Redis did not answer PING ({error}); reconnecting", error=_reason(e))
                link.abort()
