"""
The door test: what L{peatio_ws.redis._txredisapi} relies on in txredisapi.

That module was written against txredisapi 1.6.0 and overrides or calls
several of its undocumented names; its docstring numbers the workarounds
(1. to 7.). Each test here checks one name or behaviour in txredisapi
itself (not in our subclasses), so that upgrading txredisapi fails here,
naming the workaround to re-read, instead of failing somewhere far away (or
not at all) in production.

No sockets, no real time: the real txredisapi classes over a
L{StringTransport}, with txredisapi's module-level reactor replaced by a
L{Clock} for the few C{callLater(0, ...)} it makes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

WRITTEN_AGAINST = "1.6.0"
INSTALLED = getattr(txredisapi, "__version__", "unknown")


def broken(point: int, what: str) -> str:
    """The failure message: which version, what changed, which workaround to re-read."""
    return (
        f"txredisapi {INSTALLED} (peatio_ws/redis/_txredisapi.py was written against {WRITTEN_AGAINST}): "
        f"{what}. Workaround {point} in that module's docstring relies on it; "
        f"re-read it against the new txredisapi before upgrading."
    )


def parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


class RecordingFactory(txredisapi.RedisFactory):
    """The base factory, noting what its protocol tells it (and nothing else changed)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, Any]] = []

    def stopTrying(self) -> Any:
        self.calls.append(("stopTrying", None))
        return super().stopTrying()

    def connectionError(self, why: str) -> None:
        self.calls.append(("connectionError", why))
        super().connectionError(why)


class DoorTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        # txredisapi schedules a few calls on its module-level reactor
        # (addConnection one turn after a connection is usable, the report of
        # a failed one-shot attempt); a Clock keeps them off the real one.
        self.clock = Clock()
        self.patch(txredisapi, "reactor", self.clock)

    def relies(self, point: int, condition: object, what: str) -> None:
        if not condition:
            self.fail(broken(point, what))

    def connect(self, factory: Any, transport: StringTransport | None = None) -> Any:
        """A protocol of C{factory} on a StringTransport, connectionMade included."""
        proto = factory.buildProtocol(None)
        proto.callLater = self.clock.callLater
        proto.makeConnection(transport or StringTransport())
        return proto


