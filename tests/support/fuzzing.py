"""
Hypothesis settings shared by the property-based tests: reproducible under
the test command, exploratory under C{make chaos}.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

__all__ = ["FULL", "UPGRADE_HEADERS", "examples", "upgrade_headers"]

#: Set by C{make chaos} (PEATIO_WS_CHAOS=full): ten times the examples, freshly random.
FULL = os.environ.get("PEATIO_WS_CHAOS", "").strip().lower() == "full"


def examples(quick: int) -> Any:
    """
    Hypothesis settings: C{quick} examples, the same ones every run, so the
    test command's verdict is reproducible; under PEATIO_WS_CHAOS=full (make
    chaos) ten times as many, freshly random, to explore.
    """
    return settings(
        max_examples=quick * 10 if FULL else quick,
        derandomize=not FULL,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


#: Headers an upgrade request's answer depends on, and two it does not.
UPGRADE_HEADERS = [
    "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol", "Origin", "Cookie", "X-Any",
    "Sec-WebSocket-Version", "Connection", "Upgrade", "Host", "Sec-WebSocket-Key",
]


def upgrade_headers(codepoints: tuple[int, int], value_size: int, count: int) -> Any:
    """Up to C{count} (name, value) pairs of L{UPGRADE_HEADERS}, values of characters in C{codepoints}."""
    first, last = codepoints
    value = st.text(alphabet=st.characters(min_codepoint=first, max_codepoint=last), max_size=value_size)
    return st.lists(st.tuples(st.sampled_from(UPGRADE_HEADERS), value), max_size=count)
