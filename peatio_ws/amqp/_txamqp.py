# -*- test-case-name: tests.unit.test_amqp_txamqp,tests.unit.test_amqp_txamqp_door -*-
"""
The one door into txAMQP: the only module of peatio-ws that imports it.
Written against txAMQP 0.8.2 (unmaintained since 2018; setup.py pins it
exactly). txAMQP is untyped, so this module also gives the rest of the
package typed views of it.

What this module does about txAMQP, and which of its names each piece relies
on (every one checked by C{tests/unit/test_amqp_txamqp_door.py}, which fails
naming the piece when an upgrade changes one):

 1. Bodies as bytes (L{install}). C{Body.decode} (a staticmethod taking
    C{(spec, dec)}) decodes a body frame "opportunistically" as UTF-8 text,
    and C{read_content} then counts characters against the byte size in the
    content header: a non-ASCII UTF-8 body never completes and
    desynchronises the connection. L{install} replaces C{Body.decode} with
    one returning C{Body(dec.decode_longbytes())}. Publishing C{str} is
    broken the same way (its length is counted in characters): we only
    ever publish C{bytes}, and build the publish frames ourselves (9.).

 2. The spec file (L{load_spec}). The package ships none; C{txamqp.spec.load}
    reads the one Debian's C{amqp-specs} installs (AMQP_SPEC); we check
    C{major}, C{minor} and C{classes.byname["basic"].methods.byname["deliver"]}.

 3. C{returnValue}. txAMQP still calls it (deprecated since Twisted 24.7);
    L{install} silences that warning for txAMQP's modules only.

 4. Client properties at login (a connection name RabbitMQ shows).
    C{TwistedDelegate.connection_start(ch, msg)} answers with
    C{ch.connection_start_ok(mechanism=, response=, locale=)} from the
    attributes C{AMQClient.start} set on the client; L{_Delegate} adds
    C{client_properties=}.

 5. The delivery fast path (L{DeliveryClient}). txAMQP's read path costs
    about 450 µs per message (a Deferred chain per frame). L{DeliveryClient}
    replaces C{dataReceived} (bypassing C{FrameReceiver}'s own buffer and
    C{frame_mode}): L{_wire.DeliveryReader} cuts the frames, deliveries on
    the consumer channel go straight to a handler, and every other frame
    goes the normal way, C{self.frame_received(self._unpack_frame(raw))}.
    C{process_frame} (what C{frame_received} calls) is where txAMQP notes
    traffic for the missed-heartbeat check; the fast path, skipping it,
    calls C{reschedule_check_heartbeat} itself, which we override to move
    the pending C{checkHB} DelayedCall (C{heartbeatInterval *
    MAX_UNSEEN_HEARTBEAT} seconds ahead) instead of cancelling it and
    scheduling a new one per read. C{closed} says the connection is
    closing; C{clock} (the reactor, or the clock given) times the acks.

 6. Why a connection ended. C{do_close(reason)} runs when the broker sends
    C{connection.close} (reason: its Message) and on our close;
    C{check_heartbeat()} runs when heartbeats stopped and aborts the
    transport; C{channel_failed(channel, reason)} runs when the broker
    closes a channel (from C{AMQChannel.do_close}). L{DeliveryClient} and
    L{PublisherClient} record or forward each.

 7. Connecting. C{AMQEndpoint(reactor, host, port, username=, password=,
    vhost=, heartbeat=, timeout=)} from separate settings (its
    C{from_uri} mis-parses C{user:pass@host:port}); C{AMQEndpoint.connect}
    calls C{set_vhost} and C{set_heartbeat} on the factory it is given and
    logs in before its Deferred fires. C{AMQFactory(spec=, clock=)} builds
    C{protocol(delegate, vhost=, spec=, heartbeat=, clock=)}.

 8. Playing the broker in tests (L{FrameCodec}): C{FrameReceiver._pack_frame}
    and C{_unpack_frame}, C{Frame}, C{Method}, C{Header}, C{Body} and
    C{txamqp.spec.Method.DEFAULTS}.

 9. Publishing (L{PublisherClient}). The frames of C{basic.publish} are
    built by L{_wire.publish_frames} and written straight to the transport:
    one write per message instead of a Deferred chain, and never a C{str}
    body. That is safe because txAMQP writes each frame it queues
    (C{AMQClient.outgoing}) at once, from C{writer}: none of its messages
    is ever half-written when ours goes out. Bodies are cut at
    C{MAX_LENGTH}, which C{TwistedDelegate.connection_tune} sets to the
    negotiated C{frame_max}. Publisher confirms and returns reach the
    delegate as C{basic_ack}, C{basic_nack} and C{basic_return_}
    (C{Delegate.dispatch} names a handler C{<class>_<method>}, pythonized).

10. Reading more per reactor iteration, into one buffer
    (L{DeliveryClient.makeConnection}, L{_ReadInto}; Twisted 26.10.0, not
    txAMQP). Twisted's C{tcp.Connection.doRead} is
    C{self._dataReceived(self.socket.recv(self.bufferSize))}, at most 64 KiB
    per iteration of the reactor: about 160 events. When thousands of
    sockets are ready at once (a reconnect storm) an iteration takes a long
    time and events queued behind that 64 KiB at a time (p99 8.7 s in a
    15,000-client storm, 0.6 s reading 1 MiB), so the broker's socket reads
    L{READ_SIZE}. But C{recv(n)} allocates n bytes for every read: at 1 MiB
    that is an C{mmap}, an C{mremap} and a C{munmap} per read, and a fresh
    page faulted in, however little came. The broker's transport gets an
    instance attribute C{doRead} (the reactor calls C{selectable.doRead()})
    that C{recv_into}s one buffer kept for the connection and hands a copy
    of what came to C{_dataReceived}, which returns C{CONNECTION_DONE} for
    no bytes (the peer closed) and otherwise calls the protocol; an
    C{OSError} is C{EWOULDBLOCK} (nothing to read) or C{CONNECTION_LOST},
    as in Twisted's own. After a read that brought something the transport
    stops reading (C{stopReading}) for L{READ_PAUSE} and then starts again
    (C{startReading}, unless C{disconnecting} or C{disconnected}), when
    it came less than the pause after the previous read: at an ordinary
    pace each event came in a read, an C{epoll_wait} and a C{recvfrom} of
    its own; now what comes within the pause shares one. The first event
    after a quiet spell is read at once, and reads that are further apart
    anyway (long reactor turns) are not delayed.

11. Members' bindings (L{DeliveryClient.enable_bindings},
    C{send_bindings}). Through txAMQP each C{queue.bind} or C{unbind} is
    encoded through its codec and its answer decoded and handed through a
    Deferred queue, two per member's stay here (a reconnect storm makes
    15,000 of each; docs/benchmarks.md has the before and after). We write the
    frames (L{_wire.binding_frame}) and pick their answers out of the
    frames L{_wire.DeliveryReader} hands back (L{_wire.binding_answer})
    before txAMQP sees them. This relies on the same C{writer} behaviour as
    9., and on the consumer never asking txAMQP for a bind or unbind on
    that channel (its own binds at set-up go on another one).
    Anything else on that channel (a C{channel.close} refusing a bind)
    still goes to txAMQP, and through 6. to the consumer.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from errno import EWOULDBLOCK
from io import BytesIO
from time import perf_counter
from typing import Any, NamedTuple, Protocol, cast

from twisted.internet import main, tcp
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from txamqp import spec as _spec
from txamqp.client import Closed, TwistedDelegate
from txamqp.codec import Codec
from txamqp.connection import Body, Frame, Header, Method
from txamqp.endpoint import AMQEndpoint
from txamqp.factory import AMQFactory
from txamqp.message import Message
from txamqp.protocol import AMQClient, FrameReceiver

from peatio_ws.amqp._wire import NO_CHANNEL, DeliveryReader, ack_frame, binding_answer, binding_frame, publish_frames
from peatio_ws.config import ConfigError
from peatio_ws.logs import logger

__all__ = [
    "CAPABILITIES",
    "Closed",
    "DeliveryClient",
    "DeliveryClientFactory",
    "FrameCodec",
    "PublisherClient",
    "PublisherClientFactory",
    "PublisherListener",
    "connection_dropped",
    "describe",
    "endpoint",
    "error_text",
    "has_method",
    "install",
    "installed",
    "load_spec",
]

log = logger("peatio_ws.amqp")

_installed = False
#: What Twisted says when returnValue is called, and where txAMQP's modules are (3.).
_RETURNVALUE_WARNING = r".*returnValue was deprecated"
_TXAMQP_MODULES = r"txamqp(\.|$)"


# ---------------------------------------------------------------------------
# 1-3. The work-arounds and the spec.


def _decode_body(spec: Any, dec: Any) -> Any:
    """Decode a body frame's payload as the raw bytes it is."""
    return Body(dec.decode_longbytes())


