# -*- test-case-name: tests.unit.test_listen -*-
"""
The WebSocket listening port: plain TCP or TLS, with or without SO_REUSEPORT.

One service, L{PortService}, two ways to bind, one behaviour: it binds in
C{privilegedStartService} and raises L{CannotListenError} there at once when
the port cannot be bound, and it keeps the listening port (to learn the real
number after asking for port 0).

 - WEBSOCKET_REUSE_PORT off: C{reactor.listenTCP}.
 - WEBSOCKET_REUSE_PORT on: the socket is made here with C{SO_REUSEADDR}
   and C{SO_REUSEPORT}, bound, listening, and handed to the reactor with
   C{adoptStreamPort}; several processes (each with its own broker queue)
   then share one port and the kernel spreads new connections across them.
 - Started by systemd socket activation (C{LISTEN_FDS}/C{LISTEN_PID} name
   this process; the socket named C{websocket}, else the first): that
   listening socket, adopted, whatever the settings say. It outlives the
   process, so clients reconnecting while it restarts wait in its accept
   queue instead of being refused (and backing off).

TLS (both WEBSOCKET_SSL_KEY and WEBSOCKET_SSL_CERT set) is layered the same
way in both cases, by wrapping the WebSocket factory in a
L{TLSMemoryBIOFactory}; the certificate file may hold the whole chain (leaf
first, then intermediates, as C{fullchain.pem} does), which Twisted's C{ssl:}
endpoint string would silently cut down to the leaf.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.application.service import IService, Service
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorSocket, IReactorTCP
from twisted.internet.ssl import CertificateOptions
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.systemd import ListenFDs

from peatio_ws import _port
from peatio_ws.config import ConfigError, Settings
from peatio_ws.logs import logger

__all__ = [
    "BACKLOG",
    "PortService",
    "bind_reuse_port",
    "bound_port",
    "inherited_listener",
    "listener_service",
    "tls_options",
]

log = logger("peatio_ws.listen")

#: Pending connections the kernel may queue. Linux takes the smaller of this
#: and net.core.somaxconn (4,096 by default on current kernels), so the
#: operator's sysctl decides: a process meant to take back N clients at once
#: after a restart wants somaxconn >= N (docs/deploy.md). Twisted's default of
#: 50 overflows when thousands reconnect at once, and a dropped SYN comes back
#: only after the client's 1, 3, 7, 15 s retransmissions.
BACKLOG = 65535

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(key, f"cannot read {path!r}: {e.strerror or e}") from None


def tls_options(settings: Settings, announce: bool = False) -> CertificateOptions:
    """
    TLS server options from the PEM files of WEBSOCKET_SSL_KEY and
    WEBSOCKET_SSL_CERT (certificate first, then any chain certificates).

    The OpenSSL context is built here, not on the first connection, so a key
    that does not match the certificate stops start-up. With C{announce},
    log the certificate's subject and expiry (and warn when it has expired).

    @raise ConfigError: a file is unreadable, holds no usable PEM, the key is
        encrypted, or the key does not match the certificate.
    """
    key_path = settings.websocket_ssl_key or ""
    cert_path = settings.websocket_ssl_cert or ""
    key_pem = _read("WEBSOCKET_SSL_KEY", key_path)
    cert_pem = _read("WEBSOCKET_SSL_CERT", cert_path)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ConfigError(
            "WEBSOCKET_SSL_KEY", f"{key_path!r} is encrypted; a key without a passphrase is needed"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ConfigError("WEBSOCKET_SSL_KEY", f"{key_path!r} is not a PEM private key ({_first_line(e)})") from None
    blocks = _PEM_CERTIFICATE.findall(cert_pem)
    if not blocks:
        raise ConfigError("WEBSOCKET_SSL_CERT", f"{cert_path!r} holds no PEM certificate")
    try:
        certificates = [x509.load_pem_x509_certificate(block) for block in blocks]
    except ValueError as e:
        raise ConfigError("WEBSOCKET_SSL_CERT", f"{cert_path!r} holds a bad certificate ({_first_line(e)})") from None
    leaf, chain = certificates[0], certificates[1:]
    # pyOpenSSL takes cryptography objects (its own X509/PKey are deprecated);
    # Twisted's annotations still name the old types.
    options = CertificateOptions(
        privateKey=cast(Any, key),
        certificate=cast(Any, leaf),
        extraCertChain=cast(Any, chain),
    )
    try:
        options.getContext()
    except SSL.Error as e:
        raise ConfigError(
            "WEBSOCKET_SSL_KEY", f"{key_path!r} does not match the certificate in {cert_path!r} ({_first_line(e)})"
        ) from None
    except MemoryError:
        # pyOpenSSL's callbacks need writable+executable memory, which
        # systemd's MemoryDenyWriteExecute=yes forbids.
        raise ConfigError(
            "WEBSOCKET_SSL_CERT",
            "TLS cannot be set up: no write+execute memory for OpenSSL callbacks "
            "(MemoryDenyWriteExecute=yes?); terminate TLS at the load balancer or drop that setting",
        ) from None
    if announce:
        _announce(leaf, len(chain))
    return options


def _announce(leaf: x509.Certificate, chain: int) -> None:
    expires = leaf.not_valid_after_utc
    log.info(
        "TLS certificate {subject} (+{chain} chain certificates) valid until {expires}",
        subject=leaf.subject.rfc4514_string(),
        chain=chain,
        expires=expires.isoformat(),
    )
    if expires <= datetime.now(UTC):
        log.warn("TLS certificate {subject} has expired", subject=leaf.subject.rfc4514_string())


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def bind_reuse_port(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """
    A listening, non-blocking socket on C{host}:C{port} with SO_REUSEADDR and
    SO_REUSEPORT set, so other processes doing the same share the port.

    @raise CannotListenError: the address cannot be bound (in use by a socket
        without SO_REUSEPORT or of another user, bad address, no permission).
    """
    reuse_port = getattr(socket, "SO_REUSEPORT", None)
    if reuse_port is None:
        raise CannotListenError(host, port, OSError("SO_REUSEPORT is not supported on this platform"))
    # Same choice of family as Twisted's tcp: endpoint.
    family = socket.AF_INET6 if isIPv6Address(host) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, reuse_port, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise CannotListenError(host, port, e) from None
    return sock


class PortService(Service):
    """
    Listens on C{host}:C{port} while running; with C{reuse_port}, on a port
    shared with other processes (SO_REUSEPORT).

    Binds in C{privilegedStartService} and raises L{CannotListenError}
    there, synchronously: a daemon that cannot listen must not start.
    """

    def __init__(
        self,
        host: str,
        port: int,
        factory: IProtocolFactory,
        reactor: Any,
        backlog: int = BACKLOG,
        reuse_port: bool = False,
        room: Callable[[], int] | None = None,
        inherited: int | None = None,
        carried: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.factory = factory
        self.reactor = reactor
        self.backlog = backlog
        self.reuse_port = reuse_port
        #: How many more connections may be accepted now (L{_port.accept_at_most}); None: no bound.
        self.room = room
        #: A listening socket's descriptor to adopt instead of binding (socket activation).
        self.inherited = inherited
        #: C{inherited} is this process's own, left by the program a restart in
        #: place replaced (L{peatio_ws.reexec}): closed once adopted, not kept for systemd.
        self.carried = carried
        self.listening_port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.listening_port is None:
            self.listening_port = self._listen()
            if self.room is not None:
                _port.accept_at_most(self.listening_port, self.room, self.reactor)

    def startService(self) -> None:
        self.privilegedStartService()
        super().startService()

    def pause_accepting(self) -> bool:
        """
        Leave new connections in the kernel's accept queue, the port still
        bound, until L{resume_accepting}; False when this port cannot.
        """
        return self.listening_port is not None and _port.pause_accepting(self.listening_port)

    def resume_accepting(self) -> None:
        """Accept again (nothing if the port was closed meanwhile)."""
        if self.listening_port is not None:
            _port.resume_accepting(self.listening_port)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.listening_port = self.listening_port, None
        if port is None:
            return succeed(None)
        _port.forget(port)
        stopped = port.stopListening()
        return stopped if isinstance(stopped, Deferred) else succeed(None)

    def _listen(self) -> IListeningPort:
        if self.inherited is not None:
            return self._adopt(self.inherited)
        if not self.reuse_port:
            if not IReactorTCP.providedBy(self.reactor):
                raise CannotListenError(self.host, self.port, OSError("this reactor cannot listen on TCP"))
            listening: IListeningPort = self.reactor.listenTCP(
                self.port, cast(Any, self.factory), backlog=self.backlog, interface=self.host
            )
            return listening
        self._can_adopt()
        sock = bind_reuse_port(self.host, self.port, self.backlog)
        try:
            return self._adopted(sock)
        finally:
            sock.close()  # the reactor has its own duplicate

    def _adopt(self, fd: int) -> IListeningPort:
        """The listening socket C{fd}, inherited (systemd's): adopted as it is, left open for whoever passed it."""
        self._can_adopt()
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            raise CannotListenError(self.host, self.port, e) from None
        try:
            if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                raise CannotListenError(self.host, self.port, OSError(f"descriptor {fd} is not a listening TCP socket"))
            sock.setblocking(False)
            port = self._adopted(sock)
        except OSError as e:
            raise CannotListenError(self.host, self.port, e) from None
        finally:
            if self.carried:
                sock.close()  # the reactor has its own duplicate
            else:
                sock.detach()  # the inherited descriptor stays as it was passed
        by = "the program this one replaced" if self.carried else "the service manager"
        log.info("listening on the socket passed by {by} (descriptor {fd})", by=by, fd=fd)
        return port

    def _can_adopt(self) -> None:
        if not IReactorSocket.providedBy(self.reactor):
            raise CannotListenError(self.host, self.port, OSError("this reactor cannot adopt sockets"))

    def _adopted(self, sock: socket.socket) -> IListeningPort:
        """C{sock}, listening, handed to the reactor (which duplicates its descriptor)."""
        try:
            port: IListeningPort = self.reactor.adoptStreamPort(sock.fileno(), sock.family, cast(Any, self.factory))
        except OSError as e:
            raise CannotListenError(self.host, self.port, e) from None
        return port


def _started_with() -> dict[str, str]:
    """
    systemd's C{LISTEN_*} variables as this process was started with them
    (C{/proc/self/environ}): importing C{twisted.internet.endpoints}, which
    twistd does, takes C{LISTEN_PID} and C{LISTEN_FDS} out of C{os.environ}.
    """
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")}
    found = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key.startswith(b"LISTEN_"):
            found[key.decode("ascii", "replace")] = value.decode("ascii", "replace")
    return found


def inherited_listener(environ: Mapping[str, str] | None = None) -> int | None:
    """
    The WebSocket listening socket systemd passed this process (socket
    activation: C{LISTEN_PID} is ours), the one named C{websocket} or else
    the first; None when there is none.
    """
    fds = ListenFDs.fromEnvironment(environ=_started_with() if environ is None else environ)
    named = fds.inheritedNamedDescriptors()
    if "websocket" in named:
        return named["websocket"]
    inherited = fds.inheritedDescriptors()
    return inherited[0] if inherited else None


def bound_port(service: IService) -> IListeningPort | None:
    """The listening port of a L{PortService} once it has bound, or None (not bound, or another service)."""
    return service.listening_port if isinstance(service, PortService) else None


def listener_service(
    settings: Settings,
    factory: IProtocolFactory,
    reactor: Any,
    room: Callable[[], int] | None = None,
    inherited: int | None = None,
    carried: bool = False,
) -> IService:
    """
    The WebSocket port as a service: TLS when configured, shared with
    SO_REUSEPORT when WEBSOCKET_REUSE_PORT is on; accepting at most
    C{room()} connections per poll when given (the handshake cap's room);
    on the listening socket C{inherited} when given (L{inherited_listener};
    C{carried}: left by the program a restart in place replaced).

    @raise ConfigError: the TLS key or certificate is unusable.
    """
    served: IProtocolFactory = factory
    if settings.tls:
        served = TLSMemoryBIOFactory(tls_options(settings, announce=True), False, factory, clock=reactor)
    return PortService(
        settings.websocket_host,
        settings.websocket_port,
        served,
        reactor,
        reuse_port=settings.websocket_reuse_port,
        room=room,
        inherited=inherited,
        carried=carried,
    )
