"""
Private servers for tests: a C{redis-server} or a RabbitMQ node that the
test itself starts, on free 127.0.0.1 ports, with a temporary directory of
its own, and that only the test stops, restarts, freezes or kills.

The project's rule: a test never signals or restarts a server it did not
start. Tests that fault Redis or the broker use these; tests that only
use the machine's shared servers keep using them.

Every signal here goes to a PID this module started (a C{Popen} it
holds), never to a process found by name; every wait is bounded and fails
naming what did not happen; a cleanup always kills what is left of its
own processes and removes its directory (and an C{atexit} hook does the
same for anything a crashed test run left behind).

 - L{PrivateRedis}: the Debian C{redis-server}, no persistence.
   Synchronous (Redis starts in milliseconds).
 - L{PrivateRabbit}: the Debian package's RabbitMQ under its own node
   name, AMQP port, distribution port, C{epmd} (on a port of its own),
   Erlang cookie, data, log and configuration files, and no plugins.
   Asynchronous (a start takes a few seconds, and the reactor must keep
   running meanwhile); C{rabbitmqctl} always with C{-n} its own node.
 - L{PrivateRabbitCluster}: three such nodes sharing one private C{epmd}
   and one Erlang cookie, joined into one cluster with C{rabbitmqctl
   join_cluster}; each node killed and started again on its own.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from peatio_ws.config import RedisAddress, Settings
from tests.support import broker
from tests.support.daemon import free_port
from tests.support.waiting import until, until_blocking, within

__all__ = [
    "PrivateRabbit",
    "PrivateRabbitCluster",
    "PrivateRedis",
    "private_rabbit",
    "private_rabbit_cluster",
    "private_redis",
]

HOST = "127.0.0.1"

T = TypeVar("T")

#: Every private server not cleaned up yet: killed at interpreter exit.
_LIVE: set[PrivateRedis | PrivateRabbit | PrivateRabbitCluster] = set()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.kill_all()


def _answers(port: int, ping: bytes = b"", expect: bytes = b"") -> bool:
    """Whether 127.0.0.1:C{port} accepts (and answers C{ping} with C{expect}...)."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as s:
            if ping:
                s.sendall(ping)
                return s.recv(64).startswith(expect)
            return True
    except OSError:
        return False


def _signal(process: subprocess.Popen[bytes] | None, sig: int) -> None:
    """Send C{sig} to C{process} (ours), unless it has exited and been reaped."""
    if process is not None and process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)


def _reap(process: subprocess.Popen[bytes] | None, seconds: float) -> None:
    """SIGKILL C{process} (ours) if it still runs after C{seconds}; wait for it."""
    if process is None:
        return
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        _signal(process, signal.SIGCONT)
        _signal(process, signal.SIGKILL)
        process.wait(10)


# ---------------------------------------------------------------------------
# Redis


