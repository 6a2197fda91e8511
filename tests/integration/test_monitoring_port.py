"""
Issue 12, item 3, on a real socket: the monitoring port answers a POST
announcing a 10 GiB body with 405 and closes, having read at most one
socket read of it, none of it into a request body (no temp file).
The measured figures are printed (and appended to chaos-figures.txt in the
trial directory).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from peatio_ws.http import MonitoringChannel, _BodilessRequest, monitoring_site
from peatio_ws.metrics import Metrics
from tests.support.figures import record
from tests.support.waiting import within

#: The global reactor, untyped (its zope interfaces are opaque to mypy here).
reactor: Any = _reactor


class _CountingChannel(MonitoringChannel):
    """Counts every byte the server side read from its socket (into the list the test sets)."""

    read: ClassVar[list[int]] = []

    def dataReceived(self, data: bytes) -> None:
        self.read.append(len(data))
        super().dataReceived(data)


class _RecordingRequest(_BodilessRequest):
    """Remembers every request that was given a place for a body (in the list the test sets)."""

    bodies: ClassVar[list[int | None]] = []

    def gotLength(self, length: int | None) -> None:
        self.bodies.append(length)
        super().gotLength(length)


class _Streamer(Protocol):
    """Sends a head, then body bytes 64 KiB at a time while the server lets it; keeps what comes back."""

    def __init__(self, head: bytes, budget: int) -> None:
        self.head = head
        self.budget = budget
        self.sent = 0
        self.received = b""
        self.closed: Deferred[None] = Deferred()
        self._paused = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self.transport.write(self.head)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        chunk = b"A" * 65536
        while not self._paused and self.sent < self.budget and self.transport is not None:
            if getattr(self.transport, "disconnecting", False):
                return
            self.transport.write(chunk)
            self.sent += len(chunk)

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        self._paused = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if not self.closed.called:
            self.closed.callback(None)


class MonitoringPortTests(TestCase):
    timeout = 60

    async def test_huge_post_refused_unread(self) -> None:
        """
        POST /health announcing 10737418240 bytes, followed by up to 4 MiB
        of body: 405 arrives, the server closes, and it read at most a
        socket read's worth, none of it into a request body.
        """
        read: list[int] = []
        bodies: list[int | None] = []
        self.patch(_CountingChannel, "read", read)
        self.patch(_RecordingRequest, "bodies", bodies)
        site = monitoring_site(Metrics(), {"redis": lambda: True}, reactor)
        site.protocol = _CountingChannel
        site.requestFactory = _RecordingRequest
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        budget = 4 * 2**20
        head = b"POST /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10737418240\r\n\r\n"
        client = _Streamer(head, budget)
        factory = ClientFactory.forProtocol(lambda: client)
        connector = reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
        self.addCleanup(connector.disconnect)
        started = time.monotonic()
        await within(client.closed, 20, "the server to close the connection")
        elapsed = time.monotonic() - started

        status = client.received.split(b"\r\n", 1)[0]
        self.assertEqual(status, b"HTTP/1.1 405 Method Not Allowed")
        self.assertIn(b"Connection: close", client.received)
        self.assertEqual(bodies, [], "a request was given a place for its body")
        server_read = sum(read)
        record(
            "monitoring port: POST with Content-Length 10 GiB",
            {
                "body bytes the client queued": client.sent,
                "bytes the server read (head included)": server_read,
                "response": status.decode(),
                "seconds until closed": round(elapsed, 3),
            },
        )
        # One socket read (Twisted reads 64 KiB at a time) at most.
        self.assertLessEqual(server_read, 65536 + len(head))
