"""Vision networks by zoo name or from a local file, with the images they take and their dataset.

Two sources:

- the zoo's image networks, `fmnist-cnn` and `fmnist-resnet` (and their variants, `-quick`, and
  seeds, `-seedN`): the run in the cache when one was trained here, else the copy shipped in the
  package, else trained now (`mechscope.zoo.network`); their ImageSpec is Fashion-MNIST's
  (1, 28, 28) in [0, 1] and their dataset the 10 000 test images;
- a network of your own: a Python file defining an `nn.Module` class that takes no constructor
  arguments, plus a safetensors state dict (`torchvision`-style models fit as they are). The file
  is imported by path (its code runs, like any script you run), the class constructed with no
  arguments and the weights loaded strictly; you say the image format (`ImageSpec`) and may give
  images of your dataset (a safetensors file with a float tensor "images" (n, C, H, W) in the
  pixel range and optionally int "labels" (n,)).

Shapes: dataset images (n, channels, height, width) float in the spec's pixel range; labels (n,).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from ..core.errors import LoadError
from .layers import ImageSpec, VisionInputError


@dataclass(frozen=True)
class ImageSet:
    """Images of a network's dataset: images (n, C, H, W) float in the spec's range, labels (n,) or None.

    Example::

        data = ImageSet("fashion-mnist test", torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3]),
                        ("T-shirt/top", "Trouser", "Pullover", "Dress"))
        data.caption(2)   # 'Pullover'
    """

    name: str
    images: Tensor
    labels: Tensor | None = None
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise VisionInputError(f"dataset images must be (n, channels, height, width), got shape "
                                   f"{tuple(self.images.shape)}")
        if self.labels is not None and self.labels.shape != (self.images.shape[0],):
            raise VisionInputError(f"dataset labels must be (n,) = ({self.images.shape[0]},), got shape "
                                   f"{tuple(self.labels.shape)}")

    def caption(self, i: int) -> str:
        """The label of image `i` as text (its class name when known), or "" without labels."""
        if self.labels is None:
            return ""
        y = int(self.labels[i])
        return self.classes[y] if self.classes is not None and 0 <= y < len(self.classes) else str(y)


@dataclass(frozen=True)
class VisionNetwork:
    """A network ready for the vision tools: the module (eval mode), its images' format, where it
    came from (`source`: "zoo:NAME" or the file and class) and a loader of its dataset's images.

    Example::

        net = load_network("fmnist-cnn")
        net.spec                 # ImageSpec(channels=1, height=28, width=28, low=0.0, high=1.0)
        net.dataset().images     # (10000, 1, 28, 28) Fashion-MNIST test images in [0, 1]
    """

    name: str
    module: nn.Module
    spec: ImageSpec
    source: str
    _dataset: Callable[[], ImageSet] | None = None

    @property
    def has_dataset(self) -> bool:
        """Whether dataset images are known for this network."""
        return self._dataset is not None

    def dataset(self) -> ImageSet:
        """The images of the network's dataset (loaded on each call; keep the result)."""
        if self._dataset is None:
            raise VisionInputError(f"no dataset images are known for {self.name}; give a safetensors file of "
                                   "images (n, C, H, W) under the key 'images' (--images)")
        return self._dataset()


FASHION_SPEC = ImageSpec(channels=1, height=28, width=28, low=0.0, high=1.0)
ZOO_RECIPES = ("fmnist-cnn", "fmnist-resnet")
"""The zoo recipes whose networks are image classifiers (their variants and seeds too)."""


def _fashion_test() -> ImageSet:
    from ..zoo.recipes.fmnist_cnn import CLASSES, as_input, fashion_mnist

    x, y = fashion_mnist("test")
    return ImageSet("Fashion-MNIST test", as_input(x), y, CLASSES)


def vision_zoo_names() -> list[str]:
    """The zoo names of image networks (seed 0): fmnist-cnn, fmnist-cnn-quick, fmnist-resnet, ...

    Example::

        vision_zoo_names()   # ['fmnist-cnn', 'fmnist-cnn-quick', 'fmnist-resnet', 'fmnist-resnet-quick']
    """
    from ..zoo import RECIPES

    return [r + (f"-{v}" if v else "") for r in ZOO_RECIPES for v in RECIPES[r].variants]


