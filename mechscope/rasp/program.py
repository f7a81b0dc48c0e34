"""RASP-style programs: sequence operations over tokens and positions, and their direct evaluation.

A program is a graph of `SOp`s (sequence operations: one value per position):

    tokens, indices                      the input and the positions (0 for the first real token)
    Map(f, x)                            f applied at each position
    SequenceMap(f, x, y)                 f of two s-ops at each position
    Aggregate(Select(keys, queries, p), x)
                                         at each query position, the value of x at the one key
                                         position whose key and query satisfy p(key, query)
                                         (None where no key is selected; an error if several are)
    SelectorWidth(Select(keys, queries, p))
                                         at each query position, how many keys are selected

All s-ops are categorical (a finite set of values). `evaluate` runs a program on one input;
`mechscope.rasp.compiler` turns it into transformer weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, eq=False)
class Predicate:
    """A named comparison of a key value and a query value.

    Example::

        from mechscope.rasp import Predicate, Select, indices
        NEXT = Predicate("k == q + 1", lambda k, q: k == q + 1)
        Select(indices, indices, NEXT)
    """

    name: str
    fn: Callable[[Any, Any], bool]

    def __call__(self, key: Any, query: Any) -> bool:
        return bool(self.fn(key, query))


EQ = Predicate("==", lambda k, q: k == q)
LT = Predicate("<", lambda k, q: k < q)
LEQ = Predicate("<=", lambda k, q: k <= q)
GT = Predicate(">", lambda k, q: k > q)
TRUE = Predicate("true", lambda k, q: True)


@dataclass(frozen=True, eq=False)
class SOp:
    """A sequence operation; `name` (keyword, unique within a program) labels its residual block.

    Example::

        from mechscope.rasp import SequenceMap, indices, tokens
        program = SequenceMap(lambda t, i: (t, i), tokens, indices, name="pair")   # every s-op is an SOp
        program.children()
    """

    name: str = field(kw_only=True)

    def children(self) -> tuple["SOp", ...]:
        """The operations this one reads (none for tokens and indices)."""
        return ()


@dataclass(frozen=True, eq=False)
class Tokens(SOp):
    """The input tokens (the program's `tokens`).

    Example::

        from mechscope.rasp import run_program, tokens
        run_program(tokens, "abc")               # ["a", "b", "c"]
    """

    pass


@dataclass(frozen=True, eq=False)
class Indices(SOp):
    """The positions 0..n-1 (the program's `indices`).

    Example::

        from mechscope.rasp import indices, run_program
        run_program(indices, "abc")              # [0, 1, 2]
    """

    pass


@dataclass(frozen=True, eq=False)
class Map(SOp):
    """`fn` applied to each element of `inner` (compiled to an MLP).

    Example::

        from mechscope.rasp import Map, run_program, tokens
        run_program(Map(lambda t: t.upper(), tokens, name="upper"), "ab")   # ["A", "B"]
    """

    fn: Callable[[Any], Any]
    inner: SOp

    def children(self) -> tuple[SOp, ...]:
        """(inner,)."""
        return (self.inner,)


@dataclass(frozen=True, eq=False)
class SequenceMap(SOp):
    """`fn(a[i], b[i])` at each position (compiled to an MLP reading both).

    Example::

        from mechscope.rasp import TRUE, Select, SelectorWidth, SequenceMap, indices, tokens
        length = SelectorWidth(Select(tokens, tokens, TRUE), name="length")
        opp = SequenceMap(lambda n, i: n - i - 1, length, indices, name="opp")
    """

    fn: Callable[[Any, Any], Any]
    a: SOp
    b: SOp

    def children(self) -> tuple[SOp, ...]:
        """(a, b)."""
        return (self.a, self.b)


@dataclass(frozen=True, eq=False)
class Select:
    """Which key positions each query position selects: predicate(keys[k], queries[q]).

    Example::

        from mechscope.rasp import LT, Select, SelectorWidth, tokens
        smaller = SelectorWidth(Select(tokens, tokens, LT), name="smaller")   # keys < query
    """

    keys: SOp
    queries: SOp
    predicate: Predicate


@dataclass(frozen=True, eq=False)
class Aggregate(SOp):
    """At each query position, the mean of `sop` over the key positions the selector selects (compiled to an attention
    head).

    Example::

        from mechscope.rasp import EQ, Aggregate, Map, Select, indices, tokens
        prev = Aggregate(Select(indices, Map(lambda i: i - 1, indices, name="pi"), EQ), tokens, name="prev")
    """

    selector: Select
    sop: SOp

    def children(self) -> tuple[SOp, ...]:
        """The selector's keys and queries, and the aggregated operation."""
        return (self.selector.keys, self.selector.queries, self.sop)


@dataclass(frozen=True, eq=False)
class SelectorWidth(SOp):
    """At each query position, how many key positions the selector selects (compiled to a head and an MLP).

    Example::

        from mechscope.rasp import EQ, Select, SelectorWidth, run_program, tokens
        run_program(SelectorWidth(Select(tokens, tokens, EQ), name="hist"), "aba")   # [2, 1, 2]
    """

    selector: Select

    def children(self) -> tuple[SOp, ...]:
        """The selector's keys and queries."""
        return (self.selector.keys, self.selector.queries)


tokens = Tokens(name="tokens")
indices = Indices(name="indices")


def topological(program: SOp) -> list[SOp]:
    """Every s-op the program depends on, inputs first, the program last."""
    order: list[SOp] = []
    seen: set[int] = set()

    def visit(s: SOp) -> None:
        if id(s) in seen:
            return
        seen.add(id(s))
        for c in s.children():
            visit(c)
        order.append(s)

    visit(program)
    names = [s.name for s in order]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"s-op names must be unique within a program; repeated: {sorted(dup)}")
    return order


def evaluate(program: SOp, xs: Sequence[Any], causal: bool = False) -> dict[SOp, list[Any]]:
    """The value of every s-op of `program` at every position of input `xs`.

    With `causal`, a query position selects only among keys at or before it (as a causal
    transformer attends).

    Example::

        from mechscope.rasp import EQ, Select, SelectorWidth, evaluate, tokens
        hist = SelectorWidth(Select(tokens, tokens, EQ), name="hist")
        evaluate(hist, "aba")[hist]              # [2, 1, 2]; every s-op's values are in the dict
    """
    vals: dict[SOp, list[Any]] = {}
    n = len(xs)
    for s in topological(program):
        if isinstance(s, Tokens):
            vals[s] = list(xs)
        elif isinstance(s, Indices):
            vals[s] = list(range(n))
        elif isinstance(s, Map):
            vals[s] = [s.fn(v) for v in vals[s.inner]]
        elif isinstance(s, SequenceMap):
            vals[s] = [s.fn(a, b) for a, b in zip(vals[s.a], vals[s.b])]
        elif isinstance(s, (Aggregate, SelectorWidth)):
            sel = s.selector
            keys, queries = vals[sel.keys], vals[sel.queries]
            chosen = [[k for k in range(n) if (not causal or k <= q) and sel.predicate(keys[k], queries[q])]
                      for q in range(n)]
            if isinstance(s, SelectorWidth):
                vals[s] = [len(c) for c in chosen]
            else:
                out = []
                for q, c in enumerate(chosen):
                    if len(c) > 1:
                        raise ValueError(f"{s.name}: query position {q} selects {len(c)} keys; a categorical "
                                         "aggregate needs at most one")
                    out.append(vals[s.sop][c[0]] if c else None)
                vals[s] = out
        else:  # pragma: no cover - every SOp subclass is handled above
            raise TypeError(f"unknown s-op {type(s).__name__}")
    return vals


def run_program(program: SOp, xs: Sequence[Any], causal: bool = False) -> list[Any]:
    """The program's output at every position of `xs`.

    Example::

        from mechscope.rasp import EQ, Select, SelectorWidth, run_program, tokens
        run_program(SelectorWidth(Select(tokens, tokens, EQ), name="hist"), "abb")   # [1, 2, 2]
    """
    return evaluate(program, xs, causal)[program]
