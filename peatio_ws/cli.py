# -*- test-case-name: tests.unit.test_cli,tests.integration.test_redis_server -*-
"""
C{peatio-ws}: the command-line tool for operators and developers.

  - C{revoke}: revoke a token (C{--jti}) or end a member's sessions (C{--uid});
  - C{keygen}: a development RSA key pair, the public half as JWT_PUBLIC_KEY;
  - C{token}: a Barong-shaped session token signed with a private key;
  - C{publish}: a sample (or given) private event on the RabbitMQ exchange;
  - C{check-config}: validate the configuration as the daemon would.

Results go to stdout (C{keygen} prints only the C{JWT_PUBLIC_KEY=...} line,
C{token} only the token, so both can be redirected); messages go to stderr.
Expected failures print one line and exit non-zero, never a traceback:
2 for bad arguments, configuration or input files, 1 when Redis or
RabbitMQ cannot be used.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from peatio_ws.config import KEYS, ConfigError, describe, load_settings, raw_values

__all__ = ["main", "sample_payload"]

PROG = "peatio-ws"

#: Exit codes.
FAILED = 1
USAGE = 2

#: Seconds any network step may take before giving up.
DEFAULT_TIMEOUT = 10.0


class CliError(Exception):
    """An expected failure: one line for stderr and an exit code."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and testable) instead of usage text plus exit."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{self.prog}: error: {message} (see '{self.prog} --help')", USAGE)


# ---------------------------------------------------------------------------
# Argument types: each raises ArgumentTypeError with a short reason.


def _int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise argparse.ArgumentTypeError(f"must be a whole number {bound}, got {value}")
        return value

    return parse


def _nonblank(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be blank")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise argparse.ArgumentTypeError("must not contain control characters")
    return text


def _routing_word(text: str) -> str:
    """A uid or event name that fits one part of a routing key private.<uid>.<event>."""
    text = _nonblank(text)
    if any(c in text for c in ".*# \t"):
        raise argparse.ArgumentTypeError(f"must not contain '.', '*', '#' or spaces (routing key part), got {text!r}")
    return text


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text!r}")
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_text(text: str) -> str:
    """Strict JSON, as the daemon forwards it (NaN and Infinity would break a browser's JSON.parse)."""
    try:
        json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:
        raise argparse.ArgumentTypeError(f"is not valid JSON: {e}") from None
    return text


# ---------------------------------------------------------------------------
# Configuration.


def _raw_config(args: argparse.Namespace) -> dict[str, Any]:
    try:
        return raw_values(args.config, args.environ)
    except ConfigError as e:
        raise CliError(f"{PROG}: configuration error: {e}", USAGE) from None


