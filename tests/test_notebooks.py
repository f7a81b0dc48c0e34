"""The tutorial notebooks (docs/tutorials/*.ipynb) run top to bottom in a fresh kernel without an error.

They are executed by `scripts/execute_notebooks.py`: with nbclient, in a kernel of this interpreter
(the test extra brings ipykernel, nbclient and nbformat), in a temporary working directory, with one
torch thread like the rest of the suite. Its executed copies (build/notebooks/) are what the
documentation site shows, and `make docs` writes them before `make test` runs (in CI and from a
fresh clone, where `make test` builds the site first). A copy made from the current notebook,
package and environment (its recorded digests all match) is checked here as it is, so the notebooks
run once; a missing or stale copy is executed here, and written, first. The notebooks are committed
without outputs (tests/test_docs.py checks that). A notebook that raises fails the test with the
cell and the traceback.
"""

from __future__ import annotations

import importlib.util
import resource
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _executor():
    spec = importlib.util.spec_from_file_location("execute_notebooks", REPO / "scripts" / "execute_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NB = _executor()
NOTEBOOKS = NB.tutorials()


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def test_the_five_tutorials_are_there():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"], NOTEBOOKS


def test_a_copy_is_fresh_only_for_the_inputs_it_was_made_from(tmp_path, monkeypatch):
    notebook = tmp_path / "tutorials" / "x.ipynb"
    notebook.parent.mkdir()
    notebook.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    monkeypatch.setattr(NB, "EXECUTED", tmp_path / "executed")
    monkeypatch.setattr(NB, "REPO", tmp_path)
    inputs = NB.digests(notebook, package="p", environment="e")
    assert NB.fresh_copy(notebook, inputs) is None
    assert NB.stale_for_site(notebook) == "executed/x.ipynb is missing"
    copy = tmp_path / "executed" / "x.ipynb"
    copy.parent.mkdir()
    copy.write_text('{"cells": [], "metadata": {"%s": {"inputs": %s}}}' % (NB.KEY, str(inputs).replace("'", '"')))
    assert NB.fresh_copy(notebook, inputs)["cells"] == []
    assert NB.fresh_copy(notebook, {**inputs, "environment": "other"}) is None
    assert NB.fresh_copy(notebook, NB.digests(notebook, package="q", environment="e")) is None
    notebook.write_text(notebook.read_text() + "\n")  # an edited notebook
    assert NB.fresh_copy(notebook, NB.digests(notebook, package="p", environment="e")) is None
    assert NB.stale_for_site(notebook) == "the notebook and the package changed since it was executed"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path):
    pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    inputs = NB.digests(path)
    nb = NB.fresh_copy(path, inputs)
    if nb is not None:
        print(f"{path.name}: the executed copy is fresh (ran in {nb['metadata'][NB.KEY]['seconds']} s when made)")
    else:
        t0, cpu0 = time.monotonic(), _children_cpu()
        nb, _ = NB.execute(path, inputs)  # raises CellExecutionError naming the cell on any error
        # the kernel is a child process: its CPU time is counted once it has exited (after execute)
        print(f"{path.name}: {time.monotonic() - t0:.1f} s wall, {_children_cpu() - cpu0:.1f} s CPU of the kernel")
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), "not run top to bottom"
    errors = [o for c in code for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, errors
    stderr = ["".join(o["text"]) for c in code for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not stderr, stderr  # warnings would be shown on the tutorial's page
    shown = sum(1 for c in code for o in c.get("outputs", []) if o["output_type"] in ("execute_result", "display_data"))
    assert shown >= 3, f"{path.name} displayed only {shown} results"
