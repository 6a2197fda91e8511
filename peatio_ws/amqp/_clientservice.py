# -*- test-case-name: tests.unit.test_amqp,tests.unit.test_amqp_clientservice_door -*-
"""
Making a failed connection attempt safe with Twisted's C{ClientService}.
Written against Twisted 26.10.0 (setup.py allows C{>=24.7,<27}); it uses no
private name of Twisted, but relies on how C{ClientService} behaves, which
C{tests/unit/test_amqp_clientservice_door.py} checks (failing with what
changed):

 1. The flaw worked around. When C{prepareConnection} fails,
    C{ClientService} leaves that connection open, and when it later closes,
    the service's state machine raises C{automat.NoTransition} from the
    protocol's C{connectionLost}. A login the broker refuses after TCP
    connected (C{AMQEndpoint.connect} failing) ends the same way.

 2. How the service sees a connection. It connects with
    C{endpoint.connect(factory)}, where C{factory} wraps ours: its
    C{buildProtocol} returns a proxy of our protocol that passes attribute
    reads through to it (so C{proxy.unwrap()} reaches our protocol) and
    whose C{connectionLost} is how the service learns the connection is
    gone; the factory wrapper also passes attribute reads through (so
    C{AMQEndpoint} can call C{set_vhost} on our factory). The endpoint's
    Deferred must fire with that proxy.

So L{GuardedEndpoint} puts a L{_Guard} between the transport and the proxy:
until the consumer says the connection is accepted (set-up finished,
C{guard.accepted = True}), a lost connection goes to our protocol only, and
a failed attempt's connection is aborted; the service hears only of
connections it was told succeeded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["GuardedEndpoint", "GuardedProtocol", "accept"]


class GuardedProtocol(Protocol):
    """What the guard needs of the protocol behind ClientService's proxy."""

    guard: Any

    def unwrap(self) -> GuardedProtocol:
        """The protocol itself (called through the proxy)."""
        ...

    def abort(self) -> None:
        """Drop the connection at once."""
        ...

    def dataReceived(self, data: bytes) -> None: ...

    def connectionLost(self, reason: Failure) -> None: ...


class _Guard:
    """
    Sits between the transport and ClientService's protocol proxy; tells the
    service of the loss of a connection only once it was C{accepted}.
    """

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy
        self.client: GuardedProtocol = proxy.unwrap()
        self.client.guard = self
        self.accepted = False

    def makeConnection(self, transport: Any) -> None:
        self.proxy.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.client.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:
        if self.accepted:
            self.proxy.connectionLost(reason)
        else:
            self.client.connectionLost(reason)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.proxy, name)


class _GuardFactory:
    """Wraps ClientService's factory for one attempt; remembers the guard."""

    def __init__(self, factory: IProtocolFactory) -> None:
        self._factory = factory
        self.guard: _Guard | None = None

    def buildProtocol(self, addr: Any) -> _Guard | None:
        proxy = self._factory.buildProtocol(addr)
        if proxy is None:
            return None
        self.guard = _Guard(proxy)
        return self.guard

    def __getattr__(self, name: str) -> Any:
        return getattr(self._factory, name)


@implementer(IStreamClientEndpoint)
class GuardedEndpoint:
    """
    C{endpoint} (which connects and logs in) with a time limit on the whole
    attempt, a failed attempt's connection aborted, and the guard.
    C{attempting()} is called as each attempt starts, C{failed(failure)}
    when one fails.
    """

    def __init__(
        self,
        endpoint: Any,
        clock: IReactorTime,
        timeout: float,
        attempting: Callable[[], None],
        failed: Callable[[Failure], None],
        description: str,
    ) -> None:
        self._description = description
        self._endpoint = endpoint
        self._clock = clock
        self._timeout = timeout
        self._attempting = attempting
        self._failed = failed

    def __repr__(self) -> str:
        return f"<RabbitMQ {self._description}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        self._attempting()
        guarded = _GuardFactory(protocolFactory)
        d: Deferred[Any] = self._endpoint.connect(guarded)
        d.addTimeout(self._timeout, self._clock)

        def connected(guard: _Guard) -> Any:
            return guard.proxy

        def failed(failure: Failure) -> Failure:
            if guarded.guard is not None:
                guarded.guard.client.abort()
            self._failed(failure)
            return failure

        return d.addCallbacks(connected, failed)


def accept(client: GuardedProtocol) -> None:
    """Set-up finished: from now on ClientService hears when C{client}'s connection is lost."""
    client.guard.accepted = True
