"""
Unit tests for L{peatio_ws.amqp._wire}: the AMQP 0-9-1 frames of the hot
paths, on byte strings built by hand here (not with txAMQP, not with the
code under test).
"""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.amqp._wire import (
    NO_CHANNEL,
    DeliveryReader,
    FrameError,
    Read,
    ack_frame,
    binding_answer,
    binding_frame,
    publish_frames,
)

HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"


def frame(ftype: int, channel: int, payload: bytes, end: bytes = b"\xce") -> bytes:
    return struct.pack("!BHI", ftype, channel, len(payload)) + payload + end


def shortstr(value: bytes) -> bytes:
    return bytes((len(value),)) + value


def deliver(channel: int, tag: int, key: bytes, consumer_tag: bytes = b"ctag", exchange: bytes = b"ex") -> bytes:
    """basic.deliver (class 60, method 60)."""
    payload = (
        struct.pack("!HH", 60, 60)
        + shortstr(consumer_tag)
        + struct.pack("!Q", tag)
        + b"\x00"  # redelivered
        + shortstr(exchange)
        + shortstr(key)
    )
    return frame(1, channel, payload)


def header(channel: int, size: int) -> bytes:
    """A content header of class basic, no properties."""
    return frame(2, channel, struct.pack("!HHQH", 60, 0, size, 0))


def body(channel: int, data: bytes) -> bytes:
    return frame(3, channel, data)


def method(channel: int, class_id: int, method_id: int, args: bytes = b"") -> bytes:
    return frame(1, channel, struct.pack("!HH", class_id, method_id) + args)


def message(channel: int, tag: int, key: bytes, data: bytes, frame_max: int = 131072) -> bytes:
    """The frames of one delivery, the body cut into frames of at most frame_max bytes."""
    out = deliver(channel, tag, key) + header(channel, len(data))
    step = frame_max - 8
    for i in range(0, len(data), step):
        out += body(channel, data[i : i + step])
    return out


CONSUME_OK = method(1, 60, 21, shortstr(b"ctag"))
CONNECTION_CLOSE = method(0, 10, 50, struct.pack("!H", 320) + shortstr(b"CONNECTION_FORCED") + b"\x00" * 4)


def reader(channel: int = 1) -> DeliveryReader:
    return DeliveryReader(channel)


