"""
Unit tests for L{peatio_ws.amqp.bindings}: the bookkeeping of bindings, on a
fake clock, with no broker at all.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.amqp.bindings import Bindings


class BindingsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.kicks = 0
        self.bindings = Bindings(self.clock, 5.0, self.kick)

    def kick(self) -> None:
        self.kicks += 1

    def sync(self) -> list[tuple[str, bool]]:
        """Take everything dirty and report it done, as the consumer does when the broker agrees."""
        work = self.bindings.take(1000)
        for uid, bind in work:
            self.bindings.done(uid, bind)
        return sorted(work)

    def test_join_wants_and_kicks(self) -> None:
        """A first connection makes the binding wanted and dirty, once."""
        self.bindings.join("U1")
        self.bindings.join("U1")
        self.assertEqual((self.bindings.wanted, self.bindings.to_bind, self.kicks), ({"U1"}, {"U1"}, 1))
        self.assertEqual(self.bindings.to_unbind, set())
        self.assertEqual(self.sync(), [("U1", True)])
        self.assertEqual(self.bindings.bound, {"U1"})
        self.assertFalse(self.bindings.dirty)

    def test_leave_after_delay(self) -> None:
        """The binding goes the unbind delay after the member left."""
        self.bindings.join("U1")
        self.sync()
        self.bindings.leave("U1")
        self.clock.advance(4.9)
        self.assertEqual(self.bindings.wanted, {"U1"})
        self.clock.advance(0.1)
        self.assertEqual((self.bindings.wanted, self.bindings.to_unbind, self.kicks), (set(), {"U1"}, 2))
        self.assertEqual(self.sync(), [("U1", False)])
        self.assertEqual(self.bindings.bound, set())

    def test_back_within_delay(self) -> None:
        """A member back within the delay keeps its binding: nothing to do, no timer left."""
        self.bindings.join("U1")
        self.sync()
        self.bindings.leave("U1")
        self.bindings.leave("U1")
        self.clock.advance(3)
        self.bindings.join("U1")
        self.clock.advance(10)
        self.assertEqual(self.sync(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.bindings.bound, {"U1"})

    def test_many_leave_one_timer(self) -> None:
        """
        Members leaving are swept by one timer, each exactly its delay after
        it left (never early), in one kick per sweep; one back meanwhile stays.
        """
        for uid in ("U1", "U2", "U3", "U4"):
            self.bindings.join(uid)
        self.sync()
        kicks = self.kicks
        self.bindings.leave("U1")
        self.bindings.leave("U2")
        self.clock.advance(1.0)
        self.bindings.leave("U3")
        self.clock.advance(0.5)
        self.bindings.leave("U4")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.bindings.join("U2")
        self.clock.advance(3.5)  # 5.0 after U1 left
        self.assertEqual((self.bindings.wanted, self.kicks), ({"U2", "U3", "U4"}, kicks + 1))
        self.clock.advance(0.999)
        self.assertEqual(self.bindings.wanted, {"U2", "U3", "U4"})
        self.clock.advance(0.001)  # 5.0 after U3 left
        self.assertEqual((self.bindings.wanted, self.kicks), ({"U2", "U4"}, kicks + 2))
        self.clock.advance(0.5)
        self.assertEqual((self.bindings.wanted, self.kicks), ({"U2"}, kicks + 3))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.sync(), [("U1", False), ("U3", False), ("U4", False)])

    def test_stop_cancels_the_sweep(self) -> None:
        """stop() leaves no timer, and the members due to go stay in the books till the queue goes."""
        self.bindings.join("U1")
        self.sync()
        self.bindings.leave("U1")
        self.bindings.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.bindings.wanted, {"U1"})

    def test_leave_unknown(self) -> None:
        """Leaving without having joined schedules nothing."""
        self.bindings.leave("U1")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_leave_while_stopping(self) -> None:
        """While stopping, a member leaving is forgotten at once (the queue is deleted anyway)."""
        self.bindings.join("U1")
        self.bindings.leave("U1", stopping=True)
        self.assertEqual((self.bindings.wanted, self.clock.getDelayedCalls()), (set(), []))

    def test_take_batches_and_drops_no_ops(self) -> None:
        """take() pops at most the limit; members needing neither bind nor unbind are dropped."""
        for i in range(10):
            self.bindings.join(f"U{i}")
        first = self.bindings.take(4)
        self.assertEqual(len(first), 4)
        self.assertEqual(len(self.bindings.to_bind), 6)
        self.bindings.to_bind.add("NOBODY")
        rest = self.bindings.take(100)
        self.assertEqual(sorted(uid for uid, _ in first + rest), sorted(f"U{i}" for i in range(10)))
        self.assertTrue(all(bind for _, bind in first + rest))

    def test_binds_first_and_unbinds_bounded(self) -> None:
        """
        take() gives binds before unbinds, whatever the order they became due
        in, and no more unbinds than leave C{unbinding} in flight; the
        answers make room for the rest.
        """
        for i in range(5):
            self.bindings.join(f"OLD{i}")
        self.sync()
        for i in range(5):
            self.bindings.leave(f"OLD{i}")
        self.clock.advance(5)
        self.bindings.join("NEW")
        first = self.bindings.take(1000, unbinding=2)
        self.assertEqual(first[0], ("NEW", True))
        self.assertEqual([bind for _, bind in first[1:]], [False, False])
        self.assertEqual(self.bindings.take(1000, unbinding=2), [])
        self.bindings.done(first[1][0], False)
        [(_, bind)] = self.bindings.take(1000, unbinding=2)
        self.assertFalse(bind)
        self.assertEqual(len(self.bindings.to_unbind), 2)
        # The limit counts binds and unbinds alike.
        self.bindings.join("NEW2")
        self.assertEqual(self.bindings.take(1, unbinding=10), [("NEW2", True)])

    def test_failed_is_retried(self) -> None:
        """A failed bind is dirty again."""
        self.bindings.join("U1")
        [(uid, _)] = self.bindings.take(10)
        self.bindings.failed(uid)
        self.assertEqual(self.bindings.to_bind, {"U1"})
        self.assertEqual(self.bindings.bound, set())

    def test_changed_while_in_flight(self) -> None:
        """
        A member who leaves while its bind is in flight (or comes back while
        its unbind is) is dirty again once the answer comes, and the next
        take does what is wanted now; an answer that agrees leaves it clean.
        """
        self.bindings.join("U1")
        self.assertEqual(self.bindings.take(10), [("U1", True)])
        self.bindings.leave("U1")
        self.clock.advance(5)
        self.assertEqual(self.bindings.take(10), [])  # not bound yet: nothing to undo
        self.bindings.done("U1", True)
        self.assertEqual(self.bindings.take(10), [("U1", False)])
        self.bindings.join("U1")
        self.assertEqual(self.bindings.take(10), [])  # still bound: nothing to do yet
        self.bindings.done("U1", False)
        self.assertEqual(self.bindings.take(10), [("U1", True)])
        self.bindings.done("U1", True)
        self.assertFalse(self.bindings.dirty)
        self.assertEqual(self.bindings.bound, {"U1"})

    def test_flowing(self) -> None:
        """A member's events flow once its bind is done, and no longer once its unbind is taken."""
        self.bindings.join("U1")
        self.assertFalse(self.bindings.flowing("U1"))
        self.bindings.take(10)
        self.assertFalse(self.bindings.flowing("U1"))
        self.bindings.done("U1", True)
        self.assertTrue(self.bindings.flowing("U1"))
        self.bindings.leave("U1")
        self.clock.advance(5)
        self.assertTrue(self.bindings.flowing("U1"))  # due, not taken yet: still bound
        self.assertEqual(self.bindings.take(10), [("U1", False)])
        self.assertFalse(self.bindings.flowing("U1"))
        self.bindings.join("U1")
        self.assertFalse(self.bindings.flowing("U1"))
        self.bindings.failed("U1")
        self.assertEqual(self.bindings.unbinding, set())
        self.assertEqual(self.bindings.take(10), [])  # wanted and (as far as we know) bound
        self.assertTrue(self.bindings.flowing("U1"))

    def test_reconnected(self) -> None:
        """
        On a new connection every wanted member is bound again (the queue may
        be new), members connected meanwhile too, and bindings no longer wanted go.
        """
        self.bindings.join("STAYS")
        self.bindings.join("LEFT")
        self.sync()
        self.bindings.leave("LEFT")
        self.clock.advance(5)
        self.bindings.take(100)  # the connection went before the unbind
        self.bindings.reconnected(["NEW"])
        self.assertEqual(self.sync(), [("LEFT", False), ("NEW", True), ("STAYS", True)])
        self.assertEqual(self.bindings.bound, {"STAYS", "NEW"})

    def test_unbound_all_and_stop(self) -> None:
        """The queue deleted: nothing bound; stop cancels pending unbinds."""
        self.bindings.join("U1")
        self.sync()
        self.bindings.leave("U1")
        self.bindings.unbound_all()
        self.bindings.stop()
        self.assertEqual((self.bindings.bound, self.clock.getDelayedCalls()), (set(), []))
