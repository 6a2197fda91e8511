# -*- test-case-name: tests.unit.test_auth -*-
"""
Verify Barong session JWTs.

Only asymmetric algorithms are ever accepted, and only those configured in
JWT_ALGORITHM: never C{none}, and never HMAC (which would let anyone holding
the public key forge tokens). The key is loaded once, at start-up.

A token that verified is remembered by its SHA-256 (L{REMEMBERED_TOKENS}
at most), so a member reconnecting with it costs a hash, not a signature
check: only its expiry is checked again. Revocation is not the verifier's:
Redis is asked at every login.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from peatio_ws._pyjwt import verifying_jwt
from peatio_ws.uids import valid_uid

__all__ = [
    "REMEMBERED_TOKENS",
    "AuthError",
    "Claims",
    "SecondsClock",
    "TokenVerifier",
    "check_algorithm_names",
    "check_key_matches",
    "load_public_key",
]

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey

_EC_CURVES = {"ES256": "secp256r1", "ES256K": "secp256k1", "ES384": "secp384r1", "ES512": "secp521r1"}
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
ALLOWED_ALGORITHMS = _RSA_ALGORITHMS | frozenset(_EC_CURVES) | {"EdDSA"}


class SecondsClock(Protocol):
    """
    What the verifier needs of a clock: the reactor, or a L{twisted.internet.task.Clock}.
    (IReactorTime itself cannot be used as the annotation: without a zope plugin, mypy
    rejects its self-less methods and does not see Clock as providing it.)
    """

    def seconds(self) -> float: ...


class AuthError(Exception):
    """
    A token did not verify. C{reason} is a short machine-readable word for
    logs and metrics; clients only ever see "Authentication failed.".
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says about its member."""

    uid: str
    jti: str
    #: When the token stops being valid (C{exp} plus leeway), or None.
    expires_at: float | None
    email: str | None = None
    role: str | None = None
    level: Any = None
    state: str | None = None


def load_public_key(value: str) -> PublicKey:
    """
    Load JWT_PUBLIC_KEY: URL-safe base64 of a PEM public key (Peatio's
    convention). Plain PEM text is accepted too.

    @raise ValueError: with a one-line reason, for anything else, including
        a private key.
    """
    text = value.strip()
    if text.startswith("-----BEGIN"):
        pem = text.encode("ascii", "replace")
    else:
        try:
            pem = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise ValueError("is not URL-safe base64 of a PEM public key") from None
    if b"PRIVATE KEY" in pem:
        raise ValueError("is a private key; configure the public key only (never ship the private key)")
    try:
        key = serialization.load_pem_public_key(pem)
    except UnsupportedAlgorithm as e:
        raise ValueError(f"is a public key of an unsupported kind ({e})") from None
    except (ValueError, TypeError, AttributeError):
        raise ValueError("does not decode to a PEM public key") from None
    if not isinstance(
        key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)
    ):
        raise ValueError(f"has an unsupported key type {type(key).__name__}")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise ValueError(f"is a {key.key_size}-bit RSA key; at least 2048 bits are required")
    return key


def check_algorithm_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """
    Validate JWT_ALGORITHM's names.

    @raise ValueError: empty, C{none}, HMAC, or unknown.
    """
    if not names:
        raise ValueError("must name at least one algorithm, e.g. RS256")
    for name in names:
        if name.lower() == "none":
            raise ValueError("'none' is never allowed: tokens must be signed")
        if name.upper().startswith("HS"):
            raise ValueError(f"{name} is not allowed: HMAC with a public key lets anyone forge tokens")
        if name not in ALLOWED_ALGORITHMS:
            raise ValueError(f"unknown algorithm {name!r}; use one of {', '.join(sorted(ALLOWED_ALGORITHMS))}")
    return names


def check_key_matches(key: PublicKey, names: tuple[str, ...]) -> None:
    """
    @raise ValueError: an algorithm cannot be used with the configured key.
    """
    for name in names:
        if name in _RSA_ALGORITHMS:
            ok = isinstance(key, rsa.RSAPublicKey)
        elif name in _EC_CURVES:
            ok = isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _EC_CURVES[name]
        else:
            ok = isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
        if not ok:
            raise ValueError(f"{name} does not fit the JWT_PUBLIC_KEY given ({_describe_key(key)})")


def _describe_key(key: PublicKey) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}-bit"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    return type(key).__name__.replace("PublicKey", "").lstrip("_")


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AuthError(f"bad_{name}")
    try:
        number = float(value)
    except OverflowError:
        raise AuthError(f"bad_{name}") from None
    # Python's json accepts NaN and Infinity; neither is a NumericDate.
    if not math.isfinite(number):
        raise AuthError(f"bad_{name}")
    return number


def _nonblank(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value.strip():
        raise AuthError(f"no_{name}")
    return value


def _optional_str(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) else None


_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]*={0,2}\.[A-Za-z0-9_-]*={0,2}\.[A-Za-z0-9_-]*={0,2}")

#: Distinct tokens whose claims a verifier remembers (the least recently
#: presented go first): more than one process's members, so that all of
#: them reconnecting at once (a load balancer's restart, a network blip)
#: are each verified without the signature. A remembered token costs ~140
#: bytes while its member is connected (the claims are shared), ~600 after.
REMEMBERED_TOKENS = 32_768


class TokenVerifier:
    """
    Checks a token's signature and claims. It is given exactly what it
    verifies with (the configuration maps to these in
    L{peatio_ws.config.Settings.token_verifier}); time comes from an
    injected clock so tests can move it.
    """

    def __init__(
        self,
        key: PublicKey,
        algorithms: Iterable[str],
        clock: SecondsClock,
        *,
        issuer: str | None = None,
        audience: Iterable[str] = (),
        leeways: Mapping[str, float] | None = None,
        remember: int = REMEMBERED_TOKENS,
    ) -> None:
        """
        @param leeways: seconds of clock leeway for C{exp}, C{nbf} and
            C{iat}; a claim not named has none.
        @param remember: how many distinct verified tokens to remember.
        """
        self._key = key
        self._algorithms = list(algorithms)
        self._issuer = issuer
        self._audience = frozenset(audience)
        leeways = leeways or {}
        self._leeway = {claim: float(leeways.get(claim, 0.0)) for claim in ("exp", "nbf", "iat")}
        self._clock = clock
        #: SHA-256 of a token whose signature and claims verified -> its claims.
        self._remembered: OrderedDict[bytes, Claims] = OrderedDict()
        self._remember = remember
        self._jwt = verifying_jwt(
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
                "verify_sub": False,
                "verify_jti": False,
                "require": [],
            }
        )

    @property
    def settings_digest(self) -> str:
        """
        SHA-256 (hex) of what decides whether a token verifies and what its
        claims are: the key, the algorithms, the issuer, the audience and the
        leeways. Tokens remembered under other settings are not taken over.
        """
        key = self._key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        described = repr(
            (sorted(self._algorithms), self._issuer, sorted(self._audience), sorted(self._leeway.items()))
        )
        return hashlib.sha256(key + b"\0" + described.encode("utf-8")).hexdigest()

    def remembered(self) -> list[tuple[bytes, Claims]]:
        """The tokens remembered and not expired, by digest, the least recently presented first."""
        now = self._clock.seconds()
        return [
            (digest, claims)
            for digest, claims in self._remembered.items()
            if claims.expires_at is None or now < claims.expires_at
        ]

    def adopt(self, remembered: Iterable[tuple[bytes, Claims]]) -> int:
        """
        Remember tokens another process verified under the same settings
        (L{settings_digest}; the caller checks), the least recent first, as
        L{remembered} gives them; the expired are left out. How many are
        remembered now.
        """
        now = self._clock.seconds()
        table = self._remembered
        for digest, claims in remembered:
            if claims.expires_at is None or now < claims.expires_at:
                table[digest] = claims
                table.move_to_end(digest)
        while len(table) > self._remember:
            table.popitem(last=False)
        return len(table)

    def verify(self, token: str) -> Claims:
        """
        @raise AuthError: the token does not verify; C{reason} says why.
        """
        # A compact JWS: three base64url segments. Said here, not left to
        # PyJWT, whose checks differ between versions (junk characters were
        # accepted before 2.13).
        if _COMPACT_JWS.fullmatch(token) is None:
            raise AuthError("malformed")
        # A token seen before is not verified again: its signature, header and
        # claims are what they were (the digest covers every byte), and so is
        # every check but the one time can undo. Revocation is Redis's, asked
        # on every connection all the same (L{peatio_ws.websocket.tokens}).
        digest = hashlib.sha256(token.encode("ascii")).digest()
        remembered = self._remembered.get(digest)
        if remembered is not None:
            if remembered.expires_at is not None and self._clock.seconds() >= remembered.expires_at:
                del self._remembered[digest]
                raise AuthError("expired")
            self._remembered.move_to_end(digest)
            # A Claims of its own: a connection tells its authentications apart by identity.
            return Claims(
                remembered.uid,
                remembered.jti,
                remembered.expires_at,
                remembered.email,
                remembered.role,
                remembered.level,
                remembered.state,
            )
        claims = self._verified(token)
        if self._remember > 0:
            self._remembered[digest] = claims
            if len(self._remembered) > self._remember:
                self._remembered.popitem(last=False)
        return claims

    def _verified(self, token: str) -> Claims:
        """The claims of a compact JWS not seen before: PyJWT checks its signature, then the claims are checked."""
        try:
            claims = self._jwt.decode(token, self._key, algorithms=self._algorithms)
        except jwt.InvalidAlgorithmError:
            raise AuthError("algorithm") from None
        except jwt.InvalidSignatureError:
            raise AuthError("signature") from None
        except jwt.DecodeError:
            raise AuthError("malformed") from None
        except Exception:
            # Any other failure inside PyJWT or cryptography (a key of the
            # wrong type for the header's algorithm, say) is a failed token.
            raise AuthError("invalid") from None
        if not isinstance(claims, dict):
            raise AuthError("malformed")
        now = self._clock.seconds()
        exp = _number(claims, "exp")
        # RFC 7519 4.1.4: valid only *before* exp (plus leeway).
        if exp is not None and now >= exp + self._leeway["exp"]:
            raise AuthError("expired")
        nbf = _number(claims, "nbf")
        if nbf is not None and now < nbf - self._leeway["nbf"]:
            raise AuthError("not_yet_valid")
        iat = _number(claims, "iat")
        if iat is not None and iat > now + self._leeway["iat"]:
            raise AuthError("issued_in_future")
        if claims.get("sub") != "session":
            raise AuthError("subject")
        jti = _nonblank(claims, "jti")
        if self._issuer is not None and claims.get("iss") != self._issuer:
            raise AuthError("issuer")
        if self._audience:
            aud = claims.get("aud")
            given = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            # Items may be anything JSON (unhashable dicts too): compare strings only.
            if not self._audience.intersection(a for a in given if isinstance(a, str)):
                raise AuthError("audience")
        uid = _nonblank(claims, "uid")
        if not valid_uid(uid):
            # Refused rather than "Authenticated." and then silence: such a
            # member could never be bound on the broker (".", "*", "#", too
            # long, no UTF-8), and control characters have no place in an id.
            raise AuthError("bad_uid")
        return Claims(
            uid=uid,
            jti=jti,
            expires_at=None if exp is None else exp + self._leeway["exp"],
            email=_optional_str(claims, "email"),
            role=_optional_str(claims, "role"),
            level=claims.get("level"),
            state=_optional_str(claims, "state"),
        )
