"""
Tests for L{peatio_ws.auth}: loading JWT_PUBLIC_KEY, checking JWT_ALGORITHM,
and verifying Barong session tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any, ClassVar

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.hashes import SHA256
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.auth import (
    REMEMBERED_TOKENS,
    AuthError,
    Claims,
    TokenVerifier,
    check_algorithm_names,
    check_key_matches,
    load_public_key,
)
from peatio_ws.testing import (
    OMIT,
    b64url,
    craft_token,
    generate_ec_key,
    generate_ed25519_key,
    generate_rsa_key,
    make_token,
    private_key_pem,
    public_key_b64,
    public_key_pem,
    rsa_key,
    settings_for_tests,
)
from peatio_ws.uids import MAX_UID_BYTES, valid_uid

#: A fixed "now" for every verifier: late 2023, well away from 0.
NOW = 1_700_000_000.0

_other_rsa_key: rsa.RSAPrivateKey | None = None


def other_rsa_key() -> rsa.RSAPrivateKey:
    """A second cached RSA key, for "signed by somebody else"."""
    global _other_rsa_key
    if _other_rsa_key is None:
        _other_rsa_key = generate_rsa_key()
    return _other_rsa_key


def numbers(key: Any) -> Any:
    """The public numbers of an RSA or EC public key, for comparing keys."""
    assert isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)), key
    return key.public_numbers()


def rs256_signature(signing_input: str, key: rsa.RSAPrivateKey | None = None) -> bytes:
    """An RS256 signature over C{signing_input}, made without PyJWT."""
    return (key or rsa_key()).sign(signing_input.encode("ascii"), padding.PKCS1v15(), SHA256())


def signed_raw(payload: str | bytes, header: dict[str, Any] | None = None) -> str:
    """
    A token whose payload segment is exactly C{payload} (any bytes, valid
    JSON or not), correctly RS256-signed with L{rsa_key}.
    """
    body = payload.encode("utf-8") if isinstance(payload, str) else payload
    signing_input = b64url(json.dumps(header or {"alg": "RS256", "typ": "JWT"}).encode()) + "." + b64url(body)
    return signing_input + "." + b64url(rs256_signature(signing_input))



def secp112r1_pem() -> str:
    """A PEM public key on secp112r1, a curve cryptography cannot load: a P-256 key with its curve OID swapped."""
    der = base64.b64decode("".join(public_key_pem(generate_ec_key()).splitlines()[1:-1]))
    p256 = bytes.fromhex("06082a8648ce3d030107")
    secp112r1 = bytes.fromhex("06052b81040006")
    assert der[:4] == bytes.fromhex("30593013"), der[:4]
    patched = bytearray(der.replace(p256, secp112r1))
    patched[1] -= len(p256) - len(secp112r1)
    patched[3] -= len(p256) - len(secp112r1)
    body = base64.b64encode(bytes(patched)).decode()
    return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"


def refusal_problem(verifier: TokenVerifier, token: str, reason: str) -> str | None:
    """None if C{token} is refused with C{reason}, else what went wrong instead."""
    try:
        verifier.verify(token)
    except AuthError as e:
        return None if e.reason == reason else f"reason {e.reason!r}, expected {reason!r}"
    except Exception as e:
        return f"raised {type(e).__name__}: {e}"
    return "token verified"

class VerifierMixin:
    """Builds a L{TokenVerifier} on a L{Clock} set to L{NOW}."""

    def verifier(self, **overrides: Any) -> TokenVerifier:
        clock = Clock()
        clock.advance(NOW)
        self.clock = clock
        return settings_for_tests(**overrides).token_verifier(clock)

    def token(self, **claims: Any) -> str:
        return make_token(now=NOW, **claims)


class LoadPublicKeyTests(SynchronousTestCase):
    """L{load_public_key} reads JWT_PUBLIC_KEY in Peatio's form and refuses the rest."""

    def test_urlsafe_base64_with_padding(self) -> None:
        """URL-safe base64 of the PEM, padded, loads to the same public key."""
        text = public_key_b64(rsa_key(), padding=True)
        self.assertTrue(text.endswith("="), "choose a key whose encoding needs padding")
        key = load_public_key(text)
        self.assertIsInstance(key, rsa.RSAPublicKey)
        self.assertEqual(numbers(key), rsa_key().public_key().public_numbers())

    def test_urlsafe_base64_without_padding(self) -> None:
        """URL-safe base64 with the padding stripped loads too."""
        text = public_key_b64(rsa_key(), padding=False)
        self.assertNotIn("=", text)
        self.assertEqual(numbers(load_public_key(text)), rsa_key().public_key().public_numbers())

    def test_wrapped_base64(self) -> None:
        """Base64 wrapped at 76 columns (plain `base64` output) loads too."""
        text = base64.encodebytes(public_key_pem(rsa_key()).encode()).decode()
        self.assertIn("\n", text.strip())
        self.assertEqual(numbers(load_public_key(text)), rsa_key().public_key().public_numbers())

    def test_surrounding_whitespace(self) -> None:
        """Whitespace around the value (a trailing newline from a file) is ignored."""
        text = "  " + public_key_b64(rsa_key()) + "\n"
        self.assertIsInstance(load_public_key(text), rsa.RSAPublicKey)

    def test_plain_pem(self) -> None:
        """Plain PEM text is accepted as well as the base64 form."""
        key = load_public_key(public_key_pem(rsa_key()))
        self.assertEqual(numbers(key), rsa_key().public_key().public_numbers())

    def test_ec_and_ed25519(self) -> None:
        """EC and Ed25519 public keys load."""
        self.assertIsInstance(load_public_key(public_key_b64(generate_ec_key())), ec.EllipticCurvePublicKey)
        ed = generate_ed25519_key()
        self.assertEqual(load_public_key(public_key_b64(ed)), ed.public_key())

    def test_private_key_base64(self) -> None:
        """A base64-encoded private key is refused with a message saying so."""
        text = base64.urlsafe_b64encode(private_key_pem(rsa_key()).encode()).decode()
        error = self.assertRaises(ValueError, load_public_key, text)
        self.assertIn("private key", str(error))

    def test_private_key_pem(self) -> None:
        """A plain-PEM private key is refused with a message saying so."""
        error = self.assertRaises(ValueError, load_public_key, private_key_pem(generate_ec_key()))
        self.assertIn("private key", str(error))

    def test_garbage(self) -> None:
        """Values that are not a public key raise ValueError with a one-line reason."""
        for value in [
            "",
            "   ",
            "garbage",
            "not base64 at all!!!",
            "ÿÿÿ",
            base64.urlsafe_b64encode(b"hello world").decode(),
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            base64.urlsafe_b64encode(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").decode(),
        ]:
            error = self.assertRaises(ValueError, load_public_key, value)
            self.assertNotIn("\n", str(error), value)
            self.assertTrue(str(error), value)

    def test_short_rsa_key(self) -> None:
        """A 1024-bit RSA key is refused: at least 2048 bits are required."""
        error = self.assertRaises(ValueError, load_public_key, public_key_b64(generate_rsa_key(1024)))
        self.assertIn("1024-bit", str(error))
        self.assertIn("2048", str(error))

    def test_unsupported_curve(self) -> None:
        """A PEM public key on a curve cryptography cannot load is a ValueError, not another exception."""
        error = self.assertRaises(ValueError, load_public_key, secp112r1_pem())
        self.assertIn("unsupported", str(error))

    def test_unsupported_key_type(self) -> None:
        """An X25519 (key agreement) public key is refused as an unsupported key type."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import x25519

        pem = (
            x25519.X25519PrivateKey.generate()
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        error = self.assertRaises(ValueError, load_public_key, pem)
        self.assertIn("unsupported key type", str(error))


class CheckAlgorithmNamesTests(SynchronousTestCase):
    """L{check_algorithm_names} allows only known asymmetric algorithms."""

    def test_allowed(self) -> None:
        """Known asymmetric algorithms pass through unchanged."""
        names = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES256K", "ES384", "ES512", "EdDSA")
        self.assertEqual(check_algorithm_names(names), names)

    def test_none(self) -> None:
        """'none', in any case, is refused."""
        for name in ("none", "None", "NONE"):
            error = self.assertRaises(ValueError, check_algorithm_names, ("RS256", name))
            self.assertIn("'none' is never allowed", str(error))

    def test_hmac(self) -> None:
        """HMAC algorithms are refused: the public key would become the secret."""
        for name in ("HS256", "HS384", "HS512", "hs256"):
            error = self.assertRaises(ValueError, check_algorithm_names, (name,))
            self.assertIn("HMAC", str(error))

    def test_unknown(self) -> None:
        """An unknown or wrongly-cased name is refused, listing what is allowed."""
        for name in ("RS1024", "rs256", "eddsa", "ES999", ""):
            error = self.assertRaises(ValueError, check_algorithm_names, (name,))
            self.assertIn("unknown algorithm", str(error))
            self.assertIn("RS256", str(error))

    def test_empty(self) -> None:
        """An empty list is refused."""
        error = self.assertRaises(ValueError, check_algorithm_names, ())
        self.assertIn("at least one algorithm", str(error))


class CheckKeyMatchesTests(SynchronousTestCase):
    """L{check_key_matches} refuses algorithms the configured key cannot verify."""

    def test_rsa(self) -> None:
        """An RSA key fits every RS/PS algorithm, and no EC or EdDSA one."""
        key = rsa_key().public_key()
        check_key_matches(key, ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"))
        for name in ("ES256", "EdDSA"):
            error = self.assertRaises(ValueError, check_key_matches, key, ("RS256", name))
            self.assertIn(name, str(error))
            self.assertIn("RSA 2048-bit", str(error))

    def test_ec_curve(self) -> None:
        """An EC key fits only the algorithm of its own curve."""
        p256 = generate_ec_key(ec.SECP256R1()).public_key()
        p384 = generate_ec_key(ec.SECP384R1()).public_key()
        check_key_matches(p256, ("ES256",))
        check_key_matches(p384, ("ES384",))
        error = self.assertRaises(ValueError, check_key_matches, p256, ("ES384",))
        self.assertIn("EC secp256r1", str(error))
        self.assertRaises(ValueError, check_key_matches, p384, ("ES256",))
        self.assertRaises(ValueError, check_key_matches, p256, ("RS256",))

    def test_ed25519(self) -> None:
        """An Ed25519 key fits EdDSA only."""
        key = generate_ed25519_key().public_key()
        check_key_matches(key, ("EdDSA",))
        self.assertRaises(ValueError, check_key_matches, key, ("RS256",))
        self.assertRaises(ValueError, check_key_matches, key, ("ES256",))


class GoodTokenTests(VerifierMixin, SynchronousTestCase):
    """Well-formed tokens verify and yield the member's L{Claims}."""

    def test_rs256(self) -> None:
        """A Barong RS256 token verifies and carries uid, jti, expiry and profile claims."""
        token = self.token(jti="jti-1", uid="ID1A2B3C4D5E", email="a@b.c", role="admin", level=2, state="active")
        claims = self.verifier().verify(token)
        self.assertEqual(
            claims,
            Claims(
                uid="ID1A2B3C4D5E",
                jti="jti-1",
                expires_at=NOW + 3600,
                email="a@b.c",
                role="admin",
                level=2,
                state="active",
            ),
        )

    def test_expires_at_includes_leeway(self) -> None:
        """expires_at is exp plus the expiration leeway."""
        claims = self.verifier(jwt_expiration_leeway=30.0).verify(self.token(exp=NOW + 100))
        self.assertEqual(claims.expires_at, NOW + 130)

    def test_expires_at_default_leeway(self) -> None:
        """expires_at uses JWT_DEFAULT_LEEWAY when the expiration leeway is unset."""
        claims = self.verifier(jwt_default_leeway=7.0).verify(self.token(exp=NOW + 100))
        self.assertEqual(claims.expires_at, NOW + 107)

    def test_no_exp(self) -> None:
        """A token without exp verifies and never expires (expires_at is None)."""
        claims = self.verifier().verify(self.token(exp=OMIT))
        self.assertIsNone(claims.expires_at)

    def test_optional_profile_claims(self) -> None:
        """email/role/level/state are optional; non-string email/role/state become None."""
        claims = self.verifier().verify(self.token(email=OMIT, role=5, level=OMIT, state=["x"]))
        self.assertEqual((claims.email, claims.role, claims.level, claims.state), (None, None, None, None))

    def test_minimal_token(self) -> None:
        """Only sub, jti, uid and aud are needed with the default settings."""
        token = self.token(iat=OMIT, exp=OMIT, iss=OMIT, email=OMIT, role=OMIT, level=OMIT, state=OMIT)
        claims = self.verifier().verify(token)
        self.assertEqual(claims.uid, "ID1A2B3C4D5E")

    def test_rsa_algorithm_list(self) -> None:
        """With JWT_ALGORITHM=RS256,PS256,RS512 each of those algorithms verifies with the RSA key."""
        verifier = self.verifier(jwt_algorithm=("RS256", "PS256", "RS512"))
        for algorithm in ("RS256", "PS256", "RS512"):
            self.assertEqual(verifier.verify(self.token(algorithm=algorithm, jti=algorithm)).jti, algorithm)

    def test_es256(self) -> None:
        """ES256 with a P-256 key verifies."""
        key = generate_ec_key(ec.SECP256R1())
        verifier = self.verifier(jwt_public_key=key.public_key(), jwt_algorithm=("ES256",))
        self.assertEqual(verifier.verify(make_token(key, now=NOW, uid="U1")).uid, "U1")

    def test_eddsa(self) -> None:
        """EdDSA with an Ed25519 key verifies."""
        key = generate_ed25519_key()
        verifier = self.verifier(jwt_public_key=key.public_key(), jwt_algorithm=("EdDSA",))
        self.assertEqual(verifier.verify(make_token(key, now=NOW, uid="U2")).uid, "U2")

    def test_header_tricks_ignored(self) -> None:
        """kid/jku/x5u/jwk header fields change nothing when the right key signed the token."""
        headers = {"kid": "other", "jku": "https://evil.example/jwks", "x5u": "https://evil.example/c", "jwk": {}}
        self.assertEqual(self.verifier().verify(self.token(headers=headers, uid="U3")).uid, "U3")

    def test_any_issuer_when_unset(self) -> None:
        """Without JWT_ISSUER any iss, or none, is accepted."""
        verifier = self.verifier(jwt_issuer=None)
        for iss in ("barong", "someone-else", OMIT, 42):
            verifier.verify(self.token(iss=iss))

    def test_issuer_matches(self) -> None:
        """With JWT_ISSUER set, a token with exactly that iss verifies."""
        self.verifier(jwt_issuer="barong").verify(self.token(iss="barong"))

    def test_any_audience_when_empty(self) -> None:
        """With JWT_AUDIENCE empty any aud, or none, is accepted."""
        verifier = self.verifier(jwt_audience=())
        for aud in ("other", ["x", "y"], OMIT, 42, [{"a": 1}]):
            verifier.verify(self.token(aud=aud))

    def test_audience_string_or_list(self) -> None:
        """aud may be a string or a list; one match with JWT_AUDIENCE is enough."""
        verifier = self.verifier(jwt_audience=("peatio", "barong"))
        for aud in ("peatio", "barong", ["peatio"], ["other", "barong"], [{"x": 1}, 5, "peatio"]):
            verifier.verify(self.token(aud=aud))

    def test_float_times(self) -> None:
        """Fractional NumericDate values are accepted."""
        claims = self.verifier().verify(self.token(iat=NOW - 0.5, nbf=NOW - 0.5, exp=NOW + 10.25))
        self.assertEqual(claims.expires_at, NOW + 10.25)


class ExpiryTests(VerifierMixin, SynchronousTestCase):
    """exp, nbf and iat are checked against the injected clock with their leeways."""

    def test_expired(self) -> None:
        """A token whose exp has passed is refused as expired."""
        error = self.assertRaises(AuthError, self.verifier().verify, self.token(exp=NOW - 1))
        self.assertEqual(error.reason, "expired")

    def test_expiry_boundary(self) -> None:
        """A token is valid strictly before exp and expired at exp itself (RFC 7519 4.1.4)."""
        verifier = self.verifier()
        verifier.verify(self.token(exp=NOW + 1))
        self.assertEqual(self.assertRaises(AuthError, verifier.verify, self.token(exp=NOW)).reason, "expired")

    def test_clock_moves(self) -> None:
        """The verifier reads the clock on every call: the same token expires as time passes."""
        verifier = self.verifier()
        token = self.token(exp=NOW + 60)
        verifier.verify(token)
        self.clock.advance(59)
        verifier.verify(token)
        self.clock.advance(1)
        self.assertEqual(self.assertRaises(AuthError, verifier.verify, token).reason, "expired")

    def test_expiration_leeway(self) -> None:
        """With JWT_EXPIRATION_LEEWAY=30 a token 20 s past exp is valid, 40 s past is not."""
        verifier = self.verifier(jwt_expiration_leeway=30.0)
        verifier.verify(self.token(exp=NOW - 20))
        self.assertEqual(self.assertRaises(AuthError, verifier.verify, self.token(exp=NOW - 40)).reason, "expired")

    def test_default_leeway_for_exp(self) -> None:
        """JWT_DEFAULT_LEEWAY applies to exp when JWT_EXPIRATION_LEEWAY is unset."""
        verifier = self.verifier(jwt_default_leeway=30.0)
        verifier.verify(self.token(exp=NOW - 20))
        self.assertRaises(AuthError, verifier.verify, self.token(exp=NOW - 40))

    def test_specific_leeway_beats_default(self) -> None:
        """An explicit JWT_EXPIRATION_LEEWAY (even 0) wins over JWT_DEFAULT_LEEWAY."""
        verifier = self.verifier(jwt_default_leeway=30.0, jwt_expiration_leeway=0.0)
        self.assertEqual(self.assertRaises(AuthError, verifier.verify, self.token(exp=NOW - 20)).reason, "expired")

    def test_not_before(self) -> None:
        """A token whose nbf is in the future is refused; nbf now or past is fine."""
        verifier = self.verifier()
        verifier.verify(self.token(nbf=NOW))
        verifier.verify(self.token(nbf=NOW - 100))
        error = self.assertRaises(AuthError, verifier.verify, self.token(nbf=NOW + 1))
        self.assertEqual(error.reason, "not_yet_valid")

    def test_not_before_leeway(self) -> None:
        """With JWT_NOT_BEFORE_LEEWAY=30 an nbf 20 s ahead is valid, 40 s ahead is not."""
        verifier = self.verifier(jwt_not_before_leeway=30.0)
        verifier.verify(self.token(nbf=NOW + 20))
        error = self.assertRaises(AuthError, verifier.verify, self.token(nbf=NOW + 40))
        self.assertEqual(error.reason, "not_yet_valid")

    def test_default_leeway_for_nbf(self) -> None:
        """JWT_DEFAULT_LEEWAY applies to nbf when JWT_NOT_BEFORE_LEEWAY is unset."""
        verifier = self.verifier(jwt_default_leeway=30.0)
        verifier.verify(self.token(nbf=NOW + 20))
        self.assertRaises(AuthError, verifier.verify, self.token(nbf=NOW + 40))

    def test_issued_at_default_leeway_180(self) -> None:
        """With the default JWT_ISSUED_AT_LEEWAY (180) iat 170 s ahead is valid, 190 s ahead is not."""
        verifier = self.verifier()
        self.assertEqual(settings_for_tests().jwt_issued_at_leeway, 180.0)
        verifier.verify(self.token(iat=NOW + 170))
        verifier.verify(self.token(iat=NOW + 180))
        error = self.assertRaises(AuthError, verifier.verify, self.token(iat=NOW + 190))
        self.assertEqual(error.reason, "issued_in_future")

    def test_issued_at_past(self) -> None:
        """An iat long in the past is fine (only exp limits a token's age)."""
        self.verifier().verify(self.token(iat=NOW - 10 * 86400, exp=NOW + 60))

    def test_default_leeway_for_iat(self) -> None:
        """JWT_DEFAULT_LEEWAY applies to iat only when JWT_ISSUED_AT_LEEWAY is unset."""
        verifier = self.verifier(jwt_issued_at_leeway=None, jwt_default_leeway=10.0)
        verifier.verify(self.token(iat=NOW + 5))
        self.assertRaises(AuthError, verifier.verify, self.token(iat=NOW + 15))
        # With no leeway at all, any iat in the future fails.
        verifier = self.verifier(jwt_issued_at_leeway=None)
        self.assertRaises(AuthError, verifier.verify, self.token(iat=NOW + 1))


# (description, settings overrides or "p256", token factory, expected reason)
BadCase = tuple[str, dict[str, Any] | str, Any, str]


def _none_token() -> str:
    header = {"alg": "none", "typ": "JWT"}
    return craft_token(header, {"sub": "session", "jti": "j", "uid": "U", "aud": ["peatio"], "exp": NOW + 60})


def _none_token_with_garbage_signature() -> str:
    return _none_token() + "c2lnbmF0dXJl"


def _hs256_key_confusion(pem: str) -> str:
    header = {"alg": "HS256", "typ": "JWT"}
    payload = {"sub": "session", "jti": "j", "uid": "U", "aud": ["peatio"], "exp": NOW + 60}
    unsigned = craft_token(header, payload)[:-1]  # drop the trailing "." of the empty signature
    return unsigned + "." + b64url(hmac.new(pem.encode(), unsigned.encode(), hashlib.sha256).digest())


def _header_swapped(token: str, **fields: Any) -> str:
    """C{token} with its header replaced by one that adds C{fields}, signature untouched."""
    header_b64, rest = token.split(".", 1)
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    header.update(fields)
    return b64url(json.dumps(header).encode()) + "." + rest


def _p384_es384_token() -> str:
    return make_token(generate_ec_key(ec.SECP384R1()), now=NOW)


def _p256_other_key_token() -> str:
    return make_token(generate_ec_key(ec.SECP256R1()), now=NOW)


def _evil_jwk_headers_token() -> str:
    evil = other_rsa_key()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(evil.public_key()))
    headers = {
        "kid": "barong",
        "jku": "https://evil.example/jwks.json",
        "x5u": "https://evil.example/c.pem",
        "jwk": jwk,
    }
    return make_token(evil, now=NOW, headers=headers)


