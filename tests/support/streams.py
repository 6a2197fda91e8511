"""
Steady streams of numbered events for one member, what a client received
of them, and what became of every event between publisher and client.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import LoopingCall

from tests.support.publisher import ACCEPTED, NACKED, NOT_SENT, RETURNED, UNCONFIRMED, ConfirmingPublisher
from tests.support.reactor_client import WsClient

__all__ = ["SeqTracker", "SteadyStream", "at_least", "delivery_figures"]


class SteadyStream:
    """
    Publishes numbered order events for member C{uid} at a steady pace
    (C{per_tick} every C{interval} seconds) until stopped.
    """

    def __init__(self, publisher: ConfirmingPublisher, uid: str, per_tick: int = 2, interval: float = 0.01) -> None:
        self.publisher = publisher
        self.uid = uid
        self.per_tick = per_tick
        self.interval = interval
        self.next_seq = 0
        self._loop: LoopingCall | None = None

    def publish_batch(self) -> None:
        """Publish the next C{per_tick} events now."""
        for _ in range(self.per_tick):
            seq = self.next_seq
            self.next_seq += 1
            body = json.dumps(
                {"seq": seq, "id": seq, "side": "buy", "ord_type": "limit", "price": "100.5", "state": "wait",
                 "market": "btcusd", "remaining_volume": "1.0", "executed_volume": "0.0"},
                separators=(",", ":"),
            ).encode()
            self.publisher.publish(seq, f"private.{self.uid}.order", body)

    def start(self) -> None:
        self._loop = LoopingCall(self.publish_batch)
        self._loop.clock = reactor
        self._loop.start(self.interval)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()


class SeqTracker:
    """The C{seq} of every C{event} a client receives, in arrival order, parsed as they come."""

    def __init__(self, client: WsClient, event: str = "order") -> None:
        self.event = event
        self.prefix = '{"' + event + '":'
        self.arrivals: list[int] = []
        self.unique: set[int] = set()
        client.on_text = self.feed

    def feed(self, text: str) -> None:
        if text.startswith(self.prefix):
            seq = json.loads(text)[self.event]["seq"]
            self.arrivals.append(seq)
            self.unique.add(seq)

    def __len__(self) -> int:
        return len(self.arrivals)


def at_least(tracker: SeqTracker, count: int) -> bool:
    """Whether C{tracker} has seen C{count} events (for L{WsClient.wait} with functools.partial)."""
    return len(tracker) >= count


def delivery_figures(received: list[int], publisher: ConfirmingPublisher) -> dict[str, Any]:
    """
    What was published, what the broker accepted into our queue, what the
    client got: duplicates (extra copies), lost (accepted, never delivered),
    and whether first copies arrived in publishing order.
    """
    counts = publisher.counts()
    first: list[int] = []
    seen: set[int] = set()
    for seq in received:
        if seq not in seen:
            seen.add(seq)
            first.append(seq)
    accepted = set(publisher.seqs(ACCEPTED))
    return {
        "published": len(publisher.outcome),
        "accepted": counts[ACCEPTED],
        "returned (unroutable)": counts[RETURNED],
        "nacked": counts[NACKED],
        "unconfirmed (connection lost)": counts[UNCONFIRMED],
        "not sent (broker down)": counts[NOT_SENT],
        "delivered": len(seen),
        "duplicates": len(received) - len(seen),
        "lost": len(accepted - seen),
        "delivered but not confirmed": len(seen - accepted),
        "in order": first == sorted(first),
    }
