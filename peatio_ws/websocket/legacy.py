# -*- test-case-name: tests.unit.test_protocol -*-
"""
The legacy dialect (SPEC §3: Peatio 1.x's websocket_api): a challenge on
open, then C{{"jwt": "Bearer …"}} answered with exactly the documented
replies; re-authentication; C{ping}/C{pong}.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any, cast

from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from peatio_ws.auth import AuthError, Claims
from peatio_ws.framing import text_frame
from peatio_ws.websocket.connection import StreamProtocol
from peatio_ws.websocket.limits import parse_client_json
from peatio_ws.websocket.replies import CloseCode, Reply
from peatio_ws.websocket.tokens import check_token

__all__ = ["LEGACY", "LegacyDialect", "new_challenge"]

_STATE_OPEN = WebSocketProtocol.STATE_OPEN


def new_challenge() -> str:
    """40 random bytes, URL-safe base64 without padding: 54 characters."""
    return base64.urlsafe_b64encode(os.urandom(40)).rstrip(b"=").decode("ascii")


class LegacyDialect:
    """Stateless: everything a connection holds is on the connection."""

    name = "legacy"

    def upgrading(self, conn: StreamProtocol, request: ConnectionRequest) -> None:
        """Any upgrade request is a legacy one: the token comes later, in a message."""
        return None

    def closed(self, conn: StreamProtocol) -> None:
        """Nothing to let go of: the connection forgets its own authentication."""
    def opened(self, conn: StreamProtocol) -> None:
        conn.challenge = new_challenge()
        conn.write(text_frame(json.dumps({"challenge": conn.challenge}).encode("ascii")))
        conn.start_auth_timer()

    def carried_on(
        self, conn: StreamProtocol, claims: Claims | None, streams: tuple[str, ...], primed: tuple[str, ...]
    ) -> None:
        """The member again, or the auth timeout again for a connection that had not authenticated."""
        if claims is None:
            conn.start_auth_timer()
        else:
            conn.authenticated(claims, wait=False)

    def received(self, conn: StreamProtocol, payload: bytes, is_binary: bool) -> Deferred[Any] | None:
        """Handle one client message; a Deferred while a revocation check runs."""
        if is_binary:
            conn.reply(Reply.HANDLING_ERROR)
            return None
        if payload == b"ping":
            conn.reply(b"pong")
            return None
        try:
            message = parse_client_json(payload)
        except ValueError:
            conn.reply(Reply.HANDLING_ERROR)
            return None
        if not isinstance(message, dict) or "jwt" not in message:
            conn.reply(Reply.HANDLING_ERROR)
            return None
        value = message["jwt"]
        if not isinstance(value, str):
            conn.reply(Reply.TOKEN_TYPE)
            return None
        kind, _, token = value.partition(" ")
        if kind != "Bearer":
            conn.reply(Reply.TOKEN_TYPE)
            return None
        return self._authenticate(conn, token.strip())

    @staticmethod
    def _over_attempt_limit(conn: StreamProtocol) -> bool:
        limit = conn.factory.settings.websocket_auth_attempts_per_minute
        if limit <= 0:
            return False
        now = conn.factory.clock.seconds()
        attempts = conn.attempts
        while attempts and attempts[0] <= now - 60:
            attempts.pop(0)
        attempts.append(now)
        return len(attempts) > limit

    def _authenticate(self, conn: StreamProtocol, token: str) -> Deferred[Any] | None:
        factory = conn.factory
        if self._over_attempt_limit(conn):
            factory.metrics.auth_by("failure", "rate_limited").inc()
            conn.close_with(CloseCode.TOO_MANY_ATTEMPTS, "Too many authentication attempts", Reply.TOO_MANY_ATTEMPTS)
            return None
        try:
            result = check_token(factory.verifier, factory.revocation, token, conn.conn_id)
        except AuthError as e:
            self._failed(conn, e.reason)
            return None
        if isinstance(result, Claims):
            return self._succeeded(conn, result)

        def failed(failure: Failure) -> None:
            failure.trap(AuthError)
            self._failed(conn, cast(AuthError, failure.value).reason)

        return result.addCallbacks(lambda claims: self._succeeded(conn, claims), failed)

    @staticmethod
    def _failed(conn: StreamProtocol, reason: str) -> None:
        conn.factory.metrics.auth_by("failure", reason).inc()
        if conn.state != _STATE_OPEN:
            return
        previous = conn.claims
        # A failed re-authentication drops the old one: no more events.
        conn.unauthenticated()
        # The rule that failed (AuthError.reason), never the token.
        if previous is None:
            conn.log_line("authentication failed: {reason}", reason=reason)
        else:
            # The earlier authentication is dropped: no more events for it.
            conn.log_line(
                "authentication failed: {reason} (was {uid})", reason=reason, uid=previous.uid, uid_in_head=False
            )
        conn.reply(Reply.AUTH_FAILED)

    def _succeeded(self, conn: StreamProtocol, claims: Claims) -> Deferred[None] | None:
        """
        Authenticated: the reply goes once the member's events reach this
        process (SPEC §3.2: "the connection now receives that member's
        events"); a Deferred until then.
        """
        if conn.state != _STATE_OPEN:
            return None
        previous = conn.claims
        flowing = conn.authenticated(claims)
        if flowing is None:
            self._say_authenticated(conn, claims, previous)
            return None
        return flowing.addCallback(lambda _: self._say_authenticated(conn, claims, previous))

    @staticmethod
    def _say_authenticated(conn: StreamProtocol, claims: Claims, previous: Claims | None) -> None:
        if conn.state != _STATE_OPEN or conn.claims is not claims:
            return
        conn.factory.metrics.auth_by("success", "ok").inc()
        if previous is None:
            conn.log_line("authenticated as {uid}", uid_in_head=False)
        elif previous.uid != claims.uid:
            conn.log_line("re-authenticated as {uid} (was {old})", old=previous.uid, uid_in_head=False)
        else:
            # The same member with a fresh token: one line, nothing subscribed again.
            conn.log_line("refreshed its token")
        conn.reply(Reply.AUTHENTICATED)


#: The one legacy dialect every legacy connection shares.
LEGACY = LegacyDialect()
