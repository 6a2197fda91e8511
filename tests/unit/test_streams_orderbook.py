"""
Tests for L{peatio_ws.streams.orderbook}: one market's order-book store and
the rule of SPEC §7 that no client ever sees a sequence gap.

Example tests pin each rule (continuity, gaps, increments before the first
snapshot, the bound on stored increments, replay order, the matching
engine's restart, L{OrderBook.break_}); a Hypothesis state machine then
drives the store with arbitrary sequences of snapshots, increments,
subscribers coming and going and breaks, against a small reference model
written here from the SPEC's words, and checks what every subscriber
received: a snapshot, then consecutive increments, never a gap; and a
waiting subscriber primed by the next snapshot.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.streams.orderbook import OrderBook, sequence_of


def snap(seq: int) -> bytes:
    return b"S%d" % seq


def inc(seq: int) -> bytes:
    return b"I%d" % seq


class SequenceOfTests(SynchronousTestCase):
    def test_whole_numbers(self) -> None:
        """A whole-number C{sequence} is read, as an int, integral floats included."""
        self.assertEqual(sequence_of(b'{"asks":[],"bids":[],"sequence":7}'), 7)
        self.assertEqual(sequence_of(b'{"sequence":1}'), 1)
        self.assertEqual(sequence_of(b'{"sequence":0}'), 0)
        self.assertEqual(sequence_of(b'{"sequence":7.0}'), 7)
        self.assertEqual(sequence_of(b'{"sequence":18446744073709551616}'), 2**64)

    def test_unusable(self) -> None:
        """No sequence, or one that is a string, a boolean, a fraction, null; or no JSON object: None."""
        for body in (b"{}", b'{"sequence":"7"}', b'{"sequence":true}', b'{"sequence":false}',
                     b'{"sequence":7.5}', b'{"sequence":null}', b'{"sequence":[7]}', b"[7]", b"7", b"not json",
                     b"", b'{"sequence":1e400}'):
            self.assertIsNone(sequence_of(body), body)


class OrderBookTests(SynchronousTestCase):
    def book(self, max_increments: int = 10) -> OrderBook:
        return OrderBook("btcusd", max_increments)

    def test_empty(self) -> None:
        """A new store cannot be replayed: a subscriber waits."""
        book = self.book()
        self.assertFalse(book.replayable)
        self.assertIsNone(book.subscribe("a"))
        self.assertEqual(book.waiting, 1)
        self.assertEqual(book.primed, set())

    def test_first_snapshot_primes_the_waiting(self) -> None:
        """The first snapshot goes to every waiting subscriber, who is then primed."""
        book = self.book()
        book.subscribe("a")
        book.subscribe("b")
        self.assertEqual(set(book.snapshot_arrived(1, snap(1))), {"a", "b"})
        self.assertEqual(book.primed, {"a", "b"})
        self.assertEqual(book.waiting, 0)
        self.assertEqual(book.sequence, 1)
        self.assertTrue(book.replayable)

    def test_continuity(self) -> None:
        """Increments that continue the sequence are stored and go to the primed subscribers."""
        book = self.book()
        book.subscribe("a")
        book.snapshot_arrived(5, snap(5))
        for seq in (6, 7, 8):
            self.assertEqual(set(book.increment_arrived(seq, inc(seq))), {"a"})
        self.assertEqual(book.sequence, 8)
        self.assertEqual(book.increments, [inc(6), inc(7), inc(8)])
        self.assertFalse(book.broken)
        self.assertEqual(book.gaps, 0)

    def test_replay_order(self) -> None:
        """A new subscriber gets the snapshot, then every stored increment in order, and is primed."""
        book = self.book()
        book.snapshot_arrived(5, snap(5))
        for seq in (6, 7, 8):
            self.assertEqual(set(book.increment_arrived(seq, inc(seq))), set())
        self.assertEqual(book.subscribe("late"), [snap(5), inc(6), inc(7), inc(8)])
        self.assertEqual(book.primed, {"late"})
        self.assertEqual(set(book.increment_arrived(9, inc(9))), {"late"})

    def test_frames_kept_as_given(self) -> None:
        """The replay is the very frames stored (nothing re-encoded)."""
        book = self.book()
        s, i = b"snapshot-" + b"frame", b"increment-" + b"frame"
        book.snapshot_arrived(1, s)
        book.increment_arrived(2, i)
        replay = book.subscribe("a")
        assert replay is not None
        self.assertIs(replay[0], s)
        self.assertIs(replay[1], i)

    def test_gap(self) -> None:
        """
        An increment past the next sequence goes to no one, everyone waits,
        the store cannot be replayed; the next snapshot primes them all.
        """
        book = self.book()
        book.subscribe("a")
        book.snapshot_arrived(1, snap(1))
        book.increment_arrived(2, inc(2))
        self.assertEqual(set(book.increment_arrived(4, inc(4))), set())
        self.assertTrue(book.broken)
        self.assertEqual(book.primed, set())
        self.assertEqual(book.waiting, 1)
        self.assertFalse(book.replayable)
        self.assertEqual(book.gaps, 1)
        # Broken until the next snapshot: even an increment that follows the last one goes nowhere.
        self.assertEqual(set(book.increment_arrived(5, inc(5))), set())
        self.assertEqual(book.gaps, 1)
        self.assertIsNone(book.subscribe("b"))
        self.assertEqual(set(book.snapshot_arrived(5, snap(5))), {"a", "b"})
        self.assertFalse(book.broken)
        self.assertEqual(set(book.increment_arrived(6, inc(6))), {"a", "b"})

    def test_repeated_and_backwards_increments_are_gaps(self) -> None:
        """An increment repeating the last sequence, or going back, is a gap too."""
        for seq in (3, 2, 1, 0, -1):
            book = self.book()
            book.subscribe("a")
            book.snapshot_arrived(2, snap(2))
            book.increment_arrived(3, inc(3))
            self.assertEqual(set(book.increment_arrived(seq, inc(seq))), set(), seq)
            self.assertTrue(book.broken, seq)

    def test_increment_without_sequence_is_a_gap(self) -> None:
        """An increment whose sequence cannot be read breaks the store."""
        book = self.book()
        book.subscribe("a")
        book.snapshot_arrived(1, snap(1))
        self.assertEqual(set(book.increment_arrived(None, b"I?")), set())
        self.assertTrue(book.broken)
        self.assertEqual(book.waiting, 1)

    def test_increment_before_first_snapshot(self) -> None:
        """Increments before any snapshot go to no one; the first snapshot then primes everyone."""
        book = self.book()
        book.subscribe("a")
        self.assertEqual(set(book.increment_arrived(1, inc(1))), set())
        self.assertEqual(set(book.increment_arrived(2, inc(2))), set())
        self.assertFalse(book.replayable)
        self.assertEqual(book.waiting, 1)
        self.assertEqual(set(book.snapshot_arrived(2, snap(2))), {"a"})
        self.assertEqual(set(book.increment_arrived(3, inc(3))), {"a"})
        self.assertEqual(book.subscribe("b"), [snap(2), inc(3)])

    def test_max_increments_boundary(self) -> None:
        """
        Exactly RANGER_ORDERBOOK_MAX_INCREMENTS increments after a snapshot
        can be replayed; one more cannot (the new subscriber waits), though
        the sequence is still followed and the primed still get every one.
        """
        book = self.book(max_increments=3)
        book.subscribe("a")
        book.snapshot_arrived(10, snap(10))
        for seq in (11, 12, 13):
            book.increment_arrived(seq, inc(seq))
        self.assertTrue(book.replayable)
        self.assertEqual(book.subscribe("b"), [snap(10), inc(11), inc(12), inc(13)])
        self.assertEqual(set(book.increment_arrived(14, inc(14))), {"a", "b"})
        self.assertFalse(book.replayable)
        self.assertEqual(book.increments, [])
        self.assertFalse(book.broken)
        self.assertEqual(book.gaps, 0)
        self.assertIsNone(book.subscribe("c"))
        self.assertEqual(set(book.increment_arrived(15, inc(15))), {"a", "b"})
        self.assertEqual(book.sequence, 15)
        # The next snapshot at the sequence followed: only the waiting one needs it.
        self.assertEqual(set(book.snapshot_arrived(15, snap(15))), {"c"})
        self.assertEqual(book.subscribe("d"), [snap(15)])
        # A gap after the overflow is still a gap.
        self.assertEqual(set(book.increment_arrived(17, inc(17))), set())
        self.assertTrue(book.broken)

    def test_max_increments_zero(self) -> None:
        """With a bound of 0 the snapshot alone is replayable, until the first increment."""
        book = self.book(max_increments=0)
        book.snapshot_arrived(1, snap(1))
        self.assertEqual(book.subscribe("a"), [snap(1)])
        self.assertEqual(set(book.increment_arrived(2, inc(2))), {"a"})
        self.assertIsNone(book.subscribe("b"))

    def test_new_snapshot_replaces_the_store(self) -> None:
        """A snapshot starts the store afresh: the replay is that snapshot and what follows it only."""
        book = self.book()
        book.snapshot_arrived(1, snap(1))
        book.increment_arrived(2, inc(2))
        book.snapshot_arrived(2, snap(2))
        book.increment_arrived(3, inc(3))
        self.assertEqual(book.subscribe("a"), [snap(2), inc(3)])

    def test_same_sequence_snapshot_only_to_waiting(self) -> None:
        """A snapshot at the sequence the primed are at goes to the waiting subscribers only."""
        book = self.book(max_increments=0)
        book.subscribe("primed")
        book.snapshot_arrived(1, snap(1))
        book.increment_arrived(2, inc(2))
        self.assertIsNone(book.subscribe("waiting"))
        self.assertEqual(set(book.snapshot_arrived(2, snap(2))), {"waiting"})
        self.assertEqual(book.primed, {"primed", "waiting"})
        # Nobody waiting: a snapshot at the same sequence goes to no one.
        self.assertEqual(set(book.snapshot_arrived(2, snap(2))), set())

    def test_restart_snapshot_to_everyone(self) -> None:
        """
        A snapshot whose sequence is not the one the primed are at (the
        matching engine restarted and counts from 1 again) goes to every
        subscriber, primed ones included.
        """
        book = self.book()
        book.subscribe("a")
        book.snapshot_arrived(40, snap(40))
        book.increment_arrived(41, inc(41))
        self.assertEqual(book.subscribe("b"), [snap(40), inc(41)])
        self.assertEqual(set(book.snapshot_arrived(1, snap(1))), {"a", "b"})
        self.assertEqual(book.sequence, 1)
        self.assertEqual(set(book.increment_arrived(2, inc(2))), {"a", "b"})
        self.assertEqual(book.gaps, 0)

    def test_snapshot_ahead_to_everyone(self) -> None:
        """A snapshot ahead of the sequence followed (increments missed upstream) goes to everyone too."""
        book = self.book()
        book.subscribe("a")
        book.snapshot_arrived(5, snap(5))
        self.assertEqual(set(book.snapshot_arrived(9, snap(9))), {"a"})
        self.assertEqual(set(book.increment_arrived(10, inc(10))), {"a"})

    def test_snapshot_without_sequence(self) -> None:
        """A snapshot whose sequence cannot be read primes no one: the store breaks."""
        book = self.book()
        book.subscribe("a")
        book.snapshot_arrived(1, snap(1))
        self.assertEqual(set(book.snapshot_arrived(None, b"S?")), set())
        self.assertTrue(book.broken)
        self.assertEqual(book.waiting, 1)
        self.assertIsNone(book.subscribe("b"))
        self.assertEqual(set(book.increment_arrived(2, inc(2))), set())

    def test_break(self) -> None:
        """
        break_ (events may have been lost, SPEC §8): everyone waits, nothing
        is replayed or forwarded until the next snapshot; counted once.
        """
        book = self.book()
        book.subscribe("a")
        book.snapshot_arrived(1, snap(1))
        book.increment_arrived(2, inc(2))
        book.break_()
        book.break_()
        self.assertEqual(book.gaps, 1)
        self.assertTrue(book.broken)
        self.assertEqual(book.waiting, 1)
        self.assertFalse(book.replayable)
        self.assertEqual(set(book.increment_arrived(3, inc(3))), set())
        self.assertEqual(set(book.snapshot_arrived(3, snap(3))), {"a"})
        self.assertFalse(book.broken)
        self.assertEqual(set(book.increment_arrived(4, inc(4))), {"a"})

    def test_unsubscribe(self) -> None:
        """An unsubscribed subscriber gets nothing more, primed or waiting."""
        book = self.book()
        book.subscribe("a")
        book.subscribe("b")
        book.snapshot_arrived(1, snap(1))
        book.unsubscribe("a")
        self.assertEqual(set(book.increment_arrived(2, inc(2))), {"b"})
        book.increment_arrived(5, inc(5))
        book.unsubscribe("b")
        self.assertEqual(set(book.snapshot_arrived(5, snap(5))), set())
        book.unsubscribe("never-subscribed")
        self.assertEqual(book.subscribers, set())


# -- the state machine ----------------------------------------------------------------------

FULL = os.environ.get("PEATIO_WS_CHAOS", "").strip().lower() == "full"
MAX_INCREMENTS = 3


class CarriedTests(SynchronousTestCase):
    """A store carried across a restart in place (L{OrderBook.carried}, L{OrderBook.restored}, L{OrderBook.carry})."""

    def book(self) -> OrderBook:
        book = OrderBook("btcusd", 5)
        book.snapshot_arrived(10, b"snap10")
        book.increment_arrived(11, b"inc11")
        return book

    def test_round_trip(self) -> None:
        """The next program's store replays what this one would, and follows the same sequence."""
        restored = OrderBook.restored("btcusd", 5, self.book().carried())
        self.assertEqual((restored.sequence, restored.broken), (11, False))
        self.assertEqual(restored.subscribe("new"), [b"snap10", b"inc11"])
        self.assertEqual(restored.increment_arrived(12, b"inc12"), {"new"})

    def test_fewer_increments_allowed(self) -> None:
        """More increments than the next program keeps: followed, no longer replayable (as past the bound here)."""
        restored = OrderBook.restored("btcusd", 0, self.book().carried())
        self.assertEqual(restored.sequence, 11)
        self.assertFalse(restored.replayable)
        self.assertIsNone(restored.subscribe("new"))

    def test_broken_stays_broken(self) -> None:
        book = self.book()
        book.increment_arrived(13, b"inc13")  # a gap
        restored = OrderBook.restored("btcusd", 5, book.carried())
        self.assertTrue(restored.broken)
        restored.carry("a", primed=True)
        self.assertEqual(restored.primed, set(), "nobody is primed on a broken store")

    def test_carry(self) -> None:
        """A carried subscriber is primed or waiting as it was, and nothing is replayed to it."""
        restored = OrderBook.restored("btcusd", 5, self.book().carried())
        restored.carry("primed", primed=True)
        restored.carry("waiting", primed=False)
        self.assertEqual((restored.subscribers, restored.primed), ({"primed", "waiting"}, {"primed"}))
        self.assertEqual(restored.increment_arrived(12, b"inc12"), {"primed"})
        self.assertEqual(set(restored.snapshot_arrived(12, b"snap12")), {"waiting"})

    def test_carry_onto_an_empty_store(self) -> None:
        """No store came along (none left, or not readable): a carried subscriber waits for the next snapshot."""
        book = OrderBook("btcusd", 5)
        book.carry("a", primed=True)
        self.assertEqual(book.waiting, 1)


