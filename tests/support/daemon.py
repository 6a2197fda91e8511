"""
The one runner of the real daemon (``twistd -n peatio-ws`` from this
checkout) in a child process: for end-to-end and fault tests, the
benchmark and the demo.

By default it is isolated for a test: free ports on 127.0.0.1, an events
exchange of its own, the key of L{peatio_ws.testing.rsa_key}, a log in a
temporary file. Every wait is bounded; the log is kept and shown when
something goes wrong, so a failure says why.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from peatio_ws.testing import public_key_b64, rsa_key
from tests.support.paths import REPO
from tests.support.waiting import until_blocking

__all__ = ["DaemonProcess", "free_port", "loopback", "run_cli", "stop_child"]


_GIVEN: set[int] = set()


#: Where L{free_port} looks first: below the kernel's ephemeral range (32768 up on Linux).
_BELOW_EPHEMERAL = range(20000, 32768)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _candidates() -> Iterator[int]:
    """Ports to try: random ones below the ephemeral range (where there is room), then the kernel's."""
    low = min(_BELOW_EPHEMERAL.stop, _ephemeral_low())
    if low > _BELOW_EPHEMERAL.start:
        for _ in range(200):
            yield random.randrange(_BELOW_EPHEMERAL.start, low)
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        yield port  # once closed, or it is not bindable


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now, and never
    one this process handed out before: the kernel may give a port closed a
    moment ago again, and the ports of a private RabbitMQ cluster (three
    AMQP and three distribution ports) are all chosen before any is bound.

    It is taken below the kernel's ephemeral range where it can be: a port
    from that range can be taken, between this choice and the server's
    listen, as the local port of any outgoing connection (a storm's
    15,000 clients reconnecting took a restarted daemon's metrics port).
    """
    for port in _candidates():
        if port not in _GIVEN and _bindable(port):
            _GIVEN.add(port)
            return port
    raise AssertionError("unreachable: the kernel's ports never run out")


def loopback(host: str) -> str:
    """Where to reach a server listening on C{host} from this machine (a wildcard: 127.0.0.1)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def interruptible() -> None:
    """
    A C{preexec_fn} for a child to be stopped by Ctrl-C (SIGINT): the
    signal's default action, as a terminal's foreground job has it, even
    when the tests themselves were started in the background (C{make test
    &}), where the shell ignores SIGINT and every child inherits that.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_child(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
    """
    Stop a child this process started, by its PID: C{sig}, then SIGKILL if it
    has not exited within C{timeout} seconds. Its exit status (None if that
    never came).
    """
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            return proc.wait(5)
        except subprocess.TimeoutExpired:
            return None


#: Run argv[2:] with descriptor argv[1] as descriptor 3 and LISTEN_PID this process's own (exec keeps it),
#: as systemd passes a socket (a shell's redirections take single-digit descriptors only).
_AS_SYSTEMD_PASSES = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _twistd() -> list[str]:
    # `python -m twisted.scripts.twistd` does nothing (that module has no
    # __main__ guard): the twistd script beside this interpreter, else its entry point.
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class DaemonProcess:
    """
    One ``twistd -n peatio-ws`` child.

    C{env} is applied last over this process's environment and the test
    defaults (a value of None removes the variable, so the daemon takes its
    configured value); C{port}, C{metrics_port} and C{exchange} default to
    free ports and a unique exchange. C{log_path} keeps the log in that file
    (it survives L{cleanup}); C{own_session} starts the daemon in a session
    of its own (a terminal's Ctrl-C does not reach it); C{error_lines}
    limits how much of the log a start-up failure shows; C{listening}, a
    listening socket of the caller's, is passed as systemd's socket
    activation would (descriptor 3, C{LISTEN_FDS}, C{LISTEN_PID} the daemon's);
    C{cpus}, the CPUs the daemon may run on (a benchmark gives it a core of
    its own), is set as soon as it is spawned.
    """

    def __init__(
        self,
        env: Mapping[str, str | None] | None = None,
        args: list[str] | None = None,
        *,
        port: int | None = None,
        metrics_port: int | None = None,
        exchange: str | None = None,
        log_path: Path | None = None,
        own_session: bool = False,
        error_lines: int | None = None,
        listening: socket.socket | None = None,
        cpus: set[int] | None = None,
    ) -> None:
        self.cpus = cpus
        self.port = port if port is not None else free_port()
        self.metrics_port = metrics_port if metrics_port is not None else free_port()
        self.exchange = exchange if exchange is not None else f"peatio-ws-test.{uuid.uuid4().hex[:12]}"
        merged: dict[str, str | None] = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "JWT_PUBLIC_KEY": public_key_b64(rsa_key()),
            "WEBSOCKET_HOST": "127.0.0.1",
            "WEBSOCKET_PORT": str(self.port),
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": str(self.metrics_port),
            "RABBITMQ_EVENTS_EXCHANGE": self.exchange,
            "RABBITMQ_UNBIND_DELAY": "0.5",
            "NOTIFY_SOCKET": None,
        }
        merged.update(env or {})
        self.env = {k: v for k, v in merged.items() if v is not None}
        self.metrics_host = loopback(self.env.get("METRICS_HOST", "127.0.0.1"))
        self.args = args or []
        self.listening = listening
        if listening is not None:
            self.env.update(LISTEN_FDS="1", LISTEN_FDNAMES="websocket")
        self.own_session = own_session
        self.error_lines = error_lines
        self.keep_log = log_path is not None
        if log_path is None:
            self._log: IO[bytes] = tempfile.NamedTemporaryFile(  # noqa: SIM115
                prefix="peatio-ws-daemon-", suffix=".log", delete=False
            )
            self.log_path = Path(self._log.name)
        else:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = log_path.open("wb")
            self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int:
        """The daemon's process id (once started)."""
        assert self.process is not None, "the daemon was not started"
        return self.process.pid

    def start(self, timeout: float = 30.0, wait_healthy: bool = True) -> DaemonProcess:
        """Start it and wait until /health says every component is up (or, unless C{wait_healthy}, answers)."""
        command = [*_twistd(), "-n", "--pidfile=", "peatio-ws", *self.args]
        passed: tuple[int, ...] = ()
        if self.listening is not None:
            # As systemd does: the socket as descriptor 3, LISTEN_PID the daemon's own (the wrapper execs it).
            fd = self.listening.fileno()
            passed = (fd,)
            command = [sys.executable, "-c", _AS_SYSTEMD_PASSES, str(fd), *command]
        self.process = subprocess.Popen(
            command,
            cwd=str(REPO),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=self.own_session,
            pass_fds=passed,
        )
        if self.cpus:
            # Before its imports are done; threads it starts later inherit it.
            os.sched_setaffinity(self.process.pid, self.cpus)
        last: list[Any] = ["no answer"]

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the daemon exited with status {self.process.returncode}:\n{self.tail()}")
            try:
                status, last[0] = self.health()
            except OSError:
                return False
            return status == 200 or not wait_healthy

        try:
            until_blocking(ready, timeout, "the daemon to be healthy")
        except AssertionError:
            self.stop()
            why = f"the daemon was not healthy within {timeout:.0f} s ({last[0]})"
            raise RuntimeError(f"{why}:\n{self.tail()}") from None
        return self

    def exited(self) -> int | None:
        """The daemon's exit status, or None while it runs (or before it started)."""
        return None if self.process is None else self.process.poll()

    def health(self) -> tuple[int, Any]:
        """GET /health: (status, JSON body)."""
        return self.get("/health")

    def get(self, path: str) -> tuple[int, Any]:
        """GET C{path} on the monitoring port: (status, JSON body or text)."""
        url = f"http://{self.metrics_host}:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as e:
            raw = e.read()
            status = e.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode("utf-8", "replace")

    def metrics(self) -> str:
        return str(self.get("/metrics")[1])

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (clients get close code 1001), then wait (bounded); SIGKILL if it hangs. The exit status."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise RuntimeError(f"the daemon did not stop within {timeout:.0f} s; killed:\n{self.tail()}") from None

    def log_text(self) -> str:
        """The log as written so far (info lines reach it in batches: L{wait_log})."""
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, *texts: str, seconds: float = 10.0) -> str:
        """
        The log once it holds each of C{texts}: the daemon writes its info
        lines in batches, up to L{peatio_ws.logs.FLUSH_INTERVAL} after they
        are logged (warnings at once), so a line about what a client has
        just seen may not be there yet.
        """
        until_blocking(
            lambda: all(text in self.log_text() for text in texts),
            seconds,
            f"{', '.join(map(repr, texts))} in the daemon's log",
            interval=0.02,
        )
        return self.log_text()

    def tail(self, lines: int | None = None) -> str:
        """The last C{lines} lines of the log (default: C{error_lines}; None: all of it)."""
        lines = lines if lines is not None else self.error_lines
        try:
            text = self.log_text()
        except (OSError, ValueError):
            return ""
        return text if lines is None else "\n".join(text.splitlines()[-lines:])

    def cleanup(self) -> None:
        """Stop it, close the log, and delete it unless it was given a C{log_path}."""
        try:
            self.stop()
        finally:
            self._log.close()
            if not self.keep_log:
                self.log_path.unlink(missing_ok=True)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m peatio_ws.cli ARGS`` from the checkout."""
    return subprocess.run(
        [sys.executable, "-m", "peatio_ws.cli", *args],
        cwd=str(REPO),
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
