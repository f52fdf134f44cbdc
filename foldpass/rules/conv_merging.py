"""Conv merging: a linear region that is one convolution in disguise -> that one conv.

Structural re-parameterization (RepVGG, MobileOne, Diverse Branch Block), found on any graph:

    parallel branches      conv(x, K1) + conv(x, K2)  =  conv(x, K1 (+) K2)      kernels aligned on their windows
    identity branch        x  =  conv(x, Dirac)
    BN / per-channel ops   BN(x)  =  conv(x, diag(gamma / sigma)) + (beta - mean * gamma / sigma)
    sequential convs       conv(conv(x, K1), K2)  =  conv(x, K2 o K1)           window k1 + (k2 - 1) s1, stride s1 s2
    avg-pool               avg_pool_k(x)  =  conv(x, 1 / k^2 per channel)
    BN before a conv       conv(BN(x))  =  conv'(x)
    linear residual        x + g(x)  =  conv(x, Dirac + K_g)

The geometry (window, stride, padding of the merged conv) is composed op by op by `GEOMETRY`
below. The kernel and bias are then read off the region itself in float64: the bias is f(0)
(it must be the same at every position), the kernel composed from its ops (kernel_composition.py) or,
where an op has no rule there, the Jacobian of one interior output position,
on a small probe input. Groups are whatever block-diagonal structure that kernel has
(a depthwise region stays depthwise).

The padding trap: zero padding *between* two ops is not zero padding of the input (conv2 pads
conv1's output with zeros, but conv1 of a zero border is its bias, not zero). So every merged
conv is checked against the region on a random input of the real shape, borders included, and a
region whose border differs is kept, with the size of the difference as the reason.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..graph import pair as _pair
from ..shapes import ShapeInfo

if TYPE_CHECKING:  # a type only: the rule library does not depend on the passes that use it
    from ..passes.linear_regions import Region

aten = torch.ops.aten


@dataclass(frozen=True)
class Window:
    """Where one output position reads the region input: rows i*stride - pad .. + size - 1 (per dim)."""

    size: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]

    def then(self, size, stride, pad) -> Window:
        """This window followed by an op with its own window: the composed window on the input."""
        return Window(tuple(a + (k - 1) * s for a, k, s in zip(self.size, size, self.stride)),
                      tuple(s * t for s, t in zip(self.stride, stride)),
                      tuple(p + q * s for p, q, s in zip(self.pad, pad, self.stride)))

    @staticmethod
    def merge(windows: list[Window]) -> Window | None:
        """The window covering parallel branches with one stride (None when the strides differ)."""
        if len({w.stride for w in windows}) != 1:
            return None
        pad = tuple(max(w.pad[d] for w in windows) for d in range(2))
        size = tuple(max(pad[d] - w.pad[d] + w.size[d] for w in windows) for d in range(2))
        return Window(size, windows[0].stride, pad)


IDENTITY = Window((1, 1), (1, 1), (0, 0))


def _conv(node, w) -> Window | None:  # conv(x): window = kernel, stride, padding (no dilation, no transpose)
    if node.args[6] or any(d != 1 for d in node.args[5]):
        return None
    weight = node.args[1].meta.get("val") if isinstance(node.args[1], fx.Node) else None
    kernel = tuple(weight.shape[2:]) if weight is not None else _kernel_of(node)
    return w.then(kernel, _pair(node.args[3]), _pair(node.args[4])) if len(kernel) == 2 else None


def _kernel_of(node) -> tuple[int, ...]:
    from ..graph import attr

    w = node.args[1]
    value = attr(node.graph.owning_module, w.target) if isinstance(w, fx.Node) and w.op == "get_attr" else None
    return tuple(value.shape[2:]) if isinstance(value, torch.Tensor) else ()


def _avg_pool(node, w) -> Window | None:  # avg_pool(x) = conv(x, 1/k^2): zero padding counted, no ceil mode
    args = list(node.args) + [None] * 7
    kernel, stride, pad = _pair(args[1]), _pair(args[2] or args[1]), _pair(args[3] or 0)
    ceil_mode, count_pad, divisor = args[4] or False, True if args[5] is None else args[5], args[6]
    if ceil_mode or (any(pad) and not count_pad) or divisor is not None:
        return None
    return w.then(kernel, stride, pad)


def _pad(node, w) -> Window | None:  # constant_pad_nd(x, [l, r, t, b], 0): symmetric zero padding only
    pads, value = node.args[1], node.args[2] if len(node.args) > 2 else 0
    if value != 0 or len(pads) != 4 or pads[0] != pads[1] or pads[2] != pads[3] or min(pads) < 0:
        return None
    return w.then((1, 1), (1, 1), (pads[2], pads[0]))


def _pointwise(node, w) -> Window | None:  # BN, x * c, x + c, -x: one input position per output position
    return w if _per_channel_constants(node) else None


def _per_channel_constants(node) -> bool:
    """Its constant operands do not vary over the image (a scalar, or one value per channel)."""
    from ..graph import constant_value

    gm = node.graph.owning_module
    for arg in node.args:
        value = constant_value(gm, arg) if isinstance(arg, fx.Node) else None
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[-2:] != (1, 1):
            return False
    return True


# op -> how it moves the window of its data operand; ops not listed are not part of any conv
GEOMETRY = {
    aten.convolution.default: _conv,
    aten.avg_pool2d.default: _avg_pool,
    aten.constant_pad_nd.default: _pad,
    aten._native_batch_norm_legit_no_training.default: _pointwise,
    operator.getitem: _pointwise,
    aten.mul.Tensor: _pointwise,
    aten.div.Tensor: _pointwise,
    aten.neg.default: _pointwise,
    aten.clone.default: _pointwise,
    aten.alias.default: _pointwise,
}
_MERGING = {aten.add.Tensor, aten.sub.Tensor}  # parallel branches: the windows merge


def region_window(region: Region, shapes: dict[fx.Node, ShapeInfo]) -> Window | str:
    """The merged conv's window, or why the region is not one conv."""
    x = region.inputs[0]
    if len(shapes[x].sample_shape) != 3:
        return f"its input {x.name} is not an image (C, H, W)"
    windows: dict[fx.Node, Window] = {x: IDENTITY}
    for node in region.nodes:
        data = [a for a in node.all_input_nodes if a in windows]
        if node.target in _MERGING:
            if not _per_channel_constants(node):
                return f"{node.name} adds a constant that varies over the image"
            merged = Window.merge([windows[a] for a in data])
            if merged is None:
                return f"{node.name} adds branches with different strides"
            windows[node] = merged
            continue
        rule = GEOMETRY.get(node.target)
        if rule is None:
            target = node.target.__name__ if hasattr(node.target, "__name__") else node.target
            return f"{node.name} ({target}) is not a conv-shaped op"
        if len(data) != 1:
            return f"{node.name} reads {len(data)} region values"
        w = rule(node, windows[data[0]])
        if w is None:
            return f"{node.name} has a form no single conv takes (dilation, transposition, asymmetric padding, ceil mode)"
        windows[node] = w
    out = shapes[region.output].sample_shape
    if len(out) != 3:
        return "its output is not an image (C, H, W)"
    return windows[region.output]


