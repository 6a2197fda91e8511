"""
Helpers for tests against the real RabbitMQ on localhost:5672 (guest/guest).

These tests fail, never skip, when the broker is not there: the project's
machines and CI run it, so its absence is a broken environment. Every wait
is bounded and fails with a message saying what did not happen.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from txamqp.client import Closed
from txamqp.content import Content
from txamqp.endpoint import AMQEndpoint
from txamqp.factory import AMQFactory

from peatio_ws import _txamqp_compat
from peatio_ws.config import Settings

HOST = "localhost"
PORT = 5672
USER = "guest"
PASSWORD = "guest"
SPEC = Settings().amqp_spec


async def within(d: Deferred[Any], seconds: float, what: str) -> Any:
    """The result of C{d}, or a test failure naming C{what} after C{seconds}."""
    d.addTimeout(seconds, reactor)
    try:
        return await d
    except DeferredTimeout:
        raise AssertionError(f"timed out after {seconds} s waiting for {what}") from None


async def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll C{condition} every 10 ms until it holds; fail after C{seconds}."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class Publisher:
    """
    A plain txAMQP client on the real broker: publishes BYTES (txAMQP
    mangles the length of non-ASCII str), declares and deletes test
    exchanges and queues.
    """

    def __init__(self, client: Any, channel: Any) -> None:
        self.client = client
        self.channel = channel

    @classmethod
    async def connect(cls) -> Publisher:
        """Connect and open channel 1; fails (never skips) if the broker is not there."""
        _txamqp_compat.install()
        endpoint = AMQEndpoint(reactor, HOST, PORT, username=USER, password=PASSWORD, vhost="/", timeout=5)
        factory = AMQFactory(spec=SPEC)
        factory.noisy = False
        try:
            client = await within(endpoint.connect(factory), 10, f"a connection to RabbitMQ at {HOST}:{PORT}")
        except Exception as e:
            raise AssertionError(f"RabbitMQ is not reachable at {HOST}:{PORT} (guest/guest): {e}") from e
        channel = await client.channel(1)
        await channel.channel_open()
        return cls(client, channel)

    def publish(self, exchange: str, routing_key: str, body: bytes) -> None:
        """Publish one message; in order with every other publish of this publisher."""
        if not isinstance(body, bytes):
            raise TypeError("publish bytes only: txAMQP corrupts frames of non-ASCII str")
        self.channel.basic_publish(
            exchange=exchange.encode(), routing_key=routing_key.encode(), content=Content(body)
        )

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
        try:
            result = await op(channel)
        except Closed:
            raise
        await channel.channel_close(reply_code=200, reply_text="done")
        return result

    async def close(self) -> None:
        """Close cleanly and wait until the socket is gone (trial checks)."""
        if self.client.closed:
            return
        lost = self.client.disconnected.wait()
        await self.client.close(within=2)
        await within(lost, 5, "the publisher's connection to close")


async def rabbitmqctl(*args: str) -> str:
    """Run rabbitmqctl (through sudo -n when not root and it is needed); its output."""
    command = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    env = dict(os.environ)
    env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
    out, err, code = await within(
        getProcessOutputAndValue(command, ("-q", *args), env=env),
        20,
        f"rabbitmqctl {' '.join(args)}",
    )
    if code != 0 and shutil.which("sudo"):
        out, err, code = await within(
            getProcessOutputAndValue("sudo", ("-n", command, "-q", *args), env=env),
            20,
            f"sudo rabbitmqctl {' '.join(args)}",
        )
    if code != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)} failed ({code}): {err.decode(errors='replace').strip()}")
    return str(out.decode("utf-8", "replace"))


async def close_connection_named(name: str, reason: str = "peatio-ws test: forced close") -> None:
    """
    Close, from the broker's side, the connection whose client property
    C{connection_name} is C{name} (what C{rabbitmqctl close_connection} does
    for an operator).
    """
    listing = await rabbitmqctl("list_connections", "pid", "client_properties")
    pids = [
        line.split("\t", 1)[0]
        for line in listing.splitlines()
        # {"connection_name","<name>"} (or <<"...">> in older releases)
        if re.search(r'connection_name"(>>,longstr,<<|,)"' + re.escape(name) + '"', line)
    ]
    if len(pids) != 1:
        raise AssertionError(f"expected one broker connection named {name!r}, found {len(pids)}:\n{listing}")
    await rabbitmqctl("close_connection", pids[0], reason)


async def queue_counts(queue: str) -> tuple[int, int]:
    """(messages ready, messages unacknowledged) of C{queue}, as the broker sees them."""
    listing = await rabbitmqctl("list_queues", "name", "messages_ready", "messages_unacknowledged")
    for line in listing.splitlines():
        parts = line.split("\t")
        if parts[0] == queue:
            return int(parts[1]), int(parts[2])
    raise AssertionError(f"queue {queue!r} not listed by rabbitmqctl")
