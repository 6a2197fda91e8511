"""
Tests for L{peatio_ws.service.Daemon}: start-up (READY=1 once listening, one
line when a port cannot be bound), the ordered shutdown (STOPPING=1, stop
accepting, 1001 to every client, stop consuming, close Redis, close the
monitoring port; each step waits for the one before and is bounded in time),
and LOG_FORMAT=json wiring with L{peatio_ws.logs}.

Every collaborator is a recording fake and time is a L{MemoryReactorClock}:
no network, no sleeping.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import replace
from typing import Any, cast

from twisted.application.service import Application, IService, IServiceCollection, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws import logs, reexec, service
from peatio_ws.auth import AuthError, Claims
from peatio_ws.http import HealthResource
from peatio_ws.listen import BACKLOG, PortService
from peatio_ws.logs import JSONLinesObserver, event_as_dict, json_observer
from peatio_ws.service import CONSUMER_START_WAIT, STOP_STEP_TIMEOUT, Daemon, StartupError, stop_once_on_signals
from peatio_ws.testing import make_token, settings_for_tests
from peatio_ws.websocket import StreamFactory, handoff


class FakeChild(Service):
    """A child service that records what is done to it, in one shared list."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls
        self.up = True
        self.bind_error: Exception | None = None
        self.stop_result: Any = None

    def privilegedStartService(self) -> None:
        if self.bind_error is not None:
            raise self.bind_error
        self.calls.append(f"bind {self.name}")
        super().privilegedStartService()

    def startService(self) -> None:
        self.calls.append(f"start {self.name}")
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        self.calls.append(f"stop {self.name}")
        return self.stop_result


class FakeNotifier:
    """Stands in for L{peatio_ws.sdnotify.Notifier}."""

    def __init__(self, calls: list[str], watchdog_interval: float | None = None) -> None:
        self.calls = calls
        self.watchdog_interval = watchdog_interval
        self.pings = 0

    def ready(self, status: str) -> bool:
        self.calls.append("READY=1")
        self.ready_status = status
        return True

    def stopping(self, status: str) -> bool:
        self.calls.append("STOPPING=1")
        return True

    def watchdog(self) -> bool:
        self.pings += 1
        return True

    def notify(self, *assignments: str) -> bool:
        self.calls.append(assignments[0])
        return True


class FakeConnection:
    """What L{StreamFactory.close_all} needs of a connection."""

    def __init__(self, name: str, calls: list[str], factory: StreamFactory, closes: bool = True) -> None:
        self.name = name
        self.calls = calls
        self.factory = factory
        self.closes = closes
        self.is_closed: Deferred[None] = Deferred()

    def going_away(self) -> None:
        self.calls.append(f"1001 {self.name}")
        if self.closes:
            self.gone()

    def gone(self) -> None:
        self.factory.connections.discard(self)
        if not self.is_closed.called:
            self.is_closed.callback(None)

    def dropConnection(self, abort: bool = False) -> None:
        self.calls.append(f"drop {self.name}")
        self.gone()


class DaemonTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.calls: list[str] = []
        self.reactor = MemoryReactorClock()
        self.settings = settings_for_tests()
        self.children = {name: FakeChild(name, self.calls) for name in ("monitoring", "redis", "rabbitmq", "listener")}
        self.notifier = FakeNotifier(self.calls)
        self.daemon = self.build()
        self.log_events: list[dict[str, Any]] = []
        observer: Any = self.log_events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def build(self, **kw: Any) -> Daemon:
        return Daemon(
            kw.pop("settings", self.settings),
            self.reactor,
            monitoring=self.children["monitoring"],
            revocation=self.children["redis"],
            consumer=self.children["rabbitmq"],
            listener=self.children["listener"],
            notifier=self.notifier,  # type: ignore[arg-type]
            **kw,
        )

    def start(self) -> None:
        self.daemon.privilegedStartService()
        self.daemon.startService()
        del self.calls[:]

    def connect(self, name: str, closes: bool = True) -> FakeConnection:
        connection = FakeConnection(name, self.calls, self.daemon.factory, closes)
        self.daemon.factory.connections.add(connection)  # type: ignore[arg-type]
        return connection

    def messages(self, level: LogLevel | None = None) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.log_events if level is None or e.get("log_level") == level]


