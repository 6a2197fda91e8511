# -*- test-case-name: tests.unit.test_streams_names -*-
"""
Stream names (SPEC §7), as pure functions: a name without a dot is private
(C{order}, C{trade}, ...), C{<id>.<event>} is public (C{btcusd.ob-inc},
C{global.tickers}); and the public routing key C{public.<id>.<event>}.

A name is letters, digits, C{_} and C{-}, one dot at most: no wildcard
(C{*}, C{#}), no control character, nothing a topic binding or a log line
would read differently.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = [
    "MAX_PART",
    "PUBLIC_BINDING",
    "Stream",
    "family",
    "is_order_book",
    "parse_public_key",
    "parse_stream",
]

#: The process queue's binding for every public event (SPEC §7).
PUBLIC_BINDING = b"public.*.*"
#: Longest id or event name, in characters.
MAX_PART = 64
_PART = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_PART}}}\Z")
_PART_BYTES = re.compile(rb"[A-Za-z0-9_-]{1,%d}\Z" % MAX_PART)
#: Event names counted under their own label; anything else is "other", so a
#: client cannot grow the metrics by subscribing to made-up streams.
_FAMILIES = re.compile(
    r"(trades|ob-inc|ob-snap|tickers|update|order|trade|deposit_address|balances|p2p|kline-\d{1,2}[mhdw])\Z"
)


class Stream(NamedTuple):
    """A parsed stream name: C{ident} is None for a private stream."""

    name: str
    ident: str | None
    event: str

    @property
    def public(self) -> bool:
        return self.ident is not None


def parse_stream(name: object) -> Stream | None:
    """The stream C{name} names, or None when it is not a valid stream name."""
    if not isinstance(name, str) or len(name) > 2 * MAX_PART + 1:
        return None
    ident, dot, event = name.partition(".")
    if not dot:
        return Stream(name, None, name) if _PART.match(name) else None
    if _PART.match(ident) and _PART.match(event):
        return Stream(name, ident, event)
    return None


def parse_public_key(key: bytes) -> tuple[str, str] | None:
    """C{(id, event)} from the routing key C{public.<id>.<event>}; None for any other shape."""
    parts = key.split(b".")
    if len(parts) != 3 or parts[0] != b"public":
        return None
    ident, event = parts[1], parts[2]
    if not _PART_BYTES.match(ident) or not _PART_BYTES.match(event):
        return None
    return ident.decode("ascii"), event.decode("ascii")


def is_order_book(event: str) -> bool:
    return event == "ob-inc" or event == "ob-snap"


def family(event: str) -> str:
    """The metrics label of a stream's event: itself for known families, else "other"."""
    return event if _FAMILIES.match(event) else "other"
