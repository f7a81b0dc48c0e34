"""Causal scrubbing: test a whole hypothesis (code and equivalences in place of components) at once.

`scrub(model, hypothesis, data, spec)` runs the model three ways on the same inputs:

    clean       the model as it is
    hypothesis  every part of the hypothesis in place: Code parts computed by their code (parts
                that read other sites see the values this run computed, so parts chain),
                Resampled parts taken from another input with the same key (one draw per input,
                fixed seed, from the reference inputs' clean activations), AsIs parts untouched
    ablated     every component the hypothesis names removed by `spec` (an `AblationSpec`: zero,
                the per-position mean over the reference inputs, or a resample: each input's
                components all taken from one other reference input drawn with a fixed seed)

and reports the share of the loss the hypothesis recovers,

    loss recovered = (L_ablated - L_hypothesis) / (L_ablated - L_clean),

as a `Score` with a paired bootstrap interval over inputs. A hypothesis with every part as is
recovers exactly 1 (its run is the bare model). Per part (`each=True`) it also reports

    alone        the part by itself (every other component as is), against ablating that
                 component alone: the same number `circuits.explain.score` gives for one site
    restored     the loss when this one component is restored to the model's own activation and
                 every other part stays in place; its gain, (L_hypothesis - L_restored) over the
                 ablation's gap (L_ablated - L_clean), is the share of the gap this component's
                 explanation leaves open, and over what the hypothesis leaves (L_hypothesis -
                 L_clean) the share of the unexplained loss it holds (None when the hypothesis
                 leaves less than 1e-6 of the gap: nothing measurable to share out)

The loss is per input: `loss(output, labels) -> (n,)` or `(n, groups)` for independent groups
(instances of a toy model), each of which also gets its own Score. The default is cross-entropy
at the last position (or of (batch, classes) logits) against `labels`.

Before the long runs, the hypothesis is checked: every component must exist in the model, every
equivalence class of the inputs must have members in the reference inputs, and on a small batch
every Code part must return a value that broadcasts to its activation; each failure raises a
`ScrubError` naming the component (and both shapes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.errors import MechscopeError
from ..core.html import fmt
from ..core.hypothesis import AsIs, Code, Component, Hypothesis, Part, Resampled, Size
from ..core.interventions import Context, Intervention, Patch, Replace, Zero
from ..core.run import resolve, run
from ..core.score import Score, loss_recovered
from ..core.site import Site
from ..models import wrap
from .ablation import AblationKind, AblationSpec

LossFn = Callable[[Tensor, Any], Tensor]


class ScrubError(MechscopeError, ValueError):
    """A hypothesis that cannot be tested on this model and data (the message names the component).

    Example::

        from mechscope.causal import ScrubError, scrub
        try:
            scrub(model, hypothesis, ids, "mean", labels=labels)
        except ScrubError as err:
            print(err)                           # names the component (and both shapes)
    """


@dataclass(frozen=True)
class PartResult:
    """One part of a scrubbed hypothesis: its size, its score alone and the unexplained loss it holds."""

    component: str
    name: str
    kind: str
    size: Size
    alone: Score | None
    loss_restored: float  # L with this part as is and every other part in place
    restore_gain: float  # (L_hypothesis - loss_restored) / (L_ablated - L_clean)
    unexplained_share: float | None  # (L_hypothesis - loss_restored) / (L_hypothesis - L_clean)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record of the part's result."""
        return {"component": self.component, "name": self.name, "kind": self.kind, "lines": self.size.lines,
                "numbers": self.size.numbers, "alone": None if self.alone is None else self.alone.describe(),
                "loss_restored": self.loss_restored, "restore_gain": self.restore_gain,
                "unexplained_share": self.unexplained_share}