class StartTests(DaemonTestCase):
    def test_children_order(self) -> None:
        """Monitoring, Redis, RabbitMQ, then the listener: bound and started in that order."""
        self.daemon.privilegedStartService()
        self.daemon.startService()
        self.assertEqual(
            self.calls,
            [
                "bind monitoring",
                "bind redis",
                "bind rabbitmq",
                "bind listener",
                "start monitoring",
                "start redis",
                "start rabbitmq",
                "start listener",
                "READY=1",
            ],
        )
        self.assertTrue(self.daemon.listening)
        self.assertIn("ws://0.0.0.0:8080", self.notifier.ready_status)
        self.assertEqual(self.daemon.metrics.listener_up._value.get(), 1)

    def test_start_without_privileged_start(self) -> None:
        """startService alone (no twistd) binds first, the same way, once."""
        self.daemon.startService()
        self.assertEqual(self.calls.count("bind listener"), 1)
        self.assertEqual(self.calls[-1], "READY=1")

    def test_not_ready_before_listening(self) -> None:
        """READY=1 is not sent when binding fails."""
        self.children["listener"].bind_error = CannotListenError("0.0.0.0", 8080, OSError(98, "Address already in use"))
        self.assertRaises(StartupError, self.daemon.startService)
        self.assertNotIn("READY=1", self.calls)
        self.assertFalse(self.daemon.listening)

    def test_bind_failure_one_line(self) -> None:
        """
        A WebSocket port in use: one critical line naming the settings, the
        monitoring port that was bound is closed again, and the exit is a
        SystemExit with status 1 (twistd prints no traceback for it).
        """
        self.children["listener"].bind_error = CannotListenError("0.0.0.0", 8080, OSError(98, "Address already in use"))
        error = self.assertRaises(StartupError, self.daemon.privilegedStartService)
        self.assertIsInstance(error, SystemExit)
        self.assertEqual(error.code, 1)
        [line] = self.messages(LogLevel.critical)
        self.assertEqual(
            line, "peatio-ws: cannot listen on 0.0.0.0:8080 (WEBSOCKET_HOST/WEBSOCKET_PORT): Address already in use"
        )
        self.assertEqual(error.message, line.removeprefix("peatio-ws: "))
        self.assertEqual(self.calls, ["bind monitoring", "bind redis", "bind rabbitmq", "stop monitoring"])

    def test_monitoring_bind_failure(self) -> None:
        """The monitoring port in use names METRICS_HOST/METRICS_PORT."""
        self.children["monitoring"].bind_error = CannotListenError("0.0.0.0", 8082, OSError(98, "Address in use"))
        error = self.assertRaises(StartupError, self.daemon.privilegedStartService)
        self.assertIn("(METRICS_HOST/METRICS_PORT)", error.message)
        self.assertEqual(self.calls, [])

    def test_health_checks(self) -> None:
        """/health follows the listener, the consumer's and Redis' C{up}."""
        health = HealthResource(self.daemon.health_checks())
        self.assertEqual(health.states(), {"listener": "down", "rabbitmq": "up", "redis": "up"})
        self.start()
        self.children["redis"].up = False
        self.assertEqual(health.states(), {"listener": "up", "rabbitmq": "up", "redis": "down"})

    def test_health_checks_name_state(self) -> None:
        """A component with a C{health} word (Redis: "stalled") is reported by it."""
        health = HealthResource(self.daemon.health_checks())
        self.start()
        self.children["redis"].health = "stalled"  # type: ignore[attr-defined]
        self.assertEqual(health.states(), {"listener": "up", "rabbitmq": "up", "redis": "stalled"})
        self.children["redis"].health = "up"  # type: ignore[attr-defined]
        self.assertEqual(health.states()["redis"], "up")

    def test_watchdog(self) -> None:
        """With WATCHDOG_USEC, WATCHDOG=1 goes out every half period from the reactor, until stopped."""
        self.notifier.watchdog_interval = 15.0
        self.start()
        self.assertEqual(self.notifier.pings, 1)
        self.reactor.advance(15)
        self.reactor.advance(15)
        self.assertEqual(self.notifier.pings, 3)
        self.successResultOf(self.daemon.stopService())
        self.reactor.advance(60)
        self.assertEqual(self.notifier.pings, 3)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_real_parts_default(self) -> None:
        """
        Without injected ports the daemon builds the real ones, from the
        settings, on the given reactor (nothing is bound until started).
        """
        settings = settings_for_tests(websocket_port=9443, metrics_port=9100, metrics_host="127.0.0.1")
        daemon = Daemon(
            settings,
            self.reactor,
            revocation=self.children["redis"],
            consumer=self.children["rabbitmq"],
            notifier=self.notifier,  # type: ignore[arg-type]
        )
        self.assertIsInstance(daemon.listener, PortService)
        self.assertIsInstance(daemon.monitoring, PortService)
        # The WebSocket port accepts no more per poll than the handshake cap has room for.
        self.assertEqual(cast(PortService, daemon.listener).room, daemon.factory.admission.room)
        self.assertIsNone(cast(PortService, daemon.monitoring).room)
        self.assertEqual(self.reactor.tcpServers, [])
        daemon.privilegedStartService()
        daemon.startService()
        ports = sorted((port, interface, backlog) for port, _factory, backlog, interface in self.reactor.tcpServers)
        # The WebSocket port queues a restart's reconnect wave (as far as somaxconn lets it).
        self.assertEqual(ports, [(9100, "127.0.0.1", 50), (9443, "0.0.0.0", BACKLOG)])
        [websocket] = [f for port, f, _b, _i in self.reactor.tcpServers if port == 9443]
        self.assertIs(websocket, daemon.factory)
        self.successResultOf(daemon.stopService())

    def test_any_listen_address(self) -> None:
        """An IPv6 address or port 0 (pick one) builds a daemon too."""
        for host, port in (("::", 8080), ("::1", 0), ("127.0.0.1", 0)):
            settings = settings_for_tests(websocket_host=host, websocket_port=port)
            daemon = self.build(settings=settings)
            self.assertFalse(daemon.factory.isSecure)

    def test_listener_factory_callable(self) -> None:
        """A callable C{listener} gets the daemon's L{StreamFactory}."""
        seen: list[StreamFactory] = []

        def make(factory: StreamFactory) -> IService:
            seen.append(factory)
            return FakeChild("listener2", self.calls)

        daemon = Daemon(
            self.settings,
            self.reactor,
            monitoring=FakeChild("m", self.calls),
            revocation=FakeChild("r", self.calls),
            consumer=FakeChild("c", self.calls),
            listener=make,
            notifier=self.notifier,  # type: ignore[arg-type]
        )
        self.assertEqual(seen, [daemon.factory])


