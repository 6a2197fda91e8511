"""
The door test of L{peatio_ws.amqp._clientservice}: how Twisted's
C{ClientService} behaves, where the guard relies on it (numbered as in the
module's docstring), checked against the Twisted installed. Written against
Twisted 26.10.0. A failure says what changed; review C{_clientservice.py}
(and, if the flaw is fixed, whether the guard is still needed).

Then the guard itself, with the real C{ClientService} and a fake endpoint.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from automat import NoTransition
from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from peatio_ws.amqp import _clientservice

WRITTEN_AGAINST = "26.10.0"
INSTALLED = importlib.metadata.version("twisted")


class Client(Protocol):
    """A protocol as the guard wants one (unwrap, abort, guard)."""

    def __init__(self) -> None:
        self.guard: Any = None
        self.received: list[bytes] = []
        self.lost: list[Failure] = []
        self.aborted = False

    def unwrap(self) -> Client:
        return self

    def abort(self) -> None:
        self.aborted = True

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost.append(reason)


class ClientFactory(Factory):
    protocol = Client
    extra = "reached"


@implementer(IStreamClientEndpoint)
class Endpoint:
    """Connects at once (or fails when told), recording what it was given and built."""

    def __init__(self) -> None:
        self.factories: list[Any] = []
        self.built: list[Any] = []
        self.refuse = False

    def connect(self, factory: Any) -> Deferred[Any]:
        self.factories.append(factory)
        if self.refuse:
            return fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.built.append(protocol)
        return succeed(protocol)


class ClientServiceDoorTests(SynchronousTestCase):
    def check(self, ok: object, piece: str, what: str) -> None:
        if not ok:
            self.fail(
                f"Twisted {INSTALLED} changed: {what}. peatio_ws/amqp/_clientservice.py (written against "
                f"Twisted {WRITTEN_AGAINST}) relies on it for {piece}; review it."
            )

    def service(self, prepare: Any) -> tuple[ClientService, Endpoint, Clock]:
        clock = Clock()
        endpoint = Endpoint()
        service = ClientService(endpoint, ClientFactory(), clock=clock, prepareConnection=prepare)
        service.startService()
        self.addCleanup(service.stopService)
        return service, endpoint, clock

    def test_flaw_still_there(self) -> None:
        """
        1. After prepareConnection fails, the connection stays open, and its
        later connectionLost raises NoTransition (what the guard is for).
        """
        _, endpoint, _ = self.service(lambda proxy: fail(ValueError("set-up failed")))
        [proxy] = endpoint.built
        self.check(
            not proxy.transport.disconnecting,
            "1. the flaw worked around",
            "ClientService now closes a connection whose prepareConnection failed (the guard may be unneeded)",
        )
        try:
            proxy.connectionLost(Failure(ConnectionDone()))
        except NoTransition:
            pass
        else:
            self.check(False, "1. the flaw worked around", "a failed attempt's connectionLost no longer raises")

    def test_proxy_passes_attributes(self) -> None:
        """2. The protocol the service hands out passes attribute reads through (unwrap)."""
        prepared: list[Any] = []
        self.service(lambda proxy: prepared.append(proxy))
        [proxy] = prepared
        self.check(isinstance(proxy.unwrap(), Client), "2. how the service sees a connection", "proxy.unwrap()")
        self.check(proxy is not proxy.unwrap(), "2. how the service sees a connection", "no proxy any more")

    def test_prepare_gets_what_connect_gave(self) -> None:
        """2. prepareConnection is given what the endpoint's Deferred fired with."""
        prepared: list[Any] = []
        _, endpoint, _ = self.service(lambda proxy: prepared.append(proxy))
        self.check(prepared == endpoint.built, "2. how the service sees a connection", "prepareConnection's argument")

    def test_factory_passes_attributes(self) -> None:
        """2. The factory given to the endpoint is a wrapper passing attribute reads through to ours."""
        _, endpoint, _ = self.service(lambda proxy: None)
        [factory] = endpoint.factories
        self.check(not isinstance(factory, ClientFactory), "2. how the service sees a connection", "no wrapper")
        self.check(getattr(factory, "extra", None) == "reached", "2.", "the factory wrapper hides our attributes")

    def test_loss_through_proxy_reconnects(self) -> None:
        """2. connectionLost on the proxy reaches the protocol and makes the service connect again."""
        _, endpoint, clock = self.service(lambda proxy: None)
        [proxy] = endpoint.built
        proxy.connectionLost(Failure(ConnectionDone()))
        self.check(len(proxy.unwrap().lost) == 1, "2. how the service sees a connection", "the loss skips the protocol")
        clock.advance(120)
        self.check(len(endpoint.built) == 2, "2. how the service sees a connection", "no reconnect after a loss")


class GuardTests(SynchronousTestCase):
    """GuardedEndpoint with the real ClientService."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.inner = Endpoint()
        self.attempts = 0
        self.failures: list[Failure] = []
        self.endpoint = _clientservice.GuardedEndpoint(
            self.inner, self.clock, 30.0, self.attempting, self.failures.append, "broker:5672"
        )

    def attempting(self) -> None:
        self.attempts += 1

    def start(self, prepare: Any) -> ClientService:
        service = ClientService(self.endpoint, ClientFactory(), clock=self.clock, prepareConnection=prepare)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def test_failed_set_up_is_dropped_quietly(self) -> None:
        """prepareConnection failing: the loss of that connection goes to the protocol only; the service retries."""
        self.start(lambda proxy: fail(ValueError("set-up failed")))
        [guard] = self.inner.built
        client = guard.client
        guard.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(client.lost), 1)
        self.clock.advance(120)
        self.assertEqual(self.attempts, 2)

    def test_accepted_loss_tells_the_service(self) -> None:
        """Once accepted, a lost connection is the service's to handle: it connects again."""
        self.start(lambda proxy: _clientservice.accept(proxy.unwrap()))
        [guard] = self.inner.built
        self.assertTrue(guard.accepted)
        guard.dataReceived(b"x")
        self.assertEqual(guard.client.received, [b"x"])
        guard.connectionLost(Failure(ConnectionDone()))
        self.clock.advance(120)
        self.assertEqual(len(self.inner.built), 2)

    def test_failed_attempt_reported(self) -> None:
        """A failed attempt is reported (and retried)."""
        self.inner.refuse = True
        self.start(lambda proxy: None)
        self.assertEqual(len(self.failures), 1)
        self.failures[0].trap(ConnectionRefusedError)

    def test_timeout_aborts(self) -> None:
        """An attempt not done within the time limit is given up on, its connection aborted."""

        class Hanging(Endpoint):
            def connect(self, factory: Any) -> Deferred[Any]:
                protocol = factory.buildProtocol(None)
                protocol.makeConnection(StringTransport())
                self.built.append(protocol)
                return Deferred()

        self.inner = Hanging()
        self.endpoint = _clientservice.GuardedEndpoint(
            self.inner, self.clock, 30.0, self.attempting, self.failures.append, "broker:5672"
        )
        self.start(lambda proxy: None)
        self.clock.advance(30)
        self.assertTrue(self.inner.built[0].client.aborted)
        self.assertEqual(len(self.failures), 1)

    def test_repr(self) -> None:
        self.assertEqual(repr(self.endpoint), "<RabbitMQ broker:5672>")
