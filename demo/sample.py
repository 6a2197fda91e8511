"""
The demo's sample events, as Peatio publishes them (decimals as strings,
its field names): plausible private orders and trades for a few members
(L{SampleStream}), and one market's public order book and trades
(L{SampleBook}).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any


@dataclass
class Market:
    """A market with a drifting last price."""

    name: str
    price: Decimal
    price_step: Decimal
    volume_step: Decimal
    typical_volume: float


@dataclass
class SampleOrder:
    """One member's order as the simulator keeps it."""

    id: int
    uid: str
    market: Market
    side: str
    ord_type: str
    price: Decimal | None
    origin_volume: Decimal
    created_at: str
    executed_volume: Decimal = Decimal(0)
    funds: Decimal = Decimal(0)
    trades_count: int = 0
    state: str = "wait"

    @property
    def remaining_volume(self) -> Decimal:
        return self.origin_volume - self.executed_volume

    def payload(self) -> dict[str, Any]:
        """The order event, with the fields peatio documents."""
        avg = (self.funds / self.executed_volume).quantize(self.market.price_step) if self.executed_volume else 0
        return {
            "id": self.id,
            "side": self.side,
            "ord_type": self.ord_type,
            "price": _text(self.price) if self.price is not None else None,
            "avg_price": _text(Decimal(avg)),
            "state": self.state,
            "market": self.market.name,
            "created_at": self.created_at,
            "origin_volume": _text(self.origin_volume),
            "remaining_volume": _text(self.remaining_volume),
            "executed_volume": _text(self.executed_volume),
            "trades_count": self.trades_count,
        }


def sample_markets() -> list[Market]:
    """The demo's markets, at plausible prices."""
    return [
        Market("btcusd", Decimal("64250.00"), Decimal("0.01"), Decimal("0.0001"), 0.25),
        Market("ethusd", Decimal("3180.50"), Decimal("0.01"), Decimal("0.001"), 2.5),
        Market("ethbtc", Decimal("0.049512"), Decimal("0.000001"), Decimal("0.001"), 3.0),
    ]


#: Their names (the public market of the demo is one of them).
MARKET_NAMES = tuple(m.name for m in sample_markets())


