"""
Tests for L{peatio_ws.websocket.ranger}: the ranger dialect of SPEC §7,
driven over in-memory transports with a fake clock.

The dialect is chosen at the upgrade request (path, Authorization header,
C{stream=} query), the token comes only from the header (HTTP 401 when it
does not verify, or when a C{…/private} path has none), streams come from
the query and from subscribe/unsubscribe messages answered with rango's
exact texts, private events reach a ranger member only for the streams it
subscribed, public events reach their subscribers framed once, and the
order-book replay is written before the subscribed reply without ever
counting against the slow-consumer limit.
"""

from __future__ import annotations

import json
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.framing import event_message, text_frame
from peatio_ws.metrics import Metrics
from peatio_ws.registry import Registry
from peatio_ws.testing import OMIT, Client, generate_rsa_key, make_token, settings_for_tests
from peatio_ws.testing.factory import stream_factory
from peatio_ws.testing.frames import SAMPLE_KEY, TEXT, upgrade_request
from peatio_ws.websocket import CloseCode
from peatio_ws.websocket.ranger import (
    RANGER,
    RangerReply,
    bearer_token,
    query_streams,
    speaks_ranger,
    wants_member,
)

# rango's texts, spelled out here (not taken from the code under test).
NOT_JSON = b'{"error":"Could not parse message: invalid JSON"}'
NOT_OBJECT = b'{"error":"Could not parse message: not a JSON object"}'
NOT_TEXT = b'{"error":"Could not parse message: binary frames are not accepted"}'
STREAMS_TYPE = b'{"error":"Could not parse message: streams must be a list of strings"}'
BAD_STREAM = (
    b'{"error":"Could not parse message: invalid stream name (letters, digits, \'_\' and \'-\', at most one \'.\')"}'
)
NO_STREAMS = b'{"error":"No streams provided"}'
INVALID_EVENT = b'{"error":"Could not parse Type: Invalid event"}'
EXPIRED = {"error": {"message": "Token expired."}}
AUTH_FAILED = {"error": {"message": "Authentication failed."}}
HANDLING = {"error": {"message": "Error while handling message."}}


def too_many(limit: int) -> bytes:
    return b'{"error":"Too many streams: at most %d on one connection"}' % limit


def subscribed(*names: str) -> dict[str, Any]:
    return {"success": {"message": "subscribed", "streams": list(names)}}


def unsubscribed(*names: str) -> dict[str, Any]:
    return {"success": {"message": "unsubscribed", "streams": list(names)}}


def snap_body(seq: int, pad: int = 0) -> bytes:
    return b'{"asks":[["100.0","1"]],"bids":[["99.0","%s"]],"sequence":%d}' % (b"2" * max(1, pad), seq)


def inc_body(seq: int, pad: int = 0) -> bytes:
    return b'{"asks":["100.0","%s"],"sequence":%d}' % (b"3" * max(1, pad), seq)


class FakeRevocation:
    """Stands in for the Redis revocation check: answers at once, holds the answer, or fails."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.pending: list[Deferred[bool]] = []
        self.hold = False
        self.broken = False

    def is_revoked(self, jti: str) -> Deferred[bool]:
        if self.broken:
            return fail(RuntimeError("redis is down"))
        if self.hold:
            d: Deferred[bool] = Deferred()
            self.pending.append(d)
            return d
        return succeed(jti in self.revoked)


class HoldingTransport(StringTransport):
    """
    A StringTransport that says how much it holds, as Twisted's TCP
    transport does (C{dataBuffer}, C{offset}, C{_tempDataLen}): everything
    written and not yet L{drain}ed (taken by the kernel).
    """

    offset = 0
    _tempDataLen = 0
    drained = 0

    @property
    def dataBuffer(self) -> bytes:
        return self.io.getvalue()[self.drained :]

    def drain(self) -> None:
        self.drained = len(self.io.getvalue())


class RangerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.build()

    def build(self, **overrides: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.settings = settings_for_tests(**overrides)
        self.metrics = Metrics()
        self.registry = Registry(self.metrics)
        self.revocation = FakeRevocation()
        self.factory = stream_factory(
            self.settings, self.clock, registry=self.registry, metrics=self.metrics, revocation=self.revocation
        )
        self.hub = self.factory.hub

    def token(self, **claims: Any) -> str:
        return make_token(now=self.clock.seconds(), **claims)

    def request(
        self, path: str = "/public", token: str | None = None, header: str | None = None, open: bool = True
    ) -> Client:
        """Send the upgrade request: with C{token}, C{Authorization: Bearer <token>}; C{header}, that value."""
        headers = []
        if token is not None:
            headers.append(("Authorization", "Bearer " + token))
        if header is not None:
            headers.append(("Authorization", header))
        client = Client.connect(self.factory, path=path, headers=headers, expect_open=open)
        self.addCleanup(client.lose)
        return client

    def open(self, path: str = "/public", token: str | None = None, *names: str) -> Client:
        """An open ranger connection whose first message, the subscribed reply, lists C{names}."""
        client = self.request(path, token)
        self.assertEqual(client.messages(), [subscribed(*names)])
        return client

    def member(self, path: str = "/private", **claims: Any) -> Client:
        """A ranger connection of a member (uid U1 unless told), nothing subscribed."""
        claims.setdefault("uid", "U1")
        return self.open(path, self.token(**claims))

    def payloads(self, client: Client) -> list[bytes]:
        """The payloads of the text frames received since the last call."""
        return [frame.payload for frame in client.received() if frame.opcode == TEXT]

    def refused(self, path: str = "/private", token: str | None = None, header: str | None = None) -> Client:
        client = self.request(path, token, header, open=False)
        self.assertEqual(client.handshake_status(), 401, (path, header))
        self.assertEqual(
            client.transport.value(),
            b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm="peatio-ws"\r\n\r\n',
        )
        self.assertTrue(client.transport.disconnecting)
        return client

    def value(self, name: str, **labels: str) -> float:
        v = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    def logs(self) -> list[LogEvent]:
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return events


# -- choosing the dialect ---------------------------------------------------------------------


class DialectChoiceTests(RangerTestCase):
    RANGER_PATHS = (
        "/public", "/private", "/public/", "/private/", "/api/v2/ranger/public", "/api/v2/ranger/private",
        "/api/v2/ranger/public/", "/api/v2/ranger/private/", "/api/v2/rango/public", "//public", "/x/y/z/public//",
    )
    LEGACY_PATHS = (
        "/", "", "/api/v2/ranger", "/api/v2/ranger/", "/publicx", "/xpublic", "/public/x", "/private/ws",
        "/Public", "/PRIVATE", "/public.json", "/pub lic",
    )

    def test_speaks_ranger_by_path(self) -> None:
        """Ranger when the path's last segment is public or private (any prefix, trailing / allowed)."""
        for path in self.RANGER_PATHS:
            self.assertTrue(speaks_ranger(path, {}, {}), path)
        for path in self.LEGACY_PATHS:
            self.assertFalse(speaks_ranger(path, {}, {}), path)

    def test_speaks_ranger_by_header_or_query(self) -> None:
        """An Authorization header (any value), or stream= in the query, also chooses ranger."""
        self.assertTrue(speaks_ranger("/", {"authorization": "Bearer x"}, {}))
        self.assertTrue(speaks_ranger("/", {"authorization": ""}, {}))
        self.assertTrue(speaks_ranger("/", {}, {"stream": ["global.tickers"]}))
        self.assertFalse(speaks_ranger("/", {"origin": "https://x"}, {"streams": ["a"], "x": ["stream"]}))

    def test_empty_stream_parameter(self) -> None:
        """An empty stream= is still stream= (parsed params drop it: the raw query is read)."""
        for query in ("stream=", "a=1&stream=", "a=1;stream=", "stream=&stream="):
            self.assertTrue(speaks_ranger("/", {}, {}, query), query)
        for query in ("", "stream", "xstream=", "a=stream=", "streams=", "x=1&my_stream="):
            self.assertFalse(speaks_ranger("/", {}, {}, query), query)
        client = self.request("/?stream=")
        self.assertEqual(client.messages(), [subscribed()])
        self.assertIs(client.protocol.dialect, RANGER)

    def test_wants_member(self) -> None:
        """Only a last segment of private requires a token."""
        for path in ("/private", "/private/", "/api/v2/ranger/private/", "/a/private//"):
            self.assertTrue(wants_member(path), path)
        for path in ("/public", "/", "/privates", "/private/x", "/Private", ""):
            self.assertFalse(wants_member(path), path)

    def test_ranger_connections(self) -> None:
        """Each ranger request opens with the subscribed reply (never a challenge)."""
        for path in ("/public", "/public/", "/api/v2/ranger/public/", "/?stream=global.tickers",
                     "/api/v2/ranger?stream=global.tickers", "/anything/?stream=a.b&x=1"):
            client = self.request(path)
            [first] = client.messages()
            self.assertIn("success", first, path)
            self.assertIs(client.protocol.dialect, RANGER, path)
        client = self.request("/", token=self.token())
        self.assertEqual(client.messages(), [subscribed()])
        self.assertIs(client.protocol.dialect, RANGER)

    def test_legacy_unchanged(self) -> None:
        """Any other request is legacy: the challenge first, the jwt message, events of every kind."""
        for path in ("/", "/api/v2/ranger", "/publicx", "/public/x", "/?streams=a.b", "/?x=stream", "/?stream",
                     "/?xstream=a.b"):
            client = self.request(path)
            [first] = client.messages()
            self.assertEqual(list(first), ["challenge"], path)
            self.assertEqual(client.protocol.dialect_name, "legacy", path)
        client.send_json({"event": "subscribe", "streams": ["order"]})
        self.assertEqual(client.messages(), [HANDLING])
        client.send_json({"jwt": "Bearer " + self.token(uid="U1")})
        self.assertEqual(client.messages(), [{"success": {"message": "Authenticated."}}])
        self.registry.deliver("U1", "balance", b'{"x":1}')
        self.assertEqual(client.messages(), [{"balance": {"x": 1}}])

    def test_never_later(self) -> None:
        """A ranger connection is never re-chosen: a jwt message is just an invalid event."""
        client = self.open()
        client.send_json({"jwt": "Bearer " + self.token()})
        self.assertEqual(self.payloads(client), [INVALID_EVENT])
        self.assertEqual(len(self.registry), 0)
        self.assertIs(client.protocol.dialect, RANGER)


