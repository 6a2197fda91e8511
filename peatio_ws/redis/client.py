# -*- test-case-name: tests.integration.test_redis_server -*-
"""
A one-shot Redis client for short-lived tools: C{peatio-ws revoke} and the
integration tests (which is why it is not folded into the CLI).

One connection, no reconnecting, every failure a one-line reason. The
daemon's long-lived connections are L{peatio_ws.redis.service}'s.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from peatio_ws.config import RedisAddress
from peatio_ws.redis._txredisapi import ConnectFailed, OneShot, connect_once
from peatio_ws.redis.endpoint import CONNECT_TIMEOUT, client_endpoint, describe

__all__ = ["RedisClient", "RedisUnavailable", "connect_client"]


class RedisUnavailable(Exception):
    """A one-shot connection to Redis could not be made; C{str()} is one line."""


class RedisClient:
    """One connection that does not reconnect: for short-lived tools."""

    def __init__(self, connection: OneShot) -> None:
        self._connection = connection
        self._call = connection.link.command

    def set(self, key: str, value: str, ttl: int | None = None) -> Deferred[Any]:
        """SET, with EX C{ttl} seconds when given."""
        return self._call("SET", key, value, *(("EX", ttl) if ttl else ()))

    def publish(self, channel: str, message: str) -> Deferred[int]:
        """PUBLISH; fires with how many subscribers received it."""
        return self._call("PUBLISH", channel, message)

    def exists(self, *keys: str) -> Deferred[int]:
        return self._call("EXISTS", *keys)

    def ttl(self, key: str) -> Deferred[int]:
        return self._call("TTL", key)

    def delete(self, *keys: str) -> Deferred[int]:
        return self._call("DEL", *keys)

    def close(self) -> Deferred[None]:
        return self._connection.close()


async def connect_client(address: RedisAddress, reactor: Any = None, timeout: float = CONNECT_TIMEOUT) -> RedisClient:
    """
    Connect once (AUTH and SELECT included) within C{timeout} seconds.

    @raise RedisUnavailable: with a one-line reason.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    try:
        connection = await connect_once(address, client_endpoint(reactor, address), reactor, timeout)
    except ConnectFailed as e:
        raise RedisUnavailable(f"cannot connect to Redis at {describe(address)}: {e}") from None
    return RedisClient(connection)