@dataclass(frozen=True)
class ScrubResult:
    """A scrubbed hypothesis: the three losses, the loss recovered, the size, each part's result and any groups'
    scores.

    Example::

        from mechscope.causal import scrub
        res = scrub(model, hypothesis, ids, "mean", labels=labels)
        res.recovered                            # Score: share of the loss recovered
        [(p.name, p.alone) for p in res.parts]
    """

    hypothesis: str
    ablation: str
    loss_clean: float
    loss_hypothesis: float
    loss_ablated: float
    recovered: Score
    size: Size
    parts: tuple[PartResult, ...] = ()
    groups: dict[str, Score] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record of the result, parts and groups included."""
        return {"hypothesis": self.hypothesis, "ablation": self.ablation, "loss_clean": self.loss_clean,
                "loss_hypothesis": self.loss_hypothesis, "loss_ablated": self.loss_ablated,
                "recovered": self.recovered.describe(), "lines": self.size.lines, "numbers": self.size.numbers,
                "parts": [p.describe() for p in self.parts],
                "groups": {k: v.describe() for k, v in self.groups.items()}}

    def _repr_html_(self) -> str:
        """The joint score, then one row per part: its size, its score alone and what restoring it changes."""
        from ..core.html import score_html, table

        head = (f"{self.hypothesis} vs {self.ablation} ablation: loss clean {fmt(self.loss_clean)}, hypothesis "
                f"{fmt(self.loss_hypothesis)}, ablated {fmt(self.loss_ablated)}; {self.size.lines} lines, "
                f"{self.size.numbers} numbers")
        rows = [(p.component, p.kind, p.name, p.size.lines, p.size.numbers,
                 None if p.alone is None else p.alone.value, p.restore_gain, p.unexplained_share) for p in self.parts]
        return score_html(self.recovered) + table(rows, ["component", "kind", "explanation", "lines", "numbers",
                                                         "alone", "restore gain", "share of unexplained"],
                                                  caption=head)

    def __str__(self) -> str:
        lines = [f"{self.hypothesis} vs {self.ablation} ablation: loss clean {self.loss_clean:.4g}, hypothesis "
                 f"{self.loss_hypothesis:.4g}, ablated {self.loss_ablated:.4g}; {self.size.lines} lines, "
                 f"{self.size.numbers} numbers", f"  {self.recovered}"]
        for p in self.parts:
            alone = "" if p.alone is None else f"alone {p.alone.value:.4f}, "
            share = "-" if p.unexplained_share is None else f"{p.unexplained_share:.4f}"
            lines.append(f"  {p.component} ({p.kind} {p.name}): {alone}restoring it gains {p.restore_gain:.3g} of the "
                         f"gap; share of the unexplained loss {share}")
        return "\n".join(lines)


def default_loss(output: Tensor, labels: Tensor | None) -> Tensor:
    """Per-input cross-entropy against `labels`, read at the last position of (batch, pos, vocab) logits."""
    if labels is None:
        raise ScrubError(f"the default loss is cross-entropy against labels; give labels= (one answer per input) "
                         f"or loss= (output {tuple(output.shape)}, labels) -> per-input losses")
    logits = output[:, -1] if output.dim() == 3 else output
    return F.cross_entropy(logits.double(), torch.as_tensor(labels).long(), reduction="none")


def _output(res: Any) -> Tensor:
    return res.logits if res.logits is not None else res.output


def _rows(x: Any, idx: Tensor | slice) -> Any:
    if isinstance(x, Tensor):
        return x[idx]
    if isinstance(x, tuple):
        return tuple(_rows(v, idx) for v in x)
    if isinstance(x, dict):
        return {k: _rows(v, idx) for k, v in x.items()}
    return x


def _n(x: Any) -> int:
    """How many inputs: the first axis of a tensor, or of the first tensor in a tuple or dict."""
    if isinstance(x, Tensor):
        return int(x.shape[0])
    if isinstance(x, (tuple, list)) and x:
        return _n(x[0])
    if isinstance(x, dict) and x:
        return _n(next(iter(x.values())))
    raise ScrubError(f"cannot tell how many inputs {type(x).__name__} holds: give tensors, tuples or dicts of them")


def _spec(spec: AblationSpec | str, reference: Any) -> AblationSpec:
    if isinstance(spec, AblationSpec):
        if spec.kind is AblationKind.PATCH:
            raise ScrubError("scrub ablates with zero, mean or resample; a counterfactual patch is not an ablation "
                             "of the hypothesis's components")
        return spec
    return AblationSpec(kind=AblationKind(spec), reference="the inputs" if reference is None else "reference inputs")


class _Scrubber:
    def __init__(self, model, hypothesis: Hypothesis, data, ids, labels, loss, reference, ref_ids, seed):
        self.model, self.hyp, self.data, self.ids, self.labels = model, hypothesis, data, ids, labels
        self.loss_fn, self.reference, self.ref_ids, self.seed = loss, reference, ref_ids, seed
        self.sites: list[Site] = []
        for p in hypothesis.parts:
            try:
                self.sites.append(resolve(model, p.component.site))
            except MechscopeError as e:
                raise ScrubError(f"hypothesis {hypothesis.name!r}: component {p.component.label} is not in "
                                 f"{getattr(model, 'name', 'the model')}: {e}") from None
        self.needs: dict[int, list[Site]] = {}
        for i, p in enumerate(hypothesis.parts):
            if isinstance(p, Code):
                try:
                    self.needs[i] = [resolve(model, s) for s in p.needs]
                except MechscopeError as e:
                    raise ScrubError(f"hypothesis {hypothesis.name!r}: component {p.component.label} reads a site "
                                     f"the model lacks: {e}") from None
        self.picks = {i: self._equivalent_rows(p) for i, p in enumerate(hypothesis.parts) if isinstance(p, Resampled)}
        self._ref_cache = None

    # --- values ------------------------------------------------------------------------------
    def _equivalent_rows(self, part: Resampled) -> Tensor:
        """For each input, a reference row with the same key (seeded draw among the class's members)."""
        k_in = torch.as_tensor(part.key(self.ids))
        k_ref = torch.as_tensor(part.key(self.ref_ids))
        n, m = _n(self.ids), _n(self.ref_ids)
        if k_in.shape[0] != n or k_ref.shape[0] != m:
            raise ScrubError(f"component {part.component.label}: the key function must return one key per input; "
                             f"it returned shape {tuple(k_in.shape)} for {n} inputs")
        both = torch.cat([k_in.reshape(n, -1), k_ref.reshape(m, -1)])
        _, cls = torch.unique(both, dim=0, return_inverse=True)
        c_in, c_ref = cls[:n], cls[n:]
        g = torch.Generator().manual_seed(self.seed)
        pick = torch.empty(n, dtype=torch.long)
        order = torch.argsort(c_ref, stable=True)
        counts = torch.bincount(c_ref, minlength=int(cls.max()) + 1)
        starts = torch.cumsum(counts, 0) - counts
        empty = counts[c_in] == 0
        if bool(empty.any()):
            i = int(empty.nonzero()[0])
            raise ScrubError(f"component {part.component.label}: the equivalence class of input {i} (key "
                             f"{k_in[i].tolist()}) has no members in the reference inputs ({int(empty.sum())} inputs "
                             "have such a key): give reference inputs covering every class, or a coarser key")
        r = torch.rand(n, generator=g)
        within = (r * counts[c_in]).long().clamp_max(counts[c_in] - 1)
        pick[:] = order[starts[c_in] + within]
        return pick

    def ref_acts(self) -> dict[Site, Tensor]:
        if self._ref_cache is None:
            self._ref_cache = run(self.model, self.reference, capture=sorted(set(self.sites), key=str)).cache
        return self._ref_cache

    def _code(self, part: Code, ids_rows: Tensor) -> Callable[[Tensor, Context], Tensor]:
        def fn(x: Tensor, ctx: Context) -> Tensor:
            if ctx.input_ids is None:
                ctx = dataclasses.replace(ctx, input_ids=ids_rows)
            try:
                out = part.fn(x, ctx)
            except KeyError as e:
                raise ScrubError(f"component {part.component.label}: the code {part.name!r} reads {e}, which this run "
                                 "has not computed before it (list the sites it reads in needs=, earlier in the "
                                 "forward pass)") from None
            out = torch.as_tensor(out)
            try:
                ok = torch.broadcast_shapes(out.shape, x.shape) == x.shape
            except RuntimeError:
                ok = False
            if not ok:
                raise ScrubError(f"component {part.component.label}: the code {part.name!r} returned shape "
                                 f"{tuple(out.shape)}; the activation has shape {tuple(x.shape)} (it must broadcast to it)")
            return out
        return fn

    def hypothesis_run(self, hyp: Hypothesis, rows: Tensor | slice = slice(None),
                       code_only: bool = False) -> tuple[list[Intervention], list[Site]]:
        ivs: list[Intervention] = []
        capture: list[Site] = []
        ids_rows = _rows(self.ids, rows)
        for i, (p, site) in enumerate(zip(hyp.parts, self.sites)):
            where = p.component.where()
            if isinstance(p, Code):
                ivs.append(Replace(site, fn=self._code(p, ids_rows), **where))
                capture += self.needs.get(i, [])
            elif isinstance(p, Resampled) and not code_only:
                ivs.append(Patch(site, value=self.ref_acts()[site][self.picks[i][rows]], **where))
        return ivs, list(dict.fromkeys(capture))

    def ablation(self, spec: AblationSpec, parts: Sequence[int]) -> list[Intervention]:
        ivs: list[Intervention] = []
        if spec.kind is AblationKind.RESAMPLE:
            g = torch.Generator().manual_seed(spec.seed)
            n_ref = next(iter(self.ref_acts().values())).shape[0] if self.sites else 0
            pick = torch.randint(n_ref, (_n(self.ids),), generator=g)
        for i in parts:
            p, site = self.hyp.parts[i], self.sites[i]
            where = p.component.where()
            if spec.kind is AblationKind.ZERO:
                ivs.append(Zero(site, **where))
            elif spec.kind is AblationKind.MEAN:
                ivs.append(Patch(site, value=self.ref_acts()[site].float().mean(0, keepdim=True)
                                 .to(self.ref_acts()[site].dtype), **where))
            else:
                ivs.append(Patch(site, value=self.ref_acts()[site][pick], **where))
        return ivs

    def losses(self, ivs: Sequence[Intervention], capture: Sequence[Site] = (), rows=slice(None)) -> Tensor:
        res = run(self.model, _rows(self.data, rows), capture=list(capture), interventions=list(ivs))
        out = self.loss_fn(_output(res), None if self.labels is None else _rows(self.labels, rows))
        return out.double()

    def validate(self, n: int) -> None:
        rows = slice(0, min(n, _n(self.ids)))
        ivs, capture = self.hypothesis_run(self.hyp, rows, code_only=True)
        try:
            out = self.losses(ivs, capture, rows)
        except MechscopeError as e:  # a code part's shape, or a restriction the site cannot take
            raise ScrubError(f"hypothesis {self.hyp.name!r}: {e}") from None
        if out.shape[0] != rows.stop:
            raise ScrubError(f"the loss must return one value per input (or (inputs, groups)); it returned shape "
                             f"{tuple(out.shape)} for {rows.stop} inputs")


@torch.no_grad()
def scrub(model: Any, hypothesis: Hypothesis, data: Any, spec: AblationSpec | str = "mean", *,
          ids: Tensor | None = None, labels: Any = None, loss: LossFn | None = None, reference: Any = None,
          reference_ids: Tensor | None = None, groups: Sequence[str] | None = None, each: bool = True,
          n_boot: int = 1000, seed: int = 0, dataset: str = "unnamed", validate_rows: int = 8) -> ScrubResult:
    """Loss recovered by `hypothesis` against `spec`'s ablation of its components (module docstring).

    data       the model's inputs (token ids, or a tensor / tuple / dict for a generic model)
    ids        what code and equivalence keys see as `input_ids` (default: `data`)
    labels     passed to `loss` with the output (default loss: cross-entropy at the last position)
    reference  inputs for the mean, the resample and the Resampled parts (default: `data`);
               `reference_ids` is to `reference` what `ids` is to `data`
    groups     names of the loss's columns when it returns (inputs, groups)

    Example::

        from mechscope.causal import scrub
        from mechscope.core.hypothesis import AsIs, Hypothesis, Resampled
        hyp = Hypothesis("first token only", (Resampled("resid_pre.1", key=lambda ids: ids[:, 0]),))
        res = scrub(model, hyp, ids, "mean", labels=labels)   # ids (n, pos), labels (n,)
        res.recovered
    """
    model = wrap(model)
    if not isinstance(hypothesis, Hypothesis):
        raise TypeError(f"scrub needs a Hypothesis, got {type(hypothesis).__name__}")
    spec = _spec(spec, reference)
    ids = data if ids is None else ids
    if reference is None:
        reference, reference_ids = data, ids
    elif reference_ids is None:
        reference_ids = reference
    loss_fn = loss or default_loss
    s = _Scrubber(model, hypothesis, data, ids, labels, loss_fn, reference, reference_ids, seed)
    s.validate(validate_rows)

    all_parts = list(range(len(hypothesis.parts)))
    clean = s.losses([])
    ivs, cap = s.hypothesis_run(hypothesis)
    hyp = s.losses(ivs, cap)
    abl = s.losses(s.ablation(spec, all_parts))
    how = {"hypothesis": hypothesis.name, **spec.describe(), "components": [p.component.label for p in hypothesis.parts],
           "reference_n": _n(reference_ids)}

    def rec(a: Tensor, h: Tensor, c: Tensor, extra: dict | None = None) -> Score:
        one = torch.ones(a.shape[0], dtype=torch.float64)
        return loss_recovered((a, one), (h, one), (c, one), how={**how, **(extra or {})}, dataset=dataset,
                              seed=seed, n_boot=n_boot, aggregation="ratio of mean losses over inputs")

    def total(x: Tensor) -> Tensor:
        return x.sum(-1) if x.dim() == 2 else x

    group_scores: dict[str, Score] = {}
    if clean.dim() == 2:
        names = list(groups) if groups is not None else [str(g) for g in range(clean.shape[1])]
        if len(names) != clean.shape[1]:
            raise ScrubError(f"{len(names)} group names for a loss with {clean.shape[1]} columns")
        group_scores = {g: rec(abl[:, j], hyp[:, j], clean[:, j], {"group": g}) for j, g in enumerate(names)}
    c_t, h_t, a_t = total(clean), total(hyp), total(abl)
    L = {k: float(v.mean()) for k, v in (("clean", c_t), ("hyp", h_t), ("abl", a_t))}
    parts: list[PartResult] = []
    if each:
        left, gap = L["hyp"] - L["clean"], L["abl"] - L["clean"]
        for i, p in enumerate(hypothesis.parts):
            alone = None
            if not isinstance(p, AsIs):
                one_ivs, one_cap = s.hypothesis_run(hypothesis.only([i]))
                alone = rec(total(s.losses(s.ablation(spec, [i]))), total(s.losses(one_ivs, one_cap)), c_t,
                            {"alone": p.component.label})
                rest_ivs, rest_cap = s.hypothesis_run(hypothesis.only([j for j in all_parts if j != i]))
                restored = float(total(s.losses(rest_ivs, rest_cap)).mean())
            else:
                restored = L["hyp"]
            share = (L["hyp"] - restored) / left if abs(left) > 1e-6 * abs(gap) else None
            parts.append(PartResult(p.component.label, p.name, _kind(p), p.size, alone, restored,
                                    (L["hyp"] - restored) / gap if gap else float("nan"), share))
    return ScrubResult(hypothesis.name, spec.kind.value, L["clean"], L["hyp"], L["abl"], rec(a_t, h_t, c_t),
                       hypothesis.size, tuple(parts), group_scores)


def _kind(p: Part) -> str:
    return "code" if isinstance(p, Code) else "resampled" if isinstance(p, Resampled) else "as is"


__all__ = ["Component", "PartResult", "ScrubError", "ScrubResult", "default_loss", "scrub"]
