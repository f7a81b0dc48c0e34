"""A grammar of executable feature explanations: rules over tokens that say where a feature fires.

A rule maps a TokenTable (the dataset's tokens, their text and context flags) to a boolean mask
(doc, pos). An Explanation is one or more clauses, each a rule and a value: it predicts the sum of
the values of the clauses that hold, 0 where none does. The values are fitted on training text
only (least squares of the feature's values on the clauses' masks); with one clause the value is
the feature's mean where the rule holds. Every rule prints as a sentence a person can check, and
runs on any text; an explanation's size is its clauses (one line each) and its fitted values.

Rules: CurrentToken, PreviousToken, Bigram (previous, current), TokenRegex (on the current token's
text), Position (==, <, >=), InsideQuotes (an odd number of '"' earlier in the document),
InsideCode (between backticks, or on a line that starts with '>>>' or four spaces),
PreviousLatent (another latent of the same set was active on the previous token; it reads the
table's `latents`), And, Or.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class TokenTable:
    """Token ids (doc, pos), each token's text, and per-token context flags, computed once."""

    ids: Tensor  # (doc, pos)
    texts: tuple[tuple[str, ...], ...]
    prev: Tensor  # (doc, pos): previous token id, -1 at position 0
    in_quotes: Tensor  # (doc, pos) bool
    in_code: Tensor  # (doc, pos) bool
    latents: Tensor | None = None  # (doc, pos, feature): the set's values on these tokens, for PreviousLatent

    def with_latents(self, values: Tensor) -> "TokenTable":
        """The same table carrying the feature set's values (doc, pos, feature) on its tokens."""
        if tuple(values.shape[:2]) != tuple(self.ids.shape):
            raise ValueError(f"latent values must be (doc, pos, feature) over the table's {tuple(self.ids.shape)} "
                             f"tokens; got {tuple(values.shape)}")
        return TokenTable(self.ids, self.texts, self.prev, self.in_quotes, self.in_code, values)

    @staticmethod
    def build(ids: Tensor, decode: Any = None) -> "TokenTable":
        """`decode(id) -> str` gives each token's text (default: the id as text)."""
        cache: dict[int, str] = {}

        def text(t: int) -> str:
            if t not in cache:
                cache[t] = str(t) if decode is None else decode(t)
            return cache[t]

        texts, quotes, code = [], [], []
        for row in ids.tolist():
            words = tuple(text(t) for t in row)
            q, b, line_code, at_line_start = 0, 0, False, True
            qrow, crow, line = [], [], ""
            for w in words:
                qrow.append(q % 2 == 1)
                crow.append(b % 2 == 1 or line_code)
                for ch in w:
                    if ch == "\n":
                        line, line_code, at_line_start = "", False, True
                        continue
                    line += ch
                    if at_line_start and len(line) >= 3:
                        line_code = line.startswith(">>>") or line.startswith("    ")
                        at_line_start = len(line) < 4 and not line_code
                    q += ch == '"'
                    b += ch == "`"
            texts.append(words)
            quotes.append(qrow)
            code.append(crow)
        prev = torch.cat([torch.full((ids.shape[0], 1), -1, dtype=ids.dtype), ids[:, :-1]], dim=1)
        return TokenTable(ids, tuple(texts), prev, torch.tensor(quotes, dtype=torch.bool).view(ids.shape),
                          torch.tensor(code, dtype=torch.bool).view(ids.shape))

    def subset(self, docs: Tensor) -> "TokenTable":
        """The table restricted to the documents `docs` (a 1-D tensor of document indices), in that order."""
        idx = docs.tolist()
        return TokenTable(self.ids[docs], tuple(self.texts[i] for i in idx), self.prev[docs],
                          self.in_quotes[docs], self.in_code[docs],
                          None if self.latents is None else self.latents[docs])


class Rule:
    """Where a feature fires, as code."""

    def mask(self, table: TokenTable) -> Tensor:  # (doc, pos) bool
        """(doc, pos) bool: where the rule holds in `table`."""
        raise NotImplementedError

    def describe(self, decode: Any = None) -> str:
        """The rule in words; `decode(token_id) -> str` shows tokens as text (ids when None)."""
        raise NotImplementedError


