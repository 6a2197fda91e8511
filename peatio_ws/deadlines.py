# -*- test-case-name: tests.unit.test_deadlines -*-
"""
Keys that fall due a fixed delay after they were added, kept by one timer:
the handshakes' deadlines (L{peatio_ws.websocket.admission}) and the members
due to be unbound (L{peatio_ws.amqp.bindings}). A reconnect storm or a
shutdown adds or removes thousands at once: each costs a dict entry, not a
reactor timer of its own (a heap push and a cancel each).

And deadlines decided after the next read (L{LateCall}, L{add_late_timeout}):
the shutdown's bounds, which a turn spent telling thousands of clients 1001
would otherwise find passed while the answers they wait for sit unread, and
the RabbitMQ and Redis health probes (a process paused by SIGSTOP or a VM
migration finds its answers waiting).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

__all__ = ["Deadlines", "LateCall", "add_late_timeout"]

K = TypeVar("K", bound=Hashable)


class Deadlines(Generic[K]):
    """
    Each key is due C{delay} seconds after L{add}; C{due(keys)} is called
    with those whose time has come, oldest first, and only with some. One
    delay for all makes insertion order due order, so a sweep stops at the
    first key still in time and sets the timer for it. A key is late when
    its time is more than C{slack} seconds away (the timer may fire a
    rounding error early). The timer runs only while a key waits.
    """

    def __init__(
        self, clock: IReactorTime, delay: float, due: Callable[[list[K]], object], slack: float = 0.0
    ) -> None:
        self._clock = clock
        self._delay = delay
        self._due = due
        self._slack = slack
        self._when: dict[K, float] = {}
        self._call: IDelayedCall | None = None

    def add(self, key: K) -> None:
        """C{key} falls due C{delay} seconds from now."""
        self._when[key] = self._clock.seconds() + self._delay
        if self._call is None:
            self._call = self._clock.callLater(self._delay, self._sweep)

    def discard(self, key: K) -> None:
        """C{key} no longer waits (if it did); with none left, neither does the timer."""
        when = self._when
        if when.pop(key, None) is not None and not when and self._call is not None:
            self._call.cancel()
            self._call = None

    def clear(self) -> list[K]:
        """Forget every key and stop the timer; the keys that waited, oldest first."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        keys = list(self._when)
        self._when.clear()
        return keys

    def __contains__(self, key: object) -> bool:
        return key in self._when

    def __len__(self) -> int:
        return len(self._when)

    def __iter__(self) -> Iterator[K]:
        return iter(self._when)

    def _sweep(self) -> None:
        self._call = None
        now = self._clock.seconds()
        late = []
        next_due = None
        for key, when in self._when.items():
            if when - now > self._slack:
                next_due = when
                break
            late.append(key)
        for key in late:
            del self._when[key]
        if next_due is not None:
            self._call = self._clock.callLater(next_due - now, self._sweep)
        if late:
            self._due(late)


class _Call(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class _Timers(Protocol):
    """What L{LateCall} needs of a clock: a reactor, a L{task.Clock}, or a service's narrower type for one."""

    def callLater(self, delay: float, f: Callable[..., object], /, *args: Any, **kwargs: Any) -> _Call: ...


class LateCall:
    """
    C{callback()} once C{seconds} have passed and the reactor has read its
    sockets once more. A reactor turn runs the timers due before it reads:
    when the process was too busy to read for a while (telling thousands of
    clients 1001 at once takes a turn of seconds), what a deadline waits
    for may have arrived and not been read yet. It is read first; the
    callback runs only if the waiting was not ended meanwhile (L{cancel}).
    """

    def __init__(self, clock: _Timers, seconds: float, callback: Callable[[], object]) -> None:
        self._clock = clock
        self._callback = callback
        self._call = clock.callLater(seconds, self._due)

    def _due(self) -> None:
        self._call = self._clock.callLater(0, self._callback)

    def cancel(self) -> None:
        """The waiting is over: no callback (if it has not run)."""
        if self._call.active():
            self._call.cancel()


def add_late_timeout(d: Deferred[Any], seconds: float, clock: IReactorTime) -> Deferred[Any]:
    """
    C{d.addTimeout(seconds, clock)}, decided after the next read (L{LateCall}):
    C{d} is cancelled, and fails with Twisted's C{TimeoutError}, only if it
    has not fired by then.
    """
    timed_out = False

    def give_up() -> None:
        nonlocal timed_out
        timed_out = True
        d.cancel()

    call = LateCall(clock, seconds, give_up)

    def settle(result: object) -> object:
        call.cancel()
        if timed_out and isinstance(result, Failure) and result.check(CancelledError):
            raise DeferredTimeout(seconds, "Deferred")
        return result

    d.addBoth(settle)
    return d
