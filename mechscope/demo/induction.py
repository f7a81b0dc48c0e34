"""The demo's induction section: a zoo induction model's artifacts (what `make demo` and the browser
tests view).

Steps (about half a minute on one core for `induction-quick`):
1. the zoo induction model, a 2-layer attention-only transformer (zoo run, metrics log): the cache's
   run, else the copy shipped in the package, else trained here (`--retrain` trains it here);
2. overview, the attention patterns of one repeated-token prompt, head-role scores with a causal
   check (the answer's log-probability after zero-ablating each head);
3. activation patching (denoising) of every head's output and of the residual stream per position,
   on prompts whose first copy is replaced in the corrupted version;
4. an EAP edge circuit (counterfactual patch ablation) and its faithfulness;
5. a FeatureStore over layer 0's attention output (one feature per residual dimension), with
   dashboards and rule explanations.
Everything is written through `mechscope.artifacts`; nothing here is read by the viewer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .. import artifacts as A
from .common import run_source, torch_threads, zoo_network

QUICK = "induction-quick"


def induction_prompts(n_prompts: int, n: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor,
                                                                                     torch.Tensor]:
    """clean (prompt, 2n-1): a_1..a_n a_1..a_{n-1}; corrupt: b_1..b_n a_1..a_{n-1}; answers a_n."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, vocab, (n_prompts, n), generator=g)
    b = (a + torch.randint(1, vocab, (n_prompts, n), generator=g)) % vocab  # differs from a everywhere
    clean = torch.cat([a, a[:, :-1]], 1)
    corrupt = torch.cat([b, a[:, :-1]], 1)
    return clean, corrupt, a[:, -1]


def tiled_answer_logprob(answers: torch.Tensor):
    """log p(answer) at the last position, for any number of rows that repeat the prompts in order
    (a batched patching sweep runs the prompts once per job)."""
    from ..core import metrics

    def fn(logits: torch.Tensor) -> torch.Tensor:
        k = logits.shape[0] // answers.shape[0]
        return metrics.answer_logprob(answers.repeat(k)).fn(logits)

    return metrics.Metric("answer_logprob", fn, last_position_only=True)


def build_demo_artifacts(out: str | Path = "out", *, steps: int | None = None, run_path: Path | None = None,
                         threads: int = 1, progress: bool = False, log: Any = None) -> Path:
    """The induction section alone for `induction-quick`, written to `out` (the tests' fixture).

    Example::

        from mechscope.demo import build_demo_artifacts
        from mechscope.artifacts import read_artifacts
        root = build_demo_artifacts("out", steps=200)   # a short induction-quick run's artifacts
        read_artifacts(root).model_names()
    """
    induction_section(A.ArtifactWriter(out), QUICK, steps=steps, run_path=run_path, threads=threads,
                      progress=progress, log=log, scratch=Path(out))
    return Path(out)