def _tokens(ids: frozenset[int], decode: Any) -> str:
    shown = sorted(ids)[:8]
    words = [repr(decode(t)) if decode else str(t) for t in shown]
    return "{" + ", ".join(words) + (", ..." if len(ids) > 8 else "") + "}"


@dataclass(frozen=True)
class CurrentToken(Rule):
    """The token at the position is one of `ids`."""

    ids: frozenset[int]

    def mask(self, table):
        """(doc, pos) bool: the token is one of `ids`."""
        return torch.isin(table.ids, torch.tensor(sorted(self.ids), dtype=table.ids.dtype))

    def describe(self, decode=None):
        """"the token is one of {...}", tokens decoded when `decode` is given."""
        return f"the token is one of {_tokens(self.ids, decode)}"


@dataclass(frozen=True)
class PreviousToken(Rule):
    """The token before the position is one of `ids` (position 0 has none)."""

    ids: frozenset[int]

    def mask(self, table):
        """(doc, pos) bool: the previous token is one of `ids`."""
        return torch.isin(table.prev, torch.tensor(sorted(self.ids), dtype=table.prev.dtype))

    def describe(self, decode=None):
        """"the previous token is one of {...}"."""
        return f"the previous token is one of {_tokens(self.ids, decode)}"


@dataclass(frozen=True)
class Bigram(Rule):
    """The previous and the current token form one of the pairs `(previous, current)`."""

    pairs: frozenset[tuple[int, int]]

    def mask(self, table):
        """(doc, pos) bool: (previous token, token) is one of `pairs`."""
        out = torch.zeros_like(table.ids, dtype=torch.bool)
        for a, b in self.pairs:
            out |= (table.prev == a) & (table.ids == b)
        return out

    def describe(self, decode=None):
        """"the last two tokens are one of ...", at most six pairs shown."""
        show = sorted(self.pairs)[:6]
        words = [f"{decode(a) if decode else a!r}{decode(b) if decode else b!r}" for a, b in show]
        return "the last two tokens are one of " + ", ".join(repr(w) for w in words)


@dataclass(frozen=True)
class TokenRegex(Rule):
    """The token's text matches a regular expression; `name` says in words what it matches."""

    pattern: str
    name: str

    def mask(self, table):
        """(doc, pos) bool: the decoded token matches `pattern` (re.search)."""
        rx = re.compile(self.pattern)
        return torch.tensor([[bool(rx.search(w)) for w in row] for row in table.texts],
                            dtype=torch.bool).view(table.ids.shape)

    def describe(self, decode=None):
        """"the token <name> (regex ...)"."""
        return f"the token {self.name} (regex {self.pattern!r})"


@dataclass(frozen=True)
class Position(Rule):
    """The position compares with `p` by `op`: "==", "<" or ">="."""

    op: str  # "==", "<", ">="
    p: int

    def mask(self, table):
        """(doc, pos) bool: position `op` `p`."""
        pos = torch.arange(table.ids.shape[1]).expand_as(table.ids)
        return {"==": pos == self.p, "<": pos < self.p, ">=": pos >= self.p}[self.op]

    def describe(self, decode=None):
        """"the position is <op> <p>"."""
        return f"the position is {self.op} {self.p}"


@dataclass(frozen=True)
class InsideQuotes(Rule):
    """The token lies inside double quotes (counted from the start of its document)."""

    def mask(self, table):
        """(doc, pos) bool: the table's `in_quotes`."""
        return table.in_quotes

    def describe(self, decode=None):
        """"the token is inside double quotes"."""
        return "the token is inside double quotes"


@dataclass(frozen=True)
class InsideCode(Rule):
    """The token lies inside code: backticks, or a line starting with '>>>' or indented."""

    def mask(self, table):
        """(doc, pos) bool: the table's `in_code`."""
        return table.in_code

    def describe(self, decode=None):
        """"the token is inside code (...)"."""
        return "the token is inside code (backticks, or a '>>>' or indented line)"


