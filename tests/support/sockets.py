"""Real loopback TCP sockets for unit tests that need a kernel socket under Twisted's transport (no reactor runs)."""

from __future__ import annotations

import os
import socket

from twisted.trial.unittest import SynchronousTestCase

__all__ = ["connected_pair", "held_listener", "listening"]


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


def held_listener(test: SynchronousTestCase) -> socket.socket:
    """
    A listening socket of the test's own, as a service manager holds one
    for socket activation: on a descriptor over 9 (not 3, where it is
    passed), closed at C{test}'s cleanup.
    """
    for _ in range(12):
        spacer = open(os.devnull, "rb")  # noqa: SIM115 (closed at cleanup)
        test.addCleanup(spacer.close)
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    test.assertGreater(held.fileno(), 9)
    test.addCleanup(held.close)
    held.bind(("127.0.0.1", 0))
    held.listen(128)
    return held