def _big_token() -> str:
    # A correctly-shaped, correctly-signed-by-someone-else 1 MB token.
    return make_token(other_rsa_key(), now=NOW, padding="x" * (1024 * 1024))


def _truncated(cut: int) -> Any:
    return lambda: make_token(now=NOW)[:-cut]


def _bad_cases() -> list[BadCase]:
    tok = make_token  # shorthand

    def t(**claims: Any) -> Any:
        return lambda: tok(now=NOW, **claims)

    # Deliberately inconsistent with the RSA key (check_key_matches refuses it at
    # start-up): the verifier must still fail closed.
    es256: dict[str, Any] = {"jwt_algorithm": ("ES256",)}

    def raw_claims(extra: str) -> Any:
        return lambda: signed_raw('{"sub":"session","jti":"j","uid":"U","aud":"peatio",' + extra + "}")

    return [
        ("signed by another key", {}, lambda: tok(other_rsa_key(), now=NOW), "signature"),
        ("alg=none, empty signature", {}, _none_token, "algorithm"),
        ("alg=none, some signature", {}, _none_token_with_garbage_signature, "algorithm"),
        ("alg=None header", {}, lambda: _header_swapped(tok(now=NOW), alg=None), "algorithm"),
        ("no alg header", {}, lambda: craft_token({"typ": "JWT"}, {"sub": "session"}), "algorithm"),
        ("HS256, public PEM as secret", {}, lambda: _hs256_key_confusion(public_key_pem(rsa_key())), "algorithm"),
        ("HS256, base64 key as secret", {}, lambda: _hs256_key_confusion(public_key_b64(rsa_key())), "algorithm"),
        ("PS256 when only RS256 allowed", {}, t(algorithm="PS256"), "algorithm"),
        ("RS512 when only RS256 allowed", {}, t(algorithm="RS512"), "algorithm"),
        (
            "RS256 header, PS256 signature",
            {},
            lambda: _header_swapped(t(algorithm="PS256")(), alg="RS256"),
            "signature",
        ),
        ("ES256 token, RSA key", {}, lambda: tok(generate_ec_key(), now=NOW), "algorithm"),
        ("ES256 token, RSA key, ES256 allowed", es256, lambda: tok(generate_ec_key(), now=NOW), "invalid"),
        ("EdDSA token, RSA key", {}, lambda: tok(generate_ed25519_key(), now=NOW), "algorithm"),
        ("ES384 with a P-384 key, ES256/P-256 configured", "p256", _p384_es384_token, "algorithm"),
        ("ES256 signed by another P-256 key", "p256", _p256_other_key_token, "signature"),
        ("kid/jku/x5u/jwk pointing at another key", {}, _evil_jwk_headers_token, "signature"),
        ("expired", {}, t(exp=NOW - 1), "expired"),
        ("nbf in the future", {}, t(nbf=NOW + 10), "not_yet_valid"),
        ("iat 190 s in the future", {}, t(iat=NOW + 190), "issued_in_future"),
        ("sub missing", {}, t(sub=OMIT), "subject"),
        ("sub not session", {}, t(sub="api"), "subject"),
        ("sub wrong case", {}, t(sub="Session"), "subject"),
        ("jti missing", {}, t(jti=OMIT), "no_jti"),
        ("jti blank", {}, t(jti=""), "no_jti"),
        ("jti whitespace", {}, t(jti="   "), "no_jti"),
        ("jti a number", {}, t(jti=123), "no_jti"),
        ("jti null", {}, t(jti=None), "no_jti"),
        ("uid missing", {}, t(uid=OMIT), "no_uid"),
        ("uid blank", {}, t(uid=""), "no_uid"),
        ("uid whitespace", {}, t(uid=" \t"), "no_uid"),
        ("uid a number", {}, t(uid=42), "no_uid"),
        ("iss wrong", {"jwt_issuer": "barong"}, t(iss="evil"), "issuer"),
        ("iss missing", {"jwt_issuer": "barong"}, t(iss=OMIT), "issuer"),
        ("iss as list", {"jwt_issuer": "barong"}, t(iss=["barong"]), "issuer"),
        ("aud string not matching", {}, t(aud="other"), "audience"),
        ("aud list not matching", {}, t(aud=["other", "applogic"]), "audience"),
        ("aud empty list", {}, t(aud=[]), "audience"),
        ("aud missing", {}, t(aud=OMIT), "audience"),
        ("aud a number", {}, t(aud=5), "audience"),
        ("aud list of objects", {}, t(aud=[{"peatio": 1}, ["peatio"]]), "audience"),
        ("aud an object", {}, t(aud={"peatio": True}), "audience"),
        ("exp a string", {}, t(exp="123"), "bad_exp"),
        ("exp true", {}, t(exp=True), "bad_exp"),
        ("exp a list", {}, t(exp=[1]), "bad_exp"),
        ("nbf a string", {}, t(nbf="123"), "bad_nbf"),
        ("nbf true", {}, t(nbf=True), "bad_nbf"),
        ("iat a string", {}, t(iat="123"), "bad_iat"),
        ("iat false", {}, t(iat=False), "bad_iat"),
        # Python's json module reads NaN, Infinity and 1e999 (= inf); none is a NumericDate.
        ("exp NaN", {}, raw_claims('"exp":NaN'), "bad_exp"),
        ("exp Infinity", {}, raw_claims('"exp":Infinity'), "bad_exp"),
        ("exp -Infinity", {}, raw_claims('"exp":-Infinity'), "bad_exp"),
        ("exp 1e999", {}, raw_claims('"exp":1e999'), "bad_exp"),
        ("exp too big for a float", {}, t(exp=10**400), "bad_exp"),
        ("nbf NaN", {}, raw_claims('"nbf":NaN'), "bad_nbf"),
        ("iat NaN", {}, raw_claims('"iat":NaN'), "bad_iat"),
        ("payload a JSON list", {}, lambda: signed_raw("[1, 2]"), "malformed"),
        ("payload a JSON string", {}, lambda: signed_raw('"session"'), "malformed"),
        ("payload not JSON", {}, lambda: signed_raw("not json"), "malformed"),
        ("payload not UTF-8", {}, lambda: signed_raw(b"\xff\xfe{}"), "malformed"),
        ("header a JSON list", {}, lambda: craft_token([], {}), "malformed"),  # type: ignore[arg-type]
        ("signature cut by 10 characters", {}, _truncated(10), "signature"),
        ("signature cut by 1 character (bad base64)", {}, _truncated(1), "malformed"),
        ("cut in the payload", {}, _truncated(400), "malformed"),
        ("signature removed", {}, lambda: make_token(now=NOW).rsplit(".", 1)[0] + ".", "signature"),
        ("two segments", {}, lambda: make_token(now=NOW).rsplit(".", 1)[0], "malformed"),
        ("four segments", {}, lambda: make_token(now=NOW) + ".abc", "malformed"),
        ("garbage", {}, lambda: "garbage", "malformed"),
        ("dots only", {}, lambda: "..", "malformed"),
        ("empty string", {}, lambda: "", "malformed"),
        ("Bearer prefix left on", {}, lambda: "Bearer " + make_token(now=NOW), "malformed"),
        ("non-ASCII", {}, lambda: "ключ.ключ.ключ", "malformed"),
        ("1 MB of garbage", {}, lambda: "A" * (1024 * 1024), "malformed"),
        ("1 MB of dotted garbage", {}, lambda: ("A" * (512 * 1024)) + "." + ("B" * (512 * 1024)) + ".C", "malformed"),
        ("1 MB token signed by another key", {}, _big_token, "signature"),
    ]


