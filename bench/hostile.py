"""
C{python -m bench.hostile [--quick] [--kinds 1 5a ...] [--commit REV] [--out PATH]}: what a
hostile client can cost the real daemon (issue 12), per kind of input.

For each kind a fresh daemon (C{twistd -n peatio-ws}, defaults, free ports,
started like the benchmark and the integration tests start it) is attacked
from 127.0.0.1 twice:

 - by ONE connection (no reconnect; the window lasts until the daemon ends
   it, at least 1 s, at most the kind's duration);
 - by ONE address: N connections at once, each replaced as soon as the
   daemon ends it (what a determined attacker does), for the kind's
   duration (4.5 s, or the relevant timeout plus 1.5 s), with a bounded
   number of connections in all (5,000).

Measured on the daemon: resident memory (VmRSS) before, its peak (sampled
every 50 ms) and 1 s after; CPU (utime + stime) over the attack as % of one
core. Meanwhile an honest, authenticated client (another process, from
127.0.0.2 so that per-address limits do not hit it) sends a text C{ping}
every 50 ms and times the C{pong}. Every wait is bounded; the whole run takes
about four and a half minutes (C{--quick}: about three).

The daemon runs from the working tree, like C{make bench}; C{--commit REV}
runs that commit instead (extracted with C{git archive} into a temp dir: the
repository is only read), which keeps the figures steady while the tree is
being edited.

Prints a Markdown table and writes it, with the details of every phase, to
/tmp/hostile-figures.md (C{--out}).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import io
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.sysinfo import cpu_model
from bench.workers import Worker, raise_nofile
from peatio_ws.testing import make_token
from peatio_ws.testing.frames import client_frame, frame_at, upgrade_request
from peatio_ws.testing.pki import make_pki
from tests.support.daemon import DaemonProcess
from tests.support.paths import REPO
from tests.support.probes import cpu_seconds, open_fds, rss_kib

OUT = Path("/tmp/hostile-figures.md")
HOST = "127.0.0.1"
#: The honest client's source address: another "IP" on loopback.
HONEST_SOURCE = "127.0.0.2"
HOSTILE_UID = "IDBADC0FFEE0"
HONEST_UID = "ID600DC0FFEE"
#: Connections one address may open in all during one phase, per concurrent slot.
RECONNECTS_PER_SLOT = 25
#: ... and at most this many in all (unless twice the concurrent ones is more).
MAX_OPENED = 5000
#: The single-connection window is at most this long (a silent socket costs the
#: same all along; when the daemon drops it shows in the per-address phase).
ONE_CONNECTION_MAX = 2.0
PING_EVERY = 0.05
RSS_EVERY = 0.05


# Small helpers of its own (the other bench modules are being reworked): the
# daemon and the test tokens are all this takes from the project.



def client_hello() -> bytes:
    """The bytes of a real TLS ClientHello (Python's default client context)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


# ---------------------------------------------------------------------------
# The kinds of hostile input


@dataclass
class Kind:
    """One kind of hostile input: what each hostile socket does."""

    key: str
    name: str
    expect: str
    #: "ws" (the WebSocket port), "tls" (the WebSocket port of a TLS daemon), "metrics".
    target: str = "ws"
    #: Before the attack: nothing, the upgrade (101 awaited), or the upgrade and a login.
    opening: str = "none"
    #: Written once when the attack starts.
    preamble: bytes = b""
    #: Then written over and over, as fast as the socket takes it.
    flood: bytes = b""
    #: Or written one byte every C{trickle_every} seconds (then C{trickle_fill} forever).
    trickle: bytes = b""
    trickle_fill: bytes = b"a"
    trickle_every: float = 0.1
    #: Whether the socket reads what the daemon sends (else: never, after the opening).
    reads: bool = True
    rcvbuf: int | None = None
    #: Close as soon as the daemon answered anything (a handshake flood).
    churn: bool = False
    #: Concurrent connections for the per-address phase.
    per_ip: int = 200
    #: Seconds of the per-address attack (and the most for one connection).
    seconds: float = 5.0
    env: dict[str, str] = field(default_factory=dict)


def kinds(quick: bool = False) -> list[Kind]:
    """Every kind, in table order."""
    flood_s = 3.0 if quick else 4.5
    ping_text = client_frame(b"ping", 1) * 64
    pong = client_frame(b"", 10) * 64
    ping_frames = client_frame(b"p" * 125, 9) * 32
    junk = client_frame(b"j" * 16384, 1)
    deep = client_frame(b"[" * 8000, 1) * 4
    floods = [
        ("a", 'text "ping" frames', ping_text),
        ("b", "pong frames (opcode 10, empty)", pong),
        ("c", "ping frames (opcode 9, 125 B)", ping_frames),
        ("d", "16 KiB junk text messages", junk),
        ("e", "deep JSON `[`x8000", deep),
    ]
    hello = client_hello()
    head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Slow: "
    out = [
        Kind(
            "1",
            "upgrade head that never ends (junk header lines)",
            "431 at 16 KiB",
            preamble=b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n",
            flood=(b"X-Junk: " + b"j" * 4086 + b"\r\n") * 4,
            seconds=flood_s,
        ),
        Kind(
            "2a",
            "silent sockets (defaults: handshake timeout 5 s, max 1000 handshakes)",
            "dropped at 5 s; 503 past 1000",
            per_ip=1100,
            seconds=6.5,
        ),
        Kind(
            "2b",
            "silent sockets, WEBSOCKET_MAX_CONNECTIONS_PER_IP=20",
            "503 past 20; dropped at 5 s",
            seconds=6.5,
            env={"WEBSOCKET_MAX_CONNECTIONS_PER_IP": "20"},
        ),
        Kind(
            "3",
            "slowloris upgrade head (1 byte / 100 ms)",
            "dropped at 5 s",
            trickle=head,
            seconds=6.5,
        ),
        Kind(
            "4a",
            "endless empty continuation frames, no token",
            "1008",
            opening="upgrade",
            preamble=client_frame(b'{"jwt":', 1, fin=False),
            flood=client_frame(b"", 0, fin=False) * 512,
            seconds=flood_s,
        ),
        Kind(
            "4b",
            "endless empty continuation frames, logged in",
            "1008",
            opening="login",
            preamble=client_frame(b'{"jwt":', 1, fin=False),
            flood=client_frame(b"", 0, fin=False) * 512,
            seconds=flood_s,
        ),
    ]
    for n, opening in (("5", "upgrade"), ("6", "login")):
        for suffix, what, chunk in floods:
            out.append(
                Kind(
                    n + suffix,
                    f"flood: {what}" + (", logged in" if opening == "login" else ""),
                    "1008",
                    opening=opening,
                    flood=chunk,
                    seconds=flood_s,
                )
            )
    out += [
        Kind(
            "7",
            "sends ping frames (125 B), never reads, SO_RCVBUF 4 KiB",
            "4008 or 1008",
            opening="login",
            flood=ping_frames,
            reads=False,
            rcvbuf=4096,
            seconds=flood_s,
        ),
        Kind(
            "8a",
            "TLS: half a ClientHello, then silence",
            "dropped by the handshake timeout?",
            target="tls",
            preamble=hello[: len(hello) // 2],
            seconds=6.5,
        ),
        Kind(
            "8b",
            "TLS: whole ClientHello, then silence",
            "dropped by the handshake timeout?",
            target="tls",
            preamble=hello,
            seconds=6.5,
        ),
        Kind(
            "8c",
            "TLS port: garbage instead of TLS",
            "closed at once",
            target="tls",
            flood=b"\x47\x45\x54\x20" + bytes(range(256)) * 16,
            seconds=flood_s,
        ),
        Kind(
            "8d",
            "TLS: ClientHello, close on the answer, repeat (handshake churn)",
            "-",
            target="tls",
            preamble=hello,
            churn=True,
            seconds=flood_s,
        ),
        Kind(
            "9a",
            "metrics: POST /health, Content-Length 10 GiB, body flood",
            "413 before the body",
            target="metrics",
            preamble=b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 10737418240\r\n\r\n",
            flood=b"\x00" * 65536,
            seconds=flood_s,
        ),
        Kind(
            "9d",
            "metrics: GET /health, Content-Length 10 GiB, body flood",
            "413 before the body",
            target="metrics",
            preamble=b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 10737418240\r\n\r\n",
            flood=b"\x00" * 65536,
            seconds=flood_s,
        ),
        Kind(
            "9b",
            "metrics: slowloris head (1 byte / 100 ms)",
            "dropped at 10 s",
            target="metrics",
            trickle=b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ",
            seconds=11.0,
        ),
        Kind(
            "9c",
            "metrics: idle connections",
            "dropped at 10 s",
            target="metrics",
            seconds=11.0,
        ),
    ]
    return out


# ---------------------------------------------------------------------------
# Hostile sockets (asyncio, in this process)


def _server_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete server frames at the start of C{buf}, removed from it (payloads cut at 256 bytes: only
    control frames and short texts matter here)."""
    frames = []
    off = 0
    while (found := frame_at(buf, off)) is not None:
        first, start, end = found
        frames.append((first & 0x0F, bytes(buf[start : min(end, start + 256)])))
        off = end
    del buf[:off]
    return frames


class Tally:
    """What the sockets of one phase met."""

    def __init__(self) -> None:
        self.opened = 0
        self.bytes_sent = 0
        self.outcomes: Counter[str] = Counter()
        self.lifetimes: dict[str, list[float]] = {}

    def add(self, outcome: str, lifetime: float) -> None:
        self.outcomes[outcome] += 1
        self.lifetimes.setdefault(outcome, []).append(lifetime)

    def describe(self) -> str:
        parts = []
        for outcome, count in self.outcomes.most_common():
            at = statistics.median(self.lifetimes[outcome])
            parts.append(f"{outcome} x{count:,} (at {at:.2f} s)" if count > 1 else f"{outcome} (at {at:.2f} s)")
        return ", ".join(parts) or "-"


class Hostile(asyncio.Protocol):
    """One hostile socket doing what its L{Kind} says until C{deadline}."""

    transport: asyncio.Transport

    def __init__(self, kind: Kind, deadline: float, tally: Tally, token: str) -> None:
        self.kind = kind
        self.deadline = deadline
        self.tally = tally
        self.token = token
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.t0 = time.monotonic()
        self.buf = bytearray()
        self.status: int | None = None
        self.close_code: int | None = None
        self.tls_alert = False
        self.answered = False
        self.attacking = False
        self.paused = False
        self.closed = False
        self.ended_by_us = False
        self.trickled = 0
        self.note = ""

    # -- asyncio ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=65536)
        if self.kind.opening == "none":
            self.attack()
        else:
            self.write(upgrade_request(host=HOST))

    def data_received(self, data: bytes) -> None:
        self.answered = True
        if self.kind.churn:
            self.end()
            return
        if self.status is None and not self.buf and data[:1] in (b"\x15", b"\x16"):
            self.tls_alert = self.tls_alert or data[:1] == b"\x15"
            return
        if len(self.buf) < 1 << 20:
            self.buf += data
        if self.status is None:
            if not self.buf.startswith(b"HTTP/"[: len(self.buf)]):
                self.buf.clear()
                return
            end = self.buf.find(b"\r\n")
            if end < 0:
                return
            parts = bytes(self.buf[:end]).split(b" ", 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
            if self.status != 101:
                self.buf.clear()
                return
        if self.status == 101:
            if self.buf.startswith(b"HTTP/"):
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                del self.buf[: end + 4]
                if self.kind.opening == "upgrade":
                    self.attack()
            for opcode, payload in _server_frames(self.buf):
                if opcode == 8:
                    self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    self.end()
                    return
                if opcode == 1 and not self.attacking and self.kind.opening == "login":
                    if b"challenge" in payload:
                        self.write(client_frame(json.dumps({"jwt": "Bearer " + self.token}).encode(), 1))
                    elif b"Authenticated" in payload:
                        self.attack()
                    else:
                        self.note = "login refused"
                        self.end()
                        return
        else:
            self.buf.clear()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.close_code is not None:
            outcome = f"close {self.close_code}"
        elif self.status is not None and self.status != 101:
            outcome = f"HTTP {self.status}"
        elif self.tls_alert:
            outcome = "TLS alert"
        elif self.note:
            outcome = self.note
        elif self.ended_by_us:
            outcome = "answered, closed by us" if self.kind.churn and self.answered else "still open"
        elif isinstance(exc, ConnectionResetError | BrokenPipeError):
            outcome = "reset" if self.status is None else "101, then reset"
        else:
            outcome = "closed" if self.status is None else "101, then closed"
        self.tally.add(outcome, time.monotonic() - self.t0)
        if not self.done.done():
            self.done.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

    # -- the attack ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed and not self.transport.is_closing():
            self.transport.write(data)
            self.tally.bytes_sent += len(data)

    def attack(self) -> None:
        self.attacking = True
        if not self.kind.reads:
            self.transport.pause_reading()
        if self.kind.preamble:
            self.write(self.kind.preamble)
        if self.kind.flood:
            self.pump()
        elif self.kind.trickle:
            self.trickle()

    def pump(self) -> None:
        flood = self.kind.flood
        for _ in range(16):
            if self.closed or self.paused or self.transport.is_closing() or time.monotonic() >= self.deadline:
                return
            self.write(flood)
        self.loop.call_soon(self.pump)

    def trickle(self) -> None:
        if self.closed or self.transport.is_closing() or time.monotonic() >= self.deadline:
            return
        source = self.kind.trickle
        i = self.trickled
        self.write(source[i : i + 1] if i < len(source) else self.kind.trickle_fill)
        self.trickled += 1
        self.loop.call_later(self.kind.trickle_every, self.trickle)

    def end(self) -> None:
        """Close now (RST: nothing is left waiting in TIME_WAIT)."""
        if not self.closed:
            self.ended_by_us = True
            self.transport.abort()


async def _open(kind: Kind, port: int, deadline: float, tally: Tally, token: str) -> Hostile | None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if kind.rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, kind.rcvbuf)
    t0 = time.monotonic()
    tally.opened += 1
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), max(0.05, deadline - t0))
        protocol = Hostile(kind, deadline, tally, token)
        await loop.create_connection(lambda: protocol, sock=sock)
    except (OSError, TimeoutError) as e:
        sock.close()
        tally.add(f"connect failed ({type(e).__name__})", time.monotonic() - t0)
        return None
    return protocol


async def _slot(kind: Kind, port: int, deadline: float, tally: Tally, token: str, reconnect: bool, cap: int) -> None:
    while time.monotonic() < deadline and tally.opened < cap:
        conn = await _open(kind, port, deadline, tally, token)
        if conn is None:
            if not reconnect:
                return
            await asyncio.sleep(0.05)
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(conn.done), max(0.0, deadline - time.monotonic()))
        if not conn.done.done():
            if not kind.reads:
                # Read at last: the daemon's close frame (or EOF) is there if it closed.
                conn.transport.resume_reading()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(conn.done), 0.3)
            if not conn.done.done():
                conn.end()
                await conn.done
        if not reconnect:
            return


async def attack(kind: Kind, port: int, connections: int, reconnect: bool, seconds: float, token: str) -> Tally:
    """C{connections} hostile sockets at once for C{seconds} (replaced when ended if C{reconnect})."""
    tally = Tally()
    deadline = time.monotonic() + seconds
    cap = max(2 * connections, min(RECONNECTS_PER_SLOT * connections, MAX_OPENED)) if reconnect else connections
    slots = [_slot(kind, port, deadline, tally, token, reconnect, cap) for _ in range(connections)]
    # Bounded: every slot ends by the deadline (plus the read-at-last 0.3 s).
    await asyncio.wait_for(asyncio.gather(*slots), seconds + 10)
    return tally


# ---------------------------------------------------------------------------
# The honest client (another process, so that the attack's GIL does not delay it)


class _Honest:
    """An authenticated WebSocket connection sending C{ping} every 50 ms."""

    def __init__(self, port: int, tls: bool, token: str) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            raw.bind((HONEST_SOURCE, 0))
        except OSError:
            raw.close()
            raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.settimeout(10)
        raw.connect((HOST, port))
        self.sock: socket.socket = raw
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.buf = bytearray()
        self.sock.sendall(upgrade_request(host=HOST))
        while b"\r\n\r\n" not in self.buf:
            self._recv_blocking()
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0] + b" ":
            raise ConnectionError(f"upgrade refused: {head[:60]!r}")
        self.buf = bytearray(rest)
        self._text_blocking()  # the challenge
        self.sock.sendall(client_frame(json.dumps({"jwt": "Bearer " + token}).encode(), 1))
        reply = self._text_blocking()
        if b"Authenticated" not in reply:
            raise ConnectionError(f"login refused: {reply[:100]!r}")
        self.sock.setblocking(False)
        self.sent_at: float | None = None
        self.next_at = time.monotonic()
        self.lost: str | None = None
        self.samples: list[float] | None = None

    def _recv_blocking(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed during setup")
        self.buf += chunk

    def _text_blocking(self) -> bytes:
        while True:
            for opcode, payload in _server_frames(self.buf):
                if opcode == 1:
                    return payload
            self._recv_blocking()

    def fileno(self) -> int:
        return self.sock.fileno()

    def wake_in(self) -> float:
        if self.lost or self.sent_at is not None:
            return 0.5
        return max(0.0, self.next_at - time.monotonic())

    def tick(self) -> None:
        """Send the next ping when it is due and none is outstanding."""
        now = time.monotonic()
        if self.lost is None and self.sent_at is None and now >= self.next_at:
            self._send(client_frame(b"ping", 1))
            self.sent_at = now
            self.next_at = now + PING_EVERY

    def _send(self, data: bytes) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(5)
            self.sock.sendall(data)
        except OSError as e:
            self.lost = f"send failed: {e}"
        finally:
            with contextlib.suppress(OSError):
                self.sock.setblocking(False)

    def readable(self) -> None:
        for _ in range(64):
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                break
            except OSError as e:
                self.lost = f"recv failed: {e}"
                return
            if not chunk:
                self.lost = self.lost or "closed by the daemon"
                return
            self.buf += chunk
        now = time.monotonic()
        for opcode, payload in _server_frames(self.buf):
            if opcode == 1 and payload == b"pong" and self.sent_at is not None:
                if self.samples is not None:
                    self.samples.append((now - self.sent_at) * 1000)
                self.sent_at = None
            elif opcode == 9:
                self._send(client_frame(payload, 10))
            elif opcode == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.lost = f"closed by the daemon with {code}"

    def pending(self) -> bool:
        return isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0

    def stop_recording(self) -> list[float]:
        samples = self.samples or []
        if self.sent_at is not None:
            # An unanswered ping counts with the time it has waited so far.
            samples.append((time.monotonic() - self.sent_at) * 1000)
        self.samples = None
        return samples

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def honest_main(conn: Connection) -> None:
    """The honest client's process: commands from C{conn}, one answer each."""
    client: _Honest | None = None
    while True:
        fds: list[Any] = [conn]
        timeout = 1.0
        if client is not None and client.lost is None:
            fds.append(client)
            timeout = 0.0 if client.pending() else client.wake_in()
        ready, _, _ = select.select(fds, [], [], timeout)
        if client is not None and client.lost is None:
            if client in ready or client.pending():
                client.readable()
            client.tick()
        if conn not in ready:
            continue
        command, args = conn.recv()
        try:
            if command == "connect":
                if client is not None:
                    client.close()
                client = _Honest(args["port"], args["tls"], args["token"])
                conn.send({})
            elif command == "start":
                if client is not None:
                    client.samples = []
                conn.send({"lost": client.lost if client else "not connected"})
            elif command == "stop":
                samples = client.stop_recording() if client is not None else []
                conn.send({"samples": samples, "lost": client.lost if client else "not connected"})
            elif command == "exit":
                if client is not None:
                    client.close()
                conn.send({})
                return
        except Exception as e:
            conn.send({"error": f"{type(e).__name__}: {e}"})


def attacker_main(conn: Connection) -> None:
    """
    The attacker's process: runs L{attack} for each command. Niced, so that
    the daemon and the honest client get the CPU they need first: the
    attacker (Python, busy) would otherwise delay the honest client on a
    small machine, which the figures would then blame on the daemon.
    """
    with contextlib.suppress(OSError):
        os.nice(10)
    raise_nofile()
    while True:
        command, args = conn.recv()
        if command == "exit":
            conn.send({})
            return
        try:
            conn.send({"tally": asyncio.run(attack(**args))})
        except Exception as e:
            conn.send({"error": f"{type(e).__name__}: {e}"})


class Helpers:
    """The two helper processes: the honest client and the attacker."""

    def __init__(self) -> None:
        self.honest = Worker("honest client", honest_main)
        self.attacker = Worker("attacker", attacker_main)

    def attack(self, kind: Kind, port: int, connections: int, reconnect: bool, seconds: float, token: str) -> Tally:
        answer = self.attacker.call(
            "attack",
            wait=seconds + 30,
            kind=kind,
            port=port,
            connections=connections,
            reconnect=reconnect,
            seconds=seconds,
            token=token,
        )
        tally: Tally = answer["tally"]
        return tally

    def close(self) -> None:
        self.honest.stop()
        self.attacker.stop()


# ---------------------------------------------------------------------------
# Measuring a phase


class RssSampler(threading.Thread):
    """The daemon's VmRSS (and open descriptors) every 50 ms until stopped: their peaks."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_kib(pid)
        self.fds = open_fds(pid)
        self._stop_event = threading.Event()

    def _sample(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.peak = max(self.peak, rss_kib(self.pid))
            self.fds = max(self.fds, open_fds(self.pid))

    def run(self) -> None:
        while not self._stop_event.wait(RSS_EVERY):
            self._sample()

    def finish(self) -> int:
        self._stop_event.set()
        self.join(2)
        self._sample()
        return self.peak


@dataclass
class Phase:
    connections: int
    tally: Tally
    rss_before: int
    rss_peak: int
    rss_after: int
    cpu_s: float
    wall_s: float
    latencies: list[float]
    honest_lost: str | None
    log_bytes: int
    limits: dict[str, float]
    fds_before: int
    fds_peak: int

    @property
    def cpu_pct(self) -> float:
        return 100 * self.cpu_s / self.wall_s if self.wall_s else 0.0

    def cost(self) -> str:
        return (
            f"+{self.rss_peak - self.rss_before:,} KiB (after {self.rss_after - self.rss_before:+,}), "
            f"{self.cpu_pct:.0f} %"
        )

    def latency(self) -> str:
        if not self.latencies:
            return "-"
        text = f"{statistics.median(self.latencies):.1f} / {max(self.latencies):.0f}"
        return text + (" (lost!)" if self.honest_lost else "")


def _limits(daemon: DaemonProcess) -> dict[str, float]:
    """Nonzero inbound-limit and rejection counters of the daemon."""
    try:
        text = daemon.metrics()
    except OSError:
        return {}
    found = {}
    for m in re.finditer(
        r"^peatio_ws_(inbound_limited|connections_rejected)_total\{(?:limit|reason)=\"([^\"]+)\"\} ([0-9.e+]+)$",
        text,
        re.MULTILINE,
    ):
        if float(m.group(3)):
            found[f"{m.group(1)}:{m.group(2)}"] = float(m.group(3))
    return found


def run_phase(
    kind: Kind, daemon: DaemonProcess, helpers: Helpers, connections: int, reconnect: bool, token: str
) -> Phase:
    honest = helpers.honest
    assert daemon.process is not None
    pid = daemon.process.pid
    port = daemon.metrics_port if kind.target == "metrics" else daemon.port
    log_path = Path(daemon._log.name)
    limits_before = _limits(daemon)
    honest.call("start")
    log_before = log_path.stat().st_size
    rss_before, fds_before = rss_kib(pid), open_fds(pid)
    sampler = RssSampler(pid)
    sampler.start()
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    seconds = kind.seconds if reconnect else min(kind.seconds, ONE_CONNECTION_MAX)
    tally = helpers.attack(kind, port, connections, reconnect, seconds, token)
    # The daemon's share of the work after the last byte sent: half a second more.
    time.sleep(max(0.5, 1.0 - (time.monotonic() - t0)))
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    peak = sampler.finish()
    honest_answer = honest.call("stop")
    time.sleep(1.0 if reconnect else 0.5)
    limits = {k: v - limits_before.get(k, 0) for k, v in _limits(daemon).items() if v - limits_before.get(k, 0)}
    return Phase(
        connections=connections,
        tally=tally,
        rss_before=rss_before,
        rss_peak=peak,
        rss_after=rss_kib(pid),
        cpu_s=cpu1 - cpu0,
        wall_s=t1 - t0,
        latencies=honest_answer["samples"],
        honest_lost=honest_answer["lost"],
        log_bytes=log_path.stat().st_size - log_before,
        limits=limits,
        fds_before=fds_before,
        fds_peak=sampler.fds,
    )


@dataclass
class Result:
    kind: Kind
    one: Phase
    many: Phase
    #: Traceback / Unhandled lines of the daemon's log (filled in once it has stopped).
    log_findings: list[str] = field(default_factory=list)


class Stopping:
    """
    Daemons told to stop (SIGTERM), reaped later: a daemon's graceful stop
    waits for connections in their closing handshake (up to
    WEBSOCKET_CLOSE_TIMEOUT), so the next kind starts meanwhile.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[DaemonProcess, list[str]]] = []

    def add(self, daemon: DaemonProcess, findings: list[str]) -> None:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.send_signal(signal.SIGTERM)
        self.pending.append((daemon, findings))

    def reap(self, wait: bool = False) -> None:
        left = []
        for daemon, findings in self.pending:
            if not wait and daemon.process is not None and daemon.process.poll() is None:
                left.append((daemon, findings))
                continue
            try:
                daemon.stop(timeout=20)  # waits (bounded); SIGKILL if it hangs
            except RuntimeError as e:
                findings.append(f"did not stop: {str(e).splitlines()[0]}")
            text = ""
            with contextlib.suppress(OSError):
                text = daemon.log_text()
            for needle in ("Traceback", "Unhandled"):
                lines = [line for line in text.splitlines() if needle in line]
                if lines:
                    findings.append(f"{needle} x{len(lines)}: {lines[0].strip()[:200]}")
            daemon.cleanup()
        self.pending = left


def run_kind(
    kind: Kind, helpers: Helpers, stopping: Stopping, quick: bool, tls_files: tuple[Path, Path] | None, source: str
) -> Result:
    env = dict(kind.env)
    if source:
        env["PYTHONPATH"] = source
    if kind.target == "tls":
        assert tls_files is not None
        env["WEBSOCKET_SSL_KEY"], env["WEBSOCKET_SSL_CERT"] = str(tls_files[0]), str(tls_files[1])
    daemon = DaemonProcess(env=env)
    token = make_token(uid=HOSTILE_UID)
    port = daemon.metrics_port if kind.target == "metrics" else daemon.port
    findings: list[str] = []
    try:
        daemon.start(timeout=30)
        helpers.honest.call("connect", port=daemon.port, tls=kind.target == "tls", token=make_token(uid=HONEST_UID))
        # Warm-up: one hostile connection for a moment, not measured (first-use costs).
        helpers.attack(dataclasses.replace(kind, seconds=0.2), port, 1, False, 0.2, token)
        time.sleep(0.1)
        one = run_phase(kind, daemon, helpers, 1, False, token)
        many = run_phase(kind, daemon, helpers, min(kind.per_ip, 100) if quick else kind.per_ip, True, token)
        assert daemon.process is not None
        if daemon.process.poll() is not None:
            raise RuntimeError(f"the daemon died (exit {daemon.process.returncode})")
    finally:
        stopping.add(daemon, findings)
    return Result(kind, one, many, findings)


def snapshot(rev: str, into: Path) -> str:
    """Extract commit C{rev} of the repository into C{into} (git archive: the repository is only read); its id."""
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", rev + "^{commit}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    tar = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", sha], capture_output=True, check=True, timeout=60
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    return sha


# ---------------------------------------------------------------------------
# Output


def machine_line(commit: str) -> str:
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    status = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "peatio_ws"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    # The daemon's own modules (not tests) that differ from HEAD: what was measured is not HEAD exactly.
    changed = sorted({line[3:] for line in status if re.fullmatch(r"peatio_ws/[^/]+\.py", line[3:])})
    where = f"daemon: commit {commit[:12]} (a git-archive snapshot)" if commit else f"daemon: {REPO} at {head}"
    if changed and not commit:
        where += f" (uncommitted changes in {', '.join(changed)})"
    return f"{date}; {nproc} x {cpu_model()}; Linux {os.uname().release}; Python {sys.version.split()[0]}; {where}"


HEADER = [
    "| kind | per connection: peak RSS growth (after), CPU % | per IP (N connections): peak RSS growth "
    "(after), CPU % | what the daemon answered (one conn; per IP) | honest ping→pong median / max ms "
    "(one conn; per IP) |",
    "|---|---|---|---|---|",
]


def row(r: Result) -> str:
    k, one, many = r.kind, r.one, r.many
    return (
        f"| {k.key}. {k.name} | {one.cost()} | N={many.connections:,} (opened {many.tally.opened:,}): {many.cost()} | "
        f"{one.tally.describe()}; {many.tally.describe()} | {one.latency()}; {many.latency()} |"
    )


def details(r: Result) -> str:
    k = r.kind
    lines = [f"* **{k.key}** expected: {k.expect}."]
    for label, p in (("one", r.one), ("per IP", r.many)):
        lines.append(
            f"  {label}: window {p.wall_s:.1f} s, daemon CPU {p.cpu_s * 1000:,.0f} ms, RSS {p.rss_before:,} → "
            f"peak {p.rss_peak:,} → {p.rss_after:,} KiB; sent {p.tally.bytes_sent:,} B on {p.tally.opened:,} "
            f"connection(s); daemon descriptors {p.fds_before:,} → peak {p.fds_peak:,}; daemon log +{p.log_bytes:,} B; "
            "counters "
            f"{', '.join(f'{n} +{v:,.0f}' for n, v in p.limits.items()) or 'none'}; "
            f"honest pings {len(p.latencies)}" + (f"; honest client: {p.honest_lost}" if p.honest_lost else "")
        )
    for finding in r.log_findings:
        lines.append(f"  daemon log: {finding}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hostile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kinds", nargs="*", default=[], help="only these kinds (e.g. 1 2a 5); default: all")
    parser.add_argument("--quick", action="store_true", help="3 s floods, at most 100 connections per address")
    parser.add_argument("--out", type=Path, default=OUT, help=f"Markdown results (default {OUT})")
    parser.add_argument(
        "--commit",
        metavar="REV",
        help="run the daemon of this commit (a git-archive snapshot in a temp dir) instead of the working tree",
    )
    args = parser.parse_args(argv)
    chosen = [k for k in kinds(args.quick) if not args.kinds or any(k.key.startswith(p) for p in args.kinds)]
    if not chosen:
        parser.error("no kind matches --kinds")
    nofile = raise_nofile()
    if nofile < 4000:
        print(f"open-file limit {nofile}: per-address connections capped", file=sys.stderr)
        for k in chosen:
            k.per_ip = min(k.per_ip, nofile // 3)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="peatio-ws-hostile-"))
    source = ""
    commit = ""
    if args.commit:
        source = str(tmp / "src")
        commit = snapshot(args.commit, Path(source))
    machine = machine_line(commit)
    print(f"peatio-ws hostile-client costs: {machine}", flush=True)
    lines = ["# peatio-ws: what one hostile connection / one hostile address costs", "", machine, ""]
    lines += [
        "Daemon defaults; a fresh daemon per kind; the attacker in its own process at nice 10, on the same "
        "machine as the daemon and the honest client (and whatever else runs there). Peak RSS growth = peak "
        "VmRSS during the attack (50 ms samples) minus before; after = 1 s later. CPU = daemon utime+stime "
        "over the attack window (+0.5 s), % of one core. Per connection: one socket, window until the daemon "
        f"ends it (at least 1 s, at most {ONE_CONNECTION_MAX:.0f} s + 0.5 s). Per IP: N concurrent connections "
        "from 127.0.0.1, each replaced as soon as the daemon ends it, "
        f"at most {MAX_OPENED:,} in all. Answers: outcome x count (median time from connect). Honest client: "
        "authenticated, from 127.0.0.2, a text ping every 50 ms. Details (descriptors, counters, log volume) "
        "below the table.",
        "",
    ]
    rows: list[str] = []
    pki = make_pki(tmp / "pki") if any(k.target == "tls" for k in chosen) else None
    tls_files = (pki.key, pki.cert) if pki is not None else None
    helpers = Helpers()
    stopping = Stopping()
    results: list[Result] = []
    failed = 0
    try:
        for kind in chosen:
            print(f"[{time.monotonic() - started:5.0f} s] {kind.key}. {kind.name} ...", flush=True)
            stopping.reap()
            try:
                result = run_kind(kind, helpers, stopping, args.quick, tls_files, source)
            except Exception as e:
                failed += 1
                why = " ".join(f"{type(e).__name__}: {e}".split())
                rows.append(f"| {kind.key}. {kind.name} | failed: {why[:300]} | | | |")
                print(f"  FAILED: {type(e).__name__}: {e}", flush=True)
                continue
            results.append(result)
            rows.append(row(result))
            print("  " + rows[-1], flush=True)
    finally:
        helpers.close()
        stopping.reap(wait=True)
        shutil.rmtree(tmp, ignore_errors=True)
    notes = [details(r) for r in results]
    lines += HEADER + rows + ["", f"Took {time.monotonic() - started:.0f} s.", "", "## Details", ""] + notes
    text = "\n".join(lines) + "\n"
    args.out.write_text(text, encoding="utf-8")
    print()
    print("\n".join(notes))
    print()
    print("\n".join(HEADER + rows))
    print(f"\nwritten to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    # Through the module, not __main__: the helper processes unpickle its classes.
    from bench import hostile

    sys.exit(hostile.main())
