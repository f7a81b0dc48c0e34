"""`mechscope demo`: an end-to-end look inside SmolLM2-135M on an indirect-object prompt.

Steps: load the real model offline; show its next-token predictions; measure the logit
difference between the indirect object and the subject; find where the answer lives with a
batched activation-patching sweep (residual stream, every layer x position, name-swapped
counterfactual); list the heads that attend from the last token to the indirect object.
"""

from __future__ import annotations

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..core import Patch, Site
from ..core.site import Kind
from ..models.load import load


def _swap_names(prompt: str, a: str, b: str) -> str:
    return prompt.replace(a, "\0").replace(b, a).replace("\0", b)


def run_demo(console: Console, prompt: str, io: str = " Mary", subject: str = " John",
             chunk: int = 48, device: str | None = None) -> dict:
    """Print the demo on `console` (see the module docstring) for the IOI prompt `prompt` with names `io` and
    `subject`, patching `chunk` (layer, position) pairs per batch, the model on `device`; returns the clean and corrupted logit
    differences and the recovered grid (layer, pos)."""
    console.rule("[bold]mechscope demo: inside SmolLM2-135M")
    model = load("smollm2-135m", device=device)
    console.print(f"{model.name}: {model.n_layers} layers, {model.n_heads} query heads, "
                  f"{model.n_kv_heads} key/value heads, d_model {model.d_model}, {len(model.sites())} sites")

    # 1. next-token predictions
    fact = "The capital of France is"
    res = model.run(model.to_tokens(fact))
    ids = res.logits[0, -1].topk(5).indices
    console.print(f"next token after {fact!r}: " + ", ".join(repr(t) for t in model.to_str_tokens(ids)))

    # 2. the behaviour: logit difference indirect object - subject
    tok = model.tokenizer
    io_id, s_id = tok.encode(io, add_special_tokens=False)[0], tok.encode(subject, add_special_tokens=False)[0]
    corrupt = _swap_names(prompt, io.strip(), subject.strip())
    clean_ids = model.to_tokens(prompt)["input_ids"]
    corrupt_ids = model.to_tokens(corrupt)["input_ids"]
    if clean_ids.shape != corrupt_ids.shape:
        raise ValueError("the name-swapped prompt tokenises to a different length; choose other names")

    def logit_diff(logits: torch.Tensor) -> torch.Tensor:  # (batch,) at the last position
        return logits[:, -1, io_id] - logits[:, -1, s_id]

    sites = [Site(Kind.RESID_PRE, layer) for layer in range(model.n_layers)]
    clean = model.run(clean_ids, capture=sites)
    dirty = model.run(corrupt_ids)
    ld_clean, ld_dirty = float(logit_diff(clean.logits)), float(logit_diff(dirty.logits))
    console.print(f"clean  {prompt!r}: logit diff {io!r} - {subject!r} = {ld_clean:+.3f}")
    console.print(f"corrupt {corrupt!r}: logit diff = {ld_dirty:+.3f}")

    # 3. batched patching sweep: one row of the batch per (layer, position)
    n_pos = clean_ids.shape[1]
    jobs = [(layer, pos) for layer in range(model.n_layers) for pos in range(n_pos)]
    recovered = torch.zeros(model.n_layers, n_pos)
    with Progress(console=console, transient=False) as bar:
        task = bar.add_task("patching clean residual stream into the corrupted run", total=len(jobs))
        for start in range(0, len(jobs), chunk):
            part = jobs[start:start + chunk]
            batch = corrupt_ids.expand(len(part), -1)
            ivs = [Patch(sites[layer], value=clean.cache[sites[layer]], rows=[i], positions=[pos])
                   for i, (layer, pos) in enumerate(part)]
            out = model.run(batch, interventions=ivs)
            frac = (logit_diff(out.logits) - ld_dirty) / (ld_clean - ld_dirty)
            for (layer, pos), f in zip(part, frac.tolist()):
                recovered[layer, pos] = f
            bar.advance(task, len(part))
    toks = model.to_str_tokens(clean_ids[0])
    show = [p for p in range(n_pos) if recovered[:, p].abs().max() > 0.2 or p == n_pos - 1]
    table = Table("layer", *[f"{p}:{toks[p]!r}" for p in show],
                  title="share of the logit difference restored by patching resid_pre (layer x position)")
    for layer in range(0, model.n_layers, 3):
        table.add_row(str(layer), *[f"{recovered[layer, p]:+.2f}" for p in show])
    console.print(table)

    # 4. heads attending from the last token to the indirect object
    io_pos = [i for i, t in enumerate(toks) if t == io][0]
    pats = model.run(clean_ids, capture=[Site(Kind.PATTERN, layer) for layer in range(model.n_layers)])
    att = torch.stack([pats.cache[Site(Kind.PATTERN, layer)][0, :, -1, io_pos] for layer in range(model.n_layers)])
    top = att.flatten().topk(5)
    table = Table("head", "attention last token -> indirect object", title="heads that look at the answer")
    for v, i in zip(top.values.tolist(), top.indices.tolist()):
        table.add_row(f"L{i // model.n_heads}H{i % model.n_heads}", f"{v:.3f}")
    console.print(table)
    console.print("[dim]The report and viewer (make demo, later issues) grow from these pieces.[/dim]")
    return {"logit_diff_clean": ld_clean, "logit_diff_corrupt": ld_dirty, "recovered": recovered}