def previous_above(values: Tensor, above: float = 0.0) -> Tensor:
    """(doc, pos, ...) bool: the value on the previous token of the same document is above `above`
    (False at position 0)."""
    on = values > above
    return torch.cat([torch.zeros_like(on[:, :1]), on[:, :-1]], dim=1)


@dataclass(frozen=True)
class PreviousLatent(Rule):
    """Latent `j` of the same set was active (above `above`, 0 by default) on the previous token
    (position 0 has none).

    It reads the set's values of the unchanged model (the table's `latents`), so an explanation of
    latent i never reads latent i itself."""

    j: int
    above: float = 0.0

    def mask(self, table):
        """(doc, pos) bool: latent j's value on the previous token is above `above`."""
        if table.latents is None:
            raise ValueError(f"PreviousLatent({self.j}) reads the set's latent values; build the table "
                             "with TokenTable.with_latents(values)")
        return previous_above(table.latents[:, :, self.j], self.above)

    def describe(self, decode=None):
        """"latent j was active on the previous token" (with the cut-off when it is not 0)."""
        if self.above:
            return f"latent {self.j} was above {self.above:g} on the previous token"
        return f"latent {self.j} was active on the previous token"


@dataclass(frozen=True)
class And(Rule):
    """Both rules hold."""

    a: Rule
    b: Rule

    def mask(self, table):
        """(doc, pos) bool: `a` and `b` both hold."""
        return self.a.mask(table) & self.b.mask(table)

    def describe(self, decode=None):
        """"(a) and (b)"."""
        return f"({self.a.describe(decode)}) and ({self.b.describe(decode)})"


@dataclass(frozen=True)
class Or(Rule):
    """Either rule holds."""

    a: Rule
    b: Rule

    def mask(self, table):
        """(doc, pos) bool: `a` or `b` holds."""
        return self.a.mask(table) | self.b.mask(table)

    def describe(self, decode=None):
        """"(a) or (b)"."""
        return f"({self.a.describe(decode)}) or ({self.b.describe(decode)})"


REGEXES: Sequence[tuple[str, str]] = (
    (r"^\s?[A-Z]", "starts with a capital letter"), (r"^\s?\d", "starts with a digit"),
    (r"^\s?[^\w\s]", "is punctuation"), (r"^\s", "starts with a space"), (r"\n", "contains a newline"),
    (r"^\s?[a-z]", "starts with a lower-case letter"), (r"^[A-Z]{2,}$", "is in capitals"),
)


@dataclass(frozen=True)
class Explanation:
    """A rule and the value it predicts where it holds, and optionally further clauses: `more` holds
    (rule, value) pairs whose values add where their rules hold."""

    rule: Rule
    scale: float
    more: tuple[tuple[Rule, float], ...] = ()

    @property
    def clauses(self) -> tuple[tuple[Rule, float], ...]:
        """Every (rule, value) clause, the first one first."""
        return ((self.rule, self.scale),) + tuple(self.more)

    def predict(self, table: TokenTable) -> Tensor:
        """(doc, pos) float: the sum of the values of the clauses that hold, 0 where none does."""
        out = self.rule.mask(table).float() * self.scale
        for rule, value in self.more:
            out = out + rule.mask(table).float() * value
        return out

    def size(self) -> dict[str, int]:
        """The explanation's size: clauses (one line each), fitted values, and the tokens its sets list."""
        listed = sum(_listed(r) for r, _ in self.clauses)
        return {"lines": len(self.clauses), "fitted_numbers": len(self.clauses), "tokens_listed": listed}

    def describe(self, decode: Any = None) -> str:
        """"<value> where <rule>[; +<value> where <rule> ...], else 0"."""
        head = f"{self.scale:.3g} where {self.rule.describe(decode)}"
        return "; ".join([head] + [f"{v:+.3g} where {r.describe(decode)}" for r, v in self.more]) + ", else 0"


def _listed(rule: Rule) -> int:
    """How many tokens (or token pairs) the rule's sets list."""
    if isinstance(rule, (CurrentToken, PreviousToken)):
        return len(rule.ids)
    if isinstance(rule, Bigram):
        return len(rule.pairs)
    if isinstance(rule, (And, Or)):
        return _listed(rule.a) + _listed(rule.b)
    return 0