class NamesTests(DoorTestCase):
    """Every txredisapi name the door module uses is still there, with the same shape."""

    def test_module_names(self) -> None:
        """The classes the door module subclasses or instantiates exist."""
        for name in ("RedisFactory", "SubscriberProtocol", "BaseRedisProtocol"):
            self.relies(2, inspect.isclass(getattr(txredisapi, name, None)), f"txredisapi.{name} is gone")

    def test_overridden_signatures(self) -> None:
        """The methods the door module overrides take the arguments it expects."""
        expected = {
            (txredisapi.RedisFactory, "stopTrying", 1): ["self"],
            (txredisapi.RedisFactory, "connectionError", 1): ["self", "why"],
            (txredisapi.RedisFactory, "addConnection", 2): ["self", "conn"],
            (txredisapi.RedisFactory, "delConnection", 2): ["self", "conn"],
            (txredisapi.SubscriberProtocol, "messageReceived", 5): ["self", "pattern", "channel", "message"],
        }
        for (cls, name, point), params in expected.items():
            method = getattr(cls, name, None)
            self.relies(point, callable(method), f"{cls.__name__}.{name} is gone")
            assert method is not None
            self.relies(
                point,
                parameters(method) == params,
                f"{cls.__name__}.{name} is now ({', '.join(parameters(method))}), "
                f"the override expects ({', '.join(params)})",
            )

    def test_called_signatures(self) -> None:
        """The calls the door module makes still bind to txredisapi's signatures."""
        calls: list[tuple[int, Callable[..., Any], str, tuple[Any, ...], dict[str, Any]]] = [
            (
                2,
                txredisapi.RedisFactory.__init__,
                "RedisFactory(uuid, dbid, poolsize, isLazy=, charset=, password=, convertNumbers=)",
                (None, "localhost:6379", None, 1),
                {"isLazy": False, "charset": None, "password": None, "convertNumbers": False},
            ),
            (
                7,
                txredisapi.RedisFactory.__init__,
                "RedisFactory(uuid, dbid, poolsize, isLazy=, password=, replyTimeout=)",
                (None, "localhost:6379", 0, 1),
                {"isLazy": False, "password": None, "replyTimeout": 5.0},
            ),
            (4, txredisapi.RedisFactory.startConnecting, "RedisFactory.startConnecting(endpoint)", (None, None), {}),
            (3, txredisapi.RedisFactory.disconnect, "RedisFactory.disconnect()", (None,), {}),
            (
                6,
                txredisapi.BaseRedisProtocol.execute_command,
                "execute_command(*args)",
                (None, "EXISTS", "k1", "k2"),
                {},
            ),
            (5, txredisapi.SubscriberProtocol.subscribe, "SubscriberProtocol.subscribe(channel)", (None, "c"), {}),
        ]
        for point, function, call, args, kwargs in calls:
            try:
                inspect.signature(function).bind(*args, **kwargs)
            except TypeError as e:
                self.fail(broken(point, f"{call} no longer binds to {inspect.signature(function)} ({e})"))

    def test_factory_attributes(self) -> None:
        """The factory attributes the door module sets or reads exist, as in 1.6.0."""
        for name in ("initialDelay", "maxDelay"):
            self.relies(4, isinstance(getattr(txredisapi.RedisFactory, name, None), int | float), f"{name} is gone")
        self.relies(7, txredisapi.RedisFactory.reconnect is True, "the class attribute reconnect is gone")
        self.relies(2, hasattr(txredisapi.RedisFactory, "protocol"), "the class attribute protocol is gone")
        factory = txredisapi.RedisFactory("localhost:6379", 2, 1, isLazy=False, charset=None)
        missing = object()

        def attribute(name: str) -> Any:
            return getattr(factory, name, missing)

        self.relies(3, attribute("pool") == [], "a new factory's pool is no longer an empty list")
        self.relies(7, isinstance(attribute("deferred"), Deferred), "a new factory's deferred is no longer a Deferred")
        self.relies(7, attribute("handler") is not missing, "a factory no longer has the handler deferred fires with")
        self.relies(2, (attribute("dbid"), attribute("charset")) == (2, None), "dbid/charset are not kept as given")
        self.relies(1, attribute("stopped") is False, "a new factory's stopped flag is gone")


class RefusedTests(DoorTestCase):
    """1.: what txredisapi does when AUTH or SELECT is refused."""

    def test_auth_refused(self) -> None:
        """A refused AUTH calls stopTrying, then connectionError("Redis error: could not auth: ...")."""
        factory = RecordingFactory("localhost:6379", None, 1, password="wrong")
        factory.deferred.addErrback(lambda _: None)  # not what this test is about
        transport = StringTransport()
        proto = self.connect(factory, transport)
        self.relies(1, transport.value().startswith(b"*2\r\n$4\r\nAUTH\r\n"), "connectionMade no longer sends AUTH")
        proto.dataReceived(b"-WRONGPASS invalid username-password pair\r\n")
        names = [name for name, _ in factory.calls]
        self.relies(1, names == ["stopTrying", "connectionError"], f"a refused AUTH now calls {names}")
        why = factory.calls[1][1]
        self.relies(1, why.startswith("Redis error: could not auth: "), f"the refused AUTH text is now {why!r}")
        self.relies(1, transport.disconnecting, "a refused AUTH no longer closes the connection")
        # What the no-op override prevents: the base gives up for good.
        self.relies(1, factory.stopped, "the base stopTrying no longer stops the factory for good")

    def test_select_refused(self) -> None:
        """A refused SELECT calls stopTrying, then connectionError("Redis error: could not set dbid=...")."""
        factory = RecordingFactory("localhost:6379", 99, 1)
        factory.deferred.addErrback(lambda _: None)  # not what this test is about
        proto = self.connect(factory)
        proto.dataReceived(b"-ERR DB index is out of range\r\n")
        names = [name for name, _ in factory.calls]
        self.relies(1, names == ["stopTrying", "connectionError"], f"a refused SELECT now calls {names}")
        why = factory.calls[1][1]
        self.relies(1, why.startswith("Redis error: could not set dbid=99: "), f"the refused SELECT text is {why!r}")


