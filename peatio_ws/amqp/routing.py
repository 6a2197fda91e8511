# -*- test-case-name: tests.unit.test_amqp_routing -*-
"""
Peatio's private-event contract on RabbitMQ (SPEC §4), as pure functions:
the routing key C{private.<uid>.<event>}, the binding C{private.<uid>.*},
the label an event is counted under, and what may be forwarded (one JSON
value in UTF-8). Which uids can be bound is L{peatio_ws.uids}' rule,
re-exported here.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from peatio_ws.uids import MAX_UID_BYTES as MAX_UID_BYTES
from peatio_ws.uids import valid_uid as valid_uid

__all__ = [
    "ALL_PRIVATE_BINDING",
    "MAX_UID_BYTES",
    "binding_key",
    "event_label",
    "parse_routing_key",
    "valid_json",
    "valid_uid",
]

_EVENT_LABEL = re.compile(r"[a-z_]{1,32}\Z")


#: Every member's private events (RABBITMQ_PRIVATE_BINDING=all): C{private.<uid>.<event>}, any uid, any event.
ALL_PRIVATE_BINDING = b"private.*.*"


def binding_key(uid: str) -> bytes:
    """The binding of member C{uid}: C{private.<uid>.*}, as bytes."""
    return b"private." + uid.encode("utf-8") + b".*"


def parse_routing_key(key: bytes) -> tuple[str, str] | None:
    """
    C{(uid, event)} from C{private.<uid>.<event>}; None for any other shape
    (public events, too few or too many parts, empty parts, not UTF-8).
    """
    parts = key.split(b".")
    if len(parts) != 3 or parts[0] != b"private" or not parts[1] or not parts[2]:
        return None
    try:
        return parts[1].decode("utf-8"), parts[2].decode("utf-8")
    except UnicodeDecodeError:
        return None


def event_label(event: str) -> str:
    """The metrics label for C{event}: itself if it looks like an event name, else "other"."""
    return event if _EVENT_LABEL.match(event) else "other"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# NaN/Infinity are not JSON: a browser's JSON.parse would reject the whole
# message. Strict UTF-8 first: the payload is forwarded inside a text frame.
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def valid_json(body: bytes) -> bool:
    """Whether C{body} is one JSON value in UTF-8 (what may go into a text frame)."""
    # orjson first: several times faster than the standard library on the
    # hot path (docs/benchmarks.md). What it accepts the standard decoder (as
    # configured here) accepts too, except values nested 1,000 to 1,024 deep
    # (valid JSON, which the standard decoder gives up on). orjson rejects two
    # things it accepts (an escaped lone surrogate, a number beyond a double):
    # those, and everything invalid, get a second look.
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    else:
        return True
    try:
        _JSON.decode(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    return True
