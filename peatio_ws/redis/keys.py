# -*- test-case-name: tests.unit.test_redis_keys -*-
"""
What peatio-ws keeps in Redis and says on it (SPEC section 5): pure data,
no I/O, no Twisted.

  - a key C{peatio-ws:revoked:<jti>} (any type, any value, usually with a
    TTL) makes a token with that C{jti} fail to authenticate (L{revoked_key});
  - a message on channel C{peatio-ws:revocations} (L{REVOCATIONS_CHANNEL}),
    C{{"jti": "..."}} or C{{"uid": "..."}}, ends the matching live sessions
    on every node now (L{revocation_message} writes one,
    L{parse_revocation} reads one).
"""

from __future__ import annotations

import json

__all__ = ["REVOCATIONS_CHANNEL", "REVOKED_KEY_PREFIX", "parse_revocation", "revocation_message", "revoked_key"]

REVOKED_KEY_PREFIX = "peatio-ws:revoked:"
REVOCATIONS_CHANNEL = "peatio-ws:revocations"


def revoked_key(jti: str) -> str:
    """The key whose existence revokes token C{jti}."""
    return REVOKED_KEY_PREFIX + jti


def revocation_message(*, jti: str | None = None, uid: str | None = None) -> str:
    """The channel message that ends the live sessions of C{jti} or C{uid}."""
    if (jti is None) == (uid is None):
        raise ValueError("name exactly one of jti and uid")
    return json.dumps({"jti": jti} if jti is not None else {"uid": uid}, separators=(",", ":"))


def parse_revocation(payload: bytes | str) -> list[tuple[str, str]]:
    """
    Read a message from the revocations channel: a JSON object with a
    non-blank string C{jti} and/or C{uid} (other keys are ignored, so
    producers may add a reason or a timestamp).

    @return: C{("jti", value)} and/or C{("uid", value)} pairs.
    @raise ValueError: with a short reason, for anything else.
    """
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("not UTF-8") from None
    if not isinstance(payload, str):
        raise ValueError("not text")
    try:
        data = json.loads(payload)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    found = []
    for by in ("jti", "uid"):
        if by not in data:
            continue
        value = data[by]
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{by} is not a non-blank string")
        found.append((by, value))
    if not found:
        raise ValueError("names neither jti nor uid")
    return found
