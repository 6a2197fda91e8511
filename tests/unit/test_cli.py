"""
Tests for L{peatio_ws.cli}.

Most run C{main()} in-process on commands that need no network (argument
errors, keygen, token, check-config). C{publish} is also run as a child
process against the real RabbitMQ on localhost, with a consumer built here;
C{revoke} against Redis is in L{tests.integration.test_redis_server}.
"""

from __future__ import annotations

import base64
import io
import os
import stat
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from peatio_ws import cli
from peatio_ws.auth import AuthError, TokenVerifier, load_public_key
from peatio_ws.config import Settings
from tests.support.paths import REPO

ORDER_FIELDS = {
    "id", "side", "ord_type", "price", "avg_price", "state", "market", "created_at",
    "origin_volume", "remaining_volume", "executed_volume", "trades_count",
}  # fmt: skip
TRADE_FIELDS = {"id", "price", "amount", "total", "market", "side", "created_at", "order_id"}


class CliCase(SynchronousTestCase):
    """Runs main() with captured stdout and stderr."""

    def run_cli(self, *argv: str, environ: dict[str, str] | None = None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        try:
            code = cli.main(list(argv), environ=environ if environ is not None else {})
        finally:
            self.patch(sys, "stdout", sys.__stdout__)
            self.patch(sys, "stderr", sys.__stderr__)
        return code, out.getvalue(), err.getvalue()

    def assertOneLineError(self, result: tuple[int, str, str], code: int, *fragments: str) -> str:
        got_code, out, err = result
        self.assertEqual(got_code, code, err)
        self.assertEqual(out, "")
        lines = err.strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertNotIn("Traceback", err)
        self.assertTrue(lines[0].startswith("peatio-ws"), lines[0])
        for fragment in fragments:
            self.assertIn(fragment, lines[0])
        return lines[0]


class UsageTests(CliCase):
    """Help, unknown commands and argument errors."""

    def test_no_command(self) -> None:
        """No command: a one-line hint, exit 2."""
        self.assertOneLineError(self.run_cli(), 2, "choose a command")

    def test_unknown_command(self) -> None:
        """An unknown command: one line, exit 2."""
        self.assertOneLineError(self.run_cli("frobnicate"), 2, "invalid choice")

    def test_help(self) -> None:
        """--help works for the tool and every command, exit 0."""
        for argv in ([], ["revoke"], ["keygen"], ["token"], ["publish"], ["check-config"]):
            code, out, err = self.run_cli(*argv, "--help")
            self.assertEqual(code, 0, argv)
            self.assertIn("usage: peatio-ws", out)
            self.assertEqual(err, "")

    def test_revoke_arguments(self) -> None:
        """revoke needs exactly one of --jti and --uid; --ttl is positive and only for --jti."""
        self.assertOneLineError(self.run_cli("revoke"), 2, "one of the arguments --jti --uid is required")
        self.assertOneLineError(self.run_cli("revoke", "--jti", "a", "--uid", "b"), 2, "not allowed with")
        self.assertOneLineError(self.run_cli("revoke", "--uid", "U", "--ttl", "60"), 2, "--ttl only applies to --jti")
        for ttl in ("0", "-5", "soon"):
            self.assertOneLineError(self.run_cli("revoke", "--jti", "J", "--ttl", ttl), 2, "--ttl")
        self.assertOneLineError(self.run_cli("revoke", "--jti", "  "), 2, "must not be blank")
        self.assertOneLineError(self.run_cli("revoke", "--uid", "a\nb"), 2, "control characters")
        self.assertOneLineError(self.run_cli("revoke", "--uid", "U", "--timeout", "0"), 2, "--timeout")

    def test_revoke_bad_config(self) -> None:
        """A bad REDIS_URL or --config file is a configuration error, exit 2, before any connection."""
        self.assertOneLineError(
            self.run_cli("revoke", "--uid", "U", environ={"REDIS_URL": "redis://host:port/x"}),
            2,
            "peatio-ws: configuration error: REDIS_URL:",
        )
        missing = self.mktemp()
        self.assertOneLineError(
            self.run_cli("revoke", "--uid", "U", "--config", missing), 2, "configuration error: --config: cannot read"
        )

    def test_publish_arguments(self) -> None:
        """publish checks the routing-key parts, the JSON and the count before connecting."""
        for bad in ("a.b", "a*", "a#", "a b", ""):
            self.assertOneLineError(self.run_cli("publish", "--uid", bad), 2, "--uid")
        self.assertOneLineError(self.run_cli("publish", "--uid", "U", "--event", "or.der"), 2, "--event")
        self.assertOneLineError(self.run_cli("publish", "--uid", "U", "--json", "{nope"), 2, "not valid JSON")
        self.assertOneLineError(self.run_cli("publish", "--uid", "U", "--json", '{"x": NaN}'), 2, "not valid JSON")
        self.assertOneLineError(self.run_cli("publish", "--uid", "U", "--count", "0"), 2, "--count")
        self.assertOneLineError(
            self.run_cli("publish", "--uid", "U", "--event", "balance"), 2, "no sample for event 'balance'"
        )
        self.assertOneLineError(self.run_cli("publish", "--uid", "U" * 300), 2, "longer than 255 bytes")

    def test_publish_bad_spec(self) -> None:
        """An unusable AMQP_SPEC is a configuration error naming the key."""
        self.assertOneLineError(
            self.run_cli("publish", "--uid", "U", environ={"AMQP_SPEC": "/nonexistent/amqp.xml"}),
            2,
            "configuration error: AMQP_SPEC: cannot read",
        )


class KeygenTests(CliCase):
    """keygen: a development key pair."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.out = self.dir / "jwt-private.pem"

    def keygen(self, *extra: str) -> tuple[int, str, str]:
        return self.run_cli("keygen", "--out", str(self.out), *extra)

    def public_value(self, stdout: str) -> str:
        self.assertTrue(stdout.endswith("\n"))
        lines = stdout.splitlines()
        self.assertEqual(len(lines), 1, stdout)
        name, _, value = lines[0].partition("=")
        self.assertEqual(name, "JWT_PUBLIC_KEY")
        return value

    def test_round_trip(self) -> None:
        """stdout is exactly the env line; it loads as JWT_PUBLIC_KEY and matches the 0600 private key."""
        code, out, err = self.keygen()
        self.assertEqual(code, 0, err)
        value = self.public_value(out)
        self.assertRegex(value, r"\A[A-Za-z0-9_=-]+\Z")
        public = load_public_key(value)
        assert isinstance(public, rsa.RSAPublicKey)
        self.assertEqual(public.key_size, 2048)
        self.assertEqual(stat.S_IMODE(self.out.stat().st_mode), 0o600)
        private = serialization.load_pem_private_key(self.out.read_bytes(), None)
        assert isinstance(private, rsa.RSAPrivateKey)
        self.assertEqual(private.public_key().public_numbers(), public.public_numbers())
        self.assertIn(str(self.out), err)
        self.assertEqual(base64.urlsafe_b64decode(value).splitlines()[0], b"-----BEGIN PUBLIC KEY-----")

    def test_bits(self) -> None:
        """--bits picks the size; below 2048 is refused."""
        code, out, _ = self.keygen("--bits", "3072")
        self.assertEqual(code, 0)
        self.assertEqual(load_public_key(self.public_value(out)).key_size, 3072)  # type: ignore[union-attr]
        self.assertOneLineError(self.run_cli("keygen", "--bits", "1024", "--out", str(self.dir / "x")), 2, "--bits")

    def test_never_overwrites(self) -> None:
        """An existing file is kept (exit 1, nothing on stdout) unless --force."""
        self.out.write_bytes(b"precious")
        self.assertOneLineError(self.keygen(), 1, "exists", "--force")
        self.assertEqual(self.out.read_bytes(), b"precious")

    def test_force(self) -> None:
        """--force replaces the key, still mode 0600, and prints the new public key."""
        _, first, _ = self.keygen()
        self.out.chmod(0o644)
        code, second, err = self.keygen("--force")
        self.assertEqual(code, 0, err)
        self.assertNotEqual(self.public_value(first), self.public_value(second))
        self.assertEqual(stat.S_IMODE(self.out.stat().st_mode), 0o600)
        self.assertEqual([p.name for p in self.dir.iterdir()], [self.out.name])

    def test_reuse(self) -> None:
        """--reuse keeps an existing key and prints its public key; without one it makes one."""
        code, first, _ = self.keygen("--reuse")
        self.assertEqual(code, 0)
        before = self.out.read_bytes()
        code, again, err = self.keygen("--reuse")
        self.assertEqual(code, 0, err)
        self.assertEqual(again, first)
        self.assertEqual(self.out.read_bytes(), before)
        self.assertIn("kept", err)
        self.assertOneLineError(self.keygen("--reuse", "--force"), 2, "not allowed with")

    def test_reuse_rejects_garbage(self) -> None:
        """--reuse on something that is not a private key: one line, exit 2."""
        self.out.write_text("hello")
        self.assertOneLineError(self.keygen("--reuse"), 2, "is not a PEM private key")

    def test_unwritable(self) -> None:
        """A directory that does not exist: one line, nothing on stdout."""
        self.assertOneLineError(
            self.run_cli("keygen", "--out", str(self.dir / "missing" / "k.pem")), 2, "cannot write"
        )


class TokenTests(CliCase):
    """token: signed tokens the daemon's verifier accepts."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.key_path = self.dir / "k.pem"
        code, out, err = self.run_cli("keygen", "--out", str(self.key_path))
        self.assertEqual(code, 0, err)
        self.public = out.strip().partition("=")[2]

    def token(self, *extra: str) -> str:
        code, out, err = self.run_cli("token", "--key", str(self.key_path), *extra)
        self.assertEqual(code, 0, err)
        self.assertEqual(err, "")
        lines = out.splitlines()
        self.assertEqual(len(lines), 1)
        return lines[0]

    def verifier(self, now: float | None = None, **settings: Any) -> TokenVerifier:
        clock = Clock()
        clock.advance(now if now is not None else datetime.now().timestamp())
        values = {"jwt_public_key": load_public_key(self.public), **settings}
        return Settings(**values).token_verifier(clock)

    def test_verifies(self) -> None:
        """A default token verifies with the daemon's verifier and carries Barong's claims."""
        token = self.token("--uid", "ID1A2B3C4D5E", "--email", "a@b.c", "--role", "admin", "--level", "2")
        claims = self.verifier().verify(token)
        self.assertEqual(claims.uid, "ID1A2B3C4D5E")
        self.assertEqual((claims.email, claims.role, claims.level, claims.state), ("a@b.c", "admin", 2, "active"))
        self.assertRegex(claims.jti, r"\A[0-9a-f]{32}\Z")
        raw = jwt.decode(token, options={"verify_signature": False})
        self.assertEqual(raw["sub"], "session")
        self.assertEqual(raw["iss"], "barong")
        self.assertEqual(raw["aud"], ["peatio"])
        self.assertEqual(raw["exp"] - raw["iat"], 3600)
        self.assertEqual(jwt.get_unverified_header(token)["alg"], "RS256")

    def test_unique_jti(self) -> None:
        """Each token gets its own random jti unless one is given."""
        a = jwt.decode(self.token("--uid", "U"), options={"verify_signature": False})
        b = jwt.decode(self.token("--uid", "U"), options={"verify_signature": False})
        self.assertNotEqual(a["jti"], b["jti"])
        given = self.verifier().verify(self.token("--uid", "U", "--jti", "my-jti"))
        self.assertEqual(given.jti, "my-jti")

    def test_expiry(self) -> None:
        """--exp sets the lifetime; 0 leaves exp out; a negative one is already expired."""
        now = datetime.now().timestamp()
        claims = self.verifier().verify(self.token("--uid", "U", "--exp", "60"))
        assert claims.expires_at is not None
        self.assertLess(abs(claims.expires_at - (now + 60)), 5)
        self.assertIsNone(self.verifier().verify(self.token("--uid", "U", "--exp", "0")).expires_at)
        expired = self.token("--uid", "U", "--exp", "-10")
        self.assertEqual(self.assertRaises(AuthError, self.verifier().verify, expired).reason, "expired")
        # Still good later than an hour when it has no exp.
        self.verifier(now + 10 * 86400).verify(self.token("--uid", "U", "--exp", "0"))

    def test_audience_and_issuer(self) -> None:
        """--aud and --iss end up in the token and are checked as configured."""
        token = self.token("--uid", "U", "--aud", "peatio,barong", "--aud", "applogic", "--iss", "auth.example")
        raw = jwt.decode(token, options={"verify_signature": False})
        self.assertEqual(raw["aud"], ["peatio", "barong", "applogic"])
        self.verifier(jwt_issuer="auth.example").verify(token)
        self.assertEqual(
            self.assertRaises(AuthError, self.verifier(jwt_issuer="barong").verify, token).reason, "issuer"
        )
        other = self.token("--uid", "U", "--aud", "elsewhere", "--iss", "")
        raw = jwt.decode(other, options={"verify_signature": False})
        self.assertNotIn("iss", raw)
        self.assertEqual(self.assertRaises(AuthError, self.verifier().verify, other).reason, "audience")

    def test_other_algorithms(self) -> None:
        """EC and Ed25519 keys sign with their algorithms; the daemon accepts them when configured."""
        keys: list[tuple[Any, str]] = [
            (ec.generate_private_key(ec.SECP256R1()), "ES256"),
            (ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
        ]
        for key, alg in keys:
            path = self.dir / f"{alg}.pem"
            path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
            code, out, err = self.run_cli("token", "--key", str(path), "--uid", "U", "--alg", alg)
            self.assertEqual(code, 0, err)
            public = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            clock = Clock()
            clock.advance(datetime.now().timestamp())
            settings = Settings(jwt_public_key=load_public_key(public.decode()), jwt_algorithm=(alg,))
            verifier = settings.token_verifier(clock)
            self.assertEqual(verifier.verify(out.strip()).uid, "U")

    def test_bad_algorithm(self) -> None:
        """An algorithm that is unsafe, unknown or does not fit the key: one line, exit 2."""
        cases = [("none", "never allowed"), ("HS256", "HMAC"), ("XX1", "unknown"), ("ES256", "does not fit")]
        for alg, fragment in cases:
            self.assertOneLineError(
                self.run_cli("token", "--key", str(self.key_path), "--uid", "U", "--alg", alg), 2, "--alg", fragment
            )

    def test_bad_key_file(self) -> None:
        """Missing, not a key, a public key, or encrypted: one line, exit 2."""
        missing = str(self.dir / "missing.pem")
        self.assertOneLineError(self.run_cli("token", "--key", missing, "--uid", "U"), 2, "cannot read")
        garbage = self.dir / "garbage.pem"
        garbage.write_text("not a key")
        self.assertOneLineError(self.run_cli("token", "--key", str(garbage), "--uid", "U"), 2, "not a PEM private key")
        public = self.dir / "public.pem"
        public.write_bytes(base64.urlsafe_b64decode(self.public))
        self.assertOneLineError(self.run_cli("token", "--key", str(public), "--uid", "U"), 2, "not a PEM private key")
        encrypted = self.dir / "encrypted.pem"
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
        encrypted.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            )
        )
        self.assertOneLineError(self.run_cli("token", "--key", str(encrypted), "--uid", "U"), 2, "encrypted")

    def test_required(self) -> None:
        """--uid and --key are required; a blank uid is refused."""
        self.assertOneLineError(self.run_cli("token", "--uid", "U"), 2, "--key")
        self.assertOneLineError(self.run_cli("token", "--key", str(self.key_path)), 2, "--uid")
        self.assertOneLineError(self.run_cli("token", "--key", str(self.key_path), "--uid", " "), 2, "blank")


