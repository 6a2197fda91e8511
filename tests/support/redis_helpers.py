"""
Helpers for tests against the real Redis on 127.0.0.1:6379.

These tests fail, never skip, when Redis is not there: the project's
machines and CI run it, so its absence is a broken environment.

Tests never stop or restart this Redis: a test that does runs a
redis-server of its own (L{tests.support.servers.PrivateRedis}).
"""

from __future__ import annotations

import os
import subprocess
import uuid

from twisted.internet.utils import getProcessOutputAndValue

from peatio_ws.config import RedisAddress
from tests.support.paths import REPO
from tests.support.waiting import bounded, sleep
from tests.support.waiting import until as wait_for

__all__ = [
    "ADDRESS",
    "HOST",
    "PORT",
    "REDIS_URL",
    "bounded",
    "cli",
    "cli_env",
    "ping_sync",
    "require_redis",
    "run",
    "sleep",
    "unique",
    "wait_for",
]

HOST = "127.0.0.1"
PORT = 6379
ADDRESS = RedisAddress(HOST, PORT, 0, None, False)
REDIS_URL = f"redis://{HOST}:{PORT}/0"

REDIS_CLI = "redis-cli"


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


# -- synchronous (setUp checks) ------------------------------------


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
