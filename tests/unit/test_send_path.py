"""
The production send path on a real TCP connection (issue 17): a
C{tcp.Server} over a real socket pair, driven without the reactor (a
L{MemoryReactor}; the test calls C{doWrite} where the reactor would), so
the direct socket write, the trim of a partial send, the exact held-bytes
count and the slow-consumer close run as in production, without sleeping.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.framing import text_frame
from peatio_ws.testing import make_token, settings_for_tests
from peatio_ws.testing.factory import stream_factory
from peatio_ws.testing.frames import (
    CLOSE,
    PING,
    PONG,
    SAMPLE_KEY,
    TEXT,
    client_frame,
    close_payload,
    parse_frames,
    upgrade_request,
)
from peatio_ws.websocket import CloseCode
from peatio_ws.websocket.connection import StreamProtocol

#: Small kernel buffers, so a few frames fill them (Linux doubles what is asked, with a floor).
KERNEL_BUFFER = 4096


class SendPathTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.settings = settings_for_tests(websocket_max_buffer=256 * 1024, websocket_ping_interval=0)
        self.factory = stream_factory(self.settings, self.clock)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        self.peer = socket.socket()
        self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, KERNEL_BUFFER)
        self.peer.connect(listener.getsockname())
        accepted, address = listener.accept()
        listener.close()
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_BUFFER)
        accepted.setblocking(False)
        self.peer.setblocking(False)
        self.addCleanup(self.peer.close)
        self.reactor = MemoryReactor()
        peer_address = IPv4Address("TCP", address[0], address[1])
        self.proto: StreamProtocol = self.factory.buildProtocol(peer_address)
        self.server = tcp.Server(accepted, self.proto, address, None, 1, self.reactor)  # type: ignore[arg-type]
        self.proto.makeConnection(self.server)
        self.addCleanup(self._close)
        self.received = b""
        self.proto.dataReceived(upgrade_request("/", "localhost:8080", [], key=SAMPLE_KEY))
        # Autobahn's own writes go straight to the socket as well: the 101 is there, nothing to poll for.
        self.assertEqual(self.held(), 0)
        self.assertNotIn(self.server, self.reactor.writers)
        self.flush()
        head, _, rest = self.received.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head[:100])
        self.received = rest
        token = make_token(now=self.clock.seconds(), uid="U1")
        self.proto.dataReceived(client_frame(f'{{"jwt":"Bearer {token}"}}'.encode()))
        self.flush()
        self.assertIsNotNone(self.proto.claims)
        self.received = b""

    def _close(self) -> None:
        self.server.socket.close()

    def read_peer(self) -> int:
        """Read what the kernel has for the peer; how many bytes."""
        total = 0
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                return total
            if not chunk:
                return total
            self.received += chunk
            total += len(chunk)

    def flush(self) -> None:
        """Be the reactor and the client: write what Twisted holds, read it, until nothing is held."""
        for _ in range(10_000):
            if self.server in self.reactor.writers or self.server._tempDataLen or self.server.dataBuffer:
                self.server.doWrite()
            if not self.read_peer() and not self.held():
                return
        self.fail("the transport never drained")

    def held(self) -> int:
        return len(self.server.dataBuffer) - self.server.offset + self.server._tempDataLen

    def frames(self) -> list[Any]:
        frames, rest = parse_frames(self.received)
        self.assertEqual(rest, b"")
        return frames

    def test_direct_write_when_nothing_held(self) -> None:
        """A frame the kernel takes whole goes straight to the socket: Twisted holds nothing, nothing to poll."""
        frame = text_frame(b'{"order":{"id":1}}')
        self.assertTrue(self.proto.send_frame(frame))
        self.assertEqual(self.held(), 0)
        self.assertNotIn(self.server, self.reactor.writers)
        self.read_peer()
        self.assertEqual(self.received, frame)

    def test_close_frame_direct(self) -> None:
        """The close frame Autobahn answers a client's close with goes straight to the socket too."""
        self.proto.dataReceived(client_frame(close_payload(1000), opcode=CLOSE))
        # (Twisted now waits to write, to close the socket once it holds nothing: it holds nothing.)
        self.assertEqual(self.held(), 0)
        self.read_peer()
        [frame] = self.frames()
        self.assertEqual((frame.opcode, frame.payload), (CLOSE, close_payload(1000)))

    def test_behind_held_bytes_autobahn_waits_its_turn(self) -> None:
        """While Twisted holds part of a frame, what Autobahn writes (a pong) queues behind it, in order."""
        payload = b'{"order":"' + b"x" * 100_000 + b'"}'
        self.assertTrue(self.proto.send_frame(text_frame(payload)))
        held = self.held()
        self.assertGreater(held, 0)
        self.proto.dataReceived(client_frame(b"hi", opcode=PING))
        self.assertEqual(self.held(), held + 4)
        self.flush()
        self.assertEqual([(f.opcode, f.payload) for f in self.frames()], [(TEXT, payload), (PONG, b"hi")])

    def test_partial_send_is_trimmed(self) -> None:
        """
        A frame larger than the kernel takes: the rest, exactly, is held by
        Twisted (what the slow-consumer limit counts), later frames queue
        behind it, and the peer receives every byte once, in order.
        """
        big = text_frame(b'{"order":"' + b"x" * 100_000 + b'"}')
        small = text_frame(b'{"trade":{"id":2}}')
        self.assertTrue(self.proto.send_frame(big))
        held = self.held()
        self.assertGreater(held, 0)
        self.assertLess(held, len(big))
        self.assertEqual(self.proto._held_bytes(), held)
        self.assertTrue(self.proto.send_frame(small))
        self.assertEqual(self.held(), held + len(small))
        self.flush()
        self.assertEqual(self.received, big + small)

    def test_slow_consumer_closed_past_the_limit(self) -> None:
        """
        A client that does not read: the transport pauses us, what it holds
        is counted exactly, and the frame that would take it past
        WEBSOCKET_MAX_BUFFER closes 4008 instead of being buffered.
        """
        frame = text_frame(b'{"order":"' + b"y" * 8_000 + b'"}')
        limit = self.settings.websocket_max_buffer
        sent = 0
        while True:
            before = self.held()
            if not self.proto.send_frame(frame):
                break
            sent += 1
            self.assertLessEqual(self.held(), limit)
            self.assertLess(sent, 1000, "never closed")
        self.assertTrue(self.proto._paused)
        # Closed exactly when this frame would have taken it over the limit, not before.
        self.assertGreater(before + len(frame), limit)
        self.assertLessEqual(before, limit)
        self.flush()
        frames = self.frames()
        self.assertEqual(frames[-1].opcode, CLOSE)
        self.assertEqual(frames[-1].close_code, CloseCode.SLOW_CONSUMER)
        self.assertEqual(len(frames) - 1, sent)
