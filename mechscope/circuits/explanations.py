"""Ready-made explanations (code standing in for a component) for `mechscope.circuits.explain.score`.

Each function returns an `Explanation`: a callable `fn(activation, context) -> tensor` for core
`Replace`, which also says which site it stands in for (`.site`), which activations it reads from
the run (`.needs`) and what it claims (`.name`, `.describe()`).

Attention heads (`strict_induction`, `previous_token`): the explanation fixes *where the head
looks* by rule and keeps *what it moves* the model's own. The head output is rebuilt as
z[q] = sum_k A[q, k] v[k], where A is the rule's attention pattern (one-hot, or uniform over the
positions the rule names) and v are the head's own values captured in the same forward pass
(v = LN(resid) W_V + b_V, so the value side is the model's); the model then applies its own W_O.
This is attention-pattern replacement done at the head's output site (attn.z), so the same site
can be mean- or resample-ablated for comparison; with `site_kind=Kind.RESULT` the rebuilt z is
multiplied by the head's W_O and the explanation stands in for attn.result instead.

    strict_induction  query q attends to the position after each earlier occurrence of its own token
                      (all of them, uniformly, by default; `which="last"` keeps the most recent). A
                      query whose token has not occurred before has no rule: `fallback="uniform"`
                      spreads its attention evenly over positions 0..q (the head's "nothing to copy"
                      output, close to a mean of its values), `"self"` attends to q itself, `"first"`
                      to position 0.
    previous_token    query q attends to q - 1 (position 0 to itself).
    uniform_causal    query q attends evenly to positions 0..q (a control: the same value path with no
                      rule of where to look).

`Explanation.lines` counts the lines of the explanation's code (the function and the pattern rule
it applies), as `core.hypothesis.code_lines` counts them; these head explanations fit no numbers.

Modular addition (`modadd_fourier`): the MLP output at "=" predicted from the Fourier features of
the key frequencies, [1, cos w a, sin w a, cos w b, sin w b, cos w(a+b), sin w(a+b)] per key
frequency w = 2 pi k / p, by a linear map fitted by least squares on the training inputs (the
constant column is the intercept). Key frequencies, when not given, are found as the replication
of Nanda et al. finds them: each neuron's best single frequency of the 2-D Fourier transform of
its activations over all (a, b), kept when it explains > 85% of the neuron's variance; frequencies
held by >= 10 neurons are key. Positions other than "=" keep the model's own output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..core.hypothesis import code_lines
from ..core.interventions import Context
from ..core.run import resolve, run
from ..core.site import Kind, Site
from ..models import wrap
from .modadd_layout import ModAddLayout


class Explanation:
    """A callable explanation: `fn(activation, context)` plus its site, its reads and its claim.

    Example::

        from mechscope.circuits import Explanation
        def zero_mlp(x, ctx):                    # x (batch, pos, d_model)
            return torch.zeros_like(x)

        expl = Explanation("mlp 0 does nothing", ms.Site(ms.Kind.MLP_OUT, 0), zero_mlp)
        mechscope.circuits.explain_score(model, tokens, expl.site, expl)
    """

    def __init__(self, name: str, site: Site, fn, needs: Sequence[Site] = (), helpers: Sequence[Callable] = (),
                 **info: Any):
        self.name, self.site, self._fn, self.needs, self.info = name, site, fn, tuple(needs), info
        self.helpers = tuple(helpers)  # functions `fn` calls that are part of the explanation (their lines count)

    @property
    def lines(self) -> int:
        """Lines of the explanation's code: `fn` and its helpers (blank lines, comments, docstrings left out)."""
        return code_lines(self._fn) + sum(code_lines(h) for h in self.helpers)

    def __call__(self, x: Tensor, ctx: Context) -> Tensor:
        return self._fn(x, ctx)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record: name, site, the sites it reads and `info`."""
        return {"name": self.name, "site": self.site.name, "reads": [s.name for s in self.needs], **self.info}

    def __repr__(self) -> str:
        return f"Explanation({self.name!r} at {self.site.name})"


# --- attention patterns by rule ---------------------------------------------------------------------

def induction_pattern(ids: Tensor, which: str = "all", fallback: str = "uniform") -> Tensor:
    """(batch, pos, kpos) pattern: q attends to k = j + 1 for every j < q with ids[j] == ids[q]."""
    b, T = ids.shape
    same = ids[:, :, None] == ids[:, None, :]  # (batch, q, j)
    earlier = torch.ones(T, T, dtype=torch.bool).tril(-1)  # j < q
    match = same & earlier
    if which == "last":  # keep only the most recent earlier occurrence
        j = torch.arange(T)
        last = torch.where(match, j, -1).amax(-1, keepdim=True)  # (batch, q, 1)
        match = match & (j == last)
    elif which != "all":
        raise ValueError(f"which must be 'all' or 'last', got {which!r}")
    pat = torch.zeros(b, T, T)
    pat[:, :, 1:] = match[:, :, :-1].float()  # key j + 1 after each matching j (j + 1 <= q)
    none = pat.sum(-1) == 0  # (batch, q): nothing to copy
    if fallback == "uniform":
        fill = torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]
    elif fallback == "self":
        fill = torch.eye(T)
    elif fallback == "first":
        fill = torch.zeros(T, T)
        fill[:, 0] = 1
    else:
        raise ValueError(f"fallback must be 'uniform', 'self' or 'first', got {fallback!r}")
    pat = torch.where(none[..., None], fill.expand(b, T, T), pat)
    return pat / pat.sum(-1, keepdim=True)


def previous_token_pattern(ids: Tensor) -> Tensor:
    """(batch, pos, kpos): q attends to q - 1, position 0 to itself."""
    b, T = ids.shape
    pat = torch.zeros(T, T)
    pat[torch.arange(T), (torch.arange(T) - 1).clamp_min(0)] = 1
    return pat.expand(b, T, T).clone()


def uniform_causal_pattern(ids: Tensor) -> Tensor:
    """(batch, pos, kpos): q attends evenly to 0..q."""
    b, T = ids.shape
    return (torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]).expand(b, T, T).clone()


def _head_from_pattern(model: Any, name: str, layer: int, pattern_of, site_kind: Kind,
                       helpers: Sequence[Callable] = (), **info: Any) -> Explanation:
    """An explanation of heads at `layer`: z = pattern(ids) @ v with the run's own values; `helpers` are the
    functions `pattern_of` calls (counted in the explanation's lines)."""
    model = wrap(model)
    if site_kind not in (Kind.Z, Kind.RESULT):
        raise ValueError(f"site_kind must be Kind.Z or Kind.RESULT, got {site_kind}")
    vsite = Site(Kind.V, layer)
    W_O = model.weights().W_O[layer].detach() if site_kind is Kind.RESULT else None  # (head, d_head, d_model)
    n_heads = model.n_heads

    def fn(x: Tensor, ctx: Context) -> Tensor:
        if ctx.input_ids is None:
            raise ValueError(f"{name} reads the tokens; this run has none")
        v = ctx.cache[vsite]  # (batch, pos, kv_head, d_head)
        if v.shape[2] != n_heads:  # grouped-query attention: one value head per group of query heads
            v = v.repeat_interleave(n_heads // v.shape[2], dim=2)
        pat = pattern_of(ctx.input_ids.to(v.device)).to(v.dtype)  # (batch, q, k)
        z = torch.einsum("bqk,bkhd->bqhd", pat, v)
        if W_O is None:
            return z.to(x.dtype)
        return torch.einsum("bqhd,hdm->bqhm", z, W_O.to(z.dtype)).to(x.dtype)

    return Explanation(name, Site(site_kind, layer), fn, needs=[vsite], helpers=helpers, layer=layer, **info)


def strict_induction(model: Any, layer: int, *, which: str = "all", fallback: str = "uniform",
                     site_kind: Kind = Kind.Z) -> Explanation:
    """Induction by rule: attend to the token after earlier occurrences of the current token and move its
    value through the head's own OV (see the module docstring). Use with heads=[...] in `score`.

    Example::

        from mechscope.circuits import explain_score, strict_induction
        model = ms.load("zoo:induction-quick")
        explain_score(model, tokens, "attn.z.1", strict_induction(model, 1), heads=[1, 3])
    """
    return _head_from_pattern(model, "strict_induction", layer,
                              lambda ids: induction_pattern(ids, which, fallback), site_kind,
                              helpers=(induction_pattern,), rule="attend to k = j + 1 for each earlier j with token[j] == token[q]",
                              which=which, fallback=fallback, values="the model's own (captured attn.v)")


def previous_token(model: Any, layer: int, *, site_kind: Kind = Kind.Z) -> Explanation:
    """Previous-token attention by rule: attend to q - 1 and move its value through the head's own OV.

    Example::

        from mechscope.circuits import explain_score, previous_token
        model = ms.load("zoo:induction-quick")
        explain_score(model, tokens, "attn.z.0", previous_token(model, 0), heads=[2])
    """
    return _head_from_pattern(model, "previous_token", layer, previous_token_pattern, site_kind,
                              helpers=(previous_token_pattern,), rule="attend to k = q - 1 (position 0 to itself)",
                              values="the model's own (captured attn.v)")


def uniform_causal(model: Any, layer: int, *, site_kind: Kind = Kind.Z) -> Explanation:
    """The control for a pattern rule: attend evenly to every position up to q, moving the head's own values.

    The pattern it writes is (batch, head, pos, kpos) with row q equal to 1 / (q + 1) on k = 0..q.

    Example::

        from mechscope.circuits import explain_score, strict_induction, uniform_causal
        model = ms.load("zoo:induction-quick")
        rule = explain_score(model, tokens, "attn.z.1", strict_induction(model, 1), heads=[1, 3])
        control = explain_score(model, tokens, "attn.z.1", uniform_causal(model, 1), heads=[1, 3])
    """
    return _head_from_pattern(model, "uniform_causal", layer, uniform_causal_pattern, site_kind,
                              helpers=(uniform_causal_pattern,), rule="attend evenly to k = 0..q",
                              values="the model's own (captured attn.v)")


# --- modular addition ---------------------------------------------------------------------------------

def fourier_basis(p: int) -> Tensor:
    """(p, p) orthonormal rows: constant, then cos and sin of frequency k = 1..(p-1)/2."""
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.full((p,), 1 / math.sqrt(p), dtype=torch.float64)]
    for k in range(1, (p - 1) // 2 + 1):
        w = 2 * math.pi * k / p
        rows += [torch.cos(w * x) * math.sqrt(2 / p), torch.sin(w * x) * math.sqrt(2 / p)]
    return torch.stack(rows)



@torch.no_grad()
def key_frequencies(model: Any, p: int | None = None, *, share: float = 0.85, min_neurons: int = 10,
                    layer: int = 0, layout: ModAddLayout | None = None) -> list[int]:
    """The key frequencies of a modular-addition model, from its neurons at the answer over all (a, b).

    `layout` says where the neurons are and how (a, b) is encoded (default: the zoo's transformer,
    `mlp.post.{layer}` at "=")."""
    model = wrap(model)
    if layout is None:
        p = int(model.weights().W_U.shape[1]) if p is None else p
        layout = ModAddLayout.transformer(p, layer)
    p = layout.p
    site = resolve(model, layout.neurons)
    # float64 Fourier power on the CPU, where the basis is (MPS has no float64)
    acts = layout.answer(run(model, layout.grid()[0], capture=[site]).cache[site]).reshape(p, p, -1).cpu().double()
    Fb = fourier_basis(p)
    power = torch.einsum("ia,jb,abn->ijn", Fb, Fb, acts) ** 2  # (p, p, units)
    power[0, 0] = 0  # the mean is not variance
    total = power.sum((0, 1)).clamp_min(1e-30)
    shares = torch.stack([power[idx][:, idx].sum((0, 1)) for idx in
                          (torch.tensor([0, 2 * k - 1, 2 * k]) for k in range(1, (p - 1) // 2 + 1))]) / total
    best = shares.max(0)
    counts = torch.bincount(best.indices[best.values > share] + 1, minlength=(p - 1) // 2 + 1)
    return [int(k) for k in (counts >= min_neurons).nonzero().squeeze(1)]


def fourier_features(ids: Tensor, p: int, freqs: Sequence[int]) -> Tensor:
    """(batch, 1 + 6K) [1, cos wa, sin wa, cos wb, sin wb, cos w(a+b), sin w(a+b)] per key frequency."""
    a, b = ids[:, 0].double(), ids[:, 1].double()
    cols = [torch.ones_like(a)]
    for k in freqs:
        w = 2 * math.pi * k / p
        for t in (a, b, a + b):
            cols += [torch.cos(w * t), torch.sin(w * t)]
    return torch.stack(cols, 1)


@torch.no_grad()
def modadd_fourier(model: Any, freqs: Sequence[int] | None = None, *, train_inputs: Tensor | None = None,
                   layer: int = 0, layout: ModAddLayout | None = None, site: Site | str | None = None) -> Explanation:
    """The MLP output at "=" of a modular-addition model as a linear map of Fourier features of a and b.

    `freqs`: the key frequencies (found with `key_frequencies` when None). `train_inputs`: the model's
    inputs to fit on (zoo transformer: (n, 3) rows "a b ="); default: the zoo run's training split
    when the model is a zoo network. `layout` (default: the zoo's transformer) gives the input
    encoding and the answer position; `site` the component explained (default `mlp_out.{layer}`; for
    another network, e.g. its hidden layer). The fit's R² on the training inputs is in `.info["fit_r2"]`.

    Example::

        from mechscope.circuits import explain_score, modadd_fourier
        model = ms.load("zoo:modadd-frac05")     # the grokked network shipped in the package
        expl = modadd_fourier(model)             # key frequencies found from the weights
        a, b = torch.randint(0, 113, (2, 256))
        x = torch.stack([a, b, torch.full_like(a, 113)], 1)     # (256, 3): a, b, "="
        explain_score(model, x, None, expl, labels=(a + b) % 113, reference=x).vs_mean
    """
    model, layout, train_inputs, freqs = modadd_setting(model, layout, train_inputs, freqs, layer)
    p = layout.p
    site = resolve(model, Site(Kind.MLP_OUT, layer) if site is None else site)
    out = layout.answer(run(model, train_inputs, capture=[site]).cache[site]).double()  # (n, d)
    X = fourier_features(torch.stack(layout.operands(train_inputs), 1), p, freqs)  # (n, 1 + 6K)
    W = torch.linalg.lstsq(X, out).solution  # (1 + 6K, d)
    resid = out - X @ W
    r2 = 1 - float((resid ** 2).sum() / ((out - out.mean(0)) ** 2).sum())

    def fn(x: Tensor, ctx: Context) -> Tensor:
        value = (fourier_features(torch.stack(layout.operands(ctx.input_ids), 1), p, freqs) @ W).to(x.dtype)
        if layout.answer_position is None:
            return value
        new = x.clone()
        new[:, layout.answer_position] = value
        return new

    return Explanation("modadd_fourier", site, fn, freqs=list(freqs), p=p, fit_r2=r2, n_fit=int(X.shape[0]),
                       features="[1, cos/sin w a, cos/sin w b, cos/sin w(a+b)] per key frequency, least squares")


def modadd_setting(model: Any, layout: ModAddLayout | None, train_inputs: Any, freqs: Sequence[int] | None,
                   layer: int = 0) -> tuple[Any, ModAddLayout, Any, list[int]]:
    """The adapter, the layout (default: the zoo's transformer), the training inputs (default: the zoo
    run's training split) and the key frequencies (default: found from the neurons) of a modular fit."""
    model = wrap(model)
    if layout is None:
        layout = ModAddLayout.transformer(int(model.weights().W_U.shape[1]), layer)
    if train_inputs is None:
        train_inputs = zoo_train_inputs(model)
    freqs = key_frequencies(model, layout=layout) if freqs is None else [int(k) for k in freqs]
    if not freqs:
        raise ValueError("no key frequencies were found in the network's neurons: give freqs= or train the "
                         "model until it generalises")
    return model, layout, train_inputs, freqs


def zoo_train_inputs(model: Any) -> Tensor:
    """The training split's inputs of a zoo modular-addition network (the fits use nothing else)."""
    zrun = getattr(model, "zoo_run", None)
    if zrun is None:
        raise ValueError("give train_inputs= (the model's inputs for the training pairs): this model is not a zoo run")
    from ..zoo import RECIPES  # the zoo's own split (zoo sits beside models, below the analyses' callers)

    cfg = zrun.config()
    return RECIPES[cfg["recipe"]].data(cfg["hparams"], cfg["seed"]).train_x
