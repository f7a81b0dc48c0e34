#!/usr/bin/env python
"""graph: attribution graphs, mechscope against circuit-tracer 0.5.0 and against brute-force autograd.

1. circuit-tracer (its TransformerLens backend) on SmolLM2-135M, the same weights, transcoders and
   prompt for both. circuit-tracer's `from_pretrained` takes only TransformerLens's list of official
   names (SmolLM2 is not on it, and a local directory is refused) and downloads from the model hub,
   so its model is built the way `from_pretrained_and_transcoders` builds one, from parts that run
   offline: TransformerLens's own Llama config and weight conversion of the Hugging Face model
   mechscope wraps, then circuit-tracer's `_configure_replacement_model` (its freezing hooks).
   Transcoders: mechscope TopK transcoders with random weights (seeded) on every layer (circuit-tracer
   needs one per layer), copied into circuit-tracer `SingleLayerTranscoder`s whose activation is
   circuit-tracer's `TopK(k)` followed by a ReLU, because mechscope's TopK keeps the ReLU of the k
   largest pre-activations: both libraries compute the same codes. circuit-tracer's encoders read
   `mlp.hook_in` (the MLP's input: RMSNorm's output times its gain; `ln2.hook_normalized` is before
   the gain) and write `mlp.hook_out`, mechscope's read `ln2.L` and write `mlp_out.L`.

   Nodes are matched by key: latents (layer, position, index), errors (layer, position), tokens
   (position), logits (vocabulary id). Both read a logit node as the logit minus the mean logit and
   choose the same logits (top ones up to 95% probability, at most 10). circuit-tracer drops the
   latents of position 0 and zeroes its error vectors there (its BOS convention, `zero_positions`);
   the main comparison sets `zero_positions` to an empty slice so the node sets are the same, a
   second one keeps its default and compares the nodes both have except the position-0 error nodes
   (circuit-tracer's are zero by design, mechscope's hold the whole MLP output there).

2. A brute-force reference on a tiny three-layer LayerNorm transformer (float64, transcoders on
   layers 0 and 2, layer 1 left as error): its frozen replacement written out by hand (no hooks,
   no mechscope run code: attention patterns and norm divisors from a hand-written real run), each
   source scaled by its own coefficient, and every target's row of the adjacency the gradient of its
   input with respect to the coefficients, one torch.autograd call per target. Independent of
   circuit-tracer; it always runs.

Time: the CPU seconds (1 thread) of a graph from the token ids, mechscope's `LocalReplacement.build`
plus `attribute` against circuit-tracer's `attribute`, both with 64 rows per backward pass
(circuit-tracer's default of 512 runs its forward pass on 512 copies of the prompt), model loading
excluded, the two back to back in an order that alternates per round; the median of the per-round
ratios ours / circuit-tracer. The requirement asks for the ratio, so it is a figure, not a check.
Memory: after the timed rounds, one more graph each, the peak RSS (VmHWM, reset before the call)
above the RSS at the call's start, while the result is held.

Checks (targets set before measuring): adjacency on the common nodes, max |A_ours - A_ct| / max |A_ct|
<= 1e-3, in both conventions; the same node sets when position 0 is kept; adjacency against the
autograd reference <= 1e-5 (relative to its largest entry). The last line printed is the result
line (benchmarks/README.md).

Usage:  bash benchmarks/setup_env.sh ct
        .venv-ct/bin/python benchmarks/graph.py [--rounds N] [--k K] [--d-sae N] [--prompt TEXT] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from _machine import cpu_snapshot, other_cpu_share, progress, result_line  # noqa: E402
from _machine import main as _main  # noqa: E402
from core_overhead import current_rss_bytes, peak_rss_bytes, reset_peak_rss  # noqa: E402

NAME = "graph"
TOLERANCE_CT = 1e-3
TOLERANCE_AUTOGRAD = 1e-5


# --- node keys ---------------------------------------------------------------------------------
def our_keys(graph) -> list[tuple]:
    """One key per node of a mechscope AttributionGraph, in its order."""
    out = []
    for n in graph.nodes:
        kind = n.kind.value
        out.append((kind, n.layer if kind in ("latent", "error") else None,
                    n.pos if kind != "logit" else None, n.index if kind in ("latent", "logit") else None))
    return out


def ct_keys(graph, n_layers: int, n_pos: int) -> list[tuple]:
    """One key per node of a circuit-tracer Graph, in its order: features, errors, tokens, logits."""
    feats = [("latent", int(l), int(p), int(f)) for l, p, f in graph.active_features[graph.selected_features].tolist()]
    errors = [("error", l, p, None) for l in range(n_layers) for p in range(n_pos)]
    tokens = [("token", None, p, None) for p in range(n_pos)]
    logits = [("logit", None, None, int(t.vocab_idx)) for t in graph.logit_targets]
    return feats + errors + tokens + logits


def compare(A: Tensor, a_keys: list[tuple], B: Tensor, b_keys: list[tuple], leave_out=lambda key: False) -> dict:
    """max |A - B| / max |B| over the nodes both have (edges between them), with the counts."""
    ia = {k: i for i, k in enumerate(a_keys)}
    ib = {k: i for i, k in enumerate(b_keys)}
    common = [k for k in b_keys if k in ia and not leave_out(k)]
    sa = torch.tensor([ia[k] for k in common])
    sb = torch.tensor([ib[k] for k in common])
    a, b = A[sa][:, sa].double(), B[sb][:, sb].double()
    scale = float(b.abs().max())
    return {"common_nodes": len(common), "only_ours": sum(k not in ib for k in a_keys),
            "only_reference": sum(k not in ia for k in b_keys), "max_abs_reference": scale,
            "max_abs_diff": float((a - b).abs().max()), "rel_error": float((a - b).abs().max()) / max(scale, 1e-30),
            "edges_compared": int(a.numel())}


# --- the brute-force reference on a tiny model -------------------------------------------------------
def tiny_case(seed: int = 0):
    """A three-layer LayerNorm TinyTransformer (float64, random norm gains and biases), transcoders on layers
    0 and 2 (top-4 of 24, random biases) and a 9-token prompt."""
    from mechscope.dictionaries.transcoder import Transcoder, TranscoderConfig
    from mechscope.models.tiny import TinyConfig, TinyTransformer

    torch.manual_seed(seed)
    model = TinyTransformer(TinyConfig(n_layers=3, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=16, d_vocab=40,
                                       act="gelu", layer_norm=True))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.add_(0.3 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.add_(0.3 * torch.randn(mod.bias.shape, generator=g))
    tcs = {}
    for layer in (0, 2):
        tc = Transcoder(TranscoderConfig(d_in=16, d_sae=24, d_out=16, k=4, seed=seed + layer, site=f"ln2.{layer}",
                                         site_out=f"mlp_out.{layer}"))
        with torch.no_grad():
            tc.W_dec.mul_(0.5)
            tc.b_enc.copy_(0.2 * torch.randn(24, generator=g))
            tc.b_dec.copy_(0.1 * torch.randn(16, generator=g))
        tcs[layer] = tc.double().eval()
    ids = torch.randint(0, 40, (1, 9), generator=g)
    return model.double().eval(), tcs, ids


def _norm(ln: torch.nn.LayerNorm, x: Tensor, divisor: Tensor) -> Tensor:
    """LayerNorm with a given divisor (the real run's sqrt(var + eps), held fixed in the replacement)."""
    return (x - x.mean(-1, keepdim=True)) / divisor * ln.weight + ln.bias


def _divisor(ln: torch.nn.LayerNorm, x: Tensor) -> Tensor:
    return ((x - x.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()


def _real_run(model, ids: Tensor) -> dict:
    """The model's forward pass written out: patterns, norm divisors, MLP inputs and outputs, logits (one prompt)."""
    cfg = model.cfg
    n = ids.shape[1]
    resid = model.embed.weight[ids[0]] + model.pos_embed.weight[:n]  # (pos, d_model)
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    run = {"pattern": [], "div1": [], "div2": [], "mlp_in": [], "mlp_out": []}
    for block in model.blocks:
        d1 = _divisor(block.ln1, resid)
        x = _norm(block.ln1, resid, d1)
        a = block.attn
        q = (x @ a.W_Q.weight.T + a.W_Q.bias).view(n, cfg.n_heads, cfg.d_head)
        k = (x @ a.W_K.weight.T + a.W_K.bias).view(n, cfg.n_heads, cfg.d_head)
        v = (x @ a.W_V.weight.T + a.W_V.bias).view(n, cfg.n_heads, cfg.d_head)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(cfg.d_head)
        pattern = scores.masked_fill(future, -torch.inf).softmax(-1)  # (head, pos, kpos)
        resid = resid + torch.einsum("hqk,khd->qhd", pattern, v).reshape(n, -1) @ a.W_O.weight.T + a.W_O.bias
        d2 = _divisor(block.ln2, resid)
        x2 = _norm(block.ln2, resid, d2)
        m = block.mlp
        out = m.act(x2 @ m.W_in.weight.T + m.W_in.bias) @ m.W_out.weight.T + m.W_out.bias
        resid = resid + out
        for key, value in zip(run, (pattern, d1, d2, x2, out)):
            run[key].append(value)
    run["div_final"] = _divisor(model.ln_final, resid)
    run["logits"] = _norm(model.ln_final, resid, run["div_final"]) @ model.unembed.weight.T + model.unembed.bias
    return run


@torch.no_grad()
def _no_grad_real_run(model, ids):
    return _real_run(model, ids)


def autograd_adjacency(model, ids: Tensor, transcoders: dict, keys: list[tuple]) -> dict:
    """The adjacency over the nodes `keys` (as `our_keys` gives them) by brute force.

    The frozen replacement of `model` on `ids`, written out by hand: attention patterns and norm
    divisors from `_real_run`, every MLP with a transcoder replaced by its latents' writes (code x decoder
    row, codes fixed at the real run's) plus its error term, every other MLP by its error term (its whole
    output). Each source (token embedding, active latent, error term) enters multiplied by its own
    coefficient c_s = 1, and row t of the adjacency is d input(t) / d c, one torch.autograd.grad call per
    target t (latent pre-activations; logits minus their mean at the last position). Also returns the
    inputs at c = 1 (they must be the real run's) and at c = 0 (the targets' biases).
    """
    n = ids.shape[1]
    real = _no_grad_real_run(model, ids)
    codes = {l: tc.encode(real["mlp_in"][l]).detach() for l, tc in transcoders.items()}  # (pos, d_sae)
    errors = {}
    for l in range(len(model.blocks)):
        write = codes[l] @ transcoders[l].W_dec.detach() + transcoders[l].b_dec.detach() if l in transcoders else 0
        errors[l] = real["mlp_out"][l] - write
    index = {k: i for i, k in enumerate(keys)}
    latents = {l: [(p, f) for p, f in codes[l].nonzero().tolist()] for l in transcoders}
    found = {("latent", l, p, f) for l in latents for p, f in latents[l]}
    want = {k for k in keys if k[0] == "latent"}
    if found != want:
        raise AssertionError(f"the active latents differ: {len(found - want)} only here, {len(want - found)} only in "
                             "the graph")
    logits = [k[3] for k in keys if k[0] == "logit"]
    targets = [k for k in keys if k[0] in ("latent", "logit")]

    def inputs(c: Tensor) -> Tensor:
        """Every target's input, in `targets` order, as a function of the source coefficients c (N,)."""
        resid = c[[index[("token", None, p, None)] for p in range(n)]][:, None] * model.embed.weight[ids[0]] \
            + model.pos_embed.weight[:n]
        pre: dict[tuple, Tensor] = {}
        for l, block in enumerate(model.blocks):
            a = block.attn
            x = _norm(block.ln1, resid, real["div1"][l])
            v = (x @ a.W_V.weight.T + a.W_V.bias).view(n, model.cfg.n_heads, model.cfg.d_head)
            resid = resid + torch.einsum("hqk,khd->qhd", real["pattern"][l], v).reshape(n, -1) @ a.W_O.weight.T \
                + a.W_O.bias
            x2 = _norm(block.ln2, resid, real["div2"][l])
            err = c[[index[("error", l, p, None)] for p in range(n)]][:, None] * errors[l]
            out = err
            if l in transcoders:
                tc = transcoders[l]
                out = out + tc.b_dec.detach()
                for p, f in latents[l]:
                    pre[("latent", l, p, f)] = x2[p] @ tc.W_enc[:, f].detach() + tc.b_enc[f].detach()
                    row = torch.zeros(n, 1, dtype=x2.dtype)
                    row[p] = 1
                    out = out + row * (c[index[("latent", l, p, f)]] * codes[l][p, f] * tc.W_dec[f].detach())
            resid = resid + out
        final = _norm(model.ln_final, resid, real["div_final"])[-1] @ model.unembed.weight.T + model.unembed.bias
        for t in logits:
            pre[("logit", None, None, t)] = final[t] - final.mean()
        return torch.stack([pre[k] for k in targets])

    dtype = model.embed.weight.dtype
    with torch.no_grad():
        at_one = inputs(torch.ones(len(keys), dtype=dtype))
        at_zero = inputs(torch.zeros(len(keys), dtype=dtype))
    c = torch.ones(len(keys), dtype=dtype, requires_grad=True)
    y = inputs(c)
    A = torch.zeros(len(keys), len(keys), dtype=dtype)
    for i, k in enumerate(targets):
        (row,) = torch.autograd.grad(y[i], c, retain_graph=i + 1 < len(targets))
        A[index[k]] = row
    return {"adjacency": A, "targets": targets, "inputs": at_one, "bias": at_zero, "real": real}


def autograd_check() -> tuple[dict, dict]:
    """mechscope's graph of the tiny case against `autograd_adjacency`: (figures, checks)."""
    from mechscope import graphs as G

    model, tcs, ids = tiny_case()
    with torch.no_grad():
        real_logits = model(ids)[0]
    rep = G.LocalReplacement.build(model.mechscope_adapter(), ids, tcs)
    g = G.attribute(rep, batch_size=16)
    keys = our_keys(g)
    ref = autograd_adjacency(model, ids, tcs, keys)
    cmp = compare(g.adjacency, keys, ref["adjacency"], keys)
    rows = torch.tensor([keys.index(k) for k in ref["targets"]])
    hand = float((ref["real"]["logits"] - real_logits).abs().max())
    exact = float((ref["inputs"] - g.inputs[rows].double()).abs().max())
    bias = float((ref["bias"] - g.bias[rows].double()).abs().max())
    figures = {"autograd_nodes": len(keys), "autograd_targets": len(ref["targets"]),
               "autograd_edges_nonzero": int((ref["adjacency"] != 0).sum()), "autograd_rel_error": cmp["rel_error"],
               "autograd_max_abs_diff": cmp["max_abs_diff"], "autograd_max_abs": cmp["max_abs_reference"],
               "autograd_hand_forward_vs_model": hand, "autograd_inputs_vs_graph": exact,
               "autograd_bias_vs_graph": bias}
    checks = {"adjacency_vs_autograd": {
        "target": f"<= {TOLERANCE_AUTOGRAD} (max |A_ours - A_autograd| / max |A_autograd|, tiny 3-layer LayerNorm "
                  "model, transcoders on layers 0 and 2; its hand-written forward within 1e-10 of the model's logits)",
        "got": cmp["rel_error"], "pass": cmp["rel_error"] <= TOLERANCE_AUTOGRAD and hand <= 1e-10}}
    progress(f"autograd reference: {len(keys)} nodes, relative error {cmp['rel_error']:.2e}")
    return figures, checks


# --- circuit-tracer on SmolLM2-135M --------------------------------------------------------------
def smollm2(tokenizer_dir: str):
    """(Hugging Face model in float32, tokenizer, directory) of SmolLM2-135M from mechscope's converted copy;
    the tokenizer is saved into `tokenizer_dir`, which must outlive the TransformerLens model built with it."""
    import transformers

    from mechscope.models.load import NAMED

    path = NAMED["smollm2-135m"]()
    config = transformers.AutoConfig.from_pretrained(path)
    # the directory is written by transformers 5 (rope_parameters); circuit-tracer pins transformers <= 4.57,
    # which reads rope_theta and would take its default of 10,000 instead of SmolLM2's 100,000
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    if rope is not None:
        config.rope_theta = rope
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch.float32).eval()
    # transformers 4.57 cannot read the tokenizer config transformers 5 wrote; tokenizer.json it can
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(Path(path) / "tokenizer.json"),
                                                bos_token="<|im_start|>", eos_token="<|im_end|>",
                                                unk_token="<|endoftext|>", pad_token="<|im_end|>")
    fast.save_pretrained(tokenizer_dir)  # TransformerLens reloads its tokenizer by name
    return hf, transformers.AutoTokenizer.from_pretrained(tokenizer_dir), Path(path)


def ct_transcoders(ours: dict, k: int):
    """circuit-tracer SingleLayerTranscoders with the weights of mechscope's TopK transcoders `ours`."""
    from circuit_tracer.transcoder import TranscoderSet
    from circuit_tracer.transcoder.activation_functions import TopK
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder

    out = {}
    for layer, tc in ours.items():
        d_sae, d_model = tc.W_enc.shape[1], tc.W_enc.shape[0]
        act = torch.nn.Sequential(TopK(k), torch.nn.ReLU())  # mechscope's TopK: ReLU of the k largest
        with torch.device("meta"):
            st = SingleLayerTranscoder(d_model, d_sae, act, layer, device=torch.device("meta"), dtype=torch.float32)
        st.load_state_dict({"W_enc": tc.W_enc.detach().T.contiguous(), "W_dec": tc.W_dec.detach().clone(),
                            "b_enc": tc.b_enc.detach().clone(), "b_dec": tc.b_dec.detach().clone()}, assign=True)
        out[layer] = st
    return TranscoderSet(out, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out")


def ct_model(hf, tokenizer, path: Path, transcoders):
    """circuit-tracer's TransformerLens replacement model of `hf`, built offline (see the module docstring)."""
    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    cfg = convert_hf_model_config(str(path))  # reads config.json of a local directory
    cfg.update(model_name="smollm2-135m", init_weights=False, dtype=torch.float32, device="cpu", n_ctx=256,
               rotary_base=hf.config.rope_theta, default_prepend_bos=False)
    cfg = HookedTransformerConfig.from_dict(cfg)
    model = TransformerLensReplacementModel(cfg, tokenizer=tokenizer)
    model.load_and_process_state_dict(convert_llama_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False)
    model._configure_replacement_model(transcoders)
    return model


def ct_comparison(args) -> tuple[dict, dict]:
    """(figures, checks) of mechscope against circuit-tracer on SmolLM2-135M."""
    import importlib.metadata as meta

    import mechscope as ms
    from attribution_graphs import random_transcoders
    from circuit_tracer import attribute as ct_attribute
    from mechscope import graphs as G

    # removed with the object, when this function returns or raises
    tokenizer_dir = tempfile.TemporaryDirectory(prefix="graph-bench-tokenizer-")
    hf, tokenizer, path = smollm2(tokenizer_dir.name)
    model = ms.wrap(hf)
    n_layers, d_model = hf.config.num_hidden_layers, hf.config.hidden_size
    ours = random_transcoders(model, n_layers, d_model, args.d_sae, args.k)
    ct = ct_model(hf, tokenizer, path, ct_transcoders(ours, args.k))
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(args.prompt, add_special_tokens=False).input_ids]])
    n_pos = ids.shape[1]
    with torch.no_grad():
        tl_vs_hf = float((ct(ids) - hf(ids).logits).abs().max())
    figures = {"circuit_tracer": meta.version("circuit-tracer"), "transformer_lens": meta.version("transformer-lens"),
               "transformers": meta.version("transformers"), "prompt": args.prompt, "tokens": n_pos,
               "layers": n_layers, "d_sae": args.d_sae, "k": args.k, "batch_size": args.batch,
               "tl_vs_hf_logits_max_abs": tl_vs_hf}
    progress(f"SmolLM2-135M, {n_pos} tokens, top-{args.k} of {args.d_sae} on {n_layers} layers; "
             f"TransformerLens vs Hugging Face logits {tl_vs_hf:.2e}")

    def ours_graph():
        rep = G.LocalReplacement.build(model, ids, ours)
        return rep, G.attribute(rep, batch_size=args.batch)

    def ct_graph():
        return ct_attribute(ids[0], ct, batch_size=args.batch)

    # the same node sets: circuit-tracer keeps position 0
    ct.zero_positions = slice(0, 0)
    times = {"ours": [], "ct": []}
    snap = cpu_snapshot()
    for r in range(args.rounds):
        order = ["ours", "ct"] if r % 2 == 0 else ["ct", "ours"]
        for who in order:
            c0, w0 = time.process_time(), time.monotonic()
            out = ours_graph() if who == "ours" else ct_graph()
            times[who].append((time.process_time() - c0, time.monotonic() - w0))
            if who == "ours":
                rep, g = out
            else:
                cg = out
        progress(f"round {r + 1}/{args.rounds}: ours {times['ours'][-1][0]:.2f} CPU s, "
                 f"circuit-tracer {times['ct'][-1][0]:.2f} CPU s")
    busy = other_cpu_share(snap)
    ok, ck = our_keys(g), ct_keys(cg, n_layers, n_pos)
    same = compare(g.adjacency, ok, cg.adjacency_matrix, ck)
    progress(f"position 0 kept: {same['common_nodes']} common nodes ({same['only_ours']} only ours, "
             f"{same['only_reference']} only circuit-tracer), relative error {same['rel_error']:.2e}")

    # circuit-tracer's default: position 0 has no latents and a zero error vector
    ct.zero_positions = slice(0, 1)
    cg0 = ct_graph()
    bos = compare(g.adjacency, ok, cg0.adjacency_matrix, ct_keys(cg0, n_layers, n_pos),
                  leave_out=lambda key: key[0] == "error" and key[2] == 0)
    progress(f"position 0 dropped (circuit-tracer's default): {bos['common_nodes']} common nodes, "
             f"relative error {bos['rel_error']:.2e}")

    # peak memory of one more graph each, above the RSS before the call (position 0 kept)
    ct.zero_positions = slice(0, 0)
    del cg0
    memory = {}
    for who, build in (("ours", ours_graph), ("ct", ct_graph)):
        gc.collect()
        reset_peak_rss()
        base = current_rss_bytes()
        held = build()
        memory[who] = (peak_rss_bytes() - base) / 2**20
        del held
    progress(f"peak memory above the call's start: ours {memory['ours']:.0f} MiB, "
             f"circuit-tracer {memory['ct']:.0f} MiB")

    acts = {k: n.value for k, n in zip(ok, g.nodes) if k[0] == "latent"}
    ct_acts = dict(zip(ck, cg.activation_values.tolist()))
    act_err = max((abs(acts[k] - ct_acts[k]) / max(abs(ct_acts[k]), 1e-30) for k in acts if k in ct_acts), default=0.0)
    ratios = [o[0] / c[0] for o, c in zip(times["ours"], times["ct"])]
    med = statistics.median
    figures |= {
        "nodes_ours": len(ok), "nodes_circuit_tracer": len(ck), "latents": sum(k[0] == "latent" for k in ok),
        "logit_nodes": sum(k[0] == "logit" for k in ok), "exactness": rep.exactness,
        "linearity_error": g.linearity_error, "activation_rel_error": act_err,
        **{f"same_nodes_{k}": v for k, v in same.items()}, **{f"bos_{k}": v for k, v in bos.items()},
        "cpu_s_ours": med(t[0] for t in times["ours"]), "cpu_s_ours_min": min(t[0] for t in times["ours"]),
        "cpu_s_ours_max": max(t[0] for t in times["ours"]), "cpu_s_ct": med(t[0] for t in times["ct"]),
        "cpu_s_ct_min": min(t[0] for t in times["ct"]), "cpu_s_ct_max": max(t[0] for t in times["ct"]),
        "wall_s_ours": med(t[1] for t in times["ours"]), "wall_s_ct": med(t[1] for t in times["ct"]),
        "time_ratio_ours_over_ct": med(ratios), "time_ratios": ratios, "rounds": args.rounds,
        "peak_mib_ours": memory["ours"], "peak_mib_ct": memory["ct"],
        "other_cpu_share": busy}
    equal_sets = same["only_ours"] == 0 and same["only_reference"] == 0
    checks = {
        "adjacency_vs_circuit_tracer": {
            "target": f"<= {TOLERANCE_CT} (max |A_ours - A_ct| / max |A_ct| on the common nodes, SmolLM2-135M, "
                      "position 0 kept in both)", "got": same["rel_error"], "pass": same["rel_error"] <= TOLERANCE_CT},
        "same_nodes_as_circuit_tracer": {
            "target": "the same latent, error, token and logit nodes (position 0 kept in both)",
            "got": f"{same['common_nodes']} common, {same['only_ours']} only ours, {same['only_reference']} only "
                   "circuit-tracer", "pass": equal_sets},
        "adjacency_vs_circuit_tracer_bos": {
            "target": f"<= {TOLERANCE_CT} (as above, circuit-tracer's default that drops position 0; its zeroed "
                      "position-0 error nodes left out)", "got": bos["rel_error"], "pass": bos["rel_error"] <= TOLERANCE_CT},
    }
    return figures, checks


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    figures, checks = autograd_check()
    try:
        import circuit_tracer  # noqa: F401
    except Exception as e:  # noqa: BLE001
        reason = f"could not run: circuit-tracer does not import ({type(e).__name__}: {e}); bash benchmarks/setup_env.sh ct"
        for name in ("adjacency_vs_circuit_tracer", "same_nodes_as_circuit_tracer", "adjacency_vs_circuit_tracer_bos"):
            checks[name] = {"target": "circuit-tracer comparison", "got": reason, "pass": False}
        return result_line(NAME, figures, checks, threads=1)
    ct_figures, ct_checks = ct_comparison(args)
    return result_line(NAME, figures | ct_figures, checks | ct_checks, threads=1)


def main() -> None:
    """Parse the options and print the result line."""
    _main(run, __doc__, {"--rounds": dict(type=int, default=5, help="timed rounds (each: one graph per library)"),
                         "--k": dict(type=int, default=8, help="latents per position and layer (TopK)"),
                         "--d-sae": dict(type=int, default=4608, help="latents per transcoder"),
                         "--batch": dict(type=int, default=64, help="rows per backward pass, both libraries"),
                         "--prompt": dict(default="The capital of France is",
                                          help="text after the BOS token")},
          quick={"rounds": 1}, quick_help="1 timed round (a smoke test)")


if __name__ == "__main__":
    main()
