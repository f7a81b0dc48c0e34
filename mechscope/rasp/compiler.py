"""Compile a RASP-style program into TinyTransformer weights, and say which edges carry what.

The residual stream holds one block of dimensions per s-op, one-hot over the s-op's values, plus
`one` (1 at every position) and `bos` (1 at position 0, which always holds the BOS token; the
program's position i is the model's position i + 1). Every computed s-op is exactly zero at BOS.

Steps:
1. value sets: evaluate the programs on every input of the domain (all sequences over `vocab` of
   each length up to `max_len`);
2. placement: an Aggregate goes to the first attention sublayer after its inputs exist, a Map or
   SequenceMap to the first MLP sublayer after them; a SelectorWidth takes an attention sublayer
   (attend to BOS and the selected keys equally: BOS gets 1/(w+1)) and the MLP right after it
   (read 1/(w+1) back as w); heads of one layer are numbered in program order;
3. weights, per op:
   - Aggregate(Select(K, Q, p), X): query value a scores key value b by beta * p(b, a), the BOS key
     by beta/2 (the default when nothing is selected); the value copies X's one-hot into the
     output block;
   - SelectorWidth: the same scores with BOS at beta; the MLP turns 1/(w+1) into steps
     [w <= k] = ReLU(L(s - c_k) + 1/2) - ReLU(L(s - c_k) - 1/2) at thresholds c_k between
     1/(k+1) and 1/(k+2), and one-hot(w) = step_w - step_(w-1); it reads `bos` to stay silent there;
   - Map / SequenceMap: one step per input value (pair) that is 1 when the input's one-hot entry
     (the sum of both entries, for pairs) is above 1/2 (3/2), written to f's value;
4. the unembedding reads the program's output block (scaled by `logit_scale`).

Distractors compile alongside: other programs whose outputs nothing reads, and `Leak` heads that
attend uniformly and write a small multiple of an s-op's one-hot into the output block (a real
but small effect that is not part of the algorithm).

`Compiled.ground_truth(kind, ...)` lists the edges of the algorithm under an ablation kind: an
edge sender -> receiver belongs to it when the sender writes an s-op that the receiver's op (a
needed op: one the output depends on) reads, and that s-op carries information the ablation
removes: any nonzero value for zero ablation; for mean and resample ablation a value that varies
across the dataset at some position; for counterfactual patching a value that differs between a
prompt and its counterfactual. (Constant signals, such as positions on fixed-length data, are in
the circuit only under zero ablation. Parts of an op that the dataset never exercises are left
out: see `Compiled._used_reads`.)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.site import Kind, Site
from ..models.tiny import TinyConfig, TinyTransformer
from .program import (Aggregate, Indices, Map, SelectorWidth, SequenceMap, SOp, Tokens, evaluate, indices, tokens,
                      topological)

ONE, BOS = "one", "bos"
# (site, head) pairs name senders and receivers in plain core terms; mechscope.causal turns them into Edges
NodeId = tuple[Site, int | None]
INPUT_ID: NodeId = (Site(Kind.RESID_PRE, 0), None)
OUTPUT_ID: NodeId = (Site(Kind.LOGITS), None)


@dataclass(frozen=True, eq=False)
class Leak:
    """A distractor head: uniform attention, writing `scale` x the one-hot of `sop` into the output
    block (values that are not outputs are dropped).

    Example::

        from mechscope.rasp import Leak, compile_program, tokens
        c = compile_program(program, "ab", 5, leaks=[Leak(tokens, scale=0.02)])   # a distractor head
    """

    sop: SOp
    scale: float = 0.02
    name: str = ""


@dataclass(frozen=True)
class Placed:
    """Where one op sits and what it reads: `reads` maps a port ("q", "k", "v" or "in") to the names
    of the residual blocks it reads; `writes` is the block it writes."""

    name: str
    layer: int
    where: str  # "attn" or "mlp"
    head: int | None
    reads: dict[str, tuple[str, ...]]
    writes: str
    kind: str = ""  # "aggregate", "width_head", "width_mlp", "map", "leak"


def _sorted(values: Iterable[Any]) -> list[Any]:
    vals = set(values)
    try:
        return sorted(vals)
    except TypeError:
        return sorted(vals, key=repr)


@dataclass(frozen=True, eq=False)
class Compiled:
    """A compiled program: the module, its residual layout, where each op sits, and the domain.

    Example::

        from mechscope.rasp import EQ, Select, SelectorWidth, compile_program, tokens
        c = compile_program(SelectorWidth(Select(tokens, tokens, EQ), name="hist"), "abc", 4)
        c.verify()                               # inputs checked against the program
        ms.run(ms.wrap(c.module), c.tokens(["abca"])).logits   # (batch, pos, outputs)
    """

    module: TinyTransformer
    program: SOp
    vocab: tuple[Any, ...]
    outputs: tuple[Any, ...]
    max_len: int
    causal: bool
    dims: dict[str, dict[Any, int]]  # block name -> value -> residual dimension
    ops: tuple[Placed, ...]
    needed: frozenset[str]  # names of ops the output depends on (blocks they write)
    extra: tuple[SOp, ...] = ()  # distractor programs
    name: str = ""
    valid: Callable[[tuple], bool] | None = None  # the domain: inputs for which the program is defined
    _values: dict = field(default_factory=dict, repr=False)

    @property
    def bos(self) -> int:
        """The BOS token's id: one past the program's vocabulary."""
        return len(self.vocab)

    def tokens(self, inputs: Sequence[Sequence[Any]]) -> Tensor:
        """Token ids (batch, 1 + n): BOS, then each input value's index in `vocab`."""
        return torch.tensor([[self.bos] + [self.vocab.index(x) for x in xs] for xs in inputs], dtype=torch.long)

    def answers(self, inputs: Sequence[Sequence[Any]]) -> Tensor:
        """The program's output ids (batch, 1 + n): -1 at BOS and where the output is None."""
        rows = []
        for xs in inputs:
            out = evaluate(self.program, xs, self.causal)[self.program]
            rows.append([-1] + [-1 if v is None else self.outputs.index(v) for v in out])
        return torch.tensor(rows, dtype=torch.long)

    def domain(self, length: int) -> list[tuple[Any, ...]]:
        """Every input of one length (in the domain)."""
        return [xs for xs in itertools.product(self.vocab, repeat=length) if self.valid is None or self.valid(xs)]

    @torch.no_grad()
    def verify(self, lengths: Iterable[int] | None = None) -> int:
        """Check the model against the program on every input of the given lengths (default
        1..max_len): the argmax output equals the program's wherever it is defined. Returns the
        number of inputs checked; raises AssertionError at the first disagreement."""
        count = 0
        for n in lengths or range(1, self.max_len + 1):
            inputs = self.domain(n)
            pred = self.module(self.tokens(inputs)).argmax(-1)  # (batch, 1 + n)
            want = self.answers(inputs)
            ok = (want < 0) | (pred == want)
            if not bool(ok.all()):
                i, p = (~ok).nonzero()[0].tolist()
                raise AssertionError(f"{self.name or self.program.name}: input {inputs[i]} position {p - 1}: "
                                     f"model says {self.outputs[pred[i, p]]!r}, program says "
                                     f"{self.outputs[want[i, p]]!r}")
            count += len(inputs)
        return count

    def block_values(self, inputs: Sequence[Sequence[Any]]) -> dict[str, list[tuple]]:
        """Per residual block name, each input's values by position (BOS first, as None)."""
        out: dict[str, list[tuple]] = {ONE: [], BOS: []}
        sops = {s.name: s for p in (self.program, *self.extra) for s in topological(p)}
        for xs in inputs:
            vals = {}
            for p in (self.program, *self.extra):
                vals.update(evaluate(p, xs, self.causal))
            out[ONE].append((1,) * (len(xs) + 1))
            out[BOS].append((1,) + (0,) * len(xs))
            for name, s in sops.items():
                v = (None,) + tuple(vals[s])
                out.setdefault(name, []).append(v)
                if isinstance(s, SelectorWidth):
                    out.setdefault(_scratch(name), []).append(v)
        return out

    def ground_truth(self, kind: str, inputs: Sequence[Sequence[Any]],
                     counterfactuals: Sequence[Sequence[Any]] | None = None) -> frozenset[tuple[NodeId, NodeId]]:
        """The algorithm's edges under an ablation kind ("zero", "mean", "resample", "patch"), for the
        dataset `inputs` (and, for "patch", each input's counterfactual)."""
        if kind not in ("zero", "mean", "resample", "patch"):
            raise ValueError(f"unknown ablation kind {kind!r}")
        if kind == "patch" and (counterfactuals is None or len(counterfactuals) != len(inputs)):
            raise ValueError("patch ground truth needs one counterfactual per input")
        informative: dict[str, bool] = {}
        vals = self.block_values(inputs)
        if kind == "patch":
            cf = self.block_values(counterfactuals)
        for name, rows in vals.items():
            if kind == "zero":
                informative[name] = True
            elif kind in ("mean", "resample"):
                informative[name] = any(len({r[p] for r in rows}) > 1 for p in range(len(rows[0])))
            else:
                informative[name] = any(a != b for a, b in zip(rows, cf[name]))
        writes: dict[NodeId, set[str]] = {INPUT_ID: {"tokens", "indices", ONE, BOS}}
        reads: dict[NodeId, set[str]] = {OUTPUT_ID: {self.program.name}}
        port_kind = {"q": Kind.Q_IN, "k": Kind.K_IN, "v": Kind.V_IN}
        for op in self.ops:
            if op.where == "attn":
                writes.setdefault((Site(Kind.Z, op.layer), op.head), set()).add(op.writes)
            else:
                writes.setdefault((Site(Kind.MLP_OUT, op.layer), None), set()).add(op.writes)
            if op.writes not in self.needed:
                continue
            for port, names in self._used_reads(op, vals).items():
                if op.where == "attn":
                    rid: NodeId = (Site(port_kind[port], op.layer), op.head)
                else:
                    rid = (Site(Kind.MLP_IN, op.layer), None)
                reads.setdefault(rid, set()).update(names)
        edges = set()
        for s in writes:
            for r, names in reads.items():
                if not _upstream(s, r, self.module.cfg.n_layers):
                    continue
                if any(informative.get(x, False) for x in writes[s] & names):
                    edges.add((s, r))
        return frozenset(edges)


    def _used_reads(self, op: Placed, vals: dict[str, list[tuple]]) -> dict[str, tuple[str, ...]]:
        """What an op reads that this dataset exercises. Parts that serve only inputs the dataset
        lacks are left out: an aggregate's BOS default (`one` at the query, `bos` at the key) when
        every query selects a key; a selector width's `one` (it encodes w = max_len) when no
        position has that width, and its `bos` (silence at BOS) when no attention reads the width
        as keys."""
        drop: dict[str, set[str]] = {}
        rows = vals.get(op.writes, [])
        if op.kind == "aggregate" and all(v is not None for row in rows for v in row[1:]):
            drop = {"q": {ONE}, "k": {BOS}}
        elif op.kind == "width_mlp":
            drop = {"in": set()}
            if not any(v == self.max_len for row in rows for v in row[1:]):
                drop["in"].add(ONE)
            if not any(o.writes in self.needed and op.writes in o.reads.get("k", ()) for o in self.ops):
                drop["in"].add(BOS)
        return {port: tuple(x for x in names if x not in drop.get(port, ())) for port, names in op.reads.items()}


