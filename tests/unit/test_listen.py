"""
Tests for L{peatio_ws.listen}: SO_REUSEPORT sharing, bind failures that stop
start-up, and wss:// with a certificate made in the test.

The port tests bind real sockets on 127.0.0.1 (port 0, then that port again)
and run on the real reactor with bounded waits; the TLS tests connect a real
TLS client (the kit's L{RawClient}: Python's C{ssl} on a blocking socket
with timeouts, in a thread) to a real
L{StreamFactory}.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec
from twisted.application.service import IService
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from peatio_ws import listen
from peatio_ws.config import ConfigError
from peatio_ws.listen import (
    BACKLOG,
    PortService,
    bind_reuse_port,
    bound_port,
    inherited_listener,
    listener_service,
    tls_options,
)
from peatio_ws.testing import settings_for_tests
from peatio_ws.testing.factory import stream_factory
from peatio_ws.testing.pki import key_pem, make_pki
from tests.support.raw_client import RawClient

reactor: Any = _reactor

#: Upper bound for any wait on the network in these tests.
WAIT = 10.0


# -- certificates -----------------------------------------------------------------


def port_number(service: IService) -> int:
    """The port number a started listener service is bound to."""
    port = bound_port(service)
    assert port is not None
    address: Any = port.getHost()
    return int(address.port)


def free_port() -> int:
    """A port nobody listens on right now (for tests that expect to bind it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- unit tests -------------------------------------------------------------------


class DescriptionTests(SynchronousTestCase):
    def test_tcp_listener(self) -> None:
        """The listener is on the configured address with a large backlog (reuse-port off by default)."""
        settings = settings_for_tests(websocket_host="::1", websocket_port=8080)
        service = listener_service(settings, Factory.forProtocol(Protocol), reactor)
        assert isinstance(service, PortService)
        self.assertEqual((service.host, service.port, service.backlog, service.reuse_port), ("::1", 8080, 65535, False))

    def test_service_kinds(self) -> None:
        """Reuse-port on or off: one L{PortService}, told which. Neither binds yet."""
        factory = Factory.forProtocol(Protocol)
        on = listener_service(settings_for_tests(websocket_reuse_port=True), factory, reactor)
        self.assertIsInstance(on, PortService)
        self.assertTrue(on.reuse_port)  # type: ignore[attr-defined]
        self.assertIsNone(bound_port(on))
        off = listener_service(settings_for_tests(), factory, reactor)
        self.assertIsInstance(off, PortService)
        self.assertFalse(off.reuse_port)  # type: ignore[attr-defined]
        self.assertIsNone(bound_port(off))

    def test_tls_wraps_factory(self) -> None:
        """With a key and certificate the factory is wrapped in TLS, in both modes."""
        pki = make_pki(self.mktemp())
        factory = Factory.forProtocol(Protocol)
        for reuse in (True, False):
            settings = settings_for_tests(
                websocket_reuse_port=reuse, websocket_ssl_key=str(pki.key), websocket_ssl_cert=str(pki.cert)
            )
            service: Any = listener_service(settings, factory, reactor)
            served = service.factory
            self.assertIsInstance(served, TLSMemoryBIOFactory)
            self.assertIs(served.wrappedFactory, factory)


class InheritedListenerTests(SynchronousTestCase):
    """Which descriptor systemd's socket activation names as the WebSocket socket."""

    def environ(self, fds: int, names: str | None = None, pid: int | None = None) -> dict[str, str]:
        env = {"LISTEN_PID": str(os.getpid() if pid is None else pid), "LISTEN_FDS": str(fds)}
        if names is not None:
            env["LISTEN_FDNAMES"] = names
        return env

    def test_none(self) -> None:
        """Not socket-activated, or the variables are another process's: none."""
        self.assertIsNone(inherited_listener({}))
        self.assertIsNone(inherited_listener(self.environ(1, pid=os.getpid() + 1)))
        self.assertIsNone(inherited_listener(self.environ(0)))

    def test_read_as_started(self) -> None:
        """
        What the process was started with counts, not os.environ now:
        importing twisted.internet.endpoints (twistd does) deletes
        LISTEN_PID and LISTEN_FDS from os.environ.
        """
        self.patch(os, "environ", {**os.environ, "LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"})
        self.assertEqual(listen._started_with(), {})
        self.assertIsNone(inherited_listener())

    def test_first_or_named(self) -> None:
        """The one named websocket, else the first (descriptors start at 3)."""
        self.assertEqual(inherited_listener(self.environ(1, "peatio-ws.socket")), 3)
        self.assertEqual(inherited_listener(self.environ(2, "metrics:websocket")), 4)
        self.assertEqual(inherited_listener(self.environ(2, "a:b")), 3)
        # systemd (227 and later) always names them; a count without names is not its.
        self.assertIsNone(inherited_listener(self.environ(1)))


class TLSOptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = make_pki(self.mktemp())

    def settings(self, key: Path | str, cert: Path | str) -> Any:
        return settings_for_tests(websocket_ssl_key=str(key), websocket_ssl_cert=str(cert))

    def assertConfigError(self, key: str, settings: Any) -> str:
        error = self.assertRaises(ConfigError, tls_options, settings)
        self.assertEqual(error.key, key)
        self.assertNotIn("\n", str(error))
        return str(error)

    def test_chain_loaded(self) -> None:
        """Every certificate after the first is sent as the chain."""
        options = tls_options(self.settings(self.pki.key, self.pki.cert))
        self.assertEqual(len(options.extraCertChain), 1)

    def test_mismatched_key(self) -> None:
        """A key that is not the certificate's: one line naming WEBSOCKET_SSL_KEY."""
        message = self.assertConfigError("WEBSOCKET_SSL_KEY", self.settings(self.pki.other_key, self.pki.cert))
        self.assertIn("does not match", message)

    def test_not_a_certificate(self) -> None:
        """A certificate file without a certificate names WEBSOCKET_SSL_CERT."""
        self.assertConfigError("WEBSOCKET_SSL_CERT", self.settings(self.pki.key, self.pki.key))

    def test_bad_certificate(self) -> None:
        """A PEM block that does not decode names WEBSOCKET_SSL_CERT."""
        broken = self.pki.directory / "broken.pem"
        broken.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        self.assertConfigError("WEBSOCKET_SSL_CERT", self.settings(self.pki.key, broken))

    def test_not_a_key(self) -> None:
        """A key file without a key names WEBSOCKET_SSL_KEY."""
        self.assertConfigError("WEBSOCKET_SSL_KEY", self.settings(self.pki.cert, self.pki.cert))

    def test_encrypted_key(self) -> None:
        """A key with a passphrase cannot be used unattended: say so."""
        encrypted = self.pki.directory / "encrypted.key"
        encrypted.write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1()), b"secret"))
        message = self.assertConfigError("WEBSOCKET_SSL_KEY", self.settings(encrypted, self.pki.cert))
        self.assertIn("encrypted", message)
        self.assertNotIn("secret", message)

    def test_unreadable(self) -> None:
        """A file that vanished after the configuration was checked names its key."""
        self.assertConfigError("WEBSOCKET_SSL_CERT", self.settings(self.pki.key, self.pki.directory / "gone.pem"))


