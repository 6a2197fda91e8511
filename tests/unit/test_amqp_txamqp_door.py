"""
The door test of L{peatio_ws.amqp._txamqp}: every txAMQP name and behaviour
it relies on, checked against the txAMQP installed. Written against txAMQP
0.8.2. When an upgrade changes one of them, the test fails saying what
changed and which piece of C{_txamqp.py} (numbered as in its docstring)
relies on it; review that piece before changing the pin in setup.py.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
import socket
import struct
from io import BytesIO
from typing import Any, cast

from twisted.internet import main, tcp
from twisted.internet.posixbase import _PollLikeMixin
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from txamqp import codec, spec
from txamqp.client import Closed, TwistedDelegate
from txamqp.connection import Body, Frame, Header, Heartbeat, Method
from txamqp.delegate import Delegate
from txamqp.endpoint import AMQEndpoint
from txamqp.factory import AMQFactory
from txamqp.protocol import AMQChannel, AMQClient, FrameReceiver
from txamqp.testing import AMQPump

from peatio_ws.amqp import _txamqp, _wire
from peatio_ws.amqp.publisher import RABBITMQ_EXTENDED_SPEC
from peatio_ws.config import Settings

WRITTEN_AGAINST = "0.8.2"
INSTALLED = importlib.metadata.version("txamqp")
SPEC_PATH = Settings().amqp_spec


def params(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


class DoorCase(SynchronousTestCase):
    def check(self, ok: object, piece: str, what: str) -> None:
        """Fail, naming the piece of _txamqp.py and what changed, unless C{ok}."""
        if not ok:
            self.fail(
                f"txAMQP {INSTALLED} changed: {what}. peatio_ws/amqp/_txamqp.py (written against txAMQP "
                f"{WRITTEN_AGAINST}) relies on it for {piece}; review that piece."
            )

    def check_params(self, function: Any, expected: list[str], piece: str) -> None:
        got = params(function)
        self.check(got == expected, piece, f"{function.__qualname__} takes {got}, not {expected}")


class VersionTests(DoorCase):
    def test_version(self) -> None:
        """The installed txAMQP is the one the door was written against (setup.py pins it)."""
        self.check(INSTALLED == WRITTEN_AGAINST, "every piece", f"the version is {INSTALLED}")


class BodyAsBytesTests(DoorCase):
    """1. Bodies as bytes."""

    PIECE = "1. bodies as bytes (install)"

    def test_body_decode_is_a_staticmethod(self) -> None:
        """Body.decode is a staticmethod of (spec, dec), which install() replaces."""
        self.check(isinstance(Body.__dict__.get("decode"), staticmethod), self.PIECE, "Body.decode is no staticmethod")
        self.check_params(Body.decode, ["spec", "dec"], self.PIECE)

    def test_codec_decode_longbytes(self) -> None:
        """The decoder has decode_longbytes, reading a long string as bytes."""
        self.check(hasattr(codec.Codec, "decode_longbytes"), self.PIECE, "Codec.decode_longbytes is gone")

    def test_body_holds_content(self) -> None:
        """Body(content) keeps it as .content, and is a frame payload of type frame_body."""
        self.check(Body(b"x").content == b"x", self.PIECE, "Body(content).content")
        self.check(Body.type == Frame.BODY == "frame_body", self.PIECE, "Body.type")

    def test_read_content_counts_len(self) -> None:
        """The stock read path (read_content) completes a body when len(content) reaches the header's size."""
        _txamqp.install()
        client = AMQClient(TwistedDelegate(), "/", _txamqp.load_spec(SPEC_PATH), clock=Clock())
        pump = AMQPump()
        pump.connect(client)
        body = "é".encode() * 3
        pump.pumpMethod(1, "basic", "deliver", consumer_tag="t", delivery_tag=1, redelivered=False, exchange="x",
                        routing_key="k")
        pump.pumpHeader(1, "basic", 0, len(body))
        pump.pumpBody(1, body)
        message = self.successResultOf(self.successResultOf(client.queue("t")).get())
        self.check(message.content.body == body, self.PIECE, f"the body read back is {message.content.body!r}")


