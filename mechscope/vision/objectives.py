"""What feature visualisation maximises: objectives on the feature maps of a network's layers.

An objective reads the activations (batch, C, H, W) of one or more feature layers (by submodule path)
and gives one value per image, (batch,), to be maximised. Objectives combine: `a + b`, `a - b`,
`2.0 * a`, `-a` (a weighted sum, read from one forward pass).

- `channel(layer, c)`: the mean of channel c's map.
- `neuron(layer, c, y=None, x=None)`: channel c at one position (the centre by default).
- `direction(layer, vector)`: the dot product of `vector` (C,) with the channel vector at each
  position, averaged over positions.
- `latent(layer, dictionary, k)`: latent k of a dictionary (anything with `encode(x) -> (..., n_latents)`,
  e.g. a sparse autoencoder trained on the layer's channel vectors) at each position, averaged.
- `diversity(layer)`: minus the mean cosine similarity of each image's Gram matrix (channels x
  channels, over positions) with the other images' (Lucid's diversity term); 0 for a batch of one.

Positions given to `neuron` are those of the layer's map on an untransformed image; on a padded or
cropped image the same point relative to the centre is read.

    from mechscope.vision.objectives import channel, diversity
    objective = channel("relu2", 5) + 0.5 * diversity("relu2")
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .layers import FeatureLayer, VisionInputError, check_channel


class Objective:
    """A value per image (batch,) computed from feature maps {layer path: (batch, C, H, W)}, to be maximised.

    Example::

        objective = channel("relu2", 5) + 0.5 * diversity("relu2")
        objective.value({"relu2": maps})   # (batch,)
    """

    def layers(self) -> tuple[str, ...]:
        """The submodule paths whose feature maps it reads."""
        raise NotImplementedError

    def bind(self, layers: Mapping[str, FeatureLayer]) -> Objective:
        """This objective fitted to these layers (their sizes), or `VisionInputError` naming the valid choices."""
        return self

    def value(self, acts: Mapping[str, Tensor]) -> Tensor:
        """The value (batch,) of each image, from the feature maps of `layers()`."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short readable form, e.g. "channel(relu2, 5) + 0.5 * diversity(relu2)"."""
        raise NotImplementedError

    def __add__(self, other: Objective) -> Objective:
        return Sum(_terms(self) + _terms(other))

    def __sub__(self, other: Objective) -> Objective:
        return self + (-1.0) * other

    def __mul__(self, k: float) -> Objective:
        if isinstance(k, bool) or not isinstance(k, (int, float)):
            return NotImplemented
        return Sum(tuple((w * float(k), t) for w, t in _terms(self)))

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return (-1.0) * self

    def __repr__(self) -> str:
        return self.describe()


def _terms(o: Objective) -> tuple[tuple[float, Objective], ...]:
    if not isinstance(o, Objective):
        raise TypeError(f"objectives combine with objectives, not {type(o).__name__}")
    return o.terms if isinstance(o, Sum) else ((1.0, o),)


@dataclass(frozen=True, repr=False)
class Sum(Objective):
    """A weighted sum of objectives: terms ((weight, objective), ...).

    Example::

        objective = channel("relu2", 5) - 0.5 * channel("relu2", 6)
    """

    terms: tuple[tuple[float, Objective], ...]

    def layers(self) -> tuple[str, ...]:
        """The submodule paths whose feature maps it reads."""
        return tuple(dict.fromkeys(p for _, t in self.terms for p in t.layers()))

    def bind(self, layers: Mapping[str, FeatureLayer]) -> Objective:
        """This objective checked against the layers (see `Objective.bind`)."""
        return Sum(tuple((w, t.bind(layers)) for w, t in self.terms))

    def value(self, acts: Mapping[str, Tensor]) -> Tensor:
        """The value (batch,) of each image, from the feature maps {path: (batch, C, H, W)}."""
        return sum(w * t.value(acts) for w, t in self.terms)

    def describe(self) -> str:
        """A short readable form of the objective."""
        out = ""
        for w, t in self.terms:
            sign = "-" if w < 0 else "+"
            mag = abs(w)
            body = t.describe() if mag == 1.0 else f"{mag:g} * {t.describe()}"
            out = (("-" if sign == "-" else "") + body) if not out else f"{out} {sign} {body}"
        return out


