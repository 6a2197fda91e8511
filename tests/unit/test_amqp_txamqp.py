"""
Unit tests for the txAMQP work-arounds in L{peatio_ws.amqp._txamqp} (moved
from test_amqp unchanged): bodies as bytes, and the spec file.
"""

from __future__ import annotations

import tempfile

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from txamqp.client import TwistedDelegate
from txamqp.connection import Body, Frame
from txamqp.protocol import AMQClient, FrameReceiver
from txamqp.testing import AMQPump

from peatio_ws.amqp import EventConsumer
from peatio_ws.amqp import _txamqp as _txamqp_compat
from peatio_ws.config import ConfigError, Settings
from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry

SPEC_PATH = Settings().amqp_spec
_txamqp_compat.install()
SPEC = _txamqp_compat.load_spec(SPEC_PATH)


class CompatTests(SynchronousTestCase):
    """The txAMQP work-arounds."""

    def test_installed(self) -> None:
        """install() is idempotent and leaves txAMQP's body decoder replaced."""
        _txamqp_compat.install()
        _txamqp_compat.install()
        self.assertTrue(_txamqp_compat.installed())

    def test_body_decode_returns_bytes(self) -> None:
        """Every body frame decodes to the exact bytes: ASCII, non-ASCII UTF-8, binary, empty."""
        codec = FrameReceiver(SPEC)
        for body in [b'{"a":1}', '{"market":"比特币/人民币"}'.encode(), b"\xff\xfe\x00\x80", b""]:
            frame = codec._unpack_frame(codec._pack_frame(Frame(1, Body(body))))
            self.assertIsInstance(frame.payload.content, bytes)
            self.assertEqual(frame.payload.content, body)

    def test_stock_read_path_non_ascii(self) -> None:
        """
        txAMQP's own (slow) delivery path completes a multi-frame non-ASCII
        body, which without the shim never completes.
        """
        client = AMQClient(TwistedDelegate(), "/", SPEC, clock=Clock())
        pump = AMQPump()
        pump.connect(client)
        body = '{"market":"比特币"}'.encode() * 3
        pump.pumpMethod(1, "basic", "deliver", consumer_tag="t", delivery_tag=1, redelivered=False, exchange="x",
                        routing_key="k")
        pump.pumpHeader(1, "basic", 0, len(body))
        pump.pumpBody(1, body[:7])
        pump.pumpBody(1, body[7:])
        queue = self.successResultOf(client.queue("t"))
        message = self.successResultOf(queue.get())
        self.assertEqual(message.content.body, body)

    def test_load_spec_missing(self) -> None:
        """A missing spec file is one ConfigError naming AMQP_SPEC."""
        with self.assertRaises(ConfigError) as e:
            _txamqp_compat.load_spec("/nonexistent/amqp0-9-1.stripped.xml")
        self.assertEqual(e.exception.key, "AMQP_SPEC")
        self.assertIn("cannot read", str(e.exception))

    def test_load_spec_not_a_spec(self) -> None:
        """A file that is not a spec is a ConfigError too, not a traceback."""
        with tempfile.NamedTemporaryFile(suffix=".xml") as f:
            f.write(b"this is not xml")
            f.flush()
            with self.assertRaises(ConfigError) as e:
                _txamqp_compat.load_spec(f.name)
        self.assertEqual(e.exception.key, "AMQP_SPEC")

    def test_load_spec_wrong_version(self) -> None:
        """The 0-8 spec is refused: the consumer speaks 0-9-1."""
        with self.assertRaises(ConfigError) as e:
            _txamqp_compat.load_spec("/usr/share/amqp/specs/0-8/amqp0-8.stripped.xml")
        self.assertIn("0-9-1", str(e.exception))

    def test_consumer_refuses_missing_spec(self) -> None:
        """Building the consumer with an unreadable AMQP_SPEC fails at once, naming the key."""
        settings = Settings(amqp_spec="/nonexistent/spec.xml")
        with self.assertRaises(ConfigError) as e:
            EventConsumer(settings, Registry(), Metrics(), reactor=MemoryReactorClock())
        self.assertEqual(e.exception.key, "AMQP_SPEC")