class PrivateRedis:
    """
    A C{redis-server} of the test's own: a free 127.0.0.1 port, its own
    directory (its log there), no persistence, in the foreground as our
    child. L{stop}, L{kill}, L{freeze} and L{thaw} signal its PID only;
    L{start} again reuses the same port, so clients and daemons configured
    with L{url} find it back.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="peatio-ws-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.frozen = False
        #: Seconds each start took (until PONG), in order.
        self.start_seconds: list[float] = []

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def address(self) -> RedisAddress:
        return RedisAddress(HOST, self.port, 0, None, False)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        try:
            return (self.dir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""

    def start(self, seconds: float = 15.0) -> PrivateRedis:
        """Start it (again) and wait, bounded, until it answers PING."""
        if self.running:
            raise AssertionError("the private redis-server is already running")
        _LIVE.add(self)
        started = time.monotonic()
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "/usr/bin/redis-server",
                "--port", str(self.port),
                "--bind", HOST,
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.dir),
                "--logfile", str(self.dir / "redis.log"),
                "--daemonize", "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.frozen = False

        def ready() -> bool:
            if not self.running:
                raise AssertionError(f"the private redis-server exited on port {self.port}:\n{self.log_text()[-2000:]}")
            return self.ping()

        until_blocking(ready, seconds, f"the private redis-server to answer PING on port {self.port}", interval=0.02)
        self.start_seconds.append(time.monotonic() - started)
        return self

    def ping(self) -> bool:
        return _answers(self.port, b"PING\r\n", b"+PONG")

    def stop(self, seconds: float = 10.0) -> None:
        """SIGTERM (no persistence: it just exits), and wait until it has; SIGKILL if it hangs."""
        self.thaw()
        _signal(self.process, signal.SIGTERM)
        _reap(self.process, seconds)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        _signal(self.process, signal.SIGKILL)
        _reap(self.process, 10)
        self.frozen = False

    def freeze(self) -> None:
        """SIGSTOP: its connections stay open, nothing is answered."""
        assert self.running, "the private redis-server is not running"
        _signal(self.process, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            _signal(self.process, signal.SIGCONT)
            self.frozen = False

    def cli(self, *args: str) -> str:
        """redis-cli against this server; its output (checks independent of txredisapi)."""
        result = subprocess.run(
            [shutil.which("redis-cli") or "/usr/bin/redis-cli", "-h", HOST, "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return result.stdout.strip()

    def kill_all(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def cleanup(self) -> None:
        """Stop it whatever state it is in (by its PID) and remove its directory."""
        try:
            self.stop()
        finally:
            self.kill_all()
            _LIVE.discard(self)


def private_redis(case: TestCase) -> PrivateRedis:
    """A started L{PrivateRedis}, cleaned up with C{case} (registered before it starts)."""
    redis = PrivateRedis()
    case.addCleanup(redis.cleanup)
    return redis.start()


# ---------------------------------------------------------------------------
# RabbitMQ

#: The Debian package's scripts themselves: /usr/sbin's wrappers switch to the
#: rabbitmq user (and its cookie and directory), which a private node must not.
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


class _Erlang:
    """
    What Erlang nodes that talk to each other share: an C{epmd} of our own
    on a free 127.0.0.1 port (started once, by its PID ours), and a
    C{HOME} holding one Erlang cookie (under C{dir}, which the owner
    removes). One per L{PrivateRabbit}, or one for a whole
    L{PrivateRabbitCluster}.
    """

    def __init__(self, dir: Path) -> None:
        self.port = free_port()
        self.home = dir / "home"
        self.home.mkdir()
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        self.process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {"HOME": str(self.home), "ERL_EPMD_PORT": str(self.port), "ERL_EPMD_ADDRESS": HOST}

    def start(self) -> None:
        """Start our epmd unless it runs; bounded wait until it accepts."""
        if self.process is not None and self.process.poll() is None:
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(self.env())
        self.process = subprocess.Popen(
            [shutil.which("epmd") or "/usr/bin/epmd", "-port", str(self.port), "-address", HOST],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        until_blocking(lambda: _answers(self.port), 10, f"the private epmd on port {self.port}", interval=0.02)

    def kill(self) -> None:
        """SIGKILL our epmd (its PID), and reap it."""
        _signal(self.process, signal.SIGKILL)
        _reap(self.process, 10)


class PrivateRabbit:
    """
    A RabbitMQ node of the test's own, from the Debian package's scripts:
    node C{peatio-ws-test-<hex>@localhost}, a free AMQP port (guest/guest,
    loopback only), a free distribution port, and an C{epmd} of its own on
    a free port (so the shared node's epmd on 4369 is neither used nor
    touched), with its own Erlang cookie in its own C{HOME}, its data,
    logs, configuration and an empty plugin list in a temporary directory.

    C{rabbitmq-server} (our C{Popen}) is a shell that stays as the parent
    of the node's VM (C{beam.smp}): the VM's PID is that shell's one child
    (checked against the node's pid file at start), and L{kill} SIGKILLs
    exactly that PID.

    A node of a L{PrivateRabbitCluster} is made by the cluster: its
    directory inside the cluster's, and the cluster's C{epmd} and cookie
    (C{erlang}), which the node neither starts nor stops.
    """

    def __init__(self, *, name: str | None = None, dir: Path | None = None, erlang: _Erlang | None = None) -> None:
        self.node = f"{name or 'peatio-ws-test-' + secrets.token_hex(4)}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        if dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="peatio-ws-rabbit-"))
        else:
            dir.mkdir()
            self.dir = dir
        #: Our own epmd and cookie, or a cluster's (then not ours to stop).
        self._owns_erlang = erlang is None
        self.erlang = _Erlang(self.dir) if erlang is None else erlang
        self.process: subprocess.Popen[bytes] | None = None
        #: Seconds each start took (until await_startup and the AMQP port), in order.
        self.start_seconds: list[float] = []
        #: Seconds the last L{cleanup} took to stop the node.
        self.stop_seconds: float | None = None
        self._write_files()

    # -- set-up ------------------------------------------------------------------

    @property
    def epmd_port(self) -> int:
        return self.erlang.port

    def _write_files(self) -> None:
        d = self.dir
        for sub in ("mnesia", "log"):
            (d / sub).mkdir()
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq/rabbitmq-env.conf (the shared node's name)
        (d / "rabbitmq.conf").write_text(f"listeners.tcp.1 = {HOST}:{self.port}\n")

    def _env(self) -> dict[str, str]:
        """The environment of the node and of its rabbitmqctl: nothing inherited from the shared node's."""
        d = self.dir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(self.erlang.env())
        env.update(
            {
                "LANG": "C.UTF-8",
                "LC_ALL": "C.UTF-8",
                "ERL_CRASH_DUMP": str(d / "erl_crash.dump"),
                "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
                "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
                "RABBITMQ_LOG_BASE": str(d / "log"),
                "RABBITMQ_PID_FILE": str(d / "rabbit.pid"),
                "RABBITMQ_NODE_IP_ADDRESS": HOST,
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                # Never spawn a (shared, lingering) `epmd -daemon`: ours runs already.
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}",
                "RABBITMQ_CTL_ERL_ARGS": "-start_epmd false",
            }
        )
        return env

    @property
    def daemon_env(self) -> dict[str, str]:
        """What a daemon under test needs to use this node."""
        return {"RABBITMQ_HOST": HOST, "RABBITMQ_PORT": str(self.port)}

    @property
    def settings(self) -> Settings:
        """The default settings, on this node (for the tests' own AMQP clients)."""
        return dataclasses.replace(Settings(), rabbitmq_host=HOST, rabbitmq_port=self.port)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        """The node's VM (beam.smp): a child of the C{rabbitmq-server} we started."""
        pid = self._vm_pid()
        assert pid is not None, f"{self.node} has no running VM"
        return pid

    def _vm_pid(self) -> int | None:
        """
        The child of our C{rabbitmq-server} shell: the node's VM (C{erl}
        execs C{erlexec}, which execs C{beam.smp}, so the PID stays); None
        when there is none.
        """
        if self.process is None or self.process.poll() is not None:
            return None
        for status in Path("/proc").glob("[0-9]*/status"):
            with contextlib.suppress(OSError):
                ppid = re.search(r"^PPid:\s*(\d+)", status.read_text(), re.MULTILINE)
                if ppid is not None and int(ppid.group(1)) == self.process.pid:
                    return int(status.parent.name)
        return None

    def log_text(self, lines: int = 60) -> str:
        """The end of the node's logs (start-up output and the node log)."""
        parts = []
        for path in sorted((self.dir / "log").glob("*")):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)

    # -- processes -----------------------------------------------------------------

    async def start(self, seconds: float = 90.0) -> PrivateRabbit:
        """Start the node (again, on the same data directory); bounded wait until it is up."""
        if self.running:
            raise AssertionError(f"{self.node} is already running")
        _LIVE.add(self)
        started = time.monotonic()
        self.erlang.start()
        with (self.dir / "log" / "startup.log").open("ab") as out:
            self.process = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                cwd=str(self.dir),
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        await self.await_startup(seconds)
        pid_file = (self.dir / "rabbit.pid").read_text().strip()
        if pid_file != str(self._vm_pid()):
            raise AssertionError(
                f"{self.node}: its pid file says {pid_file}, the child of our shell is {self._vm_pid()}"
            )
        self.start_seconds.append(time.monotonic() - started)
        return self

    async def await_startup(self, seconds: float = 90.0) -> None:
        """Until the node's app runs (rabbitmqctl await_startup) and its AMQP port accepts; bounded."""

        async def up() -> bool:
            if not self.running:
                raise AssertionError(
                    f"{self.node} exited ({self.process and self.process.returncode}):\n{self.log_text()}"
                )
            if not _answers(self.port):
                return False
            try:
                await self.ctl("await_startup", "--timeout", "10")
            except AssertionError:
                return False
            return True

        try:
            await until(up, seconds, f"the private RabbitMQ node {self.node} to start", interval=0.2)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.log_text()}") from None

    async def ctl(self, *args: str, seconds: float = 30.0) -> str:
        """C{rabbitmqctl -n <this node> -q ARGS}: its output; fails naming the command."""
        d = getProcessOutputAndValue(
            str(RABBITMQ_BIN / "rabbitmqctl"), ("-n", self.node, "-q", *args), env=self._env(), path=str(self.dir)
        )
        out, err, code = await within(d, seconds, f"rabbitmqctl {' '.join(args)}")
        if code != 0:
            text = (err or out).decode("utf-8", "replace").strip()
            raise AssertionError(f"rabbitmqctl -n {self.node} {' '.join(args)} failed ({code}): {text}")
        return str(out.decode("utf-8", "replace"))

    async def stop_app(self) -> None:
        """C{rabbitmqctl stop_app}: the node runs, RabbitMQ's app (and its port) does not."""
        await self.ctl("stop_app")

    async def start_app(self, seconds: float = 60.0) -> None:
        """C{rabbitmqctl start_app}, then until it is up again."""
        await self.ctl("start_app")
        await self.await_startup(seconds)

    def kill(self) -> None:
        """
        SIGKILL the node's VM (its own PID, no clean stop), then reap our
        C{rabbitmq-server} shell, which exits with it; L{start} brings the
        node back on the same data.
        """
        vm = self._vm_pid()
        if vm is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(vm, signal.SIGKILL)
        _reap(self.process, 15)

    async def close_connection(self, name: str, reason: str = "peatio-ws test: forced close") -> None:
        """Close, from the broker's side, the one connection whose C{connection_name} is C{name}."""
        await broker.close_connection_named(name, reason, self.ctl)

    # -- what the node holds ---------------------------------------------------------

    async def has_connection(self, name: str) -> bool:
        """Whether a connection's client properties mention C{name}."""
        return name in await self.ctl("list_connections", "client_properties")

    async def queue_exists(self, queue: str) -> bool:
        return await broker.queue_exists(queue, self.ctl)

    async def exchange_exists(self, exchange: str) -> bool:
        return await broker.exchange_exists(exchange, self.ctl)

    async def queue_counts(self, queue: str) -> tuple[int, int]:
        """(messages ready, messages unacknowledged) of C{queue}."""
        return await broker.queue_counts(queue, self.ctl)

    async def bindings_of(self, queue: str) -> list[tuple[str, str]]:
        """(exchange, routing key) of every binding to C{queue}, the default exchange's excepted."""
        return await broker.bindings_of(queue, self.ctl)

    # -- clean-up --------------------------------------------------------------------

    def kill_all(self) -> None:
        """SIGKILL our node and our epmd (by their PIDs; not a cluster's epmd), reap them, remove the directory."""
        self.kill()
        if self._owns_erlang:
            self.erlang.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    async def cleanup(self) -> None:
        """
        Stop our node (C{rabbitmqctl -n <node> stop}, bounded), SIGKILL its
        PID if it is still there, stop our epmd, remove the directory.
        """
        started = time.monotonic()
        try:
            if self.running:
                with contextlib.suppress(AssertionError):
                    await self.ctl("stop", seconds=30)
                with contextlib.suppress(AssertionError):
                    await until(lambda: not self.running, 15, f"{self.node} to exit", interval=0.1)
            self.stop_seconds = time.monotonic() - started
        finally:
            self.kill_all()
            _LIVE.discard(self)