def _encode_table(self: Any, tbl: dict[str, Any]) -> None:
    """C{Codec.encode_table}, with booleans (C{t}) and nested tables (C{F}) besides strings and integers."""
    out = BytesIO()
    codec = Codec(out)
    for key, value in tbl.items():
        codec.encode_shortstr(key)
        if isinstance(value, bool):
            codec.write(b"t")
            codec.encode_octet(1 if value else 0)
        elif isinstance(value, dict):
            codec.write(b"F")
            codec.encode_table(value)
        elif isinstance(value, (str, bytes)):
            codec.write(b"S")
            codec.encode_longstr(value)
        else:
            codec.write(b"I")
            codec.encode_long(value)
    data = out.getvalue()
    self.encode_long(len(data))
    self.write(data)


#: Field types of RabbitMQ's tables (its "errata" to 0-9-1) with fixed-size values.
_FIXED_FIELDS = {b"b": "!b", b"B": "!B", b"s": "!h", b"u": "!H", b"I": "!i", b"i": "!I", b"l": "!q", b"L": "!Q",
                 b"f": "!f", b"d": "!d", b"T": "!Q"}


def _decode_field(codec: Any, kind: bytes) -> Any:
    fixed = _FIXED_FIELDS.get(kind)
    if fixed is not None:
        return codec.unpack(fixed)
    if kind == b"S":
        return codec.decode_longstr()
    if kind == b"t":
        return codec.decode_octet() != 0
    if kind == b"F":
        return codec.decode_table()
    if kind == b"V":
        return None
    if kind == b"x":
        return codec.read(codec.unpack("!L"))
    if kind == b"D":
        scale = codec.unpack("!B")
        return codec.unpack("!i") / 10**scale
    if kind == b"A":
        size = codec.unpack("!L")
        start = codec.nread
        items = []
        while codec.nread - start < size:
            items.append(_decode_field(codec, codec.read(1)))
        return items
    raise ValueError(f"unknown AMQP field type {kind!r}")