class SpecTests(DoorCase):
    """2. The spec file, and the numbers _wire.py hard-codes."""

    PIECE = "2. the spec (load_spec) and _wire.py's constants"

    def setUp(self) -> None:
        self.spec = spec.load(SPEC_PATH)

    def test_load(self) -> None:
        """txamqp.spec.load(path) gives major, minor, classes.byname and constants."""
        self.check_params(spec.load, ["specfile"], self.PIECE)
        self.check((self.spec.major, self.spec.minor) == (0, 9), self.PIECE, "major/minor of the 0-9-1 spec")
        self.check("basic" in self.spec.classes.byname, self.PIECE, "classes.byname")

    def test_frame_constants(self) -> None:
        """The frame types and frame-end octet _wire.py uses are the spec's."""
        constants = self.spec.constants.bypyname
        for name, value in [
            ("frame_method", _wire.FRAME_METHOD),
            ("frame_header", _wire.FRAME_HEADER),
            ("frame_body", _wire.FRAME_BODY),
            ("frame_heartbeat", _wire.FRAME_HEARTBEAT),
            ("frame_end", _wire.FRAME_END),
        ]:
            self.check(constants[name].id == value, self.PIECE, f"{name} is {constants[name].id}, not {value}")

    def check_class(self, name: str, number: int, methods: dict[str, tuple[int, list[str]]]) -> None:
        """Class C{name} is number C{number}, and each of C{methods} has that number and those fields."""
        klass = self.spec.classes.byname[name]
        self.check(klass.id == number, self.PIECE, f"class {name} is {klass.id}")
        for method_name, (method_number, fields) in methods.items():
            method = klass.methods.byname[method_name]
            got = [f.name for f in method.fields]
            self.check(method.id == method_number, self.PIECE, f"{name}.{method_name} is method {method.id}")
            self.check(got == fields, self.PIECE, f"{name}.{method_name} has fields {got}")

    def test_basic_methods(self) -> None:
        """basic is class 60; deliver, publish and ack are its methods 60, 40 and 80, with the fields _wire.py reads."""
        self.check_class("basic", _wire.BASIC, {
            "deliver": (
                _wire.BASIC_DELIVER,
                ["consumer-tag", "delivery-tag", "redelivered", "exchange", "routing-key"],
            ),
            "publish": (_wire.BASIC_PUBLISH, ["reserved-1", "exchange", "routing-key", "mandatory", "immediate"]),
            "ack": (_wire.BASIC_ACK, ["delivery-tag", "multiple"]),
        })

    def test_queue_methods(self) -> None:
        """queue is class 50; bind, bind-ok, unbind, unbind-ok are 20, 21, 50, 51, with the fields _wire.py writes."""
        self.check_class("queue", _wire.QUEUE, {
            "bind": (_wire.QUEUE_BIND, ["reserved-1", "queue", "exchange", "routing-key", "no-wait", "arguments"]),
            "bind-ok": (_wire.QUEUE_BIND_OK, []),
            "unbind": (_wire.QUEUE_UNBIND, ["reserved-1", "queue", "exchange", "routing-key", "arguments"]),
            "unbind-ok": (_wire.QUEUE_UNBIND_OK, []),
        })

    def test_binding_frames_decode(self) -> None:
        """What _wire.binding_frame writes, txAMQP's own decoder reads as the bind or unbind meant."""
        codec = _txamqp.FrameCodec(self.spec)
        for bind, name in [(True, "queue.bind"), (False, "queue.unbind")]:
            decoded = codec.decode(_wire.binding_frame(3, bind, b"q.1", b"peatio.events", b"private.ID1.*"))
            self.check(
                (decoded.channel, decoded.name) == (3, name)
                and decoded.fields["queue"] in ("q.1", b"q.1")
                and decoded.fields["exchange"] in ("peatio.events", b"peatio.events")
                and decoded.fields["routing_key"] in ("private.ID1.*", b"private.ID1.*")
                and decoded.fields["arguments"] == {}
                and decoded.fields.get("nowait", False) is False,
                self.PIECE,
                f"binding_frame read back as {decoded}",
            )
        for name, answer in [("queue.bind-ok", True), ("queue.unbind-ok", False)]:
            got = _wire.binding_answer(codec.method(5, name), 5)
            self.check(got is answer, self.PIECE, f"{name} from txAMQP's encoder read as {got}")

    def test_basic_properties(self) -> None:
        """The first and fourth property flags of class basic are content-type and delivery-mode."""
        names = [f.name for f in self.spec.classes.byname["basic"].fields]
        self.check(names[0] == "content-type" and names[3] == "delivery-mode", self.PIECE, f"properties {names}")


class ReturnValueTests(DoorCase):
    """3. returnValue."""

    def test_warning_matches_the_filter(self) -> None:
        """txAMQP still calls returnValue, and what that warns matches the filter install() adds."""
        client = AMQClient(TwistedDelegate(), "/", spec.load(SPEC_PATH), clock=Clock())
        self.successResultOf(client.channel(1))
        warned = [w for w in self.flushWarnings() if "returnValue" in str(w["message"])]
        for warning in warned:
            module = inspect.getmodulename(warning["filename"]) or ""
            package = "txamqp." + module if "/txamqp/" in warning["filename"] else module
            self.check(
                re.match(_txamqp._RETURNVALUE_WARNING, str(warning["message"]))
                and re.match(_txamqp._TXAMQP_MODULES, package)
                and warning["category"] is DeprecationWarning,
                "3. returnValue",
                f"the warning is now {warning}",
            )


