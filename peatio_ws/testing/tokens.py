"""
Barong-shaped session tokens: the one claim builder (L{barong_claims}),
signed tokens (L{make_token}) and hand-assembled ones (L{craft_token}).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Final

import jwt

from peatio_ws.testing.keys import PrivateKey, algorithm_for, b64url, rsa_key

__all__ = ["OMIT", "barong_claims", "craft_token", "make_token"]


class _Omit:
    """The type of L{OMIT}."""

    def __repr__(self) -> str:
        return "OMIT"


#: Pass as a claim's value to L{barong_claims} or L{make_token} to leave that claim out.
OMIT: Final = _Omit()


def barong_claims(*, now: float | None = None, lifetime: float = 3600, **overrides: Any) -> dict[str, Any]:
    """
    The claims of a Barong session token: C{sub="session"}, a fresh C{jti},
    C{uid="ID1A2B3C4D5E"}, C{iat=now}, C{exp=now + lifetime},
    C{aud=["peatio"]}, C{iss="barong"}, C{email}, C{role="member"},
    C{level=3}, C{state="active"}. C{now} defaults to the wall clock.
    Keyword arguments replace claims; a value of L{OMIT} removes the claim.
    """
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": "session",
        "jti": uuid.uuid4().hex,
        "uid": "ID1A2B3C4D5E",
        "iat": issued,
        "exp": int(issued + lifetime),
        "aud": ["peatio"],
        "iss": "barong",
        "email": "member@example.com",
        "role": "member",
        "level": 3,
        "state": "active",
    }
    for name, value in overrides.items():
        if value is OMIT:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def craft_token(header: dict[str, Any], payload: dict[str, Any] | str | bytes, signature: bytes = b"") -> str:
    """
    Assemble a compact JWS by hand, signed or not: C{header} and a dict
    C{payload} are JSON-encoded; a str/bytes C{payload} is used as it is.
    """
    if isinstance(payload, dict):
        body = json.dumps(payload).encode("utf-8")
    elif isinstance(payload, str):
        body = payload.encode("utf-8")
    else:
        body = payload
    return ".".join([b64url(json.dumps(header).encode("utf-8")), b64url(body), b64url(signature)])


def make_token(
    private_key: PrivateKey | None = None,
    *,
    algorithm: str | None = None,
    headers: dict[str, Any] | None = None,
    now: float | None = None,
    lifetime: float = 3600,
    **claims_overrides: Any,
) -> str:
    """
    A Barong-shaped session token (the claims of L{barong_claims}) signed
    with C{private_key} (default: L{rsa_key}). C{now} defaults to the wall
    clock (pass C{clock.seconds()} with a L{twisted.internet.task.Clock}).
    Keyword arguments replace claims; a value of L{OMIT} removes the claim.
    C{algorithm} defaults to L{algorithm_for} the key; C{headers} adds JOSE
    header fields.
    """
    key = private_key if private_key is not None else rsa_key()
    claims = barong_claims(now=now, lifetime=lifetime, **claims_overrides)
    # PyJWS, not jwt.encode: the latter refuses odd claims (a non-string iss, say)
    # that tests need to send.
    payload = json.dumps(claims, separators=(",", ":")).encode("utf-8")
    return jwt.PyJWS().encode(payload, key, algorithm=algorithm or algorithm_for(key), headers=headers)
