"""Execute the tutorial notebooks into build/notebooks/, the copies the documentation site shows.

The notebooks are committed without outputs (docs/tutorials/*.ipynb). `make docs` runs this script
with the main environment's interpreter (.venv: the notebooks need torch and mechscope); each
notebook runs top to bottom with nbclient in a fresh kernel of that interpreter, one torch thread,
in a temporary working directory, and its executed copy (outputs included: the project's own
notebook views) is written to build/notebooks/<name>.ipynb. The site build (docs/hooks.py) renders
those copies in place of the clean notebooks, and tests/test_notebooks.py checks them instead of
running the notebooks a second time.

A copy records the digests of what it was made from (`digests`): the notebook, every file of the
mechscope package, and the interpreter with its installed distributions. A copy whose digests all
still match is fresh and is not executed again; any change to one of them makes it stale.
A notebook that raises stops the script with the cell and its traceback, and leaves no copy.

    .venv/bin/python scripts/execute_notebooks.py            # the stale ones
    .venv/bin/python scripts/execute_notebooks.py --force    # all of them
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import sysconfig
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "docs" / "tutorials"
EXECUTED = REPO / "build" / "notebooks"
KEY = "mechscope_executed"  # the notebook metadata entry of an executed copy


def tutorials() -> list[Path]:
    """The committed tutorial notebooks, in order."""
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def executed_path(notebook: Path) -> Path:
    """Where the executed copy of `notebook` is written."""
    return EXECUTED / notebook.name


def _package_digest() -> str:
    h = hashlib.sha256()
    root = REPO / "mechscope"
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _environment_digest() -> str:
    # the interpreter's own site-packages only: the same for the script and for pytest, whatever
    # the working directory or PYTHONPATH put first on sys.path
    where = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions(path=where))
    return hashlib.sha256("\n".join([sys.executable, sys.version, *dists]).encode()).hexdigest()


def digests(notebook: Path, package: str | None = None, environment: str | None = None) -> dict[str, str]:
    """What an executed copy of `notebook` is made from: the digests of the notebook, of the
    mechscope package and of this interpreter's environment (computed when not given)."""
    return {"notebook": hashlib.sha256(notebook.read_bytes()).hexdigest(), "package": package or _package_digest(),
            "environment": environment or _environment_digest()}


def made_from(notebook: Path) -> dict[str, str] | None:
    """The digests recorded in the executed copy of `notebook`, or None when there is no copy."""
    path = executed_path(notebook)
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("metadata", {}).get(KEY, {}).get("inputs", {})


def fresh_copy(notebook: Path, inputs: dict[str, str] | None = None) -> dict | None:
    """The executed copy of `notebook` as JSON when it exists and was made from the current inputs
    (`inputs`, as `digests` gives them; computed when not given), else None."""
    if made_from(notebook) != (inputs or digests(notebook)):
        return None
    return json.loads(executed_path(notebook).read_text())


def stale_for_site(notebook: Path) -> str | None:
    """Why the executed copy of `notebook` does not show the current notebook and package (None when
    it does). The environment is not compared: the site is built in another one (.venv-docs)."""
    made = made_from(notebook)
    if made is None:
        return f"{executed_path(notebook).relative_to(REPO)} is missing"
    now = digests(notebook, environment="-")
    changed = [k for k in ("notebook", "package") if made.get(k) != now[k]]
    return f"the {' and the '.join(changed)} changed since it was executed" if changed else None


def execute(notebook: Path, inputs: dict[str, str], timeout: int = 600) -> tuple[dict, float]:
    """Run `notebook` in a fresh kernel of this interpreter and write its executed copy (written
    only once every cell has run). Returns the executed notebook as JSON and the seconds it took."""
    import nbclient
    import nbformat

    # one torch thread, no progress bars, and without tqdm's note that ipywidgets is not installed
    # (it would print this machine's paths under the first cell of every page)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MECHSCOPE_PROGRESS": "off",
           "PYTHONWARNINGS": "ignore:IProgress not found"}
    nb = nbformat.read(notebook, as_version=4)
    with tempfile.TemporaryDirectory(prefix="mechscope-notebook-") as cwd:
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                         resources={"metadata": {"path": cwd}})
        t0 = time.monotonic()
        client.execute(env=env)  # the kernel's environment; raises CellExecutionError naming the cell on any error
        seconds = time.monotonic() - t0
    nb.metadata[KEY] = {"inputs": inputs, "seconds": round(seconds, 1)}
    out = executed_path(notebook)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".ipynb.part")
    nbformat.write(nb, tmp)
    tmp.replace(out)
    return json.loads(out.read_text()), seconds


def main(argv: list[str] | None = None) -> int:
    """Execute every tutorial whose copy is missing or stale (all with --force)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="execute every notebook, fresh or not")
    args = ap.parse_args(argv)
    package, environment = _package_digest(), _environment_digest()
    total = 0.0
    for notebook in tutorials():
        inputs = digests(notebook, package, environment)
        if not args.force and fresh_copy(notebook, inputs) is not None:
            print(f"notebooks: {notebook.name} is up to date", flush=True)
            continue
        print(f"notebooks: executing {notebook.name} ...", flush=True)
        _, seconds = execute(notebook, inputs)
        total += seconds
        print(f"notebooks: {notebook.name} ran in {seconds:.1f} s -> {executed_path(notebook).relative_to(REPO)}",
              flush=True)
    print(f"notebooks: {total:.1f} s executing", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
