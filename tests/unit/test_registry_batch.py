"""
Tests for the registry's batch (L{Registry.begin_batch}, L{Registry.fan_out},
L{Registry.end_batch}) when events go to many connections: the frames are
held once per event for all of its recipients, and each connection still
gets exactly its frames, in the order they were delivered, in one write.
"""

from __future__ import annotations

import json
import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.auth import Claims
from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry
from peatio_ws.testing import FakeConnection, make_token, settings_for_tests
from peatio_ws.testing.factory import stream_factory
from peatio_ws.testing.wsclient import Client
from peatio_ws.websocket import CloseCode

#: More recipients than the registry keeps per connection (its per-connection path is for fewer).
MANY = 40


class Writer(FakeConnection):
    """A connection that takes several frames in one write, as StreamProtocol does."""

    def __init__(self, conn_id: str, fail: bool = False) -> None:
        super().__init__(conn_id)
        self.writes: list[list[bytes]] = []
        self.fail = fail

    def send_frames(self, frames: list[bytes]) -> bool:
        if self.fail:
            raise RuntimeError("boom")
        self.writes.append(list(frames))
        self.frames.extend(frames)
        return True


def frame(n: int) -> bytes:
    return b"frame-%d" % n


class ManyRecipientsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = Registry(Metrics())

    def test_one_write_each_in_order(self) -> None:
        """Every subscriber gets the batch's frames in one write, in order; the counts are per recipient."""
        subscribers = {Writer(f"s{i}") for i in range(MANY)}
        self.registry.begin_batch()
        self.assertEqual([self.registry.fan_out(subscribers, frame(n)) for n in range(3)], [MANY] * 3)
        self.assertEqual([c.writes for c in subscribers], [[]] * MANY)
        self.registry.end_batch()
        for conn in subscribers:
            self.assertEqual(conn.writes, [[frame(0), frame(1), frame(2)]])

    def test_private_and_public_interleaved(self) -> None:
        """
        A member's connection among a market's subscribers gets its private
        frames and the market's in the order they were delivered, before,
        between and after the frames for many.
        """
        member = Writer("member")
        self.registry.authenticate(member, Claims(uid="U", jti="j", expires_at=None))
        subscribers = {member, *(Writer(f"s{i}") for i in range(MANY))}
        self.registry.begin_batch()
        self.registry.deliver("U", "order", b"{}")
        self.registry.fan_out(subscribers, frame(1))
        self.registry.deliver("U", "trade", b"[]")
        self.registry.fan_out(subscribers, frame(2))
        self.registry.deliver("U", "order", b"{}")
        self.registry.end_batch()
        self.assertEqual(len(member.writes), 1)
        self.assertEqual(
            [f[-len(frame(1)) :] if f.startswith(b"frame") else f[2:8] for f in member.writes[0]],
            [b'{"orde', frame(1), b'{"trad', frame(2), b'{"orde'],
        )
        for conn in subscribers - {member}:
            self.assertEqual(conn.writes, [[frame(1), frame(2)]])

    def test_overlapping_markets(self) -> None:
        """Subscribers of two markets at once get both markets' frames merged in delivery order."""
        both = [Writer(f"b{i}") for i in range(5)]
        a = {*both, *(Writer(f"a{i}") for i in range(MANY))}
        b = {*both, *(Writer(f"c{i}") for i in range(MANY))}
        self.registry.begin_batch()
        for n in range(6):
            self.registry.fan_out(a if n % 2 == 0 else b, frame(n))
        self.registry.end_batch()
        for conn in both:
            self.assertEqual(conn.writes, [[frame(n) for n in range(6)]])
        for conn in a - set(both):
            self.assertEqual(conn.writes, [[frame(0), frame(2), frame(4)]])
        for conn in b - set(both):
            self.assertEqual(conn.writes, [[frame(1), frame(3), frame(5)]])

    def test_recipients_as_they_were(self) -> None:
        """
        A frame goes to the recipients at the time of its fan-out: one who
        joins the set later in the batch gets only what follows, one who
        leaves it still gets what came before.
        """
        subscribers = {Writer(f"s{i}") for i in range(MANY)}
        late, leaving = Writer("late"), next(iter(subscribers))
        self.registry.begin_batch()
        self.registry.fan_out(subscribers, frame(0))
        subscribers.add(late)
        subscribers.discard(leaving)
        self.assertEqual(self.registry.fan_out(subscribers, frame(1)), MANY)
        self.registry.end_batch()
        self.assertEqual(late.writes, [[frame(1)]])
        self.assertEqual(leaving.writes, [[frame(0)]])
        for conn in subscribers - {late}:
            self.assertEqual(conn.writes, [[frame(0), frame(1)]])

    def test_one_failing_connection(self) -> None:
        """A subscriber that raises does not stop the others; the failure is logged."""
        subscribers = {Writer(f"s{i}") for i in range(MANY)}
        bad = Writer("bad", fail=True)
        subscribers.add(bad)
        self.registry.begin_batch()
        self.registry.fan_out(subscribers, frame(0))
        self.registry.end_batch()
        self.assertEqual(sum(len(c.writes) for c in subscribers), MANY)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_connections_without_send_frames(self) -> None:
        """A connection with send_frame only gets each frame, in order."""
        plain = [FakeConnection(f"p{i}") for i in range(MANY)]
        self.registry.begin_batch()
        self.registry.fan_out(plain, frame(0))
        self.registry.fan_out(plain[:3], frame(1))
        self.registry.fan_out(plain, frame(2))
        self.registry.end_batch()
        self.assertEqual(plain[0].frames, [frame(0), frame(1), frame(2)])
        self.assertEqual(plain[-1].frames, [frame(0), frame(2)])

    def test_empty_recipients(self) -> None:
        """Nobody to send to: nothing held, 0 returned."""
        self.registry.begin_batch()
        self.assertEqual(self.registry.fan_out(set(), frame(0)), 0)
        self.registry.end_batch()

    def test_against_a_model(self) -> None:
        """
        Random batches of fan-outs to few and to many, over overlapping
        sets that change between fan-outs: each connection gets, in one
        write, exactly the frames it was a recipient of, in order.
        """
        for seed in range(40):
            rng = random.Random(seed)
            pool = [Writer(f"c{i}") for i in range(3 * MANY)]
            sets = [set(rng.sample(pool, rng.choice((1, 2, MANY, 2 * MANY)))) for _ in range(4)]
            expected: dict[Writer, list[bytes]] = {c: [] for c in pool}
            self.registry.begin_batch()
            for n in range(rng.randrange(1, 30)):
                if rng.random() < 0.2:
                    target = sets[rng.randrange(len(sets))]
                    if target and rng.random() < 0.5:
                        target.discard(rng.choice(sorted(target, key=lambda c: c.conn_id)))
                    else:
                        target.add(rng.choice(pool))
                recipients = sets[rng.randrange(len(sets))]
                as_list = rng.random() < 0.3
                self.registry.fan_out(list(recipients) if as_list else recipients, frame(n))
                for conn in recipients:
                    expected[conn].append(frame(n))
            self.registry.end_batch()
            for conn in pool:
                self.assertEqual(conn.writes, [expected[conn]] if expected[conn] else [], f"seed {seed}")


