# -*- test-case-name: tests.unit.test_streams_orderbook -*-
"""
One market's order-book store (SPEC §7), pure: no I/O, no clock. The rule
it keeps is that no client ever sees a sequence gap (baseapp reconnects, or
freezes its book, on every gap): each subscriber of C{<m>.ob-inc} is either
I{primed} (it has a snapshot and every increment since) or I{waiting} for
the next snapshot.

The store is the last snapshot's frame and the increments' frames after it,
up to C{max_increments}; past that it can no longer be replayed, though the
sequence is still followed. A sequence gap (or an increment before any
snapshot) breaks it until the next snapshot. Frames are kept ready to
write: a replay is a join, nothing is encoded again.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import orjson

__all__ = ["OrderBook", "sequence_of"]

_NOBODY: frozenset[Any] = frozenset()


def sequence_of(body: bytes) -> int | None:
    """
    The C{sequence} of an order-book body (a JSON object), or None when it
    has none that is a whole number (a string, a boolean, a fraction).
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    sequence = value.get("sequence")
    if isinstance(sequence, bool):
        return None
    if isinstance(sequence, int):
        return sequence
    if isinstance(sequence, float) and sequence.is_integer():
        return int(sequence)
    return None


class OrderBook:
    """
    The store of one market and the state of its C{ob-inc} subscribers.
    Subscribers are any hashable objects (connections); the caller writes
    the frames this returns or names.
    """

    def __init__(self, market: str, max_increments: int) -> None:
        self.market = market
        self.max_increments = max_increments
        #: The last sequence followed (of a snapshot or an increment); None before any.
        self.sequence: int | None = None
        #: The last snapshot's frame while the store can be replayed, else None.
        self.snapshot: bytes | None = None
        #: The frames of the increments after that snapshot, in order.
        self.increments: list[bytes] = []
        #: A gap since the last snapshot (or an increment before any): nothing is forwarded until the next one.
        self.broken = False
        #: Every subscriber of C{<market>.ob-inc}, and those of them that are primed.
        self.subscribers: set[Any] = set()
        self.primed: set[Any] = set()
        #: Gaps seen (a counter for /metrics).
        self.gaps = 0

    @property
    def replayable(self) -> bool:
        """Whether a new subscriber can be primed at once (snapshot + increments)."""
        return self.snapshot is not None

    @property
    def waiting(self) -> int:
        """How many subscribers wait for a snapshot."""
        return len(self.subscribers) - len(self.primed)

    # -- subscribers -------------------------------------------------------------

    def subscribe(self, subscriber: Any) -> list[bytes] | None:
        """
        A new subscriber: the frames to replay to it, in order (it is then
        primed), or None when the store cannot be replayed (it waits).
        """
        self.subscribers.add(subscriber)
        if self.snapshot is None:
            return None
        self.primed.add(subscriber)
        return [self.snapshot, *self.increments]

    def carry(self, subscriber: Any, primed: bool) -> None:
        """
        A subscriber carried across a restart in place, as it was: C{primed}
        (it holds the book up to this store's sequence) or waiting. Nothing
        is replayed to it.
        """
        self.subscribers.add(subscriber)
        if primed and not self.broken and self.sequence is not None:
            self.primed.add(subscriber)

    def unsubscribe(self, subscriber: Any) -> None:
        self.subscribers.discard(subscriber)
        self.primed.discard(subscriber)

    # -- across a restart in place -------------------------------------------------------

    def carried(self) -> dict[str, Any]:
        """The store (not its subscribers), for the next program: L{restored} takes it."""
        return {
            "sequence": self.sequence,
            "snapshot": self.snapshot,
            "increments": list(self.increments),
            "broken": self.broken,
        }

    @classmethod
    def restored(cls, market: str, max_increments: int, carried: dict[str, Any]) -> OrderBook:
        """
        The store L{carried} describes, with no subscriber yet. Increments
        past this program's C{max_increments} make it no longer replayable,
        as they would have here.
        """
        book = cls(market, max_increments)
        book.sequence = carried["sequence"]
        book.broken = carried["broken"]
        if carried["snapshot"] is not None and len(carried["increments"]) <= max_increments:
            book.snapshot = carried["snapshot"]
            book.increments = list(carried["increments"])
        return book

    # -- what the matching engine publishes -------------------------------------------

    def snapshot_arrived(self, sequence: int | None, frame: bytes) -> Collection[Any]:
        """
        A snapshot (as its ready frame): stored, and the subscribers it
        must go to returned, all of them primed from now on: the waiting
        ones, or everyone when its sequence is not the one the primed are at
        (the matching engine restarted and counts again). A snapshot without
        a usable sequence cannot prime anyone: the store breaks.
        """
        if sequence is None:
            self.break_()
            return _NOBODY
        if self.primed and sequence != self.sequence:
            recipients: Collection[Any] = tuple(self.subscribers)
        else:
            recipients = tuple(s for s in self.subscribers if s not in self.primed)
        self.sequence = sequence
        self.snapshot = frame
        self.increments = []
        self.broken = False
        self.primed = set(self.subscribers)
        return recipients

    def increment_arrived(self, sequence: int | None, frame: bytes) -> Collection[Any]:
        """
        An increment: the subscribers it goes to (the primed ones) when it
        continues the sequence, stored while the store can be replayed;
        otherwise it goes to no one and everyone waits for a snapshot.
        """
        current = self.sequence
        if self.broken or current is None or sequence is None or sequence != current + 1:
            self.break_()
            self.sequence = sequence
            return _NOBODY
        self.sequence = sequence
        if self.snapshot is not None:
            if len(self.increments) < self.max_increments:
                self.increments.append(frame)
            else:
                # Past the bound: followed, no longer replayable until the next snapshot.
                self.snapshot = None
                self.increments = []
        return self.primed

    def break_(self) -> None:
        """
        The sequence can no longer be vouched for (a gap; or the events
        may have been lost, SPEC §8): everyone waits for the next snapshot.
        """
        if not self.broken:
            self.gaps += 1
        self.broken = True
        self.snapshot = None
        self.increments = []
        self.primed = set()
