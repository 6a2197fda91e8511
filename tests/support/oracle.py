"""
The reference model of the daemon's answers (SPEC §3), written apart from
the server's code: what it accepts as a client message (L{strict_json}),
the reply each message gets (L{expected_reply}), and the replies as a
client parses them.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

from peatio_ws.websocket import Reply

__all__ = [
    "AUTHENTICATED",
    "AUTH_FAILED",
    "TOO_MANY",
    "expected_reply",
    "forwardable",
    "private_key_names",
    "strict_json",
]

#: The replies as JSON clients parse them.
AUTHENTICATED = {"success": {"message": "Authenticated."}}
AUTH_FAILED = {"error": {"message": "Authentication failed."}}
TOO_MANY = {"error": {"message": "Too many authentication attempts."}}

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def _nesting(payload: bytes) -> int:
    """How deep arrays and objects nest in C{payload}, strings taken out first (a reference, not the server's code)."""
    depth = deepest = 0
    for char in _STRING.sub(b'""', payload):
        if char in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in b"]}":
            depth -= 1
    return deepest


def _number(text: str) -> float | int:
    """A JSON number as a strict parser must take it: integers past 64 bits become doubles; no infinity."""
    value: float | int
    if "." in text or "e" in text or "E" in text or not -(2**63) <= int(text) < 2**64:
        value = float(text)
    else:
        value = int(text)
    if isinstance(value, float) and math.isinf(value):
        raise ValueError("number overflows a double")
    return value


def _no_lone_surrogates(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if any(0xD800 <= ord(c) <= 0xDFFF for c in item):
                raise ValueError("lone surrogate")
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def strict_json(payload: bytes) -> Any:
    """
    The reference model of what the server accepts as a client message:
    RFC 8259 JSON with no NaN/Infinity, no number overflowing a double, no
    lone surrogate, at most 1024 levels deep, no byte order mark.
    """
    if _nesting(payload) > 1024 or payload.startswith(b"\xef\xbb\xbf"):
        raise ValueError("too deep, or a byte order mark")

    def constant(name: str) -> Any:
        raise ValueError(name)

    value = json.loads(
        payload.decode("utf-8"),
        parse_constant=constant,
        parse_int=_number,
        parse_float=_number,
    )
    _no_lone_surrogates(value)
    return value


def expected_reply(payload: bytes, binary: bool) -> bytes:
    """SPEC §3.2's reply for one client message, when it carries no valid token."""
    if binary:
        return Reply.HANDLING_ERROR
    if payload == b"ping":
        return b"pong"
    try:
        message = strict_json(payload)
    except (ValueError, RecursionError):
        return Reply.HANDLING_ERROR
    if not isinstance(message, dict) or "jwt" not in message:
        return Reply.HANDLING_ERROR
    value = message["jwt"]
    if not isinstance(value, str) or value.partition(" ")[0] != "Bearer":
        return Reply.TOKEN_TYPE
    return Reply.AUTH_FAILED


_PRIVATE_KEY = re.compile(rb"private\.([^.]+)\.([^.]+)", re.DOTALL)


def private_key_names(key: bytes) -> tuple[str, str] | None:
    """
    SPEC §4's routing key, read by a regular expression rather than the
    server's split: C{(uid, event)} of C{private.<uid>.<event>} (two
    non-empty parts without a dot, in UTF-8), else None.
    """
    match = _PRIVATE_KEY.fullmatch(key)
    if match is None:
        return None
    try:
        return match.group(1).decode("utf-8"), match.group(2).decode("utf-8")
    except UnicodeDecodeError:
        return None


def forwardable(body: bytes) -> bool:
    """
    SPEC §4's body rule, as a reference: one JSON value in UTF-8 (NaN and
    Infinity are not JSON), at most 1024 levels deep, no byte order mark.
    The standard decoder, given the stack that depth needs.
    """
    if _nesting(body) > 1024:
        return False
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False

    def constant(name: str) -> Any:
        raise ValueError(name)

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 5000))
    try:
        json.loads(text, parse_constant=constant)
    except (ValueError, RecursionError):
        return False
    finally:
        sys.setrecursionlimit(limit)
    return True
