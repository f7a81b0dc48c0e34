"""A first convolution layer as code: each channel a brightness, oriented-edge and curvature detector.

`conv_hypothesis(model, "conv1", train_images, degree)` explains each output channel of a k x k
convolution (one input channel) by a polynomial surface over its window, x and y in -1..1:

    degree 0   b + a_1 * brightness                      (the window's mean)
    degree 1   ... + a_x * d/dx + a_y * d/dy             (an edge: orientation atan2(a_y, a_x),
                                                          strength hypot(a_x, a_y))
    degree 2   ... + a_xx * d²/dx² + a_yy * d²/dy² + a_xy * d²/dxdy   (lines, spots, corners)

The basis filters are the window's polynomials 1, x, y, x², y², xy (orthonormalised); the
coefficients of every channel are fitted by least squares to the channel's output on training
images only (so a channel is described by 1 + 1, 3 + 1 or 6 + 1 numbers instead of k² + 1).
`describe_channels` reads each channel as words: its kind (brightness, edge, line or spot) and
the edge orientation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.hypothesis import Code, Hypothesis
from ..core.interventions import Context
from ..core.run import resolve, run
from ..models import wrap

_TERMS = ("brightness", "d/dx", "d/dy", "d2/dx2", "d2/dy2", "d2/dxdy")


def polynomial_filters(k: int, degree: int) -> Tensor:
    """(terms, k, k) orthonormal filters spanning the polynomials of `degree` over a k x k window."""
    r = torch.linspace(-1, 1, k, dtype=torch.float64)
    y, x = torch.meshgrid(r, r, indexing="ij")
    polys = [torch.ones_like(x), x, y, x * x, y * y, x * y][:{0: 1, 1: 3, 2: 6}[degree]]
    Q, _ = torch.linalg.qr(torch.stack([p.flatten() for p in polys], 1))  # Gram-Schmidt in order
    signs = torch.sign(torch.stack([p.flatten() for p in polys], 1).T @ Q).diagonal()  # keep each term's sign
    return (Q * signs).T.reshape(-1, k, k)


@torch.no_grad()
def conv_hypothesis(model: Any, site: str, train_images: Tensor, degree: int = 1) -> Hypothesis:
    """Every channel of the convolution at `site` as a fitted polynomial detector (module docstring).

    Example::

        from mechscope.circuits import conv_hypothesis
        from mechscope.causal import scrub
        model = ms.load("zoo:fmnist-cnn")
        hyp = conv_hypothesis(model, "conv1", train_images)   # train_images (n, 1, 28, 28)
        scrub(model, hyp, test_images, "mean", labels=test_labels)
    """
    model = wrap(model)
    s = resolve(model, site)
    conv = dict(model.module.named_modules()).get(s.path)
    if not isinstance(conv, nn.Conv2d) or conv.in_channels != 1 or conv.groups != 1:
        raise ValueError(f"{site} must be an nn.Conv2d with one input channel; it is {type(conv).__name__}")
    k = conv.kernel_size[0]
    basis = polynomial_filters(k, degree).to(train_images.device, torch.float32)  # (terms, k, k)
    stride, padding = conv.stride, conv.padding
    target = run(model, train_images, capture=[s]).cache[s]  # (n, channels, H, W): the layer's own output
    feats = F.conv2d(train_images, basis[:, None], stride=stride, padding=padding)  # (n, terms, H, W)
    X = feats.permute(0, 2, 3, 1).reshape(-1, basis.shape[0]).double()
    X = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)], 1)
    Y = target.permute(0, 2, 3, 1).reshape(-1, target.shape[1]).to(X.device, torch.float64)
    coef = torch.linalg.lstsq(X, Y).solution.to(torch.float32)  # (terms + 1, channels): weights, then bias
    weights, bias = coef[:-1], coef[-1]
    r2 = 1 - float(((Y - X @ coef.double()) ** 2).sum() / ((Y - Y.mean(0)) ** 2).sum())

    def detectors(x: Tensor, ctx: Context) -> Tensor:
        """channel c = b_c + sum_t a_tc * (polynomial filter t over the window)."""
        kernels = torch.einsum("tc,tij->cij", weights, basis)[:, None]  # (channels, 1, k, k)
        return F.conv2d(ctx.input_ids.to(x.dtype), kernels, bias, stride=stride, padding=padding)

    part = Code(site, detectors, numbers={"coefficients": weights, "biases": bias},
                fitted_on=f"{len(train_images)} training images", name=f"polynomial detectors (degree {degree})",
                helpers=(polynomial_filters,),
                claim=", ".join(_TERMS[:basis.shape[0]]) + " per channel")
    return Hypothesis(f"{site} as degree-{degree} detectors", (part,), claim=part.claim,
                      info={"degree": degree, "fit_r2_train": r2, "terms": list(_TERMS[:basis.shape[0]]),
                            "channels": describe_channels(weights)})


def describe_channels(weights: Tensor) -> list[str]:
    """Each channel in words, from its coefficients over the polynomial filters."""
    out = []
    for c in range(weights.shape[1]):
        w = weights[:, c].tolist()
        if len(w) == 1:
            out.append(f"brightness x {w[0]:+.2f}")
            continue
        edge = math.hypot(w[1], w[2])
        curv = math.sqrt(sum(v * v for v in w[3:])) if len(w) > 3 else 0.0
        kind = max((abs(w[0]), "brightness"), (edge, "edge"), (curv, "line/spot"))[1]
        angle = math.degrees(math.atan2(w[2], w[1])) % 180
        out.append(f"{kind}: brightness {w[0]:+.2f}, edge {edge:.2f} at {angle:.0f} deg"
                   + (f", curvature {curv:.2f}" if len(w) > 3 else ""))
    return out
