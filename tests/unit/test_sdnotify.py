"""
Tests for L{peatio_ws.sdnotify}: real C{AF_UNIX} datagram sockets standing
in for systemd's notification socket (path and abstract namespace).
"""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Any

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.sdnotify import Notifier


class FakeSystemd:
    """A bound datagram socket, as systemd's notify socket is."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        # Datagrams on AF_UNIX are queued by sendto itself: nothing to wait for.
        self.sock.setblocking(False)

    def received(self) -> list[str]:
        messages = []
        while True:
            try:
                messages.append(self.sock.recv(4096).decode("utf-8"))
            except BlockingIOError:
                return messages

    def close(self) -> None:
        self.sock.close()


class NotifierTests(SynchronousTestCase):
    def path_socket(self) -> tuple[str, FakeSystemd]:
        directory = tempfile.mkdtemp(prefix="sdn", dir="/tmp")  # short: sun_path holds 108 bytes
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "notify")
        systemd = FakeSystemd(path)
        self.addCleanup(os.unlink, path)
        self.addCleanup(systemd.close)
        return path, systemd

    def test_unset_is_noop(self) -> None:
        """Without NOTIFY_SOCKET nothing is sent and nothing fails."""
        notifier = Notifier(environ={})
        self.assertFalse(notifier.enabled)
        self.assertFalse(notifier.ready("x"))
        self.assertFalse(notifier.stopping("x"))
        self.assertFalse(notifier.watchdog())
        self.assertIsNone(notifier.watchdog_interval)

    def test_ready_to_path(self) -> None:
        """READY=1 and a STATUS line arrive in one datagram on a filesystem socket."""
        path, systemd = self.path_socket()
        notifier = Notifier(environ={"NOTIFY_SOCKET": path})
        self.assertTrue(notifier.enabled)
        self.assertTrue(notifier.ready("Listening on ws://0.0.0.0:8080"))
        self.assertEqual(systemd.received(), ["READY=1\nSTATUS=Listening on ws://0.0.0.0:8080"])

    def test_stopping(self) -> None:
        """STOPPING=1 is sent with the status, which is kept to one line."""
        path, systemd = self.path_socket()
        Notifier(environ={"NOTIFY_SOCKET": path}).stopping("Shutting down:\nclosing 3")
        self.assertEqual(systemd.received(), ["STOPPING=1\nSTATUS=Shutting down: closing 3"])

    def test_abstract_namespace(self) -> None:
        """An C{@name} socket is the abstract-namespace address C{\\0name}."""
        name = f"peatio-ws-test-{os.getpid()}-{os.urandom(4).hex()}"
        systemd = FakeSystemd("\0" + name)
        self.addCleanup(systemd.close)
        notifier = Notifier(environ={"NOTIFY_SOCKET": "@" + name})
        self.assertTrue(notifier.notify("READY=1"))
        self.assertEqual(systemd.received(), ["READY=1"])

    def test_missing_socket_logged_once(self) -> None:
        """A socket that is gone is a warning, logged once, never an exception."""
        events: list[dict] = []
        observer: Any = events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        notifier = Notifier(environ={"NOTIFY_SOCKET": "/nonexistent/peatio-ws/notify"})
        self.assertFalse(notifier.ready("x"))
        self.assertFalse(notifier.watchdog())
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn and "systemd" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)

    def test_unusable_address(self) -> None:
        """A value that is neither a path nor C{@name} disables notification."""
        notifier = Notifier(environ={"NOTIFY_SOCKET": "vsock:2:1234"})
        self.assertFalse(notifier.enabled)
        self.assertFalse(notifier.notify("READY=1"))

    def test_bad_assignment(self) -> None:
        """An assignment without C{=} or with a newline is a programming error."""
        path, _ = self.path_socket()
        notifier = Notifier(environ={"NOTIFY_SOCKET": path})
        self.assertRaises(ValueError, notifier.notify, "READY")
        self.assertRaises(ValueError, notifier.notify, "STATUS=a\nREADY=1")

    def test_watchdog_interval(self) -> None:
        """Half of WATCHDOG_USEC, in seconds; only for our own pid."""
        path, systemd = self.path_socket()
        environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"}
        self.assertEqual(Notifier(environ=environ, pid=42).watchdog_interval, 15.0)
        self.assertEqual(Notifier(environ={**environ, "WATCHDOG_PID": "42"}, pid=42).watchdog_interval, 15.0)
        self.assertIsNone(Notifier(environ={**environ, "WATCHDOG_PID": "43"}, pid=42).watchdog_interval)
        self.assertIsNone(Notifier(environ={**environ, "WATCHDOG_USEC": "junk"}, pid=42).watchdog_interval)
        self.assertIsNone(Notifier(environ={**environ, "WATCHDOG_USEC": "0"}, pid=42).watchdog_interval)
        self.assertIsNone(Notifier(environ={"WATCHDOG_USEC": "30000000"}, pid=42).watchdog_interval)
        Notifier(environ=environ).watchdog()
        self.assertEqual(systemd.received(), ["WATCHDOG=1"])
