"""Real loopback TCP sockets for unit tests that need a kernel socket under Twisted's transport (no reactor runs)."""

from __future__ import annotations

import socket

from twisted.trial.unittest import SynchronousTestCase

__all__ = ["connected_pair", "listening"]


def listening(test: SynchronousTestCase) -> socket.socket:
    """A TCP socket listening on a free loopback port, closed at C{test}'s cleanup."""
    listener = socket.socket()
    test.addCleanup(listener.close)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener


def connected_pair(test: SynchronousTestCase) -> tuple[socket.socket, socket.socket, tuple[str, int]]:
    """
    A loopback TCP connection: the client's socket, the server's accepted
    one (non-blocking) and the client's address as the server sees it; both
    closed at C{test}'s cleanup (a socket already closed or detached is left alone).
    """
    listener = listening(test)
    client = socket.create_connection(listener.getsockname())
    test.addCleanup(client.close)
    accepted, address = listener.accept()
    test.addCleanup(accepted.close)
    accepted.setblocking(False)
    return client, accepted, address
