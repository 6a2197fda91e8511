"""
Helpers for tests against the real Redis on 127.0.0.1:6379.

These tests fail, never skip, when Redis is not there: the project's
machines and CI run it, so its absence is a broken environment.

Stopping Redis is part of one test; L{ensure_running} (registered with
C{addCleanup} before the stop) brings it back with this machine's standard
command whatever happens, so no later test finds it down.
"""

from __future__ import annotations

import os
import subprocess
import uuid

from twisted.internet.utils import getProcessOutputAndValue

from peatio_ws.config import RedisAddress
from tests.support.paths import REPO
from tests.support.waiting import bounded, sleep, until, until_blocking
from tests.support.waiting import until as wait_for

__all__ = [
    "ADDRESS",
    "HOST",
    "PORT",
    "REDIS_URL",
    "START_COMMAND",
    "bounded",
    "cli",
    "cli_env",
    "ensure_running",
    "ping",
    "ping_sync",
    "require_redis",
    "run",
    "shutdown",
    "sleep",
    "start",
    "unique",
    "wait_for",
]

HOST = "127.0.0.1"
PORT = 6379
ADDRESS = RedisAddress(HOST, PORT, 0, None, False)
REDIS_URL = f"redis://{HOST}:{PORT}/0"

REDIS_CLI = "redis-cli"
#: This machine's standard way to start Redis (no persistence, so a restart
#: starts empty).
START_COMMAND = [
    "redis-server",
    "--daemonize", "yes",
    "--bind", "127.0.0.1", "-::1",
    "--port", str(PORT),
    "--save", "",
    "--appendonly", "no",
    "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


def unique(prefix: str) -> str:
    """A jti, uid or key part no other test (or run) uses."""
    return f"{prefix}-{uuid.uuid4().hex}"


def cli_env(**overrides: str) -> dict[str, str]:
    """The environment for a child process running this checkout against local Redis."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["REDIS_URL"] = REDIS_URL
    env.update(overrides)
    return env


# -- synchronous (setUp checks and cleanups) ------------------------------------


def ping_sync(timeout: float = 2.0) -> bool:
    """True when Redis answers PONG."""
    try:
        result = subprocess.run(
            [REDIS_CLI, "-h", HOST, "-p", str(PORT), "ping"], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.stdout.strip() == "PONG"


def require_redis() -> None:
    """Fail (not skip) with a clear message when Redis is not running."""
    if not ping_sync():
        raise AssertionError(f"Redis is not answering on {HOST}:{PORT}; these tests need it running")


def ensure_running(timeout: float = 15.0) -> None:
    """Start Redis with the standard command unless it answers; wait for PONG."""
    if ping_sync():
        return
    subprocess.run(START_COMMAND, check=False, capture_output=True, timeout=timeout)
    until_blocking(ping_sync, timeout, f"Redis to come back on {HOST}:{PORT}")


def cli(*args: str) -> str:
    """Run redis-cli and return its output (for checks independent of txredisapi)."""
    result = subprocess.run(
        [REDIS_CLI, "-h", HOST, "-p", str(PORT), *args], capture_output=True, text=True, timeout=5, check=True
    )
    return result.stdout.strip()


# -- asynchronous (inside tests, on the real reactor) ----------------------------


async def run(executable: str, *args: str, env: dict[str, str] | None = None) -> tuple[str, str, int]:
    """Run a child process without blocking the reactor: (stdout, stderr, exit code)."""
    d = getProcessOutputAndValue(executable, args, env=env if env is not None else dict(os.environ))
    out, err, code = await bounded(d, 60)
    return out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), code


async def ping() -> bool:
    out, _, _ = await run(REDIS_CLI, "-h", HOST, "-p", str(PORT), "ping")
    return out.strip() == "PONG"


async def shutdown() -> None:
    """Stop Redis (SHUTDOWN NOSAVE) and wait until it no longer answers."""
    await run(REDIS_CLI, "-h", HOST, "-p", str(PORT), "shutdown", "nosave")

    async def down() -> bool:
        return not await ping()

    await until(down, 10, "Redis to stop answering after SHUTDOWN NOSAVE", interval=0.05)


async def start(timeout: float = 15.0) -> None:
    """Start Redis with the standard command and wait for PONG."""
    out, err, code = await run(START_COMMAND[0], *START_COMMAND[1:])
    if code != 0:
        raise AssertionError(f"redis-server failed to start ({code}): {out} {err}")
    await until(ping, timeout, "Redis to answer PONG after starting", interval=0.05)
