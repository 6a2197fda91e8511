"""
The baseline the benchmark compares peatio-ws with (see L{bench.baseline.bridge}),
and the one way to run it for a measurement: L{BridgeProcess} (what the storm
restarts, shaped like L{tests.support.daemon.DaemonProcess} where the storm
uses one) and L{running}.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.daemon import free_port, stop_child
from tests.support.paths import REPO

__all__ = ["Bridge", "BridgeProcess", "running"]


class BridgeProcess:
    """
    One C{python -m bench.baseline.bridge} child on C{port}, consuming
    C{exchange}, checking tokens against C{public_key} (JWT_PUBLIC_KEY's
    form); its output goes to a temporary file (L{log_text}). It has no
    monitoring port: L{metrics} raises C{OSError}, and L{has_metrics} says so.
    """

    has_metrics = False

    def __init__(self, port: int, exchange: str, public_key: str) -> None:
        self.port = port
        self.args = ["--port", str(port), "--exchange", exchange, "--public-key", public_key]
        self.process: subprocess.Popen[bytes] | None = None
        fd, name = tempfile.mkstemp(prefix="peatio-ws-bridge-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)

    @property
    def pid(self) -> int:
        assert self.process is not None, "the bridge was not started"
        return self.process.pid

    def start(self, timeout: float = 30.0) -> BridgeProcess:
        """Start it and wait (bounded) for its READY line: it consumes and listens."""
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.baseline.bridge", *self.args],
                cwd=str(REPO),
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while b"READY" not in self.log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                text = self.log_text()
                self.cleanup()
                raise RuntimeError(f"the baseline bridge did not start: {text[-2000:]}")
            time.sleep(0.05)
        return self

    def metrics(self) -> str:
        raise OSError("the baseline bridge has no /metrics")

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def cleanup(self) -> None:
        """Stop it by its PID (SIGTERM, SIGKILL after 10 s) and delete its log."""
        try:
            if self.process is not None:
                stop_child(self.process)
        finally:
            self.log_path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Bridge:
    """A running baseline bridge: where it listens, and its PID (for its CPU)."""

    port: int
    pid: int


@contextlib.contextmanager
def running(exchange: str, public_key: str, ready_timeout: float = 30.0) -> Iterator[Bridge]:
    """A baseline bridge on a free port of 127.0.0.1 (L{BridgeProcess}) for the block, then stopped."""
    bridge = BridgeProcess(free_port(), exchange, public_key).start(ready_timeout)
    try:
        yield Bridge(bridge.port, bridge.pid)
    finally:
        bridge.cleanup()
