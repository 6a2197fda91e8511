"""
The peatio-ws live demo: ``make demo`` (or ``.venv/bin/python demo/run.py``).

One command starts everything a front-end developer needs to watch the
private stream in a browser:

 - a development key pair in ``.dev/`` (made once, reused; the same files
   ``make dev-key`` writes, so ``make run`` trusts the demo's tokens too);
 - the daemon, ``twistd -n peatio-ws`` from this checkout, trusting that key;
 - a tiny HTTP server on 127.0.0.1 serving the page in this directory, plus
   C{POST /dev/token}, a DEVELOPMENT-ONLY endpoint that signs a token for any
   uid with the local development key (it exists only in this runner, never in
   the daemon);
 - a stream of realistic sample orders and trades for a couple of members,
   published on RabbitMQ about every second.

Ctrl-C stops it all: the publisher, the web server, then the daemon (SIGTERM,
so connected pages see close code 1001).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import IO, Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.web import resource, server, static
from txamqp.content import Content
from txamqp.endpoint import AMQEndpoint
from txamqp.factory import AMQFactory

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # `python demo/run.py` without PYTHONPATH=.
    sys.path.insert(0, str(REPO))

from peatio_ws import _txamqp_compat  # noqa: E402
from peatio_ws.config import ConfigError, Settings, load_settings  # noqa: E402

#: The members the sample stream is published for (Peatio-style uids).
DEFAULT_MEMBERS = ("ID1A2B3C4D5E", "IDF6E5D4C3B2")
#: The files the page is made of; nothing else in this directory is served.
PAGE_FILES = {"": "index.html", "index.html": "index.html", "app.js": "app.js", "style.css": "style.css"}
#: What a uid may look like on the dev token endpoint (it ends up in a routing key).
UID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
DEV_NOTE = "DEVELOPMENT ONLY: signed by the demo runner with the local development key in .dev/"
#: Content-Security-Policy of the page: its own files and WebSocket connections, nothing else.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def say(text: str) -> None:
    """One line for the person at the terminal."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# -- development key ------------------------------------------------------------


@dataclass
class DevKey:
    """The development private key, its JWS algorithm and JWT_PUBLIC_KEY value."""

    private: Any
    algorithm: str
    public_b64: str
    path: Path

    def token(self, uid: str, lifetime: int) -> tuple[str, int]:
        """A Barong-shaped session token for C{uid}; returns (token, exp)."""
        now = int(time.time())
        claims = {
            "sub": "session",
            "jti": uuid.uuid4().hex,
            "uid": uid,
            "iat": now,
            "exp": now + lifetime,
            "aud": ["peatio"],
            "iss": "barong",
            "email": f"{uid.lower()}@example.com",
            "role": "member",
            "level": 3,
            "state": "active",
        }
        return jwt.encode(claims, self.private, algorithm=self.algorithm), now + lifetime


def _algorithm(key: Any) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}.get(key.curve.name, "ES256")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise ValueError(f"unsupported key type {type(key).__name__}")


def load_or_create_key(path: Path) -> tuple[DevKey, bool]:
    """Load the PEM private key at C{path}, or make an RSA one there; (key, created)."""
    created = False
    if path.exists():
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        created = True
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Peatio's convention: URL-safe base64 of the PEM text.
    public_b64 = base64.urlsafe_b64encode(public_pem).decode("ascii")
    return DevKey(private, _algorithm(private), public_b64, path), created


def sync_env_file(key: DevKey, created: bool) -> None:
    """Keep ``jwt.env`` beside the key (what ``make run`` reads) in step with it."""
    env_file = key.path.with_name("jwt.env")
    line = f"JWT_PUBLIC_KEY={key.public_b64}\n"
    if created or not env_file.exists():
        env_file.write_text(line, encoding="ascii")
    elif env_file.read_text(encoding="ascii", errors="replace").strip() != line.strip():
        say(f"note: {env_file} holds another public key than {key.path}; `make run` will not trust demo tokens")


# -- sample events ----------------------------------------------------------------


@dataclass
class Market:
    """A market with a drifting last price."""

    name: str
    price: Decimal
    price_step: Decimal
    volume_step: Decimal
    typical_volume: float


