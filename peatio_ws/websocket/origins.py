# -*- test-case-name: tests.unit.test_protocol -*-
"""Browser origins: WEBSOCKET_ALLOWED_ORIGINS, compared the way browsers send them."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["OriginPolicy", "normalize_origin"]


def normalize_origin(origin: str) -> str | None:
    """
    C{scheme://host[:port]} in lower case with the scheme's default port
    dropped, or None for an origin that is not a URL (C{null}, junk).
    """
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    default = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(scheme)
    netloc = parts.hostname.lower() if port in (None, default) else f"{parts.hostname.lower()}:{port}"
    return f"{scheme}://{netloc}"


class OriginPolicy:
    """The configured origins; none configured means any origin is allowed."""

    def __init__(self, configured: Iterable[str]) -> None:
        patterns = (x.lower() if "*" in x else normalize_origin(x) for x in configured)
        self.patterns = tuple(p for p in patterns if p)

    def allows(self, origin: str | None) -> bool:
        """Whether a request with this Origin header (None: no header) may connect."""
        if not self.patterns or origin is None:
            return True
        normalized = normalize_origin(origin)
        if normalized is None:
            return False
        return any(fnmatch.fnmatchcase(normalized, pattern) for pattern in self.patterns)
