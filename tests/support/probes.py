"""
Probes of processes and of the daemon's figures, from outside: resident
memory, CPU time and open descriptors of a process (Linux /proc), and one
sample of a Prometheus text exposition.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["cpu_seconds", "metric", "open_fds", "rss_kib"]

_TICK = os.sysconf("SC_CLK_TCK")


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text C{text} (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def rss_kib(pid: int) -> int:
    """Resident set size of process C{pid} in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process C{pid} so far (all its threads); 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def open_fds(pid: int) -> int:
    """How many file descriptors process C{pid} has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))
