# -*- test-case-name: tests.unit.test_amqp,tests.integration.test_amqp_broker -*-
"""
The RabbitMQ consumer: private events in, fan-out to the member's connections.

Peatio publishes private events on a topic exchange with the routing key
C{private.<uid>.<event>}. Each process owns one queue, bound with
C{private.<uid>.*} while member C{<uid>} has a connection here, so a process
only receives the events of its own members (SPEC §4).

Which bindings the queue should have is L{bindings.Bindings}' bookkeeping.
With RABBITMQ_HANDOVER_FILE a clean stop leaves the queue, bindings and
all, to the next process, which takes it over (L{handover}) instead of
binding every member again in the middle of the reconnect storm.
The connection is kept by Twisted's C{ClientService}, through
L{_clientservice.GuardedEndpoint}, which makes a failed attempt safe with it.

The hot path bypasses txAMQP's per-frame Deferred machinery, which costs
about 450 µs per message: L{_txamqp.DeliveryClient}, with
L{_wire.DeliveryReader}, parses the frames of each C{basic.deliver}
synchronously as they arrive, hands the message to
L{EventConsumer._handle_delivery}, and acknowledges everything handled in
one read with a single C{basic.ack(multiple=True)}. The members' binds and
unbinds take a fast path of their own (L{_txamqp.DeliveryClient.send_bindings}):
written as frames, up to L{BIND_BATCH} in flight, their answers picked out
before txAMQP sees them. Everything else (handshake, declares, the set-up's
own binds, heartbeats, closes) goes through txAMQP's normal path.

A broker link that is up but silent (a half-open TCP connection, a frozen
broker) would only be noticed by the heartbeat check, after up to three
heartbeats. So every HEALTH_PROBE_INTERVAL, unless one is still out, the
consumer makes one cheap round trip on the connection: a passive
C{queue.declare} of its own queue, on a channel of its own (the broker only
looks the queue up; consumption is not touched). Unanswered for
HEALTH_PROBE_TIMEOUT, the connection is reported down and dropped at once,
so the reconnect starts then rather than a minute later.
"""

from __future__ import annotations

import re
import secrets
import socket
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING, Any, Literal

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IProtocol, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from peatio_ws.amqp import _clientservice, _txamqp
from peatio_ws.amqp._txamqp import Closed, DeliveryClient, describe
from peatio_ws.amqp.bindings import Bindings
from peatio_ws.amqp.handover import Handover, HandoverError, Shape, leave, take
from peatio_ws.amqp.nodes import NodeRotation
from peatio_ws.amqp.routing import (
    ALL_PRIVATE_BINDING,
    binding_key,
    event_label,
    parse_routing_key,
    valid_json,
    valid_uid,
)
from peatio_ws.config import Settings
from peatio_ws.deadlines import LateCall, add_late_timeout
from peatio_ws.logs import LineThrottle, logger
from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry
from peatio_ws.streams.names import PUBLIC_BINDING, parse_public_key

if TYPE_CHECKING:
    from peatio_ws.streams import PublicHub

__all__ = ["BIND_BATCH", "CLEAN_CLOSE_TIMEOUT", "CONNECT_TIMEOUT", "SETUP_TIMEOUT", "STOP_TIMEOUT", "EventConsumer"]

log = logger("peatio_ws.amqp")

#: The channel everything of ours happens on (0 is the connection's own).
CHANNEL = 1
#: The canary binding's routing key is this and the queue's name: a key no producer uses.
CANARY_PREFIX = b"peatio-ws.canary."
#: A channel for checking, on reconnect, whether the queue survived: the
#: broker closes it (404) when the queue is gone, which must not count as a failure.
PROBE_CHANNEL = 2
#: The channel of the health probe (a passive declare of our queue every
#: HEALTH_PROBE_INTERVAL), opened on the first probe of each connection.
HEALTH_CHANNEL = 3
#: The channel of the members' binds and unbinds. Not CHANNEL: RabbitMQ does
#: a channel's work in order, so deliveries would wait behind up to
#: BIND_BATCH binds there (about a second each thousand), and in a reconnect
#: storm there are thousands.
BIND_CHANNEL = 4
#: Seconds for TCP connect plus the AMQP handshake and login.
CONNECT_TIMEOUT = 30.0
#: Seconds for declaring, binding and starting to consume after login.
SETUP_TIMEOUT = 30.0
#: Seconds a clean close (cancel, delete, close) may take on stop before the
#: connection is closed without it. RabbitMQ takes seconds to delete a queue
#: with thousands of bindings; it finishes the delete by itself.
CLEAN_CLOSE_TIMEOUT = 2.0
#: Seconds the whole stop may take: the clean close, then the TCP close,
#: aborted at this bound. Under the service's STOP_STEP_TIMEOUT, so the
#: consumer says why it did not wait, not the service that it went on.
STOP_TIMEOUT = 2.5
#: Binds/unbinds in flight at once (pipelined on the channel).
BIND_BATCH = 1000
#: Of those, unbinds at most: binds go first, and a bind sent after this
#: many unbinds waits for them only (a tenth of a second), not for a
#: thousand. Enough to keep RabbitMQ's binding work going.
UNBIND_BATCH = 100
#: What stands for the covering binding in L{_Session.pending} (no uid is empty).
_COVER = ""


def _queue_name() -> str:
    """
    C{peatio-ws.<hostname>.<random hex>}: chosen once per process, so a
    reconnect finds the same queue (and the events that arrived meanwhile).
    """
    host = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname()).strip("-")[:64] or "host"
    return f"peatio-ws.{host}.{secrets.token_hex(8)}"