def induction_section(w: A.ArtifactWriter, name: str = QUICK, *, steps: int | None = None,
                      run_path: Path | None = None, threads: int = 1, progress: bool = False, log: Any = None,
                      scratch: Path = Path("out"), retrain: bool = False, device: str | None = None) -> None:
    """Write the artifacts of the zoo induction model `name` through `w`: the cache's run, else the
    copy shipped in the package, else (or with `retrain`) trained here.

    `steps` shortens training (tests); the run then lives in its own directory (`run_path`, default
    beside the zoo's runs) so it never clashes with a full run of the same name.
    """
    from .. import zoo
    from ..causal import AblationSpec, activation_patching, eap, edge_faithfulness
    from ..circuits.head_roles import head_roles
    from ..core import Kind, Site, Zero, run
    from ..features import FeatureSet, FeatureStore, build_dashboards
    from ..features.pipeline import explain_set

    say = log or (lambda *_: None)
    t0 = time.monotonic()
    with torch_threads(threads):
        zrun, model, hp = zoo_network(name, steps, run_path, progress, retrain, device)
        say(f"{name}: {run_source(zrun)} ({time.monotonic() - t0:.1f} s)")
        V, n_layers, n_heads = hp["d_vocab"], hp["n_layers"], hp["n_heads"]
        m = w.model(f"zoo:{name}")
        m.overview(**A.overview_from_model(model, recipe="induction", variant=zoo.spec(name).variant or "full",
                                           steps=hp["steps"],
                                           task="copy a repeated random-token segment"))

        # attention patterns on one repeated prompt
        clean, corrupt, answers = induction_prompts(24, 8, V, seed=1)
        ex = clean[:1]
        pats = run(model, ex, capture=[Site(Kind.PATTERN, layer) for layer in range(n_layers)])
        patterns = torch.stack([pats.cache[Site(Kind.PATTERN, layer)][0] for layer in range(n_layers)])
        m.attention([str(int(t)) for t in ex[0]], patterns,
                    prompt="random tokens a1..a8 then a1..a7 (the model should predict a8)")

        # head roles, with a causal check: log p(answer) change when each head is zero-ablated
        roles = head_roles(model, n=12, batch=16, vocab=V)
        metric = tiled_answer_logprob(answers)
        base = float(metric(run(model, clean).logits).mean())
        check = torch.zeros(n_layers, n_heads)
        for layer in range(n_layers):
            for h in range(n_heads):
                out_ = run(model, clean, interventions=[Zero(Site(Kind.Z, layer), heads=[h])])
                check[layer, h] = float(metric(out_.logits).mean()) - base
        m.head_roles(**A.roles_from_head_roles(roles),
                     causal={"metric": "change of answer log-prob on induction prompts", "ablation": "zero",
                             "values": check})
        say(f"head roles ({time.monotonic() - t0:.1f} s)")

        # activation patching: heads, and the residual stream per position
        heads = activation_patching(model, clean, corrupt, [Site(Kind.Z, layer) for layer in range(n_layers)],
                                    metric, each_position=False, progress=False)
        m.patching("heads", **A.heatmap_from_patching(heads, metric="answer_logprob"),
                   title="Per-head output patched clean -> corrupt (share of answer log-prob restored)")
        resid = activation_patching(model, clean, corrupt,
                                    [Site(Kind.RESID_PRE, layer) for layer in range(n_layers)], metric,
                                    each_head=False, progress=False)
        toks = [f"a{i + 1}" for i in range(8)] + [f"a{i + 1}'" for i in range(7)]
        m.patching("resid_pre", **A.heatmap_from_patching(resid, tokens=toks, metric="answer_logprob"),
                   title="Residual stream patched per position (share restored)")
        say(f"patching ({time.monotonic() - t0:.1f} s)")

        # an EAP circuit on the induction task and its faithfulness
        spec = AblationSpec("patch", reference="first copy replaced", granularity="edge")
        scores = eap(model, clean, metric, spec, reference_inputs=corrupt, dataset="induction prompts")
        k = min(60, scores.graph.n_edges)
        circ = scores.circuit(k=k, name=f"EAP top {k}")
        faith = edge_faithfulness(model, clean, circ, metric, spec, reference_inputs=corrupt,
                                  dataset="induction prompts", n_boot=200)
        m.circuit("eap", **A.circuit_from_edges(scores, circuit=circ, faithfulness=faith,
                                                method=f"EAP (first order), top {k} edges by |score|"))
        say(f"circuit ({time.monotonic() - t0:.1f} s)")

        # training dynamics
        m.training(**A.training_from_run(zrun))

        # features over layer 0's attention output
        d = int(model.weights().W_E.shape[1])
        feats = FeatureSet.neurons(Site(Kind.ATTN_OUT, 0), d=d, directions=torch.eye(d), name="attn_out.0")
        g = torch.Generator().manual_seed(3)
        from ..zoo.recipes.induction import make_batch

        docs = make_batch(48, hp, g).ids
        store_path = scratch / ".build-features.duckdb"
        store_path.unlink(missing_ok=True)
        with FeatureStore(store_path) as store:
            build_dashboards(model, feats, docs, store, dataset="induction training distribution", k=8,
                             reservoir=16, context=(6, 2), progress=False)
            explain_set(model, feats, docs, store, dataset="induction training distribution",
                        decode=lambda t: str(t), causal_limit=4, progress=False)
        m.features(store_path)
        store_path.unlink(missing_ok=True)
        say(f"features ({time.monotonic() - t0:.1f} s)")

