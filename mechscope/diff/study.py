"""`mechscope diff A B`: load both, diff weights, behaviour and activations, rank the findings.

Steps:
1. load A and B (`pair.load_pair`: any zoo name, run directory, Hugging Face directory or adapter)
   and refuse different architectures;
2. weight diff of every component (`weight_diff`);
3. behaviour diff on the held-out corpus (`corpus.held_out`, `behaviour`);
4. activation diff at every residual site, read by B's logit lens and tested by steering A
   (`activations`);
5. findings from all three (`report.Finding`), thresholds from a control pair when one is given
   (a `DiffResult` of A against A trained further, on the same corpus), ranked. With a control,
   the contexts and components picked as findings are those furthest above the control's value
   for the same context or component, not merely the largest;
6. optionally (`crosscoder=True`) a crosscoder over both models' activations at one site and its
   most B-leaning latents with latent scaling (`crosscoder_diff`): reported beside the findings, not ranked
   among them (a control pair gives it no threshold yet).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.progress import note
from ..core.score import Score
from .activations import SiteDiff, activation_diff
from .behaviour import BehaviourDiff, KeyStat, behaviour_diff
from ..core.html import table
from .corpus import Corpus, held_out
from .crosscoder_diff import CrosscoderDiff, crosscoder_diff
from .pair import load_pair
from .report import MARGIN, Finding, findings_html, page, rank
from .weight_diff import ComponentDiff, weight_diff


@dataclass
class DiffResult:
    """A whole diff of A against B: weight components, behaviour, activation sites, the findings and, when
    trained, the crosscoder."""

    a: str
    b: str
    components: list[ComponentDiff]
    behaviour: BehaviourDiff
    activations: list[SiteDiff]
    findings: list[Finding]
    control: str | None = None  # the control pair the thresholds come from
    seconds: dict[str, float] = field(default_factory=dict)
    decode: Any = None
    crosscoder: CrosscoderDiff | None = None

    def reference(self, ref: tuple) -> float:
        """This pair's value of the measurement `ref` names (used when this pair is the control)."""
        kind = ref[0]
        if kind == "weight":
            return next((c.relative for c in self.components if c.name == ref[1]), 0.0)
        if kind in ("context", "bigram"):
            return self.behaviour.means.get(kind, {}).get(tuple(ref[1]), 0.0)
        if kind == "corpus":
            return self.behaviour.overall.value
        if kind == "activation":
            return next((s.relative for s in self.activations if s.site.name == ref[1]), 0.0)
        raise ValueError(f"unknown measurement {ref!r}")

    def threshold(self, ref: tuple, margin: float = MARGIN) -> float:
        """The threshold of a finding measuring `ref` when this pair is the control (see `report`)."""
        value = self.reference(ref)
        if ref[0] in ("context", "bigram"):
            value = max(value, self.behaviour.overall.value)
        return margin * value

    @property
    def above(self) -> list[Finding]:
        """The findings above their threshold."""
        return [f for f in self.findings if f.above]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record of the diff: findings, KL, crosscoder and every component's change."""
        return {"a": self.a, "b": self.b, "corpus": self.behaviour.corpus, "seconds": self.seconds,
                "control": self.control, "margin": MARGIN, "n_above_threshold": len(self.above),
                "kl": self.behaviour.overall.describe(), "kl_by_source": self.behaviour.by_source,
                "findings": [f.to_json() for f in self.findings],
                "crosscoder": None if self.crosscoder is None else self._crosscoder_json(),
                "components": [{"name": c.name, "absolute": c.absolute, "relative": c.relative, "rank": c.rank,
                                "effective_rank": c.effective_rank} for c in self.components]}

    def _crosscoder_json(self) -> dict[str, Any]:
        cc, d = self.crosscoder, self.decode
        return {"site": cc.site.name, "d_sae": cc.d_sae, "k": cc.k, "activation": cc.activation, "fvu": cc.fvu, "shares": cc.shares,
                "seconds": cc.seconds,
                "b_leaning": [{"latent": x.index, "relative_norm": x.relative_norm, "frequency": x.frequency,
                            "nu": x.nu, "fires_on": [d(t) for t in x.fires_on], "next": [d(t) for t in x.next_tokens],
                            "lens_top": [d(t) for t in x.lens_top]} for x in cc.b_leaning]}

    def to_html(self) -> str:
        """The diff as an HTML page: the summary and findings, then the crosscoder's B-leaning latents."""
        summary = {"A": self.a, "B": self.b, "corpus": self.behaviour.corpus,
                   "KL(A‖B) per token": str(self.behaviour.overall),
                   "thresholds": f"{MARGIN} x the control pair {self.control}" if self.control else "none (no control)",
                   "findings above threshold": len(self.above)}
        body = findings_html(f"diff {self.a} → {self.b}", self.findings, summary)
        if self.crosscoder is not None:
            cc = self._crosscoder_json()
            body += table([(x["latent"], f"{x['relative_norm']:.3f}", f"{x['frequency']:.4f}", f"{x['nu']:.3g}",
                            ", ".join(map(repr, x["fires_on"][:6])), ", ".join(map(repr, x["lens_top"][:6])))
                           for x in cc["b_leaning"]], ("latent", "relative norm", "frequency", "ν = β_A/β_B",
                                                    "fires on", "B's lens of its direction"),
                          caption=f"crosscoder at {cc['site']}: the most B-leaning latents (shares of live latents "
                                  f"{cc['shares']}, FVU {cc['fvu']:.3g})")
        return page(body, f"mechscope diff {self.a} {self.b}")


