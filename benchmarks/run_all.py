#!/usr/bin/env python
"""Run every benchmark and write one summary: benchmarks/results/bench.json (what `make bench` does).

Each benchmark runs in its own process with the interpreter of its environment (.venv-bench for
the ones compared with TransformerLens and nnsight, .venv-sae for the SAE trainers, .venv-lucent for
feature visualisation against Lucent, .venv-ct for attribution graphs against circuit-tracer, .venv-devinterp
for the LLC estimate, .venv for the scale-out ones); its progress
lines pass through to stderr, and the last line it prints (its result line) is kept. The summary
holds every result line, the machine, the date, and how long each benchmark took. A benchmark
that fails to produce a result line is recorded with pass: false and the reason.

`--table` prints the README's benchmark table from a summary file instead of running anything, so
that the README's numbers are the summary's.

`--update` runs only the `--only` benchmarks and puts their result lines into an existing summary
in place of the old ones (the others are kept); the summary then records the date each benchmark
was measured, and the table says so.

Usage:  python benchmarks/run_all.py [--quick] [--only NAME,...] [--out FILE] [--update]
        python benchmarks/run_all.py --table [FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _machine import machine, progress  # noqa: E402

# name -> (environment, script, extra arguments for --quick)
BENCHMARKS = {
    "core_overhead": (".venv-bench", "core_overhead.py", ["--quick"]),
    "patching_sweep": (".venv-bench", "patching_sweep.py", ["--quick"]),
    "sae_train": (".venv-sae", "sae_train.py", ["--quick"]),
    "llc_devinterp": (".venv-devinterp", "llc_devinterp.py", ["--quick"]),
    # Lucent needs torchvision and kornia <= 0.4.1: its own environment (setup_env.sh lucent)
    "featvis_lucent": (".venv-lucent", "featvis_lucent.py", ["--quick"]),
    # circuit-tracer 0.5.0 caps transformers below 5: its own environment (setup_env.sh ct)
    "graph": (".venv-ct", "graph.py", ["--quick"]),
    # mechscope's own environment (make test installs its `distributed` extra, Ray)
    "harvest_ray": (".venv", "harvest_ray.py", ["--quick"]),
    "ddp_train": (".venv", "ddp_train.py", ["--quick"]),
    "sgld_chains": (".venv", "sgld_chains.py", ["--quick"]),
    "llc_kernels": (".venv", "llc_kernels.py", ["--quick"]),
}
DEFAULT_OUT = HERE / "results" / "bench.json"


def children_cpu() -> float:
    """CPU seconds used so far by finished child processes (user + system)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_one(name: str, quick: bool, timeout: float) -> tuple[dict, float]:
    env_dir, script, quick_args = BENCHMARKS[name]
    python = REPO / env_dir / "bin" / "python"
    if not python.exists():
        mode = {".venv-sae": "sae", ".venv-devinterp": "devinterp", ".venv-lucent": "lucent",
                ".venv-ct": "ct"}.get(env_dir, "")
        how = "make venv" if env_dir == ".venv" else f"bash benchmarks/setup_env.sh {mode}".strip()
        return {"name": name, "kind": "benchmark", "checks": {}, "pass": False,
                "error": f"{python} is missing: run {how}"}, 0.0
    cmd = [str(python), str(HERE / script), *(quick_args if quick else [])]
    progress(f"run_all: {name}: {' '.join(cmd[1:])}")
    t0 = time.monotonic()
    try:
        # stderr (progress lines, tables) goes straight through; stdout holds the result line
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"name": name, "kind": "benchmark", "checks": {}, "pass": False,
                "error": f"timed out after {timeout:.0f} s"}, time.monotonic() - t0
    elapsed = time.monotonic() - t0
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line), elapsed
            except json.JSONDecodeError:
                break
    return {"name": name, "kind": "benchmark", "checks": {}, "pass": False,
            "error": f"exited {p.returncode} without a result line"}, elapsed


