"""
Unit tests for L{peatio_ws.redis._txredisapi} and L{peatio_ws.redis.endpoint}:
the txredisapi factory and protocols report to the service as expected. Real
txredisapi protocols over a L{StringTransport}; no sockets, no real time.

What these rely on in txredisapi itself is checked by
L{tests.unit.test_redis_txredisapi_door}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.config import RedisAddress
from peatio_ws.redis import REVOCATIONS_CHANNEL, _txredisapi
from peatio_ws.redis.endpoint import client_endpoint


class TxRedisWiringTests(SynchronousTestCase):
    """The txredisapi factory and protocol report to the service as expected."""

    def factory(self, **hooks: Any) -> Any:
        calls: list[tuple[str, Any]] = []
        factory = _txredisapi.LinkFactory(
            RedisAddress("localhost", 6379, 2, None, False),
            subscriber=hooks.get("subscriber", True),
            on_ready=lambda link: calls.append(("ready", link)),
            on_lost=lambda link: calls.append(("lost", link)),
            on_error=lambda why: calls.append(("error", why)),
            on_message=lambda channel, message: calls.append(("message", (channel, message))),
        )
        factory.calls = calls
        return factory

    def test_subscriber_protocol(self) -> None:
        """SUBSCRIBE goes out, its reply fires, messages arrive as raw bytes."""
        factory = self.factory()
        self.assertIsNone(factory.dbid)
        self.assertIsNone(factory.charset)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        # Attach without connectionMade: it would schedule on the global reactor.
        proto.transport = transport
        proto.connected = 1
        link = _txredisapi.TxLink(proto)
        d = link.subscribe(REVOCATIONS_CHANNEL)
        self.assertEqual(transport.value(), b"*2\r\n$9\r\nSUBSCRIBE\r\n$21\r\npeatio-ws:revocations\r\n")
        feed(proto, [b"subscribe", REVOCATIONS_CHANNEL.encode(), 1])
        self.assertEqual(self.successResultOf(d), [b"subscribe", REVOCATIONS_CHANNEL.encode(), 1])
        for payload in (b'{"jti":"J1"}', b"12345", b"\xff\xfe"):
            feed(proto, [b"message", REVOCATIONS_CHANNEL.encode(), payload])
        self.assertEqual(
            [c for c in factory.calls if c[0] == "message"],
            [("message", (REVOCATIONS_CHANNEL.encode(), p)) for p in (b'{"jti":"J1"}', b"12345", b"\xff\xfe")],
        )

    def test_command_protocol(self) -> None:
        """EXISTS goes out with every key and the reply is a number."""
        factory = self.factory(subscriber=False)
        self.assertEqual(factory.dbid, 2)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.transport = transport
        proto.connected = 1
        d = _txredisapi.TxLink(proto).exists("k1", "k2")
        self.assertEqual(transport.value(), b"*3\r\n$6\r\nEXISTS\r\n$2\r\nk1\r\n$2\r\nk2\r\n")
        proto.dataReceived(b":1\r\n")
        self.assertEqual(self.successResultOf(d), 1)

    def test_not_connected(self) -> None:
        """A command on a closed connection fails its Deferred rather than raising."""
        proto = self.factory(subscriber=False).buildProtocol(None)
        self.failureResultOf(_txredisapi.TxLink(proto).exists("k"))
        self.failureResultOf(_txredisapi.TxLink(proto).subscribe("c"))

    def test_pool_events(self) -> None:
        """Joining and leaving the pool are reported, with the same link object."""
        factory = self.factory()

        class Conn:
            connected = 1
            transport = None

            def __init__(self) -> None:
                self.gone: Deferred[Any] = Deferred()

            def whenDisconnected(self) -> Deferred[Any]:
                return self.gone

        conn = Conn()
        factory.addConnection(conn)
        self.assertEqual([c[0] for c in factory.calls], ["ready"])
        link = factory.calls[0][1]
        self.assertIs(link.proto, conn)
        conn.gone.callback(conn)
        self.assertEqual(factory.calls[1], ("lost", link))
        dead = Conn()
        dead.connected = 0
        factory.addConnection(dead)
        self.assertEqual(len(factory.calls), 2)

    def test_keeps_trying_after_auth_error(self) -> None:
        """A refused AUTH is reported and does not stop reconnecting for good."""
        factory = self.factory()
        self.assertIsNone(self.successResultOf(factory.stopTrying()))
        self.assertFalse(factory.stopped)
        factory.connectionError("Redis error: could not auth: WRONGPASS")
        self.assertEqual(factory.calls, [("error", "Redis error: could not auth: WRONGPASS")])

    def test_tls_endpoint(self) -> None:
        """rediss:// wraps the TCP endpoint in TLS; redis:// does not."""
        from twisted.internet.endpoints import HostnameEndpoint

        plain = client_endpoint(MemoryReactorClock(), RedisAddress("localhost", 6379, 0, None, False))
        self.assertIsInstance(plain, HostnameEndpoint)
        tls = client_endpoint(MemoryReactorClock(), RedisAddress("localhost", 6380, 0, None, True))
        self.assertNotIsInstance(tls, HostnameEndpoint)
        self.assertIsInstance(tls._wrappedEndpoint, HostnameEndpoint)


def feed(proto: Any, items: list[Any]) -> None:
    """
    Feed a RESP array in pieces that end where each bulk ends: txredisapi
    re-schedules leftover bytes on the global reactor otherwise.
    """
    proto.dataReceived(b"*%d\r\n" % len(items))
    for item in items:
        if isinstance(item, int):
            proto.dataReceived(b":%d\r\n" % item)
        else:
            proto.dataReceived(b"$%d\r\n" % len(item))
            proto.dataReceived(item + b"\r\n")
