"""
A minimal in-memory WebSocket client for unit tests: it drives a server
protocol over a L{StringTransport}, masks what it sends and parses what the
server wrote. Not Autobahn, so the tests do not check Autobahn against itself.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure


@dataclass
class Frame:
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
        if self.opcode != 8 or len(self.payload) < 2:
            return None
        return int(struct.unpack("!H", self.payload[:2])[0])


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A final, masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def parse_frames(data: bytes) -> tuple[list[Frame], bytes]:
    """Server frames in C{data} (unmasked), and any incomplete rest."""
    frames = []
    while len(data) >= 2:
        opcode = data[0] & 0x0F
        n = data[1] & 0x7F
        i = 2
        if n == 126:
            if len(data) < 4:
                break
            n = struct.unpack("!H", data[2:4])[0]
            i = 4
        elif n == 127:
            if len(data) < 10:
                break
            n = struct.unpack("!Q", data[2:10])[0]
            i = 10
        if len(data) < i + n:
            break
        frames.append(Frame(opcode, data[i : i + n]))
        data = data[i + n :]
    return frames, data


class Client:
    """One fake client connected to a server protocol."""

    def __init__(self, protocol: Any, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport
        self._read = 0
        self._rest = b""
        self.frames: list[Frame] = []

    @classmethod
    def connect(
        cls,
        factory: Any,
        path: str = "/",
        origin: str | None = None,
        host: str = "127.0.0.1",
        expect_open: bool = True,
    ) -> Client:
        address = IPv4Address("TCP", host, 50000)
        protocol = factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        headers = [
            f"GET {path} HTTP/1.1",
            "Host: localhost:8080",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ]
        if origin is not None:
            headers.append(f"Origin: {origin}")
        protocol.dataReceived(("\r\n".join(headers) + "\r\n\r\n").encode("ascii"))
        client = cls(protocol, transport)
        if expect_open:
            assert transport.value().startswith(b"HTTP/1.1 101"), transport.value()[:200]
        return client

    def handshake_status(self) -> int:
        return int(self.transport.value().split(b" ", 2)[1])

    def received(self) -> list[Frame]:
        """Frames the server wrote since the last call."""
        data = self.transport.value()
        if self._read == 0:
            end = data.find(b"\r\n\r\n")
            self._read = end + 4 if end >= 0 else 0
        fresh = self._rest + data[self._read :]
        self._read = len(data)
        frames, self._rest = parse_frames(fresh)
        self.frames.extend(frames)
        return frames

    def messages(self) -> list[Any]:
        """The JSON (or plain text) of the text frames received since the last call."""
        out = []
        for frame in self.received():
            if frame.opcode == 1:
                try:
                    out.append(frame.json)
                except ValueError:
                    out.append(frame.text)
        return out

    def send(self, payload: bytes | str, opcode: int | None = None) -> None:
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        self.protocol.dataReceived(client_frame(data, opcode if opcode is not None else 1))

    def send_json(self, value: Any) -> None:
        self.send(json.dumps(value))

    def close_code(self) -> int | None:
        """The close code the server sent, if it sent one."""
        self.received()
        for frame in self.frames:
            if frame.opcode == 8:
                return frame.close_code
        return None

    def answer_close(self) -> None:
        """Complete the closing handshake from the client side and drop TCP."""
        self.protocol.dataReceived(client_frame(struct.pack("!H", 1000), 8))
        self.lose()

    def lose(self) -> None:
        if not self.transport.disconnected:
            self.transport.disconnected = True
        self.protocol.connectionLost(Failure(ConnectionDone()))
