"""Hypothesis: a claim about how a network computes, as a value that `causal.scrub` can test.

A hypothesis is a correspondence between the network's components and an explanation (causal
scrubbing, Chan et al. 2022). Each part names one component (a site, optionally some of its
heads, units or positions) and says what stands in for it:

    Code(component, fn)        the component is computed by code: `fn(activation, context)` returns
                               its value from the inputs (`context.input_ids`) and, optionally, the
                               activations of other sites listed in `needs` (read from
                               `context.cache`, which holds the values this run computed, code
                               included: parts chain)
    Resampled(component, key)  the hypothesis claims the component only depends on `key(ids)`: its
                               activation is taken from another input with the same key (drawn
                               with a fixed seed)
    AsIs(component)            the network's own computation, left as it is

Each part carries the size of its explanation: lines of code (counted from the function's source,
blank lines, comments and docstrings left out) and numbers (the tensors the code uses that were
fitted on training data or read from the network's weights, counted entry by entry).

The types live in core so that analyses of any area can build hypotheses for `causal.scrub`.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from torch import Tensor

from .interventions import Context
from .site import Site

CodeFn = Callable[[Tensor, Context], Tensor]
EquivalenceFn = Callable[[Tensor], Tensor]  # ids (n, ...) -> keys (n,): equal keys, equivalent inputs


def _index(ix: Any) -> tuple[int, ...] | None:
    if ix is None:
        return None
    if isinstance(ix, int):
        return (ix,)
    return tuple(int(i) for i in ix)


@dataclass(frozen=True)
class Component:
    """A site, optionally restricted to some heads, units (the last axis) or positions."""

    site: Union[Site, str]
    heads: tuple[int, ...] | None = None
    units: tuple[int, ...] | None = None
    positions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("heads", "units", "positions"):
            object.__setattr__(self, name, _index(getattr(self, name)))

    @property
    def label(self) -> str:
        """The component's name: the site's name, then any heads, units and positions in brackets."""
        name = self.site.name if isinstance(self.site, Site) else str(self.site)
        extra = [f"{k}={list(v)}" for k, v in (("heads", self.heads), ("units", self.units),
                                                  ("positions", self.positions)) if v is not None]
        return name + (f"[{', '.join(extra)}]" if extra else "")

    def where(self) -> dict[str, Any]:
        """The restrictions as keyword arguments of an intervention."""
        return {k: list(v) for k, v in (("heads", self.heads), ("units", self.units),
                                        ("positions", self.positions)) if v is not None}


def _component(c: Component | Site | str) -> Component:
    return c if isinstance(c, Component) else Component(c)


def code_lines(fn: Callable) -> int:
    """Lines of `fn`'s source that do something: no blank lines, comments or docstrings."""
    target = getattr(fn, "__wrapped__", fn)
    try:
        src = textwrap.dedent(inspect.getsource(target))
    except (OSError, TypeError):
        raise ValueError(f"cannot read the source of {fn!r} to count its lines: give lines= explicitly") from None
    try:
        tree = ast.parse(src)
    except SyntaxError:  # a lambda inside a larger expression: count its physical lines
        return len([ln for ln in src.splitlines() if ln.strip() and not ln.strip().startswith("#")])
    doc_lines: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            doc_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(1 for i, ln in enumerate(src.splitlines(), 1)
               if ln.strip() and not ln.strip().startswith("#") and i not in doc_lines)


@dataclass(frozen=True)
class Size:
    """How big an explanation is: lines of code and numbers (fitted or read from weights)."""

    lines: int = 0
    numbers: int = 0

    def __add__(self, other: "Size") -> "Size":
        return Size(self.lines + other.lines, self.numbers + other.numbers)


