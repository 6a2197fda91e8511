# -*- test-case-name: tests.unit.test_redis_txredisapi,tests.unit.test_redis_txredisapi_door -*-
"""
The one door into txredisapi: the only module of peatio-ws that imports it or
touches its internals. Written against txredisapi 1.6.0 (setup.py pins
C{>=1.6,<1.7}); txredisapi is untyped, so this module also gives the rest of
the package typed views of it.

txredisapi 1.6 has no public hook for "this connection is usable" or "this
connection is gone", gives up for good on an AUTH/SELECT error, and does not
subscribe again after a reconnect. What this module does about it, and
which txredisapi names each workaround relies on (all checked by
C{tests/unit/test_redis_txredisapi_door.py}, which fails naming the
workaround when an upgrade changes one):

 1. Keep retrying after AUTH or SELECT is refused. C{BaseRedisProtocol.
    connectionMade} calls C{factory.stopTrying()} and then
    C{factory.connectionError("Redis error: could not auth: ...")} (or
    C{"... could not set dbid=..."}). A daemon should rather go on retrying
    with backoff, as for any outage: the password or ACL may be fixed on the
    server without a restart. L{LinkFactory.stopTrying} is therefore a no-op
    and L{LinkFactory.connectionError} reports the text to the service
    (the only place txredisapi tells why a connection was refused).

 2. Know when a connection is usable and when it is lost.
    C{RedisFactory.buildProtocol} arranges for C{addConnection(conn)} to be
    called one reactor turn after the protocol's C{whenConnected} fires,
    i.e. after AUTH and SELECT were answered; C{addConnection} appends it to
    C{factory.pool} unless it died meanwhile or C{disconnect()} was called,
    and registers C{delConnection(conn)} with C{conn.whenDisconnected()}.
    L{LinkFactory} overrides both, calls the base first, and tells the
    service (C{conn in self.pool} after the base C{addConnection} says
    whether it was accepted).

 3. Drop connections that do not close. C{RedisFactory.disconnect()}
    (a Deferred since 1.6) only calls C{loseConnection}, which never
    finishes on a half-open link; L{LinkFactory.abort_all} aborts the
    transport of every connection in C{factory.pool}.

 4. Backoff. C{initialDelay} and C{maxDelay} are the class attributes
    1.6's C{retryDelay} reads for the C{ClientService} of each pool slot;
    C{startConnecting(endpoint)} is the 1.6 way to connect.

 5. Channel messages as raw bytes. C{SubscriberProtocol.replyReceived}
    hands each C{message} reply to C{messageReceived(pattern, channel,
    message)} (pattern None), a no-op meant to be overridden;
    L{Subscriber} forwards it to the factory's callback. The factory is made
    with C{charset=None} and C{convertNumbers=False} so that a payload that
    is not UTF-8, or looks like a number, reaches the parser unchanged.
    Re-subscribing after a reconnect is the service's job (it subscribes
    on every "usable", 2.).

 6. Commands on a closed connection. C{execute_command} raises
    C{ConnectionError} at once instead of returning a failed Deferred;
    L{TxLink} turns that into a failed Deferred.

 7. One-shot connections (L{connect_once}, for the CLI and tests). With
    the class attribute C{reconnect} set to False before
    C{startConnecting}, a slot does not reconnect and a failed attempt is
    reported through C{connectionError}. C{factory.deferred} fires when the
    pool is full, or fails with C{ValueError(text)} from C{connectionError};
    on our own timeout it is set to None, or a late error would fire the
    cancelled Deferred again. The connection is C{factory.pool[0]}.

Nothing else in txredisapi is used. Before moving the pin, read these seven
points against the new version and run the door test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import txredisapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout

from peatio_ws.config import RedisAddress

__all__ = ["ConnectFailed", "LinkFactory", "OneShot", "Subscriber", "TxLink", "connect_once", "error_text"]


def error_text(why: str) -> str:
    """txredisapi's text for a refused connection (1., 7.) without its "Redis error: " prefix."""
    return why.removeprefix("Redis error: ")


