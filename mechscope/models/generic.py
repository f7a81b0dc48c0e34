"""Any nn.Module: every named submodule's output is a site (a CNN's conv and pool layers, say)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from torch import Tensor, nn

from ..core.protocol import Prepared
from ..core.site import Site
from ..core.taps import ModuleInput, ModuleOutput, Tap
from .base import ModelBase


class ModuleModel(ModelBase):
    """Sites are `Site.module(path)` for each submodule path in `module.named_modules()`.

    Inputs: a tensor (passed positionally), a tuple of positional arguments, or a dict of keyword
    arguments. The model's output counts as logits when it is a tensor.

    Example::

        net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU())
        model = ms.wrap(net)                     # a ModuleModel: sites "0" and "1"
        ms.run(model, torch.rand(2, 1, 28, 28), capture=["1"]).cache["1"]   # (2, 8, 26, 26)
    """

    def __init__(self, module: nn.Module, name: str | None = None):
        self.module = module
        self.name = name or type(module).__name__
        self._modules = {path: m for path, m in module.named_modules() if path}
        self._sites = [Site.module(p) for p in self._modules]

    def sites(self) -> list[Site]:
        """One site per named submodule, in `named_modules` order."""
        return list(self._sites)

    def tap(self, site: Site) -> Tap:
        """The output of the submodule at `site.path` (copied: a module may change its input in place)."""
        site = self.check(site)
        # any module may modify its input in place (ReLU(inplace=True), `out += identity`): copy
        return ModuleOutput(self._modules[site.path], copy=True)

    def prepare(self, inputs: Any) -> Prepared:
        """A tensor (one positional argument), a tuple of positional arguments or a dict of keyword arguments, as the
        module's call."""
        if isinstance(inputs, Prepared):
            return inputs
        if isinstance(inputs, Tensor):
            return Prepared(args=(inputs,))
        if isinstance(inputs, tuple):
            return Prepared(args=inputs)
        if isinstance(inputs, dict):
            return Prepared(kwargs=dict(inputs))
        raise TypeError(f"cannot run {self.name} on {type(inputs).__name__}: give a tensor, a tuple of "
                        "positional arguments or a dict of keyword arguments")

    def forward(self, prepared: Prepared) -> Any:
        """Call the module."""
        return self.module(*prepared.args, **prepared.kwargs)

    def logits(self, output: Any) -> Tensor | None:
        """The output when it is a tensor, else its `logits` attribute (None when it has none)."""
        return output if isinstance(output, Tensor) else getattr(output, "logits", None)

    def session(self, sites: set[Site]):
        """Nothing to switch."""
        return nullcontext()

    def grad_entry(self) -> Tap | None:
        """The module's input: gradients are switched on there for frozen weights."""
        return ModuleInput(self.module)