def _parse_keys(values: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    """Parse only the keys a command needs (revoke needs no JWT key, say)."""
    parsed = {}
    for key in keys:
        try:
            parsed[key] = KEYS[key](values.get(key))
        except ValueError as e:
            raise CliError(f"{PROG}: configuration error: {ConfigError(key, str(e))}", USAGE) from None
    return parsed


# ---------------------------------------------------------------------------
# Running Twisted code.


def _react(main: Callable[[Any], Coroutine[Any, Any, int]]) -> int:
    """
    Run C{main(reactor)} under task.react and return its exit code. Errors
    are carried out of the reactor and raised here, so a CliError still
    prints one line and anything unexpected a normal traceback.
    """
    from twisted.internet import task

    outcome: list[Any] = []

    async def run(reactor: Any) -> None:
        try:
            outcome.append(await main(reactor))
        except BaseException as e:
            outcome.append(e)

    with contextlib.suppress(SystemExit):
        task.react(run)
    if not outcome:
        raise CliError(f"{PROG}: interrupted", 130)
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return int(outcome[0])


# ---------------------------------------------------------------------------
# revoke


def _revoke(args: argparse.Namespace) -> int:
    if args.ttl is not None and args.jti is None:
        raise CliError(f"{PROG} revoke: error: --ttl only applies to --jti", USAGE)
    address = _parse_keys(_raw_config(args), "REDIS_URL")["REDIS_URL"]
    return _react(lambda reactor: _revoke_async(reactor, args, address))


async def _revoke_async(reactor: Any, args: argparse.Namespace, address: Any) -> int:
    from peatio_ws.redis import (
        REVOCATIONS_CHANNEL,
        RedisUnavailable,
        connect_client,
        revocation_message,
        revoked_key,
    )

    try:
        client = await connect_client(address, reactor, timeout=args.timeout)
    except RedisUnavailable as e:
        raise CliError(f"{PROG}: {e}") from None
    try:
        if args.jti is not None:
            key = revoked_key(args.jti)
            # The value is when it was revoked, for whoever looks at the key.
            await client.set(key, str(int(time.time())), args.ttl).addTimeout(args.timeout, reactor)
            receivers = await client.publish(REVOCATIONS_CHANNEL, revocation_message(jti=args.jti)).addTimeout(
                args.timeout, reactor
            )
            expiry = f"expires in {args.ttl} s" if args.ttl else "no expiry"
            print(
                f"revoked jti {args.jti}: set {key} ({expiry}); "
                f"live revocation received by {receivers} subscriber(s)"
            )
        else:
            receivers = await client.publish(REVOCATIONS_CHANNEL, revocation_message(uid=args.uid)).addTimeout(
                args.timeout, reactor
            )
            print(f"revoked uid {args.uid}: live revocation received by {receivers} subscriber(s)")
        if not receivers:
            print(f"{PROG}: note: no peatio-ws process is subscribed, so no live session was ended", file=sys.stderr)
    except Exception as e:
        raise CliError(f"{PROG}: Redis error: {_one_line(e)}") from None
    finally:
        with contextlib.suppress(Exception):
            await client.close().addTimeout(args.timeout, reactor)
    return 0


# ---------------------------------------------------------------------------
# keygen


def _keygen(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    out = Path(args.out)
    if args.reuse and out.exists():
        key = _load_private_key(out)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise CliError(f"{PROG}: {out} is not an RSA private key", USAGE)
        print(f"{PROG}: kept the existing private key {out}", file=sys.stderr)
    else:
        if out.exists() and not args.force:
            raise CliError(f"{PROG}: {out} exists; use --force to replace it or --reuse to keep it", FAILED)
        key = rsa.generate_private_key(public_exponent=65537, key_size=args.bits)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_private(out, pem, replace=args.force)
        print(
            f"{PROG}: wrote a {args.bits}-bit RSA private key to {out} (mode 0600, for development only)",
            file=sys.stderr,
        )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Peatio's convention: URL-safe base64 of the PEM, as Ruby's urlsafe_encode64 writes it.
    print(f"JWT_PUBLIC_KEY={base64.urlsafe_b64encode(public).decode('ascii')}")
    return 0


def _write_private(path: Path, data: bytes, *, replace: bool) -> None:
    """
    Write a private key readable by its owner only. Without C{replace} an
    existing file is never touched (O_EXCL); with it the new key is written
    beside it and renamed over it, so a failure leaves the old one intact.
    """
    try:
        if not replace:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            tmp = None
        else:
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            tmp = Path(name)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            if tmp is not None:
                os.replace(tmp, path)
        except BaseException:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise
    except FileExistsError:
        raise CliError(f"{PROG}: {path} exists; use --force to replace it or --reuse to keep it") from None
    except OSError as e:
        raise CliError(f"{PROG}: cannot write {path}: {e.strerror or e}", USAGE) from None


def _load_private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization

    try:
        data = path.read_bytes()
    except OSError as e:
        raise CliError(f"{PROG}: cannot read {path}: {e.strerror or e}", USAGE) from None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CliError(f"{PROG}: {path} is an encrypted private key; give an unencrypted one", USAGE) from None
    except Exception:
        raise CliError(f"{PROG}: {path} is not a PEM private key", USAGE) from None


# ---------------------------------------------------------------------------
# token


def _token(args: argparse.Namespace) -> int:
    import jwt

    from peatio_ws.auth import check_algorithm_names, check_key_matches

    key = _load_private_key(Path(args.key))
    try:
        check_algorithm_names((args.alg,))
        check_key_matches(key.public_key(), (args.alg,))
    except ValueError as e:
        raise CliError(f"{PROG} token: error: --alg: {e}", USAGE) from None
    now = int(time.time())
    claims: dict[str, Any] = {"iat": now}
    if args.exp:
        claims["exp"] = now + args.exp
    claims["sub"] = "session"
    if args.iss:
        claims["iss"] = args.iss
    audience = [a.strip() for value in (args.aud or ["peatio"]) for a in value.split(",") if a.strip()]
    if audience:
        claims["aud"] = audience
    claims.update(
        jti=args.jti or secrets.token_hex(16),
        uid=args.uid,
        email=args.email if args.email is not None else f"{args.uid.lower()}@example.com",
        role=args.role,
        level=args.level,
        state="active",
    )
    try:
        token = jwt.encode(claims, key, algorithm=args.alg)
    except Exception as e:
        raise CliError(f"{PROG}: cannot sign with {args.alg}: {_one_line(e)}", USAGE) from None
    print(token)
    return 0


# ---------------------------------------------------------------------------
# publish


def _iso_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def sample_payload(event: str, n: int = 0, *, order_id: int | None = None) -> dict[str, Any]:
    """
    A realistic private event as Peatio publishes it (decimals as strings),
    for C{publish}; C{n} makes ids of a series distinct.

    @raise KeyError: no sample for C{event}.
    """
    base = order_id if order_id is not None else 100_000 + secrets.randbelow(900_000)
    if event == "order":
        return {
            "id": base + n,
            "side": "buy",
            "ord_type": "limit",
            "price": "9500.0",
            "avg_price": "0.0",
            "state": "wait",
            "market": "btcusd",
            "created_at": _iso_now(),
            "origin_volume": "0.5",
            "remaining_volume": "0.5",
            "executed_volume": "0.0",
            "trades_count": 0,
        }
    if event == "trade":
        return {
            "id": base * 10 + n,
            "price": "9500.0",
            "amount": "0.25",
            "total": "2375.0",
            "market": "btcusd",
            "side": "buy",
            "created_at": _iso_now(),
            "order_id": base + n,
        }
    raise KeyError(event)


def _publish(args: argparse.Namespace) -> int:
    if args.json is None and args.event not in ("order", "trade"):
        raise CliError(
            f"{PROG} publish: error: no sample for event {args.event!r}; give its payload with --json", USAGE
        )
    routing_key = f"private.{args.uid}.{args.event}"
    if len(routing_key.encode("utf-8")) > 255:
        raise CliError(f"{PROG} publish: error: the routing key {routing_key!r} is longer than 255 bytes", USAGE)
    config = _parse_keys(
        _raw_config(args),
        "RABBITMQ_HOST",
        "RABBITMQ_PORT",
        "RABBITMQ_USER",
        "RABBITMQ_PASSWORD",
        "RABBITMQ_VHOST",
        "RABBITMQ_EVENTS_EXCHANGE",
        "AMQP_SPEC",
    )
    from peatio_ws.amqp.publisher import Publisher

    try:
        # Checked here, before the reactor runs, for its clear error.
        Publisher.check_spec(config["AMQP_SPEC"])
    except ConfigError as e:
        raise CliError(f"{PROG}: configuration error: {e}", USAGE) from None
    base = 100_000 + secrets.randbelow(900_000)
    bodies = [
        (args.json if args.json is not None else json.dumps(sample_payload(args.event, i, order_id=base))).encode(
            "utf-8"
        )
        for i in range(args.count)
    ]
    return _react(lambda reactor: _publish_async(reactor, args, config, bodies))


async def _publish_async(reactor: Any, args: argparse.Namespace, config: dict[str, Any], bodies: list[bytes]) -> int:
    from peatio_ws.amqp.publisher import Publisher, PublisherError

    host, port = config["RABBITMQ_HOST"], config["RABBITMQ_PORT"]
    exchange = config["RABBITMQ_EVENTS_EXCHANGE"]
    routing_key = f"private.{args.uid}.{args.event}"
    try:
        # Declares the exchange as Peatio does, so declaring is harmless when it exists.
        publisher = await Publisher.connect(
            reactor,
            host=host,
            port=port,
            user=config["RABBITMQ_USER"],
            password=config["RABBITMQ_PASSWORD"],
            vhost=config["RABBITMQ_VHOST"],
            exchange=exchange,
            spec=config["AMQP_SPEC"],
            timeout=args.timeout,
        )
        for body in bodies:
            publisher.publish(routing_key, body)
        # A round trip after the publishes (once the broker answers it has
        # taken them), then the connection is closed.
        await publisher.close()
    except PublisherError as e:
        raise CliError(f"{PROG}: RabbitMQ at {host}:{port}: {e}") from None
    what = "the given payload" if args.json is not None else f"sample {args.event} event"
    print(f"published {len(bodies)} x {what} to exchange {exchange} with routing key {routing_key}")
    return 0


def _one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())


# ---------------------------------------------------------------------------
# check-config


def _check_config(args: argparse.Namespace) -> int:
    try:
        load_settings(args.config, args.environ)
        values = raw_values(args.config, args.environ)
    except ConfigError as e:
        raise CliError(f"{PROG}: configuration error: {e}", USAGE) from None
    for key, text in describe(values):
        print(f"{key}={text}")
    source = f" ({args.config} over the defaults, then the environment)" if args.config else ""
    print(f"{PROG}: configuration is valid{source}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, one subcommand per task."""
    parser = _Parser(
        prog=PROG,
        description="Tools for the peatio-ws WebSocket daemon: revoke tokens, make development keys and "
        "tokens, publish test events, check the configuration.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    config = _Parser(add_help=False)
    config.add_argument(
        "--config",
        metavar="PATH",
        help="configuration file read over the packaged defaults, like `twistd peatio-ws --config` "
        "(environment variables of the same names still win)",
    )
    network = _Parser(add_help=False)
    network.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up on a network step after this long (default {DEFAULT_TIMEOUT:g})",
    )

    revoke = commands.add_parser(
        "revoke",
        parents=[config, network],
        help="revoke a token (--jti) or end a member's live sessions (--uid)",
        description="Revoke through Redis (REDIS_URL). --jti sets peatio-ws:revoked:<jti>, so the token "
        "can no longer authenticate, and ends its live sessions on every node. --uid ends every live "
        "session of a member on every node; it stores nothing, so it does not stop new logins (revoke "
        "the tokens, or disable the member in Barong, for that) and it misses nodes that are "
        "disconnected from Redis at that moment: check the subscriber count printed.",
    )
    who = revoke.add_mutually_exclusive_group(required=True)
    who.add_argument("--jti", type=_nonblank, help="the token id (jti claim) to revoke")
    who.add_argument("--uid", type=_nonblank, help="the member (uid claim) whose live sessions to end")
    revoke.add_argument(
        "--ttl",
        type=_int_range(1),
        metavar="SECONDS",
        help="with --jti: let the key expire after this long (use at least the token's remaining lifetime); "
        "default: never",
    )
    revoke.set_defaults(handler=_revoke)

    keygen = commands.add_parser(
        "keygen",
        help="make a development RSA key pair; prints JWT_PUBLIC_KEY=...",
        description="Make an RSA key pair for development. The private key is written to --out (mode "
        "0600); stdout gets exactly one line, JWT_PUBLIC_KEY=<URL-safe base64 of the public PEM>, ready "
        "for an env file. Production keys belong to Barong, not to this tool.",
    )
    keygen.add_argument("--bits", type=_int_range(2048, 8192), default=2048, help="RSA key size (default 2048)")
    keygen.add_argument(
        "--out", default="jwt-private.pem", metavar="PATH", help="private key file (default ./jwt-private.pem)"
    )
    existing = keygen.add_mutually_exclusive_group()
    existing.add_argument("--force", action="store_true", help="replace --out if it exists")
    existing.add_argument(
        "--reuse", action="store_true", help="if --out exists, keep it and print its public key instead"
    )
    keygen.set_defaults(handler=_keygen)

    token = commands.add_parser(
        "token",
        help="sign a Barong-shaped session token (for development and tests)",
        description="Print a session JWT as Barong issues it: iat, exp, sub=session, iss, aud, jti, uid, "
        "email, role, level, state=active.",
    )
    token.add_argument("--uid", required=True, type=_nonblank, help="the member id, e.g. ID1A2B3C4D5E")
    token.add_argument("--key", required=True, metavar="PRIVATE.pem", help="PEM private key to sign with")
    token.add_argument(
        "--exp",
        type=int,
        default=3600,
        metavar="SECONDS",
        help="lifetime (default 3600; 0: no exp claim; negative: already expired)",
    )
    token.add_argument("--email", help="default: <uid>@example.com")
    token.add_argument("--role", default="member", help="default: member")
    token.add_argument("--level", type=int, default=3, help="default: 3")
    token.add_argument(
        "--aud", action="append", metavar="AUDIENCE", help="audience; repeat or comma-separate (default: peatio)"
    )
    token.add_argument("--iss", default="barong", help="issuer (default: barong; empty: no iss claim)")
    token.add_argument("--jti", type=_nonblank, help="token id (default: random)")
    token.add_argument("--alg", default="RS256", help="signing algorithm matching the key (default: RS256)")
    token.set_defaults(handler=_token)

    publish = commands.add_parser(
        "publish",
        parents=[config, network],
        help="publish a private event for a member on RabbitMQ",
        description="Publish a sample order or trade event (or the --json payload) on "
        "RABBITMQ_EVENTS_EXCHANGE with routing key private.<uid>.<event>, as Peatio does.",
    )
    publish.add_argument("--uid", required=True, type=_routing_word, help="the member id")
    publish.add_argument(
        "--event", default="order", type=_routing_word, help="event name (default: order; samples: order, trade)"
    )
    publish.add_argument("--json", type=_json_text, metavar="PAYLOAD", help="the payload to send instead of a sample")
    publish.add_argument("--count", type=_int_range(1, 1_000_000), default=1, help="how many to publish (default 1)")
    publish.set_defaults(handler=_publish)

    check = commands.add_parser(
        "check-config",
        parents=[config],
        help="validate the configuration and show the effective values",
        description="Load the configuration exactly as the daemon does and print every effective value "
        "(secrets masked). Exit 0 when valid, 2 with the problem otherwise.",
    )
    check.set_defaults(handler=_check_config)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the tool; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            raise CliError(
                f"{PROG}: error: choose a command: revoke, keygen, token, publish, check-config (see '{PROG} --help')",
                USAGE,
            )
        args.environ = environ
        return int(args.handler(args))
    except CliError as e:
        print(e.message, file=sys.stderr)
        return e.code
    except SystemExit as e:
        # --help and --version exit through argparse.
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
