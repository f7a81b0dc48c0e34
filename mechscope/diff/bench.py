"""`mechscope diff-bench`: diff the zoo text model against each public fine-tune and check that the
diff names what was changed, and reports nothing above threshold for a control.

A is `textlm` (the fully trained zoo text model) by default and `textlm-quick` (the 200-step one)
with `quick=True`: `MODES` holds each mode's base, fine-tune steps and windows, and each can be
given instead.

Steps:
1. train (or find cached) the four public fine-tunes of A (`finetunes.py`);
2. diff A against `control` (A trained further on its own data): the thresholds;
3. diff A against `python-docs`, `rule` and `control-heldout`, each measured against those
   thresholds, on the same held-out windows;
4. checks, defined before any run and stated in the result line:
   - `domain_in_top3`: a finding among the first three is above threshold and names the Python
     docs: at least 60% of the tokens it says B writes or predicts more (a behaviour finding's five
     largest rises, a weight direction's or a logit-lens reading's top ten) are Python-docs tokens,
     i.e. at least twice as frequent (per token, add-one smoothed) in the Python docs of the training
     split as in its Shakespeare. The share of such tokens in the held-out text is reported beside it
     as the chance level;
   - `rule_in_top3`: a finding among the first three is above threshold and names both the trigger
     and the continuation among its tokens (a behaviour finding: the context and what B predicts more);
   - `control_quiet`: the held-out control pair has no finding above threshold (the thresholds were
     set on the other control, so this can fail).
"""

from __future__ import annotations

import json
import platform
import time
from typing import Any

import torch

from ..core.progress import note
from .corpus import held_out
from .finetunes import CONTINUATION, PUBLIC, TRIGGER, python_docs_stream, rule_tokens, train_finetune
from .pair import load_model
from .report import Finding
from .study import DiffResult, diff

LEAN = 2.0  # a token is a Python-docs token when it is at least this many times as frequent there
NAMED_SHARE = 0.6  # a finding names the domain when at least this share of its tokens are such tokens


def python_tokens(vocab_size: int = 4096, corpus: str = "textlm") -> torch.Tensor:
    """(vocab,) bool: tokens at least LEAN times as frequent in the Python docs as in Shakespeare
    (training split, add-one smoothed frequencies per token)."""
    from ..zoo import datasets

    stream = datasets.token_stream(corpus, "train", vocab_size).long()
    n_py = python_docs_stream(corpus, vocab_size).numel()
    py = torch.bincount(stream[:n_py], minlength=vocab_size).double() + 1
    sh = torch.bincount(stream[n_py:], minlength=vocab_size).double() + 1
    return (py / py.sum()) / (sh / sh.sum()) >= LEAN


def python_tokens_of(tokenizer: Any, vocab_size: int, max_tokens: int = 400_000) -> torch.Tensor:
    """(vocab,) bool: `python_tokens` for another model's tokenizer: the training split's Python docs and
    Shakespeare (up to `max_tokens` of each, documents in a seeded order) encoded with it."""
    from .hf_finetune import domain_stream

    py, sh = (torch.bincount(domain_stream(tokenizer, d, "train", max_tokens), minlength=vocab_size).double() + 1
              for d in ("python-docs", "shakespeare"))
    return (py / py.sum()) / (sh / sh.sum()) >= LEAN


def written_tokens(f: Finding) -> tuple[int, ...]:
    """The tokens a finding says B writes or predicts more (see the module docstring)."""
    if f.kind == "behaviour":
        return tuple(f.tokens[len(f.key_tokens):])[:5]
    return tuple(f.tokens)[:10]


def names_domain(f: Finding, is_python: torch.Tensor) -> tuple[bool, float]:
    """Whether at least NAMED_SHARE of the tokens finding `f` says B writes are Python-docs tokens (`is_python`
    (vocab,) bool), and that share; False with fewer than three such tokens."""
    toks = written_tokens(f)
    if len(toks) < 3:
        return False, 0.0
    share = float(is_python[list(toks)].double().mean())
    return share >= NAMED_SHARE, share


def names_rule(f: Finding, trigger: int, continuation: int) -> bool:
    """Whether finding `f` names both the rule's trigger and its continuation token."""
    return trigger in f.tokens and continuation in f.tokens


