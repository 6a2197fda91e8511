"""
What a member uid must be for this daemon to serve it: one rule, used by the
token verifier (L{peatio_ws.auth}, which refuses such tokens) and by the
broker consumer (L{peatio_ws.amqp}, which binds C{private.<uid>.*}).

It lives in its own module, importing nothing of the project, so both can
use it without an import cycle (amqp imports the registry, which imports auth).
"""

from __future__ import annotations

import re

__all__ = ["MAX_UID_BYTES", "valid_uid"]

#: "private." + uid + ".*" must fit an AMQP shortstr (255 bytes).
MAX_UID_BYTES = 255 - len("private.") - len(".*")

#: Characters a uid may not contain: those special in AMQP topic routing keys
#: (".", "*", "#"), C0 and C1 control characters (NUL, CR, LF, ..., DEL) and
#: lone surrogates (a JSON "\ud800" decodes to one; it has no UTF-8 encoding).
_UNUSABLE = re.compile("[.*#\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def valid_uid(uid: str) -> bool:
    """
    Whether C{uid} can be served: non-empty, none of L{_UNUSABLE}'s
    characters, and at most L{MAX_UID_BYTES} bytes of UTF-8 so that its
    binding C{private.<uid>.*} fits a routing key.
    """
    # Every character is at least one byte: a longer string never fits, and
    # is refused before being encoded.
    if not uid or len(uid) > MAX_UID_BYTES or _UNUSABLE.search(uid) is not None:
        return False
    return len(uid.encode("utf-8")) <= MAX_UID_BYTES
