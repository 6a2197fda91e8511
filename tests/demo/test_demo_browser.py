"""
The live demo (``demo/``, ``make demo``) in a real browser.

Headless Debian Chromium loads the page from the demo runner (``demo/run.py``,
here without its own daemon), which talks to a real daemon (L{DaemonProcess})
and the real RabbitMQ. The browser is driven over the Chrome DevTools
Protocol with the ``websockets`` library, as a user would: typing, clicking.

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
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase
from websockets.sync.client import ClientConnection, connect

from demo.sample import SampleStream
from peatio_ws.testing import private_key_pem, rsa_key
from tests.support.cases import new_uid
from tests.support.daemon import DaemonProcess, free_port, run_cli
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
        except Exception as e:
            return f"(page unreadable: {e})"
        return f"status: {status}\nmessages (newest first):\n  " + "\n  ".join(log or []) + (
            "\nproblems: " + "; ".join(text for _, text in self.problems) if self.problems else ""
        )

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
        self.addCleanup(self.browser.stop)
        self.browser.start()

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

    def test_reconnect(self) -> None:
        """?autoconnect=1 logs in; after a daemon restart the page reconnects and re-authenticates."""
        page = self.browser
        page.navigate(f"{self.start_runner().base}?uid={self.uid}&autoconnect=1")
        page.wait_for("document.getElementById('status').dataset.state === 'authenticated'", "Authenticated.")

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
        self.assert_no_page_errors(network_ok=True)

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