class DeliveryReaderTests(SynchronousTestCase):
    """Cutting frames, and assembling the deliveries of one channel."""

    def test_one_delivery(self) -> None:
        """The three frames of a delivery in one read: (tag, routing key, body)."""
        read = reader().feed(message(1, 7, b"private.U1.order", b'{"id":1}'))
        self.assertEqual(read, Read([(7, b"private.U1.order", b'{"id":1}')], True, None))

    def test_many_in_order(self) -> None:
        """Several deliveries in one read come out in the broker's order."""
        data = b"".join(message(1, i, b"private.U.order", b'{"i":%d}' % i) for i in range(1, 101))
        read = reader().feed(data)
        self.assertEqual(read.items, [(i, b"private.U.order", b'{"i":%d}' % i) for i in range(1, 101)])
        self.assertIsNone(read.error)

    def test_empty_body(self) -> None:
        """A header announcing 0 bytes and no body frame completes a delivery with an empty body."""
        read = reader().feed(deliver(1, 3, b"k") + header(1, 0))
        self.assertEqual(read.items, [(3, b"k", b"")])

    def test_body_over_several_frames(self) -> None:
        """A body cut into several body frames is joined."""
        data = bytes(range(256)) * 40
        read = reader().feed(message(1, 1, b"k", data, frame_max=1000))
        self.assertEqual(read.items, [(1, b"k", data)])

    def test_every_split(self) -> None:
        """However two deliveries are split between two reads, the same deliveries come out, once."""
        data = message(1, 1, b"private.U.order", b'{"a":"' + b"x" * 50 + b'"}', frame_max=30) + message(
            1, 2, b"private.U.trade", b"{}"
        )
        expected = [(1, b"private.U.order", b'{"a":"' + b"x" * 50 + b'"}'), (2, b"private.U.trade", b"{}")]
        for cut in range(len(data) + 1):
            r = reader()
            items = r.feed(data[:cut]).items + r.feed(data[cut:]).items
            self.assertEqual(items, expected, cut)
            self.assertEqual(r.buffered, 0, cut)

    def test_byte_by_byte(self) -> None:
        """Fed one byte at a time, a delivery completes on its very last byte."""
        data = message(1, 9, b"k", b"hello", frame_max=10)
        r = reader()
        for i in range(len(data) - 1):
            self.assertEqual(r.feed(data[i : i + 1]).items, [], i)
        self.assertEqual(r.feed(data[-1:]).items, [(9, b"k", b"hello")])

    def test_heartbeat_between_frames(self) -> None:
        """A heartbeat (channel 0) between a delivery's frames comes back whole, before the delivery it interrupted."""
        data = deliver(1, 1, b"k") + HEARTBEAT + header(1, 2) + HEARTBEAT + body(1, b"{}")
        read = reader().feed(data)
        self.assertEqual(read.items, [HEARTBEAT, HEARTBEAT, (1, b"k", b"{}")])

    def test_other_frames_whole_in_order(self) -> None:
        """Other methods on the channel, and frames of other channels, come back whole and in order."""
        other = deliver(2, 5, b"elsewhere")
        data = CONSUME_OK + message(1, 1, b"k", b"{}") + other + CONNECTION_CLOSE
        read = reader().feed(data)
        self.assertEqual(read.items, [CONSUME_OK, (1, b"k", b"{}"), other, CONNECTION_CLOSE])

    def test_no_channel_no_assembly(self) -> None:
        """Until its channel is set, the reader assembles nothing: every frame comes back whole."""
        data = message(1, 1, b"k", b"{}")
        r = DeliveryReader()
        self.assertEqual(r.channel, NO_CHANNEL)
        read = r.feed(data)
        self.assertEqual(b"".join(item for item in read.items if isinstance(item, bytes)), data)
        self.assertEqual(len(read.items), 3)
        self.assertFalse(read.fast)
        r.channel = 1
        self.assertEqual(r.feed(data).items, [(1, b"k", b"{}")])

    def test_fast_flag(self) -> None:
        """A read with part of a delivery is traffic on the fast path; one with only a heartbeat is not."""
        r = reader()
        self.assertEqual(r.feed(deliver(1, 1, b"k")), Read([], True, None))
        self.assertEqual(r.feed(HEARTBEAT), Read([HEARTBEAT], False, None))
        self.assertEqual(r.feed(header(1, 1)), Read([], True, None))
        self.assertEqual(r.feed(body(1, b"x")), Read([(1, b"k", b"x")], True, None))

    def test_incomplete_frame_waits(self) -> None:
        """Part of a frame is kept (buffered) until the rest arrives; nothing comes out meanwhile."""
        data = body(0, b"x" * 1000)
        r = reader()
        self.assertEqual(r.feed(data[:5]), Read([], False, None))
        self.assertEqual(r.buffered, 5)
        self.assertEqual(r.feed(data[5:500]), Read([], False, None))
        self.assertEqual(r.buffered, 500)
        self.assertEqual(r.feed(data[500:]).items, [data])
        self.assertEqual(r.buffered, 0)

    def test_partial_delivery_buffered(self) -> None:
        """The body so far of a delivery still missing frames counts as buffered; reset forgets it."""
        r = reader()
        r.feed(deliver(1, 1, b"k") + header(1, 10) + body(1, b"abcd"))
        self.assertEqual(r.buffered, 4)
        r.reset()
        self.assertEqual(r.buffered, 0)
        self.assertEqual(r.feed(message(1, 2, b"k", b"{}")).items, [(2, b"k", b"{}")])


