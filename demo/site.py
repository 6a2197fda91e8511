"""
The demo's web side: the page's files (and nothing else in this
directory), C{/config.json}, C{POST /dev/token}, a DEVELOPMENT-ONLY
endpoint that signs a token for any uid with the local development key (it
exists only in the demo, never in the daemon), and C{GET
/api/v2/peatio/market/orders}, a stand-in for the exchange's REST API that
the page reloads its orders from after a close 1012 (L{ORDERS_PATH}). Bound
to loopback, it refuses foreign Host headers (DNS rebinding).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from twisted.web import resource, server, static

from demo.devkey import DevKey
from demo.orders import OrderLedger, QueryError
from peatio_ws.auth import AuthError, TokenVerifier

#: Where the page's files are.
PAGE_DIR = Path(__file__).resolve().parent
#: The files the page is made of; nothing else in this directory is served.
PAGE_FILES = {"": "index.html", "index.html": "index.html", "app.js": "app.js", "style.css": "style.css"}
#: What a uid may look like on the dev token endpoint (it ends up in a routing key).
UID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
DEV_NOTE = "DEVELOPMENT ONLY: signed by the demo runner with the local development key in .dev/"
#: Where the page reloads the member's orders from after a close 1012 (SPEC §8): Peatio's path.
ORDERS_PATH = "/api/v2/peatio/market/orders"
#: Content-Security-Policy of the page: its own files and WebSocket connections, nothing else.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _host_allowed(request: Any, allowed: set[str] | None) -> bool:
    """Refuse foreign Host headers (DNS rebinding) when bound to loopback."""
    if allowed is None:
        return True
    host = (request.getHeader("host") or "").strip().lower()
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in allowed


def _security_headers(request: Any) -> None:
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"content-security-policy", CSP.encode("ascii"))


def _json(request: Any, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    return json.dumps(body).encode("utf-8") + b"\n"


class _WallClock:
    """What the token verifier reads the time from."""

    @staticmethod
    def seconds() -> float:
        return time.time()


def build_site(
    key: DevKey,
    page_config: dict[str, Any],
    token_lifetime: int,
    allowed_hosts: set[str] | None,
    ledger: OrderLedger | None = None,
) -> Any:
    """
    The demo's web site: the page's files, C{/config.json}, C{POST
    /dev/token} and C{GET }L{ORDERS_PATH}, answered from C{ledger} (the
    orders the demo's feed published; none without one).
    """
    orders = ledger if ledger is not None else OrderLedger()
    # The demo's tokens only: those the dev token endpoint signs.
    verifier = TokenVerifier(key.private.public_key(), (key.algorithm,), _WallClock())

    class StaticFile(static.File):
        def render(self, request: Any) -> Any:
            if not _host_allowed(request, allowed_hosts):
                return _json(request, 403, {"error": "unexpected Host header"})
            _security_headers(request)
            return super().render(request)

    class ConfigResource(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            if not _host_allowed(request, allowed_hosts):
                return _json(request, 403, {"error": "unexpected Host header"})
            _security_headers(request)
            return _json(request, 200, page_config)

    class DevTokenResource(resource.Resource):
        """POST /dev/token {"uid": "..."}: DEVELOPMENT ONLY, never part of the daemon."""

        isLeaf = True

        def render_POST(self, request: Any) -> bytes:
            _security_headers(request)
            if not _host_allowed(request, allowed_hosts):
                return _json(request, 403, {"error": "unexpected Host header"})
            # A JSON content type makes a cross-site request preflighted (and refused).
            content_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
            if content_type != "application/json":
                return _json(request, 415, {"error": "send Content-Type: application/json"})
            try:
                body = json.loads(request.content.read(4096) or b"null")
                uid = body["uid"]
            except (ValueError, TypeError, KeyError):
                return _json(request, 400, {"error": 'send {"uid": "ID..."}'})
            if not isinstance(uid, str) or not UID_PATTERN.match(uid):
                return _json(request, 400, {"error": "uid: 1 to 64 letters, digits, '_' or '-'"})
            token, expires = key.token(uid, token_lifetime)
            return _json(request, 200, {"token": token, "uid": uid, "exp": expires, "note": DEV_NOTE})

        def render_GET(self, request: Any) -> bytes:
            _security_headers(request)
            request.setHeader(b"allow", b"POST")
            return _json(request, 405, {"error": 'POST {"uid": "ID..."} with Content-Type: application/json'})

    class OrdersResource(resource.Resource):
        """
        GET /api/v2/peatio/market/orders: a STAND-IN for the exchange's REST API, answered
        from what the demo published (L{OrderLedger}), for the page's reload after a close
        1012. Shaped like Peatio's: the member's Barong token in C{Authorization: Bearer
        <JWT>} (here the demo's development tokens); C{market}, C{state}, C{limit} (1 to
        1000, default 100), C{page} and C{order_by} (C{desc}, the default, is newest
        first); a JSON list of orders (the order event's fields and C{updated_at}) with the
        pagination headers C{Total}, C{Page} and C{Per-Page}; errors as
        C{{"errors": ["jwt.decode_and_verify"]}} (401) or C{["market.order.invalid_limit"]} (422).
        """

        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            _security_headers(request)
            if not _host_allowed(request, allowed_hosts):
                return _json(request, 403, {"error": "unexpected Host header"})
            scheme, _, token = (request.getHeader("authorization") or "").partition(" ")
            try:
                if scheme.lower() != "bearer":
                    raise AuthError("missing")
                uid = verifier.verify(token.strip()).uid
            except AuthError:
                request.setHeader(b"www-authenticate", b"Bearer")
                return _json(request, 401, {"errors": ["jwt.decode_and_verify"]})
            try:
                params = {k.decode("utf-8"): v[-1].decode("utf-8") for k, v in request.args.items()}
                found, total, page, limit = orders.query(uid, params)
            except UnicodeDecodeError:
                return _json(request, 422, {"errors": ["market.order.invalid_params"]})
            except QueryError as e:
                return _json(request, 422, {"errors": [e.code]})
            for name, value in ((b"total", total), (b"page", page), (b"per-page", limit)):
                request.setHeader(name, str(value).encode("ascii"))
            return _json(request, 200, found)

    root = resource.Resource()
    for name, filename in PAGE_FILES.items():
        root.putChild(name.encode("ascii"), StaticFile(str(PAGE_DIR / filename)))
    root.putChild(b"config.json", ConfigResource())
    dev = resource.Resource()
    dev.putChild(b"token", DevTokenResource())
    root.putChild(b"dev", dev)
    node = root
    *parents, leaf = ORDERS_PATH.strip("/").split("/")
    for name in parents:
        child = resource.Resource()
        node.putChild(name.encode("ascii"), child)
        node = child
    node.putChild(leaf.encode("ascii"), OrdersResource())

    class QuietSite(server.Site):
        def log(self, request: Any) -> None:
            pass

    return QuietSite(root)
