# -*- test-case-name: tests.unit.test_amqp_publisher,tests.integration.test_cli_publish -*-
"""
One small publisher of private events, as Peatio's own producer sends them:
the CLI's C{publish}, and the tests, benchmarks and demo that need events.

L{Publisher.connect} logs in (separate host, port, user, password and
vhost, or L{Settings}), opens a channel and declares the events exchange as
Peatio declares it (topic, not durable: declaring it is harmless when it
exists). L{Publisher.publish} sends C{bytes} with a routing key such as
C{private.<uid>.<event>}; its frames are built here and written in one go
(no Deferred chain per message, and never a C{str} body, which txAMQP would
garble). L{Publisher.close} makes sure the broker has taken everything,
then closes.

With C{confirms=True} (RabbitMQ's publisher confirms; they need RabbitMQ's
extended spec, L{RABBITMQ_EXTENDED_SPEC}), each publish's Deferred fires
once the broker has taken the message, or fails with L{Nacked} (refused)
or L{Unconfirmed} (the channel or connection went first). A message
published with C{mandatory=True} that no queue is bound for comes back
to C{on_return(routing_key, body, reply_code, reply_text)}; RabbitMQ still
confirms it.

It does not reconnect: C{on_lost(reason)} says the connection went (other
than by L{Publisher.close}); connect a new one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.python.failure import Failure

from peatio_ws.amqp import _txamqp, _wire
from peatio_ws.config import ConfigError, Settings

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "RABBITMQ_EXTENDED_SPEC",
    "Nacked",
    "NotConnected",
    "Publisher",
    "PublisherError",
    "Unconfirmed",
]

#: Debian's C{amqp-specs}: the 0-9-1 spec with RabbitMQ's extensions (confirm.select, basic.nack).
RABBITMQ_EXTENDED_SPEC = "/usr/share/amqp/specs/0-9-1-rabbit/amqp0-9-1.stripped.extended.xml"
#: What Peatio's events are.
DEFAULT_CONTENT_TYPE = "application/json"
#: The publisher's channel.
CHANNEL = 1

ReturnHandler = Callable[[bytes, bytes, int, str], None]


class PublisherError(Exception):
    """
    A step of connecting or closing failed: C{step} ("connect", "open a
    channel", "declare the exchange 'x'", "publish", "close", ...) and the
    C{reason}, as the broker put it when it said; C{str()} is "could not
    <step>: <reason>".
    """

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"could not {step}: {reason}")
        self.step = step
        self.reason = reason


class NotConnected(Exception):
    """Publishing with no usable connection or channel (the message is not sent)."""


class Nacked(Exception):
    """The broker refused a message (C{basic.nack}); its delivery tag is C{args[0]}."""


class Unconfirmed(Exception):
    """The channel or connection went before the broker confirmed a message: it may or may not have it."""


class Publisher:
    """A connection and a channel publishing to one exchange; make one with L{connect}."""

    def __init__(
        self,
        client: _txamqp.PublisherClient,
        exchange: str,
        reactor: Any,
        confirms: bool,
        timeout: float,
        on_return: ReturnHandler | None,
        on_lost: Callable[[Failure], None] | None,
    ) -> None:
        #: The txAMQP client and channel, for what this class does not do (deleting a test's exchange, say).
        self.client = client
        self.channel: Any = None
        self.exchange = exchange
        self._exchange = exchange.encode("utf-8")
        self._reactor = reactor
        self._confirms = confirms
        self._timeout = timeout
        self._on_return = on_return
        self._on_lost = on_lost
        #: Messages written, and messages returned (mandatory, routed nowhere).
        self.published = 0
        self.returns = 0
        self._next_tag = 1
        self._pending: dict[int, Deferred[None]] = {}
        self._broken: str | None = None
        self._closing = False
        client.listener = self

    # -- connecting ----------------------------------------------------------

    @staticmethod
    def check_spec(path: str, confirms: bool = False) -> Any:
        """
        Load the spec file at C{path}, as L{connect} will.

        @raise ConfigError: naming AMQP_SPEC, when it is unusable, or lacks
            C{confirm.select} although C{confirms} are wanted.
        """
        spec = _txamqp.load_spec(path)
        if confirms and not _txamqp.has_method(spec, "confirm.select"):
            raise ConfigError(
                "AMQP_SPEC",
                f"{path!r} has no confirm.select; publisher confirms need RabbitMQ's extended spec "
                f"({RABBITMQ_EXTENDED_SPEC})",
            )
        return spec

    @classmethod
    async def connect(
        cls,
        reactor: Any = None,
        *,
        settings: Settings | None = None,
        host: str | None = None,
        port: int | None = None,
        user: str | None = None,
        password: str | None = None,
        vhost: str | None = None,
        exchange: str | None = None,
        spec: str | None = None,
        confirms: bool = False,
        declare: bool = True,
        timeout: float = 10.0,
        heartbeat: int = 0,
        name: str = "peatio-ws publisher",
        on_return: ReturnHandler | None = None,
        on_lost: Callable[[Failure], None] | None = None,
    ) -> Publisher:
        """
        Connect, log in, open the channel (in confirm mode if C{confirms}),
        and declare the exchange unless told not to (C{declare=False}).

        Every setting not given comes from C{settings} (the defaults when
        none: localhost:5672, guest/guest, vhost /, the exchange
        C{peatio.events.ranger}); C{spec} defaults to AMQP_SPEC, or to
        L{RABBITMQ_EXTENDED_SPEC} with C{confirms}. C{timeout} bounds each
        step; C{name} is the connection name RabbitMQ shows.

        @raise ConfigError: the spec file is unusable (naming AMQP_SPEC).
        @raise PublisherError: a step failed (the connection is closed).
        """
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        s = settings if settings is not None else Settings()
        host = s.rabbitmq_host if host is None else host
        port = s.rabbitmq_port if port is None else port
        exchange = s.rabbitmq_events_exchange if exchange is None else exchange
        spec_path = spec if spec is not None else (RABBITMQ_EXTENDED_SPEC if confirms else s.amqp_spec)
        _txamqp.install()
        cls.check_spec(spec_path, confirms)
        factory = _txamqp.PublisherClientFactory(spec_path, reactor, {"product": "peatio-ws", "connection_name": name})
        endpoint = _txamqp.endpoint(
            reactor,
            host,
            port,
            user=s.rabbitmq_user if user is None else user,
            password=s.rabbitmq_password if password is None else password,
            vhost=s.rabbitmq_vhost if vhost is None else vhost,
            heartbeat=heartbeat,
            timeout=timeout,
        )
        step = "connect"
        try:
            client = await endpoint.connect(factory).addTimeout(timeout, reactor)
            publisher = cls(client, exchange, reactor, confirms, timeout, on_return, on_lost)
            step = "open a channel"
            channel = await client.channel(CHANNEL)
            await channel.channel_open().addTimeout(timeout, reactor)
            publisher.channel = channel
            if confirms:
                step = "enable publisher confirms"
                await channel.confirm_select().addTimeout(timeout, reactor)
            if declare:
                step = f"declare the exchange {exchange!r}"
                declaring = channel.exchange_declare(exchange=exchange.encode("utf-8"), type="topic", durable=False)
                await declaring.addTimeout(timeout, reactor)
        except Exception as e:
            reason = _txamqp.error_text(e)
            if step == "connect" and _txamqp.connection_dropped(e):
                reason = "the broker closed the connection during login (check RABBITMQ_USER, RABBITMQ_PASSWORD)"
            built = factory.client
            if built is not None:
                built.listener = None
                built.abort()
            raise PublisherError(step, reason) from None
        return publisher

    # -- state ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether L{publish} would send (the connection and channel are up, L{close} not called)."""
        return self._broken is None and not self._closing and self.client.writable

    @property
    def unconfirmed(self) -> int:
        """Messages published in confirm mode that the broker has not confirmed (or nacked) yet."""
        return len(self._pending)

    # -- publishing ----------------------------------------------------------

    def publish(
        self,
        routing_key: str | bytes,
        body: bytes,
        *,
        mandatory: bool = False,
        content_type: str | None = DEFAULT_CONTENT_TYPE,
        persistent: bool = False,
        exchange: str | None = None,
    ) -> Deferred[None]:
        """
        Send one message (in order with every other of this publisher), to
        the publisher's exchange or to C{exchange} ("" is the default
        exchange; nothing declares it).

        Without confirms the Deferred has fired already (the frames are
        written); with confirms it fires when the broker confirms, or fails
        with L{Nacked} or L{Unconfirmed}.

        @raise NotConnected: no usable connection or channel; nothing was sent.
        @raise TypeError: C{body} is not C{bytes}.
        @raise ValueError: the routing key is longer than 255 bytes.
        """
        if not isinstance(body, bytes):
            raise TypeError(f"publish bytes, not {type(body).__name__}")
        if not self.connected:
            raise NotConnected(self._broken or "the publisher's connection is closed")
        key = routing_key.encode("utf-8") if isinstance(routing_key, str) else routing_key
        frames = _wire.publish_frames(
            CHANNEL,
            self._exchange if exchange is None else exchange.encode("utf-8"),
            key,
            body,
            self.client.frame_max,
            mandatory=mandatory,
            content_type=content_type.encode("utf-8") if content_type is not None else None,
            delivery_mode=2 if persistent else 1,
        )
        self.client.write_frames(frames)
        self.published += 1
        if not self._confirms:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._pending[self._next_tag] = d
        self._next_tag += 1
        return d

    async def flush(self) -> None:
        """
        One round trip on the channel: once it returns, the broker has read
        every message published before (it handles a channel's frames in
        order). Confirms may still be on their way.
        """
        await self.channel.basic_qos(prefetch_size=0, prefetch_count=0, global_=False).addTimeout(
            self._timeout, self._reactor
        )

    async def close(self) -> None:
        """
        Close cleanly, and return once the connection is gone (whatever
        happened). First a round trip on the channel (the broker then has
        every message; if the channel failed meanwhile, say the exchange was
        missing, that shows here as step "publish"), then C{connection.close}.
        Messages still unconfirmed fail with L{Unconfirmed}.

        @raise PublisherError: a step failed.
        """
        if self._closing:
            return
        self._closing = True
        client = self.client
        step = "publish"
        try:
            if client.lost:
                raise PublisherError(step, self._broken or "the connection was lost")
            await self.channel.channel_close(reply_code=200, reply_text="ok").addTimeout(self._timeout, self._reactor)
            step = "close"
            channel0 = await client.channel(0)
            await channel0.connection_close(reply_code=200, reply_text="peatio-ws publisher closing").addTimeout(
                self._timeout, self._reactor
            )
        except PublisherError:
            raise
        except Exception as e:
            raise PublisherError(step, _txamqp.error_text(e)) from None
        finally:
            await self._disconnect()

    async def _disconnect(self) -> None:
        client = self.client
        if client.lost or client.transport is None:
            return
        gone = client.disconnected.wait()
        client.transport.loseConnection()
        gone.addTimeout(self._timeout, self._reactor)
        try:
            await gone
        except DeferredTimeout:
            client.abort()

    # -- what the client reports (L{_txamqp.PublisherListener}) ---------------

    def confirmed(self, delivery_tag: int, multiple: bool, ok: bool) -> None:
        pending = self._pending
        if multiple:
            tags = list(itertools.takewhile(lambda tag: tag <= delivery_tag, pending))
        else:
            tags = [delivery_tag] if delivery_tag in pending else []
        for tag in tags:
            d = pending.pop(tag)
            if ok:
                d.callback(None)
            else:
                d.errback(Nacked(tag))

    def returned(self, routing_key: bytes, body: bytes, reply_code: int, reply_text: str) -> None:
        self.returns += 1
        if self._on_return is not None:
            self._on_return(routing_key, body, reply_code, reply_text)

    def channel_failed(self, channel_id: int | None, reason: Any) -> None:
        if channel_id != CHANNEL:
            return
        self._broken = f"the broker closed the channel: {_txamqp.describe(reason)}"
        self._fail_pending(self._broken)

    def connection_lost(self, reason: Failure) -> None:
        if self._broken is None:
            self._broken = f"the connection was lost: {_txamqp.describe(reason)}"
        self._fail_pending(self._broken)
        if not self._closing and self._on_lost is not None:
            self._on_lost(reason)

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(Unconfirmed(why))
