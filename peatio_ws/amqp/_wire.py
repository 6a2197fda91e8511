# -*- test-case-name: tests.unit.test_amqp_wire -*-
"""
The AMQP 0-9-1 wire format where speed matters: pure functions and a reader
over bytes. No I/O, no Twisted, no txAMQP.

A frame is a type octet, a channel (short), a payload size (long), the
payload, and the frame-end octet 0xCE. A message the broker pushes to a
consumer is a C{basic.deliver} method frame (class 60, method 60), a
content header frame (which says how long the body is) and as many body
frames as that takes (none for an empty body), all on the consumer's
channel; frames of other channels (heartbeats on channel 0, say) may come
between them.

L{DeliveryReader} cuts the byte stream into frames and assembles the
deliveries of one channel as they arrive; it hands every other frame back
whole, in order, for a general-purpose decoder (txAMQP's: L{_txamqp}).
L{ack_frame} and L{publish_frames} build the frames we send on the same
paths; L{binding_frame} the C{queue.bind} and C{queue.unbind} of a member's
binding (one at every login of a member new here, one after it left), and
L{binding_answer} recognises their answers among the frames handed back.
The numbers are those of AMQP 0-9-1, the only spec
L{peatio_ws.amqp._txamqp.load_spec} accepts (a door test checks the spec
file agrees).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = [
    "FRAME_BODY",
    "FRAME_END",
    "FRAME_HEADER",
    "FRAME_HEARTBEAT",
    "FRAME_METHOD",
    "NO_CHANNEL",
    "Delivery",
    "DeliveryReader",
    "FrameError",
    "Read",
    "ack_frame",
    "binding_answer",
    "binding_frame",
    "publish_frames",
]

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
#: class basic, and its methods publish, deliver and ack.
BASIC = 60
BASIC_PUBLISH = 40
BASIC_DELIVER = 60
BASIC_ACK = 80
#: class queue, and its methods bind and unbind with their answers.
QUEUE = 50
QUEUE_BIND = 20
QUEUE_BIND_OK = 21
QUEUE_UNBIND = 50
QUEUE_UNBIND_OK = 51
#: A channel number no frame carries (the reader then assembles nothing).
NO_CHANNEL = -1

_FRAME = struct.Struct("!BHI")
_U64 = struct.Struct("!Q")
_IDS = struct.Struct("!HH")
_DELIVER_IDS = _IDS.pack(BASIC, BASIC_DELIVER)
_ACK_IDS = _IDS.pack(BASIC, BASIC_ACK)
_PUBLISH_IDS = _IDS.pack(BASIC, BASIC_PUBLISH)
_END = bytes((FRAME_END,))
_BIND_IDS = _IDS.pack(QUEUE, QUEUE_BIND)
_UNBIND_IDS = _IDS.pack(QUEUE, QUEUE_UNBIND)
#: The whole frame of a bind-ok and of an unbind-ok on a channel, less the
#: channel: type, channel, size 4, the two ids, frame-end.
_BIND_OK_TAIL = struct.pack("!IHH", 4, QUEUE, QUEUE_BIND_OK) + _END
_UNBIND_OK_TAIL = struct.pack("!IHH", 4, QUEUE, QUEUE_UNBIND_OK) + _END
#: An empty field table (the arguments of a bind or unbind).
_NO_ARGUMENTS = b"\x00\x00\x00\x00"

#: A whole delivery: (delivery tag, routing key, body).
Delivery = tuple[int, bytes, bytes]


class FrameError(Exception):
    """The bytes are not a frame sequence AMQP allows."""


class Read(NamedTuple):
    """What one L{DeliveryReader.feed} found, in the order it arrived."""

    #: A L{Delivery} tuple for each delivery completed, the raw bytes of
    #: every other whole frame (header to frame-end).
    items: list[Delivery | bytes]
    #: Whether any frame of a delivery was consumed (also one not complete
    #: yet): traffic from the broker that no item shows.
    fast: bool
    #: The protocol violation that ended the read, if one did; the items
    #: before it stand, the reader keeps nothing after it.
    error: FrameError | None


class _Partial(NamedTuple):
    """A delivery whose frames straddle two reads."""

    #: 1: the method frame was read, the header is next; 2: body frames are next.
    state: int
    tag: int
    key: bytes
    #: Body bytes still to come (state 2).
    left: int
    chunks: list[bytes]


class DeliveryReader:
    """
    Frames from a byte stream, with the deliveries on C{channel} assembled.

    Feed it every read (L{feed}); it keeps an incomplete frame, and a
    delivery whose frames have not all arrived, for the next read. Set
    C{channel} (to the consumer's channel) to start assembling; until then,
    and for every other channel, frames come back whole.
    """

    __slots__ = ("_need", "_partial", "_rx", "_rx_len", "channel")

    def __init__(self, channel: int = NO_CHANNEL) -> None:
        self.channel = channel
        #: Bytes of an incomplete frame, their total, and how many are needed to go on.
        self._rx: list[bytes] = []
        self._rx_len = 0
        self._need = 0
        self._partial: _Partial | None = None

    @property
    def buffered(self) -> int:
        """Bytes held: an incomplete frame, or the body so far of an incomplete delivery."""
        partial = self._partial
        return self._rx_len + (sum(map(len, partial.chunks)) if partial is not None else 0)

    def reset(self) -> None:
        """Forget everything held (the connection is gone)."""
        self._rx = []
        self._rx_len = 0
        self._need = 0
        self._partial = None

    def feed(self, data: bytes) -> Read:
        """Take one read's bytes; return what they completed."""
        if self._rx:
            self._rx.append(data)
            self._rx_len += len(data)
            if self._rx_len < self._need:
                return Read([], False, None)
            buf = b"".join(self._rx)
            self._rx = []
            self._rx_len = 0
        else:
            buf = data
        read, off = self._frames(buf)
        if read.error is not None:
            self.reset()
        elif off < len(buf):
            rest = buf[off:]
            self._rx = [rest]
            self._rx_len = len(rest)
        return read

    def _frames(self, buf: bytes) -> tuple[Read, int]:
        """
        Every whole frame in C{buf}; the offset of the first byte not
        consumed (and C{_need} set for what follows it).
        """
        items: list[Delivery | bytes] = []
        append = items.append
        end = len(buf)
        off = 0
        header = _FRAME.unpack_from
        u64 = _U64.unpack_from
        channel_wanted = self.channel
        partial = self._partial
        chunks: list[bytes]
        if partial is None:
            state, tag, key, left, chunks = 0, 0, b"", 0, []
        else:
            state, tag, key, left, chunks = partial
        fast = False
        error = None
        try:
            while True:
                if end - off < 8:
                    self._need = 8
                    break
                ftype, channel, size = header(buf, off)
                start = off + 7
                stop = start + size
                if stop >= end:
                    self._need = size + 8
                    break
                if buf[stop] != FRAME_END:
                    raise FrameError(f"frame end octet is {buf[stop]:#x}, not {FRAME_END:#x}")
                if channel == channel_wanted and (
                    state or (ftype == FRAME_METHOD and buf[start : start + 4] == _DELIVER_IDS)
                ):
                    fast = True
                    if state == 0:
                        # basic.deliver: consumer-tag, delivery-tag, redelivered, exchange, routing-key
                        p = start + 4
                        p += 1 + buf[p]
                        (tag,) = u64(buf, p)
                        p += 9
                        p += 1 + buf[p]
                        n = buf[p]
                        if p + 1 + n > stop:
                            raise FrameError(f"basic.deliver on channel {channel} is cut short")
                        key = buf[p + 1 : p + 1 + n]
                        state = 1
                    elif state == 1:
                        if ftype != FRAME_HEADER:
                            raise FrameError(f"expected a content header on channel {channel}, got type {ftype}")
                        (left,) = u64(buf, start + 4)
                        if left:
                            state = 2
                        else:
                            state = 0
                            append((tag, key, b""))
                    else:
                        if ftype != FRAME_BODY:
                            raise FrameError(f"expected a content body on channel {channel}, got type {ftype}")
                        if size > left:
                            raise FrameError("content body longer than its header said")
                        left -= size
                        if left == 0 and not chunks:
                            state = 0
                            append((tag, key, buf[start:stop]))
                        else:
                            chunks.append(buf[start:stop])
                            if left == 0:
                                body = b"".join(chunks)
                                chunks = []
                                state = 0
                                append((tag, key, body))
                else:
                    append(buf[off : stop + 1])
                off = stop + 1
        except FrameError as e:
            error = e
        except (IndexError, struct.error) as e:
            error = FrameError(f"malformed frame: {e}")
        self._partial = _Partial(state, tag, key, left, chunks) if state else None
        return Read(items, fast, error), off


def ack_frame(channel: int, delivery_tag: int, multiple: bool = True) -> bytes:
    """C{basic.ack} of C{delivery_tag} (and, with C{multiple}, of every tag before it)."""
    return (
        _FRAME.pack(FRAME_METHOD, channel, 13)
        + _ACK_IDS
        + _U64.pack(delivery_tag)
        + (b"\x01" if multiple else b"\x00")
        + _END
    )


def binding_frame(channel: int, bind: bool, queue: bytes, exchange: bytes, routing_key: bytes) -> bytes:
    """
    C{queue.bind} (C{bind}) or C{queue.unbind} of C{queue} to C{exchange}
    with C{routing_key}, no arguments; a bind waits for its answer (no-wait
    off), as an unbind always does.

    @raise ValueError: a name longer than 255 bytes.
    """
    method = (
        (_BIND_IDS if bind else _UNBIND_IDS)
        + b"\x00\x00"  # reserved-1 (ticket)
        + _shortstr(queue, "the queue name")
        + _shortstr(exchange, "the exchange name")
        + _shortstr(routing_key, "the routing key")
        + (b"\x00" if bind else b"")  # bind's no-wait bit; unbind has none
        + _NO_ARGUMENTS
    )
    return _FRAME.pack(FRAME_METHOD, channel, len(method)) + method + _END


def binding_answer(frame: bytes, channel: int) -> bool | None:
    """
    For one whole frame (as L{DeliveryReader} hands back): True when it is
    a C{queue.bind-ok} on C{channel}, False when a C{queue.unbind-ok}, else None.
    """
    if len(frame) != 12 or frame[0] != FRAME_METHOD or frame[1] != channel >> 8 or frame[2] != channel & 0xFF:
        return None
    tail = frame[3:]
    if tail == _BIND_OK_TAIL:
        return True
    if tail == _UNBIND_OK_TAIL:
        return False
    return None


def _shortstr(value: bytes, what: str) -> bytes:
    if len(value) > 255:
        raise ValueError(f"{what} is {len(value)} bytes; AMQP allows 255")
    return bytes((len(value),)) + value


def publish_frames(
    channel: int,
    exchange: bytes,
    routing_key: bytes,
    body: bytes,
    frame_max: int,
    *,
    mandatory: bool = False,
    content_type: bytes | None = None,
    delivery_mode: int | None = None,
) -> bytes:
    """
    The frames of one C{basic.publish}: the method, a content header with
    the given properties, and the body cut into frames of at most
    C{frame_max} bytes (the size the connection negotiated; 0 means none).

    @raise ValueError: C{exchange}, C{routing_key} or C{content_type} longer
        than 255 bytes.
    """
    method = (
        _PUBLISH_IDS
        + b"\x00\x00"  # reserved-1 (ticket)
        + _shortstr(exchange, "the exchange name")
        + _shortstr(routing_key, "the routing key")
        + (b"\x01" if mandatory else b"\x00")  # mandatory, immediate (never)
    )
    flags = 0
    properties = b""
    if content_type is not None:
        flags |= 0x8000
        properties += _shortstr(content_type, "the content type")
    if delivery_mode is not None:
        flags |= 0x1000
        properties += bytes((delivery_mode,))
    header = struct.pack("!HHQH", BASIC, 0, len(body), flags) + properties
    parts = [
        _FRAME.pack(FRAME_METHOD, channel, len(method)),
        method,
        _END,
        _FRAME.pack(FRAME_HEADER, channel, len(header)),
        header,
        _END,
    ]
    step = frame_max - 8 if frame_max > 8 else max(len(body), 1)
    for i in range(0, len(body), step):
        chunk = body[i : i + step]
        parts += (_FRAME.pack(FRAME_BODY, channel, len(chunk)), chunk, _END)
    return b"".join(parts)
