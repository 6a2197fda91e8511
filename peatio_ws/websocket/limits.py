# -*- test-case-name: tests.unit.test_protocol -*-
"""
What one client may send: the bounds on the upgrade request, on frames per
message, on client JSON, and the inbound rate budget (a token bucket).

Pure values and functions; the connection applies them (L{connection}).
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = [
    "FRAME_OVERHEAD",
    "MAX_EMPTY_FRAGMENTS",
    "MAX_FRAMES_PER_MESSAGE",
    "MAX_JSON_DEPTH",
    "MAX_REQUEST_HEAD",
    "byte_burst",
    "parse_client_json",
    "refill",
]

#: Largest upgrade request head (request line and headers) a client may send.
#: Browsers send well under 2 KiB; nginx's default limit is 8 KiB per line.
#: Larger: HTTP 431 and closed.
MAX_REQUEST_HEAD = 16384
#: Frames one client message may be split into, and how many of them may be
#: empty and not final. Every frame costs a buffer entry and a Python call
#: whatever its length, so the byte limit alone does not bound a message made
#: of many small or empty frames. Browsers send each message in one frame.
MAX_FRAMES_PER_MESSAGE = 64
MAX_EMPTY_FRAGMENTS = 4
#: The largest client frame header (2 + 8 length + 4 mask bytes).
FRAME_OVERHEAD = 14
#: Deepest JSON nesting a client message may have: orjson's own fixed bound.
#: Client messages are parsed in C without recursion, so no Python-level depth
#: scan is needed and whether a deep message parses never depends on the stack.
MAX_JSON_DEPTH = 1024


def parse_client_json(payload: bytes) -> Any:
    """
    A client message as strict JSON (RFC 8259: no NaN or Infinity, no number
    that overflows a double, no lone surrogate, at most L{MAX_JSON_DEPTH}
    levels), or raise C{ValueError}.
    """
    return orjson.loads(payload)


def byte_burst(bytes_per_second: int, max_message_size: int) -> float:
    """
    The inbound byte budget's burst: two seconds' worth, and at least an
    upgrade request head and two of the largest messages with their headers.
    """
    return float(max(2 * bytes_per_second, MAX_REQUEST_HEAD + 2 * (max_message_size + FRAME_OVERHEAD)))


def refill(tokens: float, since: float, now: float, rate: float, burst: float) -> float:
    """
    A token bucket's level at C{now}: C{tokens} at C{since}, filled at
    C{rate} per second up to C{burst}. A bucket never used starts full
    (C{tokens} is infinite).
    """
    return min(burst, tokens + (now - since) * rate)
