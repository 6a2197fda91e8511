"""
The test kit's L{free_port}: the ports every end-to-end test, bench and
private RabbitMQ cluster listen on.
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import SynchronousTestCase

from tests.support import daemon


class FreePortTests(SynchronousTestCase):
    def test_below_the_ephemeral_range(self) -> None:
        """
        A port from the kernel's ephemeral range can become an outgoing
        connection's local port before the server listens on it; the kit's
        ports come from below that range.
        """
        low = daemon._ephemeral_low()
        ports = [daemon.free_port() for _ in range(20)]
        self.assertTrue(all(daemon._BELOW_EPHEMERAL.start <= p < low for p in ports), ports)

    def test_never_twice(self) -> None:
        """A port handed out once is not handed out again by the same process."""
        ports = [daemon.free_port() for _ in range(50)]
        self.assertEqual(len(set(ports)), len(ports))

    def test_skips_a_port_in_use(self) -> None:
        """A port something is bound to is not handed out."""
        self.patch(daemon, "_BELOW_EPHEMERAL", range(20000, 20002))
        self.patch(daemon, "_GIVEN", set())
        with socket.socket() as held:
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
            try:
                held.bind(("127.0.0.1", 20000))
            except OSError:
                self.skipTest("port 20000 is in use on this machine")
            self.assertEqual(daemon.free_port(), 20001)

    def test_falls_back_to_the_kernels_choice(self) -> None:
        """Where nothing lies below the ephemeral range, the kernel chooses."""
        self.patch(daemon, "_ephemeral_low", lambda: 1024)
        port = daemon.free_port()
        self.assertTrue(daemon._bindable(port))
