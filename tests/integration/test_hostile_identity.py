"""
Hostile identities against the real daemon (``twistd -n peatio-ws``), with
the real RabbitMQ and Redis: uids that cannot be served are refused with the
usual reply and counted as C{bad_uid}, and no uid can forge, break or lose a
line of the daemon's log, in the text format or in JSON lines.
"""

from __future__ import annotations

import json
from typing import Any

from websockets.sync.client import ClientConnection

from peatio_ws.testing import make_token
from tests.support.cases import DaemonTestCase
from tests.support.oracle import AUTH_FAILED, AUTHENTICATED

FORGED = "INFO forged"

#: uids the verifier must refuse with reason bad_uid.
UNUSABLE = ["a.b", "a*", "#", "x" * 250, f"bob\n{FORGED}", "ID\x00NUL", "ID\r\nX", "ID\ud800"]

#: A uid that is usable (no control character, bindable) yet not printable:
#: U+2028 LINE SEPARATOR ends a line for many log viewers and for
#: str.splitlines. It authenticates, so it is logged, and must be escaped.
ODD_BUT_VALID = f"IDLS\u2028{FORGED}"


class HostileIdentityTests(DaemonTestCase):
    def send_token(self, ws: ClientConnection, uid: str) -> Any:
        ws.send(json.dumps({"jwt": "Bearer " + make_token(uid=uid)}))
        return self.recv(ws)

    def test_unusable_uids_refused(self) -> None:
        """Each unusable uid gets Authentication failed., the connection stays open, /metrics counts bad_uid."""
        self.start_daemon()
        ws = self.client()
        self.assertIn("challenge", self.recv(ws))
        for uid in UNUSABLE:
            self.assertEqual(self.send_token(ws, uid), AUTH_FAILED, repr(uid))
        # Still open, and still usable: a good token authenticates.
        self.assertEqual(self.send_token(ws, "IDHOSTILE001"), AUTHENTICATED)
        self.assertIn(
            f'peatio_ws_authentications_total{{reason="bad_uid",result="failure"}} {float(len(UNUSABLE))}',
            self.daemon.metrics(),
        )

    def hostile_session(self) -> None:
        """Refused hostile uids, then the odd-but-valid one, then a failed re-authentication (logs "was <uid>")."""
        ws = self.client()
        self.assertIn("challenge", self.recv(ws))
        for uid in UNUSABLE:
            self.assertEqual(self.send_token(ws, uid), AUTH_FAILED, repr(uid))
        self.assertEqual(self.send_token(ws, ODD_BUT_VALID), AUTHENTICATED)
        self.assertEqual(self.send_token(ws, "a.b"), AUTH_FAILED)
        # The daemon logs before it replies; its info lines reach the log in
        # batches: the last one is the failed re-authentication's "(was <uid>)".
        self.daemon.wait_log("(was ")

    def assert_clean(self, log: str) -> list[str]:
        """No raw NUL, nothing undecodable, no line starting with the forged text; the lines."""
        self.assertNotIn("\x00", log)
        self.assertNotIn("\ufffd", log)  # log_text() decodes with "replace"
        lines = log.splitlines()  # splits at U+2028 and every other line break too
        self.assertEqual([line for line in lines if line.lstrip().startswith(FORGED)], [])
        return lines

    def test_text_log(self) -> None:
        """Text log: the odd uid is written escaped on one line, twice (authenticated, and "was")."""
        self.start_daemon()
        self.hostile_session()
        lines = self.assert_clean(self.daemon.log_text())
        escaped = f"IDLS\\u2028{FORGED}"
        self.assertEqual(len([line for line in lines if f"authenticated as {escaped}" in line]), 1, lines)
        self.assertEqual(len([line for line in lines if f"(was {escaped})" in line]), 1, lines)

    def test_json_log(self) -> None:
        """LOG_FORMAT=json: every line parses, and the odd uid is one escaped value."""
        self.start_daemon(LOG_FORMAT="json")
        self.hostile_session()
        lines = self.assert_clean(self.daemon.log_text())
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        uids = [r["uid"] for r in records if "authenticated as" in r.get("message", "") and "uid" in r]
        self.assertEqual(uids, [f"IDLS\\u2028{FORGED}"])