def _decode_table(self: Any) -> dict[str, Any]:
    """
    C{Codec.decode_table}, reading every field type RabbitMQ sends: txAMQP's
    knows S, I, F and t only, and raises on the C{l} of the
    C{x-delivery-count} header a quorum queue puts on redeliveries.
    """
    size = self.decode_long()
    start = self.nread
    result: dict[str, Any] = {}
    while self.nread - start < size:
        key = self.decode_shortstr()
        result[key] = _decode_field(self, self.read(1))
    return result


def install() -> None:
    """Apply the work-arounds; safe to call any number of times."""
    global _installed
    if _installed:
        return
    Body.decode = staticmethod(_decode_body)
    Codec.encode_table = _encode_table
    Codec.decode_table = _decode_table
    warnings.filterwarnings(
        "ignore", message=_RETURNVALUE_WARNING, category=DeprecationWarning, module=_TXAMQP_MODULES
    )
    _installed = True


def installed() -> bool:
    """Whether L{install} has run (and the body decoder is ours)."""
    return bool(
        Body.decode is _decode_body and Codec.encode_table is _encode_table and Codec.decode_table is _decode_table
    )


def load_spec(path: str) -> Any:
    """
    Load an AMQP 0-9-1 spec file.

    @raise ConfigError: naming AMQP_SPEC, when the file is missing, not a
        spec, or the spec of another protocol version (the consumer speaks
        0-9-1, what RabbitMQ and Peatio use).
    """
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ConfigError("AMQP_SPEC", f"cannot read {path!r}: {e.strerror or e}") from None
    try:
        loaded = _spec.load(path)
    except Exception as e:
        raise ConfigError("AMQP_SPEC", f"{path!r} is not an AMQP spec file ({type(e).__name__})") from None
    if (loaded.major, loaded.minor) != (0, 9):
        raise ConfigError(
            "AMQP_SPEC",
            f"{path!r} is the AMQP {loaded.major}-{loaded.minor} spec; the 0-9-1 spec is needed "
            "(/usr/share/amqp/specs/0-9-1/amqp0-9-1.stripped.xml from the amqp-specs package)",
        )
    try:
        loaded.classes.byname["basic"].methods.byname["deliver"]
    except KeyError:
        raise ConfigError("AMQP_SPEC", f"{path!r} lacks basic.deliver; is it a complete 0-9-1 spec?") from None
    return loaded


def has_method(spec: Any, name: str) -> bool:
    """Whether the loaded C{spec} has method C{name} (C{"confirm.select"})."""
    klass, _, method = name.partition(".")
    try:
        spec.classes.byname[klass].methods.byname[method]
    except KeyError:
        return False
    return True


# ---------------------------------------------------------------------------
# What txAMQP's errors say.


def describe(reason: object) -> str:
    """A short, one-line text for a connection or channel failure (for the log)."""
    if isinstance(reason, Failure):
        reason = reason.value
    if isinstance(reason, Closed) and reason.args:
        reason = reason.args[0]
    if isinstance(reason, Failure):
        reason = reason.value
    if isinstance(reason, DeferredTimeout):
        return f"no answer within {reason.args[0] if reason.args else '?'} s"
    if isinstance(reason, Message):
        try:
            return f"{reason.reply_code} {reason.reply_text}"
        except (AttributeError, IndexError, KeyError):
            return str(reason.method)
    text = str(reason).strip().splitlines()
    return text[0] if text and text[0] else type(reason).__name__


