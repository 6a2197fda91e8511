"""
The base test cases that run the real daemon and clean up everything they
started: L{DaemonTestCase} (synchronous, driven by the C{websockets}
library as a client knowing only the published API would),
L{ChaosTestCase} (on the reactor: daemons, confirming publishers, reactor
and raw-socket clients, members that reconnect when told, probes) and
L{ClusterFailoverCase} (a daemon on a quorum queue of a private RabbitMQ
cluster, members, a stream, and the daemon's node killed under them).
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from peatio_ws.testing import make_token
from tests.support.broker import queue_name_from_log
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.figures import FULL
from tests.support.oracle import AUTHENTICATED
from tests.support.probes import metric
from tests.support.publisher import ConfirmingPublisher, Publisher
from tests.support.raw_client import RawClient
from tests.support.reactor_client import WsClient, ws_connect
from tests.support.servers import PrivateRabbit, PrivateRabbitCluster
from tests.support.streams import Continuity, Member, SteadyStream, at_least, finish
from tests.support.waiting import until

__all__ = ["ChaosTestCase", "ClusterFailoverCase", "DaemonTestCase", "new_uid"]


def new_uid(prefix: str = "ID") -> str:
    """A member uid no other test uses (Barong's shape: ID + 10 hex digits)."""
    return prefix + uuid.uuid4().hex[:10].upper()


class DaemonTestCase(SynchronousTestCase):
    """One daemon per test, and clients of the C{websockets} library (not Autobahn) on it."""

    daemon: DaemonProcess

    def start_daemon(self, **env: str) -> DaemonProcess:
        daemon = DaemonProcess(env=env)
        self.addCleanup(daemon.cleanup)
        daemon.start()
        self.daemon = daemon
        return daemon

    def client(self) -> ClientConnection:
        ws = connect(self.daemon.url, open_timeout=10, close_timeout=10)
        self.addCleanup(ws.close)
        return ws

    def recv(self, ws: ClientConnection, timeout: float = 10.0) -> Any:
        message = ws.recv(timeout=timeout)
        try:
            return json.loads(message)
        except ValueError:
            return message

    def login(self, ws: ClientConnection, uid: str, token: str | None = None, **claims: Any) -> None:
        """Log in as C{uid} with C{token}, or a new token with C{claims}."""
        self.assertIn("challenge", self.recv(ws))
        ws.send(json.dumps({"jwt": "Bearer " + (token or make_token(uid=uid, **claims))}))
        self.assertEqual(self.recv(ws), AUTHENTICATED)

    def publish(self, uid: str, event: str, payload: dict[str, Any]) -> None:
        result = run_cli(
            "publish", "--uid", uid, "--event", event, "--json", json.dumps(payload),
            env={"RABBITMQ_EVENTS_EXCHANGE": self.daemon.exchange},
        )
        self.assertEqual(result.returncode, 0, result.stderr)

    def close_code(self, ws: ClientConnection, timeout: float = 15.0) -> int | None:
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        except ConnectionClosed as e:
            return e.rcvd.code if e.rcvd is not None else None
        except TimeoutError:
            return None
        return None


class ChaosTestCase(TestCase):
    """Starts real daemons, publishers and clients, and cleans every one up."""

    timeout = 900 if FULL else 240
    #: Whether L{start_daemon} waits for /health to say every component is up (else: for it to answer).
    wait_healthy = True

    def start_daemon(self, **env: str) -> DaemonProcess:
        """A daemon with C{env}, started; stopped, and its exchange removed, at cleanup."""
        daemon = DaemonProcess(env=env)

        async def stop() -> None:
            # SIGTERM with the reactor running, so that clients still open can
            # answer the daemon's 1001 instead of making it wait them out.
            process = daemon.process
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(AssertionError):
                    await until(lambda: process.poll() is not None, 25, "the daemon to exit")
            daemon.cleanup()
            # The daemon declared its exchange (as Peatio does, never auto-deleted): remove it.
            with contextlib.suppress(Exception):
                publisher = await Publisher.connect()
                try:
                    await publisher.delete_exchange(daemon.exchange)
                finally:
                    await publisher.close()

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        daemon.start(wait_healthy=self.wait_healthy)
        return daemon

    async def publisher(self, daemon: DaemonProcess) -> ConfirmingPublisher:
        publisher = ConfirmingPublisher(daemon.exchange)
        self.addCleanup(lambda: Deferred.fromCoroutine(publisher.stop()))
        await publisher.start()
        return publisher

    async def client(self, daemon: DaemonProcess, uid: str | None = None, **kwargs: Any) -> WsClient:
        """A connected client; logged in as C{uid} when given."""
        client = await ws_connect(daemon.port, **kwargs)
        self.addCleanup(client.abort)
        if uid is not None:
            reply = await client.login(make_token(uid=uid))
            self.assertEqual(reply, AUTHENTICATED)
        return client

    async def member(self, daemon: DaemonProcess, uid: str | None = None, **kwargs: Any) -> Member:
        """
        A member's front end, connected and logged in, that reconnects when
        told (1012) as SPEC §8 asks (L{Member}); stopped before the daemon.
        """
        member = Member(daemon.port, uid if uid is not None else new_uid(), **kwargs)
        self.addCleanup(lambda: Deferred.fromCoroutine(member.stop()))
        await member.connect()
        return member

    def assert_no_silent_gap(self, figures: Continuity, members: list[Member], told: int | None = None) -> None:
        """
        SPEC §8's promise: every accepted event was delivered, or its member
        told (1012) before its reconnect (L{Continuity}); no member had
        another problem (a close other than 1012, a failed reconnect); and,
        when given, exactly C{told} connections were told.
        """
        by_uid = {m.uid: m for m in members}
        lines = []
        for seq in figures.silent[:10]:
            # When it was published, against the member's connections (opened/closed, monotonic seconds).
            member = by_uid[next(uid for uid, mc in figures.per_member.items() if seq in mc.silent)]
            sessions = [(s.opened, s.closed, s.code) for s in member.sessions]
            lines.append(f"  {seq} of {member.uid}, published at {figures.published_at(seq):.3f}; sessions {sessions}")
        self.assertEqual(figures.silent, [], "silent gaps (lost, and the member never told):\n" + "\n".join(lines))
        self.assertEqual([p for m in members for p in m.problems], [])
        if told is not None:
            self.assertEqual(figures.told, told, "connections told (1012)")

    def raw(self, daemon: DaemonProcess, **kwargs: Any) -> RawClient:
        client = RawClient(daemon.port, **kwargs)
        self.addCleanup(client.close)
        return client

    def gauge(self, daemon: DaemonProcess, name: str, **labels: str) -> float:
        return metric(daemon.metrics(), name, **labels)

    async def until_metric(
        self,
        daemon: DaemonProcess,
        name: str,
        condition: Callable[[float], bool],
        seconds: float,
        what: str,
        **labels: str,
    ) -> float:
        await until(lambda: condition(self.gauge(daemon, name, **labels)), seconds, what, interval=0.1)
        return self.gauge(daemon, name, **labels)

    def assert_alive(self, daemon: DaemonProcess) -> None:
        """The daemon process still runs and says every component is up."""
        assert daemon.process is not None
        self.assertIsNone(daemon.process.poll(), f"the daemon died:\n{daemon.log_text()[-5000:]}")
        status, body = daemon.health()
        self.assertEqual(status, 200, body)
        self.assertNotIn("Traceback", daemon.log_text())


class ClusterFailoverCase(ChaosTestCase):
    """
    SPEC §8 on a real cluster: a daemon consuming a quorum queue
    (RABBITMQ_QUEUE_TYPE=quorum) with RABBITMQ_HOST listing every node of
    a L{PrivateRabbitCluster}, first node first, several members (each a
    L{Member}: it reconnects and resyncs if told with 1012), and a
    confirming publisher streaming events for all of them through another
    node; then the node the daemon is on is SIGKILLed, and the daemon fails
    over to the next one (L{fail_over}). The queue survives on the others,
    so nothing is lost and no one is told; duplicates (what was in flight)
    are allowed and counted.
    """

    cluster: PrivateRabbitCluster
    daemon: DaemonProcess
    queue: str
    members: list[Member]
    #: The confirming publisher of the stream (Peatio's producer).
    producer: ConfirmingPublisher
    stream: SteadyStream

    async def start_stream(self, cluster: PrivateRabbitCluster, members: int, publish_via: int, **env: str) -> None:
        """The daemon on C{cluster}, C{members} members logged in, and events for them through node C{publish_via}."""
        self.cluster = cluster
        self.daemon = self.start_daemon(**cluster.daemon_env, RABBITMQ_QUEUE_TYPE="quorum", **env)
        self.queue = queue_name_from_log(self.daemon.wait_log("consuming from"))
        self.members = [await self.member(self.daemon, new_uid()) for _ in range(members)]
        await self.until_metric(
            self.daemon, "peatio_ws_rabbitmq_bindings", lambda v: v == members, 15, "the members' bindings"
        )
        publisher = self.producer = ConfirmingPublisher(self.daemon.exchange, cluster[publish_via].settings)
        self.addCleanup(lambda: Deferred.fromCoroutine(publisher.stop()))
        await publisher.start(30)
        # Every member in turn, 50 events a second each.
        self.stream = SteadyStream(publisher, [m.uid for m in self.members], per_tick=members, interval=0.02)
        self.addCleanup(self.stream.stop)
        self.stream.start()

    async def queue_info(self) -> dict[str, Any]:
        """C{rabbitmqctl list_queues} of the daemon's queue: type, durable, leader, members, online."""
        out = await self.cluster.ctl(
            "list_queues", "name", "type", "durable", "leader", "members", "online", "--formatter", "json"
        )
        for info in json.loads(out):
            if info["name"] == self.queue:
                return dict(info)
        raise AssertionError(f"queue {self.queue!r} not listed by the cluster:\n{out}")

    async def daemon_node(self) -> PrivateRabbit:
        """The node the daemon's connection (named after its queue) is on, as the cluster lists it."""
        out = await self.cluster.ctl("list_connections", "pid", "client_properties")
        # A connection's pid names its node: <name@host.N.N.N>.
        pids = [line.split("\t", 1)[0] for line in out.splitlines() if self.queue in line]
        nodes = {pid.strip("<>").rsplit(".", 3)[0] for pid in pids}
        if len(nodes) != 1:
            raise AssertionError(f"the daemon's connection is on {sorted(nodes)}:\n{out}")
        return self.cluster.node_named(nodes.pop())

    async def on_node(self, node: PrivateRabbit) -> bool:
        try:
            return await self.daemon_node() is node
        except AssertionError:
            return False

    async def more_events(self, count: int, what: str) -> None:
        """Until every member has received C{count} more events."""
        targets = [(m, len(m) + count) for m in self.members]
        try:
            for member, target in targets:
                await member.wait(partial(at_least, member, target), 60, f"{count} events {what}")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{await self.state()}") from None

    async def state(self) -> str:
        """What the publisher, the cluster and the daemon say now (for a failure's message)."""
        port = getattr(self.producer.settings, "rabbitmq_port", None)
        lines = [
            f"publisher: connected {self.producer.connected}, port {port}, "
            f"outcomes {dict(self.producer.counts())}, unsettled {self.producer.unsettled}",
            f"nodes running: {[n.node for n in self.cluster.running]}",
        ]
        for what in (self.queue_info(), self.cluster.ctl("list_bindings", "source_name", "destination_name")):
            try:
                lines.append(str(await what))
            except Exception as e:
                lines.append(f"({e})")
        lines.append(self.daemon.tail(40))
        for node in self.cluster.running:
            lines.append(f"=== {node.node} (AMQP port {node.port})\n{node.log_text(40)}")
        return "\n".join(lines)

    async def fail_over(self, expected: PrivateRabbit) -> tuple[PrivateRabbit, float]:
        """
        SIGKILL the node the daemon is on; until it consumes again, from
        C{expected} (the next node of RABBITMQ_HOST). The killed node, and
        the seconds until the daemon was back on another node.
        """
        killed = await self.daemon_node()
        connects = self.gauge(self.daemon, "peatio_ws_rabbitmq_connects_total")
        killed.kill()
        started = time.monotonic()
        await self.until_metric(
            self.daemon, "peatio_ws_rabbitmq_connects_total", lambda v: v > connects, 90, "the daemon's failover"
        )
        back = time.monotonic() - started
        await until(lambda: self.daemon.health()[0] == 200, 60, "the daemon healthy after the failover")
        await until(lambda: self.on_node(expected), 30, f"the daemon's connection on {expected.node}", interval=0.5)
        return killed, back

    async def finish(self) -> Continuity:
        return await finish(self.members, self.stream, self.producer, seconds=60)

    def per_member(self, figures: Continuity) -> dict[str, str]:
        """One line of figures per member (for L{record})."""
        return {f"member {uid}": mc.line() for uid, mc in figures.per_member.items()}
