"""
The demo's web side: the page's files (and nothing else in this
directory), C{/config.json}, and C{POST /dev/token}, a DEVELOPMENT-ONLY
endpoint that signs a token for any uid with the local development key (it
exists only in the demo, never in the daemon). Bound to loopback, it
refuses foreign Host headers (DNS rebinding).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from twisted.web import resource, server, static

from demo.devkey import DevKey

#: Where the page's files are.
PAGE_DIR = Path(__file__).resolve().parent
#: The files the page is made of; nothing else in this directory is served.
PAGE_FILES = {"": "index.html", "index.html": "index.html", "app.js": "app.js", "style.css": "style.css"}
#: What a uid may look like on the dev token endpoint (it ends up in a routing key).
UID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
DEV_NOTE = "DEVELOPMENT ONLY: signed by the demo runner with the local development key in .dev/"
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


def _json(request: Any, status: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    return json.dumps(body).encode("utf-8") + b"\n"


def build_site(key: DevKey, page_config: dict[str, Any], token_lifetime: int, allowed_hosts: set[str] | None) -> Any:
    """The demo's web site: the page's files, C{/config.json} and C{POST /dev/token}."""
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

    root = resource.Resource()
    for name, filename in PAGE_FILES.items():
        root.putChild(name.encode("ascii"), StaticFile(str(PAGE_DIR / filename)))
    root.putChild(b"config.json", ConfigResource())
    dev = resource.Resource()
    dev.putChild(b"token", DevTokenResource())
    root.putChild(b"dev", dev)

    class QuietSite(server.Site):
        def log(self, request: Any) -> None:
            pass

    return QuietSite(root)
