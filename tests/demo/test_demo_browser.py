"""
The live demo (``demo/``, ``make demo``) in a real browser.

Headless Debian Chromium loads the page from the demo runner (``demo/run.py``,
here without its own daemon), which talks to a real daemon (L{DaemonProcess})
and the real RabbitMQ. The browser is driven over the Chrome DevTools
Protocol with the ``websockets`` library, as a user would: typing, clicking.
The market panel (public streams, ranger dialect) is checked against the
real daemon fed by the runner's sample book, and its sequence rule against
a scripted ranger server (L{ScriptedRanger}). A close 1012 is made for real,
by deleting the daemon's queue on the broker: the page reloads its orders
from the runner's stand-in for the exchange's REST API.

Chromium is the Debian package ``chromium``. Without it the browser tests
skip locally and fail in CI (``CI=true``). A screenshot of the page with live
events is saved as ``demo-screenshot.png`` in the trial temp directory.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import Server, ServerConnection, serve

from demo.orders import OrderLedger, QueryError
from demo.sample import SampleBook, SampleStream, sample_markets
from demo.site import ORDERS_PATH
from peatio_ws.testing import generate_rsa_key, make_token, private_key_pem, rsa_key
from tests.support.broker import queue_name_from_log
from tests.support.cases import new_uid
from tests.support.daemon import DaemonProcess, free_port, interruptible, run_cli
from tests.support.paths import REPO
from tests.support.waiting import until_blocking

#: Flags that matter: without the background-networking ones Chromium hangs on a closed network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WIDTH, HEIGHT = 1280, 1000
ORDER_ID = 4242424242
#: Deletes one queue with the project's publisher (queue.delete over AMQP, as an operator might), in a
#: process of its own: these tests run no reactor. The queue is named on the command line.
DELETE_QUEUE = """
import sys
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from tests.support.publisher import Publisher

async def main(queue):
    publisher = await Publisher.connect()
    try:
        await publisher.delete_queue(queue)
    finally:
        await publisher.close()

react(lambda reactor: Deferred.fromCoroutine(main(sys.argv[1])))
"""


def delete_queue(name: str) -> None:
    """Delete the queue C{name} on the machine's broker (only a queue of a daemon the test started)."""
    result = subprocess.run(
        [sys.executable, "-c", DELETE_QUEUE, name], cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60, check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"deleting queue {name} failed ({result.returncode}):\n{result.stderr[-3000:]}")


def find_chromium() -> str | None:
    """The Chromium binary: $CHROMIUM if set (None when it is not executable), else chromium on PATH."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            # A CHROMIUM that names nothing is a mistake to report, not a reason to skip.
            raise AssertionError(f"CHROMIUM={explicit!r} is not an executable")
        return found
    return shutil.which("chromium") or shutil.which("chromium-browser")


def require_chromium() -> str:
    """Chromium's path; skip without it, except under make test or CI, which install it."""
    path = find_chromium()
    if path is not None:
        return path
    message = "chromium is not installed (Debian: apt-get install chromium)"
    if os.environ.get("PEATIO_WS_MAKE_TEST") == "1" or os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        raise AssertionError(f"{message}; CI must install it for the demo page's browser test")
    raise SkipTest(f"{message}: the demo page's browser test is skipped")


class PageError(AssertionError):
    """The page did not get where it should, with what it showed."""


class Chromium:
    """One headless Chromium and a minimal DevTools Protocol client for one tab."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.profile = tempfile.mkdtemp(prefix="peatio-ws-chromium-")
        self.log = Path(self.profile).with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None
        self.ws: ClientConnection | None = None
        self.session: str | None = None
        self.problems: list[tuple[str, str]] = []  # (source, text) of page errors
        #: More to say when the page did not get where it should (the daemon's state, say).
        self.context: Callable[[], str] = str
        self._ids = itertools.count(1)

    def start(self, timeout: float = 20.0) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={self.profile}",
                    "--remote-debugging-port=0",
                    f"--window-size={WIDTH},{HEIGHT}",
                    "--hide-scrollbars",
                    "about:blank",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # With port 0 Chromium picks a free port and writes it (and the
        # browser's WebSocket path) to DevToolsActivePort in the profile.
        active = Path(self.profile, "DevToolsActivePort")

        def listening() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}:\n{self.log_tail()}")
            lines = active.read_text().split() if active.exists() else []
            if len(lines) < 2:
                return False
            self.ws = connect(f"ws://127.0.0.1:{lines[0]}{lines[1]}", open_timeout=10, max_size=None)
            return True

        try:
            until_blocking(listening, timeout, "chromium's DevTools port")
        except AssertionError:
            raise RuntimeError(f"chromium gave no DevTools port within {timeout:.0f} s:\n{self.log_tail()}") from None
        target = self.call("Target.createTarget", url="about:blank", session=False)["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True, session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, timeout: float = 15.0, session: bool = True, **params: Any) -> Any:
        """Send one command and wait (bounded) for its result, noting page errors on the way."""
        assert self.ws is not None
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer to {method} within {timeout:.0f} s")
            reply = json.loads(self.ws.recv(timeout=left))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._event(reply)

    def _event(self, event: dict[str, Any]) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.problems.append(("exception", str(details.get("exception", {}).get("description") or details)))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.problems.append((entry.get("source", ""), f"{entry.get('text')} {entry.get('url', '')}".strip()))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.body && document.body.dataset.ready === 'true'", "the page to start", timeout=15)

    def wait_for(self, expression: str, what: str, timeout: float = 15.0) -> Any:
        """Poll C{expression} until it is truthy; fail naming C{what} and showing the page."""
        found: list[Any] = []

        def truthy() -> bool:
            found[:] = [self.evaluate(expression)]
            return bool(found[0])

        with contextlib.suppress(AssertionError):
            until_blocking(truthy, timeout, what)
            return found[0]
        shot = ""
        with contextlib.suppress(Exception):
            shot = f"\nscreenshot: {self.screenshot(Path(f'demo-failure-{time.time():.0f}.png').resolve())}"
        raise PageError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.describe()}{shot}")

    def describe(self) -> str:
        """What the page shows: its status line and the latest messages."""
        try:
            status = self.evaluate("document.getElementById('status').textContent")
            log = self.evaluate(
                "[...document.querySelectorAll('#log li')].slice(0, 12)"
                ".map(li => [...li.children].map(c => c.textContent).join(' '))"
            )
            market = self.evaluate(
                "['market-status', 'book-sequence', 'book-counts']"
                ".map(id => document.getElementById(id).textContent).join(' | ')"
            )
        except Exception as e:
            return f"(page unreadable: {e})"
        context = self.context()
        return f"status: {status}\nmarket: {market}\nmessages (newest first):\n  " + "\n  ".join(log or []) + (
            "\nproblems: " + "; ".join(text for _, text in self.problems) if self.problems else ""
        ) + (f"\n{context}" if context else "")

    def type_into(self, element_id: str, text: str) -> None:
        """Replace an input's text as typing would."""
        self.evaluate(f"(e => {{ e.focus(); e.select(); }})(document.getElementById({json.dumps(element_id)}))")
        self.call("Input.insertText", text=text)

    def click(self, element_id: str) -> None:
        """A real mouse click in the middle of the element (which must be visible and enabled)."""
        box = self.evaluate(
            f"""(() => {{
                const e = document.getElementById({json.dumps(element_id)});
                e.scrollIntoView({{block: 'center'}});
                const r = e.getBoundingClientRect();
                return {{x: r.x + r.width / 2, y: r.y + r.height / 2, disabled: e.disabled === true}};
            }})()"""
        )
        if box["disabled"]:
            raise PageError(f"#{element_id} is disabled\n{self.describe()}")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left", clickCount=1)

    def screenshot(self, path: Path) -> Path:
        """The whole page as PNG."""
        self.evaluate("window.scrollTo(0, 0)")
        height = self.evaluate("Math.ceil(document.documentElement.scrollHeight)") or HEIGHT
        self.call(
            "Emulation.setDeviceMetricsOverride", width=WIDTH, height=min(int(height), 4000), deviceScaleFactor=1,
            mobile=False,
        )
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
        return path

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(line for line in text.splitlines() if "dbus" not in line)[-4000:]

    def stop(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):  # it may be gone already
                self.call("Browser.close", session=False, timeout=5)
            self.ws.close()
            self.ws = None
        process = self.process
        if process is not None and process.poll() is None:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                # Its own process group (start_new_session): the browser and its helpers.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        shutil.rmtree(self.profile, ignore_errors=True)
        self.log.unlink(missing_ok=True)


