"""
The one AMQP publisher of the suites, the benchmark's coordinator aside
(its load publisher is a raw-socket generator, L{bench.amqpub}) and the
demo (which publishes its sample stream through L{Publisher} too).

 - L{Publisher}: one txAMQP connection and channel; publishes BYTES (txAMQP
   mangles the length of non-ASCII str), declares and deletes exchanges and
   queues; optionally in confirm mode.
 - L{ConfirmingPublisher}: numbered events on a L{Publisher} in confirm mode
   with C{mandatory}, reconnecting by itself, that knows what became of
   every event (L{ACCEPTED}, L{RETURNED}, L{NACKED}, L{UNCONFIRMED},
   L{NOT_SENT}).

Both fail, never skip, when the broker is not there.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from txamqp.client import Closed, TwistedDelegate
from txamqp.content import Content
from txamqp.endpoint import AMQEndpoint
from txamqp.factory import AMQFactory
from txamqp.protocol import AMQClient

from peatio_ws.amqp import _txamqp as _txamqp_compat
from peatio_ws.config import Settings
from tests.support.broker import RABBIT_SPEC
from tests.support.waiting import sleep, until, within

__all__ = [
    "ACCEPTED",
    "NACKED",
    "NOT_SENT",
    "RETURNED",
    "UNCONFIRMED",
    "ConfirmingPublisher",
    "Publisher",
]


class Publisher:
    """One connection to RabbitMQ and its channel 1, for publishing and for declaring and deleting things."""

    def __init__(self, client: Any, channel: Any) -> None:
        self.client = client
        self.channel = channel

    @classmethod
    async def connect(
        cls,
        settings: Settings | None = None,
        *,
        factory: AMQFactory | None = None,
        confirm: bool = False,
        heartbeat: int = 0,
        seconds: float = 10.0,
    ) -> Publisher:
        """
        Connect to the broker of C{settings} (default: the local one, guest/guest)
        and open channel 1 (in confirm mode when C{confirm}); fails if the broker
        is not there. C{factory} builds the client (default: a quiet L{AMQFactory}
        on the settings' spec).
        """
        _txamqp_compat.install()
        s = settings if settings is not None else Settings()
        where = f"{s.rabbitmq_host}:{s.rabbitmq_port}"
        endpoint = AMQEndpoint(
            reactor,
            s.rabbitmq_host,
            s.rabbitmq_port,
            username=s.rabbitmq_user,
            password=s.rabbitmq_password,
            vhost=s.rabbitmq_vhost,
            heartbeat=heartbeat,
            timeout=5,
        )
        if factory is None:
            factory = AMQFactory(spec=s.amqp_spec)
            factory.noisy = False
        try:
            client = await within(endpoint.connect(factory), seconds, f"a connection to RabbitMQ at {where}")
        except Exception as e:
            raise AssertionError(f"RabbitMQ is not reachable at {where} ({s.rabbitmq_user}): {e}") from e
        try:
            channel = await client.channel(1)
            await channel.channel_open()
            if confirm:
                await channel.confirm_select()
        except Exception:
            client.transport.abortConnection()
            raise
        return cls(client, channel)

    @property
    def closed(self) -> bool:
        return bool(self.client.closed or self.client.transport is None or self.channel.closed)

    def publish(
        self,
        exchange: str,
        routing_key: str | bytes,
        body: bytes,
        *,
        mandatory: bool = False,
        properties: dict[str, Any] | None = None,
    ) -> Deferred[Any]:
        """Publish one message; in order with every other publish of this publisher."""
        if not isinstance(body, bytes):
            raise TypeError("publish bytes only: txAMQP corrupts frames of non-ASCII str")
        key = routing_key.encode() if isinstance(routing_key, str) else routing_key
        d: Deferred[Any] = self.channel.basic_publish(
            exchange=exchange.encode(),
            routing_key=key,
            content=Content(body, properties=properties or {}),
            mandatory=mandatory,
        )
        return d

    async def declare_exchange(self, exchange: str) -> None:
        """The events exchange as Peatio declares it: topic, not durable."""
        await self.channel.exchange_declare(exchange=exchange.encode(), type="topic", durable=False)

    async def delete_exchange(self, exchange: str) -> None:
        await self._on_own_channel(lambda ch: ch.exchange_delete(exchange=exchange.encode()))

    async def delete_queue(self, queue: str) -> None:
        await self._on_own_channel(lambda ch: ch.queue_delete(queue=queue.encode()))

    async def queue_exists(self, queue: str) -> bool:
        """Whether C{queue} exists (a passive declare, on a channel of its own)."""
        try:
            await self._on_own_channel(lambda ch: ch.queue_declare(queue=queue.encode(), passive=True))
        except Closed:
            return False
        return True

    async def redeclare_queue(self, queue: str, arguments: dict[str, Any]) -> Any:
        """
        Declare C{queue} as peatio-ws does, on a channel of its own. The
        broker refuses (406/405) when the existing queue differs, or is
        exclusive to another connection.
        """
        return await self._on_own_channel(
            lambda ch: ch.queue_declare(
                queue=queue.encode(), durable=False, exclusive=False, auto_delete=False, arguments=arguments
            )
        )

    async def _on_own_channel(self, op: Callable[[Any], Deferred[Any]]) -> Any:
        # A failing operation closes its channel; keep channel 1 for publishing.
        number = max(self.client.channels) + 1
        channel = await self.client.channel(number)
        await channel.channel_open()
        result = await op(channel)
        await channel.channel_close(reply_code=200, reply_text="done")
        return result

    async def close(self, *, force: bool = False) -> None:
        """
        Close cleanly and wait until the socket is gone (trial checks). With
        C{force}, a broker that does not answer is not an error: the
        connection is aborted.
        """
        if self.client.closed:
            return
        lost = self.client.disconnected.wait()
        try:
            await self.client.close(within=2)
        except Exception:
            if not force:
                raise
        try:
            await within(lost, 5, "the publisher's connection to close")
        except AssertionError:
            if not force:
                raise
            self.client.transport.abortConnection()


# ---------------------------------------------------------------------------
# Numbered events, and what became of each.

#: What became of a published event, as far as the publisher can know.
ACCEPTED = "accepted"  # confirmed, and routed (not returned): it is in our queue
RETURNED = "returned"  # unroutable at that moment (no binding): returned, never queued
NACKED = "nacked"  # the broker refused it
UNCONFIRMED = "unconfirmed"  # the connection went before the confirm: unknown
NOT_SENT = "not_sent"  # no connection to the broker at all: never sent


class _ConfirmDelegate(TwistedDelegate):
    """Hands confirms and returns to the publisher."""

    publisher: ConfirmingPublisher

    def basic_ack(self, ch: Any, msg: Any) -> None:
        self.publisher._confirmed(self.client, msg.delivery_tag, msg.multiple, ACCEPTED)

    def basic_nack(self, ch: Any, msg: Any) -> None:
        self.publisher._confirmed(self.client, msg.delivery_tag, msg.multiple, NACKED)

    def basic_return_(self, ch: Any, msg: Any) -> None:
        self.publisher._returned(msg)


class _ConfirmClient(AMQClient):
    publisher: ConfirmingPublisher

    def connectionLost(self, reason: Failure) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.publisher._lost(self)


class _ConfirmFactory(AMQFactory):
    protocol = _ConfirmClient
    noisy = False

    def __init__(self, publisher: ConfirmingPublisher) -> None:
        super().__init__(spec=RABBIT_SPEC)
        self.publisher = publisher

    def buildProtocol(self, addr: Any) -> _ConfirmClient:
        delegate = _ConfirmDelegate()
        delegate.publisher = self.publisher
        client = _ConfirmClient(delegate, vhost=self._vhost, spec=self._spec, heartbeat=self._heartbeat)
        client.publisher = self.publisher
        return client


class ConfirmingPublisher:
    """
    Publishes numbered events the way Peatio's producer does (topic exchange,
    declared non-durable on every connection), in confirm mode and with
    C{mandatory}, so every event ends as exactly one of L{ACCEPTED},
    L{RETURNED}, L{NACKED}, L{UNCONFIRMED} or L{NOT_SENT}. Reconnects by
    itself (every 0.25 s) after the broker goes away.
    """

    def __init__(self, exchange: str, settings: Settings | None = None) -> None:
        self.exchange = exchange
        #: Which broker (default: the local one, as L{Publisher.connect}).
        self.settings = settings
        self.outcome: dict[int, str] = {}
        #: Monotonic time of publishing, and of the confirm, per sequence number.
        self.published_at: dict[int, float] = {}
        self.confirmed_at: dict[int, float] = {}
        self.connects = 0
        self._publisher: Publisher | None = None
        self._pending: dict[int, int] = {}  # delivery tag -> seq
        self._next_tag = 1
        self._returned_seqs: set[int] = set()
        self._stopped = False
        self._connecting: Deferred[None] | None = None
        #: While True, the publisher does not reconnect (events are L{NOT_SENT}).
        self.hold_reconnect = False

    @property
    def connected(self) -> bool:
        return self._publisher is not None

    async def start(self, seconds: float = 15.0) -> None:
        await self._connect_until(seconds)

    async def _connect_once(self) -> None:
        publisher = await Publisher.connect(self.settings, factory=_ConfirmFactory(self), confirm=True)
        try:
            await publisher.declare_exchange(self.exchange)
        except Exception:
            publisher.client.transport.abortConnection()
            raise
        self._publisher = publisher
        self._pending = {}
        self._next_tag = 1
        self.connects += 1

    async def _connect_until(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopped:
            if self.hold_reconnect:
                deadline = time.monotonic() + seconds
                await sleep(0.05)
                continue
            try:
                await self._connect_once()
                return
            except Exception as e:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the publisher could not connect to RabbitMQ within {seconds} s: {e}") from e
                await sleep(0.25)

    def _current(self, client: Any) -> bool:
        return self._publisher is not None and client is self._publisher.client

    def _lost(self, client: _ConfirmClient) -> None:
        if not self._current(client):
            return
        for seq in self._pending.values():
            self.outcome[seq] = UNCONFIRMED
        self._pending = {}
        self._publisher = None
        if not self._stopped and self._connecting is None:
            self._connecting = Deferred.fromCoroutine(self._reconnect())

    async def _reconnect(self) -> None:
        try:
            await self._connect_until(120)
        finally:
            self._connecting = None

    def publish(self, seq: int, routing_key: str | bytes, body: bytes) -> bool:
        """Publish event C{seq}; False (and L{NOT_SENT}) when not connected."""
        self.published_at[seq] = time.monotonic()
        publisher = self._publisher
        if publisher is None or publisher.closed:
            self.outcome[seq] = NOT_SENT
            return False
        tag = self._next_tag
        self._next_tag += 1
        self._pending[tag] = seq
        self.outcome[seq] = UNCONFIRMED
        d = publisher.publish(self.exchange, routing_key, body, mandatory=True)
        # Fails only when the connection is going: the confirm never comes, and _lost says so.
        d.addErrback(lambda _: None)
        return True

    def _confirmed(self, client: Any, tag: int, multiple: bool, result: str) -> None:
        if not self._current(client):
            return
        tags = [t for t in self._pending if t <= tag] if multiple else [tag]
        now = time.monotonic()
        for t in tags:
            seq = self._pending.pop(t, None)
            if seq is None:
                continue
            self.confirmed_at[seq] = now
            if result == ACCEPTED and seq in self._returned_seqs:
                self.outcome[seq] = RETURNED
            else:
                self.outcome[seq] = result

    def _returned(self, msg: Any) -> None:
        try:
            seq = json.loads(msg.content.body)["seq"]
        except (ValueError, KeyError, TypeError):
            return
        self._returned_seqs.add(seq)

    @property
    def unsettled(self) -> int:
        return len(self._pending)

    def counts(self) -> Counter[str]:
        return Counter(self.outcome.values())

    def seqs(self, outcome: str) -> list[int]:
        return sorted(s for s, o in self.outcome.items() if o == outcome)

    async def settle(self, seconds: float = 15.0) -> None:
        """Until every publish on the current connection is confirmed."""
        await until(lambda: not self._pending, seconds, f"{len(self._pending)} publisher confirms")

    async def stop(self, delete_exchange: bool = True) -> None:
        """Close; by default delete the test's exchange first (it is not auto-deleted)."""
        self._stopped = True
        publisher, self._publisher = self._publisher, None
        if publisher is not None and delete_exchange:
            # Best effort: the broker may be gone.
            with contextlib.suppress(Exception):
                await within(publisher.channel.exchange_delete(exchange=self.exchange.encode()), 5, "exchange.delete")
        if publisher is not None:
            await publisher.close(force=True)
        if self._connecting is not None:
            await within(self._connecting, 130, "the publisher's reconnect loop to stop")
