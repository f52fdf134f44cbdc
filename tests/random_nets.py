"""Random CNNs for the property tests: a hypothesis strategy draws a spec, `RandomCNN` builds it.

A spec is a list of layers (conv with random kernel / stride / padding / channels, batch norm,
nearest 2x upsampling, 2x2 average pooling) over a small input. After each layer the output may be
blended with earlier activations of the same spatial size, through a 1x1 projection (+ BN) when
the channel counts differ:

    out = w_0 * branch + sum_k w_k * proj_k(earlier_k),   sum_k w_k = 1 - w_0

`linear=True` leaves out the ReLUs; `t` sets the homotopy weights (w_0 = 1 - t, w_k = t * a_k).
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn

from models import randomize_batchnorm


@st.composite
def specs(draw, max_layers: int = 5):
    size = draw(st.sampled_from([6, 8]))
    channels = draw(st.integers(1, 3))
    shapes = [(channels, size)]  # (channels, spatial size) of every activation
    layers = []
    for _ in range(draw(st.integers(1, max_layers))):
        c, s = shapes[-1]
        kinds = ["conv", "conv", "bn"] + (["up"] if s <= 8 else []) + (["pool"] if s >= 4 and s % 2 == 0 else [])
        kind = draw(st.sampled_from(kinds))
        layer = {"kind": kind}
        if kind == "conv":
            k = draw(st.sampled_from([1, 3, 5] if s >= 5 else [1, 3]))
            pad = draw(st.sampled_from([0, k // 2]))
            stride = draw(st.sampled_from([1, 2]))
            if s + 2 * pad - k < 0:
                pad = k // 2
            out_c = draw(st.integers(1, 4))
            layer.update(k=k, pad=pad, stride=stride, out=out_c)
            s, c = (s + 2 * pad - k) // stride + 1, out_c
        elif kind == "up":
            s *= 2
        elif kind == "pool":
            s //= 2
        same = [j for j, (_, sj) in enumerate(shapes) if sj == s]
        layer["skips"] = draw(st.lists(st.sampled_from(same), unique=True, max_size=2)) if same else []
        layer["in"] = shapes[-1][0]
        shapes.append((c, s))
        layers.append(layer)
    arithmetic = any(layer["kind"] in ("conv", "bn") or layer["skips"] for layer in layers)
    head = draw(st.booleans()) or not arithmetic  # a net of resampling alone has no region to fold
    return {"channels": shapes[0][0], "size": size, "layers": layers, "shapes": shapes, "head": head,
            "seed": draw(st.integers(0, 2**16))}


class RandomCNN(nn.Module):
    def __init__(self, spec: dict, linear: bool, t: float | None = None):
        super().__init__()
        gen = torch.Generator().manual_seed(spec["seed"])
        self.spec, self.linear = spec, linear
        self.ops, self.projs = nn.ModuleList(), nn.ModuleList()
        weights = []
        for i, layer in enumerate(spec["layers"]):
            self.ops.append(_op(layer))
            c_out = spec["shapes"][i + 1][0]
            self.projs.append(nn.ModuleList(
                nn.Identity() if spec["shapes"][j][0] == c_out else
                nn.Sequential(nn.Conv2d(spec["shapes"][j][0], c_out, 1), nn.BatchNorm2d(c_out))
                for j in layer["skips"]))
            a = torch.rand(len(layer["skips"]) + 1, generator=gen) + 0.1
            a = a / a.sum()  # random blend weights summing to 1
            if t is not None:  # the homotopy: (1 - t) on the branch, t split among the shortcuts
                rest = a[1:] / a[1:].sum() if len(a) > 1 else a[1:]
                a = torch.cat([torch.tensor([1.0 - t]), t * rest])
            weights.append(a)
        for i, w in enumerate(weights):
            self.register_buffer(f"w{i}", w)
        c, s = spec["shapes"][-1]
        self.head = nn.Linear(c * s * s, 5) if spec["head"] else None
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        randomize_batchnorm(self, seed=spec["seed"])

    def forward(self, x):
        acts = [x]
        for i, (op, projs) in enumerate(zip(self.ops, self.projs)):
            y = op(acts[-1])
            if not self.linear and isinstance(op, nn.Conv2d):
                y = torch.relu(y)
            w = getattr(self, f"w{i}")
            if len(projs):
                out = w[0] * y
                for k, (j, proj) in enumerate(zip(self.spec["layers"][i]["skips"], projs)):
                    out = out + w[k + 1] * proj(acts[j])
                y = out
            acts.append(y)
        y = acts[-1]
        return self.head(y.flatten(1)) if self.head is not None else y


def _op(layer: dict) -> nn.Module:
    kind = layer["kind"]
    if kind == "conv":
        return nn.Conv2d(layer["in"], layer["out"], layer["k"], stride=layer["stride"], padding=layer["pad"])
    if kind == "bn":
        return nn.BatchNorm2d(layer["in"])
    if kind == "up":
        return nn.Upsample(scale_factor=2, mode="nearest")
    return nn.AvgPool2d(2)
