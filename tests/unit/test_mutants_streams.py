"""
Tests written to kill the mutants that survived the stream and dialect
tests (docs/testing.md, `make mutation`): what L{peatio_ws.streams.names},
L{peatio_ws.streams.orderbook} and L{peatio_ws.websocket.legacy} do that no
other test pinned.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry
from peatio_ws.streams.names import MAX_PART, Stream, parse_stream
from peatio_ws.streams.orderbook import OrderBook
from peatio_ws.testing import make_token, settings_for_tests
from peatio_ws.testing.factory import stream_factory
from peatio_ws.testing.wsclient import Client
from peatio_ws.websocket import CloseCode

AUTHENTICATED = {"success": {"message": "Authenticated."}}
AUTH_FAILED = {"error": {"message": "Authentication failed."}}
TOO_MANY = {"error": {"message": "Too many authentication attempts."}}
#: Where the in-memory client connects from.
PEER = "tcp4:127.0.0.1:50000"


class _Watched(str):
    """A name that records being split, to see whether the parser looked inside it."""

    partitions: list[str]

    def partition(self, sep: Any) -> tuple[str, str, str]:
        self.partitions.append(sep)
        return super().partition(sep)


def watched(text: str) -> _Watched:
    name = _Watched(text)
    name.partitions = []
    return name


class StreamNameBoundTests(SynchronousTestCase):
    def test_longest_name(self) -> None:
        """The longest valid name is two full parts and their dot: 2 * MAX_PART + 1 = 129 characters."""
        longest = "a" * MAX_PART + "." + "b" * MAX_PART
        self.assertEqual(len(longest), 129)
        self.assertEqual(parse_stream(longest), Stream(longest, "a" * MAX_PART, "b" * MAX_PART))

    def test_longer_names_refused_unread(self) -> None:
        """
        A name longer than any valid one is refused before it is split or
        matched (a hostile client's huge name costs one length check),
        from one character past the longest valid name on.
        """
        for size in (2 * MAX_PART + 2, 3 * MAX_PART + 1, 3 * MAX_PART + 2, 100_000):
            name = watched("a" * MAX_PART + "." + "b" * (size - MAX_PART - 1))
            self.assertIsNone(parse_stream(name), size)
            self.assertEqual(name.partitions, [], size)

    def test_valid_lengths_are_read(self) -> None:
        """Up to the longest valid name, a name is split at its dot."""
        name = watched("a" * MAX_PART + "." + "b" * MAX_PART)
        self.assertIsNotNone(parse_stream(name))
        self.assertEqual(name.partitions, ["."])


class OrderBookIdentityTests(SynchronousTestCase):
    def test_new_store(self) -> None:
        """A new store knows its market and bound, and has followed nothing yet."""
        book = OrderBook("btcusd", 7)
        self.assertEqual((book.market, book.max_increments), ("btcusd", 7))
        self.assertEqual(
            (book.sequence, book.snapshot, book.increments, book.broken, book.gaps), (None, None, [], False, 0)
        )
        self.assertEqual((book.subscribers, book.primed, book.waiting), (set(), set(), 0))


# -- the legacy dialect ------------------------------------------------------------------


class LegacyTestCase(SynchronousTestCase):
    """Legacy connections in memory, with their log lines and the authentication counter."""

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []

        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "peatio_ws.protocol":
                self.events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.build()

    def build(self, **overrides: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.metrics = Metrics()
        self.registry = Registry(self.metrics)
        self.factory = stream_factory(
            settings_for_tests(**overrides), self.clock, registry=self.registry, metrics=self.metrics
        )

    def connect(self) -> Client:
        client = Client.connect(self.factory)
        self.addCleanup(client.lose)
        [challenge] = client.messages()
        self.assertIn("challenge", challenge)
        return client

    def good(self, uid: str = "U1") -> dict[str, str]:
        return {"jwt": "Bearer " + make_token(uid=uid, now=self.clock.seconds())}

    def counted(self, result: str, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "peatio_ws_authentications_total", {"result": result, "reason": reason}
        )
        return value or 0.0

    def lines(self, containing: str) -> list[str]:
        return [text for text in map(formatEvent, self.events) if containing in text]


class LegacyAttemptLimitTests(LegacyTestCase):
    """WEBSOCKET_AUTH_ATTEMPTS_PER_MINUTE: 0 is no limit; N allows N attempts in any 60 s."""

    def test_zero_is_no_limit(self) -> None:
        self.build(websocket_auth_attempts_per_minute=0, websocket_auth_timeout=0.0)
        client = self.connect()
        for _ in range(20):
            client.send_json({"jwt": "Bearer x.y.z"})
            self.assertEqual(client.messages(), [AUTH_FAILED])
        client.send_json(self.good())
        self.assertEqual(client.messages(), [AUTHENTICATED])
        self.assertIsNone(client.close_code())
        self.assertEqual(self.counted("failure", "rate_limited"), 0)

    def test_limit_of_one(self) -> None:
        """A limit of one: the second attempt within the minute closes the connection."""
        self.build(websocket_auth_attempts_per_minute=1, websocket_auth_timeout=0.0)
        client = self.connect()
        client.send_json(self.good())
        self.assertEqual(client.messages(), [AUTHENTICATED])
        client.send_json(self.good())
        self.assertEqual(client.messages(), [TOO_MANY])
        self.assertEqual(client.close_code(), CloseCode.TOO_MANY_ATTEMPTS)

    def test_window_is_exactly_sixty_seconds(self) -> None:
        """An attempt made exactly 60 s ago no longer counts; one made 59 s ago still does."""
        self.build(websocket_auth_attempts_per_minute=1, websocket_auth_timeout=0.0)
        client = self.connect()
        client.send_json({"jwt": "Bearer x.y.z"})
        self.assertEqual(client.messages(), [AUTH_FAILED])
        self.clock.advance(60)
        client.send_json({"jwt": "Bearer x.y.z"})
        self.assertEqual(client.messages(), [AUTH_FAILED])
        self.clock.advance(59)
        client.send_json({"jwt": "Bearer x.y.z"})
        self.assertEqual(client.messages(), [TOO_MANY])
        self.assertEqual(client.close_code(), CloseCode.TOO_MANY_ATTEMPTS)

    def test_rate_limited_is_counted(self) -> None:
        """The refusal is counted as result=failure, reason=rate_limited, and only that."""
        self.build(websocket_auth_attempts_per_minute=1, websocket_auth_timeout=0.0)
        client = self.connect()
        client.send_json({"jwt": "Bearer x.y.z"})
        client.send_json({"jwt": "Bearer x.y.z"})
        self.assertEqual(client.messages(), [AUTH_FAILED, TOO_MANY])
        self.assertEqual(self.counted("failure", "rate_limited"), 1)
        self.assertEqual(self.counted("failure", "malformed"), 1)


class LegacyAuthenticationRecordTests(LegacyTestCase):
    """What each outcome adds to the counter and the log, exactly."""

    def test_success_counted(self) -> None:
        client = self.connect()
        client.send_json(self.good())
        self.assertEqual(client.messages(), [AUTHENTICATED])
        self.assertEqual(self.counted("success", "ok"), 1)

    def test_failure_counted_with_its_reason(self) -> None:
        client = self.connect()
        client.send_json({"jwt": "Bearer x.y.z"})
        self.assertEqual(client.messages(), [AUTH_FAILED])
        self.assertEqual(self.counted("failure", "malformed"), 1)
        self.assertEqual(self.counted("success", "ok"), 0)

    def test_first_failure_line(self) -> None:
        client = self.connect()
        client.send_json({"jwt": "Bearer x.y.z"})
        head = f"connection {client.protocol.conn_id} from {PEER} (legacy)"
        self.assertEqual(self.lines("authentication"), [f"{head} authentication failed: malformed"])

    def test_failure_after_success_line(self) -> None:
        """A failed re-authentication names the member once, at the end (not in the head)."""
        client = self.connect()
        client.send_json(self.good("U1"))
        client.send_json({"jwt": "Bearer x.y.z"})
        self.assertEqual(client.messages(), [AUTHENTICATED, AUTH_FAILED])
        head = f"connection {client.protocol.conn_id} from {PEER} (legacy)"
        self.assertEqual(self.lines("authentication failed"), [f"{head} authentication failed: malformed (was U1)"])

    def test_other_member_line(self) -> None:
        """Another member's token: one line naming both, neither in the head."""
        client = self.connect()
        client.send_json(self.good("U1"))
        client.send_json(self.good("U2"))
        self.assertEqual(client.messages(), [AUTHENTICATED, AUTHENTICATED])
        head = f"connection {client.protocol.conn_id} from {PEER} (legacy)"
        self.assertEqual(self.lines("authenticated as"), [
            f"{head} authenticated as U1",
            f"{head} re-authenticated as U2 (was U1)",
        ])


class SlowBinding:
    """A membership observer whose member's events flow only when the test says so."""

    def __init__(self) -> None:
        self.pending: list[Deferred[None]] = []

    def member_joined(self, uid: str) -> None:
        pass

    def member_left(self, uid: str) -> None:
        pass

    def events_flowing(self, uid: str) -> Deferred[None]:
        waiting: Deferred[None] = Deferred()
        self.pending.append(waiting)
        return waiting


class LegacyBindingWaitTests(LegacyTestCase):
    """"Authenticated." only once the member's events flow, and only to a connection still getting them."""

    def setUp(self) -> None:
        super().setUp()
        self.binding = SlowBinding()
        self.registry.add_observer(self.binding)

    def test_after_the_binding(self) -> None:
        client = self.connect()
        client.send_json(self.good())
        self.assertEqual(client.messages(), [])
        self.binding.pending.pop().callback(None)
        self.assertEqual(client.messages(), [AUTHENTICATED])
        self.assertEqual(self.counted("success", "ok"), 1)

    def test_events_stopped_meanwhile(self) -> None:
        """A connection that stopped getting events while it waited is never told it is authenticated."""
        client = self.connect()
        client.send_json(self.good())
        client.protocol.stop_events()
        self.binding.pending.pop().callback(None)
        self.assertEqual(client.messages(), [])
        self.assertEqual(self.counted("success", "ok"), 0)
        self.assertIsNone(client.close_code())

