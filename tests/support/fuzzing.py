"""
Hypothesis settings shared by the property-based tests: reproducible under
the test command, exploratory under C{make chaos}.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

__all__ = ["FULL", "examples"]

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
