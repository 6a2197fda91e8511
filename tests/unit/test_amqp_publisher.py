"""
Unit tests for L{peatio_ws.amqp.publisher}: the publisher on a memory
reactor, its connection answered by L{FakeBroker}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.amqp import Nacked, NotConnected, Publisher, PublisherError, Unconfirmed
from peatio_ws.amqp.publisher import RABBITMQ_EXTENDED_SPEC
from peatio_ws.config import ConfigError, Settings
from peatio_ws.testing.amqp import FakeBroker


class PublisherCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.returns: list[tuple[bytes, bytes, int, str]] = []
        self.lost: list[Failure] = []

    def connecting(
        self, broker_options: dict[str, Any] | None = None, **kwargs: Any
    ) -> tuple[Deferred[Any], FakeBroker]:
        """Start connecting; answer with a fake broker (not pumped yet)."""
        kwargs.setdefault("exchange", "peatio.events.test")
        kwargs.setdefault("on_return", lambda *args: self.returns.append(args))
        kwargs.setdefault("on_lost", self.lost.append)
        d = Deferred.fromCoroutine(Publisher.connect(self.reactor, **kwargs))
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        options = dict(broker_options or {})
        if kwargs.get("confirms"):
            options.setdefault("spec_path", RABBITMQ_EXTENDED_SPEC)
        broker = FakeBroker(factory.buildProtocol(IPv4Address("TCP", host, port)), **options)
        return d, broker

    def connect(self, **kwargs: Any) -> tuple[Publisher, FakeBroker]:
        d, broker = self.connecting(**kwargs)
        broker.pump()
        return self.successResultOf(d), broker


class ConnectTests(PublisherCase):
    def test_settings(self) -> None:
        """Host, port and credentials come from the settings unless given; the exchange is declared as Peatio does."""
        settings = Settings(rabbitmq_host="broker.example", rabbitmq_port=5673, rabbitmq_user="u",
                            rabbitmq_password="pw", rabbitmq_vhost="v", rabbitmq_events_exchange="ex.from.settings")
        d = Deferred.fromCoroutine(Publisher.connect(self.reactor, settings=settings, port=5674, name="me"))
        host, port, factory, _, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port), ("broker.example", 5674))
        broker = FakeBroker(factory.buildProtocol(IPv4Address("TCP", host, port)))
        broker.pump()
        publisher = self.successResultOf(d)
        start_ok = broker.named("connection.start-ok")[0]
        self.assertEqual(start_ok["client_properties"]["connection_name"], "me")
        response = start_ok["response"]
        self.assertIn(b"pw", response if isinstance(response, bytes) else response.encode())
        self.assertEqual(broker.named("connection.open")[0]["virtual_host"], "v")
        declare = broker.named("exchange.declare")[0]
        self.assertEqual(
            (declare["exchange"], declare["type"], declare["durable"]), ("ex.from.settings", "topic", False)
        )
        self.assertEqual(publisher.exchange, "ex.from.settings")
        self.assertTrue(publisher.connected)
        self.assertEqual(broker.names()[-2:], ["channel.open", "exchange.declare"])

    def test_no_declare(self) -> None:
        """declare=False leaves the exchange alone."""
        _, broker = self.connect(declare=False)
        self.assertEqual(broker.named("exchange.declare"), [])

    def test_declare_refused(self) -> None:
        """A refused declare is a PublisherError naming the step and the broker's words; the connection goes."""
        d, broker = self.connecting()
        broker.fail["exchange.declare"] = (406, "PRECONDITION_FAILED - inequivalent arg 'durable'")
        broker.pump()
        error = self.failureResultOf(d, PublisherError).value
        self.assertEqual(error.step, "declare the exchange 'peatio.events.test'")
        self.assertIn("PRECONDITION_FAILED", str(error))
        self.assertTrue(broker.lost)
        self.assertEqual(self.lost, [])

    def test_login_refused(self) -> None:
        """The broker closing the connection at login: step "connect"."""
        d, broker = self.connecting()
        broker.fail["connection.open"] = (530, "NOT_ALLOWED - access to vhost '/' refused")
        broker.pump()
        error = self.failureResultOf(d, PublisherError).value
        self.assertEqual(error.step, "connect")
        self.assertTrue(broker.lost)

    def test_silent_broker(self) -> None:
        """A broker that never answers: the step times out and the connection is dropped."""
        d, broker = self.connecting(timeout=3)
        broker.silent = True
        broker.pump()
        self.reactor.advance(3)
        broker.pump()
        self.assertEqual(str(self.failureResultOf(d, PublisherError).value), "could not connect: timed out")
        self.assertTrue(broker.transport.aborted)

    def test_confirms_need_the_extended_spec(self) -> None:
        """Confirms with a spec lacking confirm.select: a ConfigError naming AMQP_SPEC, before connecting."""
        d = Deferred.fromCoroutine(Publisher.connect(self.reactor, confirms=True, spec=Settings().amqp_spec))
        self.assertEqual(self.failureResultOf(d, ConfigError).value.key, "AMQP_SPEC")
        self.assertEqual(self.reactor.tcpClients, [])


