"""The computational graph for edge-level work: senders, receivers, edges and circuits.

Senders are the components that write into the residual stream, as `Node`s:

    input          Node(resid_pre.0)          embeddings (token + position), what block 0 reads
    head L.h       Node(attn.z.L, h)          its write is attn.result.L[h] = z[h] @ W_O[h]
    MLP L          Node(mlp_out.L)

Receivers are the inputs that read the residual stream, also `Node`s, at input sites:

    query/key/value input of head L.h    Node(attn.q_in.L, h), Node(attn.k_in.L, h), Node(attn.v_in.L, h)
                                         (keys and values one per *query* head: grouped-query
                                         attention is ungrouped for edge work)
    MLP L's input                        Node(mlp_in.L)
    the output (the final residual)      Node(logits)                    read at resid_post of the last block

An `Edge` joins a sender to a receiver downstream of it. Edges are stored group by group: a
`Group` is the receivers that read the residual at one point (layer L's q, k, v inputs of every
head; layer L's MLP; the output), and its edges form a dense (n_up, n_recv) block, sender-major:
the first `n_up` senders (everything written before that point) times the group's receivers. A
model with a parallel residual (GPT-NeoX) has MLP L read the same residual as attention L.

A `Circuit` is a set of edges.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.site import Kind, Site
from ..models import wrap
from .ablation import Node

INPUT = Node(Site(Kind.RESID_PRE, 0))
OUTPUT = Node(Site(Kind.LOGITS))
HEAD_INPUTS = (Kind.Q_IN, Kind.K_IN, Kind.V_IN)


@dataclass(frozen=True, order=True)
class Edge:
    """sender -> receiver: the sender's write as the receiver reads it.

    Example::

        from mechscope.causal import OUTPUT, Edge, Node
        e = Edge(Node(ms.Site(ms.Kind.Z, 1), 3), OUTPUT)     # head L1H3 -> the logits
        graph.index(e)                                       # its column in masks (n_edges,)
    """

    sender: Node
    receiver: Node

    def __str__(self) -> str:
        return f"{label(self.sender)} -> {label(self.receiver)}"


def label(node: Node) -> str:
    """A short name: `input`, `a1.3` (head), `m1` (MLP), `a1.3<q` (head input), `m1<`, `output`."""
    k, layer = node.site.kind, node.site.layer
    if node == INPUT:
        return "input"
    if node == OUTPUT:
        return "output"
    if k is Kind.Z:
        return f"a{layer}.{node.head}"
    if k is Kind.MLP_OUT:
        return f"m{layer}"
    if k in HEAD_INPUTS:
        return f"a{layer}.{node.head}<{k.value[5]}"
    if k is Kind.MLP_IN:
        return f"m{layer}<"
    return str(node)


def owner(receiver: Node) -> Node | None:
    """The component a receiver belongs to (its head or MLP); None for the output."""
    k = receiver.site.kind
    if k in HEAD_INPUTS:
        return Node(Site(Kind.Z, receiver.site.layer), receiver.head)
    if k is Kind.MLP_IN:
        return Node(Site(Kind.MLP_OUT, receiver.site.layer))
    return None


@dataclass(frozen=True)
class Group:
    """Receivers that read the residual at one point: `sites` (each with `heads` receivers, site-major),
    fed by the first `n_up` senders; their edges are indices offset .. offset + n_up * n_recv."""

    sites: tuple[Site, ...]
    heads: int
    n_up: int
    offset: int
    receivers: tuple[Node, ...]

    @property
    def n_recv(self) -> int:
        """The number of receivers in the group."""
        return len(self.receivers)

    @property
    def size(self) -> int:
        """The number of edges into the group: n_up senders x n_recv receivers."""
        return self.n_up * self.n_recv


@dataclass(frozen=True)
class SenderBlock:
    """Senders whose outputs are read at one site: `count` of them from index `start` (a head axis
    when `per_head`)."""

    site: Site
    start: int
    count: int
    per_head: bool


@dataclass(frozen=True, eq=False)
class Graph:
    """Senders, receiver groups and edges of one model (see the module docstring for the layout).

    Example::

        from mechscope.causal import OUTPUT, graph_of
        graph = graph_of(ms.load("zoo:induction-quick"))
        graph.n_edges
        mask = graph.mask(graph.into([OUTPUT]))   # (n_edges,): 1 on every edge into the logits
    """

    senders: tuple[Node, ...]
    blocks: tuple[SenderBlock, ...]
    groups: tuple[Group, ...]
    edges: tuple[Edge, ...]
    n_layers: int
    n_heads: int
    output_site: Site
    _index: dict[Edge, int] = field(default_factory=dict, repr=False)

    @property
    def n_edges(self) -> int:
        """The number of edges."""
        return len(self.edges)

    @property
    def receivers(self) -> tuple[Node, ...]:
        """Every receiver node, group by group."""
        return tuple(r for g in self.groups for r in g.receivers)

    @property
    def receiver_sites(self) -> list[Site]:
        """The sites the receivers read at, group by group."""
        return [s for g in self.groups for s in g.sites]

    @property
    def sender_sites(self) -> list[Site]:
        """The sites the senders write at, block by block."""
        return [b.site for b in self.blocks]

    def __contains__(self, edge: object) -> bool:
        return edge in self._index

    def index(self, edge: Edge) -> int:
        """The position of `edge` in `edges` (and in every (n_edges,) mask or score vector)."""
        try:
            return self._index[edge]
        except KeyError:
            raise KeyError(f"{edge} is not an edge of this graph (a receiver reads only senders upstream "
                           "of it)") from None

    def mask(self, edges: Iterable[Edge], value: float = 1.0) -> Tensor:
        """(n_edges,): `value` on the given edges, 0 elsewhere."""
        m = torch.zeros(self.n_edges)
        idx = [self.index(e) for e in edges]
        if idx:
            m[torch.tensor(idx)] = value
        return m

    def group_view(self, masks: Tensor, g: Group) -> Tensor:
        """(..., n_edges) -> (..., n_up, n_recv): one group's block of a mask."""
        return masks[..., g.offset: g.offset + g.size].unflatten(-1, (g.n_up, g.n_recv))

    def edges_of(self, values: Tensor) -> dict[Edge, float]:
        """(n_edges,) -> {edge: value}."""
        return dict(zip(self.edges, values.tolist()))

    def sender_index(self, node: Node) -> int:
        """The position of `node` among the senders."""
        try:
            return self.senders.index(node)
        except ValueError:
            raise KeyError(f"{node} is not a sender of this graph") from None

    def out_edges(self, senders: Iterable[Node]) -> list[Edge]:
        """Every edge out of the given senders (ablating them all equals ablating the senders' outputs)."""
        want = set(senders)
        return [e for e in self.edges if e.sender in want]

    def into(self, receivers: Iterable[Node]) -> list[Edge]:
        """Every edge into the given receivers; a head or MLP node stands for all its inputs."""
        want = set(receivers)
        return [e for e in self.edges if e.receiver in want or owner(e.receiver) in want]

    def __repr__(self) -> str:
        return (f"Graph({len(self.senders)} senders, {len(self.receivers)} receivers, {self.n_edges} edges, "
                f"{self.n_layers} layers x {self.n_heads} heads)")


