"""Two SmolLM2-135M behaviours read from attribution graphs and tested by interventions in the real model.

The behaviours (`BEHAVIOURS`), each a template filled with 24 words (the answer's first token is
scored; prompts open with BOS, as the transcoders' training sequences did; the transcoders were not trained
on the BOS position, so it has no latents anywhere in the study: its MLP output stays whole, an error node):
- `antonyms`: `The opposite of "hot" is "` -> `cold`;
- `capitals`: `The capital of France is` -> ` Paris`.

Steps, per behaviour:
1. behaviour: the model's top-1 next token on every variant against the expected answer (accuracy);
2. graph: `graphs.attribute` on one variant (the first, "hot" / "France") through the transcoders
   given (layers without one are error nodes), pruned with `graphs.prune`; CPU seconds measured;
3. supernodes: the kept latents grouped by role (the prompt position they sit at, counted from the
   end: the word, the last token, ...) and layer band (`band` layers each); each supernode's
   influence on the target is the sum of its latents' (the pruned graph's influence), and what it
   writes is read through the unembedding (its latents' decoder rows, weighted by activation, times
   W_U: the tokens it promotes), and its top contexts among the prompts of both behaviours (a
   quick dashboard). The hypothesis is read off the strongest supernodes (printed, and saved with
   the result);
4. interventions, in the real model (not the replacement; every MLP and attention pattern live),
   on every variant, each latent edit written into the MLP output it belongs to (`code x W_dec` is
   added or removed at one position, the layer's error term untouched):
   - ablate a supernode (the `top_supernodes` strongest at the word's position or after it: in a
     causal model everything before the word is the same on every variant): its own latents (the
     graph's layer and index pairs) are set to zero at its role position wherever they are active
     on the variant (the share active is reported: latents of one word do not fire on another); the
     drop of the target's logit (minus the mean logit) is compared with the drop from as many other
     active latents drawn at random (seeded), at the same position and layers first, then, when those
     run out, at the same position in other layers, then at other positions after BOS: the control,
     the same size as the ablation (both sizes recorded); the first-order drop predicted by attribution
     (activation x gradient, one backward pass) is reported beside it, and the drop on the graph's
     own prompt alone;
   - patch the word: every latent at the word position in layers 0..`patch_to` takes its value on a
     contrasting variant (the next variant in the list, another word), the rest of the prompt as is;
     the shift of logit(contrast's answer) - logit(own answer), and how often the top-1 token
     becomes the contrast's answer.
   Means over variants with 95% bootstrap intervals (`core.bootstrap_ci`).

The checks' targets are fixed in `targets()` before any measurement (they are the same for both
behaviours); a refuted hypothesis fails its check, and the result line says so.

    python -m mechscope.studies.smol_graphs --transcoders runs/smollm2-tc [--layers 2,7,12,17,22,27] [--json]
        [--artifacts out] [--save FILE.json.gz]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.interventions import Replace
from ..core.progress import echo
from ..core.run import run
from ..core.score import bootstrap_ci
from ..core.site import Kind, Site
from . import result_line


@dataclass(frozen=True)
class Behaviour:
    """A template with one slot `{x}`, the variants (x, answer) and the roles of its positions.

    `roles` maps a role to its position counted from the end of the prompt (-1 the last token), so
    variants whose words take different numbers of tokens keep their roles aligned; `word` is the
    role whose latents the patching experiment swaps between variants.
    """

    name: str
    template: str
    pairs: tuple[tuple[str, str], ...]
    answer_prefix: str
    roles: tuple[tuple[str, int], ...]
    word: str = "word"

    def variants(self) -> list[tuple[str, str]]:
        """(prompt, answer text) of every variant."""
        return [(self.template.format(x=x), self.answer_prefix + a) for x, a in self.pairs]


ANTONYMS = Behaviour(
    "antonyms", 'The opposite of "{x}" is "',
    (("hot", "cold"), ("big", "small"), ("up", "down"), ("left", "right"), ("black", "white"), ("fast", "slow"),
     ("open", "closed"), ("happy", "sad"), ("old", "new"), ("good", "bad"), ("high", "low"), ("long", "short"),
     ("hard", "soft"), ("light", "dark"), ("rich", "poor"), ("early", "late"), ("true", "false"), ("in", "out"),
     ("wet", "dry"), ("heavy", "light"), ("strong", "weak"), ("full", "empty"), ("thick", "thin"), ("love", "hate")),
    "", (("last", -1), ("is", -2), ("close-quote", -3), ("word", -4), ("open-quote", -5), ("of", -6),
         ("opposite", -7), ("the", -8)))

CAPITALS = Behaviour(
    "capitals", "The capital of {x} is",
    (("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
     ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("England", "London"), ("Greece", "Athens"),
     ("Canada", "Ottawa"), ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Ireland", "Dublin"),
     ("Portugal", "Lisbon"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Turkey", "Ankara"),
     ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"), ("Thailand", "Bangkok"), ("Iran", "Tehran"),
     ("Belgium", "Brussels")),
    " ", (("last", -1), ("word", -2), ("of", -3), ("capital", -4), ("the", -5)))

BEHAVIOURS = {b.name: b for b in (ANTONYMS, CAPITALS)}


@dataclass(frozen=True)
class SmolGraphsConfig:
    """Settings of the study (all seeded)."""

    studies: tuple[str, ...] = ("antonyms", "capitals")
    model: str = "smollm2-135m"
    graph_variant: int = 0  # the variant whose graph is built
    band: int = 6  # layers per supernode band
    top_supernodes: int = 4  # supernodes ablated (by influence)
    node_threshold: float = 0.8
    edge_threshold: float = 0.98
    memory_gb: float = 4.0
    batch: int = 64
    patch_to: int | None = None  # the word's latents are patched in layers 0..patch_to (None: every layer)
    layers: tuple[int, ...] | None = None  # the transcoded layers used (None: every one given)
    bos: bool = True  # prompts open with BOS, as the transcoders' training sequences did (BOS itself: no latents)
    n_boot: int = 1000
    seed: int = 0
    threads: int = 1


def targets() -> dict[str, str]:
    """The checks' targets, fixed before measuring (the same for every behaviour).

    The ablation's supernode is the strongest one at the varying word's position or after it (the word
    and the later template tokens): the model is causal, so every position before the word is the same on
    every variant, and a supernode there says nothing about which answer it is. The control ablates as
    many random active latents as the supernode's (size-matched): at the same position and layers first,
    then, when those run out, at the same position in other transcoded layers, then at other positions
    (never BOS, which has no latents).

    Two changes were made after earlier measurements and are stated here: the first run (prompts without
    BOS) found the strongest supernode on the first token (`The`, the attention sink), so the rule excluded
    the first position; that rule was too weak (every token before the word is equally
    fixed, and the control was smaller than the ablation), giving the rule above. Both were fixed before
    the results they apply to were measured."""
    return {"accuracy": "top-1 accuracy >= 0.6 over the variants (the behaviour exists)",
            "ablation": "ablating the strongest supernode at the word's position or after it (its latents, where "
                        "active) lowers the target logit more than ablating as many random active latents "
                        "(same place first, then other layers, then other positions), over the variants (paired "
                        "difference > 0, 95% CI above 0)",
            "patch_shift": "patching the word's latents from a contrasting variant raises logit(contrast answer) "
                           "- logit(own answer) (mean shift > 0, 95% CI above 0)",
            "patch_flip": "the patched top-1 token is the contrast's answer in >= 50% of the variants"}


# --- the model and its latents ---------------------------------------------------------------------------

@dataclass
class Latents:
    """The model with its transcoder latents (`graphs.latent_layers`), and the three operations the
    experiments need: codes, attribution, and edited runs."""

    model: Any
    layers: dict  # layer -> graphs.LatentLayer
    W_U: Tensor  # (d_model, vocab)
    n_layers: int = 0
    bos: bool = False  # prompts open with the tokenizer's BOS token (no latent is active there)

    @staticmethod
    def of(model: Any, transcoders: dict, bos: bool = False) -> "Latents":
        """The latents of `transcoders` (layer -> transcoder) on `model`, with its unembedding."""
        from ..graphs import latent_layers

        w = model.weights()
        d_model = int(w.W_E.shape[1])
        n_layers = sum(1 for s in model.sites() if s.kind is Kind.MLP_OUT)
        return Latents(model, latent_layers(model, transcoders, d_model), w.W_U.detach(), n_layers, bos)

    def ids(self, text: str) -> Tensor:
        """(1, pos) token ids of `text`, BOS first when the study uses it."""
        return self.model.to_tokens(text, prepend_bos=self.bos)["input_ids"]

    def encode(self, l: int, x: Tensor) -> Tensor:
        """(pos, n) codes of layer `l` from its MLP input `x` (pos, d_model); with BOS, the first position's
        are zero (the transcoders were not trained there, and the graphs leave it to its MLP: an error)."""
        c = self.layers[l].encode(x).to(self.layers[l].W_enc.dtype)
        if self.bos:
            c = c.clone()
            c[:1] = 0
        return c

    def codes(self, ids: Tensor) -> dict[int, Tensor]:
        """layer -> (pos, n) codes of the clean run."""
        res = run(self.model, ids, capture=[lat.reads for lat in self.layers.values()])
        return {l: self.encode(l, res.cache[lat.reads][0]) for l, lat in self.layers.items()}

    def attribution(self, ids: Tensor, target: int) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        """(codes, scores): layer -> (pos, n); `scores[l][p, f] = code x <W_dec[f], d metric / d mlp_out[l][p]>`,
        the first-order effect of the latent on the target's logit minus the mean logit (what removing it
        would lower that by, to first order)."""
        sites = [Site(Kind.MLP_OUT, l) for l in self.layers]
        res = run(self.model, ids, capture=sites + [lat.reads for lat in self.layers.values()],
                  grad=lambda out: demeaned(_logits(out)[0, -1], target))
        codes, scores = {}, {}
        for l, lat in self.layers.items():
            c = self.encode(l, res.cache[lat.reads][0].detach())
            g = res.grads[Site(Kind.MLP_OUT, l)][0].to(c.dtype)  # (pos, d)
            codes[l] = c
            scores[l] = c * (g @ lat.W_dec[l].to(c.dtype).t())
        return codes, scores

    def edited(self, ids: Tensor, edit: Callable[[int, Tensor], Tensor | None]) -> Tensor:
        """Last-position logits with each transcoded layer's MLP output changed by `delta @ W_dec`, where
        delta (pos, n) = edit(layer, live codes (pos, n)) (None: no change). Codes are read live, so an
        earlier edit changes later layers' codes."""
        live: dict[int, Tensor] = {}

        def reader(l: int):
            def fn(x: Tensor, ctx) -> Tensor:
                live[l] = self.encode(l, x[0])
                return x
            return fn

        def writer(l: int):
            def fn(x: Tensor, ctx) -> Tensor:
                d = edit(l, live[l])
                if d is None:
                    return x
                return x + (d @ self.layers[l].W_dec[l].to(d.dtype)).to(x)[None]
            return fn

        ivs = [Replace(lat.reads, fn=reader(l)) for l, lat in self.layers.items()]
        ivs += [Replace(Site(Kind.MLP_OUT, l), fn=writer(l)) for l in self.layers]
        return _logits(run(self.model, ids, interventions=ivs).logits)[0, -1].double()

    def clean(self, ids: Tensor) -> Tensor:
        """(vocab,) the model's own logits at the last position, float64."""
        return _logits(run(self.model, ids).logits)[0, -1].double()