class _Model:
    """
    SPEC §7's order-book rules, restated independently of the code under
    test: the last sequence followed, whether the store is broken, what a
    new subscriber would be replayed, and where each subscriber is (the
    sequence it has, or None while it waits).
    """

    def __init__(self, max_increments: int) -> None:
        self.max_increments = max_increments
        self.sequence: int | None = None
        self.broken = False
        self.store: list[bytes] | None = None
        self.at: dict[str, int | None] = {}
        self.gaps = 0

    def _break(self) -> None:
        if not self.broken:
            self.gaps += 1
        self.broken = True
        self.store = None
        for name in self.at:
            self.at[name] = None

    def subscribe(self, name: str) -> list[bytes] | None:
        if self.store is None:
            self.at[name] = None
            return None
        self.at[name] = self.sequence
        return list(self.store)

    def unsubscribe(self, name: str) -> None:
        del self.at[name]

    def snapshot(self, sequence: int | None, frame: bytes) -> set[str]:
        if sequence is None:
            self._break()
            return set()
        # The waiting need it; so does anyone whose book is at another sequence.
        recipients = {name for name, at in self.at.items() if at is None or at != sequence}
        self.sequence = sequence
        self.broken = False
        self.store = [frame]
        for name in self.at:
            self.at[name] = sequence
        return recipients

    def increment(self, sequence: int | None, frame: bytes) -> set[str]:
        follows = (
            not self.broken and self.sequence is not None and sequence is not None and sequence == self.sequence + 1
        )
        if not follows:
            self._break()
            self.sequence = sequence
            return set()
        self.sequence = sequence
        recipients = {name for name, at in self.at.items() if at is not None}
        for name in recipients:
            self.at[name] = sequence
        if self.store is not None:
            if len(self.store) - 1 < self.max_increments:
                self.store.append(frame)
            else:
                self.store = None
        return recipients

    def market_lost(self) -> None:
        self._break()


