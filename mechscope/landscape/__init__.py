"""The loss landscape around trained weights: the local learning coefficient (LLC) by localised SGLD.

    from mechscope.landscape import SGLDConfig, estimate_llc, estimate_llc_components
    est = estimate_llc(model, token_ids, config=SGLDConfig(step_size=1e-4))   # whole model
    per = estimate_llc_components(model, token_ids)                            # {component: LLCEstimate}

`sgld.py` is the sampler (any parameter subset, weights restored exactly), `llc.py` the estimate
and the losses, `components.py` the named components of mechscope models.
"""

from .components import components
from .llc import (LLCEstimate, Loss, cross_entropy_loss, estimate_llc, estimate_llc_components, full_loss, lm_loss,
                  mse_loss)
from .sgld import Chains, Component, LandscapeError, SGLDConfig, sample, select_parameters

__all__ = ["Chains", "Component", "LLCEstimate", "LandscapeError", "Loss", "SGLDConfig", "components",
           "cross_entropy_loss", "estimate_llc", "estimate_llc_components", "full_loss", "lm_loss", "mse_loss",
           "sample", "select_parameters"]
