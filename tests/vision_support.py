"""Hand-built vision modules shared by the vision tests."""

from __future__ import annotations

from torch import nn


class BasicBlock(nn.Module):
    """A ResNet basic block as torchvision writes it: batch norm, one in-place ReLU module called twice,
    an identity shortcut."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)
