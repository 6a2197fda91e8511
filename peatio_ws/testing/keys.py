"""
Key pairs for tests: RSA, EC and Ed25519 private keys, and their public
halves in the forms the daemon and the tools take them (PEM, and
JWT_PUBLIC_KEY's URL-safe base64 of the PEM).

Generating a 2048-bit RSA key takes a noticeable fraction of a second, so
the default key is generated once per process and cached (L{rsa_key}); use
L{generate_rsa_key} when a test needs a second, different key.
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

__all__ = [
    "AnyKey",
    "PrivateKey",
    "algorithm_for",
    "b64url",
    "generate_ec_key",
    "generate_ed25519_key",
    "generate_rsa_key",
    "private_key_pem",
    "public_key_b64",
    "public_key_pem",
    "rsa_key",
]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
AnyKey = PrivateKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey

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


def b64url(data: bytes) -> str:
    """URL-safe base64 without padding, as JWS segments are encoded."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


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


def algorithm_for(key: Any) -> str:
    """
    The natural JWS algorithm for C{key}: RS256, ES256/ES256K/ES384/ES512,
    or EdDSA; ValueError for any other kind of key or curve.
    """
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in _CURVE_ALGORITHMS:
            raise ValueError(f"unsupported curve {key.curve.name}")
        return _CURVE_ALGORITHMS[key.curve.name]
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return "EdDSA"
    raise ValueError(f"unsupported key type {type(key).__name__}")
