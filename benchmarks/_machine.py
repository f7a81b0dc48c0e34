"""What else the machine was doing while a benchmark timed itself (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import time


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(busy seconds of the whole machine, this process's cpu seconds, wall time)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / hz  # all but idle and iowait
        t = os.times()
        return busy, t.user + t.system, time.monotonic()
    except (OSError, ValueError, IndexError):
        return None


def other_cpu_share(start) -> float | None:
    """Share of the machine's cores that other processes kept busy since `start`."""
    end = cpu_snapshot()
    if start is None or end is None or end[2] <= start[2]:
        return None
    others = (end[0] - start[0]) - (end[1] - start[1])
    return max(0.0, others / ((end[2] - start[2]) * (os.cpu_count() or 1)))