# -- the upgrade request: the token ------------------------------------------------------------


class BearerTokenTests(SynchronousTestCase):
    def test_parsed(self) -> None:
        self.assertEqual(bearer_token("Bearer abc.def.ghi"), "abc.def.ghi")
        self.assertEqual(bearer_token("  Bearer   abc  "), "abc")
        self.assertEqual(bearer_token("bearer abc"), "abc")  # RFC 7235: the scheme is case-insensitive
        self.assertEqual(bearer_token("BEARER abc"), "abc")

    def test_refused(self) -> None:
        for header in ("", " ", "Bearer", "Bearer ", "Bearer    ", "Basic dXNlcjpwYXNz", "Token abc", "abc.def.ghi",
                       "Bearerabc", "JWT abc"):
            self.assertIsNone(bearer_token(header), repr(header))


class UpgradeAuthTests(RangerTestCase):
    def test_member(self) -> None:
        """A token that verifies: the connection opens as that member, registered for its events."""
        client = self.member(uid="ID1A2B3C4D5E", jti="J1")
        self.assertEqual(client.protocol.claims.uid, "ID1A2B3C4D5E")
        self.assertEqual(self.registry.jtis(), ["J1"])
        self.assertEqual(self.value("peatio_ws_authentications_total", result="success", reason="ok"), 1)

    def test_member_on_any_path(self) -> None:
        """The header makes a member on /public, on a prefix, and on a path of no dialect."""
        for path in ("/public", "/api/v2/ranger/private/", "/"):
            self.open(path, self.token(uid="U-" + path.replace("/", "_")))
        self.assertEqual(len(self.registry), 3)

    def test_scheme_case(self) -> None:
        """The scheme's case is not significant (RFC 7235)."""
        client = self.request("/private", header="bearer " + self.token())
        self.assertEqual(client.messages(), [subscribed()])
        self.assertEqual(len(self.registry), 1)

    def test_header_name_case(self) -> None:
        """The header's name is case-insensitive."""
        for name in ("authorization", "AUTHORIZATION", "AuThOrIzAtIoN"):
            client = Client.connect(
                self.factory, path="/private", headers=[(name, "Bearer " + self.token(uid="U-" + name))]
            )
            self.addCleanup(client.lose)
            self.assertEqual(client.messages(), [subscribed()], name)
        self.assertEqual(len(self.registry), 3)

    def test_two_headers_is_401(self) -> None:
        """Two Authorization headers, even each with a good token, are refused: never one picked."""
        headers = [("Authorization", "Bearer " + self.token(uid=uid)) for uid in ("A", "B")]
        client = Client.connect(self.factory, path="/public", headers=headers, expect_open=False)
        self.addCleanup(client.lose)
        self.assertEqual(client.handshake_status(), 401)
        self.assertEqual(len(self.registry), 0)

    def test_bad_token_is_401(self) -> None:
        """A token that does not verify is refused with HTTP 401, on every path, never made anonymous."""
        cases = [
            ("garbage", "malformed"),
            ("x.y.z", "malformed"),
            (make_token(generate_rsa_key(), now=self.clock.seconds()), "signature"),
            (self.token(exp=int(self.clock.seconds()) - 10), "expired"),
            (self.token(sub="api"), "subject"),
            (self.token(uid=OMIT), "bad_uid"),
            (self.token(uid=""), "bad_uid"),
        ]
        for path in ("/private", "/public", "/", "/api/v2/ranger/public/?stream=global.tickers"):
            for token, _ in cases:
                self.refused(path, token)
        self.assertEqual(len(self.registry), 0)
        self.assertEqual(len(self.factory.connections), 0)
        self.assertEqual(self.value("peatio_ws_connections_rejected_total", reason="unauthorized"), 4 * len(cases))
        self.assertEqual(self.value("peatio_ws_authentications_total", result="failure", reason="expired"), 4)
        self.assertEqual(self.value("peatio_ws_authentications_total", result="failure", reason="subject"), 4)
        self.assertEqual(self.value("peatio_ws_dialect_connections", dialect="ranger"), 0)

    def test_not_bearer_is_401(self) -> None:
        """An Authorization header that is not Bearer <token> is refused with 401, counted as token_type."""
        token = self.token()
        headers = ("", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token " + token, token, "JWT " + token)
        for header in headers:
            self.refused("/public", header=header)
        self.assertEqual(
            self.value("peatio_ws_authentications_total", result="failure", reason="token_type"), len(headers)
        )
        self.assertEqual(len(self.registry), 0)

    def test_no_header_on_private_is_401(self) -> None:
        """No header on a path whose last segment is private: 401."""
        for path in ("/private", "/private/", "/api/v2/ranger/private/", "/api/v2/ranger/private?stream=order"):
            self.refused(path)
        self.assertEqual(self.value("peatio_ws_authentications_total", result="failure", reason="no_token"), 4)

    def test_anonymous_public(self) -> None:
        """No header elsewhere: an anonymous connection, open for good (no auth timeout), public streams only."""
        client = self.open("/api/v2/ranger/public/?stream=global.tickers", None, "global.tickers")
        self.assertIsNone(client.protocol.claims)
        self.assertIsNone(client.protocol.private_streams)
        self.clock.advance(self.settings.websocket_auth_timeout * 10)
        self.assertIsNone(client.close_code())
        self.hub.publish("global", "tickers", b'{"btcusd":{}}')
        self.assertEqual(client.messages(), [{"global.tickers": {"btcusd": {}}}])

    def test_revoked(self) -> None:
        """A revoked token is refused with 401."""
        self.revocation.revoked.add("JTI-R")
        self.refused("/private", self.token(jti="JTI-R"))
        self.refused("/public", self.token(jti="JTI-R"))
        self.assertEqual(self.value("peatio_ws_authentications_total", result="failure", reason="revoked"), 2)
        self.assertEqual(len(self.registry), 0)

    def test_revocation_pending_then_ok(self) -> None:
        """While the revocation check is pending nothing is answered; then 101 and the subscribed reply."""
        self.revocation.hold = True
        client = self.request("/private?stream=order", self.token(uid="U1"), open=False)
        self.assertEqual(client.transport.value(), b"")
        self.assertEqual(len(self.registry), 0)
        self.revocation.pending.pop().callback(False)
        self.assertTrue(client.transport.value().startswith(b"HTTP/1.1 101"))
        self.assertEqual(client.messages(), [subscribed("order")])
        self.assertEqual(len(self.registry), 1)

    def test_revocation_pending_then_revoked(self) -> None:
        self.revocation.hold = True
        client = self.request("/private", self.token(), open=False)
        self.revocation.pending.pop().callback(True)
        self.assertEqual(client.handshake_status(), 401)
        self.assertEqual(len(self.registry), 0)
        self.assertEqual(len(self.factory.connections), 0)

    def test_revocation_pending_then_failed(self) -> None:
        """Redis failing the check: 401 (the deny policy), counted as revocation_unavailable."""
        self.revocation.hold = True
        client = self.request("/public", self.token(), open=False)
        self.revocation.pending.pop().errback(RuntimeError("redis is down"))
        self.assertEqual(client.handshake_status(), 401)
        self.assertEqual(
            self.value("peatio_ws_authentications_total", result="failure", reason="revocation_unavailable"), 1
        )
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_revocation_unavailable_at_once(self) -> None:
        self.revocation.broken = True
        self.refused("/public", self.token())

    def test_gone_while_checking(self) -> None:
        """
        A client that leaves while the revocation check is pending is never
        opened, registered, subscribed or counted when the check succeeds.
        """
        self.revocation.hold = True
        client = self.request("/private?stream=order&stream=btcusd.trades", self.token(uid="U1"), open=False)
        client.lose()
        self.revocation.pending.pop().callback(False)
        self.assertEqual(len(self.registry), 0)
        self.assertEqual(len(self.factory.connections), 0)
        self.assertEqual(self.hub.subscription_counts(), {})
        self.assertEqual(self.value("ranger_connections_current", auth="private"), 0)
        self.assertEqual(self.value("peatio_ws_dialect_connections", dialect="ranger"), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_gone_while_checking_then_refused(self) -> None:
        """The same client refused after it left: nothing is left behind either."""
        self.revocation.hold = True
        client = self.request("/private", self.token(), open=False)
        client.lose()
        self.revocation.pending.pop().callback(True)
        self.assertEqual(len(self.registry), 0)
        self.assertEqual(len(self.factory.connections), 0)

    def test_handshake_timeout_while_checking(self) -> None:
        """A check slower than WEBSOCKET_HANDSHAKE_TIMEOUT: the socket is dropped, and its answer opens nothing."""
        self.build(websocket_handshake_timeout=3.0)
        self.revocation.hold = True
        client = self.request("/private?stream=order", self.token(uid="U1"), open=False)
        self.clock.advance(3.0)
        self.assertTrue(client.transport.disconnecting)
        # Answered before the transport reports the connection lost, then after.
        self.revocation.pending.pop().callback(False)
        client.lose()
        self.assertNotIn(b"HTTP/1.1 101", client.transport.value())
        self.assertEqual(len(self.registry), 0)
        self.assertEqual(len(self.factory.connections), 0)
        self.assertEqual(self.value("peatio_ws_dialect_connections", dialect="ranger"), 0)

    def test_second_upgrade_request_while_checking(self) -> None:
        """
        Autobahn reads whatever arrives while the check is pending as another
        upgrade request: it must not open the connection twice (two 101s,
        counted twice, opened twice). The connection is refused instead.
        """
        self.revocation.hold = True
        for second in (
            [("Authorization", "Bearer " + self.token(uid="U2"))],  # checked too
            [],  # on /public: anonymous, answered at once
        ):
            client = self.request("/public?stream=order", self.token(uid="U1"), open=False)
            client.protocol.dataReceived(upgrade_request("/public?stream=a.b", "localhost:8080", second))
            for pending in self.revocation.pending:
                pending.callback(False)
            self.revocation.pending.clear()
            self.assertNotIn(b"HTTP/1.1 101", client.transport.value(), second)
            self.assertTrue(client.transport.disconnecting)
            client.lose()
            self.assertEqual(len(self.registry), 0)
            self.assertEqual(len(self.factory.connections), 0)
            self.assertEqual(self.value("ranger_connections_current", auth="private"), 0)
            self.assertEqual(self.value("ranger_connections_current", auth="public"), 0)
            self.assertEqual(self.value("peatio_ws_dialect_connections", dialect="ranger"), 0)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_token_never_logged(self) -> None:
        """Neither a refused nor an accepted token appears in any log line."""
        events = self.logs()
        bad = self.token(sub="api")
        good = self.token(uid="U1")
        self.refused("/private", bad)
        client = self.open("/private", good)
        client.lose()
        text = "\n".join(formatEvent(e) + repr(e) for e in events)
        self.assertIn("401", text)
        for token in (bad, good):
            self.assertNotIn(token, text)
            self.assertNotIn(token.rsplit(".", 1)[1], text)


# -- streams from the query ------------------------------------------------------------------


class QueryStreamsTests(RangerTestCase):
    def test_query_streams(self) -> None:
        """Every stream= value, each possibly a comma list; empty names skipped, order kept."""
        self.assertEqual(query_streams({}), [])
        self.assertEqual(query_streams({"stream": ["a", "b.c"]}), ["a", "b.c"])
        self.assertEqual(query_streams({"stream": ["a,b", ",c,,", "d"]}), ["a", "b", "c", "d"])
        self.assertEqual(query_streams({"other": ["x"]}), [])

    def test_repeated(self) -> None:
        """baseapp's URL: repeated stream=, subscribed in order."""
        self.open("/api/v2/ranger/public/?stream=btcusd.trades&stream=global.tickers&stream=btcusd.kline-1m",
                  None, "btcusd.trades", "global.tickers", "btcusd.kline-1m")

    def test_url_encoded(self) -> None:
        """Values are URL-decoded: an encoded dot, an encoded comma (then split)."""
        self.open("/public/?stream=btcusd%2Etrades&stream=global%2etickers%2Cethusd.trades",
                  None, "btcusd.trades", "global.tickers", "ethusd.trades")

    def test_comma_lists(self) -> None:
        """rango's comma lists, with duplicates taken once."""
        self.open("/?stream=btcusd.trades,global.tickers,,btcusd.trades&stream=global.tickers",
                  None, "btcusd.trades", "global.tickers")

    def test_empty(self) -> None:
        """No stream: the subscribed reply is still sent, with an empty list (baseapp waits for it)."""
        for path in ("/public", "/public/?", "/public?x=1"):
            client = self.request(path)
            self.assertEqual(self.payloads(client), [b'{"success":{"message":"subscribed","streams":[]}}'], path)

    def test_anonymous_private_neither_subscribed_nor_listed(self) -> None:
        """An anonymous connection's private streams are dropped silently: no error, not listed."""
        client = self.open("/public/?stream=order&stream=btcusd.trades&stream=trade", None, "btcusd.trades")
        self.assertEqual(client.protocol.subscriptions.keys(), {"btcusd.trades"})
        self.assertEqual(self.hub.subscription_counts(), {"trades": 1})

    def test_member_private_listed(self) -> None:
        self.open("/private/?stream=order&stream=btcusd.trades&stream=trade", self.token(),
                  "order", "btcusd.trades", "trade")
        self.assertEqual(self.hub.subscription_counts(), {"order": 1, "trade": 1, "trades": 1})

    def test_bad_names_in_url(self) -> None:
        """Bad names in the URL are refused with an error; the good ones are kept, the connection opens."""
        client = self.request("/public/?stream=btcusd.*&stream=global.tickers&stream=a.b.c&stream=%00")
        self.assertEqual(
            self.payloads(client), [BAD_STREAM, b'{"success":{"message":"subscribed","streams":["global.tickers"]}}']
        )
        self.assertIsNone(client.close_code())

    def test_cap_in_url(self) -> None:
        """RANGER_MAX_STREAMS: N names in the URL are all kept; with N+1 the first N are, and the client is told."""
        self.build(ranger_max_streams=3)
        self.open("/public/?stream=a.x&stream=b.x&stream=c.x", None, "a.x", "b.x", "c.x")
        client = self.request("/public/?stream=a.x&stream=b.x&stream=c.x&stream=d.x")
        self.assertEqual(
            self.payloads(client),
            [too_many(3), b'{"success":{"message":"subscribed","streams":["a.x","b.x","c.x"]}}'],
        )
        self.assertIsNone(client.close_code())

    def test_cap_ignores_anonymous_private_names(self) -> None:
        """Private names an anonymous connection cannot have do not count against the cap."""
        self.build(ranger_max_streams=2)
        self.open("/public/?stream=order&stream=trade&stream=a.x&stream=b.x", None, "a.x", "b.x")


# -- client messages ----------------------------------------------------------------------------


class ClientMessageTests(RangerTestCase):
    def send(self, client: Client, message: Any) -> list[bytes]:
        client.send(message if isinstance(message, (bytes, str)) else json.dumps(message))
        return self.payloads(client)

    def test_error_texts(self) -> None:
        """Each error, byte for byte; the connection stays open after every one and nothing changes."""
        client = self.open("/public?stream=global.tickers", None, "global.tickers")
        cases: list[tuple[Any, bytes]] = [
            ("not json", NOT_JSON),
            ("{", NOT_JSON),
            ("", NOT_JSON),
            ("PING", NOT_JSON),
            ("ping ", NOT_JSON),
            ('{"event":"subscribe","streams":["a.b"]} x', NOT_JSON),
            ('{"event":"subscribe","streams":["a.b"],"n":NaN}', NOT_JSON),
            ("[1]", NOT_OBJECT),
            ('"subscribe"', NOT_OBJECT),
            ("42", NOT_OBJECT),
            ("null", NOT_OBJECT),
            ([{"event": "subscribe", "streams": ["a.b"]}], NOT_OBJECT),
            ({}, INVALID_EVENT),
            ({"streams": ["a.b"]}, INVALID_EVENT),
            ({"event": "sub", "streams": ["a.b"]}, INVALID_EVENT),
            ({"event": "Subscribe", "streams": ["a.b"]}, INVALID_EVENT),
            ({"event": 1, "streams": ["a.b"]}, INVALID_EVENT),
            ({"event": None, "streams": ["a.b"]}, INVALID_EVENT),
            ({"jwt": "Bearer x"}, INVALID_EVENT),
            ({"event": "subscribe"}, NO_STREAMS),
            ({"event": "unsubscribe"}, NO_STREAMS),
            ({"event": "subscribe", "streams": []}, NO_STREAMS),
            ({"event": "unsubscribe", "streams": []}, NO_STREAMS),
            ({"event": "subscribe", "streams": "btcusd.trades"}, STREAMS_TYPE),
            ({"event": "subscribe", "streams": {"btcusd.trades": 1}}, STREAMS_TYPE),
            ({"event": "subscribe", "streams": None}, STREAMS_TYPE),
            ({"event": "subscribe", "streams": 1}, STREAMS_TYPE),
            # rango's whole process dies on [1] (an unchecked type assertion).
            ({"event": "subscribe", "streams": [1]}, STREAMS_TYPE),
            ({"event": "subscribe", "streams": ["a.b", 1]}, STREAMS_TYPE),
            ({"event": "subscribe", "streams": [None]}, STREAMS_TYPE),
            ({"event": "subscribe", "streams": [["a.b"]]}, STREAMS_TYPE),
            ({"event": "unsubscribe", "streams": [1]}, STREAMS_TYPE),
            ({"event": "subscribe", "streams": ["btcusd.*"]}, BAD_STREAM),
            ({"event": "subscribe", "streams": ["#"]}, BAD_STREAM),
            ({"event": "subscribe", "streams": ["order\n"]}, BAD_STREAM),
            ({"event": "subscribe", "streams": ["btc\x00usd.trades"]}, BAD_STREAM),
            ({"event": "subscribe", "streams": ["a.b.c"]}, BAD_STREAM),
            ({"event": "subscribe", "streams": [""]}, BAD_STREAM),
            ({"event": "subscribe", "streams": ["x" * 65 + ".trades"]}, BAD_STREAM),
            ({"event": "subscribe", "streams": ["btcusd.trades", "bad stream"]}, BAD_STREAM),
            ({"event": "unsubscribe", "streams": ["global.tickers", "btcusd.*"]}, BAD_STREAM),
        ]
        for message, expected in cases:
            self.assertEqual(self.send(client, message), [expected], message)
        # Nothing any of them said was taken; a good message still is.
        self.assertEqual(
            self.send(client, b'{"event":"subscribe","streams":["a.b"]}'),
            [b'{"success":{"message":"subscribed","streams":["global.tickers","a.b"]}}'],
        )
        self.assertIsNone(client.close_code())

    def test_binary_frame(self) -> None:
        """A binary frame, even holding a good message, is refused; the connection stays open."""
        client = self.open()
        client.send(b'{"event":"subscribe","streams":["btcusd.trades"]}', opcode=2)
        self.assertEqual(self.payloads(client), [NOT_TEXT])
        self.assertEqual(client.protocol.subscriptions, {})
        self.assertIsNone(client.close_code())

    def test_reply_constants(self) -> None:
        """The code's constants are the texts above (one place to spell them)."""
        self.assertEqual(
            [RangerReply.NOT_JSON, RangerReply.NOT_OBJECT, RangerReply.NOT_TEXT, RangerReply.STREAMS_TYPE,
             RangerReply.BAD_STREAM, RangerReply.NO_STREAMS, RangerReply.INVALID_EVENT, RangerReply.too_many(7)],
            [NOT_JSON, NOT_OBJECT, NOT_TEXT, STREAMS_TYPE, BAD_STREAM, NO_STREAMS, INVALID_EVENT, too_many(7)],
        )

    def test_ping(self) -> None:
        """The text ping is answered with the text pong, exactly."""
        client = self.open()
        client.send("ping")
        [frame] = client.received()
        self.assertEqual((frame.opcode, frame.payload), (TEXT, b"pong"))

    def test_subscribe(self) -> None:
        """The reply lists every current subscription, in the order taken; a stream already held is not doubled."""
        client = self.open("/public?stream=global.tickers", None, "global.tickers")
        self.assertEqual(
            self.send(client, {"event": "subscribe", "streams": ["btcusd.trades", "global.tickers", "ethusd.trades"]}),
            [b'{"success":{"message":"subscribed","streams":["global.tickers","btcusd.trades","ethusd.trades"]}}'],
        )

    def test_unsubscribe(self) -> None:
        """The reply lists what is left; a stream not held is ignored."""
        client = self.open("/public?stream=a.x&stream=b.x&stream=c.x", None, "a.x", "b.x", "c.x")
        self.assertEqual(
            self.send(client, {"event": "unsubscribe", "streams": ["b.x", "never.held", "order"]}),
            [b'{"success":{"message":"unsubscribed","streams":["a.x","c.x"]}}'],
        )
        client.send_json({"event": "unsubscribe", "streams": ["a.x", "c.x"]})
        self.assertEqual(client.messages(), [unsubscribed()])
        self.hub.publish("a", "x", b"{}")
        self.assertEqual(client.messages(), [])

    def test_refused_message_changes_nothing(self) -> None:
        """A subscribe holding one bad name subscribes none of the good ones."""
        client = self.open("/public?stream=a.x", None, "a.x")
        self.send(client, {"event": "subscribe", "streams": ["b.x", "c*", "d.x"]})
        self.assertEqual(list(client.protocol.subscriptions), ["a.x"])
        self.send(client, {"event": "unsubscribe", "streams": ["a.x", "c*"]})
        self.assertEqual(list(client.protocol.subscriptions), ["a.x"])

    def test_anonymous_private_by_message(self) -> None:
        """An anonymous subscribe to a private stream: not subscribed, not listed, no error."""
        client = self.open()
        client.send_json({"event": "subscribe", "streams": ["order", "btcusd.trades"]})
        self.assertEqual(client.messages(), [subscribed("btcusd.trades")])

    def test_member_private_by_message(self) -> None:
        client = self.member()
        client.send_json({"event": "subscribe", "streams": ["order", "deposit_address"]})
        self.assertEqual(client.messages(), [subscribed("order", "deposit_address")])
        self.assertEqual(client.protocol.private_streams, {"order", "deposit_address"})
        client.send_json({"event": "unsubscribe", "streams": ["order"]})
        self.assertEqual(client.messages(), [unsubscribed("deposit_address")])
        self.assertEqual(client.protocol.private_streams, {"deposit_address"})


class CapTests(RangerTestCase):
    """RANGER_MAX_STREAMS on subscribe messages: N accepted, N+1 refused whole."""

    def setUp(self) -> None:
        self.build(ranger_max_streams=3)

    def subscribe(self, client: Client, *names: str) -> list[bytes]:
        client.send_json({"event": "subscribe", "streams": list(names)})
        return [frame.payload for frame in client.received()]

    def test_n_accepted_in_one_message(self) -> None:
        client = self.open()
        self.assertEqual(
            self.subscribe(client, "a.x", "b.x", "c.x"),
            [b'{"success":{"message":"subscribed","streams":["a.x","b.x","c.x"]}}'],
        )

    def test_n_plus_one_refused_whole(self) -> None:
        client = self.open()
        self.assertEqual(self.subscribe(client, "a.x", "b.x", "c.x", "d.x"), [too_many(3)])
        self.assertEqual(client.protocol.subscriptions, {})
        self.assertIsNone(client.close_code())

    def test_adding_past_the_cap(self) -> None:
        """The cap counts what the connection holds: 2 held + 2 new is refused whole; + 1 is fine; then full."""
        client = self.open("/public?stream=a.x&stream=b.x", None, "a.x", "b.x")
        self.assertEqual(self.subscribe(client, "c.x", "d.x"), [too_many(3)])
        self.assertEqual(list(client.protocol.subscriptions), ["a.x", "b.x"])
        self.assertEqual(len(self.subscribe(client, "c.x")), 1)
        self.assertEqual(self.subscribe(client, "d.x"), [too_many(3)])
        # Streams already held are not new: re-listing them is fine at the cap.
        self.assertEqual(
            self.subscribe(client, "a.x", "b.x", "c.x"),
            [b'{"success":{"message":"subscribed","streams":["a.x","b.x","c.x"]}}'],
        )
        client.send_json({"event": "unsubscribe", "streams": ["a.x"]})
        client.received()
        self.assertEqual(
            self.subscribe(client, "d.x"), [b'{"success":{"message":"subscribed","streams":["b.x","c.x","d.x"]}}']
        )

    def test_duplicates_count_once(self) -> None:
        """A name repeated in one message is one stream."""
        client = self.open()
        self.assertEqual(
            self.subscribe(client, "a.x", "a.x", "a.x", "a.x", "b.x"),
            [b'{"success":{"message":"subscribed","streams":["a.x","b.x"]}}'],
        )

    def test_member_private_count(self) -> None:
        """A member's private streams count like the public ones."""
        client = self.member()
        self.assertEqual(self.subscribe(client, "order", "trade", "a.x", "b.x"), [too_many(3)])
        self.assertEqual(len(self.subscribe(client, "order", "trade", "a.x")), 1)

    def test_anonymous_private_do_not_count(self) -> None:
        client = self.open()
        self.assertEqual(
            self.subscribe(client, "order", "a.x", "b.x", "c.x"),
            [b'{"success":{"message":"subscribed","streams":["a.x","b.x","c.x"]}}'],
        )


# -- routing -----------------------------------------------------------------------------------


class RoutingTests(RangerTestCase):
    def test_private_events_by_subscription(self) -> None:
        """
        A ranger member gets only the private events it subscribed to, as
        {"<event>": payload}; a legacy connection of the same member gets every one.
        """
        ranger = self.open("/private?stream=order", self.token(uid="U1"), "order")
        legacy = self.request("/")
        legacy.messages()
        legacy.send_json({"jwt": "Bearer " + self.token(uid="U1")})
        legacy.messages()
        self.assertEqual(self.registry.deliver("U1", "order", b'{"id":1}'), 2)
        self.assertEqual(self.registry.deliver("U1", "trade", b'{"id":2}'), 1)
        self.assertEqual(self.registry.deliver("U1", "balances", b'{"id":3}'), 1)
        self.assertEqual(ranger.messages(), [{"order": {"id": 1}}])
        self.assertEqual(legacy.messages(), [{"order": {"id": 1}}, {"trade": {"id": 2}}, {"balances": {"id": 3}}])
        ranger.send_json({"event": "subscribe", "streams": ["trade"]})
        ranger.send_json({"event": "unsubscribe", "streams": ["order"]})
        ranger.messages()
        self.registry.deliver("U1", "order", b'{"id":4}')
        self.registry.deliver("U1", "trade", b'{"id":5}')
        self.assertEqual(ranger.messages(), [{"trade": {"id": 5}}])
        self.assertEqual(len(legacy.messages()), 2)

    def test_private_events_of_others(self) -> None:
        """No member's events reach another member's ranger connection, nor an anonymous one."""
        a = self.open("/private?stream=order", self.token(uid="A"), "order")
        b = self.open("/private?stream=order", self.token(uid="B"), "order")
        anonymous = self.open("/public?stream=order")
        self.registry.deliver("A", "order", b"{}")
        self.assertEqual((len(a.messages()), len(b.messages()), len(anonymous.messages())), (1, 0, 0))

    def test_public_events_to_subscribers_only(self) -> None:
        """public.<id>.<event> reaches the subscribers of <id>.<event>, member or anonymous, as published."""
        anonymous = self.open("/public?stream=btcusd.trades", None, "btcusd.trades")
        member = self.open("/private?stream=btcusd.trades&stream=order", self.token(), "btcusd.trades", "order")
        other = self.open("/public?stream=ethusd.trades&stream=btcusd.kline-1m", None,
                          "ethusd.trades", "btcusd.kline-1m")
        body = b'{"tid":7, "price":"1.5"}'
        self.assertEqual(self.hub.publish("btcusd", "trades", body), 2)
        for client in (anonymous, member):
            self.assertEqual(self.payloads(client), [b'{"btcusd.trades":' + body + b"}"])
        self.assertEqual(other.messages(), [])

    def test_public_framed_once(self) -> None:
        """Every subscriber's connection is handed the very same frame object."""
        clients = [self.open("/public?stream=global.tickers", None, "global.tickers") for _ in range(4)]
        handed: list[bytes] = []
        for client in clients:
            original = client.protocol.send_frame

            def send_frame(frame: bytes, original: Any = original) -> bool:
                handed.append(frame)
                return bool(original(frame))

            client.protocol.send_frame = send_frame
        self.hub.publish("global", "tickers", b'{"btcusd":{"last":"1"}}')
        self.assertEqual(len(handed), 4)
        for frame in handed:
            self.assertIs(frame, handed[0])
        self.assertEqual(handed[0], text_frame(event_message("global.tickers", b'{"btcusd":{"last":"1"}}')))

    def test_closed_connection_forgotten(self) -> None:
        """A connection that closed is no longer a subscriber of anything."""
        client = self.open("/private?stream=btcusd.trades&stream=btcusd.ob-inc&stream=order", self.token(uid="U1"),
                           "btcusd.trades", "btcusd.ob-inc", "order")
        client.lose()
        self.assertEqual(self.hub.publish("btcusd", "trades", b"{}"), 0)
        self.assertEqual(self.registry.deliver("U1", "order", b"{}"), 0)
        self.assertEqual(self.hub.subscription_counts(), {})


class LifecycleTests(RangerTestCase):
    def test_token_expiry(self) -> None:
        """At exp the ranger member is told Token expired. and closed with 4001, not a millisecond before."""
        exp = int(self.clock.seconds()) + 30
        client = self.open("/private?stream=order", self.token(uid="U1", exp=exp), "order")
        self.clock.advance(exp - self.clock.seconds() - 0.001)
        self.assertIsNone(client.close_code())
        self.clock.advance(0.001)
        self.assertEqual(client.messages(), [EXPIRED])
        self.assertEqual(client.close_code(), CloseCode.TOKEN_EXPIRED)
        self.assertEqual(self.registry.deliver("U1", "order", b"{}"), 0)

    def test_revocation(self) -> None:
        """A revoked session on a ranger connection: Authentication failed. and 4003, by jti or by uid."""
        by_jti = self.open("/private", self.token(uid="U1", jti="J1"))
        by_uid = self.open("/private", self.token(uid="U2", jti="J2"))
        anonymous = self.open()
        self.assertEqual(self.registry.revoke(jti="J1"), 1)
        self.assertEqual(self.registry.revoke(uid="U2"), 1)
        for client in (by_jti, by_uid):
            self.assertEqual(client.messages(), [AUTH_FAILED])
            self.assertEqual(client.close_code(), CloseCode.REVOKED)
        self.assertIsNone(anonymous.close_code())

    def test_close_releases_metrics(self) -> None:
        """Closing by the server, then the client's answer: the gauges are back to zero."""
        client = self.open("/private?stream=order&stream=btcusd.trades", self.token(exp=int(self.clock.seconds()) + 5),
                           "order", "btcusd.trades")
        self.assertEqual(self.value("ranger_connections_current", auth="private"), 1)
        self.clock.advance(5)
        client.answer_close()
        self.assertEqual(self.value("ranger_connections_current", auth="private"), 0)
        self.assertEqual(self.value("peatio_ws_dialect_connections", dialect="ranger"), 0)
        self.assertEqual(self.value("peatio_ws_subscriptions", stream="order"), 0)


# -- the order-book replay -----------------------------------------------------------------------


class ReplayTests(RangerTestCase):
    def setUp(self) -> None:
        self.build(ranger_orderbook_max_increments=2)

    def book(self, last: int, first: int = 1, pad: int = 0) -> list[bytes]:
        """Publish a snapshot at C{first} and increments up to C{last}; the frames a replay would be."""
        frames = [b'{"btcusd.ob-snap":' + snap_body(first, pad) + b"}"]
        self.hub.publish("btcusd", "ob-snap", snap_body(first, pad))
        for seq in range(first + 1, last + 1):
            self.hub.publish("btcusd", "ob-inc", inc_body(seq, pad))
            frames.append(b'{"btcusd.ob-inc":' + inc_body(seq, pad) + b"}")
        return frames

    def test_replay_before_subscribed_reply_on_open(self) -> None:
        """URL streams: the replay (snapshot, then each increment), then the subscribed reply."""
        replay = self.book(3)
        client = self.request("/public?stream=btcusd.ob-inc&stream=btcusd.trades")
        self.assertEqual(
            self.payloads(client),
            [*replay, b'{"success":{"message":"subscribed","streams":["btcusd.ob-inc","btcusd.trades"]}}'],
        )
        self.hub.publish("btcusd", "ob-inc", inc_body(4))
        self.assertEqual(self.payloads(client), [b'{"btcusd.ob-inc":' + inc_body(4) + b"}"])

    def test_replay_before_subscribed_reply_on_message(self) -> None:
        replay = self.book(2)
        client = self.open()
        client.send_json({"event": "subscribe", "streams": ["btcusd.ob-inc"]})
        self.assertEqual(
            self.payloads(client), [*replay, b'{"success":{"message":"subscribed","streams":["btcusd.ob-inc"]}}']
        )
        # Subscribing again replays nothing.
        client.send_json({"event": "subscribe", "streams": ["btcusd.ob-inc"]})
        self.assertEqual(len(self.payloads(client)), 1)

    def test_past_the_bound_waits(self) -> None:
        """max_increments+1 increments stored: no replay, the subscriber waits for the next snapshot."""
        self.book(4)  # snapshot 1, increments 2, 3, 4: one past the bound of 2
        client = self.open("/public?stream=btcusd.ob-inc", None, "btcusd.ob-inc")
        self.hub.publish("btcusd", "ob-inc", inc_body(5))
        self.assertEqual(client.messages(), [])
        self.hub.publish("btcusd", "ob-snap", snap_body(5))
        self.hub.publish("btcusd", "ob-inc", inc_body(6))
        self.assertEqual(
            self.payloads(client),
            [b'{"btcusd.ob-snap":' + snap_body(5) + b"}", b'{"btcusd.ob-inc":' + inc_body(6) + b"}"],
        )

    def test_no_gap_on_the_wire(self) -> None:
        """A gap is never forwarded; the next snapshot heals the connection without a reconnect."""
        self.book(2)
        client = self.request("/public?stream=btcusd.ob-inc")
        client.received()
        self.hub.publish("btcusd", "ob-inc", inc_body(4))
        self.hub.publish("btcusd", "ob-inc", inc_body(5))
        self.assertEqual(client.messages(), [])
        self.hub.publish("btcusd", "ob-snap", snap_body(5))
        self.assertEqual(client.messages(), [{"btcusd.ob-snap": json.loads(snap_body(5))}])

    def test_replay_while_paused_never_4008(self) -> None:
        """
        A replay far larger than WEBSOCKET_MAX_BUFFER, written while the
        transport is paused, does not trip the slow-consumer close.
        """
        self.build(ranger_orderbook_max_increments=50, websocket_max_buffer=2000)
        replay = self.book(51, pad=200)
        self.assertGreater(sum(map(len, replay)), 5 * 2000)
        client = self.open()
        client.protocol.pauseProducing()
        client.send_json({"event": "subscribe", "streams": ["btcusd.ob-inc"]})
        payloads = self.payloads(client)
        self.assertEqual(payloads[:-1], replay)
        self.assertEqual(payloads[-1], b'{"success":{"message":"subscribed","streams":["btcusd.ob-inc"]}}')
        self.assertIsNone(client.close_code())
        self.assertEqual(self.value("peatio_ws_slow_consumer_closes_total"), 0)

    def held_connection(self, path: str = "/public") -> tuple[Client, HoldingTransport]:
        """A connection over a transport that says what it holds (the exact slow-consumer measure of TCP)."""
        address = IPv4Address("TCP", "127.0.0.1", 50000)
        protocol = self.factory.buildProtocol(address)
        transport = HoldingTransport(peerAddress=address)
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        protocol.dataReceived(upgrade_request(path, "localhost:8080", [], key=SAMPLE_KEY))
        client = Client(protocol, transport)
        client.received()
        transport.drain()
        return client, transport

    def test_replay_held_by_the_transport_never_4008(self) -> None:
        """
        With a transport that holds the whole replay (none of it taken by the
        kernel), the replay is still not counted; events after it are, from 0.
        """
        self.build(ranger_orderbook_max_increments=50, websocket_max_buffer=2000)
        replay = self.book(51, pad=200)
        client, _ = self.held_connection()
        client.protocol.pauseProducing()
        client.send_json({"event": "subscribe", "streams": ["btcusd.ob-inc", "btcusd.trades"]})
        self.assertEqual(len(self.payloads(client)), len(replay) + 1)
        self.assertIsNone(client.close_code())
        # Events still fit in the limit, counted apart from the replay.
        body = b'{"p":"' + b"x" * 480 + b'"}'
        for _ in range(3):
            self.assertEqual(self.hub.publish("btcusd", "trades", body), 1)
        self.assertIsNone(client.close_code())
        # And the limit still holds for them.
        for _ in range(2):
            self.hub.publish("btcusd", "trades", body)
        self.assertEqual(client.close_code(), CloseCode.SLOW_CONSUMER)

    def test_replays_do_not_raise_the_limit_for_good(self) -> None:
        """
        Replays the kernel took long ago must not keep raising the limit:
        after many subscribe/unsubscribe rounds (transport never paused, so
        never resumed), a client that stops reading is still closed 4008
        once WEBSOCKET_MAX_BUFFER of events is held for it.
        """
        self.build(ranger_orderbook_max_increments=50, websocket_max_buffer=2000)
        self.book(51, pad=200)
        client, transport = self.held_connection("/public?stream=btcusd.trades")
        for _ in range(20):
            client.send_json({"event": "subscribe", "streams": ["btcusd.ob-inc"]})
            client.send_json({"event": "unsubscribe", "streams": ["btcusd.ob-inc"]})
            client.received()
            transport.drain()
        client.protocol.pauseProducing()
        body = b'{"p":"' + b"x" * 480 + b'"}'
        for _ in range(10):
            self.hub.publish("btcusd", "trades", body)
        self.assertEqual(client.close_code(), CloseCode.SLOW_CONSUMER)


# -- metrics -----------------------------------------------------------------------------------


class MetricsTests(RangerTestCase):
    def test_dialect_connections(self) -> None:
        """peatio_ws_dialect_connections{dialect} follows the open connections of each dialect."""
        legacy = self.request("/")
        r1 = self.open()
        r2 = self.member()
        self.assertEqual(self.value("peatio_ws_dialect_connections", dialect="legacy"), 1)
        self.assertEqual(self.value("peatio_ws_dialect_connections", dialect="ranger"), 2)
        for client in (legacy, r1, r2):
            client.lose()
        self.assertEqual(self.value("peatio_ws_dialect_connections", dialect="legacy"), 0)
        self.assertEqual(self.value("peatio_ws_dialect_connections", dialect="ranger"), 0)

    def test_ranger_connections_by_auth(self) -> None:
        """ranger_connections_current{auth} and ranger_connections_total{auth}, ranger's own names."""
        anonymous = [self.open() for _ in range(2)]
        member = self.member()
        self.refused("/private")
        self.assertEqual(self.value("ranger_connections_current", auth="public"), 2)
        self.assertEqual(self.value("ranger_connections_current", auth="private"), 1)
        anonymous[0].lose()
        anonymous[0].lose()
        member.lose()
        self.assertEqual(self.value("ranger_connections_current", auth="public"), 1)
        self.assertEqual(self.value("ranger_connections_current", auth="private"), 0)
        self.assertEqual(self.value("ranger_connections_total", auth="public"), 2)
        self.assertEqual(self.value("ranger_connections_total", auth="private"), 1)

    def test_subscriptions_by_stream(self) -> None:
        """peatio_ws_subscriptions{stream}: by family, read at scrape time."""
        a = self.open("/private?stream=order&stream=btcusd.trades&stream=btcusd.ob-inc", self.token(),
                      "order", "btcusd.trades", "btcusd.ob-inc")
        self.open("/public?stream=btcusd.trades&stream=ethusd.trades&stream=btcusd.kline-1m&stream=x.made-up",
                  None, "btcusd.trades", "ethusd.trades", "btcusd.kline-1m", "x.made-up")
        for stream, count in (("order", 1), ("trades", 3), ("ob-inc", 1), ("kline-1m", 1), ("other", 1)):
            self.assertEqual(self.value("peatio_ws_subscriptions", stream=stream), count, stream)
        a.send_json({"event": "unsubscribe", "streams": ["order", "btcusd.trades"]})
        self.assertEqual(self.value("peatio_ws_subscriptions", stream="order"), 0)
        self.assertEqual(self.value("peatio_ws_subscriptions", stream="trades"), 2)
        a.lose()
        self.assertEqual(self.value("peatio_ws_subscriptions", stream="ob-inc"), 0)

    def test_orderbook_metrics(self) -> None:
        """peatio_ws_orderbook_*{market}: the store's state, from the factory's registry."""
        self.build(ranger_orderbook_max_increments=1)
        self.open("/public?stream=btcusd.ob-inc", None, "btcusd.ob-inc")
        self.hub.publish("btcusd", "ob-snap", snap_body(3))
        self.hub.publish("btcusd", "ob-inc", inc_body(4))
        self.assertEqual(self.value("peatio_ws_orderbook_sequence", market="btcusd"), 4)
        self.assertEqual(self.value("peatio_ws_orderbook_replayable", market="btcusd"), 1)
        self.assertEqual(self.value("peatio_ws_orderbook_increments", market="btcusd"), 1)
        self.hub.publish("btcusd", "ob-inc", inc_body(5))
        self.assertEqual(self.value("peatio_ws_orderbook_replayable", market="btcusd"), 0)
        self.assertEqual(self.value("peatio_ws_orderbook_broken", market="btcusd"), 0)
        self.hub.publish("btcusd", "ob-inc", inc_body(9))
        self.assertEqual(self.value("peatio_ws_orderbook_broken", market="btcusd"), 1)
        self.assertEqual(self.value("peatio_ws_orderbook_waiting", market="btcusd"), 1)
        self.assertEqual(self.value("peatio_ws_orderbook_gaps_total", market="btcusd"), 1)


# -- the subscribed reply waits for the member's events ---------------------------------------


class EventsFlowingTests(RangerTestCase):
    """A member's subscribed reply goes once its events reach this process (its binding is in place)."""

    def test_subscribed_waits_for_the_binding(self) -> None:
        waiting: dict[str, Deferred[None]] = {}

        class Binder:
            def member_joined(self, uid: str) -> None:
                waiting[uid] = Deferred()

            def member_left(self, uid: str) -> None:
                pass

            def events_flowing(self, uid: str) -> Deferred[None] | None:
                return waiting[uid]

        self.registry.add_observer(Binder())
        client = self.request("/private?stream=order", self.token(uid="U9"))
        self.assertEqual(client.messages(), [])
        # A message sent meanwhile waits for the reply, and is answered after it.
        client.send("ping")
        self.assertEqual(client.messages(), [])
        waiting["U9"].callback(None)
        self.assertEqual(client.messages(), [subscribed("order"), "pong"])
        self.registry.deliver("U9", "order", b'{"id":1}')
        self.assertEqual(client.messages(), [{"order": {"id": 1}}])
