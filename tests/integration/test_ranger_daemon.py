"""
End-to-end proof of the ranger dialect (SPEC §7) against the real daemon
(``twistd -n peatio-ws``), the real RabbitMQ and Redis, with a client that is
not Autobahn (L{tests.support.reactor_client}) connecting exactly as
baseapp 2-6-stable does:

 - public, anonymous: C{/api/v2/ranger/public/?stream=global.tickers&stream=<m>.ob-inc&stream=<m>.trades};
 - private: C{/api/v2/ranger/private/?stream=order&stream=trade} with C{Authorization: Bearer <JWT>}.

Events are published on RabbitMQ as Peatio's matching engine and API publish
them. Every order-book frame a connection receives is checked as baseapp
checks it (L{baseapp_violations}): an C{ob-inc} must carry the previous
sequence + 1 after an C{ob-snap}, and no increment may come before a
snapshot; baseapp 2-6 reconnects on every such gap.

Each test runs its own daemon on its own exchange, with market names and
uids no other test uses. Every wait is bounded and generous (a loaded
2-core machine); the absence of a frame is always proved by a later marker
event that went through the same queue, never by a sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import time
import uuid
from typing import Any
from urllib.parse import urlencode

from twisted.internet.defer import Deferred

from peatio_ws.testing import generate_rsa_key, make_token
from tests.support.broker import queue_name_from_log
from tests.support.cases import ChaosTestCase, new_uid
from tests.support.daemon import DaemonProcess
from tests.support.oracle import AUTHENTICATED
from tests.support.probes import metric
from tests.support.publisher import Publisher
from tests.support.reactor_client import WsClient, ws_connect
from tests.support.redis_helpers import cli as redis_cli
from tests.support.waiting import until, within

#: Generous bound for any one frame to arrive, or any figure to be reached.
WAIT = 30.0

#: The daemon settings of the tests that need other than the defaults.
#: The queue a restart in place leaves to the next program (removed when taken, or at cleanup).
CARRY_FILE = f"{tempfile.gettempdir()}/peatio-ws-ranger-{uuid.uuid4().hex[:12]}.json"

DAEMON_SETTINGS: dict[str, dict[str, str]] = {
    "test_store_past_its_bound_is_followed_not_replayed": {"RANGER_ORDERBOOK_MAX_INCREMENTS": "3"},
    "test_order_book_across_a_restart_in_place": {"RABBITMQ_HANDOVER_FILE": CARRY_FILE, "RABBITMQ_QUEUE_EXPIRES": "30"},
}

PUBLIC_PATH = "/api/v2/ranger/public/"
PRIVATE_PATH = "/api/v2/ranger/private/"


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def new_market() -> str:
    """A market id no other test (or leftover) uses, in Peatio's shape (lower-case letters and digits)."""
    return "m" + uuid.uuid4().hex[:11]


def ranger_path(base: str, streams: list[str]) -> str:
    """C{<base>?stream=a&stream=b}, as baseapp builds its URL (repeated C{stream=})."""
    return base + "?" + urlencode([("stream", s) for s in streams])


def baseapp_streams(market: str) -> list[str]:
    """What baseapp subscribes to in the URL for an anonymous visitor of C{market} (OpenDAX: incremental book)."""
    return ["global.tickers", f"{market}.ob-inc", f"{market}.trades"]


def subscribed(streams: list[str], message: str = "subscribed") -> dict[str, Any]:
    return {"success": {"message": message, "streams": streams}}


def frame_text(stream: str, body: bytes) -> str:
    """The exact text frame of an event: C{{"<stream>":<body as published>}} (SPEC §7: payloads forwarded as is)."""
    return '{"' + stream + '":' + body.decode("utf-8") + "}"


def baseapp_violations(messages: list[str | bytes]) -> list[str]:
    """
    What baseapp 2-6-stable's saga would complain about in C{messages}
    (only the first key of each frame is read): an C{ob-inc} before any
    C{ob-snap} ("no previous snapshot") or whose C{sequence} is not exactly
    the previous one + 1 ("Bad sequence detected": it closes and reconnects).
    An C{ob-snap} replaces the book and its sequence. Empty: no reconnect.
    """
    sequence: int | None = None
    problems: list[str] = []
    for i, raw in enumerate(messages):
        if not isinstance(raw, str):
            problems.append(f"#{i}: a binary frame")
            continue
        try:
            frame = json.loads(raw)
        except ValueError:
            continue  # "pong"
        if not isinstance(frame, dict) or not frame:
            continue
        key = next(iter(frame))
        payload = frame[key]
        if key.endswith(".ob-snap"):
            sequence = payload["sequence"]
        elif key.endswith(".ob-inc"):
            got = payload.get("sequence") if isinstance(payload, dict) else None
            if sequence is None:
                problems.append(f"#{i}: {key} sequence {got!r} before any snapshot")
            elif type(got) is not int or got != sequence + 1:
                problems.append(f"#{i}: {key} sequence {got!r} after {sequence} (Bad sequence detected)")
            sequence = got if type(got) is int else sequence
    return problems


def book_frames(client: WsClient) -> list[tuple[str, int]]:
    """The order-book frames C{client} received, as (kind, sequence): C{("snap", 10)}, C{("inc", 11)}, ..."""
    seen: list[tuple[str, int]] = []
    for raw in client.messages:
        frame = json.loads(raw) if isinstance(raw, str) and raw.startswith("{") else None
        if not isinstance(frame, dict):
            continue
        key = next(iter(frame), "")
        if key.endswith((".ob-snap", ".ob-inc")):
            seen.append((key.rpartition("-")[2], frame[key]["sequence"]))
    return seen


def snapshot_body(sequence: int, asks: list[list[str]] | None = None, bids: list[list[str]] | None = None) -> bytes:
    # json.dumps's default separators (with spaces): a server that re-encoded the payload would show.
    return json.dumps({"asks": asks or [], "bids": bids or [], "sequence": sequence}).encode()