def zoo_network(name: str, *, device: torch.device | str | None = None, progress: bool = True) -> VisionNetwork:
    """A zoo image network by name ("fmnist-cnn", "fmnist-resnet-quick", "zoo:fmnist-cnn-seed1"):
    the cache's trained run, else the copy shipped in the package, else trained now (with progress).

    Example::

        net = zoo_network("fmnist-resnet")
        net.module(torch.rand(2, 1, 28, 28)).shape   # (2, 10) logits
    """
    from .. import zoo

    bare = name.removeprefix("zoo:")
    try:
        recipe = zoo.spec(bare).recipe.name
    except (LoadError, ValueError):
        recipe = None
    if recipe not in ZOO_RECIPES:
        raise VisionInputError(f"{name!r} is not a zoo image network; they are: {', '.join(vision_zoo_names())} "
                               "(a -seedN suffix picks another seed), or load your own with --module and --weights")
    if zoo.finished_run(bare) is None:
        from ..core.progress import note

        note(f"{bare} is neither trained here nor shipped in the package: training it now (fmnist-cnn and "
             "fmnist-resnet: 2400-2800 steps of 0.05-0.1 s on a free core, half an hour on a busy machine; the "
             "-quick variants 150 steps)")
    run = zoo.network(bare, progress=progress)
    module = zoo.build_module(run)
    if device is not None:
        module = module.to(device)
    return VisionNetwork(f"zoo:{bare}", module.eval(), FASHION_SPEC, f"zoo:{bare}", _fashion_test)


