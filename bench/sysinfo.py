"""
What the benchmark records about the machine, and how it watches processes:
CPU time per group of processes (from /proc/<pid>/stat, read by
L{tests.support.probes}, which also reads resident memory).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import pwd
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.support.probes import cpu_seconds

_TICK = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> tuple[float, float]:
    """
    CPU seconds all cores spent working (user, nice, system, irq, softirq)
    and stolen by the hypervisor, since boot (from /proc/stat).
    """
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    values += [0] * (8 - len(values))
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq) / _TICK, steal / _TICK


def pids_named(comm: str, arg: bytes = b"") -> list[int]:
    """Processes whose command name is C{comm} and whose command line holds C{arg}."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == comm and arg in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def rabbitmq_pids() -> list[int]:
    """
    The RabbitMQ server's Erlang VM (not rabbitmqctl's, which is a beam.smp
    too): the system service's (user rabbitmq) when there is one, not the
    nodes a test suite may start beside it.
    """
    found = pids_named("beam.smp", b"rabbit\x00boot")
    service = [pid for pid in found if _owner(pid) == "rabbitmq"]
    return service or found


def _owner(pid: int) -> str:
    try:
        return pwd.getpwuid(Path(f"/proc/{pid}").stat().st_uid).pw_name
    except (OSError, KeyError):
        return ""


def busy_now(seconds: float = 1.0) -> tuple[float, list[str]]:
    """How busy the machine is (percent of one core) while we do nothing, and the busiest processes."""
    meter = CpuMeter({}).start()
    time.sleep(seconds)
    result = meter.stop()
    return result["other"], meter.top_others


class CpuMeter:
    """CPU used by named groups of processes over a window, as a share of one core."""

    def __init__(self, groups: Mapping[str, Iterable[int]]) -> None:
        self.groups = {name: list(pids) for name, pids in groups.items()}
        self._start: dict[str, float] = {}
        self._t0 = 0.0
        self._busy0 = 0.0
        self._steal0 = 0.0
        self.result: dict[str, float] = {}
        self._all0: dict[int, tuple[str, float]] = {}
        self.top_others: list[str] = []
        self.seconds: dict[str, float] = {}
        self._last: dict[int, float] = {}

    @staticmethod
    def _everyone() -> dict[int, tuple[str, float]]:
        out = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                pid = int(entry.name)
                with contextlib.suppress(OSError):
                    out[pid] = ((entry / "comm").read_text().strip(), cpu_seconds(pid))
        return out

    def _sample(self) -> dict[str, float]:
        # Per process, so that one which ends during the window (its CPU no
        # longer readable) counts what it had used at the start, not minus it.
        self._last.update({p: cpu_seconds(p) or self._last.get(p, 0.0) for pids in self.groups.values() for p in pids})
        return {name: sum(self._last[p] for p in pids) for name, pids in self.groups.items()}

    def start(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._busy0, self._steal0 = busy_seconds()
        self._start = self._sample()
        self._all0 = self._everyone()
        return self

    def stop(self) -> dict[str, float]:
        """
        Percent of one core per group, plus C{other} (kernel threads, everything
        else), C{steal} (the hypervisor's) and C{idle}.
        """
        wall = max(1e-6, time.monotonic() - self._t0)
        end = self._sample()
        busy, steal = busy_seconds()
        busy -= self._busy0
        steal -= self._steal0
        self.seconds = {name: end[name] - self._start[name] for name in self.groups}
        result = {name: 100 * (end[name] - self._start[name]) / wall for name in self.groups}
        result["other"] = max(0.0, 100 * busy / wall - sum(result.values()))
        result["steal"] = 100 * steal / wall
        result["idle"] = max(0.0, 100 * (os.cpu_count() or 1) - 100 * (busy + steal) / wall)
        mine = {p for pids in self.groups.values() for p in pids}
        others = []
        for pid, (comm, cpu) in self._everyone().items():
            if pid not in mine:
                used = cpu - self._all0.get(pid, (comm, 0.0))[1]
                if used > 0.02 * wall:
                    others.append((100 * used / wall, f"{comm}[{pid}]"))
        self.top_others = [f"{name} {pct:.0f}%" for pct, name in sorted(others, reverse=True)[:4]]
        self.result = result
        return result


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _command(args: list[str], timeout: float = 20.0) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.strip().splitlines()[-1] if out.strip() else "?"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _read_first(path: str) -> str:
    """The first line of a /proc file, or "?" where there is none."""
    try:
        return Path(path).read_text().split("\n", 1)[0].strip() or "?"
    except OSError:
        return "?"


def machine() -> dict[str, str]:
    """Date, machine and software versions, for the record."""
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": _command(["nproc"]),
        "cpu": cpu_model(),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        # The accept queue's length (with the daemon's backlog): it decides whether a storm's SYNs wait or drop.
        "somaxconn": _read_first("/proc/sys/net/core/somaxconn"),
        "python": platform.python_version(),
        "twisted": _version("twisted"),
        "autobahn": _version("autobahn"),
        "txaio": _version("txaio"),
        "txamqp": _version("txamqp"),
        "orjson": _version("orjson"),
        "websockets": _version("websockets"),
        "aio-pika": _version("aio-pika"),
        "rabbitmq": _command(["rabbitmqctl", "version"]),
        "redis": _command(["redis-server", "--version"]).split(" v=")[-1].split()[0]
        if _command(["redis-server", "--version"]) != "?"
        else "?",
    }
