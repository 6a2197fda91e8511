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
held it. L{accept_at_most} bounds each round by the room left, and while
there is none leaves the port out of the poll, looking again every
L{ROOM_RECHECK} seconds.

The port is out of the poll while any reason holds it (the consumer not
consuming yet, no room), and back once none does.

Relied on: what C{listenTCP} and C{adoptStreamPort} return is a
L{twisted.internet.tcp.Port}, a C{FileDescriptor} whose C{stopReading} and
C{startReading} take it out of the reactor's poll and put it back, whose
C{connected} is true from C{startListening} until the port is closed, and
whose C{reactor} is the one it listens on; that its C{doRead} accepts at
most C{self.numberAccepts} connections and is looked up on the instance by
the reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp

__all__ = ["ROOM_RECHECK", "accept_at_most", "forget", "pause_accepting", "resume_accepting"]

#: While a port bounded by L{accept_at_most} has no room, how often (seconds) it looks again.
ROOM_RECHECK = 0.01

_CONSUMER = "consumer"
_ROOM = "room"
#: Where a bounded port keeps its pending look at the room (a DelayedCall).
_RECHECK = "_peatio_room_recheck"


def _holds(port: tcp.Port) -> set[str]:
    """The reasons holding C{port} out of the reactor's poll (kept on the port)."""
    holds: set[str] | None = port.__dict__.get("_peatio_holds")
    if holds is None:
        holds = port.__dict__["_peatio_holds"] = set()
    return holds


def _hold(port: tcp.Port, reason: str) -> None:
    _holds(port).add(reason)
    port.stopReading()


def _release(port: tcp.Port, reason: str) -> None:
    holds = _holds(port)
    holds.discard(reason)
    if not holds and port.connected:
        port.startReading()


def pause_accepting(port: Any) -> bool:
    """Stop accepting on C{port} (its connections wait in the kernel); False for a port of another kind."""
    if not isinstance(port, tcp.Port) or not port.connected:
        return False
    _hold(port, _CONSUMER)
    return True


def resume_accepting(port: Any) -> None:
    """Accept on C{port} again, unless it was closed meanwhile (or has no room: L{accept_at_most})."""
    if isinstance(port, tcp.Port):
        _release(port, _CONSUMER)


def accept_at_most(port: Any, room: Callable[[], int], clock: Any = None) -> bool:
    """
    From now on C{port} accepts, per poll, at most C{room()} connections
    (Twisted's own adaptive bound still applies below that). With no room
    it accepts none: it leaves the poll (its connections wait in the
    kernel's queue) and comes back once C{room()} is positive again, looked
    at every L{ROOM_RECHECK} seconds on C{clock} (the port's reactor by
    default). False for a port of another kind.
    """
    if not isinstance(port, tcp.Port):
        return False
    accept = port.doRead
    if clock is None:
        clock = port.reactor

    def recheck() -> None:
        port.__dict__.pop(_RECHECK, None)
        if not port.connected:
            return
        if room() > 0:
            _release(port, _ROOM)
        else:
            port.__dict__[_RECHECK] = clock.callLater(ROOM_RECHECK, recheck)

    def bounded() -> Any:
        space = room()
        if space <= 0:
            if _ROOM not in _holds(port):
                _hold(port, _ROOM)
                port.__dict__[_RECHECK] = clock.callLater(ROOM_RECHECK, recheck)
            return None
        port.numberAccepts = min(port.numberAccepts, space)
        return accept()

    port.doRead = bounded  # type: ignore[method-assign]
    return True


def forget(port: Any) -> None:
    """C{port} is closing: no more looks at its room (nothing left scheduled)."""
    if isinstance(port, tcp.Port):
        call = port.__dict__.pop(_RECHECK, None)
        if call is not None and call.active():
            call.cancel()
