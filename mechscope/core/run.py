"""run(): the one entry point that looks inside and intervenes, with hooks that never outlive it.

Steps of one call:
1. resolve every requested site (captures, interventions, gradient sites) to a whole Site and
   check it against the model (unknown names fail with the nearest valid ones);
2. group the interventions by site, keeping their order;
3. install one handler per site on the adapter's tap: apply the site's interventions in order,
   then keep the resulting tensor if it was asked for;
4. run the forward pass inside the adapter's session (and with gradients on, if asked), with this
   call's handlers the live ones: a run started inside an intervention (a `Replace` function that
   runs the model again) sees only its own, and the outer run's are untouched by it;
5. remove every hook in a `finally` block, so an exception leaves the model as it was;
6. with `grad=`, differentiate the metric with respect to the captured tensors in one backward
   pass; then release storage that captured views would otherwise keep alive.

With no captures and no interventions nothing is installed: the output is the bare model's,
bit for bit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from .cache import Cache
from .errors import InterventionError, SiteError
from .interventions import Context, Intervention
from .passes import backward, forward_pass
from .protocol import Adapter, Prepared
from .site import Kind, Site
from .taps import Handler, running


@dataclass
class RunResult:
    """What `run` returns: the model output, its logits when it has them, and the captures.

    Example::

        model = ms.load("smollm2-135m")
        tokens = model.to_tokens(["The capital of France is"])
        res = ms.run(model, tokens, capture=["resid_post.1"], grad=lambda out: out.logits[0, -1].max())
        res.logits                               # (batch, pos, vocab)
        res.cache["resid_post.1"]                # (batch, pos, d_model)
        res.grads["resid_post.1"]                # the metric's gradient there, same shape
    """

    output: Any
    logits: Tensor | None
    cache: Cache
    grads: Cache | None = None
    metric: Tensor | None = None
    prepared: Prepared | None = None

    def _repr_html_(self) -> str:
        return self.cache._repr_html_()


def resolve(adapter: Adapter, site: Site | str, valid: set[Site] | None = None) -> Site:
    """Parse `site` against the model and check its head; SiteError names the nearest valid sites.

    Example::

        from mechscope.core import resolve
        resolve(model, "blocks.1.attn.hook_z[3]")   # Site(attn.z.1.h3), checked against the model
    """
    valid = set(adapter.sites()) if valid is None else valid
    site = Site.parse(site, list(valid)) if isinstance(site, str) else site
    if site.whole not in valid and site.kind is not Kind.MODULE and site.head is None:
        # a generic model's submodule may be called like a site (`embed`, `blocks.0.hook_resid_pre`)
        for alias in (site.short, site.name):
            if Site.module(alias) in valid:
                return Site.module(alias)
    if site.whole not in valid:
        Site.parse(site.name, list(valid))  # raises with the nearest names
    if site.head is not None:
        n = adapter.n_heads_at(site.whole)
        if n is not None and not 0 <= site.head < n:
            raise SiteError(f"head {site.head} out of range for {site.whole.name}: it has {n} heads (0..{n - 1})")
    return site


def model_device(adapter: Adapter) -> torch.device:
    """The device of the adapter's module (its first parameter or buffer; CPU when it has neither)."""
    module = getattr(adapter, "module", None)
    if module is not None:
        for t in chain(module.parameters(), module.buffers()):
            return t.device
    return torch.device("cpu")


def on_model_device(adapter: Adapter, prepared: Prepared) -> Prepared:
    """`prepared` with its tensors on the model's device: token ids made on the CPU (the tokenizer's,
    a dataset's) run on a model placed elsewhere. Unchanged (no copy) when they are there already."""
    dev = model_device(adapter)

    def move(x: Any) -> Any:
        return x.to(dev) if isinstance(x, Tensor) and x.device != dev else x

    tensors = [*prepared.args, *prepared.kwargs.values(), prepared.input_ids, prepared.attention_mask,
               prepared.logit_columns]
    if all(not isinstance(x, Tensor) or x.device == dev for x in tensors):
        return prepared
    return replace(prepared, args=tuple(move(x) for x in prepared.args),
                   kwargs={k: move(v) for k, v in prepared.kwargs.items()},
                   input_ids=move(prepared.input_ids), attention_mask=move(prepared.attention_mask),
                   logit_columns=move(prepared.logit_columns))


