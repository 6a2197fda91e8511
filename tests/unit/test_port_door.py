"""
The door to Twisted's listening port (L{peatio_ws._port}, written against
Twisted 26.10.0): what it relies on, checked on the real reactor's ports so
an upgrade that moves it fails here, naming it. Nothing connects and nothing
waits: whether the port is in the reactor's poll is read from
C{getReaders()}.
"""

from __future__ import annotations

import importlib.metadata

from twisted.internet import reactor, tcp
from twisted.internet.protocol import Factory, Protocol
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