class LoginTests(DoorCase):
    """4. Client properties at login."""

    PIECE = "4. client properties at login (_Delegate)"

    def test_connection_start(self) -> None:
        """TwistedDelegate answers connection.start in connection_start(ch, msg)."""
        self.check_params(TwistedDelegate.connection_start, ["self", "ch", "msg"], self.PIECE)

    def test_start_sets_login_attributes(self) -> None:
        """AMQClient.start(response, mechanism, locale) sets them as attributes before waiting."""
        client = AMQClient(TwistedDelegate(), "/", spec.load(SPEC_PATH), clock=Clock())
        client.makeConnection(StringTransport())
        client.start({"LOGIN": "u", "PASSWORD": "p"}, "AMQPLAIN", "en_US")
        got = (client.response, client.mechanism, client.locale)
        self.check(
            got == ({"LOGIN": "u", "PASSWORD": "p"}, "AMQPLAIN", "en_US"),
            self.PIECE,
            "AMQClient.start no longer sets response, mechanism and locale",
        )

    def test_client_properties_sent(self) -> None:
        """Our delegate's connection.start-ok carries the client properties."""
        client = _txamqp.DeliveryClient(None, "/", spec.load(SPEC_PATH), clock=Clock())
        client.client_properties = {"connection_name": "door"}
        pump = AMQPump()
        pump.connect(client)
        client.start({"LOGIN": "u", "PASSWORD": "p"}, "AMQPLAIN", "en_US")
        pump.pumpMethod(0, "connection", "start", version_major=0, version_minor=9, server_properties={},
                        mechanisms="AMQPLAIN", locales="en_US")
        [start_ok] = pump.outgoing[0]
        self.check(start_ok.payload.args[0] == {"connection_name": "door"}, self.PIECE, "client-properties not sent")


    def test_encode_table_signature(self) -> None:
        """Codec.encode_table(self, tbl) is what install replaces, and decode_table reads t and F back."""
        self.check_params(codec.Codec.encode_table, ["self", "tbl"], self.PIECE)
        _txamqp.install()
        out = BytesIO()
        codec.Codec(out).encode_table({"a": "b", "n": 7, "capabilities": {"consumer_cancel_notify": True}})
        decoded = codec.Codec(BytesIO(out.getvalue())).decode_table()
        self.check(
            decoded == {"a": "b", "n": 7, "capabilities": {"consumer_cancel_notify": True}},
            self.PIECE,
            f"a nested table with a boolean did not round-trip: {decoded!r}",
        )

    def test_decode_table_every_rabbitmq_type(self) -> None:
        """Codec.decode_table(self), replaced: reads RabbitMQ's field types (quorum redeliveries carry an l)."""
        self.check_params(codec.Codec.decode_table, ["self"], self.PIECE)
        _txamqp.install()
        fields = (
            b"\x10x-delivery-count" + b"l" + struct.pack("!q", 1)
            + b"\x01b" + b"b" + struct.pack("!b", -1)
            + b"\x01s" + b"s" + struct.pack("!h", -2)
            + b"\x01d" + b"d" + struct.pack("!d", 0.5)
            + b"\x01T" + b"T" + struct.pack("!Q", 7)
            + b"\x01V" + b"V"
            + b"\x01A" + b"A" + struct.pack("!L", 6) + b"t\x01" + b"B\x09" + b"V" + b"V"
            + b"\x01D" + b"D" + struct.pack("!B", 2) + struct.pack("!i", 150)
        )
        data = struct.pack("!L", len(fields)) + fields
        decoded = codec.Codec(BytesIO(data)).decode_table()
        expected = {"x-delivery-count": 1, "b": -1, "s": -2, "d": 0.5, "T": 7, "V": None, "A": [True, 9, None, None],
                    "D": 1.5}
        self.check(decoded == expected, self.PIECE, f"RabbitMQ's field types decoded as {decoded!r}")

    def test_capabilities_sent_and_cancel_heard(self) -> None:
        """The consumer announces consumer_cancel_notify, and a broker basic.cancel reaches cancel_listener."""
        _txamqp.install()
        heard: list[bytes] = []
        factory = _txamqp.DeliveryClientFactory(SPEC_PATH, Clock(), {"connection_name": "door"}, lambda c: None)
        client = factory.buildProtocol(None)
        client.cancel_listener = lambda c, tag: heard.append(tag)
        pump = AMQPump()
        pump.connect(client)
        client.start({"LOGIN": "u", "PASSWORD": "p"}, "AMQPLAIN", "en_US")
        pump.pumpMethod(0, "connection", "start", version_major=0, version_minor=9, server_properties={},
                        mechanisms="AMQPLAIN", locales="en_US")
        [start_ok] = pump.outgoing[0]
        self.check(
            start_ok.payload.args[0] == {"connection_name": "door", "capabilities": {"consumer_cancel_notify": True}},
            self.PIECE,
            f"client properties sent: {start_ok.payload.args[0]!r}",
        )
        client.channel(1)
        pump.pumpMethod(1, "basic", "cancel", consumer_tag="q.1", no_wait=True)
        self.check(heard == [b"q.1"], self.PIECE, f"basic.cancel from the broker reached the listener as {heard!r}")