def graph_of(model: Any) -> Graph:
    """The edge graph of a transformer adapter with per-head input sites (TinyTransformer, GPT-2,
    GPT-NeoX, Llama/Qwen2/Qwen3/Mistral); other adapters fail with the sites they lack, and models
    with post-norms (Gemma) with the reason.

    Example::

        from mechscope.causal import graph_of
        graph = graph_of(ms.load("zoo:induction-quick"))
        graph.n_edges, len(graph.receivers)
    """
    model = wrap(model)
    valid = set(model.sites())
    n_layers, n_heads = getattr(model, "n_layers", None), getattr(model, "n_heads", None)
    need = [Site(k, 0) for k in HEAD_INPUTS] + [Site(Kind.RESID_PRE, 0), Site(Kind.RESULT, 0)]
    missing = [s.name for s in need if s not in valid]
    if n_layers is None or n_heads is None or missing:
        raise ValueError(f"{getattr(model, 'name', model)} has no edge graph: it lacks {missing or 'n_layers/n_heads'} "
                         "(edges need a pre-norm transformer adapter with per-head input sites)")
    if getattr(model, "post_norms", False):
        raise ValueError(f"{model.name} has no edge graph: it normalises each attention and MLP output before the "
                         "residual add, so the heads' results are not what they write to the residual (edges need "
                         "senders whose writes add up to it); use node-level methods (activation_patching, "
                         "attribution_patching) on it")
    senders: list[Node] = [INPUT]
    blocks = [SenderBlock(Site(Kind.RESID_PRE, 0), 0, 1, False)]
    groups: list[Group] = []
    edges: list[Edge] = []

    def add_group(sites: tuple[Site, ...], heads: int, receivers: tuple[Node, ...], n_up: int) -> None:
        groups.append(Group(sites, heads, n_up, len(edges), receivers))
        edges.extend(Edge(s, r) for s in senders[:n_up] for r in receivers)

    for layer in range(n_layers):
        n_attn = len(senders)  # attention of this layer reads everything written so far
        sites = tuple(Site(k, layer) for k in HEAD_INPUTS)
        add_group(sites, n_heads, tuple(Node(s, h) for s in sites for h in range(n_heads)), n_attn)
        blocks.append(SenderBlock(Site(Kind.RESULT, layer), len(senders), n_heads, True))
        senders += [Node(Site(Kind.Z, layer), h) for h in range(n_heads)]
        if Site(Kind.MLP_IN, layer) in valid:
            # sequential blocks: the MLP reads this layer's heads too; parallel ones (no resid_mid) do not
            n_up = len(senders) if Site(Kind.RESID_MID, layer) in valid else n_attn
            site = Site(Kind.MLP_IN, layer)
            add_group((site,), 1, (Node(site),), n_up)
            blocks.append(SenderBlock(Site(Kind.MLP_OUT, layer), len(senders), 1, False))
            senders.append(Node(Site(Kind.MLP_OUT, layer)))
    out_site = Site(Kind.RESID_POST, n_layers - 1)
    add_group((out_site,), 1, (OUTPUT,), len(senders))
    index = {e: i for i, e in enumerate(edges)}
    return Graph(tuple(senders), tuple(blocks), tuple(groups), tuple(edges), n_layers, n_heads, out_site, index)


