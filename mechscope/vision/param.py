"""Image parameterisations for feature visualisation: what the optimiser changes, and how it becomes an image.

Each parameterisation holds the tensors the optimiser updates (`params`) and maps them to a batch of
images (batch, C, H, W) in the `ImageSpec`'s pixel range, squashed with a sigmoid so that every image
it can produce is a valid input:

- `PixelParam`: one free value per pixel (the plain baseline).
- `FourierParam`: the image's 2-D real spectrum (`torch.fft.rfft2` layout, (batch, C, H, W // 2 + 1)
  complex values), each frequency scaled by 1 / frequency (Lucid's preconditioning: every frequency
  learns at a speed proportional to the power natural images have there, so high frequencies do
  not take over), with colour decorrelation for three channels.
- `MacoParam`: magnitude-constrained optimisation (Fel et al. 2023, "Unlocking feature visualization
  for deeper networks with MAgnitude Constrained Optimization"): only the phase of the spectrum is
  optimised; its magnitude is fixed to the average magnitude spectrum of the network's own training
  images (`mean_spectrum`), so the image keeps the power spectrum of natural inputs. The image is
  not standardised: it goes, in pixel units, through a soft clip into the pixel range that is close
  to the identity around the range's middle.

Colour decorrelation (`color_correlation`): the optimiser works in a space where the three colour
channels are uncorrelated; a 3 x 3 matrix, the square root of the colour covariance, maps it to RGB.
It is estimated from the network's own training images when they are given; without them it is the
identity (no decorrelation), because a fixed matrix measured on another dataset would be wrong for
a network trained on other images. Grayscale images (one channel) need none.

Shapes: images (batch, C, H, W); spectra (batch, C, H, W // 2 + 1); colour matrices (C, C).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .layers import ImageSpec, VisionInputError


def _squash(x: Tensor, spec: ImageSpec) -> Tensor:
    """A sigmoid onto the spec's pixel range [low, high]."""
    return spec.low + (spec.high - spec.low) * torch.sigmoid(x)