class PausingListener(FakeChild):
    """A listener that can hold new connections in the kernel's accept queue (as L{PortService} can)."""

    def pause_accepting(self) -> bool:
        self.calls.append(f"pause {self.name}")
        return True

    def resume_accepting(self) -> None:
        self.calls.append(f"resume {self.name}")


class WaitingConsumer(FakeChild):
    """A consumer not consuming yet: C{when_consuming} fires when the test says."""

    def __init__(self, name: str, calls: list[str]) -> None:
        super().__init__(name, calls)
        self.up = False
        self.waiting: list[Deferred[None]] = []

    def when_consuming(self) -> Deferred[None]:
        d: Deferred[None] = Deferred(lambda d: self.waiting.remove(d))
        self.waiting.append(d)
        return d


class AcceptOnceConsumingTests(DaemonTestCase):
    """New WebSocket connections wait in the kernel's accept queue until RabbitMQ consumes, for a bounded time."""

    def setUp(self) -> None:
        super().setUp()
        self.children["listener"] = PausingListener("listener", self.calls)
        self.consumer = WaitingConsumer("rabbitmq", self.calls)
        self.children["rabbitmq"] = self.consumer
        self.daemon = self.build()

    def test_held_until_consuming(self) -> None:
        """Started, the listener pauses after READY=1; once the consumer consumes, it accepts."""
        self.daemon.startService()
        self.assertEqual(self.calls[-2:], ["READY=1", "pause listener"])
        self.reactor.advance(CONSUMER_START_WAIT - 0.01)
        self.assertNotIn("resume listener", self.calls)
        self.consumer.waiting[0].callback(None)
        self.assertEqual(self.calls[-1], "resume listener")
        self.assertEqual(self.messages(LogLevel.warn), [])
        self.assertEqual(self.messages()[-1], "RabbitMQ consuming: accepting WebSocket connections")
        # The wait's timeout is gone (the ping sweep is the factory's own).
        self.assertEqual([c for c in self.reactor.getDelayedCalls() if "_ping_sweep" not in repr(c)], [])

    def test_bounded(self) -> None:
        """A broker that never comes: the listener accepts after CONSUMER_START_WAIT seconds, with a warning."""
        self.daemon.startService()
        self.reactor.advance(CONSUMER_START_WAIT)
        self.assertEqual(self.calls[-1], "resume listener")
        self.assertEqual(self.consumer.waiting, [])
        [line] = self.messages(LogLevel.warn)
        self.assertEqual(line, "RabbitMQ is not consuming after 10 s: accepting WebSocket connections anyway")

    def test_consuming_already(self) -> None:
        """A consumer already up: nothing is paused."""
        self.consumer.up = True
        self.daemon.startService()
        self.assertEqual(self.calls[-1], "READY=1")

    def test_stopped_while_held(self) -> None:
        """Stopping while held: the listener is closed, never resumed (the consumer's wait fails as it stops)."""
        self.daemon.startService()
        self.daemon.stopService()
        self.consumer.waiting[0].errback(Failure(RuntimeError("the RabbitMQ consumer stopped")))
        self.reactor.advance(CONSUMER_START_WAIT)
        self.assertIn("stop listener", self.calls)
        self.assertNotIn("resume listener", self.calls)
        self.assertEqual(self.messages(LogLevel.warn), [])


