"""
The door to PyJWT's internals (L{peatio_ws._pyjwt}, written against PyJWT
2.15.1): each name it relies on, and the fast segment decoder giving
exactly PyJWT's answer (bytes, or the same error) for any segment.
"""

from __future__ import annotations

import importlib.metadata
import inspect

import jwt
from hypothesis import given
from hypothesis import strategies as st
from jwt.api_jws import PyJWS
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws import _pyjwt

WRITTEN_AGAINST = "2.15.1"
INSTALLED = importlib.metadata.version("pyjwt")
ORIGINAL = vars(PyJWS).get("_decode_base64url_segment")

_SEGMENT_CHARS = st.sampled_from("ABCDPQXYZabcdxyz0189-_=+/!. \x00é")


def _answer(decode: object, segment: bytes) -> tuple[str, object]:
    try:
        return "ok", decode(segment, "payload")  # type: ignore[operator]
    except jwt.DecodeError as e:
        return "error", str(e)


class PyJWTDoorTests(SynchronousTestCase):
    def test_names(self) -> None:
        """PyJWT(options=), its _jws and _get_sig_options(), PyJWS(options=), jwt.utils.base64url_decode."""
        instance = jwt.PyJWT(options={"verify_signature": True})
        self.assertIsInstance(instance._jws, PyJWS, f"PyJWT {INSTALLED} has no _jws (door: {WRITTEN_AGAINST})")
        self.assertIsInstance(instance._get_sig_options(), dict)
        self.assertIn("options", inspect.signature(PyJWS).parameters)

    def test_segment_decoder_where_it_exists(self) -> None:
        """From 2.13 on: a staticmethod (segment, name), which the door replaces on its own PyJWS only."""
        if ORIGINAL is None:
            self.assertFalse(_pyjwt.fast_segments())
            return
        self.assertIsInstance(ORIGINAL, staticmethod)
        self.assertEqual(list(inspect.signature(ORIGINAL.__func__).parameters), ["segment", "name"])
        self.assertTrue(_pyjwt.fast_segments())
        verifier = _pyjwt.verifying_jwt({"verify_signature": True})
        self.assertIsNot(type(verifier._jws), PyJWS)
        self.assertIs(vars(PyJWS)["_decode_base64url_segment"], ORIGINAL, "PyJWS itself must stay untouched")

    @given(st.lists(_SEGMENT_CHARS, max_size=24).map(lambda chars: "".join(chars).encode("utf-8")))
    def test_same_answer_as_pyjwt(self, segment: bytes) -> None:
        """For any segment: the same bytes, or a DecodeError with the same text."""
        if ORIGINAL is None:
            return
        self.assertEqual(_answer(_pyjwt._decode_segment, segment), _answer(ORIGINAL.__func__, segment))
