"""The skip-connection homotopy (paper, Section 4): blends whose weight t training drives to 0.

Convention, used everywhere in foldpass:

    layer input = (1 - t) * branch + t * shortcut

t = 0 is a plain feed-forward network (the skip is gone), t = 0.5 the usual residual sum up to
a factor 2, and t = 1 cuts the branch out. The paper's text and its Figure 2 discussion use this
reading; its eq. 23 prints the two roles swapped (t * x^(i-1) + (1 - t) * x^(j)).

t is a registered buffer, so it is saved with the weights, and at t == 0 `foldpass optimize`
removes the shortcut and everything only it reads.
"""

from __future__ import annotations

import torch
from torch import nn


class Blend(nn.Module):
    """(1 - t) * branch + t * shortcut, t a buffer."""

    def __init__(self, t: float = 0.5):
        super().__init__()
        self.register_buffer("t", torch.tensor(float(t)))

    def forward(self, branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return (1 - self.t) * branch + self.t * shortcut

    def extra_repr(self) -> str:
        return f"t={self.t.item():g}"


class MultiBlend(nn.Module):
    """(1 - t) * branch + sum_k (t / K) * shortcut_k: the paper's eq. 10 weights, summing to 1."""

    def __init__(self, num_shortcuts: int, t: float = 0.5):
        super().__init__()
        self.num_shortcuts = num_shortcuts
        self.register_buffer("t", torch.tensor(float(t)))

    def forward(self, branch: torch.Tensor, *shortcuts: torch.Tensor) -> torch.Tensor:
        out = (1 - self.t) * branch
        for s in shortcuts:
            out = out + (self.t / self.num_shortcuts) * s
        return out

    def extra_repr(self) -> str:
        return f"shortcuts={self.num_shortcuts}, t={self.t.item():g}"


def set_t(model: nn.Module, t: float) -> int:
    """Sets every blend weight foldpass can identify: Blend / MultiBlend modules, and any
    float attribute or 0-dim buffer named `t`. Returns how many it set."""
    count = 0
    for module in model.modules():
        buffers = dict(module.named_buffers(recurse=False))
        if "t" in buffers and buffers["t"].dim() == 0:
            buffers["t"].fill_(float(t))
            count += 1
        elif isinstance(getattr(module, "t", None), float):
            module.t = float(t)
            count += 1
    return count
