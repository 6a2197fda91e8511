"""
Raw blocking sockets: the clients that misbehave on purpose (never read,
never answer, send what no WebSocket client sends), speaking just enough
WebSocket through L{peatio_ws.testing.frames} to get in.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from typing import Any

from peatio_ws.testing.frames import (
    CLOSE,
    NO_STATUS,
    TEXT,
    client_frame,
    close_code,
    close_payload,
    frame_at,
    response_status,
)
from peatio_ws.testing.frames import upgrade_request as _upgrade_request
from tests.support.waiting import until

__all__ = ["RawClient", "closed_by_peer", "raw_status"]


class RawClient:
    """
    A blocking socket speaking just enough WebSocket to get in, then doing
    what a broken client does: nothing. C{rcvbuf} is set before connecting,
    so the kernel advertises a small window from the start.
    """

    def __init__(
        self,
        port: int,
        rcvbuf: int | None = None,
        timeout: float = 10.0,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """With C{tls}, the connection is wrapped (the chain and C{host} verified as C{tls} says)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
            self.sock = sock if tls is None else tls.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        self.host = host
        self._buf = b""

    def handshake(self) -> int:
        """Send the upgrade request; the status of the answer."""
        self.sock.sendall(_upgrade_request("/", self.host))
        while b"\r\n\r\n" not in self._buf:
            self._recv()
        head, _, self._buf = self._buf.partition(b"\r\n\r\n")
        status = response_status(head)
        assert status is not None, head[:200]
        return status

    def _recv(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self._buf += chunk

    def _split(self) -> tuple[int, bytes] | None:
        found = frame_at(self._buf)
        if found is None:
            return None
        first, start, end = found
        payload, self._buf = self._buf[start:end], self._buf[end:]
        return first & 0x0F, payload

    def read_frame(self) -> tuple[int, bytes]:
        """One server frame (opcode, payload)."""
        while (frame := self._split()) is None:
            self._recv()
        return frame

    def read_json(self) -> Any:
        opcode, payload = self.read_frame()
        assert opcode == TEXT, (opcode, payload[:100])
        return json.loads(payload)

    def send_text(self, text: str) -> None:
        self.sock.sendall(client_frame(text.encode("utf-8"), TEXT))

    def send_close(self, code: int = 1000) -> None:
        """Begin the closing handshake, as a well-behaved client does before it goes."""
        self.sock.sendall(client_frame(close_payload(code), CLOSE))

    def login(self, token: str) -> Any:
        assert "challenge" in self.read_json()
        self.send_text(json.dumps({"jwt": "Bearer " + token}))
        return self.read_json()

    def drain(self, limit: int = 256 * 1024 * 1024, timeout: float = 10.0) -> tuple[int, int | None]:
        """
        Read everything the server sends, until its close frame or EOF:
        (bytes of text frames read, close code or None).
        """
        self.sock.settimeout(timeout)
        text_bytes = 0
        total = 0
        try:
            while total < limit:
                frame = self._split()
                if frame is None:
                    chunk = self.sock.recv(1 << 20)
                    if not chunk:
                        return text_bytes, None
                    total += len(chunk)
                    self._buf += chunk
                    continue
                opcode, payload = frame
                if opcode == TEXT:
                    text_bytes += len(payload)
                elif opcode == CLOSE:
                    code = close_code(payload)
                    return text_bytes, NO_STATUS if code is None else code
        except (ConnectionError, TimeoutError, OSError):
            return text_bytes, None
        return text_bytes, None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def raw_status(raw: RawClient) -> int | None:
    """The HTTP status the server answered on C{raw}, or None if it closed without one."""
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = raw.sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return response_status(data)


async def closed_by_peer(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes C{sock} (EOF or reset) within C{seconds}; polls without blocking."""
    # Not merely MSG_DONTWAIT: a socket with a timeout waits for readability first.
    sock.setblocking(False)

    def closed() -> bool:
        try:
            return sock.recv(1) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    try:
        await until(closed, seconds, "the server to close the socket", interval=0.05)
    except AssertionError:
        return False
    return True