class ShutdownTests(DaemonTestCase):
    def test_order(self) -> None:
        """
        STOPPING=1, stop accepting, 1001 to every client, stop consuming,
        close Redis, close the monitoring port: in exactly that order (the
        consumer's stop starts once every client has been sent its 1001).
        """
        self.start()
        self.connect("c1")
        self.connect("c2")
        self.successResultOf(self.daemon.stopService())
        self.assertEqual(self.calls[:2], ["STOPPING=1", "stop listener"])
        self.assertEqual(sorted(self.calls[2:4]), ["1001 c1", "1001 c2"])
        self.assertEqual(self.calls[4:], ["stop rabbitmq", "stop redis", "stop monitoring"])

    def test_nothing_left_running(self) -> None:
        """After the stop every child is stopped, nothing is scheduled, the listener counts as down."""
        self.notifier.watchdog_interval = 10.0
        self.start()
        self.connect("c1")
        self.successResultOf(self.daemon.stopService())
        self.assertFalse(self.daemon.running)
        for child in self.children.values():
            self.assertFalse(child.running, child.name)
        self.assertEqual(self.daemon.factory.connections, set())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertFalse(self.daemon.listening)
        self.assertEqual(self.daemon.metrics.listener_up._value.get(), 0)
        self.assertEqual(self.messages(LogLevel.info)[-1], "shutdown complete")

    def test_each_step_waits(self) -> None:
        """A step that is still running holds the next one back."""
        self.start()
        self.connect("c1", closes=False)
        listener_stopped: Deferred[None] = Deferred()
        self.children["listener"].stop_result = listener_stopped
        consumer_stopped: Deferred[None] = Deferred()
        self.children["rabbitmq"].stop_result = consumer_stopped
        stopping = self.daemon.stopService()
        self.assertEqual(self.calls, ["STOPPING=1", "stop listener"])
        listener_stopped.callback(None)
        # The consumer's stop runs while the clients answer their 1001; Redis waits for both.
        self.assertEqual(self.calls[-2:], ["1001 c1", "stop rabbitmq"])
        [connection] = self.daemon.factory.connections
        connection.gone()  # type: ignore[attr-defined]
        self.assertEqual(self.calls[-1], "stop rabbitmq")
        consumer_stopped.callback(None)
        self.assertEqual(self.calls[-2:], ["stop redis", "stop monitoring"])
        self.successResultOf(stopping)

    def test_redis_waits_for_the_clients_too(self) -> None:
        """The consumer stopped before the clients closed: Redis is closed only once they have."""
        self.start()
        self.connect("c1", closes=False)
        stopping = self.daemon.stopService()
        self.assertEqual(self.calls[-2:], ["1001 c1", "stop rabbitmq"])
        [connection] = self.daemon.factory.connections
        self.assertNotIn("stop redis", self.calls)
        connection.gone()  # type: ignore[attr-defined]
        self.assertEqual(self.calls[-2:], ["stop redis", "stop monitoring"])
        self.successResultOf(stopping)

    def test_clients_that_do_not_close_are_dropped(self) -> None:
        """Clients get WEBSOCKET_CLOSE_TIMEOUT + 1 seconds to close; then they are dropped."""
        self.start()
        self.connect("c1", closes=False)
        self.connect("c2")
        stopping = self.daemon.stopService()
        self.assertNoResult(stopping)
        self.reactor.advance(self.settings.websocket_close_timeout + 0.5)
        self.assertNoResult(stopping)
        self.reactor.advance(0.5)
        self.successResultOf(stopping)
        self.assertIn("drop c1", self.calls)
        self.assertNotIn("drop c2", self.calls)
        self.assertLess(self.calls.index("drop c1"), self.calls.index("stop redis"))

    def test_step_timeout(self) -> None:
        """A child that never finishes stopping is given up on after STOP_STEP_TIMEOUT."""
        self.start()
        self.children["rabbitmq"].stop_result = Deferred()
        stopping = self.daemon.stopService()
        self.assertEqual(self.calls[-1], "stop rabbitmq")
        self.reactor.advance(STOP_STEP_TIMEOUT)
        self.successResultOf(stopping)
        self.assertEqual(self.calls[-2:], ["stop redis", "stop monitoring"])
        self.assertTrue(any("rabbitmq took longer" in m for m in self.messages(LogLevel.warn)))

    def test_step_finished_in_the_turn_of_its_deadline(self) -> None:
        """
        A step whose end is read in the turn its deadline comes due (the
        process was busy, timers run before reads) finished in time: no warning.
        """
        self.start()
        self.children["rabbitmq"].stop_result = Deferred()
        stopping = self.daemon.stopService()
        self.reactor.callLater(STOP_STEP_TIMEOUT, self.children["rabbitmq"].stop_result.callback, None)
        self.reactor.advance(STOP_STEP_TIMEOUT)
        self.successResultOf(stopping)
        self.assertFalse(any("took longer" in m for m in self.messages(LogLevel.warn)))

    def test_bounded_total(self) -> None:
        """Even if every step hangs, the whole stop ends within a known bound."""
        self.start()
        self.connect("c1", closes=False)
        for child in self.children.values():
            child.stop_result = Deferred()
        stopping = self.daemon.stopService()
        # The listener; the clients' closes, with the consumer's stop alongside; Redis; monitoring.
        bound = 3 * STOP_STEP_TIMEOUT + max(self.settings.websocket_close_timeout + 1, STOP_STEP_TIMEOUT)
        steps = int(bound / 0.5)
        self.reactor.pump([0.5] * (steps - 1))
        self.assertNoResult(stopping)
        self.reactor.advance(0.5)
        self.successResultOf(stopping)
        self.assertEqual(self.calls[-2:], ["stop redis", "stop monitoring"])
        self.assertLess(self.calls.index("stop rabbitmq"), self.calls.index("drop c1"))
        self.assertLess(bound, 30, "the unit's TimeoutStopSec=30 must cover the whole stop")

    def test_failing_step_does_not_stop_the_rest(self) -> None:
        """A child whose stop fails is logged; the later steps still run."""
        self.start()
        self.children["redis"].stop_result = Deferred()
        self.children["redis"].stop_result.errback(RuntimeError("redis went away"))
        self.successResultOf(self.daemon.stopService())
        self.assertEqual(self.calls[-1], "stop monitoring")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_under_application(self) -> None:
        """Stopping twistd's Application stops the daemon the same way."""
        application = Application("peatio-ws")
        self.daemon.setServiceParent(application)
        root = IService(application)
        root.privilegedStartService()
        root.startService()
        self.connect("c1")
        self.successResultOf(root.stopService())
        self.assertEqual(
            self.calls[-5:], ["stop listener", "1001 c1", "stop rabbitmq", "stop redis", "stop monitoring"]
        )


