"""
The doors of L{peatio_ws.websocket} to other libraries' internals
(C{_autobahn.py}, C{_transport.py}): each name and behaviour they rely on,
checked against the installed Autobahn and Twisted, so an upgrade that
changes one fails here, saying what changed, instead of somewhere deep in a
connection.
"""

from __future__ import annotations

import inspect
import re

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionRequest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import tcp
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.websocket import _autobahn, _transport
from tests.support.fuzzing import examples
from tests.support.sockets import connected_pair


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


class AutobahnDoorTests(SynchronousTestCase):
    """What L{peatio_ws.websocket._autobahn} overrides or calls (written against autobahn 26.11.1)."""

    def test_overridden_hooks(self) -> None:
        """The internal methods overridden still exist with the same parameters."""
        expected = {
            "_dataReceived": ["self", "data"],
            "processHandshake": ["self"],
            "onFrameBegin": ["self"],
            "onMessageBegin": ["self", "isBinary"],
            "onMessageFrameBegin": ["self", "length"],
            "_fail_connection": ["self", "code", "reason"],
            "failHandshake": ["self", "reason", "code", "responseHeaders"],
            "sendCloseFrame": ["self", "code", "reasonUtf8", "isReply"],
            "succeedHandshake": ["self", "res"],
            "sendData": ["self", "data", "sync", "chopsize"],
        }
        found = {}
        for name in expected:
            method = getattr(WebSocketServerProtocol, name, None)
            found[name] = parameters(method) if method is not None else "missing"
        self.assertEqual(found, expected, "Autobahn changed a method peatio_ws.websocket._autobahn overrides or calls")

    def test_send_data_state(self) -> None:
        """
        sendData writes at once unless trickling (a send_queue) or logging
        octets, which the door leaves to Autobahn: both still exist.
        """
        self.assertIn("self.send_queue = deque()", inspect.getsource(WebSocketProtocol._connectionMade))
        self.assertIn("logOctets", WebSocketServerProtocol.CONFIG_ATTRS)
        self.assertIs(WebSocketServerFactory().logOctets, False)
        source = inspect.getsource(WebSocketProtocol.sendData)
        self.assertIn("self.send_queue", source)
        self.assertIn("self.transport.write(data)", source)

    def test_quick_upgrade_helpers(self) -> None:
        """
        The quick upgrade checks an Origin with Autobahn's own helpers, and
        hands onConnect the ConnectionRequest Autobahn builds
        (tests.unit.test_quick_upgrade compares the two paths whole).
        """
        protocol = __import__("autobahn.websocket.protocol", fromlist=["_url_to_origin"])
        self.assertEqual(parameters(protocol._url_to_origin), ["url"])
        self.assertEqual(
            parameters(protocol._is_same_origin), ["websocket_origin", "host_scheme", "host_port", "host_policy"]
        )
        slots = ("peer", "headers", "host", "path", "params", "version", "origin", "protocols", "extensions")
        self.assertEqual(parameters(ConnectionRequest.__init__)[1:], list(slots))
        source = inspect.getsource(WebSocketServerProtocol.processHandshake)
        self.assertIn("self._wskey = key", source)
        self.assertIn("txaio.add_callbacks(f, self.succeedHandshake, forward_error)", source)

    def test_data_received_feeds_buffer(self) -> None:
        """_dataReceived appends to self.data and calls consumeData: the head search reads self.data."""
        source = inspect.getsource(WebSocketProtocol._dataReceived)
        self.assertIn("self.data += data", source, "Autobahn no longer buffers inbound bytes in self.data")
        self.assertIn("self.consumeData()", source)

    def test_handshake_reads_data_and_head_state(self) -> None:
        """The server handshake searches self.data for the head's end and keeps the raw request and headers."""
        source = inspect.getsource(WebSocketServerProtocol.processHandshake)
        for needle in ('self.data.find(b"\\x0d\\x0a\\x0d\\x0a")', "self.http_request_data", "self.http_headers"):
            self.assertIn(needle, source, f"Autobahn's server handshake no longer uses {needle}")

    def test_fail_handshake_replaced(self) -> None:
        """
        failHandshake, which the door replaces with the same steps minus the
        logging, still does just those; dropConnection still warns only
        when not wasClean; the server handshake still refuses through it.
        """
        source = inspect.getsource(WebSocketServerProtocol.failHandshake)
        for needle in (
            "self.wasNotCleanReason = reason",
            "self.sendHttpErrorResponse(code, reason, responseHeaders)",
            "self.dropConnection(abort=False)",
        ):
            self.assertIn(needle, source, f"Autobahn's failHandshake no longer does {needle}")
        self.assertEqual(
            parameters(WebSocketServerProtocol.sendHttpErrorResponse), ["self", "code", "reason", "responseHeaders"]
        )
        self.assertIn("if self.wasClean:", inspect.getsource(WebSocketProtocol.dropConnection))
        self.assertIn("self.failHandshake(", inspect.getsource(WebSocketServerProtocol.processHandshake))

    def test_frame_state(self) -> None:
        """Frame processing keeps current_frame (with fin) and failedByMe; onMessageFrameBegin counts the length."""
        frame_source = inspect.getsource(WebSocketProtocol.processData)
        self.assertIn("self.current_frame = FrameHeader(", frame_source)
        header = inspect.getsource(__import__("autobahn.websocket.protocol", fromlist=["FrameHeader"]).FrameHeader)
        self.assertIn("self.fin = fin", header)
        begin = inspect.getsource(WebSocketProtocol.onMessageFrameBegin)
        self.assertIn("self.message_data_total_length += length", begin)
        self.assertIn("self.failedByMe", begin)

    def test_close_state(self) -> None:
        """sendCloseFrame records closedByMe (not a reply), localCloseCode, localCloseReason: close_sent reads them."""
        source = inspect.getsource(WebSocketProtocol.sendCloseFrame)
        needles = ("self.closedByMe = not isReply", "self.localCloseCode = code", "self.localCloseReason = reasonUtf8")
        for needle in needles:
            self.assertIn(needle, source, f"Autobahn's sendCloseFrame no longer sets {needle.split(' =')[0]}")

    def test_open_state_as_succeed_handshake_leaves_it(self) -> None:
        """
        open_carried sets what succeedHandshake sets after its response, no
        more: an upgrade that sets something new there fails here, for
        open_carried to set it too.
        """
        source = inspect.getsource(WebSocketServerProtocol.succeedHandshake)
        after = source[source.index("self.sendData(response.encode(") :]
        assignments = set(re.findall(r"self\.(\w+) = ", after))
        assignments |= set(re.findall(r"txaio\.resolve\(self\.(\w+)", after))
        expected = {"state", "openHandshakeTimeoutCall", "inside_message", "current_frame", "is_open"}
        # The response kept for Autobahn's test suite, and the auto-ping (off here): not state open_carried needs.
        expected |= {"http_response_data", "autoPingPendingCall"}
        self.assertEqual(
            assignments,
            expected,
            "Autobahn's succeedHandshake sets other state after its response: open_carried must follow",
        )
        before = source[: source.index("self.sendData(response.encode(")]
        for needle in ("self.websocket_protocol_in_use = ", "self.websocket_extensions_in_use = []"):
            self.assertIn(needle, before)

    def test_unfinished_state(self) -> None:
        """What unfinished reads is what _connectionMade sets up, and the frame state as frames use it."""
        made = inspect.getsource(WebSocketProtocol._connectionMade)
        needles = ["self._perMessageCompress = None", "self.send_queue = deque()", 'self.data = b""']
        needles.append("self.closedByMe = False")
        for needle in needles:
            self.assertIn(needle, made, f"Autobahn's _connectionMade no longer sets {needle.split(' =')[0]}")
        process = inspect.getsource(WebSocketProtocol.processData)
        self.assertIn("self.inside_message", process)
        self.assertIn("self.current_frame = None", inspect.getsource(WebSocketProtocol.onFrameEnd))

    def test_options_copied_per_connection(self) -> None:
        """CONFIG_ATTRS still lists the options copied into each connection, read from the factory."""
        attrs = WebSocketServerProtocol.CONFIG_ATTRS
        self.assertIn("maxMessagePayloadSize", attrs)
        self.assertIn("closeHandshakeTimeout", attrs)
        factory = WebSocketServerFactory()
        self.assertEqual([a for a in attrs if not hasattr(factory, a)], [])
        made = inspect.getsource(WebSocketProtocol._connectionMade)
        self.assertIn("CONFIG_ATTRS", made, "Autobahn no longer copies CONFIG_ATTRS per connection")

    def test_debug_argument_helpers(self) -> None:
        """
        The helpers quiet_debug_arguments replaces are still module globals
        that the modules call (a renamed one would be left formatting), and
        every call of them is an argument of a log line: the identity (or
        repr) changes no behaviour, only how a written debug line looks.
        """
        for module, names in _autobahn.DEBUG_ARGUMENT_HELPERS.items():
            source = inspect.getsource(module)
            for name in names:
                self.assertIn(name, vars(module), f"{module.__name__} no longer has {name}")
                calls = re.findall(rf"^(.*)\b{name}\(", source, re.MULTILINE)
                self.assertTrue(calls, f"{module.__name__} no longer calls {name}")
                for before in calls:
                    # An argument of a log call (key=helper(...)), or Timings' pformat string.
                    where = f"{module.__name__} calls {name} outside a log line"
                    self.assertRegex(before, r"(\b\w+=|^\s*return )$", where)

    def test_debug_arguments_quieted(self) -> None:
        """After quiet_debug_arguments the helpers hand values back as they are; Timings still prints as text."""
        _autobahn.quiet_debug_arguments()
        _autobahn.quiet_debug_arguments()
        protocol = __import__("autobahn.websocket.protocol", fromlist=["Timings"])
        marker = object()
        self.assertIs(protocol.hltype(marker), marker)
        self.assertIs(protocol.hlval(marker, color="red"), marker)
        self.assertIsInstance(str(protocol.Timings()), str)

    def test_masker_factory(self) -> None:
        """
        Autobahn makes a masker per received frame through the module global
        create_xor_masker(mask, length), which use_small_frame_masker
        replaces, and asks of it only process(), pointer() and reset().
        """
        import autobahn.websocket.protocol as protocol

        self.assertIn("create_xor_masker", vars(protocol), "autobahn.websocket.protocol has no create_xor_masker")
        process_data = inspect.getsource(WebSocketProtocol.processData)
        self.assertRegex(
            process_data,
            r"current_frame_masker = create_xor_masker\(\s*frame_mask, frame_payload_len\s*\)",
            "Autobahn no longer makes a frame's masker with create_xor_masker(mask, length)",
        )
        used = set(re.findall(r"current_frame_masker\.(\w+)\(", inspect.getsource(WebSocketProtocol)))
        self.assertLessEqual(used, {"process", "pointer", "reset"}, "Autobahn asks more of a masker")
        self.assertEqual(parameters(_autobahn._autobahn_masker), ["mask", "length"])
        _autobahn.use_small_frame_masker()
        _autobahn.use_small_frame_masker()
        self.assertIs(protocol.create_xor_masker, _autobahn.small_frame_masker)
        self.assertIsInstance(protocol.create_xor_masker(b"abcd", 10), _autobahn.IntMasker)
        self.assertNotIsInstance(protocol.create_xor_masker(b"abcd", _autobahn.SMALL_FRAME), _autobahn.IntMasker)

    @examples(300)
    @given(
        mask=st.binary(min_size=4, max_size=4),
        payload=st.binary(max_size=2 * _autobahn.SMALL_FRAME),
        cuts=st.lists(st.integers(min_value=0, max_value=2 * _autobahn.SMALL_FRAME), max_size=6),
    )
    def test_small_frame_masker_is_autobahns(self, mask: bytes, payload: bytes, cuts: list[int]) -> None:
        """
        The small-frame masker unmasks as Autobahn's own does (the oracle),
        the payload handed over in any pieces, with the same pointer after each.
        """
        ours = _autobahn.small_frame_masker(mask, len(payload))
        theirs = _autobahn._autobahn_masker(mask, len(payload))
        start = 0
        for end in [*sorted(c for c in cuts if c <= len(payload)), len(payload)]:
            piece = payload[start:end]
            self.assertEqual(ours.process(piece), theirs.process(piece))
            self.assertEqual(ours.pointer(), theirs.pointer())
            start = end
        ours.reset()
        theirs.reset()
        self.assertEqual((ours.pointer(), ours.process(payload)), (theirs.pointer(), theirs.process(payload)))

    def test_batched_timer(self) -> None:
        """
        The factory's _batched_timer, which the door replaces with a
        BucketTimer: Autobahn makes it in the factory and calls only
        call_later(delay, func) on it, keeping the result to cancel().
        """
        from autobahn.websocket import protocol

        factory_init = inspect.getsource(protocol.WebSocketServerFactory.__init__)
        self.assertIn("self._batched_timer = txaio.make_batched_timer(", factory_init)
        source = inspect.getsource(WebSocketProtocol)
        uses = re.findall(r"_batched_timer\.(\w+)\(", source)
        self.assertTrue(uses)
        self.assertEqual(set(uses), {"call_later"}, "Autobahn calls more of _batched_timer than call_later")
        # What Autobahn does with a timer it made: cancel it, nothing else.
        for name in ("closeHandshakeTimeoutCall", "autoPingTimeoutCall", "autoPingPendingCall"):
            calls = set(re.findall(rf"self\.{name}\.(\w+)\(", source))
            self.assertLessEqual(calls, {"cancel"}, name)


