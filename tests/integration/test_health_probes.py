"""
Issue 12, item 7, against the real servers: /health of the real daemon
turns 503 within about HEALTH_PROBE_TIMEOUT + HEALTH_PROBE_INTERVAL of
Redis freezing (a private redis-server this test starts and SIGSTOPs), and
of the broker link going silent (a TCP proxy in front of the local RabbitMQ
that stops forwarding), and 200 again once they answer.

No server this test did not start is ever signalled. Waits poll with a
generous deadline; the measured figures are printed (and appended to
chaos-figures.txt in the trial directory).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure

from peatio_ws.testing import make_token
from tests.support.broker import PORT as BROKER_PORT
from tests.support.cases import ChaosTestCase, new_uid
from tests.support.daemon import DaemonProcess
from tests.support.figures import record
from tests.support.reactor_client import ws_connect
from tests.support.servers import private_redis
from tests.support.waiting import sleep, until

#: The global reactor, untyped (its zope interfaces are opaque to mypy here).
reactor: Any = _reactor

#: What the daemons here are told (the defaults): figures are for real settings.
PROBE_INTERVAL = 2.0
PROBE_TIMEOUT = 5.0
#: Generous deadlines for "within timeout + interval" (a loaded 2-core machine).
DOWN_DEADLINE = PROBE_TIMEOUT + PROBE_INTERVAL + 8.0
UP_DEADLINE = 30.0


class _Pipe(Protocol):
    """One side of a proxied connection; holds what it receives while the proxy is frozen."""

    def __init__(self, proxy: FreezableProxy) -> None:
        self.proxy = proxy
        self.peer: _Pipe | None = None
        self.held: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        if self.proxy.frozen or self.peer is None or self.peer.transport is None:
            self.held.append(data)
            return
        self.peer.transport.write(data)

    def flush(self) -> None:
        held, self.held = self.held, []
        if held and self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(b"".join(held))

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.proxy.pipes.discard(self)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class FreezableProxy(Factory):
    """
    TCP proxy to the local RabbitMQ. L{freeze} stops forwarding in both
    directions (what a half-open link looks like to both ends: TCP still
    up, nothing arriving); L{thaw} forwards what was held and goes on.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.pipes: set[_Pipe] = set()
        self.connections = 0

    def buildProtocol(self, addr: Any) -> _Pipe:
        inbound = _Pipe(self)
        self.pipes.add(inbound)
        self.connections += 1
        outbound = _Pipe(self)
        self.pipes.add(outbound)
        inbound.peer, outbound.peer = outbound, inbound

        class Connect(ClientFactory):
            def buildProtocol(self, addr: Any) -> _Pipe:
                return outbound

            def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
                if inbound.transport is not None:
                    inbound.transport.loseConnection()

        def connected() -> None:
            # Anything the client sent before the upstream was there.
            if not self.frozen:
                inbound.flush()

        connector = reactor.connectTCP("127.0.0.1", self.target_port, Connect())
        outbound.connectionMade = connected  # type: ignore[method-assign]
        self.connector = connector
        return inbound

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False
        for pipe in list(self.pipes):
            pipe.flush()

    def close_all(self) -> None:
        for pipe in list(self.pipes):
            if pipe.transport is not None:
                pipe.transport.abortConnection()  # type: ignore[attr-defined]