def _logits(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else x.logits


def demeaned(logits: Tensor, token: int) -> Tensor:
    """The logit of `token` minus the mean logit (what the graph's logit nodes measure)."""
    return logits[..., token] - logits.mean(-1)


def answer_id(model: Any, answer: str) -> int:
    """The first token of `answer` (the token the model must put first)."""
    ids = model.tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"answer {answer!r} has no tokens")
    return int(ids[0])


def study_transcoders(path: str | Path, model: Any, partial: bool = False, log: Any = echo) -> dict:
    """layer -> transcoder from `path` (`graphs.load_transcoders`). With `partial`, a transcoder set still being
    trained gives the layers it has finished (each file's digest checked, the set's model fingerprint against
    `model`'s); the other layers are error nodes in the graphs and untouched by the interventions."""
    from ..dictionaries.files import read_json
    from ..dictionaries.transcoder_set import MANIFEST, load_finished_layers
    from ..graphs import load_transcoders

    path = Path(path)
    man = path / MANIFEST
    if not (partial and man.is_file()) or read_json(man).get("trained"):
        return load_transcoders(path, adapter=model)
    done = load_finished_layers(path, model)
    log(f"{path} is still being trained: using its finished layers {sorted(done)}")
    return done


# --- 1. behaviour -------------------------------------------------------------------------------------

