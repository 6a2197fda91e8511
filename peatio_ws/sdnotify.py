# -*- test-case-name: tests.unit.test_sdnotify -*-
"""
The systemd notification protocol (C{sd_notify(3)}), written by hand.

With C{Type=notify} systemd waits for C{READY=1} before it counts the unit as
started, so C{systemctl start} (and units ordered after us) return only once
the WebSocket port is listening; C{STOPPING=1} tells it a stop is under way;
C{WATCHDOG=1}, sent from the reactor, proves the reactor is not stuck.

The protocol is one datagram of newline-separated C{KEY=value} lines to the
C{AF_UNIX} socket named by C{$NOTIFY_SOCKET} (a path, or C{@name} for the
abstract namespace), so no library is needed. Without C{$NOTIFY_SOCKET}
(not started by systemd) every call is a no-op, and a failure to notify is
logged, never raised: systemd's bookkeeping must not stop the daemon.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from peatio_ws.logs import logger

__all__ = ["Notifier"]

log = logger("peatio_ws.sdnotify")


def _socket_address(value: str) -> str | None:
    """The C{AF_UNIX} address for a C{$NOTIFY_SOCKET} value, or None if unusable."""
    if value.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of a path.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # systemd 254+ also knows vsock: addresses; a plain service never gets one.
    return None


def _watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """
    Seconds between C{WATCHDOG=1} pings: half of C{$WATCHDOG_USEC}, as
    C{sd_watchdog_enabled(3)} advises; None when the watchdog is off or meant
    for another process (C{$WATCHDOG_PID}).
    """
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    try:
        micros = int(usec)
        if owner and int(owner) != pid:
            return None
    except ValueError:
        return None
    if micros <= 0:
        return None
    return micros / 2 / 1_000_000


class Notifier:
    """
    Sends state changes to systemd.

    Reads the environment once, when built; pass C{environ} (and C{pid}) to
    test without touching the process's own.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        environ = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        raw = environ.get("NOTIFY_SOCKET", "")
        self.address = _socket_address(raw) if raw else None
        if raw and self.address is None:
            log.warn("NOTIFY_SOCKET {value!r} is not a path or @name; not notifying systemd", value=raw)
        self.watchdog_interval = _watchdog_interval(environ, pid) if self.address else None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """Whether there is a systemd to tell."""
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """
        Send C{KEY=value} assignments in one datagram; True if it was sent.
        """
        if self.address is None or not assignments:
            return False
        for item in assignments:
            if "=" not in item or "\n" in item:
                raise ValueError(f"not a single KEY=value assignment: {item!r}")
        message = "\n".join(assignments).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
        except OSError as e:
            if not self._warned:
                # Once: a broken socket would otherwise log on every watchdog ping.
                self._warned = True
                log.warn("cannot notify systemd: {error}", error=e.strerror or str(e))
            return False
        return True

    def ready(self, status: str) -> bool:
        """Start-up is complete: the daemon is serving."""
        return self.notify("READY=1", f"STATUS={_one_line(status)}")

    def stopping(self, status: str) -> bool:
        """Shutdown has begun."""
        return self.notify("STOPPING=1", f"STATUS={_one_line(status)}")

    def status(self, status: str) -> bool:
        """Free text shown by C{systemctl status}."""
        return self.notify(f"STATUS={_one_line(status)}")

    def watchdog(self) -> bool:
        """Keep-alive ping for C{WatchdogSec=}."""
        return self.notify("WATCHDOG=1")


def _one_line(text: str) -> str:
    return " ".join(text.split())