class HealthProbeTests(ChaosTestCase):
    timeout = 180
    wait_healthy = False

    def start_daemon(self, **env: str) -> DaemonProcess:
        """A real daemon on the default probe settings; /health polled without blocking the reactor."""
        probes = {"HEALTH_PROBE_INTERVAL": str(PROBE_INTERVAL), "HEALTH_PROBE_TIMEOUT": str(PROBE_TIMEOUT)}
        return super().start_daemon(**{**probes, **env})

    def status(self, daemon: DaemonProcess) -> tuple[int, Any]:
        try:
            return daemon.health()
        except OSError:
            return 0, None

    async def wait_status(self, daemon: DaemonProcess, want: int, seconds: float, what: str) -> tuple[float, Any]:
        """Poll /health every 50 ms until it answers C{want}; (seconds taken, body)."""
        started = time.monotonic()
        body: Any = None

        def reached() -> bool:
            nonlocal body
            code, body = self.status(daemon)
            return code == want

        await until(reached, seconds, what, interval=0.05)
        return time.monotonic() - started, body

    async def test_redis_frozen(self) -> None:
        """
        A private Redis SIGSTOPped: /health turns 503 naming redis (stalled)
        within the probe timeout + interval, peatio_ws_redis_up drops to 0,
        and a login (deny) is refused without waiting; SIGCONT: 200 again.
        """
        redis = private_redis(self)
        daemon = self.start_daemon(REDIS_URL=redis.url, REDIS_REVOCATION_WHEN_DOWN="deny")
        await self.wait_status(daemon, 200, UP_DEADLINE, "the daemon to be healthy")
        await sleep(PROBE_INTERVAL)

        redis.freeze()
        to_503, body = await self.wait_status(daemon, 503, DOWN_DEADLINE, "/health 503 after Redis froze")
        self.assertEqual(body["down"], ["redis"])
        self.assertIn(body["components"]["redis"], ("stalled", "down"))
        self.assertIn("peatio_ws_redis_up 0.0", daemon.metrics())
        # deny: a login now fails at once, not after a check timed out.
        client = await ws_connect(daemon.port)
        self.addCleanup(client.abort)
        started = time.monotonic()
        reply = await client.login(make_token(uid=new_uid()))
        login_seconds = time.monotonic() - started
        self.assertEqual(reply, {"error": {"message": "Authentication failed."}})

        redis.thaw()
        to_200, _ = await self.wait_status(daemon, 200, UP_DEADLINE, "/health 200 after Redis resumed")
        self.assertIn("peatio_ws_redis_up 1.0", daemon.metrics())
        record(
            "health: Redis frozen (SIGSTOP) and resumed",
            {
                "HEALTH_PROBE_INTERVAL / TIMEOUT": f"{PROBE_INTERVAL:g} / {PROBE_TIMEOUT:g} s",
                "seconds from SIGSTOP to 503": round(to_503, 2),
                "redis state reported": body["components"]["redis"],
                "seconds for a refused login while stalled (deny)": round(login_seconds, 3),
                "seconds from SIGCONT to 200": round(to_200, 2),
            },
        )
        self.assertLessEqual(to_503, DOWN_DEADLINE)

    async def test_broker_link_silent(self) -> None:
        """
        The daemon's broker link through a proxy that stops forwarding: /health
        turns 503 naming rabbitmq within the probe timeout + interval; when the
        proxy forwards again, 200.
        """
        proxy = FreezableProxy(BROKER_PORT)
        listening = reactor.listenTCP(0, proxy, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.addCleanup(proxy.close_all)
        daemon = self.start_daemon(RABBITMQ_HOST="127.0.0.1", RABBITMQ_PORT=str(listening.getHost().port))
        await self.wait_status(daemon, 200, UP_DEADLINE, "the daemon to be healthy")
        await sleep(PROBE_INTERVAL)

        proxy.freeze()
        to_503, body = await self.wait_status(daemon, 503, DOWN_DEADLINE, "/health 503 after the broker link froze")
        self.assertEqual(body["down"], ["rabbitmq"])
        self.assertIn("peatio_ws_rabbitmq_up 0.0", daemon.metrics())

        proxy.thaw()
        to_200, _ = await self.wait_status(daemon, 200, UP_DEADLINE, "/health 200 after the link resumed")
        record(
            "health: broker link silent (proxy frozen) and resumed",
            {
                "HEALTH_PROBE_INTERVAL / TIMEOUT": f"{PROBE_INTERVAL:g} / {PROBE_TIMEOUT:g} s",
                "seconds from freeze to 503": round(to_503, 2),
                "seconds from thaw to 200": round(to_200, 2),
                "connections through the proxy": proxy.connections,
            },
        )
        daemon.wait_log("did not answer a health probe")
        self.assertLessEqual(to_503, DOWN_DEADLINE)
