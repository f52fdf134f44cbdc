"""The small CNNs of the paper: a 3-layer CNN with one skip (Section 3, Figure 1) and a 6-layer CNN
with skips between all non-consecutive layers (Section 5.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from foldpass.homotopy import Blend, MultiBlend


def _act(linear: bool) -> nn.Module:
    return nn.Identity() if linear else nn.ReLU()


class CNN3(nn.Module):
    """conv1 (padded) -> conv2 (valid, shrinks) -> blend(conv2 out, nearest-resampled conv1 out) -> conv3 -> fc.

    The skip from layer 1 to layer 3 goes through nearest resampling (paper eq. 6) and the convs
    use zero padding (eq. 8): the network of Theorem 3.1 with L = 3.
    """

    def __init__(self, width: int = 16, num_classes: int = 10, t: float = 0.5, linear: bool = False,
                 skips: bool = True, in_channels: int = 1, size: int = 28):
        super().__init__()
        self.skips = skips
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=2)  # size -> (size - 3) // 2 + 1
        self.bn2 = nn.BatchNorm2d(width)
        self.blend = Blend(t)
        self.conv3 = nn.Conv2d(width, width, 3, padding=1, stride=2)
        self.act = _act(linear)
        s2 = (size - 3) // 2 + 1
        self.s2 = s2
        s3 = (s2 + 2 - 3) // 2 + 1
        self.fc = nn.Linear(width * s3 * s3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.act(self.bn1(self.conv1(x)))
        f2 = self.act(self.bn2(self.conv2(f1)))
        h = self.blend(f2, F.interpolate(f1, size=(self.s2, self.s2), mode="nearest")) if self.skips else f2
        f3 = self.act(self.conv3(h))
        return self.fc(torch.flatten(f3, 1))


class CNN6(nn.Module):
    """Six 3x3 convs, the input of layer i blending layer i-1 with every earlier layer k < i-1:

        input_i = (1 - t) * f_{i-1} + sum_{k < i-1} (t / K) * R(f_k)      (paper eq. 10)

    R is nearest resampling to f_{i-1}'s size (layers 3 and 5 halve the resolution).
    """

    def __init__(self, width: int = 16, num_classes: int = 10, t: float = 0.5, linear: bool = False,
                 skips: bool = True, in_channels: int = 1):
        super().__init__()
        self.skips = skips
        strides = (1, 1, 2, 1, 2, 1)
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        for i, s in enumerate(strides):
            self.convs.append(nn.Conv2d(in_channels if i == 0 else width, width, 3, stride=s, padding=1))
            self.bns.append(nn.BatchNorm2d(width))
        # layer i (0-based, i >= 2) reads f_0 .. f_{i-2} as shortcuts
        self.blends = nn.ModuleList(MultiBlend(i - 1, t) for i in range(2, len(strides)))
        self.act = _act(linear)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        h = x
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            if i >= 2 and self.skips:
                size = outs[-1].shape[-2:]
                shortcuts = [F.interpolate(f, size=size, mode="nearest") for f in outs[:-1]]
                h = self.blends[i - 2](outs[-1], *shortcuts)
            h = self.act(bn(conv(h)))
            outs.append(h)
        return self.fc(torch.flatten(self.pool(h), 1))
