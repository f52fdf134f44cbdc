"""ResNet18 / ResNet34 for 1x28x28 MNIST input, a blend in every basic block.

torchvision's layout (7x7/2 stem, 3x3/2 max pool, stages of 64-128-256-512 channels) with one
input channel. Each block computes

    out = act( blend( bn2(conv2(act(bn1(conv1(x))))),  shortcut(x) ) )

with shortcut = identity, or a 1x1 stride-2 conv + BN where the shape changes (3 of them).
At t = 0 those downsample convs are dead code: ResNet34 keeps 33 of its 36 convs.
"""

from __future__ import annotations

import torch
from torch import nn

from foldpass.homotopy import Blend


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: float, linear: bool, skips: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.Identity() if linear else nn.ReLU()
        self.skips = skips
        self.downsample = None
        if skips and (stride != 1 or cin != cout):
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.blend = Blend(t) if skips else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        if self.blend is not None:
            shortcut = x if self.downsample is None else self.downsample(x)
            out = self.blend(out, shortcut)
        return self.act(out)


class ResNet(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), width: int = 64, num_classes: int = 10, t: float = 0.5,
                 linear: bool = False, skips: bool = True, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act = nn.Identity() if linear else nn.ReLU()
        self.pool = nn.AvgPool2d(3, 2, 1) if linear else nn.MaxPool2d(3, 2, 1)
        stages, cin = [], width
        for i, n in enumerate(layers):
            cout = width * 2**i
            blocks = [BasicBlock(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1, t, linear, skips)
                      for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(**kw) -> ResNet:
    return ResNet((2, 2, 2, 2), **kw)


def resnet34(**kw) -> ResNet:
    return ResNet((3, 4, 6, 3), **kw)