def _unwrap(error: BaseException) -> BaseException:
    """txAMQP wraps the cause of a closed connection in Closed(Failure(...))."""
    for _ in range(5):
        inner = [a.value for a in getattr(error, "args", ()) if isinstance(a, Failure) and a.value is not None]
        if not inner:
            break
        error = inner[0]
    return error


def connection_dropped(error: BaseException) -> bool:
    """Whether C{error} is, underneath, the TCP connection closing (not an AMQP refusal)."""
    return isinstance(_unwrap(error), ConnectionDone | ConnectionLost)


def error_text(error: BaseException) -> str:
    """The broker's reply text when C{error} holds one; "timed out"; else the error on one line."""
    error = _unwrap(error)
    if isinstance(error, DeferredTimeout):
        return "timed out"
    for arg in getattr(error, "args", ()):
        fields = getattr(arg, "fields", None)
        if fields:
            texts = [str(f) for f in fields if isinstance(f, str | bytes)]
            if texts:
                return texts[0] if isinstance(texts[0], str) else texts[0].decode("utf-8", "replace")
    text = str(error) or type(error).__name__
    return " ".join(text.split())


# ---------------------------------------------------------------------------
# 4, 7. Logging in, connecting.


class _Delegate(TwistedDelegate):
    """txAMQP's delegate, but announcing client properties (a connection name)."""

    def connection_start(self, ch: Any, msg: Any) -> None:
        ch.connection_start_ok(
            client_properties=self.client.client_properties,
            mechanism=self.client.mechanism,
            response=self.client.response,
            locale=self.client.locale,
        )


class _DeliveryDelegate(_Delegate):
    """
    The consumer's delegate: also hears the broker cancel our consumer (the
    queue was deleted), and return a probe it could not route (L{DeliveryClient.probe_route}).
    """

    def basic_cancel(self, ch: Any, msg: Any) -> None:
        listener = self.client.cancel_listener
        if listener is not None:
            listener(self.client, _as_bytes(msg.consumer_tag))

    def basic_return_(self, ch: Any, msg: Any) -> None:
        self.client.returned.append(_as_bytes(msg.routing_key))


#: What the consumer announces at login: the broker tells it (basic.cancel) when its queue goes.
CAPABILITIES = {"consumer_cancel_notify": True}

#: Bytes read from the broker's socket per reactor iteration (Twisted's default is 64 KiB).
READ_SIZE = 1 << 20
#: Seconds the broker's socket is not read after a read that brought something (10.).
READ_PAUSE = 0.001


class _ReadInto:
    """
    The broker transport's C{doRead} (10.): C{recv_into} one buffer, a copy
    of what came to the protocol; then, if something came less than
    C{pause} seconds after the previous read, no reading for C{pause}
    seconds, so that what arrives meanwhile comes in one read. Reads
    further apart (a quiet broker, or reactor turns that take longer: a
    reconnect storm, a shutdown) are never delayed: a paused socket is
    back among the readers only for the turn after, and a turn of a
    second would make every other turn a read of the broker's.
    """

    __slots__ = (
        "_buffer",
        "_clock",
        "_data_received",
        "_last",
        "_pause",
        "_recv_into",
        "_resume_call",
        "_transport",
        "_view",
    )

    def __init__(self, transport: tcp.Connection, size: int, clock: IReactorTime, pause: float) -> None:
        self._buffer = bytearray(size)
        self._view = memoryview(self._buffer)
        self._recv_into = transport.socket.recv_into
        self._data_received = transport._dataReceived
        self._transport = transport
        self._clock = clock
        self._pause = pause
        self._resume_call: IDelayedCall | None = None
        #: When the previous read brought something (the clock's seconds).
        self._last = float("-inf")

    def __call__(self) -> object:
        try:
            n = self._recv_into(self._buffer)
        except OSError as e:
            return None if e.args[0] == EWOULDBLOCK else main.CONNECTION_LOST
        result = self._data_received(self._view[:n].tobytes())
        if not n or result is not None:
            return result
        now = self._clock.seconds()
        close, self._last = now - self._last < self._pause, now
        transport = self._transport
        if close and not (transport.disconnecting or transport.disconnected):
            transport.stopReading()
            self._resume_call = self._clock.callLater(self._pause, self._resume)
        return result

    def _resume(self) -> None:
        self._resume_call = None
        transport = self._transport
        if not (transport.disconnecting or transport.disconnected):
            transport.startReading()

    def cancel(self) -> None:
        """No resuming (the connection is gone)."""
        call, self._resume_call = self._resume_call, None
        if call is not None and call.active():
            call.cancel()