def _parse(frame: bytes) -> tuple[str, int | None]:
    """("S" or "I", sequence) of a frame made by the machine."""
    kind, _, rest = frame.partition(b":")
    seq = rest.partition(b":")[0]
    return kind.decode(), None if seq == b"?" else int(seq)


class OrderBookMachine(RuleBasedStateMachine):
    """The store against the model, and what each subscriber received checked frame by frame."""

    NAMES = ("a", "b", "c", "d")

    def __init__(self) -> None:
        super().__init__()
        self.book = OrderBook("btcusd", MAX_INCREMENTS)
        self.model = _Model(MAX_INCREMENTS)
        #: What each current subscriber received since it subscribed, in order.
        self.received: dict[str, list[bytes]] = {}
        self.serial = 0

    def frame(self, kind: str, sequence: int | None) -> bytes:
        self.serial += 1
        seq = b"?" if sequence is None else b"%d" % sequence
        return kind.encode() + b":" + seq + b":" + b"%d" % self.serial

    def next_sequence(self) -> int:
        return (self.model.sequence or 0) + 1

    # -- rules ------------------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES))
    def subscribe(self, name: str) -> None:
        if name in self.received:
            return
        replay = self.book.subscribe(name)
        self.assertEqual(replay, self.model.subscribe(name))
        self.received[name] = list(replay or ())

    @precondition(lambda self: bool(self.received))
    @rule(data=st.data())
    def unsubscribe(self, data: Any) -> None:
        name = data.draw(st.sampled_from(sorted(self.received)))
        self.book.unsubscribe(name)
        self.model.unsubscribe(name)
        del self.received[name]

    @rule(
        step=st.one_of(
            st.just(1),
            st.just(1),
            st.just(1),
            st.just(1),
            st.integers(min_value=-3, max_value=4),
            st.none(),
        )
    )
    def increment(self, step: int | None) -> None:
        sequence = None if step is None else (self.model.sequence or 0) + step
        frame = self.frame("I", sequence)
        got = set(self.book.increment_arrived(sequence, frame))
        self.assertEqual(got, self.model.increment(sequence, frame))
        for name in got:
            self.received[name].append(frame)

    @rule(
        where=st.one_of(
            st.just("same"), st.just("restart"), st.integers(min_value=-2, max_value=3), st.just("none")
        )
    )
    def snapshot(self, where: Any) -> None:
        current = self.model.sequence or 0
        if where == "none":
            sequence: int | None = None
        elif where == "same":
            sequence = current
        elif where == "restart":
            sequence = 1
        else:
            sequence = current + where
        waiting = {name for name, at in self.model.at.items() if at is None}
        frame = self.frame("S", sequence)
        got = set(self.book.snapshot_arrived(sequence, frame))
        self.assertEqual(got, self.model.snapshot(sequence, frame))
        for name in got:
            self.received[name].append(frame)
        if sequence is not None:
            # A waiting subscriber is primed by the next snapshot: it got this one.
            self.assertLessEqual(waiting, got)
            self.assertEqual(self.book.primed, self.book.subscribers)

    @rule()
    def market_lost(self) -> None:
        self.book.break_()
        self.model.market_lost()

    # -- invariants -------------------------------------------------------------------

    def assertEqual(self, a: Any, b: Any) -> None:
        assert a == b, f"{a!r} != {b!r}"

    def assertLessEqual(self, a: Any, b: Any) -> None:
        assert a <= b, f"{a!r} is not within {b!r}"

    @invariant()
    def never_a_gap(self) -> None:
        """Every subscriber's stream: a snapshot first, then each increment exactly one past the last frame."""
        for name, frames in self.received.items():
            last: int | None = None
            for i, frame in enumerate(frames):
                kind, seq = _parse(frame)
                assert seq is not None, f"{name} got a frame without a sequence: {frame!r}"
                if i == 0:
                    assert kind == "S", f"{name} got {frame!r} before any snapshot"
                elif kind == "I":
                    assert last is not None and seq == last + 1, f"{name}: gap before {frame!r} in {frames!r}"
                last = seq

    @invariant()
    def agrees_with_the_model(self) -> None:
        book, model = self.book, self.model
        self.assertEqual(book.subscribers, set(model.at))
        self.assertEqual(book.primed, {name for name, at in model.at.items() if at is not None})
        self.assertEqual(book.waiting, sum(1 for at in model.at.values() if at is None))
        self.assertEqual(book.replayable, model.store is not None)
        self.assertEqual(book.broken, model.broken)
        self.assertEqual(book.sequence, model.sequence)
        self.assertEqual(book.gaps, model.gaps)
        assert len(book.increments) <= MAX_INCREMENTS, book.increments

    @invariant()
    def primed_are_where_the_book_is(self) -> None:
        """Every primed subscriber's last frame is at the sequence the store followed."""
        for name in self.book.primed:
            frames = self.received[name]
            assert frames, f"{name} is primed but received nothing"
            self.assertEqual(_parse(frames[-1])[1], self.book.sequence)


class OrderBookStateMachineTests(SynchronousTestCase):
    def test_never_a_gap(self) -> None:
        """Arbitrary snapshots, increments, subscribers and breaks: the store agrees with the model, no gap."""
        run_state_machine_as_test(
            OrderBookMachine,
            settings=settings(
                max_examples=2000 if FULL else 200,
                stateful_step_count=60,
                derandomize=not FULL,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
