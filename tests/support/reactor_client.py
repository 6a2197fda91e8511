"""
The WebSocket client of the integration suites on real sockets: a Twisted
protocol on the reactor (not Autobahn: the daemon is Autobahn), speaking
through the codec of L{peatio_ws.testing.frames}.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from peatio_ws.testing.frames import (
    BINARY,
    CLOSE,
    NO_STATUS,
    PING,
    PONG,
    TEXT,
    client_frame,
    close_code,
    close_payload,
    frame_at,
    loads,
    response_status,
    upgrade_request,
)
from tests.support.waiting import within

__all__ = ["WsClient", "ws_connect"]


class WsClient(Protocol):
    """
    A minimal RFC 6455 client: handshake, masked frames out, unfragmented
    server frames in (what the daemon sends), pings answered unless told
    not to, the closing handshake answered.
    """

    #: A TCP transport (abortConnection too).
    transport: Any

    def __init__(self, path: str = "/", headers: Iterable[tuple[str, str]] = (), answer_pings: bool = True) -> None:
        self.path = path
        self.headers = list(headers)
        self.answer_pings = answer_pings
        #: The HTTP status of the handshake (101 when accepted).
        self.status: int | None = None
        #: Text messages (str) and binary messages (bytes), in arrival order.
        self.messages: list[str | bytes] = []
        self.close_code: int | None = None
        self.pings = 0
        self.lost = False
        #: Called with every text message as it arrives.
        self.on_text: Callable[[str], None] | None = None
        self._buf = bytearray()
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []
        self._next = 0

    # -- protocol ------------------------------------------------------------

    def connectionMade(self) -> None:
        self.transport.write(upgrade_request(self.path, "127.0.0.1", self.headers))

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        if self.status is None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buf[:end])
            del self._buf[: end + 4]
            self.status = response_status(head) or 0
            if self.status != 101:
                self.transport.loseConnection()
        if self.status == 101:
            self._frames()
        self._notify()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.lost = True
        self._notify()

    def _frames(self) -> None:
        buf = self._buf
        off = 0
        while (found := frame_at(buf, off)) is not None:
            first, start, end = found
            off = end
            self._frame(first & 0x0F, bytes(buf[start:end]))
        del buf[:off]

    def _frame(self, opcode: int, payload: bytes) -> None:
        if opcode == TEXT:
            text = payload.decode("utf-8")
            self.messages.append(text)
            if self.on_text is not None:
                self.on_text(text)
        elif opcode == BINARY:
            self.messages.append(payload)
        elif opcode == PING:
            self.pings += 1
            if self.answer_pings and not self.lost:
                self.transport.write(client_frame(payload, PONG))
        elif opcode == CLOSE:
            code = close_code(payload)
            self.close_code = NO_STATUS if code is None else code
            if not self.lost:
                self.transport.write(client_frame(payload[:2], CLOSE))
                self.transport.loseConnection()

    def _notify(self) -> None:
        for waiter in list(self._waiters):
            condition, d = waiter
            if d.called:
                self._waiters.remove(waiter)
            elif condition() or self.lost:
                self._waiters.remove(waiter)
                d.callback(None)

    # -- use -----------------------------------------------------------------

    async def wait(self, condition: Callable[[], bool], seconds: float, what: str) -> None:
        """Until C{condition} holds (checked on every read); fails if it does not, or the connection goes."""
        if not condition():
            d: Deferred[None] = Deferred()
            self._waiters.append((condition, d))
            await within(d, seconds, what)
        if not condition():
            raise AssertionError(f"connection lost (close code {self.close_code}) while waiting for {what}")

    async def next_json(self, seconds: float = 10.0) -> Any:
        """The next message not read yet through this method, as JSON (or as text)."""
        index = self._next
        await self.wait(lambda: len(self.messages) > index, seconds, f"message #{index + 1}")
        self._next = index + 1
        return loads(self.messages[index])

    def json_messages(self) -> list[Any]:
        return [loads(m) for m in self.messages]

    def send_text(self, text: str | bytes) -> None:
        data = text.encode("utf-8") if isinstance(text, str) else text
        self.transport.write(client_frame(data, TEXT))

    def send_raw(self, data: bytes) -> None:
        self.transport.write(data)

    async def login(self, token: str, seconds: float = 10.0) -> Any:
        """Read the challenge, send the token, return the reply."""
        challenge = await self.next_json(seconds)
        assert isinstance(challenge, dict) and "challenge" in challenge, challenge
        self.send_text(json.dumps({"jwt": "Bearer " + token}))
        return await self.next_json(seconds)

    async def close(self, seconds: float = 10.0, code: int = 1000) -> None:
        """The closing handshake from our side; waits until the connection is gone."""
        if not self.lost:
            self.transport.write(client_frame(close_payload(code), CLOSE))
            d: Deferred[None] = Deferred()
            self._waiters.append((lambda: self.lost, d))
            try:
                await within(d, seconds, "the server to complete the close")
            finally:
                self.abort()

    def abort(self) -> None:
        if not self.lost and self.transport is not None:
            self.transport.abortConnection()

    async def gone(self, seconds: float = 15.0) -> None:
        """Until the server closed the connection."""
        if not self.lost:
            d: Deferred[None] = Deferred()
            self._waiters.append((lambda: self.lost, d))
            await within(d, seconds, "the connection to close")


async def ws_connect(port: int, seconds: float = 10.0, **kwargs: Any) -> WsClient:
    """Connect a L{WsClient} to 127.0.0.1:C{port} and wait for the handshake answer."""
    client = WsClient(**kwargs)
    await within(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10), client), seconds, "TCP")
    await client.wait(lambda: client.status is not None, seconds, "the handshake answer")
    return client
