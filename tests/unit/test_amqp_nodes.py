"""Tests for L{peatio_ws.amqp.nodes} and the RABBITMQ_HOST list it is built from (SPEC §8)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.amqp.nodes import NodeRotation
from peatio_ws.config import KEYS, Settings, parse_nodes
from peatio_ws.testing import settings_for_tests


class RecordingEndpoint:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def connect(self, factory: Any) -> Deferred[str]:
        self.calls.append(self.name)
        return succeed(self.name)


class NodeRotationTests(SynchronousTestCase):
    def test_each_attempt_goes_to_the_next_node(self) -> None:
        """Attempts go A, B, C, A, ...: losing the node we were on sends the next attempt elsewhere."""
        calls: list[str] = []
        rotation = NodeRotation([(n, RecordingEndpoint(n, calls)) for n in ("a:1", "b:2", "c:3")])
        seen = []
        for _ in range(5):
            seen.append(rotation.upcoming)
            rotation.connect(None)  # type: ignore[arg-type]
        self.assertEqual(calls, ["a:1", "b:2", "c:3", "a:1", "b:2"])
        self.assertEqual(seen, calls)
        self.assertEqual(len(rotation), 3)

    def test_one_node(self) -> None:
        calls: list[str] = []
        rotation = NodeRotation([("a:1", RecordingEndpoint("a:1", calls))])
        rotation.connect(None)  # type: ignore[arg-type]
        rotation.connect(None)  # type: ignore[arg-type]
        self.assertEqual(calls, ["a:1", "a:1"])

    def test_no_node(self) -> None:
        self.assertRaises(ValueError, NodeRotation, [])


class NodeListTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """host[:port] entries, comma-separated; RABBITMQ_PORT where an entry has none."""
        self.assertEqual(parse_nodes("localhost", 5672), (("localhost", 5672),))
        self.assertEqual(
            parse_nodes("h1:5673, h2 ,10.0.0.3:1", 5672), (("h1", 5673), ("h2", 5672), ("10.0.0.3", 1))
        )
        self.assertEqual(parse_nodes("h:65535", 1), (("h", 65535),))

    def test_bad_entries(self) -> None:
        for value in ("h1,,h2", "h:0", "h:65536", "h:x", ":5672", " , "):
            with self.subTest(value=value):
                self.assertRaises(ValueError, parse_nodes, value, 5672)

    def test_settings(self) -> None:
        """Settings.rabbitmq_nodes; RABBITMQ_HOST's parser refuses a bad list (start-up names the key)."""
        settings = settings_for_tests(rabbitmq_host="a:1,b", rabbitmq_port=7)
        self.assertEqual(settings.rabbitmq_nodes, (("a", 1), ("b", 7)))
        self.assertEqual(Settings().rabbitmq_nodes, (("localhost", 5672),))
        self.assertEqual(KEYS["RABBITMQ_HOST"](" a:1,b "), "a:1,b")
        self.assertRaises(ValueError, KEYS["RABBITMQ_HOST"], "a:1,,b")

    def test_queue_type(self) -> None:
        self.assertEqual(Settings().rabbitmq_queue_type, "classic")
        self.assertEqual(KEYS["RABBITMQ_QUEUE_TYPE"]("Quorum"), "quorum")
        self.assertRaises(ValueError, KEYS["RABBITMQ_QUEUE_TYPE"], "stream")
