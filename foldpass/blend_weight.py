"""The blend weight t, wherever a model keeps it: `set_t` / `get_t`.

The compiler core needs no blend modules of its own: `optimize(..., set_t=0)` sets every float
attribute or 0-dim buffer named `t` (foldpass.homotopy's Blend / MultiBlend keep theirs as such a
buffer), then the passes see `(1 - t) * b + t * s` with t a constant.
"""

from __future__ import annotations

import torch
from torch import nn


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


def get_t(model: nn.Module) -> float | None:
    """The blend weight of the model's first blend (None if it has none)."""
    for module in model.modules():
        t = getattr(module, "t", None)
        if isinstance(t, torch.Tensor) and t.dim() == 0:
            return float(t)
        if isinstance(t, float):
            return t
    return None
