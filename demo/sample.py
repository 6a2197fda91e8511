"""
The demo's sample events: plausible private orders and trades for a few
members, as Peatio publishes them (decimals as strings, its field names).
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
        self.markets = [
            Market("btcusd", Decimal("64250.00"), Decimal("0.01"), Decimal("0.0001"), 0.25),
            Market("ethusd", Decimal("3180.50"), Decimal("0.01"), Decimal("0.001"), 2.5),
            Market("ethbtc", Decimal("0.049512"), Decimal("0.000001"), Decimal("0.001"), 3.0),
        ]
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
