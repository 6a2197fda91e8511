"""
The floor of a connection's life: a bare Twisted server that does only what
one life needs on the wire, with no WebSocket library, no logging, no
metrics, no Redis and no registry. C{python -m bench.syscalls --server
floor} (or C{floor-jwt}) runs it in place of the daemon, so the same clients
and the same meters say what Twisted and the kernel alone cost per life on
this machine, and what the RS256 check adds.

Per connection: read the upgrade request to its end, answer the 101 (the
accept key computed) and the challenge in one write; read the client's
masked token frame and, with C{--jwt}, check its RS256 signature against
C{JWT_PUBLIC_KEY} with C{cryptography} (the daemon's default algorithm; no
claims checked) and read its claims; answer C{Authenticated.};
on the client's close frame, answer it and close TCP, as the daemon does.
Anything else ends the connection: this is a measuring stick, not a server.

C{python -m bench.lifefloor [--jwt]}: listens on a free port of 127.0.0.1 and
prints it on its first line; runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import protocol

from peatio_ws.framing import text_frame
from peatio_ws.listen import BACKLOG

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_KEY_HEADER = b"\r\nsec-websocket-key:"
_CHALLENGE = text_frame(b'{"challenge":"0123456789abcdef0123456789abcdef"}')
_AUTHENTICATED = text_frame(b'{"success":{"message":"Authenticated."}}')
_CLOSE = 0x8


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


class Life(protocol.Protocol):
    """One connection's life, the least way."""

    # A TCP connection (or a test's StringTransport).
    transport: Any
    #: The token check (L{rs256_check}), or None to take any token.
    verify: Callable[[str], None] | None = None

    def __init__(self) -> None:
        self.buf = b""
        self.open = False

    def connectionMade(self) -> None:
        # As the daemon's listener does (an in-memory test transport has no socket option).
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)

    def dataReceived(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            head = buf[:end].lower()
            at = head.find(_KEY_HEADER)
            if at < 0:
                self.transport.loseConnection()
                return
            eol = head.find(b"\r\n", at + 2)
            # The key is base64 (case matters): cut it from the request, not its lower-cased copy.
            key = buf[at + len(_KEY_HEADER) : eol if eol >= 0 else end].strip()
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())  # noqa: S324 (RFC 6455's)
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + _CHALLENGE
            )
            self.open = True
            buf = buf[end + 4 :]
        while len(buf) >= 6:
            n = buf[1] & 0x7F
            start = 2
            if n == 126:
                n, start = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                n, start = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < start + 4 + n:
                break
            payload = _unmask(buf[start + 4 : start + 4 + n], buf[start : start + 4])
            opcode = buf[0] & 0x0F
            buf = buf[start + 4 + n :]
            if opcode == _CLOSE:
                self.transport.write(bytes((0x88, len(payload[:2]))) + payload[:2])
                self.transport.loseConnection()
                return
            try:
                token = json.loads(payload)["jwt"][len("Bearer ") :]
                if self.verify is not None:
                    self.verify(token)
            except Exception as e:  # a measuring stick: say it and end the connection
                print(f"lifefloor: {e!r}", file=sys.stderr)
                self.transport.abortConnection()
                return
            self.transport.write(_AUTHENTICATED)
        self.buf = buf


def rs256_check(public_key_pem: bytes) -> Callable[[str], None]:
    """
    The RS256 signature check of a token against C{public_key_pem} (raises
    when it fails), and the reading of its claims: what no daemon can skip.
    PyJWT's C{jwt.decode} around the same check costs ~100 µs here, against
    ~45 µs for the daemon's L{peatio_ws.auth.TokenVerifier.verify}.
    """
    from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key: Any = load_pem_public_key(public_key_pem)  # once, as the daemon does

    def check(token: str) -> None:
        signed, _, signature = token.rpartition(".")
        key.verify(_b64url(signature), signed.encode(), PKCS1v15(), SHA256())
        json.loads(_b64url(signed.partition(".")[2]))

    return check


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jwt", action="store_true", help="verify each token (RS256, JWT_PUBLIC_KEY)")
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    if args.jwt:
        Life.verify = staticmethod(rs256_check(base64.urlsafe_b64decode(os.environ["JWT_PUBLIC_KEY"])))
    factory = protocol.ServerFactory.forProtocol(Life)
    tcp: Any = reactor
    port = tcp.listenTCP(0, factory, backlog=BACKLOG, interface="127.0.0.1")
    # Said once the reactor runs, with every descriptor of its own open: the bench counts them then.
    tcp.callWhenRunning(lambda: print(port.getHost().port, flush=True))
    tcp.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
