"""
Run the real daemon (``twistd -n peatio-ws``) in a child process for
end-to-end tests, benchmarks and fault tests.

Every wait is bounded; the log is kept in a file and shown when something
goes wrong, so a failure says why.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from peatio_ws.testing import public_key_b64, rsa_key

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DaemonProcess:
    """
    One ``twistd -n peatio-ws`` child on free ports, with a unique events
    exchange unless told otherwise.
    """

    def __init__(self, env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.exchange = f"peatio-ws-test.{uuid.uuid4().hex[:12]}"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "JWT_PUBLIC_KEY": public_key_b64(rsa_key()),
            "WEBSOCKET_HOST": "127.0.0.1",
            "WEBSOCKET_PORT": str(self.port),
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": str(self.metrics_port),
            "RABBITMQ_EVENTS_EXCHANGE": self.exchange,
            "RABBITMQ_UNBIND_DELAY": "0.5",
        }
        self.env.pop("NOTIFY_SOCKET", None)
        if env:
            self.env.update(env)
        self.args = args or []
        self._log = tempfile.NamedTemporaryFile(prefix="peatio-ws-daemon-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 30.0, wait_healthy: bool = True) -> DaemonProcess:
        """Start it and wait until /health says every component is up."""
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "twistd"), "-n", "--pidfile=", "peatio-ws", *self.args],
            cwd=str(REPO),
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                status, _ = self.health()
            except OSError:
                time.sleep(0.1)
                continue
            if status == 200 or not wait_healthy:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"daemon not healthy within {timeout}s:\n{self.log_text()}")

    def health(self) -> tuple[int, Any]:
        """GET /health: (status, JSON body)."""
        return self.get("/health")

    def get(self, path: str) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
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
        """SIGTERM, then wait (bounded); SIGKILL if it hangs. Returns the exit status."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise RuntimeError(f"daemon did not stop within {timeout}s:\n{self.log_text()}") from None

    def log_text(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(encoding="utf-8", errors="replace")

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)


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