def run(
    adapter: Adapter,
    inputs: Any,
    capture: Iterable[Site | str] | Site | str = (),
    interventions: Sequence[Intervention] | Intervention = (),
    grad: Callable[[Any], Tensor] | None = None,
    track_grad: bool = False,
) -> RunResult:
    """Run the model on `inputs`, capturing `capture` and applying `interventions`.

    `grad`, if given, maps the model output to a scalar metric; the gradients of that metric at
    every captured site are returned in `result.grads`, from one backward pass (activations and
    gradients together, as attribution methods need). Without `grad`, the forward pass runs under
    `torch.no_grad()` unless `track_grad=True`.

    Example::

        from mechscope.core import run
        res = run(ms.wrap(net), inputs, capture=["resid_post.0"])   # an adapter, not a bare module
        res.cache["resid_post.0"]                # (batch, pos, d_model)
    """
    if isinstance(capture, (Site, str)):
        capture = [capture]
    if isinstance(interventions, Intervention):
        interventions = [interventions]
    valid = set(adapter.sites())
    wanted = [resolve(adapter, s, valid) for s in capture]
    by_site: dict[Site, list[Intervention]] = defaultdict(list)
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise InterventionError(f"expected an Intervention, got {type(iv).__name__}")
        site = resolve(adapter, iv.site, valid)
        if site != iv.site:  # a module path that was parsed as a look-alike site name
            iv = replace(iv, site=site)
        by_site[iv.site].append(iv)
        n = adapter.n_heads_at(iv.site)
        if iv.heads is not None and n is not None and isinstance(iv.heads, tuple):
            bad = [h for h in iv.heads if not -n <= h < n]
            if bad:
                raise InterventionError(f"{type(iv).__name__} at {iv.site.name}: heads {bad} out of range; "
                                        f"the site has {n} heads (0..{n - 1})")
    capture_whole: dict[Site, list[Site]] = defaultdict(list)
    for s in wanted:
        capture_whole[s.whole].append(s)
    touched = set(by_site) | set(capture_whole)
    prepared = on_model_device(adapter, adapter.prepare(inputs))
    grad_on = grad is not None or track_grad
    if not touched and grad is None:
        with torch.set_grad_enabled(grad_on), running(None):  # no handler of an enclosing run acts
            out = forward_pass(adapter, prepared)
        return RunResult(out, adapter.logits(out), Cache(), prepared=prepared)

    owner = object()  # this call's handlers act only in its own forward pass, not in a nested run's
    store: dict[Site, Tensor] = {}
    ctx_cache: dict[Site, Tensor] = store  # interventions may read what was captured earlier

    # Captured views of a larger buffer (q, k, v out of a fused qkv projection) wait here until a
    # capture from another buffer arrives: if the captures of one buffer cover it, the views are
    # kept (no copy); otherwise they are copied, so that at most one such buffer is pinned at a time.
    pending: dict[int, list[Site]] = {}

    def settle(keep: int | None = None) -> None:
        for ptr in [p for p in pending if p != keep]:
            sites = pending.pop(ptr)
            claimed = sum(store[s].numel() * store[s].element_size() for s in sites)
            if claimed * 1.1 < store[sites[0]].untyped_storage().nbytes():
                for s in sites:
                    store[s] = store[s].clone()

    def keep_view(site: Site, x: Tensor) -> None:
        ptr = x.untyped_storage().data_ptr()
        if pending:
            settle(keep=ptr)
        store[site] = x
        if x.untyped_storage().nbytes() > 1.1 * x.numel() * x.element_size():
            pending.setdefault(ptr, []).append(site)

    def make_handler(site: Site) -> Handler:
        ivs = by_site.get(site, [])
        keep = capture_whole.get(site, [])
        ctx = Context(site, prepared.input_ids, prepared.attention_mask, ctx_cache)

        def fn(x: Tensor) -> Tensor:
            if len(ivs) == 1:
                x = ivs[0].apply(x, ctx)
            elif ivs:  # a sweep: one copy of the activation, every intervention written into it in order
                x = x.clone()
                for iv in ivs:
                    iv.write(x, ctx)
            if keep:
                if grad is not None and not x.requires_grad:
                    raise SiteError(f"no gradient reaches {site.name}: it does not depend on anything that "
                                    "requires grad")
                if grad is not None:
                    store[site] = x
                else:
                    keep_view(site, x)
            return x

        return Handler(fn, modifies=bool(ivs), owner=owner)

    handles = []
    try:
        if grad is not None:
            entry = adapter.grad_entry()
            if entry is not None:
                handles += entry.install(Handler(_require_grad, modifies=True, owner=owner))
        # in forward order, not set order: taps sharing a module (BERT's attn_out and attn.result)
        # then chain the same way in every process, whatever the string hash seed
        for site in [s for s in adapter.sites() if s in touched]:
            handles += adapter.tap(site).install(make_handler(site))
        with adapter.session(touched), torch.set_grad_enabled(grad_on), running(owner):
            out = forward_pass(adapter, prepared)
    finally:
        for h in handles:
            h.remove()
    settle()

    logits = adapter.logits(out)
    grads = metric = None
    if grad is not None:
        metric = grad(out)
        sites = list(store)
        # (nothing captured: just the metric; autograd.grad refuses an empty list of inputs)
        got = backward(metric, [store[s] for s in sites], allow_unused=True) if sites else ()
        grads = Cache(_expand({s: (g if g is not None else torch.zeros_like(store[s]))
                               for s, g in zip(sites, got)}, capture_whole))
        store = {s: _owned(t.detach()) for s, t in store.items()}
        metric = metric.detach()
    return RunResult(out, logits, Cache(_expand(store, capture_whole)), grads, metric, prepared)


def _require_grad(x: Tensor) -> Tensor:
    if x.requires_grad or not (x.is_floating_point() or x.is_complex()):  # token ids cannot require grad
        return x
    return x.detach().requires_grad_(True)


def _expand(store: dict[Site, Tensor], asked: dict[Site, list[Site]]) -> dict[Site, Tensor]:
    """Key the cache by the sites asked for: head-restricted sites get their head's slice.

    Without the whole site, a head's slice is copied so that it does not keep every head alive.
    """
    out: dict[Site, Tensor] = {}
    for whole, sites in asked.items():
        for s in sites:
            t = store[whole]
            if s.head is not None:
                t = t.select(whole.layout.head, s.head)
                t = t if whole in sites else _owned(t)
            out[s] = t
    return out


def _owned(t: Tensor) -> Tensor:
    """`t`, or a copy of it when it is a small view of a larger buffer (q out of a fused qkv).

    Keeping such a view would keep its whole parent buffer alive: memory would grow with the
    model, not with what was asked for.
    """
    if t.untyped_storage().nbytes() > 1.1 * t.numel() * t.element_size():
        return t.clone()
    return t
