# -*- test-case-name: tests.unit.test_registry -*-
"""
The member-keyed registry: uid -> the live authenticated connections of that
member on this process, and the fan-out of events to them.

It knows nothing of Autobahn or AMQP: connections are anything with
L{Connection}'s methods, and the broker consumer learns of members coming and
going through L{MembershipObserver}.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Protocol, cast

from peatio_ws.auth import Claims
from peatio_ws.framing import event_message, text_frame
from peatio_ws.logs import logger
from peatio_ws.metrics import Metrics

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = ["Connection", "MembershipObserver", "Registry"]

log = logger("peatio_ws.registry")


class Connection(Protocol):
    """What the registry needs of a connection."""

    conn_id: str

    def send_frame(self, frame: bytes) -> bool:
        """Write a ready WebSocket frame; False if the connection could not take it."""

    # A connection may also have send_frames(frames: list[bytes]) -> bool, writing
    # several frames at once, in order; the registry uses it when present.

    def revoke(self) -> None:
        """End the session: its token was revoked."""

    def events_lost(self) -> None:
        """End the session: events for it may have been lost (SPEC §8)."""

    # A connection may also have private_streams: a set of the private event
    # names it wants (the ranger dialect's subscriptions), or None for every
    # event (the legacy dialect, and anything without the attribute).


class MembershipObserver(Protocol):
    """
    Told when a member gets its first, or loses its last, connection. An
    observer may also have C{events_flowing(uid) -> Deferred | None}: a
    Deferred firing once the member's events reach this process (its
    binding is in place), None when they already do (the consumer).
    """

    def member_joined(self, uid: str) -> None: ...

    def member_left(self, uid: str) -> None: ...


class Registry:
    """
    uid -> connections, plus the indexes revocation needs (jti -> connections)
    and the claims each connection authenticated with.
    """

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics if metrics is not None else Metrics()
        self._by_uid: dict[str, set[Connection]] = {}
        self._by_jti: dict[str, set[Connection]] = {}
        self._claims: dict[Connection, Claims] = {}
        #: uid -> how many of its connections choose their private events
        #: (C{private_streams} is a set): only those members' events are filtered.
        self._selective: dict[str, int] = {}
        # Counted when scraped, not set at every login and logout.
        self._metrics.members.set_function(self._by_uid.__len__)
        self._metrics.authenticated_connections.set_function(self._claims.__len__)
        self._observers: list[MembershipObserver] = []
        #: While a batch is open (L{begin_batch}): frames held per connection (for
        #: few recipients, until the first event for many); then the frames held
        #: in order, each with the index of its recipients; the distinct
        #: recipients (a snapshot each); and where to find a collection seen before.
        self._batch: (
            tuple[
                dict[Connection, list[bytes]],
                list[tuple[int, bytes]],
                list[tuple[Connection, ...]],
                dict[int, int],
            ]
            | None
        ) = None

    def add_observer(self, observer: MembershipObserver) -> None:
        """Tell C{observer} of members joining and leaving from now on."""
        self._observers.append(observer)

    # -- membership ------------------------------------------------------

    def authenticate(self, conn: Connection, claims: Claims, wait: bool = True) -> Deferred[None] | None:
        """
        Record that C{conn} is authenticated as C{claims.uid}: a first
        authentication adds it, the same uid refreshes its claims (nothing is
        subscribed twice), another uid moves it. Returns a Deferred firing
        once the member's events reach this process, or None when they do
        already (or no observer can say): a dialect tells the client it is
        authenticated only then, so nothing published after that is missed.
        Not C{wait}: None, nothing asked (a connection carried across a
        restart in place, whose member's binding was handed over).
        """
        old = self._claims.get(conn)
        if old is not None and old.uid != claims.uid:
            self.deauthenticate(conn)
            old = None
        if old is not None:
            self._unindex_jti(conn, old.jti)
        self._claims[conn] = claims
        self._by_jti.setdefault(claims.jti, set()).add(conn)
        if old is None:
            if getattr(conn, "private_streams", None) is not None:
                self._selective[claims.uid] = self._selective.get(claims.uid, 0) + 1
            members = self._by_uid.get(claims.uid)
            if members is None:
                self._by_uid[claims.uid] = {conn}
                for observer in self._observers:
                    observer.member_joined(claims.uid)
            else:
                members.add(conn)
        if not wait:
            return None
        for observer in self._observers:
            flowing = getattr(observer, "events_flowing", None)
            waiting = flowing(claims.uid) if flowing is not None else None
            if waiting is not None:
                return cast("Deferred[None]", waiting)
        return None

    def deauthenticate(self, conn: Connection) -> None:
        """Forget C{conn}; safe to call for a connection never authenticated."""
        claims = self._claims.pop(conn, None)
        if claims is None:
            return
        self._unindex_jti(conn, claims.jti)
        if getattr(conn, "private_streams", None) is not None:
            left = self._selective.get(claims.uid, 0) - 1
            if left > 0:
                self._selective[claims.uid] = left
            else:
                self._selective.pop(claims.uid, None)
        members = self._by_uid.get(claims.uid)
        if members is not None:
            members.discard(conn)
            if not members:
                del self._by_uid[claims.uid]
                for observer in self._observers:
                    observer.member_left(claims.uid)

    def _unindex_jti(self, conn: Connection, jti: str) -> None:
        holders = self._by_jti.get(jti)
        if holders is not None:
            holders.discard(conn)
            if not holders:
                del self._by_jti[jti]

    # -- queries -----------------------------------------------------------

    def claims(self, conn: Connection) -> Claims | None:
        """The claims C{conn} authenticated with, or None."""
        return self._claims.get(conn)

    def connections(self, uid: str) -> frozenset[Connection]:
        """The authenticated connections of member C{uid} (a copy)."""
        return frozenset(self._by_uid.get(uid, ()))

    def has_member(self, uid: str) -> bool:
        """Whether C{uid} has an authenticated connection here (no copy made)."""
        return uid in self._by_uid

    def members(self) -> list[str]:
        """Every member with at least one authenticated connection."""
        return list(self._by_uid)

    def jtis(self) -> list[str]:
        """Every token id in use by a live session."""
        return list(self._by_jti)

    def __len__(self) -> int:
        """The number of authenticated connections."""
        return len(self._claims)

    # -- events and revocation ------------------------------------------------

    def deliver(self, uid: str, event: str, payload: bytes) -> int:
        """
        Send C{{"<event>": payload}} to every authenticated connection of
        C{uid} that wants it (a ranger connection only if subscribed to
        C{event}); the frame is built once. Returns how many connections
        took it (in a batch: how many it is held for).
        """
        members: Collection[Connection] | None = self._by_uid.get(uid)
        if not members:
            return 0
        if uid in self._selective:
            members = [c for c in members if (wanted := getattr(c, "private_streams", None)) is None or event in wanted]
            if not members:
                return 0
        return self.fan_out(members, text_frame(event_message(event, payload)))

    def fan_out(self, conns: Collection[Connection], frame: bytes) -> int:
        """
        Write C{frame} to each of C{conns} (held for the batch's end while
        one is open). Returns how many took it (in a batch: how many it is
        held for). The public streams' fan-out comes here too, so a read's
        private and public frames reach each connection in one write.
        """
        batch = self._batch
        if batch is not None:
            early, held, recipients, seen = batch
            if not recipients and len(conns) < 16:
                # Few recipients (a member's connections) and nothing held for many yet: per connection.
                for conn in conns:
                    frames = early.get(conn)
                    if frames is None:
                        early[conn] = [frame]
                    else:
                        frames.append(frame)
                return len(conns)
            # From the first event for many (a market's subscribers) on: held once for
            # all its recipients, kept as a snapshot once per batch, not once per connection.
            snapshot = tuple(conns)
            if not snapshot:
                return 0
            index = seen.get(id(conns))
            if index is None or recipients[index] != snapshot:
                index = len(recipients)
                recipients.append(snapshot)
                seen[id(conns)] = index
            held.append((index, frame))
            return len(snapshot)
        sent = 0
        # A copy: a write may close a slow connection, which leaves the set.
        for conn in tuple(conns):
            try:
                if conn.send_frame(frame):
                    sent += 1
            except Exception:
                log.failure("delivering a frame to {conn_id}", conn_id=conn.conn_id)
        return sent

    def begin_batch(self) -> None:
        """
        Hold the frames of the events delivered from now on until
        L{end_batch}, which gives each connection all of its frames in one
        write. The broker consumer brackets each read from RabbitMQ (often
        hundreds of events) this way: one write, and one system call, per
        connection and read instead of one per event.
        """
        if self._batch is None:
            self._batch = ({}, [], [], {})

    def end_batch(self) -> None:
        """
        Write what the batch holds, each connection's frames in order, in
        one write; never raises. The connections that were recipients of the
        same events (a market's subscribers) share one list of frames, made
        once.
        """
        batch, self._batch = self._batch, None
        if batch is None:
            return
        early, held, recipients, _ = batch
        if not held:
            for conn, frames in early.items():
                try:
                    send_frames = getattr(conn, "send_frames", None)
                    if send_frames is not None:
                        send_frames(frames)
                    else:
                        for frame in frames:
                            conn.send_frame(frame)
                except Exception:
                    log.failure("delivering {count} events to {conn_id}", count=len(frames), conn_id=conn.conn_id)
            return
        frames_of: list[list[bytes]] = [[] for _ in recipients]
        for index, frame in held:
            frames_of[index].append(frame)
        if len(recipients) == 1 and not early:
            # One tuple for all: a connection may join it once for everyone (StreamProtocol.send_frames).
            everyone = tuple(frames_of[0])
            for conn in recipients[0]:
                self._write(conn, everyone)
            return
        # Which recipients each connection is among: most are among one only.
        first: dict[Connection, int] = {}
        more: dict[Connection, list[int]] = {}
        for index, conns in enumerate(recipients):
            for conn in conns:
                was = first.setdefault(conn, index)
                if was != index:
                    also = more.get(conn)
                    if also is None:
                        more[conn] = [was, index]
                    elif also[-1] != index:
                        also.append(index)
        numbered: list[list[tuple[int, bytes]]] = []
        if more:
            numbered = [[] for _ in recipients]
            for position, (index, frame) in enumerate(held):
                numbered[index].append((position, frame))
        shared = [tuple(frames) for frames in frames_of]
        merged: dict[tuple[int, ...], tuple[bytes, ...]] = {}
        for conn, index in first.items():
            indexes = more.get(conn) if more else None
            if indexes is None:
                theirs = shared[index]
            else:
                # Among several: their frames merged back into the batch's order, once per combination.
                key = tuple(indexes)
                found = merged.get(key)
                if found is None:
                    entries = [entry for i in indexes for entry in numbered[i]]
                    entries.sort()
                    found = merged[key] = tuple([frame for _, frame in entries])
                theirs = found
            if early:
                before = early.pop(conn, None)
                if before is not None:
                    theirs = (*before, *theirs)
            self._write(conn, theirs)
        for conn, frames in early.items():
            self._write(conn, frames)

    @staticmethod
    def _write(conn: Connection, frames: list[bytes] | tuple[bytes, ...]) -> None:
        """Write C{frames} to C{conn}, in one write where it can; never raises."""
        try:
            send_frames = getattr(conn, "send_frames", None)
            if send_frames is not None:
                send_frames(frames)
            else:
                for frame in frames:
                    conn.send_frame(frame)
        except Exception:
            log.failure("delivering {count} events to {conn_id}", count=len(frames), conn_id=conn.conn_id)

    def revoke(self, uid: str | None = None, jti: str | None = None) -> int:
        """End the live sessions of member C{uid} or of token C{jti}; returns how many."""
        targets: Iterable[Connection] = ()
        if uid is not None:
            targets = tuple(self._by_uid.get(uid, ()))
        elif jti is not None:
            targets = tuple(self._by_jti.get(jti, ()))
        count = 0
        for conn in targets:
            conn.revoke()
            self.deauthenticate(conn)
            count += 1
        return count

    def events_lost(self) -> int:
        """
        Events may have been lost for every member here (the process queue
        was gone): end every authenticated session (1012); returns how many.
        """
        count = 0
        for conn in tuple(self._claims):
            conn.events_lost()
            self.deauthenticate(conn)
            count += 1
        return count
