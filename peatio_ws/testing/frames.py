"""
The one WebSocket codec of the test clients (RFC 6455, client side): the
upgrade request, masked client frames, and the server's frames read back.
Not Autobahn, so tests do not check Autobahn against itself.

Every client builds on it: the in-memory L{peatio_ws.testing.Client}, the
reactor and raw-socket clients of the integration suites, and the
benchmark's load client (which masks with L{ZERO_MASK}: RFC 6455 allows any
key, and the zero key costs no XOR).
"""

from __future__ import annotations

import base64
import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BINARY",
    "CLOSE",
    "CONTINUATION",
    "NO_STATUS",
    "PING",
    "PONG",
    "SAMPLE_KEY",
    "TEXT",
    "ZERO_MASK",
    "Frame",
    "client_frame",
    "close_code",
    "close_payload",
    "frame_at",
    "loads",
    "parse_frames",
    "response_status",
    "server_frame",
    "upgrade_request",
]

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0, 1, 2, 8, 9, 10
#: The close code a close frame without a payload stands for.
NO_STATUS = 1005
#: RFC 6455's sample Sec-WebSocket-Key, for requests that need a fixed one.
SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
#: A masking key that leaves the payload as it is.
ZERO_MASK = b"\x00\x00\x00\x00"


def upgrade_request(
    path: str = "/", host: str = "127.0.0.1", headers: Iterable[tuple[str, str]] = (), key: str | None = None
) -> bytes:
    """A WebSocket upgrade request (a fresh random key unless C{key} is given), then C{headers}."""
    if key is None:
        key = base64.b64encode(os.urandom(16)).decode("ascii")
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def response_status(head: bytes) -> int | None:
    """The status code of an HTTP response head (or its first line); None if it is no HTTP status line."""
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def _length(first: int, n: int, mask_bit: int) -> bytes:
    if n < 126:
        return struct.pack("!BB", first, mask_bit | n)
    if n < 65536:
        return struct.pack("!BBH", first, mask_bit | 126, n)
    return struct.pack("!BBQ", first, mask_bit | 127, n)


def client_frame(payload: bytes, opcode: int = TEXT, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """A client frame: masked with C{mask} (4 bytes; a fresh random key by default), final unless C{fin=False}."""
    key = os.urandom(4) if mask is None else mask
    n = len(payload)
    if key == ZERO_MASK or not n:
        body = payload
    else:
        stream = (key * (n // 4 + 1))[:n]
        body = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return _length((0x80 if fin else 0) | opcode, n, 0x80) + key + body


def server_frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """A final, unmasked frame, as the server sends them."""
    return _length(0x80 | opcode, len(payload), 0) + payload


def close_payload(code: int, reason: bytes = b"") -> bytes:
    """The payload of a close frame."""
    return struct.pack("!H", code) + reason


def close_code(payload: bytes) -> int | None:
    """The code in a close frame's payload; None when it carries none (L{NO_STATUS})."""
    if len(payload) < 2:
        return None
    return int(struct.unpack("!H", payload[:2])[0])


def frame_at(data: bytes | bytearray, pos: int = 0) -> tuple[int, int, int] | None:
    """
    Where the (unmasked) frame starting at C{data[pos]} lies: its first byte
    (FIN, RSV and opcode), where its payload starts and where it ends; None
    while the frame is incomplete.
    """
    avail = len(data) - pos
    if avail < 2:
        return None
    n = data[pos + 1] & 0x7F
    start = pos + 2
    if n == 126:
        if avail < 4:
            return None
        n = int.from_bytes(data[pos + 2 : pos + 4], "big")
        start = pos + 4
    elif n == 127:
        if avail < 10:
            return None
        n = int.from_bytes(data[pos + 2 : pos + 10], "big")
        start = pos + 10
    end = start + n
    if end > len(data):
        return None
    return data[pos], start, end


@dataclass
class Frame:
    """One frame the server sent."""

    opcode: int
    payload: bytes

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")

    @property
    def json(self) -> Any:
        return json.loads(self.payload)

    @property
    def close_code(self) -> int | None:
        if self.opcode != CLOSE:
            return None
        return close_code(self.payload)

    @property
    def close_reason(self) -> str | None:
        """The reason of a close frame (after its two code bytes), else None."""
        if self.opcode != CLOSE:
            return None
        return self.payload[2:].decode("utf-8")


def parse_frames(data: bytes | bytearray) -> tuple[list[Frame], bytes]:
    """The server frames in C{data}, and the incomplete rest."""
    frames = []
    pos = 0
    while (found := frame_at(data, pos)) is not None:
        first, start, end = found
        frames.append(Frame(first & 0x0F, bytes(data[start:end])))
        pos = end
    return frames, bytes(data[pos:])


def loads(message: str | bytes) -> Any:
    """A message as JSON, or as it is when it is not JSON."""
    try:
        return json.loads(message)
    except ValueError:
        return message
