"""
The machine's RabbitMQ on localhost:5672 (guest/guest): where it is, and
what C{rabbitmqctl} says about it. Tests never stop or restart it: fault
tests run a node of their own (L{tests.support.servers.PrivateRabbit}).

The listing helpers take the C{rabbitmqctl} to ask (default: the
machine's), so a private node's is read the same way. They fail, never
skip, when the broker is not there: the project's machines and CI run it,
so its absence is a broken environment.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Awaitable, Callable

from twisted.internet.utils import getProcessOutputAndValue

from peatio_ws.config import Settings
from tests.support.waiting import within

HOST = "localhost"
PORT = 5672
USER = "guest"
PASSWORD = "guest"
#: The AMQP spec the daemon loads.
SPEC = Settings().amqp_spec
#: RabbitMQ's extended 0-9-1 spec: the only one with confirm.select and basic.nack.
RABBIT_SPEC = "/usr/share/amqp/specs/0-9-1-rabbit/amqp0-9-1.stripped.extended.xml"


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


#: A rabbitmqctl: its arguments in, its output out.
Ctl = Callable[..., Awaitable[str]]


async def close_connection_named(
    name: str, reason: str = "peatio-ws test: forced close", ctl: Ctl = rabbitmqctl
) -> None:
    """
    Close, from the broker's side, the connection whose client property
    C{connection_name} is C{name} (what C{rabbitmqctl close_connection} does
    for an operator).
    """
    listing = await ctl("list_connections", "pid", "client_properties")
    pids = [
        line.split("\t", 1)[0]
        for line in listing.splitlines()
        # {"connection_name","<name>"} (or <<"...">> in older releases)
        if re.search(r'connection_name"(>>,longstr,<<|,)"' + re.escape(name) + '"', line)
    ]
    if len(pids) != 1:
        raise AssertionError(f"expected one broker connection named {name!r}, found {len(pids)}:\n{listing}")
    await ctl("close_connection", pids[0], reason)


async def queue_counts(queue: str, ctl: Ctl = rabbitmqctl) -> tuple[int, int]:
    """(messages ready, messages unacknowledged) of C{queue}, as the broker sees them."""
    listing = await ctl("list_queues", "name", "messages_ready", "messages_unacknowledged")
    for line in listing.splitlines():
        parts = line.split("\t")
        if parts[0] == queue:
            return int(parts[1]), int(parts[2])
    raise AssertionError(f"queue {queue!r} not listed by rabbitmqctl")


async def bindings_of(queue: str, ctl: Ctl = rabbitmqctl) -> list[tuple[str, str]]:
    """(exchange, routing key) of every binding to C{queue}, the default exchange's excepted."""
    listing = await ctl("list_bindings", "source_name", "destination_name", "routing_key")
    out = []
    for line in listing.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1] == queue and parts[0]:
            out.append((parts[0], parts[2]))
    return out


def standing_bindings(exchange: str, queue: str) -> list[tuple[str, str]]:
    """
    The bindings (as L{bindings_of} lists them, sorted) a daemon's queue has
    with no member connected: its canary (SPEC §8) and the public events' (§7).
    """
    return sorted([(exchange, f"peatio-ws.canary.{queue}"), (exchange, "public.*.*")])


async def queue_exists(queue: str, ctl: Ctl = rabbitmqctl) -> bool:
    listing = await ctl("list_queues", "name")
    return queue in listing.split()


async def exchange_exists(exchange: str, ctl: Ctl = rabbitmqctl) -> bool:
    listing = await ctl("list_exchanges", "name")
    return exchange in listing.split()


def queue_name_from_log(log_text: str) -> str:
    """The daemon's queue, from its "consuming from <queue>" log line."""
    found = re.findall(r"consuming from (peatio-ws\.\S+)", log_text)
    if not found:
        raise AssertionError(f"no 'consuming from' line in the daemon log:\n{log_text[-3000:]}")
    return found[-1]
