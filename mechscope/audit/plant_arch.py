"""What planting needs to know of each base architecture: where its weights are, how to train and save it.

Two bases: `textlm` (the zoo's `TinyTransformer` language model, quick variant, BPE tokens) and
`bytegpt2` (a Hugging Face `GPT2LMHeadModel` over bytes). Weight views are given in one convention
for both — a projection's matrix as (out, in), as `nn.Linear` stores it — and are views of the
module's own parameters (GPT-2's `Conv1D` stores (in, out): its views are transposes), so an
in-place edit of a view edits the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from ..core.files import write_dir_atomically, write_json
from ..core.paths import cache_dir
from ..core.progress import note


@dataclass(frozen=True)
class Arch:
    """A base architecture: `name` (the case's arch) and the zoo network its bases are trained as."""

    name: str
    zoo: str

    @property
    def hf(self) -> bool:
        """Whether the bases are Hugging Face GPT-2 modules (bytegpt2) rather than the zoo's own."""
        return self.name == "bytegpt2"

    def base_name(self, seed: int) -> str:
        """The zoo name of the base trained with `seed` (the plain zoo name for seed 0)."""
        return self.zoo if seed == 0 else f"{self.zoo}-seed{seed}"

    def base(self, seed: int, progress: bool = True) -> tuple[nn.Module, str]:
        """The trained base of `seed` (trained now if needed) in eval mode, and the path `mechscope.load`
        reads it from: the zoo run directory, or for GPT-2 a Hugging Face directory exported once."""
        from .. import zoo

        run = zoo.train(self.base_name(seed), progress=progress)
        module = zoo.build_module(run)
        if not self.hf:
            return module, str(run.path)
        path = cache_dir() / "audit" / "bases" / run.path.name
        if not (path / "config.json").is_file():
            self.save(module, path, str(run.path))
        return module, str(path)

    def save(self, module: nn.Module, path: Path, base: str) -> None:
        """Write `module` where `mechscope.load(path)` reads it: a Hugging Face directory for GPT-2,
        a finished zoo run directory (the base run's config, the weights, a done record) otherwise.
        Written into a temporary directory beside `path` and renamed, so a killed write leaves nothing."""
        def fill(tmp: Path) -> None:
            if self.hf:
                from ..zoo.recipes.bytegpt2 import export_hf

                export_hf(module, tmp)
            else:
                from ..zoo.files import read_json, save_tensors

                write_json(tmp / "config.json", read_json(Path(base) / "config.json"))
                save_tensors(tmp / "model.safetensors", module.state_dict(), {"kind": "model", "from": Path(base).name})
                write_json(tmp / "done.json", {"planted_from": Path(base).name})

        write_dir_atomically(Path(path), fill)

    # ---- data --------------------------------------------------------------------------------
    def train_stream(self) -> Tensor:
        """The training split as one stream of token ids (fine-tunes draw their windows from it)."""
        if self.hf:
            from ..zoo.recipes.bytegpt2 import byte_stream

            return byte_stream("train")
        from ..zoo import datasets

        return datasets.token_stream("textlm", "train")

    @property
    def context_window(self) -> int:
        """The bases' context window (n_ctx of the zoo recipe)."""
        from .. import zoo

        return int(zoo.spec(self.zoo).hp["n_ctx"])

    def vocab(self, module: nn.Module) -> int:
        """The vocabulary size of `module`."""
        return self.unembed(module).shape[0]

    def n_ctx(self, module: nn.Module) -> int:
        """The context length of `module`."""
        return module.config.n_positions if self.hf else module.cfg.n_ctx

    def n_layers(self, module: nn.Module) -> int:
        """The number of blocks of `module`."""
        return module.config.n_layer if self.hf else module.cfg.n_layers

    def n_heads(self, module: nn.Module) -> int:
        """The number of attention heads per block of `module`."""
        return module.config.n_head if self.hf else module.cfg.n_heads

    def logits(self, module: nn.Module, ids: Tensor) -> Tensor:
        """(batch, pos, vocab) logits of `module` on `ids` (batch, pos)."""
        out = module(ids)
        return out.logits if self.hf else out

    # ---- weight views, (out, in) --------------------------------------------------------------
    def _block(self, module: nn.Module, layer: int) -> nn.Module:
        return module.transformer.h[layer] if self.hf else module.blocks[layer]

    def mlp_in(self, module: nn.Module, layer: int) -> tuple[Tensor, Tensor]:
        """The MLP's input projection (d_mlp, d_model) and bias (d_mlp,)."""
        mlp = self._block(module, layer).mlp
        return (mlp.c_fc.weight.T, mlp.c_fc.bias) if self.hf else (mlp.W_in.weight, mlp.W_in.bias)

    def mlp_out(self, module: nn.Module, layer: int) -> tuple[Tensor, Tensor]:
        """The MLP's output projection (d_model, d_mlp) and bias (d_model,)."""
        mlp = self._block(module, layer).mlp
        return (mlp.c_proj.weight.T, mlp.c_proj.bias) if self.hf else (mlp.W_out.weight, mlp.W_out.bias)

    def head_proj(self, module: nn.Module, layer: int, head: int, which: str) -> tuple[Tensor, Tensor]:
        """Head `head`'s query, key or value projection (`which` "q", "k" or "v"): (d_head, d_model)
        and its bias (d_head,)."""
        attn = self._block(module, layer).attn
        i = "qkv".index(which)
        if self.hf:
            d = module.config.n_embd
            dh = d // module.config.n_head
            cols = slice(i * d + head * dh, i * d + (head + 1) * dh)
            return attn.c_attn.weight[:, cols].T, attn.c_attn.bias[cols]
        dh = module.cfg.d_head
        rows = slice(head * dh, (head + 1) * dh)
        proj = (attn.W_Q, attn.W_K, attn.W_V)[i]
        return proj.weight[rows], proj.bias[rows]

    def head_o(self, module: nn.Module, layer: int, head: int) -> Tensor:
        """Head `head`'s columns of the attention output projection: (d_model, d_head)."""
        attn = self._block(module, layer).attn
        if self.hf:
            dh = module.config.n_embd // module.config.n_head
            return attn.c_proj.weight[head * dh:(head + 1) * dh].T
        dh = module.cfg.d_head
        return attn.W_O.weight[:, head * dh:(head + 1) * dh]

    def final_gain(self, module: nn.Module) -> Tensor:
        """The final layer norm's gain (d_model,)."""
        return module.transformer.ln_f.weight if self.hf else module.ln_final.weight

    def unembed(self, module: nn.Module) -> Tensor:
        """The unembedding (vocab, d_model)."""
        return module.lm_head.weight if self.hf else module.unembed.weight


ARCHES = {"textlm": Arch("textlm", "textlm-quick"), "bytegpt2": Arch("bytegpt2", "bytegpt2")}
# The quick cases use the same bases (edits on the 100-step `bytegpt2-quick` did not reach the planted
# effect: every draw refused), fewer of them.
QUICK_ARCHES = ARCHES


def arch(name: str, quick: bool = False) -> Arch:
    """The architecture called `name` (the quick bench's table when `quick`); an unknown name raises
    ValueError."""
    table = QUICK_ARCHES if quick else ARCHES
    if name not in table:
        raise ValueError(f"unknown architecture {name!r}; architectures: {', '.join(table)}")
    return table[name]


def frozen(module: nn.Module) -> nn.Module:
    """`module` in eval mode with gradients off (planting edits weights under no_grad)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def announce(message: str, progress: bool) -> None:
    """Print `message` as a progress note when `progress` is set."""
    if progress:
        note(message)