class LogFormatTests(DaemonTestCase):
    def test_json_sets_application_observer(self) -> None:
        """LOG_FORMAT=json: joining twistd's Application installs the JSON observer."""
        daemon = self.build(settings=settings_for_tests(log_format="json"))
        application = Application("peatio-ws")
        daemon.setServiceParent(application)
        self.assertIsInstance(application.getComponent(ILogObserver), JSONLinesObserver)
        self.assertIn(daemon, list(IServiceCollection(application)))

    def test_text_leaves_default(self) -> None:
        """LOG_FORMAT=text: twistd's own text observer (no component)."""
        application = Application("peatio-ws")
        self.daemon.setServiceParent(application)
        self.assertIsNone(application.getComponent(ILogObserver, None))

    def test_existing_observer_kept(self) -> None:
        """An observer already set on the Application is not replaced."""
        application = Application("peatio-ws")
        mine = JSONLinesObserver(io.StringIO())
        application.setComponent(ILogObserver, mine)
        self.build(settings=settings_for_tests(log_format="json")).setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), mine)

    def test_plain_parent(self) -> None:
        """Under a plain MultiService (not twistd) nothing is installed and nothing breaks."""
        parent = MultiService()
        self.build(settings=settings_for_tests(log_format="json")).setServiceParent(parent)
        self.assertFalse(logs.install(parent))


