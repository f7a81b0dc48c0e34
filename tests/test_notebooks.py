"""The tutorial notebooks (docs/tutorials/*.ipynb) run top to bottom in a fresh kernel without an error.

Each is executed with nbclient in a kernel of this interpreter (the test extra brings ipykernel,
nbclient and nbformat), in a temporary working directory, with one torch thread like the rest of
the suite. The notebooks are committed without outputs (tests/test_docs.py checks that); this is
where they run. A notebook that raises fails the test with the cell and the traceback.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "docs" / "tutorials").glob("*.ipynb"))


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def test_the_five_tutorials_are_there():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"], NOTEBOOKS


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv("MECHSCOPE_PROGRESS", "off")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0, cpu0 = time.monotonic(), _children_cpu()
    client.execute()  # raises CellExecutionError naming the cell on any error
    # the kernel is a child process: its CPU time is counted once it has exited (after execute)
    print(f"{path.name}: {time.monotonic() - t0:.1f} s wall, {_children_cpu() - cpu0:.1f} s CPU of the kernel")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    shown = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                if o.output_type in ("execute_result", "display_data"))
    assert shown >= 3, f"{path.name} displayed only {shown} results"