def frequencies(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """The radial frequency (cycles per pixel) of each entry of an rfft2 spectrum, (height, width // 2 + 1).

    Example::

        frequencies(4, 4)[0, 0]   # tensor(0.) : the mean (DC) term
    """
    fy = torch.fft.fftfreq(height, device=device)[:, None]
    fx = torch.fft.rfftfreq(width, device=device)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def color_correlation(images: Tensor) -> Tensor:
    """The square root of the colour covariance of `images` (n, 3, H, W), scaled to unit largest column norm.

    Returns a (3, 3) matrix M such that M @ M.T is proportional to the covariance of the pixels'
    colour vectors; `FourierParam` multiplies its decorrelated colour vectors by M. For images with
    one channel the answer is [[1.]].

    Example::

        m = color_correlation(torch.rand(16, 3, 32, 32))   # (3, 3)
    """
    if images.dim() != 4:
        raise VisionInputError(f"images must be (n, channels, height, width), got shape {tuple(images.shape)}")
    c = images.shape[1]
    pixels = images.detach().double().permute(0, 2, 3, 1).reshape(-1, c)
    pixels = pixels - pixels.mean(0)
    cov = pixels.T @ pixels / max(1, pixels.shape[0] - 1)
    vals, vecs = torch.linalg.eigh(cov)
    root = vecs * vals.clamp_min(0).sqrt()  # root @ root.T == cov
    norm = root.norm(dim=0).max()
    if not norm > 0:
        raise VisionInputError("the images have no colour variation to estimate a colour correlation from")
    return (root / norm).float()


def mean_spectrum(images: Tensor, height: int | None = None, width: int | None = None) -> Tensor:
    """The average magnitude of the 2-D spectrum of `images` (n, C, H, W): (C, H, W // 2 + 1).

    Computed with `torch.fft.rfft2(..., norm="ortho")` on each image and averaged over the images
    (the mean (DC) term included: it sets how far each colour channel's mean may move). This is the
    fixed magnitude of `MacoParam`.
    Images of another size are resized (bilinear) to (height, width) first.

    Example::

        from mechscope.zoo.recipes.fmnist_cnn import as_input, fashion_mnist
        magnitude = mean_spectrum(as_input(fashion_mnist("train")[0][:2000]))   # (1, 28, 15)
    """
    if images.dim() != 4:
        raise VisionInputError(f"images must be (n, channels, height, width), got shape {tuple(images.shape)}")
    x = images.detach().float()
    if height is not None and width is not None and tuple(x.shape[-2:]) != (height, width):
        x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return torch.fft.rfft2(x, norm="ortho").abs().mean(0)


class ImageParam:
    """What the optimiser changes (`params`) and the images (batch, C, H, W) it stands for (`__call__`).

    Example::

        p = FourierParam(ImageSpec(1, 28, 28))
        opt = torch.optim.Adam(p.params, lr=0.05)
        images = p()          # (1, 1, 28, 28), differentiable in p.params
    """

    name = "param"
    spec: ImageSpec
    params: list[Tensor]

    def __call__(self) -> Tensor:
        """The current images (batch, C, H, W) in the spec's pixel range (differentiable in `params`)."""
        raise NotImplementedError

    def settings(self) -> dict:
        """The settings that define this parameterisation (for a result's JSON)."""
        return {"param": self.name}


class PixelParam(ImageParam):
    """One free value per pixel, squashed into the pixel range: images (batch, C, H, W).

    Example::

        p = PixelParam(ImageSpec(1, 28, 28), batch=2, generator=torch.Generator().manual_seed(0))
        p().shape   # torch.Size([2, 1, 28, 28])
    """

    name = "pixel"

    def __init__(self, spec: ImageSpec, batch: int = 1, *, generator: torch.Generator | None = None,
                 sd: float = 0.01, device: torch.device | str | None = None):
        self.spec = spec
        self.sd = sd
        self.logits = (torch.randn((batch, *spec.shape), generator=generator) * sd).to(device).requires_grad_(True)
        self.params = [self.logits]

    def __call__(self) -> Tensor:
        return _squash(self.logits, self.spec)

    def settings(self) -> dict:
        """Its name and parameters (for a result's JSON)."""
        return {"param": self.name, "sd": self.sd}


class FourierParam(ImageParam):
    """A spectrum scaled by 1 / frequency, decorrelated colour and a sigmoid (Lucid's recipe).

    The parameters are the real and imaginary parts of an rfft2 spectrum (batch, C, H, W // 2 + 1, 2),
    drawn with standard deviation `sd`. Each frequency f is multiplied by 1 / max(f, 1 / max(H, W))
    to the power `decay_power`; the inverse transform (`norm="ortho"`) gives the decorrelated image,
    whose colour vectors are multiplied by `color` (C, C) (identity when None) before the sigmoid.

    Example::

        p = FourierParam(ImageSpec(3, 32, 32), batch=1, generator=torch.Generator().manual_seed(0))
        p().shape   # torch.Size([1, 3, 32, 32])
    """

    name = "fourier"

    def __init__(self, spec: ImageSpec, batch: int = 1, *, generator: torch.Generator | None = None,
                 sd: float = 0.01, decay_power: float = 1.0, color: Tensor | None = None,
                 device: torch.device | str | None = None):
        self.spec = spec
        self.sd, self.decay_power = sd, decay_power
        h, w = spec.height, spec.width
        freqs = frequencies(h, w)
        self.scale = (1.0 / freqs.clamp_min(1.0 / max(h, w)) ** decay_power).to(device)
        # the inverse transform is orthonormal; dividing by 4 keeps the first images near mid-grey
        # after the largest (DC) scale of max(H, W), as in Lucid
        self.scale = self.scale / 4.0
        self.color = _check_color(color, spec)
        if self.color is not None:
            self.color = self.color.to(device)
        shape = (batch, spec.channels, *freqs.shape, 2)
        self.spectrum = (torch.randn(shape, generator=generator) * sd).to(device).requires_grad_(True)
        self.params = [self.spectrum]

    def __call__(self) -> Tensor:
        spec = torch.view_as_complex(self.spectrum) * self.scale
        x = torch.fft.irfft2(spec, s=(self.spec.height, self.spec.width), norm="ortho")
        if self.color is not None:
            x = torch.einsum("bchw,dc->bdhw", x, self.color)
        return _squash(x, self.spec)

    def settings(self) -> dict:
        """Its name and parameters (for a result's JSON)."""
        return {"param": self.name, "sd": self.sd, "decay_power": self.decay_power,
                "decorrelated_color": self.color is not None}


class MacoParam(ImageParam):
    """Magnitude-constrained optimisation: the phase (batch, C, H, W // 2 + 1) of a spectrum of fixed magnitude.

    `magnitude` (C, H, W // 2 + 1) is the average magnitude spectrum of the network's training images
    (`mean_spectrum`, in pixel units, the mean term included). The image is the inverse transform of
    magnitude x exp(i phase), so its power spectrum is that of the training images, in pixel units;
    with `color` (C, C) the spectrum is that of the decorrelated colours and the colour vectors are
    multiplied by `color`. A soft clip puts it into the pixel range: low + (high - low) *
    sigmoid(4 (x - mid) / (high - low)), which is close to the identity around the middle of the
    range. The phase starts uniform in [-pi, pi). (The columns of frequency 0 and W / 2 along x hold a
    frequency and its mirror image, which the inverse transform of a real image merges; every other
    frequency keeps its magnitude exactly.)

    Example::

        magnitude = mean_spectrum(torch.rand(64, 1, 28, 28))
        p = MacoParam(ImageSpec(1, 28, 28), magnitude, generator=torch.Generator().manual_seed(0))
        p().shape   # torch.Size([1, 1, 28, 28])
    """

    name = "maco"

    def __init__(self, spec: ImageSpec, magnitude: Tensor, batch: int = 1, *,
                 generator: torch.Generator | None = None, color: Tensor | None = None,
                 device: torch.device | str | None = None):
        want = (spec.channels, spec.height, spec.width // 2 + 1)
        if tuple(magnitude.shape) != want:
            raise VisionInputError(f"the MACO magnitude spectrum must have shape {want} (channels, height, "
                                   f"width // 2 + 1) for images {spec.shape}, got {tuple(magnitude.shape)}; "
                                   "make it with mean_spectrum(training_images)")
        self.spec = spec
        self.magnitude = magnitude.detach().float().to(device)
        self.color = _check_color(color, spec)
        if self.color is not None:
            self.color = self.color.to(device)
        phase = (torch.rand((batch, *want), generator=generator) * 2 - 1) * math.pi
        self.phase = phase.to(device).requires_grad_(True)
        self.params = [self.phase]

    def __call__(self) -> Tensor:
        spec = torch.polar(self.magnitude.expand_as(self.phase), self.phase)
        x = torch.fft.irfft2(spec, s=(self.spec.height, self.spec.width), norm="ortho")
        if self.color is not None:
            x = torch.einsum("bchw,dc->bdhw", x, self.color)
        width = self.spec.high - self.spec.low
        return _squash(4.0 * (x - (self.spec.low + self.spec.high) / 2) / width, self.spec)

    def settings(self) -> dict:
        """Its name and parameters (for a result's JSON)."""
        return {"param": self.name, "decorrelated_color": self.color is not None}


def decorrelate(images: Tensor, color: Tensor) -> Tensor:
    """Images (n, C, H, W) in decorrelated colours: each colour vector multiplied by the pseudo-inverse of `color`.

    The inverse of what `FourierParam` and `MacoParam` do with `color` (C, C).

    Example::

        m = color_correlation(images); decorrelate(images, m)   # (n, 3, H, W)
    """
    return torch.einsum("dc,nchw->ndhw", torch.linalg.pinv(color.double()).float(), images.float())


def _check_color(color: Tensor | None, spec: ImageSpec) -> Tensor | None:
    if color is None:
        return None
    if tuple(color.shape) != (spec.channels, spec.channels):
        raise VisionInputError(f"the colour matrix must be ({spec.channels}, {spec.channels}) for images with "
                               f"{spec.channels} channels, got {tuple(color.shape)}; make it with "
                               "color_correlation(training_images)")
    return color.detach().float()


PARAMS = ("pixel", "fourier", "maco")