class GarbageTests(SynchronousTestCase):
    """A protocol violation ends the read with an error; what came before it stands."""

    def assertBroken(self, data: bytes, expected_items: list[object], text: str) -> None:
        r = reader()
        read = r.feed(data)
        self.assertEqual(read.items, expected_items)
        self.assertIsInstance(read.error, FrameError)
        self.assertIn(text, str(read.error))
        self.assertEqual(r.buffered, 0)

    def test_bad_frame_end(self) -> None:
        """A frame not ended by 0xCE."""
        good = message(1, 1, b"k", b"{}")
        self.assertBroken(good + frame(1, 1, b"\x00\x3c\x00\x3c", end=b"\x00"), [(1, b"k", b"{}")], "frame end")

    def test_method_instead_of_header(self) -> None:
        """A method frame where the delivery's content header must come."""
        self.assertBroken(deliver(1, 1, b"k") + deliver(1, 2, b"k"), [], "expected a content header")

    def test_header_instead_of_body(self) -> None:
        """A second header where a body frame must come."""
        self.assertBroken(deliver(1, 1, b"k") + header(1, 5) + header(1, 5), [], "expected a content body")

    def test_body_longer_than_header_said(self) -> None:
        self.assertBroken(deliver(1, 1, b"k") + header(1, 2) + body(1, b"abc"), [], "longer than its header")

    def test_deliver_cut_short(self) -> None:
        """A routing key running past the end of its frame."""
        bad = frame(1, 1, struct.pack("!HH", 60, 60) + shortstr(b"c") + struct.pack("!Q", 1) + b"\x00" + b"\x00\x40k")
        self.assertBroken(HEARTBEAT + bad, [HEARTBEAT], "cut short")

    def test_deliver_truncated_fields(self) -> None:
        """A basic.deliver frame too short to hold its fields."""
        self.assertBroken(frame(1, 1, struct.pack("!HH", 60, 60) + b"\x05ab"), [], "")

    def test_random_garbage_never_raises(self) -> None:
        """Arbitrary bytes are waited on, handed back as frames, or refused: never an exception."""
        for seed in range(200):
            data = bytes((seed * 7919 + i * 104729) % 256 for i in range(seed + 1))
            read = reader().feed(data)
            self.assertIsInstance(read, Read)


