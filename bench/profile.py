"""
Profiles of the daemon with py-spy (sampling from outside the process, not
pausing it), summarised as the functions with the most samples: where the
time is spent (self) and what it is spent under (inclusive).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    """The py-spy executable (in the venv, else on PATH), or None."""
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    return shutil.which("py-spy")


class Profiler:
    """py-spy record on one process for a fixed time, raw (collapsed-stack) output."""

    def __init__(self, pid: int, seconds: float, out: Path, rate: int = 250) -> None:
        self.out = out
        exe = py_spy()
        self.process: subprocess.Popen[bytes] | None = None
        if exe is None:
            return
        self.process = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, round(seconds))),
                "--rate",
                str(rate),
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def finish(self, timeout: float = 60.0) -> Path | None:
        """Wait for py-spy (bounded); the profile's path, or None if there is none."""
        if self.process is None:
            return None
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        return self.out if self.out.exists() else None


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    file = m.group("file")
    for marker in ("site-packages/", "/peatio_ws/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            if marker == "/peatio_ws/":
                file = "peatio_ws/" + file
            break
    return f"{m.group('func')} ({file})"


def summarize(path: Path, top: int = 15) -> dict[str, list[tuple[str, float]]]:
    """The C{top} functions by self and by inclusive share of samples (percent)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_name(f) for f in stack.split(";")]
        # py-spy puts the process and thread first; the innermost frame is last.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    if not samples:
        return {"self": [], "inclusive": [], "samples": []}
    # The frames every sample passes through (twistd, the reactor loop) say nothing.
    inner = [(f, c) for f, c in total.most_common() if c < 0.9 * samples]
    return {
        "self": [(f, 100 * c / samples) for f, c in own.most_common(top)],
        "inclusive": [(f, 100 * c / samples) for f, c in inner[:top]],
        "samples": [("samples", float(samples))],
    }


def format_summary(title: str, summary: dict[str, list[tuple[str, float]]]) -> str:
    lines = [
        f"profile: {title} ({int(summary['samples'][0][1]) if summary['samples'] else 0} samples; "
        "EPollReactor.doPoll's own samples are mostly waiting in epoll, idle)"
    ]
    lines.append("  self %   function")
    lines += [f"  {pct:6.1f}   {f}" for f, pct in summary["self"]]
    lines.append("  incl %   function")
    lines += [f"  {pct:6.1f}   {f}" for f, pct in summary["inclusive"]]
    return "\n".join(lines)