def table(summary: dict) -> str:
    """The README's table: every check of every benchmark, with the machine and the date."""
    m = summary.get("machine", {})
    by_date: dict[str, list[str]] = {}  # the date of a run -> the benchmarks it measured
    for k, v in summary.get("dates", {}).items():
        by_date.setdefault(v, []).append(k)
    updated = len(by_date) > 1
    when = "; ".join(f"{v} ({', '.join(ks)})" for v, ks in by_date.items()) if updated else summary.get("date", "?")
    lines = [f"Measured {when} on {m.get('cpu', '?')} ({m.get('logical_cores', '?')} logical "
             f"cores, {m.get('memory_gb', '?')} GB), torch {m.get('torch', '?')}, by `make bench`"
             + (" and later `run_all.py --update` runs" if updated else "") + " (benchmarks/results/bench.json).", "",
             "| benchmark | check | target | got | pass |", "|---|---|---|---|---|"]
    for r in summary.get("results", []):
        if "error" in r:
            lines.append(f"| {r['name']} | (did not run) | | {r['error']} | no |")
        for name, c in r.get("checks", {}).items():
            got = c["got"]
            got = f"{got:.3g}" if isinstance(got, float) else str(got)
            lines.append(f"| {r['name']} | {name} | {c['target']} | {got} | {'yes' if c['pass'] else 'no'} |")
    secs, cpu = summary.get("seconds", {}), summary.get("cpu_seconds", {})
    lines += ["", "Time per benchmark: " + ", ".join(
        f"{k} {v / 60:.1f} min" + (f" ({cpu[k] / 60:.1f} CPU min)" if k in cpu else "") for k, v in secs.items()) + "."]
    load = [r.get("machine", {}).get("load_average_1min") for r in summary.get("results", [])]
    if any(v is not None for v in load):
        lines.append("Load average (1 min) at the end of each: "
                     + ", ".join(f"{r['name']} {v}" for r, v in zip(summary["results"], load) if v is not None)
                     + f" on {m.get('logical_cores', '?')} cores.")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="each benchmark's smoke-test settings (fails its checks)")
    ap.add_argument("--only", default=",".join(BENCHMARKS), help="benchmarks to run, comma-separated")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help=f"summary file (default {DEFAULT_OUT.relative_to(REPO)})")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark before it is stopped")
    ap.add_argument("--update", action="store_true",
                    help="replace only these benchmarks' results in the existing summary file")
    ap.add_argument("--table", nargs="?", const=str(DEFAULT_OUT), default=None,
                    help="print the README table from a summary file and exit")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}: choose from {list(BENCHMARKS)}")
    out = Path(args.out)
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    summary = {"date": now, "machine": machine(threads=2), "quick": args.quick, "results": [], "seconds": {}}
    summary["cpu_seconds"] = {}  # of each benchmark's process tree: its wall time on idle cores is at least half
    if args.update:
        if not out.is_file():
            ap.error(f"--update needs an existing summary, and {out} is not a file")
        old = json.loads(out.read_text())
        if old.get("quick") != args.quick:
            ap.error(f"{out} was written with quick={old.get('quick')}; run --update with the same setting")
        summary.update({k: old[k] for k in ("results", "seconds", "cpu_seconds") if k in old})
        summary["dates"] = old.get("dates") or {r["name"]: old.get("date", "?") for r in old.get("results", [])}
    summary.setdefault("dates", {})
    for name in names:
        cpu0 = children_cpu()
        result, seconds = run_one(name, args.quick, args.timeout)
        at = [i for i, r in enumerate(summary["results"]) if r.get("name") == name]
        if at:
            summary["results"][at[0]] = result
        else:
            summary["results"].append(result)
        summary["dates"][name] = now  # the run's date: one run's benchmarks share it
        summary["seconds"][name] = round(seconds, 1)
        summary["cpu_seconds"][name] = round(children_cpu() - cpu0, 1)
        progress(f"run_all: {name} took {seconds / 60:.1f} min, pass: {result.get('pass')}")
    summary["pass"] = all(r.get("pass") for r in summary["results"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    progress(f"run_all: wrote {out}; pass: {summary['pass']}")
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
