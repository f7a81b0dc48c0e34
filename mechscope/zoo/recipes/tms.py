"""tms: Toy Models of Superposition (Elhage et al. 2022), x' = ReLU(WᵀW x + b).

Each setting ("group") trains many independent instances at once: W is one (instance, m, n)
tensor, and instances differ only in how often their features are active. Groups:
    dense     20 -> 5, importance 0.7^i, every feature always active (no superposition)
    pentagon   5 -> 2, uniform importance, feature probability from 1 down to 0.005
    sweep    100 -> 20, uniform importance, feature probability from 1 down to 0.1
A feature is active with its instance's probability and then uniform in [0, 1]; the loss is the
importance-weighted squared error, summed over features and instances, averaged over the batch.
Activations are laid out (inst, batch, ...), instances first.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..recipe import Recipe


class ToyModel(nn.Module):
    """`n_inst` independent instances of x' = ReLU(WᵀW x + b); x is (inst, batch, n_features).

    Instances come first so that each product is one batched matmul over instances.
    """

    def __init__(self, n_inst: int, n_features: int, n_hidden: int, feature_prob: list[float],
                 importance: list[float]):
        super().__init__()
        self.W = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_inst, n_hidden, n_features)))
        self.b = nn.Parameter(torch.zeros(n_inst, n_features))
        self.register_buffer("feature_prob", torch.tensor(feature_prob))  # (inst,)
        self.register_buffer("importance", torch.tensor(importance))  # (n_features,)
        self.hidden = nn.Identity()  # site "...hidden": (inst, batch, n_hidden)
        self.out = nn.Identity()  # site "...out": (inst, batch, n_features)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstructions (inst, batch, n_features) of `x` (inst, batch, n_features)."""
        h = self.hidden(torch.bmm(x, self.W.transpose(1, 2)))  # (inst, batch, n_hidden)
        return self.out(torch.relu(torch.bmm(h, self.W) + self.b[:, None]))  # (inst, batch, n_features)

    def sample(self, batch: int, gen: torch.Generator) -> Tensor:
        """A batch (inst, batch, n_features) from each instance's feature probability (see `sample`)."""
        return sample(batch, self.feature_prob, self.b.shape[1], gen)

    def loss(self, x: Tensor) -> Tensor:
        """Importance-weighted squared error per instance, summed over instances: a scalar."""
        err = self.importance * (self(x) - x) ** 2  # (inst, batch, n_features)
        return err.sum(-1).mean(1).sum()


class BatchFirst(nn.Module):
    """The same instances with activations laid out (batch, inst, ...), batch first, as analyses that
    take the first axis as the batch read them; it shares the ToyModel's parameters.

    Sites (through the generic adapter): `hidden` (batch, inst, n_hidden) and `out` (batch, inst,
    n_features)."""

    def __init__(self, toy: ToyModel):
        super().__init__()
        self.toy = toy
        self.hidden = nn.Identity()
        self.out = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Reconstructions (batch, inst, n_features) of `x` (batch, inst, n_features)."""
        h = self.hidden(torch.einsum("bif,ihf->bih", x, self.toy.W))  # (batch, inst, n_hidden)
        return self.out(torch.relu(torch.einsum("bih,ihf->bif", h, self.toy.W) + self.toy.b))

    def losses(self, out: Tensor, x: Tensor) -> Tensor:
        """(batch, inst): each instance's importance-weighted squared error on each input."""
        return (self.toy.importance * (out - x) ** 2).sum(-1)


class BatchFirstTMS(nn.Module):
    """Every group of a `TMS` batch first: `forward(dense=x, ...)` with x (batch, inst, n_features)
    returns {group: output}; sites `groups.NAME.hidden` and `groups.NAME.out`. Shares the parameters."""

    def __init__(self, tms: "TMS"):
        super().__init__()
        self.groups = nn.ModuleDict({name: BatchFirst(toy) for name, toy in tms.groups.items()})

    def forward(self, **xs: Tensor) -> dict[str, Tensor]:
        """{group: output (batch, inst, n_features)} for each group given as a keyword."""
        return {name: self.groups[name](x) for name, x in xs.items()}

    def losses(self, out: dict[str, Tensor], xs: dict[str, Tensor]) -> Tensor:
        """(batch, every instance of every group, in `instance_names` order)."""
        return torch.cat([self.groups[name].losses(out[name], xs[name]) for name in xs], 1)

    def instance_names(self, names: list[str] | None = None) -> list[str]:
        """"group[i]" for every instance of the given groups (all by default), in order."""
        return [f"{name}[{i}]" for name in (names or list(self.groups)) for i in range(self.groups[name].toy.b.shape[0])]


def sample(batch: int, feature_prob: Tensor, n_features: int, gen: torch.Generator) -> Tensor:
    """A batch (inst, batch, n_features): each feature active with its instance's probability p,
    then uniform in [0, 1]. One uniform u per entry does both: active iff u < p, value u / p."""
    p = feature_prob[:, None, None]  # (inst, 1, 1)
    u = torch.rand(len(feature_prob), batch, n_features, generator=gen).to(feature_prob.device)  # drawn on the CPU
    return torch.where(u < p, u / p, torch.zeros(()))