@dataclass
class MergedConv:
    weight: torch.Tensor  # float64, [C_out, C_in / groups, kh, kw]
    bias: torch.Tensor  # float64, [C_out]
    window: Window
    groups: int

    def macs(self, out_shape) -> int:
        return math.prod(out_shape) * math.prod(self.weight.shape[1:])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.window.stride, self.window.pad, 1, self.groups)


def merged_conv(sub: fx.GraphModule, window: Window, in_shape, out_shape) -> MergedConv | str:
    """Reads the conv off `sub` (the region, float64, one input) and checks it on the real shape."""
    c_in, c_out = in_shape[0], out_shape[0]
    k, s, p = window.size, window.stride, window.pad
    start = [-(-p[d] // s[d]) for d in range(2)]  # the first output position whose window needs no padding
    probe = [start[d] * s[d] - p[d] + k[d] + s[d] for d in range(2)]
    if any(probe[d] > in_shape[1 + d] + 2 * p[d] for d in range(2)):
        return f"the merged {k[0]}x{k[1]} window does not fit inside the {in_shape[1]}x{in_shape[2]} map"
    zero = torch.zeros(1, c_in, *probe, dtype=torch.float64)

    def at(v):
        return sub(v)[0, :, start[0], start[1]]

    with torch.no_grad():
        full_bias = sub(torch.zeros(1, *in_shape, dtype=torch.float64))[0]
    bias = full_bias[:, 0, 0]
    if not torch.allclose(full_bias, bias[:, None, None].expand_as(full_bias), rtol=1e-12,
                          atol=1e-12 * (bias.abs().max().item() + 1)):
        return "its bias varies with the position (zero padding after a bias or a BN)"
    from .kernel_composition import compose

    composed = compose(sub, window, in_shape)
    if composed is not None and composed[1]:  # each channel with itself only: depthwise
        groups, weight = c_out, composed[0]
    else:
        if composed is not None:
            kernel = composed[0]
        else:  # an op without a composition rule: the Jacobian of one output position
            jac = torch.func.jacrev(at)(zero)[:, 0]  # [C_out, C_in, probe_h, probe_w]
            r0, c0 = start[0] * s[0] - p[0], start[1] * s[1] - p[1]
            kernel = jac[:, :, r0:r0 + k[0], c0:c0 + k[1]]
        groups = _groups(kernel)
        weight = torch.cat([kernel[g * (c_out // groups):(g + 1) * (c_out // groups),
                                   g * (c_in // groups):(g + 1) * (c_in // groups)] for g in range(groups)])
    conv = MergedConv(weight, bias, window, groups)
    x = torch.randn(2, *in_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = sub(x), conv(x)
    if got.shape != want.shape:
        return f"a {k[0]}x{k[1]} conv gives shape {tuple(got.shape[1:])}, the region {tuple(want.shape[1:])}"
    err, scale = (got - want).abs().max().item(), want.abs().max().item()
    if err > 1e-9 * (scale + 1e-30):
        return (f"a merged {k[0]}x{k[1]} conv differs from the region by {err / max(scale, 1e-30):.2g} of its scale "
                "at the border (zero padding between ops)")
    return conv


def _groups(kernel: torch.Tensor) -> int:
    """The most groups whose block-diagonal structure the [C_out, C_in, kh, kw] kernel has."""
    c_out, c_in = kernel.shape[:2]
    nonzero = kernel.abs().amax(dim=(2, 3)) != 0
    for g in sorted((d for d in range(1, math.gcd(c_out, c_in) + 1) if c_out % d == 0 and c_in % d == 0), reverse=True):
        bo, bi = c_out // g, c_in // g
        mask = torch.zeros_like(nonzero)
        for i in range(g):
            mask[i * bo:(i + 1) * bo, i * bi:(i + 1) * bi] = True
        if not (nonzero & ~mask).any():
            return g
    return 1