@dataclass
class SampleOrder:
    """One member's order as the simulator keeps it."""

    id: int
    uid: str
    market: Market
    side: str
    ord_type: str
    price: Decimal | None
    origin_volume: Decimal
    created_at: str
    executed_volume: Decimal = Decimal(0)
    funds: Decimal = Decimal(0)
    trades_count: int = 0
    state: str = "wait"

    @property
    def remaining_volume(self) -> Decimal:
        return self.origin_volume - self.executed_volume

    def payload(self) -> dict[str, Any]:
        """The order event, with the fields peatio documents."""
        avg = (self.funds / self.executed_volume).quantize(self.market.price_step) if self.executed_volume else 0
        return {
            "id": self.id,
            "side": self.side,
            "ord_type": self.ord_type,
            "price": _text(self.price) if self.price is not None else None,
            "avg_price": _text(Decimal(avg)),
            "state": self.state,
            "market": self.market.name,
            "created_at": self.created_at,
            "origin_volume": _text(self.origin_volume),
            "remaining_volume": _text(self.remaining_volume),
            "executed_volume": _text(self.executed_volume),
            "trades_count": self.trades_count,
        }


def _text(value: Decimal) -> str:
    """A decimal as Peatio writes it: plain notation, no exponent."""
    return format(value.normalize(), "f") if value else "0.0"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class SampleStream:
    """
    Plausible private events for a few members: limit orders placed, filled
    in parts (one trade event and one order update per fill), cancelled, and
    market orders filled at once.
    """

    members: Sequence[str]
    rng: random.Random = field(default_factory=random.Random)
    open_orders: dict[str, list[SampleOrder]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.markets = [
            Market("btcusd", Decimal("64250.00"), Decimal("0.01"), Decimal("0.0001"), 0.25),
            Market("ethusd", Decimal("3180.50"), Decimal("0.01"), Decimal("0.001"), 2.5),
            Market("ethbtc", Decimal("0.049512"), Decimal("0.000001"), Decimal("0.001"), 3.0),
        ]
        base = self.rng.randrange(100_000, 900_000)
        self._order_ids = iter(range(base, 10**9))
        self._trade_ids = iter(range(base * 3, 10**9))

    def tick(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """The events of one tick, as (uid, event, payload): one action per member."""
        for market in self.markets:
            drift = Decimal(str(round(self.rng.gauss(0, 0.0007), 6)))
            market.price = (market.price * (1 + drift)).quantize(market.price_step, ROUND_HALF_UP)
        for uid in self.members:
            orders = self.open_orders.setdefault(uid, [])
            roll = self.rng.random()
            if not orders or (roll < 0.4 and len(orders) < 8):
                yield from self._place(uid, orders)
            elif roll < 0.8:
                yield from self._fill(self.rng.choice(orders), orders)
            else:
                order = self.rng.choice(orders)
                order.state = "cancel"
                orders.remove(order)
                yield uid, "order", order.payload()

    def _place(self, uid: str, orders: list[SampleOrder]) -> Iterator[tuple[str, str, dict[str, Any]]]:
        market = self.rng.choice(self.markets)
        side = self.rng.choice(("buy", "sell"))
        volume = Decimal(str(self.rng.uniform(0.2, 1.8) * market.typical_volume)).quantize(market.volume_step)
        if self.rng.random() < 0.2:
            order = SampleOrder(next(self._order_ids), uid, market, side, "market", None, volume, _now())
            yield from self._fill(order, orders, everything=True)
            return
        # A limit price a little off the market, on the patient side.
        offset = Decimal(str(self.rng.uniform(0.0, 0.004)))
        factor = 1 - offset if side == "buy" else 1 + offset
        price = (market.price * factor).quantize(market.price_step)
        order = SampleOrder(next(self._order_ids), uid, market, side, "limit", price, volume, _now())
        orders.append(order)
        yield uid, "order", order.payload()

    def _fill(
        self, order: SampleOrder, orders: list[SampleOrder], everything: bool = False
    ) -> Iterator[tuple[str, str, dict[str, Any]]]:
        remaining = order.remaining_volume
        if everything or remaining <= order.market.volume_step * 10 or self.rng.random() < 0.25:
            amount = remaining
        else:
            share = Decimal(str(self.rng.uniform(0.2, 0.7)))
            amount = max(order.market.volume_step, (remaining * share).quantize(order.market.volume_step))
        price = order.price if order.price is not None else order.market.price
        order.executed_volume += amount
        order.funds += price * amount
        total = (price * amount).quantize(order.market.price_step)
        order.trades_count += 1
        if order.remaining_volume <= 0:
            order.state = "done"
            if order in orders:
                orders.remove(order)
        trade = {
            "id": next(self._trade_ids),
            "price": _text(price),
            "amount": _text(amount),
            "total": _text(total),
            "market": order.market.name,
            "side": order.side,
            "created_at": _now(),
            "order_id": order.id,
        }
        yield order.uid, "trade", trade
        yield order.uid, "order", order.payload()


# -- the publisher ------------------------------------------------------------------


class Publisher:
    """Publishes the sample stream on RabbitMQ; reconnects when the broker goes away."""

    RETRY = 3.0

    def __init__(self, reactor: Any, settings: Settings, exchange: str, stream: SampleStream, interval: float) -> None:
        self.reactor = reactor
        self.settings = settings
        self.exchange = exchange
        self.stream = stream
        self.interval = interval
        self.published = 0
        self._client: Any = None
        self._channel: Any = None
        self._connecting = False
        self._next_attempt = 0.0
        self._warned = False
        self._loop: Any = None

    def start(self) -> None:
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True).addErrback(self._loop_failed)

    def _loop_failed(self, failure: Any) -> None:
        say(f"publisher stopped: {failure.getErrorMessage()}")

    def _tick(self) -> None:
        if self._channel is None or self._client is None or self._client.closed:
            self._channel = None
            if not self._connecting and self.reactor.seconds() >= self._next_attempt:
                self._connect()
            return
        for uid, event, payload in self.stream.tick():
            # Bytes only: txAMQP 0.8.2 counts a str body in characters.
            body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
            d = self._channel.basic_publish(
                exchange=self.exchange,
                routing_key=f"private.{uid}.{event}",
                content=Content(body, properties={"content-type": "application/json", "delivery-mode": 1}),
            )
            d.addErrback(self._publish_failed)
            self.published += 1

    def _publish_failed(self, failure: Any) -> None:
        self._channel = None

    def _connect(self) -> None:
        self._connecting = True
        d = Deferred.fromCoroutine(self._open())
        d.addTimeout(15, self.reactor)
        d.addCallbacks(self._connected, self._connect_failed)

    async def _open(self) -> tuple[Any, Any]:
        _txamqp_compat.install()
        s = self.settings
        endpoint = AMQEndpoint(
            self.reactor,
            s.rabbitmq_host,
            s.rabbitmq_port,
            username=s.rabbitmq_user,
            password=s.rabbitmq_password,
            vhost=s.rabbitmq_vhost,
            heartbeat=0,
            timeout=10,
        )
        client = await endpoint.connect(AMQFactory(spec=s.amqp_spec))
        try:
            channel = await client.channel(1)
            await channel.channel_open()
            # As Peatio (and the daemon) declare it; the same arguments or RabbitMQ refuses.
            await channel.exchange_declare(exchange=self.exchange, type="topic", durable=False)
        except BaseException:
            client.transport.loseConnection()
            raise
        return client, channel

    def _connected(self, result: tuple[Any, Any]) -> None:
        self._connecting = False
        self._client, self._channel = result
        if self._warned:
            say("publisher: connected to RabbitMQ again")
        self._warned = False

    def _connect_failed(self, failure: Any) -> None:
        self._connecting = False
        self._next_attempt = self.reactor.seconds() + self.RETRY
        if not self._warned:
            s = self.settings
            say(
                f"publisher: cannot reach RabbitMQ at {s.rabbitmq_host}:{s.rabbitmq_port} "
                f"({failure.getErrorMessage()}); retrying every {self.RETRY:.0f} s"
            )
            self._warned = True

    def stop(self) -> Any:
        """Stop publishing and close the broker connection: cleanly, within 2 s."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        client, self._client, self._channel = self._client, None, None
        if client is None or client.closed:
            return succeed(None)
        closing = Deferred.fromCoroutine(self._close(client))
        closing.addTimeout(2, self.reactor)
        closing.addErrback(lambda _: None)
        closing.addBoth(lambda _: client.closed or client.transport.loseConnection())
        return closing

    @staticmethod
    async def _close(client: Any) -> None:
        channel0 = await client.channel(0)
        await channel0.connection_close(reply_code=200, reply_text="peatio-ws demo stopping")


# -- the web side -------------------------------------------------------------------


def _host_allowed(request: Any, allowed: set[str] | None) -> bool:
    """Refuse foreign Host headers (DNS rebinding) when bound to loopback."""
    if allowed is None:
        return True
    host = (request.getHeader("host") or "").strip().lower()
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in allowed


def _security_headers(request: Any) -> None:
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"content-security-policy", CSP.encode("ascii"))


def _json(request: Any, status: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    return json.dumps(body).encode("utf-8") + b"\n"


def build_site(key: DevKey, page_config: dict[str, Any], token_lifetime: int, allowed_hosts: set[str] | None) -> Any:
    """The demo's web site: the page's files, C{/config.json} and C{POST /dev/token}."""
    class StaticFile(static.File):
        def render(self, request: Any) -> Any:
            if not _host_allowed(request, allowed_hosts):
                return _json(request, 403, {"error": "unexpected Host header"})
            _security_headers(request)
            return super().render(request)

    class ConfigResource(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            if not _host_allowed(request, allowed_hosts):
                return _json(request, 403, {"error": "unexpected Host header"})
            _security_headers(request)
            return _json(request, 200, page_config)

    class DevTokenResource(resource.Resource):
        """POST /dev/token {"uid": "..."}: DEVELOPMENT ONLY, never part of the daemon."""

        isLeaf = True

        def render_POST(self, request: Any) -> bytes:
            _security_headers(request)
            if not _host_allowed(request, allowed_hosts):
                return _json(request, 403, {"error": "unexpected Host header"})
            # A JSON content type makes a cross-site request preflighted (and refused).
            content_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
            if content_type != "application/json":
                return _json(request, 415, {"error": "send Content-Type: application/json"})
            try:
                body = json.loads(request.content.read(4096) or b"null")
                uid = body["uid"]
            except (ValueError, TypeError, KeyError):
                return _json(request, 400, {"error": 'send {"uid": "ID..."}'})
            if not isinstance(uid, str) or not UID_PATTERN.match(uid):
                return _json(request, 400, {"error": "uid: 1 to 64 letters, digits, '_' or '-'"})
            token, expires = key.token(uid, token_lifetime)
            return _json(request, 200, {"token": token, "uid": uid, "exp": expires, "note": DEV_NOTE})

        def render_GET(self, request: Any) -> bytes:
            _security_headers(request)
            request.setHeader(b"allow", b"POST")
            return _json(request, 405, {"error": 'POST {"uid": "ID..."} with Content-Type: application/json'})

    root = resource.Resource()
    for name, filename in PAGE_FILES.items():
        root.putChild(name.encode("ascii"), StaticFile(str(HERE / filename)))
    root.putChild(b"config.json", ConfigResource())
    dev = resource.Resource()
    dev.putChild(b"token", DevTokenResource())
    root.putChild(b"dev", dev)

    class QuietSite(server.Site):
        def log(self, request: Any) -> None:
            pass

    return QuietSite(root)


# -- the daemon ---------------------------------------------------------------------


class DaemonChild:
    """``twistd -n peatio-ws`` from this checkout, in its own session (Ctrl-C is ours to relay)."""

    def __init__(self, env: dict[str, str], log_path: Path, health_url: str) -> None:
        self.env = env
        self.log_path = log_path
        self.health_url = health_url
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start it and wait (bounded) until /health answers 200."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        # `python -m twisted.scripts.twistd` does nothing (that module has no
        # __main__ guard): use the twistd script beside this interpreter.
        twistd = Path(sys.executable).with_name("twistd")
        command = [str(twistd)]
        if not twistd.exists():
            command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [*command, "-n", "--pidfile=", "peatio-ws"],
            cwd=str(REPO),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the daemon exited with status {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as response:  # noqa: S310 - our URL
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as e:
                last = e.read().decode("utf-8", "replace").strip()
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the daemon was not healthy within {timeout:.0f} s ({last}):\n{self.tail()}")

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (clients get close code 1001), then SIGKILL if it hangs."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                say(f"the daemon did not stop within {timeout:.0f} s; killing it")
                process.kill()
                process.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, lines: int = 25) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _port_in_use(host: str, port: int) -> bool:
    probe = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    try:
        with socket.create_connection((probe, port), timeout=1):
            return True
    except OSError:
        return False


# -- main ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="demo/run.py",
        description="peatio-ws live demo: daemon, demo page, dev tokens and a stream of sample orders and trades.",
    )
    parser.add_argument("--http-host", default=os.environ.get("DEMO_HTTP_HOST", "127.0.0.1"),
                        help="address of the demo web server (default 127.0.0.1; env DEMO_HTTP_HOST)")
    parser.add_argument("--http-port", type=int, default=int(os.environ.get("DEMO_HTTP_PORT", "8090")),
                        help="port of the demo web server (default 8090; env DEMO_HTTP_PORT)")
    parser.add_argument("--key", type=Path, default=REPO / ".dev" / "jwt-private.pem",
                        help="development private key (PEM); made when missing (default .dev/jwt-private.pem)")
    parser.add_argument("--no-daemon", action="store_true",
                        help="do not start the daemon: use one already running (e.g. `make run`) that trusts --key")
    parser.add_argument("--no-publisher", action="store_true", help="do not publish sample events")
    parser.add_argument("--members", default=",".join(DEFAULT_MEMBERS),
                        help="comma list of uids to publish sample events for")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between sample ticks (default 1)")
    parser.add_argument("--exchange", help="events exchange (default RABBITMQ_EVENTS_EXCHANGE)")
    parser.add_argument("--ws-url", help="WebSocket URL the page starts with (default ws://<page host>:<port>/)")
    parser.add_argument("--token-lifetime", type=int, default=3600, help="seconds a dev token is valid (default 3600)")
    parser.add_argument("--seed", type=int, help="seed of the sample stream (for repeatable runs)")
    args = parser.parse_args(argv)
    members = [m.strip() for m in args.members.split(",") if m.strip()]
    bad = [m for m in members if not UID_PATTERN.match(m)]
    if bad:
        parser.error(f"--members: not a uid: {', '.join(bad)}")
    args.member_list = members
    if args.interval <= 0:
        parser.error("--interval must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    key_path: Path = args.key if args.key.is_absolute() else Path.cwd() / args.key
    try:
        key, created = load_or_create_key(key_path)
    except (OSError, ValueError, TypeError) as e:
        say(f"demo: cannot use the development key {key_path}: {e}")
        return 2
    if key_path == REPO / ".dev" / "jwt-private.pem":
        sync_env_file(key, created)
    try:
        settings = load_settings(overrides={"JWT_PUBLIC_KEY": key.public_b64, "JWT_ALGORITHM": key.algorithm})
    except ConfigError as e:
        say(f"demo: configuration error: {e}")
        return 2
    exchange = args.exchange or settings.rabbitmq_events_exchange

    if _port_in_use(args.http_host, args.http_port):
        say(f"demo: port {args.http_port} is already in use; pick another with `make demo ARGS='--http-port 8091'`")
        return 1
    daemon: DaemonChild | None = None
    ws_host = os.environ.get("WEBSOCKET_HOST", "127.0.0.1")
    if not args.no_daemon:
        env = {**os.environ, "PYTHONPATH": str(REPO), "JWT_PUBLIC_KEY": key.public_b64,
               "JWT_ALGORITHM": key.algorithm, "RABBITMQ_EVENTS_EXCHANGE": exchange}
        # Loopback unless told otherwise: the demo trusts a key anyone here can read.
        env.setdefault("WEBSOCKET_HOST", "127.0.0.1")
        env.setdefault("METRICS_HOST", "127.0.0.1")
        env.pop("NOTIFY_SOCKET", None)
        if _port_in_use(env["WEBSOCKET_HOST"], settings.websocket_port):
            say(f"demo: port {settings.websocket_port} is already in use. If `make run` is running, "
                "stop it or use `make demo ARGS=--no-daemon`; or pick another port with WEBSOCKET_PORT=...")
            return 1
        metrics_host = env["METRICS_HOST"]
        if metrics_host in ("0.0.0.0", "::", ""):
            metrics_host = "127.0.0.1"
        daemon = DaemonChild(env, REPO / ".dev" / "demo-daemon.log",
                             f"http://{metrics_host}:{settings.metrics_port}/health")
        say(f"demo: starting the daemon (log: {daemon.log_path.relative_to(REPO)}) ...")
        try:
            daemon.start()
        except RuntimeError as e:
            say(f"demo: {e}")
            return 1
        except KeyboardInterrupt:
            daemon.stop()
            return 130
    try:
        return _serve(args, settings, key, exchange, daemon, ws_host)
    finally:
        if daemon is not None:
            daemon.stop()
            say("demo: daemon stopped")


def _serve(
    args: argparse.Namespace, settings: Settings, key: DevKey, exchange: str, daemon: DaemonChild | None, ws_host: str
) -> int:
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)])],
        redirectStandardIO=False,
    )
    page_config = {
        "wsUrl": args.ws_url,
        "wsPort": settings.websocket_port,
        "members": args.member_list,
        "devTokens": True,
        "devNote": DEV_NOTE,
    }
    loopback = args.http_host in LOOPBACK_NAMES
    allowed = (LOOPBACK_NAMES | {args.http_host}) if loopback else None
    site = build_site(key, page_config, args.token_lifetime, allowed)
    try:
        port = reactor.listenTCP(args.http_port, site, interface=args.http_host)
    except CannotListenError as e:
        say(f"demo: cannot serve the page on {args.http_host}:{args.http_port} ({e.socketError}); "
            "pick another port with `make demo ARGS='--http-port 8091'`")
        return 1
    if not loopback:
        say(f"WARNING: the development token endpoint is reachable on {args.http_host}: anyone who can reach it "
            "can mint tokens the demo daemon accepts. Development only.")

    publisher: Publisher | None = None
    if not args.no_publisher:
        stream = SampleStream(args.member_list, random.Random(args.seed))  # noqa: S311 - sample data
        publisher = Publisher(reactor, settings, exchange, stream, args.interval)
        publisher.start()

    status = {"code": 0}
    watchdog: LoopingCall | None = None
    if daemon is not None:

        def watch() -> None:
            code = daemon.exited()
            if code is not None:
                say(f"demo: the daemon exited unexpectedly (status {code}); last log lines:\n{daemon.tail()}")
                status["code"] = 1
                reactor.stop()

        watchdog = LoopingCall(watch)
        watchdog.start(1.0, now=False)

    def shutting_down() -> Any:
        say("\ndemo: stopping ...")
        if watchdog is not None and watchdog.running:
            watchdog.stop()
        steps = [maybeDeferred(port.stopListening)]
        if publisher is not None:
            steps.append(publisher.stop())
        return DeferredList(steps)

    reactor.addSystemEventTrigger("before", "shutdown", shutting_down)

    page_host = args.http_host if args.http_host not in ("0.0.0.0", "::") else "127.0.0.1"
    page_host = f"[{page_host}]" if ":" in page_host else page_host
    url = f"http://{page_host}:{args.http_port}/"
    ws_name = ws_host if ws_host not in ("0.0.0.0", "::") else "127.0.0.1"
    ws_url = args.ws_url or f"ws://{ws_name}:{settings.websocket_port}/"
    members = ", ".join(args.member_list)
    say("")
    say("peatio-ws demo is running")
    say(f"  WebSocket : {ws_url}" + ("" if daemon is not None else "  (daemon not started by the demo)"))
    say(f"  key       : {key.path} ({key.algorithm}, development only)")
    if publisher is not None:
        say(f"  events    : sample orders and trades for {members} every {args.interval:g} s on '{exchange}'")
    say("")
    say(f"  Open {url}")
    first = args.member_list[0] if args.member_list else DEFAULT_MEMBERS[0]
    say(f"  or connect at once: {url}?uid={first}&autoconnect=1")
    say("  Ctrl-C stops everything.")
    say("")
    reactor.run()
    if publisher is not None:
        say(f"demo: published {publisher.published} sample events")
    return status["code"]


if __name__ == "__main__":
    sys.exit(main())
