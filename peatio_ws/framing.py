# -*- test-case-name: tests.unit.test_registry -*-
"""
WebSocket frames built once and written to many connections.

A server-to-client frame is never masked (RFC 6455 §5.1), so the same bytes
serve every connection of a member: the event is framed once however many
connections receive it.
"""

from __future__ import annotations

import json
import struct

__all__ = ["event_message", "text_frame"]

_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying C{payload} (UTF-8 JSON)."""
    n = len(payload)
    if n < 126:
        return _SHORT.pack(0x81, n) + payload
    if n < 65536:
        return _MEDIUM.pack(0x81, 126, n) + payload
    return _LONG.pack(0x81, 127, n) + payload


_keys: dict[str, bytes] = {}


def event_message(event: str, payload: bytes) -> bytes:
    """
    C{{"<event>": payload}}, with the payload forwarded as published (it is
    already JSON; it is not decoded and re-encoded).
    """
    key = _keys.get(event)
    if key is None:
        key = b"{" + json.dumps(event).encode("utf-8") + b":"
        if len(_keys) < 1024:
            _keys[event] = key
    return key + payload + b"}"