# -- real sockets -----------------------------------------------------------------


class ReusePortTests(TestCase):
    """Real listening sockets on 127.0.0.1."""

    def start(self, service: IService) -> int:
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        return port_number(service)

    def settings(self, port: int, reuse: bool) -> Any:
        return settings_for_tests(websocket_host="127.0.0.1", websocket_port=port, websocket_reuse_port=reuse)

    async def test_two_listeners_share_a_port(self) -> None:
        """With reuse on, a second listener binds the port the first one holds, and both accept."""
        accepted: list[str] = []

        class Tag(Protocol):
            def connectionMade(self) -> None:
                factory: Any = self.factory
                accepted.append(factory.tag)
                assert self.transport is not None
                self.transport.loseConnection()

        factories = []
        for tag in ("a", "b"):
            factory = Factory.forProtocol(Tag)
            factory.tag = tag  # type: ignore[attr-defined]
            factories.append(factory)
        port = self.start(listener_service(self.settings(0, True), factories[0], reactor))
        second = self.start(listener_service(self.settings(port, True), factories[1], reactor))
        self.assertEqual(second, port)
        # The kernel spreads connections over both sockets by a hash of the
        # client address and port: with 32 connections, the chance that one
        # listener gets none is 2**-31.
        for _ in range(32):
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT):
                pass
        await _until(lambda: len(accepted) == 32)
        self.assertEqual(set(accepted), {"a", "b"})

    async def test_inherited_socket(self) -> None:
        """
        A listening socket passed in (socket activation) is adopted whatever
        the settings say, and left open for its owner: a second process
        adopts it after the first has stopped, and the connections made
        meanwhile waited in its queue.
        """
        accepted: list[int] = []

        class Count(Protocol):
            def connectionMade(self) -> None:
                accepted.append(1)
                assert self.transport is not None
                self.transport.loseConnection()

        held = socket.socket()
        self.addCleanup(held.close)
        held.bind(("127.0.0.1", 0))
        held.listen(16)
        number = held.getsockname()[1]
        first = listener_service(self.settings(1, False), Factory.forProtocol(Count), reactor, inherited=held.fileno())
        self.assertEqual(self.start(first), number)
        with socket.create_connection(("127.0.0.1", number), timeout=WAIT):
            pass
        await _until(lambda: len(accepted) == 1)
        await first.stopService()
        # Between the two: the socket still listens, so this one waits instead of being refused.
        waiting = socket.create_connection(("127.0.0.1", number), timeout=WAIT)
        self.addCleanup(waiting.close)
        second = listener_service(self.settings(1, True), Factory.forProtocol(Count), reactor, inherited=held.fileno())
        self.assertEqual(self.start(second), number)
        await _until(lambda: len(accepted) == 2)

    def test_inherited_must_listen(self) -> None:
        """A passed descriptor that is not a listening TCP socket is a CannotListenError, at start."""
        idle = socket.socket()
        self.addCleanup(idle.close)
        factory = Factory.forProtocol(Protocol)
        service = listener_service(self.settings(0, False), factory, reactor, inherited=idle.fileno())
        self.assertRaises(CannotListenError, service.privilegedStartService)
        # Still its owner's.
        self.assertGreaterEqual(idle.fileno(), 0)
        idle.getsockname()

    def test_conflict_without_reuse_fails_loudly(self) -> None:
        """Without reuse a taken port raises CannotListenError at once, from privilegedStartService."""
        port = self.start(listener_service(self.settings(0, False), Factory.forProtocol(Protocol), reactor))
        second = listener_service(self.settings(port, False), Factory.forProtocol(Protocol), reactor)
        error = self.assertRaises(CannotListenError, second.privilegedStartService)
        self.assertEqual(error.port, port)
        self.assertIn("in use", str(error))

    def test_reuse_cannot_join_a_plain_listener(self) -> None:
        """With reuse on, a port held by a socket without SO_REUSEPORT still fails loudly."""
        port = self.start(listener_service(self.settings(0, False), Factory.forProtocol(Protocol), reactor))
        shared = listener_service(self.settings(port, True), Factory.forProtocol(Protocol), reactor)
        self.assertRaises(CannotListenError, shared.privilegedStartService)
        self.assertRaises(CannotListenError, shared.startService)
        self.assertIsNone(bound_port(shared))

    def test_plain_cannot_join_reuse_listeners(self) -> None:
        """And a plain listener cannot join a reuse-port group."""
        port = self.start(listener_service(self.settings(0, True), Factory.forProtocol(Protocol), reactor))
        plain = listener_service(self.settings(port, False), Factory.forProtocol(Protocol), reactor)
        self.assertRaises(CannotListenError, plain.privilegedStartService)

    def test_bad_address(self) -> None:
        """An address that is not ours is a CannotListenError, not a crash later."""
        self.assertRaises(CannotListenError, bind_reuse_port, "192.0.2.1", free_port())

    def test_socket_options(self) -> None:
        """The shared socket has SO_REUSEADDR and SO_REUSEPORT set and is non-blocking."""
        sock = bind_reuse_port("127.0.0.1", 0)
        self.addCleanup(sock.close)
        self.assertTrue(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR))
        self.assertTrue(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
        self.assertFalse(sock.getblocking())

    def test_accept_queue(self) -> None:
        """
        The shared socket's accept queue is as long as the kernel allows:
        Linux takes min(backlog, net.core.somaxconn), so raising the sysctl
        is all an operator does for a bigger reconnect wave. The kernel's own
        limit is read back from TCP_INFO (a listener's tcpi_sacked).
        """
        self.assertGreaterEqual(BACKLOG, 65535)
        tcp_info = getattr(socket, "TCP_INFO", None)
        try:
            with open("/proc/sys/net/core/somaxconn") as f:
                somaxconn = int(f.read())
        except OSError:
            somaxconn = None
        if tcp_info is None or somaxconn is None:
            raise SkipTest("needs Linux: TCP_INFO and /proc/sys/net/core/somaxconn")
        sock = bind_reuse_port("127.0.0.1", 0)
        self.addCleanup(sock.close)
        info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, 104)
        # struct tcp_info: eight one-byte fields, then rto, ato, snd_mss, rcv_mss, unacked, sacked.
        (limit,) = struct.unpack_from("=I", info, 28)
        self.assertEqual(limit, min(BACKLOG, somaxconn))

    async def test_stop_releases_port(self) -> None:
        """After stopService the port is free for a plain listener again."""
        service = listener_service(self.settings(0, True), Factory.forProtocol(Protocol), reactor)
        service.privilegedStartService()
        service.startService()
        number = port_number(service)
        await service.stopService()
        self.assertIsNone(bound_port(service))
        self.start(listener_service(self.settings(number, False), Factory.forProtocol(Protocol), reactor))


