"""
The demo's feed: publishes the sample stream on RabbitMQ about every
tick, through the test kit's publisher, and reconnects when the broker goes
away (warning once).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall

from demo.console import say
from demo.sample import SampleStream
from peatio_ws.config import Settings
from tests.support.publisher import Publisher

#: What every sample event is published with.
PROPERTIES = {"content-type": "application/json", "delivery-mode": 1}


class SampleFeed:
    """Publishes the sample stream on RabbitMQ; reconnects when the broker goes away."""

    RETRY = 3.0

    def __init__(self, reactor: Any, settings: Settings, exchange: str, stream: SampleStream, interval: float) -> None:
        self.reactor = reactor
        self.settings = settings
        self.exchange = exchange
        self.stream = stream
        self.interval = interval
        self.published = 0
        self._publisher: Publisher | None = None
        self._connecting = False
        self._next_attempt = 0.0
        self._warned = False
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True).addErrback(self._loop_failed)

    def _loop_failed(self, failure: Any) -> None:
        say(f"publisher stopped: {failure.getErrorMessage()}")

    def _tick(self) -> None:
        publisher = self._publisher
        if publisher is None or publisher.closed:
            self._publisher = None
            if not self._connecting and self.reactor.seconds() >= self._next_attempt:
                self._connect()
            return
        for uid, event, payload in self.stream.tick():
            # Bytes only: txAMQP 0.8.2 counts a str body in characters.
            body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
            d = publisher.publish(self.exchange, f"private.{uid}.{event}", body, properties=PROPERTIES)
            d.addErrback(self._publish_failed)
            self.published += 1

    def _publish_failed(self, failure: Any) -> None:
        self._publisher = None

    def _connect(self) -> None:
        self._connecting = True
        d = Deferred.fromCoroutine(self._open())
        d.addTimeout(15, self.reactor)
        d.addCallbacks(self._connected, self._connect_failed)

    async def _open(self) -> Publisher:
        publisher = await Publisher.connect(self.settings)
        try:
            # As Peatio (and the daemon) declare it; the same arguments or RabbitMQ refuses.
            await publisher.declare_exchange(self.exchange)
        except BaseException:
            publisher.client.transport.loseConnection()
            raise
        return publisher

    def _connected(self, publisher: Publisher) -> None:
        self._connecting = False
        self._publisher = publisher
        if self._warned:
            say("publisher: connected to RabbitMQ again")
        self._warned = False

    def _connect_failed(self, failure: Any) -> None:
        self._connecting = False
        self._next_attempt = self.reactor.seconds() + self.RETRY
        if not self._warned:
            say(f"publisher: {failure.getErrorMessage()}; retrying every {self.RETRY:.0f} s")
            self._warned = True

    def stop(self) -> Deferred[Any]:
        """Stop publishing and close the broker connection: cleanly, else aborted."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        publisher, self._publisher = self._publisher, None
        if publisher is None or publisher.client.closed:
            return succeed(None)
        closing = Deferred.fromCoroutine(publisher.close(force=True))
        closing.addErrback(lambda _: None)
        return closing