def _upstream(sender: NodeId, receiver: NodeId, n_layers: int) -> bool:
    """Whether the sender writes before the receiver reads (sequential blocks)."""
    def pos(node: NodeId, reading: bool) -> float:
        site = node[0]
        if site.kind is Kind.RESID_PRE:
            return -1
        if site.kind is Kind.LOGITS:
            return 2 * n_layers + 1
        sub = 2 * site.layer + (0 if site.kind in (Kind.Z, Kind.Q_IN, Kind.K_IN, Kind.V_IN) else 1)
        return sub
    return pos(sender, False) < pos(receiver, True)


def _scratch(name: str) -> str:
    return f"{name}.frac"


def compile_program(program: SOp, vocab: Sequence[Any], max_len: int, *, causal: bool = False,
                    distractors: Sequence[SOp] = (), leaks: Sequence[Leak] = (), beta: float = 12.0,
                    logit_scale: float = 5.0, step_slope: float = 10.0, min_heads: int = 1,
                    valid: Callable[[tuple], bool] | None = None, name: str = "") -> Compiled:
    """Compile `program` (and distractors) into a TinyTransformer; see the module docstring.

    Example::

        from mechscope.rasp import EQ, Select, SelectorWidth, compile_program, tokens
        c = compile_program(SelectorWidth(Select(tokens, tokens, EQ), name="hist"), "abc", max_len=4)
        model = ms.wrap(c.module)                # a TinyTransformer: sites, weights, interventions
    """
    vocab = tuple(vocab)
    programs = (program, *distractors)
    order: list[SOp] = [tokens, indices]  # the input writes both, whether or not a program reads them
    for p in programs:
        for s in topological(p):
            if s not in order:
                order.append(s)
    names = [s.name for s in order]
    if len(set(names)) != len(names) or {ONE, BOS} & set(names):
        raise ValueError(f"s-op names must be unique and not {ONE!r}/{BOS!r}: {names}")
    # 1. value sets over the whole domain
    values: dict[SOp, set] = {s: set() for s in order}
    for n in range(1, max_len + 1):
        for xs in itertools.product(vocab, repeat=n):
            if valid is not None and not valid(xs):
                continue
            for p in programs:
                for s, v in evaluate(p, xs, causal).items():
                    values[s].update(x for x in v if x is not None)
    for s in order:
        if isinstance(s, SelectorWidth):
            values[s] = set(range(max_len + 1))
    vals = {s: _sorted(values[s]) for s in order}
    outputs = tuple(vals[program])
    # 2. placement: sublayer 2L is layer L's attention, 2L + 1 its MLP; inputs are at -1
    avail: dict[SOp, int] = {}
    place: dict[SOp, int] = {}
    for s in order:
        if isinstance(s, (Tokens, Indices)):
            avail[s] = -1
            continue
        after = max(avail[c] for c in s.children())
        if isinstance(s, (Aggregate, SelectorWidth)):
            sub = after + 1 if (after + 1) % 2 == 0 else after + 2
            place[s] = sub
            avail[s] = sub + 1 if isinstance(s, SelectorWidth) else sub
        else:
            sub = after + 1 if (after + 1) % 2 == 1 else after + 2
            place[s] = avail[s] = sub
    n_layers = max([v // 2 for v in place.values()] + [0]) + 1
    heads_at: dict[int, list[Any]] = {layer: [] for layer in range(n_layers)}
    for s in order:
        if isinstance(s, (Aggregate, SelectorWidth)):
            heads_at[place[s] // 2].append(s)
    for leak in leaks:  # leaks go to the last layer, after everything they read
        heads_at[n_layers - 1].append(leak)
    n_heads = max([len(v) for v in heads_at.values()] + [min_heads])
    # 3. the residual layout: one, bos, then a block per s-op (and a scratch dim per selector width)
    dims: dict[str, dict[Any, int]] = {ONE: {1: 0}, BOS: {1: 1}}
    d = 2
    for s in order:
        dims[s.name] = {v: d + i for i, v in enumerate(vals[s] if not isinstance(s, Indices) else range(max_len))}
        d += len(dims[s.name])
        if isinstance(s, SelectorWidth):
            dims[_scratch(s.name)] = {1: d}
            d += 1
    d_model = d

    def qk_size(sel) -> int:
        return len(dims[sel.keys.name]) + 1

    d_head = 1
    for layer_ops in heads_at.values():
        for s in layer_ops:
            if isinstance(s, Aggregate):
                d_head = max(d_head, qk_size(s.selector), len(dims[s.sop.name]))
            elif isinstance(s, SelectorWidth):
                d_head = max(d_head, qk_size(s.selector))
            else:
                d_head = max(d_head, len(dims[s.sop.name]))
    mlp_units: dict[int, int] = {layer: 0 for layer in range(n_layers)}
    for s in order:
        if isinstance(s, Map):
            mlp_units[place[s] // 2] += 2 * len(dims[s.inner.name])
        elif isinstance(s, SequenceMap):
            mlp_units[place[s] // 2] += 2 * len(dims[s.a.name]) * len(dims[s.b.name])
        elif isinstance(s, SelectorWidth):
            mlp_units[place[s] // 2] += 2 * max_len + 1
    d_mlp = max(mlp_units.values()) or None
    cfg = TinyConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp,
                     n_ctx=max_len + 1, d_vocab=len(vocab) + 1, d_vocab_out=len(outputs), act="relu",
                     layer_norm=False, pos_embed=True, bias=True, causal=causal)
    torch.manual_seed(0)
    module = TinyTransformer(cfg)
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    W = {n: p for n, p in module.named_parameters()}
    scale = beta * math.sqrt(d_head)  # the model divides scores by sqrt(d_head)
    with torch.no_grad():
        # embeddings: token v -> one + tokens:v; BOS -> one + bos; position p >= 1 -> indices:(p - 1)
        for i, v in enumerate(vocab):
            W["embed.weight"][i, dims[ONE][1]] = 1.0
            W["embed.weight"][i, dims["tokens"][v]] = 1.0
        W["embed.weight"][len(vocab), dims[ONE][1]] = 1.0
        W["embed.weight"][len(vocab), dims[BOS][1]] = 1.0
        for p in range(1, max_len + 1):
            W["pos_embed.weight"][p, dims["indices"][p - 1]] = 1.0
        ops: list[Placed] = []
        for layer, layer_ops in heads_at.items():
            att = module.blocks[layer].attn
            for h, s in enumerate(layer_ops):
                col = slice(h * d_head, (h + 1) * d_head)
                wq, wk = att.W_Q.weight[col], att.W_K.weight[col]  # (d_head, d_model)
                wv, wo = att.W_V.weight[col], att.W_O.weight[:, col]  # (d_head, d_model), (d_model, d_head)
                if isinstance(s, Leak):
                    for c, (v, dim) in enumerate(dims[s.sop.name].items()):
                        wv[c, dim] = 1.0
                        if v in dims[program.name]:
                            wo[dims[program.name][v], c] = s.scale
                    leak_name = s.name or f"leak:{s.sop.name}"
                    ops.append(Placed(leak_name, layer, "attn", h, {"v": (s.sop.name,)}, leak_name, "leak"))
                    continue
                width = isinstance(s, SelectorWidth)
                reads = _scores(s.selector, dims, wq, wk, scale, bos_score=scale if width else scale / 2)
                if width:
                    wv[0, dims[BOS][1]] = 1.0
                    wo[dims[_scratch(s.name)][1], 0] = 1.0
                    reads["v"] = (BOS,)
                    ops.append(Placed(_scratch(s.name), layer, "attn", h, reads, _scratch(s.name), "width_head"))
                else:
                    for c, (v, dim) in enumerate(dims[s.sop.name].items()):
                        wv[c, dim] = 1.0
                        if v in dims[s.name]:
                            wo[dims[s.name][v], c] = 1.0
                    reads["v"] = (s.sop.name,)
                    ops.append(Placed(s.name, layer, "attn", h, reads, s.name, "aggregate"))
        unit = {layer: 0 for layer in range(n_layers)}
        L = step_slope
        for s in order:
            if not isinstance(s, (Map, SequenceMap, SelectorWidth)):
                continue
            layer = place[s] // 2
            mlp = module.blocks[layer].mlp
            w_in, b_in, w_out = mlp.W_in.weight, mlp.W_in.bias, mlp.W_out.weight

            def step(reads: dict[int, float], at: float, slope: float, out: dict[int, float]) -> None:
                # two units: ReLU(slope (x - at) + 1/2) - ReLU(slope (x - at) - 1/2), x = sum reads
                u = unit[layer]
                for k, (shift, sign) in enumerate(((0.5, 1.0), (-0.5, -1.0))):
                    for dim, wgt in reads.items():
                        w_in[u + k, dim] = slope * wgt
                    b_in[u + k] = shift - slope * at
                    for dim, wgt in out.items():
                        w_out[dim, u + k] = sign * wgt
                unit[layer] += 2

            target = dims[s.name]
            if isinstance(s, Map):
                for v, dim in dims[s.inner.name].items():
                    fv = s.fn(v)
                    if fv in target:
                        step({dim: 1.0}, 0.5, L, {target[fv]: 1.0})
                ops.append(Placed(s.name, layer, "mlp", None, {"in": (s.inner.name,)}, s.name, "map"))
            elif isinstance(s, SequenceMap):
                for (a, da), (b, db) in itertools.product(dims[s.a.name].items(), dims[s.b.name].items()):
                    fv = s.fn(a, b)
                    if fv in target:
                        step({da: 1.0, db: 1.0}, 1.5, L, {target[fv]: 1.0})
                ops.append(Placed(s.name, layer, "mlp", None, {"in": (s.a.name, s.b.name)}, s.name, "map"))
            else:
                frac = dims[_scratch(s.name)][1]
                gap = min(1 / (k + 1) - 1 / (k + 2) for k in range(max_len))
                slope = 4.0 / gap
                for k in range(max_len):  # step_k = [w <= k]: +1 to w = k, -1 to w = k + 1
                    c = (1 / (k + 1) + 1 / (k + 2)) / 2
                    # silent at BOS: the bos dimension pushes every step below its threshold
                    step({frac: 1.0, dims[BOS][1]: -2.0}, c, slope, {target[k]: 1.0, target[k + 1]: -1.0})
                u = unit[layer]  # one - bos: 1 everywhere but BOS, for w = max_len
                w_in[u, dims[ONE][1]], w_in[u, dims[BOS][1]] = 1.0, -1.0
                w_out[target[max_len], u] = 1.0
                unit[layer] += 1
                ops.append(Placed(s.name, layer, "mlp", None, {"in": (_scratch(s.name), ONE, BOS)}, s.name,
                                  "width_mlp"))
        for v, dim in dims[program.name].items():
            module.unembed.weight[outputs.index(v), dim] = logit_scale
    module.eval()
    needed = _needed(program, ops)
    return Compiled(module, program, vocab, outputs, max_len, causal, dims, tuple(ops), needed,
                    tuple(distractors), name or program.name, valid=valid)


def _scores(sel: Any, dims: dict[str, dict[Any, int]], wq: Tensor, wk: Tensor, scale: float,
            bos_score: float) -> dict[str, tuple[str, ...]]:
    """Write the query/key weights of a head that scores key value b for query value a by
    scale * p(b, a) and the BOS key by `bos_score`; return what each side reads.

    A side the predicate does not depend on reads no s-op: a query-independent predicate takes
    its scores from `one`; a key-independent one scores every real key alike (one - bos). An
    always-true predicate scores every key, BOS included, alike: no weights at all."""
    keys, queries = dims[sel.keys.name], dims[sel.queries.name]
    p = sel.predicate
    table = {(b, a): p(b, a) for b in keys for a in queries}
    q_dep = any(table[b, a] != table[b, a2] for b in keys for a in queries for a2 in queries)
    k_dep = any(table[b, a] != table[b2, a] for a in queries for b in keys for b2 in keys)
    if not q_dep and not k_dep and all(table.values()) and bos_score == scale:
        return {}  # every key, BOS included, scores the same: uniform attention
    one, bos = dims[ONE][1], dims[BOS][1]
    reads: dict[str, tuple[str, ...]] = {"q": (ONE,), "k": (BOS,)}
    if k_dep:
        for c, (b, kdim) in enumerate(keys.items()):
            wk[c, kdim] = 1.0
            for a, qdim in queries.items():
                if table[b, a]:
                    if q_dep:
                        wq[c, qdim] = scale
                    else:
                        wq[c, one] = scale
        reads["k"] = (sel.keys.name, BOS)
        bos_col = len(keys)
    else:  # one column: every real key alike
        wk[0, one], wk[0, bos] = 1.0, -1.0
        b0 = next(iter(keys))
        for a, qdim in queries.items():
            if table[b0, a]:
                if q_dep:
                    wq[0, qdim] = scale
                else:
                    wq[0, one] = scale
        reads["k"] = (ONE, BOS)
        bos_col = 1
    if q_dep:
        reads["q"] = (sel.queries.name, ONE)
    wk[bos_col, bos] = 1.0
    wq[bos_col, one] = bos_score
    return reads


def _needed(program: SOp, ops: Sequence[Placed]) -> frozenset[str]:
    """Names of the blocks the output depends on, through the ops that write them."""
    by_name = {op.writes: op for op in ops}
    need: set[str] = set()
    todo = [program.name]
    while todo:
        name = todo.pop()
        if name in need:
            continue
        need.add(name)
        op = by_name.get(name)
        if op is not None:
            todo += [n for names in op.reads.values() for n in names]
    return frozenset(need)
