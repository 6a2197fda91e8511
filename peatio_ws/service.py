# -*- test-case-name: peatio_ws.test.test_service -*-
"""
The daemon's service tree and its ordered, graceful shutdown.

Children start in the order they are added (monitoring, Redis, RabbitMQ, then
the WebSocket listener last, so nobody connects before the parts behind it are
starting). L{MultiService} would stop them all at once; L{Daemon.stopService}
instead stops them in order: stop accepting, close every client with 1001,
stop consuming, close Redis, and last the monitoring port.
"""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, TimeoutError, maybeDeferred
from twisted.internet.endpoints import quoteStringArgument
from twisted.logger import Logger
from twisted.web.server import Site

from peatio_ws.auth import TokenVerifier
from peatio_ws.config import Settings
from peatio_ws.http import monitoring_root
from peatio_ws.metrics import Metrics
from peatio_ws.protocol import StreamFactory
from peatio_ws.registry import Registry

__all__ = ["Daemon", "listen_description"]

log = Logger()


def listen_description(settings: Settings) -> str:
    """The WebSocket listener as a Twisted endpoint description (tcp or ssl)."""
    host = quoteStringArgument(settings.websocket_host)
    if settings.tls:
        key = quoteStringArgument(settings.websocket_ssl_key or "")
        cert = quoteStringArgument(settings.websocket_ssl_cert or "")
        return f"ssl:port={settings.websocket_port}:interface={host}:privateKey={key}:certKey={cert}"
    return f"tcp:port={settings.websocket_port}:interface={host}"


class _QuietSite(Site):
    """No access-log line for every health probe and metrics scrape."""

    def log(self, request: Any) -> None:
        pass


class Daemon(MultiService):
    """Everything one peatio-ws process runs, wired together."""

    def __init__(self, settings: Settings, reactor: Any) -> None:
        super().__init__()
        # Imported here: txredisapi installs the global reactor on import, so
        # it must never be imported by the plugin module.
        from peatio_ws.amqp import EventConsumer
        from peatio_ws.redis import RevocationService

        self.settings = settings
        self.reactor = reactor
        self.metrics = Metrics()
        self.registry = Registry(self.metrics)
        self.verifier = TokenVerifier(settings, reactor)
        self.revocation = RevocationService(settings, self.registry, self.metrics, reactor)
        self.consumer = EventConsumer(settings, self.registry, self.metrics, reactor)
        scheme = "wss" if settings.tls else "ws"
        self.factory = StreamFactory(
            settings,
            self.registry,
            self.verifier,
            self.metrics,
            reactor,
            self.revocation,
            url=f"{scheme}://{settings.websocket_host}:{settings.websocket_port}",
        )
        self.listening = False
        self.monitoring: IService = strports.service(
            f"tcp:port={settings.metrics_port}:interface={quoteStringArgument(settings.metrics_host)}",
            _QuietSite(monitoring_root(self.metrics, self.health_checks())),
            reactor=reactor,
        )
        self.listener: IService = strports.service(listen_description(settings), self.factory, reactor=reactor)
        for child in (self.monitoring, self.revocation, self.consumer, self.listener):
            child.setServiceParent(self)

    def health_checks(self) -> dict[str, Any]:
        """What /health reports, each a callable returning True when up."""
        return {
            "listener": lambda: self.listening,
            "rabbitmq": lambda: self.consumer.up,
            "redis": lambda: self.revocation.up,
        }

    def startService(self) -> None:
        super().startService()
        # strports services bind synchronously and raise on failure, so the
        # port is listening once this line is reached.
        self.listening = True
        self.metrics.listener_up.set(1)
        self.factory.start_pinging()
        log.info(
            "peatio-ws listening on {scheme}://{host}:{port}; health and metrics on {mhost}:{mport}",
            scheme="wss" if self.settings.tls else "ws",
            host=self.settings.websocket_host,
            port=self.settings.websocket_port,
            mhost=self.settings.metrics_host,
            mport=self.settings.metrics_port,
        )

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        log.info("shutting down: closing {count} connections", count=len(self.factory.connections))
        await self._stop_child(self.listener)
        self.listening = False
        self.metrics.listener_up.set(0)
        closing = self.factory.close_all()
        closing.addTimeout(self.settings.websocket_close_timeout + 1, self.reactor)
        try:
            await closing
        except TimeoutError:
            for proto in self.factory.live():
                proto.dropConnection(abort=True)
        await self._stop_child(self.consumer)
        await self._stop_child(self.revocation)
        await self._stop_child(self.monitoring)
        log.info("shutdown complete")

    async def _stop_child(self, child: IService) -> None:
        try:
            await maybeDeferred(child.stopService)
        except Exception:
            log.failure("stopping {service}", service=type(child).__name__)