class BadTokenTests(VerifierMixin, SynchronousTestCase):
    """Every bad token raises L{AuthError} with the expected reason, never anything else."""

    def test_table(self) -> None:
        """Each row of the bad-token table fails with its reason."""
        p256 = generate_ec_key(ec.SECP256R1())
        problems: list[str] = []
        for description, overrides, factory, reason in _bad_cases():
            if isinstance(overrides, str):
                assert overrides == "p256"
                overrides = {"jwt_public_key": p256.public_key(), "jwt_algorithm": ("ES256",)}
            problem = refusal_problem(self.verifier(**overrides), factory(), reason)
            if problem is not None:
                problems.append(f"{description}: {problem}")
        self.assertEqual(problems, [])

    def test_p256_token_verifies_with_its_key(self) -> None:
        """Sanity check for the EC rows: the configured P-256 key's own token does verify."""
        key = generate_ec_key(ec.SECP256R1())
        verifier = self.verifier(jwt_public_key=key.public_key(), jwt_algorithm=("ES256",))
        verifier.verify(make_token(key, now=NOW))

    def test_auth_error_reason(self) -> None:
        """AuthError keeps its reason both as an attribute and as its message."""
        error = AuthError("expired")
        self.assertEqual((error.reason, str(error)), ("expired", "expired"))

    def test_header_swap_to_hs256(self) -> None:
        """Relabelling a good RS256 token as HS256 does not make it verify."""
        token = _header_swapped(self.token(), alg="HS256")
        self.assertEqual(self.assertRaises(AuthError, self.verifier().verify, token).reason, "algorithm")

    def test_settings_leeways_reach_the_verifier(self) -> None:
        """Settings.token_verifier applies JWT_EXPIRATION_LEEWAY=30: 29 s past exp verifies, 30 s past does not."""
        settings = settings_for_tests(jwt_expiration_leeway=30.0)
        clock = Clock()
        clock.advance(NOW)
        verifier = settings.token_verifier(clock)
        claims = verifier.verify(make_token(now=NOW - 100, exp=NOW - 29, uid="IDLEEWAY"))
        self.assertEqual((claims.uid, claims.expires_at), ("IDLEEWAY", NOW + 1))
        late = make_token(now=NOW - 100, exp=NOW - 30)
        self.assertEqual(self.assertRaises(AuthError, verifier.verify, late).reason, "expired")