def parse_image_shape(text: str) -> tuple[int, int, int]:
    """"CxHxW" (the command line's form, e.g. "3x32x32") -> (channels, height, width).

    Example::

        parse_image_shape("1x28x28")   # (1, 28, 28)
    """
    parts = text.lower().replace("×", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise VisionInputError(f"the image format must be CHANNELSxHEIGHTxWIDTH with positive whole numbers, "
                               f"e.g. 3x32x32, got {text!r}")
    return shape  # type: ignore[return-value]


def parse_range(text: str) -> tuple[float, float]:
    """"LOW,HIGH" (e.g. "0,1" or "-1,1") -> (low, high), the pixel range of the network's images.

    Example::

        parse_range("-1,1")   # (-1.0, 1.0)
    """
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise VisionInputError(f"the pixel range must be LOW,HIGH, e.g. 0,1 or -1,1, got {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise VisionInputError(f"the pixel range must be finite numbers LOW,HIGH, e.g. 0,1 or -1,1, got {text!r}")
    if not high > low:
        raise VisionInputError(f"the pixel range must have HIGH > LOW, got {text!r}")
    return low, high


def _import_class(target: str) -> tuple[type, Path]:
    path_text, colon, cls_name = target.rpartition(":")
    if not colon or not path_text or not cls_name:
        raise VisionInputError(f"give the module as FILE.py:ClassName, got {target!r}")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise VisionInputError(f"{path} does not exist (the Python file defining {cls_name})")
    key = "mechscope_user_net_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise VisionInputError(f"{path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # dataclasses and pickling-free type lookups need the module registered
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(key, None)
        raise VisionInputError(f"importing {path} failed: {type(e).__name__}: {e}") from e
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        classes = sorted(n for n, v in vars(module).items()
                         if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == key)
        what = "is not defined" if cls is None else "is not an nn.Module class"
        raise VisionInputError(f"{cls_name!r} {what} in {path}; its nn.Module classes are: "
                               f"{', '.join(classes) or '(none)'}")
    return cls, path


def _read_tensors(path: Path, what: str, hint: str = "") -> tuple[Path, dict[str, Tensor]]:
    """The tensors of the safetensors file at `path` (`what` it should be, for the errors)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise VisionInputError(f"{path} does not exist ({what})")
    try:
        return path, load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise VisionInputError(f"{path} is not a safetensors file ({e}){hint}") from e


def _load_weights(module: nn.Module, weights: Path, label: str) -> None:
    weights, state = _read_tensors(weights, f"the safetensors state dict of {label}",
                                   "; save the state dict with safetensors.torch.save_file(model.state_dict(), PATH)")
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
        parts = ([f"missing from the file: {few(missing)}"] if missing else []) + \
            ([f"not in {label}: {few(unexpected)}"] if unexpected else []) + \
            (["other shape: " + ", ".join(f"{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in "
                                           f"the network" for k in wrong[:8])] if wrong else [])
        raise VisionInputError(f"the weights in {weights} do not fit {label}: " + "; ".join(parts))
    module.load_state_dict(state)


def image_set_file(path: Path, spec: ImageSpec) -> ImageSet:
    """Dataset images from a safetensors file: "images" (n, C, H, W) float in the spec's range, and
    optionally "labels" (n,) integers; checked against `spec`.

    Example::

        save_file({"images": torch.rand(100, 3, 32, 32)}, "my_images.safetensors")
        image_set_file(Path("my_images.safetensors"), ImageSpec(3, 32, 32)).images.shape   # (100, 3, 32, 32)
    """
    path, tensors = _read_tensors(path, "a safetensors file of dataset images")
    if "images" not in tensors:
        raise VisionInputError(f"{path} holds no tensor 'images' (it holds: {', '.join(sorted(tensors)) or 'none'})")
    images = tensors["images"].float()
    if images.dim() != 4 or tuple(images.shape[1:]) != spec.shape:
        raise VisionInputError(f"the images in {path} have shape {tuple(images.shape)}; the network takes "
                               f"(n, {', '.join(map(str, spec.shape))})")
    lo, hi = float(images.min()), float(images.max())
    if lo < spec.low - 1e-3 or hi > spec.high + 1e-3:
        raise VisionInputError(f"the images in {path} span [{lo:.3g}, {hi:.3g}], outside the pixel range "
                               f"[{spec.low:g}, {spec.high:g}]; scale them or give the range (--range)")
    labels = tensors.get("labels")
    return ImageSet(path.name, images, None if labels is None else labels.long())


def file_network(module: str, weights: Path, spec: ImageSpec, *, images: Path | None = None,
                 device: torch.device | str | None = None) -> VisionNetwork:
    """A network of your own: `module` is "FILE.py:ClassName" (constructed with no arguments),
    `weights` its safetensors state dict (loaded strictly), `spec` its images' format; `images`
    optionally a safetensors file of dataset images (see `image_set_file`).

    Example::

        net = file_network("resnet.py:ResNet18", Path("resnet18.safetensors"), ImageSpec(3, 32, 32))
        net.module.training   # False
    """
    cls, path = _import_class(module)
    label = f"{cls.__name__} of {path.name}"
    try:
        net = cls()
    except TypeError as e:
        raise VisionInputError(f"{label} cannot be constructed with no arguments ({e}); give a class (a small "
                               "subclass will do) whose __init__ needs none") from e
    _load_weights(net, weights, label)
    if device is not None:
        net = net.to(device)
    dataset = None
    if images is not None:
        data = image_set_file(images, spec)  # checked now, so a bad file fails before any work
        dataset = lambda: data  # noqa: E731
    return VisionNetwork(cls.__name__, net.eval(), spec, f"{path}:{cls.__name__}", dataset)


def load_network(model: str | None = None, *, module: str | None = None, weights: Path | None = None,
                 image: str | ImageSpec | None = None, pixel_range: str | tuple[float, float] | None = None,
                 images: Path | None = None, device: torch.device | str | None = None,
                 progress: bool = True) -> VisionNetwork:
    """The network the `mechscope vis` command analyses: a zoo name, or `module` + `weights` +
    `image` ("CxHxW") for a network of your own (`pixel_range` "LOW,HIGH" defaults to 0,1).

    Example::

        load_network("fmnist-resnet-quick")
        load_network(module="net.py:Net", weights=Path("net.safetensors"), image="3x32x32", pixel_range="-1,1")
    """
    from ..models.load import check_device

    device = check_device(device)  # an unknown or absent device stops here, before anything is read
    if module is None:
        if weights is not None or image is not None or images is not None:
            raise VisionInputError("--weights, --image and --images describe a network of your own: give "
                                   "--module FILE.py:ClassName with them")
        if pixel_range is not None:
            raise VisionInputError(f"--range is for a network of your own; {model} takes images in [0, 1]")
        if not model:
            raise VisionInputError("name a zoo image network (" + ", ".join(vision_zoo_names()) + ") or give "
                                   "--module FILE.py:ClassName --weights FILE.safetensors --image CxHxW")
        return zoo_network(model, device=device, progress=progress)
    if weights is None or image is None:
        raise VisionInputError("a network of your own needs --module FILE.py:ClassName, --weights "
                               "FILE.safetensors and --image CxHxW (e.g. 3x32x32)")
    if isinstance(image, ImageSpec):
        spec = image
    else:
        low, high = parse_range(pixel_range) if isinstance(pixel_range, str) else (pixel_range or (0.0, 1.0))
        spec = ImageSpec(*parse_image_shape(image), low=low, high=high)
    return file_network(module, Path(weights), spec, images=images, device=device)


def describe(net: VisionNetwork) -> dict[str, Any]:
    """A JSON-able summary of the network: name, source, image format.

    Example::

        describe(load_network("fmnist-cnn"))["image"]   # [1, 28, 28]
    """
    return {"name": net.name, "source": net.source, "image": list(net.spec.shape),
            "range": [net.spec.low, net.spec.high]}


__all__ = ["FASHION_SPEC", "ImageSet", "VisionNetwork", "ZOO_RECIPES", "describe", "file_network",
           "image_set_file", "load_network", "parse_image_shape", "parse_range", "vision_zoo_names",
           "zoo_network"]
