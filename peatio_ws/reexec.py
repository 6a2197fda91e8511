# -*- test-case-name: tests.unit.test_reexec -*-
"""
A restart in place: this program replaced by a fresh start of itself
(C{execve} of the same command line, the installed code read anew) in the
same process, its clients' sockets kept open across the exec.

A restart through systemd (SIGTERM, then a new process) closes every
connection with 1001 and makes every client reconnect, log in again and
miss what was published meanwhile. A restart in place (SIGUSR2, which the
units' C{ExecReload=} sends: C{systemctl reload peatio-ws}) closes nobody:
the stopping program leaves here the listening socket and the connections
it carries (L{peatio_ws.websocket.handoff}), and the next one, in the same
process (so systemd's main PID and socket activation stay as they were),
serves them on from where they were, consuming the same queue.

What is left for the next program is one JSON object in an anonymous file
(C{memfd_create}) whose descriptor, inherited across the exec, is named by
C{$PEATIO_WS_CARRIED}: nothing on disk, and nothing for any other process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from peatio_ws import logs

__all__ = [
    "FORMAT",
    "HELD_SIGNALS",
    "STATE_ENV",
    "Left",
    "ReexecError",
    "leave",
    "pidfile",
    "replace_process",
    "take",
    "unblock_signals",
]

#: The environment variable naming the descriptor of what was left.
STATE_ENV = "PEATIO_WS_CARRIED"
#: The layout's number: a program that does not know it takes nothing.
FORMAT = 1
#: Signals held from just before the exec until the next program's handlers
#: are in place (the signal mask survives C{execve}).
HELD_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGUSR2})
#: Bytes read at most (a million connections' records fit in a quarter of it).
MAX_BYTES = 512 * 1024 * 1024

log = logs.logger("peatio_ws.reexec")


class ReexecError(Exception):
    """What was left cannot be taken: C{str()} says why, in one line."""


@dataclass(frozen=True)
class Left:
    """What a stopping program left for the next: its listening socket and its connections' records."""

    listener: int
    #: One JSON object per connection (L{peatio_ws.websocket.handoff.Carried.from_json} reads them).
    connections: list[Any]
    #: When it was left (C{time.time()}), for the log line that says how long the exec took.
    left_at: float
    #: The order books' stores (L{peatio_ws.websocket.handoff.books_from_json} reads them).
    books: Any = None


def leave(listener: int, connections: Sequence[Mapping[str, Any]], books: Mapping[str, Any] | None = None) -> int:
    """
    Write what the next program takes, with C{listener} (the listening
    socket's descriptor) made inheritable; the descriptor of the anonymous
    file holding it, inheritable too, read from the start. C{books}: the
    order books' stores, as JSON.
    """
    os.set_inheritable(listener, True)
    state = {
        "format": FORMAT,
        "pid": os.getpid(),
        "left_at": time.time(),
        "listener": listener,
        "connections": list(connections),
        "books": dict(books or {}),
    }
    data = json.dumps(state, separators=(",", ":")).encode("ascii")
    fd = os.memfd_create("peatio-ws-carried", 0)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


def take(environ: MutableMapping[str, str] | None = None) -> Left | None:
    """
    What the previous program of this process left, removing C{$PEATIO_WS_CARRIED}
    from C{environ}; None when nothing was left.

    @raise ReexecError: something was named but cannot be read, or was left
        by another process, or in another layout.
    """
    environ = os.environ if environ is None else environ
    value = environ.pop(STATE_ENV, None)
    if value is None:
        return None
    try:
        fd = int(value)
    except ValueError:
        raise ReexecError(f"{STATE_ENV}={value!r} is not a descriptor") from None
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ReexecError(f"cannot read descriptor {fd}: {e.strerror or e}") from None
    if len(data) > MAX_BYTES:
        raise ReexecError(f"larger than {MAX_BYTES} bytes")
    try:
        state = json.loads(data)
    except ValueError:
        raise ReexecError("not JSON") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ReexecError("not a layout this program reads")
    if state.get("pid") != os.getpid():
        raise ReexecError(f"left by process {state.get('pid')!r}, not this one")
    listener, connections, left_at = state.get("listener"), state.get("connections"), state.get("left_at")
    if not isinstance(listener, int) or not isinstance(connections, list) or not isinstance(left_at, (int, float)):
        raise ReexecError("no listener, connections or time")
    return Left(listener, connections, float(left_at), state.get("books"))


def pidfile(argv: Sequence[str]) -> str | None:
    """
    The pid file twistd was told to write (C{--pidfile}; C{twistd.pid}
    unless given), or None when it writes none (C{--pidfile=}).
    """
    path: str | None = "twistd.pid"
    for i, arg in enumerate(argv):
        if arg.startswith("--pidfile="):
            path = arg[len("--pidfile=") :]
        elif arg == "--pidfile" and i + 1 < len(argv):
            path = argv[i + 1]
    return path or None


def replace_process(state: int, argv: Sequence[str] | None = None) -> NoReturn:
    """
    Replace this program by a fresh start of its own command line, which
    takes what descriptor C{state} holds. Every line logged so far is
    written first; twistd's pid file (ours) is removed, or the next twistd
    would find this process running and refuse to start.

    @raise OSError: the exec failed (this program goes on).
    """
    argv = list(sys.orig_argv if argv is None else argv)
    environ = dict(os.environ)
    environ[STATE_ENV] = str(state)
    path = pidfile(argv)
    if path is not None:
        _remove_own_pidfile(path)
    logs.flush_all()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    # Until the next program handles them (L{unblock_signals}), a stop or a
    # second reload waits: their default action would end the process, and
    # every connection with it, without a word.
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        # The program's own command line, as it was started: no shell, nothing from outside.
        os.execve(sys.executable, argv, environ)  # noqa: S606
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)


def unblock_signals() -> None:
    """Take the signals held across the exec (L{HELD_SIGNALS}): call once their handlers are in place."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)


def _remove_own_pidfile(path: str) -> None:
    try:
        with open(path) as f:
            written = f.read().strip()
    except OSError:
        return
    if written == str(os.getpid()):
        try:
            os.unlink(path)
        except OSError as e:
            log.warn("cannot remove the pid file {path}: {error}", path=path, error=e.strerror or str(e))
