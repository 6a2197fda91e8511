"""
Tests for L{peatio_ws.tap} (C{twistd peatio-ws}): option parsing and its
one-line configuration errors, L{makeService}, the plugin, and one real
C{twistd -n peatio-ws} process (LOG_FORMAT=json lines, READY=1/STOPPING=1
to a fake systemd, 1001 to a connected client on SIGTERM).
"""

from __future__ import annotations

import importlib
import io
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

from twisted.application.service import IServiceMaker, MultiService
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol, ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.plugin import getPlugins
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from peatio_ws import tap
from peatio_ws.testing import public_key_b64, rsa_key

reactor: Any = _reactor

CHECKOUT = Path(__file__).resolve().parents[2]
WAIT = 20.0


class OptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.environ = {"JWT_PUBLIC_KEY": public_key_b64(rsa_key())}
        # load_settings reads os.environ when it is called.
        self.patch(os, "environ", self.environ)
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.config = self.write_config("WEBSOCKET_PORT: 9000\nMETRICS_PORT: 9100\n")

    def write_config(self, text: str, name: str = "application.yml") -> str:
        path = self.directory / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    def parse(self, *argv: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(argv))
        return options

    def assertConfigExit(self, key: str, *argv: str) -> str:
        """Parsing exits with status 2 and one stderr line naming C{key}."""
        error = self.assertRaises(SystemExit, self.parse, *argv)
        self.assertEqual(error.code, 2)
        output = self.stderr.getvalue()
        self.assertEqual(output.count("\n"), 1, output)
        self.assertTrue(output.startswith(f"peatio-ws: configuration error: {key}: "), output)
        self.assertNotIn("Traceback", output)
        return output

    def test_defaults(self) -> None:
        """No options: the packaged defaults."""
        settings = self.parse().settings
        self.assertEqual((settings.websocket_host, settings.websocket_port), ("0.0.0.0", 8080))
        self.assertEqual(settings.metrics_port, 8082)

    def test_config(self) -> None:
        """--config reads another file over the defaults."""
        settings = self.parse("--config", self.config).settings
        self.assertEqual((settings.websocket_port, settings.metrics_port), (9000, 9100))
        self.assertEqual(self.parse("-c", self.config).settings.websocket_port, 9000)

    def test_host_port_override(self) -> None:
        """--host and --port win over the file and the environment."""
        self.environ["WEBSOCKET_PORT"] = "9002"
        self.assertEqual(self.parse("--config", self.config).settings.websocket_port, 9002)
        settings = self.parse("--config", self.config, "--host", "127.0.0.1", "--port", "9001").settings
        self.assertEqual((settings.websocket_host, settings.websocket_port), ("127.0.0.1", 9001))
        self.assertEqual(self.parse("-p", "9003").settings.websocket_port, 9003)

    def test_bad_port_option(self) -> None:
        """A bad --port is one line naming WEBSOCKET_PORT."""
        self.assertConfigExit("WEBSOCKET_PORT", "--port", "notaport")

    def test_bad_value_in_file(self) -> None:
        """A bad value in the file names its key."""
        config = self.write_config("WEBSOCKET_AUTH_TIMEOUT: soon\n", "bad.yml")
        self.assertConfigExit("WEBSOCKET_AUTH_TIMEOUT", "--config", config)

    def test_bad_value_in_environment(self) -> None:
        """And so does a bad value in the environment."""
        self.environ["LOG_FORMAT"] = "xml"
        self.assertConfigExit("LOG_FORMAT")

    def test_missing_key(self) -> None:
        """The required JWT_PUBLIC_KEY missing is named."""
        del self.environ["JWT_PUBLIC_KEY"]
        self.assertConfigExit("JWT_PUBLIC_KEY")

    def test_missing_config_file(self) -> None:
        """A --config that cannot be read is one line too."""
        self.assertConfigExit("--config", "--config", str(self.directory / "nope.yml"))

    def test_tls_checked_at_start(self) -> None:
        """A key that does not match the certificate stops start-up before anything runs."""
        from peatio_ws.test.test_listen import make_pki

        pki = make_pki(self.directory / "pki")
        self.environ["WEBSOCKET_SSL_KEY"] = str(pki.other_key)
        self.environ["WEBSOCKET_SSL_CERT"] = str(pki.cert)
        self.assertConfigExit("WEBSOCKET_SSL_KEY")
        self.environ["WEBSOCKET_SSL_KEY"] = str(pki.key)
        self.assertTrue(self.parse().settings.tls)


class MakeServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        try:
            importlib.import_module("peatio_ws.amqp")
            importlib.import_module("peatio_ws.redis")
        except ImportError as e:  # pragma: no cover - only while those modules are being written
            raise self.skipTest(f"peatio_ws.amqp/redis not importable yet: {e}") from None
        self.patch(os, "environ", {"JWT_PUBLIC_KEY": public_key_b64(rsa_key())})

    def test_built_not_started(self) -> None:
        """makeService returns a MultiService whose children are built but not started."""
        from peatio_ws.amqp import EventConsumer
        from peatio_ws.listen import bound_port
        from peatio_ws.redis import RevocationService
        from peatio_ws.service import Daemon

        options = tap.Options()
        options.parseOptions(["--host", "127.0.0.1", "--port", "0"])
        service = tap.makeService(options)
        self.assertIsInstance(service, MultiService)
        self.assertIsInstance(service, Daemon)
        children = list(service)  # type: ignore[call-overload]
        self.assertEqual(len(children), 4)
        self.assertIsInstance(children[1], RevocationService)
        self.assertIsInstance(children[2], EventConsumer)
        self.assertFalse(service.running)
        for child in children:
            self.assertFalse(child.running, child)
        daemon: Any = service
        self.assertIsNone(bound_port(daemon.listener))
        self.assertIsNone(bound_port(daemon.monitoring))


