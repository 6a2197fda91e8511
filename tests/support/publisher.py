"""
The suites' publishers, the benchmark's coordinator aside (its load
publisher is a raw-socket generator, L{bench.amqpub}) and the demo (which
publishes its sample stream through L{Publisher} too). Every message they
publish goes through the project's one AMQP publisher,
L{peatio_ws.amqp.Publisher} (its connection, frames, confirms and returns).

 - L{Publisher}: a L{peatio_ws.amqp.Publisher} publishing BYTES to any
   exchange (optionally in confirm mode), plus what the tests need besides:
   declaring and deleting exchanges and queues (small helpers on the
   library publisher's txAMQP client).
 - L{ConfirmingPublisher}: numbered events on a L{peatio_ws.amqp.Publisher}
   in confirm mode with C{mandatory}, reconnecting by itself, that knows
   what became of every event (L{ACCEPTED}, L{RETURNED}, L{NACKED},
   L{UNCONFIRMED}, L{NOT_SENT}).

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
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from peatio_ws.amqp import Nacked, NotConnected, PublisherError, Unconfirmed
from peatio_ws.amqp import Publisher as AmqpPublisher
from peatio_ws.amqp._txamqp import Closed
from peatio_ws.config import Settings
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

#: The AMQP basic properties L{Publisher.publish} takes (as txAMQP named them).
_PROPERTIES = frozenset({"content-type", "delivery-mode"})


async def _connect(settings: Settings | None, seconds: float, **options: Any) -> AmqpPublisher:
    """A L{peatio_ws.amqp.Publisher}; an AssertionError when the broker is not reachable."""
    s = settings if settings is not None else Settings()
    where = f"{s.rabbitmq_host}:{s.rabbitmq_port}"
    try:
        return await AmqpPublisher.connect(reactor, settings=s, timeout=seconds, name="peatio-ws tests", **options)
    except PublisherError as e:
        if e.step != "connect":
            raise
        raise AssertionError(f"RabbitMQ is not reachable at {where} ({s.rabbitmq_user}): {e}") from e


class Publisher:
    """One connection to RabbitMQ and its channel 1, for publishing and for declaring and deleting things."""

    def __init__(self, publisher: AmqpPublisher) -> None:
        #: The library publisher every message goes through.
        self.publisher = publisher

    @classmethod
    async def connect(
        cls,
        settings: Settings | None = None,
        *,
        confirm: bool = False,
        heartbeat: int = 0,
        seconds: float = 10.0,
    ) -> Publisher:
        """
        Connect to the broker of C{settings} (default: the local one, guest/guest)
        and open channel 1 (in confirm mode when C{confirm}); fails if the broker
        is not there. Declares nothing (L{declare_exchange}).
        """
        # Exchange "": the default one, never declared; every publish names its exchange.
        publisher = await _connect(settings, seconds, exchange="", declare=False, confirms=confirm, heartbeat=heartbeat)
        return cls(publisher)

    @property
    def client(self) -> Any:
        """The txAMQP client (for what this class does not do)."""
        return self.publisher.client

    @property
    def channel(self) -> Any:
        """Channel 1, the publishing one (for what this class does not do)."""
        return self.publisher.channel

    @property
    def closed(self) -> bool:
        return not self.publisher.connected

    def publish(
        self,
        exchange: str,
        routing_key: str | bytes,
        body: bytes,
        *,
        mandatory: bool = False,
        properties: dict[str, Any] | None = None,
    ) -> Deferred[Any]:
        """
        Publish one message; in order with every other publish of this
        publisher. C{properties}: C{content-type} and C{delivery-mode} (2 is
        persistent) only. Fails (the Deferred) when not connected.
        """
        if not isinstance(body, bytes):
            raise TypeError("publish bytes only: txAMQP corrupts frames of non-ASCII str")
        props = properties or {}
        unknown = set(props) - _PROPERTIES
        if unknown:
            raise ValueError(f"unsupported properties: {sorted(unknown)}")
        try:
            return self.publisher.publish(
                routing_key,
                body,
                exchange=exchange,
                mandatory=mandatory,
                content_type=props.get("content-type"),
                persistent=props.get("delivery-mode") == 2,
            )
        except NotConnected:
            return fail()

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
        gone = self.client.closed
        try:
            await self.publisher.close()
        except PublisherError:
            if not (force or gone):
                raise


# ---------------------------------------------------------------------------
# Numbered events, and what became of each.

#: What became of a published event, as far as the publisher can know.
ACCEPTED = "accepted"  # confirmed, and routed (not returned): it is in our queue
RETURNED = "returned"  # unroutable at that moment (no binding): returned, never queued
NACKED = "nacked"  # the broker refused it
UNCONFIRMED = "unconfirmed"  # the connection went before the confirm: unknown
NOT_SENT = "not_sent"  # no connection to the broker at all: never sent


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
        self._publisher: AmqpPublisher | None = None
        #: Sequence numbers published on the current connection and not confirmed yet.
        self._pending: set[int] = set()
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
        # The connection may go while connecting: then there is no publisher to lose yet.
        made: list[AmqpPublisher] = []
        publisher = await _connect(
            self.settings,
            5.0,
            exchange=self.exchange,
            confirms=True,
            on_return=self._returned,
            on_lost=lambda reason: self._lost(made[0] if made else None, reason),
        )
        made.append(publisher)
        self._publisher = publisher
        self._pending = set()
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

    def _lost(self, publisher: AmqpPublisher | None, reason: Failure) -> None:
        # The library failed every pending confirm (Unconfirmed) just before.
        if publisher is None or publisher is not self._publisher:
            return
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
        if publisher is None:
            self.outcome[seq] = NOT_SENT
            return False
        try:
            d = publisher.publish(routing_key, body, mandatory=True, content_type=None)
        except NotConnected:
            self.outcome[seq] = NOT_SENT
            return False
        self._pending.add(seq)
        self.outcome[seq] = UNCONFIRMED
        d.addCallbacks(self._confirmed, self._not_confirmed, callbackArgs=(seq,), errbackArgs=(seq,))
        return True

    def _confirmed(self, _: None, seq: int) -> None:
        self._pending.discard(seq)
        self.confirmed_at[seq] = time.monotonic()
        self.outcome[seq] = RETURNED if seq in self._returned_seqs else ACCEPTED

    def _not_confirmed(self, failure: Failure, seq: int) -> None:
        self._pending.discard(seq)
        if failure.check(Nacked):
            self.confirmed_at[seq] = time.monotonic()
            self.outcome[seq] = NACKED
        elif failure.check(Unconfirmed):
            self.outcome[seq] = UNCONFIRMED
        else:
            failure.raiseException()

    def _returned(self, routing_key: bytes, body: bytes, reply_code: int, reply_text: str) -> None:
        try:
            seq = json.loads(body)["seq"]
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
            # Closing always ends with the connection gone (aborted if need be).
            with contextlib.suppress(PublisherError):
                await publisher.close()
        if self._connecting is not None:
            await within(self._connecting, 130, "the publisher's reconnect loop to stop")