class FastPathTests(DoorCase):
    """5. The delivery fast path, 6. why a connection ended."""

    PIECE = "5. the delivery fast path (DeliveryClient)"

    def test_frame_receiver(self) -> None:
        """_unpack_frame(data) gives a Frame; frame_received(frame) takes one; AMQClient leaves dataReceived to it."""
        self.check_params(FrameReceiver._unpack_frame, ["self", "data"], self.PIECE)
        self.check_params(AMQClient.frame_received, ["self", "frame"], self.PIECE)
        self.check("dataReceived" in FrameReceiver.__dict__, self.PIECE, "FrameReceiver.dataReceived is gone")
        self.check("dataReceived" not in AMQClient.__dict__, self.PIECE, "AMQClient now has a dataReceived of its own")
        receiver = FrameReceiver(spec.load(SPEC_PATH))
        frame = receiver._unpack_frame(b"\x08\x00\x00\x00\x00\x00\x00\xce")
        self.check(isinstance(frame, Frame) and isinstance(frame.payload, Heartbeat), self.PIECE, "_unpack_frame")
        self.check(frame.channel == 0, self.PIECE, "Frame.channel")

    def heartbeat_client(self) -> tuple[AMQClient, Clock]:
        clock = Clock()
        client = AMQClient(TwistedDelegate(), "/", spec.load(SPEC_PATH), heartbeat=10, clock=clock)
        client.makeConnection(StringTransport())
        return client, clock

    def test_heartbeat_attributes(self) -> None:
        """heartbeatInterval, MAX_UNSEEN_HEARTBEAT (3), closed, checkHB (a DelayedCall) and clock are there."""
        client, clock = self.heartbeat_client()
        self.check(client.clock is clock, self.PIECE, "clock (the acks are timed on it)")
        self.check(client.heartbeatInterval == 10, self.PIECE, "heartbeatInterval")
        self.check(AMQClient.MAX_UNSEEN_HEARTBEAT == 3, self.PIECE, "MAX_UNSEEN_HEARTBEAT")
        self.check(client.closed is False, self.PIECE, "closed")
        self.check(client.checkHB.active() and client.checkHB.getTime() == 30, self.PIECE, "checkHB")
        self.check(hasattr(client.checkHB, "reset"), self.PIECE, "checkHB.reset")

    def test_process_frame_reschedules(self) -> None:
        """Every frame through frame_received calls reschedule_check_heartbeat (the fast path calls it itself)."""
        client, _ = self.heartbeat_client()
        calls: list[None] = []
        client.reschedule_check_heartbeat = lambda: calls.append(None)
        client.frame_received(Frame(0, Heartbeat()))
        self.check(calls == [None], self.PIECE, "process_frame no longer calls reschedule_check_heartbeat")

    def test_reschedule_recreates(self) -> None:
        """txAMQP's reschedule_check_heartbeat replaces checkHB (which ours moves instead)."""
        client, _ = self.heartbeat_client()
        before = client.checkHB
        AMQClient.reschedule_check_heartbeat(client)
        self.check(client.checkHB is not before and not before.active(), self.PIECE, "reschedule_check_heartbeat")

    def test_check_heartbeat_aborts(self) -> None:
        """check_heartbeat() aborts the transport (6.: DeliveryClient records why first)."""
        client, clock = self.heartbeat_client()
        aborted: list[None] = []
        client.transport.abortConnection = lambda: aborted.append(None)
        clock.advance(30)
        self.check(aborted == [None], "6. why a connection ended", "a missed heartbeat no longer aborts the transport")

    def test_close_hooks(self) -> None:
        """The broker's connection.close reaches do_close(Message); its channel.close reaches channel_failed."""
        piece = "6. why a connection ended"
        seen: list[tuple[str, Any]] = []

        class Recording(AMQClient):
            def do_close(self, reason: Any) -> None:
                seen.append(("do_close", reason))
                super().do_close(reason)

            def channel_failed(self, channel: Any, reason: Any) -> None:
                seen.append(("channel_failed", (channel.id, reason)))

        self.check_params(AMQClient.do_close, ["self", "reason"], piece)
        self.check_params(AMQClient.channel_failed, ["self", "channel", "reason"], piece)
        client = Recording(TwistedDelegate(), "/", spec.load(SPEC_PATH), clock=Clock())
        pump = AMQPump()
        pump.connect(client)
        pump.pumpMethod(1, "channel", "close", reply_code=404, reply_text="NOT_FOUND", class_id=0, method_id=0)
        pump.pumpMethod(0, "connection", "close", reply_code=320, reply_text="FORCED", class_id=0, method_id=0)
        kinds = [kind for kind, _ in seen]
        self.check("channel_failed" in kinds, piece, "channel.close skips channel_failed")
        [(channel_id, failure)] = [value for kind, value in seen if kind == "channel_failed"]
        self.check(channel_id == 1 and isinstance(failure, Failure), piece, "channel_failed(channel, Failure)")
        self.check(
            isinstance(failure.value, Closed) or hasattr(failure.value, "reply_code"),
            piece,
            f"channel_failed's reason is {failure.value!r}",
        )
        reasons = [value for kind, value in seen if kind == "do_close"]
        self.check(reasons and reasons[0].reply_code == 320, piece, "do_close(Message)")
        self.check(hasattr(AMQChannel, "do_close"), piece, "AMQChannel.do_close is gone")