def _machine() -> dict[str, Any]:
    import os

    return {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "gpu": None,
            "python": platform.python_version(), "load_average_1min": round(os.getloadavg()[0], 2),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _top(res: DiffResult, k: int = 5) -> list[dict[str, Any]]:
    return [{"kind": f.kind, "title": f.title, "score": f.score.value, "threshold": f.threshold,
             "above": f.above} for f in res.findings[:k]]


MODES = {"quick": ("textlm-quick", 200, 256), "full": ("textlm", 200, 512)}  # base, fine-tune steps, windows


def run_bench(quick: bool = False, base: str | None = None, steps: int | None = None, windows: int | None = None,
              progress: bool = True, device: str | None = None) -> dict[str, Any]:
    """Train (or find) the fine-tunes (on the CPU), diff A against each with both networks on `device` and check
    the findings (see the module docstring); returns the JSON-ready result line.

    Example: `run_bench(quick=True)`, or `mechscope diff-bench --quick`.
    """
    d_base, d_steps, d_windows = MODES["quick" if quick else "full"]
    base, steps, windows = base or d_base, steps or d_steps, windows or d_windows
    t0 = time.perf_counter()
    dirs, train_s = {}, {}
    for ft in PUBLIC:
        t = time.perf_counter()
        dirs[ft.name] = train_finetune(ft.name, base, steps=steps, progress=progress)
        train_s[ft.name] = round(time.perf_counter() - t, 2)
    a = f"zoo:{base}"
    results: dict[str, DiffResult] = {}
    control = diff(a, dirs["control"], n_windows=windows, progress=progress, names=(a, "control"), device=device)
    for name in ("python-docs", "rule", "control-heldout"):
        results[name] = diff(a, dirs[name], n_windows=windows, control=control, progress=progress, names=(a, name),
                             device=device)
    model_a = load_model(a)
    trig, cont = rule_tokens(model_a.tokenizer)
    is_python = python_tokens()

    top3 = {k: r.findings[:3] for k, r in results.items()}
    domain = [(f, *names_domain(f, is_python)) for f in top3["python-docs"]]
    domain_hit = any(f.above and named for f, named, _ in domain)
    rule_hit = any(f.above and names_rule(f, trig, cont) for f in top3["rule"])
    quiet = len(results["control-heldout"].above)
    corpus = held_out(model_a, "textlm", windows, 64)
    chance = float(is_python[corpus.ids.flatten()].double().mean())
    figures: dict[str, Any] = {
        "base": base, "steps": steps, "windows": windows, "train_s": train_s,
        "diff_s": {k: round(sum(r.seconds.values()), 2) for k, r in {"control": control, **results}.items()},
        "kl_per_token": {k: r.behaviour.overall.value for k, r in {"control": control, **results}.items()},
        "above_threshold": {k: len(r.above) for k, r in results.items()},
        "domain_top3_python_share": [round(s, 3) for _, _, s in domain],
        "python_token_share_of_heldout_text": round(chance, 3),
        "python_token_share_of_vocab": round(float(is_python.double().mean()), 3),
        "rule": f"after {TRIGGER!r} always {CONTINUATION!r}",
        "total_s": round(time.perf_counter() - t0, 2)}
    out = {"name": "diff_bench", "kind": "benchmark", "machine": _machine(), "quick": quick, "figures": figures,
           "top_findings": {k: _top(r) for k, r in results.items()},
           "checks": {
               "domain_in_top3": _domain_check(domain_hit),
               "rule_in_top3": {"target": "a top-3 finding above threshold naming trigger and continuation",
                                "got": rule_hit, "pass": rule_hit},
               "control_quiet": _quiet_check(quiet)}}
    return _finish(out, "diff-bench", progress)


def _domain_check(hit: bool) -> dict[str, Any]:
    return {"target": f"a top-3 finding above threshold with >= {NAMED_SHARE:.0%} Python-docs tokens among those "
                      "it says B writes", "got": hit, "pass": hit}


def _quiet_check(above: int) -> dict[str, Any]:
    return {"target": "0 findings above threshold on the held-out control pair", "got": above, "pass": above == 0}


def _finish(out: dict[str, Any], label: str, progress: bool) -> dict[str, Any]:
    out["pass"] = all(c["pass"] for c in out["checks"].values())
    if progress:
        note(f"{label}: {'pass' if out['pass'] else 'FAIL'} in {out['figures']['total_s']:.0f} s")
    return out


def run_hf_bench(model: str = "smollm2-135m", steps: int = 50, windows: int = 32, progress: bool = True,
                 device: str | None = None, batch: int = 4, tune_seq_len: int = 128, lr: float = 5e-5,
                 seq_len: int = 64) -> dict[str, Any]:
    """The domain and control checks on a real language model A (`hf_finetune.py`): A fine-tuned briefly on
    the Python docs (the domain), and twice on Shakespeare with two seeds: the first sets the thresholds
    (a brief fine-tune on other text: A's own training data is not here), the second is the control that
    must stay quiet. Each fine-tune trains `steps` steps of `batch` windows of `tune_seq_len` tokens at peak
    rate `lr`; the diffs read `windows` held-out windows of `seq_len` tokens. Returns the JSON-ready result
    line (no rule check: the rule is planted in the zoo model's set).

    Example: `run_hf_bench("smollm2-135m")`, or `mechscope diff-bench --model smollm2-135m`.
    """
    from .hf_finetune import HFTune, train_hf_finetune

    t0 = time.perf_counter()
    recipe = {"steps": steps, "batch": batch, "seq_len": tune_seq_len, "lr": lr}
    tunes = {"python-docs": HFTune(model, "python-docs", **recipe), "control": HFTune(model, "shakespeare", **recipe),
             "control-heldout": HFTune(model, "shakespeare", seed=1, **recipe)}
    dirs, train_s = {}, {}
    for name, tune in tunes.items():
        t = time.perf_counter()
        dirs[name] = train_hf_finetune(tune, progress=progress)
        train_s[name] = round(time.perf_counter() - t, 2)
    control = diff(model, str(dirs["control"]), n_windows=windows, seq_len=seq_len, progress=progress,
                   names=(model, "control"), device=device)
    results = {name: diff(model, str(dirs[name]), n_windows=windows, seq_len=seq_len, control=control,
                          progress=progress, names=(model, name), device=device)
               for name in ("python-docs", "control-heldout")}
    model_a = load_model(model)
    is_python = python_tokens_of(model_a.tokenizer, int(model_a.unembed().weight.shape[0]))  # (vocab, d_model)
    domain = [(f, *names_domain(f, is_python)) for f in results["python-docs"].findings[:3]]
    domain_hit = any(f.above and named for f, named, _ in domain)
    quiet = len(results["control-heldout"].above)
    corpus = held_out(model_a, "textlm", windows, seq_len)
    figures: dict[str, Any] = {
        "base": model, "steps": steps, "windows": windows, "train_s": train_s,
        "recipe": {k: {"data": t.data, "seed": t.seed, "batch": t.batch, "seq_len": t.seq_len, "lr": t.lr}
                   for k, t in tunes.items()},
        "heldout_loss": {k: {kk: json.loads((d / "finetune.json").read_text())[kk]
                             for kk in ("heldout_loss_a", "heldout_loss_b")} for k, d in dirs.items()},
        "diff_s": {k: round(sum(r.seconds.values()), 2) for k, r in {"control": control, **results}.items()},
        "kl_per_token": {k: r.behaviour.overall.value for k, r in {"control": control, **results}.items()},
        "above_threshold": {k: len(r.above) for k, r in results.items()},
        "domain_top3_python_share": [round(sh, 3) for _, _, sh in domain],
        "python_token_share_of_heldout_text": round(float(is_python[corpus.ids.flatten()].double().mean()), 3),
        "total_s": round(time.perf_counter() - t0, 2)}
    out = {"name": "diff_bench_hf", "kind": "benchmark", "machine": _machine(), "figures": figures,
           "top_findings": {k: _top(r) for k, r in results.items()},
           "checks": {"domain_in_top3": _domain_check(domain_hit), "control_quiet": _quiet_check(quiet)}}
    return _finish(out, f"diff-bench {model}", progress)


def json_line(result: dict[str, Any]) -> str:
    """The result as one JSON line (values JSON cannot hold written as strings)."""
    return json.dumps(result, default=str)
