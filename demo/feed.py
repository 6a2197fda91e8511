"""
The demo's feed: publishes the sample stream on RabbitMQ every tick,
through the test kit's publisher (so through L{peatio_ws.amqp.Publisher}),
and reconnects when the broker goes away (warning once).

Beside the private events, a public market (L{SampleBook}): each tick a
few order-book increments (C{public.<m>.ob-inc}, consecutive sequences) and
the trades among them (C{public.<m>.trades}), and a snapshot
(C{public.<m>.ob-snap}) every C{snapshot_period} seconds, and first thing
after every (re)connect: what was not published meanwhile is a gap, and the
daemon heals its clients with the next snapshot. With C{gap_every}, every
so many increments one is not published, on purpose, to watch it do that.

Every order event is recorded in the demo's L{OrderLedger} as it is
published: what the stand-in for the exchange's REST API answers from
(L{demo.site}), which the page reloads its orders from after a close 1012.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall

from demo.console import say
from demo.orders import OrderLedger
from demo.sample import SampleBook, SampleStream
from peatio_ws.config import Settings
from tests.support.publisher import Publisher

#: What every sample event is published with.
PROPERTIES = {"content-type": "application/json", "delivery-mode": 1}


class SampleFeed:
    """Publishes the sample stream on RabbitMQ; reconnects when the broker goes away."""

    RETRY = 3.0

    def __init__(
        self,
        reactor: Any,
        settings: Settings,
        exchange: str,
        stream: SampleStream,
        interval: float,
        book: SampleBook | None = None,
        snapshot_period: float = 10.0,
        gap_every: int = 0,
        ledger: OrderLedger | None = None,
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.exchange = exchange
        self.stream = stream
        self.interval = interval
        self.book = book
        self.snapshot_period = snapshot_period
        self.gap_every = gap_every
        #: The exchange's own record of its orders (what its REST API would answer).
        self.ledger = ledger if ledger is not None else OrderLedger()
        self.published = 0
        #: Order-book increments made, and those left out on purpose (L{gap_every}).
        self.increments = 0
        self.skipped = 0
        #: When the next order-book snapshot is due (0: at the next tick).
        self._next_snapshot = 0.0
        self._publisher: Publisher | None = None
        self._connecting = False
        self._next_attempt = 0.0
        self._warned = False
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True).addErrback(self._loop_failed)

    def _loop_failed(self, failure: Any) -> None:
        say(f"publisher stopped: {failure.getErrorMessage()}")

    def _tick(self) -> None:
        publisher = self._publisher
        if publisher is None or publisher.closed:
            self._publisher = None
            if not self._connecting and self.reactor.seconds() >= self._next_attempt:
                self._connect()
            return
        for uid, event, payload in self.stream.tick():
            if event == "order":
                # The exchange's state, whether or not the event reaches anyone.
                self.ledger.record(uid, payload)
            self._publish(publisher, f"private.{uid}.{event}", payload)
        book = self.book
        if book is not None:
            market = book.market.name
            now = self.reactor.seconds()
            if now >= self._next_snapshot:
                self._publish(publisher, f"public.{market}.ob-snap", book.snapshot())
                self._next_snapshot = now + self.snapshot_period
            for _ in range(book.rng.randint(1, 3)):
                for event, payload in book.step():
                    if event == "ob-inc":
                        self.increments += 1
                        if self.gap_every and self.increments % self.gap_every == 0:
                            self.skipped += 1  # "lost": the daemon holds the book back until the next snapshot
                            continue
                    self._publish(publisher, f"public.{market}.{event}", payload)

    def _publish(self, publisher: Publisher, routing_key: str, payload: dict[str, Any]) -> None:
        # Bytes only: txAMQP 0.8.2 counts a str body in characters.
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        d = publisher.publish(self.exchange, routing_key, body, properties=PROPERTIES)
        d.addErrback(self._publish_failed)
        self.published += 1

    def _publish_failed(self, failure: Any) -> None:
        self._publisher = None

    def _connect(self) -> None:
        self._connecting = True
        d = Deferred.fromCoroutine(self._open())
        d.addTimeout(15, self.reactor)
        d.addCallbacks(self._connected, self._connect_failed)

    async def _open(self) -> Publisher:
        publisher = await Publisher.connect(self.settings)
        try:
            # As Peatio (and the daemon) declare it; the same arguments or RabbitMQ refuses.
            await publisher.declare_exchange(self.exchange)
        except BaseException:
            publisher.client.transport.loseConnection()
            raise
        return publisher

    def _connected(self, publisher: Publisher) -> None:
        self._connecting = False
        self._publisher = publisher
        self._next_snapshot = 0.0  # increments may have been lost: a snapshot first
        if self._warned:
            say("publisher: connected to RabbitMQ again")
        self._warned = False

    def _connect_failed(self, failure: Any) -> None:
        self._connecting = False
        self._next_attempt = self.reactor.seconds() + self.RETRY
        if not self._warned:
            say(f"publisher: {failure.getErrorMessage()}; retrying every {self.RETRY:.0f} s")
            self._warned = True

    def stop(self) -> Deferred[Any]:
        """Stop publishing and close the broker connection: cleanly, else aborted."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        publisher, self._publisher = self._publisher, None
        if publisher is None or publisher.client.closed:
            return succeed(None)
        closing = Deferred.fromCoroutine(publisher.close(force=True))
        closing.addErrback(lambda _: None)
        return closing