def behaviour(lat: Latents, beh: Behaviour) -> list[dict[str, Any]]:
    """Per variant: prompt, answer, target id, top-1 token, whether it is right, the answer's probability."""
    rows = []
    for prompt, ans in beh.variants():
        ids = lat.ids(prompt)
        logits = lat.clean(ids)
        t = answer_id(lat.model, ans)
        top = int(logits.argmax())
        rows.append({"prompt": prompt, "answer": ans, "target": t, "top1": lat.model.tokenizer.decode([top]),
                     "correct": top == t, "prob": float(torch.softmax(logits, -1)[t]), "n_tokens": int(ids.shape[1])})
    return rows


# --- 2./3. graph and supernodes -----------------------------------------------------------------------

def role_of(beh: Behaviour, pos: int, n_tokens: int, bos: bool = False) -> str:
    """The role of absolute position `pos` in a prompt of `n_tokens` tokens ("bos" for a BOS token, "pos{pos}"
    when it has none)."""
    if bos and pos == 0:
        return "bos"
    for role, off in beh.roles:
        if pos == n_tokens + off:
            return role
    return f"pos{pos}"


def graph_of(lat: Latents, transcoders: dict, beh: Behaviour, variant: int, cfg: SmolGraphsConfig,
             name: str) -> tuple[Any, Any, dict[str, Any]]:
    """(graph, pruned, json doc) of one variant, targeted at its answer; the doc's scores hold the CPU seconds."""
    from .. import graphs as G

    prompt, ans = beh.variants()[variant]
    ids = lat.ids(prompt)
    c0, w0 = time.process_time(), time.monotonic()
    rep = G.LocalReplacement.build(lat.model, ids, transcoders, drop_first=int(lat.bos))  # BOS: all error
    g = G.attribute(rep, answer_id(lat.model, ans), memory_budget=cfg.memory_gb * 1e9, batch_size=cfg.batch,
                    token_text=lat.model.to_str_tokens(ids[0]), model_name=name)
    p = G.prune(g, cfg.node_threshold, cfg.edge_threshold)
    cpu, wall = time.process_time() - c0, time.monotonic() - w0
    scores = {**p.scores, "exactness": g.exactness, "linearity_error": g.linearity_error, "cpu_seconds": cpu,
              "seconds": wall, "threads": torch.get_num_threads()}
    return g, p, g.to_json(keep=p.keep, edges=p.edges, scores=scores, influence=p.influence)


