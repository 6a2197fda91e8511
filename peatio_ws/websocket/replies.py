# -*- test-case-name: tests.unit.test_protocol -*-
"""
The exact texts and codes the server sends (SPEC §3): one place, so a test
can compare them byte for byte and a dialect never spells one differently.
"""

from __future__ import annotations

import json

__all__ = ["CloseCode", "Reply"]


def _message(kind: str, text: str) -> bytes:
    return json.dumps({kind: {"message": text}}, separators=(",", ":")).encode("utf-8")


class Reply:
    """The exact server messages of SPEC §3 (compact JSON, one key each)."""

    AUTHENTICATED = _message("success", "Authenticated.")
    TOKEN_TYPE = _message("error", "Token type is not provided or invalid.")
    AUTH_FAILED = _message("error", "Authentication failed.")
    HANDLING_ERROR = _message("error", "Error while handling message.")
    TOKEN_EXPIRED = _message("error", "Token expired.")
    TOO_MANY_ATTEMPTS = _message("error", "Too many authentication attempts.")


class CloseCode:
    """Close codes the server sends (SPEC §3.4, docs/protocol.md §5)."""

    GOING_AWAY = 1001
    #: Never sent: what the close line says when no close code was given (RFC 6455 §7.1.5).
    NO_STATUS = 1005
    #: Never sent: what the close line says of a connection that ended without a close frame.
    ABNORMAL = 1006
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    #: Events may have been lost (SPEC §8): reconnect, then resync from the REST API.
    SERVICE_RESTART = 1012
    TOKEN_EXPIRED = 4001
    AUTH_TIMEOUT = 4002
    REVOKED = 4003
    SLOW_CONSUMER = 4008
    TOO_MANY_ATTEMPTS = 4029