class BindingsPathTests(DoorCase):
    """11. Members' bindings: our frames out, their answers picked out before txAMQP."""

    PIECE = "11. members' bindings (DeliveryClient.enable_bindings, send_bindings)"

    def client(self) -> tuple[_txamqp.DeliveryClient, StringTransport, list[list[bool]]]:
        client = _txamqp.DeliveryClient(None, "/", spec.load(SPEC_PATH), clock=Clock())
        transport = StringTransport()
        client.makeConnection(transport)
        answers: list[list[bool]] = []
        client.enable_bindings(4, answers.append)
        return client, transport, answers

    def test_answers_skip_txamqp_the_rest_reaches_it(self) -> None:
        """
        bind-ok and unbind-ok on the bindings' channel go to the listener,
        once per read and in order; a bind-ok on another channel still
        answers txAMQP's own queue_bind there, and the broker's
        channel.close of the bindings' channel still reaches channel_failed.
        """
        client, _, answers = self.client()
        codec = _txamqp.FrameCodec(spec.load(SPEC_PATH))
        failed: list[int | None] = []
        client.channel_listener = lambda c, channel_id, reason: failed.append(channel_id)
        own = self.successResultOf(client.channel(1))
        binding = own.queue_bind(queue="q", exchange="x", routing_key="k")
        self.successResultOf(client.channel(4))
        client.dataReceived(
            codec.method(4, "queue.bind-ok") + codec.method(1, "queue.bind-ok") + codec.method(4, "queue.unbind-ok")
        )
        self.check(answers == [[True, False]], self.PIECE, f"the listener heard {answers}")
        self.check(binding.called, self.PIECE, "txAMQP's queue_bind on another channel got no answer")
        client.dataReceived(
            codec.method(4, "channel.close", reply_code=404, reply_text="NOT_FOUND", class_id=50, method_id=20)
        )
        self.check(failed == [4], self.PIECE, f"channel_failed heard {failed} for the broker's close of channel 4")
        self.flushLoggedErrors()

    def test_frames_written_at_once(self) -> None:
        """send_bindings writes one frame per binding, in one write, as txAMQP's own decoder reads them."""
        client, transport, _ = self.client()
        transport.clear()  # the protocol header
        client.send_bindings(b"q", b"x", [(b"private.A.*", True), (b"private.B.*", False)])
        codec = _txamqp.FrameCodec(spec.load(SPEC_PATH))
        data = transport.value()
        (size,) = struct.unpack_from("!I", data, 3)
        first = codec.decode(data[: size + 8])
        self.check(
            (first.channel, first.name, first.fields["routing_key"]) == (4, "queue.bind", "private.A.*"),
            self.PIECE,
            f"the first frame read back as {first}",
        )
        self.check(data.endswith(_wire.binding_frame(4, False, b"q", b"x", b"private.B.*")), self.PIECE, "unbind")


