"""FeatureSet: a family of scalar features read off one site (neurons, directions, dictionary latents).

A feature is a number per token computed from one site's activation: a neuron's value, the
projection on a direction (a probe, a head's output direction), or a dictionary latent. A
FeatureSet holds many of them over one site, with `encode` mapping the site's activations
(..., d_site) to feature values (..., n_features) and, where the features write back into the
model, their write directions (n_features, d_site), used for logit effects and substitution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..core import Site

Kind = Literal["neuron", "direction", "latent"]


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Features over one site. `name` identifies the set in a feature store.

    Example::

        from mechscope.features import FeatureSet
        feats = FeatureSet.neurons(ms.Site(ms.Kind.MLP_POST, 1), units=range(64), name="mlp.post.1")
        feats.encode(acts)                       # acts (batch, pos, d_mlp) -> (batch, pos, 64)
    """

    name: str
    site: Site
    kind: Kind
    labels: tuple[str, ...]
    encode: Callable[[Tensor], Tensor]  # (..., d_site) -> (..., n_features)
    directions: Tensor | None = None  # (n_features, d_site): what each feature writes, if known
    units: tuple[int, ...] | None = None  # for neuron sets: which units of the site

    def __post_init__(self) -> None:
        if self.kind not in ("neuron", "direction", "latent"):
            raise ValueError(f"kind must be neuron, direction or latent, got {self.kind!r}")
        if not self.labels:
            raise ValueError(f"feature set {self.name!r} has no features")
        if self.directions is not None and self.directions.shape[0] != len(self.labels):
            raise ValueError(f"{self.name}: {self.directions.shape[0]} directions for {len(self.labels)} features")

    def __len__(self) -> int:
        return len(self.labels)

    def _repr_html_(self) -> str:
        from ..report.notebook import feature_set_html

        return feature_set_html(self)

    @staticmethod
    def neurons(site: Site, units: Sequence[int] | None = None, d: int | None = None,
                name: str | None = None, directions: Tensor | None = None) -> "FeatureSet":
        """The units of a neuron site (`mlp.post.L`, say): all `d` of them, or `units`."""
        if units is None:
            if d is None:
                raise ValueError("give the units to read or the site's width d")
            units = range(d)
        idx = torch.as_tensor(list(units), dtype=torch.long)
        return FeatureSet(name or f"{site.short} neurons", site, "neuron", tuple(f"n{int(u)}" for u in idx),
                          lambda acts: acts[..., idx.to(acts.device)],
                          None if directions is None else directions[idx], tuple(int(u) for u in idx))

    @staticmethod
    def from_directions(site: Site, vectors: Tensor, labels: Sequence[str] | None = None,
                        name: str | None = None, normalise: bool = True) -> "FeatureSet":
        """Projections of the site's activation on each row of `vectors` (n, d_site)."""
        if vectors.dim() != 2:
            raise ValueError(f"directions must be (n, d_site), got shape {tuple(vectors.shape)}")
        v = vectors.detach().float()
        if normalise:
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        labels = tuple(labels) if labels is not None else tuple(f"d{i}" for i in range(len(v)))
        return FeatureSet(name or f"{site.short} directions", site, "direction", labels,
                          lambda acts: acts.float() @ v.to(acts.device).T, v)

    @staticmethod
    def from_dictionary(site: Site, encode: Callable[[Tensor], Tensor], decoder: Tensor,
                        name: str, labels: Sequence[str] | None = None) -> "FeatureSet":
        """Latents of a sparse dictionary: `encode` (..., d) -> (..., n), decoder rows (n, d)."""
        labels = tuple(labels) if labels is not None else tuple(f"f{i}" for i in range(decoder.shape[0]))
        return FeatureSet(name, site, "latent", labels, encode, decoder.detach())