class PublishTests(PublisherCase):
    def test_publish(self) -> None:
        """Bytes as given, with the routing key, JSON content type and transient delivery; in order."""
        publisher, broker = self.connect()
        body = '{"market":"比特币"}'.encode()
        self.successResultOf(publisher.publish("private.U1.order", body))
        self.successResultOf(publisher.publish(b"private.U1.trade", b"{}", content_type=None, persistent=True))
        broker.pump()
        first, second = broker.published
        self.assertEqual(
            (first.exchange, first.routing_key, first.body), ("peatio.events.test", b"private.U1.order", body)
        )
        self.assertEqual(first.properties, {"content_type": "application/json", "delivery_mode": 1})
        self.assertFalse(first.mandatory)
        self.assertEqual((second.routing_key, second.properties), (b"private.U1.trade", {"delivery_mode": 2}))
        self.assertEqual(publisher.published, 2)

    def test_large_body(self) -> None:
        """A body larger than the frame size is cut into frames, and arrives whole."""
        publisher, broker = self.connect(broker_options={"frame_max": 4096})
        body = b'{"a":"' + b"x" * 20000 + b'"}'
        publisher.publish("private.U1.order", body)
        broker.pump()
        self.assertEqual(broker.published[0].body, body)

    def test_bytes_only(self) -> None:
        """A str body is refused (txAMQP would count its length in characters)."""
        publisher, _ = self.connect()
        with self.assertRaises(TypeError):
            publisher.publish("k", "{}")  # type: ignore[arg-type]

    def test_returned(self) -> None:
        """A mandatory message routed nowhere comes back to on_return."""
        publisher, broker = self.connect()
        publisher.publish("private.NOBODY.order", b"{}", mandatory=True)
        broker.pump()
        [message] = broker.published
        self.assertTrue(message.mandatory)
        broker.return_message(message)
        broker.pump()
        self.assertEqual(self.returns, [(b"private.NOBODY.order", b"{}", 312, "NO_ROUTE")])
        self.assertEqual(publisher.returns, 1)

    def test_flush(self) -> None:
        """flush() is one round trip on the channel."""
        publisher, broker = self.connect()
        d = Deferred.fromCoroutine(publisher.flush())
        self.assertNoResult(d)
        broker.pump()
        self.successResultOf(d)
        self.assertEqual(broker.names()[-1], "basic.qos")


class ConfirmTests(PublisherCase):
    def test_confirmed(self) -> None:
        """In confirm mode each Deferred fires with the broker's ack (multiple covers those before)."""
        publisher, broker = self.connect(confirms=True)
        self.assertIn("confirm.select", broker.names())
        ds = [publisher.publish("private.U1.order", b'{"i":%d}' % i) for i in range(3)]
        broker.pump()
        self.assertEqual(publisher.unconfirmed, 3)
        broker.confirm(2, multiple=True)
        broker.pump()
        self.successResultOf(ds[0])
        self.successResultOf(ds[1])
        self.assertNoResult(ds[2])
        broker.confirm(3, ok=False)
        broker.pump()
        self.assertEqual(self.failureResultOf(ds[2], Nacked).value.args, (3,))
        self.assertEqual(publisher.unconfirmed, 0)

    def test_lost_before_confirm(self) -> None:
        """The connection lost: pending publishes fail Unconfirmed, on_lost is told, publish refuses."""
        publisher, broker = self.connect(confirms=True)
        d = publisher.publish("private.U1.order", b"{}")
        broker.drop()
        self.failureResultOf(d, Unconfirmed)
        self.assertEqual(len(self.lost), 1)
        self.assertFalse(publisher.connected)
        with self.assertRaises(NotConnected):
            publisher.publish("private.U1.order", b"{}")

    def test_channel_closed(self) -> None:
        """The broker closing the channel (a missing exchange, say) fails pending publishes; close says why."""
        publisher, broker = self.connect(confirms=True)
        d = publisher.publish("private.U1.order", b"{}")
        broker.send(1, "channel.close", reply_code=404, reply_text="NOT_FOUND - no exchange", class_id=60, method_id=40)
        broker.pump()
        self.assertIn("NOT_FOUND", str(self.failureResultOf(d, Unconfirmed).value))
        self.assertFalse(publisher.connected)
        closing = Deferred.fromCoroutine(publisher.close())
        broker.pump()
        error = self.failureResultOf(closing, PublisherError).value
        self.assertEqual(error.step, "publish")
        self.assertIn("NOT_FOUND - no exchange", error.reason)
        self.assertTrue(broker.lost)


class CloseTests(PublisherCase):
    def test_close(self) -> None:
        """close(): channel.close (a round trip), connection.close, and the connection is gone when it returns."""
        publisher, broker = self.connect()
        publisher.publish("private.U1.order", b"{}")
        d = Deferred.fromCoroutine(publisher.close())
        broker.pump()
        self.successResultOf(d)
        self.assertEqual(broker.names()[-2:], ["channel.close", "connection.close"])
        self.assertTrue(broker.lost)
        self.assertEqual(self.lost, [])
        self.assertFalse(publisher.connected)
        with self.assertRaises(NotConnected):
            publisher.publish("private.U1.order", b"{}")
        self.successResultOf(Deferred.fromCoroutine(publisher.close()))

    def test_close_unanswered(self) -> None:
        """
        A broker that does not answer the close: a PublisherError after the
        timeout; a TCP close that does not finish either is aborted after another.
        """
        publisher, broker = self.connect(timeout=2)
        broker.hold.add("channel.close")
        d = Deferred.fromCoroutine(publisher.close())
        broker.pump()
        self.reactor.advance(2)
        self.assertTrue(broker.transport.disconnecting)
        self.assertNoResult(d)
        self.reactor.advance(2)
        self.assertTrue(broker.transport.aborted)
        broker.pump()
        self.assertEqual(str(self.failureResultOf(d, PublisherError).value), "could not publish: timed out")
        self.assertTrue(broker.lost)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
