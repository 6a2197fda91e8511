"""
Tests for L{peatio_ws.deadlines}: keys due a fixed delay after they were
added (one timer), and deadlines decided after the next read.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.deadlines import Deadlines, LateCall, add_late_timeout


class DeadlinesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.due: list[list[str]] = []
        self.d: Deadlines[str] = Deadlines(self.clock, 10.0, self.due.append)

    def test_due_at_their_time_oldest_first(self) -> None:
        """Each key is due exactly its delay after it was added, not a moment before; together when together."""
        self.d.add("a")
        self.d.add("b")
        self.clock.advance(4)
        self.d.add("c")
        self.clock.advance(6 - 1e-9)
        self.assertEqual(self.due, [])
        self.clock.advance(1e-9)
        self.assertEqual(self.due, [["a", "b"]])
        self.assertEqual(list(self.d), ["c"])
        self.clock.advance(4)
        self.assertEqual(self.due, [["a", "b"], ["c"]])
        self.assertEqual((len(self.d), self.clock.getDelayedCalls()), (0, []))

    def test_one_timer(self) -> None:
        """A thousand keys, one timer."""
        for i in range(1000):
            self.d.add(str(i))
            self.clock.advance(0.001)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10)
        self.assertEqual(sum(len(batch) for batch in self.due), 1000)

    def test_discard(self) -> None:
        """A discarded key is never due; with none left the timer goes too."""
        self.d.add("a")
        self.d.add("b")
        self.d.discard("a")
        self.d.discard("zzz")
        self.assertNotIn("a", self.d)
        self.assertIn("b", self.d)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.d.discard("b")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.due, [])

    def test_added_again_after_due(self) -> None:
        """A key added again starts its delay again."""
        self.d.add("a")
        self.clock.advance(10)
        self.d.add("a")
        self.clock.advance(9)
        self.assertEqual(self.due, [["a"]])
        self.clock.advance(1)
        self.assertEqual(self.due, [["a"], ["a"]])

    def test_clear(self) -> None:
        """clear() hands back the waiting keys, oldest first, and leaves nothing scheduled."""
        for key in "cab":
            self.d.add(key)
        self.assertEqual(self.d.clear(), ["c", "a", "b"])
        self.assertEqual((len(self.d), self.clock.getDelayedCalls()), (0, []))
        self.clock.advance(10)
        self.assertEqual(self.due, [])

    def test_slack(self) -> None:
        """With slack, a key whose time is at most that far off is due with the ones before it."""
        d: Deadlines[str] = Deadlines(self.clock, 10.0, self.due.append, slack=0.5)
        d.add("a")
        self.clock.advance(0.4)
        d.add("b")
        self.clock.advance(0.2)
        d.add("c")
        self.clock.advance(9.4)
        self.assertEqual(self.due, [["a", "b"]])
        self.assertEqual(list(d), ["c"])


class LateCallTests(SynchronousTestCase):
    """
    L{LateCall} and L{add_late_timeout}: a deadline decided after the next
    read. On a L{Clock} a turn's reads are modelled by calls due at the same
    time and scheduled earlier: they run before the decision.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.fired: list[str] = []

    def test_after_its_time_and_one_more_turn(self) -> None:
        LateCall(self.clock, 5.0, lambda: self.fired.append("late"))
        self.clock.callLater(5.0, self.fired.append, "read")
        self.clock.advance(5.0 - 1e-9)
        self.assertEqual(self.fired, [])
        self.clock.advance(1e-9)
        self.assertEqual(self.fired, ["read", "late"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_before_and_in_the_extra_turn(self) -> None:
        early = LateCall(self.clock, 5.0, lambda: self.fired.append("early"))
        early.cancel()
        between = LateCall(self.clock, 5.0, lambda: self.fired.append("between"))
        # Cancelled by what is read in the turn the deadline comes due.
        self.clock.callLater(5.0, between.cancel)
        self.clock.advance(5.0)
        self.assertEqual(self.fired, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        between.cancel()  # twice: harmless

    def test_timeout(self) -> None:
        d: Deferred[str] = Deferred()
        add_late_timeout(d, 2.0, self.clock)
        self.clock.advance(2.0)
        failure = self.failureResultOf(d, DeferredTimeout)
        self.assertEqual(failure.value.args[0], 2.0)

    def test_answer_read_in_the_turn_after_the_deadline_wins(self) -> None:
        d: Deferred[str] = Deferred()
        add_late_timeout(d, 2.0, self.clock)
        self.clock.callLater(2.0, d.callback, "answered")
        self.clock.advance(2.0)
        self.assertEqual(self.successResultOf(d), "answered")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failures_other_than_the_timeout_pass(self) -> None:
        d: Deferred[str] = Deferred()
        add_late_timeout(d, 2.0, self.clock)
        d.errback(ValueError("no"))
        self.failureResultOf(d, ValueError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        cancelled: Deferred[str] = Deferred()
        add_late_timeout(cancelled, 2.0, self.clock)
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