def _uid_of_bytes(size: int, tail: str = "") -> str:
    """A uid of exactly C{size} UTF-8 bytes: ASCII padding, then C{tail}."""
    return "x" * (size - len(tail.encode("utf-8"))) + tail


class UidTests(VerifierMixin, SynchronousTestCase):
    """
    The uid must be usable as C{private.<uid>.*} and free of control
    characters; otherwise the token fails with reason C{bad_uid}, instead of
    "Authenticated." followed by silence.
    """

    #: (description, uid) pairs that verify.
    GOOD: ClassVar[list[tuple[str, str]]] = [
        ("Barong uid", "ID1A2B3C4D5E"),
        ("one character", "u"),
        ("dash and underscore", "user-1_x"),
        ("inner space", "a b"),
        ("printable non-ASCII", "Ünïcødé-比特币"),
        ("exactly MAX_UID_BYTES, ASCII", _uid_of_bytes(MAX_UID_BYTES)),
        ("exactly MAX_UID_BYTES, ends in 2-byte", _uid_of_bytes(MAX_UID_BYTES, "é")),
        ("exactly MAX_UID_BYTES, ends in 3-byte", _uid_of_bytes(MAX_UID_BYTES, "中")),
        ("exactly MAX_UID_BYTES, ends in 4-byte", _uid_of_bytes(MAX_UID_BYTES, "😀")),
        ("exactly MAX_UID_BYTES of 3-byte plus 2 ASCII", "中" * 81 + "xx"),
    ]

    #: (description, uid) pairs refused with bad_uid.
    BAD: ClassVar[list[tuple[str, str]]] = [
        ("dot", "a.b"),
        ("dot alone", "."),
        ("star", "a*"),
        ("star alone", "*"),
        ("hash", "#"),
        ("hash inside", "a#b"),
        ("one byte over, ASCII", _uid_of_bytes(MAX_UID_BYTES + 1)),
        ("one byte over, ends in 2-byte", _uid_of_bytes(MAX_UID_BYTES + 1, "é")),
        ("one byte over, ends in 3-byte", _uid_of_bytes(MAX_UID_BYTES + 1, "中")),
        ("one byte over, ends in 4-byte", _uid_of_bytes(MAX_UID_BYTES + 1, "😀")),
        ("fewer characters than bytes allow, too many bytes", "中" * 82),
        ("250 bytes", "x" * 250),
        ("lone high surrogate", "ID\ud800"),
        ("lone low surrogate", "\udfffID"),
        ("NUL", "ID\x00"),
        ("newline forging a log line", "bob\nINFO forged"),
        ("carriage return", "ID\r"),
        ("tab", "I\tD"),
        ("escape", "ID\x1b[31m"),
        ("DEL", "ID\x7f"),
        ("C1 NEL", "ID\x85"),
        ("C1 CSI", "ID\x9b"),
    ]

    def test_boundary_sizes(self) -> None:
        """The table's boundary rows are the sizes they claim: MAX_UID_BYTES and one more."""
        self.assertEqual(MAX_UID_BYTES, 255 - len("private.") - len(".*"))
        for description, uid in self.GOOD:
            if "exactly" in description:
                self.assertEqual(len(uid.encode("utf-8")), MAX_UID_BYTES, description)
        for description, uid in self.BAD:
            if "one byte over" in description:
                self.assertEqual(len(uid.encode("utf-8")), MAX_UID_BYTES + 1, description)

    def test_good(self) -> None:
        """Each usable uid verifies and comes back unchanged."""
        verifier = self.verifier()
        for description, uid in self.GOOD:
            self.assertEqual(verifier.verify(self.token(uid=uid)).uid, uid, description)
            self.assertTrue(valid_uid(uid), description)

    def test_bad(self) -> None:
        """Each unusable uid fails with AuthError reason bad_uid, never anything else."""
        verifier = self.verifier()
        problems: list[str] = []
        for description, uid in self.BAD:
            self.assertFalse(valid_uid(uid), description)
            problem = refusal_problem(verifier, self.token(uid=uid), "bad_uid")
            if problem is not None:
                problems.append(f"{description}: {problem}")
        self.assertEqual(problems, [])

    def test_raw_json_surrogate(self) -> None:
        """A payload spelling a lone surrogate as the JSON escape \\ud800 fails with bad_uid."""
        token = signed_raw('{"sub":"session","jti":"j","uid":"ID\\ud800","aud":"peatio"}')
        self.assertEqual(self.assertRaises(AuthError, self.verifier().verify, token).reason, "bad_uid")

    def test_blank_keeps_its_reason(self) -> None:
        """Missing, empty and whitespace-only uids still fail with no_uid, not bad_uid."""
        verifier = self.verifier()
        for uid in (OMIT, "", "   ", "\n", 42):
            self.assertEqual(self.assertRaises(AuthError, verifier.verify, self.token(uid=uid)).reason, "no_uid", uid)

    def test_checked_after_signature(self) -> None:
        """A bad uid in a token signed by someone else is a signature failure: claims are read only once trusted."""
        token = make_token(other_rsa_key(), now=NOW, uid="a.b")
        self.assertEqual(self.assertRaises(AuthError, self.verifier().verify, token).reason, "signature")


