"""
The fault-injection suites' mode and figures.

``make test`` runs the quick version of every fault test; ``make chaos``
sets PEATIO_WS_CHAOS=full for the long one. Every test records its figures
with L{record}; ``python -m tests.support.figures FILE`` prints a run's
figures (what ``make chaos`` shows at the end).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["FIGURES_FILE", "FULL", "record", "scaled", "summary"]

#: "full" runs the long version of every fault test (``make chaos``); the
#: default is the quick one ``make test`` runs, which still injects every kind.
FULL = os.environ.get("PEATIO_WS_CHAOS", "").strip().lower() == "full"

#: Where the figures go, in the trial temp directory (trial's working directory).
FIGURES_FILE = "chaos-figures.txt"


def scaled(quick: int, full: int) -> int:
    """C{full} under PEATIO_WS_CHAOS=full, else C{quick}."""
    return full if FULL else quick


def record(test: str, figures: dict[str, Any]) -> None:
    """
    Print C{figures} as a small table, and append them (one JSON line) to
    L{FIGURES_FILE} in the trial temp directory, where ``make chaos``
    collects them.
    """
    width = max((len(k) for k in figures), default=0)
    lines = [f"  {k.ljust(width)}  {v}" for k, v in figures.items()]
    text = f"\n[chaos] {test} ({'full' if FULL else 'quick'})\n" + "\n".join(lines) + "\n"
    print(text, flush=True)
    with open(FIGURES_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps({"test": test, "mode": "full" if FULL else "quick", **figures}, default=str) + "\n")


def summary(path: str) -> str:
    """The figures recorded in C{path} (JSON lines), as one plain-text report."""
    lines = []
    fuzz = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        entry = json.loads(raw)
        test, mode = entry.pop("test"), entry.pop("mode")
        if test.startswith("fuzz: "):
            fuzz.append((test.removeprefix("fuzz: "), entry.get("inputs tried", 0)))
            continue
        lines.append(f"{test} ({mode})")
        width = max((len(k) for k in entry), default=0)
        lines.extend(f"    {k.ljust(width)}  {v}" for k, v in entry.items())
    if fuzz:
        lines.append("unit-level hostile input (inputs tried)")
        width = max(len(name) for name, _ in fuzz)
        lines.extend(f"    {name.ljust(width)}  {count}" for name, count in sorted(fuzz))
        lines.append(f"    {'total'.ljust(width)}  {sum(c for _, c in fuzz)}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(sys.argv[1]))