class SharedFramesTests(SynchronousTestCase):
    """
    Real connections (L{StreamProtocol}, in memory) given one batch's frames
    for many: each writes them in one write, joined once for all, and the
    slow-consumer limit still holds for each.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.metrics = Metrics()
        self.registry = Registry(self.metrics)
        self.factory = stream_factory(
            settings_for_tests(websocket_max_buffer=100_000), self.clock, registry=self.registry, metrics=self.metrics
        )

    def member(self) -> Client:
        client = Client.connect(self.factory)
        self.addCleanup(client.lose)
        client.messages()
        client.send_json({"jwt": "Bearer " + make_token(now=self.clock.seconds(), uid="U")})
        self.assertEqual(client.messages(), [{"success": {"message": "Authenticated."}}])
        return client

    def test_one_write_each(self) -> None:
        """Each of many connections of a member gets the batch's frames in one write, in order."""
        clients = [self.member() for _ in range(MANY)]
        before = [len(client.transport.value()) for client in clients]
        writes: list[bytes] = []
        transport = clients[0].transport
        original = transport.write

        def write(data: bytes) -> None:
            writes.append(data)
            original(data)

        transport.write = write  # type: ignore[method-assign]
        self.registry.begin_batch()
        for n in range(3):
            self.assertEqual(self.registry.deliver("U", "order", b'{"id":%d}' % n), MANY)
        self.assertEqual([len(c.transport.value()) for c in clients], before)
        self.registry.end_batch()
        self.assertEqual(len(writes), 1)
        self.assertEqual({c.transport.value()[n:] for c, n in zip(clients, before, strict=True)}, {writes[0]})
        for client in clients:
            self.assertEqual([m["order"]["id"] for m in client.messages()], [0, 1, 2])

    def test_slow_consumer_among_many(self) -> None:
        """A connection that stops reading is closed with 4008 past its limit; the others get everything."""
        clients = [self.member() for _ in range(MANY)]
        slow = clients[0]
        slow.protocol.pauseProducing()
        payload = json.dumps({"x": "y" * 10_000}).encode()
        for _ in range(3):
            self.registry.begin_batch()
            for _ in range(4):
                self.registry.deliver("U", "order", payload)
            self.registry.end_batch()
        self.assertEqual(slow.close_code(), CloseCode.SLOW_CONSUMER)
        self.assertEqual(self.metrics.slow_consumer_closes._value.get(), 1)
        for client in clients[1:]:
            self.assertEqual(len(client.messages()), 12)
            self.assertIsNone(client.close_code())