class _Session:
    """One established connection: its client, channel, and the binds and unbinds in flight on it."""

    def __init__(self, client: DeliveryClient, channel: Any) -> None:
        self.client = client
        self.channel = channel
        #: Members whose bind (True) or unbind (False) was sent and not answered yet, oldest first
        #: (L{_COVER} for the covering binding's).
        self.pending: deque[tuple[str, bool]] = deque()
        #: The covering binding (L{ALL_PRIVATE_BINDING}) on this connection's queue: at most
        #: one bind or unbind of it is in flight, while "binding" or "unbinding".
        self.cover: Literal["off", "binding", "on", "unbinding"] = "off"
        #: Fired once every member's events flow (the set-up waits for it), failed when the connection goes.
        self.drained: Deferred[None] | None = None
        #: The health probe's channel, once opened.
        self.health_channel: Any = None

    @property
    def member_ops(self) -> int:
        """Members' binds and unbinds in flight (the covering binding's one, if any, left out)."""
        return len(self.pending) - (self.cover == "binding" or self.cover == "unbinding")


# ---------------------------------------------------------------------------


class EventConsumer(Service):
    """
    Consume this process's queue and hand each private event to the
    registry; keep the queue's bindings in step with the members connected.

    C{reactor} must provide IReactorTCP as well as IReactorTime (a
    MemoryReactorClock in tests); the global reactor when not given.
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        metrics: Metrics,
        reactor: IReactorTime | None = None,
        hub: PublicHub | None = None,
    ) -> None:
        _txamqp.install()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        assert reactor is not None
        self._reactor: IReactorTime = reactor
        self._settings = settings
        self._registry = registry
        self._metrics = metrics
        #: Where public events go (SPEC §7); None: they are not consumed at all.
        self._hub = hub
        # Fails start-up with one line naming AMQP_SPEC if the spec is unusable.
        _txamqp.load_spec(settings.amqp_spec)

        self._exchange = settings.rabbitmq_events_exchange.encode("utf-8")
        self._expires_ms = max(1, min(int(settings.rabbitmq_queue_expires * 1000), 2**31 - 1))
        #: What the client tells the broker about itself; its connection_name is the queue's name.
        self._client_properties: dict[str, Any] = {"product": "peatio-ws"}
        self.queue_name = ""
        self._use_queue(_queue_name())
        #: Whether the queue was declared on an earlier connection (so it may have gone since).
        self._declared = False
        #: RABBITMQ_HANDOVER_FILE: where a clean stop leaves the queue to the next process.
        self._handover_path = settings.rabbitmq_handover_file
        #: A queue left by the previous process, taken at start, until the first connection takes it over.
        self._handed: Handover | None = None
        #: Connections were carried across a restart in place (L{carried_over}), counting on that queue.
        self._carried = False

        self._bindings = Bindings(reactor, settings.rabbitmq_unbind_delay, self._kick)
        #: RABBITMQ_PRIVATE_BINDING=all: one binding for every private event, none per member.
        self._bind_all = settings.rabbitmq_private_binding == "all"
        #: Logins waiting for their members' bindings at which the covering
        #: binding goes up (L{_cover}); 0: never, and with the binding for all.
        self._cover_at = 0 if self._bind_all else settings.rabbitmq_storm_binding_at
        #: Whether the covering binding may be on the queue: bound on a connection since lost,
        #: with no unbind-ok since (the queue, and so the binding, can outlive the connection).
        self._cover_left = False

        self._session: _Session | None = None
        self._connection: DeliveryClient | None = None
        self._consuming = False
        self._stopped = False
        #: While a clean stop waits for queue.delete-ok: how many member bindings the queue had.
        self._deleting: int | None = None
        self._waiters: list[Deferred[None]] = []
        #: uid -> who waits for its binding (L{events_flowing}).
        self._flowing: dict[str, list[Deferred[None]]] = {}

        self._counters: dict[str, tuple[Any, Any]] = {}
        #: Events received and copies delivered in the current read, by event:
        #: the counters are updated once per read, not twice per event.
        self._read_counts: dict[str, list[int]] = {}
        #: Events of the current read written to at least one connection, and when that read arrived.
        self._read_delivered = 0
        self._read_received = 0.0
        self._dropped_bad_key = metrics.events_dropped.labels(reason="bad_routing_key")
        self._dropped_malformed = metrics.events_dropped.labels(reason="malformed")
        self._dropped_no_connection = metrics.events_dropped.labels(reason="no_connection")
        self._dropped_error = metrics.events_dropped.labels(reason="error")
        self._malformed_throttle = LineThrottle(self._reactor)

        self._probe_timeout = settings.health_probe_timeout
        self._prober = LoopingCall(self._probe)
        self._prober.clock = reactor
        #: The session the one outstanding probe was sent on.
        self._probe_session: _Session | None = None
        self._probe_late_call: LateCall | None = None

        self._backoff = backoffPolicy(initialDelay=0.5, maxDelay=10.0, factor=1.5)
        factory = _txamqp.DeliveryClientFactory(
            settings.amqp_spec,
            reactor,
            self._client_properties,
            self._built,
        )
        self._nodes = NodeRotation(
            [
                (
                    f"{host}:{port}",
                    _txamqp.endpoint(
                        reactor,
                        host,
                        port,
                        user=settings.rabbitmq_user,
                        password=settings.rabbitmq_password,
                        vhost=settings.rabbitmq_vhost,
                        heartbeat=settings.rabbitmq_heartbeat,
                        timeout=CONNECT_TIMEOUT,
                    ),
                )
                for host, port in settings.rabbitmq_nodes
            ]
        )
        self._service = ClientService(
            _clientservice.GuardedEndpoint(
                self._nodes,
                reactor,
                CONNECT_TIMEOUT,
                self._attempting,
                self._attempt_failed,
                settings.rabbitmq_host,
            ),
            factory,
            retryPolicy=self._retry_delay,
            clock=reactor,
            prepareConnection=self._prepare_connection,
        )
        metrics.broker_up.set(0)
        metrics.bindings.set(0)
        registry.add_observer(self)

    # -- public state --------------------------------------------------------

    @property
    def up(self) -> bool:
        """Connected to RabbitMQ and consuming (for /health)."""
        return self._consuming

    @property
    def bound(self) -> frozenset[str]:
        """The members whose binding is on the queue (as far as we know)."""
        return frozenset(self._bindings.bound)

    def carried_over(self) -> None:
        """
        Connections were carried across a restart in place (L{peatio_ws.reexec})
        before the first connection: their members count on the queue left
        for this process. Should it not be taken over (gone, used by another
        process, its file unreadable, made with other settings), they are
        told (1012), as for any queue lost (SPEC §8).
        """
        self._carried = True

    def when_consuming(self) -> Deferred[None]:
        """
        A Deferred that fires once the consumer is consuming (at once if it
        is); it fails with CancelledError if the service stops first.
        """
        if self._consuming:
            return succeed(None)
        d: Deferred[None] = Deferred(self._forget_waiter)
        self._waiters.append(d)
        return d

    def _forget_waiter(self, d: Deferred[None]) -> None:
        if d in self._waiters:
            self._waiters.remove(d)

    # -- service -----------------------------------------------------------

    def _use_queue(self, name: str) -> None:
        """Make C{name} this process's queue (the consumer tag and the canary binding follow it)."""
        self.queue_name = name
        self._queue = name.encode("utf-8")
        self._consumer_tag = self._queue
        self._canary = CANARY_PREFIX + self._queue
        self._client_properties["connection_name"] = name

    def _shape(self) -> Shape:
        """What this process makes its queue with: a queue left with another shape is not taken over."""
        s = self._settings
        return Shape(
            exchange=s.rabbitmq_events_exchange,
            vhost=s.rabbitmq_vhost,
            queue_type=s.rabbitmq_queue_type,
            expires_ms=self._expires_ms,
            private_binding=s.rabbitmq_private_binding,
            public=self._hub is not None,
        )

    def _take_handover(self, path: str) -> None:
        """At the first start: the queue the previous process left at C{path}, if any, becomes ours."""
        try:
            handed = take(path)
        except HandoverError as e:
            log.warn(
                "RABBITMQ_HANDOVER_FILE {path}: {problem}; starting with a new queue",
                path=path,
                problem=str(e),
            )
            return
        if handed is None:
            return
        ours = self._shape()
        if handed.shape != ours:
            differ = handed.shape.differences(ours)
            log.info(
                "RabbitMQ: not taking over queue {queue} from RABBITMQ_HANDOVER_FILE: it was made with another "
                "{differ}; starting with a new queue (RabbitMQ deletes that one once unused for its x-expires)",
                queue=handed.queue,
                differ=", ".join(differ),
            )
            return
        self._use_queue(handed.queue)
        self._handed = handed

    def startService(self) -> None:
        """Start connecting (and reconnecting); returns at once."""
        super().startService()
        if self._handover_path is not None and not self._declared and self._handed is None:
            self._take_handover(self._handover_path)
        self._stopped = False
        self._service.startService()
        self._prober.start(self._settings.health_probe_interval, now=False)

    def stopService(self) -> Deferred[None]:
        """
        Cancel the consumer, delete the queue, close the channel and the
        connection, and stop reconnecting; never takes more than
        STOP_TIMEOUT.
        """
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopped = True
        if self._prober.running:
            self._prober.stop()
        self._forget_probe()
        self._bindings.stop()
        self._give_back()
        session = self._session
        started = self._reactor.seconds()
        if session is not None and self._consuming:
            closing = Deferred.fromCoroutine(self._close(session))
            add_late_timeout(closing, CLEAN_CLOSE_TIMEOUT, self._reactor)
            try:
                await closing
            except Exception as e:
                if self._deleting is not None and isinstance(e, DeferredTimeout):
                    log.info(
                        "RabbitMQ: still deleting {queue} and its {bindings} bindings after {timeout} s; closing the "
                        "connection without waiting (RabbitMQ finishes the delete by itself)",
                        queue=self.queue_name,
                        bindings=self._deleting,
                        timeout=CLEAN_CLOSE_TIMEOUT,
                    )
                else:
                    log.warn(
                        "RabbitMQ: clean close did not finish ({reason}); closing the connection",
                        reason=describe(e),
                    )
                self._deleting = None
        elif session is not None and self._leave_queue(session):
            # Stopped while starting to consume (a second reload at once): the
            # queue is declared and bound, nothing of it delivered yet; the
            # next process takes it over. The connection's loss closes it here.
            session.client.stop_handling()
        stopping = self._service.stopService()
        connection = self._connection
        left = max(0.0, STOP_TIMEOUT - (self._reactor.seconds() - started))
        fallback = LateCall(self._reactor, left, connection.abort) if connection is not None else None
        try:
            await stopping
        finally:
            if fallback is not None:
                fallback.cancel()
            self._set_down()
            self._release_flowing()
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.errback(CancelledError("the RabbitMQ consumer stopped"))
            log.info("RabbitMQ: consumer stopped")

    async def _close(self, session: _Session) -> None:
        """
        The clean way out: nothing more is delivered, and the queue is
        deleted or left to the next process. It is left before anything is
        asked of the broker: while the process tells thousands of clients
        1001 its reactor reads the broker's answers late, and a handover
        that waited for them could miss the clean close's bound.
        """
        channel = session.channel
        # A queue left needs nothing but the close, one round trip: the broker
        # cancels the consumer and puts back in the queue, for the next
        # process, what came after the ack (handed to no client here: the
        # clients are told 1001, or carried over by a restart in place).
        kept = self._leave_queue(session)
        if kept:
            # Whatever comes after the last ack waits in the queue for the next process.
            session.client.stop_handling()
        else:
            await channel.basic_cancel(consumer_tag=self._consumer_tag)
        # Everything handled (before the cancel-ok, if one was asked): ack it now, not when the interval is up.
        session.client.flush_ack()
        self._consuming = False
        self._metrics.broker_up.set(0)
        if not kept:
            await self._delete_queue(channel)
            await channel.channel_close(reply_code=200, reply_text="peatio-ws stopping")
        connection = await session.client.channel(0)
        await connection.connection_close(reply_code=200, reply_text="peatio-ws stopping")

    def _leave_queue(self, session: _Session) -> bool:
        """
        With RABBITMQ_HANDOVER_FILE: keep the queue and its bindings for the
        next process, and say so in the file (the members bound, and those
        whose bind is in flight: their binding may be there). False: the
        queue is to be deleted (no file, or it could not be written).
        """
        path = self._handover_path
        if path is None:
            return False
        members = set(self._bindings.bound)
        members.update(uid for uid, bind in session.pending if bind and uid != _COVER)
        try:
            leave(path, self.queue_name, self._shape(), members, self._cover_left, self._reactor.seconds())
        except HandoverError as e:
            log.warn(
                "RABBITMQ_HANDOVER_FILE {path}: {problem}; deleting queue {queue} instead",
                path=path,
                problem=str(e),
                queue=self.queue_name,
            )
            return False
        log.info(
            "RabbitMQ: left queue {queue} and its {bindings} member bindings to the next process "
            "(RABBITMQ_HANDOVER_FILE {path}); unused, RabbitMQ deletes it after {expires:g} s",
            queue=self.queue_name,
            bindings=len(members),
            path=path,
            expires=self._settings.rabbitmq_queue_expires,
        )
        return True

    def _give_back(self) -> None:
        """
        Stopping before the queue handed over was taken over (RabbitMQ was
        unreachable): leave it, as it was left, to the next process.
        """
        handed, self._handed = self._handed, None
        if handed is None or self._handover_path is None:
            return
        try:
            leave(self._handover_path, handed.queue, handed.shape, handed.members, handed.cover, handed.left_at)
        except HandoverError as e:
            log.warn("RABBITMQ_HANDOVER_FILE {path}: {problem}", path=self._handover_path, problem=str(e))
            return
        log.info(
            "RabbitMQ: queue {queue} was not taken over yet; left to the next process as it was",
            queue=handed.queue,
        )

    async def _delete_queue(self, channel: Any) -> None:
        """
        The process is going away; so are its members' connections. Without
        this the queue would collect their events until x-expires.
        """
        self._deleting = len(self._bindings.bound)
        await channel.queue_delete(queue=self._queue)
        self._deleting = None
        self._bindings.unbound_all()
        self._cover_left = False
        self._metrics.bindings.set(0)

    # -- connecting ----------------------------------------------------------

    def _built(self, client: DeliveryClient) -> None:
        client.lost_listener = self._connection_lost
        client.channel_listener = self._channel_failed
        client.cancel_listener = self._cancelled
        self._connection = client

    def _attempting(self) -> None:
        host, _, port = self._nodes.upcoming.rpartition(":")
        log.info(
            "RabbitMQ: connecting to {host}:{port} (vhost {vhost})",
            host=host,
            port=int(port),
            vhost=self._settings.rabbitmq_vhost,
        )

    def _attempt_failed(self, failure: Failure) -> None:
        if self._stopped:
            return  # cancelled by stopService
        log.warn("RabbitMQ: connection attempt failed: {reason}", reason=describe(failure))

    def _retry_delay(self, attempt: int) -> float:
        delay = self._backoff(attempt)
        if not self._stopped:
            log.info("RabbitMQ: reconnect scheduled in {delay:.1f} s (attempt {attempt})", delay=delay, attempt=attempt)
        return delay

    def _prepare_connection(self, proxy: IProtocol) -> Deferred[None]:
        client: DeliveryClient = proxy.unwrap()  # type: ignore[attr-defined]
        d = Deferred.fromCoroutine(self._set_up(client))
        d.addTimeout(SETUP_TIMEOUT, self._reactor)
        d.addErrback(self._set_up_failed, client)
        return d

    async def _set_up(self, client: DeliveryClient) -> None:
        """Declare, bind every member, consume: run on every (re)connection."""
        s = self._settings
        channel = await client.channel(CHANNEL)
        await channel.channel_open()
        # As Peatio declares it: a topic exchange, neither durable nor auto-deleted.
        await channel.exchange_declare(exchange=self._exchange, type="topic", durable=False)
        handed = self._handed
        adopted: frozenset[str] | None = None
        if handed is not None:
            adopted = await self._take_over(client, handed)
            if adopted is None or self._bind_all:
                self._handed = None  # else once its bindings are taken over, below
        elif self._declared and await self._queue_consumers(client) is None:
            self._events_lost()
        if self._carried:
            self._carried = False
            if adopted is None:
                # The queue left was not taken over (gone, in use, not readable, made otherwise):
                # what was published while the program restarted was to wait there.
                self._events_lost()
        # Not exclusive, not auto-delete: it outlives a short disconnect, and
        # x-expires removes it once no one has used it for a while. A quorum
        # queue (durable, as RabbitMQ requires) also outlives a broker restart
        # and the loss of a cluster node, with its messages.
        quorum = s.rabbitmq_queue_type == "quorum"
        arguments: dict[str, Any] = {"x-expires": self._expires_ms}
        if quorum:
            arguments["x-queue-type"] = "quorum"
        await channel.queue_declare(
            queue=self._queue,
            durable=quorum,
            exclusive=False,
            auto_delete=False,
            arguments=arguments,
        )
        self._declared = True
        # The canary: a binding no producer uses, whose absence says the others went too (_queue_consumers).
        await channel.queue_bind(queue=self._queue, exchange=self._exchange, routing_key=self._canary)
        if self._hub is not None:
            # Every public event, from start-up, whoever is subscribed: the order-book stores stay warm.
            await channel.queue_bind(queue=self._queue, exchange=self._exchange, routing_key=PUBLIC_BINDING)
        if self._bind_all:
            # Every private event, whoever it is for: those of members connected elsewhere are dropped here.
            await channel.queue_bind(queue=self._queue, exchange=self._exchange, routing_key=ALL_PRIVATE_BINDING)
        await channel.basic_qos(prefetch_count=s.rabbitmq_prefetch)
        if not self._bind_all:
            binds = await client.channel(BIND_CHANNEL)
            await binds.channel_open()
        session = _Session(client, channel)
        self._session = session
        # Every member connected now (some may have joined before we were
        # the registry's observer) plus those within their unbind delay.
        # The queue may be new (it expired): bind every member again; bindings
        # of members who left while we were away are removed.
        if not self._bind_all:
            client.enable_bindings(BIND_CHANNEL, lambda answers: self._answered(session, answers))
            members = (uid for uid in self._registry.members() if valid_uid(uid))
            if handed is not None and adopted is not None:
                self._handed = None
                self._bindings.adopt((uid for uid in adopted if valid_uid(uid)), members)
                self._metrics.bindings.set(len(self._bindings.bound))
                self._cover_left = self._cover_left or handed.cover
                for uid in [uid for uid in self._flowing if self._bindings.flowing(uid)]:
                    self._release_flowing(uid)
            else:
                self._bindings.reconnected(members)
            if self._cover_at and max(len(self._flowing), self._bindings.unbound()) >= self._cover_at:
                # Many to bind (a queue that was new, a storm during the outage):
                # consume once the covering binding is up; the members' follow.
                self._cover(session, True)
            elif self._cover_left:
                # The last connection went with the covering binding up, and the
                # queue may have kept it: gone, or the queue gets every private event.
                self._send_cover(session, False)
                log.info(
                    "RabbitMQ: unbinding {key}, which the last connection may have left on {queue}",
                    key=ALL_PRIVATE_BINDING.decode(),
                    queue=self.queue_name,
                )
            self._kick()
            if not self._all_flowing(session):
                session.drained = Deferred()
                await session.drained
        client.enable_fast_path(CHANNEL, self._handle_delivery, self._read_done, prefetch=s.rabbitmq_prefetch)
        await channel.basic_consume(queue=self._queue, consumer_tag=self._consumer_tag, no_ack=False)
        if self._session is not session:
            raise Closed("connection lost while starting to consume")
        _clientservice.accept(client)
        self._consuming = True
        self._metrics.broker_up.set(1)
        self._metrics.broker_reconnects.inc()
        log.info(
            "RabbitMQ: connected and consuming from {queue} ({bindings} bindings)",
            queue=self.queue_name,
            bindings=len(self._bindings.bound),
        )
        if self._bindings.dirty:
            self._kick()
        if self._bind_all:
            self._release_flowing()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    async def _take_over(self, client: DeliveryClient, handed: Handover) -> frozenset[str] | None:
        """
        The queue the previous process left (RABBITMQ_HANDOVER_FILE): its
        members if it is there as left, with no consumer; else None, and
        this process starts as if there had been no handover.
        """
        consumers = await self._queue_consumers(client)
        if consumers is None:
            log.info(
                "RabbitMQ: queue {queue}, left by the previous process, is gone or lost its bindings; "
                "declaring it again and binding each member",
                queue=self.queue_name,
            )
            return None
        if consumers:
            log.warn(
                "RabbitMQ: queue {queue} from RABBITMQ_HANDOVER_FILE has {consumers} consumer(s): another process "
                "uses it (two processes with one RABBITMQ_HANDOVER_FILE?); starting with a new queue",
                queue=self.queue_name,
                consumers=consumers,
            )
            self._use_queue(_queue_name())
            return None
        log.info(
            "RabbitMQ: took over queue {queue} from the previous process (left {age:.1f} s ago, {bindings} member "
            "bindings); those not back within {delay:g} s are unbound",
            queue=self.queue_name,
            age=max(0.0, self._reactor.seconds() - handed.left_at),
            bindings=len(handed.members),
            delay=self._bindings.handed_delay,
        )
        return handed.members

    async def _queue_consumers(self, client: DeliveryClient) -> int | None:
        """
        Whether our queue, and its bindings, are as we left them, checked on
        a channel of its own: a passive declare, then a probe published with
        C{mandatory} to our own canary binding. The queue can outlive its
        bindings: a quorum queue survives a broker restart, the non-durable
        exchange (as Peatio declares it) and every binding to it do not, and
        events published before we bind again are dropped by the broker.
        None when either is gone, else how many consumers the queue has.
        """
        probe = await client.channel(PROBE_CHANNEL)
        await probe.channel_open()
        try:
            ok = await probe.queue_declare(queue=self._queue, passive=True)
        except Closed as e:
            reason = e.args[0] if e.args else None
            if getattr(reason, "reply_code", None) == 404:
                return None
            raise
        client.returned.clear()
        client.probe_route(PROBE_CHANNEL, self._exchange, self._canary)
        # The broker returns an unroutable probe before it answers this.
        await probe.queue_declare(queue=self._queue, passive=True)
        await probe.channel_close(reply_code=200, reply_text="ok")
        if self._canary in client.returned:
            log.warn(
                "RabbitMQ: queue {queue} survived but not its bindings (the exchange was deleted or the broker "
                "restarted)",
                queue=self.queue_name,
            )
            return None
        return int(ok.consumer_count)

    def _set_up_failed(self, failure: Failure, client: DeliveryClient) -> Failure:
        if self._session is not None and self._session.client is client:
            self._session = None
        client.abort()
        if not self._stopped:
            log.warn("RabbitMQ: set-up failed: {reason}", reason=describe(failure))
        return failure

    def _connection_lost(self, client: DeliveryClient, reason: Failure) -> None:
        if self._connection is client:
            self._connection = None
        session = self._session
        if session is None or session.client is not client:
            return
        self._session = None
        self._bindings_lost(session, reason)
        if self._probe_session is session:
            self._forget_probe()
        was_up = self._consuming
        self._set_down()
        if not was_up:
            return  # during set-up: _set_up_failed says why
        if self._stopped:
            log.info("RabbitMQ: connection closed")
        else:
            log.warn(
                "RabbitMQ: connection lost: {reason}",
                reason=describe(client.close_reason if client.close_reason is not None else reason),
            )

    def _events_lost(self) -> None:
        """
        The queue was gone (deleted, expired, the broker restarted or lost
        it): events for the members here may have been lost. Never silently
        (SPEC §8): every authenticated connection is closed with 1012, so its
        client reconnects and resyncs; every order book waits for its next
        snapshot. The queue is then declared again and every binding restored.
        """
        self._metrics.queue_lost.inc()
        closed = self._registry.events_lost()
        if self._hub is not None:
            self._hub.market_lost()
        log.warn(
            "RabbitMQ: queue {queue} was gone (deleted, unused for RABBITMQ_QUEUE_EXPIRES={expires:g} s, or lost "
            "by the broker): events published meanwhile may be lost; closed {closed} authenticated connections "
            "with 1012 and declaring it again",
            queue=self.queue_name,
            expires=self._settings.rabbitmq_queue_expires,
            closed=closed,
        )

    def _cancelled(self, client: DeliveryClient, consumer_tag: bytes) -> None:
        """
        The broker cancelled our consumer (consumer_cancel_notify): the
        queue was deleted, or its node is gone. Reconnect at once: the
        set-up finds out what was lost, says so (1012) and declares again.
        """
        session = self._session
        if consumer_tag != self._consumer_tag or session is None or session.client is not client or self._stopped:
            return
        self._metrics.broker_cancels.inc()
        log.warn("RabbitMQ cancelled our consumer of {queue} (the queue was deleted?); reconnecting",
                 queue=self.queue_name)
        client.abort()

    def _channel_failed(self, client: DeliveryClient, channel_id: int | None, reason: Any) -> None:
        if channel_id == PROBE_CHANNEL:
            return  # the probe's own operation fails and says why
        session = self._session
        if channel_id == BIND_CHANNEL:
            if self._stopped:
                return  # a bind that came after the queue's deletion; the connection is closing anyway
            if session is not None and session.client is client:
                if self._consuming:
                    log.warn("RabbitMQ: binding failed: {reason}; reconnecting", reason=describe(reason))
                # The set-up, if it waits for the binds, fails with the broker's words.
                self._bindings_lost(session, reason)
        elif self._consuming and session is not None and session.client is client:
            log.warn("RabbitMQ closed our channel: {reason}; reconnecting", reason=describe(reason))
        # (During set-up the pending operation fails too, and says why.)
        client.abort()

    def _set_down(self) -> None:
        self._consuming = False
        self._metrics.broker_up.set(0)

    # -- health probe --------------------------------------------------------

    def _probe(self) -> None:
        """Every HEALTH_PROBE_INTERVAL: one round trip to the broker, unless one is still out."""
        session = self._session
        if session is None or not self._consuming or self._stopped or self._probe_session is not None:
            return
        self._probe_session = session
        # Decided after the next read: when this process itself was paused
        # (SIGSTOP, a VM migration), the answer may be waiting unread.
        self._probe_late_call = LateCall(self._reactor, self._probe_timeout, lambda: self._probe_overdue(session))
        d = Deferred.fromCoroutine(self._round_trip(session))
        d.addBoth(self._probe_answered, session)

    async def _round_trip(self, session: _Session) -> None:
        channel = session.health_channel
        if channel is None:
            channel = await session.client.channel(HEALTH_CHANNEL)
            await channel.channel_open()
            session.health_channel = channel
        # Cheap for the broker (a lookup), and it cannot disturb the consumer
        # on CHANNEL; should the queue be gone (404), the broker closes this
        # channel and _channel_failed reconnects, which declares it again.
        await channel.queue_declare(queue=self._queue, passive=True)

    def _probe_answered(self, result: object, session: _Session) -> None:
        # A failure means the channel or the connection failed: the
        # channel/connection listeners deal with that, and say why.
        if self._probe_session is session:
            self._forget_probe()

    def _probe_overdue(self, session: _Session) -> None:
        self._probe_late_call = None
        if self._probe_session is not session:
            return
        self._probe_session = None
        if self._session is not session or self._stopped:
            return
        log.warn(
            "RabbitMQ did not answer a health probe within {timeout:g} s (HEALTH_PROBE_TIMEOUT); "
            "dropping the connection and reconnecting",
            timeout=self._probe_timeout,
        )
        client = session.client
        if client.close_reason is None:
            client.close_reason = f"no answer to a health probe for {self._probe_timeout:g} s"
        # Down now (not when the abort completes), and no second "connection lost" line.
        self._set_down()
        client.abort()

    def _forget_probe(self) -> None:
        self._probe_session = None
        if self._probe_late_call is not None:
            self._probe_late_call.cancel()
        self._probe_late_call = None

    # -- bindings -------------------------------------------------------------

    def member_joined(self, uid: str) -> None:
        """Bind C{private.<uid>.*} (now if connected), or keep the binding; nothing with the binding for all."""
        if self._bind_all:
            return
        if not valid_uid(uid):
            log.warn("Not binding member {uid}: not usable in a routing key", uid=uid)
            return
        self._bindings.join(uid)

    def events_flowing(self, uid: str) -> Deferred[None] | None:
        """
        A Deferred firing once C{uid}'s binding is in place (its events reach
        us); None when it is already, or when none will be (the consumer is
        not running, or the uid cannot be bound). While not consuming (at
        start-up, or the broker away) it waits for the next connection's
        bind: a client told it is authenticated before its binding exists
        would miss what is published meanwhile, unknowingly. Fired when we
        stop, so no one waits for ever (the connection bounds the wait too).
        With RABBITMQ_PRIVATE_BINDING=all there is no binding per member:
        None once consuming, and until then the wait is for the set-up.
        """
        if self._bind_all:
            if self._consuming or not self.running or self._stopped:
                return None
        elif self._bindings.flowing(uid) or not self.running or self._stopped or not valid_uid(uid):
            return None
        session = self._session
        if session is not None and session.cover == "on":
            return None
        d: Deferred[None] = Deferred(lambda d: self._forget_flowing(uid, d))
        self._flowing.setdefault(uid, []).append(d)
        if self._cover_at and session is not None and session.cover == "off" and len(self._flowing) >= self._cover_at:
            self._cover(session, True)
        return d

    def _forget_flowing(self, uid: str, d: Deferred[None]) -> None:
        """A waiter given up (the connection's bound on the wait): nothing of it is kept."""
        waiting = self._flowing.get(uid)
        if waiting is not None and d in waiting:
            waiting.remove(d)
            if not waiting:
                del self._flowing[uid]

    def _release_flowing(self, uid: str | None = None) -> None:
        """Fire the waiters of C{uid} (of everyone when None)."""
        if uid is None:
            waiting = [d for ds in self._flowing.values() for d in ds]
            self._flowing.clear()
        else:
            waiting = self._flowing.pop(uid, [])
        for d in waiting:
            if not d.called:
                d.callback(None)

    def member_left(self, uid: str) -> None:
        """Unbind after RABBITMQ_UNBIND_DELAY, unless the member comes back."""
        if not self._bind_all:
            self._bindings.leave(uid, stopping=self._stopped)

    def _kick(self) -> None:
        """
        Send the binds and unbinds now due, in one write, as many as may be
        in flight (L{BIND_BATCH}); the answers make room for the rest.
        Called for every member joining or due to leave: the writes of one
        reactor turn go out together.
        """
        session = self._session
        if session is None or self._stopped or not self._bindings.dirty:
            return
        room = BIND_BATCH - len(session.pending)
        if room <= 0:
            return
        work = self._bindings.take(room, UNBIND_BATCH)
        if work:
            session.pending.extend(work)
            session.client.send_bindings(self._queue, self._exchange, [(binding_key(uid), bind) for uid, bind in work])

    def _cover(self, session: _Session, on: bool) -> None:
        """
        Bind (C{on}) or unbind the covering binding, every private event.

        In a reconnect storm RabbitMQ binds ~1,000 routing keys a second:
        the last of 15,000 logins would wait 15 s for its own binding. So
        when RABBITMQ_STORM_BINDING_AT logins wait, one binding brings
        every member's events at once (those of members elsewhere are
        dropped here, as with RABBITMQ_PRIVATE_BINDING=all) while the
        members' own bindings follow; it goes once every member is bound.
        A queue with both bindings gets each event once (AMQP routes a
        message to a queue once), and the members bound before it goes
        lose nothing.
        """
        self._send_cover(session, on)
        if on:
            log.info(
                "RabbitMQ: {waiting} logins wait for their members' bindings: binding {key} for everyone until "
                "each member is bound",
                waiting=max(len(self._flowing), len(self._bindings.wanted.difference(self._bindings.bound))),
                key=ALL_PRIVATE_BINDING.decode(),
            )
        else:
            log.info(
                "RabbitMQ: every member bound ({bindings} bindings); unbinding {key}",
                bindings=len(self._bindings.bound),
                key=ALL_PRIVATE_BINDING.decode(),
            )

    def _send_cover(self, session: _Session, on: bool) -> None:
        """Send the covering binding's bind (C{on}) or unbind; its answer comes in turn (L{_answered})."""
        session.cover = "binding" if on else "unbinding"
        session.pending.append((_COVER, on))
        if on:
            self._cover_left = True
        session.client.send_bindings(self._queue, self._exchange, [(ALL_PRIVATE_BINDING, on)])

    def _all_flowing(self, session: _Session) -> bool:
        """Whether every wanted member's events reach the queue: the covering binding is up, or each is bound."""
        return session.cover == "on" or (not session.member_ops and not self._bindings.dirty)

    def _answered(self, session: _Session, answers: list[bool]) -> None:
        """One read's answers (True: bind-ok, False: unbind-ok), in the order of what we sent."""
        if session is not self._session:
            return  # a connection given up; the next one binds everyone again
        pending = session.pending
        bindings = self._bindings
        for bound in answers:
            if not pending or pending[0][1] is not bound:
                log.warn("RabbitMQ: an answer to a bind or unbind that was not asked; reconnecting")
                session.client.abort()
                return
            uid = pending.popleft()[0]
            if uid == _COVER:
                session.cover = "on" if bound else "off"
                if not bound:
                    self._cover_left = False
                elif self._flowing:
                    self._release_flowing()
                continue
            bindings.done(uid, bound)
            if bound and self._flowing:
                self._release_flowing(uid)
        self._metrics.bindings.set(len(bindings.bound))
        if bindings.dirty:
            self._kick()
        if session.cover == "on" and not session.member_ops and not bindings.dirty and not self._stopped:
            self._cover(session, False)
        if session.drained is not None and self._all_flowing(session):
            drained, session.drained = session.drained, None
            drained.callback(None)

    def _bindings_lost(self, session: _Session, reason: object) -> None:
        """The connection of C{session} went with binds or unbinds in flight: they are to be done again."""
        for uid, _ in session.pending:
            if uid != _COVER:
                self._bindings.failed(uid)
        session.pending.clear()
        if session.drained is not None:
            drained, session.drained = session.drained, None
            drained.errback(Closed(reason))

    # -- deliveries ---------------------------------------------------------

    def _handle_delivery(self, routing_key: bytes, body: bytes, received: float) -> None:
        """
        One message from the queue, handed over synchronously (so a member's
        events keep the broker's order). The registry holds the frames of a
        whole read and writes them when the read is done (one write per
        connection, L{Registry.begin_batch}); then the read is acked.
        """
        self._registry.begin_batch()
        parsed = parse_routing_key(routing_key)
        if parsed is None:
            if routing_key.startswith(b"public."):
                self._handle_public(routing_key, body, received)
            elif routing_key != self._canary:
                self._dropped_bad_key.inc()
            return
        uid, event = parsed
        if self._bind_all and not self._registry.has_member(uid):
            # Bound for every member: this one is connected elsewhere (or nowhere). No JSON check for it.
            self._dropped_no_connection.inc()
            return
        if not valid_json(body):
            self._dropped_malformed.inc()
            self._log_malformed(routing_key, body)
            return
        counts = self._read_counts.get(event)
        if counts is None:
            counts = self._read_counts[event] = [0, 0]
        counts[0] += 1
        try:
            sent = self._registry.deliver(uid, event, body)
        except Exception:
            log.failure("Delivering {event} to member {uid} failed", event=event, uid=uid)
            self._dropped_error.inc()
            return
        if sent:
            counts[1] += sent
            self._read_delivered += 1
            self._read_received = received
        else:
            self._dropped_no_connection.inc()

    def _handle_public(self, routing_key: bytes, body: bytes, received: float) -> None:
        """A public event (C{public.<id>.<event>}): the hub fans it out, in the same batch as the private ones."""
        hub = self._hub
        parsed = parse_public_key(routing_key)
        if hub is None or parsed is None:
            self._dropped_bad_key.inc()
            return
        if not valid_json(body):
            self._dropped_malformed.inc()
            self._log_malformed(routing_key, body)
            return
        try:
            sent = hub.publish(parsed[0], parsed[1], body)
        except Exception:
            log.failure("Delivering public event {routing_key} failed", routing_key=routing_key.decode("ascii"))
            self._dropped_error.inc()
            return
        if sent:
            self._read_delivered += 1
            self._read_received = received

    def _read_done(self) -> None:
        """
        After the deliveries of one read: write the frames held, count the
        events (before the ack), and observe the delivery latency, the same
        for every event of the read (from the read to the writes), once.
        """
        self._registry.end_batch()
        delivered = self._read_delivered
        if delivered:
            self._read_delivered = 0
            self._metrics.delivery_latency.observe(perf_counter() - self._read_received, delivered)
        counts = self._read_counts
        if not counts:
            return
        for event, (received, delivered) in counts.items():
            counters = self._counters.get(event)
            if counters is None:
                counters = self._event_counters(event)
            counters[0].inc(received)
            if delivered:
                counters[1].inc(delivered)
        counts.clear()

    def _event_counters(self, event: str) -> tuple[Any, Any]:
        label = event_label(event)
        counters = (
            self._metrics.events_received.labels(event=label),
            self._metrics.events_delivered.labels(event=label),
        )
        if len(self._counters) < 1024:
            self._counters[event] = counters
        return counters

    def _log_malformed(self, routing_key: bytes, body: bytes) -> None:
        """At most one line a second: a broken producer must not flood the log."""
        suppressed = self._malformed_throttle("malformed")
        if suppressed is None:
            return
        log.warn(
            "Dropped an event that is not JSON: routing key {routing_key}, {size} bytes, "
            "starting {prefix!r} ({suppressed} more not logged)",
            routing_key=routing_key.decode("utf-8", "replace"),
            size=len(body),
            prefix=body[:32],
            suppressed=suppressed,
        )
