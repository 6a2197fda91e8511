"""
Waiting, bounded: every wait of the suites goes through here and fails
naming what did not happen. Nothing here measures elapsed time for an
assertion.

L{until} and L{sleep} run on the reactor (inside trial tests); L{within}
bounds one Deferred; L{until_blocking} is for code without a running reactor
(starting a daemon, synchronous set-ups).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.task import deferLater

__all__ = ["bounded", "sleep", "until", "until_blocking", "within"]


async def sleep(seconds: float) -> None:
    """Let the reactor run for C{seconds}."""
    await deferLater(reactor, seconds, lambda: None)


def bounded(d: Deferred[Any], seconds: float) -> Deferred[Any]:
    """C{d} with a deadline on the real reactor (it fails with L{DeferredTimeout} after C{seconds})."""
    return d.addTimeout(seconds, reactor)


async def within(d: Deferred[Any], seconds: float, what: str) -> Any:
    """The result of C{d}, or a test failure naming C{what} after C{seconds}."""
    try:
        return await bounded(d, seconds)
    except DeferredTimeout:
        raise AssertionError(f"timed out after {seconds} s waiting for {what}") from None


async def until(condition: Callable[[], Any], seconds: float, what: str, interval: float = 0.02) -> None:
    """
    Poll C{condition} (a plain function, or one returning an awaitable)
    every C{interval} seconds until it holds; fail naming C{what} after
    C{seconds}.
    """
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await sleep(interval)


def until_blocking(condition: Callable[[], Any], seconds: float, what: str, interval: float = 0.1) -> None:
    """L{until} without a reactor: blocks the calling thread between polls."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(interval)