def supernodes(lat: Latents, beh: Behaviour, g: Any, p: Any, band: int, top_tokens: int = 5) -> list[dict[str, Any]]:
    """The kept latents grouped by (role, layer band), strongest influence first; each with its latents,
    summed influence, the edges' weight it sends to the target logit and to other supernodes, and the
    tokens its decoder writes promote most (activation-weighted decoder rows through W_U)."""
    from ..graphs import NodeKind

    n_tok = len(g.tokens)
    groups: dict[tuple[str, int], dict[str, Any]] = {}
    member: dict[int, tuple[str, int]] = {}
    for i in p.keep.nonzero().flatten().tolist():
        n = g.nodes[i]
        if n.kind is not NodeKind.LATENT:
            continue
        key = (role_of(beh, n.pos, n_tok, lat.bos), n.layer // band)
        s = groups.setdefault(key, {"role": key[0], "pos": n.pos,
                                    "layers": [key[1] * band, key[1] * band + band - 1], "latents": [],
                                    "influence": 0.0})
        s["latents"].append([n.layer, n.pos, n.index, round(n.value, 4)])
        s["influence"] += float(p.influence[i])
        member[i] = key
    A = g.adjacency * p.edges
    logit = [i for i, n in enumerate(g.nodes) if n.kind is NodeKind.LOGIT and n.index == g.meta.get("target")]
    out = []
    for key, s in groups.items():
        ids = [i for i, k in member.items() if k == key]
        s["to_target"] = float(A[logit][:, ids].sum()) if logit else 0.0
        s["to"] = {}
        for j, k in member.items():
            if k != key:
                w = float(A[j, ids].sum())
                if w:
                    s["to"][f"{k[0]}@L{k[1] * band}-{k[1] * band + band - 1}"] = s["to"].get(
                        f"{k[0]}@L{k[1] * band}-{k[1] * band + band - 1}", 0.0) + w
        write = sum(float(a) * lat.layers[l].W_dec[l][f].double() for l, _, f, a in s["latents"])
        promo = (write @ lat.W_U.double()).topk(top_tokens).indices.tolist()
        s["promotes"] = [lat.model.tokenizer.decode([t]) for t in promo]
        s["name"] = f"{key[0]}@L{s['layers'][0]}-{s['layers'][1]}"
        s["size"] = len(s["latents"])
        out.append(s)
    return sorted(out, key=lambda s: -s["influence"])


def top_contexts(lat: Latents, sns: list[dict[str, Any]], texts: Sequence[str], top: int = 3) -> None:
    """Add to each supernode its `top` contexts among `texts` (the prompts of every behaviour: a quick dashboard
    of what it stands for): where the sum of its latents' codes is largest, the token marked [like this] after
    the text before it."""
    if not sns or not texts:
        return
    tok = lat.model.tokenizer
    layers = sorted({l for s in sns for l, _, _, _ in s["latents"]})
    found: list[list[tuple[float, str]]] = [[] for _ in sns]
    for text in texts:
        ids = lat.ids(text)
        res = run(lat.model, ids, capture=[lat.layers[l].reads for l in layers])
        codes = {l: lat.encode(l, res.cache[lat.layers[l].reads][0]) for l in layers}
        for s, acc in zip(sns, found):
            act = sum(codes[l][:, f].double() for l, f in {(l, f) for l, _, f, _ in s["latents"]})
            p = int(act.argmax())
            if float(act[p]) > 0:
                acc.append((float(act[p]), tok.decode(ids[0, :p].tolist()) + f"[{tok.decode([int(ids[0, p])])}]"))
    for s, acc in zip(sns, found):
        s["contexts"] = [[c, round(a, 3)] for a, c in sorted(acc, reverse=True)[:top]]


# --- 4. interventions ---------------------------------------------------------------------------------

def _mean_ci(values: Sequence[float], n_boot: int, seed: int) -> dict[str, Any]:
    v = [float(x) for x in values]
    return {"mean": sum(v) / len(v), "ci": list(bootstrap_ci(v, n_boot=n_boot, seed=seed)), "n": len(v)}


def ablate_supernode(lat: Latents, beh: Behaviour, sn: dict[str, Any], cfg: SmolGraphsConfig,
                     cache: dict[int, Any] | None = None) -> dict[str, Any]:
    """Per variant, zero the supernode's own latents (the graph's (layer, index) pairs) where they are active at
    its role position, and as many other active latents drawn at random (the control: at the same position and
    layers first, then the same position in other layers, then other positions, BOS never); the drops of the
    target's demeaned logit, and the first-order drop the attribution predicts for the supernode's latents."""
    rng = random.Random(cfg.seed)
    lo, hi = sn["layers"]
    layers = [l for l in lat.layers if lo <= l <= hi]
    own = {(l, f) for l, _, f, _ in sn["latents"]}
    off = dict(beh.roles).get(sn["role"])  # None: a position without a role
    drops, ctrl, kept, predicted, active, sizes = [], [], [], [], [], []
    for v, (prompt, ans) in enumerate(beh.variants()):
        ids = lat.ids(prompt)
        t = answer_id(lat.model, ans)
        if off is None and v != cfg.graph_variant:
            continue  # a supernode at a position without a role is tested on the graph's own prompt only
        pos = ids.shape[1] + off if off is not None else sn["pos"]
        cache = {} if cache is None else cache
        if v not in cache:  # (codes, scores, clean demeaned logit): the same for every supernode
            codes, scores = lat.attribution(ids, t)
            cache[v] = (codes, scores, float(demeaned(lat.clean(ids), t)))
        codes, scores, base = cache[v]
        chosen = [(l, pos, int(f)) for l in layers for f in codes[l][pos].nonzero().flatten() if (l, int(f)) in own]
        control = _control(rng, codes, chosen, pos, layers)
        sizes.append((len(chosen), len(control), sum(1 for l, p, _ in control if p == pos and l in layers)))
        predicted.append(sum(float(scores[l][p, f]) for l, p, f in chosen))
        active.append(len(chosen) / len(own))

        def zero(which: list[tuple[int, int, int]]) -> Callable[[int, Tensor], Tensor | None]:
            def edit(l: int, c: Tensor) -> Tensor | None:
                at = [(p, f) for ll, p, f in which if ll == l]
                if not at:
                    return None
                d = torch.zeros_like(c)
                ps, fs = [p for p, _ in at], [f for _, f in at]
                d[ps, fs] = -c[ps, fs]
                return d
            return edit

        after = lat.edited(ids, zero(chosen))
        drops.append(base - float(demeaned(after, t)))
        ctrl.append(base - float(demeaned(lat.edited(ids, zero(control)), t)))
        kept.append(int(after.argmax()) == t)
    diff = [a - b for a, b in zip(drops, ctrl)]
    return {"supernode": sn["name"], "latents": sn["size"], "active_share": sum(active) / len(active),
            "graph_prompt_drop": drops[0 if off is None else cfg.graph_variant],
            "graph_prompt_control": ctrl[0 if off is None else cfg.graph_variant],
            "drop": _mean_ci(drops, cfg.n_boot, cfg.seed),
            "control_drop": _mean_ci(ctrl, cfg.n_boot, cfg.seed), "difference": _mean_ci(diff, cfg.n_boot, cfg.seed),
            "predicted_drop": _mean_ci(predicted, cfg.n_boot, cfg.seed), "top1_kept": sum(kept) / len(kept),
            "ablated_mean": sum(a for a, _, _ in sizes) / len(sizes),
            "control_mean": sum(c for _, c, _ in sizes) / len(sizes),
            "control_same_place_mean": sum(c for _, _, c in sizes) / len(sizes),
            "per_variant": [round(x, 4) for x in drops]}


def _control(rng: random.Random, codes: dict[int, Tensor], chosen: list[tuple[int, int, int]], pos: int,
             layers: list[int]) -> list[tuple[int, int, int]]:
    """As many random active latents (layer, pos, index) as `chosen`, none of them in `chosen`: drawn at `pos` in
    `layers` first, then at `pos` in the other layers, then at the other positions (every position's codes: BOS
    has none)."""
    own, out = set(chosen), []
    tiers = ([(l, pos) for l in layers], [(l, pos) for l in codes if l not in layers],
             [(l, p) for l in codes for p in range(codes[l].shape[0]) if p != pos])
    for tier in tiers:
        need = len(chosen) - len(out)
        if need <= 0:
            break
        pool = [(l, p, int(f)) for l, p in tier for f in codes[l][p].nonzero().flatten()]
        pool = [x for x in pool if x not in own]
        out += rng.sample(pool, min(need, len(pool)))
    return out


def patch_word(lat: Latents, beh: Behaviour, cfg: SmolGraphsConfig) -> dict[str, Any]:
    """Per variant i, the word position's latents (layers 0..patch_to) take their values on variant i+1 (its
    contrast); the shift of logit(contrast answer) - logit(own answer), and the top-1 flips to the contrast."""
    var = beh.variants()
    off = dict(beh.roles)[beh.word]
    last = cfg.patch_to if cfg.patch_to is not None else lat.n_layers - 1
    shifts, flips, pairs = [], [], 0
    for i, (prompt, ans) in enumerate(var):
        j = (i + 1) % len(var)
        t, u = answer_id(lat.model, ans), answer_id(lat.model, var[j][1])
        if t == u:
            continue
        ids, cids = lat.ids(prompt), lat.ids(var[j][0])
        pos, cpos = ids.shape[1] + off, cids.shape[1] + off
        theirs = lat.codes(cids)

        def edit(l: int, c: Tensor) -> Tensor | None:
            if l > last:
                return None
            d = torch.zeros_like(c)
            d[pos] = theirs[l][cpos].to(c) - c[pos]
            return d

        clean = lat.clean(ids)
        after = lat.edited(ids, edit)
        shifts.append(float((after[u] - after[t]) - (clean[u] - clean[t])))
        flips.append(int(after.argmax()) == u)
        pairs += 1
    return {"layers": [0, last], "pairs": pairs, "shift": _mean_ci(shifts, cfg.n_boot, cfg.seed),
            "flip_rate": sum(flips) / max(pairs, 1), "per_variant": [round(x, 4) for x in shifts]}


# --- the study ----------------------------------------------------------------------------------------

def study_behaviour(lat: Latents, transcoders: dict, beh: Behaviour, cfg: SmolGraphsConfig, name: str,
                    log: Any = echo) -> dict[str, Any]:
    """Steps 1-4 for one behaviour; returns its figures (graph doc under "graph")."""
    rows = behaviour(lat, beh)
    acc = sum(r["correct"] for r in rows) / len(rows)
    log(f"[{beh.name}] accuracy {acc:.2f} over {len(rows)} variants; wrong: " +
        ", ".join(f"{r['prompt']!r}->{r['top1']!r}" for r in rows if not r["correct"]))
    g, p, doc = graph_of(lat, transcoders, beh, cfg.graph_variant, cfg, name)
    sc = doc["scores"]
    log(f"[{beh.name}] graph of {rows[cfg.graph_variant]['prompt']!r}: {len(g.nodes)} nodes, kept "
        f"{sc['kept_latents']} latents; replacement {sc['replacement']:.3f}, completeness {sc['completeness']:.3f}; "
        f"{sc['cpu_seconds']:.0f} CPU s")
    sns = supernodes(lat, beh, g, p, cfg.band)
    top_contexts(lat, sns[:8], [p for b in BEHAVIOURS.values() for p, _ in b.variants()] + [p for p, _ in beh.variants()
                                                                                        if beh.name not in BEHAVIOURS])
    for s in sns[:8]:
        log(f"  supernode {s['name']:<22} {s['size']:>3} latents  influence {s['influence']:.3f}  "
            f"to target {s['to_target']:+.3f}  promotes {s['promotes']}  top contexts "
            f"{[c[0] for c in s.get('contexts', [])]}")
    start = len(g.tokens) + dict(beh.roles)[beh.word]  # the word's position in the graph's prompt
    for s in sns:  # before the word, every variant's prompt is the same (a causal model): not tested (targets())
        s["from_word"] = s["pos"] >= start
    ablations, cache = [], {}
    tested = [s for s in sns if s["from_word"]]
    for s in tested[:cfg.top_supernodes]:
        a = ablate_supernode(lat, beh, s, cfg, cache)
        log(f"  ablate {a['supernode']:<22} active {a['active_share']:.2f}  drop {a['drop']['mean']:+.3f} "
            f"{_ci(a['drop'])}  control {a['control_drop']['mean']:+.3f} {_ci(a['control_drop'])}  predicted "
            f"{a['predicted_drop']['mean']:+.3f}  on the graph's prompt {a['graph_prompt_drop']:+.3f} (control "
            f"{a['graph_prompt_control']:+.3f})  top-1 kept {a['top1_kept']:.2f}")
        ablations.append(a)
    patch = patch_word(lat, beh, cfg)
    log(f"  patch {beh.word} latents from the contrast (layers {patch['layers']}): shift "
        f"{patch['shift']['mean']:+.3f} {_ci(patch['shift'])}, flips {patch['flip_rate']:.2f} of {patch['pairs']}")
    return {"behaviour": beh.name, "template": beh.template, "word": beh.word, "accuracy": acc, "variants": rows,
            "graph_prompt": rows[cfg.graph_variant]["prompt"], "graph_scores": sc, "supernodes": sns,
            "hypothesis": hypothesis(beh.word, sns), "ablations": ablations, "patch": patch, "graph": doc}


def _ci(x: dict[str, Any]) -> str:
    return f"[{x['ci'][0]:+.3f}, {x['ci'][1]:+.3f}]"


def hypothesis(word: str, sns: list[dict[str, Any]], top: int = 4) -> str:
    """The mechanism the graph suggests, in words, from its strongest supernodes (before any intervention)."""
    if not sns:
        return "the pruned graph keeps no latent: the path runs through error nodes"
    before = [s for s in sns if not s.get("from_word", s["pos"] != 0)][:1]
    rest = [s for s in sns if s.get("from_word", s["pos"] != 0)][:top]
    text = ""
    if before:
        text += (f"the strongest supernode before the {word} is {before[0]['name']} (influence "
                 f"{before[0]['influence']:.3f}; the same on every variant, not tested); ")
    parts = [f"{s['name']} ({s['size']} latents, influence {s['influence']:.3f}, edge weight to the answer "
             f"{s['to_target']:+.3f})" for s in rest]
    return (text + f"the strongest supernodes at the {word} or after it, each taken to support the answer (tested "
            "by ablation): " +
            "; ".join(parts) + "; the "
            f"{word} position's latents carry which answer it is (tested by patching them from another variant)")


def verdict(res: dict[str, Any]) -> list[str]:
    """What the interventions say of the hypothesis, one sentence per test, from the measured numbers."""
    out = []
    for a in res["ablations"]:
        d, c = a["difference"], a["control_drop"]
        said = ("supports the answer (confirmed)" if d["ci"][0] > 0 else
                "works against the answer: removing it raises the answer more than random latents do (refuted)"
                if d["ci"][1] < 0 else "no different from random latents (refuted)")
        small = ("control_mean" in a and a["control_mean"] < a["ablated_mean"])
        size = (f" (the control is smaller: {a['control_mean']:.1f} random latents for {a['ablated_mean']:.1f}: too "
                "few other active latents)" if small else "")
        out.append(f"{a['supernode']}: ablating its latents moves the answer's logit by {-a['drop']['mean']:+.3f}, as many "
                   f"random latents by {-c['mean']:+.3f} (drop minus control {d['mean']:+.3f}, 95% CI "
                   f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]){size}: {said}")
    p = res["patch"]
    s = p["shift"]
    out.append(f"patching the {res.get('word', 'word')} position's latents from another variant moves logit(other "
               f"answer) - logit(own answer) by {s['mean']:+.3f} (95% CI [{s['ci'][0]:+.3f}, {s['ci'][1]:+.3f}]) and "
               f"makes the other answer the top token in {p['flip_rate']:.0%} of {p['pairs']} variants: " +
               ("they carry which answer it is (confirmed)" if s["ci"][0] > 0 and p["flip_rate"] >= 0.5 else
                "they carry part of it, not enough to change the answer (the strong claim refuted)"
                if s["ci"][0] > 0 else "they do not carry which answer it is (refuted)"))
    return out