class OperatorMessageTests(SynchronousTestCase):
    """
    The exact sentences an operator reads when JWT_PUBLIC_KEY or
    JWT_ALGORITHM is refused at start-up: each follows the setting's name
    ("JWT_PUBLIC_KEY is a private key; ..."), so each is pinned whole.
    """

    def test_load_public_key(self) -> None:
        cases = [
            ("abcde", "is not URL-safe base64 of a PEM public key"),
            (
                base64.urlsafe_b64encode(private_key_pem(rsa_key()).encode()).decode(),
                "is a private key; configure the public key only (never ship the private key)",
            ),
            (base64.urlsafe_b64encode(b"hello world").decode(), "does not decode to a PEM public key"),
            (public_key_b64(generate_rsa_key(1024)), "is a 1024-bit RSA key; at least 2048 bits are required"),
            # Not ASCII: refused as a PEM that does not decode, not with another exception.
            ("-----BEGIN PUBLIC KEY-----\nMIIBIjé\n-----END PUBLIC KEY-----\n", "does not decode to a PEM public key"),
        ]
        for value, message in cases:
            self.assertEqual(str(self.assertRaises(ValueError, load_public_key, value)), message, value[:30])

    def test_unsupported_kinds(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import x25519

        public = x25519.X25519PrivateKey.generate().public_key()
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        error = self.assertRaises(ValueError, load_public_key, pem.decode())
        self.assertEqual(str(error), f"has an unsupported key type {type(public).__name__}")
        # A curve cryptography cannot load: its own words, in brackets.
        error = self.assertRaises(ValueError, load_public_key, secp112r1_pem())
        self.assertRegex(str(error), r"\Ais a public key of an unsupported kind \(.+\)\Z")

    def test_check_algorithm_names(self) -> None:
        cases: list[tuple[tuple[str, ...], str]] = [
            ((), "must name at least one algorithm, e.g. RS256"),
            (("RS256", "none"), "'none' is never allowed: tokens must be signed"),
            (("HS256",), "HS256 is not allowed: HMAC with a public key lets anyone forge tokens"),
            (
                ("RS1024",),
                "unknown algorithm 'RS1024'; use one of "
                "ES256, ES256K, ES384, ES512, EdDSA, PS256, PS384, PS512, RS256, RS384, RS512",
            ),
        ]
        for names, message in cases:
            self.assertEqual(str(self.assertRaises(ValueError, check_algorithm_names, names)), message, names)

    def test_check_key_matches(self) -> None:
        """The key is described as the operator knows it: RSA and its size, EC and its curve, Ed25519, Ed448."""
        from cryptography.hazmat.primitives.asymmetric import ed448

        cases = [
            (rsa_key().public_key(), "ES256", "RSA 2048-bit"),
            (generate_ec_key(ec.SECP256R1()).public_key(), "ES384", "EC secp256r1"),
            (generate_ed25519_key().public_key(), "RS256", "Ed25519"),
            (ed448.Ed448PrivateKey.generate().public_key(), "ES256", "Ed448"),
        ]
        for key, name, described in cases:
            error = self.assertRaises(ValueError, check_key_matches, key, (name,))
            self.assertEqual(str(error), f"{name} does not fit the JWT_PUBLIC_KEY given ({described})")


class KeyAndCurveTests(VerifierMixin, SynchronousTestCase):
    def test_every_ec_curve(self) -> None:
        """Each ES algorithm fits its own curve only, and a token signed on it verifies."""
        curves = {"ES256": ec.SECP256R1(), "ES256K": ec.SECP256K1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}
        keys = {name: generate_ec_key(curve) for name, curve in curves.items()}
        for name, key in keys.items():
            check_key_matches(key.public_key(), (name,))
            for other in curves:
                if other != name:
                    self.assertRaises(ValueError, check_key_matches, key.public_key(), (other,))
            verifier = self.verifier(jwt_public_key=key.public_key(), jwt_algorithm=(name,))
            self.assertEqual(verifier.verify(make_token(key, algorithm=name, now=NOW, uid="U" + name)).uid, "U" + name)

    def test_base64_of_any_length(self) -> None:
        """Unpadded base64 of any length loads: the padding put back is exactly what is missing."""
        pem = public_key_pem(rsa_key()).encode()
        lengths = set()
        for extra in range(15):
            text = base64.urlsafe_b64encode(pem + b"\n" * extra).rstrip(b"=").decode()
            lengths.add(len(text) % 20)
            self.assertEqual(numbers(load_public_key(text)), rsa_key().public_key().public_numbers(), extra)
        # Every remainder an unpadded encoding can have, modulo both 4 and 5.
        self.assertEqual(lengths, {n for n in range(20) if n % 4 != 1})


class ClaimsTests(SynchronousTestCase):
    def test_profile_defaults(self) -> None:
        """Only uid, jti and expires_at are needed; the profile claims are None unless given."""
        claims = Claims("U", "j", None)
        self.assertEqual((claims.email, claims.role, claims.level, claims.state), (None, None, None, None))

    def test_immutable_and_slotted(self) -> None:
        """Claims cannot be changed once made (the registry indexes them), and carry no per-instance dict."""
        import dataclasses

        claims = Claims("U", "j", None)
        with self.assertRaises(dataclasses.FrozenInstanceError):
            claims.uid = "V"  # type: ignore[misc]
        self.assertFalse(hasattr(claims, "__dict__"))
        self.assertEqual(Claims.__slots__, ("uid", "jti", "expires_at", "email", "role", "level", "state"))


class NoLeewayTests(SynchronousTestCase):
    """A verifier given no leeways has none: exp, nbf and iat are exact."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.verifier = TokenVerifier(rsa_key().public_key(), ["RS256"], self.clock)

    def reason(self, **claims: Any) -> str | None:
        try:
            self.verifier.verify(make_token(now=NOW, **claims))
        except AuthError as e:
            return e.reason
        return None

    def test_exact(self) -> None:
        self.assertEqual(self.reason(exp=NOW), "expired")
        self.assertIsNone(self.reason(exp=NOW + 1))
        self.assertEqual(self.verifier.verify(make_token(now=NOW, exp=NOW + 1)).expires_at, NOW + 1)
        self.assertEqual(self.reason(nbf=NOW + 1), "not_yet_valid")
        self.assertIsNone(self.reason(nbf=NOW))
        self.assertEqual(self.reason(iat=NOW + 1), "issued_in_future")
        self.assertIsNone(self.reason(iat=NOW))

    def test_subject_of_another_type(self) -> None:
        """A sub that is not a string is refused as any other wrong subject ("subject", never "invalid")."""
        for sub in (42, ["session"], {"session": 1}, None, True):
            self.assertEqual(self.reason(sub=sub), "subject", sub)


class RememberedTokenTests(VerifierMixin, SynchronousTestCase):
    """
    A token that verified is remembered (by its SHA-256) and not verified
    again; what time can change is checked every time, and nothing else
    about the token can change.
    """

    def counted(self, verifier: TokenVerifier) -> list[str]:
        """The tokens whose signature and claims C{verifier} checks from now on."""
        checked: list[str] = []
        full = verifier._verified

        def counting(token: str) -> Claims:
            checked.append(token)
            return full(token)

        self.patch(verifier, "_verified", counting)
        return checked

    def test_once(self) -> None:
        """The second login with a token costs no verification, and gives the same claims in a new object."""
        verifier = self.verifier()
        checked = self.counted(verifier)
        token = self.token(uid="ID1A2B3C4D5E", jti="J-1", exp=NOW + 60)
        first = verifier.verify(token)
        second = verifier.verify(token)
        self.assertEqual(checked, [token])
        self.assertEqual(first, second)
        self.assertIsNot(first, second)
        self.assertEqual((second.uid, second.jti, second.expires_at), ("ID1A2B3C4D5E", "J-1", NOW + 60))

    def test_expires_while_remembered(self) -> None:
        """A remembered token is expired at exp plus leeway, exactly as one verified anew, and forgotten then."""
        verifier = self.verifier(jwt_expiration_leeway=10.0)
        checked = self.counted(verifier)
        token = self.token(exp=NOW + 60)
        verifier.verify(token)
        self.clock.advance(69.5)
        verifier.verify(token)
        self.clock.advance(0.5)
        self.assertEqual(self.assertRaises(AuthError, verifier.verify, token).reason, "expired")
        self.assertEqual(self.assertRaises(AuthError, verifier.verify, token).reason, "expired")
        # The second refusal verified it anew: it was forgotten at the first.
        self.assertEqual(checked, [token, token])

    def test_refused_is_not_remembered(self) -> None:
        """A token refused for a reason time removes (nbf) verifies once that time has come."""
        verifier = self.verifier()
        token = self.token(nbf=NOW + 5)
        self.assertEqual(self.assertRaises(AuthError, verifier.verify, token).reason, "not_yet_valid")
        self.clock.advance(5)
        self.assertEqual(verifier.verify(token).uid, "ID1A2B3C4D5E")

    def test_another_signature(self) -> None:
        """A remembered token's header and claims under another signature are checked, and refused."""
        verifier = self.verifier()
        token = self.token()
        verifier.verify(token)
        head, body, signature = token.split(".")
        forged = f"{head}.{body}.{b64url(rs256_signature(head + '.' + body, other_rsa_key()))}"
        self.assertEqual(self.assertRaises(AuthError, verifier.verify, forged).reason, "signature")
        flipped = f"{head}.{body}.{signature[:-2]}{'A' if signature[-2] != 'A' else 'B'}{signature[-1]}"
        self.assertEqual(self.assertRaises(AuthError, verifier.verify, flipped).reason, "signature")

    def test_bounded(self) -> None:
        """At most C{remember} tokens are remembered; the one presented least recently goes first."""
        clock = Clock()
        clock.advance(NOW)
        verifier = TokenVerifier(rsa_key().public_key(), ["RS256"], clock, remember=2)
        checked = self.counted(verifier)
        a, b, c = (self.token(jti=f"J-{n}") for n in range(3))
        for token in (a, b, a, c):  # b is now the least recent: c pushes it out
            verifier.verify(token)
        self.assertEqual(checked, [a, b, c])
        verifier.verify(a)
        verifier.verify(c)
        self.assertEqual(checked, [a, b, c])
        verifier.verify(b)
        self.assertEqual(checked, [a, b, c, b])

    def test_remember_none(self) -> None:
        """With C{remember=0} every presentation is verified."""
        clock = Clock()
        clock.advance(NOW)
        verifier = TokenVerifier(rsa_key().public_key(), ["RS256"], clock, remember=0)
        checked = self.counted(verifier)
        token = self.token()
        verifier.verify(token)
        verifier.verify(token)
        self.assertEqual(checked, [token, token])

    def test_the_default_bound(self) -> None:
        """The configured verifier remembers more tokens than a large process has members."""
        self.assertEqual(self.verifier()._remember, REMEMBERED_TOKENS)
        self.assertGreaterEqual(REMEMBERED_TOKENS, 30_000)