class PoolTests(DoorTestCase):
    """2. and 3.: a connection joins the pool once usable and leaves it when lost."""

    def test_added_once_usable(self) -> None:
        """addConnection comes one reactor turn after SELECT is answered; delConnection when lost."""
        added: list[Any] = []
        removed: list[Any] = []

        class Watching(txredisapi.RedisFactory):
            def addConnection(self, conn: Any) -> None:
                added.append(conn)
                super().addConnection(conn)

            def delConnection(self, conn: Any) -> None:
                removed.append(conn)
                super().delConnection(conn)

        factory = Watching("localhost:6379", 2, 1)
        transport = StringTransport()
        proto = self.connect(factory, transport)
        self.relies(2, transport.value() == b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n", "connectionMade no longer SELECTs")
        self.clock.advance(0)
        self.relies(2, added == [], "addConnection is now called before SELECT is answered")
        proto.dataReceived(b"+OK\r\n")
        self.relies(2, added == [], "addConnection is no longer deferred by one reactor turn")
        self.clock.advance(0)
        self.relies(2, added == [proto], "addConnection is no longer called once the connection is usable")
        self.relies(2, factory.pool == [proto], "addConnection no longer puts the connection in factory.pool")
        self.relies(3, factory.pool[0].transport is transport, "a pooled connection no longer has its transport")
        proto.connectionLost(Failure(ConnectionDone()))
        self.relies(2, removed == [proto], "delConnection is no longer called when the connection is lost")
        self.relies(2, factory.pool == [], "delConnection no longer removes the connection from factory.pool")

    def test_not_added(self) -> None:
        """A connection that died meanwhile, or any after disconnect(), stays out of the pool."""
        factory = txredisapi.RedisFactory("localhost:6379", None, 1)
        dead = self.connect(factory)
        dead.connected = 0
        factory.addConnection(dead)
        self.relies(2, factory.pool == [], "addConnection now pools a connection that is not connected")
        closing = factory.disconnect()
        self.relies(3, isinstance(closing, Deferred), "disconnect() no longer returns a Deferred")
        transport = StringTransport()
        late = self.connect(factory, transport)
        factory.addConnection(late)
        self.relies(2, factory.pool == [], "addConnection now pools a connection after disconnect()")
        self.relies(2, transport.disconnecting, "addConnection no longer closes a connection after disconnect()")

    def test_backoff_attributes(self) -> None:
        """4.: retryDelay reads the class attributes initialDelay and maxDelay."""

        class Tuned(txredisapi.RedisFactory):
            initialDelay = 0.5
            maxDelay = 5.0
            jitter = 0

        factory = Tuned("localhost:6379", None, 1)
        self.relies(4, factory.retryDelay(1) == 0.5, "retryDelay no longer starts at initialDelay")
        self.relies(4, factory.retryDelay(50) == 5.0, "retryDelay is no longer capped at maxDelay")


class SubscriberTests(DoorTestCase):
    """5.: channel messages reach messageReceived, raw with charset=None."""

    def test_message_received(self) -> None:
        """A message reply calls messageReceived(None, channel, message), bytes left alone."""
        got: list[tuple[Any, ...]] = []

        class Recording(txredisapi.SubscriberProtocol):
            def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
                got.append((pattern, channel, message))

        factory = txredisapi.RedisFactory("localhost:6379", None, 1, charset=None, convertNumbers=False)
        factory.protocol = Recording
        transport = StringTransport()
        proto = self.connect(factory, transport)
        self.relies(5, isinstance(proto, Recording), "buildProtocol no longer uses factory.protocol")
        self.relies(5, proto.factory is factory, "a protocol no longer knows its factory")
        transport.clear()
        subscribed = proto.subscribe("chan")
        self.relies(5, transport.value() == b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nchan\r\n", "subscribe() sends otherwise")
        for piece in (b"*3\r\n", b"$9\r\n", b"subscribe\r\n", b"$4\r\n", b"chan\r\n", b":1\r\n"):
            proto.dataReceived(piece)
        self.relies(5, self.successResultOf(subscribed) == [b"subscribe", b"chan", 1], "SUBSCRIBE's reply changed")
        for payload in (b"12345", b"\xff\xfe"):
            for piece in (b"*3\r\n", b"$7\r\n", b"message\r\n", b"$4\r\n", b"chan\r\n"):
                proto.dataReceived(piece)
            proto.dataReceived(b"$%d\r\n" % len(payload))
            proto.dataReceived(payload + b"\r\n")
        self.relies(
            5,
            got == [(None, b"chan", b"12345"), (None, b"chan", b"\xff\xfe")],
            f"messages now reach messageReceived as {got!r}",
        )


class ClosedConnectionTests(DoorTestCase):
    """6.: a command on a closed connection fails at once."""

    def test_execute_command_not_connected(self) -> None:
        """execute_command on a protocol that is not connected raises or fails at once (never hangs)."""
        proto = txredisapi.RedisFactory("localhost:6379", None, 1).buildProtocol(None)
        try:
            result = proto.execute_command("EXISTS", "k")
        except Exception:
            return
        self.relies(6, isinstance(result, Deferred), "execute_command no longer returns a Deferred")
        outcome: list[Any] = []
        result.addBoth(outcome.append)
        self.relies(6, outcome and isinstance(outcome[0], Failure), "execute_command when not connected now waits")


class OneShotTests(DoorTestCase):
    """7.: the one-shot factory (reconnect = False) and its deferred."""

    def test_deferred_fires_when_pool_full(self) -> None:
        """factory.deferred fires once the pool is full, and pool[0] is the connection."""
        factory = txredisapi.RedisFactory("localhost:6379", None, 1, isLazy=False, replyTimeout=5.0)
        ready = factory.deferred
        proto = self.connect(factory)
        self.clock.advance(0)
        self.relies(7, factory.pool == [proto], "a usable connection is no longer pool[0]")
        outcome: list[Any] = []
        ready.addBoth(outcome.append)
        self.relies(7, outcome == [factory.handler], "factory.deferred no longer fires once the pool is full")
        self.relies(7, factory.deferred is None, "factory.deferred is no longer cleared once fired")

    def test_failed_attempt_reported(self) -> None:
        """
        With reconnect False, a failed attempt fails factory.deferred with
        ValueError("Redis error: could not connect: ..."), and a late
        connectionError is harmless once deferred is None.
        """
        factory = txredisapi.RedisFactory("localhost:6379", None, 1, isLazy=False, replyTimeout=5.0)
        factory.reconnect = False
        attempts: list[Any] = []

        class Refusing:
            def connect(self, protocolFactory: Any) -> Deferred[Any]:
                attempts.append(protocolFactory)
                return fail(ConnectionRefusedError("Connection refused"))

        ready = factory.deferred
        # The slot's ClientService puts its retry on the global reactor; the
        # disconnect() txredisapi makes on reporting the failure cancels it.
        factory.startConnecting(Refusing())
        self.clock.advance(0)
        outcome: list[Any] = []
        ready.addBoth(outcome.append)
        self.relies(7, outcome and isinstance(outcome[0], Failure), "a failed attempt no longer fails factory.deferred")
        self.relies(7, outcome[0].check(ValueError), f"a failed attempt now fails it with {outcome[0].type!r}")
        why = outcome[0].getErrorMessage()
        self.relies(7, why.startswith("Redis error: could not connect: "), f"the failed attempt text is {why!r}")
        self.relies(7, len(attempts) == 1, f"reconnect = False now makes {len(attempts)} attempts")
        factory.deferred = None
        factory.connectionError("Redis error: late")
