"""
Unit tests for L{peatio_ws.amqp.handover} and the consumer's use of it
(RABBITMQ_HANDOVER_FILE): a clean stop leaves the queue and its bindings to
the next process, which takes them over instead of binding everyone again.

The file is real (in the test's temporary directory); the broker is
L{FakeBroker} on a memory reactor, as in L{tests.unit.test_amqp}.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.amqp import CLEAN_CLOSE_TIMEOUT, STOP_TIMEOUT, handover
from peatio_ws.amqp.bindings import HANDED_UNBIND_DELAY
from peatio_ws.amqp.consumer import UNBIND_BATCH
from peatio_ws.amqp.handover import FORMAT, Handover, HandoverError, Shape, leave, take
from peatio_ws.config import KEYS, ConfigError, Settings, load_settings
from peatio_ws.testing import public_key_b64, rsa_key
from peatio_ws.testing.amqp import Harness, bind_keys

#: The shape of a Harness's queue with its defaults (the exchange is the Harness's).
SHAPE = Shape(
    exchange="peatio.events.test",
    vhost="/",
    queue_type="classic",
    expires_ms=120_000,
    private_binding="member",
    public=False,
)
QUEUE = "peatio-ws.host.00112233aabbccdd"


class FileTests(SynchronousTestCase):
    """Writing and taking the file."""

    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        self.path = str(directory / "queue.json")

    def test_round_trip(self) -> None:
        """What L{leave} writes, L{take} reads back whole, once: the file is gone after."""
        leave(self.path, QUEUE, SHAPE, ["IDB", "IDA"], True, 1234.5)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(os.listdir(os.path.dirname(self.path)), ["queue.json"])
        handed = take(self.path)
        self.assertEqual(
            handed, Handover(queue=QUEUE, shape=SHAPE, members=frozenset({"IDA", "IDB"}), cover=True, left_at=1234.5)
        )
        self.assertFalse(os.path.exists(self.path))
        self.assertIsNone(take(self.path))

    def test_replaces_whole(self) -> None:
        """A second leave replaces the first (rename over it)."""
        leave(self.path, QUEUE, SHAPE, ["IDA"], False, 1.0)
        leave(self.path, QUEUE, SHAPE, [], False, 2.0)
        handed = take(self.path)
        assert handed is not None
        self.assertEqual((handed.members, handed.left_at), (frozenset(), 2.0))

    def test_missing(self) -> None:
        self.assertIsNone(take(self.path))

    def _bad(self, data: bytes, problem: str) -> None:
        Path(self.path).write_bytes(data)
        self._bad_file(problem)

    def _bad_file(self, problem: str) -> None:
        e = self.assertRaises(HandoverError, take, self.path)
        self.assertEqual(str(e), problem)
        self.assertFalse(os.path.exists(self.path), "a bad file is not met twice")

    def _fields(self, **changes: Any) -> bytes:
        raw = json.loads(Handover(QUEUE, SHAPE, frozenset({"IDA"}), False, 5.0).to_json())
        raw.update(changes)
        return json.dumps({k: v for k, v in raw.items() if v is not None}).encode()

    def test_malformed(self) -> None:
        """Each way a file can be wrong gets a one-line reason, and the file is removed."""
        self._bad(b"", "not JSON")
        self._bad(b"{", "not JSON")
        self._bad(b"[]", "not a JSON object")
        self._bad(self._fields(format=FORMAT + 1), f"format {FORMAT + 1}, this version reads {FORMAT}")
        self._bad(self._fields(format=None), f"format None, this version reads {FORMAT}")
        self._bad(self._fields(members=["IDA", 7]), "members: not a list of strings")
        self._bad(self._fields(members="IDA"), "members: missing or not list")
        self._bad(self._fields(queue="amq.gen-1"), "queue 'amq.gen-1' is not one of ours (peatio-ws.*)")
        self._bad(self._fields(exchange=None), "exchange: missing or not str")
        self._bad(self._fields(expires_ms=True), "expires_ms: missing or not int")
        self._bad(self._fields(expires_ms=1.5), "expires_ms: missing or not int")
        self._bad(self._fields(public="yes"), "public: missing or not bool")
        self._bad(self._fields(left_at="now"), "left_at: missing or not a number")

    def test_too_large(self) -> None:
        """A file over MAX_BYTES is not read whole, nor taken; it is removed."""
        self.patch(handover, "MAX_BYTES", 64)
        leave(self.path, QUEUE, SHAPE, [f"ID{i}" for i in range(10)], False, 1.0)
        self._bad_file("larger than 64 bytes")

    def test_unreadable(self) -> None:
        """A path that cannot be read (here a directory) says so; nothing is removed."""
        os.mkdir(self.path)
        e = self.assertRaises(HandoverError, take, self.path)
        self.assertTrue(str(e).startswith("cannot read it: "), str(e))
        self.assertTrue(os.path.isdir(self.path))

    def test_cannot_write(self) -> None:
        """A directory that is gone: the error says why, and no temporary file is left."""
        missing = os.path.join(self.path + ".d", "queue.json")
        e = self.assertRaises(HandoverError, leave, missing, QUEUE, SHAPE, [], False, 1.0)
        self.assertTrue(str(e).startswith("cannot write it: "), str(e))

    def test_taken_by_another_process_meanwhile(self) -> None:
        """The file went between our read and our unlink (another process took it): not ours."""
        leave(self.path, QUEUE, SHAPE, ["IDA"], False, 1.0)
        real_unlink = os.unlink

        def taken(path: str) -> None:
            real_unlink(path)
            raise FileNotFoundError(path)

        self.patch(os, "unlink", taken)
        self.assertIsNone(take(self.path))

    def test_failed_rename_leaves_no_temporary_file(self) -> None:
        """The rename fails (here the path is a directory): the error says so, no temporary file is left."""
        os.mkdir(self.path)
        e = self.assertRaises(HandoverError, leave, self.path, QUEUE, SHAPE, [], False, 1.0)
        self.assertTrue(str(e).startswith("cannot write it: "), str(e))
        self.assertEqual(os.listdir(os.path.dirname(self.path)), ["queue.json"])

    def test_differences(self) -> None:
        other = Shape("x", "/", "quorum", 120_000, "member", True)
        self.assertEqual(SHAPE.differences(other), ["exchange", "queue_type", "public"])
        self.assertEqual(SHAPE.differences(SHAPE), [])


class SettingTests(SynchronousTestCase):
    """RABBITMQ_HANDOVER_FILE is checked at start-up: its directory must be there and writable."""

    def test_off_by_default(self) -> None:
        self.assertIsNone(Settings().rabbitmq_handover_file)

    def _load(self, value: str) -> Any:
        return KEYS["RABBITMQ_HANDOVER_FILE"](value)

    def test_values(self) -> None:
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "q.json")
        self.assertEqual(self._load(path), path)
        self.assertIsNone(self._load(""))
        self.assertIsNone(self._load("  "))
        e = self.assertRaises(ValueError, self._load, os.path.join(directory, "nope", "q.json"))
        self.assertIn("is not a directory", str(e))
        e = self.assertRaises(ValueError, self._load, directory)
        self.assertIn("is a directory; name a file in it", str(e))

    def test_config_error_names_the_key(self) -> None:
        environ = {"JWT_PUBLIC_KEY": public_key_b64(rsa_key()), "RABBITMQ_HANDOVER_FILE": "/nonexistent-dir/q.json"}
        e = self.assertRaises(ConfigError, load_settings, environ=environ)
        self.assertEqual(e.key, "RABBITMQ_HANDOVER_FILE")


class ConsumerTests(SynchronousTestCase):
    """The consumer leaves its queue at a clean stop and takes over the one it finds at start."""

    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        self.path = str(directory / "queue.json")

    def harness(self, **settings: Any) -> Harness:
        settings.setdefault("rabbitmq_unbind_delay", 5)
        return Harness(self, rabbitmq_handover_file=self.path, **settings)

    def lines(self, h: Harness, text: str) -> list[str]:
        return [formatEvent(e) for e in h.logged(text)]

    def handed(self, members: list[str], cover: bool = False, shape: Shape = SHAPE) -> None:
        leave(self.path, QUEUE, shape, members, cover, 0.0)

    # -- the stop --------------------------------------------------------------

    def test_stop_leaves_the_queue(self) -> None:
        """
        A clean stop keeps the queue (no queue.delete) and writes the
        members bound and those whose bind is in flight; it acks what was
        handled and closes the connection (the broker cancels the consumer),
        one round trip.
        """
        h = self.harness()
        h.join("IDA")
        broker = h.consuming()
        broker.hold.add("queue.bind")
        h.join("IDB")
        broker.pump()
        h.reactor.advance(7)
        d = h.consumer.stopService()
        broker.pump()
        broker.release()
        broker.pump()
        self.successResultOf(d)
        names = broker.names()
        self.assertNotIn("queue.delete", names)
        self.assertNotIn("basic.cancel", names)
        self.assertEqual(names[-1], "connection.close")
        handed = take(self.path)
        assert handed is not None
        self.assertEqual(handed.queue, h.consumer.queue_name)
        self.assertEqual(handed.members, {"IDA", "IDB"})
        self.assertEqual(handed.shape, SHAPE)
        self.assertEqual((handed.cover, handed.left_at), (False, 7.0))
        [line] = self.lines(h, "left queue")
        self.assertIn(f"left queue {h.consumer.queue_name} and its 2 member bindings to the next process", line)
        self.assertEqual(h.logged("still deleting"), [])
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_left_even_if_the_broker_does_not_answer(self) -> None:
        """
        The file is written when the stop starts: a broker (or a reactor
        busy telling thousands of clients 1001) that does not answer the
        cancel within the clean close's bound still leaves the queue to the
        next process, and nothing deletes it.
        """
        h = self.harness()
        h.join("IDA")
        broker = h.consuming()
        broker.hold.add("connection.close")
        d = h.consumer.stopService()
        broker.pump()
        self.assertTrue(os.path.exists(self.path))
        h.reactor.advance(CLEAN_CLOSE_TIMEOUT)
        h.reactor.advance(STOP_TIMEOUT - CLEAN_CLOSE_TIMEOUT)
        broker.pump()
        self.successResultOf(d)
        self.assertNotIn("queue.delete", broker.names())
        handed = take(self.path)
        assert handed is not None
        self.assertEqual(handed.members, {"IDA"})

    def test_acks_what_was_handled_before_closing(self) -> None:
        """Deliveries handled before the stop are acked (at once, not at the interval) before the close."""
        h = self.harness()
        h.join("IDA")
        broker = h.consuming()
        broker.deliver("private.IDA.order", "{}")
        broker.pump()
        broker.deliver("private.IDA.order", "{}")
        broker.pump()
        self.assertEqual(broker.acks, [(1, True)])  # the second waits for the ack interval
        d = h.consumer.stopService()
        broker.pump()
        self.successResultOf(d)
        self.assertEqual(broker.acks, [(1, True), (2, True)])
        names = broker.names()
        self.assertLess(names.index("basic.ack", names.index("basic.ack") + 1), names.index("connection.close"))

    def test_stop_deletes_when_the_file_cannot_be_written(self) -> None:
        """The file cannot be written: one warning, and the queue is deleted as without the setting."""
        h = self.harness()
        broker = h.consuming()
        os.rename(os.path.dirname(self.path), os.path.dirname(self.path) + ".gone")
        d = h.consumer.stopService()
        broker.pump()
        self.successResultOf(d)
        self.assertIn("queue.delete", broker.names())
        [line] = self.lines(h, "RABBITMQ_HANDOVER_FILE")
        self.assertIn("cannot write it", line)
        self.assertIn(f"deleting queue {h.consumer.queue_name} instead", line)

    def test_stop_without_the_setting_deletes(self) -> None:
        h = Harness(self)
        broker = h.consuming()
        d = h.consumer.stopService()
        broker.pump()
        self.successResultOf(d)
        self.assertIn("queue.delete", broker.names())

    # -- the start ---------------------------------------------------------------

    def test_takes_over(self) -> None:
        """
        The queue left is consumed under its name; only members not handed
        over are bound; those handed over and not back are unbound after
        HANDED_UNBIND_DELAY; one back meanwhile keeps its binding. The file is gone.
        """
        self.handed(["IDA", "IDB", "IDC"])
        h = self.harness()
        h.join("IDA")
        h.join("IDD")
        broker = h.consuming()
        self.assertFalse(os.path.exists(self.path))
        self.assertEqual(h.consumer.queue_name, QUEUE)
        passive = [f["queue"] for f in broker.named("queue.declare") if f["passive"]]
        self.assertEqual(passive, [QUEUE, QUEUE])  # the queue, then after the canary's probe
        self.assertEqual(broker.named("basic.consume")[0]["queue"], QUEUE)
        self.assertEqual(bind_keys(broker), [b"private.IDD.*"])
        self.assertEqual(h.consumer.bound, {"IDA", "IDB", "IDC", "IDD"})
        self.assertEqual(h.value("peatio_ws_rabbitmq_bindings"), 4)
        self.assertEqual(h.value("peatio_ws_rabbitmq_queue_lost_total"), 0)
        [line] = self.lines(h, "took over")
        self.assertIn(f"took over queue {QUEUE} from the previous process (left 0.0 s ago, 3 member bindings)", line)
        self.assertIn(f"those not back within {HANDED_UNBIND_DELAY:g} s are unbound", line)
        h.reactor.advance(HANDED_UNBIND_DELAY - 0.1)
        h.join("IDB")
        broker.pump()
        self.assertEqual(bind_keys(broker, "queue.unbind"), [])
        h.reactor.advance(0.1)
        broker.pump()
        self.assertEqual(bind_keys(broker, "queue.unbind"), [b"private.IDC.*"])
        self.assertEqual(bind_keys(broker), [b"private.IDD.*"])
        self.assertEqual(h.consumer.bound, {"IDA", "IDB", "IDD"})

    def test_handed_delay_at_least_the_unbind_delay(self) -> None:
        """A RABBITMQ_UNBIND_DELAY longer than HANDED_UNBIND_DELAY is the handed members' delay too."""
        self.handed(["IDA"])
        h = self.harness(rabbitmq_unbind_delay=HANDED_UNBIND_DELAY + 10)
        broker = h.consuming()
        h.reactor.advance(HANDED_UNBIND_DELAY + 9.9)
        broker.pump()
        self.assertEqual(bind_keys(broker, "queue.unbind"), [])
        h.reactor.advance(0.1)
        broker.pump()
        self.assertEqual(bind_keys(broker, "queue.unbind"), [b"private.IDA.*"])

    def test_member_leaving_after_taking_over(self) -> None:
        """A handed member back then gone again has RABBITMQ_UNBIND_DELAY, as anyone."""
        self.handed(["IDA"])
        h = self.harness()
        broker = h.consuming()
        conn = h.join("IDA")
        h.leave(conn)
        h.reactor.advance(5)
        broker.pump()
        self.assertEqual(bind_keys(broker, "queue.unbind"), [b"private.IDA.*"])

    def test_login_bound_before_the_handed_unbinds(self) -> None:
        """
        When the members not back are unbound (hundreds, after a rolling
        restart moved them elsewhere), at most UNBIND_BATCH unbinds are in
        flight, and a login's bind goes out at once, not after all of them.
        """
        self.handed([f"ID{i}" for i in range(300)])
        h = self.harness()
        broker = h.consuming()
        broker.hold.add("queue.unbind")
        h.reactor.advance(HANDED_UNBIND_DELAY)
        broker.pump()
        self.assertEqual(len(bind_keys(broker, "queue.unbind")), UNBIND_BATCH)
        h.join("NEW")
        broker.pump()
        self.assertEqual(bind_keys(broker), [b"private.NEW.*"])
        self.assertEqual(len(bind_keys(broker, "queue.unbind")), UNBIND_BATCH)
        broker.release()
        broker.pump()
        self.assertEqual(len(bind_keys(broker, "queue.unbind")), 300)
        self.assertEqual(h.consumer.bound, {"NEW"})
        self.assertEqual(h.value("peatio_ws_rabbitmq_bindings"), 1)

    def test_handed_members_need_not_wait(self) -> None:
        """A login of a member handed over is told at once once taken over: its binding is there."""
        self.handed(["IDA"])
        h = self.harness()
        h.start()
        h.join("IDA")
        waiting = h.consumer.events_flowing("IDA")
        assert waiting is not None
        fired: list[object] = []
        waiting.addCallback(fired.append)
        h.connect()
        self.assertEqual(fired, [None])
        self.assertIsNone(h.consumer.events_flowing("IDA"))

    def test_bindings_gauge(self) -> None:
        """The bindings handed over count in peatio_ws_rabbitmq_bindings at once, with no bind answered."""
        self.handed(["IDA", "IDB"])
        h = self.harness()
        broker = h.consuming()
        self.assertEqual(bind_keys(broker), [])
        self.assertEqual(h.value("peatio_ws_rabbitmq_bindings"), 2)

    def test_handed_cover_unbound(self) -> None:
        """The covering binding may have been left on: it is unbound (few members to bind)."""
        self.handed(["IDA"], cover=True)
        h = self.harness()
        broker = h.consuming()
        self.assertEqual(bind_keys(broker, "queue.unbind"), [b"private.*.*"])

    def test_many_handed_no_cover(self) -> None:
        """Members handed over are not waiting logins: many of them put up no covering binding."""
        self.handed([f"ID{i}" for i in range(500)])
        h = self.harness(rabbitmq_storm_binding_at=100)
        for i in range(500):
            h.join(f"ID{i}")
        broker = h.consuming()
        self.assertEqual(bind_keys(broker), [])

    def test_queue_gone(self) -> None:
        """The queue left is gone: declared again under its name, everyone bound, no one told (1012)."""
        self.handed(["IDA"])
        h = self.harness()
        conn = h.join("IDA")
        h.start()
        broker = h.accept()
        broker.queue_consumers = None
        broker.pump()
        self.assertTrue(h.consumer.up)
        self.assertEqual(h.consumer.queue_name, QUEUE)
        self.assertEqual(bind_keys(broker), [b"private.IDA.*"])
        self.assertEqual(conn.lost, 0)
        self.assertEqual(h.value("peatio_ws_rabbitmq_queue_lost_total"), 0)
        [line] = self.lines(h, "left by the previous process, is gone")
        self.assertIn(QUEUE, line)

    def test_queue_gone_under_carried_connections(self) -> None:
        """
        Connections carried across a restart in place counted on the queue
        left: gone, what was published meanwhile may be lost: every
        authenticated connection is told (1012), as for any queue lost.
        """
        self.handed(["IDA"])
        h = self.harness()
        conn = h.join("IDA")
        h.consumer.carried_over()
        h.start()
        broker = h.accept()
        broker.queue_consumers = None
        broker.pump()
        self.assertTrue(h.consumer.up)
        self.assertEqual(conn.lost, 1)
        self.assertEqual(h.value("peatio_ws_rabbitmq_queue_lost_total"), 1)

    def test_no_queue_left_under_carried_connections(self) -> None:
        """Carried connections, but no queue to take over (no file, or one not readable): they are told (1012)."""
        h = self.harness()
        conn = h.join("IDA")
        h.consumer.carried_over()
        h.consuming()
        self.assertEqual(conn.lost, 1)
        self.assertEqual(h.value("peatio_ws_rabbitmq_queue_lost_total"), 1)

    def test_queue_in_use(self) -> None:
        """The queue left has a consumer (another process with the same file): a new queue instead."""
        self.handed(["IDA"])
        h = self.harness()
        h.join("IDA")
        h.start()
        broker = h.accept()
        broker.queue_consumers = 1
        broker.pump()
        self.assertTrue(h.consumer.up)
        self.assertNotEqual(h.consumer.queue_name, QUEUE)
        self.assertRegex(h.consumer.queue_name, r"^peatio-ws\.[A-Za-z0-9_-]+\.[0-9a-f]{16}$")
        declared = [f["queue"] for f in broker.named("queue.declare") if not f["passive"]]
        self.assertEqual(declared, [h.consumer.queue_name])
        self.assertEqual(bind_keys(broker), [b"private.IDA.*"])
        [line] = self.lines(h, "another process")
        self.assertIn(f"queue {QUEUE} from RABBITMQ_HANDOVER_FILE has 1 consumer(s)", line)

    def test_other_shape(self) -> None:
        """A queue made with other settings is not taken: a new one, and the line says what differs."""
        self.handed(["IDA"], shape=Shape("peatio.events.test", "/", "quorum", 120_000, "member", False))
        h = self.harness()
        broker = h.consuming()
        self.assertNotEqual(h.consumer.queue_name, QUEUE)
        self.assertEqual([f for f in broker.named("queue.declare") if f["passive"]], [])
        [line] = self.lines(h, "not taking over")
        self.assertIn("made with another queue_type", line)
        self.assertFalse(os.path.exists(self.path))

    def test_bad_file(self) -> None:
        """A file that is not a handover: one warning, a new queue, the file removed."""
        Path(self.path).write_bytes(b"garbage")
        h = self.harness()
        h.consuming()
        self.assertNotEqual(h.consumer.queue_name, QUEUE)
        [line] = self.lines(h, "RABBITMQ_HANDOVER_FILE")
        self.assertIn("not JSON; starting with a new queue", line)
        self.assertFalse(os.path.exists(self.path))

    def test_taken_over_again_after_a_failed_set_up(self) -> None:
        """The first connection fails before the bindings were taken over: the next one takes them over."""
        self.handed(["IDA"])
        h = self.harness()
        h.start()
        broker = h.accept()
        broker.fail["basic.qos"] = (541, "INTERNAL_ERROR")
        broker.pump()
        self.assertFalse(h.consumer.up)
        h.reactor.advance(30)
        second = h.connect()
        self.assertTrue(h.consumer.up)
        self.assertEqual(h.consumer.queue_name, QUEUE)
        self.assertEqual(h.consumer.bound, {"IDA"})
        self.assertEqual(bind_keys(second), [])

    def test_stop_before_taking_over_gives_it_back(self) -> None:
        """Stopped before RabbitMQ could be reached: the handover goes back to the file as it was."""
        self.handed(["IDA"], cover=True)
        h = self.harness()
        h.start()
        self.assertFalse(os.path.exists(self.path))
        h.reactor.advance(3)
        self.successResultOf(h.consumer.stopService())
        self.assertEqual(take(self.path), Handover(QUEUE, SHAPE, frozenset({"IDA"}), True, 0.0))
        [line] = self.lines(h, "not taken over yet")
        self.assertIn(QUEUE, line)

    def stopped_before_consuming(self, h: Harness) -> Handover:
        """Start C{h}, stop it while its C{basic.consume} is unanswered; what it left (no queue deleted)."""
        h.start()
        broker = h.accept()
        broker.hold.add("basic.consume")
        broker.pump()
        self.assertFalse(h.consumer.up)
        self.assertIsNone(h.consumer._handed)
        d = h.consumer.stopService()
        broker.pump()
        self.successResultOf(d)
        self.assertNotIn("queue.delete", broker.names())
        handed = take(self.path)
        assert handed is not None
        return handed

    def test_stop_while_starting_to_consume_leaves_it(self) -> None:
        """
        Stopped after the queue was taken over and before consuming from
        it (a second reload at once): the queue, with the members handed
        over and those bound since, is left to the next process again, not
        forgotten (no file) nor deleted.
        """
        self.handed(["IDA"])
        h = self.harness()
        h.join("IDB")
        handed = self.stopped_before_consuming(h)
        self.assertEqual((handed.queue, handed.members), (QUEUE, {"IDA", "IDB"}))
        [line] = self.lines(h, "left queue")
        self.assertIn(f"left queue {QUEUE} and its 2 member bindings to the next process", line)

    def test_stop_while_declaring_a_new_queue_leaves_it(self) -> None:
        """Stopped while setting up a queue of its own: that queue, declared, is left as at a clean stop."""
        h = self.harness()
        h.join("IDA")
        handed = self.stopped_before_consuming(h)
        self.assertEqual((handed.queue, handed.members), (h.consumer.queue_name, {"IDA"}))

    def test_bind_all(self) -> None:
        """With the binding for all the queue is left and taken over too; no member bindings either way."""
        h = self.harness(rabbitmq_private_binding="all")
        h.join("IDA")
        broker = h.consuming()
        d = h.consumer.stopService()
        broker.pump()
        self.successResultOf(d)
        self.assertNotIn("queue.delete", broker.names())
        name = h.consumer.queue_name
        second = self.harness(rabbitmq_private_binding="all")
        broker = second.consuming()
        self.assertEqual(second.consumer.queue_name, name)
        self.assertEqual(bind_keys(broker), [b"private.*.*"])
        self.assertEqual(second.consumer._handed, None)

    def test_restart_round_trip(self) -> None:
        """One process's stop, the next one's start: the same queue, and nothing bound twice."""
        first = self.harness()
        first.join("IDA")
        first.join("IDB")
        broker = first.consuming()
        d = first.consumer.stopService()
        broker.pump()
        self.successResultOf(d)
        second = self.harness()
        second.join("IDB")
        broker = second.consuming()
        self.assertEqual(second.consumer.queue_name, first.consumer.queue_name)
        self.assertEqual(bind_keys(broker), [])
        second.reactor.advance(HANDED_UNBIND_DELAY)
        broker.pump()
        self.assertEqual(bind_keys(broker, "queue.unbind"), [b"private.IDA.*"])