class ConnectingTests(DoorCase):
    """7. Connecting."""

    PIECE = "7. connecting (endpoint, the factories)"

    def test_endpoint_signature(self) -> None:
        self.check_params(
            AMQEndpoint.__init__,
            ["self", "reactor", "host", "port", "username", "password", "vhost", "heartbeat", "auth_mechanism",
             "timeout"],
            self.PIECE,
        )

    def test_endpoint_sets_vhost_and_heartbeat(self) -> None:
        """AMQEndpoint.connect tells the factory the vhost and heartbeat, then connects over TCP."""
        calls: list[tuple[str, Any]] = []

        class Factory(AMQFactory):
            def set_vhost(self, vhost: str) -> None:
                calls.append(("vhost", vhost))

            def set_heartbeat(self, heartbeat: int) -> None:
                calls.append(("heartbeat", heartbeat))

        reactor = MemoryReactorClock()
        endpoint = _txamqp.endpoint(
            reactor, "broker", 5673, user="u", password="p", vhost="v", heartbeat=7, timeout=3
        )
        endpoint.connect(Factory(spec=SPEC_PATH, clock=reactor))
        self.check(calls == [("vhost", "v"), ("heartbeat", 7)], self.PIECE, f"the factory was told {calls}")
        self.check(reactor.tcpClients[0][:2] == ("broker", 5673), self.PIECE, "AMQEndpoint.connect")

    def test_factory_builds_with_keywords(self) -> None:
        """AMQFactory(spec=, clock=).buildProtocol builds protocol(delegate, vhost=, spec=, heartbeat=, clock=)."""
        self.check_params(AMQFactory.__init__, ["self", "spec", "clock"], self.PIECE)
        seen: list[dict[str, Any]] = []

        class Client(AMQClient):
            def __init__(self, delegate: Any, **kwargs: Any) -> None:
                seen.append(kwargs)
                super().__init__(delegate, **kwargs)

        factory = AMQFactory(spec=SPEC_PATH, clock=Clock())
        factory.protocol = Client
        factory.set_vhost("v")
        factory.set_heartbeat(5)
        factory.buildProtocol(None)
        self.check(
            seen and sorted(seen[0]) == ["clock", "heartbeat", "spec", "vhost"] and seen[0]["vhost"] == "v",
            self.PIECE,
            f"buildProtocol passes {seen}",
        )


class TestKitTests(DoorCase):
    """8. Playing the broker in tests."""

    PIECE = "8. FrameCodec (the test kit)"

    def test_codec_round_trip(self) -> None:
        """_pack_frame and _unpack_frame, Method/Header/Body and Method.DEFAULTS work as FrameCodec uses them."""
        self.check_params(FrameReceiver._pack_frame, ["self", "frame"], self.PIECE)
        self.check(isinstance(spec.Method.DEFAULTS, dict), self.PIECE, "txamqp.spec.Method.DEFAULTS")
        self.check(params(Header.__init__)[:4] == ["self", "klass", "weight", "size"], self.PIECE, "Header")
        self.check(params(Method.__init__)[:2] == ["self", "method"], self.PIECE, "Method")
        codec_ = _txamqp.FrameCodec(_txamqp.load_spec(SPEC_PATH))
        decoded = codec_.decode(codec_.method(1, "queue.declare", queue="q", passive=True))
        self.check(decoded.name == "queue.declare" and decoded.fields["queue"] == "q", self.PIECE, str(decoded))
        self.check(decoded.fields["passive"] is True, self.PIECE, str(decoded))
        header = codec_.decode(codec_.header(1, "basic", 5, content_type="application/json"))
        self.check((header.size, header.fields) == (5, {"content_type": "application/json"}), self.PIECE, str(header))
        body = codec_.decode(codec_.body(1, "é".encode()))
        self.check(body.body == "é".encode(), self.PIECE, str(body))


