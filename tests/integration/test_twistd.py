"""
The real C{twistd -n peatio-ws} process: readiness to systemd, JSON logs, and SIGTERM.
"""


from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol, ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from peatio_ws.testing import public_key_b64, rsa_key
from tests.support.paths import REPO
from tests.support.waiting import within

reactor: Any = _reactor

WAIT = 20.0


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

    async def start(self) -> tuple[Twistd, Any, FakeSystemd, int]:
        """The real daemon in a subprocess, with JSON logs and a fake systemd: once READY=1."""
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
            "PYTHONPATH": str(REPO),
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

        await within(systemd.wait_for("READY=1"), WAIT, "READY=1 from the daemon")
        lines = [json.loads(line) for line in process.out.decode("utf-8").splitlines()]
        [listening] = [x for x in lines if x["message"].startswith("peatio-ws listening on ws://127.0.0.1:")]
        ws_port = int(listening["url"].rsplit(":", 1)[1])
        self.env = env
        return process, transport, systemd, ws_port

    async def test_json_logs_notify_and_sigterm(self) -> None:
        process, transport, systemd, ws_port = await self.start()
        challenge, code = await deferToThread(_client_sees_close, ws_port, lambda: transport.signalProcess("TERM"))
        self.assertEqual(list(challenge), ["challenge"])
        self.assertEqual(code, 1001)

        reason = await within(process.ended, WAIT, "twistd to exit")
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
        # GC_POLICY=tuned (the default) is in force under twistd, and said once.
        [gc_line] = [x for x in lines if x["message"].startswith("garbage collector: ")]
        self.assertGreater(gc_line["frozen"], 1000)
        self.assertEqual(gc_line["thresholds"], [10000, 20, 100])
        self.assertTrue(all({"time", "level", "namespace", "message"} <= set(x) for x in lines))
        opened = [x for x in lines if x.get("conn_id") and "opened" in x["message"]]
        self.assertEqual(len(opened), 1)
        self.assertEqual(process.err, b"")
        self.assertNotIn(self.env["JWT_PUBLIC_KEY"][20:60], process.out.decode("utf-8"))

    async def test_second_signal_while_stopping(self) -> None:
        """
        A second SIGTERM (or Ctrl-C) during the shutdown is noted, not acted
        on: no ReactorNotRunning traceback, and the shutdown ends as usual.
        """
        process, transport, _systemd, ws_port = await self.start()

        def twice() -> None:
            transport.signalProcess("TERM")
            transport.signalProcess("INT")

        _challenge, code = await deferToThread(_client_sees_close, ws_port, twice)
        self.assertEqual(code, 1001)
        await within(process.ended, WAIT, "twistd to exit")
        output = (process.out + process.err).decode("utf-8", "replace")
        self.assertNotIn("Traceback", output)
        self.assertNotIn("ReactorNotRunning", output)
        self.assertIn("while shutting down; the shutdown goes on", output)
