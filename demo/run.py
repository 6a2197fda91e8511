"""
The peatio-ws live demo: ``make demo`` (or ``.venv/bin/python demo/run.py``).

One command starts everything a front-end developer needs to watch the
private stream in a browser:

 - a development key pair in ``.dev/`` (L{demo.devkey});
 - the daemon, ``twistd -n peatio-ws`` from this checkout, trusting that key
   (L{tests.support.daemon.DaemonProcess}, the runner the tests use too);
 - a tiny HTTP server on 127.0.0.1 serving the page in this directory,
   a DEVELOPMENT-ONLY token endpoint, and a stand-in for the exchange's
   REST API, C{GET /api/v2/peatio/market/orders} (L{demo.site});
 - a stream of realistic sample orders and trades for a couple of members,
   and the public order book and trades of one market (L{demo.sample}),
   published on RabbitMQ about every second (L{demo.feed}); the page shows
   the market through the ranger dialect's public path (SPEC §7). Every
   order published is kept (L{demo.orders}): when the daemon closes the
   page with 1012 (events may have been lost, SPEC §8) the page reconnects
   and reloads its orders from that endpoint.

Ctrl-C stops it all: the publisher, the web server, then the daemon (SIGTERM,
so connected pages see close code 1001).
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

if __package__ in (None, ""):  # `python demo/run.py` without PYTHONPATH=.: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet.defer import DeferredList, maybeDeferred
from twisted.internet.task import LoopingCall

from demo.console import say
from demo.devkey import DevKey, load_or_create_key, sync_env_file
from demo.feed import SampleFeed
from demo.orders import OrderLedger
from demo.sample import MARKET_NAMES, SampleBook, SampleStream
from demo.site import DEV_NOTE, LOOPBACK_NAMES, ORDERS_PATH, UID_PATTERN, build_site
from peatio_ws.config import ConfigError, Settings, load_settings
from tests.support.daemon import DaemonProcess, loopback
from tests.support.paths import REPO

#: The members the sample stream is published for (Peatio-style uids).
DEFAULT_MEMBERS = ("ID1A2B3C4D5E", "IDF6E5D4C3B2")
#: The development key, beside what ``make dev-key`` writes.
DEV_KEY = REPO / ".dev" / "jwt-private.pem"
#: Where baseapp finds the public market streams (OpenDAX's rangerUrl + /public/).
RANGER_PUBLIC_PATH = "/api/v2/ranger/public/"


def _port_in_use(host: str, port: int) -> bool:
    try:
        with socket.create_connection((loopback(host), port), timeout=1):
            return True
    except OSError:
        return False


# -- main ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="demo/run.py",
        description="peatio-ws live demo: daemon, demo page, dev tokens, a stream of sample orders and trades, "
        "and one market's public order book and trades.",
    )
    parser.add_argument("--http-host", default=os.environ.get("DEMO_HTTP_HOST", "127.0.0.1"),
                        help="address of the demo web server (default 127.0.0.1; env DEMO_HTTP_HOST)")
    parser.add_argument("--http-port", type=int, default=int(os.environ.get("DEMO_HTTP_PORT", "8090")),
                        help="port of the demo web server (default 8090; env DEMO_HTTP_PORT)")
    parser.add_argument("--key", type=Path, default=DEV_KEY,
                        help="development private key (PEM); made when missing (default .dev/jwt-private.pem)")
    parser.add_argument("--no-daemon", action="store_true",
                        help="do not start the daemon: use one already running (e.g. `make run`) that trusts --key")
    parser.add_argument("--no-publisher", action="store_true", help="do not publish sample events")
    parser.add_argument("--members", default=",".join(DEFAULT_MEMBERS),
                        help="comma list of uids to publish sample events for")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between sample ticks (default 1)")
    parser.add_argument("--market", default="btcusd", choices=MARKET_NAMES,
                        help="the market whose public order book and trades are published and shown (default btcusd)")
    parser.add_argument("--snapshot-period", type=float, default=10.0,
                        help="seconds between order-book snapshots (default 10); increments in between")
    parser.add_argument("--gap-every", type=int, default=0, metavar="N",
                        help="leave out every N-th order-book increment, to watch the daemon hold the book back "
                             "until the next snapshot (default 0: never)")
    parser.add_argument("--exchange", help="events exchange (default RABBITMQ_EVENTS_EXCHANGE)")
    parser.add_argument("--ws-url", help="WebSocket URL the page starts with (default ws://<page host>:<port>/)")
    parser.add_argument("--ranger-url",
                        help="the ranger public path the market panel connects to "
                             f"(default: {RANGER_PUBLIC_PATH} on the --ws-url server, or on the page's host)")
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
    if args.snapshot_period <= 0:
        parser.error("--snapshot-period must be positive")
    if args.gap_every < 0:
        parser.error("--gap-every must be 0 (never) or positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    key_path: Path = args.key if args.key.is_absolute() else Path.cwd() / args.key
    try:
        key, created = load_or_create_key(key_path)
    except (OSError, ValueError, TypeError) as e:
        say(f"demo: cannot use the development key {key_path}: {e}")
        return 2
    if key_path == DEV_KEY:
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
    daemon: DaemonProcess | None = None
    ws_host = os.environ.get("WEBSOCKET_HOST", "127.0.0.1")
    if not args.no_daemon:
        if _port_in_use(ws_host, settings.websocket_port):
            say(f"demo: port {settings.websocket_port} is already in use. If `make run` is running, "
                "stop it or use `make demo ARGS=--no-daemon`; or pick another port with WEBSOCKET_PORT=...")
            return 1
        daemon = DaemonProcess(
            env={
                "JWT_PUBLIC_KEY": key.public_b64,
                "JWT_ALGORITHM": key.algorithm,
                # Loopback unless told otherwise: the demo trusts a key anyone here can read.
                "WEBSOCKET_HOST": ws_host,
                "METRICS_HOST": os.environ.get("METRICS_HOST", "127.0.0.1"),
                # The configured delay, not the tests' short one.
                "RABBITMQ_UNBIND_DELAY": os.environ.get("RABBITMQ_UNBIND_DELAY"),
            },
            port=settings.websocket_port,
            metrics_port=settings.metrics_port,
            exchange=exchange,
            log_path=REPO / ".dev" / "demo-daemon.log",
            own_session=True,  # Ctrl-C is ours to relay
            error_lines=25,
        )
        say(f"demo: starting the daemon (log: {daemon.log_path.relative_to(REPO)}) ...")
        try:
            daemon.start()
        except RuntimeError as e:
            say(f"demo: {e}")
            _stop(daemon)
            return 1
        except KeyboardInterrupt:
            _stop(daemon)
            return 130
    try:
        return _serve(args, settings, key, exchange, daemon, ws_host)
    finally:
        if daemon is not None:
            _stop(daemon)
            say("demo: daemon stopped")


def _stop(daemon: DaemonProcess) -> None:
    """SIGTERM (connected pages get close code 1001), SIGKILL if it hangs; keep its log."""
    try:
        daemon.stop(15)
    except RuntimeError as e:
        say(f"demo: {e.args[0].splitlines()[0]}")
    finally:
        daemon.cleanup()


def _serve(
    args: argparse.Namespace, settings: Settings, key: DevKey, exchange: str, daemon: DaemonProcess | None, ws_host: str
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
    ranger_url = args.ranger_url or (urljoin(args.ws_url, RANGER_PUBLIC_PATH) if args.ws_url else None)
    page_config = {
        "wsUrl": args.ws_url,
        "wsPort": settings.websocket_port,
        "rangerUrl": ranger_url,
        "rangerPath": RANGER_PUBLIC_PATH,
        "market": args.market,
        "ordersUrl": ORDERS_PATH,
        "members": args.member_list,
        "devTokens": True,
        "devNote": DEV_NOTE,
    }
    on_loopback = args.http_host in LOOPBACK_NAMES
    allowed = (LOOPBACK_NAMES | {args.http_host}) if on_loopback else None
    # What the stand-in for the exchange's REST API knows: the orders the feed published.
    ledger = OrderLedger()
    site = build_site(key, page_config, args.token_lifetime, allowed, ledger)
    try:
        port = reactor.listenTCP(args.http_port, site, interface=args.http_host)
    except CannotListenError as e:
        say(f"demo: cannot serve the page on {args.http_host}:{args.http_port} ({e.socketError}); "
            "pick another port with `make demo ARGS='--http-port 8091'`")
        return 1
    if not on_loopback:
        say(f"WARNING: the development token endpoint is reachable on {args.http_host}: anyone who can reach it "
            "can mint tokens the demo daemon accepts. Development only.")

    publisher: SampleFeed | None = None
    if not args.no_publisher:
        stream = SampleStream(args.member_list, random.Random(args.seed))  # noqa: S311 - sample data
        market = next(m for m in stream.markets if m.name == args.market)
        book_rng = random.Random(None if args.seed is None else args.seed + 1)  # noqa: S311 - sample data
        book = SampleBook(market, book_rng)
        publisher = SampleFeed(
            reactor, settings, exchange, stream, args.interval, book, args.snapshot_period, args.gap_every, ledger
        )
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
    say(f"  market    : {ranger_url or urljoin(ws_url, RANGER_PUBLIC_PATH)}"
        f"?stream={args.market}.ob-inc&stream={args.market}.trades")
    if publisher is not None:
        say(f"  events    : sample orders and trades for {members} every {args.interval:g} s on '{exchange}'")
        say(f"              and {args.market}'s order book (a snapshot every {args.snapshot_period:g} s) and trades"
            + (f"; every {args.gap_every}th increment left out" if args.gap_every else ""))
        say(f"  orders    : {urljoin(url, ORDERS_PATH)} (stand-in for the exchange's REST API: "
            "the page reloads from it after a close 1012)")
    say("")
    say(f"  Open {url}")
    first = args.member_list[0] if args.member_list else DEFAULT_MEMBERS[0]
    say(f"  or connect at once: {url}?uid={first}&autoconnect=1")
    say("  Ctrl-C stops everything.")
    say("")
    reactor.run()
    if publisher is not None:
        skipped = f" ({publisher.skipped} increments left out on purpose)" if publisher.skipped else ""
        say(f"demo: published {publisher.published} sample events{skipped}")
    return status["code"]


if __name__ == "__main__":
    sys.exit(main())