class PublishingTests(DoorCase):
    """9. Publishing."""

    PIECE = "9. publishing (PublisherClient)"

    def test_writer_is_synchronous(self) -> None:
        """A frame txAMQP queues is written before the call that queued it returns."""
        client = AMQClient(TwistedDelegate(), "/", spec.load(SPEC_PATH), clock=Clock())
        transport = StringTransport()
        client.makeConnection(transport)
        transport.clear()
        channel = self.successResultOf(client.channel(1))
        channel.basic_ack(delivery_tag=1)
        written = transport.value() == _wire.ack_frame(1, 1, multiple=False)
        self.check(written, self.PIECE, "frames are not written at once")

    def test_tune_sets_max_length(self) -> None:
        """connection.tune sets MAX_LENGTH to the negotiated frame_max."""
        client = AMQClient(TwistedDelegate(), "/", spec.load(SPEC_PATH), clock=Clock())
        pump = AMQPump()
        pump.connect(client)
        pump.pumpMethod(0, "connection", "tune", channel_max=0, frame_max=4096, heartbeat=0)
        self.check(client.MAX_LENGTH == 4096, self.PIECE, "connection_tune no longer sets MAX_LENGTH")

    def test_dispatch_names(self) -> None:
        """Delegate.dispatch calls <class>_<method>, pythonized: basic_ack, basic_nack, basic_return_."""
        self.check(spec.pythonize("return") == "return_", self.PIECE, "pythonize('return')")
        self.check_params(Delegate.dispatch, ["self", "channel", "message"], self.PIECE)
        events: list[tuple[str, Any]] = []

        class Listener:
            def confirmed(self, delivery_tag: int, multiple: bool, ok: bool) -> None:
                events.append(("confirmed", (delivery_tag, multiple, ok)))

            def returned(self, routing_key: bytes, body: bytes, reply_code: int, reply_text: str) -> None:
                events.append(("returned", (routing_key, body, reply_code, reply_text)))

            def channel_failed(self, channel_id: int | None, reason: Any) -> None:
                events.append(("channel_failed", channel_id))

            def connection_lost(self, reason: Failure) -> None:
                events.append(("lost", None))

        _txamqp.install()
        client = _txamqp.PublisherClient(None, "/", _txamqp.load_spec(RABBITMQ_EXTENDED_SPEC), clock=Clock())
        client.listener = Listener()
        pump = AMQPump()
        pump.connect(client)
        pump.pumpMethod(1, "basic", "ack", delivery_tag=3, multiple=True)
        pump.pumpMethod(1, "basic", "nack", delivery_tag=4, multiple=False, requeue=False)
        pump.pumpMethod(1, "basic", "return", reply_code=312, reply_text="NO_ROUTE", exchange="x", routing_key="k")
        pump.pumpHeader(1, "basic", 0, 2)
        pump.pumpBody(1, b"{}")
        self.check(
            events == [("confirmed", (3, True, True)), ("confirmed", (4, False, False)),
                       ("returned", (b"k", b"{}", 312, "NO_ROUTE"))],
            self.PIECE,
            f"confirms and returns reach the delegate as {events}",
        )

    def test_extended_spec_has_confirms(self) -> None:
        """RabbitMQ's extended spec loads as 0-9-1 and has confirm.select and basic.nack (publisher confirms)."""
        extended = _txamqp.load_spec(RABBITMQ_EXTENDED_SPEC)
        for name in ("confirm.select", "basic.nack", "basic.ack", "basic.return"):
            self.check(_txamqp.has_method(extended, name), self.PIECE, f"the extended spec lacks {name}")


