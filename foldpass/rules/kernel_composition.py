"""Kernel composition: a conv-shaped region's kernel composed from its ops' kernels, without a Jacobian.

Each value v of the region is a linear map of the region input x: v = K_v * x (+ a bias, which
conv_merging reads off f(0) and this file ignores), K_v a [C_v, C_x, kh, kw] kernel on v's window.
Each op maps its operands' kernels to its own, as conv_merging's GEOMETRY maps their windows:

    x                      K = Dirac                                      (the identity)
    conv(v, W, stride s)   K = W (*)_T K_v    conv_transpose(W, K_v, stride = K_v's stride)
    depthwise conv / pool  K[c] = D[c] (*)_T K_v[c]                        one channel at a time
    BN, v * c, v / c, -v   K = scale[c] K_v                               a constant added is bias only
    pad(v)                 K = K_v                                        (the window's padding grows)
    a + b, a - b           K = K_a (+/-) K_b, each placed on the merged window at offset P - p

A kernel that only couples each channel with itself (what BN, pools and depthwise convs make of
x) is kept as its diagonal [C, 1, kh, kw]: composing it costs C, not C^2. Composing costs
C_out x C_v x C_x x the window, where the Jacobian costs C_out backward passes of the whole region
(DenseNet-201's last transition, 1792 -> 896 channels: 9 s by Jacobian, milliseconds composed).

`compose` returns None where an op has no rule here (conv_merging falls back to the Jacobian) or
where the dense kernel would exceed MAX_ELEMENTS; the merged conv is checked against the region
on the real shape either way.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..graph import pair
from .conv_merging import IDENTITY, Window

aten = torch.ops.aten
MAX_ELEMENTS = 2**25  # a dense kernel larger than this (256 MiB in float64): the Jacobian instead


@dataclass
class Kernel:
    """v = weight * x on `window`; diagonal: weight is [C, 1, kh, kw] and couples channel c with c only."""

    weight: torch.Tensor
    window: Window
    diagonal: bool

    def dense(self, c_in: int) -> torch.Tensor | None:
        w = self.weight
        if not self.diagonal:
            return w
        if w.shape[0] * c_in * w.shape[2] * w.shape[3] > MAX_ELEMENTS:
            return None
        out = torch.zeros(w.shape[0], c_in, *w.shape[2:], dtype=w.dtype)
        out[torch.arange(w.shape[0]), torch.arange(w.shape[0])] = w[:, 0]
        return out


def _then(k: Kernel, op: torch.Tensor, stride, pad, depthwise: bool, c_in: int) -> Kernel | None:
    """op (a [C_out, C_v (or 1 if depthwise), kh, kw] kernel, stride, padding) applied to k."""
    window = k.window.then(tuple(op.shape[2:]), stride, pad)
    s = k.window.stride
    if depthwise:  # D[c] (*)_T K[c]: each channel's kernel by its own
        c = op.shape[0]
        if k.diagonal:
            w = F.conv_transpose2d(op.reshape(1, c, *op.shape[2:]), k.weight, stride=s, groups=c)
            return Kernel(w.reshape(c, 1, *window.size), window, True)
        c_x = k.weight.shape[1]
        w = F.conv_transpose2d(op.reshape(1, c, *op.shape[2:]), k.weight, stride=s, groups=c)
        return Kernel(w.reshape(c, c_x, *window.size), window, False)
    if k.diagonal:  # W (*)_T diag: input channel i meets only K[i]
        return Kernel(F.conv_transpose2d(op, k.weight, stride=s, groups=op.shape[1]), window, False)
    if op.shape[0] * k.weight.shape[1] * window.size[0] * window.size[1] > MAX_ELEMENTS:
        return None
    return Kernel(F.conv_transpose2d(op, k.weight, stride=s), window, False)


def _scaled(k: Kernel, scale, c_in: int) -> Kernel | None:
    """scale (a number, or a [C] tensor: one per channel) times k."""
    if isinstance(scale, torch.Tensor):
        if scale.numel() not in (1, k.weight.shape[0]):
            return None
        scale = scale.reshape(-1, 1, 1, 1).to(torch.float64)
    return Kernel(k.weight * scale, k.window, k.diagonal)


def _per_channel(c) -> object:
    """A constant operand of v * c as a number or a [C] tensor; None where it varies over the image."""
    if not isinstance(c, torch.Tensor) or c.numel() == 1:
        return c.item() if isinstance(c, torch.Tensor) else c
    return c.reshape(-1) if c.dim() >= 3 and tuple(c.shape[-2:]) == (1, 1) else None


def _sum(a: Kernel, b: Kernel, sign: float, c_in: int) -> Kernel | None:
    """a + sign * b, both placed on the merged window."""
    window = Window.merge([a.window, b.window])
    if window is None:
        return None
    diagonal = a.diagonal and b.diagonal
    parts = [k.weight if diagonal else k.dense(c_in) for k in (a, b)]
    if any(p is None for p in parts) or parts[0].shape[:2] != parts[1].shape[:2]:
        return None
    out = torch.zeros(*parts[0].shape[:2], *window.size, dtype=torch.float64)
    for k, p, sg in ((a, parts[0], 1.0), (b, parts[1], sign)):
        dh, dw = (window.pad[d] - k.window.pad[d] for d in range(2))
        out[:, :, dh:dh + p.shape[2], dw:dw + p.shape[3]] += sg * p
    return Kernel(out, window, diagonal)


def _conv(gm, node, v: Kernel, c_in: int) -> Kernel | None:
    _, weight, _, stride, pad, dilation, transposed, _, groups = node.args
    if transposed or any(d != 1 for d in dilation):
        return None
    w = _value(gm, weight)
    if groups == 1:
        return _then(v, w, pair(stride), pair(pad), False, c_in)
    if w.shape[1] == 1 and groups == w.shape[0]:  # depthwise
        return _then(v, w, pair(stride), pair(pad), True, c_in)
    dense = torch.zeros(w.shape[0], w.shape[1] * groups, *w.shape[2:], dtype=w.dtype)  # grouped: block-diagonal
    og, cg = w.shape[0] // groups, w.shape[1]
    for g in range(groups):
        dense[g * og:(g + 1) * og, g * cg:(g + 1) * cg] = w[g * og:(g + 1) * og]
    return _then(v, dense, pair(stride), pair(pad), False, c_in)


def _avg_pool(gm, node, v: Kernel, c_in: int) -> Kernel | None:
    args = list(node.args) + [None] * 7
    kernel, stride, pad = pair(args[1]), pair(args[2] or args[1]), pair(args[3] or 0)
    channels = v.weight.shape[0]
    ones = torch.full((channels, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), dtype=torch.float64)
    return _then(v, ones, stride, pad, True, c_in)


def _value(gm, arg):
    return getattr(gm, arg.target).to(torch.float64) if isinstance(arg, fx.Node) else arg


def compose(sub: fx.GraphModule, window: Window, in_shape) -> tuple[torch.Tensor, bool] | None:
    """The region's kernel on `window` and whether it is diagonal ([C_out, C_in, kh, kw], or [C, 1, kh, kw]
    coupling each channel with itself only), or None where an op has no rule here."""
    c_in = in_shape[0]
    k: dict[fx.Node, object] = {}
    for node in sub.graph.nodes:
        if node.op == "placeholder":
            k[node] = Kernel(torch.ones(c_in, 1, 1, 1, dtype=torch.float64), IDENTITY, True)  # x = Dirac * x
        elif node.op == "get_attr":
            continue
        elif node.op == "output":
            out = k.get(node.args[0])
            if not isinstance(out, Kernel) or out.window != window:
                return None
            return out.weight, out.diagonal
        else:
            k[node] = _rule(sub, node, k, c_in)
            if k[node] is None:
                return None
    return None


def _rule(gm, node, k: dict, c_in: int) -> object:
    data = [a for a in node.args if isinstance(a, fx.Node) and a in k]
    if node.target is operator.getitem:  # BN's tuple
        v = k[node.args[0]]
        return v[node.args[1]] if isinstance(v, tuple) else None
    if len(data) == 2 and node.target in (aten.add.Tensor, aten.sub.Tensor):
        sign = node.kwargs.get("alpha", 1) * (-1.0 if node.target is aten.sub.Tensor else 1.0)
        return _sum(k[node.args[0]], k[node.args[1]], sign, c_in)
    if len(data) != 1:
        return None
    v, first = k[data[0]], node.args[0] is data[0]
    t = node.target
    if t is aten.convolution.default and first:
        return _conv(gm, node, v, c_in)
    if t is aten.avg_pool2d.default and first:
        return _avg_pool(gm, node, v, c_in)
    if t is aten.constant_pad_nd.default:
        return Kernel(v.weight, v.window.then((1, 1), (1, 1), (node.args[1][2], node.args[1][0])), v.diagonal)
    if t is aten._native_batch_norm_legit_no_training.default:
        w, var, eps = _value(gm, node.args[1]), _value(gm, node.args[4]), node.args[6]
        out = _scaled(v, (w if w is not None else 1.0) / torch.sqrt(var + eps), c_in)  # gamma / sigma
        return None if out is None else (out,)
    if t in (aten.clone.default, aten.alias.default):
        return v
    if t is aten.neg.default:
        return _scaled(v, -1.0, c_in)
    if t in (aten.add.Tensor, aten.sub.Tensor):  # a constant added: bias only
        return v if first or t is aten.add.Tensor else _scaled(v, -1.0, c_in)
    other = _per_channel(_value(gm, node.args[1] if first else node.args[0]))
    if other is None or not isinstance(other, (int, float, torch.Tensor)):
        return None
    if t is aten.mul.Tensor:
        return _scaled(v, other, c_in)
    if t is aten.div.Tensor and first:
        return _scaled(v, 1.0 / other, c_in)
    return None