class CheckConfigTests(CliCase):
    """check-config: the daemon's own validation, secrets masked."""

    def setUp(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public = base64.urlsafe_b64encode(pem).decode()

    def test_valid(self) -> None:
        """Every key is printed as KEY=value with secrets masked; exit 0."""
        code, out, err = self.run_cli(
            "check-config",
            environ={
                "JWT_PUBLIC_KEY": self.public,
                "RABBITMQ_PASSWORD": "hunter2",
                "REDIS_URL": "redis://:s3cret@redis.internal:6380/4",
                "WEBSOCKET_PORT": "9090",
            },
        )
        self.assertEqual(code, 0, err)
        values = dict(line.split("=", 1) for line in out.splitlines())
        self.assertEqual(values["WEBSOCKET_PORT"], "9090")
        self.assertEqual(values["RABBITMQ_PASSWORD"], "********")
        self.assertNotIn("hunter2", out)
        self.assertNotIn("s3cret", out)
        self.assertIn("redis.internal:6380/4", values["REDIS_URL"])
        self.assertNotIn(self.public, out)
        self.assertIn("configuration is valid", err)

    def test_config_file(self) -> None:
        """--config is read over the defaults, and the environment still wins."""
        path = Path(self.mktemp())
        path.write_text("WEBSOCKET_PORT: 7000\nMETRICS_PORT: 7001\n")
        code, out, err = self.run_cli(
            "check-config", "--config", str(path), environ={"JWT_PUBLIC_KEY": self.public, "METRICS_PORT": "7002"}
        )
        self.assertEqual(code, 0, err)
        self.assertIn("WEBSOCKET_PORT=7000\n", out)
        self.assertIn("METRICS_PORT=7002\n", out)

    def test_invalid(self) -> None:
        """A bad value: the daemon's one-line error, exit 2."""
        line = self.assertOneLineError(
            self.run_cli("check-config", environ={"JWT_PUBLIC_KEY": self.public, "WEBSOCKET_PORT": "http"}), 2
        )
        self.assertTrue(line.startswith("peatio-ws: configuration error: WEBSOCKET_PORT: must be"), line)

    def test_missing_key(self) -> None:
        """JWT_PUBLIC_KEY unset: named in the error."""
        self.assertOneLineError(
            self.run_cli("check-config"), 2, "peatio-ws: configuration error: JWT_PUBLIC_KEY: is required"
        )

    def test_unknown_key_in_file(self) -> None:
        """A typo in the file is reported with the key."""
        path = Path(self.mktemp())
        path.write_text("WEBSOCKET_PROT: 1\n")
        self.assertOneLineError(
            self.run_cli("check-config", "--config", str(path), environ={"JWT_PUBLIC_KEY": self.public}),
            2,
            "WEBSOCKET_PROT: unknown configuration key",
        )


class SamplePayloadTests(SynchronousTestCase):
    """The sample events look like Peatio's."""

    def test_order(self) -> None:
        """An order carries the documented fields, created_at in ISO 8601."""
        order = cli.sample_payload("order", 2, order_id=500)
        self.assertEqual(set(order), ORDER_FIELDS)
        self.assertEqual(order["id"], 502)
        self.assertIn(order["side"], ("buy", "sell"))
        self.assertIn(order["state"], ("wait", "done", "cancel"))
        self.assertIsNotNone(datetime.fromisoformat(order["created_at"]).tzinfo)

    def test_trade(self) -> None:
        """A trade carries the documented fields and points at an order."""
        trade = cli.sample_payload("trade", 1, order_id=500)
        self.assertEqual(set(trade), TRADE_FIELDS)
        self.assertEqual(trade["order_id"], 501)
        datetime.fromisoformat(trade["created_at"])

    def test_unknown(self) -> None:
        """Other events have no sample."""
        self.assertRaises(KeyError, cli.sample_payload, "balance")


class ModuleTests(TestCase):
    """The tool runs as `python -m peatio_ws.cli`."""

    async def test_python_m(self) -> None:
        """python -m peatio_ws.cli works, with exit codes."""
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out, err, code = await getProcessOutputAndValue(sys.executable, ["-m", "peatio_ws.cli", "--help"], env=env)
        self.assertEqual(code, 0, err)
        self.assertIn(b"usage: peatio-ws", out)
        out, err, code = await getProcessOutputAndValue(sys.executable, ["-m", "peatio_ws.cli", "revoke"], env=env)
        self.assertEqual(code, 2)
        self.assertEqual(len(err.splitlines()), 1, err)
