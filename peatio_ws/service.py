# -*- test-case-name: tests.unit.test_service -*-
"""
The daemon's service tree and its ordered, graceful shutdown.

Children start in the order they are added (monitoring, Redis, RabbitMQ, then
the WebSocket listener last, so nobody connects before the parts behind it are
starting); the WebSocket port then accepts only once RabbitMQ consumes
(L{CONSUMER_START_WAIT} at most), its new connections held in the kernel's
accept queue meanwhile. L{MultiService} would stop them all at once;
L{Daemon.stopService} instead stops them in order, each step bounded in time: tell systemd
(C{STOPPING=1}), stop accepting, close every client with 1001 and, while
they answer, stop consuming (no client gets an event once told 1001), then
close Redis, and last the monitoring port, so /health reports the listener
down while clients drain.

A port that cannot be bound stops start-up with one log line naming the
setting (L{StartupError}), instead of a traceback or a daemon serving nothing.

With JWT_HANDOVER_FILE the tokens the verifier remembers are left there
first thing at a stop, and taken from there before the first connection
(L{peatio_ws.remembered}).

SIGUSR2 asks for a restart in place (L{Daemon.restart_in_place},
L{peatio_ws.reexec}): the same steps, except that every connection that
can be carried is frozen instead of told 1001, and the program replaces
itself, in the same process, by a fresh start of its command line, which
serves those connections on (L{peatio_ws.websocket.handoff}).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any, cast

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from peatio_ws import logs, reexec, remembered
from peatio_ws.config import Settings
from peatio_ws.deadlines import LateCall
from peatio_ws.http import HealthCheck, monitoring_site
from peatio_ws.listen import PortService, bound_port, inherited_listener, listener_service
from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry
from peatio_ws.sdnotify import Notifier
from peatio_ws.streams import PublicHub
from peatio_ws.websocket import StreamFactory, handoff

__all__ = [
    "CONSUMER_START_WAIT",
    "STOP_STEP_TIMEOUT",
    "Daemon",
    "StartupError",
    "restart_in_place_on_signal",
    "stop_once_on_signals",
]

log = logs.logger("peatio_ws.service")

#: Seconds each shutdown step other than closing clients may take before it
#: is abandoned (closing clients takes WEBSOCKET_CLOSE_TIMEOUT + 1 at most).
#: With the defaults the whole stop stays well under the unit's TimeoutStopSec.
STOP_STEP_TIMEOUT = 3.0

#: Seconds the WebSocket port, bound, may hold new connections in the
#: kernel's accept queue at start-up until the RabbitMQ consumer consumes.
CONSUMER_START_WAIT = 10.0


def _factory_url(settings: Settings) -> str:
    """
    The URL Autobahn's factory wants (it only takes the scheme from it): an
    IPv6 host in brackets, no port 0, either of which its parser rejects.
    """
    host = settings.websocket_host
    if ":" in host:
        host = f"[{host}]"
    port = f":{settings.websocket_port}" if settings.websocket_port else ""
    return f"{'wss' if settings.tls else 'ws'}://{host}{port}"


def stop_once_on_signals(reactor: Any) -> None:
    """
    Make SIGTERM and SIGINT stop the reactor once. A second one while the
    shutdown runs (an impatient operator, C{make} passing its own SIGTERM on)
    is noted, not acted on: the reactor's own handler would try to stop it
    again and log a ReactorNotRunning traceback, and the shutdown is bounded
    anyway. Call before the reactor runs: it takes its handlers when it starts.
    """
    stopping = False

    def started_stopping() -> None:
        nonlocal stopping
        stopping = True

    def once(original: Callable[[int, FrameType | None], None]) -> Callable[[int, FrameType | None], None]:
        def handle(number: int, frame: FrameType | None = None) -> None:
            if stopping:
                log.info("received signal {signal} while shutting down; the shutdown goes on", signal=number)
                return
            started_stopping()
            original(number, frame)

        return handle

    reactor.sigTerm = once(reactor.sigTerm)
    reactor.sigInt = once(reactor.sigInt)
    reactor.addSystemEventTrigger("before", "shutdown", started_stopping)


def restart_in_place_on_signal(reactor: Any, daemon: Daemon) -> None:
    """
    Make SIGUSR2 (the units' C{ExecReload=}) ask C{daemon} for a restart in
    place, run by the reactor (a signal handler may run between any two
    bytecodes of the reactor's own work).
    """

    def handle(number: int, frame: FrameType | None = None) -> None:
        reactor.callFromThread(daemon.restart_in_place)

    signal.signal(signal.SIGUSR2, handle)
    # A program started by a restart in place holds SIGTERM, SIGINT and
    # SIGUSR2 from its exec until the reactor's handlers are in place.
    reactor.callWhenRunning(reexec.unblock_signals)


def _port_number(service: IService, configured: int) -> int:
    """The port C{service} really listens on (port 0 picks one), else C{configured}."""
    port = bound_port(service)
    address = port.getHost() if port is not None else None
    number = getattr(address, "port", None)
    return number if isinstance(number, int) else configured


def _state(component: Callable[[], Any]) -> HealthCheck:
    """
    A component's C{health} word ("up", "stalled", ...) when it has one,
    so /health can say more than "down"; else its C{up} (test doubles).
    """

    def check() -> bool | str:
        part = component()
        health = getattr(part, "health", None)
        return health if isinstance(health, str) else bool(part.up)

    return check


class StartupError(SystemExit):
    """
    Start-up cannot go on (a port cannot be bound). A L{SystemExit} with
    status 1, so twistd exits without a traceback; the reason has already
    been logged as one line, and is in C{message}.
    """

    def __init__(self, message: str) -> None:
        super().__init__(1)
        self.message = message


class Daemon(MultiService):
    """
    Everything one peatio-ws process runs, wired together.

    C{Daemon(settings, reactor)} builds the real parts. Tests may pass their
    own C{consumer}, C{revocation}, C{listener}, C{monitoring}, C{notifier}
    and C{metrics}; a C{listener} may also be a callable taking the
    L{StreamFactory}, for a real port with a fake broker. With C{carried}
    (the plugin's), it takes what a restart in place left (L{reexec.take}).
    """

    def __init__(
        self,
        settings: Settings,
        reactor: Any,
        *,
        consumer: IService | None = None,
        revocation: IService | None = None,
        listener: IService | Callable[[StreamFactory], IService] | None = None,
        monitoring: IService | None = None,
        notifier: Notifier | None = None,
        metrics: Metrics | None = None,
        carried: bool = False,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        self.metrics = metrics if metrics is not None else Metrics()
        self.registry = Registry(self.metrics)
        self.hub = PublicHub(self.registry, self.metrics, settings.ranger_orderbook_max_increments)
        self.verifier = settings.token_verifier(reactor)
        self.notifier = notifier if notifier is not None else Notifier()
        if revocation is None:
            # Imported here: txredisapi installs the global reactor on import,
            # so it must never be imported by the plugin module.
            from peatio_ws.redis import RevocationService

            revocation = RevocationService(settings, self.registry, self.metrics, reactor)
        if consumer is None:
            from peatio_ws.amqp import EventConsumer

            consumer = EventConsumer(settings, self.registry, self.metrics, reactor, hub=self.hub)
        # Any: the real classes or test doubles with the same surface.
        self.revocation: Any = cast(Any, revocation)
        self.consumer: Any = cast(Any, consumer)
        self.scheme = "wss" if settings.tls else "ws"
        self.factory = StreamFactory(
            settings,
            self.registry,
            self.verifier,
            self.metrics,
            reactor,
            self.revocation,
            url=_factory_url(settings),
            hub=self.hub,
        )
        self.listening = False
        self._bound = False
        self._watchdog: LoopingCall | None = None
        #: Set while a restart in place runs (L{restart_in_place}).
        self._restarting = False
        #: What the program this one replaced left it (a restart in place), taken at start.
        self._left = self._take_left() if carried else None
        self.monitoring: IService = (
            monitoring
            if monitoring is not None
            else PortService(
                settings.metrics_host,
                settings.metrics_port,
                monitoring_site(self.metrics, self.health_checks(), reactor),
                reactor,
                backlog=50,
            )
        )
        if listener is None:
            carried_port = self._left is not None
            inherited = self._left.listener if self._left is not None else inherited_listener()
            self.listener: IService = listener_service(
                settings, self.factory, reactor, self.factory.admission.room, inherited, carried=carried_port
            )
        elif IService.providedBy(listener):
            self.listener = listener
        else:
            self.listener = listener(self.factory)
        for child in (self.monitoring, self.revocation, self.consumer, self.listener):
            child.setServiceParent(self)

    def health_checks(self) -> dict[str, HealthCheck]:
        """What /health reports, each a callable returning True when up (or a word, see L{_state})."""
        return {
            "listener": lambda: self.listening,
            "rabbitmq": _state(lambda: self.consumer),
            "redis": _state(lambda: self.revocation),
        }

    # -- start-up ------------------------------------------------------------------

    def setServiceParent(self, parent: Any) -> None:
        """
        Joining twistd's Application: with LOG_FORMAT=json, give it the JSON
        log observer now, because twistd starts logging right after
        C{makeService} and reads the observer from the Application.
        """
        if self.settings.log_format == "json" and logs.install(parent):
            log.info("log format: JSON lines (LOG_FORMAT=json)")
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        """
        Bind the ports (monitoring first, the WebSocket port last). A port
        that cannot be bound closes what was bound and raises L{StartupError}
        after logging one line naming the settings to fix.
        """
        Service.privilegedStartService(self)
        self._bound = True
        bound: list[IService] = []
        for child in self:
            try:
                child.privilegedStartService()
            except CannotListenError as e:
                self._bound = False
                self._abort_start(bound)
                raise self._startup_error(child, e) from None
            if child is self.monitoring or child is self.listener:
                bound.append(child)

    def startService(self) -> None:
        if not self._bound:
            # Started without twistd (tests, tools): bind first, the same way.
            self.privilegedStartService()
        self._take_remembered()
        super().startService()
        self._adopt_left()
        self.listening = True
        self.metrics.listener_up.set(1)
        self.factory.start_pinging()
        port = _port_number(self.listener, self.settings.websocket_port)
        where = f"{self.scheme}://{self.settings.websocket_host}:{port}"
        log.info(
            "peatio-ws listening on {url}{reuse}; health and metrics on {mhost}:{mport}; "
            "connection ids {conn_prefix}-1, {conn_prefix}-2, ...",
            url=where,
            conn_prefix=self.factory.id_prefix,
            reuse=" (SO_REUSEPORT)" if self.settings.websocket_reuse_port else "",
            mhost=self.settings.metrics_host,
            mport=_port_number(self.monitoring, self.settings.metrics_port),
        )
        self.notifier.ready(f"Listening on {where}")
        self._accept_once_consuming()
        interval = self.notifier.watchdog_interval
        if interval:
            self._watchdog = LoopingCall(self.notifier.watchdog)
            self._watchdog.clock = self.reactor
            self._watchdog.start(interval, now=True)

    def _take_remembered(self) -> None:
        """The tokens the previous process verified, remembered by this one if they were verified alike."""
        path = self.settings.jwt_handover_file
        if path is None:
            return
        try:
            handed = remembered.take(path)
        except remembered.RememberedError as e:
            log.warn("JWT_HANDOVER_FILE {path}: {problem}; every token is verified anew", path=path, problem=str(e))
            return
        if handed is None:
            return
        if handed.settings != self.verifier.settings_digest:
            log.info("JWT_HANDOVER_FILE {path}: left under other JWT settings; every token is verified anew", path=path)
            return
        count = self.verifier.adopt(handed.tokens)
        log.info(
            "JWT_HANDOVER_FILE {path}: {count} tokens the previous process verified are remembered",
            path=path,
            count=count,
        )

    def _take_left(self) -> reexec.Left | None:
        try:
            return reexec.take()
        except reexec.ReexecError as e:
            log.error("restart in place: what the previous program left cannot be taken ({problem})", problem=str(e))
            return None

    def _adopt_left(self) -> None:
        """Serve on the connections the program this one replaced carried (a restart in place)."""
        left, self._left = self._left, None
        if left is None:
            return
        adopted = failed = 0
        began = self.reactor.seconds()
        if left.books:
            try:
                self.hub.restore_books(handoff.books_from_json(left.books))
            except handoff.CarriedError as e:
                # Their subscribers wait for the next snapshots, as after any start.
                log.warn("restart in place: the order books cannot be taken ({problem})", problem=str(e))
        for record in left.connections:
            try:
                carried = handoff.Carried.from_json(record)
            except handoff.CarriedError as e:
                failed += 1
                log.warn("restart in place: a connection cannot be taken ({problem})", problem=str(e))
                fd = record.get("fd") if isinstance(record, dict) else None
                if isinstance(fd, int) and fd > 2 and fd != left.listener:
                    _close_quietly(fd)
                continue
            try:
                handoff.adopt(self.factory, self.reactor, carried)
            except OSError as e:
                failed += 1
                log.warn(
                    "restart in place: connection {conn_id} cannot be served on ({error})",
                    conn_id=carried.conn_id,
                    error=e.strerror or str(e),
                )
                continue
            adopted += 1
        carried_over = getattr(self.consumer, "carried_over", None)
        if adopted and carried_over is not None:
            carried_over()
        log.info(
            "restart in place: {count} connections carried over, {failed} lost, in {took:.2f} s, {seconds:.2f} s "
            "after the previous program left them",
            count=adopted,
            failed=failed,
            took=self.reactor.seconds() - began,
            seconds=max(0.0, time.time() - left.left_at),
        )

    def _leave_remembered(self) -> None:
        path = self.settings.jwt_handover_file
        if path is None:
            return
        verifier = self.verifier
        try:
            count = remembered.leave(path, verifier.settings_digest, verifier.remembered(), self.reactor.seconds())
        except remembered.RememberedError as e:
            log.warn("JWT_HANDOVER_FILE {path}: {problem}", path=path, problem=str(e))
            return
        log.info(
            "JWT_HANDOVER_FILE {path}: {count} remembered tokens left for the next process", path=path, count=count
        )

    def _accept_once_consuming(self) -> None:
        """
        Accept WebSocket connections only once the consumer consumes (at
        most L{CONSUMER_START_WAIT} seconds; the port stays bound, so they
        wait in the kernel's accept queue meanwhile). A restarted node's
        clients all come back at once: accepted first, they would take the
        reactor before the AMQP handshake, and every one would wait for a
        binding the consumer makes only once it is set up.
        """
        pause = getattr(self.listener, "pause_accepting", None)
        when_consuming = getattr(self.consumer, "when_consuming", None)
        if pause is None or when_consuming is None or self.consumer.up or not pause():
            return
        log.info(
            "accepting WebSocket connections once RabbitMQ consumes (at most {seconds:g} s)",
            seconds=CONSUMER_START_WAIT,
        )
        consuming: Deferred[None] = when_consuming()
        consuming.addTimeout(CONSUMER_START_WAIT, self.reactor)
        consuming.addBoth(self._accept_now)

    def _accept_now(self, result: object) -> None:
        if not self.running:
            return  # stopping: the listener is closed, or about to be
        if isinstance(result, Failure):
            log.warn(
                "RabbitMQ is not consuming after {seconds:g} s: accepting WebSocket connections anyway",
                seconds=CONSUMER_START_WAIT,
            )
        else:
            log.info("RabbitMQ consuming: accepting WebSocket connections")
        cast(PortService, self.listener).resume_accepting()

    def _startup_error(self, child: IService, error: CannotListenError) -> StartupError:
        keys = "METRICS_HOST/METRICS_PORT" if child is self.monitoring else "WEBSOCKET_HOST/WEBSOCKET_PORT"
        reason = error.socketError
        text = getattr(reason, "strerror", None) or str(reason)
        message = f"cannot listen on {error.interface or '*'}:{error.port} ({keys}): {text}"
        log.critical("peatio-ws: {error}", error=message)
        return StartupError(message)

    def _abort_start(self, bound: list[IService]) -> None:
        for child in reversed(bound):
            try:
                maybeDeferred(child.stopService).addErrback(lambda f: None)
            except Exception:
                log.failure("closing {service} after a failed start", service=type(child).__name__)

    # -- restart in place --------------------------------------------------------------

    def restart_in_place(self) -> None:
        """
        Replace this program by a fresh start of itself in this process,
        carrying every connection that can be carried (SIGUSR2). Refused,
        with a warning, when it cannot be done without loss: the program
        goes on as it was.
        """
        why = self._cannot_restart_in_place()
        if why is not None:
            log.warn("restart in place refused: {why}; nothing changed", why=why)
            return
        self._restarting = True
        Deferred.fromCoroutine(self._restart_in_place())

    def _cannot_restart_in_place(self) -> str | None:
        if self._restarting:
            return "one is under way"
        if not self.running or not self.listening:
            return "the daemon is starting or stopping"
        if self.settings.tls:
            return "TLS ends in this process, and a TLS session cannot be carried"
        if self.settings.rabbitmq_handover_file is None:
            return "RABBITMQ_HANDOVER_FILE is not set, and the queue must outlive the program"
        if bound_port(self.listener) is None:
            return "the WebSocket port is not this daemon's own"
        return None

    async def _restart_in_place(self) -> None:
        began = self.reactor.seconds()
        port = bound_port(self.listener)
        assert port is not None
        count = len(self.factory.connections)
        self.notifier.notify(
            "RELOADING=1",
            f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
            f"STATUS=Restarting in place: carrying {count} connections",
        )
        log.info("restarting in place: carrying {count} connections over to a fresh start of this program", count=count)
        cast(PortService, self.listener).pause_accepting()
        self._leave_remembered()
        self.factory.stop_pinging()
        # First no client message is read any more (a login now would find Redis
        # stopping): who can be carried is frozen, the others are told 1001.
        frozen: list[Any] = []
        leaving: list[Any] = []
        for proto in self.factory.live():
            if handoff.unfinished(proto) is None:
                handoff.freeze(proto)
                frozen.append(proto)
            elif not proto.is_closed.called:
                leaving.append(proto)
                proto.going_away()
        self.factory.admission.drop_all()
        # The queue is left for the next program (RABBITMQ_HANDOVER_FILE): what is
        # published from now on waits there. Events the consumer still hands out
        # meanwhile are written to the frozen connections as ever. The next
        # program's Redis re-checks every session it is given.
        await DeferredList(
            [
                Deferred.fromCoroutine(self._stop_child(self.consumer, "rabbitmq")),
                Deferred.fromCoroutine(self._stop_child(self.revocation, "redis")),
            ]
        )
        if not self.running:
            return  # a shutdown began meanwhile: it closes everyone
        if not os.path.exists(cast(str, self.settings.rabbitmq_handover_file)):
            # What is published until the next program consumes could be lost without a word.
            log.warn("restart in place: the queue was not left for the next program; every client is told 1001")
            for proto in frozen:
                proto.transport.resumeProducing()
                proto.going_away()
            leaving += frozen
            frozen = []
        waiting = [proto.is_closed for proto in leaving if not proto.is_closed.called]
        if waiting:
            await self._closed_in_time(DeferredList(waiting, consumeErrors=True), lambda: leaving)
        await self._stop_child(self.monitoring, "monitoring")
        if not self.running:
            return
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        carried = [handoff.capture(proto).as_json() for proto in frozen if proto.transport.connected]
        log.info(
            "restart in place: {carried} connections carried, {closed} told 1001, in {seconds:.2f} s; starting again",
            carried=len(carried),
            closed=len(leaving),
            seconds=self.reactor.seconds() - began,
        )
        try:
            books = handoff.books_json(self.hub.carried_books())
            state = reexec.leave(cast(Any, port).fileno(), carried, books)
            reexec.replace_process(state)
        except OSError as e:
            log.critical("restart in place failed: {error}; stopping", error=e.strerror or str(e))
            for proto in frozen:
                proto.transport.resumeProducing()
            self._restarting = False
            self.reactor.stop()

    # -- shutdown ------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._restarting:
            # Stopped in the middle of a restart in place: the frozen are read again, to hear their close.
            for proto in self.factory.live():
                proto.transport.resumeProducing()
        count = len(self.factory.connections)
        self.notifier.stopping(f"Shutting down: closing {count} connections")
        log.info("shutting down: closing {count} connections", count=count)
        self._leave_remembered()
        await self._stop_child(self.listener, "listener")
        self.listening = False
        self.metrics.listener_up.set(0)
        closing = self.factory.close_all()
        # Every client is told 1001 and gets no event from now on, so the
        # consumer's clean stop (RabbitMQ takes seconds to delete a queue of
        # thousands of bindings) runs while they answer, not after.
        consumer_stopping = Deferred.fromCoroutine(self._stop_child(self.consumer, "rabbitmq"))
        await self._closed_in_time(closing, self.factory.live)
        await consumer_stopping
        await self._stop_child(self.revocation, "redis")
        await self._stop_child(self.monitoring, "monitoring")
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None
        log.info("shutdown complete")

    async def _closed_in_time(self, closing: Deferred[Any], told: Callable[[], Iterable[Any]]) -> None:
        """
        Wait for the clients C{told} 1001 to close (C{closing} fires). Autobahn
        drops a peer that does not answer the close within
        WEBSOCKET_CLOSE_TIMEOUT; one second later whoever is left is cut.
        """
        if await self._at_most(closing, self.settings.websocket_close_timeout + 1):
            return
        # Closed ones may still be listed until their TCP close completes.
        left = [proto for proto in told() if not proto.is_closed.called]
        log.warn("{count} connections did not close in time; dropping them", count=len(left))
        for proto in left:
            proto.dropConnection(abort=True)

    async def _stop_child(self, child: IService, name: str) -> None:
        """Stop one child, going on (logged) after L{STOP_STEP_TIMEOUT}."""
        stopping = maybeDeferred(child.stopService)

        def failed(failure: Failure) -> None:
            log.failure("stopping {service}", failure, service=name)

        stopping.addErrback(failed)
        if not await self._at_most(stopping, STOP_STEP_TIMEOUT):
            log.warn(
                "stopping {service} took longer than {timeout}s; going on", service=name, timeout=STOP_STEP_TIMEOUT
            )

    async def _at_most(self, waiting: Deferred[Any], seconds: float) -> bool:
        """
        Wait for C{waiting}, but no longer than C{seconds}; True if it fired
        in time. C{waiting} is not cancelled: what it waits for may still
        finish, and cancelling other code's Deferreds has surprised before.
        """
        done: Deferred[bool] = Deferred()

        def finish(in_time: bool) -> None:
            if not done.called:
                done.callback(in_time)

        def fired(result: object) -> object:
            finish(True)
            return result

        # Decided after the next read: a turn spent telling thousands of
        # clients 1001 must not make a step that finished in it look late.
        timer = LateCall(self.reactor, seconds, lambda: finish(False))
        waiting.addBoth(fired)
        in_time = await done
        timer.cancel()
        return in_time


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