class TxLink:
    """A txredisapi protocol seen through a small typed surface."""

    def __init__(self, proto: Any) -> None:
        self.proto = proto

    def command(self, *args: Any) -> Deferred[Any]:
        """Send one command; a failed Deferred (never an exception) when not connected (6.)."""
        try:
            # Raises at once when the connection is already gone.
            return cast(Deferred[Any], self.proto.execute_command(*args))
        except Exception:
            return fail()

    def exists(self, *keys: str) -> Deferred[int]:
        return self.command("EXISTS", *keys)

    def ping(self) -> Deferred[object]:
        return self.command("PING")

    def subscribe(self, channel: str) -> Deferred[object]:
        try:
            return cast(Deferred[object], self.proto.subscribe(channel))
        except Exception:
            return fail()

    def abort(self) -> None:
        transport = self.proto.transport
        if transport is not None:
            transport.abortConnection()


class Subscriber(txredisapi.SubscriberProtocol):
    """Hands channel messages to the factory's callback (5.)."""

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory.on_message(channel, message)


class LinkFactory(txredisapi.RedisFactory):
    """
    One reconnecting connection that reports to the service when it becomes
    usable (after AUTH and SELECT) and when it is lost.
    """

    initialDelay = 0.5
    maxDelay = 5.0
    noisy = False

    def __init__(
        self,
        address: RedisAddress,
        *,
        subscriber: bool,
        on_ready: Callable[[TxLink], None],
        on_lost: Callable[[TxLink], None],
        on_error: Callable[[str], None],
        on_message: Callable[[Any, Any], None] | None = None,
    ) -> None:
        super().__init__(
            f"{address.host}:{address.port}",
            None if subscriber else address.db,
            1,
            isLazy=False,
            # The subscriber takes raw bytes: a message that is not UTF-8, or
            # that looks like a number, must not be mangled before parsing.
            charset=None if subscriber else "utf-8",
            password=address.password,
            convertNumbers=not subscriber,
        )
        if subscriber:
            self.protocol = Subscriber
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.on_error = on_error
        self.on_message = on_message or (lambda channel, message: None)
        self._links: dict[Any, TxLink] = {}

    def stopTrying(self) -> Deferred[None]:
        # txredisapi gives up for good when AUTH or SELECT fails. A daemon
        # should rather keep retrying with backoff, like for any outage: the
        # password or ACL may be fixed on the server without a restart (1.).
        return succeed(None)

    def connectionError(self, why: str) -> None:
        self.on_error(why)

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            link = self._links[conn] = TxLink(conn)
            self.on_ready(link)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        link = self._links.pop(conn, None)
        if link is not None:
            self.on_lost(link)

    def abort_all(self) -> None:
        """Drop every connection at once (when closing cleanly took too long, 3.)."""
        for conn in list(self.pool):
            if conn.transport is not None:
                conn.transport.abortConnection()


class ConnectFailed(Exception):
    """A one-shot connection could not be made; C{str()} is a short reason."""


class OneShot:
    """One connection that does not reconnect (7.)."""

    def __init__(self, factory: Any) -> None:
        self._factory = factory
        self.link = TxLink(factory.pool[0])

    def close(self) -> Deferred[None]:
        return cast(Deferred[None], self._factory.disconnect())


async def connect_once(address: RedisAddress, endpoint: Any, reactor: Any, timeout: float) -> OneShot:
    """
    Connect once through C{endpoint} (AUTH and SELECT included) within
    C{timeout} seconds; replies also time out after C{timeout}.

    @raise ConnectFailed: with a short reason ("timed out", txredisapi's text).
    """
    factory = txredisapi.RedisFactory(
        f"{address.host}:{address.port}", address.db, 1, isLazy=False, password=address.password, replyTimeout=timeout
    )
    factory.reconnect = False
    factory.noisy = False
    connected = cast(Deferred[Any], factory.deferred)
    factory.startConnecting(endpoint)
    try:
        await connected.addTimeout(timeout, reactor)
    except Exception as e:
        # txredisapi would otherwise fire this Deferred again on a late error.
        factory.deferred = None
        await factory.disconnect()
        reason = "timed out" if isinstance(e, DeferredTimeout) else error_text(str(e))
        raise ConnectFailed(reason.removeprefix("could not connect: ")) from None
    return OneShot(factory)