async def _until(condition: Any, timeout: float = WAIT) -> None:
    """Let the reactor run until C{condition()} holds; fail after C{timeout}."""
    from twisted.internet.task import deferLater

    waited = 0.0
    while not condition():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await deferLater(reactor, 0.01)
        waited += 0.01


def _wss_challenge(url: str, cafile: str) -> dict[str, Any]:
    """
    Runs in a thread: connect over TLS (verifying the chain and the name),
    upgrade, read the first message, close. The kit's blocking client, a
    timeout on every step: a stalled server fails the test, never hangs it
    (a websockets client's reader thread once blocked forever on a TLS read
    after a failed upgrade, and with it the test run).
    """
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=cafile)
    raw = RawClient(parts.port or 443, timeout=WAIT, host=parts.hostname or "", tls=context)
    try:
        status = raw.handshake()
        if status != 101:
            raise AssertionError(f"the upgrade was refused: HTTP {status}")
        decoded: dict[str, Any] = raw.read_json()
        raw.send_close()
        return decoded
    finally:
        raw.close()


class TLSEndToEndTests(TestCase):
    """wss:// against a real StreamFactory on 127.0.0.1, in both listening modes."""

    timeout = 4 * WAIT

    def setUp(self) -> None:
        self.pki = make_pki(self.mktemp())

    async def serve_and_connect(self, reuse: bool, host: str) -> dict[str, Any]:
        settings = settings_for_tests(
            # On a loaded machine a TLS handshake and upgrade in a thread can take
            # over WEBSOCKET_HANDSHAKE_TIMEOUT's 5 s (seen: 1 run in ~550 with the two
            # cores saturated), and the server drops the socket: not what this tests.
            websocket_handshake_timeout=4 * WAIT,
            websocket_host="127.0.0.1",
            websocket_port=0,
            websocket_reuse_port=reuse,
            websocket_ssl_key=str(self.pki.key),
            websocket_ssl_cert=str(self.pki.cert),
        )
        factory = stream_factory(settings, reactor, handshake_timeouts=True)
        service = listener_service(settings, factory, reactor)
        service.privilegedStartService()
        service.startService()
        url = f"wss://{host}:{port_number(service)}/"
        try:
            received: dict[str, Any] = await deferToThread(_wss_challenge, url, str(self.pki.root))
            closing: Deferred[Any] = factory.close_all()
            closing.addTimeout(WAIT, reactor)
            await closing
            # is_closed fires when the close handshake is done; the TCP (and
            # TLS) close that removes the connection follows.
            await _until(lambda: not factory.connections)
        finally:
            await service.stopService()
        return received

    async def test_wss_challenge(self) -> None:
        """A TLS client that trusts only the root CA gets the challenge (so the chain is served)."""
        message = await self.serve_and_connect(reuse=False, host="localhost")
        self.assertEqual(list(message), ["challenge"])
        self.assertEqual(len(message["challenge"]), 54)

    async def test_wss_challenge_reuse_port(self) -> None:
        """The same over a SO_REUSEPORT listener, by IP address."""
        message = await self.serve_and_connect(reuse=True, host="127.0.0.1")
        self.assertEqual(list(message), ["challenge"])

    async def test_plain_client_refused(self) -> None:
        """A client that does not trust the certificate fails the handshake: no cleartext fallback."""
        other = make_pki(self.mktemp())
        settings = settings_for_tests(
            websocket_host="127.0.0.1",
            websocket_port=0,
            websocket_ssl_key=str(self.pki.key),
            websocket_ssl_cert=str(self.pki.cert),
        )
        factory = stream_factory(settings, reactor, handshake_timeouts=True)
        service = listener_service(settings, factory, reactor)
        service.startService()
        url = f"wss://localhost:{port_number(service)}/"
        try:
            with self.assertRaises(ssl.SSLCertVerificationError):
                await deferToThread(_wss_challenge, url, str(other.root))
            await _until(lambda: not factory.connections)
        finally:
            await service.stopService()
