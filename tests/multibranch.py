"""Train-time multi-branch networks in the style of RepVGG and MobileOne, with the hand-written
`switch_to_deploy()` each project ships: the reference the automatic folding must equal."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _fuse(conv: nn.Conv2d | None, bn: nn.BatchNorm2d, channels: int, groups: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel k x k, bias) of BN(conv(x)), or of BN(x) for conv=None; small kernels centred."""
    if conv is None:
        w = torch.zeros(channels, channels // groups, k, k)
        for c in range(channels):
            w[c, c % (channels // groups), k // 2, k // 2] = 1.0
    else:
        pad = (k - conv.kernel_size[0]) // 2
        w = F.pad(conv.weight.detach(), [pad] * 4)
    std = (bn.running_var + bn.eps).sqrt()
    return w * (bn.weight / std).reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * bn.weight / std


class RepBlock(nn.Module):
    """relu(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x)); depthwise (MobileOne) with groups = channels."""

    def __init__(self, channels: int, groups: int = 1, k_branches: int = 1):
        super().__init__()
        conv = lambda k: nn.Conv2d(channels, channels, k, padding=k // 2, groups=groups, bias=False)  # noqa: E731 - a one-line helper, local to this function
        self.kxk = nn.ModuleList(nn.Sequential(conv(3), nn.BatchNorm2d(channels)) for _ in range(k_branches))
        self.scale = nn.Sequential(conv(1), nn.BatchNorm2d(channels))
        self.identity = nn.BatchNorm2d(channels)
        self.groups, self.channels = groups, channels
        self.deploy: nn.Conv2d | None = None

    def forward(self, x):
        if self.deploy is not None:
            return F.relu(self.deploy(x))
        out = self.identity(x) + self.scale(x)
        for branch in self.kxk:
            out = out + branch(x)
        return F.relu(out)

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        parts = [_fuse(b[0], b[1], self.channels, self.groups, 3) for b in self.kxk]
        parts += [_fuse(self.scale[0], self.scale[1], self.channels, self.groups, 3),
                  _fuse(None, self.identity, self.channels, self.groups, 3)]
        self.deploy = nn.Conv2d(self.channels, self.channels, 3, padding=1, groups=self.groups)
        self.deploy.weight.copy_(sum(w for w, _ in parts))
        self.deploy.bias.copy_(sum(b for _, b in parts))


class RepNet(nn.Module):
    """stem conv -> RepVGG blocks -> MobileOne (depthwise) blocks -> pool -> fc."""

    def __init__(self, width: int = 16, blocks: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, stride=2, padding=1), nn.ReLU())
        self.blocks = nn.Sequential(*[RepBlock(width) for _ in range(blocks)],
                                    *[RepBlock(width, groups=width, k_branches=3) for _ in range(blocks)])
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))

    def switch_to_deploy(self) -> RepNet:
        for m in self.modules():
            if isinstance(m, RepBlock):
                m.switch_to_deploy()
        return self
