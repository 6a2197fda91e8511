# -*- test-case-name: tests.unit.test_websocket_doors -*-
"""
The one door to Twisted's TCP transport internals. Written against Twisted
26.10.0; L{tests.unit.test_websocket_doors} fails, naming what changed, when
an upgrade moves anything relied on here.

Two shortcuts, both measured (docs/benchmarks.md):

 - L{write}: when Twisted holds nothing for a connection, the frame goes
   straight to the socket. C{transport.write} would register the socket with
   epoll, wait for the next poll, send from C{doWrite} and unregister it: two
   C{epoll_ctl} calls and a dispatch per connection and reactor turn, a third
   of the daemon's CPU per event. Whatever the kernel does not take goes to
   C{transport.write}, in order, and from then on everything does until
   Twisted has sent it.
 - L{held_bytes}: how much a TCP transport holds beyond the kernel, exactly,
   for the slow-consumer limit (SPEC §3.4).
 - L{pending_output}: those bytes themselves, in order, for a connection
   carried across a restart in place (L{peatio_ws.websocket.handoff}): the
   next program writes them first.

Relied on: L{twisted.internet.tcp.Connection}'s C{socket}, C{dataBuffer},
C{offset}, C{_tempDataBuffer}, C{_tempDataLen}, C{connected} and
C{disconnecting}.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp

__all__ = ["direct_socket", "held_bytes", "pending_output", "write"]


def direct_socket(transport: Any) -> socket.socket | None:
    """The socket frames may be written to directly: plain TCP only (not TLS, not a test transport)."""
    return transport.socket if isinstance(transport, tcp.Connection) else None


def write(transport: Any, sock: socket.socket | None, frame: bytes) -> None:
    """Write C{frame}: straight to C{sock} when Twisted holds nothing for it, else through the transport."""
    if (
        sock is not None
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
        and transport.connected
        and not transport.disconnecting
    ):
        try:
            sent = sock.send(frame)
        except OSError:
            sent = 0  # would block, or broken: transport.write finds out and closes
        if sent == len(frame):
            return
        frame = frame[sent:]
    transport.write(frame)


def held_bytes(transport: Any) -> int | None:
    """Bytes a TCP transport holds beyond the kernel, or None for a transport that does not say (TLS)."""
    buffer = getattr(transport, "dataBuffer", None)
    temp = getattr(transport, "_tempDataLen", None)
    offset = getattr(transport, "offset", None)
    if isinstance(buffer, (bytes, memoryview)) and isinstance(temp, int) and isinstance(offset, int):
        return len(buffer) - offset + temp
    return None


def pending_output(transport: Any) -> bytes:
    """What a TCP transport holds beyond the kernel, in the order it would send it."""
    return bytes(transport.dataBuffer[transport.offset :]) + b"".join(transport._tempDataBuffer)
