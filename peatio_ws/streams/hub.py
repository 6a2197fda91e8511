# -*- test-case-name: tests.unit.test_streams_hub -*-
"""
The public side of the ranger dialect (SPEC §7): who is subscribed to
which stream, and the fan-out of public events.

A public event C{public.<id>.<event>} goes to the subscribers of
C{<id>.<event>} as C{{"<id>.<event>": payload}}, framed once for all of them
and handed to the registry's fan-out (so it joins the read's batch: one
write per connection per read, private and public events in broker order).
C{<m>.ob-snap} and C{<m>.ob-inc} go through the market's L{OrderBook}, which
decides who may get them.

A connection's subscriptions live on the connection (C{subscriptions}, an
insertion-ordered dict of L{Stream}s, and C{private_streams}, the private
event names the registry filters on); this hub keeps the index from public
stream to connections and the order books. Every public event is received
from start-up, whoever is subscribed, so the stores are warm before the
first client asks.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from peatio_ws.framing import event_message, text_frame
from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry
from peatio_ws.streams.names import Stream, family
from peatio_ws.streams.orderbook import OrderBook, sequence_of

if TYPE_CHECKING:
    from peatio_ws.registry import Connection

__all__ = ["PublicHub"]


class PublicHub:
    """The public stream index, the order books, and the public fan-out."""

    def __init__(self, registry: Registry, metrics: Metrics, max_increments: int) -> None:
        self._registry = registry
        self._metrics = metrics
        self.max_increments = max_increments
        #: Public stream name -> its subscribers (C{<m>.ob-inc} ones are in the market's book).
        self._subscribers: dict[str, set[Connection]] = {}
        #: Market -> its order book: every market that published an order-book
        #: event, and those with an C{ob-inc} subscriber.
        self.books: dict[str, OrderBook] = {}
        #: Private stream name -> how many connections subscribe to it (for /metrics).
        self._private: dict[str, int] = {}
        self._received: dict[str, Any] = {}
        self._copies: dict[str, Any] = {}
        metrics.registry.register(_HubCollector(self))

    # -- subscriptions ---------------------------------------------------------------

    def subscribe(self, conn: Any, streams: Iterable[Stream], carried: Collection[str] | None = None) -> list[bytes]:
        """
        Add C{streams} to C{conn}'s subscriptions (those it has already are
        left alone); private ones only when C{conn.private_streams} is a set
        (an authenticated connection). Returns the order-book replay frames
        for the new C{<m>.ob-inc} streams, in order, to write before the
        subscribed reply. With C{carried} (a connection carried across a
        restart in place, L{restore_books} done): nothing is replayed, and it
        is primed on the markets C{carried} names, waiting on the others.
        """
        current: dict[str, Stream] = conn.subscriptions
        private: set[str] | None = conn.private_streams
        replay: list[bytes] = []
        for stream in streams:
            name = stream.name
            if name in current:
                continue
            if stream.ident is None:
                if private is None:
                    continue
                private.add(name)
                self._private[name] = self._private.get(name, 0) + 1
            elif stream.event == "ob-inc":
                if carried is not None:
                    self._book(stream.ident).carry(conn, stream.ident in carried)
                else:
                    frames = self._book(stream.ident).subscribe(conn)
                    if frames is not None:
                        replay.extend(frames)
            else:
                self._subscribers.setdefault(name, set()).add(conn)
            current[name] = stream
        return replay

    def unsubscribe(self, conn: Any, streams: Iterable[Stream]) -> None:
        """Remove C{streams} from C{conn}'s subscriptions (those it does not have are ignored)."""
        current: dict[str, Stream] = conn.subscriptions
        for stream in streams:
            if current.pop(stream.name, None) is not None:
                self._drop(conn, stream)

    def forget(self, conn: Any) -> None:
        """C{conn} closed: every subscription goes."""
        current: dict[str, Stream] | None = conn.subscriptions
        if not current:
            return
        for stream in current.values():
            self._drop(conn, stream)
        current.clear()

    def _drop(self, conn: Any, stream: Stream) -> None:
        name = stream.name
        if stream.ident is None:
            private: set[str] | None = conn.private_streams
            if private is not None:
                private.discard(name)
            left = self._private.get(name, 0) - 1
            if left > 0:
                self._private[name] = left
            else:
                self._private.pop(name, None)
        elif stream.event == "ob-inc":
            book = self.books.get(stream.ident)
            if book is not None:
                book.unsubscribe(conn)
                if not book.subscribers and book.sequence is None and not book.broken:
                    # Made for a subscriber, never published to: not kept.
                    del self.books[stream.ident]
        else:
            subscribers = self._subscribers.get(name)
            if subscribers is not None:
                subscribers.discard(conn)
                if not subscribers:
                    del self._subscribers[name]

    def _book(self, market: str) -> OrderBook:
        book = self.books.get(market)
        if book is None:
            book = self.books[market] = OrderBook(market, self.max_increments)
        return book

    # -- events ------------------------------------------------------------------------

    def publish(self, ident: str, event: str, body: bytes) -> int:
        """
        One public event (a valid JSON body): write it to whoever should
        get it. Returns the copies written (or held in the read's batch).
        """
        self._count(self._received, self._metrics.public_events_received, event, 1)
        name = ident + "." + event
        frame = text_frame(event_message(name, body))
        sent = 0
        if event == "ob-inc":
            recipients: Collection[Any] = self._book(ident).increment_arrived(sequence_of(body), frame)
        elif event == "ob-snap":
            recipients = self._book(ident).snapshot_arrived(sequence_of(body), frame)
        else:
            recipients = ()
        if recipients:
            sent = self._registry.fan_out(recipients, frame)
        subscribers = self._subscribers.get(name)
        if subscribers and recipients:
            # A subscriber of both <m>.ob-inc and <m>.ob-snap gets the snapshot once.
            subscribers = subscribers.difference(recipients)
        if subscribers:
            sent += self._registry.fan_out(subscribers, frame)
        if sent:
            self._count(self._copies, self._metrics.public_copies, event, sent)
        return sent

    def primed_markets(self, conn: Any) -> list[str]:
        """The markets whose book C{conn} holds (primed on C{<m>.ob-inc})."""
        return [market for market, book in self.books.items() if conn in book.primed]

    def carried_books(self) -> dict[str, dict[str, Any]]:
        """Every order book's store, for the program a restart in place starts (L{restore_books})."""
        return {market: book.carried() for market, book in self.books.items()}

    def restore_books(self, books: dict[str, dict[str, Any]]) -> None:
        """The stores L{carried_books} gave, before any connection is carried over."""
        for market, carried in books.items():
            self.books[market] = OrderBook.restored(market, self.max_increments, carried)

    def market_lost(self) -> None:
        """Events may have been lost (SPEC §8): every order book waits for its next snapshot."""
        for book in self.books.values():
            book.break_()

    @staticmethod
    def _count(cache: dict[str, Any], counter: Any, event: str, amount: int) -> None:
        child = cache.get(event)
        if child is None:
            child = cache[event] = counter.labels(event=family(event))
        child.inc(amount)

    # -- what /metrics reads -------------------------------------------------------------

    def subscription_counts(self) -> dict[str, int]:
        """Subscriptions by stream family (C{trades}, C{ob-inc}, C{order}, ...)."""
        counts: dict[str, int] = {}
        for name, subscribers in self._subscribers.items():
            label = family(name.partition(".")[2])
            counts[label] = counts.get(label, 0) + len(subscribers)
        for book in self.books.values():
            if book.subscribers:
                counts["ob-inc"] = counts.get("ob-inc", 0) + len(book.subscribers)
        for name, count in self._private.items():
            label = family(name)
            counts[label] = counts.get(label, 0) + count
        return counts


