"""Attribution-graph adjacency against the brute-force reference of benchmarks/graph.py.

The reference writes the tiny model's frozen replacement out by hand (no hooks, no mechscope run
code) with one coefficient per source, and takes each target's row as the gradient of its input
with respect to the coefficients, one torch.autograd call per target. The benchmark reports the
same comparison as its `adjacency_vs_autograd` check; circuit-tracer is not needed here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from mechscope import graphs as G

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "graph.py"


def bench():
    name = "mechscope_bench_graph"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_adjacency_equals_the_autograd_jacobian_of_the_hand_written_frozen_model():
    b = bench()
    figures, checks = b.autograd_check()
    assert checks["adjacency_vs_autograd"]["pass"], checks
    assert figures["autograd_rel_error"] <= 1e-5
    assert figures["autograd_hand_forward_vs_model"] <= 1e-10  # the hand-written forward is the model's
    # at coefficients 1 and 0 the reference gives the graph's inputs and biases (float32 in the graph)
    assert figures["autograd_inputs_vs_graph"] <= 1e-5 and figures["autograd_bias_vs_graph"] <= 1e-5
    # not a vacuous comparison: many edges, latents on two layers, logits
    assert figures["autograd_edges_nonzero"] >= 1000 and figures["autograd_targets"] >= 50


def test_the_reference_tells_a_different_logit_convention_apart():
    b = bench()
    model, tcs, ids = b.tiny_case()
    rep = G.LocalReplacement.build(model.mechscope_adapter(), ids, tcs)
    g = G.attribute(rep, demean=False)  # raw logits; the reference reads logits minus their mean
    keys = b.our_keys(g)
    ref = b.autograd_adjacency(model, ids, tcs, keys)
    logit_rows = [i for i, k in enumerate(keys) if k[0] == "logit"]
    latent_rows = [i for i, k in enumerate(keys) if k[0] == "latent"]
    diff = (g.adjacency.double() - ref["adjacency"]).abs()
    assert float(diff[logit_rows].max()) > 1e-3 * float(ref["adjacency"].abs().max())
    assert float(diff[latent_rows].max()) <= 1e-5 * float(ref["adjacency"].abs().max())


def test_node_keys_match_across_conventions():
    b = bench()
    model, tcs, ids = b.tiny_case()
    g = G.attribute(G.LocalReplacement.build(model.mechscope_adapter(), ids, tcs))
    keys = b.our_keys(g)
    assert len(set(keys)) == len(keys)
    # a reordering of the same nodes compares equal; a dropped node is counted
    perm = torch.randperm(len(keys), generator=torch.Generator().manual_seed(0))
    shuffled = g.adjacency[perm][:, perm]
    same = b.compare(g.adjacency, keys, shuffled, [keys[i] for i in perm.tolist()])
    assert same["rel_error"] == 0 and same["only_ours"] == 0 and same["only_reference"] == 0
    keep = perm[1:]
    fewer = b.compare(g.adjacency, keys, g.adjacency[keep][:, keep], [keys[i] for i in keep.tolist()])
    assert fewer["only_ours"] == 1 and fewer["common_nodes"] == len(keys) - 1