class BucketTimerTests(SynchronousTestCase):
    """L{_autobahn.BucketTimer}: Autobahn's connection timers on the injected clock, cancelled in O(1)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000.05)
        self.timer = _autobahn.BucketTimer(self.clock, bucket=0.2)
        self.fired: list[object] = []

    def test_never_early_at_most_a_bucket_late(self) -> None:
        self.timer.call_later(1.0, self.fired.append, "a")
        self.clock.advance(0.999)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.2)
        self.assertEqual(self.fired, ["a"])
        self.assertEqual(self.timer.pending(), 0)

    def test_one_clock_call_per_bucket_in_order(self) -> None:
        for i in range(5):
            self.timer.call_later(1.0 + i / 100, self.fired.append, i)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1.2)
        self.assertEqual(self.fired, [0, 1, 2, 3, 4])

    def test_cancel(self) -> None:
        calls = [self.timer.call_later(1.0, self.fired.append, i) for i in range(4)]
        calls[1].cancel()
        calls[1].cancel()
        calls[3].cancel()
        self.assertEqual(self.timer.pending(), 2)
        self.clock.advance(2)
        self.assertEqual(self.fired, [0, 2])
        calls[0].cancel()  # after it fired: nothing happens
        self.assertEqual(self.timer.pending(), 0)

    def test_last_cancel_cancels_the_clock_call(self) -> None:
        """A bucket whose calls were all cancelled leaves nothing on the clock (a reactor left clean)."""
        calls = [self.timer.call_later(1.0, self.fired.append, i) for i in range(3)]
        for call in calls:
            call.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.timer.pending(), 0)

    def test_keyword_arguments(self) -> None:
        self.timer.call_later(0.5, lambda a, b: self.fired.append((a, b)), 1, b=2)
        self.clock.advance(1)
        self.assertEqual(self.fired, [(1, 2)])

    def test_a_failing_call_does_not_stop_the_others(self) -> None:
        def boom() -> None:
            raise RuntimeError("boom")

        self.timer.call_later(0.1, boom)
        self.timer.call_later(0.1, self.fired.append, "after")
        self.clock.advance(1)
        self.assertEqual(self.fired, ["after"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_factory_uses_it(self) -> None:
        """The daemon's factory times its connections on its own clock."""
        from peatio_ws.testing import settings_for_tests
        from peatio_ws.testing.factory import stream_factory

        factory = stream_factory(settings_for_tests(), self.clock, handshake_timeouts=True)
        self.assertIsInstance(factory._batched_timer, _autobahn.BucketTimer)
        factory._batched_timer.call_later(0.1, self.fired.append, "x")
        self.clock.advance(1)
        self.assertEqual(self.fired, ["x"])