def checks_of(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The checks of one behaviour's figures against `targets()`."""
    tg, b = targets(), res["behaviour"]
    out = {f"{b}_accuracy": {"target": tg["accuracy"], "got": res["accuracy"], "pass": res["accuracy"] >= 0.6}}
    if res["ablations"]:
        a = res["ablations"][0]
        out[f"{b}_ablation"] = {"target": tg["ablation"] + f" ({a['supernode']})",
                                "got": f"{a['difference']['mean']:+.4f} {a['difference']['ci']}",
                                "pass": a["difference"]["ci"][0] > 0}
    else:
        out[f"{b}_ablation"] = {"target": tg["ablation"], "got": "no supernode kept", "pass": False}
    s = res["patch"]["shift"]
    out[f"{b}_patch_shift"] = {"target": tg["patch_shift"], "got": f"{s['mean']:+.4f} {s['ci']}", "pass": s["ci"][0] > 0}
    out[f"{b}_patch_flip"] = {"target": tg["patch_flip"], "got": res["patch"]["flip_rate"],
                              "pass": res["patch"]["flip_rate"] >= 0.5}
    return out


def run_study(transcoders: str | Any, config: SmolGraphsConfig = SmolGraphsConfig(), log: Any = echo,
              model: Any = None, artifacts: str | None = None,
              behaviours: Sequence[Behaviour] | None = None, partial: bool = False,
              save: str | Path | None = None) -> dict[str, Any]:
    """The whole study; `transcoders` is a directory (`graphs.load_transcoders`) or a dict layer -> transcoder.
    With `artifacts`, each graph and the study's tables are saved there under the model's name; with `save`,
    the result line and graphs go into that file (`save_result`: what the demo ships).
    `behaviours` replaces `config.studies` (another model's own behaviours, say); `partial` accepts a transcoder
    set still being trained (`study_transcoders`)."""
    torch.set_num_threads(config.threads)
    t0 = time.process_time()
    if model is None:
        from ..models.load import load

        model = load(config.model)
    name = getattr(model, "name", config.model)
    tcs = transcoders if isinstance(transcoders, dict) else study_transcoders(transcoders, model, partial, log)
    if config.layers is not None:
        missing = sorted(set(config.layers) - set(tcs))
        if missing:
            raise ValueError(f"layers {missing} have no transcoder (given: {sorted(tcs)})")
        tcs = {l: tcs[l] for l in config.layers}
    lat = Latents.of(model, tcs, config.bos)
    log(f"{name}: transcoders at layers {sorted(lat.layers)} of {lat.n_layers}")
    results, checks = {}, {}
    if behaviours is None:
        unknown = [k for k in config.studies if k not in BEHAVIOURS]
        if unknown:
            raise ValueError(f"unknown studies {unknown}; choose from {sorted(BEHAVIOURS)}")
        behaviours = [BEHAVIOURS[k] for k in config.studies]
    for beh in behaviours:
        res = study_behaviour(lat, tcs, beh, config, name, log)
        results[beh.name] = res
        checks.update(checks_of(res))
    figures = {"transcoded_layers": sorted(lat.layers), "targets": targets(), "cpu_seconds": time.process_time() - t0,
               "studies": {k: {kk: vv for kk, vv in v.items() if kk != "graph"} for k, v in results.items()}}
    out = result_line("smol_graphs", "replication", {**asdict(config), "model": name, "transcoders": str(transcoders)
                                                     if not isinstance(transcoders, dict) else "given"}, figures, checks)
    graphs = {k: v["graph"] for k, v in results.items()}
    if artifacts is not None:
        save_artifacts(artifacts, out, graphs)
    if save is not None:
        save_result(save, out, graphs)
    return out


COMMAND = "python -m mechscope.studies.smol_graphs --transcoders DIR --artifacts OUT"


def sections(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One behaviour's figures as report sections: behaviour, graph and supernodes, interventions."""
    b, sc = res["behaviour"], res["graph_scores"]
    wrong = [[r["prompt"], r["answer"], r["top1"], round(r["prob"], 3)] for r in res["variants"] if not r["correct"]]
    abl = [[a["supernode"], a["latents"], round(a["active_share"], 3), round(a["graph_prompt_drop"], 4),
            round(a["graph_prompt_control"], 4), _fmt(a["drop"]), _fmt(a["control_drop"]), _fmt(a["difference"]),
            _fmt(a["predicted_drop"]), round(a["top1_kept"], 3),
            f"{a['ablated_mean']:.1f} / {a['control_mean']:.1f}" + (f" ({a['control_same_place_mean']:.1f} at the same "
            "place)" if "control_same_place_mean" in a else "") if "control_mean" in a else "not recorded"]
           for a in res["ablations"]]
    p = res["patch"]
    return [
        {"heading": f"{b}: behaviour", "text": f"template {res['template']!r}; top-1 accuracy {res['accuracy']:.3f} over "
         f"{len(res['variants'])} variants", "tables": [{"caption": "variants the model gets wrong",
                                                           "columns": ["prompt", "answer", "top-1", "p(answer)"],
                                                           "rows": wrong}]},
        {"heading": f"{b}: attribution graph and hypothesis",
         "text": f"graph of {res['graph_prompt']!r} (graphs/smol-{b}): replacement {sc['replacement']:.3f}, "
                 f"completeness {sc['completeness']:.3f}, {sc['kept_latents']} latents kept of {sc['latents']}, "
                 f"{sc['cpu_seconds']:.0f} CPU seconds. Hypothesis (read from the graph before any intervention): "
                 f"{hypothesis(res.get('word', 'word'), res['supernodes'])}",
         "tables": [{"caption": "supernodes (kept latents by role and layer band), strongest first",
                     "columns": ["supernode", "latents", "influence", "edge weight to target", "promotes",
                                 "top contexts (the studies' prompts)"],
                     "rows": [[s["name"], s["size"], round(s["influence"], 4), round(s["to_target"], 4),
                               " ".join(s["promotes"]), " | ".join(c[0] for c in s.get("contexts", []))]
                              for s in res["supernodes"][:10]]}]},
        {"heading": f"{b}: interventions in the real model",
         "text": "ablation: a supernode's own latents zeroed where active on every variant, against as many random "
                 "active latents at the same place (drops of the answer's logit minus the mean logit); patching: "
                 f"the {res.get('word', 'word')} position's latents (layers {p['layers'][0]}-{p['layers'][1]}) taken "
                 "from the next variant; means with 95% bootstrap intervals",
         "tables": [{"caption": "verdict", "columns": ["test and result"], "rows": [[v] for v in verdict(res)]},
                    {"caption": "ablations", "columns": ["supernode", "latents", "share active", "drop (graph's prompt)",
                                                         "control (graph's prompt)", "drop", "control drop", "difference",
                                                         "predicted drop", "top-1 kept",
                                                         "latents ablated / in the control (mean)"], "rows": abl},
                    {"caption": "patching the word from a contrasting variant",
                     "columns": ["pairs", "shift of logit(contrast) - logit(own)", "top-1 becomes the contrast's"],
                     "rows": [[p["pairs"], _fmt(p["shift"]), round(p["flip_rate"], 3)]]}]}]


def _fmt(x: dict[str, Any]) -> str:
    return f"{x['mean']:+.3f} [{x['ci'][0]:+.3f}, {x['ci'][1]:+.3f}]"


def save_artifacts(root: str | Path, line: dict[str, Any], graphs: dict[str, dict[str, Any]]) -> None:
    """Each behaviour's graph (graphs/smol-<behaviour>.json) and the study's tables (studies/smol-graphs.json),
    under the study's model, from its result line and graph documents (behaviour -> `to_json` dict)."""
    from ..artifacts import ArtifactWriter

    name = line["config"]["model"]
    studies = line["figures"]["studies"]
    m = ArtifactWriter(root).model(name)
    for key, res in studies.items():
        m.graph(f"smol-{key}", graphs[key], prompt=res["graph_prompt"])
    m.study("smol-graphs", f"{name}: attribution graphs of {', '.join(studies)}, tested by interventions",
            [sec for res in studies.values() for sec in sections(res)], checks=line["checks"],
            graphs=[f"smol-{k}" for k in studies], command=COMMAND)


SHIPPED = Path(__file__).parent / "shipped" / "smol_graphs.json.gz"


def save_result(path: str | Path, line: dict[str, Any], graphs: dict[str, dict[str, Any]]) -> Path:
    """The result line and the graphs in one gzipped JSON file (what the demo shows without the transcoders)."""
    import gzip

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tc = line["config"].get("transcoders")
    if tc:  # the transcoders' folder name only: the saved file names no path of the machine it was made on
        line = {**line, "config": {**line["config"], "transcoders": Path(str(tc)).name}}
    text = json.dumps({"schema": "mechscope.smol_graphs/1", "line": line, "graphs": graphs}, default=float)
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        fh.write(text)
    tmp.replace(path)
    return path


def load_result(path: str | Path = SHIPPED) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(result line, graphs) from a file `save_result` wrote (default: the results shipped in the package)."""
    import gzip

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `{COMMAND} --save {path}` to make it")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        doc = json.load(fh)
    if doc.get("schema") != "mechscope.smol_graphs/1":
        raise ValueError(f"{path} is not a saved SmolLM2 graph study (schema {doc.get('schema')!r})")
    return doc["line"], doc["graphs"]


def merge_results(paths: Sequence[str | Path]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """One result line and graph set from several `save_result` files of the same model (behaviours run in
    separate processes): studies and checks joined, CPU seconds added; a behaviour in two files is refused."""
    lines, graphs = [], {}
    for p in paths:
        line, g = load_result(p)
        twice = sorted(set(g) & set(graphs))
        if twice:
            raise ValueError(f"{p} repeats the studies {twice}")
        lines.append(line)
        graphs.update(g)
    models = {ln["config"]["model"] for ln in lines}
    if len(models) != 1:
        raise ValueError(f"the files hold studies of different models: {sorted(models)}")
    first = lines[0]
    figures = {**first["figures"], "studies": {k: v for ln in lines for k, v in ln["figures"]["studies"].items()},
               "cpu_seconds": sum(ln["figures"]["cpu_seconds"] for ln in lines)}
    checks = {k: v for ln in lines for k, v in ln["checks"].items()}
    config = {**first["config"], "studies": list(figures["studies"])}
    line = {**first, "config": config, "figures": figures, "checks": checks,
            "pass": all(c["pass"] for c in checks.values())}
    return line, graphs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`python -m mechscope.studies.smol_graphs --transcoders DIR [--json] [--artifacts DIR] [--study NAME]`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--transcoders", help="SmolLM2 transcoders (a transcoder set or a directory)")
    p.add_argument("--merge", nargs="+", help="instead of running: join these --save files (behaviours run in "
                   "separate processes) into --save and --artifacts")
    p.add_argument("--json", action="store_true", help="print only the result line")
    p.add_argument("--artifacts", help="save the graphs and tables in this artifact directory")
    p.add_argument("--study", action="append", choices=sorted(BEHAVIOURS), help="one behaviour (repeatable)")
    d = SmolGraphsConfig
    p.add_argument("--band", type=int, default=d.band)
    p.add_argument("--memory-gb", type=float, default=d.memory_gb)
    p.add_argument("--patch-to", type=int, default=None)
    p.add_argument("--no-bos", action="store_true", help="prompts without BOS (the transcoders were trained with it)")
    p.add_argument("--layers", help="the transcoded layers to use, e.g. 0,2,4 (default: every one given)")
    p.add_argument("--n-boot", type=int, default=d.n_boot)
    p.add_argument("--save", help="also write the result line and graphs to this .json.gz file (the demo's "
                   f"saved copy is {SHIPPED.name} in the package)")
    p.add_argument("--partial", action="store_true", help="accept a transcoder set still being trained (its finished "
                   "layers)")
    a = p.parse_args(argv)
    if a.merge:
        line, graphs = merge_results(a.merge)
        if a.artifacts:
            save_artifacts(a.artifacts, line, graphs)
        if a.save:
            save_result(a.save, line, graphs)
        print(json.dumps(line, default=float))
        return line
    if not a.transcoders:
        p.error("give --transcoders DIR (or --merge FILES)")
    cfg = SmolGraphsConfig(studies=tuple(a.study) if a.study else d.studies, band=a.band, memory_gb=a.memory_gb,
                           patch_to=a.patch_to, n_boot=a.n_boot,
                           layers=tuple(int(x) for x in a.layers.split(",")) if a.layers else None, bos=not a.no_bos)
    out = run_study(a.transcoders, cfg, log=(lambda *_: None) if a.json else echo, artifacts=a.artifacts,
                    partial=a.partial, save=a.save)
    print(json.dumps(out, default=float))
    return out


if __name__ == "__main__":  # pragma: no cover
    main()
