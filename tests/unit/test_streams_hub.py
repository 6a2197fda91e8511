"""
Tests for L{peatio_ws.streams.hub}: who is subscribed to which public
stream, the fan-out of public events (framed once, through the registry's
batch), the order books behind C{<m>.ob-inc}, the registry's filter of a
ranger member's private events, and what /metrics reads at scrape time.

Connections are plain fakes with the attributes the hub reads
(C{subscriptions}, C{private_streams}) and L{FakeConnection}'s record of
the frames it was sent.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.auth import Claims
from peatio_ws.framing import event_message, text_frame
from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry
from peatio_ws.streams import PublicHub
from peatio_ws.streams.names import Stream, parse_stream
from peatio_ws.testing.fakes import FakeConnection


class Subscriber(FakeConnection):
    """A connection as the hub sees it: a ranger member has a set of private streams, others None."""

    def __init__(self, conn_id: str, member: bool = False, **kw: Any) -> None:
        super().__init__(conn_id, **kw)
        self.subscriptions: dict[str, Stream] = {}
        self.private_streams: set[str] | None = set() if member else None
        self.writes: list[list[bytes]] = []

    def send_frames(self, frames: list[bytes]) -> bool:
        """One write of several frames (what the registry's batch calls)."""
        self.writes.append(list(frames))
        self.frames.extend(frames)
        return True


def frame(stream: str, body: bytes) -> bytes:
    return text_frame(event_message(stream, body))


def streams(*names: str) -> list[Stream]:
    parsed = [parse_stream(name) for name in names]
    assert all(p is not None for p in parsed), names
    return [p for p in parsed if p is not None]


def snap_body(seq: int) -> bytes:
    return b'{"asks":[["1.0","2"]],"bids":[],"sequence":%d}' % seq


def inc_body(seq: int) -> bytes:
    return b'{"asks":["1.0","3"],"sequence":%d}' % seq


class HubTestCase(SynchronousTestCase):
    max_increments = 10

    def setUp(self) -> None:
        self.metrics = Metrics()
        self.registry = Registry(self.metrics)
        self.hub = PublicHub(self.registry, self.metrics, self.max_increments)

    def conn(self, name: str, *names: str, member: bool = False) -> Subscriber:
        conn = Subscriber(name, member=member)
        self.hub.subscribe(conn, streams(*names))
        return conn

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


class SubscribeTests(HubTestCase):
    def test_subscriptions_on_the_connection(self) -> None:
        """subscribe adds to the connection's subscriptions, in order, once each."""
        conn = self.conn("c", "btcusd.trades", "global.tickers")
        self.hub.subscribe(conn, streams("global.tickers", "ethusd.trades"))
        self.assertEqual(list(conn.subscriptions), ["btcusd.trades", "global.tickers", "ethusd.trades"])

    def test_private_only_for_members(self) -> None:
        """A private stream is taken only when private_streams is a set (a member); never listed otherwise."""
        anonymous = self.conn("anon", "order", "btcusd.trades")
        self.assertEqual(list(anonymous.subscriptions), ["btcusd.trades"])
        self.assertIsNone(anonymous.private_streams)
        member = self.conn("member", "order", "trade", "btcusd.trades", member=True)
        self.assertEqual(list(member.subscriptions), ["order", "trade", "btcusd.trades"])
        self.assertEqual(member.private_streams, {"order", "trade"})

    def test_unsubscribe(self) -> None:
        """unsubscribe removes what the connection has, ignores the rest; no event reaches it after."""
        conn = self.conn("c", "btcusd.trades", "order", "btcusd.ob-inc", member=True)
        self.hub.unsubscribe(conn, streams("order", "btcusd.trades", "btcusd.ob-inc", "never.subscribed", "trade"))
        self.assertEqual(conn.subscriptions, {})
        self.assertEqual(conn.private_streams, set())
        self.assertEqual(self.hub.publish("btcusd", "trades", b"{}"), 0)
        self.hub.publish("btcusd", "ob-snap", snap_body(1))
        self.assertEqual(conn.frames, [])

    def test_forget(self) -> None:
        """A closed connection leaves every index; the hub forgets books made only for it."""
        conn = self.conn("c", "btcusd.trades", "order", "xyz.ob-inc", member=True)
        self.hub.forget(conn)
        self.assertEqual(conn.subscriptions, {})
        self.assertEqual(self.hub.publish("btcusd", "trades", b"{}"), 0)
        self.assertNotIn("xyz", self.hub.books)
        self.assertEqual(self.hub.subscription_counts(), {})
        self.hub.forget(conn)
        self.hub.forget(Subscriber("never"))

    def test_books_with_history_kept(self) -> None:
        """A book that has followed events stays when its last subscriber leaves (it stays warm)."""
        conn = self.conn("c", "btcusd.ob-inc")
        self.hub.publish("btcusd", "ob-snap", snap_body(3))
        self.hub.forget(conn)
        self.assertIn("btcusd", self.hub.books)
        late = Subscriber("late")
        self.assertEqual(self.hub.subscribe(late, streams("btcusd.ob-inc")), [frame("btcusd.ob-snap", snap_body(3))])


class PublicFanOutTests(HubTestCase):
    def test_subscribers_only(self) -> None:
        """A public event goes to the subscribers of <id>.<event> only, as {"<id>.<event>": payload}."""
        a = self.conn("a", "btcusd.trades")
        b = self.conn("b", "btcusd.trades", "ethusd.trades")
        other = self.conn("other", "ethusd.trades", "btcusd.kline-1m", "global.tickers")
        nobody = self.conn("nobody")
        body = b'{"tid":1,"price":"1.5","amount":"2"}'
        self.assertEqual(self.hub.publish("btcusd", "trades", body), 2)
        self.assertEqual(a.frames, [frame("btcusd.trades", body)])
        self.assertEqual(b.frames, [frame("btcusd.trades", body)])
        self.assertEqual(other.frames + nobody.frames, [])

    def test_framed_once(self) -> None:
        """Every subscriber is sent the very same bytes object: the event is framed once."""
        conns = [self.conn(f"c{i}", "global.tickers") for i in range(5)]
        self.hub.publish("global", "tickers", b'{"btcusd":{"last":"1"}}')
        first = conns[0].frames[0]
        for conn in conns:
            [sent] = conn.frames
            self.assertIs(sent, first)

    def test_payload_as_published(self) -> None:
        """The payload bytes are forwarded untouched, odd spacing and non-ASCII included."""
        conn = self.conn("c", "btcusd.trades")
        body = '{ "price" : "0.10000000", "market":"比特币", "x":1e400 }'.encode()
        self.hub.publish("btcusd", "trades", body)
        self.assertEqual(conn.frames, [text_frame(b'{"btcusd.trades":' + body + b"}")])

    def test_no_subscriber(self) -> None:
        """An event nobody wants is counted as received, sent to no one."""
        self.assertEqual(self.hub.publish("btcusd", "trades", b"{}"), 0)
        self.assertEqual(self.value("peatio_ws_public_events_received_total", event="trades"), 1)
        self.assertIsNone(self.value("peatio_ws_public_copies_total", event="trades"))

    def test_refused_frame_not_counted(self) -> None:
        """A connection that refuses the frame (closing, slow) is not counted as sent."""
        ok = self.conn("ok", "btcusd.trades")
        closing = Subscriber("closing", accept=False)
        self.hub.subscribe(closing, streams("btcusd.trades"))
        self.assertEqual(self.hub.publish("btcusd", "trades", b"{}"), 1)
        self.assertEqual(len(ok.frames), 1)

    def test_batch(self) -> None:
        """
        Within a registry batch, public and private frames reach a
        connection in one write, in the order they were published.
        """
        member = self.conn("m", "order", "btcusd.trades", member=True)
        self.registry.authenticate(member, Claims(uid="U1", jti="j1", expires_at=None))
        self.registry.begin_batch()
        self.hub.publish("btcusd", "trades", b'{"n":1}')
        self.registry.deliver("U1", "order", b'{"n":2}')
        self.hub.publish("btcusd", "trades", b'{"n":3}')
        self.assertEqual(member.frames, [])
        self.registry.end_batch()
        self.assertEqual(
            member.writes,
            [[frame("btcusd.trades", b'{"n":1}'), frame("order", b'{"n":2}'), frame("btcusd.trades", b'{"n":3}')]],
        )

    def test_metrics(self) -> None:
        """Public events received and copies written, by stream family; odd events count as "other"."""
        for i in range(3):
            self.conn(f"c{i}", "btcusd.trades", "btcusd.made-up")
        self.hub.publish("btcusd", "trades", b"{}")
        self.hub.publish("btcusd", "trades", b"{}")
        self.hub.publish("btcusd", "made-up", b"{}")
        self.assertEqual(self.value("peatio_ws_public_events_received_total", event="trades"), 2)
        self.assertEqual(self.value("peatio_ws_public_copies_total", event="trades"), 6)
        self.assertEqual(self.value("peatio_ws_public_events_received_total", event="other"), 1)
        self.assertEqual(self.value("peatio_ws_public_copies_total", event="other"), 3)
        self.assertIsNone(self.value("peatio_ws_public_events_received_total", event="made-up"))


class OrderBookHubTests(HubTestCase):
    max_increments = 2

    def test_replay_on_subscribe(self) -> None:
        """A new <m>.ob-inc subscriber gets the snapshot then the stored increments, as frames, in order."""
        self.hub.publish("btcusd", "ob-snap", snap_body(5))
        self.hub.publish("btcusd", "ob-inc", inc_body(6))
        self.hub.publish("btcusd", "ob-inc", inc_body(7))
        conn = Subscriber("c")
        replay = self.hub.subscribe(conn, streams("btcusd.trades", "btcusd.ob-inc"))
        self.assertEqual(
            replay,
            [frame("btcusd.ob-snap", snap_body(5)), frame("btcusd.ob-inc", inc_body(6)),
             frame("btcusd.ob-inc", inc_body(7))],
        )
        self.assertEqual(conn.frames, [])  # the replay is the caller's to write
        self.hub.publish("btcusd", "ob-inc", inc_body(8))
        self.assertEqual(conn.frames, [frame("btcusd.ob-inc", inc_body(8))])

    def test_replay_for_each_market(self) -> None:
        """Subscribing two markets' ob-inc at once replays both, in the order asked."""
        for market in ("ethusd", "btcusd"):
            self.hub.publish(market, "ob-snap", snap_body(1))
        replay = self.hub.subscribe(Subscriber("c"), streams("btcusd.ob-inc", "ethusd.ob-inc"))
        self.assertEqual(replay, [frame("btcusd.ob-snap", snap_body(1)), frame("ethusd.ob-snap", snap_body(1))])

    def test_no_replay_past_the_bound(self) -> None:
        """max_increments replayable, one more not: the subscriber waits for the next snapshot."""
        self.hub.publish("btcusd", "ob-snap", snap_body(1))
        for seq in (2, 3):
            self.hub.publish("btcusd", "ob-inc", inc_body(seq))
        self.assertEqual(len(self.hub.subscribe(Subscriber("at"), streams("btcusd.ob-inc"))), 3)
        self.hub.publish("btcusd", "ob-inc", inc_body(4))
        waiting = Subscriber("over")
        self.assertEqual(self.hub.subscribe(waiting, streams("btcusd.ob-inc")), [])
        self.hub.publish("btcusd", "ob-inc", inc_body(5))
        self.assertEqual(waiting.frames, [])
        self.hub.publish("btcusd", "ob-snap", snap_body(5))
        self.assertEqual(waiting.frames, [frame("btcusd.ob-snap", snap_body(5))])
        self.hub.publish("btcusd", "ob-inc", inc_body(6))
        self.assertEqual(waiting.frames[-1], frame("btcusd.ob-inc", inc_body(6)))

    def test_gap_forwarded_to_no_one(self) -> None:
        """An increment that skips a sequence reaches no one; the next snapshot heals everyone."""
        conn = self.conn("c", "btcusd.ob-inc")
        self.hub.publish("btcusd", "ob-snap", snap_body(1))
        self.hub.publish("btcusd", "ob-inc", inc_body(2))
        self.assertEqual(self.hub.publish("btcusd", "ob-inc", inc_body(4)), 0)
        self.assertEqual(self.hub.publish("btcusd", "ob-inc", inc_body(5)), 0)
        self.assertEqual(self.hub.publish("btcusd", "ob-snap", snap_body(5)), 1)
        self.assertEqual(
            conn.frames,
            [frame("btcusd.ob-snap", snap_body(1)), frame("btcusd.ob-inc", inc_body(2)),
             frame("btcusd.ob-snap", snap_body(5))],
        )

    def test_sequence_as_a_string_is_a_gap(self) -> None:
        """A sequence sent as a string cannot be vouched for: it is not forwarded (baseapp would see a gap)."""
        conn = self.conn("c", "btcusd.ob-inc")
        self.hub.publish("btcusd", "ob-snap", snap_body(1))
        self.assertEqual(self.hub.publish("btcusd", "ob-inc", b'{"asks":["1","2"],"sequence":"2"}'), 0)
        self.assertEqual(len(conn.frames), 1)

    def test_market_lost(self) -> None:
        """market_lost (SPEC §8): every book waits for its next snapshot, nothing is replayed."""
        conn = self.conn("c", "btcusd.ob-inc", "ethusd.ob-inc")
        for market in ("btcusd", "ethusd"):
            self.hub.publish(market, "ob-snap", snap_body(1))
        self.hub.market_lost()
        self.assertEqual(self.hub.publish("btcusd", "ob-inc", inc_body(2)), 0)
        self.assertEqual(self.hub.subscribe(Subscriber("late"), streams("ethusd.ob-inc")), [])
        self.assertTrue(all(book.broken for book in self.hub.books.values()))
        self.assertEqual(self.hub.publish("btcusd", "ob-snap", snap_body(2)), 1)
        self.assertEqual(conn.frames[-1], frame("btcusd.ob-snap", snap_body(2)))

    def test_ob_snap_subscriber(self) -> None:
        """A subscriber of <m>.ob-snap gets every snapshot (it is a public stream like any other)."""
        conn = self.conn("c", "btcusd.ob-snap")
        self.hub.publish("btcusd", "ob-snap", snap_body(1))
        self.hub.publish("btcusd", "ob-inc", inc_body(2))
        self.hub.publish("btcusd", "ob-snap", snap_body(2))
        self.assertEqual(conn.frames, [frame("btcusd.ob-snap", snap_body(1)), frame("btcusd.ob-snap", snap_body(2))])

    def test_snapshot_once_to_a_subscriber_of_both(self) -> None:
        """A connection subscribed to both <m>.ob-inc and <m>.ob-snap gets each snapshot once, not twice."""
        conn = self.conn("c", "btcusd.ob-inc", "btcusd.ob-snap")
        self.assertEqual(self.hub.publish("btcusd", "ob-snap", snap_body(1)), 1)
        self.assertEqual(conn.frames, [frame("btcusd.ob-snap", snap_body(1))])
        self.hub.publish("btcusd", "ob-inc", inc_body(2))
        # Restart: the snapshot goes to everyone, still once each.
        self.assertEqual(self.hub.publish("btcusd", "ob-snap", snap_body(1)), 1)
        self.assertEqual(len(conn.frames), 3)

    def test_snapshot_once_within_a_batch(self) -> None:
        """The same holds inside a registry batch (one write, the snapshot once)."""
        conn = self.conn("c", "btcusd.ob-inc", "btcusd.ob-snap")
        self.registry.begin_batch()
        self.hub.publish("btcusd", "ob-snap", snap_body(1))
        self.registry.end_batch()
        self.assertEqual(conn.writes, [[frame("btcusd.ob-snap", snap_body(1))]])


class PrivateFilterTests(HubTestCase):
    """The registry delivers a ranger member's private events by its subscriptions; legacy gets everything."""

    def test_ranger_member_gets_subscribed_events_only(self) -> None:
        ranger = self.conn("ranger", "order", member=True)
        legacy = FakeConnection("legacy")
        for conn in (ranger, legacy):
            self.registry.authenticate(conn, Claims(uid="U1", jti="j-" + conn.conn_id, expires_at=None))
        self.assertEqual(self.registry.deliver("U1", "order", b'{"id":1}'), 2)
        self.assertEqual(self.registry.deliver("U1", "trade", b'{"id":2}'), 1)
        self.assertEqual(ranger.frames, [frame("order", b'{"id":1}')])
        self.assertEqual(legacy.frames, [frame("order", b'{"id":1}'), frame("trade", b'{"id":2}')])
        self.hub.subscribe(ranger, streams("trade"))
        self.hub.unsubscribe(ranger, streams("order"))
        self.registry.deliver("U1", "order", b'{"id":3}')
        self.registry.deliver("U1", "trade", b'{"id":4}')
        self.assertEqual(ranger.frames[1:], [frame("trade", b'{"id":4}')])

    def test_filter_ends_with_the_ranger_connection(self) -> None:
        """Once the member's ranger connection leaves, its legacy connection still gets everything."""
        ranger = self.conn("ranger", member=True)
        legacy = FakeConnection("legacy")
        for conn in (ranger, legacy):
            self.registry.authenticate(conn, Claims(uid="U1", jti="j-" + conn.conn_id, expires_at=None))
        self.assertEqual(self.registry.deliver("U1", "order", b"{}"), 1)
        self.registry.deauthenticate(ranger)
        self.assertEqual(self.registry.deliver("U1", "balance", b"{}"), 1)
        self.assertEqual(len(legacy.frames), 2)
        self.assertEqual(ranger.frames, [])

    def test_other_members_unaffected(self) -> None:
        """A member subscribed to order gets no other member's order."""
        a = self.conn("a", "order", member=True)
        b = self.conn("b", "order", member=True)
        self.registry.authenticate(a, Claims(uid="A", jti="ja", expires_at=None))
        self.registry.authenticate(b, Claims(uid="B", jti="jb", expires_at=None))
        self.assertEqual(self.registry.deliver("A", "order", b"{}"), 1)
        self.assertEqual((len(a.frames), len(b.frames)), (1, 0))


class CollectorTests(HubTestCase):
    """What /metrics reads at scrape time: subscriptions by family and each order book's state."""

    max_increments = 2

    def test_subscriptions_by_family(self) -> None:
        a = self.conn("a", "btcusd.trades", "ethusd.trades", "btcusd.ob-inc", "order", "made.up", member=True)
        self.conn("b", "btcusd.trades", "global.tickers", "btcusd.kline-1m", "trade", "btcusd.ob-inc")
        self.assertEqual(self.value("peatio_ws_subscriptions", stream="trades"), 3)
        self.assertEqual(self.value("peatio_ws_subscriptions", stream="ob-inc"), 2)
        self.assertEqual(self.value("peatio_ws_subscriptions", stream="tickers"), 1)
        self.assertEqual(self.value("peatio_ws_subscriptions", stream="kline-1m"), 1)
        self.assertEqual(self.value("peatio_ws_subscriptions", stream="order"), 1)
        # Ruby ranger's name for the same figure (its dashboards).
        self.assertEqual(self.value("ranger_subscriptions_current", stream="trades"), 3)
        self.assertEqual(self.value("ranger_subscriptions_current", stream="ob-inc"), 2)
        self.assertEqual(self.value("peatio_ws_subscriptions", stream="other"), 1)
        # The anonymous connection's "trade" was not taken.
        self.assertIsNone(self.value("peatio_ws_subscriptions", stream="trade"))
        self.hub.forget(a)
        self.assertEqual(self.value("peatio_ws_subscriptions", stream="trades"), 1)
        self.assertEqual(self.value("peatio_ws_subscriptions", stream="ob-inc"), 1)
        self.assertIsNone(self.value("peatio_ws_subscriptions", stream="order"))

    def test_order_book_state(self) -> None:
        self.conn("w", "btcusd.ob-inc")
        self.conn("never", "quiet.ob-inc")
        self.hub.publish("btcusd", "ob-snap", snap_body(7))
        self.hub.publish("btcusd", "ob-inc", inc_body(8))

        def book(name: str) -> float | None:
            return self.value("peatio_ws_orderbook_" + name, market="btcusd")

        self.assertEqual(book("sequence"), 8)
        self.assertEqual(book("replayable"), 1)
        self.assertEqual(book("broken"), 0)
        self.assertEqual(book("increments"), 1)
        self.assertEqual(book("waiting"), 0)
        self.assertEqual(book("gaps_total"), 0)
        # A book nothing was ever published to is not shown.
        self.assertIsNone(self.value("peatio_ws_orderbook_sequence", market="quiet"))
        self.hub.publish("btcusd", "ob-inc", inc_body(10))
        self.assertEqual(book("broken"), 1)
        self.assertEqual(book("replayable"), 0)
        self.assertEqual(book("waiting"), 1)
        self.assertEqual(book("gaps_total"), 1)
        self.assertEqual(book("increments"), 0)

    def test_broken_before_any_sequence(self) -> None:
        """A book broken by an increment without a sequence shows -1 as its sequence."""
        self.hub.publish("btcusd", "ob-inc", b'{"asks":[]}')
        self.assertEqual(self.value("peatio_ws_orderbook_sequence", market="btcusd"), -1)
        self.assertEqual(self.value("peatio_ws_orderbook_broken", market="btcusd"), 1)
