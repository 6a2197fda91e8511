# -*- test-case-name: tests.unit.test_handoff -*-
"""
One connection carried across a restart in place (L{peatio_ws.reexec}):
what the next program needs to go on serving it on the same socket, and
the two ends of that.

The stopping program first L{freeze}s every connection it can carry: open,
between messages, nothing queued, awaited or held back, on plain TCP (a TLS
session's keys cannot be carried). Its socket is no longer read, so the
client's next bytes wait in the kernel, and its timers stop. Any other
connection is told 1001, as at a shutdown. Just before the exec it
L{capture}s each frozen one as a L{Carried}: the socket, kept open across
the exec; the connection id; the dialect; the member's claims; the ranger
subscriptions and the order books it holds; and what Twisted still held to
send. The order books' stores go along (L{books_json}), so that a client
holding a book goes on receiving its increments.

The next program L{adopt}s each L{Carried}: the socket handed to the reactor,
a protocol built by the factory as for an accepted socket (counted for its
address, never refused) and put straight into the open state, what was
held written first, then the member's claims and the subscriptions set again
by the dialect, without a word to the client. The client sees its events
pause and go on.
"""

from __future__ import annotations

import base64
import os
import socket
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from peatio_ws.auth import Claims
from peatio_ws.websocket import _autobahn, _transport

if TYPE_CHECKING:
    from peatio_ws.websocket.connection import StreamProtocol
    from peatio_ws.websocket.factory import StreamFactory

__all__ = ["Carried", "CarriedError", "adopt", "books_from_json", "books_json", "capture", "freeze"]

_FAMILIES = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}
_CLAIM_NAMES = tuple(f.name for f in fields(Claims))
_CLAIM_FIELDS = frozenset(_CLAIM_NAMES)


class CarriedError(ValueError):
    """A carried connection's record is not one this program can adopt: C{str()} says why."""


