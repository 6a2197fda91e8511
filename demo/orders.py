"""
What the demo's stand-in exchange knows about its members' orders: the
latest state of every order the sample feed published (L{OrderLedger}),
and the list Peatio's REST API would answer from it (L{OrderLedger.query},
shaped like C{GET /api/v2/peatio/market/orders}).

A real front end, told by close code 1012 that events may have been lost
(SPEC §8), reconnects and reloads its orders from the exchange's REST API.
The demo has no exchange: its web server answers that one call from this
ledger instead (L{demo.site}), so the page can do exactly what a real one
does. The ledger records an order's state when the feed publishes its event,
whether or not the event reaches anyone: it is the exchange's own truth,
and an event lost on the way is what the reload makes up for. It knows only
the orders the demo itself published (not those a test or `peatio-ws
publish` sends on the exchange).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: Peatio's order states; C{wait} is an open order.
STATES = frozenset({"wait", "done", "cancel", "reject", "pending"})
#: What C{limit} may be, and is by default (as Peatio's API).
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


class QueryError(ValueError):
    """A query parameter Peatio would refuse; C{code} is its error word (C{market.order.invalid_limit})."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class OrderLedger:
    """The latest state of each member's orders, as the exchange keeps them; the oldest go beyond C{keep}."""

    keep: int = 1000
    _orders: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)

    def record(self, uid: str, order: Mapping[str, Any], now: datetime | None = None) -> None:
        """The order event C{order} of C{uid} was published: its state is the order's now."""
        try:
            order_id = int(order["id"])
        except (KeyError, TypeError, ValueError):
            return
        when = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        orders = self._orders.setdefault(uid, {})
        orders[order_id] = {**order, "updated_at": when}
        while len(orders) > self.keep:
            del orders[min(orders)]

    def query(self, uid: str, params: Mapping[str, str]) -> tuple[list[dict[str, Any]], int, int, int]:
        """
        C{uid}'s orders as C{GET /api/v2/peatio/market/orders?market=&state=&limit=&page=&order_by=}
        answers them: optionally one market and one state, C{limit} (1 to
        1000, default 100) a page, page C{page} (from 1), newest first unless
        C{order_by=asc}. Returns (orders, total, page, limit).

        @raise QueryError: a parameter Peatio would refuse.
        """
        market = params.get("market")
        state = params.get("state")
        if state is not None and state not in STATES:
            raise QueryError("market.order.invalid_state")
        limit = _integer(params.get("limit"), DEFAULT_LIMIT, "limit")
        if not 1 <= limit <= MAX_LIMIT:
            raise QueryError("market.order.invalid_limit")
        page = _integer(params.get("page"), 1, "page")
        if page < 1:
            raise QueryError("market.order.invalid_page")
        order_by = params.get("order_by", "desc")
        if order_by not in ("asc", "desc"):
            raise QueryError("market.order.invalid_order_by")
        orders = self._orders.get(uid, {})
        # Ids grow with creation: newest first is the highest id first.
        ids = sorted(orders, reverse=order_by == "desc")
        found = [
            orders[i]
            for i in ids
            if market in (None, orders[i].get("market")) and state in (None, orders[i].get("state"))
        ]
        start = (page - 1) * limit
        return [dict(o) for o in found[start : start + limit]], len(found), page, limit


def _integer(value: str | None, default: int, name: str) -> int:
    if value is None:
        return default
    try:
        return int(value, 10)
    except ValueError:
        raise QueryError(f"market.order.non_integer_{name}") from None
