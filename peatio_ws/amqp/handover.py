# -*- test-case-name: tests.unit.test_amqp_handover -*-
"""
A process queue left to the next process at a clean stop (RABBITMQ_HANDOVER_FILE).

Without it a stopping process deletes its queue and the next one declares a
new queue and binds each member again as they log back in. With 15,000
members RabbitMQ needs seconds to delete those bindings and seconds more to
add them back, in the middle of the reconnect storm. With it, the stopping
process writes here the queue's name, the members bound to it and the
settings that shaped it, and keeps the queue (closing its connection cancels
its consumer); the next process with the same file takes them (L{take}
removes the file, so only one process can), consumes the same queue, and
binds only members who were not bound; those who do not come back are
unbound after L{peatio_ws.amqp.bindings.HANDED_UNBIND_DELAY}.

The file is a small JSON object, written whole or not at all and taken by
one reader (L{peatio_ws.statefile}). It is not synced to disk: after a
power cut the next process may find it empty or missing, and then starts
with a new queue, as it would without the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from peatio_ws import statefile

__all__ = ["FORMAT", "MAX_BYTES", "Handover", "HandoverError", "Shape", "leave", "take"]

#: The file's C{format}: a later layout gets a new number, and an unknown one is not taken.
FORMAT = 1
#: Bytes read at most: a million members' uids fit in a tenth of it; a larger file is not ours.
MAX_BYTES = 256 * 1024 * 1024


class HandoverError(Exception):
    """The handover file could not be read, parsed or written: C{str()} says why, in one line."""


@dataclass(frozen=True)
class Shape:
    """What the queue was made with: a queue is taken over only when the next process would make the same."""

    exchange: str
    vhost: str
    queue_type: str
    expires_ms: int
    private_binding: str
    public: bool

    def differences(self, other: Shape) -> list[str]:
        """The names of the fields that differ from C{other}'s (for the log line that says why)."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


@dataclass(frozen=True)
class Handover:
    """A queue left by a stopping process: its name, shape and bindings, and when it was left."""

    queue: str
    shape: Shape
    #: Members whose binding the queue has, or may have (a bind in flight at the stop).
    members: frozenset[str]
    #: Whether the covering binding (every private event) may be on the queue.
    cover: bool
    #: When it was left (seconds since the epoch).
    left_at: float

    def to_json(self) -> bytes:
        shape = self.shape
        return json.dumps(
            {
                "format": FORMAT,
                "queue": self.queue,
                "exchange": shape.exchange,
                "vhost": shape.vhost,
                "queue_type": shape.queue_type,
                "expires_ms": shape.expires_ms,
                "private_binding": shape.private_binding,
                "public": shape.public,
                "cover": self.cover,
                "left_at": self.left_at,
                "members": sorted(self.members),
            },
            separators=(",", ":"),
        ).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Handover:
        """@raise HandoverError: not JSON, another format, or a field missing or of the wrong type."""
        try:
            raw = statefile.json_object(data, FORMAT)
        except statefile.StateFileError as e:
            raise HandoverError(str(e)) from None
        members = _field(raw, "members", list)
        if not all(isinstance(m, str) for m in members):
            raise HandoverError("members: not a list of strings")
        queue = _field(raw, "queue", str)
        if not queue.startswith("peatio-ws."):
            raise HandoverError(f"queue {queue!r} is not one of ours (peatio-ws.*)")
        return cls(
            queue=queue,
            shape=Shape(
                exchange=_field(raw, "exchange", str),
                vhost=_field(raw, "vhost", str),
                queue_type=_field(raw, "queue_type", str),
                expires_ms=_field(raw, "expires_ms", int),
                private_binding=_field(raw, "private_binding", str),
                public=_field(raw, "public", bool),
            ),
            members=frozenset(members),
            cover=_field(raw, "cover", bool),
            left_at=float(_field(raw, "left_at", (int, float))),
        )


def _field(raw: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = raw.get(name)
    # bool is an int: a count or a time must not be true.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise HandoverError(f"{name}: missing or not {getattr(kind, '__name__', 'a number')}")
    return value


def take(path: str) -> Handover | None:
    """
    The queue left at C{path}, removing the file: None when there is none
    (or another process took it first).

    @raise HandoverError: the file is there but unreadable or malformed (it
        is removed all the same when it can be, so it is not met again).
    """
    try:
        data = statefile.take(path, MAX_BYTES)
    except statefile.StateFileError as e:
        raise HandoverError(str(e)) from None
    return None if data is None else Handover.from_json(data)


def leave(path: str, queue: str, shape: Shape, members: Iterable[str], cover: bool, now: float) -> None:
    """
    Write the handover to C{path}, whole or not at all, readable by this user
    only (L{peatio_ws.statefile.leave}).

    @raise HandoverError: it could not be written.
    """
    handover = Handover(queue=queue, shape=shape, members=frozenset(members), cover=cover, left_at=now)
    try:
        statefile.leave(path, handover.to_json())
    except statefile.StateFileError as e:
        raise HandoverError(str(e)) from None