class ReadSizeTests(DoorCase):
    """10. Reading more per reactor iteration, into one buffer (Twisted's tcp.Connection, not txAMQP)."""

    PIECE = "10. reading into one buffer (tcp.Connection.doRead, _dataReceived)"

    def test_twisted_reads_as_replaced(self) -> None:
        """
        Twisted's doRead is recv(bufferSize) handed to _dataReceived, which
        takes no bytes for the peer's close; the reactor calls doRead on the
        selectable, where an instance attribute overrides the method.
        """
        source = inspect.getsource(tcp.Connection.doRead)
        self.check("self.socket.recv(self.bufferSize)" in source, self.PIECE, "doRead no longer recv()s bufferSize")
        self.check("self._dataReceived(data)" in source, self.PIECE, "doRead no longer hands data to _dataReceived")
        self.check("EWOULDBLOCK" in source and "CONNECTION_LOST" in source, self.PIECE, "doRead's errors changed")
        received = inspect.getsource(tcp.Connection._dataReceived)
        self.check("return main.CONNECTION_DONE" in received, self.PIECE, "_dataReceived(b'') no longer means done")
        self.check("selectable.doRead()" in inspect.getsource(_PollLikeMixin._doReadOrWrite), self.PIECE, "doRead call")

    def connection(self) -> tuple[_txamqp.DeliveryClient, tcp.Server, socket.socket, list[bytes]]:
        left, right = socket.socketpair()
        self.addCleanup(left.close)
        self.addCleanup(right.close)
        left.setblocking(False)
        client = _txamqp.DeliveryClient(None, "/", spec.load(SPEC_PATH), clock=Clock())
        transport = tcp.Server(left, client, ("127.0.0.1", 1), None, 1, MemoryReactor())  # type: ignore[arg-type]
        client.makeConnection(transport)
        got: list[bytes] = []
        client.dataReceived = got.append  # type: ignore[method-assign,assignment]
        return client, transport, right, got

    def test_reads_into_one_buffer(self) -> None:
        """
        The broker's transport hands the protocol exactly what came, each read
        a bytes of its own (the buffer is reused), at most READ_SIZE a read;
        nothing to read is nothing; the peer's close is CONNECTION_DONE, a
        broken socket CONNECTION_LOST.
        """
        _, transport, peer, got = self.connection()
        self.assertIsInstance(transport.__dict__.get("doRead"), _txamqp._ReadInto)
        peer.sendall(b"first")
        self.assertIsNone(transport.doRead())
        peer.sendall(b"2nd")
        transport.doRead()
        self.assertEqual(got, [b"first", b"2nd"])
        self.assertTrue(all(type(g) is bytes for g in got))
        self.assertIsNone(transport.doRead())  # nothing came: EWOULDBLOCK
        self.assertEqual(len(got), 2)
        self.assertGreater(_txamqp.READ_SIZE, tcp.Connection.bufferSize)
        big = bytes(range(256)) * (_txamqp.READ_SIZE // 256 + 1)
        peer.setblocking(False)
        sent = 0
        while sent < len(big):
            sent += peer.send(big[sent:])
            transport.doRead()
        self.assertEqual(b"".join(got[2:]), big)
        self.assertLessEqual(max(len(g) for g in got), _txamqp.READ_SIZE)
        peer.close()
        self.assertIs(transport.doRead(), main.CONNECTION_DONE)
        transport.socket.close()
        self.assertIs(transport.doRead(), main.CONNECTION_LOST)

    def test_twisted_pauses_reading_as_relied_on(self) -> None:
        """stopReading/startReading take the socket out of the reactor's readers and back; the flags exist."""
        _, transport, _, _ = self.connection()
        reactor = cast(MemoryReactor, transport.reactor)
        transport.startReading()
        self.check(transport in reactor.readers, self.PIECE, "startReading no longer adds a reader")
        transport.stopReading()
        self.check(transport not in reactor.readers, self.PIECE, "stopReading no longer removes the reader")
        for flag in ("disconnecting", "disconnected"):
            self.check(isinstance(getattr(transport, flag, None), int), self.PIECE, f"tcp.Connection.{flag} changed")

    def test_pause_after_a_read(self) -> None:
        """
        A read that brought something less than READ_PAUSE after the
        previous one takes the socket out of the readers for READ_PAUSE; the
        first read after a quiet spell does not, nor one that brought
        nothing; what came meanwhile is one read; a lost connection leaves
        no timer.
        """
        client, transport, peer, got = self.connection()
        clock = client.clock
        reactor = cast(MemoryReactor, transport.reactor)
        transport.startReading()
        self.assertIsNone(transport.doRead())  # nothing came
        peer.sendall(b"one")
        transport.doRead()  # the first after a quiet spell
        self.assertIn(transport, reactor.readers)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(_txamqp.READ_PAUSE - 1e-6)
        peer.sendall(b"two")
        transport.doRead()
        self.assertNotIn(transport, reactor.readers)
        [pause] = clock.getDelayedCalls()
        self.assertAlmostEqual(pause.getTime() - clock.seconds(), _txamqp.READ_PAUSE)
        peer.sendall(b"three")
        peer.sendall(b"four")
        clock.advance(_txamqp.READ_PAUSE - 1e-9)
        self.assertNotIn(transport, reactor.readers)
        clock.advance(1e-9)
        self.assertIn(transport, reactor.readers)
        transport.doRead()
        self.assertEqual(got, [b"one", b"two", b"threefour"])
        self.assertEqual(clock.getDelayedCalls(), [])  # a pause after the last read: not close
        peer.sendall(b"five")
        transport.doRead()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        client.connectionLost(Failure(main.CONNECTION_DONE))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_reads_far_apart_not_delayed(self) -> None:
        """Reads READ_PAUSE or more apart (long reactor turns, a quiet broker) never pause the socket."""
        client, transport, peer, got = self.connection()
        reactor = cast(MemoryReactor, transport.reactor)
        transport.startReading()
        for i in range(3):
            peer.sendall(b"x%d" % i)
            transport.doRead()
            self.assertIn(transport, reactor.readers)
            client.clock.advance(_txamqp.READ_PAUSE)
        self.assertEqual(client.clock.getDelayedCalls(), [])
        self.assertEqual(got, [b"x0", b"x1", b"x2"])

    def test_no_pause_once_closing(self) -> None:
        """A read while the transport closes does not pause it, nor does a timer restart a closed one."""
        client, transport, peer, _ = self.connection()
        transport.startReading()
        peer.sendall(b"zero")
        transport.doRead()
        peer.sendall(b"one")
        transport.doRead()
        transport.disconnected = True
        client.clock.advance(_txamqp.READ_PAUSE)
        self.assertNotIn(transport, cast(MemoryReactor, transport.reactor).readers)
        transport.disconnected = False
        transport.disconnecting = True
        transport.startReading()
        peer.sendall(b"two")
        transport.doRead()
        self.assertEqual(client.clock.getDelayedCalls(), [])

    def test_fake_transport_left_alone(self) -> None:
        """A transport that is not Twisted's TCP (a test's, TLS) reads its own way."""
        fake = StringTransport()
        _txamqp.DeliveryClient(None, "/", spec.load(SPEC_PATH), clock=Clock()).makeConnection(fake)
        self.assertNotIn("doRead", fake.__dict__)
