"""Tuning curves of channels to synthetic stimuli, orientation summaries, and a search for curve detectors.

A channel's response is read at one position of its feature map (the centre by default) while the
stimulus moves over a few pixels around the image centre (`shifts`), so a layer with a stride still
sees the stimulus centred in its receptive field; the tuning curve keeps, for each value of the
parameters of interest (angle; radius; frequency), the maximum over the nuisance ones (shift, offset,
phase, polarity). `baseline` is the response to the stimuli's empty background (black for edges and
strokes, mid-grey for gratings); summaries use responses minus the baseline, floored at 0.

Orientation summary per channel (angles in degrees, R the floored responses over angle, other axes
reduced by their maximum):
- preferred angle: argmax R; peak: max R;
- orientation selectivity index OSI = (R_pref - R_orth) / (R_pref + R_orth), R_orth the response 90
  degrees away (the larger of the two sides), the angles taken modulo the family's period: 180 degrees
  for gratings and lines (a and a + 180 are the same stimulus; their angles cover [0, 180)), 360 for
  edges (bright side) and curves (bulge side), which are directions;
- circular variance 1 - |sum R e^{2i a}| / sum R (orientation: a and a + 180 alike; 0 = one orientation
  only, 1 = untuned), and direction variance with e^{i a} (a and a + 180 apart: edge polarity, the side
  a curve bulges to); direction variance is NaN for gratings and lines, which have no direction.

Curve detectors (after Cammarata et al., "Curve Detectors", Distill 2020), among the channels whose
curve peak is positive and at least `min_peak` times the largest among the channels searched: the
response to curves must (1) be tuned to the side the curve bulges towards: at the best radius, the
direction selectivity DSI = (R_pref - R_opposite) / (R_pref + R_opposite) >= `min_selectivity`,
R_opposite the curve bulging the other way with the same tangent at the centre (a line or edge
detector answers both alike), (2) exceed the response to the straight line of the same orientation
and length by `margin` (curve peak >= (1 + margin) x line),
(3) rotate smoothly: over angle, the responses at the best radius stay above half their peak on one
contiguous arc only, and (4) be a curvature the channel can see: within its receptive field (half-width
h, the smaller side of the structural field of `_linear`) the preferred arc leaves its tangent by at
least one pixel (r - sqrt(r^2 - h^2) >= 1, or r <= h). Without (4) a 3 x 3 channel "prefers" a tiny
arc, shifted by a pixel, for the extra ink it puts in its field, not for its shape.
The search also reports how the found channels' preferred angles cover the circle (`largest_gap`, the
widest empty arc between them in degrees; 360 with fewer than two).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.progress import progress_bar
from ._linear import model_device, receptive_boxes
from ._store import Saved
from .layers import ImageSpec, VisionInputError, channel_activations, check_channel, feature_layer
from .stimuli import Stimuli, curves, edges, gratings

JITTER = tuple((r, c) for r in (-1.0, 0.0, 1.0) for c in (-1.0, 0.0, 1.0))
INF = float("inf")


@dataclass(frozen=True)
class TuningCurves(Saved):
    """Responses of channels to a family of stimuli over named axes.

    `responses` (k, n_1, ..., n_a): channel `channels[c]` at `position`, maximum over the nuisance
    parameters, for each combination of `values[axes[0]]` (n_1,), ...; `baseline` (k,) the response to the
    empty background.

    Example::

        t = edge_tuning(model, spec, "relu1")
        t.axes, t.responses.shape            # ('angle',), (32, 24)
        t.curve(3)                           # channel 3's responses over angle: (24,)
    """

    layer: str
    kind: str
    spec: ImageSpec
    position: tuple[int, int]
    axes: tuple[str, ...]
    values: dict[str, Tensor]
    channels: Tensor
    responses: Tensor
    baseline: Tensor

    def curve(self, channel: int) -> Tensor:
        """The responses (n_1, ..., n_a) of one channel (by its index in the layer)."""
        where = (self.channels == channel).nonzero().flatten()
        if len(where) == 0:
            raise VisionInputError(f"channel {channel} was not measured; measured: {self.channels.tolist()}")
        return self.responses[int(where[0])]


def _channels(model: Any, spec: ImageSpec, layer: str, channels: Sequence[int] | None) -> tuple[Any, list[int]]:
    fl = feature_layer(model, layer, spec)
    return fl, list(range(fl.channels)) if channels is None else [check_channel(fl, int(c)) for c in channels]


def tuning_curves(model: Any, spec: ImageSpec, layer: str, stimuli: Stimuli, axes: Sequence[str], *,
                  channels: Sequence[int] | None = None, position: tuple[int, int] | None = None,
                  batch_size: int = 512, progress: bool = True) -> TuningCurves:
    """Responses (k, n_1, ..., n_a) of `channels` of `layer` at `position` (the map's centre by default) to
    `stimuli`, over the parameters `axes` (maximum over the other parameters).

    Example::

        s = gratings(spec, angles=range(0, 180, 15), frequencies=(0.05, 0.1, 0.2))
        t = tuning_curves(model, spec, "relu2", s, axes=("angle", "frequency"))   # (64, 12, 3)
    """
    if stimuli.spec != spec:
        raise VisionInputError(f"the stimuli were drawn for {stimuli.spec}, not for {spec}")
    missing = [a for a in axes if a not in stimuli.params]
    if missing or not axes:
        raise VisionInputError(f"axes must be some of the stimuli's parameters {sorted(stimuli.params)}, got "
                               f"{list(axes)}")
    fl, chans = _channels(model, spec, layer, channels)
    pos = (fl.height // 2, fl.width // 2) if position is None else (int(position[0]), int(position[1]))
    if not (0 <= pos[0] < fl.height and 0 <= pos[1] < fl.width):
        raise VisionInputError(f"position {pos} is outside {layer!r}'s {fl.height} x {fl.width} map")
    dev = model_device(model)
    ch = torch.tensor(chans, dtype=torch.long)
    values, flat, shape = {}, torch.zeros(len(stimuli), dtype=torch.long), []
    for a in axes:
        uniq, inverse = torch.unique(stimuli.params[a], return_inverse=True)
        values[a] = uniq
        flat = flat * len(uniq) + inverse
        shape.append(len(uniq))
    out = torch.full((len(chans), math.prod(shape)), -math.inf)
    background = spec.blank(1) if stimuli.kind == "grating" else torch.full((1, *spec.shape), spec.low)
    with torch.no_grad(), progress_bar(total=len(stimuli), desc=f"tuning {layer} ({stimuli.kind})",
                                       unit="image", disable=not progress) as bar:
        for s in range(0, len(stimuli), batch_size):
            acts = channel_activations(model, stimuli.images[s:s + batch_size].to(dev), fl)
            r = acts[:, ch.to(dev), pos[0], pos[1]].float().cpu().T  # (k, b)
            idx = flat[s:s + batch_size].expand(len(chans), -1)
            out = out.scatter_reduce(1, idx, r, reduce="amax")
            bar.update(r.shape[1])
        base = channel_activations(model, background.to(dev), fl)[0, ch.to(dev), pos[0], pos[1]].float().cpu()
    return TuningCurves(layer=layer, kind=stimuli.kind, spec=spec, position=pos, axes=tuple(axes), values=values,
                        channels=ch, responses=out.view(len(chans), *shape), baseline=base)


def edge_tuning(model: Any, spec: ImageSpec, layer: str, *, channels: Sequence[int] | None = None,
                step: float = 15.0, shifts: Sequence[tuple[float, float]] = JITTER,
                position: tuple[int, int] | None = None, progress: bool = True) -> TuningCurves:
    """Responses (k, n_angles) to oriented edges, bright towards each angle in [0, 360) by `step` degrees.

    Example::

        t = edge_tuning(model, spec, "relu1", step=15)
        orientation_summary(t).preferred       # each channel's preferred edge direction
    """
    s = edges(spec, _angles(step, 360.0), shifts=shifts)
    return tuning_curves(model, spec, layer, s, ("angle",), channels=channels, position=position, progress=progress)


def curve_tuning(model: Any, spec: ImageSpec, layer: str, *, channels: Sequence[int] | None = None,
                 step: float = 15.0, radii: Sequence[float] = (2.0, 3.0, 4.0, 6.0, 9.0, INF), width: float = 1.5,
                 length: float = 8.0, shifts: Sequence[tuple[float, float]] = JITTER,
                 position: tuple[int, int] | None = None, progress: bool = True) -> TuningCurves:
    """Responses (k, n_angles, n_radii) to curves bulging towards each angle in [0, 360) by `step`, for each
    radius (inf = the straight line of the same orientation and length).

    Example::

        t = curve_tuning(model, spec, "relu2")
        t.values["radius"]                     # [2, 3, 4, 6, 9, inf]
    """
    s = curves(spec, _angles(step, 360.0), radii, width=width, length=length, shifts=shifts)
    return tuning_curves(model, spec, layer, s, ("angle", "radius"), channels=channels, position=position,
                         progress=progress)


def grating_tuning(model: Any, spec: ImageSpec, layer: str, *, channels: Sequence[int] | None = None,
                   step: float = 15.0, frequencies: Sequence[float] = (0.04, 0.07, 0.1, 0.15, 0.2, 0.3),
                   phases: Sequence[float] = (0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0),
                   position: tuple[int, int] | None = None, progress: bool = True) -> TuningCurves:
    """Responses (k, n_angles, n_frequencies) to gratings at angles in [0, 180) by `step` and at each
    frequency (cycles per pixel), maximum over phases.

    Example::

        t = grating_tuning(model, spec, "relu1")
        t.responses.amax(dim=1).argmax(dim=1)  # each channel's preferred frequency (index)
    """
    s = gratings(spec, _angles(step, 180.0), frequencies, phases=phases)
    return tuning_curves(model, spec, layer, s, ("angle", "frequency"), channels=channels, position=position,
                         progress=progress)


def _angles(step: float, period: float) -> list[float]:
    if not 0 < step <= period / 4:
        raise VisionInputError(f"step must be in (0, {period / 4}] degrees, got {step}")
    n = int(round(period / step))
    return [i * period / n for i in range(n)]


@dataclass(frozen=True)
class OrientationSummary(Saved):
    """Per channel (k,): `preferred` angle (degrees), `peak` response, `osi`, `circular_variance`
    (orientation) and `direction_variance` (direction; NaN for gratings and lines, which repeat every 180
    degrees), from responses minus the baseline floored at 0.

    Example::

        s = orientation_summary(edge_tuning(model, spec, "relu1"))
        tuned = s.channels[s.osi > 0.5]
    """

    layer: str
    kind: str
    channels: Tensor
    preferred: Tensor
    peak: Tensor
    osi: Tensor
    circular_variance: Tensor
    direction_variance: Tensor


def _over_angle(t: TuningCurves) -> tuple[Tensor, Tensor]:
    """Angles (n,) in radians and responses (k, n) minus baseline floored at 0, other axes reduced by max."""
    if "angle" not in t.axes:
        raise VisionInputError(f"these tuning curves have no angle axis (axes {t.axes})")
    r = t.responses.movedim(1 + t.axes.index("angle"), 1)
    r = r.reshape(r.shape[0], r.shape[1], -1).amax(dim=2)
    return torch.deg2rad(t.values["angle"].double()), (r.double() - t.baseline.double().unsqueeze(1)).clamp_min(0)


ORIENTATION_KINDS = frozenset({"grating", "line"})


def _period(kind: str) -> float:
    """The period in degrees of a stimulus family over angle: 180 for orientations (a grating or line at a
    and a + 180 is the same stimulus), 360 for directions (edges with their contrast sign, curves with the
    side they bulge to, and any other family)."""
    return 180.0 if kind in ORIENTATION_KINDS else 360.0


def _variance(angles: Tensor, r: Tensor, harmonic: int) -> Tensor:
    total = r.sum(dim=1)
    z = (r * torch.exp(1j * harmonic * angles)).sum(dim=1).abs()
    return torch.where(total > 0, 1 - z / total.clamp_min(1e-30), torch.ones_like(total))


def orientation_summary(t: TuningCurves) -> OrientationSummary:
    """Preferred angle, peak, OSI, circular and direction variance (k,) of tuning curves with an angle axis.

    Example::

        s = orientation_summary(t)
        s.preferred[s.osi.argmax()]
    """
    angles, r = _over_angle(t)
    peak, best = r.max(dim=1)
    period = math.radians(_period(t.kind))
    orth = []
    for c in range(len(r)):
        pref = angles[best[c]]
        sides = [int(torch.argmin(torch.remainder(angles - pref - d + period / 2, period).sub(period / 2).abs()))
                 for d in (math.pi / 2, -math.pi / 2)]
        orth.append(max(float(r[c, i]) for i in sides))
    orth_t = torch.tensor(orth, dtype=torch.float64)
    osi = torch.where(peak + orth_t > 0, (peak - orth_t) / (peak + orth_t).clamp_min(1e-30), torch.zeros_like(peak))
    direction = (_variance(angles, r, 1) if period > math.pi
                 else torch.full_like(peak, math.nan))  # a and a + 180 are one stimulus: no direction to measure
    return OrientationSummary(layer=t.layer, kind=t.kind, channels=t.channels, preferred=t.values["angle"][best],
                              peak=peak, osi=osi, circular_variance=_variance(angles, r, 2),
                              direction_variance=direction)


def _one_bump(r: Tensor) -> bool:
    """Whether a circular sequence (n,) is above half its peak on one contiguous arc only."""
    above = r >= r.max() / 2
    if bool(above.all()):
        return False  # untuned
    return int((above & ~above.roll(1)).sum()) == 1


@dataclass(frozen=True)
class CurveDetectors(Saved):
    """The curve-detector search over a layer's channels (k,) and which qualify (`found`, (m,)).

    Per channel: `preferred` bulge angle and `best_radius` of the strongest curve, `curve_peak` its response,
    `line_response` the straight line of the same orientation (maxed over both bulge sides, which draw the
    same line), `ratio` = curve_peak / line_response, `selectivity` (DSI) and `direction_variance` over angle
    at the best radius, `resolvable` (the best radius bends by a pixel within `field` (rows, columns) pixels),
    `radius_ratios` (k, n_radii) the curve at the preferred angle over the line, radius by radius (a curve
    detector in the strict sense prefers curves over a range of radii, not only the tightest),
    `smooth` (one bump over angle), `qualifies`; `tuning` the curve tuning curves they came from.

    Example::

        d = find_curve_detectors(model, spec, "relu2")
        d.found, d.ratio[d.qualifies]
    """

    layer: str
    margin: float
    min_selectivity: float
    min_peak: float
    channels: Tensor
    preferred: Tensor
    best_radius: Tensor
    curve_peak: Tensor
    line_response: Tensor
    ratio: Tensor
    radius_ratios: Tensor
    selectivity: Tensor
    direction_variance: Tensor
    smooth: Tensor
    resolvable: Tensor
    field: tuple[int, int]
    qualifies: Tensor
    found: Tensor
    largest_gap: float
    tuning: TuningCurves


def find_curve_detectors(model: Any, spec: ImageSpec, layer: str, *, channels: Sequence[int] | None = None,
                         margin: float = 0.25, min_selectivity: float = 0.5, min_peak: float = 0.1,
                         step: float = 15.0,
                         radii: Sequence[float] = (2.0, 3.0, 4.0, 6.0, 9.0), width: float = 1.5,
                         length: float = 8.0, shifts: Sequence[tuple[float, float]] = JITTER,
                         position: tuple[int, int] | None = None, progress: bool = True) -> CurveDetectors:
    """Which channels of `layer` behave like curve detectors (see the module docstring for the
    criteria); every channel's figures are kept, so "none qualify" comes with the evidence. `step` must split
    360 degrees into an even number of angles, so every bulge angle has its opposite among them.

    Example::

        d = find_curve_detectors(model, spec, "relu2", margin=0.25)
        print(d.found.tolist() or "no curve detectors", d.ratio.max())
    """
    finite = [float(r) for r in radii if not math.isinf(float(r))]
    if not finite:
        raise VisionInputError("radii must include finite radii (the straight line is added)")
    n_steps = len(_angles(step, 360.0))
    if n_steps % 2:
        raise VisionInputError(f"step {step} gives {n_steps} angles over 360 degrees, so no angle has its opposite "
                               f"(180 degrees away) to compare with; use a step giving an even number of angles, "
                               f"e.g. 15, 18, 20, 22.5, 30, 36, 45, 60 or 90")
    t = curve_tuning(model, spec, layer, channels=channels, step=step, radii=[*finite, INF], width=width,
                     length=length, shifts=shifts, position=position, progress=progress)
    r = (t.responses.double() - t.baseline.double().view(-1, 1, 1)).clamp_min(0)  # (k, angles, radii + line)
    curve, line = r[:, :, :-1], r[:, :, -1]
    k, n_angles, n_radii = curve.shape  # n_radii: the distinct finite radii
    flat = curve.reshape(k, -1)
    peak, where = flat.max(dim=1)
    best_angle, best_r = where // n_radii, where % n_radii
    half = n_angles // 2  # n_angles is even, so angle index i + half is the bulge 180 degrees away
    same_line = torch.stack([torch.maximum(line[c, best_angle[c]], line[c, (best_angle[c] + half) % n_angles])
                             for c in range(k)])
    ratio = torch.where(same_line > 0, peak / same_line.clamp_min(1e-30),
                        torch.where(peak > 0, torch.full_like(peak, math.inf), torch.zeros_like(peak)))
    at_r = torch.stack([curve[c, :, best_r[c]] for c in range(k)])  # (k, angles)
    at_a = curve[torch.arange(k), best_angle]  # (k, radii)
    radius_ratios = torch.where(same_line.unsqueeze(1) > 0, at_a / same_line.clamp_min(1e-30).unsqueeze(1),
                                torch.where(at_a > 0, math.inf, 0.0))
    angles = torch.deg2rad(t.values["angle"].double())
    dvar = _variance(angles, at_r, 1)
    smooth = torch.tensor([_one_bump(at_r[c]) for c in range(k)])
    opposite = at_r[torch.arange(k), (best_angle + half) % n_angles]
    dsi = (peak - opposite) / (peak + opposite).clamp_min(1e-30)
    box = receptive_boxes(model, spec, layer, torch.tensor([t.position]))[0].tolist()
    field = (box[2] - box[0], box[3] - box[1])
    h = min(field) / 2
    rad = t.values["radius"][best_r].double()
    resolvable = (rad <= h) | (rad - torch.sqrt((rad ** 2 - h ** 2).clamp_min(0)) >= 1)
    strong = peak >= min_peak * peak.max() if len(peak) else peak > 0
    ok = (peak > 0) & strong & (dsi >= min_selectivity) & (ratio >= 1 + margin) & smooth & resolvable
    prefs = sorted({float(a) for a in t.values["angle"][best_angle][ok]})
    gaps = [(prefs[(i + 1) % len(prefs)] - prefs[i]) % 360.0 for i in range(len(prefs))] if len(prefs) > 1 else []
    return CurveDetectors(layer=layer, margin=float(margin), min_selectivity=float(min_selectivity),
                          min_peak=float(min_peak), channels=t.channels,
                          preferred=t.values["angle"][best_angle], best_radius=t.values["radius"][best_r],
                          curve_peak=peak, line_response=same_line, ratio=ratio,
                          radius_ratios=radius_ratios, selectivity=dsi,
                          direction_variance=dvar,
                          smooth=smooth, resolvable=resolvable, field=(int(field[0]), int(field[1])), qualifies=ok,
                          found=t.channels[ok], largest_gap=max(gaps) if gaps else 360.0, tuning=t)
