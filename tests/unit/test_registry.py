"""
Tests for L{peatio_ws.registry} and L{peatio_ws.framing}, with plain fake
connections: no Autobahn involved.
"""

from __future__ import annotations

import json
import struct

from twisted.trial.unittest import SynchronousTestCase

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
        self.assertEqual(self.metrics.members._value.get(), 2)
        self.assertEqual(self.metrics.authenticated_connections._value.get(), 3)

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
