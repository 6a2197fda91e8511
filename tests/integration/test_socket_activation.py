"""
Socket activation, end to end: the real C{twistd -n peatio-ws} given a
listening socket as systemd passes one (descriptor 3, C{LISTEN_FDS},
C{LISTEN_PID}, C{LISTEN_FDNAMES}), as a C{.socket} unit holds it across a
restart. A client that connects while no daemon runs is not refused: it
waits in the socket's queue and the next daemon answers it.
"""

from __future__ import annotations

import json
import socket

from twisted.trial.unittest import SynchronousTestCase
from websockets.sync.client import connect

from peatio_ws.testing import make_token
from tests.support.cases import new_uid
from tests.support.daemon import DaemonProcess
from tests.support.oracle import AUTHENTICATED
from tests.support.raw_client import RawClient
from tests.support.sockets import held_listener


class SocketActivationTests(SynchronousTestCase):
    def held_socket(self) -> socket.socket:
        return held_listener(self)

    def daemon(self, held: socket.socket) -> DaemonProcess:
        daemon = DaemonProcess(port=held.getsockname()[1], listening=held)
        self.addCleanup(daemon.cleanup)
        daemon.start()
        return daemon

    def test_serves_the_passed_socket(self) -> None:
        """The daemon serves on the socket it was passed (its own port setting names the same port)."""
        held = self.held_socket()
        daemon = self.daemon(held)
        with connect(daemon.url, open_timeout=10, close_timeout=10) as ws:
            ws.recv(timeout=10)  # the challenge
            ws.send(json.dumps({"jwt": "Bearer " + make_token(uid=new_uid())}))
            self.assertEqual(json.loads(ws.recv(timeout=10)), AUTHENTICATED)
        daemon.wait_log("passed by the service manager")

    def test_restart_queues_instead_of_refusing(self) -> None:
        """Between one daemon's exit and the next one's start, a new client waits; the next one answers it."""
        held = self.held_socket()
        port = held.getsockname()[1]
        first = self.daemon(held)
        first.stop()
        self.assertIsNotNone(first.exited())
        # No daemon now: the connection is made by the kernel, into the held socket's queue.
        waiting = RawClient(port, timeout=30)
        self.addCleanup(waiting.close)
        self.daemon(held)
        self.assertEqual(waiting.handshake(), 101)
