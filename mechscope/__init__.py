"""mechscope: look inside neural networks, intervene, and measure how much an explanation explains.

    import mechscope as ms
    model = ms.load("smollm2-135m")                      # or ms.wrap(any_torch_module)
    res = ms.run(model, "The capital of France is", capture=["blocks.3.attn.hook_pattern"])
    res.cache["blocks.3.attn.hook_pattern"]               # (batch, head, pos, kpos)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import Tensor

from .core import (Add, Cache, Context, FactoredMatrix, Intervention, InterventionError, Kind,
                   LoadError, Mean, MechscopeError, Patch, Replace, Resample, RunResult, Scale,
                   Score, Site, SiteError, Weights, Zero)
from .core import run as _core_run
from .models import wrap
from .models.load import load, register_source

__version__ = "0.1.0"


def _zoo_on_first_use(name: str) -> Any:
    """`load("zoo:NAME")` before anything imported the zoo: importing it registers its own loader
    (`zoo.load_zoo`) in place of this one. `import mechscope` itself stays free of the zoo."""
    from .zoo import load_zoo

    return load_zoo(name)


register_source("zoo", _zoo_on_first_use)


def run(model: Any, inputs: Any, capture: Iterable[Site | str] | Site | str = (),
        interventions: Sequence[Intervention] | Intervention = (),
        grad: Callable[[Any], Tensor] | None = None, track_grad: bool = False) -> RunResult:
    """Run `model` on `inputs`, capturing sites and applying interventions; hooks never outlive the call.

    `model` is an adapter from `load`/`wrap` or any nn.Module (wrapped on the fly). See
    `mechscope.core.run.run` for the full contract.

    Example::

        model = ms.load("zoo:induction-quick")
        res = ms.run(model, tokens, capture=["attn.pattern.1"])     # tokens (batch, pos)
        res.cache["attn.pattern.1"]              # (batch, head, pos, kpos)
    """
    return _core_run(wrap(model), inputs, capture=capture, interventions=interventions, grad=grad,
                     track_grad=track_grad)


__all__ = ["Add", "Cache", "Context", "FactoredMatrix", "Intervention", "InterventionError", "Kind",
           "LoadError", "Mean", "MechscopeError", "Patch", "Replace", "Resample", "RunResult", "Scale",
           "Score", "Site", "SiteError", "Weights", "Zero", "load", "run", "wrap"]
