"""
The baseline the benchmark compares peatio-ws with (see L{bench.baseline.bridge}),
and L{running}, the one way to start it for a measurement.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tests.support.daemon import free_port
from tests.support.paths import REPO

__all__ = ["Bridge", "running"]


@dataclass(frozen=True)
class Bridge:
    """A running baseline bridge: where it listens, and its PID (for its CPU)."""

    port: int
    pid: int


@contextlib.contextmanager
def running(exchange: str, public_key: str, ready_timeout: float = 30.0) -> Iterator[Bridge]:
    """
    A baseline bridge on a free port of 127.0.0.1, consuming C{exchange}
    and checking tokens against C{public_key} (JWT_PUBLIC_KEY's form), from
    its C{READY} line until the block ends; then stopped by its PID (SIGTERM,
    then SIGKILL after 10 s).
    """
    port = free_port()
    args = [sys.executable, "-m", "bench.baseline.bridge", "--port", str(port), "--exchange", exchange]
    proc = subprocess.Popen(
        [*args, "--public-key", public_key],
        cwd=str(REPO),
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + ready_timeout
        line = b""
        while time.monotonic() < deadline and b"READY" not in line:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = proc.stdout.readline()
            if not line:
                break
        if b"READY" not in line:
            raise RuntimeError(f"the baseline bridge did not start: {line!r}")
        yield Bridge(port, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