@dataclass(frozen=True, repr=False)
class Channel(Objective):
    """The mean over positions of channel `channel` of `layer`'s map: (batch,).

    Example::

        Channel("relu2", 5)      # or channel("relu2", 5)
    """

    layer: str
    channel: int

    def layers(self) -> tuple[str, ...]:
        """The submodule paths whose feature maps it reads."""
        return (self.layer,)

    def bind(self, layers: Mapping[str, FeatureLayer]) -> Objective:
        """This objective checked against the layers (see `Objective.bind`)."""
        check_channel(layers[self.layer], self.channel)
        return self

    def value(self, acts: Mapping[str, Tensor]) -> Tensor:
        """The value (batch,) of each image, from the feature maps {path: (batch, C, H, W)}."""
        return acts[self.layer][:, self.channel].mean(dim=(-2, -1))

    def describe(self) -> str:
        """A short readable form of the objective."""
        return f"channel({self.layer}, {self.channel})"


@dataclass(frozen=True, repr=False)
class Neuron(Objective):
    """Channel `channel` of `layer` at position (y, x) of its map (the centre when None): (batch,).

    Example::

        Neuron("conv2", 3)            # the centre of channel 3's map
        Neuron("conv2", 3, y=2, x=5)
    """

    layer: str
    channel: int
    y: int | None = None
    x: int | None = None
    # the layer's map size on an untransformed image (set by `bind`; positions are relative to it)
    size: tuple[int, int] | None = None

    def layers(self) -> tuple[str, ...]:
        """The submodule paths whose feature maps it reads."""
        return (self.layer,)

    def bind(self, layers: Mapping[str, FeatureLayer]) -> Objective:
        """This objective checked against the layers (see `Objective.bind`)."""
        fl = layers[self.layer]
        check_channel(fl, self.channel)
        for name, v, n in (("y", self.y, fl.height), ("x", self.x, fl.width)):
            if v is not None and not 0 <= v < n:
                raise VisionInputError(f"neuron position {name}={v} is outside {self.layer!r}'s map of "
                                       f"{fl.height} x {fl.width} (y 0 to {fl.height - 1}, x 0 to {fl.width - 1})")
        return replace(self, size=(fl.height, fl.width))

    def value(self, acts: Mapping[str, Tensor]) -> Tensor:
        """The value (batch,) of each image, from the feature maps {path: (batch, C, H, W)}."""
        a = acts[self.layer][:, self.channel]
        h, w = a.shape[-2:]
        bh, bw = self.size if self.size is not None else (h, w)
        y = (bh // 2 if self.y is None else self.y) + (h - bh) // 2
        x = (bw // 2 if self.x is None else self.x) + (w - bw) // 2
        return a[:, min(max(y, 0), h - 1), min(max(x, 0), w - 1)]

    def describe(self) -> str:
        """A short readable form of the objective."""
        where = "" if self.y is None and self.x is None else f", y={self.y}, x={self.x}"
        return f"neuron({self.layer}, {self.channel}{where})"


@dataclass(frozen=True, repr=False)
class Direction(Objective):
    """The dot product of `vector` (C,) with `layer`'s channel vector at each position, averaged: (batch,).

    Example::

        Direction("relu2", torch.randn(64))
    """

    layer: str
    vector: Tensor

    def layers(self) -> tuple[str, ...]:
        """The submodule paths whose feature maps it reads."""
        return (self.layer,)

    def bind(self, layers: Mapping[str, FeatureLayer]) -> Objective:
        """This objective checked against the layers (see `Objective.bind`)."""
        fl = layers[self.layer]
        if self.vector.dim() != 1 or self.vector.shape[0] != fl.channels:
            raise VisionInputError(f"the direction must be a vector of {fl.channels} values (one per channel of "
                                   f"{self.layer!r}), got shape {tuple(self.vector.shape)}")
        return self

    def value(self, acts: Mapping[str, Tensor]) -> Tensor:
        """The value (batch,) of each image, from the feature maps {path: (batch, C, H, W)}."""
        a = acts[self.layer]
        return torch.einsum("bchw,c->b", a, self.vector.to(a)) / (a.shape[-2] * a.shape[-1])

    def describe(self) -> str:
        """A short readable form of the objective."""
        return f"direction({self.layer}, |v|={float(self.vector.norm()):.3g})"


@dataclass(frozen=True, repr=False)
class Latent(Objective):
    """Latent `latent` of `dictionary` on `layer`'s channel vectors at each position, averaged: (batch,).

    `dictionary` is any object with `encode(x)`: channel vectors (..., C) -> latents (..., n_latents),
    e.g. a sparse autoencoder or transcoder trained on this layer's activations.

    Example::

        Latent("relu2", sae, 17)
    """

    layer: str
    dictionary: Any
    latent: int

    def layers(self) -> tuple[str, ...]:
        """The submodule paths whose feature maps it reads."""
        return (self.layer,)

    def bind(self, layers: Mapping[str, FeatureLayer]) -> Objective:
        """This objective checked against the layers (see `Objective.bind`)."""
        if not callable(getattr(self.dictionary, "encode", None)):
            raise VisionInputError(f"{type(self.dictionary).__name__} has no encode(x) method; a dictionary "
                                   "objective needs encode: (..., channels) -> (..., n_latents)")
        fl = layers[self.layer]
        probe = self._to_dictionary(torch.zeros(1, fl.channels))
        try:
            with torch.no_grad():
                n = self.dictionary.encode(probe).shape[-1]
        except Exception as e:
            raise VisionInputError(f"{type(self.dictionary).__name__}.encode does not take {self.layer!r}'s "
                                   f"channel vectors of {fl.channels} values: {type(e).__name__}: {e}") from e
        if isinstance(self.latent, bool) or not isinstance(self.latent, int) or not 0 <= self.latent < n:
            raise VisionInputError(f"latent {self.latent!r} is out of range for a dictionary of {n} latents "
                                   f"(0 to {n - 1})")
        return self

    def _to_dictionary(self, x: Tensor) -> Tensor:
        """`x` on the device (and in the floating dtype) of the dictionary's parameters, if it has any."""
        p = next(iter(getattr(self.dictionary, "parameters", lambda: iter(()))()), None)
        if p is None:
            return x
        return x.to(device=p.device, dtype=p.dtype if p.is_floating_point() else None)

    def value(self, acts: Mapping[str, Tensor]) -> Tensor:
        """The value (batch,) of each image, from the feature maps {path: (batch, C, H, W)}: encoded on the
        dictionary's device, returned on the feature maps'."""
        a = acts[self.layer].permute(0, 2, 3, 1)  # (batch, H, W, C)
        v = self.dictionary.encode(self._to_dictionary(a))[..., self.latent].mean(dim=(1, 2))
        return v.to(device=a.device, dtype=a.dtype)

    def describe(self) -> str:
        """A short readable form of the objective."""
        return f"latent({self.layer}, {type(self.dictionary).__name__}, {self.latent})"


@dataclass(frozen=True, repr=False)
class Diversity(Objective):
    """Minus the mean cosine similarity of each image's Gram matrix with the other images': (batch,).

    The Gram matrix of an image is (C, C): its channel maps' inner products over positions. Added
    with a weight to another objective, it pushes the images of a batch towards different
    patterns (Lucid's diversity). A batch of one gives 0.

    Example::

        channel("relu2", 5) + 0.5 * Diversity("relu2")
    """

    layer: str

    def layers(self) -> tuple[str, ...]:
        """The submodule paths whose feature maps it reads."""
        return (self.layer,)

    def value(self, acts: Mapping[str, Tensor]) -> Tensor:
        """The value (batch,) of each image, from the feature maps {path: (batch, C, H, W)}."""
        a = acts[self.layer]
        b, c = a.shape[:2]
        if b < 2:
            return a.new_zeros(b)
        flat = a.reshape(b, c, -1)
        gram = flat @ flat.transpose(1, 2) / flat.shape[-1]
        g = F.normalize(gram.reshape(b, -1), dim=1)
        sim = g @ g.T  # (b, b)
        return -(sim.sum(1) - sim.diagonal()) / (b - 1)

    def describe(self) -> str:
        """A short readable form of the objective."""
        return f"diversity({self.layer})"


def channel(layer: str, c: int) -> Channel:
    """The mean of channel `c` of `layer`'s map (see `Channel`).

    Example::

        channel("relu2", 5)
    """
    return Channel(layer, c)


def neuron(layer: str, c: int, y: int | None = None, x: int | None = None) -> Neuron:
    """Channel `c` of `layer` at one position, the centre by default (see `Neuron`).

    Example::

        neuron("conv2", 3)
    """
    return Neuron(layer, c, y, x)


def direction(layer: str, vector: Tensor | Iterable[float]) -> Direction:
    """The dot product of `vector` (C,) with the channel vectors of `layer` (see `Direction`).

    Example::

        direction("relu2", torch.randn(64))
    """
    return Direction(layer, torch.as_tensor(vector, dtype=torch.float32).detach())


def latent(layer: str, dictionary: Any, k: int) -> Latent:
    """Latent `k` of `dictionary` (anything with `encode`) on `layer`'s channel vectors (see `Latent`).

    Example::

        latent("relu2", sae, 17)
    """
    return Latent(layer, dictionary, k)


def diversity(layer: str) -> Diversity:
    """Lucid's diversity term on `layer` (see `Diversity`); add it with a weight.

    Example::

        channel("relu2", 5) + 0.5 * diversity("relu2")
    """
    return Diversity(layer)
