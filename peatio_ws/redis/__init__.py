# -*- test-case-name: tests.unit.test_redis,tests.integration.test_redis_server -*-
"""
Token revocation through Redis (SPEC section 5).

The daemon's part is L{RevocationService}; C{peatio-ws revoke} uses
L{connect_client}. Existing code imports these names from here.
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