def increment_body(sequence: int, side: str = "asks", level: list[str] | None = None) -> bytes:
    return json.dumps({side: level or ["100.0", str(sequence)], "sequence": sequence}).encode()


class RangerDaemonTests(ChaosTestCase):
    """The ranger dialect of the real daemon, driven as baseapp drives ranger/rango."""

    timeout = 300

    def setUp(self) -> None:
        self.daemon: DaemonProcess = self.start_daemon(**DAEMON_SETTINGS.get(self._testMethodName, {}))

    # -- helpers -----------------------------------------------------------------------

    async def broker(self) -> Publisher:
        """A publisher in confirm mode: each publish is awaited until the broker has it (in order)."""
        publisher = await Publisher.connect(confirm=True)
        self.addCleanup(lambda: Deferred.fromCoroutine(publisher.close(force=True)))
        return publisher

    async def publish(self, publisher: Publisher, key: str, body: bytes) -> None:
        await within(publisher.publish(self.daemon.exchange, key, body), WAIT, f"the broker to confirm {key}")

    async def ranger(self, path: str, token: str | None = None) -> WsClient:
        """A client on C{path}; with C{Authorization: Bearer <token>} when given. The handshake's answer is in."""
        headers = [("Authorization", f"Bearer {token}")] if token is not None else []
        client = await ws_connect(self.daemon.port, WAIT, path=path, headers=headers)
        self.addCleanup(client.abort)
        return client

    async def until_text(self, client: WsClient, text: str, what: str) -> int:
        """Until C{client} has received exactly the text frame C{text}; its index."""
        await client.wait(lambda: text in client.messages, WAIT, what)
        return client.messages.index(text)

    async def until_json(self, client: WsClient, expected: Any, what: str) -> int:
        """Until C{client} has received a frame equal (as JSON) to C{expected}; its index."""

        def index() -> int:
            for i, raw in enumerate(client.messages):
                if isinstance(raw, str) and raw.startswith("{") and json.loads(raw) == expected:
                    return i
            return -1

        await client.wait(lambda: index() >= 0, WAIT, what)
        return index()

    async def until_metric_is(self, name: str, value: float, what: str, **labels: str) -> None:
        await self.until_metric(self.daemon, name, lambda v: v == value, WAIT, what, **labels)

    def assert_baseapp_happy(self, client: WsClient, who: str) -> None:
        self.assertEqual(baseapp_violations(client.messages), [], f"{who} would reconnect: {client.messages}")

    # -- the public order book ---------------------------------------------------------

    async def test_order_book_across_a_restart_in_place(self) -> None:
        """
        A client holding a market's order book, the daemon restarted in place
        (SIGUSR2): the connection stays, nothing is replayed to it again, and
        the next increment continues its book; a newcomer gets the replay of
        the store the previous program left, with that increment. baseapp
        would see no gap.
        """
        self.addCleanup(_remove, CARRY_FILE)
        m = new_market()
        pub = await self.broker()
        streams = baseapp_streams(m)
        snap10, inc11, inc12 = snapshot_body(10, asks=[["101.0", "1.5"]]), increment_body(11), increment_body(12)
        await self.publish(pub, f"public.{m}.ob-snap", snap10)
        await self.publish(pub, f"public.{m}.ob-inc", inc11)
        await self.until_metric_is("peatio_ws_orderbook_sequence", 11, "the store at sequence 11", market=m)
        a = await self.ranger(ranger_path(PUBLIC_PATH, streams))
        await self.until_json(a, subscribed(streams), "A's subscribed reply")
        held = len(a.messages)

        os.kill(self.daemon.pid, signal.SIGUSR2)
        self.daemon.wait_log("restart in place: 1 connections carried over, 0 lost", seconds=WAIT)
        await self.publish(pub, f"public.{m}.ob-inc", inc12)
        await self.until_text(a, frame_text(f"{m}.ob-inc", inc12), "the increment after the restart")
        self.assertEqual(a.messages[held:], [frame_text(f"{m}.ob-inc", inc12)])
        self.assert_baseapp_happy(a, "A")

        b = await self.ranger(ranger_path(PUBLIC_PATH, streams))
        await self.until_json(b, subscribed(streams), "B's subscribed reply")
        self.assertEqual(
            b.messages[:3],
            [frame_text(f"{m}.ob-snap", snap10), frame_text(f"{m}.ob-inc", inc11), frame_text(f"{m}.ob-inc", inc12)],
        )
        self.assert_baseapp_happy(b, "B")

    async def test_order_book_through_snapshot_gap_recovery_and_restart(self) -> None:
        """
        baseapp's anonymous public connection follows one market's order book:
        replay (snapshot + stored increments) before the subscribed reply, live
        increments, a skipped sequence published (forwarded to no one; the
        store breaks; a newcomer waits), the next snapshot (every subscriber
        primed again), a matching-engine restart (a snapshot counting from 1
        goes to everyone); at no point would baseapp see a sequence gap.
        /metrics follows the market and the connections.
        """
        m = new_market()
        pub = await self.broker()
        streams = baseapp_streams(m)
        snap10 = snapshot_body(10, asks=[["101.0", "1.5"]], bids=[["99.0", "2"]])
        inc11, inc12 = increment_body(11), increment_body(12, "bids", ["99.5", "1"])

        # Before anyone connects: the process receives every public event from start-up.
        await self.publish(pub, f"public.{m}.ob-snap", snap10)
        await self.publish(pub, f"public.{m}.ob-inc", inc11)
        await self.publish(pub, f"public.{m}.ob-inc", inc12)
        await self.until_metric_is("peatio_ws_orderbook_sequence", 12, "the store at sequence 12", market=m)
        self.assertEqual(self.gauge(self.daemon, "peatio_ws_orderbook_increments", market=m), 2)
        self.assertEqual(self.gauge(self.daemon, "peatio_ws_orderbook_replayable", market=m), 1)

        # A: the replay, byte for byte as published, then the subscribed reply.
        a = await self.ranger(ranger_path(PUBLIC_PATH, streams))
        self.assertEqual(a.status, 101)
        await self.until_json(a, subscribed(streams), "A's subscribed reply")
        self.assertEqual(
            a.messages,
            [
                frame_text(f"{m}.ob-snap", snap10),
                frame_text(f"{m}.ob-inc", inc11),
                frame_text(f"{m}.ob-inc", inc12),
                json.dumps(subscribed(streams), separators=(",", ":")),
            ],
        )

        # Live: an increment, a trade, the tickers.
        inc13 = increment_body(13)
        trade1 = json.dumps({"tid": 1, "taker_type": "buy", "date": 1700000000, "price": "101.0",
                             "amount": "0.5"}).encode()
        tickers = json.dumps({m: {"name": m.upper(), "last": "101.0", "vol": "0.5"}}).encode()
        await self.publish(pub, f"public.{m}.ob-inc", inc13)
        await self.publish(pub, f"public.{m}.trades", trade1)
        await self.publish(pub, "public.global.tickers", tickers)
        await self.until_text(a, frame_text("global.tickers", tickers), "the tickers")
        self.assertEqual(
            a.messages[4:],
            [
                frame_text(f"{m}.ob-inc", inc13),
                frame_text(f"{m}.trades", trade1),
                frame_text("global.tickers", tickers),
            ],
        )

        # A gap: 14 is never published. Neither 15 nor 16 may reach anyone.
        trade2 = json.dumps({"tid": 2, "price": "100.0", "amount": "1"}).encode()
        await self.publish(pub, f"public.{m}.ob-inc", increment_body(15))
        await self.publish(pub, f"public.{m}.ob-inc", increment_body(16))
        await self.publish(pub, f"public.{m}.trades", trade2)  # the marker: same queue, after the increments
        marker = await self.until_text(a, frame_text(f"{m}.trades", trade2), "the trade after the gap")
        self.assertEqual(marker, 7, f"something besides the marker came after the gap: {a.messages[7:]}")
        self.assertEqual(self.gauge(self.daemon, "peatio_ws_orderbook_broken", market=m), 1)
        self.assertEqual(self.gauge(self.daemon, "peatio_ws_orderbook_gaps_total", market=m), 1)
        self.assertEqual(self.gauge(self.daemon, "peatio_ws_orderbook_replayable", market=m), 0)
        self.assertEqual(self.gauge(self.daemon, "peatio_ws_orderbook_waiting", market=m), 1)

        # B connects while the store is broken: no replay, the subscribed reply alone; it waits.
        b = await self.ranger(ranger_path(PUBLIC_PATH, streams))
        self.assertEqual(await b.next_json(WAIT), subscribed(streams))
        await self.until_metric_is("peatio_ws_orderbook_waiting", 2, "A and B waiting", market=m)

        # Recovery: the engine's next snapshot (at its own counter, 16) goes to both; then 17.
        snap16 = snapshot_body(16, asks=[["101.0", "1.5"]], bids=[["99.5", "1"]])
        inc17 = increment_body(17)
        await self.publish(pub, f"public.{m}.ob-snap", snap16)
        await self.publish(pub, f"public.{m}.ob-inc", inc17)
        for client, who in ((a, "A"), (b, "B")):
            at = await self.until_text(client, frame_text(f"{m}.ob-inc", inc17), f"{who} to get increment 17")
            self.assertEqual(client.messages[at - 1], frame_text(f"{m}.ob-snap", snap16), who)
        self.assertEqual(self.gauge(self.daemon, "peatio_ws_orderbook_broken", market=m), 0)
        self.assertEqual(self.gauge(self.daemon, "peatio_ws_orderbook_waiting", market=m), 0)

        # The matching engine restarts and counts from 1: its snapshot goes to every subscriber.
        snap1, inc2 = snapshot_body(1, bids=[["98.0", "3"]]), increment_body(2)
        await self.publish(pub, f"public.{m}.ob-snap", snap1)
        await self.publish(pub, f"public.{m}.ob-inc", inc2)
        for client, who in ((a, "A"), (b, "B")):
            at = await self.until_text(client, frame_text(f"{m}.ob-inc", inc2), f"{who} to get increment 2")
            self.assertEqual(client.messages[at - 1], frame_text(f"{m}.ob-snap", snap1), who)

        # C, after all that: primed at once with the restarted book.
        c = await self.ranger(ranger_path(PUBLIC_PATH, streams))
        await self.until_json(c, subscribed(streams), "C's subscribed reply")
        self.assertEqual(
            c.messages[:3],
            [frame_text(f"{m}.ob-snap", snap1), frame_text(f"{m}.ob-inc", inc2),
             json.dumps(subscribed(streams), separators=(",", ":"))],
        )

        # What each book went through, and baseapp would never have reconnected.
        self.assertEqual(
            book_frames(a),
            [("snap", 10), ("inc", 11), ("inc", 12), ("inc", 13), ("snap", 16), ("inc", 17), ("snap", 1), ("inc", 2)],
        )
        self.assertEqual(book_frames(b), [("snap", 16), ("inc", 17), ("snap", 1), ("inc", 2)])
        self.assertEqual(book_frames(c), [("snap", 1), ("inc", 2)])
        for client, who in ((a, "A"), (b, "B"), (c, "C")):
            self.assert_baseapp_happy(client, who)
            self.assertFalse(client.lost, f"{who} was closed ({client.close_code})")

        # /metrics on the monitoring port.
        text = self.daemon.metrics()
        self.assertEqual(metric(text, "ranger_connections_current", auth="public"), 3, text)
        self.assertEqual(metric(text, "peatio_ws_orderbook_sequence", market=m), 2, text)
        self.assertEqual(metric(text, "peatio_ws_orderbook_replayable", market=m), 1, text)
        self.assertEqual(metric(text, "peatio_ws_subscriptions", stream="ob-inc"), 3, text)

    async def test_increments_before_the_first_snapshot_reach_no_one(self) -> None:
        """
        A market that has published nothing yet: the subscriber gets no replay,
        only the subscribed reply; increments before the first snapshot are
        forwarded to no one (baseapp would reconnect); the snapshot, then the
        increments after it, arrive.
        """
        m = new_market()
        pub = await self.broker()
        streams = baseapp_streams(m)
        a = await self.ranger(ranger_path(PUBLIC_PATH, streams))
        self.assertEqual(await a.next_json(WAIT), subscribed(streams))

        trade = json.dumps({"tid": 7, "price": "5", "amount": "1"}).encode()
        await self.publish(pub, f"public.{m}.ob-inc", increment_body(41))
        await self.publish(pub, f"public.{m}.ob-inc", increment_body(42))
        await self.publish(pub, f"public.{m}.trades", trade)
        marker = await self.until_text(a, frame_text(f"{m}.trades", trade), "the trade after early increments")
        self.assertEqual(a.messages[1:marker], [], "increments before any snapshot were forwarded")

        snap42, inc43 = snapshot_body(42, asks=[["6", "1"]]), increment_body(43)
        await self.publish(pub, f"public.{m}.ob-snap", snap42)
        await self.publish(pub, f"public.{m}.ob-inc", inc43)
        await self.until_text(a, frame_text(f"{m}.ob-inc", inc43), "increment 43")
        self.assertEqual(
            a.messages[marker + 1 :], [frame_text(f"{m}.ob-snap", snap42), frame_text(f"{m}.ob-inc", inc43)]
        )
        self.assertEqual(book_frames(a), [("snap", 42), ("inc", 43)])
        self.assert_baseapp_happy(a, "A")
        await self.until_metric_is("peatio_ws_orderbook_sequence", 43, "the store at 43", market=m)

    async def test_market_switch_keeps_baseapp_sequence(self) -> None:
        """
        baseapp switching market on one connection (unsubscribe the old
        market's streams, subscribe the new one's; its stored sequence is
        shared across markets): the new market's replay comes before the
        subscribed reply, nothing of the old market comes after the
        unsubscribed reply, and no frame would look like a gap.
        """
        m1, m2 = new_market(), new_market()
        pub = await self.broker()
        await self.publish(pub, f"public.{m2}.ob-snap", snapshot_body(500, bids=[["10", "1"]]))
        inc501 = increment_body(501)
        await self.publish(pub, f"public.{m2}.ob-inc", inc501)
        await self.publish(pub, f"public.{m1}.ob-snap", snapshot_body(7, asks=[["20", "1"]]))
        await self.until_metric_is("peatio_ws_orderbook_sequence", 7, "m1's store at 7", market=m1)
        await self.until_metric_is("peatio_ws_orderbook_sequence", 501, "m2's store at 501", market=m2)
        a = await self.ranger(ranger_path(PUBLIC_PATH, baseapp_streams(m1)))
        await self.until_json(a, subscribed(baseapp_streams(m1)), "the subscribed reply for m1")
        self.assertEqual(book_frames(a), [("snap", 7)])

        a.send_text(json.dumps({"event": "unsubscribe", "streams": [f"{m1}.ob-inc", f"{m1}.trades"]}))
        await self.until_json(a, subscribed(["global.tickers"], "unsubscribed"), "the unsubscribed reply")
        a.send_text(json.dumps({"event": "subscribe", "streams": [f"{m2}.ob-inc", f"{m2}.trades"]}))
        now = ["global.tickers", f"{m2}.ob-inc", f"{m2}.trades"]
        at = await self.until_json(a, subscribed(now), "the subscribed reply for m2")
        self.assertEqual(book_frames(a), [("snap", 7), ("snap", 500), ("inc", 501)])
        self.assertEqual(a.messages[at - 1], frame_text(f"{m2}.ob-inc", inc501), "the replay before the reply")

        inc502 = increment_body(502)
        await self.publish(pub, f"public.{m1}.ob-inc", increment_body(8))
        await self.publish(pub, f"public.{m1}.trades", json.dumps({"tid": 1}).encode())
        await self.publish(pub, f"public.{m2}.ob-inc", inc502)
        await self.until_text(a, frame_text(f"{m2}.ob-inc", inc502), "m2's increment 502")
        self.assertEqual(a.messages[at + 1 :], [frame_text(f"{m2}.ob-inc", inc502)], "m1 events after its unsubscribe")
        self.assert_baseapp_happy(a, "A")

    async def test_store_past_its_bound_is_followed_not_replayed(self) -> None:
        """
        RANGER_ORDERBOOK_MAX_INCREMENTS=3: past three stored increments the
        primed subscriber still gets every increment, a newcomer gets no
        replay and waits, and the next snapshot primes it.
        """
        m = new_market()
        pub = await self.broker()
        streams = baseapp_streams(m)
        await self.publish(pub, f"public.{m}.ob-snap", snapshot_body(1, asks=[["3", "1"]]))
        await self.until_metric_is("peatio_ws_orderbook_sequence", 1, "the store at 1", market=m)
        a = await self.ranger(ranger_path(PUBLIC_PATH, streams))
        await self.until_json(a, subscribed(streams), "A's subscribed reply")
        for sequence in range(2, 6):
            await self.publish(pub, f"public.{m}.ob-inc", increment_body(sequence))
        await self.until_json(a, {f"{m}.ob-inc": json.loads(increment_body(5))}, "increment 5")
        self.assertEqual(book_frames(a), [("snap", 1), ("inc", 2), ("inc", 3), ("inc", 4), ("inc", 5)])

        b = await self.ranger(ranger_path(PUBLIC_PATH, streams))
        self.assertEqual(await b.next_json(WAIT), subscribed(streams), "a replay of a store past its bound")
        self.assertEqual(self.gauge(self.daemon, "peatio_ws_orderbook_replayable", market=m), 0)
        await self.until_metric_is("peatio_ws_orderbook_waiting", 1, "B waiting", market=m)
        snap5, inc6 = snapshot_body(5, asks=[["3", "5"]]), increment_body(6)
        await self.publish(pub, f"public.{m}.ob-snap", snap5)
        await self.publish(pub, f"public.{m}.ob-inc", inc6)
        for client, who in ((a, "A"), (b, "B")):
            await self.until_text(client, frame_text(f"{m}.ob-inc", inc6), f"{who}'s increment 6")
            self.assert_baseapp_happy(client, who)
        self.assertEqual(book_frames(b), [("snap", 5), ("inc", 6)])
        self.assertEqual(book_frames(a)[-1], ("inc", 6))

    async def test_burst_to_many_subscribers_keeps_each_connections_order(self) -> None:
        """
        A burst published back to back (so the daemon reads many events at
        once and batches their writes) to a market with more subscribers
        than a member has connections, interleaving order-book increments,
        trades, tickers and one member's private events: every connection
        gets exactly its events, in the order the broker delivered them,
        and baseapp's sequence check holds on each.
        """
        m, uid = new_market(), new_uid()
        pub = await self.broker()
        streams = baseapp_streams(m)
        snap = snapshot_body(100, asks=[["7", "1"]])
        await self.publish(pub, f"public.{m}.ob-snap", snap)
        await self.until_metric_is("peatio_ws_orderbook_sequence", 100, "the store at 100", market=m)
        crowd = [await self.ranger(ranger_path(PUBLIC_PATH, streams)) for _ in range(20)]
        member_streams = sorted([*streams, "order", "trade"])
        member = await self.ranger(ranger_path(PRIVATE_PATH, member_streams), make_token(uid=uid))
        for client in crowd:
            await self.until_json(client, subscribed(streams), "a crowd member's subscribed reply")
        await self.until_json(member, subscribed(member_streams), "the member's subscribed reply")
        await self.until_metric_is("peatio_ws_rabbitmq_bindings", 1, "the member's binding")

        burst: list[tuple[str, str, bytes]] = []  # (routing key, stream, body)
        for i in range(1, 61):
            kind = i % 5
            if kind == 0:
                burst.append((f"private.{uid}.order", "order", json.dumps({"id": i, "state": "wait"}).encode()))
            elif kind == 1:
                burst.append((f"public.{m}.trades", f"{m}.trades", json.dumps({"tid": i}).encode()))
            elif kind == 2:
                burst.append(("public.global.tickers", "global.tickers", json.dumps({m: {"at": i}}).encode()))
            elif kind == 3:
                burst.append((f"private.{uid}.trade", "trade", json.dumps({"id": i}).encode()))
            burst.append((f"public.{m}.ob-inc", f"{m}.ob-inc", increment_body(100 + i)))
        confirms = [pub.publish(self.daemon.exchange, key, body) for key, _, body in burst]
        for d in confirms:
            await within(d, WAIT, "the broker to confirm the burst")
        end = json.dumps({"end": True}).encode()
        await self.publish(pub, "public.global.tickers", end)

        public_frames = [frame_text(stream, body) for key, stream, body in burst if key.startswith("public.")]
        every_frame = [frame_text(stream, body) for _, stream, body in burst]
        last = frame_text("global.tickers", end)
        head = [frame_text(f"{m}.ob-snap", snap)]
        for i, client in enumerate(crowd):
            await self.until_text(client, last, f"the end of the burst at crowd member {i}")
            self.assertEqual(
                client.messages,
                [*head, json.dumps(subscribed(streams), separators=(",", ":")), *public_frames, last],
                f"crowd member {i}",
            )
            self.assert_baseapp_happy(client, f"crowd member {i}")
        await self.until_text(member, last, "the end of the burst at the member")
        self.assertEqual(
            member.messages,
            [*head, json.dumps(subscribed(member_streams), separators=(",", ":")), *every_frame, last],
        )
        self.assert_baseapp_happy(member, "the member")

    # -- subscribe and unsubscribe messages ----------------------------------------------

    async def test_subscribe_kline_and_unsubscribe_trades(self) -> None:
        """
        A subscribe message for C{<m>.kline-1m} is answered with every current
        stream and k-lines flow; an unsubscribe of C{<m>.trades} is answered
        likewise and trades stop. baseapp's reconnect URL (k-line included,
        from the last subscribed reply) is accepted as is.
        """
        m = new_market()
        pub = await self.broker()
        streams = baseapp_streams(m)
        a = await self.ranger(ranger_path(PUBLIC_PATH, streams))
        self.assertEqual(await a.next_json(WAIT), subscribed(streams))

        # Errors first (rango's texts): the connection stays open after each.
        a.send_text("not json")
        self.assertTrue((await a.next_json(WAIT))["error"].startswith("Could not parse message: "))
        a.send_text(json.dumps({"event": "subscribe", "streams": []}))
        self.assertEqual(await a.next_json(WAIT), {"error": "No streams provided"})
        a.send_text(json.dumps({"event": "watch", "streams": [f"{m}.trades"]}))
        self.assertEqual(await a.next_json(WAIT), {"error": "Could not parse Type: Invalid event"})
        a.send_text("ping")
        self.assertEqual(await a.next_json(WAIT), "pong")
        base = len(a.messages)

        kline = f"{m}.kline-1m"
        a.send_text(json.dumps({"event": "subscribe", "streams": [kline]}))
        self.assertEqual(await a.next_json(WAIT), subscribed([*streams, kline]))
        k1 = json.dumps([1700000040, "100.0", "101.0", "99.0", "100.5", "3.25"]).encode()
        trade1 = json.dumps({"tid": 11, "price": "100.5", "amount": "1"}).encode()
        await self.publish(pub, f"public.{m}.kline-1m", k1)
        await self.publish(pub, f"public.{m}.trades", trade1)
        await self.until_text(a, frame_text(f"{m}.trades", trade1), "the trade")
        self.assertEqual(a.messages[base + 1 :], [frame_text(kline, k1), frame_text(f"{m}.trades", trade1)])

        a.send_text(json.dumps({"event": "unsubscribe", "streams": [f"{m}.trades"]}))
        unsubscribed = subscribed(["global.tickers", f"{m}.ob-inc", kline], "unsubscribed")
        replied = await self.until_json(a, unsubscribed, "the unsubscribed reply") + 1
        self.assertEqual(replied, base + 4, a.messages)
        trade2 = json.dumps({"tid": 12, "price": "100.6", "amount": "2"}).encode()
        k2 = json.dumps([1700000100, "100.5", "100.6", "100.5", "100.6", "2"]).encode()
        await self.publish(pub, f"public.{m}.trades", trade2)
        await self.publish(pub, f"public.{m}.kline-1m", k2)  # the marker, after the trade
        await self.until_text(a, frame_text(kline, k2), "the k-line after the unsubscribed trade")
        self.assertEqual(a.messages[replied:], [frame_text(kline, k2)], "a trade came after the unsubscribe")

        # baseapp 2-6 reconnects with the streams of the last reply, the k-line among them.
        again = ["global.tickers", kline, f"{m}.ob-inc"]
        b = await self.ranger(ranger_path(PUBLIC_PATH, again))
        self.assertEqual(await b.next_json(WAIT), subscribed(again))
        k3 = json.dumps([1700000160, "100.6", "100.6", "100.6", "100.6", "0"]).encode()
        await self.publish(pub, f"public.{m}.kline-1m", k3)
        await self.until_text(b, frame_text(kline, k3), "B's k-line")
        await self.until_text(a, frame_text(kline, k3), "A's k-line")

    # -- the private connection -------------------------------------------------------------

    async def test_private_connection_gets_order_and_trade_not_balances(self) -> None:
        """
        baseapp's private connection (token in the Authorization header,
        C{stream=order&stream=trade}) gets the member's order and trade
        events and not its balances (not subscribed), nor another member's
        events; a legacy connection of the same member gets all of them.
        """
        alice, bob = new_uid(), new_uid()
        pub = await self.broker()
        streams = ["order", "trade"]
        a = await self.ranger(ranger_path(PRIVATE_PATH, streams), make_token(uid=alice))
        self.assertEqual(a.status, 101)
        self.assertEqual(await a.next_json(WAIT), subscribed(streams))
        # Bob as baseapp connects a logged-in member: one /private connection, public streams too, sorted.
        m = new_market()
        await self.publish(pub, f"public.{m}.ob-snap", snapshot_body(3, bids=[["9", "1"]]))
        await self.until_metric_is("peatio_ws_orderbook_sequence", 3, "the store at 3", market=m)
        bob_streams = sorted([*baseapp_streams(m), "order", "trade"])
        b = await self.ranger(ranger_path(PRIVATE_PATH, bob_streams), make_token(uid=bob))
        await self.until_json(b, subscribed(bob_streams), "bob's subscribed reply")
        self.assertEqual(b.messages[0], frame_text(f"{m}.ob-snap", snapshot_body(3, bids=[["9", "1"]])))
        self.assertEqual(len(b.messages), 2, b.messages)
        legacy = await ws_connect(self.daemon.port, WAIT)
        self.addCleanup(legacy.abort)
        self.assertEqual(await legacy.login(make_token(uid=alice), WAIT), AUTHENTICATED)
        # Both members bound on the process queue before anything is published for them.
        await self.until_metric_is("peatio_ws_rabbitmq_bindings", 2, "alice's and bob's bindings")
        self.assertEqual(self.gauge(self.daemon, "ranger_connections_current", auth="private"), 2)

        balances1 = json.dumps({"currency": "btc", "balance": "1.0", "locked": "0.0"}).encode()
        order = json.dumps({"id": 31, "side": "buy", "ord_type": "limit", "price": "100.5", "state": "wait",
                            "market": "btcusd", "created_at": "2026-12-01T00:00:00Z", "origin_volume": "1.0",
                            "remaining_volume": "1.0", "executed_volume": "0.0", "trades_count": 0}).encode()
        balances2 = json.dumps({"currency": "usd", "balance": "899.5", "locked": "100.5"}).encode()
        trade = json.dumps({"id": 77, "price": "100.5", "amount": "1.0", "total": "100.5", "market": "btcusd",
                            "side": "buy", "order_id": 31, "created_at": "2026-12-01T00:00:01Z"}).encode()
        await self.publish(pub, f"private.{alice}.balances", balances1)
        await self.publish(pub, f"private.{alice}.order", order)
        await self.publish(pub, f"private.{alice}.balances", balances2)
        await self.publish(pub, f"private.{alice}.trade", trade)

        await self.until_text(a, frame_text("trade", trade), "alice's trade on the ranger connection")
        self.assertEqual(a.messages[1:], [frame_text("order", order), frame_text("trade", trade)])
        # The balances did reach the process: the legacy connection of the same member got every event.
        await self.until_text(legacy, frame_text("trade", trade), "alice's trade on the legacy connection")
        self.assertEqual(
            legacy.messages[2:],
            [frame_text("balances", balances1), frame_text("order", order), frame_text("balances", balances2),
             frame_text("trade", trade)],
        )

        # Bob's own order and the public streams reach him, and nothing of alice's came before them.
        bob_order = json.dumps({"id": 32, "side": "sell", "state": "wait", "market": m}).encode()
        tickers = json.dumps({m: {"last": "9"}}).encode()
        await self.publish(pub, f"private.{bob}.order", bob_order)
        await self.publish(pub, "public.global.tickers", tickers)
        await self.until_text(b, frame_text("global.tickers", tickers), "bob's tickers")
        self.assertEqual(b.messages[2:], [frame_text("order", bob_order), frame_text("global.tickers", tickers)])
        self.assertEqual(a.messages[1:], [frame_text("order", order), frame_text("trade", trade)])

        # Subscribing to balances later: from then on they come.
        a.send_text(json.dumps({"event": "subscribe", "streams": ["balances"]}))
        await self.until_json(a, subscribed(["order", "trade", "balances"]), "the subscribed reply with balances")
        balances3 = json.dumps({"currency": "btc", "balance": "2.0", "locked": "0.0"}).encode()
        await self.publish(pub, f"private.{alice}.balances", balances3)
        await self.until_text(a, frame_text("balances", balances3), "alice's balances after subscribing")

    async def test_private_token_expiry_closes_4001(self) -> None:
        """A header token that expires while connected closes the ranger connection with 4001 (SPEC §3.4)."""
        a = await self.ranger(ranger_path(PRIVATE_PATH, ["order"]), make_token(uid=new_uid(), lifetime=5))
        self.assertEqual(await a.next_json(WAIT), subscribed(["order"]))
        await a.gone(WAIT)
        self.assertEqual(a.close_code, 4001, a.messages)
        await self.until_metric_is("ranger_connections_current", 0, "the member connection uncounted", auth="private")

    async def test_revocation_closes_4003_and_refuses_401(self) -> None:
        """
        Revocation (SPEC §5) on the ranger dialect: a message on
        C{peatio-ws:revocations} naming a live session's jti closes its
        connection with 4003; a token whose jti is revoked in Redis is
        refused at the upgrade with HTTP 401.
        """
        uid, live_jti, dead_jti = new_uid(), uuid.uuid4().hex, uuid.uuid4().hex
        a = await self.ranger(ranger_path(PRIVATE_PATH, ["order"]), make_token(uid=uid, jti=live_jti))
        self.assertEqual(await a.next_json(WAIT), subscribed(["order"]))
        # Pub/sub does not queue: published again (harmless) until it is heard, within WAIT.
        deadline = time.monotonic() + WAIT
        while not a.lost and time.monotonic() < deadline:
            redis_cli("PUBLISH", "peatio-ws:revocations", json.dumps({"jti": live_jti}))
            with contextlib.suppress(AssertionError):
                await a.gone(2)
        self.assertTrue(a.lost, f"not closed within {WAIT} s of the revocation")
        self.assertEqual(a.close_code, 4003, a.messages)

        redis_cli("SET", f"peatio-ws:revoked:{dead_jti}", "1", "EX", "300")
        self.addCleanup(redis_cli, "DEL", f"peatio-ws:revoked:{dead_jti}")
        refused = await ws_connect(
            self.daemon.port, WAIT, path=ranger_path(PRIVATE_PATH, ["order"]),
            headers=[("Authorization", "Bearer " + make_token(uid=uid, jti=dead_jti))],
        )
        self.addCleanup(refused.abort)
        self.assertEqual(refused.status, 401)
        await within_gone(refused, "a revoked token")

    async def test_anonymous_private_streams_are_not_subscribed(self) -> None:
        """An anonymous connection asking for private streams on /public gets them neither listed nor delivered."""
        m = new_market()
        a = await self.ranger(ranger_path(PUBLIC_PATH, ["order", *baseapp_streams(m), "trade"]))
        self.assertEqual(a.status, 101)
        self.assertEqual(await a.next_json(WAIT), subscribed(baseapp_streams(m)))
        self.assertEqual(self.gauge(self.daemon, "ranger_connections_current", auth="public"), 1)
        self.assertEqual(self.gauge(self.daemon, "ranger_connections_current", auth="private"), 0)
        # A comma list in one value, on opendax 2-3's rewritten root path (//?stream=): ranger too.
        b = await self.ranger("//?stream=" + ",".join(["global.tickers", f"{m}.trades"]))
        self.assertEqual(await b.next_json(WAIT), subscribed(["global.tickers", f"{m}.trades"]))
        await self.until_metric_is("ranger_connections_current", 2, "two anonymous connections", auth="public")
        a.abort()
        b.abort()
        await self.until_metric_is("ranger_connections_current", 0, "both uncounted", auth="public")
        self.assertEqual(self.gauge(self.daemon, "peatio_ws_subscriptions", stream="trades"), 0)

    # -- continuity and shutdown --------------------------------------------------------------------

    async def test_lost_queue_closes_members_1012_and_books_wait(self) -> None:
        """
        The daemon's queue deleted under it (SPEC §8): the private ranger
        connection is closed with 1012; the anonymous public one stays, its
        book waits (an increment that seems to continue is forwarded to no
        one: events may have been lost) and the next snapshot heals it
        without a reconnect.
        """
        m = new_market()
        pub = await self.broker()
        streams = baseapp_streams(m)
        await self.publish(pub, f"public.{m}.ob-snap", snapshot_body(20, asks=[["1", "1"]]))
        await self.until_metric_is("peatio_ws_orderbook_sequence", 20, "the store at 20", market=m)
        a = await self.ranger(ranger_path(PUBLIC_PATH, streams))
        await self.until_json(a, subscribed(streams), "A's subscribed reply")
        member = await self.ranger(ranger_path(PRIVATE_PATH, ["order", "trade"]), make_token(uid=new_uid()))
        self.assertEqual(await member.next_json(WAIT), subscribed(["order", "trade"]))
        await self.until_metric_is("peatio_ws_rabbitmq_bindings", 1, "the member's binding")

        await pub.delete_queue(queue_name_from_log(self.daemon.wait_log("consuming from")))
        await member.gone(WAIT)
        self.assertEqual(member.close_code, 1012)
        await self.until_metric_is("peatio_ws_rabbitmq_up", 1, "the consumer back on a new queue")
        self.assertFalse(a.lost, f"the anonymous connection was closed ({a.close_code})")
        self.assertEqual(self.gauge(self.daemon, "peatio_ws_orderbook_broken", market=m), 1)

        trade = json.dumps({"tid": 5, "price": "1", "amount": "1"}).encode()
        await self.publish(pub, f"public.{m}.ob-inc", increment_body(21))
        await self.publish(pub, f"public.{m}.trades", trade)
        marker = await self.until_text(a, frame_text(f"{m}.trades", trade), "the trade after the queue came back")
        self.assertEqual(book_frames(a), [("snap", 20)], "an increment reached A while its book was not vouched for")
        snap21, inc22 = snapshot_body(21, asks=[["1", "2"]]), increment_body(22)
        await self.publish(pub, f"public.{m}.ob-snap", snap21)
        await self.publish(pub, f"public.{m}.ob-inc", inc22)
        await self.until_text(a, frame_text(f"{m}.ob-inc", inc22), "increment 22")
        self.assertEqual(
            a.messages[marker + 1 :], [frame_text(f"{m}.ob-snap", snap21), frame_text(f"{m}.ob-inc", inc22)]
        )
        self.assert_baseapp_happy(a, "A")

    async def test_shutdown_closes_ranger_connections_1001(self) -> None:
        """SIGTERM: public and private ranger connections get close code 1001, and the daemon exits."""
        m = new_market()
        a = await self.ranger(ranger_path(PUBLIC_PATH, baseapp_streams(m)))
        self.assertEqual(await a.next_json(WAIT), subscribed(baseapp_streams(m)))
        member = await self.ranger(ranger_path(PRIVATE_PATH, ["order"]), make_token(uid=new_uid()))
        self.assertEqual(await member.next_json(WAIT), subscribed(["order"]))
        process = self.daemon.process
        assert process is not None
        process.send_signal(signal.SIGTERM)  # the daemon this test started, by its own handle
        for client, who in ((a, "public"), (member, "private")):
            await client.gone(WAIT)
            self.assertEqual(client.close_code, 1001, who)
        await until(lambda: process.poll() is not None, WAIT, "the daemon to exit")
        # twistd re-raises SIGTERM on itself after an orderly stop.
        self.assertEqual(process.returncode, -signal.SIGTERM, self.daemon.tail(40))
        self.assertIn("shutdown complete", self.daemon.log_text())

    # -- refusals at the upgrade, and the legacy door ------------------------------------------------

    async def test_private_without_or_with_a_bad_token_gets_401(self) -> None:
        """
        /private without an Authorization header, or with one that does not
        verify (garbage, another key's signature, expired, not Bearer), and
        /public with a bad token: HTTP 401 as the answer to the upgrade
        request, no WebSocket, no frame. The daemon goes on serving.
        """
        uid = new_uid()
        private = ranger_path(PRIVATE_PATH, ["order", "trade"])
        stranger = make_token(generate_rsa_key(), uid=uid)
        expired = make_token(uid=uid, now=time.time() - 7200, lifetime=60)
        cases: list[tuple[str, list[tuple[str, str]]]] = [
            ("no header on /private", []),
            ("garbage", [("Authorization", "Bearer not-a-jwt")]),
            ("another key", [("Authorization", f"Bearer {stranger}")]),
            ("expired", [("Authorization", f"Bearer {expired}")]),
            ("not Bearer", [("Authorization", f"Token {make_token(uid=uid)}")]),
        ]
        for what, headers in cases:
            client = await ws_connect(self.daemon.port, WAIT, path=private, headers=headers)
            self.addCleanup(client.abort)
            self.assertEqual(client.status, 401, what)
            await within_gone(client, what)
            self.assertEqual(client.messages, [], what)
        public = await ws_connect(
            self.daemon.port, WAIT, path=ranger_path(PUBLIC_PATH, baseapp_streams(new_market())),
            headers=[("Authorization", "Bearer not-a-jwt")],
        )
        self.addCleanup(public.abort)
        self.assertEqual(public.status, 401, "a bad token on /public")
        await within_gone(public, "a bad token on /public")

        self.assertEqual(self.gauge(self.daemon, "ranger_connections_current", auth="private"), 0)
        self.assertEqual(self.gauge(self.daemon, "ranger_connections_current", auth="public"), 0)
        # Still serving: the same path with a good token is let in.
        ok = await self.ranger(private, make_token(uid=uid))
        self.assertEqual(ok.status, 101)
        self.assertEqual(await ok.next_json(WAIT), subscribed(["order", "trade"]))

    async def test_legacy_client_on_root_still_gets_the_challenge(self) -> None:
        """A legacy client on C{/} (no stream=, no Authorization) is greeted with the challenge and can log in."""
        client = await ws_connect(self.daemon.port, WAIT)
        self.addCleanup(client.abort)
        self.assertEqual(client.status, 101)
        greeting = await client.next_json(WAIT)
        self.assertEqual(list(greeting), ["challenge"])
        self.assertRegex(greeting["challenge"], r"^[A-Za-z0-9_-]{54}$")
        client.send_text(json.dumps({"jwt": "Bearer " + make_token(uid=new_uid())}))
        self.assertEqual(await client.next_json(WAIT), AUTHENTICATED)
        self.assertEqual(self.gauge(self.daemon, "peatio_ws_dialect_connections", dialect="legacy"), 1)
        self.assertEqual(self.gauge(self.daemon, "ranger_connections_current", auth="public"), 0)


async def within_gone(client: WsClient, what: str) -> None:
    """Until the server closed C{client}'s TCP connection (after its 401)."""
    await client.gone(WAIT)
    assert client.lost, what

