"""attention.json and head_roles.json: what each head attends to, and the role scores of each head."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .schema import ArtifactError, header, plain, spec_text, write_json


class HeadsWriter:
    """`ModelWriter.attention` and `ModelWriter.head_roles` (a mixin: the writer supplies `path`)."""

    path: Path

    def attention(self, tokens: Sequence[str], patterns: Any, prompt: str | None = None) -> Path:
        """`patterns`: (layer, head, query, key) for one prompt of len(tokens) tokens."""
        pats = plain(patterns, 4)
        toks = [str(t) for t in tokens]
        if not pats or not isinstance(pats[0], list) or not isinstance(pats[0][0], list):
            raise ArtifactError("attention patterns must be (layer, head, query, key)")
        for layer in pats:
            for head in layer:
                if len(head) != len(toks) or any(len(row) != len(toks) for row in head):
                    raise ArtifactError(f"attention patterns must be (layer, head, {len(toks)}, {len(toks)}) for "
                                        f"{len(toks)} tokens")
        obj = {**header("attention"), "prompt": prompt, "tokens": toks, "n_layers": len(pats),
               "n_heads": len(pats[0]), "patterns": pats}
        return write_json(self.path / "attention.json", obj)

    def head_roles(self, roles: Mapping[str, Any], probe: Mapping[str, Any] | None = None,
                   causal: Mapping[str, Any] | None = None) -> Path:
        """`roles`: role -> (layer, head) scores. `causal` (optional): {"metric", "ablation",
        "values": (layer, head)} — e.g. the metric's change when each head is ablated."""
        mats = {str(k): plain(v, 4) for k, v in roles.items()}
        if not mats:
            raise ArtifactError("head_roles needs at least one role")
        shapes = {(len(m), len(m[0]) if m else 0) for m in mats.values()}
        if len(shapes) != 1:
            raise ArtifactError(f"every role's score matrix must be (layer, head) of one shape, got {shapes}")
        (n_layers, n_heads), = shapes
        c = None
        if causal is not None:
            c = {"metric": str(causal.get("metric", "")), "ablation": spec_text(causal.get("ablation")),
                 "values": plain(causal["values"], 4)}
        obj = {**header("head_roles"), "roles": mats, "n_layers": n_layers, "n_heads": n_heads,
               "probe": plain(dict(probe or {})), "causal": c}
        return write_json(self.path / "head_roles.json", obj)


def roles_from_head_roles(roles: Any) -> dict[str, Any]:
    """Keyword arguments of `ModelWriter.head_roles` from a `HeadRoles`.

    Example::

        from mechscope.artifacts import roles_from_head_roles
        from mechscope.circuits import head_roles
        roles = head_roles(ms.load("zoo:induction-quick"), n=12)
        writer.model("zoo:induction-quick").head_roles(**roles_from_head_roles(roles))
    """
    names = ("previous_token", "duplicate_token", "induction", "bos")
    return {"roles": {r: getattr(roles, r) for r in names if hasattr(roles, r)},
            "probe": {"n": roles.n, "batch": roles.batch, "seed": roles.seed,
                      "probe": "repeated random tokens"}}