@dataclass(frozen=True, eq=False)
class Code:
    """The component computed by `fn(activation, context)`.

    `numbers` are the tensors `fn` uses that were fitted (on training data only) or read from the
    network's weights, by name; `fitted_on` says where they came from. `lines` defaults to the lines
    of `fn`'s source plus those of `helpers` (functions it calls that are part of the explanation).
    """

    component: Component
    fn: CodeFn
    needs: tuple[Union[Site, str], ...] = ()
    numbers: Mapping[str, Tensor] = field(default_factory=dict)
    fitted_on: str = ""
    helpers: tuple[Callable, ...] = ()
    lines: int | None = None
    name: str = ""
    claim: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "component", _component(self.component))
        object.__setattr__(self, "needs", tuple(self.needs))
        object.__setattr__(self, "helpers", tuple(self.helpers))
        if not callable(self.fn):
            raise ValueError(f"Code at {self.component.label}: fn must be a callable (activation, context) -> tensor")
        if not self.name:
            object.__setattr__(self, "name", getattr(self.fn, "__name__", "code"))

    @property
    def size(self) -> Size:
        """Lines of `fn` and its helpers (or `lines` when given) and the count of fitted numbers."""
        lines = self.lines if self.lines is not None else \
            code_lines(self.fn) + sum(code_lines(h) for h in self.helpers)
        return Size(lines, sum(int(t.numel()) for t in self.numbers.values()))

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record of the part: component, name, claim, size, fitted numbers' shapes and the sites it
        reads."""
        s = self.size
        return {"component": self.component.label, "kind": "code", "name": self.name, "claim": self.claim,
                "lines": s.lines, "numbers": s.numbers, "fitted_on": self.fitted_on,
                "number_shapes": {k: list(v.shape) for k, v in self.numbers.items()},
                "reads": [n.name if isinstance(n, Site) else str(n) for n in self.needs]}


@dataclass(frozen=True, eq=False)
class Resampled:
    """The component's activation taken from another input with the same `key(ids)`."""

    component: Component
    key: EquivalenceFn
    name: str = ""
    claim: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "component", _component(self.component))
        if not self.name:
            object.__setattr__(self, "name", getattr(self.key, "__name__", "key"))

    @property
    def size(self) -> Size:
        """Lines of the `key` function; no fitted numbers."""
        return Size(code_lines(self.key), 0)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record of the part: component, name, claim and size."""
        s = self.size
        return {"component": self.component.label, "kind": "resampled", "name": self.name, "claim": self.claim,
                "lines": s.lines, "numbers": 0}


@dataclass(frozen=True, eq=False)
class AsIs:
    """The network's own computation of the component."""

    component: Component
    name: str = "as is"

    def __post_init__(self) -> None:
        object.__setattr__(self, "component", _component(self.component))

    @property
    def size(self) -> Size:
        """Zero: a part left as is costs nothing."""
        return Size()

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record of the part (size zero)."""
        return {"component": self.component.label, "kind": "as is", "name": self.name, "lines": 0, "numbers": 0}


Part = Union[Code, Resampled, AsIs]


@dataclass(frozen=True, eq=False)
class Hypothesis:
    """Parts, one per component; the whole explanation's size is the sum of theirs."""

    name: str
    parts: tuple[Part, ...]
    claim: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = tuple(self.parts)
        if not parts:
            raise ValueError(f"hypothesis {self.name!r} has no parts")
        for p in parts:
            if not isinstance(p, (Code, Resampled, AsIs)):
                raise TypeError(f"hypothesis {self.name!r}: a part must be Code, Resampled or AsIs, got {type(p).__name__}")
        labels = [p.component.label for p in parts]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"hypothesis {self.name!r} names {dup} more than once: one part per component")
        object.__setattr__(self, "parts", parts)

    @property
    def size(self) -> Size:
        """The sum of the parts' sizes."""
        total = Size()
        for p in self.parts:
            total = total + p.size
        return total

    def only(self, keep: Sequence[int]) -> "Hypothesis":
        """The same components with every part but those at `keep` left as is."""
        return Hypothesis(self.name, tuple(p if i in keep else AsIs(p.component) for i, p in enumerate(self.parts)),
                          self.claim, self.info)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record: name, claim, total size, each part's record, then `info`."""
        s = self.size
        return {"name": self.name, "claim": self.claim, "lines": s.lines, "numbers": s.numbers,
                "parts": [p.describe() for p in self.parts], **dict(self.info)}
