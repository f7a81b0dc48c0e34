"""Training to a target L0: the sparsity coefficient λ adapted during training by a controller.

A penalised dictionary (ReLU's L1, JumpReLU's L0) reaches an L0 that depends on λ, on the data and
on the length of training, so a λ chosen in advance can land anywhere. With `target_l0` in its
config, the trainer multiplies λ by a factor s that this controller adapts after every step from
the batch's L0, a proportional-integral controller on log s:

    e   = clip(log((L0 + 1) / (target + 1)), ±max_error)    the error as a ratio (log space)
    I  ← I + gain · e                                       the integral: removes a lasting error
    ē  ← momentum · ē + (1 - momentum) · e                  the error, batch noise averaged away
    s   = exp(I + proportional · ē)

Too many latents raise λ, too few lower it, always by factors, so λ never changes sign and one
far off is corrected geometrically; the clip bounds one step's change of the integral to a factor
exp(gain · max_error). L0 answers λ with a lag (thresholds, biases and encoder norms have to
move): the integral alone then overshoots and oscillates (ReLU's L0 swung between 2 and 45 around
a target of 30 with gain 0.05), while the proportional part responds at once and damps it. One
setting serves both plants: JumpReLU's L0 follows λ within tens of steps, ReLU's within about a
hundred. The controller keeps adapting to the last step, as the learning rate decays; the final
factor is in `TrainResult.info["sparsity_scale"]` and each curve row's "sparsity_scale". The
+1 keeps the error finite when every latent is shut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class L0Controller:
    """The factor s on λ, adapted towards `target` L0 by `update` (one call per training step)."""

    target: float
    gain: float = 0.02  # integral gain: I moves by gain · e per step
    proportional: float = 1.0  # weight of the running-mean error ē in log s
    max_error: float = 1.0  # |e| is clipped to this
    momentum: float = 0.9  # of the running-mean error
    integral: float = 0.0  # I, the accumulated log s
    error: float = 0.0  # ē, the running-mean error

    def __post_init__(self) -> None:
        if not self.target > 0:
            raise ValueError(f"L0Controller.target must be positive, got {self.target}")
        if self.gain <= 0 or self.max_error <= 0 or self.proportional < 0 or not 0 <= self.momentum < 1:
            raise ValueError("L0Controller needs gain > 0, max_error > 0, proportional >= 0 and momentum in [0, 1)")

    @property
    def scale(self) -> float:
        """The current factor s on λ."""
        return math.exp(self.integral + self.proportional * self.error)

    def update(self, l0: float) -> None:
        """Take one step's measured L0 (mean active latents per row)."""
        e = math.log((l0 + 1.0) / (self.target + 1.0))
        e = max(-self.max_error, min(self.max_error, e))
        self.integral += self.gain * e
        self.error = self.momentum * self.error + (1 - self.momentum) * e


def check_target(config: object, coefficient: str) -> None:
    """Refuse a config whose `target_l0` is out of (0, d_sae) or whose `coefficient` cannot be scaled."""
    name, target = type(config).__name__, getattr(config, "target_l0")
    if target is None:
        return
    if not 0 < target < getattr(config, "d_sae"):
        raise ValueError(f"{name}.target_l0 must be in (0, d_sae={getattr(config, 'd_sae')}) or None, got {target}")
    if getattr(config, coefficient) == 0:
        raise ValueError(f"{name}: target_l0 adapts {coefficient} by factors; start it above 0")