@dataclass(frozen=True)
class Carried:
    """One connection as the next program gets it."""

    #: The socket's descriptor, inheritable across the exec.
    fd: int
    #: C{socket.AF_INET} or C{socket.AF_INET6}.
    family: int
    conn_id: str
    #: C{legacy} or C{ranger}.
    dialect: str
    #: The member, when authenticated.
    claims: Claims | None
    #: The ranger subscriptions, in the order they were made.
    streams: tuple[str, ...]
    #: Bytes Twisted held for the kernel: written first.
    pending: bytes
    #: The markets whose order book the client holds (primed on C{<m>.ob-inc}).
    primed: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "fd": self.fd,
            "family": "inet6" if self.family == socket.AF_INET6 else "inet",
            "id": self.conn_id,
            "dialect": self.dialect,
            "claims": _claims_json(self.claims) if self.claims is not None else None,
            "streams": list(self.streams),
            "pending": base64.b64encode(self.pending).decode("ascii"),
            "primed": list(self.primed),
        }

    @classmethod
    def from_json(cls, value: object) -> Carried:
        """@raise CarriedError: C{value} is not a record L{as_json} writes."""
        if not isinstance(value, dict):
            raise CarriedError("a connection is not a JSON object")
        try:
            fd, family, conn_id, dialect = value["fd"], value["family"], value["id"], value["dialect"]
            raw_claims, streams, pending, primed = value["claims"], value["streams"], value["pending"], value["primed"]
        except KeyError as e:
            raise CarriedError(f"a connection has no {e.args[0]!r}") from None
        if not isinstance(fd, int) or isinstance(fd, bool) or fd < 3:
            raise CarriedError(f"bad descriptor {fd!r}")
        if family not in _FAMILIES:
            raise CarriedError(f"bad address family {family!r}")
        if not isinstance(conn_id, str) or dialect not in ("legacy", "ranger"):
            raise CarriedError(f"bad connection id or dialect ({conn_id!r}, {dialect!r})")
        claims = None
        if raw_claims is not None:
            if (
                not isinstance(raw_claims, dict)
                or set(raw_claims) != _CLAIM_FIELDS
                or not isinstance(raw_claims["uid"], str)
                or not isinstance(raw_claims["jti"], str)
            ):
                raise CarriedError("bad claims")
            claims = Claims(**raw_claims)
        if not _strings(streams):
            raise CarriedError("bad streams")
        if not _strings(primed):
            raise CarriedError("bad primed markets")
        if not isinstance(pending, str):
            raise CarriedError("bad pending bytes")
        try:
            data = base64.b64decode(pending, validate=True)
        except ValueError:
            raise CarriedError("bad pending bytes") from None
        return cls(fd, _FAMILIES[family], conn_id, dialect, claims, tuple(streams), data, tuple(primed))


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def books_json(books: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The order books' stores (L{PublicHub.carried_books}) as JSON: frames in base64."""
    return {
        market: {
            "sequence": book["sequence"],
            "broken": book["broken"],
            "snapshot": _b64(book["snapshot"]) if book["snapshot"] is not None else None,
            "increments": [_b64(frame) for frame in book["increments"]],
        }
        for market, book in books.items()
    }


def books_from_json(value: object) -> dict[str, dict[str, Any]]:
    """
    What L{books_json} wrote, for L{PublicHub.restore_books}.

    @raise CarriedError: not that.
    """
    if not isinstance(value, dict):
        raise CarriedError("the order books are not a JSON object")
    books = {}
    for market, book in value.items():
        try:
            sequence, broken = book["sequence"], book["broken"]
            snapshot, increments = book["snapshot"], book["increments"]
        except (KeyError, TypeError):
            raise CarriedError(f"order book {market!r} is not one") from None
        whole = isinstance(sequence, int) and not isinstance(sequence, bool)
        if (sequence is not None and not whole) or not isinstance(broken, bool):
            raise CarriedError(f"order book {market!r} has a bad sequence")
        if not _strings(increments) or (snapshot is not None and not isinstance(snapshot, str)):
            raise CarriedError(f"order book {market!r} has bad frames")
        try:
            books[market] = {
                "sequence": sequence,
                "broken": broken,
                "snapshot": base64.b64decode(snapshot, validate=True) if snapshot is not None else None,
                "increments": [base64.b64decode(frame, validate=True) for frame in increments],
            }
        except ValueError:
            raise CarriedError(f"order book {market!r} has bad frames") from None
    return books


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _claims_json(claims: Claims) -> dict[str, Any]:
    # Not dataclasses.asdict, which deep-copies every value: 15,000 of them at a restart.
    return {name: getattr(claims, name) for name in _CLAIM_NAMES}


def unfinished(proto: StreamProtocol) -> str | None:
    """Why C{proto} cannot be carried (a few words), or None."""
    if _transport.direct_socket(proto.transport) is None:
        return "not plain TCP"
    why = _autobahn.unfinished(proto)
    if why is not None:
        return why
    if proto.busy:
        return "a message being handled"
    return None


def freeze(proto: StreamProtocol) -> None:
    """Stop reading C{proto} and stop its timers: nothing of it changes until the exec."""
    proto.transport.pauseProducing()
    proto.stop_timers()


def capture(proto: StreamProtocol) -> Carried:
    """C{proto}, frozen, as the next program gets it; its socket made inheritable."""
    sock = proto.transport.socket
    fd = sock.fileno()
    os.set_inheritable(fd, True)
    subscriptions = proto.subscriptions or {}
    books = any(stream.event == "ob-inc" for stream in subscriptions.values())
    return Carried(
        fd=fd,
        family=sock.family,
        conn_id=proto.conn_id,
        dialect=proto.dialect.name,
        claims=proto.claims,
        streams=tuple(subscriptions),
        pending=_transport.pending_output(proto.transport),
        primed=tuple(proto.factory.hub.primed_markets(proto)) if books else (),
    )


class _Adopting:
    """The factory the reactor sees: the real one's protocol, told it is carried before it connects."""

    def __init__(self, factory: StreamFactory, carried: Carried) -> None:
        self.factory = factory
        self.carried = carried
        self.proto: StreamProtocol | None = None

    def buildProtocol(self, addr: Any) -> StreamProtocol:
        proto = self.factory.buildProtocol(addr)
        proto.conn_id = self.carried.conn_id
        proto.carried = True
        self.proto = proto
        return proto


def adopt(factory: StreamFactory, reactor: Any, carried: Carried) -> StreamProtocol:
    """
    Serve C{carried}'s socket again: open, its member and subscriptions
    restored. Its descriptor is closed here (the reactor keeps a duplicate).

    @raise OSError: the descriptor is not a connected socket any more.
    """
    building = _Adopting(factory, carried)
    try:
        reactor.adoptStreamConnection(carried.fd, carried.family, building)
    finally:
        os.close(carried.fd)
    proto = building.proto
    if proto is None:
        raise OSError(f"descriptor {carried.fd}: the reactor built no protocol")
    _autobahn.open_carried(proto)
    if carried.pending:
        proto.transport.write(carried.pending)
    proto.carried_on(carried.dialect, carried.claims, carried.streams, carried.primed)
    return proto
