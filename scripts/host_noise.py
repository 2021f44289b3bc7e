"""How steady is this host? For the comparisons of scripts/fidelity.py, whose engines may be bound by the host.

An engine that issues every kernel from Python (eager HF) runs at the speed of one CPU thread. On a virtual
machine that speed can vary from second to second without any CPU time being reported stolen (the H200 of
2026-12-03: 12 % across one-second windows of a fixed workload, the GPU idle). These measure it:

- ``host_speed_probe``: a fixed pure-Python workload timed back to back, alone: the host's own spread;
- ``ProbeBeside``: the same workload looping in a process of its own on another CPU while the comparison runs,
  so each timed pass can be paired with the host's speed during it (does the host slow every CPU at once?);
- ``cpu_steal_jiffies``: the CPU time the hypervisor reports stolen, from /proc/stat.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def fixed_work() -> int:
    total = 0
    for i in range(200_000):  # ~5-8 ms on current CPUs
        total += i & 7
    return total


def host_speed_probe(seconds: float, window_s: float = 1.0) -> dict:
    """``fixed_work`` back to back for ``seconds``: the CV of its speed over windows of ``window_s`` (a second: about
    a timed pass of a short comparison) is the floor of a host-bound engine's round-to-round spread."""
    stamps, durations, before = [], [], cpu_steal_jiffies()
    end = time.monotonic() + seconds
    while (start := time.monotonic()) < end:
        fixed_work()
        stamps.append(start)
        durations.append(time.monotonic() - start)
    stamps, durations = np.array(stamps), np.array(durations)
    windows = [durations[(stamps >= t) & (stamps < t + window_s)].mean()
               for t in np.arange(stamps[0], stamps[-1] - window_s / 2, window_s)]
    return {"seconds": seconds, "window_s": window_s, "items": len(durations),
            "item_ms_median": float(np.median(durations) * 1e3), "item_cv": float(durations.std() / durations.mean()),
            "window_cv": float(np.std(windows) / np.mean(windows)) if len(windows) > 1 else None,
            "slowest_over_fastest_window": float(max(windows) / min(windows)) if windows else None,
            # near 1: a slow window is followed by a slow one, so turns alternated that often would share the
            # host's state and their ratio cancel it; near 0: only more rounds narrow the interval
            "window_lag1_autocorr": float(np.corrcoef(windows[:-1], windows[1:])[0, 1]) if len(windows) >= 5 else None,
            "steal": steal_share(before, cpu_steal_jiffies())}


class ProbeBeside:
    """``fixed_work`` looping in a process of its own, pinned to the last CPU this process may use, writing each
    item's (start, seconds) as a line; ``speed(start, end)`` is its items per second within a window. It takes
    one CPU from the engine: use it where CPUs are spare (the GPU machine's 16), not on a 2-core machine."""

    def __enter__(self) -> "ProbeBeside":
        self._file = tempfile.NamedTemporaryFile("r", suffix=".probe", delete=False)
        self._proc = subprocess.Popen([sys.executable, __file__, self._file.name])
        os.sched_setaffinity(self._proc.pid, {max(os.sched_getaffinity(0))})
        return self

    def __exit__(self, *exc) -> None:
        self._proc.kill()
        self._proc.wait()
        os.unlink(self._file.name)

    def speed(self, start: float, end: float) -> float | None:
        return self.speeds([(start, end)])[0]

    def speeds(self, windows: list[tuple[float, float]]) -> list[float | None]:
        """``speed`` of each window, the file read once."""
        items = np.loadtxt(self._file.name, ndmin=2)
        if not items.size:
            return [None] * len(windows)
        inside = [items[(items[:, 0] >= start) & (items[:, 0] < end), 1] for start, end in windows]
        return [float(1 / seconds.mean()) if len(seconds) else None for seconds in inside]


def cpu_steal_jiffies() -> tuple[int, int] | None:
    """(stolen, total) CPU time of the whole machine so far, from /proc/stat (Linux): the time its CPUs were
    ready to run but the hypervisor ran someone else."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])  # user..steal; guest time is inside user


def steal_share(before, after) -> float | None:
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


if __name__ == "__main__":  # ProbeBeside's process
    with open(sys.argv[1], "w", buffering=1) as out:
        while True:
            start = time.monotonic()
            fixed_work()
            out.write(f"{start} {time.monotonic() - start}\n")