class TMS(nn.Module):
    """The groups of a tms run; `forward(pentagon=x, ...)` runs the named groups."""

    def __init__(self, groups: dict[str, dict[str, Any]]):
        super().__init__()
        self.groups = nn.ModuleDict({name: ToyModel(**_model_args(g)) for name, g in groups.items()})

    def forward(self, **xs: Tensor) -> dict[str, Tensor]:
        """{group: output (inst, batch, n_features)} for each group given as a keyword."""
        return {name: self.groups[name](x) for name, x in xs.items()}


def _model_args(g: dict[str, Any]) -> dict[str, Any]:
    probs = [p for p in g["feature_probs"] for _ in range(g["instances_per_prob"])]
    importance = [g["importance_decay"] ** i for i in range(g["n_features"])]
    return dict(n_inst=len(probs), n_features=g["n_features"], n_hidden=g["n_hidden"], feature_prob=probs,
                importance=importance)


def _logspace(hi: float, lo: float, n: int) -> list[float]:
    return [float(f"{v:.4g}") for v in torch.logspace(torch.log10(torch.tensor(hi)),
                                                      torch.log10(torch.tensor(lo)), n).tolist()]


def _groups(sweep_probs: int, sweep_instances: int, k: int = 8, sweep_batch: int = 1024) -> dict[str, dict[str, Any]]:
    return {
        "dense": dict(n_features=20, n_hidden=5, importance_decay=0.7, feature_probs=[1.0],
                      instances_per_prob=k, batch=1024),
        "pentagon": dict(n_features=5, n_hidden=2, importance_decay=1.0,
                         feature_probs=[1.0, 0.3, 0.1, 0.05, 0.02, 0.01, 0.005],
                         instances_per_prob=k, batch=2048),
        # 1/(1-S) from 1 to 10: the range where the paper's feature dimensionalities sit on 1/2
        # (antipodal pairs) and 2/5 (pentagons); sparser instances pack features into
        # high-dimensional polytopes (D ~ 0.2), which says nothing about these two fractions.
        "sweep": dict(n_features=100, n_hidden=20, importance_decay=1.0,
                      feature_probs=_logspace(1.0, 0.1, sweep_probs),
                      instances_per_prob=sweep_instances, batch=sweep_batch),
    }


class TMSRecipe(Recipe):
    """Toy Models of Superposition: groups of toy models at several sizes and sparsities, trained together."""

    name = "tms"
    summary = "Toy Models of Superposition: 20->5 dense, 5->2 and 100->20 sparsity sweeps"
    # Adam at lr 1e-2 with a cosine decay to 0: the geometry settles within ~2k steps (lr 1e-3 flat,
    # the paper's setting, had not converged after 1k steps here). "short" is what `replicate tms
    # --quick` trains (5.2 min measured on a busy 2-core machine); "quick" only serves the tests.
    variants = {
        # 48 sparsities: the sticky fractions (1/2, 2/5) each hold over a narrow band of sparsities,
        # which a fine grid samples (2/5 over about five of them). Two instances at each, because which
        # polytope an instance settles into depends on its initialisation.
        "": dict(groups=_groups(48, 2), lr=1e-2, schedule="cosine", steps=3000, eval_every=500, log_every=50),
        "short": dict(groups=_groups(24, 1), lr=1e-2, schedule="cosine", steps=2000, eval_every=500,
                      log_every=50),
        "quick": dict(groups=_groups(8, 1, k=4, sweep_batch=512), lr=1e-2, schedule="cosine", steps=1000,
                      eval_every=250, log_every=50),
    }

    def lr(self, step: int, hp: dict[str, Any]) -> float:
        """The learning rate of update `step`: cosine decay to 0 when hp["schedule"] is "cosine", else the
        default."""
        if hp.get("schedule") == "cosine":
            return hp["lr"] * 0.5 * (1 + math.cos(math.pi * step / hp["steps"]))
        return super().lr(step, hp)

    def build(self, hp: dict[str, Any]) -> TMS:
        """A freshly initialised TMS with hp's groups."""
        return TMS(hp["groups"])

    def data(self, hp: dict[str, Any], seed: int) -> dict[str, Tensor]:
        """A fixed evaluation batch of 2048 per group, from its own seed."""
        # a fixed evaluation batch per group, from its own generator (training batches come from `gen`)
        g = torch.Generator().manual_seed(10_000 + seed)
        out = {}
        for name, grp in hp["groups"].items():
            args = _model_args(grp)
            out[name] = sample(2048, torch.tensor(args["feature_prob"]), args["n_features"], g)
        return out

    def loss(self, model: TMS, data, hp, gen) -> Tensor:
        """The sum over groups of each group's loss on a fresh batch drawn from `gen`."""
        total = torch.zeros(())
        for name, m in model.groups.items():
            total = total + m.loss(m.sample(hp["groups"][name]["batch"], gen))
        return total

    @torch.no_grad()
    def evaluate(self, model: TMS, data: dict[str, Tensor], hp) -> dict[str, float]:
        """Each group's loss on its evaluation batch, per instance."""
        return {f"loss_{name}": float(m.loss(data[name])) / m.b.shape[0] for name, m in model.groups.items()}


RECIPE = TMSRecipe()