class WriteTests(SynchronousTestCase):
    """The frames we send."""

    def test_ack(self) -> None:
        """basic.ack (60, 80): delivery tag, then the multiple bit."""
        self.assertEqual(ack_frame(1, 5), frame(1, 1, struct.pack("!HHQB", 60, 80, 5, 1)))
        last = 2**64 - 1
        self.assertEqual(ack_frame(3, last, multiple=False), frame(1, 3, struct.pack("!HHQB", 60, 80, last, 0)))

    def test_publish(self) -> None:
        """basic.publish (60, 40), a header with content-type and delivery-mode, one body frame."""
        expected = (
            frame(1, 1, struct.pack("!HHH", 60, 40, 0) + shortstr(b"ex") + shortstr(b"private.U.order") + b"\x01")
            + frame(2, 1, struct.pack("!HHQH", 60, 0, 2, 0x9000) + shortstr(b"application/json") + b"\x01")
            + body(1, b"{}")
        )
        got = publish_frames(
            1, b"ex", b"private.U.order", b"{}", 131072,
            mandatory=True, content_type=b"application/json", delivery_mode=1,
        )
        self.assertEqual(got, expected)

    def test_publish_no_properties_empty_body(self) -> None:
        """No properties: flags 0; an empty body: no body frame."""
        expected = frame(1, 2, struct.pack("!HHH", 60, 40, 0) + shortstr(b"") + shortstr(b"k") + b"\x00") + frame(
            2, 2, struct.pack("!HHQH", 60, 0, 0, 0)
        )
        self.assertEqual(publish_frames(2, b"", b"k", b"", 4096), expected)

    def test_publish_splits_at_frame_max(self) -> None:
        """Body frames carry at most frame_max - 8 bytes; frame_max 0 means no limit."""
        data = bytes(range(250))
        got = publish_frames(1, b"x", b"k", data, 108)
        tail = b"".join(body(1, data[i : i + 100]) for i in range(0, 250, 100))
        self.assertTrue(got.endswith(tail))
        self.assertTrue(publish_frames(1, b"x", b"k", data, 0).endswith(body(1, data)))

    def test_publish_round_trip(self) -> None:
        """What publish_frames writes, read back as a delivery's content, is the same body."""
        data = "比特币".encode() * 100
        frames = publish_frames(1, b"x", b"k", data, 64)
        # The method frame differs (publish, not deliver); header and body frames are the same.
        content = frames[frames.index(b"\xce") + 1 :]
        read = reader().feed(deliver(1, 1, b"k") + content)
        self.assertEqual(read.items, [(1, b"k", data)])

    def test_publish_long_names(self) -> None:
        """Names over 255 bytes cannot be sent (a short string)."""
        with self.assertRaises(ValueError):
            publish_frames(1, b"x", b"k" * 256, b"", 4096)
        with self.assertRaises(ValueError):
            publish_frames(1, b"x" * 256, b"k", b"", 4096)

    def test_bind(self) -> None:
        """queue.bind (50, 20): ticket 0, queue, exchange, routing key, no-wait off, an empty table."""
        expected = frame(
            1, 1, struct.pack("!HHH", 50, 20, 0) + shortstr(b"q") + shortstr(b"ex") + shortstr(b"private.U.*")
            + b"\x00" + struct.pack("!I", 0)
        )
        self.assertEqual(binding_frame(1, True, b"q", b"ex", b"private.U.*"), expected)

    def test_unbind(self) -> None:
        """queue.unbind (50, 50): the same fields without the no-wait bit (unbind has none)."""
        expected = frame(
            1, 300, struct.pack("!HHH", 50, 50, 0) + shortstr(b"q") + shortstr(b"ex") + shortstr(b"private.U.*")
            + struct.pack("!I", 0)
        )
        self.assertEqual(binding_frame(300, False, b"q", b"ex", b"private.U.*"), expected)

    def test_binding_long_names(self) -> None:
        """A queue, exchange or key over 255 bytes cannot be sent."""
        for names in [(b"q" * 256, b"x", b"k"), (b"q", b"x" * 256, b"k"), (b"q", b"x", b"k" * 256)]:
            with self.assertRaises(ValueError):
                binding_frame(1, True, *names)


class BindingAnswerTests(SynchronousTestCase):
    """Picking the answers to our binds and unbinds out of the frames handed back."""

    def test_answers(self) -> None:
        """bind-ok (50, 21) is True, unbind-ok (50, 51) False, on the channel asked about."""
        self.assertIs(binding_answer(method(1, 50, 21), 1), True)
        self.assertIs(binding_answer(method(1, 50, 51), 1), False)
        self.assertIs(binding_answer(method(258, 50, 21), 258), True)

    def test_not_answers(self) -> None:
        """Another channel (high or low byte), another method, a frame of another type or size: None."""
        for raw, channel in [
            (method(2, 50, 21), 1),
            (method(1 + 256, 50, 21), 1),
            (method(1, 50, 21), 257),
            (method(1, 50, 11, shortstr(b"q") + struct.pack("!II", 0, 0)), 1),  # declare-ok
            (method(1, 50, 41, struct.pack("!I", 0)), 1),  # delete-ok
            (method(1, 60, 21), 1),
            (CONSUME_OK, 1),
            (frame(2, 1, struct.pack("!HH", 50, 21)), 1),
            (method(1, 50, 21, b"\x00"), 1),
            (method(1, 50, 21), NO_CHANNEL),
            (HEARTBEAT, 0),
        ]:
            self.assertIsNone(binding_answer(raw, channel), (raw, channel))

    def test_handed_back_by_the_reader(self) -> None:
        """The reader hands the answers back whole among the deliveries, which it still assembles."""
        read = reader().feed(method(1, 50, 21) + message(1, 7, b"k", b"{}") + method(1, 50, 51))
        self.assertEqual([binding_answer(item, 1) if isinstance(item, bytes) else item for item in read.items],
                         [True, (7, b"k", b"{}"), False])
