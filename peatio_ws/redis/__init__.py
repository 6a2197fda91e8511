# -*- test-case-name: tests.unit.test_redis,tests.unit.test_redis_keys,tests.integration.test_redis_server -*-
"""
Token revocation through Redis (SPEC section 5).

  - L{keys <peatio_ws.redis.keys>}: the revoked key and the channel message
    format (pure data);
  - L{service <peatio_ws.redis.service>}: L{RevocationService}, the daemon's
    part (connect, subscribe, check, health probe, outage policy, re-check);
  - L{client <peatio_ws.redis.client>}: L{connect_client}, one connection
    for C{peatio-ws revoke} and the tests;
  - L{endpoint <peatio_ws.redis.endpoint>}: where Redis is (TCP/TLS
    endpoint, the address for logs);
  - C{_txredisapi}: the only module that touches txredisapi, and why.

Code imports the names below from here.
"""

from peatio_ws.redis.client import RedisClient, RedisUnavailable, connect_client
from peatio_ws.redis.keys import (
    REVOCATIONS_CHANNEL,
    REVOKED_KEY_PREFIX,
    parse_revocation,
    revocation_message,
    revoked_key,
)
from peatio_ws.redis.service import RevocationService, RevocationUnavailable

__all__ = [
    "REVOCATIONS_CHANNEL",
    "REVOKED_KEY_PREFIX",
    "RedisClient",
    "RedisUnavailable",
    "RevocationService",
    "RevocationUnavailable",
    "connect_client",
    "parse_revocation",
    "revocation_message",
    "revoked_key",
]
