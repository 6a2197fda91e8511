"""
Reusable helpers for peatio-ws tests: key pairs, Barong-shaped tokens and
ready-made L{Settings}.

Generating a 2048-bit RSA key takes a noticeable fraction of a second, so the
default key is generated once per process and cached (L{rsa_key}); use
L{generate_rsa_key} when a test needs a second, different key.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import replace
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from peatio_ws.config import Settings

__all__ = [
    "OMIT",
    "FakeConnection",
    "MembershipRecorder",
    "PrivateKey",
    "algorithm_for",
    "b64url",
    "craft_token",
    "generate_ec_key",
    "generate_ed25519_key",
    "generate_rsa_key",
    "make_token",
    "private_key_pem",
    "public_key_b64",
    "public_key_pem",
    "rsa_key",
    "settings_for_tests",
]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
AnyKey = PrivateKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


class _Omit:
    """The type of L{OMIT}."""

    def __repr__(self) -> str:
        return "OMIT"


#: Pass as a claim's value to L{make_token} to leave that claim out.
OMIT: Final = _Omit()

_CURVE_ALGORITHMS = {"secp256r1": "ES256", "secp256k1": "ES256K", "secp384r1": "ES384", "secp521r1": "ES512"}

_cached_rsa_key: rsa.RSAPrivateKey | None = None


def generate_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """A new RSA private key (not cached)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def rsa_key() -> rsa.RSAPrivateKey:
    """The process-wide 2048-bit RSA private key the other helpers default to."""
    global _cached_rsa_key
    if _cached_rsa_key is None:
        _cached_rsa_key = generate_rsa_key()
    return _cached_rsa_key


def generate_ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    """A new EC private key, on P-256 unless C{curve} says otherwise."""
    return ec.generate_private_key(curve if curve is not None else ec.SECP256R1())


def generate_ed25519_key() -> ed25519.Ed25519PrivateKey:
    """A new Ed25519 private key."""
    return ed25519.Ed25519PrivateKey.generate()


def _public(key: AnyKey) -> Any:
    if isinstance(
        key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)
    ):
        return key.public_key()
    return key


def public_key_pem(key: AnyKey) -> str:
    """The PEM (SubjectPublicKeyInfo) text of C{key}'s public half."""
    return (
        _public(key)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def public_key_b64(key: AnyKey, *, padding: bool = True) -> str:
    """
    C{key}'s public half as JWT_PUBLIC_KEY wants it: URL-safe base64 of the
    PEM text (Peatio's convention), with or without C{=} padding.
    """
    text = b64url(public_key_pem(key).encode("ascii"))
    if padding:
        text += "=" * (-len(text) % 4)
    return text


def private_key_pem(key: PrivateKey) -> str:
    """The unencrypted PKCS#8 PEM text of C{key}."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def algorithm_for(key: PrivateKey) -> str:
    """The natural JWS algorithm for C{key}: RS256, ES256/ES384/…, or EdDSA."""
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return _CURVE_ALGORITHMS[key.curve.name]
    return "EdDSA"


def b64url(data: bytes) -> str:
    """URL-safe base64 without padding, as JWS segments are encoded."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


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
    A Barong-shaped session token signed with C{private_key} (default:
    L{rsa_key}).

    The claims are C{sub="session"}, a fresh C{jti}, C{uid="ID1A2B3C4D5E"},
    C{iat=now}, C{exp=now + lifetime}, C{aud=["peatio"]}, C{iss="barong"},
    C{email}, C{role="member"}, C{level=3}, C{state="active"}; C{now}
    defaults to the wall clock (pass C{clock.seconds()} with a
    L{twisted.internet.task.Clock}). Keyword arguments replace claims; a value
    of L{OMIT} removes the claim. C{algorithm} defaults to L{algorithm_for}
    the key; C{headers} adds JOSE header fields.
    """
    key = private_key if private_key is not None else rsa_key()
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
    for name, value in claims_overrides.items():
        if value is OMIT:
            claims.pop(name, None)
        else:
            claims[name] = value
    # PyJWS, not jwt.encode: the latter refuses odd claims (a non-string iss, say)
    # that tests need to send.
    payload = json.dumps(claims, separators=(",", ":")).encode("utf-8")
    return jwt.PyJWS().encode(payload, key, algorithm=algorithm or algorithm_for(key), headers=headers)


def settings_for_tests(**overrides: Any) -> Settings:
    """
    L{Settings} with its defaults, the public half of L{rsa_key} as
    C{jwt_public_key}, and C{overrides} (lower-case attribute names, already
    typed values: C{jwt_algorithm=("ES256",)}, not C{"ES256"}) applied.
    Nothing is validated.
    """
    settings = Settings(jwt_public_key=rsa_key().public_key())
    return replace(settings, **overrides) if overrides else settings


class MembershipRecorder:
    """A registry observer that records members joining and leaving, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def member_joined(self, uid: str) -> None:
        self.events.append(("joined", uid))

    def member_left(self, uid: str) -> None:
        self.events.append(("left", uid))


class FakeConnection:
    """
    A connection as the registry sees it: records the frames it is sent and
    how often it was revoked. C{accept=False} refuses frames (a closing or
    slow connection); C{on_send} is called with each frame before it is kept.
    """

    def __init__(self, conn_id: str, accept: bool = True, on_send: Any = None) -> None:
        self.conn_id = conn_id
        self.frames: list[bytes] = []
        self.revoked = 0
        self.accept = accept
        self.on_send = on_send

    def send_frame(self, frame: bytes) -> bool:
        if self.on_send is not None:
            self.on_send(frame)
        if self.accept:
            self.frames.append(frame)
        return self.accept

    def revoke(self) -> None:
        self.revoked += 1
