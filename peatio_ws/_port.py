# -*- test-case-name: tests.unit.test_port_door -*-
"""
The one door to Twisted's listening TCP port beyond L{IListeningPort}.
Written against Twisted 26.10.0; L{tests.unit.test_port_door} fails, naming
what changed, when an upgrade moves anything relied on here.

Why: a restarted daemon is met by all its clients at once. Until its
RabbitMQ consumer consumes, it should accept none of them (they would take
the reactor before the AMQP handshake and wait for bindings made only after
them), yet keep the port bound, so they wait in the kernel's accept queue
rather than being refused. L{IListeningPort} can only stop listening.

And: Twisted accepts, per poll, as many connections as the port's
adaptive C{numberAccepts} (100 at first, 20 more after every full round).
In a reconnect storm that grows past the daemon's cap on sockets still in
their upgrade request, and every socket accepted beyond it is answered 503,
a client that comes back seconds later, where the kernel's queue would have
held it. L{accept_at_most} bounds each round by the room left.

Relied on: what C{listenTCP} and C{adoptStreamPort} return is a
L{twisted.internet.tcp.Port}, a C{FileDescriptor} whose C{stopReading} and
C{startReading} take it out of the reactor's poll and put it back, and whose
C{connected} is true from C{startListening} until the port is closed; that
its C{doRead} accepts at most C{self.numberAccepts} connections and is
looked up on the instance by the reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp

__all__ = ["accept_at_most", "pause_accepting", "resume_accepting"]


def pause_accepting(port: Any) -> bool:
    """Stop accepting on C{port} (its connections wait in the kernel); False for a port of another kind."""
    if not isinstance(port, tcp.Port) or not port.connected:
        return False
    port.stopReading()
    return True


def resume_accepting(port: Any) -> None:
    """Accept on C{port} again, unless it was closed meanwhile."""
    if isinstance(port, tcp.Port) and port.connected:
        port.startReading()


def accept_at_most(port: Any, room: Callable[[], int]) -> bool:
    """
    From now on C{port} accepts, per poll, at most C{room()} connections
    (at least one, so a full cap still answers someone and the port's
    readiness is never left unread); Twisted's own adaptive bound still
    applies below that. False for a port of another kind.
    """
    if not isinstance(port, tcp.Port):
        return False
    accept = port.doRead

    def bounded() -> Any:
        port.numberAccepts = max(1, min(port.numberAccepts, room()))
        return accept()

    port.doRead = bounded  # type: ignore[method-assign]
    return True