#: While deliveries keep coming, acks go at most this often (seconds; L{DeliveryClient.flush_ack}).
ACK_INTERVAL = 0.005


def endpoint(
    reactor: Any,
    host: str,
    port: int,
    *,
    user: str,
    password: str,
    vhost: str,
    heartbeat: int,
    timeout: float,
) -> Any:
    """
    An endpoint whose C{connect(factory)} connects over TCP and logs in,
    firing with the client once the connection is open (plain TCP only).
    """
    return AMQEndpoint(
        reactor,
        host,
        port,
        username=user,
        password=password,
        vhost=vhost,
        heartbeat=heartbeat,
        timeout=max(1, round(timeout)),
    )


# ---------------------------------------------------------------------------
# 5, 6. The consumer's client: deliveries on the fast path.

#: C{handler(routing_key, body, received)}; C{received} is C{perf_counter()} at the read.
DeliveryHandler = Callable[[bytes, bytes, float], None]
#: C{answered(answers)}: one read's answers to our binds (True) and unbinds (False), in order.
BindingsAnswered = Callable[[list[bool]], None]


class DeliveryClient(AMQClient):
    """
    AMQClient whose C{dataReceived} takes the deliveries on the consumer
    channel straight to a handler, synchronously, in the broker's order.

    Messages are acknowledged after the handler returned and C{read_done}
    ran, with C{multiple=True} for the highest delivery tag handled: at once
    when the last ack went L{ACK_INTERVAL} ago or more (so a quiet
    connection's ack is never late), else when the interval is up, or at
    once when half the prefetch window is unacked. Under load that is one
    ack per interval instead of one per read: each ack is a write that
    wakes RabbitMQ and work for it (docs/benchmarks.md). A delivery left
    unacked when the connection drops comes again, as it always could.
    """

    def __init__(
        self,
        delegate: Any,
        vhost: str,
        spec: Any,
        heartbeat: int = 0,
        clock: IReactorTime | None = None,
        insist: bool = False,
    ) -> None:
        super().__init__(_DeliveryDelegate(), vhost, spec, heartbeat=heartbeat, clock=clock, insist=insist)
        #: Announced at login (L{_encode_table} writes the nested capabilities table).
        self.client_properties: dict[str, Any] = {"product": "peatio-ws", "capabilities": dict(CAPABILITIES)}
        self._reader = DeliveryReader()
        self._handler: DeliveryHandler | None = None
        self._read_done: Callable[[], None] | None = None
        #: Who hears the answers to our binds and unbinds (L{enable_bindings}), and on which channel.
        self._bindings_answered: BindingsAnswered | None = None
        self._bind_channel = NO_CHANNEL
        self.lost = False
        #: Set by whoever watches this connection (the consumer).
        self.lost_listener: Callable[[DeliveryClient, Failure], None] | None = None
        #: C{channel_listener(client, channel_id, reason)} when the broker closes a channel.
        self.channel_listener: Callable[[DeliveryClient, int | None, Any], None] | None = None
        #: Routing keys of the probes the broker returned unroutable (L{probe_route}).
        self.returned: list[bytes] = []
        #: C{cancel_listener(client, consumer_tag)} when the broker cancels a consumer of ours.
        self.cancel_listener: Callable[[DeliveryClient, bytes], None] | None = None
        #: What the broker said when it closed the connection, if it did.
        self.close_reason: object = None
        #: Where the connection stands with ClientService (L{_clientservice}).
        self.guard: Any = None
        #: The highest delivery tag handled and not acked yet (0: none), and how many deliveries that covers.
        self._ack_tag = 0
        self._ack_count = 0
        #: Ack at once when this many are unacked (L{enable_fast_path}'s C{prefetch}).
        self._ack_every = 1
        #: When the last ack went (the clock's seconds); the pending ack's timer, if one is set.
        self._ack_at = float("-inf")
        self._ack_call: IDelayedCall | None = None
        self._read_into: _ReadInto | None = None

    def makeConnection(self, transport: Any) -> None:
        """
        Read up to L{READ_SIZE} from the broker per reactor iteration, into
        one buffer, and after a read that brought something none for
        L{READ_PAUSE} (10.).
        """
        if isinstance(transport, tcp.Connection):
            self._read_into = _ReadInto(transport, READ_SIZE, self.clock, READ_PAUSE)
            transport.doRead = self._read_into  # type: ignore[method-assign,assignment]
        super().makeConnection(transport)

    def unwrap(self) -> DeliveryClient:
        """
        This very object. ClientService hands out a proxy whose attributes
        do not reach the client (TWISTED-NOTES §6); calling this through
        the proxy gets the real one.
        """
        return self

    def enable_fast_path(
        self,
        channel: int,
        handler: DeliveryHandler,
        read_done: Callable[[], None] | None = None,
        prefetch: int = 0,
    ) -> None:
        """
        Take C{basic.deliver} on C{channel} to C{handler} from now on; call
        C{read_done} after the deliveries of each read, before acking them.
        C{prefetch} is the channel's C{basic.qos} (0: no limit): an ack
        goes at once when half of it is unacked, so the broker never
        waits for one.
        """
        self._handler = handler
        self._read_done = read_done
        self._reader.channel = channel
        self._ack_every = max(1, prefetch // 2) if prefetch else 1 << 62

    def stop_handling(self) -> None:
        """
        Deliveries from now on are neither handed over nor acked: closing
        the connection puts them back in the queue, for the next consumer
        of a queue left to the next process (a clean stop, a restart in
        place). Handed over here after the last ack, they would reach the
        clients twice if the clients are carried over.
        """
        self._handler = None

    def enable_bindings(self, channel: int, answered: BindingsAnswered) -> None:
        """
        Send binds and unbinds on C{channel} from now on (L{send_bindings}),
        and take their answers there to C{answered} (11.): once per read, in
        the broker's order, True for each C{bind-ok}, False for each
        C{unbind-ok}. txAMQP must have no bind or unbind of its own in
        flight on C{channel} from now on: it would never see the answer.
        """
        self._bind_channel = channel
        self._bindings_answered = answered

    def send_bindings(self, queue: bytes, exchange: bytes, work: list[tuple[bytes, bool]]) -> None:
        """
        One write: for each C{(routing_key, bind)} of C{work}, a C{queue.bind}
        (C{bind}) or C{queue.unbind} of C{queue} to C{exchange}, on the
        channel given to L{enable_bindings}. Nothing is written once the
        connection is closing; the answers then never come (it is lost).
        """
        channel = self._bind_channel
        if channel == NO_CHANNEL:
            raise RuntimeError("send_bindings before enable_bindings")
        if self.transport is not None and not self.closed and not self.lost:
            self.transport.write(b"".join([binding_frame(channel, bind, queue, exchange, key) for key, bind in work]))

    def abort(self) -> None:
        """Drop the connection now (no AMQP close)."""
        if self.transport is not None and not self.lost:
            self.transport.abortConnection()

    def probe_route(self, channel: int, exchange: bytes, routing_key: bytes) -> None:
        """
        Publish an empty message with C{mandatory} on C{channel}: if nothing
        routes it, the broker returns it (its key lands in L{returned}) before
        it answers the next synchronous method on that channel.
        """
        if self.transport is not None and not self.lost:
            frames = publish_frames(channel, exchange, routing_key, b"", int(self.MAX_LENGTH), mandatory=True)
            self.transport.write(frames)

    # -- receiving ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        received = perf_counter()
        read = self._reader.feed(data)
        answered = self._bindings_answered
        bind_channel = self._bind_channel
        answers: list[bool] = []
        try:
            ack = handled = 0
            try:
                handler = self._handler
                for item in read.items:
                    if type(item) is tuple:
                        if handler is None:
                            continue  # not handled, not acked: the broker gives it to the next consumer
                        tag, key, body = item
                        try:
                            handler(key, body, received)
                        except Exception:
                            log.failure("Handling an event from RabbitMQ failed")
                        ack = tag
                        handled += 1
                    else:
                        if answered is not None:
                            answer = binding_answer(cast(bytes, item), bind_channel)
                            if answer is not None:
                                answers.append(answer)
                                continue
                        self.frame_received(self._unpack_frame(item))
                        transport = self.transport
                        if transport is None or getattr(transport, "disconnecting", False):
                            # Closing (e.g. the broker sent connection.close): ignore the rest.
                            break
                else:
                    if read.error is not None:
                        raise read.error
            finally:
                if answers and answered is not None:
                    answered(answers)
                if read.fast and self._read_done is not None:
                    self._read_done()
                if ack:
                    self._acknowledge(ack, handled)
                if read.fast and self.heartbeatInterval > 0 and not self.closed:
                    # The fast path skips process_frame, which would note the traffic.
                    self.reschedule_check_heartbeat()
        except Exception:
            log.failure("Bad data from RabbitMQ; dropping the connection")
            self._reader.reset()
            self.abort()

    def _acknowledge(self, tag: int, count: int) -> None:
        """Up to C{tag} (C{count} more deliveries) is handled: ack now, or when the interval is up."""
        self._ack_tag = tag
        self._ack_count += count
        if self._ack_count >= self._ack_every:
            self.flush_ack()
        elif self._ack_call is None:
            wait = self._ack_at + ACK_INTERVAL - self.clock.seconds()
            if wait > 0:
                self._ack_call = self.clock.callLater(wait, self.flush_ack)
            else:
                self.flush_ack()

    def flush_ack(self) -> None:
        """Send the pending ack now, if there is one (the consumer calls this before a clean stop)."""
        call, self._ack_call = self._ack_call, None
        if call is not None and call.active():
            call.cancel()
        tag, self._ack_tag, self._ack_count = self._ack_tag, 0, 0
        if tag and self.transport is not None and not self.closed and not self.lost:
            self._ack_at = self.clock.seconds()
            self.transport.write(ack_frame(self._reader.channel, tag))

    # -- lifecycle hooks ---------------------------------------------------

    def do_close(self, reason: Any) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        super().do_close(reason)

    def reschedule_check_heartbeat(self) -> None:
        """
        Push the missed-heartbeat check back. txAMQP cancels it and schedules
        a new one, which the fast path would do on every read: a new
        DelayedCall (and a dead one left in the reactor's heap) per read.
        Moving the pending call allocates nothing.
        """
        check = getattr(self, "checkHB", None)
        if check is not None and check.active():
            check.reset(self.heartbeatInterval * self.MAX_UNSEEN_HEARTBEAT)
        else:
            super().reschedule_check_heartbeat()

    def check_heartbeat(self) -> None:
        if self.close_reason is None:
            self.close_reason = f"no heartbeat from RabbitMQ for {self.heartbeatInterval * self.MAX_UNSEEN_HEARTBEAT} s"
        super().check_heartbeat()

    def channel_failed(self, channel: Any, reason: Any) -> None:
        if self.channel_listener is not None:
            self.channel_listener(self, getattr(channel, "id", None), reason)

    def connectionLost(self, reason: Failure) -> None:
        self.lost = True
        self._reader.reset()
        if self._read_into is not None:
            self._read_into.cancel()
        # What was not acked comes again from the broker; nothing is left scheduled.
        self.flush_ack()
        try:
            super().connectionLost(reason)
        finally:
            if self.lost_listener is not None:
                self.lost_listener(self, reason)


class DeliveryClientFactory(AMQFactory):
    """AMQFactory building L{DeliveryClient}s, quietly; C{built(client)} is told of each."""

    protocol = DeliveryClient
    noisy = False

    def __init__(
        self,
        spec_path: str,
        clock: IReactorTime,
        client_properties: dict[str, str],
        built: Callable[[DeliveryClient], None],
    ) -> None:
        super().__init__(spec=spec_path, clock=clock)
        self._client_properties = client_properties
        self._built = built

    def buildProtocol(self, addr: Any) -> DeliveryClient:
        client: DeliveryClient = super().buildProtocol(addr)
        client.client_properties = {**self._client_properties, "capabilities": dict(CAPABILITIES)}
        self._built(client)
        return client


# ---------------------------------------------------------------------------
# 8. Frames for tests that play the broker.


class DecodedFrame(NamedTuple):
    """One frame, decoded by txAMQP."""

    channel: int
    #: "method", "header", "body" or "heartbeat".
    kind: str
    #: C{"<class>.<method>"} for a method frame, else "".
    name: str
    #: A method's arguments, or a header's properties, by (pythonized) name.
    fields: dict[str, Any]
    #: A header's body size.
    size: int
    #: A body frame's bytes.
    body: bytes


class FrameCodec:
    """txAMQP's own frame encoder and decoder, for code playing the broker (the test kit)."""

    def __init__(self, spec: Any) -> None:
        install()
        self.spec = spec
        self._receiver = FrameReceiver(spec)

    def _frame(self, channel: int, payload: Any) -> bytes:
        return bytes(self._receiver._pack_frame(Frame(channel, payload)))

    def method(self, channel: int, name: str, **fields: Any) -> bytes:
        """Method frame C{name} (C{"queue.declare-ok"}); fields not given take the spec's defaults."""
        klass_name, _, method_name = name.partition(".")
        method = self.spec.classes.byname[klass_name].methods.byname[method_name]
        args = [fields.get(_spec.pythonize(f.name), _spec.Method.DEFAULTS[f.type]) for f in method.fields]
        return self._frame(channel, Method(method, *args))

    def header(self, channel: int, class_name: str, size: int, **properties: Any) -> bytes:
        """
        A content header frame of class C{class_name} for a body of C{size}
        bytes; C{properties} by pythonized name (C{content_type}).
        """
        named = {name.replace("_", "-"): value for name, value in properties.items()}
        return self._frame(channel, Header(self.spec.classes.byname[class_name], 0, size, **named))

    def body(self, channel: int, body: bytes) -> bytes:
        """A content body frame."""
        return self._frame(channel, Body(body))

    def class_id(self, class_name: str) -> int:
        """The number of class C{class_name}."""
        return int(self.spec.classes.byname[class_name].id)

    def decode(self, data: bytes) -> DecodedFrame:
        """One whole frame (header to frame-end)."""
        frame = self._receiver._unpack_frame(data)
        payload = frame.payload
        if isinstance(payload, Method):
            method = payload.method
            fields = {_spec.pythonize(f.name): a for f, a in zip(method.fields, payload.args, strict=True)}
            return DecodedFrame(frame.channel, "method", f"{method.klass.name}.{method.name}", fields, 0, b"")
        if isinstance(payload, Header):
            properties = {_spec.pythonize(k): v for k, v in payload.properties.items() if v is not None}
            return DecodedFrame(frame.channel, "header", "", properties, int(payload.size), b"")
        if isinstance(payload, Body):
            return DecodedFrame(frame.channel, "body", "", {}, 0, bytes(payload.content))
        return DecodedFrame(frame.channel, "heartbeat", "", {}, 0, b"")


# ---------------------------------------------------------------------------
# 6, 9. The publisher's client.


class PublisherListener(Protocol):
    """What a L{PublisherClient} reports (the publisher)."""

    def confirmed(self, delivery_tag: int, multiple: bool, ok: bool) -> None: ...

    def returned(self, routing_key: bytes, body: bytes, reply_code: int, reply_text: str) -> None: ...

    def channel_failed(self, channel_id: int | None, reason: Any) -> None: ...

    def connection_lost(self, reason: Failure) -> None: ...


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


class _PublisherDelegate(_Delegate):
    """Hands confirms and returns to the client's listener."""

    def basic_ack(self, ch: Any, msg: Any) -> None:
        listener = self.client.listener
        if listener is not None:
            listener.confirmed(msg.delivery_tag, bool(msg.multiple), True)

    def basic_nack(self, ch: Any, msg: Any) -> None:
        listener = self.client.listener
        if listener is not None:
            listener.confirmed(msg.delivery_tag, bool(msg.multiple), False)

    def basic_return_(self, ch: Any, msg: Any) -> None:
        listener = self.client.listener
        if listener is not None:
            body = msg.content.body if msg.content is not None else b""
            text = msg.reply_text
            listener.returned(
                _as_bytes(msg.routing_key),
                _as_bytes(body),
                int(msg.reply_code),
                text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text),
            )


