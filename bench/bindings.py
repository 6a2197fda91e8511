"""
C{python -m bench.bindings [--members N] [--storm-binding-at K,K...] [--json]}: how
long N logins arriving together wait for their members' bindings
(C{RABBITMQ_PRIVATE_BINDING=member}) on the real RabbitMQ, and what the
consumer's CPU is per member: the part of a reconnect storm that RabbitMQ's
binding rate decides, measured apart from the WebSocket work around it.

For each K of C{RABBITMQ_STORM_BINDING_AT} (default: 100, the default, then
0, never): an L{EventConsumer} in this process on its own exchange, N fake
connections authenticated in one reactor turn (what a storm's logins do to
the consumer), then the seconds until every login is told its events flow
(p50 and the last), until every member has its own binding, this
process's CPU over that time per member (the binds, their answers, the
waiters), and how long the consumer's clean stop then takes (a queue with
N bindings to delete). Nothing else runs in the process; RabbitMQ is the shared one on
localhost; the exchange and the queue are deleted afterwards. In C{make
bench} (the C{bindings} scenario) it runs in a process of its own, since it
runs Twisted's reactor.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, task

from bench.workers import json_child
from peatio_ws.amqp import EventConsumer
from peatio_ws.auth import Claims
from peatio_ws.config import Settings
from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry
from peatio_ws.testing.amqp import EventsConnection
from tests.support.broker import HOST, PASSWORD, PORT, USER
from tests.support.publisher import Publisher
from tests.support.waiting import until, within

DEFAULT_MEMBERS = 15_000
#: RABBITMQ_STORM_BINDING_AT's default, then never.
DEFAULT_SETTINGS = (Settings().rabbitmq_storm_binding_at, 0)


async def measure(members: int, storm_binding_at: int) -> dict[str, Any]:
    """One run: C{members} logins at once, with RABBITMQ_STORM_BINDING_AT=C{storm_binding_at}."""
    exchange = f"peatio-ws-bench.{uuid.uuid4().hex}"
    publisher = await Publisher.connect()
    consumer: EventConsumer | None = None
    stop_s = 0.0
    try:
        await publisher.declare_exchange(exchange)
        settings = dataclasses.replace(
            Settings(),
            rabbitmq_host=HOST,
            rabbitmq_port=PORT,
            rabbitmq_user=USER,
            rabbitmq_password=PASSWORD,
            rabbitmq_events_exchange=exchange,
            rabbitmq_private_binding="member",
            rabbitmq_storm_binding_at=storm_binding_at,
        )
        metrics = Metrics()
        registry = Registry(metrics)
        consumer = running = EventConsumer(settings, registry, metrics)
        running.startService()
        await within(running.when_consuming(), 15, "the consumer to consume")
        told: list[float] = []
        start = time.perf_counter()
        cpu = time.process_time()
        for i in range(members):
            uid = f"IDBIND{i:06d}"
            waiting = registry.authenticate(EventsConnection(f"{uid}-0"), Claims(uid=uid, jti=uid, expires_at=None))
            if waiting is None:
                told.append(0.0)
            else:
                waiting.addCallback(lambda _: told.append(time.perf_counter() - start))
        await until(lambda: len(told) == members, 120, "every login told")
        all_told = time.perf_counter() - start
        await until(lambda: len(running.bound) == members, 120, "every member bound")
        all_bound = time.perf_counter() - start
        cpu_s = time.process_time() - cpu
        stopping = time.perf_counter()
        consumer = None
        await within(running.stopService(), 30, "the consumer to stop")
        stop_s = time.perf_counter() - stopping
        await publisher.delete_queue(running.queue_name)
        return {
            "members": members,
            "storm_binding_at": storm_binding_at,
            "told_p50_s": statistics.median(told),
            "told_s": all_told,
            "bound_s": all_bound,
            "binds_per_s": members / all_bound,
            "cpu_us_per_member": cpu_s / members * 1e6,
            "stop_s": stop_s,
        }
    finally:
        if consumer is not None:
            await within(consumer.stopService(), 30, "the consumer to stop")
            await publisher.delete_queue(consumer.queue_name)
        await publisher.delete_exchange(exchange)
        await publisher.close()


def describe(r: dict[str, Any]) -> str:
    """One line of figures."""
    return (
        f"{r['members']:,} logins at once, RABBITMQ_STORM_BINDING_AT={r['storm_binding_at']}: told p50 "
        f"{r['told_p50_s']:.2f} s, all {r['told_s']:.2f} s; all bound {r['bound_s']:.2f} s "
        f"({r['binds_per_s']:,.0f} binds/s); consumer CPU {r['cpu_us_per_member']:.0f} µs per member; "
        f"its clean stop (cancel, delete the queue, close) {r['stop_s']:.2f} s"
    )


def run(
    members: int = DEFAULT_MEMBERS, settings: Sequence[int] = DEFAULT_SETTINGS, quiet: bool = False
) -> list[dict[str, Any]]:
    """Every setting in turn, on this process's reactor (which can run only once)."""
    results: list[dict[str, Any]] = []

    async def main(reactor: Any) -> None:
        for at in settings:
            r = await measure(members, at)
            if not quiet:
                print(describe(r), flush=True)
            results.append(r)

    def react(reactor: Any) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(main(reactor))

    try:
        task.react(react)
    except SystemExit as e:
        if e.code:
            raise
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bindings", description=__doc__)
    p.add_argument("--members", type=int, default=DEFAULT_MEMBERS)
    p.add_argument(
        "--storm-binding-at",
        default=",".join(map(str, DEFAULT_SETTINGS)),
        help="values of RABBITMQ_STORM_BINDING_AT to measure, comma-separated",
    )
    p.add_argument("--json", action="store_true", help="print the results as one JSON line instead")
    args = p.parse_args(argv)
    results = run(args.members, [int(x) for x in args.storm_binding_at.split(",")], quiet=args.json)
    if args.json:
        print(json.dumps(results))
    return 0


def bench_step(bench: Any, quick: bool = False) -> None:
    """The C{bindings} scenario of L{bench.cli}, in a process of its own: C{bench.results["bindings"]}."""
    members = 1_000 if quick else DEFAULT_MEMBERS
    bench.log(f"bindings: {members:,} logins at once, RABBITMQ_STORM_BINDING_AT {DEFAULT_SETTINGS}")
    results = json_child("bench.bindings", "--members", str(members), "--json", timeout=900)
    for r in results:
        bench.log(f"bindings: {describe(r)}")
    bench.results["bindings"] = results


def rows(results: Sequence[dict[str, Any]]) -> list[tuple[str, str, str, bool | None, str]]:
    """One row of bench.cli's table per setting: (measure, goal, value, met, notes)."""
    return [
        (
            f"13. logins at once waiting for their members' bindings ({r['members']:,}, "
            f"RABBITMQ_STORM_BINDING_AT={r['storm_binding_at']}): s until every one is told; until every "
            "member is bound; consumer CPU µs per member",
            "-",
            f"{r['told_s']:.2f}; {r['bound_s']:.2f}; {r['cpu_us_per_member']:.0f}",
            None,
            f"told p50 {r['told_p50_s']:.2f} s; {r['binds_per_s']:,.0f} binds/s",
        )
        for r in results
    ]


if __name__ == "__main__":
    sys.exit(main())
