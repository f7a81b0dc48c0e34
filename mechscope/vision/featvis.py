"""Feature visualisation by optimisation: the images that most drive a channel, neuron, direction or latent.

`visualize` starts from a random image in a parameterisation (`param.py`: Fourier with 1/frequency
scaling and decorrelated colour, Lucid's default; plain pixels; or MACO, the phase of a spectrum whose
magnitude is fixed to that of the network's training images), and follows the gradient of an
objective (`objectives.py`) with Adam, each step on a randomly transformed copy of the image
(`transforms.py`: padding, jitter, scaling, rotation). It works on any convolutional network through
forward hooks on its feature layers (`layers.py`): the forward pass stops after the deepest layer the
objective reads, and only the image's parameters get gradients.

    import mechscope as ms
    from mechscope.vision import ImageSpec, visualize
    model = ms.load("zoo:fmnist-cnn")
    result = visualize(model, "relu2:5", ImageSpec(1, 28, 28), steps=256, seed=0)
    result.images.shape          # (1, 1, 28, 28), in the spec's pixel range
    result.save("out/relu2-5")   # tensors.safetensors, result.json, featvis.png

The result (`FeatureVis`) keeps the images, the objective's value at every step (on the transformed
image the step optimised), the final value of each image measured on the untransformed image, and
the settings that produced it. Same seed, same settings, same network: the same images.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.run import model_device
from ..core.progress import progress_bar
from ..models import wrap
from ._store import load_result, save_result
from .layers import ImageSpec, VisionInputError, call_counts, evaluating, feature_layer, network, parse_target
from .objectives import Objective, channel
from .param import (PARAMS, FourierParam, ImageParam, MacoParam, PixelParam, color_correlation, decorrelate,
                    mean_spectrum)
from .transforms import Compose, Transform, standard_transforms

PNG_FILE = "featvis.png"


class _Stop(Exception):
    """Raised by a hook once every feature map the objective reads has been computed."""


class FeatureReader:
    """Forward hooks that read the feature maps at `paths` of `module`, stopping the forward pass after the last.

    Calling it runs the module on images (batch, C, H, W) and returns {path: (batch, C', H', W')}; the
    layers after the deepest one read never run (so images of another size work too, as long as the
    feature layers take them). A submodule called several times in one forward pass (a ResNet block's
    shared ReLU) is read at its last call, as `mechscope.run` captures it: `probe`, an image batch the
    whole network takes, counts the calls once on entry.

    Example::

        with FeatureReader(net, ["conv1", "relu2"], probe=spec.blank(1)) as read:
            maps = read(images)          # {"conv1": ..., "relu2": ...}
    """

    def __init__(self, module: nn.Module, paths: Sequence[str], probe: Tensor | None = None):
        self.module, self.paths = module, tuple(dict.fromkeys(paths))
        mods = dict(module.named_modules())
        missing = [p for p in self.paths if p not in mods]
        if missing:
            raise VisionInputError(f"{', '.join(map(repr, missing))} not submodules of {type(module).__name__}")
        self._mods = [mods[p] for p in self.paths]
        self._probe = probe
        self._handles: list[Any] = []
        self._store: dict[str, Tensor] = {}
        self._seen: dict[str, int] = {}
        self._calls = dict.fromkeys(self.paths, 1)

    def __enter__(self) -> FeatureReader:
        if self._probe is not None:  # counted before the reading hooks exist, so the probe runs to its end
            self._calls = {p: max(1, n) for p, n in call_counts(self.module, self._probe, self.paths).items()}
        for path, mod in zip(self.paths, self._mods):
            def hook(_m, _inp, out, path=path):
                # with several layers read, a later in-place op (ReLU(inplace=True)) would overwrite this map
                self._store[path] = out.clone() if len(self.paths) > 1 and isinstance(out, Tensor) else out
                self._seen[path] = self._seen.get(path, 0) + 1
                if all(self._seen.get(p, 0) >= n for p, n in self._calls.items()):
                    raise _Stop
            self._handles.append(mod.register_forward_hook(hook))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        """The feature maps {path: (batch, C, H, W)} of `images` (batch, C, H, W)."""
        self._store, self._seen = {}, {}
        try:
            self.module(images)
        except _Stop:
            pass
        if len(self._store) != len(self.paths):
            missing = [p for p in self.paths if p not in self._store]
            raise VisionInputError(f"{', '.join(map(repr, missing))} did not run in the forward pass")
        out, self._store = self._store, {}
        return out


class _RedirectedReLU(torch.autograd.Function):
    """ReLU whose gradient, for an image whose ReLU passes no gradient at all, still flows where it would
    raise a negative input (Lucid's "redirected ReLU gradient" for the first steps: a unit that is
    silent on the starting image can still be reached)."""

    @staticmethod
    def forward(ctx, x):
        """max(x, 0), keeping x for the backward pass."""
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        """The ReLU's gradient, or for an image to which it passes none, the redirected one."""
        (x,) = ctx.saved_tensors
        relu = torch.where(x > 0, g, torch.zeros_like(g))
        # g is the gradient of the loss (minus the objective): g < 0 asks for a larger input
        redirected = torch.where((x < 0) & (g > 0), torch.zeros_like(g), g)
        passes = relu.reshape(relu.shape[0], -1).abs().sum(1) > 0
        return torch.where(passes.reshape(-1, *[1] * (g.dim() - 1)), relu, redirected)


class _RedirectReLUs:
    """Within the context, every nn.ReLU submodule of `module` uses `_RedirectedReLU`'s gradient."""

    def __init__(self, module: nn.Module):
        self.relus = [m for m in module.modules() if isinstance(m, nn.ReLU)]
        self.handles: list[Any] = []

    def __enter__(self) -> _RedirectReLUs:
        for m in self.relus:
            saved: dict[str, Tensor] = {}

            def pre(_m, inp, saved=saved):
                saved["x"] = inp[0]
                return (inp[0].clone(),) if _m.inplace else None  # an in-place ReLU must not clobber x

            def post(_m, _inp, _out, saved=saved):
                return _RedirectedReLU.apply(saved.pop("x"))
            self.handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post, prepend=True)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


@dataclass(frozen=True, eq=False)
class FeatureVis:
    """The images found by `visualize` and what produced them.

    images: (batch, C, H, W) in the spec's pixel range. values: (steps,) the objective (mean over the
    batch) at each step, on the transformed images that step optimised. activation: (batch,) the
    objective of each final image, untransformed. settings: objective, parameterisation, transforms,
    steps, lr, batch, seed, spec. seconds: the optimisation's wall time.

    Example::

        result = visualize(model, "relu2:5", ImageSpec(1, 28, 28))
        result.save("out/relu2-5"); FeatureVis.load("out/relu2-5").activation
    """

    images: Tensor
    values: Tensor
    activation: Tensor
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def spec(self) -> ImageSpec:
        """The ImageSpec the images were made for."""
        return ImageSpec(**self.settings["spec"])

    def save(self, directory: str | Path, png_scale: int = 4) -> Path:
        """Write the result (`_store`'s format: tensors.safetensors and result.json) and featvis.png (the
        images side by side) into `directory`."""
        d = save_result(directory, "FeatureVis", {"images": self.images, "values": self.values,
                                                  "activation": self.activation},
                        {"settings": self.settings, "seconds": self.seconds})
        write_png(d / PNG_FILE, self.images, self.spec, scale=png_scale)
        return d

    @classmethod
    def load(cls, directory: str | Path) -> FeatureVis:
        """The result saved in `directory` by `save`."""
        t, meta = load_result(directory, "FeatureVis")
        return cls(t["images"], t["values"], t["activation"], meta["settings"], meta["seconds"])


def _as_objective(objective: Objective | str) -> Objective:
    if isinstance(objective, Objective):
        return objective
    if isinstance(objective, str):
        path, c = parse_target(objective)
        if c is None:
            raise VisionInputError(f"{objective!r} names a layer but no channel: give LAYER:CHANNEL (e.g. "
                                   f"{path}:0) or an objective from mechscope.vision.objectives")
        return channel(path, c)
    raise VisionInputError(f"the objective must be 'LAYER:CHANNEL' or an Objective, got {type(objective).__name__}")


def _as_transform(transforms: Transform | Sequence[Transform] | str | None, spec: ImageSpec) -> Transform | None:
    if transforms is None or transforms == "none":
        return None
    if transforms == "standard":
        return standard_transforms(spec)
    if isinstance(transforms, str):
        raise VisionInputError(f"transforms must be 'standard', 'none', None or Transform objects, got {transforms!r}")
    if isinstance(transforms, Transform):
        return transforms
    return Compose(transforms)


def _param(name: str, spec: ImageSpec, batch: int, gen: torch.Generator, device: torch.device,
           images: Tensor | None) -> ImageParam:
    if name not in PARAMS:
        raise VisionInputError(f"param must be one of {', '.join(PARAMS)}, got {name!r}")
    if images is not None and (images.dim() != 4 or tuple(images.shape[1:]) != spec.shape):
        raise VisionInputError(f"the training images must be (n, {', '.join(map(str, spec.shape))}) like the "
                               f"network's input, got shape {tuple(images.shape)}")
    color = color_correlation(images) if images is not None and spec.channels == 3 else None
    if name == "pixel":
        return PixelParam(spec, batch, generator=gen, device=device)
    if name == "fourier":
        return FourierParam(spec, batch, generator=gen, color=color, device=device)
    if images is None:
        raise VisionInputError("param='maco' fixes the spectrum's magnitude to that of the network's training "
                               "images: pass them as images=(n, C, H, W) in the pixel range (e.g. "
                               "as_input(fashion_mnist('train')[0][:2000]) for Fashion-MNIST)")
    magnitude = mean_spectrum(images if color is None else decorrelate(images, color))
    return MacoParam(spec, magnitude, batch, generator=gen, color=color, device=device)


def visualize(model: Any, objective: Objective | str, spec: ImageSpec, *, param: str = "fourier",
              steps: int = 256, lr: float = 0.05, transforms: Transform | Sequence[Transform] | str | None = "standard",
              batch: int = 1, seed: int = 0, images: Tensor | None = None, redirect_relu_steps: int = 16,
              device: torch.device | str | None = None, progress: bool = True) -> FeatureVis:
    """Images (batch, C, H, W) that maximise `objective` on `model`, found by gradient ascent.

    model: an nn.Module or adapter taking images of `spec`. objective: an `Objective` or "LAYER:CHANNEL"
    (the channel's mean activation). param: "fourier" (Lucid's), "pixel" or "maco" (needs `images`).
    transforms: "standard" (`transforms.standard_transforms`: pad, jitter, scale, rotation, jitter, sized
    from the image), None, or Transform objects. images: the network's training images (n, C, H, W) in the
    pixel range: the colour correlation of 3-channel images and MACO's magnitude spectrum come from them.
    Adam with learning rate `lr` for `steps` steps; `seed` fixes the start and every random transform. For
    the first `redirect_relu_steps` steps the network's nn.ReLU modules pass gradient to negative inputs
    that the objective wants raised, for images whose ReLUs pass none (Lucid's trick: a unit silent on the
    grey starting image is reached). The network runs in eval mode (its mode is restored) on `device` (the
    model's by default).

    Example::

        from mechscope.vision.objectives import channel, diversity
        r = visualize(model, channel("relu2", 5) + 0.5 * diversity("relu2"), ImageSpec(1, 28, 28),
                      batch=4, steps=128, seed=0)
        r.activation     # (4,): the channel's mean on each untransformed image
    """
    adapter = wrap(model)
    module = network(adapter)
    if not isinstance(steps, int) or steps < 1 or not isinstance(batch, int) or batch < 1:
        raise VisionInputError(f"steps and batch must be whole numbers >= 1, got steps={steps!r}, batch={batch!r}")
    obj = _as_objective(objective)
    layers = {p: feature_layer(adapter, p, spec) for p in obj.layers()}  # its probe runs in eval mode
    obj = obj.bind(layers)
    device = model_device(adapter) if device is None else torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    image = _param(param, spec, batch, gen, device, images)
    transform = _as_transform(transforms, spec)
    fill = (spec.low + spec.high) / 2
    opt = torch.optim.Adam(image.params, lr=lr)
    values = torch.empty(steps)
    t0 = time.perf_counter()
    with evaluating(module):  # batch norm's running statistics must not move; each submodule's mode comes back
        with FeatureReader(module, list(layers), probe=spec.blank(1, device)) as read, \
                progress_bar(total=steps, desc=f"visualise {obj.describe()}", unit="step", disable=not progress) as bar:
            for step in range(steps):
                x = image()
                if transform is not None:
                    x = transform(x, gen, fill)
                if step < redirect_relu_steps:
                    with _RedirectReLUs(module):
                        v = obj.value(read(x))
                else:
                    v = obj.value(read(x))
                grads = torch.autograd.grad(-v.sum(), image.params)
                for p, g in zip(image.params, grads):
                    p.grad = g
                opt.step()
                values[step] = v.detach().mean()
                bar.update(1)
                if step % 16 == 15 or step == steps - 1:
                    bar.set_postfix_str(f"objective {float(values[step]):.4g}")
            with torch.no_grad():
                final = image().detach()
                activation = obj.value(read(final)).detach().cpu()
    seconds = time.perf_counter() - t0
    settings = {"objective": obj.describe(), "layers": list(layers), **image.settings(),
                "transforms": transform.settings() if transform is not None else None, "steps": steps, "lr": lr,
                "redirect_relu_steps": redirect_relu_steps,
                "batch": batch, "seed": seed, "training_images": None if images is None else int(images.shape[0]),
                "spec": {"channels": spec.channels, "height": spec.height, "width": spec.width,
                         "low": spec.low, "high": spec.high}}
    return FeatureVis(final.cpu(), values, activation, settings, seconds)


def to_uint8(images: Tensor, spec: ImageSpec) -> Tensor:
    """Images (batch, C, H, W) in the spec's range -> uint8 (batch, C, H, W) in 0..255 (clamped).

    Example::

        to_uint8(torch.full((1, 1, 2, 2), 0.5), ImageSpec(1, 2, 2))   # all 128
    """
    x = (images.detach().float().cpu() - spec.low) / (spec.high - spec.low)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path: str | Path, images: Tensor, spec: ImageSpec, *, scale: int = 1, gap: int = 2) -> Path:
    """Write images (batch, C, H, W), C 1 (grey) or 3 (RGB), side by side as one 8-bit PNG.

    Pixels map linearly from [spec.low, spec.high] to 0..255; each pixel becomes a `scale` x `scale`
    block; `gap` white pixels separate the images.

    Example::

        write_png("out/vis.png", result.images, ImageSpec(1, 28, 28), scale=4)
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise VisionInputError(f"a PNG takes images (batch, 1 or 3, H, W), got shape {tuple(images.shape)}")
    x = to_uint8(images, spec)
    if scale > 1:
        x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    b, c, h, w = x.shape
    sheet = torch.full((c, h, b * w + (b - 1) * gap), 255, dtype=torch.uint8)
    for i in range(b):
        sheet[:, :, i * (w + gap): i * (w + gap) + w] = x[i]
    rows = sheet.permute(1, 2, 0).reshape(h, -1).numpy()
    raw = b"".join(b"\x00" + rows[r].tobytes() for r in range(h))
    header = struct.pack(">IIBBBBB", sheet.shape[2], h, 8, 0 if c == 1 else 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    return out

