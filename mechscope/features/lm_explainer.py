"""An optional language-model explainer, through any OpenAI-compatible chat endpoint (off by default).

The model is shown a feature's top-activating contexts (from the fitting half of the documents,
the activating token marked) and asked to answer with one JSON object naming a rule of the same
grammar the search uses:

    {"rule": "tokens", "values": ["def", " class"]}            the token is one of these
    {"rule": "previous_tokens", "values": ["("]}               the previous token is one of these
    {"rule": "regex", "pattern": "^[0-9]+$"}                   the token's text matches
    {"rule": "inside_quotes"} | {"rule": "inside_code"}
    optionally "description": "a sentence", kept with the explanation

The answer becomes an executable `Explanation` (its scale fitted like the search's: the feature's
mean where the rule holds) and goes through the same scorers: held-out correlation, precision and
recall, and causal substitution. A reply that cannot be read is an explanation that never fires,
with the reason kept, so it scores 0 instead of stopping a run.

Nothing here runs unless an `LMExplainer` is passed to `explain_set` (`--lm-url`/`--lm-model` on
the command line); the API key is read from the environment variable named in the config.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .rules import CurrentToken, Explanation, InsideCode, InsideQuotes, Position, PreviousToken, Rule, TokenRegex, \
    TokenTable

PROMPT = """You are explaining one feature of a neural network that reads text split into tokens.
Below are the contexts where the feature is most active; the token where it fires is marked [[like this]],
with the activation before each line.

{examples}

Answer with exactly one JSON object and nothing else, choosing one rule:
{{"rule": "tokens", "values": [...token texts...]}} - it fires on these tokens
{{"rule": "previous_tokens", "values": [...]}} - it fires right after these tokens
{{"rule": "regex", "pattern": "..."}} - it fires on tokens whose text matches this Python regex
{{"rule": "inside_quotes"}} or {{"rule": "inside_code"}}
Add "description": "one sentence" if you like. Token texts must be written exactly as shown between [[ ]]."""


@dataclass(frozen=True)
class LMExplainer:
    """Where and how to ask: `base_url` of an OpenAI-compatible API (e.g. http://127.0.0.1:8000/v1),
    the `model` name, the environment variable holding the key (none needed for local servers)."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    n_examples: int = 12
    context: tuple[int, int] = (10, 3)
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if not re.match(r"^https?://", self.base_url):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")

    def prompt(self, values: Tensor, table: TokenTable) -> str:
        """The prompt for one feature's values (doc, pos) on `table`."""
        flat = values.flatten()
        k = min(self.n_examples, int((flat > 0).sum()))
        lines = []
        T = values.shape[1]
        before, after = self.context
        for idx in flat.topk(k).indices.tolist() if k else []:
            d, p = divmod(idx, T)
            words = table.texts[d]
            ctx = "".join(f"[[{w}]]" if j == p else w for j, w in enumerate(words[max(0, p - before):p + after + 1],
                                                                           start=max(0, p - before)))
            lines.append(f"{float(flat[idx]):.2f}: {ctx!r}")
        return PROMPT.format(examples="\n".join(lines) if lines else "(the feature never fired)")

    def ask(self, prompt: str) -> str:
        """One chat completion; returns the reply's text."""
        body = json.dumps({"model": self.model, "temperature": 0,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.base_url.rstrip("/") + "/chat/completions", data=body, headers=headers)
        with urllib.request.urlopen(req, timeout=self.timeout) as r:  # noqa: S310 - the user's own endpoint
            reply = json.loads(r.read().decode())
        return reply["choices"][0]["message"]["content"]

    def explain(self, values: Tensor, table: TokenTable) -> tuple[Explanation, dict[str, Any]]:
        """The LM's explanation of a feature with `values` (doc, pos) on `table` (the fitting half),
        and what happened (reply, description, or the error)."""
        info: dict[str, Any] = {"explainer": f"language model {self.model} at {self.base_url}"}
        try:
            reply = self.ask(self.prompt(values, table))
            info["reply"] = reply[:2000]
            rule, info["description"] = parse_rule(reply, table)
        except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError, TypeError) as e:
            info["error"] = f"{type(e).__name__}: {e}"[:500]
            return Explanation(NEVER, 0.0), info
        m = rule.mask(table).flatten()
        y = values.flatten().double()
        return Explanation(rule, float(y[m].mean()) if m.any() else 0.0), info


NEVER = Position("<", 0)  # a rule that never holds


def parse_rule(reply: str, table: TokenTable) -> tuple[Rule, str]:
    """The rule named by the first JSON object in `reply`; token texts are looked up in `table`."""
    match = re.search(r"\{.*\}", reply, flags=re.S)
    if match is None:
        raise ValueError("the reply holds no JSON object")
    obj = json.loads(match.group(0))
    if not isinstance(obj, dict) or "rule" not in obj:
        raise ValueError("the reply's JSON has no 'rule'")
    kind, desc = obj["rule"], str(obj.get("description", ""))
    if kind in ("tokens", "previous_tokens"):
        wanted = {str(v) for v in obj.get("values", [])}
        ids = frozenset(int(t) for row_ids, row in zip(table.ids.tolist(), table.texts)
                        for t, w in zip(row_ids, row) if w in wanted)
        if not ids:
            raise ValueError(f"none of the tokens {sorted(wanted)[:8]} occurs in the documents")
        return (CurrentToken(ids) if kind == "tokens" else PreviousToken(ids)), desc
    if kind == "regex":
        pattern = str(obj.get("pattern", ""))
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"the pattern {pattern!r} is not a regular expression: {e}") from None
        return TokenRegex(pattern, "matches the language model's pattern"), desc
    if kind == "inside_quotes":
        return InsideQuotes(), desc
    if kind == "inside_code":
        return InsideCode(), desc
    raise ValueError(f"unknown rule {kind!r}")


__all__ = ["LMExplainer", "parse_rule"]
