"""
Tests for L{peatio_ws.websocket.handoff}: a connection carried across a
restart in place. Real TCP sockets on loopback under Twisted's transport,
with a L{MemoryReactor} (nothing is polled) standing in for both programs'
reactors; the "next program" is a second factory with a registry of its own.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.auth import Claims
from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry
from peatio_ws.testing import Client, client_frame, make_token, parse_frames, settings_for_tests, upgrade_request
from peatio_ws.testing.factory import stream_factory
from peatio_ws.testing.frames import SAMPLE_KEY, TEXT
from peatio_ws.websocket import StreamFactory, _transport, handoff
from peatio_ws.websocket.connection import StreamProtocol
from tests.support.sockets import connected_pair


class _AdoptingReactor(MemoryReactor):
    """Adopts a connected socket as Twisted's reactors do: a duplicate, a protocol from the factory, connected."""

    def adoptStreamConnection(self, fileDescriptor: int, addressFamily: int, factory: Any) -> None:
        sock = socket.socket(addressFamily, socket.SOCK_STREAM, fileno=os.dup(fileDescriptor))
        sock.setblocking(False)
        host, port = sock.getpeername()[:2]
        address = IPv4Address("TCP", host, port)
        proto = factory.buildProtocol(address)
        transport = tcp.Server(sock, proto, (host, port), None, 1, MemoryReactor())  # type: ignore[arg-type]
        proto.makeConnection(transport)


class HandoffTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.settings = settings_for_tests()

    def factory(self) -> StreamFactory:
        metrics = Metrics()
        return stream_factory(self.settings, self.clock, registry=Registry(metrics), metrics=metrics)

    def tcp_connection(
        self, factory: StreamFactory, path: str = "/", headers: list[tuple[str, str]] | None = None
    ) -> tuple[StreamProtocol, socket.socket]:
        """A protocol of C{factory} on a real accepted socket (upgraded), and the client's socket."""
        client, accepted, (host, port) = connected_pair(self)
        address = IPv4Address("TCP", host, port)
        proto = factory.buildProtocol(address)
        transport = tcp.Server(accepted, proto, (host, port), None, 1, MemoryReactor())  # type: ignore[arg-type]
        proto.makeConnection(transport)
        self.addCleanup(self.lose, proto)
        proto.dataReceived(upgrade_request(path, "localhost:8080", headers or [], key=SAMPLE_KEY))
        return proto, client

    @staticmethod
    def lose(proto: StreamProtocol) -> None:
        if proto.transport.socket.fileno() >= 0:
            proto.transport.socket.close()

    def messages(self, client: socket.socket) -> list[Any]:
        """What the server sent the client so far (after the 101), as JSON or text."""
        data = b""
        client.setblocking(False)
        try:
            while True:
                chunk = client.recv(65536)
                if not chunk:
                    break
                data += chunk
        except BlockingIOError:
            pass
        if data.startswith(b"HTTP/1.1 101"):
            data = data[data.index(b"\r\n\r\n") + 4 :]
        frames, _ = parse_frames(data)
        out: list[Any] = []
        for frame in frames:
            if frame.opcode != TEXT:
                out.append(("close", frame.close_code))
                continue
            try:
                out.append(json.loads(frame.text))
            except ValueError:
                out.append(frame.text)
        return out

    def login(self, proto: StreamProtocol, uid: str, **claims: Any) -> None:
        token = make_token(uid=uid, now=self.clock.seconds(), **claims)
        proto.dataReceived(client_frame(json.dumps({"jwt": "Bearer " + token}).encode()))

    def carry(self, proto: StreamProtocol) -> handoff.Carried:
        """Freeze and capture C{proto} as the stopping program does; the record as the next program reads it."""
        self.assertIsNone(handoff.unfinished(proto))
        handoff.freeze(proto)
        carried = handoff.capture(proto)
        # The old program's objects go with the exec; its descriptors stay.
        proto.transport.socket.detach()
        return handoff.Carried.from_json(json.loads(json.dumps(carried.as_json())))

    def adopt(self, factory: StreamFactory, carried: handoff.Carried) -> StreamProtocol:
        proto = handoff.adopt(factory, _AdoptingReactor(), carried)
        self.addCleanup(self.lose, proto)
        return proto


