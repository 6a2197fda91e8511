# -*- test-case-name: tests.unit.test_redis_txredisapi -*-
"""
Where Redis is: the client endpoint for C{REDIS_URL}, its description for
logs, and an endpoint that reports failed connection attempts.

Twisted only: nothing here knows txredisapi.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure

from peatio_ws.config import RedisAddress

__all__ = ["CONNECT_TIMEOUT", "WatchedEndpoint", "client_endpoint", "describe"]

#: Seconds to open a TCP (and TLS) connection to Redis.
CONNECT_TIMEOUT = 5.0


def client_endpoint(reactor: Any, address: RedisAddress) -> Any:
    """TCP, or TLS with the server's certificate checked against the host name (rediss://)."""
    endpoint: Any = HostnameEndpoint(reactor, address.host, address.port, timeout=CONNECT_TIMEOUT)
    if address.tls:
        endpoint = wrapClientTLS(optionsForClientTLS(address.host), endpoint)
    return endpoint


def describe(address: RedisAddress) -> str:
    """host:port/db for logs; never the password."""
    scheme = "rediss" if address.tls else "redis"
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"{scheme}://{host}:{address.port}/{address.db}"


class WatchedEndpoint:
    """
    A client endpoint (duck-typed) that reports failed connection attempts,
    which ClientService keeps to itself.
    """

    def __init__(self, endpoint: Any, on_failure: Callable[[Failure], None]) -> None:
        self._endpoint = endpoint
        self._on_failure = on_failure

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        def failed(reason: Failure) -> Failure:
            if not reason.check(CancelledError):
                self._on_failure(reason)
            return reason

        return cast(Deferred[Any], self._endpoint.connect(protocolFactory)).addErrback(failed)
