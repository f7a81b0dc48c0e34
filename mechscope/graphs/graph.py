"""`AttributionGraph`: nodes, the dense matrix of direct effects between them, and its JSON form.

Node kinds, in the order they are stored (ids are positions in `nodes`):

- `latent` — an active latent (layer, position, index) with its activation;
- `error` — a layer's error term at a position (the MLP output its latents do not make up; a layer
  without latents is all error);
- `token` — a position's token embedding;
- `logit` — one output logit at the last position, with its probability.

`adjacency[t, s]` is the direct linear effect of node s on node t: what s adds to t's input
(a latent's pre-activation, a logit) through the frozen residual and attention paths. Only latent
and logit rows have entries. `bias[t]` is the rest of t's input (norm, attention and decoder
biases, position embeddings): `adjacency[t].sum() + bias[t] == inputs[t]`, which
`linearity_error` measures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import Tensor


class NodeKind(str, Enum):
    """The kinds of graph node (see the module docstring); the value is the name used in JSON.

    Example::

        from mechscope.graphs import NodeKind
        [n for n in g.nodes if n.kind is NodeKind.LOGIT]
    """

    LATENT = "latent"
    ERROR = "error"
    TOKEN = "token"
    LOGIT = "logit"


@dataclass(frozen=True)
class Node:
    """One node of an attribution graph: its kind, layer, position, index and value (a logit's probability
    too).

    Example::

        from mechscope.graphs import Node, NodeKind
        Node(NodeKind.LATENT, layer=2, pos=5, index=317).label()     # "L2/317@5"
    """

    kind: NodeKind
    layer: int | None = None
    pos: int | None = None
    index: int | None = None  # a latent's index in its layer, a logit's or token's vocabulary id
    value: float = 0.0  # a latent's activation, an error term's norm, a logit's value
    prob: float | None = None  # a logit's probability

    def label(self) -> str:
        """A short readable name: "L{layer}/{index}@{pos}", "err L{layer}@{pos}", "tok {index}@{pos}" or "logit
        {index}"."""
        k = self.kind
        if k is NodeKind.LATENT:
            return f"L{self.layer}/{self.index}@{self.pos}"
        if k is NodeKind.ERROR:
            return f"err L{self.layer}@{self.pos}"
        if k is NodeKind.TOKEN:
            return f"tok {self.index}@{self.pos}"
        return f"logit {self.index}"


@dataclass(eq=False)
class AttributionGraph:
    """A prompt's attribution graph through its local replacement model (see attribution.py).

    Example::

        from mechscope.graphs import NodeKind, attribute
        g = attribute(rep, target=token_id)
        g.adjacency                              # (N, N): [target, source]
        g.of_kind(NodeKind.LATENT)
        g.to_json()
    """

    model: str
    tokens: list[int]
    nodes: list[Node]
    adjacency: Tensor  # (N, N): adjacency[target, source]
    bias: Tensor  # (N,)
    inputs: Tensor  # (N,): each target's input (latent pre-activation, logit); 0 for sources
    logit_weights: Tensor  # (N,): the weight of each logit node in influence (sums to 1)
    linearity_error: float  # max |adjacency.sum(1) + bias - inputs| over targets
    exactness: float  # max |replacement logits - model logits| on the prompt
    token_text: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def of_kind(self, kind: NodeKind) -> Tensor:
        """(N,) bool: which nodes are of `kind`."""
        return torch.tensor([n.kind is kind for n in self.nodes], dtype=torch.bool)

    def index(self, node: Node) -> int:
        """The id (position in `nodes`) of `node`."""
        return self.nodes.index(node)

    def find(self, kind: NodeKind, **fields: int) -> int:
        """The id of the node of `kind` with the given layer / pos / index."""
        for i, n in enumerate(self.nodes):
            if n.kind is kind and all(getattr(n, k) == v for k, v in fields.items()):
                return i
        raise KeyError(f"no {kind.value} node with {fields}")

    def to_json(self, keep: Tensor | None = None, edges: Tensor | None = None, min_weight: float = 0.0,
                scores: dict | None = None, influence: Tensor | None = None) -> dict[str, Any]:
        """Plain JSON for the viewer: nodes (kept ones, each with its `influence` when given: (N,),
        e.g. `Pruned.influence`), edges (kept, |w| > min_weight), scores."""
        N = len(self.nodes)
        keep = torch.ones(N, dtype=torch.bool) if keep is None else keep
        ids = keep.nonzero().flatten().tolist()
        sub = self.adjacency[keep][:, keep]  # the kept nodes' block only: no copy of the whole matrix
        if edges is not None:
            sub = sub * edges[keep][:, keep]
        t, s = (sub.abs() > min_weight).nonzero(as_tuple=True)
        nodes = []
        for i in ids:
            n = self.nodes[i]
            d = {"id": i, "kind": n.kind.value, "layer": n.layer, "pos": n.pos, "index": n.index,
                 "value": n.value, "label": n.label()}
            if n.prob is not None:
                d["prob"] = n.prob
            if influence is not None:
                d["influence"] = float(influence[i])
            if n.kind in (NodeKind.LATENT, NodeKind.LOGIT):
                d["bias"] = float(self.bias[i])
            if n.kind is NodeKind.TOKEN and self.token_text is not None:
                d["text"] = self.token_text[n.pos]
            nodes.append(d)
        edges_out = [{"source": ids[b], "target": ids[a], "weight": float(sub[a, b])}
                     for a, b in zip(t.tolist(), s.tolist())]
        return {"schema": "mechscope.attribution_graph/1", "model": self.model, "tokens": self.tokens,
                "token_text": self.token_text, "nodes": nodes, "edges": edges_out,
                "scores": scores or {}, "exactness": self.exactness, "linearity_error": self.linearity_error,
                "meta": self.meta}
