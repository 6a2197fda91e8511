# -*- test-case-name: tests.unit.test_collector -*-
"""
The garbage collector's policy for a process that holds thousands of
connections (GC_POLICY).

CPython's default (700, 10, 10) makes a full collection whenever the
long-lived objects have grown by a quarter: while 15,000 clients connect at
once that is ~16 full collections over every connection's objects, 1.9 s of
the reactor (up to 240 ms each, ~13 ms per 1,000 connections), during which
nothing is read or written. C{tuned} (the default) takes the start-up
objects (modules, the service tree, ~70,000) out of every collection for
good with C{gc.freeze()}, and collects the young generations less often, so
that a burst of connections costs two full collections, not sixteen
(docs/benchmarks.md, "The garbage collector"). The cost: reference cycles
that closed connections leave wait longer to be freed. C{python} keeps
CPython's default.
"""

from __future__ import annotations

import gc
from typing import Any

__all__ = ["POLICIES", "THRESHOLDS", "apply"]

#: GC_POLICY's values.
POLICIES = ("tuned", "python")

#: gc.set_threshold under C{tuned}: a young collection every 10,000 net
#: allocations, the middle one every 20 of those, a full one every 100 middle
#: ones (and then only once the long-lived objects have grown by a quarter).
THRESHOLDS = (10_000, 20, 100)


def apply(policy: str, collector: Any = gc) -> int | None:
    """
    Put C{policy} in force for this process; call once start-up is done,
    before the first connection. Returns how many objects were frozen
    (C{tuned}), or None (C{python}: nothing changed). C{collector} is the
    C{gc} module (tests pass a fake).
    """
    if policy == "python":
        return None
    if policy != "tuned":
        raise ValueError(f"unknown GC_POLICY {policy!r}")
    collector.collect()
    collector.freeze()
    collector.set_threshold(*THRESHOLDS)
    return int(collector.get_freeze_count())
