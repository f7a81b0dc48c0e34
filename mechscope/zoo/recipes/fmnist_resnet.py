"""fmnist-resnet: a small torchvision-style residual network on Fashion-MNIST.

Same data as fmnist-cnn (`fmnist_cnn.fashion_mnist`, 28 x 28 grayscale in [0, 1]). The network
follows torchvision's ResNet layout and names, so the vision tools meet the structure they meet
in a downloaded ResNet (every layer a named submodule, every one a site of the generic adapter):

    conv1 3x3 -> bn1 -> relu                                     (w0, 28, 28)
    layer1: BasicBlock(w0 -> w0)                                 (w0, 28, 28)
    layer2: BasicBlock(w0 -> w1, stride 2, downsample 1x1+bn)    (w1, 14, 14)
    layer3: BasicBlock(w1 -> w2, stride 2, downsample 1x1+bn)    (w2, 7, 7)
    avgpool (global) -> flatten -> fc 10 (logits)

A BasicBlock is conv1 3x3 -> bn1 -> relu1 -> conv2 3x3 -> bn2, plus the shortcut (`downsample`
where the shape changes), then relu2 (the block's output). Unlike torchvision, the two ReLUs of a
block are separate modules, so each is its own site.

Adam with a linear warm-up and a cosine decay, batch 128, no augmentation. Variants: ""
(widths 16/32/64, 2400 steps: about 5 epochs, >= 90% test accuracy is the target), "quick"
(widths 4/8/16, 150 steps, for tests).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .fmnist_cnn import FashionRecipe


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut: (batch, c_in, H, W) -> (batch, c_out, H/s, W/s)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
                           if stride != 1 or c_in != c_out else None)
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class FashionResNet(nn.Module):
    """Images (batch, 1, 28, 28) in [0, 1] -> logits (batch, 10), through three residual stages."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), blocks: tuple[int, ...] = (1, 1, 1),
                 in_channels: int = 1, classes: int = 10):
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"one block count per stage: widths {widths}, blocks {blocks}")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        c = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(c, w, stride)] + [BasicBlock(w, w) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            c = w
        self.stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (batch, classes) of images (batch, in_channels, H, W)."""
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class FashionResNetRecipe(FashionRecipe):
    """A small ResNet trained on Fashion-MNIST; data, loss and evaluation are fmnist-cnn's."""

    name = "fmnist-resnet"
    summary = "small torchvision-style ResNet on Fashion-MNIST (Debian dataset-fashion-mnist), >= 90% test accuracy"
    _common = dict(batch=128, lr=2e-3, warmup=100, log_every=50, widths=[16, 32, 64], blocks=[1, 1, 1])
    variants = {
        # about 5 epochs; each checkpoint evaluates all 10 000 test images
        "": {**_common, "steps": 2400, "eval_every": 400, "checkpoints_log": 8, "checkpoints_linear": 6},
        # a narrow network for a fraction of an epoch: serves the tests
        "quick": {**_common, "widths": [4, 8, 16], "batch": 64, "steps": 150, "warmup": 10, "eval_every": 75,
                  "eval_n": 2000, "checkpoints_log": 4, "checkpoints_linear": 2},
    }

    def build(self, hp: dict[str, Any]) -> FashionResNet:
        """A freshly initialised FashionResNet with hp's stage widths and block counts."""
        return FashionResNet(tuple(hp["widths"]), tuple(hp["blocks"]))

    def optimizer(self, model: nn.Module, hp: dict[str, Any]) -> torch.optim.Optimizer:
        """Adam over every parameter with hp's lr."""
        return torch.optim.Adam(model.parameters(), lr=hp["lr"])

    def lr(self, step: int, hp: dict[str, Any]) -> float:
        """Linear warm-up over hp["warmup"] steps, then a cosine decay to zero at the last step."""
        warm, total = hp["warmup"], hp["steps"]
        if step < warm:
            return hp["lr"] * (step + 1) / warm
        return hp["lr"] * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


RECIPE = FashionResNetRecipe()