class DemoRunner:
    """``demo/run.py`` serving the page, without starting a daemon of its own."""

    def __init__(self, key_file: Path, daemon: DaemonProcess | None, *args: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/"
        self.output = tempfile.NamedTemporaryFile(prefix="peatio-ws-demo-", suffix=".log", delete=False)  # noqa: SIM115
        command = [sys.executable, str(REPO / "demo" / "run.py"), "--no-daemon", "--http-port", str(self.port),
                   "--key", str(key_file), *args]
        if daemon is not None:
            command += ["--ws-url", daemon.url, "--exchange", daemon.exchange]
        self.process = subprocess.Popen(
            command, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.DEVNULL, stdout=self.output, stderr=subprocess.STDOUT,
            preexec_fn=interruptible,
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        def serving() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"demo/run.py exited with {self.process.returncode}:\n{self.text()}")
            try:
                with urllib.request.urlopen(self.base + "config.json", timeout=2):  # noqa: S310 - http://127.0.0.1
                    return True
            except OSError:
                return False

        try:
            until_blocking(serving, timeout, "demo/run.py to serve the page")
        except AssertionError:
            raise RuntimeError(f"demo/run.py did not serve within {timeout:.0f} s:\n{self.text()}") from None

    def request(self, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """(status, JSON or text) of one request to the runner."""
        req = urllib.request.Request(self.base + path.lstrip("/"), data=body, headers=headers or {})  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=5) as response:  # noqa: S310 - http://127.0.0.1
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode("utf-8", "replace")

    def text(self) -> str:
        self.output.flush()
        return Path(self.output.name).read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int | None:
        """Ctrl-C, as a user stops it; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
                raise RuntimeError(f"demo/run.py did not stop on Ctrl-C:\n{self.text()}") from None
        return self.process.returncode

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            self.output.close()
            Path(self.output.name).unlink(missing_ok=True)


def key_file(case: SynchronousTestCase) -> Path:
    """The private half of the key L{DaemonProcess} trusts by default, in a file."""
    path = Path(tempfile.mkdtemp(prefix="peatio-ws-demo-key-")) / "jwt-private.pem"
    path.write_text(private_key_pem(rsa_key()), encoding="ascii")
    case.addCleanup(shutil.rmtree, path.parent, True)
    return path


#: The market panel as the page shows it, read in one go (the page cannot change in between):
#: the status, the sequence, the counts, and the levels shown (as published), best first.
BOOK_STATE = """(() => {
    const levels = (id) => [...document.getElementById(id).rows].map(r => [r.dataset.price, r.dataset.volume]);
    return {
        state: document.getElementById('market-status').dataset.state,
        status: document.getElementById('market-status').textContent,
        primed: document.getElementById('book').dataset.state === 'primed',
        sequence: document.getElementById('book-sequence').textContent,
        counts: document.getElementById('book-counts').textContent,
        asks: levels('book-asks').reverse(),
        bids: levels('book-bids'),
        spread: document.getElementById('spread').textContent,
        trades: [...document.querySelectorAll('#market-trades tbody tr')]
            .map(r => [...r.cells].map(c => c.textContent)),
    };
})()"""
#: The levels a side shows on the page.
BOOK_LEVELS = 8


class BookReplica:
    """
    The order book as a ranger client keeps it, from the frames of one
    market: the reference the page is compared with. The daemon never sends
    a gap, so any increment that is not the previous sequence + 1 fails.
    """

    def __init__(self, market: str) -> None:
        self.market = market
        self.asks: dict[Decimal, list[str]] = {}
        self.bids: dict[Decimal, list[str]] = {}
        self.sequence: int | None = None
        self.snapshots = 0
        #: Sequence -> the levels a page shows then (best first, as published).
        self.seen: dict[int, tuple[list[list[str]], list[list[str]]]] = {}

    def feed(self, frame: str) -> None:
        message = json.loads(frame)
        (name, payload), = message.items()
        if name == f"{self.market}.ob-snap":
            self.asks = {Decimal(p): [p, v] for p, v in payload["asks"]}
            self.bids = {Decimal(p): [p, v] for p, v in payload["bids"]}
            self.snapshots += 1
        elif name == f"{self.market}.ob-inc":
            assert self.sequence is not None, f"an increment before any snapshot: {frame}"
            assert payload["sequence"] == self.sequence + 1, f"a gap after {self.sequence}: {frame}"
            for side, levels in (("asks", self.asks), ("bids", self.bids)):
                if side in payload:
                    price, volume = payload[side]
                    if Decimal(volume) == 0:
                        levels.pop(Decimal(price), None)
                    else:
                        levels[Decimal(price)] = [price, volume]
        else:
            return
        self.sequence = payload["sequence"]
        self.seen[self.sequence] = (
            [self.asks[k] for k in sorted(self.asks)[:BOOK_LEVELS]],
            [self.bids[k] for k in sorted(self.bids, reverse=True)[:BOOK_LEVELS]],
        )

    def drain(self, ws: ClientConnection, until: int, timeout: float = 10.0) -> None:
        """Read frames until the sequence reaches C{until}."""
        deadline = time.monotonic() + timeout
        while self.sequence is None or self.sequence < until:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the reference client is at {self.sequence}, not at {until}")
            frame = ws.recv(timeout=left)
            assert isinstance(frame, str)
            self.feed(frame)


class ScriptedRanger:
    """
    A ranger server that says exactly what the test tells it, on
    127.0.0.1, to check the page's own sequence rule (the daemon never
    sends a gap, so only a scripted server can).
    """

    def __init__(self) -> None:
        self.frames: queue.Queue[str] = queue.Queue()
        self.paths: list[str] = []
        self._stop = threading.Event()
        self.server: Server = serve(self._handle, "127.0.0.1", 0)
        self.port = self.server.socket.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/api/v2/ranger/public/"
        self._thread = threading.Thread(target=self.server.serve_forever, name="scripted-ranger", daemon=True)
        self._thread.start()

    def _handle(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        self.paths.append(connection.request.path)
        while not self._stop.is_set():
            try:
                frame = self.frames.get(timeout=0.1)
            except queue.Empty:
                continue
            connection.send(frame)

    def send(self, name: str, payload: Any) -> None:
        self.frames.put(json.dumps({name: payload}, separators=(",", ":")))

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self._thread.join(10)


ORDER_FIELDS = frozenset({"id", "side", "ord_type", "price", "avg_price", "state", "market", "created_at",
                          "origin_volume", "remaining_volume", "executed_volume", "trades_count"})
TRADE_FIELDS = frozenset({"id", "price", "amount", "total", "market", "side", "created_at", "order_id"})


class SampleStreamTests(SynchronousTestCase):
    """The demo's sample events have the fields peatio documents, and hang together."""

    def test_events(self) -> None:
        members = ("ID1A2B3C4D5E", "IDF6E5D4C3B2")
        stream = SampleStream(members, random.Random(1))
        states: dict[str, int] = {}
        trades = 0
        D = Decimal
        for _ in range(300):
            events = list(stream.tick())
            for i, (uid, event, payload) in enumerate(events):
                self.assertIn(uid, members)
                json.dumps(payload)
                if event == "order":
                    self.assertEqual(set(payload), ORDER_FIELDS)
                    self.assertIn(payload["side"], ("buy", "sell"))
                    self.assertIn(payload["ord_type"], ("limit", "market"))
                    self.assertIn(payload["state"], ("wait", "done", "cancel"))
                    states[payload["state"]] = states.get(payload["state"], 0) + 1
                    executed, remaining = D(payload["executed_volume"]), D(payload["remaining_volume"])
                    self.assertEqual(D(payload["origin_volume"]), executed + remaining)
                    self.assertEqual(payload["state"] == "done", remaining == 0)
                    self.assertRegex(payload["created_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
                else:
                    self.assertEqual(event, "trade")
                    self.assertEqual(set(payload), TRADE_FIELDS)
                    trades += 1
                    total = D(payload["price"]) * D(payload["amount"])
                    self.assertEqual(D(payload["total"]), total.quantize(D(payload["total"])))
                    # The member's order follows its trade, updated.
                    next_uid, next_event, order = events[i + 1]
                    self.assertEqual((next_uid, next_event, order["id"]), (uid, "order", payload["order_id"]))
                    self.assertEqual((order["side"], order["market"]), (payload["side"], payload["market"]))
                    self.assertGreater(order["trades_count"], 0)
        self.assertGreater(trades, 50)
        self.assertGreater(states.get("done", 0), 10)
        self.assertGreater(states.get("cancel", 0), 10)


class SampleBookTests(SynchronousTestCase):
    """The demo's public market: increments continue the sequence, and replay to the next snapshot."""

    def test_book(self) -> None:
        book = SampleBook(sample_markets()[0], random.Random(2))
        snapshot = book.snapshot()
        self.assertEqual(set(snapshot), {"asks", "bids", "sequence"})
        self.assertEqual(snapshot["sequence"], 1)
        D = Decimal
        asks = {D(p): D(v) for p, v in snapshot["asks"]}
        bids = {D(p): D(v) for p, v in snapshot["bids"]}
        self.assertEqual([D(p) for p, _ in snapshot["asks"]], sorted(asks))
        self.assertEqual([D(p) for p, _ in snapshot["bids"]], sorted(bids, reverse=True))
        sequence, trades, deletes = snapshot["sequence"], 0, 0
        for _ in range(2000):
            for event, payload in book.step():
                json.dumps(payload)
                if event == "trades":
                    (trade,) = payload["trades"]
                    self.assertEqual(set(trade), {"tid", "price", "amount", "taker_type", "date"})
                    self.assertIn(trade["taker_type"], ("buy", "sell"))
                    self.assertGreater(D(trade["amount"]), 0)
                    # A taker eats the best level of the other side.
                    best = min(asks) if trade["taker_type"] == "buy" else max(bids)
                    self.assertEqual(D(trade["price"]), best)
                    trades += 1
                    continue
                self.assertEqual(event, "ob-inc")
                self.assertEqual(payload["sequence"], sequence + 1)
                sequence = payload["sequence"]
                (side,) = set(payload) - {"sequence"}
                price, volume = payload[side]
                levels = asks if side == "asks" else bids
                if volume == "0":
                    deletes += 1
                    self.assertIn(D(price), levels)
                    del levels[D(price)]
                else:
                    self.assertGreater(D(volume), 0)
                    levels[D(price)] = D(volume)
                self.assertGreater(min(asks), max(bids), "the book never crosses")
                self.assertGreaterEqual(min(len(asks), len(bids)), 3)
        # A snapshot continues the sequence (the last increment's) and is the increments' book.
        snapshot = book.snapshot()
        self.assertEqual(snapshot["sequence"], sequence)
        self.assertEqual({D(p): D(v) for p, v in snapshot["asks"]}, asks)
        self.assertEqual({D(p): D(v) for p, v in snapshot["bids"]}, bids)
        self.assertGreater(trades, 200)
        self.assertGreater(deletes, 200)


class OrderLedgerTests(SynchronousTestCase):
    """The stand-in exchange's record of the orders the demo published, queried as Peatio's REST API."""

    def order(self, order_id: int, state: str = "wait", market: str = "btcusd") -> dict[str, Any]:
        return {"id": order_id, "side": "buy", "ord_type": "limit", "price": "1.5", "avg_price": "0.0",
                "state": state, "market": market, "created_at": "2026-11-24T09:30:00Z", "origin_volume": "2.0",
                "remaining_volume": "2.0", "executed_volume": "0.0", "trades_count": 0}

    def test_latest_state_newest_first(self) -> None:
        ledger = OrderLedger()
        for order_id in (11, 12, 13):
            ledger.record("ID1", self.order(order_id))
        ledger.record("ID1", self.order(12, "cancel"))  # an update replaces the order's state
        ledger.record("ID2", self.order(14))
        ledger.record("ID1", {"no": "id"})  # not an order: ignored
        orders, total, page, limit = ledger.query("ID1", {})
        self.assertEqual(([o["id"] for o in orders], total, page, limit), ([13, 12, 11], 3, 1, 100))
        self.assertEqual(orders[1]["state"], "cancel")
        self.assertEqual(set(orders[0]), set(self.order(13)) | {"updated_at"})
        self.assertRegex(orders[0]["updated_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual(ledger.query("ID3", {})[:2], ([], 0))
        orders[0]["state"] = "changed"  # a copy: the ledger's own state is untouched
        self.assertEqual(ledger.query("ID1", {})[0][0]["state"], "wait")

    def test_filters_and_pages(self) -> None:
        ledger = OrderLedger(keep=5)
        for order_id in range(1, 8):
            ledger.record("ID1", self.order(order_id, "done" if order_id % 2 else "wait",
                                            "ethusd" if order_id == 6 else "btcusd"))
        ids = lambda params: [o["id"] for o in ledger.query("ID1", params)[0]]  # noqa: E731
        self.assertEqual(ids({}), [7, 6, 5, 4, 3], "the oldest beyond keep are forgotten")
        self.assertEqual(ids({"state": "done"}), [7, 5, 3])
        self.assertEqual(ids({"market": "ethusd"}), [6])
        self.assertEqual(ids({"limit": "2"}), [7, 6])
        self.assertEqual(ids({"limit": "2", "page": "3"}), [3])
        self.assertEqual(ids({"limit": "2", "page": "4"}), [])
        self.assertEqual(ids({"order_by": "asc", "limit": "2"}), [3, 4])
        self.assertEqual(ledger.query("ID1", {"limit": "2", "page": "2"})[1:], (5, 2, 2))
        for params, code in (({"limit": "0"}, "invalid_limit"), ({"limit": "1001"}, "invalid_limit"),
                             ({"limit": "x"}, "non_integer_limit"), ({"page": "0"}, "invalid_page"),
                             ({"state": "open"}, "invalid_state"), ({"order_by": "up"}, "invalid_order_by")):
            with self.assertRaises(QueryError) as caught:
                ledger.query("ID1", params)
            self.assertEqual(caught.exception.code, f"market.order.{code}", params)


class DemoServerTests(SynchronousTestCase):
    """The runner's own web side: only the page's files, and the dev token endpoint's guards."""

    def setUp(self) -> None:
        self.runner = DemoRunner(key_file(self), None, "--no-publisher", "--ws-url", "ws://127.0.0.1:1/")
        self.addCleanup(self.runner.cleanup)
        self.runner.wait_ready()

    def test_files_and_config(self) -> None:
        for path in ("/", "/app.js", "/style.css"):
            status, _ = self.runner.request(path)
            self.assertEqual(status, 200, path)
        for path in ("/run.py", "/../Makefile", "/dev/", "/.dev/jwt-private.pem"):
            status, _ = self.runner.request(path)
            self.assertEqual(status, 404, path)
        status, config = self.runner.request("/config.json")
        self.assertEqual(status, 200)
        self.assertEqual(config["wsUrl"], "ws://127.0.0.1:1/")
        self.assertEqual(config["rangerUrl"], "ws://127.0.0.1:1/api/v2/ranger/public/")
        self.assertEqual(config["market"], "btcusd")
        self.assertEqual(config["members"], ["ID1A2B3C4D5E", "IDF6E5D4C3B2"])

    def test_dev_token(self) -> None:
        json_type = {"Content-Type": "application/json"}
        status, body = self.runner.request("/dev/token", b'{"uid": "ID1A2B3C4D5E"}', json_type)
        self.assertEqual(status, 200, body)
        self.assertIn("DEVELOPMENT ONLY", body["note"])
        self.assertEqual(body["uid"], "ID1A2B3C4D5E")
        self.assertEqual(body["token"].count("."), 2)
        # A cross-site form post cannot use this content type without a preflight, which is refused.
        self.assertEqual(self.runner.request("/dev/token", b'{"uid": "ID1"}', {"Content-Type": "text/plain"})[0], 415)
        self.assertEqual(self.runner.request("/dev/token", b'{"uid": "a.b"}', json_type)[0], 400)
        self.assertEqual(self.runner.request("/dev/token", b"[]", json_type)[0], 400)
        self.assertEqual(self.runner.request("/dev/token")[0], 405)
        # DNS rebinding: a foreign Host is refused.
        self.assertEqual(self.runner.request("/", headers={"Host": "evil.example"})[0], 403)
        self.assertEqual(
            self.runner.request("/dev/token", b'{"uid": "ID1"}', {**json_type, "Host": "evil.example"})[0], 403
        )

    def orders(self, token: str | None, query: str = "", host: str | None = None) -> tuple[int, Any, Any]:
        """(status, JSON body, headers) of GET ORDERS_PATH with C{token} as the member's Bearer token."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        if host is not None:
            headers["Host"] = host
        request = urllib.request.Request(self.runner.base + ORDERS_PATH.lstrip("/") + query, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - http://127.0.0.1
                return response.status, json.loads(response.read()), response.headers
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read()), e.headers

    def test_orders_endpoint(self) -> None:
        """The stand-in for Peatio's GET /api/v2/peatio/market/orders: the member's token, its list, Peatio's errors."""
        json_type = {"Content-Type": "application/json"}
        status, body = self.runner.request("/dev/token", b'{"uid": "ID1A2B3C4D5E"}', json_type)
        self.assertEqual(status, 200, body)
        status, orders, headers = self.orders(body["token"])
        self.assertEqual((status, orders), (200, []), "nothing published: no orders")
        self.assertEqual((headers["Total"], headers["Page"], headers["Per-Page"]), ("0", "1", "100"))
        self.assertEqual(headers["Content-Type"], "application/json; charset=utf-8")
        self.assertEqual(self.orders(body["token"], "?limit=2&page=2&state=done&market=btcusd")[:2], (200, []))
        self.assertEqual(self.orders(body["token"], "?limit=0")[:2], (422, {"errors": ["market.order.invalid_limit"]}))
        # Without a token, or with one the demo's key did not sign: Peatio's 401.
        refused = (401, {"errors": ["jwt.decode_and_verify"]})
        self.assertEqual(self.orders(None)[:2], refused)
        self.assertEqual(self.orders("not.a.token")[:2], refused)
        self.assertEqual(self.orders(make_token(generate_rsa_key(), uid="ID1A2B3C4D5E"))[:2], refused)
        self.assertEqual(self.orders(make_token(uid="ID1A2B3C4D5E", lifetime=-60))[:2], refused, "expired")
        self.assertEqual(self.orders(body["token"], host="evil.example")[0], 403)

    def test_ctrl_c(self) -> None:
        self.assertEqual(self.runner.stop(), 0, self.runner.text())


class DemoBrowserTests(SynchronousTestCase):
    """The page, in Chromium, against the real daemon and broker."""

    def setUp(self) -> None:
        binary = require_chromium()
        self.uid = new_uid()
        self.daemon = DaemonProcess()
        self.addCleanup(self.daemon.cleanup)
        self.daemon.start()
        self.browser = Chromium(binary)
        self.browser.context = self.daemon_state
        self.addCleanup(self.browser.stop)
        self.browser.start()

    def daemon_state(self) -> str:
        """For a failure's description: whether the daemon still runs, its last log lines if not."""
        status = self.daemon.exited()
        return "" if status is None else f"the daemon exited (status {status}):\n{self.daemon.tail(40)}"

    def start_runner(self, *args: str) -> DemoRunner:
        """The demo runner, publishing its sample stream for this test's member."""
        runner = DemoRunner(key_file(self), self.daemon, "--members", self.uid, "--interval", "0.3", *args)
        self.addCleanup(runner.cleanup)
        runner.wait_ready()
        self.runner = runner
        return runner

    def publish_order(self, order_id: int, state: str = "wait") -> dict[str, Any]:
        order = {
            "id": order_id, "side": "buy", "ord_type": "limit", "price": "64000.5", "avg_price": "0.0",
            "state": state, "market": "btcusd", "created_at": "2026-11-24T09:30:00Z", "origin_volume": "0.25",
            "remaining_volume": "0.25", "executed_volume": "0.0", "trades_count": 0,
        }
        result = run_cli(
            "publish", "--uid", self.uid, "--event", "order", "--json", json.dumps(order),
            env={"RABBITMQ_EVENTS_EXCHANGE": self.daemon.exchange},
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        return order

    def order_row(self, order_id: int) -> Any:
        return self.browser.wait_for(
            f"""(() => {{
                const row = document.querySelector('#orders tbody tr[data-id="{order_id}"]');
                return row && [...row.cells].map(c => c.textContent);
            }})()""",
            f"order {order_id} in the orders table",
        )

    def assert_no_page_errors(self, network_ok: bool = False) -> None:
        """No script errors; no failed requests either unless C{network_ok} (a restart fails some)."""
        problems = [(s, t) for s, t in self.browser.problems if not (network_ok and s == "network")]
        self.assertEqual(problems, [], "the page logged errors")

    def test_live_orders(self) -> None:
        """Generate a dev token, authenticate, see a published order, the sample stream and ping/pong."""
        page = self.browser
        page.navigate(self.start_runner("--seed", "7").base)
        self.assertEqual(page.evaluate("document.getElementById('ws-url').value"), self.daemon.url)
        self.assertTrue(
            page.evaluate("[...document.querySelectorAll('input, textarea')].every(e => e.labels.length > 0)"),
            "every field has a label",
        )
        page.type_into("uid", self.uid)
        page.click("generate")
        token = page.wait_for(
            "(t => t.startsWith('eyJ') && t)(document.getElementById('token').value)", "a development token"
        )
        self.assertEqual(token.count("."), 2)
        page.click("authenticate")
        page.wait_for("document.getElementById('status').dataset.state === 'authenticated'", "Authenticated.")
        self.assertIn(self.uid, page.evaluate("document.getElementById('status').textContent"))
        challenge = page.evaluate("document.getElementById('challenge').textContent")
        self.assertRegex(challenge, r"^[A-Za-z0-9_-]{54}$")
        log = page.evaluate("document.getElementById('log').textContent")
        self.assertIn('{"success":{"message":"Authenticated."}}', log)
        self.assertIn('"jwt":"Bearer ', log)

        self.publish_order(ORDER_ID)
        cells = self.order_row(ORDER_ID)
        self.assertEqual(cells[1:6], [str(ORDER_ID), "btcusd", "buy", "limit", "64000.5"])
        self.assertEqual(cells[-1], "wait")
        # An update of the same order replaces its row.
        self.publish_order(ORDER_ID, state="cancel")
        page.wait_for(
            f"""document.querySelectorAll('#orders tbody tr[data-id="{ORDER_ID}"]').length === 1 &&
                document.querySelector('#orders tbody tr[data-id="{ORDER_ID}"]').dataset.state === 'cancel'""",
            "the order's update",
        )
        # The runner's own sample stream for this member: trades too.
        page.wait_for("document.querySelectorAll('#trades tbody tr').length >= 1", "a sample trade", timeout=20)

        page.click("ping")
        page.wait_for("[...document.querySelectorAll('#log li')].some(li => li.textContent.includes('pong'))",
                      "pong")
        page.wait_for("document.querySelectorAll('#orders tbody tr').length >= 3", "a few sample orders", timeout=20)
        shot = page.screenshot(Path("demo-screenshot.png").resolve())
        self.assertEqual(shot.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
        print(f"\ndemo screenshot: {shot}")
        self.assert_no_page_errors()

    def test_market_panel(self) -> None:
        """
        The market panel, anonymous on the ranger public path: the book shows
        levels and a sequence that advances, trades appear, and the book is the
        one a reference client builds from the same frames. The runner leaves
        out an increment now and then: the daemon holds the book back until the
        next snapshot, so the page never sees a gap (nothing ignored).
        """
        page = self.browser
        runner = self.start_runner("--seed", "11", "--snapshot-period", "2", "--gap-every", "25")
        ranger = f"{self.daemon.url}api/v2/ranger/public/?stream=btcusd.ob-inc&stream=btcusd.trades"
        # Unbounded: its reader keeps answering the daemon's pings while the test is busy with the page.
        with connect(ranger, open_timeout=10, max_queue=None) as reference:
            page.navigate(runner.base)
            self.assertEqual(page.evaluate("document.getElementById('market-url').textContent"), ranger)
            page.wait_for("document.getElementById('market-status').dataset.state === 'live'", "a live book")
            log = page.evaluate("document.getElementById('log').textContent")
            self.assertIn('{"success":{"message":"subscribed","streams":["btcusd.ob-inc","btcusd.trades"]}}', log)
            page.wait_for(
                "document.getElementById('book-asks').rows.length >= 3 && "
                "document.getElementById('book-bids').rows.length >= 3",
                "three levels a side",
            )
            first = self.book(page)
            self.assertLess(Decimal(first["bids"][0][0]), Decimal(first["asks"][0][0]))
            self.assertRegex(first["spread"], r"^spread \d")
            page.wait_for(
                f"parseInt(document.getElementById('book-sequence').textContent) >= {first['seq'] + 15}",
                "the sequence to advance",
            )
            page.wait_for("document.querySelectorAll('#market-trades tbody tr').length >= 2", "market trades")
            taker, price, amount = self.book(page)["trades"][0][1:]
            self.assertIn(taker, ("buy", "sell"))
            self.assertGreater(Decimal(price), 0)
            self.assertGreater(Decimal(amount), 0)
            # A left-out increment (--gap-every) healed by the daemon's next snapshot.
            page.wait_for("parseInt(document.getElementById('book-counts').textContent) >= 2",
                          "a second snapshot, after a gap", timeout=30)
            # The page's book is the reference client's at the same sequence.
            replica = BookReplica("btcusd")
            for _ in range(20):
                shown = self.book(page)
                if shown["primed"] and shown["seq"] is not None:
                    replica.drain(reference, shown["seq"])
                    if shown["seq"] in replica.seen:
                        break
                time.sleep(0.1)
            else:
                self.fail(f"no sequence of the page's is one the reference client saw: {shown}")
            self.assertEqual((shown["asks"], shown["bids"]), replica.seen[shown["seq"]])
            self.assertEqual(len(shown["asks"]), min(BOOK_LEVELS, len(replica.asks)))
            self.assertGreaterEqual(replica.snapshots, 2, "the reference client got the healing snapshot too")
            self.assertTrue(shown["counts"].endswith(" 0 ignored"), "the daemon never sends a gap")
        shot = page.screenshot(Path("demo-market-screenshot.png").resolve())
        print(f"\nmarket screenshot: {shot}")
        self.assert_no_page_errors()

    def book(self, page: Chromium) -> dict[str, Any]:
        """The market panel's state, its sequence as a number (None while there is none)."""
        state: dict[str, Any] = page.evaluate(BOOK_STATE)
        number = state["sequence"].split()[0]
        state["seq"] = int(number) if number.isdigit() else None
        return state

    def test_reconnect(self) -> None:
        """
        ?autoconnect=1 logs in; after a daemon restart the page reconnects and
        re-authenticates, and the market panel reconnects and is live again
        from the new daemon's first snapshot.
        """
        page = self.browser
        page.navigate(f"{self.start_runner('--snapshot-period', '2').base}?uid={self.uid}&autoconnect=1")
        page.wait_for("document.getElementById('status').dataset.state === 'authenticated'", "Authenticated.")
        page.wait_for("document.getElementById('market-status').dataset.state === 'live'", "a live book")

        old = self.daemon
        old.stop()
        page.wait_for("document.getElementById('reconnects').textContent !== '0'", "a reconnect to be scheduled")
        self.assertIn("1001", page.evaluate("document.getElementById('log').textContent"))
        # The same ports and exchange, so the page and the runner find it again.
        env = {"WEBSOCKET_PORT": str(old.port), "METRICS_PORT": str(old.metrics_port),
               "RABBITMQ_EVENTS_EXCHANGE": old.exchange}
        self.daemon = DaemonProcess(env=env)
        self.daemon.port, self.daemon.metrics_port, self.daemon.exchange = old.port, old.metrics_port, old.exchange
        self.addCleanup(self.daemon.cleanup)
        self.daemon.start()

        page.wait_for("document.getElementById('status').dataset.state === 'authenticated'",
                      "re-authentication after the restart", timeout=30)
        successes = page.evaluate(
            "[...document.querySelectorAll('#log li')].filter(li => li.textContent.includes('Authenticated.')).length"
        )
        self.assertGreaterEqual(successes, 2)
        self.publish_order(ORDER_ID + 1)
        self.order_row(ORDER_ID + 1)
        self.assertIn("market: closed: code 1001", page.evaluate("document.getElementById('log').textContent"))
        page.wait_for(
            "document.getElementById('market-status').dataset.state === 'live' && "
            "parseInt(document.getElementById('book-counts').textContent) >= 2",
            "the book live again after the restart", timeout=30,
        )
        # 1001 is not 1012: no notice, nothing reloaded (events published meanwhile are not replayed, though).
        self.assertEqual(page.evaluate("document.getElementById('resync').dataset.state"), "idle")
        self.assertTrue(page.evaluate("document.getElementById('resync').hidden"))
        self.assertNotIn("resync", page.evaluate("document.getElementById('log').textContent"))
        self.assert_no_page_errors(network_ok=True)

    def rest_orders(self, token: str) -> dict[int, dict[str, Any]]:
        """The member's orders as the runner's stand-in for the REST API lists them, by id."""
        request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1
            self.runner.base + ORDERS_PATH.lstrip("/") + "?limit=1000", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - http://127.0.0.1
            return {o["id"]: o for o in json.loads(response.read())}

    def shown_orders(self) -> dict[int, list[str]]:
        """The orders table: id -> [state, executed volume, where the row came from ('event' or 'rest')]."""
        rows: list[list[str]] = self.browser.evaluate(
            "[...document.querySelectorAll('#orders tbody tr')]"
            ".map(r => [r.dataset.id, r.dataset.state, r.cells[8].textContent, r.dataset.source])"
        )
        return {int(row[0]): row[1:] for row in rows}

    def test_resync_after_lost_events(self) -> None:
        """
        Close 1012 for real (SPEC §8): the daemon's queue is deleted on the
        broker while the page is connected, and the runner's sample stream
        publishes while it is gone: those events are lost. The page says so,
        reconnects, and replaces its orders with the list of the runner's
        stand-in for the REST API, without a reload: an order whose final
        state was lost shows it (from the REST API), an order the exchange
        never knew (the test's own, published with `peatio-ws publish`) is
        gone, and then the page's list is the exchange's.

        The daemon is frozen (SIGSTOP, by its PID) from before the delete
        until a lost event is certain: otherwise it would declare its queue
        again within milliseconds of the broker's cancel, and whether an
        event fell into the gap would be luck.
        """
        page = self.browser
        runner = self.start_runner("--seed", "3")
        page.navigate(f"{runner.base}?uid={self.uid}&autoconnect=1")
        page.wait_for("document.getElementById('status').dataset.state === 'authenticated'", "Authenticated.")
        self.publish_order(ORDER_ID)
        self.order_row(ORDER_ID)
        page.wait_for("document.querySelectorAll('#orders tbody tr').length >= 4", "a few sample orders", timeout=20)
        token = page.evaluate("document.getElementById('token').value")
        # What the notice says, state by state; and a mark a reload would wipe.
        page.evaluate("""(() => {
            window.notices = [];
            const notice = document.getElementById('resync');
            new MutationObserver(() => {
                const last = window.notices[window.notices.length - 1];
                if (!last || last[0] !== notice.dataset.state) {
                    window.notices.push([notice.dataset.state, document.getElementById('resync-text').textContent]);
                }
            }).observe(notice, {attributes: true, attributeFilter: ['data-state']});
            window.sameDocument = true;
        })()""")
        queue = queue_name_from_log(self.daemon.log_text())
        pid = self.daemon.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            delete_queue(queue)
            # From now on every event the runner publishes is lost: no queue is bound to the exchange.
            before = self.rest_orders(token)
            found: list[dict[str, Any]] = []

            def final_state_lost() -> bool:
                found[:] = [
                    o for o in self.rest_orders(token).values()
                    if o["state"] in ("done", "cancel") and before.get(o["id"], {}).get("state") != o["state"]
                ]
                return bool(found)

            until_blocking(final_state_lost, 30, "the runner to finish or cancel an order while the queue is gone")
            lost = found[0]
            self.assertNotEqual(self.shown_orders().get(lost["id"], [None])[0], lost["state"])
        finally:
            os.kill(pid, signal.SIGCONT)

        page.wait_for("document.getElementById('resync').dataset.state === 'resynced'",
                      "the orders reloaded after the 1012", timeout=30)
        notices = page.evaluate("window.notices")
        self.assertEqual([state for state, _ in notices], ["lost", "resyncing", "resynced"])
        self.assertIn("Events may have been lost", notices[0][1])
        self.assertIn("1012", notices[0][1])
        self.assertIn("Reconnecting, then reloading your orders from the REST API", notices[0][1])
        self.assertRegex(notices[2][1], r"reconnected and reloaded \d+ orders? from the REST API")
        self.assertTrue(page.evaluate("window.sameDocument === true"), "the page was not reloaded")
        log = page.evaluate("document.getElementById('log').textContent")
        self.assertIn("closed: code 1012 (events may have been lost) “Events may have been lost: reconnect and resync”",
                      log)
        self.assertIn(f"resync: GET {ORDERS_PATH}?limit=50", log)
        self.assertNotEqual(page.evaluate("document.getElementById('reconnects').textContent"), "0")
        self.assertEqual(page.evaluate("document.getElementById('status').dataset.state"), "authenticated")
        # The lost final state, from the REST API (nothing more is ever published for a finished order).
        shown = self.shown_orders()
        self.assertEqual((shown[lost["id"]][0], shown[lost["id"]][2]), (lost["state"], "rest"))
        self.assertNotIn(ORDER_ID, shown, "the list was replaced, not merged")
        # The daemon found its queue gone and said so with 1012 (SPEC §8).
        self.assertIn("closed 1 authenticated connections with 1012", self.daemon.log_text())

        # From now on the stream keeps the page's list the exchange's.
        def same() -> bool:
            rest = {i: [o["state"], o["executed_volume"]] for i, o in self.rest_orders(token).items()}
            return {i: row[:2] for i, row in self.shown_orders().items()} == rest

        until_blocking(same, 20, "the page's orders to be the REST API's")
        shot = page.screenshot(Path("demo-resync-screenshot.png").resolve())
        print(f"\nresync screenshot: {shot}")
        self.assert_no_page_errors()

    def test_token_expiry(self) -> None:
        """Token expired. and close 4001: the page stops and asks for a new token instead of reconnecting."""
        page = self.browser
        runner = self.start_runner("--no-publisher", "--token-lifetime", "4")
        page.navigate(f"{runner.base}?uid={self.uid}&autoconnect=1")
        page.wait_for("document.getElementById('status').dataset.state === 'authenticated'", "Authenticated.")
        page.wait_for("document.getElementById('status').dataset.state === 'disconnected'", "the expiry", timeout=20)
        self.assertIn("token expired", page.evaluate("document.getElementById('status').textContent"))
        log = page.evaluate("document.getElementById('log').textContent")
        self.assertIn('{"error":{"message":"Token expired."}}', log)
        self.assertIn("code 4001", log)
        time.sleep(1.5)
        self.assertEqual(page.evaluate("document.getElementById('reconnects').textContent"), "0")
        self.assertEqual(page.evaluate("document.getElementById('status').dataset.state"), "disconnected")
        self.assert_no_page_errors()


class MarketSequenceTests(SynchronousTestCase):
    """The page's own sequence rule, as baseapp's, against a scripted ranger server."""

    def setUp(self) -> None:
        binary = require_chromium()
        self.ranger = ScriptedRanger()
        self.addCleanup(self.ranger.stop)
        self.runner = DemoRunner(key_file(self), None, "--no-publisher", "--ws-url", "ws://127.0.0.1:1/",
                                 "--ranger-url", self.ranger.url)
        self.addCleanup(self.runner.cleanup)
        self.runner.wait_ready()
        self.browser = Chromium(binary)
        self.addCleanup(self.browser.stop)
        self.browser.start()

    def shows(self, condition: str, what: str) -> dict[str, Any]:
        """Wait until the market panel's state (C{s}) meets C{condition}; that state."""
        state: dict[str, Any] = self.browser.wait_for(f"(s => ({condition}) && s)({BOOK_STATE})", what)
        return state

    def test_sequence(self) -> None:
        page, server = self.browser, self.ranger
        page.navigate(self.runner.base)
        self.shows("s.state === 'waiting'", "the connection")
        self.assertEqual(server.paths, ["/api/v2/ranger/public/?stream=btcusd.ob-inc&stream=btcusd.trades"])
        # An increment before any snapshot: ignored.
        server.send("btcusd.ob-inc", {"asks": ["1", "1"], "sequence": 9})
        self.shows("s.counts.endsWith(' 1 ignored')", "an ignored increment")
        server.send("btcusd.ob-snap", {
            "asks": [["101", "2"], ["100.5", "1"], ["102", "3"]],
            "bids": [["99.5", "1.5"], ["99", "2.5"], ["98", "0.5"]],
            "sequence": 10,
        })
        server.send("btcusd.ob-inc", {"asks": ["100.5", "0"], "sequence": 11})  # deletes the level
        server.send("btcusd.ob-inc", {"bids": [["99.75", "4"], ["98", "0"]], "sequence": 12})  # a list of pairs
        server.send("success", {"message": "subscribed", "streams": ["btcusd.ob-inc", "btcusd.trades"]})
        state = self.shows("s.sequence === '12'", "sequence 12")
        self.assertEqual(state["state"], "live")
        self.assertEqual(state["asks"], [["101", "2"], ["102", "3"]])
        self.assertEqual(state["bids"], [["99.75", "4"], ["99.5", "1.5"], ["99", "2.5"]])
        self.assertEqual(state["counts"], "1 snapshot, 2 increments applied, 1 ignored")
        self.assertTrue(state["spread"].startswith("spread 1.25"), state["spread"])
        # Shown with the same number of decimals.
        prices = page.evaluate("[...document.querySelectorAll('#book .price')].map(c => c.textContent)")
        self.assertEqual(prices, ["102.00", "101.00", "99.75", "99.50", "99.00"])

        server.send("btcusd.trades", {"trades": [
            {"tid": 8, "price": "101", "amount": "0.25", "taker_type": "sell", "date": 1700000001},
            {"tid": 7, "price": "101", "amount": "0.5", "taker_type": "buy", "date": 1700000000},
        ]})
        state = self.shows("s.trades.length === 2", "two trades")
        self.assertEqual([row[1:] for row in state["trades"]], [["sell", "101.00", "0.25"], ["buy", "101.00", "0.5"]])

        # A gap: the page waits for a snapshot and ignores increments until then.
        server.send("btcusd.ob-inc", {"asks": ["103", "1"], "sequence": 14})
        state = self.shows("s.state === 'waiting'", "waiting after a gap")
        self.assertIn("expected 13, got 14", state["status"])
        self.assertIn("waiting for snapshot", state["sequence"])
        self.assertTrue(state["sequence"].startswith("12"))
        server.send("btcusd.ob-inc", {"asks": ["103", "1"], "sequence": 15})
        server.send("btcusd.ob-inc", {"asks": ["104", "1"], "sequence": 13})
        state = self.shows("s.counts.endsWith(' 4 ignored')", "increments ignored while waiting")
        self.assertEqual(state["asks"], [["101", "2"], ["102", "3"]], "the book did not change")
        self.assertFalse(state["primed"])

        # The next snapshot primes the book again.
        server.send("btcusd.ob-snap", {"asks": [["105", "1"]], "bids": [["104", "2"], ["103.5", "1"]], "sequence": 20})
        server.send("btcusd.ob-inc", {"bids": ["104", "0"], "sequence": 21})
        state = self.shows("s.sequence === '21'", "sequence 21")
        self.assertEqual((state["state"], state["asks"], state["bids"]), ("live", [["105", "1"]], [["103.5", "1"]]))
        self.assertEqual(state["counts"], "2 snapshots, 3 increments applied, 4 ignored")
        # A sequence that is not a number is a gap too (baseapp compares numbers).
        server.send("btcusd.ob-inc", {"asks": ["106", "1"], "sequence": "22"})
        state = self.shows("s.state === 'waiting'", "waiting after a string sequence")
        # Another market's frames are not this book's.
        server.send("ethusd.ob-snap", {"asks": [], "bids": [], "sequence": 1})
        server.send("btcusd.ob-snap", {"asks": [["107", "1"]], "bids": [], "sequence": 30})
        state = self.shows("s.sequence === '30'", "sequence 30")
        self.assertEqual(state["counts"], "3 snapshots, 3 increments applied, 5 ignored")
        self.assertEqual(page.evaluate("document.getElementById('spread').textContent"), "—")
        self.assertEqual(self.browser.problems, [], "the page logged errors")