class TwistedTransportDoorTests(SynchronousTestCase):
    """What L{peatio_ws.websocket._transport} reads (written against Twisted 26.10.0)."""

    def server(self) -> tcp.Server:
        """A real server-side TCP connection (closed at cleanup), on a memory reactor."""
        _, accepted, address = connected_pair(self)
        # A memory reactor: tcp.Server starts reading at once, and the
        # global reactor must not be left watching a socket closed at cleanup.
        return tcp.Server(accepted, None, address, None, 1, MemoryReactor())  # type: ignore[arg-type]

    def test_tcp_connection_attributes(self) -> None:
        """A real server-side TCP connection has socket, dataBuffer, offset, _tempDataLen, connected, disconnecting."""
        server = self.server()
        missing = [
            name
            for name in ("socket", "dataBuffer", "offset", "_tempDataLen", "connected", "disconnecting")
            if not hasattr(server, name)
        ]
        self.assertEqual(missing, [], "Twisted's tcp.Connection lost attributes _transport relies on")
        self.assertIs(_transport.direct_socket(server), server.socket)
        self.assertEqual(_transport.held_bytes(server), 0)
        self.assertIsInstance(server.dataBuffer, bytes | memoryview)
        self.assertIsInstance(server._tempDataLen, int)

    def test_pending_output(self) -> None:
        """What transport.write keeps (dataBuffer from offset, then _tempDataBuffer) is what pending_output returns."""
        server = self.server()
        self.assertIsInstance(server._tempDataBuffer, list)
        server.write(b"one")
        server.write(b"two")
        self.assertEqual(_transport.pending_output(server), b"onetwo")
        server.dataBuffer, server.offset = b"xxhead", 2
        self.assertEqual(_transport.pending_output(server), b"headonetwo")
        self.assertEqual(_transport.held_bytes(server), len(b"headonetwo"))

    def test_write_buffers_in_temp_data(self) -> None:
        """transport.write keeps unsent bytes in _tempData/_tempDataLen until doWrite: what held_bytes counts."""
        source = inspect.getsource(tcp.Connection.write) if "write" in vars(tcp.Connection) else ""
        source += inspect.getsource(__import__("twisted.internet.abstract", fromlist=["FileDescriptor"]).FileDescriptor)
        self.assertIn("_tempDataLen", source)
        self.assertIn("self.dataBuffer", source)
