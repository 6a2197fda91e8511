"""
Hostile input shared by the unit-level fuzz tests and the end-to-end
hostile-input suite: upgrade requests (usual but odd, and broken), frames
RFC 6455 says to fail the connection for, and forged and mangled tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from peatio_ws.testing import (
    b64url,
    barong_claims,
    craft_token,
    generate_ec_key,
    generate_ed25519_key,
    generate_rsa_key,
    make_token,
    public_key_b64,
    public_key_pem,
    rsa_key,
)
from peatio_ws.testing.frames import SAMPLE_KEY, client_frame, upgrade_request

__all__ = [
    "BAD_HANDSHAKES",
    "NOW",
    "PROTOCOL_VIOLATIONS",
    "UNUSUAL_HANDSHAKES",
    "VICTIM",
    "forged_tokens",
    "handshake_with",
    "victim_claims",
]

#: The member whose events nobody else may see.
VICTIM = "IDVICTIM0001"
#: The time tokens are issued at (tests run on a clock set to it).
NOW = 1_700_000_000.0

# ---------------------------------------------------------------------------
# Frames

#: Frames RFC 6455 says to fail the connection for (1002).
PROTOCOL_VIOLATIONS = {
    "unmasked": b"\x81\x04ping",
    "rsv1": bytes([0xC1]) + client_frame(b"ping")[1:],
    "rsv3": bytes([0x91]) + client_frame(b"ping")[1:],
    "opcode 3": bytes([0x83]) + client_frame(b"x")[1:],
    "opcode 11": bytes([0x8B]) + client_frame(b"x")[1:],
    "ping > 125": client_frame(b"p" * 126, 9),
    "fragmented ping": bytes([0x09]) + client_frame(b"p", 9)[1:],
    "continuation first": client_frame(b"x", 0),
    "close, 1-byte payload": client_frame(b"\x03", 8),
    "64-bit length, top bit set": b"\x81\xff" + b"\x80" + b"\x00" * 7 + b"\x00" * 4,
}


# ---------------------------------------------------------------------------
# Handshakes

#: Upgrade requests as real clients send them, with the unusual but valid
#: headers browsers and libraries add: all must be accepted (101).
UNUSUAL_HANDSHAKES = {
    "browser: permessage-deflate offer": [("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")],
    "two extension offers": [("Sec-WebSocket-Extensions", "permessage-deflate; server_no_context_takeover, x-unknown")],
    "unknown extension": [("Sec-WebSocket-Extensions", "x-webkit-deflate-frame")],
    "subprotocols requested": [("Sec-WebSocket-Protocol", "chat, superchat")],
    "Origin null": [("Origin", "null")],
    "long cookie": [("Cookie", "a=" + "x" * 4000)],
}

#: Requests that are not a usable WebSocket upgrade: refused with a 4xx, never a crash.
BAD_HANDSHAKES = {
    "no Sec-WebSocket-Key": b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n",
    "version 99": b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 99\r\n\r\n",
    "POST": b"POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "no Upgrade": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "HTTP/1.0": b"GET / HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "garbage request line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "no Host": b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
}


def handshake_with(headers: list[tuple[str, str]], path: str = "/") -> bytes:
    """An upgrade request for localhost:8080 (RFC 6455's sample key) with C{headers} added."""
    return upgrade_request(path, "localhost:8080", headers, key=SAMPLE_KEY)


# ---------------------------------------------------------------------------
# Tokens


def _hmac_token(secret: bytes, alg: str = "HS256") -> str:
    """Signed by hand: PyJWT itself refuses a PEM key as an HMAC secret."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    signing_input = header + "." + b64url(json.dumps(victim_claims()).encode())
    return signing_input + "." + b64url(hmac.new(secret, signing_input.encode(), digest).digest())


def victim_claims(**extra: Any) -> dict[str, Any]:
    """What a forger puts in a token for L{VICTIM}: Barong's claims, issued at L{NOW}, for ten minutes."""
    claims: dict[str, Any] = {"jti": "forged", "uid": VICTIM, **extra}
    return barong_claims(now=NOW, lifetime=600, **claims)


def _es_raw_signature(key: ec.EllipticCurvePrivateKey, signing_input: bytes, size: int) -> bytes:
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def forged_tokens() -> dict[str, str]:
    """Tokens an attacker holding only the public key (or nothing) could make."""
    own = rsa_key()
    attacker = generate_rsa_key()
    pem = public_key_pem(own).encode()
    der = own.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    valid = make_token(uid=VICTIM, now=NOW)
    header, payload, signature = valid.split(".")
    attacker_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key()))
    tokens = {
        "alg none, no signature": craft_token({"alg": "none", "typ": "JWT"}, victim_claims()),
        "alg None": craft_token({"alg": "None"}, victim_claims()),
        "alg NONE": craft_token({"alg": "NONE"}, victim_claims()),
        "alg nOnE, with a signature": craft_token({"alg": "nOnE"}, victim_claims(), b"x" * 256),
        "alg none, header swapped on a valid token": b64url(b'{"alg":"none"}') + "." + payload + ".",
        "alg missing": craft_token({"typ": "JWT"}, victim_claims()),
        "alg null": craft_token({"alg": None}, victim_claims()),
        "alg as a list": craft_token({"alg": ["RS256"]}, victim_claims()),
        "HS256 with the PEM public key": _hmac_token(pem),
        "HS384 with the PEM public key": _hmac_token(pem, "HS384"),
        "HS512 with the PEM public key": _hmac_token(pem, "HS512"),
        "HS256 with JWT_PUBLIC_KEY's text": _hmac_token(public_key_b64(own).encode()),
        "HS256 with the DER public key": _hmac_token(der),
        "HS256 header on a valid RS256 signature": b64url(b'{"alg":"HS256"}') + "." + payload + "." + signature,
        "RS256 by another key": make_token(attacker, uid=VICTIM, now=NOW),
        "RS256 by another key, kid path traversal": make_token(
            attacker, uid=VICTIM, now=NOW, headers={"kid": "../../../../../dev/null"}
        ),
        "RS256 by another key, kid SQL": make_token(attacker, uid=VICTIM, now=NOW, headers={"kid": "' OR '1'='1"}),
        "RS256 by another key, jku to the attacker": make_token(
            attacker, uid=VICTIM, now=NOW, headers={"jku": "https://attacker.example/jwks.json"}
        ),
        "RS256 by another key, x5u": make_token(attacker, uid=VICTIM, now=NOW, headers={"x5u": "https://a.example/c"}),
        "RS256 by another key, embedded jwk": make_token(attacker, uid=VICTIM, now=NOW, headers={"jwk": attacker_jwk}),
        "PS256 by the right key (not configured)": make_token(own, algorithm="PS256", uid=VICTIM, now=NOW),
        "RS512 by the right key (not configured)": make_token(own, algorithm="RS512", uid=VICTIM, now=NOW),
        "ES256 by a P-256 key": make_token(generate_ec_key(), uid=VICTIM, now=NOW),
        "ES256 header, secp256k1 signature": _curve_token(ec.SECP256K1(), 32),
        "ES256 header, P-384 signature": _curve_token(ec.SECP384R1(), 48),
        "EdDSA by an Ed25519 key": make_token(generate_ed25519_key(), uid=VICTIM, now=NOW),
        "signature stripped": header + "." + payload + ".",
        "signature of zeros": header + "." + payload + "." + b64url(b"\x00" * 256),
        "payload swapped, signature kept": header + "." + b64url(json.dumps(victim_claims(uid="IDOTHER")).encode())
        + "." + signature,
        "crit extension": make_token(own, uid=VICTIM, now=NOW, headers={"crit": ["x-evil"], "x-evil": 1}),
        "b64 false (unencoded payload)": make_token(own, uid=VICTIM, now=NOW, headers={"b64": False}),
        "header not JSON": "e30x." + payload + "." + signature,
        "header a JSON array": b64url(b"[]") + "." + payload + "." + signature,
        "payload a JSON array (signed)": _signed_raw(own, b"[1,2]"),
        "payload a number (signed)": _signed_raw(own, b"12"),
        "payload not JSON (signed)": _signed_raw(own, b"\xff\xfe"),
        "four segments": valid + "." + signature,
        "JWE-shaped": ".".join([header, "", "", payload, signature]),
        "two segments": header + "." + payload,
        "empty": "",
        "dots only": "...",
        "padding added": header + "==." + payload + "." + signature,
        "non-ASCII": valid[:10] + "é" + valid[11:],
        "1 MB of junk": "A" * 1_000_000,
        "1 MB payload, valid signature of another": header + "." + "A" * 1_000_000 + "." + signature,
    }
    return tokens


def _curve_token(curve: ec.EllipticCurve, size: int) -> str:
    key = ec.generate_private_key(curve)
    header = b64url(json.dumps({"alg": "ES256"}).encode())
    body = b64url(json.dumps(victim_claims()).encode())
    signing_input = f"{header}.{body}".encode()
    return f"{header}.{body}.{b64url(_es_raw_signature(key, signing_input, size))}"


def _signed_raw(key: rsa.RSAPrivateKey, payload: bytes) -> str:
    return jwt.PyJWS().encode(payload, key, algorithm="RS256")
