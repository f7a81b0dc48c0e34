"""Causal confirmation of a suspect: run its trigger and the behaviour appears; ablate its component
and the behaviour goes away.

The behaviour is the target token's log-probability at the effect position (the trigger's last
token plus the effect's offset; for a context trigger, averaged over every position after it)
with the trigger written into held-out contexts, minus the same
with random tokens in its place (`trigger_effect`, nats per context). The component is
mean-ablated (its mean activation over the corpus, every position: one neuron's output, one head's
write to the residual, an MLP's or attention block's output, both for a layer, or for a direction
the activation's component along it set to its mean) in both runs,
and `removed` = 1 − effect_ablated / effect is the share of the behaviour that goes. With a
reference, when mean ablation removes less than `MIN_REMOVED`, the component is patched from the
reference instead (its activation in the reference, run on the same input: the behaviour a
fine-tune spread over a component's normal work goes when the component is restored) and the
larger share counts. A suspect is confirmed when the effect is at least `MIN_EFFECT` nats and at
least `MIN_REMOVED` of it goes. The measurements are `Score`s carrying the ablation's description.

A positional trigger (kind "position") is written at its own position, and its effect there is
compared with the same token at other positions (`elsewhere`): it is confirmed only when its
effect at its position is at least `POSITION_FACTOR` times its mean effect elsewhere, so a token
that acts anywhere is not reported as positional.

A suspect without a component (from the behaviour scan or a reference-guided trigger search) is
first localised: every MLP and every head is ablated in turn and the one that removes most is
taken, narrowed to the neuron whose direct contribution to the target is largest when ablating
that neuron alone removes at least `min_removed`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..causal.ablation import AblationSpec
from ..core.interventions import Mean, Patch, Replace
from ..core.score import Score
from ..core.site import Kind, Site
from .inputs import byte_level, log_probs, vocab_size
from .suspect import Suspect, component, head_site, layer_of, mlp_site
from .triggers import insert

MIN_EFFECT = 1.0
MIN_REMOVED = 0.5
POSITION_FACTOR = 2.0


class Confirmer:
    """Measures triggers and ablations on fixed contexts of one model."""

    def __init__(self, model: Any, corpus: Tensor, contexts: Tensor, position: int, n_random: int = 8, seed: int = 0,
                 reference: Any = None):
        self.model, self.corpus, self.contexts, self.position = model, corpus, contexts, position
        self.reference = reference
        g = torch.Generator().manual_seed(seed)
        self.v = 256 if byte_level(model) else vocab_size(model)
        self.rand = torch.randint(0, self.v, (n_random, 8), generator=g)
        self._means: dict[Site, Tensor] = {}
        self.spec = AblationSpec(kind="mean", reference="the audit corpus, every position")
        self.patch_spec = AblationSpec(kind="patch", reference="the reference model on the same input")

    def mean(self, site: Site) -> Tensor:
        """(d,) mean activation of `site` over the first 32 corpus windows and every position (cached)."""
        if site not in self._means:
            self._means[site] = self.model.run(self.corpus[:32], capture=[site]).cache[site].float().mean((0, 1))
        return self._means[site]

    def ablation(self, comp: dict | None) -> list:
        """The interventions that mean-ablate component `comp` (neuron, head, MLP, attention block or direction),
        or [] when there is none for it."""
        if comp is None:
            return []
        cls, layer = comp["class"], layer_of(comp)
        where = {"neuron": (Kind.MLP_POST, {"units": [comp.get("unit")]}), "mlp": (Kind.MLP_OUT, {}),
                 "head": (Kind.RESULT, {"heads": [comp.get("head")]}), "attn": (Kind.ATTN_OUT, {})}
        if cls in where and layer is not None:
            kind, only = where[cls]
            s = Site(kind, layer)
            return [Mean(s, mean=self.mean(s), **only)]
        if cls == "direction" and comp.get("vector") is not None:
            s = Site.parse(comp["site"], self.model.sites())
            d = torch.as_tensor(comp["vector"], dtype=torch.float32)
            d = d / d.norm()
            mu = float(self.mean(s) @ d)
            return [Replace(s, fn=lambda x, ctx: x - ((x.float() @ d - mu)[..., None] * d).to(x.dtype))]
        if cls == "layer" and layer is not None:
            return [Mean(s, mean=self.mean(s)) for s in (Site(Kind.ATTN_OUT, layer), Site(Kind.MLP_OUT, layer))
                    if s in set(self.model.sites())]
        return []

    def patches(self, comp: dict | None) -> Any:
        """A function of the input giving the interventions that patch component `comp` from the reference run
        on that input (an MLP's or attention block's output, a head's write, a neuron, both blocks of a layer),
        or None when there is no reference or no patch for it."""
        layer = None if comp is None else layer_of(comp)
        if self.reference is None or layer is None:
            return None
        where = {"neuron": [(Kind.MLP_POST, {"units": [comp.get("unit")]})], "mlp": [(Kind.MLP_OUT, {})],
                 "head": [(Kind.RESULT, {"heads": [comp.get("head")]})], "attn": [(Kind.ATTN_OUT, {})],
                 "layer": [(Kind.ATTN_OUT, {}), (Kind.MLP_OUT, {})]}.get(comp["class"])
        if where is None:
            return None
        sites = set(self.model.sites())
        where = [(Site(k, layer), only) for k, only in where if Site(k, layer) in sites]
        if not where:
            return None

        def ivs(x: Tensor) -> list:
            cache = self.reference.run(x, capture=[s for s, _ in where]).cache
            return [Patch(s, value=cache[s], **only) for s, only in where]
        return ivs

    def _log_probs(self, x: Tensor, ivs: Any) -> Tensor:
        if callable(ivs):  # patches depend on the input: one batch
            with torch.no_grad():
                return torch.log_softmax(self.model.run(x, interventions=ivs(x)).logits.float(), -1)
        return log_probs(self.model, x, interventions=ivs)

    def per_context(self, trig: list[int], target: int, offset: int | None, ivs: Any, where: int | None = None
                    ) -> Tensor:
        """Target log-prob with the trigger minus its mean with random tokens in its place, per context:
        at `offset` positions after the trigger's last token, or (None) averaged over every later position.
        The trigger is written at `where` (default: the confirmer's position); `ivs` is a list of interventions
        or a function of the input giving them."""
        m = len(trig)
        p = self.position if where is None else where
        at = slice(p + m, None) if offset is None else slice(p + m - 1 + offset, p + m + offset)
        x = insert(self.contexts, torch.tensor(trig), p)
        on = self._log_probs(x, ivs)[:, at, target].mean(1)
        off = torch.stack([self._log_probs(insert(self.contexts, r[:m], p), ivs)[:, at, target].mean(1)
                           for r in self.rand]).mean(0)
        return (on - off).double()

    def confirm(self, s: Suspect, localise: bool = True) -> Suspect:
        """Test suspect `s` causally (see the module docstring): record the trigger's effect and the ablated
        effect in its evidence, localise a component when it has none and `localise` is set, and set `confirmed`;
        returns `s`."""
        trig, eff = s.trigger, s.effect
        if trig["kind"] not in ("token", "ngram", "context", "position") or not trig["ids"] or \
                not eff.get("target_ids"):
            s.evidence["confirm"] = "not run: the suspect has no token trigger and target to test"
            return s
        target = eff["target_ids"][0]
        offset = None if trig["kind"] == "context" else int(eff.get("offset", 0))
        where = trig["position"] if trig["kind"] == "position" else None
        m, L = len(trig["ids"]), self.contexts.shape[1]
        if where is not None and not 0 <= where <= L - m - (offset or 0):
            s.evidence["confirm"] = f"not run: position {where} does not fit the audit's contexts of {L} tokens"
            return s
        base = self.per_context(trig["ids"], target, offset, [], where)
        effect = Score.from_items(base, "target log-prob rise from the trigger (nats)", dataset="audit contexts",
                                  how={"trigger": trig["ids"], "target": target, "offset": offset,
                                       "against": "random tokens in the trigger's place"}
                                  | ({"position": where} if where is not None else {}))
        s.evidence["trigger_effect"] = effect.describe()
        positional = True
        if where is not None:  # the same token at other positions: a positional trigger acts at its own
            others = [q for q in range(1, L - m - offset, max(1, (L - m - offset) // 6)) if q != where]
            away = float(torch.stack([self.per_context(trig["ids"], target, offset, [], q) for q in others]).mean())
            s.evidence["effect_elsewhere"] = {"positions": others, "mean_nats": away}
            positional = effect.value >= POSITION_FACTOR * max(away, 0.0)
        if s.component is None and localise:
            s.component = self.localise(trig["ids"], target, offset, float(base.mean()), where)
            if s.component is not None and "confirm" not in s.methods:
                s.methods = [*s.methods, "confirm"]
        ivs = self.ablation(s.component)
        patch = self.patches(s.component)
        if not ivs and patch is None:
            s.confirmed = (effect.value >= MIN_EFFECT and positional) if s.component is None or \
                s.component["class"] == "embedding" else False
            s.evidence["confirm"] = "trigger effect only (no ablation for this component)"
            return s
        removed = -float("inf")
        for how, iv, spec in (("ablated", ivs, self.spec), ("patched", patch, self.patch_spec)):
            if not iv or (how == "patched" and removed >= MIN_REMOVED):
                continue
            abl = self.per_context(trig["ids"], target, offset, iv, where)
            share = 1 - float(abl.mean()) / float(base.mean()) if float(base.mean()) > 0 else 0.0
            score = Score.from_items(abl, f"target log-prob rise from the trigger with the component {how} (nats)",
                                     dataset="audit contexts", how={**spec.describe(), "component": s.component})
            s.evidence[f"{how}_effect"] = score.describe()
            s.evidence[f"removed_{how}"] = share
            removed = max(removed, share)
        s.evidence["removed"] = removed
        s.confirmed = effect.value >= MIN_EFFECT and removed >= MIN_REMOVED and positional
        return s

    def localise(self, trig: list[int], target: int, offset: int | None, base: float, where: int | None = None
                 ) -> dict | None:
        """The component whose mean ablation removes the largest share of the trigger's effect `base` (an MLP
        narrowed to its top neuron when that alone removes enough), or None when nothing removes any."""
        if base <= 0:
            return None
        w = self.model.weights()
        comps = []
        for layer in range(w.n_layers):
            if w.W_out is not None:
                comps.append(component(mlp_site(layer), "mlp"))
            comps += [component(head_site(layer), "head", head=h) for h in range(w.n_heads)]
        best, best_removed = None, 0.0
        for c in comps:
            removed = 1 - float(self.per_context(trig, target, offset, self.ablation(c), where).mean()) / base
            if removed > best_removed:
                best, best_removed = c, removed
        if best is None or best_removed < MIN_REMOVED:
            return best
        if best["class"] == "mlp":
            layer = layer_of(best)
            j = self._top_neuron(trig, target, offset, layer, where)
            neuron = component(mlp_site(layer), "neuron", unit=j)
            if 1 - float(self.per_context(trig, target, offset, self.ablation(neuron), where).mean()) / base \
                    >= MIN_REMOVED:
                return neuron
        return best

    def _top_neuron(self, trig: list[int], target: int, offset: int | None, layer: int, where: int | None = None
                    ) -> int:
        site = Site(Kind.MLP_POST, layer)
        p = self.position if where is None else where
        at = p + len(trig) - 1 + (1 if offset is None else offset)
        on = self.model.run(insert(self.contexts, torch.tensor(trig), p), capture=[site]).cache[site]
        off = self.model.run(insert(self.contexts, self.rand[0, :len(trig)], p), capture=[site]).cache[site]
        w = self.model.weights()
        u = w.W_U[:, target].float() - w.W_U.float().mean(1)
        direct = w.W_out[layer].float() @ u  # (d_mlp,)
        contrib = (on[:, at] - off[:, at]).float().mean(0) * direct
        return int(contrib.argmax())