async def private_rabbit(case: TestCase) -> PrivateRabbit:
    """A started L{PrivateRabbit}, cleaned up with C{case} (registered before it starts)."""
    rabbit = PrivateRabbit()
    case.addCleanup(lambda: Deferred.fromCoroutine(rabbit.cleanup()))
    return await rabbit.start()


async def _together(coroutines: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run C{coroutines} at the same time; their results, or the first one's failure (the others go on)."""
    try:
        return await gatherResults([Deferred.fromCoroutine(c) for c in coroutines], consumeErrors=True)
    except FirstError as e:
        e.subFailure.raiseException()
        raise  # not reached: raiseException raises


class PrivateRabbitCluster:
    """
    A RabbitMQ cluster of the test's own on this one machine: C{size}
    (three) L{PrivateRabbit} nodes C{peatio-ws-cluster-<hex>-<n>@localhost},
    each with its own AMQP port, distribution port and data directory
    (inside the cluster's temporary directory), all sharing one private
    C{epmd} and one Erlang cookie. L{start} starts them together, then
    nodes 2.. each C{stop_app}, C{join_cluster <node 1>} and C{start_app}
    (C{rabbitmqctl -n <their node>}), and waits until every node's
    C{cluster_status} lists them all running.

    A node (L{nodes}) is killed with its L{PrivateRabbit.kill} (SIGKILL of
    its VM's PID) and started again with its L{PrivateRabbit.start}: it
    comes back as the same node, on its data, in the cluster; then
    L{await_running} until the others see it.
    """

    def __init__(self, size: int = 3) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="peatio-ws-rabbit-cluster-"))
        self.erlang = _Erlang(self.dir)
        tag = secrets.token_hex(4)
        self.nodes = [
            PrivateRabbit(name=f"peatio-ws-cluster-{tag}-{n}", dir=self.dir / f"node{n}", erlang=self.erlang)
            for n in range(1, size + 1)
        ]
        #: Seconds the last L{start} took: all nodes up, then joined, then seen running by every node.
        self.start_seconds: float | None = None
        #: Seconds of its phases: "boot" (every node up on its own), "join" (nodes 2.. joined).
        self.phase_seconds: dict[str, float] = {}

    def __getitem__(self, index: int) -> PrivateRabbit:
        return self.nodes[index]

    @property
    def hosts(self) -> str:
        """Every node's AMQP address, in order: C{127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3}."""
        return ",".join(f"{HOST}:{node.port}" for node in self.nodes)

    @property
    def daemon_env(self) -> dict[str, str]:
        """What a daemon under test needs to use the cluster: every node, in RABBITMQ_HOST."""
        return {"RABBITMQ_HOST": self.hosts}

    @property
    def names(self) -> list[str]:
        """The nodes' Erlang names, in order."""
        return [node.node for node in self.nodes]

    @property
    def running(self) -> list[PrivateRabbit]:
        """The nodes whose VM runs (whether or not the others see them yet)."""
        return [node for node in self.nodes if node.running]

    def node_named(self, name: str) -> PrivateRabbit:
        """The node whose Erlang name is C{name} (as rabbitmqctl lists it)."""
        for node in self.nodes:
            if node.node == name:
                return node
        raise AssertionError(f"{name!r} is not a node of this cluster ({', '.join(self.names)})")

    async def start(self, seconds: float = 240.0) -> PrivateRabbitCluster:
        """Start every node, join nodes 2.. to node 1, and wait until all run together; bounded."""
        if self.running:
            raise AssertionError("the private cluster has nodes running already")
        _LIVE.add(self)
        deadline = time.monotonic() + seconds
        started = time.monotonic()
        self.erlang.start()
        await _together(node.start(seconds) for node in self.nodes)
        self.phase_seconds["boot"] = time.monotonic() - started
        first, others = self.nodes[0], self.nodes[1:]
        # One join at a time (each changes the cluster's schema); the stops and starts together.
        await _together(node.stop_app() for node in others)
        for node in others:
            await node.ctl("join_cluster", first.node, seconds=max(30.0, deadline - time.monotonic()))
        await _together(node.start_app(max(30.0, deadline - time.monotonic())) for node in others)
        self.phase_seconds["join"] = time.monotonic() - started - self.phase_seconds["boot"]
        await self.await_running(max(30.0, deadline - time.monotonic()))
        self.start_seconds = time.monotonic() - started
        return self

    async def ctl(self, *args: str, seconds: float = 30.0) -> str:
        """rabbitmqctl ARGS on the first node that runs (L{PrivateRabbit.ctl})."""
        for node in self.nodes:
            if node.running:
                return await node.ctl(*args, seconds=seconds)
        raise AssertionError("no node of the private cluster runs")

    async def cluster_status(self, node: PrivateRabbit | None = None) -> dict[str, Any]:
        """C{rabbitmqctl cluster_status} (as JSON) as C{node} (default: the first running one) sees it."""
        args = ("cluster_status", "--formatter", "json")
        out = await (node.ctl(*args) if node is not None else self.ctl(*args))
        status: dict[str, Any] = json.loads(out)
        return status

    async def running_nodes(self, node: PrivateRabbit | None = None) -> list[str]:
        """The names of the nodes C{node} (default: the first running one) sees running, sorted."""
        return sorted((await self.cluster_status(node)).get("running_nodes", []))

    async def views(self) -> dict[str, list[str]]:
        """
        Each running node's name, and the nodes it sees running, sorted
        (asked of them all at once); the error instead when its
        C{rabbitmqctl cluster_status} fails.
        """

        async def view(node: PrivateRabbit) -> tuple[str, list[str]]:
            try:
                return node.node, await self.running_nodes(node)
            except AssertionError as e:
                return node.node, [str(e)]

        return dict(await _together(view(node) for node in self.running))

    async def await_running(self, seconds: float = 90.0) -> None:
        """
        Until every node whose VM runs sees exactly the nodes whose VM runs
        running (itself included: its app is up; a killed node's gone, a
        restarted one's back); bounded.
        """
        expected = sorted(node.node for node in self.running)
        seen: dict[str, list[str]] = {}

        async def agreed() -> bool:
            seen.update(await self.views())
            return all(view == expected for view in seen.values())

        try:
            await until(agreed, seconds, f"the cluster's nodes to see {expected} running", interval=0.5)
        except AssertionError as e:
            raise AssertionError(f"{e}; they see: {seen}") from None

    def kill_all(self) -> None:
        """SIGKILL every node and our epmd (by their PIDs), reap them, remove the directory."""
        try:
            for node in self.nodes:
                with contextlib.suppress(Exception):
                    node.kill_all()
            self.erlang.kill()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    async def cleanup(self) -> None:
        """
        SIGKILL every node (by its PID: their data is thrown away, a clean
        stop of a cluster only takes longer), our epmd; remove the directory.
        """
        try:
            self.kill_all()
        finally:
            for node in self.nodes:
                _LIVE.discard(node)
            _LIVE.discard(self)


async def private_rabbit_cluster(case: TestCase, seconds: float = 240.0) -> PrivateRabbitCluster:
    """A started L{PrivateRabbitCluster}, cleaned up with C{case} (registered before it starts)."""
    cluster = PrivateRabbitCluster()
    case.addCleanup(lambda: Deferred.fromCoroutine(cluster.cleanup()))
    return await cluster.start(seconds)