def decoder(model: Any):
    """A function from token id to its text (to "#id" for a model without a tokenizer)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return lambda i: f"#{i}"
    return lambda i: tok.decode([int(i)])


def _weight_finding(c: ComponentDiff, d) -> Finding:
    dirs = [{"sigma": x.sigma, "side": x.side, "space": x.space, "top": [d(t) for t in x.top[:8]],
             "bottom": [d(t) for t in x.bottom[:8]]} for x in c.directions]
    head = c.directions[0] if c.directions else None
    says = f"; its top direction {head.side} {', '.join(repr(d(t)) for t in head.top[:5])}" if head else ""
    return Finding("weight", c.name, f"{c.name} changed by {c.relative:.3g} of its norm (rank {c.rank}, effective "
                   f"rank {c.effective_rank:.1f}){says}", c.score,
                   {"absolute": c.absolute, "relative": c.relative, "rank": c.rank,
                    "effective_rank": c.effective_rank, "singular_values": list(c.singular_values),
                    "directions": dirs},
                   tuple(head.top[:10]) if head else (), ref=("weight", c.name))


def _context_finding(k: KeyStat, table: str, corpus: str, d) -> Finding:
    ctx = " ".join(repr(d(t)) for t in k.key)
    rises = ", ".join(f"{d(t)!r} {p:+.2f}" for t, p in k.rises[:3])
    ex = [{"context": "".join(d(t) for t in e.context), "a_top": ", ".join(f"{d(t)!r} {p:.2f}" for t, p in e.a_top),
           "b_top": ", ".join(f"{d(t)!r} {p:.2f}" for t, p in e.b_top), "kl": e.kl} for e in k.examples]
    return Finding("behaviour", f"{table} {ctx}", f"after {ctx} A and B differ: KL {k.mean_kl:.3g} nats over "
                   f"{k.count} positions; B predicts more {rises}", k.score(table, corpus),
                   {"count": k.count, "mean_kl": k.mean_kl, "total_kl": k.total_kl,
                    "ci": list(k.ci) if k.ci else None,
                    "share_by_source": k.share_by_source,
                    "rises": [(d(t), p) for t, p in k.rises], "falls": [(d(t), p) for t, p in k.falls],
                    "examples": ex},
                   tuple(k.key) + tuple(t for t, _ in k.rises), tuple(k.key), ref=(table, tuple(k.key)))


def _activation_finding(s: SiteDiff, d) -> Finding:
    frac = s.closed.value if s.closed is not None else float("nan")
    ci = s.closed.ci if s.closed is not None else None
    score = Score(value=s.relative, metric="‖mean h_B − mean h_A‖ / mean ‖h_A‖",
                  aggregation="mean over windows and their first positions", dataset=s.closed.dataset if s.closed else "",
                  n=s.closed.n if s.closed else 0, seed=0,
                  how={"site": s.site.name, "steering": str(s.closed) if s.closed else "not run"})
    toks = ", ".join(repr(d(t)) for t, _ in s.top[:5])
    return Finding("activation", s.site.name, f"{s.site.name}: mean shift ‖Δ‖ {s.norm:.3g} ({s.relative:.2g} of ‖h_A‖) "
                   f"reads as {toks}; " + (f"adding it to A closes {frac:.0%} of KL(A‖B)" if s.closed is not None
                                             else "not steered"), score,
                   {"norm": s.norm, "relative": s.relative, "lens_top": [(d(t), v) for t, v in s.top],
                    "lens_bottom": [(d(t), v) for t, v in s.bottom], "kl_before": s.kl_before,
                    "kl_after": s.kl_after, "fraction_closed": frac, "fraction_closed_ci": list(ci) if ci else None},
                   tuple(t for t, _ in s.top), ref=("activation", s.site.name))


def findings_of(components: list[ComponentDiff], behaviour: BehaviourDiff, activations: list[SiteDiff], decode,
                top_weights: int = 8, top_contexts: int = 5, control: DiffResult | None = None) -> list[Finding]:
    """The findings of a diff: the top weight components (ranked against the control's when given), the corpus KL,
    the top contexts and bigrams, and every activation site."""
    if control is not None:  # the components furthest above the control's change of the same component
        components = sorted(components, key=lambda c: -c.relative / max(control.threshold(("weight", c.name)), 1e-12))
    out = [_weight_finding(c, decode) for c in components[:top_weights] if c.absolute > 0]
    out.append(Finding("behaviour", "corpus", f"on {behaviour.corpus} KL(A‖B) is {behaviour.overall.value:.3g} nats per "
                       "token (" + ", ".join(f"{k} {v:.3g}" for k, v in behaviour.by_source.items()) + ")",
                       behaviour.overall, {"by_source": behaviour.by_source,
                                           "by_next_token": [(decode(k.key[0]), k.mean_kl, k.count)
                                                             for k in behaviour.by_next[:top_contexts]]},
                       ref=("corpus",)))
    out += [_context_finding(k, "context", behaviour.corpus, decode) for k in behaviour.by_context[:top_contexts]]
    out += [_context_finding(k, "bigram", behaviour.corpus, decode) for k in behaviour.by_bigram[:top_contexts]]
    out += [_activation_finding(s, decode) for s in activations]
    return out


def diff(a: Any, b: Any, corpus: str | Corpus = "textlm", n_windows: int = 256, seq_len: int = 64,
         control: DiffResult | None = None, n_pos: int = 5, steer: bool = True,
         progress: bool = True, names: tuple[str, str] | None = None, crosscoder: bool = False,
         device: str | None = None) -> DiffResult:
    """Diff B against A (module docstring), both run on `device` (None: where they are, the CPU when loaded
    here). `control` calibrates the thresholds."""
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    ma, mb = load_pair(a, b, device)
    seconds["load"] = time.perf_counter() - t
    n_ctx = getattr(getattr(ma, "cfg", None), "n_ctx", None)
    if n_ctx is not None and seq_len > n_ctx:
        seq_len = n_ctx
    with torch.no_grad():
        t = time.perf_counter()
        components = weight_diff(ma, mb, progress=progress)
        seconds["weights"] = time.perf_counter() - t
        t = time.perf_counter()
        data = corpus if isinstance(corpus, Corpus) else held_out(ma, corpus, n_windows, seq_len)
        if control is not None and (control.behaviour.corpus != data.name
                                    or tuple(control.behaviour.kl.shape) != tuple(data.ids.shape)):
            raise ValueError(f"the control pair was measured on {control.behaviour.corpus} "
                             f"{tuple(control.behaviour.kl.shape)}, this pair on {data.name} {tuple(data.ids.shape)}: "
                             "thresholds need the same corpus and windows")
        baseline = None if control is None else (lambda table, key: control.threshold((table, key)))
        beh = behaviour_diff(ma, mb, data, progress=progress, baseline=baseline)
        seconds["behaviour"] = time.perf_counter() - t
        t = time.perf_counter()
        acts = activation_diff(ma, mb, data, n_pos=n_pos, steer=steer, progress=progress, kl=beh.kl)
        seconds["activations"] = time.perf_counter() - t
    cc = None
    if crosscoder:
        t = time.perf_counter()
        cc = crosscoder_diff(ma, mb, data, progress=progress)
        seconds["crosscoder"] = time.perf_counter() - t
    d = decoder(mb)
    findings = rank(findings_of(components, beh, acts, d, control=control),
                    None if control is None else (lambda f: control.threshold(f.ref)))
    na, nb = names or (getattr(ma, "name", str(a)), getattr(mb, "name", str(b)))
    res = DiffResult(str(na), str(nb), components, beh, acts, findings,
                     None if control is None else f"{control.a} → {control.b}",
                     {k: round(v, 3) for k, v in seconds.items()}, d, cc)
    if progress:
        note(f"diff {na} → {nb}: {len(findings)} findings, {len(res.above)} above threshold, "
             f"{sum(seconds.values()):.1f} s")
    return res
