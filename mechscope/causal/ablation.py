"""Ablation as a value: what "removing" a component means, and the interventions that do it.

A faithfulness number is meaningless without its ablation: zero, the mean over a named
reference set, a resample from a named distribution, or a counterfactual patch; per node or per
edge; at which positions; noising or denoising; ablating the circuit or its complement. An
`AblationSpec` records all of it and every Score made with it carries `spec.describe()`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from torch import Tensor

from ..core import Intervention, Mean, Patch, Resample, Site, Zero
from ..core.cache import Cache


class AblationKind(str, Enum):
    """What replaces a removed component's output: zero, a mean, a resampled value, or a counterfactual patch.

    Example::

        from mechscope.causal import AblationKind, AblationSpec
        AblationSpec(AblationKind.RESAMPLE, reference="corrupted prompts")   # same as AblationSpec("resample", ...)
    """

    ZERO = "zero"  # set the component's output to zero
    MEAN = "mean"  # the component's mean output over a named reference set
    RESAMPLE = "resample"  # its output on a prompt drawn (seeded) from a named distribution
    PATCH = "patch"  # its output on each prompt's own counterfactual


@dataclass(frozen=True, order=True)
class Node:
    """A component: a site, optionally one head of it (`Node(Site(Kind.Z, 3), 5)` is head L3H5).

    Example::

        from mechscope.causal import Node
        Node(ms.Site(ms.Kind.Z, 3), 5)           # head L3H5
        Node(ms.Site(ms.Kind.MLP_OUT, 2))        # MLP 2
    """

    site: Site
    head: int | None = None

    def __str__(self) -> str:
        return self.site.short if self.head is None else f"{self.site.short}.h{self.head}"


@dataclass(frozen=True)
class AblationSpec:
    """How components are removed. `reference` names the data behind mean/resample/patch values.

    Example::

        from mechscope.causal import AblationSpec
        spec = AblationSpec("patch", reference="name swaps", granularity="edge")
        spec.describe()                          # {"ablation": "patch", "reference": "name swaps", "level": "edge", ...}
    """

    kind: AblationKind = AblationKind.MEAN
    reference: str = ""
    granularity: Literal["node", "edge"] = "node"
    positions: tuple[int, ...] | None = None  # None: every position
    direction: Literal["noising", "denoising"] = "noising"
    seed: int = 0
    ablate: Literal["complement", "circuit"] = "complement"  # what is removed: all but the circuit, or it

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", AblationKind(self.kind))
        if self.kind is not AblationKind.ZERO and not self.reference:
            raise ValueError(f"a {self.kind.value} ablation needs the name of its reference data")
        if self.granularity not in ("node", "edge"):
            raise ValueError(f"granularity must be 'node' or 'edge', got {self.granularity!r}")
        if self.direction not in ("noising", "denoising"):
            raise ValueError(f"direction must be 'noising' or 'denoising', got {self.direction!r}")
        if self.ablate not in ("complement", "circuit"):
            raise ValueError(f"ablate must be 'complement' or 'circuit', got {self.ablate!r}")
        if self.direction == "denoising" and self.kind is not AblationKind.PATCH:
            raise ValueError("denoising restores clean activations into a counterfactual run: it needs kind='patch'")
        if self.positions is not None:
            object.__setattr__(self, "positions", tuple(int(p) for p in self.positions))

    def describe(self) -> dict[str, Any]:
        """The spec as plain key/value pairs, the `how` every Score made with it carries."""
        return {"ablation": self.kind.value, "reference": self.reference or None,
                "level": self.granularity, "positions": "all" if self.positions is None else list(self.positions),
                "direction": self.direction, "ablation_seed": self.seed, "ablated": self.ablate}

    def interventions(self, nodes: Iterable[Node], reference: Cache | None = None) -> list[Intervention]:
        """Node-level interventions removing `nodes`; `reference` holds each node site's activations
        on the reference data (mean, resample) or on the counterfactual prompts (patch)."""
        if self.granularity != "node":
            raise NotImplementedError("edge-level ablation is not a set of site interventions: use "
                                      "mechscope.causal.edges (edge_run, ablated_values)")
        out: list[Intervention] = []
        for node in nodes:
            where = {"heads": None if node.head is None else [node.head], "positions": self.positions}
            if self.kind is AblationKind.ZERO:
                out.append(Zero(node.site, **where))
                continue
            if reference is None or node.site not in reference:
                raise ValueError(f"{self.kind.value} ablation of {node} needs reference activations at "
                                 f"{node.site.name}")
            ref: Tensor = reference[node.site]
            if self.kind is AblationKind.MEAN:
                out.append(Mean.of(node.site, ref, **where))
            elif self.kind is AblationKind.RESAMPLE:
                out.append(Resample(node.site, source=ref, seed=self.seed, **where))
            else:
                out.append(Patch(node.site, value=ref, **where))
        return out