def _text(value: Decimal) -> str:
    """A decimal as Peatio writes it: plain notation, no exponent."""
    return format(value.normalize(), "f") if value else "0.0"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class SampleStream:
    """
    Plausible private events for a few members: limit orders placed, filled
    in parts (one trade event and one order update per fill), cancelled, and
    market orders filled at once.
    """

    members: Sequence[str]
    rng: random.Random = field(default_factory=random.Random)
    open_orders: dict[str, list[SampleOrder]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.markets = sample_markets()
        base = self.rng.randrange(100_000, 900_000)
        self._order_ids = iter(range(base, 10**9))
        self._trade_ids = iter(range(base * 3, 10**9))

    def tick(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """The events of one tick, as (uid, event, payload): one action per member."""
        for market in self.markets:
            drift = Decimal(str(round(self.rng.gauss(0, 0.0007), 6)))
            market.price = (market.price * (1 + drift)).quantize(market.price_step, ROUND_HALF_UP)
        for uid in self.members:
            orders = self.open_orders.setdefault(uid, [])
            roll = self.rng.random()
            if not orders or (roll < 0.4 and len(orders) < 8):
                yield from self._place(uid, orders)
            elif roll < 0.8:
                yield from self._fill(self.rng.choice(orders), orders)
            else:
                order = self.rng.choice(orders)
                order.state = "cancel"
                orders.remove(order)
                yield uid, "order", order.payload()

    def _place(self, uid: str, orders: list[SampleOrder]) -> Iterator[tuple[str, str, dict[str, Any]]]:
        market = self.rng.choice(self.markets)
        side = self.rng.choice(("buy", "sell"))
        volume = Decimal(str(self.rng.uniform(0.2, 1.8) * market.typical_volume)).quantize(market.volume_step)
        if self.rng.random() < 0.2:
            order = SampleOrder(next(self._order_ids), uid, market, side, "market", None, volume, _now())
            yield from self._fill(order, orders, everything=True)
            return
        # A limit price a little off the market, on the patient side.
        offset = Decimal(str(self.rng.uniform(0.0, 0.004)))
        factor = 1 - offset if side == "buy" else 1 + offset
        price = (market.price * factor).quantize(market.price_step)
        order = SampleOrder(next(self._order_ids), uid, market, side, "limit", price, volume, _now())
        orders.append(order)
        yield uid, "order", order.payload()

    def _fill(
        self, order: SampleOrder, orders: list[SampleOrder], everything: bool = False
    ) -> Iterator[tuple[str, str, dict[str, Any]]]:
        remaining = order.remaining_volume
        if everything or remaining <= order.market.volume_step * 10 or self.rng.random() < 0.25:
            amount = remaining
        else:
            share = Decimal(str(self.rng.uniform(0.2, 0.7)))
            amount = max(order.market.volume_step, (remaining * share).quantize(order.market.volume_step))
        price = order.price if order.price is not None else order.market.price
        order.executed_volume += amount
        order.funds += price * amount
        total = (price * amount).quantize(order.market.price_step)
        order.trades_count += 1
        if order.remaining_volume <= 0:
            order.state = "done"
            if order in orders:
                orders.remove(order)
        trade = {
            "id": next(self._trade_ids),
            "price": _text(price),
            "amount": _text(amount),
            "total": _text(total),
            "market": order.market.name,
            "side": order.side,
            "created_at": _now(),
            "order_id": order.id,
        }
        yield order.uid, "trade", trade
        yield order.uid, "order", order.payload()


@dataclass
class SampleBook:
    """
    One market's public order book as Peatio's matching engine publishes it
    (SPEC §7): C{ob-snap} bodies C{{"asks":[[p,v],...],"bids":[...],"sequence":N}},
    then C{ob-inc} bodies with one level each, C{{"asks"|"bids":[p,v],"sequence":N+1}},
    N+2, ... (a volume of C{"0"} deletes the level), and C{trades} bodies
    C{{"trades":[{"tid","price","amount","taker_type","date"}]}}.

    Makers add, change and cancel levels near the spread; takers eat the
    best level, which is what moves the price. A snapshot carries the
    sequence of the last increment, as the engine's does: it continues the
    sequence, it does not advance it.
    """

    market: Market
    rng: random.Random = field(default_factory=random.Random)
    #: How many levels a side keeps, about.
    depth: int = 10
    #: Price -> volume, per side.
    asks: dict[Decimal, Decimal] = field(default_factory=dict)
    bids: dict[Decimal, Decimal] = field(default_factory=dict)
    #: The sequence of the last thing published (1: the first snapshot, as Peatio counts).
    sequence: int = 1

    def __post_init__(self) -> None:
        # Levels a few price steps apart (about 0.01 % of the price), on that grid.
        self.spacing = max(self.market.price_step, (self.market.price / 10_000).quantize(self.market.price_step))
        mid = (self.market.price / self.spacing).quantize(Decimal(1)) * self.spacing
        for k in range(1, self.depth + 1):
            self.asks[mid + k * self.spacing] = self._volume()
            self.bids[mid - k * self.spacing] = self._volume()
        self._trade_ids = iter(range(self.rng.randrange(1_000_000, 9_000_000), 10**12))

    def _volume(self) -> Decimal:
        raw = Decimal(str(self.rng.uniform(0.05, 2.0) * self.market.typical_volume))
        return max(self.market.volume_step, raw.quantize(self.market.volume_step))

    def _side(self, side: str) -> dict[Decimal, Decimal]:
        return self.asks if side == "asks" else self.bids

    def best(self, side: str) -> Decimal | None:
        levels = self._side(side)
        if not levels:
            return None
        return min(levels) if side == "asks" else max(levels)

    def snapshot(self) -> dict[str, Any]:
        """The C{ob-snap} body: every level, best first, at the current sequence."""
        return {
            "asks": [[_text(p), _text(self.asks[p])] for p in sorted(self.asks)],
            "bids": [[_text(p), _text(self.bids[p])] for p in sorted(self.bids, reverse=True)],
            "sequence": self.sequence,
        }

    def step(self) -> list[tuple[str, dict[str, Any]]]:
        """
        One change of the book, as (event, body): one or two C{ob-inc}
        (a trade that eats into a level also publishes it as C{trades}).
        """
        side = self.rng.choice(("asks", "bids"))
        levels = self._side(side)
        roll = self.rng.random()
        if len(levels) < self.depth // 2 or (roll < 0.35 and len(levels) < self.depth * 3 // 2):
            return [self._place(side)]
        if roll < 0.6:
            price = self.rng.choice(list(levels))
            return [self._set(side, price, self._volume())]
        if roll < 0.75:
            # A maker cancels a level away from the spread.
            far = sorted(levels, reverse=side == "bids")[1:]
            return [self._set(side, self.rng.choice(far), Decimal(0))] if far else [self._place(side)]
        return self._take("asks" if side == "asks" else "bids")

    def _place(self, side: str) -> tuple[str, dict[str, Any]]:
        """A maker's new level (or more volume on one), never crossing the other side."""
        best_ask, best_bid = self.best("asks"), self.best("bids")
        k = min(int(self.rng.expovariate(0.35)), self.depth * 2)
        if side == "asks":
            anchor = best_ask if best_ask is not None else (best_bid or self.market.price) + self.spacing
            price = anchor - self.spacing + k * self.spacing
            if best_bid is not None and price <= best_bid:
                price = best_bid + self.spacing
        else:
            anchor = best_bid if best_bid is not None else (best_ask or self.market.price) - self.spacing
            price = anchor + self.spacing - k * self.spacing
            if best_ask is not None and price >= best_ask:
                price = best_ask - self.spacing
        if price <= 0:
            price = self.spacing
        return self._set(side, price, self._side(side).get(price, Decimal(0)) + self._volume())

    def _take(self, side: str) -> list[tuple[str, dict[str, Any]]]:
        """A taker eats into the best level of C{side}: a trade, and that level's new volume."""
        price = self.best(side)
        if price is None:
            return [self._place(side)]
        volume = self._side(side)[price]
        if self.rng.random() < 0.4:
            amount = volume
        else:
            share = Decimal(str(self.rng.uniform(0.1, 0.8)))
            amount = min(volume, max(self.market.volume_step, (volume * share).quantize(self.market.volume_step)))
        self.market.price = price
        trade = {
            "tid": next(self._trade_ids),
            "price": _text(price),
            "amount": _text(amount),
            # Eating the asks is buying.
            "taker_type": "buy" if side == "asks" else "sell",
            "date": int(datetime.now(UTC).timestamp()),
        }
        return [("trades", {"trades": [trade]}), self._set(side, price, volume - amount)]

    def _set(self, side: str, price: Decimal, volume: Decimal) -> tuple[str, dict[str, Any]]:
        levels = self._side(side)
        if volume > 0:
            levels[price] = volume
        else:
            levels.pop(price, None)
        self.sequence += 1
        return "ob-inc", {side: [_text(price), _text(volume) if volume > 0 else "0"], "sequence": self.sequence}
