"""ModelBase: what every adapter offers on top of the protocol (run, site checks, summaries)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import LoadError
from ..core.interventions import Intervention
from ..core.run import RunResult, resolve, run
from ..core.site import Site


class _Skipped(nn.Module):
    """Stands in for a skipped block: hands its input residual stream on unchanged."""

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states


@contextmanager
def without_first_blocks(parent: nn.Module, attr: str, layer: int):
    """Temporarily replace the blocks before `layer` in the ModuleList `parent.attr` by pass-throughs.

    The remaining blocks keep their identity (hooks and taps on them still fire) and their place
    in the loop: a forward pass that looks up per-block settings by the loop index (Gemma's and
    Qwen's `config.layer_types[i]`: sliding-window masks, rotary bases) still finds each block's
    own. The caller must supply the residual stream entering block `layer` (a patch at its input).
    """
    blocks = getattr(parent, attr)
    if not 0 <= layer < len(blocks):
        raise ValueError(f"cannot start at block {layer}: the model has blocks 0..{len(blocks) - 1}")
    setattr(parent, attr, nn.ModuleList([_Skipped() for _ in range(layer)] + list(blocks)[layer:]))
    try:
        yield
    finally:
        setattr(parent, attr, blocks)


class ModelBase:
    """Shared behaviour of adapters. Subclasses set `module`, `name` and implement the protocol.

    Example::

        model = ms.load("zoo:induction-quick")   # every adapter is a ModelBase
        model.sites()[:4]
        model.run(ids, capture=["resid_post.0"]).cache["resid_post.0"]   # ids (batch, pos) -> (batch, pos, d_model)
    """

    module: nn.Module
    name: str
    tokenizer: Any = None  # text -> ids (`to_tokens`); adapters of models that read text set it

    def sites(self) -> list[Site]:  # pragma: no cover - implemented by subclasses
        """Every site the adapter can capture or intervene on."""
        raise NotImplementedError

    def n_heads_at(self, site: Site) -> int | None:
        """The number of heads of `site` (its head axis' length), or None where it has no heads."""
        return None

    def start_at(self, layer: int) -> AbstractContextManager | None:
        """Skipping blocks needs to know where they are; adapters that do override this."""
        return None

    def fused(self) -> AbstractContextManager:
        """A context in which the network may run fused kernels where no hook observes their internals
        (equal up to float rounding, not bit for bit); adapters that have them override this."""
        return nullcontext()

    def window(self, prepared: Any, window: Any, sites: Iterable[Site]) -> Any | None:
        """Running a window of positions needs a key/value cache; adapters that have one override this."""
        return None

    def check(self, site: Site | str) -> Site:
        """The Site for `site` if this model has it; otherwise a SiteError naming the nearest ones."""
        return resolve(self, site)

    def run(self, inputs: Any, capture: Iterable[Site | str] | Site | str = (),
            interventions: Sequence[Intervention] | Intervention = (),
            grad: Callable[[Any], Tensor] | None = None, track_grad: bool = False) -> RunResult:
        """`mechscope.run` on this model (see `mechscope.core.run.run`)."""
        return run(self, inputs, capture=capture, interventions=interventions, grad=grad,
                   track_grad=track_grad)

    def to_tokens(self, text: str | Sequence[str], prepend_bos: bool = False,
                  padding_side: str = "right") -> dict[str, Tensor]:
        """Tokenise text into `input_ids` and `attention_mask`, (batch, pos).

        BOS is added only with `prepend_bos=True` (the tokenizer's own automatic special tokens
        are switched off, so what you see is what runs). A batch of different lengths is padded
        on `padding_side` with the tokenizer's pad token (or EOS when it has none); padded
        positions have attention_mask 0. With right padding, a prompt's last real token is at
        `attention_mask.sum(1) - 1`.
        """
        tok = self.tokenizer
        if tok is None:
            raise LoadError(f"{self.name} has no tokenizer; pass token ids instead of text")
        texts = [text] if isinstance(text, str) else list(text)
        ids = [tok.encode(t, add_special_tokens=False) for t in texts]
        if prepend_bos:
            bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
            if bos is None:
                raise LoadError(f"{self.name}'s tokenizer has no BOS token")
            ids = [[bos] + x for x in ids]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        n = max(len(x) for x in ids)
        if pad is None and any(len(x) != n for x in ids):
            raise LoadError(f"{self.name}'s tokenizer has no pad or EOS token to pad a batch with")
        out = torch.full((len(ids), n), pad if pad is not None else 0, dtype=torch.long)
        mask = torch.zeros((len(ids), n), dtype=torch.long)
        for i, x in enumerate(ids):
            sl = slice(0, len(x)) if padding_side == "right" else slice(n - len(x), n)
            out[i, sl] = torch.tensor(x, dtype=torch.long)
            mask[i, sl] = 1
        return {"input_ids": out, "attention_mask": mask}

    def to_str_tokens(self, ids: Tensor | Sequence[int]) -> list[str]:
        """Each id of `ids` (pos,) decoded alone: one string per token."""
        return [self.tokenizer.decode([int(i)]) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {len(self.sites())} sites)"