class PublisherClient(AMQClient):
    """AMQClient that writes pre-built publish frames and reports to a L{PublisherListener}."""

    def __init__(
        self,
        delegate: Any,
        vhost: str,
        spec: Any,
        heartbeat: int = 0,
        clock: IReactorTime | None = None,
        insist: bool = False,
    ) -> None:
        super().__init__(_PublisherDelegate(), vhost, spec, heartbeat=heartbeat, clock=clock, insist=insist)
        self.client_properties: dict[str, str] = {"product": "peatio-ws publisher"}
        self.listener: PublisherListener | None = None
        self.lost = False

    @property
    def frame_max(self) -> int:
        """The largest frame the broker takes (negotiated at login)."""
        return int(self.MAX_LENGTH)

    @property
    def writable(self) -> bool:
        """Whether frames written now go out (the connection is neither closing nor gone)."""
        transport = self.transport
        return not (self.lost or self.closed or transport is None or getattr(transport, "disconnecting", False))

    def write_frames(self, data: bytes) -> None:
        """Write frames we built (L{_wire.publish_frames}); see 9. in the module docstring."""
        self.transport.write(data)

    def abort(self) -> None:
        """Drop the connection now (no AMQP close)."""
        if self.transport is not None and not self.lost:
            self.transport.abortConnection()

    def channel_failed(self, channel: Any, reason: Any) -> None:
        if self.listener is not None:
            self.listener.channel_failed(getattr(channel, "id", None), reason)

    def connectionLost(self, reason: Failure) -> None:
        self.lost = True
        try:
            super().connectionLost(reason)
        finally:
            if self.listener is not None:
                self.listener.connection_lost(reason)


class PublisherClientFactory(AMQFactory):
    """AMQFactory building L{PublisherClient}s, quietly."""

    protocol = PublisherClient
    noisy = False

    def __init__(self, spec_path: str, clock: IReactorTime | None, client_properties: dict[str, str]) -> None:
        super().__init__(spec=spec_path, clock=clock)
        self._client_properties = client_properties
        #: The client built (once connected over TCP, before login).
        self.client: PublisherClient | None = None

    def buildProtocol(self, addr: Any) -> PublisherClient:
        client: PublisherClient = super().buildProtocol(addr)
        client.client_properties = self._client_properties
        self.client = client
        return client
