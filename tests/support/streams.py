"""
Steady streams of numbered events for one member or several, what a
client received of them, and what became of every event between publisher
and client.

 - L{SteadyStream}: numbered order events at a steady pace, for one member
   or in turn for several (L{SteadyStream.member_of}).
 - L{SeqTracker}: the C{seq} of every event one connection receives.
 - L{Member}: a member's front end across connections, as a real one
   behaves (SPEC §8): closed with 1012 it reconnects, logs in again and
   resyncs from the REST API; every connection (a L{Session}) and every
   arrival is kept, so that tracking goes on across reconnects.
 - L{continuity}: for every accepted event, delivered or not, and if not,
   whether its member was told (1012) in time: a L{Continuity}, whose
   C{silent} events are the promise broken.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from peatio_ws.testing import make_token
from tests.support.oracle import AUTHENTICATED
from tests.support.publisher import ACCEPTED, NACKED, NOT_SENT, RETURNED, UNCONFIRMED, ConfirmingPublisher
from tests.support.reactor_client import WsClient
from tests.support.waiting import sleep, until, within

__all__ = [
    "TOLD",
    "Continuity",
    "Member",
    "SeqTracker",
    "Session",
    "SteadyStream",
    "at_least",
    "continuity",
    "delivery_figures",
    "finish",
]

#: The close code that tells a member events may have been lost: reconnect, then resync (SPEC §8).
TOLD = 1012


class SteadyStream:
    """
    Publishes numbered order events at a steady pace (C{per_tick} every
    C{interval} seconds) until stopped: for member C{uid}, or for each of
    several members in turn (C{uid} a sequence of uids). Sequence numbers
    are global; L{member_of} says whose each one is.
    """

    def __init__(
        self, publisher: ConfirmingPublisher, uid: str | Sequence[str], per_tick: int = 2, interval: float = 0.01
    ) -> None:
        self.publisher = publisher
        self.uids = [uid] if isinstance(uid, str) else list(uid)
        if not self.uids:
            raise ValueError("a stream needs a member")
        #: The first (or only) member.
        self.uid = self.uids[0]
        self.per_tick = per_tick
        self.interval = interval
        self.next_seq = 0
        #: The member each sequence number was published for.
        self.member_of: dict[int, str] = {}
        self._turn = 0
        self._loop: LoopingCall | None = None

    def publish_to(self, uid: str) -> int:
        """Publish the next event, for C{uid}, now; its sequence number."""
        seq = self.next_seq
        self.next_seq += 1
        self.member_of[seq] = uid
        body = json.dumps(
            {"seq": seq, "id": seq, "side": "buy", "ord_type": "limit", "price": "100.5", "state": "wait",
             "market": "btcusd", "remaining_volume": "1.0", "executed_volume": "0.0"},
            separators=(",", ":"),
        ).encode()
        self.publisher.publish(seq, f"private.{uid}.order", body)
        return seq

    def publish_batch(self) -> None:
        """Publish the next C{per_tick} events now (members in turn)."""
        for _ in range(self.per_tick):
            uid = self.uids[self._turn % len(self.uids)]
            self._turn += 1
            self.publish_to(uid)

    def publish_each(self) -> dict[str, int]:
        """One event for every member, now: uid -> its sequence number (end markers)."""
        return {uid: self.publish_to(uid) for uid in self.uids}

    def seqs_of(self, uid: str) -> list[int]:
        return [seq for seq, member in self.member_of.items() if member == uid]

    def start(self) -> None:
        self._loop = LoopingCall(self.publish_batch)
        self._loop.clock = reactor
        self._loop.start(self.interval)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()


class SeqTracker:
    """The C{seq} of every C{event} a client receives, in arrival order, parsed as they come."""

    def __init__(self, client: WsClient, event: str = "order") -> None:
        self.event = event
        self.prefix = '{"' + event + '":'
        self.arrivals: list[int] = []
        self.unique: set[int] = set()
        client.on_text = self.feed

    def feed(self, text: str) -> None:
        if text.startswith(self.prefix):
            seq = json.loads(text)[self.event]["seq"]
            self.arrivals.append(seq)
            self.unique.add(seq)

    def __len__(self) -> int:
        return len(self.arrivals)


def at_least(tracker: SeqTracker | Member, count: int) -> bool:
    """Whether C{tracker} has seen C{count} events (for L{WsClient.wait} with functools.partial)."""
    return len(tracker) >= count


# ---------------------------------------------------------------------------
# A member's front end, across reconnects


@dataclasses.dataclass
class Session:
    """One connection of a L{Member}: when it was authenticated and how it ended (monotonic seconds)."""

    client: WsClient
    #: When the login reply arrived (None until then).
    opened: float | None = None
    #: When the connection was gone (None while open).
    closed: float | None = None
    #: The close code the server sent (None: none, or still open).
    code: int | None = None
    #: Events received on it (copies included).
    events: int = 0

    @property
    def told(self) -> bool:
        """Closed by the server with 1012: events may have been lost (SPEC §8)."""
        return self.code == TOLD


class _SessionClient(WsClient):
    """A L{WsClient} that says when it is gone."""

    def __init__(self, on_lost: Callable[[_SessionClient], None]) -> None:
        super().__init__()
        self._on_lost = on_lost

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        super().connectionLost(reason)
        self._on_lost(self)


class Member:
    """
    A member's front end on the daemon listening on C{port}, one connection
    (L{Session}) at a time, as SPEC §8 asks a real one to behave: when the
    server closes it with 1012 it reconnects (after C{reconnect_delay}
    seconds), logs in again and resyncs from the REST API (here: the
    reconnect is noted; a resync covers everything published before it).
    Any other end of a connection while the member runs is a problem
    (L{problems}); it reconnects then too.

    Every C{event} received, on whichever connection, is kept in arrival
    order (L{arrivals}), so tracking goes on across reconnects. L{stop}
    before the daemon goes (the cleanup C{ChaosTestCase.member} registers).
    """

    def __init__(self, port: int, uid: str, *, event: str = "order", reconnect_delay: float = 0.05) -> None:
        self.port = port
        self.uid = uid
        self.event = event
        self.prefix = '{"' + event + '":'
        self.reconnect_delay = reconnect_delay
        self.sessions: list[Session] = []
        self.arrivals: list[int] = []
        self.unique: set[int] = set()
        #: Whatever went wrong on the client's side: unexpected closes, failed reconnects.
        self.problems: list[str] = []
        self._stopped = False
        self._reconnecting: Deferred[None] | None = None

    def __len__(self) -> int:
        return len(self.arrivals)

    @property
    def session(self) -> Session:
        """The newest connection."""
        return self.sessions[-1]

    @property
    def connected(self) -> bool:
        """Whether the newest connection is authenticated and open."""
        return bool(self.sessions) and self.session.opened is not None and self.session.closed is None

    @property
    def told(self) -> int:
        """How many of its connections the server closed with 1012."""
        return sum(s.told for s in self.sessions)

    @property
    def reconnects(self) -> int:
        """Connections logged in after the first."""
        return max(0, sum(s.opened is not None for s in self.sessions) - 1)

    async def connect(self, seconds: float = 15.0) -> Session:
        """A new connection, logged in (fails, naming why, if the daemon does not accept it)."""
        client = _SessionClient(self._lost)
        session = Session(client)
        client.on_text = partial(self._feed, session)
        self.sessions.append(session)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=10)
        await within(connectProtocol(endpoint, client), seconds, f"TCP for {self.uid}")
        await client.wait(lambda: client.status is not None, seconds, f"the handshake answer for {self.uid}")
        if client.status != 101:
            raise AssertionError(f"{self.uid}: the upgrade was answered {client.status}")
        reply = await client.login(make_token(uid=self.uid), seconds)
        if reply != AUTHENTICATED:
            raise AssertionError(f"{self.uid}: the login was answered {reply!r}")
        return session

    def _feed(self, session: Session, text: str) -> None:
        if text.startswith(self.prefix):
            seq = json.loads(text)[self.event]["seq"]
            self.arrivals.append(seq)
            self.unique.add(seq)
            session.events += 1
        elif session.opened is None and text.startswith('{"success"'):
            session.opened = time.monotonic()

    def _lost(self, client: _SessionClient) -> None:
        session = next(s for s in self.sessions if s.client is client)
        session.closed = time.monotonic()
        session.code = client.close_code
        if self._stopped or session.opened is None:
            return  # stopping; or a connection not logged in yet: L{connect} fails, its caller decides
        if session is not self.session:
            self.problems.append(f"{self.uid}: an older connection ended ({session.code})")
            return
        if not session.told:
            self.problems.append(f"{self.uid}: connection #{len(self.sessions)} ended with close code {session.code}")
        self._reconnecting = Deferred.fromCoroutine(self._reconnect())

    async def _reconnect(self) -> None:
        deadline = time.monotonic() + 60
        while not self._stopped:
            await sleep(self.reconnect_delay)
            if self._stopped:
                return
            try:
                await self.connect()
                return
            except AssertionError as e:
                if time.monotonic() > deadline:
                    self.problems.append(f"{self.uid}: could not reconnect within 60 s: {e}")
                    return
                # A refused or failed attempt: that connection is gone; try again.
                self.session.client.abort()
                self.reconnect_delay = max(self.reconnect_delay, 0.25)

    async def wait(self, condition: Callable[[], bool], seconds: float, what: str) -> None:
        """Until C{condition} holds, across reconnects; fails naming C{what} (and the member's problems)."""
        try:
            await until(condition, seconds, what)
        except AssertionError as e:
            problems = "; ".join(self.problems) or "none"
            where = f"member {self.uid}: {len(self.sessions)} connections, problems: {problems}"
            raise AssertionError(f"{e} ({where})") from None

    async def wait_connected(self, seconds: float = 30.0) -> None:
        await self.wait(lambda: self.connected, seconds, f"{self.uid} connected and logged in")

    async def stop(self) -> None:
        """No more reconnects; close what is open (aborted), and wait until it is gone."""
        self._stopped = True
        if self._reconnecting is not None and not self._reconnecting.called:
            await within(self._reconnecting, 30, f"{self.uid}'s reconnect to end")
        for session in self.sessions:
            session.client.abort()
        gone = [s.client for s in self.sessions]
        await until(lambda: all(c.lost or c.transport is None for c in gone), 15, f"{self.uid}'s connections to close")


# ---------------------------------------------------------------------------
# What became of every event


def delivery_figures(received: list[int], publisher: ConfirmingPublisher) -> dict[str, Any]:
    """
    What was published, what the broker accepted into our queue, what the
    client got: duplicates (extra copies), lost (accepted, never delivered),
    and whether first copies arrived in publishing order.
    """
    counts = publisher.counts()
    first: list[int] = []
    seen: set[int] = set()
    for seq in received:
        if seq not in seen:
            seen.add(seq)
            first.append(seq)
    accepted = set(publisher.seqs(ACCEPTED))
    return {
        "published": len(publisher.outcome),
        "accepted": counts[ACCEPTED],
        "returned (unroutable)": counts[RETURNED],
        "nacked": counts[NACKED],
        "unconfirmed (connection lost)": counts[UNCONFIRMED],
        "not sent (broker down)": counts[NOT_SENT],
        "delivered": len(seen),
        "duplicates": len(received) - len(seen),
        "lost": len(accepted - seen),
        "delivered but not confirmed": len(seen - accepted),
        "in order": first == sorted(first),
    }


@dataclasses.dataclass
class MemberContinuity:
    """One member's part of a L{Continuity}."""

    accepted: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    told: int = 0
    silent: list[int] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        text = (
            f"accepted {self.accepted}, delivered {self.delivered}, lost {self.lost}, "
            f"duplicates {self.duplicates}, told {self.told}"
        )
        return text + (f", SILENT {len(self.silent)}" if self.silent else "")


@dataclasses.dataclass
class Continuity:
    """
    What became of every event of a stream, against SPEC §8's promise, "never
    a silent gap": every accepted event is delivered to its member, or is
    lost while the member is told, i.e. the connection the member had when
    the event was published (its newest one logged in by then) was closed
    with 1012. Its reconnect, and the resync that follows, come after the
    event; an event lost after a reconnect (published once the new
    connection had logged in) is silent.
    """

    #: The publisher's outcomes (see L{tests.support.publisher}).
    outcomes: dict[str, int]
    published: int
    accepted: int
    delivered: int
    #: Accepted, never delivered.
    lost: int
    #: Of the lost ones: published while the connection they were lost for was still open (before its 1012).
    lost_before_told: int
    #: Of the lost ones: published after the 1012, before the member's reconnect (its resync covers them).
    lost_after_told: int
    #: Lost, and the member was never told: the promise broken (sequence numbers).
    silent: list[int]
    duplicates: int
    #: Connections closed by the server with 1012.
    told: int
    reconnects: int
    #: Delivered although not accepted (unconfirmed: the publisher's connection went first).
    delivered_unconfirmed: int
    #: Returned (unroutable: no binding for the member then), and the member's connection at that moment was
    #: not closed with 1012: a producer without C{mandatory} (Peatio's) loses those at the broker, untold.
    returned_untold: int
    #: First copies, for every member, in publishing order.
    in_order: bool
    per_member: dict[str, MemberContinuity]
    #: When each event was published (monotonic seconds, as L{Session}'s times).
    times: dict[int, float] = dataclasses.field(default_factory=dict, repr=False)

    def published_at(self, seq: int) -> float:
        return self.times[seq]

    def figures(self) -> dict[str, Any]:
        """The figures a fault test records (L{tests.support.figures.record})."""
        return {
            "published": self.published,
            "accepted": self.accepted,
            "returned (unroutable)": self.outcomes[RETURNED],
            "nacked": self.outcomes[NACKED],
            "unconfirmed (connection lost)": self.outcomes[UNCONFIRMED],
            "not sent (broker down)": self.outcomes[NOT_SENT],
            "delivered": self.delivered,
            "lost": self.lost,
            "lost, told: published before the 1012": self.lost_before_told,
            "lost, told: published between the 1012 and the reconnect": self.lost_after_told,
            "duplicated": self.duplicates,
            "connections told (1012)": self.told,
            "reconnects": self.reconnects,
            "silent gaps": len(self.silent),
            "delivered but not confirmed": self.delivered_unconfirmed,
            "returned while the member was not told": self.returned_untold,
            "in order": self.in_order,
        }


def _current(sessions: Sequence[Session], at: float) -> Session | None:
    """The session a member had at time C{at}: its newest one logged in by then."""
    current = None
    for session in sessions:
        if session.opened is not None and session.opened <= at:
            current = session
    return current


def continuity(members: Sequence[Member], stream: SteadyStream, publisher: ConfirmingPublisher) -> Continuity:
    """What became of every event of C{stream}, for C{members} (SPEC §8's promise: see L{Continuity})."""
    by_uid = {m.uid: m for m in members}
    counts = publisher.counts()
    accepted = set(publisher.seqs(ACCEPTED))
    per_member: dict[str, MemberContinuity] = {}
    lost_before = lost_after = unconfirmed_delivered = returned_untold = 0
    returned = set(publisher.seqs(RETURNED))
    silent: list[int] = []
    in_order = True
    for uid in stream.uids:
        member = by_uid[uid]
        mine = set(stream.seqs_of(uid))
        first: list[int] = []
        seen: set[int] = set()
        for seq in member.arrivals:
            if seq not in seen:
                seen.add(seq)
                first.append(seq)
        in_order = in_order and first == sorted(first)
        mc = MemberContinuity(
            accepted=len(mine & accepted),
            delivered=len(seen & mine),
            duplicates=len(member.arrivals) - len(seen),
            told=member.told,
        )
        unconfirmed_delivered += len((seen & mine) - accepted)
        for seq in sorted((mine & accepted) - seen):
            mc.lost += 1
            at = publisher.published_at[seq]
            session = _current(member.sessions, at)
            if session is None or not session.told:
                mc.silent.append(seq)
            elif session.closed is not None and at >= session.closed:
                lost_after += 1
            else:
                lost_before += 1
        for seq in mine & returned:
            session = _current(member.sessions, publisher.published_at[seq])
            returned_untold += session is None or not session.told
        silent.extend(mc.silent)
        per_member[uid] = mc
    return Continuity(
        outcomes={k: counts[k] for k in (ACCEPTED, RETURNED, NACKED, UNCONFIRMED, NOT_SENT)},
        published=len(publisher.outcome),
        accepted=sum(m.accepted for m in per_member.values()),
        delivered=sum(m.delivered for m in per_member.values()),
        lost=sum(m.lost for m in per_member.values()),
        lost_before_told=lost_before,
        lost_after_told=lost_after,
        silent=sorted(silent),
        duplicates=sum(m.duplicates for m in per_member.values()),
        told=sum(m.told for m in per_member.values()),
        reconnects=sum(by_uid[uid].reconnects for uid in stream.uids),
        delivered_unconfirmed=unconfirmed_delivered,
        returned_untold=returned_untold,
        in_order=in_order,
        per_member=per_member,
        times=publisher.published_at,
    )


async def finish(
    members: Sequence[Member], stream: SteadyStream, publisher: ConfirmingPublisher, seconds: float = 30.0
) -> Continuity:
    """
    Stop publishing; wait for every confirm, then (bounded) until every
    accepted event was delivered or its member told, and until every member
    is connected; then one end marker per member, so that anything still on
    its way (a redelivery) has arrived. What became of every event: the
    caller asserts on it (and records it first, whatever it says).
    """
    stream.stop()
    await publisher.settle(seconds)
    by_uid = {m.uid: m for m in members}
    with contextlib.suppress(AssertionError):
        await until(lambda: not continuity(members, stream, publisher).silent, seconds, "accepted events", 0.2)
    with contextlib.suppress(AssertionError):
        await until(lambda: all(m.connected for m in members), seconds, "every member connected")
    markers = stream.publish_each()
    await publisher.settle(seconds)
    for uid, seq in markers.items():
        if publisher.outcome.get(seq) == ACCEPTED:
            with contextlib.suppress(AssertionError):
                await by_uid[uid].wait(partial(set.__contains__, by_uid[uid].unique, seq), 15, "the end marker")
    return continuity(members, stream, publisher)