class CarryTests(HandoffTestCase):
    def test_legacy_member(self) -> None:
        """
        A member's connection, carried with what Twisted held to send: the
        next program's protocol is open on the same socket, the same id and
        member, writes the held bytes first, and answers the client's next
        message.
        """
        old = self.factory()
        proto, client = self.tcp_connection(old)
        self.login(proto, "IDCARRIED01")
        self.assertEqual(self.messages(client)[1:], [{"success": {"message": "Authenticated."}}])
        proto.transport.write(b"held")  # nothing polls: Twisted keeps it
        self.assertEqual(_transport.pending_output(proto.transport), b"held")
        conn_id = proto.conn_id
        carried = self.carry(proto)
        self.assertEqual((carried.dialect, carried.pending, carried.conn_id), ("legacy", b"held", conn_id))
        assert carried.claims is not None
        self.assertEqual(carried.claims.uid, "IDCARRIED01")

        new = self.factory()
        adopted = self.adopt(new, carried)
        self.assertEqual(adopted.state, StreamProtocol.STATE_OPEN)
        self.assertEqual(adopted.conn_id, conn_id)
        self.assertEqual(new.registry.connections("IDCARRIED01"), frozenset({adopted}))
        self.assertEqual(new.connections, {adopted})
        self.assertEqual(new.metrics.connections_total._value.get(), 0, "not a new connection")
        self.assertEqual(new.admission.per_ip, {"127.0.0.1": 1})
        self.assertFalse(os.get_inheritable(adopted.transport.socket.fileno()))
        adopted.dataReceived(client_frame(b"ping"))
        pending = _transport.pending_output(adopted.transport)
        self.assertTrue(pending.startswith(b"held"), pending)
        [pong], _ = parse_frames(pending[4:])
        self.assertEqual(pong.text, "pong")

    def test_events_after_adoption(self) -> None:
        """The member's events reach the carried connection, on its socket."""
        proto, client = self.tcp_connection(self.factory())
        self.login(proto, "IDCARRIED02")
        self.messages(client)
        new = self.factory()
        adopted = self.adopt(new, self.carry(proto))
        self.assertEqual(new.registry.deliver("IDCARRIED02", "order", b'{"id":7}'), 1)
        self.assertEqual(self.messages(client), [{"order": {"id": 7}}])
        self.assertIsNotNone(adopted.claims)

    def test_not_logged_in(self) -> None:
        """A connection that had not logged in is carried too: its auth timeout runs again, and it may log in."""
        proto, client = self.tcp_connection(self.factory())
        self.messages(client)
        carried = self.carry(proto)
        self.assertIsNone(carried.claims)
        adopted = self.adopt(self.factory(), carried)
        self.assertIsNotNone(adopted._auth_timer)
        self.login(adopted, "IDCARRIED03")
        self.assertEqual(self.messages(client), [{"success": {"message": "Authenticated."}}])

    def test_ranger_subscriptions(self) -> None:
        """A ranger member keeps its subscriptions, public and private, and its private events filter."""
        token = make_token(uid="IDCARRIED04", now=self.clock.seconds())
        proto, client = self.tcp_connection(
            self.factory(),
            "/api/v2/ranger/private/?stream=order&stream=btcusd.trades",
            [("Authorization", f"Bearer {token}")],
        )
        self.messages(client)
        carried = self.carry(proto)
        self.assertEqual((carried.dialect, carried.streams), ("ranger", ("order", "btcusd.trades")))
        new = self.factory()
        adopted = self.adopt(new, carried)
        self.assertEqual(list(adopted.subscriptions or {}), ["order", "btcusd.trades"])
        self.assertEqual(adopted.private_streams, {"order"})
        self.assertEqual(new.registry.deliver("IDCARRIED04", "trade", b"{}"), 0)
        self.assertEqual(new.registry.deliver("IDCARRIED04", "order", b'{"id":1}'), 1)
        self.assertEqual(new.hub.publish("btcusd", "trades", b'{"trades":[]}'), 1)
        self.assertEqual(self.messages(client), [{"order": {"id": 1}}, {"btcusd.trades": {"trades": []}}])

    def test_order_book_goes_on(self) -> None:
        """
        A ranger client holding a market's book, and one waiting for its
        snapshot: carried with the store, the first gets the next increment
        (nothing replayed again), the second still waits and gets the next
        snapshot.
        """
        old = self.factory()
        path = "/api/v2/ranger/public/?stream=btcusd.ob-inc"
        old.hub.publish("btcusd", "ob-snap", b'{"asks":[],"bids":[],"sequence":10}')
        holding, holding_client = self.tcp_connection(old, path)
        old.hub.publish("ethusd", "ob-inc", b'{"asks":["1","1"],"sequence":3}')  # before any snapshot: broken
        waiting, waiting_client = self.tcp_connection(old, "/api/v2/ranger/public/?stream=ethusd.ob-inc")
        self.assertEqual(old.hub.primed_markets(holding), ["btcusd"])
        self.assertEqual(old.hub.primed_markets(waiting), [])
        records = [self.carry(holding), self.carry(waiting)]
        self.assertEqual([r.primed for r in records], [("btcusd",), ()])
        self.messages(holding_client)
        self.messages(waiting_client)

        new = self.factory()
        books = handoff.books_json(old.hub.carried_books())
        new.hub.restore_books(handoff.books_from_json(json.loads(json.dumps(books))))
        for record in records:
            self.adopt(new, record)
        self.assertEqual(self.messages(holding_client), [], "nothing replayed again")
        self.assertEqual(new.hub.publish("btcusd", "ob-inc", b'{"asks":["1","1"],"sequence":11}'), 1)
        self.assertEqual(self.messages(holding_client), [{"btcusd.ob-inc": {"asks": ["1", "1"], "sequence": 11}}])
        self.assertEqual(new.hub.publish("ethusd", "ob-inc", b'{"asks":["1","1"],"sequence":4}'), 0)
        self.assertEqual(new.hub.publish("ethusd", "ob-snap", b'{"asks":[],"bids":[],"sequence":4}'), 1)
        self.assertEqual(self.messages(waiting_client), [{"ethusd.ob-snap": {"asks": [], "bids": [], "sequence": 4}}])

    def test_expired_meanwhile(self) -> None:
        """A token that expired while the program restarted ends the session at once, 4001."""
        proto, client = self.tcp_connection(self.factory())
        self.login(proto, "IDCARRIED05", lifetime=5)
        self.messages(client)
        carried = self.carry(proto)
        self.clock.advance(60)
        adopted = self.adopt(self.factory(), carried)
        self.clock.advance(0)
        self.assertTrue(adopted.closedByMe)
        self.assertEqual(self.messages(client), [{"error": {"message": "Token expired."}}, ("close", 4001)])