class _HubCollector(Collector):
    """Read at each scrape: subscriptions by family and each order book's state (no cost per event)."""

    def __init__(self, hub: PublicHub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[Any]:
        subscriptions = GaugeMetricFamily(
            "peatio_ws_subscriptions", "Ranger subscriptions by stream family", labels=["stream"]
        )
        # Ruby ranger's name too (its dashboards), by family rather than by stream name.
        ranger = GaugeMetricFamily(
            "ranger_subscriptions_current", "Ranger subscriptions by stream family", labels=["stream"]
        )
        for label, count in sorted(self._hub.subscription_counts().items()):
            subscriptions.add_metric([label], count)
            ranger.add_metric([label], count)
        yield subscriptions
        yield ranger
        sequence = GaugeMetricFamily(
            "peatio_ws_orderbook_sequence", "The last order-book sequence followed, by market", labels=["market"]
        )
        replayable = GaugeMetricFamily(
            "peatio_ws_orderbook_replayable",
            "1 when a new ob-inc subscriber gets snapshot + increments at once, 0 when it waits for a snapshot",
            labels=["market"],
        )
        broken = GaugeMetricFamily(
            "peatio_ws_orderbook_broken", "1 after a sequence gap, until the next snapshot", labels=["market"]
        )
        stored = GaugeMetricFamily(
            "peatio_ws_orderbook_increments", "Increments stored after the last snapshot", labels=["market"]
        )
        waiting = GaugeMetricFamily(
            "peatio_ws_orderbook_waiting", "ob-inc subscribers waiting for a snapshot", labels=["market"]
        )
        gaps = CounterMetricFamily("peatio_ws_orderbook_gaps", "Sequence gaps seen, by market", labels=["market"])
        for market, book in sorted(self._hub.books.items()):
            if book.sequence is None and not book.broken:
                continue
            labels = [market]
            sequence.add_metric(labels, book.sequence if book.sequence is not None else -1)
            replayable.add_metric(labels, 1 if book.replayable else 0)
            broken.add_metric(labels, 1 if book.broken else 0)
            stored.add_metric(labels, len(book.increments))
            waiting.add_metric(labels, book.waiting)
            gaps.add_metric(labels, book.gaps)
        yield from (sequence, replayable, broken, stored, waiting, gaps)