class PluginTests(SynchronousTestCase):
    def test_plugin_found(self) -> None:
        """twistd finds C{peatio-ws} from the checkout, with this module's Options."""
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("peatio-ws", makers)
        maker: Any = makers["peatio-ws"]
        self.assertIs(maker.options, tap.Options)
        self.assertTrue(maker.description)


# -- a real twistd process ---------------------------------------------------------------


class FakeSystemd(DatagramProtocol):
    """Receives sd_notify datagrams on a Unix socket."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.waiters: list[tuple[str, Deferred[None]]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.messages.append(datagram.decode("utf-8"))
        for wanted, d in list(self.waiters):
            if self.seen(wanted):
                self.waiters.remove((wanted, d))
                d.callback(None)

    def seen(self, assignment: str) -> bool:
        return any(assignment in m.split("\n") for m in self.messages)

    def wait_for(self, assignment: str) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.seen(assignment):
            d.callback(None)
        else:
            self.waiters.append((assignment, d))
        return d


class Twistd(ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[BaseException] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        # The exception as a result, not an error: ending by a signal is expected here.
        self.ended.callback(cast(BaseException, reason.value))


def _client_sees_close(port: int, stop: Any) -> tuple[dict[str, Any], int | None]:
    """In a thread: connect, read the challenge, ask for SIGTERM, return the close code seen."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/", open_timeout=WAIT, close_timeout=WAIT) as ws:
        challenge = json.loads(ws.recv(timeout=WAIT))
        reactor.callFromThread(stop)
        try:
            ws.recv(timeout=WAIT)
        except ConnectionClosed as closed:
            return challenge, closed.rcvd.code if closed.rcvd is not None else None
    return challenge, None


class TwistdProcessTests(TestCase):
    """C{twistd -n --pidfile= peatio-ws} in a subprocess, stopped with SIGTERM."""

    timeout = 3 * WAIT

    async def test_json_logs_notify_and_sigterm(self) -> None:
        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        # A short absolute path: a Unix socket address holds 108 bytes.
        sockets = Path(tempfile.mkdtemp(prefix="pws", dir="/tmp"))
        self.addCleanup(shutil.rmtree, sockets, True)
        systemd = FakeSystemd()
        notify = sockets / "notify"
        port = reactor.listenUNIXDatagram(str(notify), systemd)
        self.addCleanup(port.stopListening)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(CHECKOUT),
            "JWT_PUBLIC_KEY": public_key_b64(rsa_key()),
            "WEBSOCKET_HOST": "127.0.0.1",
            "WEBSOCKET_PORT": "0",
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": "0",
            "LOG_FORMAT": "json",
            "NOTIFY_SOCKET": str(notify),
            "WEBSOCKET_CLOSE_TIMEOUT": "2",
        }
        process = Twistd()
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "peatio-ws"]
        transport = reactor.spawnProcess(process, sys.executable, argv, env=env, path=str(directory))

        def kill_if_running() -> Deferred[Any]:
            if transport.pid is not None:
                transport.signalProcess("KILL")
            return process.ended

        self.addCleanup(kill_if_running)

        ready = systemd.wait_for("READY=1")
        ready.addTimeout(WAIT, reactor)
        await ready
        lines = [json.loads(line) for line in process.out.decode("utf-8").splitlines()]
        [listening] = [x for x in lines if x["message"].startswith("peatio-ws listening on ws://127.0.0.1:")]
        ws_port = int(listening["url"].rsplit(":", 1)[1])

        challenge, code = await deferToThread(_client_sees_close, ws_port, lambda: transport.signalProcess("TERM"))
        self.assertEqual(list(challenge), ["challenge"])
        self.assertEqual(code, 1001)

        process.ended.addTimeout(WAIT, reactor)
        reason = await process.ended
        # twistd re-raises SIGTERM on itself after an orderly stop.
        self.assertEqual(getattr(reason, "signal", None), signal.SIGTERM, process.err)
        self.assertTrue(systemd.seen("STOPPING=1"))
        self.assertLess(
            systemd.messages.index(next(m for m in systemd.messages if "READY=1" in m)),
            systemd.messages.index(next(m for m in systemd.messages if "STOPPING=1" in m)),
        )
        # Every stdout line is a JSON object; the lifecycle is there.
        lines = [json.loads(line) for line in process.out.decode("utf-8").splitlines()]
        messages = [x["message"] for x in lines]
        self.assertIn("shutdown complete", messages)
        self.assertTrue(all({"time", "level", "namespace", "message"} <= set(x) for x in lines))
        opened = [x for x in lines if x.get("conn_id") and "opened" in x["message"]]
        self.assertEqual(len(opened), 1)
        self.assertEqual(process.err, b"")
        self.assertNotIn(env["JWT_PUBLIC_KEY"][20:60], process.out.decode("utf-8"))

