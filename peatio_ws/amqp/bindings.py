# -*- test-case-name: tests.unit.test_amqp_bindings,tests.unit.test_amqp -*-
"""
Which members' bindings the process queue should have, has, and must
change: the consumer's bookkeeping, apart from the AMQP that carries it out.

A member's binding is wanted from its first connection here until
RABBITMQ_UNBIND_DELAY seconds after its last one left (unless it comes back
meanwhile). A member is dirty when wanted and bound may differ: the
consumer takes dirty members in batches (L{Bindings.take}), binds or
unbinds each, and reports the outcome (L{Bindings.done},
L{Bindings.failed}). Binds go first, and only so many unbinds are in flight
at once: RabbitMQ does a channel's work in order, and a login may be
waiting for its member's bind, while nobody waits for an unbind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.internet.interfaces import IReactorTime

from peatio_ws.deadlines import Deadlines

__all__ = ["HANDED_UNBIND_DELAY", "Bindings"]

#: Seconds the members of a queue taken over from the previous process have
#: to come back before their bindings go (RABBITMQ_UNBIND_DELAY if longer).
#: They are the clients of a restart: after the 1001 browsers wait up to 5 s
#: and back off up to 30 s between failed attempts (docs/protocol.md section
#: 6), and the whole storm must not find itself unbound and bound again.
HANDED_UNBIND_DELAY = 30.0


class Bindings:
    """
    The wanted, bound and dirty sets, and the pending unbinds. C{changed()}
    is called whenever new work appears (a member to bind or unbind).
    Dirty members are kept in two sets by what they most likely need (it
    is checked when they are taken): C{to_bind}, wanted when they became
    dirty, and C{to_unbind}, not wanted then.
    """

    def __init__(self, clock: IReactorTime, unbind_delay: float, changed: Callable[[], None]) -> None:
        self._changed = changed
        #: Members whose binding the queue should have.
        self.wanted: set[str] = set()
        #: Members whose binding the queue has (as far as we know).
        self.bound: set[str] = set()
        #: Dirty members that were wanted when they became dirty: a bind, most likely.
        self.to_bind: set[str] = set()
        #: Dirty members that were not wanted when they became dirty: an unbind, most likely.
        self.to_unbind: set[str] = set()
        #: Members whose unbind was taken and not answered yet (still in L{bound} till then).
        self.unbinding: set[str] = set()
        #: Members due to be unbound, oldest first (a process's shutdown sees
        #: every member leave at once). A hair's slack: the sweep's timer may
        #: fire a rounding error early.
        self._leaving: Deadlines[str] = Deadlines(clock, unbind_delay, self._unbind_due, slack=1e-6)
        #: Seconds the members handed over with a taken-over queue have to come back.
        self.handed_delay = max(unbind_delay, HANDED_UNBIND_DELAY)
        #: Members handed over with a taken-over queue (L{adopt}) and not back yet.
        self._handed: Deadlines[str] = Deadlines(clock, self.handed_delay, self._unbind_due, slack=1e-6)

    def join(self, uid: str) -> None:
        """A connection of C{uid} authenticated: want its binding (and keep one about to go)."""
        self._leaving.discard(uid)
        self._handed.discard(uid)
        if uid in self.wanted:
            return
        self.wanted.add(uid)
        self.to_bind.add(uid)
        self._changed()

    def leave(self, uid: str, stopping: bool = False) -> None:
        """
        The last connection of C{uid} left: its binding goes after the
        unbind delay (at once from the books when C{stopping}: the queue is
        deleted anyway).
        """
        if uid not in self.wanted or uid in self._leaving:
            return
        if stopping:
            self.wanted.discard(uid)
            return
        self._leaving.add(uid)

    def _unbind_due(self, due: list[str]) -> None:
        """The members whose delay is over are no longer wanted."""
        for uid in due:
            self.wanted.discard(uid)
            self.to_unbind.add(uid)
        self._changed()

    def reconnected(self, members: Iterable[str]) -> None:
        """
        A new connection, on a queue that may be new: want C{members} too,
        and bind every wanted member again; members bound but no longer
        wanted get unbound.
        """
        self.wanted.update(members)
        self.to_bind |= self.wanted
        self.to_unbind |= self.bound - self.wanted
        self.bound -= self.wanted
        self.unbinding.clear()  # what was in flight went with the old connection

    def adopt(self, handed: Iterable[str], members: Iterable[str]) -> None:
        """
        A queue taken over from the previous process (the first connection),
        with the bindings of C{handed}: want C{members} and those, bind only
        members not handed over, and unbind those handed over but not here
        after L{HANDED_UNBIND_DELAY}, unless they come (back) meanwhile.
        """
        self.wanted.update(members)
        for uid in handed:
            self.bound.add(uid)
            if uid not in self.wanted:
                self.wanted.add(uid)
                self._handed.add(uid)
        self.to_bind |= self.wanted - self.bound
        self.unbinding.clear()

    @property
    def dirty(self) -> bool:
        """Whether some member's binding may need adding or removing."""
        return bool(self.to_bind or self.to_unbind)

    def _dirty(self, uid: str) -> None:
        (self.to_bind if uid in self.wanted else self.to_unbind).add(uid)

    def take(self, limit: int, unbinding: int | None = None) -> list[tuple[str, bool]]:
        """
        Up to C{limit} dirty members, no longer dirty, with what each needs:
        C{(uid, True)} a bind, C{(uid, False)} an unbind (those needing
        neither are dropped). Those likely to need a bind first; then the
        others while fewer than C{unbinding} unbinds are in flight (no bound
        when None).
        """
        wanted = self.wanted
        bound = self.bound
        in_flight = self.unbinding
        most = len(in_flight) + limit if unbinding is None else unbinding
        work: list[tuple[str, bool]] = []
        for dirty, first in ((self.to_bind, True), (self.to_unbind, False)):
            while dirty and len(work) < limit and (first or len(in_flight) < most):
                uid = dirty.pop()
                if uid in wanted and uid not in bound:
                    work.append((uid, True))
                elif uid not in wanted and uid in bound:
                    work.append((uid, False))
                    in_flight.add(uid)
        return work

    def unbound(self) -> int:
        """How many wanted members have no binding yet (a set-up's work)."""
        return len(self.wanted.difference(self.bound))

    def flowing(self, uid: str) -> bool:
        """
        Whether C{uid}'s events reach the queue and will until it leaves:
        bound, and no unbind of it in flight (a member back meanwhile must
        wait for its next bind, or miss what comes between the two answers).
        """
        return uid in self.bound and uid not in self.unbinding

    def done(self, uid: str, bound: bool) -> None:
        """
        The bind (C{bound}) or unbind of C{uid} succeeded. If the member
        left or came back while it was in flight (L{take} then found nothing
        to do), it is dirty again: the caller takes it once more.
        """
        if bound:
            self.bound.add(uid)
        else:
            self.bound.discard(uid)
            self.unbinding.discard(uid)
        if (uid in self.wanted) is not bound:
            self._dirty(uid)

    def failed(self, uid: str) -> None:
        """The bind or unbind of C{uid} failed: it is to be done again."""
        self.unbinding.discard(uid)
        self._dirty(uid)

    def unbound_all(self) -> None:
        """The queue is gone (deleted): nothing is bound."""
        self.bound.clear()
        self.unbinding.clear()

    def stop(self) -> None:
        """Cancel the pending unbinds."""
        self._leaving.clear()
        self._handed.clear()
