"""
Tests for L{peatio_ws.reexec}: what a program restarting in place leaves
for the next (an anonymous file named by C{$PEATIO_WS_CARRIED}), taken once
and only by the same process, and the exec itself (the exec replaced by a
recording fake).
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from peatio_ws import logs, reexec
from tests.support.sockets import listening


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("test", 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


class LeaveTakeTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """What is left is taken whole; the variable is removed and the descriptor closed."""
        sock = listening(self)
        records = [{"fd": 10, "id": "a-1"}, {"fd": 11, "id": "a-2"}]
        fd = reexec.leave(sock.fileno(), records)
        self.assertTrue(os.get_inheritable(fd), "the exec must keep it")
        self.assertTrue(os.get_inheritable(sock.fileno()), "the exec must keep the listening socket")
        environ = {reexec.STATE_ENV: str(fd), "OTHER": "x"}
        left = reexec.take(environ)
        assert left is not None
        self.assertEqual(left.listener, sock.fileno())
        self.assertEqual(left.connections, records)
        self.assertEqual(environ, {"OTHER": "x"})
        self.assertTrue(_closed(fd))

    def test_nothing_left(self) -> None:
        self.assertIsNone(reexec.take({}))

    def bad(self, value: str) -> str:
        environ = {reexec.STATE_ENV: value}
        with self.assertRaises(reexec.ReexecError) as raised:
            reexec.take(environ)
        self.assertEqual(environ, {}, "a bad value is not met twice")
        return str(raised.exception)

    def state(self, **changes: Any) -> str:
        state = {"format": reexec.FORMAT, "pid": os.getpid(), "left_at": 1.0, "listener": 5, "connections": []}
        state.update(changes)
        return str(_memfd(json.dumps(state).encode()))

    def test_refused(self) -> None:
        """Anything but this process's own state of this layout is refused, saying why."""
        self.assertEqual(self.bad("x"), "PEATIO_WS_CARRIED='x' is not a descriptor")
        closed = _memfd(b"{}")
        os.close(closed)
        self.assertIn(f"cannot read descriptor {closed}", self.bad(str(closed)))
        self.assertEqual(self.bad(str(_memfd(b"not json"))), "not JSON")
        self.assertEqual(self.bad(self.state(format=2)), "not a layout this program reads")
        self.assertEqual(self.bad(self.state(pid=os.getpid() + 1)), f"left by process {os.getpid() + 1}, not this one")
        self.assertEqual(self.bad(self.state(listener="5")), "no listener, connections or time")
        self.assertEqual(self.bad(self.state(connections={})), "no listener, connections or time")


class PidfileTests(SynchronousTestCase):
    def test_pidfile(self) -> None:
        """twistd's pid file as its command line names it; none for --pidfile= (the units')."""
        self.assertEqual(reexec.pidfile(["twistd", "-n", "peatio-ws"]), "twistd.pid")
        self.assertIsNone(reexec.pidfile(["twistd", "-n", "--pidfile=", "peatio-ws"]))
        self.assertEqual(reexec.pidfile(["twistd", "--pidfile=/run/x.pid", "peatio-ws"]), "/run/x.pid")
        self.assertEqual(reexec.pidfile(["twistd", "--pidfile", "y.pid", "peatio-ws"]), "y.pid")


class ReplaceProcessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.execs: list[tuple[str, list[str], dict[str, str]]] = []

        def execve(path: str, argv: list[str], environ: dict[str, str]) -> None:
            self.execs.append((path, argv, environ))

        self.patch(os, "execve", execve)
        # The recorded exec returns: the real mask must not stay blocked, so record it too.
        self.patch(signal, "pthread_sigmask", lambda how, sigs: set())

    def test_signals_held_across_the_exec(self) -> None:
        """SIGTERM, SIGINT and SIGUSR2 are blocked for the exec (the mask survives it), unblocked if it fails."""
        masks: list[tuple[int, frozenset[int]]] = []
        self.patch(signal, "pthread_sigmask", lambda how, sigs: masks.append((how, frozenset(sigs))))

        def failing(path: str, argv: list[str], environ: dict[str, str]) -> None:
            masks.append((-1, frozenset()))
            raise OSError(8, "Exec format error")

        self.patch(os, "execve", failing)
        held = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGUSR2})
        self.assertRaises(OSError, reexec.replace_process, 3, ["twistd", "--pidfile=", "peatio-ws"])
        self.assertEqual(masks, [(signal.SIG_BLOCK, held), (-1, frozenset()), (signal.SIG_UNBLOCK, held)])
        reexec.unblock_signals()
        self.assertEqual(masks[-1], (signal.SIG_UNBLOCK, held))

    def test_exec_of_the_same_command_line(self) -> None:
        """This interpreter, the given command line, the environment plus the state's descriptor."""
        reexec.replace_process(42, ["python", "twistd", "-n", "--pidfile=", "peatio-ws"])
        [(path, argv, environ)] = self.execs
        self.assertEqual(path, sys.executable)
        self.assertEqual(argv, ["python", "twistd", "-n", "--pidfile=", "peatio-ws"])
        self.assertEqual(environ[reexec.STATE_ENV], "42")
        self.assertNotIn(reexec.STATE_ENV, os.environ, "this program's own environment is left alone")

    def test_own_pidfile_removed(self) -> None:
        """twistd's pid file holding this process is removed (the next twistd would refuse to start), not another."""
        directory = self.mktemp()
        os.mkdir(directory)
        ours, other = os.path.join(directory, "ours.pid"), os.path.join(directory, "other.pid")
        with open(ours, "w") as f:
            f.write(f"{os.getpid()}\n")
        with open(other, "w") as f:
            f.write("1\n")
        reexec.replace_process(3, ["twistd", f"--pidfile={ours}", "peatio-ws"])
        reexec.replace_process(3, ["twistd", f"--pidfile={other}", "peatio-ws"])
        self.assertFalse(os.path.exists(ours))
        self.assertTrue(os.path.exists(other))

    def test_log_written_first(self) -> None:
        """Lines a batched log writer holds are written before the exec, which no shutdown trigger sees."""
        out = io.StringIO()
        writer = logs.BatchedWriter(out, reactor=_RunningReactor())
        writer.write("held\n", {})
        self.assertEqual(out.getvalue(), "")
        reexec.replace_process(3, ["twistd", "--pidfile=", "peatio-ws"])
        self.assertEqual(out.getvalue(), "held\n")


class _RunningReactor:
    """Just enough of a running reactor for L{logs.BatchedWriter} to hold a line."""

    running = True

    def callLater(self, delay: float, f: Any) -> Any:
        return _Call()

    def addSystemEventTrigger(self, *args: Any) -> None:
        pass


class _Call:
    def active(self) -> bool:
        return True

    def cancel(self) -> None:
        pass