@dataclass(frozen=True)
class Circuit:
    """A set of edges (everything not in it is what an ablation of the complement removes).

    Example::

        from mechscope.causal import Circuit, Node, graph_of
        graph = graph_of(model)
        heads = [Node(ms.Site(ms.Kind.Z, 0), 2), Node(ms.Site(ms.Kind.Z, 1), 1)]
        circuit = Circuit.from_nodes(graph, heads, name="induction")   # the edges among those nodes
    """

    edges: frozenset[Edge]
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "edges", frozenset(self.edges))

    def __len__(self) -> int:
        return len(self.edges)

    def __contains__(self, edge: object) -> bool:
        return edge in self.edges

    def __iter__(self) -> Iterator[Edge]:
        return iter(sorted(self.edges))

    @property
    def nodes(self) -> set[Node]:
        """Every component with an edge in the circuit (senders, and the heads/MLPs of receivers)."""
        out: set[Node] = set()
        for e in self.edges:
            out.add(e.sender)
            o = owner(e.receiver)
            out.add(o if o is not None else e.receiver)
        return out

    @classmethod
    def from_nodes(cls, graph: Graph, nodes: Iterable[Node], name: str = "") -> "Circuit":
        """Every edge between the given components (heads as Node(attn.z.L, h), MLPs), the input
        and the output: ablating the rest equals ablating the other components' outputs."""
        keep = set(nodes) | {INPUT, OUTPUT}
        return cls(frozenset(e for e in graph.edges if e.sender in keep and
                             (owner(e.receiver) in keep or e.receiver == OUTPUT)), name)

    def __str__(self) -> str:
        return f"Circuit({self.name + ': ' if self.name else ''}{len(self.edges)} edges)"

    def _repr_html_(self) -> str:
        from ..report.notebook import circuit_html

        return circuit_html(self)