class JSONObserverTests(SynchronousTestCase):
    def emit(self, write: Any) -> list[dict[str, Any]]:
        out = io.StringIO()
        observer = JSONLinesObserver(out)
        logger = Logger(namespace="peatio_ws.protocol", observer=observer)
        write(logger)
        return [json.loads(line) for line in out.getvalue().splitlines()]

    def test_one_line_per_event(self) -> None:
        """Each event is one JSON object on its own line with the named fields at top level."""
        [line] = self.emit(lambda log: log.info("connection {conn_id} authenticated as {uid}", conn_id="c7", uid="U1"))
        self.assertEqual(line["level"], "info")
        self.assertEqual(line["namespace"], "peatio_ws.protocol")
        self.assertEqual(line["message"], "connection c7 authenticated as U1")
        self.assertEqual(line["conn_id"], "c7")
        self.assertEqual(line["uid"], "U1")
        self.assertRegex(line["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
        self.assertNotIn("log_format", line)

    def test_secrets_redacted(self) -> None:
        """Fields named like secrets never reach the output, not even through the message."""
        [line] = self.emit(lambda log: log.warn("got {token} and {password}", token="eyJ.secret", password="hunter2"))
        text = json.dumps(line)
        self.assertNotIn("eyJ.secret", text)
        self.assertNotIn("hunter2", text)
        self.assertEqual(line["token"], "[redacted]")

    def test_failure(self) -> None:
        """log.failure adds the traceback and the error message."""

        def write(log: Logger) -> None:
            try:
                1 / 0  # noqa: B018
            except ZeroDivisionError:
                log.failure("handling {conn_id}", conn_id="c1")

        [line] = self.emit(write)
        self.assertEqual(line["level"], "critical")
        self.assertIn("ZeroDivisionError", line["failure"])
        self.assertEqual(line["error"], "division by zero")

    def test_odd_values(self) -> None:
        """Values JSON cannot carry are written as text; the line is still valid JSON."""
        [line] = self.emit(lambda log: log.info("x {obj}", obj=object(), items=("a", 1), raw=b"\xff"))
        self.assertTrue(line["obj"].startswith("<object object"))
        self.assertEqual(line["items"], ["a", 1])
        self.assertEqual(line["raw"], "b'\\xff'")

    def test_legacy_and_stdout_events(self) -> None:
        """Events from the legacy log.msg API and redirected stdout have a message too."""
        from twisted.python import log as legacy

        out = io.StringIO()
        observer = JSONLinesObserver(out)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        legacy.msg("Site starting on 8082")
        lines = [json.loads(x) for x in out.getvalue().splitlines()]
        self.assertIn("Site starting on 8082", [x["message"] for x in lines])

    def test_event_as_dict_failure_object(self) -> None:
        """A Failure given as log_failure becomes text."""
        event = {"log_format": "boom", "log_level": LogLevel.error, "log_failure": Failure(ValueError("bad"))}
        line = event_as_dict(event)
        self.assertEqual(line["message"], "boom")
        self.assertIn("ValueError", line["failure"])

    def test_factory(self) -> None:
        """json_observer() is the zero-argument factory twistd's --logger wants."""
        self.assertTrue(ILogObserver.providedBy(json_observer()))


class StopOnceTests(SynchronousTestCase):
    """L{stop_once_on_signals}: the first SIGTERM/SIGINT stops the reactor, later ones are only noted."""

    def test_second_signal_noted(self) -> None:
        reactor = MemoryReactorClock()
        calls: list[tuple[str, int]] = []
        reactor.sigTerm = lambda number, frame=None: calls.append(("term", number))  # type: ignore[attr-defined]
        reactor.sigInt = lambda number, frame=None: calls.append(("int", number))  # type: ignore[attr-defined]
        stop_once_on_signals(reactor)
        reactor.sigTerm(15, None)  # type: ignore[attr-defined]
        reactor.sigInt(2, None)  # type: ignore[attr-defined]
        reactor.sigTerm(15, None)  # type: ignore[attr-defined]
        self.assertEqual(calls, [("term", 15)])

    def test_shutdown_begun_otherwise(self) -> None:
        """A shutdown not begun by a signal counts too: a signal during it is noted."""
        reactor = MemoryReactorClock()
        calls: list[int] = []
        reactor.sigTerm = lambda number, frame=None: calls.append(number)  # type: ignore[attr-defined]
        reactor.sigInt = lambda number, frame=None: calls.append(number)  # type: ignore[attr-defined]
        stop_once_on_signals(reactor)
        [(trigger, _args, _kwargs)] = reactor.triggers["before"]["shutdown"]
        trigger()
        reactor.sigInt(2, None)  # type: ignore[attr-defined]
        self.assertEqual(calls, [])


class RememberedTokensTests(DaemonTestCase):
    """JWT_HANDOVER_FILE: the tokens one process verified, remembered by the next one it leaves them to."""

    def setUp(self) -> None:
        super().setUp()
        self.path = os.path.join(self.mktemp(), "tokens.json")
        os.makedirs(os.path.dirname(self.path))
        self.reactor.advance(1_700_000_000)
        self.settings = settings_for_tests(jwt_handover_file=self.path)
        self.daemon = self.build()

    def token(self, **claims: Any) -> str:
        return make_token(now=self.reactor.seconds(), **claims)

    def test_left_and_taken(self) -> None:
        """
        A stop leaves the verifier's tokens (unexpired) in a file of the user
        only; the next process takes it (removing it) and does not verify
        those tokens again.
        """
        kept = self.token(uid="ID000000001", exp=self.reactor.seconds() + 600)
        expired = self.token(uid="ID000000002", exp=self.reactor.seconds() + 5)
        self.start()
        self.daemon.verifier.verify(kept)
        self.daemon.verifier.verify(expired)
        self.reactor.advance(5)
        self.successResultOf(self.daemon.stopService())
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        self.assertIn(f"JWT_HANDOVER_FILE {self.path}: 1 remembered tokens left for the next process", self.messages())

        successor = self.build()
        checked: list[str] = []
        verify = successor.verifier._verified

        def counting(token: str) -> Claims:
            checked.append(token)
            return verify(token)

        self.patch(successor.verifier, "_verified", counting)
        successor.privilegedStartService()
        successor.startService()
        self.addCleanup(successor.stopService)
        self.assertFalse(os.path.exists(self.path))
        self.assertIn(
            f"JWT_HANDOVER_FILE {self.path}: 1 tokens the previous process verified are remembered", self.messages()
        )
        claims = successor.verifier.verify(kept)
        self.assertEqual((claims.uid, claims.expires_at), ("ID000000001", self.reactor.seconds() + 595))
        self.assertEqual(checked, [])
        self.assertEqual(self.assertRaises(AuthError, successor.verifier.verify, expired).reason, "expired")
        self.assertEqual(checked, [expired])

    def test_other_settings(self) -> None:
        """Tokens left under other JWT settings (another audience here) are not taken: one line says so."""
        token = self.token()
        self.start()
        self.daemon.verifier.verify(token)
        self.successResultOf(self.daemon.stopService())
        successor = self.build(settings=settings_for_tests(jwt_handover_file=self.path, jwt_audience=("other",)))
        successor.privilegedStartService()
        successor.startService()
        self.addCleanup(successor.stopService)
        self.assertIn(
            f"JWT_HANDOVER_FILE {self.path}: left under other JWT settings; every token is verified anew",
            self.messages(LogLevel.info),
        )
        self.assertEqual(successor.verifier.remembered(), [])
        self.assertFalse(os.path.exists(self.path))

    def test_bad_file(self) -> None:
        """A file that is not ours: one warning, removed, and the process starts as without it."""
        with open(self.path, "wb") as f:
            f.write(b"{not json")
        self.start()
        self.assertEqual(
            self.messages(LogLevel.warn),
            [f"JWT_HANDOVER_FILE {self.path}: not JSON; every token is verified anew"],
        )
        self.assertFalse(os.path.exists(self.path))
        self.assertTrue(self.daemon.listening)

    def test_cannot_write(self) -> None:
        """A file that cannot be written: one warning, and the stop goes on to the end."""
        os.rmdir(os.path.dirname(self.path))
        self.start()
        self.successResultOf(self.daemon.stopService())
        [warning] = self.messages(LogLevel.warn)
        self.assertTrue(warning.startswith(f"JWT_HANDOVER_FILE {self.path}: cannot write it: "), warning)
        self.assertEqual(self.messages(LogLevel.info)[-1], "shutdown complete")

    def test_left_first(self) -> None:
        """The file is written before the first client is told 1001 (a slow stop cannot lose it)."""
        self.start()
        self.connect("c1", closes=False)
        stopping = self.daemon.stopService()
        self.assertTrue(os.path.exists(self.path))
        self.reactor.advance(60)
        self.successResultOf(stopping)

    def test_unset(self) -> None:
        """Without JWT_HANDOVER_FILE nothing is read or written."""
        self.daemon = self.build(settings=settings_for_tests())
        self.start()
        self.daemon.verifier.verify(self.token())
        self.successResultOf(self.daemon.stopService())
        self.assertEqual(os.listdir(os.path.dirname(self.path)), [])
        self.assertFalse([m for m in self.messages() if "JWT_HANDOVER_FILE" in m])


class FakePort:
    """The listening port a restart in place leaves to the next program."""

    def fileno(self) -> int:
        return 99

    def getHost(self) -> Any:
        return None


class RestartInPlaceTests(DaemonTestCase):
    """
    SIGUSR2 (L{Daemon.restart_in_place}): the same ordered steps as a stop,
    except that connections that can be carried are frozen, not told 1001,
    and the program replaces itself (the exec replaced here by a recorder).
    """

    def setUp(self) -> None:
        super().setUp()
        directory = self.mktemp()
        os.mkdir(directory)
        # What the consumer's clean stop leaves (the fake consumer leaves nothing).
        self.queue_file = os.path.join(directory, "queue.json")
        with open(self.queue_file, "w") as f:
            f.write("{}")
        self.settings = settings_for_tests(rabbitmq_handover_file=self.queue_file)
        self.daemon = self.build()
        self.listener = self.children["listener"]

        def pause_accepting() -> bool:
            self.calls.append("pause listener")
            return True

        self.listener.pause_accepting = pause_accepting  # type: ignore[attr-defined]
        self.patch(service, "bound_port", lambda child: FakePort() if child is self.listener else None)
        self.unfinished: dict[str, str | None] = {}
        self.patch(handoff, "unfinished", lambda proto: self.unfinished.get(proto.name))
        self.patch(handoff, "freeze", lambda proto: self.calls.append(f"freeze {proto.name}"))
        self.patch(handoff, "capture", lambda proto: FakeCarried(proto.name))
        self.left: list[tuple[int, list[Any]]] = []

        def leave(listener: int, records: list[Any], books: dict[str, Any]) -> int:
            self.left.append((listener, records))
            self.books = books
            return 7

        self.patch(reexec, "leave", leave)
        self.exec_error: OSError | None = None

        def replace_process(state: int) -> None:
            self.calls.append(f"exec {state}")
            if self.exec_error is not None:
                raise self.exec_error

        self.patch(reexec, "replace_process", replace_process)

    def test_steps_in_order(self) -> None:
        """
        RELOADING=1; stop accepting; freeze who can be carried (nothing read
        from then on), 1001 to the others; stop consuming (the queue is left)
        and Redis, and wait for the others' close; close the monitoring port;
        leave the records; exec.
        """
        self.start()
        self.connect("c1").transport = FakeTransport([])  # type: ignore[attr-defined]
        self.connect("c2")
        self.unfinished["c2"] = "in the middle of a message"
        self.daemon.restart_in_place()
        self.assertEqual(self.calls[:2], ["RELOADING=1", "pause listener"])
        self.assertEqual(sorted(self.calls[2:4]), ["1001 c2", "freeze c1"])
        self.assertEqual(self.calls[4:], ["stop rabbitmq", "stop redis", "stop monitoring", "exec 7"])
        self.assertEqual(self.left, [(99, [{"name": "c1"}])])
        # The clock did not move: the steps took no time.
        line = "restart in place: 1 connections carried, 1 told 1001, in 0.00 s; starting again"
        self.assertIn(line, self.messages())

    def test_queue_not_left(self) -> None:
        """A consumer that did not leave the queue: everyone is told 1001 (the next program starts empty)."""
        os.unlink(self.queue_file)
        self.start()
        self.connect("c1").transport = FakeTransport(self.calls)  # type: ignore[attr-defined]
        self.daemon.restart_in_place()
        self.assertEqual(self.calls[2:], ["freeze c1", "stop rabbitmq", "stop redis", "resume", "1001 c1",
                                          "stop monitoring", "exec 7"])
        self.assertEqual(self.left, [(99, [])])
        self.assertEqual(
            self.messages(LogLevel.warn),
            ["restart in place: the queue was not left for the next program; every client is told 1001"],
        )

    def refused(self, why: str) -> None:
        self.daemon.restart_in_place()
        self.assertEqual(self.messages(LogLevel.warn), [f"restart in place refused: {why}; nothing changed"])
        self.assertEqual(self.calls, [])

    def test_refused_without_queue_handover(self) -> None:
        self.daemon = self.build(settings=settings_for_tests())
        self.start()
        self.refused("RABBITMQ_HANDOVER_FILE is not set, and the queue must outlive the program")

    def test_refused_with_tls(self) -> None:
        self.daemon = self.build(
            settings=replace(self.settings, websocket_ssl_key="/k.pem", websocket_ssl_cert="/c.pem")
        )
        self.start()
        self.refused("TLS ends in this process, and a TLS session cannot be carried")

    def test_refused_before_start_and_twice(self) -> None:
        self.refused("the daemon is starting or stopping")
        self.start()
        self.daemon._restarting = True
        del self.log_events[:]
        self.refused("one is under way")

    def test_refused_without_own_port(self) -> None:
        self.patch(service, "bound_port", lambda child: None)
        self.start()
        self.refused("the WebSocket port is not this daemon's own")

    def test_exec_fails(self) -> None:
        """An exec that fails: one critical line, the frozen read again, and the daemon stops (systemd restarts it)."""
        self.exec_error = OSError(2, "No such file or directory")
        self.start()
        conn = self.connect("c1")
        resumed: list[str] = []
        conn.transport = FakeTransport(resumed)  # type: ignore[attr-defined]
        self.daemon.restart_in_place()
        self.assertEqual(
            self.messages(LogLevel.critical), ["restart in place failed: No such file or directory; stopping"]
        )
        self.assertEqual(resumed, ["resume"])
        self.assertFalse(self.daemon._restarting)
        self.assertFalse(self.reactor.running)


class FakeCarried:
    def __init__(self, name: str) -> None:
        self.name = name

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name}


class FakeTransport:
    connected = True

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def resumeProducing(self) -> None:
        self.calls.append("resume")
