"""
Tests for L{peatio_ws.registry} and L{peatio_ws.framing}, with plain fake
connections: no Autobahn involved.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from peatio_ws.auth import Claims
from peatio_ws.framing import event_message, text_frame
from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry
from peatio_ws.testing import FakeConnection, MembershipRecorder, parse_frames


class Broken(FakeConnection):
    def send_frame(self, frame: bytes) -> bool:
        raise RuntimeError("boom")


def claims(uid: str, jti: str = "j") -> Claims:
    return Claims(uid=uid, jti=jti, expires_at=None)


class RegistryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = Metrics()
        self.registry = Registry(self.metrics)
        self.recorder = MembershipRecorder()
        self.registry.add_observer(self.recorder)

    def test_membership_events(self) -> None:
        """Observers hear of a member's first connection and of its last leaving, once each."""
        a, b = FakeConnection("a"), FakeConnection("b")
        self.registry.authenticate(a, claims("U", "1"))
        self.registry.authenticate(b, claims("U", "2"))
        self.registry.deauthenticate(a)
        self.assertEqual(self.recorder.events, [("joined", "U")])
        self.registry.deauthenticate(b)
        self.assertEqual(self.recorder.events, [("joined", "U"), ("left", "U")])
        self.registry.deauthenticate(b)
        self.assertEqual(len(self.recorder.events), 2)

    def test_gauges(self) -> None:
        """The members and authenticated-connections gauges follow the registry."""
        a, b, c = FakeConnection("a"), FakeConnection("b"), FakeConnection("c")
        self.registry.authenticate(a, claims("U"))
        self.registry.authenticate(b, claims("U"))
        self.registry.authenticate(c, claims("V"))
        self.assertEqual(self.gauges(), (2.0, 3.0))
        self.registry.deauthenticate(a)
        self.assertEqual(self.gauges(), (2.0, 2.0))
        self.registry.deauthenticate(c)
        self.assertEqual(self.gauges(), (1.0, 1.0))

    def gauges(self) -> tuple[float | None, float | None]:
        """Members and authenticated connections, as a scrape reads them."""
        sample = self.metrics.registry.get_sample_value
        return sample("peatio_ws_members"), sample("peatio_ws_authenticated_connections")

    def test_move(self) -> None:
        """Authenticating as another uid moves the connection, with its jti index."""
        a = FakeConnection("a")
        self.registry.authenticate(a, claims("U", "1"))
        self.registry.authenticate(a, claims("V", "2"))
        self.assertEqual(self.registry.members(), ["V"])
        self.assertEqual(self.registry.jtis(), ["2"])
        self.assertEqual(self.recorder.events, [("joined", "U"), ("left", "U"), ("joined", "V")])

    def test_deliver_frames_once(self) -> None:
        """One frame object is built per event and handed to every connection of the member."""
        conns = [FakeConnection(str(i)) for i in range(5)]
        for conn in conns:
            self.registry.authenticate(conn, claims("U"))
        other = FakeConnection("x")
        self.registry.authenticate(other, claims("V"))
        self.assertEqual(self.registry.deliver("U", "order", b'{"id":1}'), 5)
        frames = {id(conn.frames[0]) for conn in conns}
        self.assertEqual(len(frames), 1)
        self.assertEqual(other.frames, [])
        [frame], rest = parse_frames(conns[0].frames[0])
        self.assertEqual((frame.opcode, frame.json, rest), (1, {"order": {"id": 1}}, b""))

    def test_deliver_unknown_member(self) -> None:
        """Delivering to a member with no connection sends nothing."""
        self.assertEqual(self.registry.deliver("nobody", "order", b"{}"), 0)

    def test_one_failing_connection(self) -> None:
        """A connection that raises does not stop the fan-out to the others."""
        good, bad = FakeConnection("good"), Broken("bad")
        self.registry.authenticate(bad, claims("U"))
        self.registry.authenticate(good, claims("U"))
        self.assertEqual(self.registry.deliver("U", "order", b"{}"), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_refused_not_counted(self) -> None:
        """Connections that refuse the frame (closing, too slow) are not counted as delivered."""
        self.registry.authenticate(FakeConnection("a", accept=False), claims("U"))
        self.assertEqual(self.registry.deliver("U", "order", b"{}"), 0)

    def test_revoke_by_jti_and_uid(self) -> None:
        """Revocation ends exactly the sessions named, by jti or by uid."""
        a, b, c = FakeConnection("a"), FakeConnection("b"), FakeConnection("c")
        self.registry.authenticate(a, claims("U", "1"))
        self.registry.authenticate(b, claims("U", "2"))
        self.registry.authenticate(c, claims("V", "1"))
        self.assertEqual(self.registry.revoke(jti="2"), 1)
        self.assertEqual((a.revoked, b.revoked, c.revoked), (False, True, False))
        self.assertEqual(self.registry.revoke(uid="U"), 1)
        self.assertTrue(a.revoked)
        self.assertEqual(self.registry.members(), ["V"])
        self.assertEqual(self.registry.revoke(uid="nobody"), 0)


class BatchTests(SynchronousTestCase):
    """Registry.begin_batch/end_batch: one write per connection for a whole read."""

    def setUp(self) -> None:
        self.registry = Registry(Metrics())

    def test_frames_held_until_the_batch_ends(self) -> None:
        """Nothing is written during the batch; at its end each connection gets its frames, in order."""
        many = ManyFramesConnection("m")
        one = FakeConnection("o")
        self.registry.authenticate(many, claims("U"))
        self.registry.authenticate(one, claims("V"))
        self.registry.begin_batch()
        self.assertEqual(self.registry.deliver("U", "order", b'{"id":1}'), 1)
        self.assertEqual(self.registry.deliver("V", "trade", b'{"id":2}'), 1)
        self.assertEqual(self.registry.deliver("U", "order", b'{"id":3}'), 1)
        self.assertEqual((many.writes, one.frames), ([], []))
        self.registry.end_batch()
        [write] = many.writes
        frames, rest = parse_frames(write)
        self.assertEqual(([f.json for f in frames], rest), ([{"order": {"id": 1}}, {"order": {"id": 3}}], b""))
        self.assertEqual([parse_frames(f)[0][0].json for f in one.frames], [{"trade": {"id": 2}}])

    def test_after_the_batch_writes_are_immediate(self) -> None:
        """end_batch closes the batch; ending one that was never begun does nothing."""
        conn = FakeConnection("a")
        self.registry.authenticate(conn, claims("U"))
        self.registry.end_batch()
        self.registry.begin_batch()
        self.registry.begin_batch()
        self.registry.deliver("U", "order", b"{}")
        self.registry.end_batch()
        self.registry.deliver("U", "order", b"[]")
        self.assertEqual(len(conn.frames), 2)

    def test_one_failing_connection(self) -> None:
        """A connection that raises at the end of the batch does not stop the others."""
        good, bad = FakeConnection("good"), Broken("bad")
        self.registry.authenticate(bad, claims("U"))
        self.registry.authenticate(good, claims("U"))
        self.registry.begin_batch()
        self.registry.deliver("U", "order", b"{}")
        self.registry.end_batch()
        self.assertEqual(len(good.frames), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ManyFramesConnection(FakeConnection):
    """A connection that takes several frames in one write, as StreamProtocol does."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.writes: list[bytes] = []

    def send_frames(self, frames: list[bytes]) -> bool:
        self.writes.append(b"".join(frames))
        return True


class FramingTests(SynchronousTestCase):
    def test_lengths(self) -> None:
        """Frames use the 7-bit, 16-bit and 64-bit length forms at their boundaries."""
        for n in (0, 125, 126, 65535, 65536, 1_000_000):
            frame = text_frame(b"x" * n)
            [parsed], rest = parse_frames(frame)
            self.assertEqual((parsed.opcode, len(parsed.payload), rest), (1, n, b""))
        self.assertEqual(text_frame(b"x" * 126)[1], 126)
        self.assertEqual(struct.unpack("!H", text_frame(b"x" * 126)[2:4])[0], 126)
        self.assertEqual(text_frame(b"x" * 65536)[1], 127)

    def test_event_message(self) -> None:
        """The event name is JSON-escaped and the payload kept byte for byte."""
        self.assertEqual(event_message("order", b'{"a": 1}'), b'{"order":{"a": 1}}')
        self.assertEqual(json.loads(event_message('we"ird', b"[]")), {'we"ird': []})


class Ranger(FakeConnection):
    """A connection that chooses its private events (the ranger dialect's C{private_streams})."""

    def __init__(self, conn_id: str, *streams: str) -> None:
        super().__init__(conn_id)
        self.private_streams = set(streams)


class SelectiveDeliveryTests(SynchronousTestCase):
    """A connection with C{private_streams} gets only those of its member's events; others get all."""

    def setUp(self) -> None:
        self.registry = Registry(Metrics())

    def events(self, conn: FakeConnection) -> list[str]:
        return [next(iter(parse_frames(frame)[0][0].json)) for frame in conn.frames]

    def test_beside_a_legacy_connection(self) -> None:
        legacy, ranger = FakeConnection("l"), Ranger("r", "order")
        self.registry.authenticate(legacy, claims("U", "1"))
        self.registry.authenticate(ranger, claims("U", "2"))
        self.assertEqual(self.registry.deliver("U", "order", b"{}"), 2)
        self.assertEqual(self.registry.deliver("U", "trade", b"{}"), 1)
        self.assertEqual((self.events(legacy), self.events(ranger)), (["order", "trade"], ["order"]))

    def test_nobody_wants_it(self) -> None:
        """Only connections that chose other events: nobody gets it, and none is counted."""
        ranger = Ranger("r", "order")
        self.registry.authenticate(ranger, claims("U"))
        self.assertEqual(self.registry.deliver("U", "trade", b"{}"), 0)
        self.assertEqual(self.registry.deliver("U", "order", b"{}"), 1)
        self.assertEqual(self.events(ranger), ["order"])

    def test_choice_outlives_a_sibling(self) -> None:
        """Two choosing connections of one member: when one goes, the other still gets only its events."""
        first, second = Ranger("r1", "order"), Ranger("r2", "order")
        self.registry.authenticate(first, claims("U", "1"))
        self.registry.authenticate(second, claims("U", "2"))
        self.registry.deauthenticate(first)
        self.assertEqual(self.registry.deliver("U", "trade", b"{}"), 0)
        self.registry.deauthenticate(second)
        third = Ranger("r3", "order")
        self.registry.authenticate(third, claims("U", "3"))
        self.assertEqual(self.registry.deliver("U", "trade", b"{}"), 0)
        self.assertEqual(self.registry.deliver("U", "order", b"{}"), 1)
        self.assertEqual((second.frames, self.events(third)), ([], ["order"]))

    def test_legacy_leaving_keeps_the_choice(self) -> None:
        legacy, ranger = FakeConnection("l"), Ranger("r", "order")
        self.registry.authenticate(legacy, claims("U", "1"))
        self.registry.authenticate(ranger, claims("U", "2"))
        self.registry.deauthenticate(legacy)
        self.assertEqual(self.registry.deliver("U", "trade", b"{}"), 0)
        self.assertEqual(ranger.frames, [])

    def test_nothing_kept_of_members_gone(self) -> None:
        """
        Once every connection of a member has gone (or moved to another
        member), the registry keeps nothing of it: no index entry, no count
        of its choosing connections (which would grow with every member
        ever seen).
        """
        conns = [Ranger("r1", "order"), Ranger("r2", "trade"), FakeConnection("l"), Ranger("r3")]
        for i, conn in enumerate(conns):
            self.registry.authenticate(conn, claims("U", str(i)))
        self.registry.authenticate(conns[3], claims("V", "v"))
        for conn in conns:
            self.registry.deauthenticate(conn)
        self.assertEqual(len(self.registry), 0)
        state: dict[str, Any] = vars(self.registry)
        self.assertEqual(
            {name: state[name] for name in ("_by_uid", "_by_jti", "_claims", "_selective")},
            {"_by_uid": {}, "_by_jti": {}, "_claims": {}, "_selective": {}},
        )


class Recorder(FakeConnection):
    """Keeps the very object each C{send_frames} was given (to see which connections share one)."""

    def __init__(self, conn_id: str) -> None:
        super().__init__(conn_id)
        self.given: list[Any] = []

    def send_frames(self, frames: Any) -> bool:
        self.given.append(frames)
        return True


#: The fewest recipients of one event held once for all of them (Registry.fan_out).
SHARED_FROM = 16


class BatchSharingTests(SynchronousTestCase):
    """
    In a batch, an event for many connections is held once and each set
    of connections that got the same events gets one tuple of frames,
    which L{StreamProtocol.send_frames} joins once for all of them.
    """

    def setUp(self) -> None:
        self.registry = Registry(Metrics())

    def conns(self, count: int, prefix: str = "c") -> list[Recorder]:
        return [Recorder(f"{prefix}{i}") for i in range(count)]

    def test_many_share_one_tuple(self) -> None:
        """From SHARED_FROM recipients on, every connection is given the same tuple, once."""
        conns = self.conns(SHARED_FROM)
        self.registry.begin_batch()
        self.registry.fan_out(set(conns), b"A")
        self.registry.fan_out(set(conns), b"B")
        self.registry.end_batch()
        [given] = conns[0].given
        self.assertEqual(given, (b"A", b"B"))
        for conn in conns:
            self.assertEqual(len(conn.given), 1)
            self.assertIs(conn.given[0], given)

    def test_few_each_their_own(self) -> None:
        """Below SHARED_FROM, each connection's frames are its own (as a member's connections are)."""
        conns = self.conns(SHARED_FROM - 1)
        self.registry.begin_batch()
        self.registry.fan_out(set(conns), b"A")
        self.registry.fan_out(set(conns), b"B")
        self.registry.end_batch()
        self.assertEqual([[list(g) for g in conn.given] for conn in conns], [[[b"A", b"B"]]] * len(conns))
        self.assertEqual(len({id(conn.given[0]) for conn in conns}), len(conns))

    def test_same_events_same_tuple(self) -> None:
        """Connections among the same several recipients share one merged tuple, in the batch's order."""
        shared = self.conns(2, "s")
        first, second = set(self.conns(20, "x")) | set(shared), set(self.conns(20, "y")) | set(shared)
        self.registry.begin_batch()
        self.registry.fan_out(first, b"A")
        self.registry.fan_out(second, b"B")
        self.registry.fan_out(first, b"C")
        self.registry.end_batch()
        [one], [two] = shared[0].given, shared[1].given
        self.assertEqual(one, (b"A", b"B", b"C"))
        self.assertIs(one, two)

    def test_few_after_many_keep_their_order(self) -> None:
        """Once an event for many is held, an event for one connection comes after it, not before."""
        conns = self.conns(20)
        self.registry.begin_batch()
        self.registry.fan_out(set(conns), b"A")
        self.assertEqual(self.registry.fan_out([conns[0]], b"B"), 1)
        self.registry.end_batch()
        self.assertEqual([list(g) for g in conns[0].given], [[b"A", b"B"]])
        self.assertEqual([list(g) for g in conns[1].given], [[b"A"]])

    def test_nobody_after_many(self) -> None:
        """An event for no connection at all is held for none, before or after events for many."""
        conns = self.conns(20)
        self.registry.begin_batch()
        self.assertEqual(self.registry.fan_out(set(), b"0"), 0)
        self.assertEqual(self.registry.fan_out(set(conns), b"A"), 20)
        self.assertEqual(self.registry.fan_out(set(), b"B"), 0)
        self.assertEqual(self.registry.fan_out([], b"C"), 0)
        self.registry.end_batch()
        self.assertEqual([list(g) for g in conns[0].given], [[b"A"]])


class Failing(FakeConnection):
    def send_frame(self, frame: bytes) -> bool:
        raise RuntimeError("boom")

    def send_frames(self, frames: Any) -> bool:
        raise RuntimeError("boom")


class FailureLogTests(SynchronousTestCase):
    """A connection that raises is logged, under peatio_ws.registry, saying what was lost and whose."""

    def setUp(self) -> None:
        self.registry = Registry(Metrics())
        self.events: list[dict[str, Any]] = []

        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            if event.get("log_failure") is not None:
                self.events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def lines(self) -> list[tuple[str, str]]:
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), len(self.events))
        return [(event["log_namespace"], formatEvent(event)) for event in self.events]

    def test_immediate(self) -> None:
        self.registry.authenticate(Broken("bad"), claims("U"))
        self.registry.deliver("U", "order", b"{}")
        self.assertEqual(self.lines(), [("peatio_ws.registry", "delivering a frame to bad")])

    def test_batch_of_few(self) -> None:
        self.registry.authenticate(Failing("bad"), claims("U"))
        self.registry.begin_batch()
        self.registry.deliver("U", "order", b"{}")
        self.registry.deliver("U", "trade", b"{}")
        self.registry.end_batch()
        self.assertEqual(self.lines(), [("peatio_ws.registry", "delivering 2 events to bad")])

    def test_batch_of_many(self) -> None:
        conns: list[FakeConnection] = [FakeConnection(f"c{i}") for i in range(SHARED_FROM)]
        conns.append(Failing("bad"))
        self.registry.begin_batch()
        self.registry.fan_out(set(conns), b"A")
        self.registry.fan_out(set(conns), b"B")
        self.registry.fan_out(set(conns), b"C")
        self.registry.end_batch()
        self.assertEqual(self.lines(), [("peatio_ws.registry", "delivering 3 events to bad")])
        self.assertEqual(conns[0].frames, [b"A", b"B", b"C"])


class EndOfSessionCountTests(SynchronousTestCase):
    """revoke and events_lost say how many sessions they ended, exactly."""

    def setUp(self) -> None:
        self.registry = Registry(Metrics())
        self.conns = [FakeConnection("a"), FakeConnection("b"), FakeConnection("c")]
        self.registry.authenticate(self.conns[0], claims("U", "1"))
        self.registry.authenticate(self.conns[1], claims("U", "2"))
        self.registry.authenticate(self.conns[2], claims("V", "1"))

    def test_revoke_nothing_named(self) -> None:
        self.assertEqual(self.registry.revoke(), 0)
        self.assertEqual([c.revoked for c in self.conns], [0, 0, 0])

    def test_revoke_a_member(self) -> None:
        self.assertEqual(self.registry.revoke(uid="U"), 2)
        self.assertEqual([c.revoked for c in self.conns], [1, 1, 0])
        self.assertEqual(self.registry.revoke(jti="1"), 1)

    def test_events_lost(self) -> None:
        self.assertEqual(self.registry.events_lost(), 3)
        self.assertEqual([c.lost for c in self.conns], [1, 1, 1])
        self.assertEqual((len(self.registry), self.registry.members()), (0, []))
        self.assertEqual(self.registry.events_lost(), 0)


class Binder(MembershipRecorder):
    """An observer that can say when a member's events flow (as the broker consumer does)."""

    def __init__(self, answer: Deferred[None] | None) -> None:
        super().__init__()
        self.answer = answer
        self.asked: list[str] = []

    def events_flowing(self, uid: str) -> Deferred[None] | None:
        self.asked.append(uid)
        return self.answer


class EventsFlowingTests(SynchronousTestCase):
    """authenticate returns what an observer's events_flowing says: a Deferred to wait for, or None."""

    def test_no_observer_that_can_say(self) -> None:
        registry = Registry(Metrics())
        registry.add_observer(MembershipRecorder())
        self.assertIsNone(registry.authenticate(FakeConnection("a"), claims("U")))

    def test_already_flowing(self) -> None:
        registry = Registry(Metrics())
        binder = Binder(None)
        registry.add_observer(binder)
        self.assertIsNone(registry.authenticate(FakeConnection("a"), claims("U")))
        self.assertEqual(binder.asked, ["U"])

    def test_wait(self) -> None:
        """The observer's Deferred itself, asked after the connection is in the registry."""
        registry = Registry(Metrics())
        waiting: Deferred[None] = Deferred()
        binder = Binder(waiting)
        registry.add_observer(binder)
        conn = FakeConnection("a")
        self.assertIs(registry.authenticate(conn, claims("U")), waiting)
        self.assertEqual((binder.events, binder.asked, registry.connections("U")), ([("joined", "U")], ["U"], {conn}))

    def test_first_that_waits(self) -> None:
        """Observers are asked in order; the first with a Deferred answers."""
        registry = Registry(Metrics())
        first: Deferred[None] = Deferred()
        quiet, waits, later = Binder(None), Binder(first), Binder(Deferred())
        for observer in (quiet, waits, later):
            registry.add_observer(observer)
        self.assertIs(registry.authenticate(FakeConnection("a"), claims("U")), first)
        self.assertEqual((quiet.asked, waits.asked, later.asked), (["U"], ["U"], []))

