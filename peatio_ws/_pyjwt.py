# -*- test-case-name: tests.unit.test_pyjwt_door -*-
"""
The one door to PyJWT's internals. Written against PyJWT 2.15.1;
L{tests.unit.test_pyjwt_door} fails, naming what changed, when an upgrade
moves what is relied on here.

Since 2.13 PyJWT checks every character of each base64url segment against
its alphabet in a Python generator (the fix of GHSA-hxm8-2xgr-2p9m): for a
Barong token about 660 characters, a quarter of the CPU a verification
costs, on every connection of a reconnect storm. L{verifying_jwt} builds a
C{PyJWT} whose C{PyJWS} decodes a segment that is plainly valid (base64url
characters, at most two C{=}, a length that can be decoded) with one
regular expression and C{jwt.utils.base64url_decode} (and the canonical
form check PyJWT makes); anything else goes to
PyJWT's own method, which raises exactly as it would. Older PyJWT without
that method has nothing to speed up: its C{PyJWS} is used as is (and
L{peatio_ws.auth} refuses junk characters itself, on every version).

Relied on: C{PyJWT(options=)}, its C{_jws} and C{_get_sig_options()},
C{PyJWS(options=)} and C{PyJWS._decode_base64url_segment(segment, name)}
(a staticmethod), C{jwt.utils.base64url_decode} and C{base64url_encode}.
"""

from __future__ import annotations

import re
from typing import Any

import jwt
from jwt.api_jws import PyJWS
from jwt.utils import base64url_decode, base64url_encode

__all__ = ["fast_segments", "verifying_jwt"]

_PLAIN_SEGMENT = re.compile(rb"([A-Za-z0-9_-]*)(={0,2})")
#: PyJWT's own segment decoder, when this version has one (2.13 and later).
_original = vars(PyJWS).get("_decode_base64url_segment")


def _decode_segment(segment: bytes, name: str) -> bytes:
    """A segment's bytes: at C speed when plainly valid, else PyJWT's own decoder (and its error)."""
    match = _PLAIN_SEGMENT.fullmatch(segment)
    if match is not None:
        body, padding = match.groups()
        # Decodable: not one character past a multiple of four; padding only to a multiple of four.
        if len(body) % 4 != 1 and (not padding or len(segment) % 4 == 0):
            decoded = base64url_decode(body)
            # Canonical only (no stray bits in the last character), as PyJWT requires.
            if base64url_encode(decoded) == body:
                return decoded
    assert _original is not None
    checked: bytes = _original.__func__(segment, name)
    return checked


class _FastSegmentsJWS(PyJWS):
    _decode_base64url_segment = staticmethod(_decode_segment)


def fast_segments() -> bool:
    """Whether this PyJWT has the per-character segment check L{verifying_jwt} speeds up."""
    return isinstance(_original, staticmethod)


def verifying_jwt(options: dict[str, Any]) -> jwt.PyJWT:
    """C{jwt.PyJWT(options=options)}, with the fast segment decoder where this PyJWT has the slow one."""
    instance = jwt.PyJWT(options=options)  # type: ignore[arg-type]
    if fast_segments():
        instance._jws = _FastSegmentsJWS(options=instance._get_sig_options())
    return instance
