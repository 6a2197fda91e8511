"""
The door to Twisted's listening port (L{peatio_ws._port}, written against
Twisted 26.10.0): what it relies on, checked on the real reactor's ports so
an upgrade that moves it fails here, naming it. Nothing waits on the real
clock: whether the port is in the reactor's poll is read from
C{getReaders()}, a port's accepts are made by calling its C{doRead} while
it is held out of the poll, and the looks at the room run on a fake clock.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import socket
from typing import Any, cast

from twisted.internet import reactor, tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from peatio_ws import _port
from peatio_ws.listen import PortService

WRITTEN_AGAINST = "26.10.0"
INSTALLED = importlib.metadata.version("twisted")


class PortDoorTests(TestCase):
    def listening(self, reuse_port: bool = False) -> PortService:
        service = PortService("127.0.0.1", 0, Factory.forProtocol(Protocol), reactor, reuse_port=reuse_port)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def test_listen_tcp_gives_a_tcp_port(self) -> None:
        """listenTCP and adoptStreamPort both return a tcp.Port with stopReading, startReading and connected."""
        for reuse_port in (False, True):
            port = self.listening(reuse_port).listening_port
            self.assertIsInstance(port, tcp.Port, f"Twisted {INSTALLED} (door written against {WRITTEN_AGAINST})")
            self.assertTrue(port.connected)  # type: ignore[union-attr]
            for name in ("stopReading", "startReading"):
                self.assertTrue(callable(getattr(port, name, None)), f"tcp.Port.{name} is gone in Twisted {INSTALLED}")

    def test_pause_and_resume_leave_and_join_the_poll(self) -> None:
        """Paused, the port is out of the reactor's readers (connections wait in the kernel); resumed, back in."""
        for reuse_port in (False, True):
            service = self.listening(reuse_port)
            port = service.listening_port
            self.assertIn(port, reactor.getReaders())
            self.assertTrue(service.pause_accepting())
            self.assertNotIn(port, reactor.getReaders())
            service.resume_accepting()
            self.assertIn(port, reactor.getReaders())

    async def test_resume_after_close_does_nothing(self) -> None:
        """A port closed while paused is not put back in the poll."""
        service = self.listening()
        port = service.listening_port
        self.assertTrue(service.pause_accepting())
        await service.stopService()
        service.resume_accepting()
        _port.resume_accepting(port)
        self.assertNotIn(port, reactor.getReaders())
        self.assertFalse(service.pause_accepting())

    def test_other_ports_refused(self) -> None:
        """Anything but a listening tcp.Port: not paused, and said so."""
        self.assertFalse(_port.pause_accepting(object()))
        _port.resume_accepting(object())

    def test_accept_loop_reads_number_accepts(self) -> None:
        """Twisted's accept loop is still bounded by the port's numberAccepts, read on every doRead."""
        source = inspect.getsource(tcp.Port.doRead)
        where = f"tcp.Port.doRead no longer bounds its accepts by numberAccepts in Twisted {INSTALLED}"
        self.assertIn("numAccepts = self.numberAccepts", source, where)
        self.assertIn("range(numAccepts)", source, where)
        port = self.listening().listening_port
        self.assertIsInstance(getattr(port, "numberAccepts", None), int, where)

    async def test_accept_at_most(self) -> None:
        """
        A port bounded by room() accepts at most that many waiting
        connections per poll; with no room, none: it leaves the poll (the
        rest wait in the kernel's queue) until there is room again, and
        comes back only once no other reason holds it.
        """
        for reuse_port in (False, True):
            await self.accepts_by_room(reuse_port)

    async def accepts_by_room(self, reuse_port: bool) -> None:
        room = [2]
        built: list[Protocol] = []

        class Counting(Factory):
            def buildProtocol(self, addr: object) -> Protocol:
                built.append(Protocol())
                return built[-1]

        service = PortService("127.0.0.1", 0, Counting(), reactor, reuse_port=reuse_port)
        service.startService()
        port: Any = service.listening_port
        clock = Clock()
        self.assertTrue(_port.accept_at_most(port, lambda: room[0], clock))
        # Held as the consumer gate holds it: the polls below are made by hand.
        self.assertTrue(service.pause_accepting())
        clients = [socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5) for _ in range(6)]
        try:
            port.doRead()
            self.assertEqual(len(built), 2)
            room[0] = 0
            port.doRead()
            self.assertEqual(len(built), 2)
            room[0] = 100
            clock.advance(_port.ROOM_RECHECK)
            # Room again, but the gate still holds it.
            self.assertNotIn(port, reactor.getReaders())
            port.doRead()
            self.assertEqual(len(built), 6)
            room[0] = 0
            port.doRead()
            service.resume_accepting()
            # The gate let go, but there is no room: still out of the poll, till there is.
            self.assertNotIn(port, reactor.getReaders())
            clock.advance(_port.ROOM_RECHECK)
            self.assertNotIn(port, reactor.getReaders())
            room[0] = 1
            clock.advance(_port.ROOM_RECHECK)
            self.assertIn(port, reactor.getReaders())
            # Closed while waiting for room: nothing is left scheduled.
            room[0] = 0
            port.doRead()
            self.assertEqual(len(clock.getDelayedCalls()), 1)
            _port.forget(port)
            self.assertEqual(clock.getDelayedCalls(), [])
        finally:
            for protocol in built:
                cast(Any, protocol.transport).abortConnection()
            for sock in clients:
                sock.close()
            await service.stopService()
            await deferLater(reactor, 0, lambda: None)

    async def test_stop_forgets_the_room(self) -> None:
        """A PortService given a room bounds its port on its reactor, and its stop leaves no look at the room."""

        def looks() -> list[Any]:
            return [c for c in reactor.getDelayedCalls() if getattr(cast(Any, c).func, "__name__", "") == "recheck"]

        service = PortService("127.0.0.1", 0, Factory.forProtocol(Protocol), reactor, room=lambda: 0)
        service.startService()
        port: Any = service.listening_port
        self.assertTrue(service.pause_accepting())
        port.doRead()
        self.assertEqual(len(looks()), 1)
        await service.stopService()
        self.assertEqual(looks(), [])

    def test_accept_at_most_other_ports(self) -> None:
        """A port of another kind (a test double, TLS wrapped elsewhere) is left as it is."""
        self.assertFalse(_port.accept_at_most(object(), lambda: 1))