class UnfinishedTests(HandoffTestCase):
    def test_reasons(self) -> None:
        """What keeps a connection from being carried, in a few words."""
        memory = Client.connect(self.factory())
        self.addCleanup(memory.lose)
        self.assertEqual(handoff.unfinished(memory.protocol), "not plain TCP")

        proto, _ = self.tcp_connection(self.factory())
        self.assertIsNone(handoff.unfinished(proto))
        proto.dataReceived(client_frame(b"ping")[:3])
        self.assertEqual(handoff.unfinished(proto), "in the middle of a message")

        proto, _ = self.tcp_connection(self.factory())
        proto._queued.append((b"x", False))
        self.assertEqual(handoff.unfinished(proto), "a message being handled")

        proto, _ = self.tcp_connection(self.factory())
        proto.going_away()
        self.assertEqual(handoff.unfinished(proto), "not open")

    def test_freeze_stops_reading_and_timers(self) -> None:
        proto, _ = self.tcp_connection(self.factory())
        self.assertIsNotNone(proto._auth_timer)
        reactor = proto.transport.reactor
        self.assertIn(proto.transport, reactor.getReaders())
        handoff.freeze(proto)
        self.assertNotIn(proto.transport, reactor.getReaders())
        self.assertIsNone(proto._auth_timer)


class CarriedRecordTests(SynchronousTestCase):
    def record(self, **changes: Any) -> dict[str, Any]:
        claims = Claims(uid="IDX", jti="j", expires_at=5.0, email="a@b", role="member", level=3, state="active")
        record = handoff.Carried(7, socket.AF_INET6, "p-1", "ranger", claims, ("order",), b"\x00\xff", ("m",)).as_json()
        record.update(changes)
        return record

    def test_round_trip(self) -> None:
        record = self.record()
        self.assertEqual(handoff.Carried.from_json(record).as_json(), record)
        self.assertEqual(handoff.Carried.from_json(self.record(claims=None)).claims, None)

    def test_books_refused(self) -> None:
        """Order books this program did not write are refused, saying why."""
        good: dict[str, Any] = {"sequence": 3, "broken": False, "snapshot": None, "increments": []}
        bad = {
            "the order books are not a JSON object": [],
            "order book 'm' is not one": {"m": []},
            "order book 'm' has a bad sequence": {"m": {**good, "sequence": "3"}},
            "order book 'm' has bad frames": {"m": {**good, "increments": ["not base64!"]}},
        }
        for why, value in bad.items():
            with self.assertRaises(handoff.CarriedError) as raised:
                handoff.books_from_json(value)
            self.assertEqual(str(raised.exception), why)
        self.assertEqual(handoff.books_from_json({"m": good}), {"m": good})

    def test_refused(self) -> None:
        """A record this program did not write is refused, saying why."""
        bad = {
            "a connection is not a JSON object": [],
            "a connection has no 'pending'": {k: v for k, v in self.record().items() if k != "pending"},
            "bad descriptor 2": self.record(fd=2),
            "bad descriptor True": self.record(fd=True),
            "bad address family 'unix'": self.record(family="unix"),
            "bad connection id or dialect ('p-1', 'http')": self.record(dialect="http"),
            "bad claims": self.record(claims={"uid": "IDX"}),
            "bad streams": self.record(streams=[1]),
            "bad pending bytes": self.record(pending="not base64!"),
            "bad primed markets": self.record(primed="btcusd"),
        }
        for why, record in bad.items():
            with self.assertRaises(handoff.CarriedError) as raised:
                handoff.Carried.from_json(record)
            self.assertEqual(str(raised.exception), why)
