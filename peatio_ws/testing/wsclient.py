"""
A minimal in-memory WebSocket client for unit tests: it drives a server
protocol over a L{StringTransport}, masks what it sends and parses what the
server wrote (with L{peatio_ws.testing.frames}).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from peatio_ws.testing.frames import (
    CLOSE,
    SAMPLE_KEY,
    TEXT,
    Frame,
    client_frame,
    close_payload,
    loads,
    parse_frames,
    response_status,
    upgrade_request,
)

__all__ = ["Client"]


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
        headers: list[tuple[str, str]] | None = None,
    ) -> Client:
        """
        Build a protocol from C{factory} for a peer at C{host}, and send it
        the upgrade request (with C{headers} besides Host and the WebSocket ones).
        """
        address = IPv4Address("TCP", host, 50000)
        protocol = factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        extra = [("Origin", origin)] if origin is not None else []
        extra.extend(headers or ())
        protocol.dataReceived(upgrade_request(path, "localhost:8080", extra, key=SAMPLE_KEY))
        client = cls(protocol, transport)
        # Raised, not asserted: it must hold under python -O too (tests rely on it).
        if expect_open and not transport.value().startswith(b"HTTP/1.1 101"):
            raise AssertionError(f"the upgrade was not accepted: {transport.value()[:200]!r}")
        return client

    def handshake_status(self) -> int:
        status = response_status(self.transport.value())
        if status is None:
            raise AssertionError(f"no HTTP status line: {self.transport.value()[:200]!r}")
        return status

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
        return [loads(frame.text) for frame in self.received() if frame.opcode == TEXT]

    def send(self, payload: bytes | str, opcode: int | None = None) -> None:
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        self.protocol.dataReceived(client_frame(data, opcode if opcode is not None else TEXT))

    def send_json(self, value: Any) -> None:
        self.send(json.dumps(value))

    def close_code(self) -> int | None:
        """The close code the server sent, if it sent one."""
        self.received()
        for frame in self.frames:
            if frame.opcode == CLOSE:
                return frame.close_code
        return None

    def answer_close(self) -> None:
        """Complete the closing handshake from the client side and drop TCP."""
        self.protocol.dataReceived(client_frame(close_payload(1000), CLOSE))
        self.lose()

    def lose(self) -> None:
        if not self.transport.disconnected:
            self.transport.disconnected = True
        self.protocol.connectionLost(Failure(ConnectionDone()))
