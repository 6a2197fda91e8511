# -*- test-case-name: tests.unit.test_remembered -*-
"""
The tokens a process verified, left to the next process at a clean stop
(JWT_HANDOVER_FILE).

After a restart every client comes back at once with the token it used
before, and each login checked the token's signature again: a tenth or
more of a storm login's CPU (RS256 and PyJWT). With this file
the stopping process leaves what its verifier remembers
(L{peatio_ws.auth.TokenVerifier.remembered}: SHA-256 digests of tokens
that verified, each with its member's uid, session id and expiry) and the
digest of the JWT settings it verified them under; the next process, if
its settings are the same, remembers them too, so those logins cost a hash.
Revocation is asked of Redis at every login all the same.

Whoever can write this file could make the daemon accept a token it never
verified, as whoever can write its configuration could give it another
key: it is written readable and writable by the daemon's user only, in the
directory the systemd units give that user alone (C{StateDirectory=}).
The file holds no token, only digests, uids, session ids and expiries.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeGuard

from peatio_ws import statefile
from peatio_ws.auth import Claims
from peatio_ws.uids import valid_uid

__all__ = ["FORMAT", "MAX_BYTES", "Remembered", "RememberedError", "leave", "take"]

#: The file's C{format}: a later layout gets a new number, and an unknown one is not taken.
FORMAT = 1
#: Bytes read at most: the verifier's 32,768 tokens take about 5 MiB.
MAX_BYTES = 64 * 1024 * 1024


class RememberedError(Exception):
    """The file could not be read, parsed or written: C{str()} says why, in one line."""


@dataclass(frozen=True)
class Remembered:
    """Tokens left by a stopping process, the least recently presented first."""

    #: L{peatio_ws.auth.TokenVerifier.settings_digest} of the process that left them.
    settings: str
    tokens: list[tuple[bytes, Claims]]
    #: When they were left (seconds since the epoch).
    left_at: float

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": FORMAT,
                "settings": self.settings,
                "left_at": self.left_at,
                "tokens": [[digest.hex(), c.uid, c.jti, c.expires_at] for digest, c in self.tokens],
            },
            separators=(",", ":"),
        ).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Remembered:
        """@raise RememberedError: not JSON, another format, or a field or token of the wrong shape."""
        try:
            raw = statefile.json_object(data, FORMAT)
        except statefile.StateFileError as e:
            raise RememberedError(str(e)) from None
        settings = raw.get("settings")
        left_at = raw.get("left_at")
        entries = raw.get("tokens")
        if not isinstance(settings, str):
            raise RememberedError("settings: missing or not a string")
        if not _number(left_at):
            raise RememberedError("left_at: missing or not a number")
        if not isinstance(entries, list):
            raise RememberedError("tokens: missing or not a list")
        tokens = [_token(entry, n) for n, entry in enumerate(entries)]
        return cls(settings=settings, tokens=tokens, left_at=float(left_at))


def _number(value: Any) -> TypeGuard[int | float]:
    """A finite JSON number (not a boolean)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _token(entry: Any, n: int) -> tuple[bytes, Claims]:
    """One C{[digest, uid, jti, expires_at]}, checked as the verifier would have made it."""
    if isinstance(entry, list) and len(entry) == 4:
        digest, uid, jti, expires_at = entry
        if (
            isinstance(digest, str)
            and len(digest) == 64
            and isinstance(uid, str)
            and valid_uid(uid)
            and isinstance(jti, str)
            and jti.strip()
            and (expires_at is None or _number(expires_at))
        ):
            try:
                raw = bytes.fromhex(digest)
            except ValueError:
                pass
            else:
                return raw, Claims(uid, jti, None if expires_at is None else float(expires_at))
    raise RememberedError(f"tokens[{n}]: not [SHA-256 hex, uid, jti, expiry or null]")


def take(path: str) -> Remembered | None:
    """
    The tokens left at C{path}, removing the file: None when there is none.

    @raise RememberedError: the file is there but unreadable or malformed (it
        is removed all the same when it can be, so it is not met again).
    """
    try:
        data = statefile.take(path, MAX_BYTES)
    except statefile.StateFileError as e:
        raise RememberedError(str(e)) from None
    return None if data is None else Remembered.from_json(data)


def leave(path: str, settings: str, tokens: Iterable[tuple[bytes, Claims]], now: float) -> int:
    """
    Write the tokens to C{path}, whole or not at all, readable by this user
    only (L{peatio_ws.statefile.leave}); how many.

    @raise RememberedError: it could not be written.
    """
    remembered = Remembered(settings=settings, tokens=list(tokens), left_at=now)
    try:
        statefile.leave(path, remembered.to_json())
    except statefile.StateFileError as e:
        raise RememberedError(str(e)) from None
    return len(remembered.tokens)
