"""The demo's SmolLM2-135M attribution-graph studies, from the results saved in the package.

The studies (`mechscope.studies.smol_graphs`: antonyms and capital cities, each an attribution graph
read into supernodes and tested by ablating and patching transcoder latents in the real model)
need the model's 30 transcoders (hundreds of MB, trained here in about an hour) and minutes of
CPU per graph, so the demo shows the copy saved with the package (`studies/shipped/`): the graphs
(viewer, Graphs page) and the study's tables and checks (report and viewer). The README says how
to re-create both.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .. import artifacts as A


def smol_studies_available() -> bool:
    """Whether the saved results are in the package."""
    from ..studies.smol_graphs import SHIPPED

    return SHIPPED.is_file()


def smol_studies_digest() -> str:
    """The saved results' digest (a demo built from other results is built again)."""
    from ..studies.smol_graphs import SHIPPED

    return hashlib.sha256(SHIPPED.read_bytes()).hexdigest()[:16]


def smol_studies_section(w: A.ArtifactWriter, *, log: Any = None) -> None:
    """Write the saved studies' graphs and tables into `w` (under the study's model, smollm2-135m)."""
    from ..studies.smol_graphs import SHIPPED, load_result, save_artifacts

    say = log or (lambda *_: None)
    line, graphs = load_result(SHIPPED)
    save_artifacts(w.root, line, graphs)
    say(f"saved results of {', '.join(graphs)} ({line['config'].get('transcoders', '')}); checks: " +
        ", ".join(f"{k} {'pass' if c['pass'] else 'FAIL'}" for k, c in line["checks"].items()))
