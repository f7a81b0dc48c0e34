"""What else the machine was doing while a benchmark timed itself (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import time


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(busy seconds of the whole machine, cpu seconds of this process and of its children that have
    ended (a benchmark's subprocesses, and theirs: torchrun's ranks), wall time)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / hz  # all but idle and iowait
        t = os.times()
        return busy, t.user + t.system + t.children_user + t.children_system, time.monotonic()
    except (OSError, ValueError, IndexError):
        return None


def other_cpu_share(start) -> float | None:
    """Share of the machine's cores that other processes kept busy since `start`: all but this process
    and the children it waited for (a child still running when this is called counts as other, and so
    do processes it did not start itself, such as Ray's workers)."""
    end = cpu_snapshot()
    if start is None or end is None or end[2] <= start[2]:
        return None
    others = (end[0] - start[0]) - (end[1] - start[1])
    return max(0.0, others / ((end[2] - start[2]) * (os.cpu_count() or 1)))


def machine(threads: int) -> dict:
    """Which machine a result line was measured on: CPU model, cores, memory, versions, date."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "memory_gb": mem_gb, "cpu_threads": threads,
            "torch": torch.__version__, "python": platform.python_version(), "gpu": None,
            "load_average_1min": round(os.getloadavg()[0], 2),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def progress(message: str) -> None:
    """One plain progress line on stderr (benchmarks run under make and into logs)."""
    import sys

    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def result_line(name: str, figures: dict, checks: dict, threads: int = 2) -> dict:
    """A benchmark's result line: passes when every check does."""
    return {"name": name, "kind": "benchmark", "machine": machine(threads=threads), "figures": figures,
            "checks": checks, "pass": all(c["pass"] for c in checks.values())}


def main(run, doc: str, arguments: dict[str, dict], quick: dict, quick_help: str, prepare=None) -> None:
    """A benchmark's command line: the options `arguments` ({flag: argparse keywords}) and --quick (a
    smoke test that sets the values `quick` names), then the result line of `run(args)` printed as
    JSON. `prepare(args, parser)` checks or converts options before the run (parser.error to refuse)."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    for flag, kwargs in arguments.items():
        ap.add_argument(flag, **kwargs)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    a = ap.parse_args()
    if prepare is not None:
        prepare(a, ap)
    if a.quick:
        for name, value in quick.items():
            setattr(a, name, value)
    print(json.dumps(run(a)))
