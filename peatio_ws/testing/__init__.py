"""
Test kit for peatio-ws and for code built on it: key pairs, Barong-shaped
tokens and their claims, ready-made L{Settings}, fakes of what the registry
talks to, the WebSocket client codec and an in-memory WebSocket client.

 - L{peatio_ws.testing.keys}: RSA/EC/Ed25519 keys and their public halves;
 - L{peatio_ws.testing.tokens}: L{barong_claims}, L{make_token}, L{craft_token};
 - L{peatio_ws.testing.settings}: L{settings_for_tests};
 - L{peatio_ws.testing.fakes}: L{FakeConnection}, L{MembershipRecorder};
 - L{peatio_ws.testing.frames}: the WebSocket client codec every test client uses;
 - L{peatio_ws.testing.wsclient}: L{Client}, a WebSocket client on a StringTransport.

Everything is importable from C{peatio_ws.testing} itself.
"""

from peatio_ws.testing.fakes import FakeConnection, MembershipRecorder
from peatio_ws.testing.frames import Frame, client_frame, parse_frames, upgrade_request
from peatio_ws.testing.keys import (
    PrivateKey,
    algorithm_for,
    b64url,
    generate_ec_key,
    generate_ed25519_key,
    generate_rsa_key,
    private_key_pem,
    public_key_b64,
    public_key_pem,
    rsa_key,
)
from peatio_ws.testing.settings import settings_for_tests
from peatio_ws.testing.tokens import OMIT, barong_claims, craft_token, make_token
from peatio_ws.testing.wsclient import Client

__all__ = [
    "OMIT",
    "Client",
    "FakeConnection",
    "Frame",
    "MembershipRecorder",
    "PrivateKey",
    "algorithm_for",
    "b64url",
    "barong_claims",
    "client_frame",
    "craft_token",
    "generate_ec_key",
    "generate_ed25519_key",
    "generate_rsa_key",
    "make_token",
    "parse_frames",
    "private_key_pem",
    "public_key_b64",
    "public_key_pem",
    "rsa_key",
    "settings_for_tests",
    "upgrade_request",
]
