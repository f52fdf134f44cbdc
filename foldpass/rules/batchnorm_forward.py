"""Batch norm into what reads it: BN(x) -> the following linears / convs, rescaled along their input channel.

An eval-mode BN is a per-channel affine map, BN(x)[c] = s[c] * x[c] + t[c] with
s = gamma / sqrt(var + eps), t = beta - mean * s. A consumer that is linear in its input channel
absorbs it (NextViT's pre-norm before q / k / v, a pre-norm before the classifier, timm's
`merge_pre_bn`):

    x @ W                ->  x @ (s * W) + t @ W                    W: [C, out], the channel is x's last dim
    addmm(b, x, W)       ->  addmm(b + t @ W, x, s * W)
    conv(x, K, b)        ->  conv(x, K * s, b + sum K * t)          unpadded, groups 1 (a zero border of
                                                                    BN(x) is not BN of a zero border)

On the way from the BN to its consumers the channel may move or travel through ops that keep it
per channel; every path from the BN must end in such a consumer, with the channel where it reads it:

    view / reshape       the channel dim survives whole (the sizes before it multiply to the same)
    permute / transpose  the channel dim moves with the permutation
    unsqueeze / squeeze  dims of size 1 come and go around it
    avg_pool, mean       over other dims, unpadded: an average of s * x + t is s * average + t
    another BN           folded first (the pass walks the graph backwards)

`channel_paths` answers where each consumer reads the channel, or why not; `fold_forward`
rewrites. Both compute in float64; the pipeline verifies the result.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx

from ..graph import VIEW_OPS, constant_value, shape_of
from .linear_op import LinearOp, per_in

aten = torch.ops.aten
LINEARS = {aten.addmm.default, aten.mm.default, aten.matmul.default}
CONV = aten.convolution.default
AVG_POOLS = {aten.avg_pool1d.default: 1, aten.avg_pool2d.default: 2}  # op -> how many trailing dims it pools


def _split(dims: tuple) -> tuple[int, tuple[str, ...]]:
    """A product of sizes as (product of the known ones, the symbolic ones by name)."""
    known = math.prod(int(d) for d in dims if isinstance(d, int))
    return known, tuple(sorted(str(d) for d in dims if not isinstance(d, int)))


def _moved(node: fx.Node, axis: int) -> int | str:
    """Where the channel at `axis` of node's input is in node's output, or why it is lost."""
    shape_in, shape_out = shape_of(node.args[0]), shape_of(node)
    if shape_in is None or shape_out is None:
        return f"{node.name} has no recorded shape"
    if node.target in VIEW_OPS:
        before = _split(shape_in[:axis])
        for k in range(len(shape_out)):
            if _split(shape_out[:k]) == before and shape_out[k] == shape_in[axis]:
                return k
        return f"{node.name} splits or merges the channel dim"
    if node.target == aten.permute.default:
        dims = [d % len(shape_in) for d in node.args[1]]
        return dims.index(axis)
    if node.target == aten.transpose.int:
        a, b = (d % len(shape_in) for d in node.args[1:3])
        return b if axis == a else a if axis == b else axis
    if node.target == aten.unsqueeze.default:
        return axis + (1 if node.args[1] % len(shape_out) <= axis else 0)
    if node.target in (aten.squeeze.dims, aten.squeeze.dim):
        dims = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
        dims = {d % len(shape_in) for d in dims if shape_in[d] == 1}
        return f"{node.name} squeezes the channel dim away" if axis in dims else axis - sum(d < axis for d in dims)
    if node.target in AVG_POOLS:
        pooled = AVG_POOLS[node.target]
        padding = node.args[3] if len(node.args) > 3 else [0]
        if any(padding) or (len(node.args) > 6 and node.args[6] is not None) or (len(node.args) > 4 and node.args[4]):
            return f"{node.name} pads, rounds up or overrides its divisor: its border average is not per channel"
        return axis if axis < len(shape_in) - pooled else f"{node.name} pools over the channel dim"
    if node.target == aten.mean.dim:
        dims = {d % len(shape_in) for d in node.args[1]}
        keep = len(node.args) > 2 and node.args[2]
        if axis in dims:
            return f"{node.name} averages over the channel dim"
        return axis if keep else axis - sum(d < axis for d in dims)
    return f"{node.name} ({node.target}) is not linear per channel"


PASS_THROUGH = VIEW_OPS | {aten.permute.default, aten.transpose.int, aten.unsqueeze.default, aten.squeeze.dims,
                           aten.squeeze.dim, aten.avg_pool1d.default, aten.avg_pool2d.default, aten.mean.dim}


def _reads_channel(gm: fx.GraphModule, node: fx.Node, src: fx.Node, axis: int) -> str | None:
    """Why the consumer `node` cannot absorb a per-channel affine map of its input `src` at `axis`."""
    shape = shape_of(src)
    if node.target == CONV:
        w, b = constant_value(gm, node.args[1]), node.args[2]
        if node.args[0] is not src or not isinstance(w, torch.Tensor) or (b is not None and constant_value(gm, b) is None):
            return f"{node.name} reads it as a weight, or its weights are computed at run time"
        if axis != 1 or node.args[6] or node.args[8] != 1 or any(node.args[4]):
            return f"{node.name} is padded, grouped or transposed"
        return None
    data, weight = (node.args[1], node.args[2]) if node.target == aten.addmm.default else node.args[:2]
    w = constant_value(gm, weight)
    if data is not src or not isinstance(w, torch.Tensor) or w.dim() != 2:
        return f"{node.name} reads it as a weight, or its weights are computed at run time"
    if shape is None or axis != len(shape) - 1:
        return f"{node.name} does not contract the channel dim"
    return None


def channel_paths(gm: fx.GraphModule, out: fx.Node) -> list[fx.Node] | str:
    """The consumers that every path from `out` (a BN's output, channel at dim 1) ends in, or why
    some path does not end in one."""
    consumers: list[fx.Node] = []
    todo = [(out, 1)]
    while todo:
        node, axis = todo.pop()
        if not node.users:
            return f"{node.name} is an output of the graph"
        for user in node.users:
            if user.target in LINEARS or user.target == CONV:
                why = _reads_channel(gm, user, node, axis)
                if why:
                    return why
                if user not in consumers:
                    consumers.append(user)
            elif user.target in PASS_THROUGH and user.args[0] is node:
                moved = _moved(user, axis)
                if isinstance(moved, str):
                    return moved
                todo.append((user, moved))
            else:
                return f"{user.name} ({getattr(user.target, '__name__', user.target)}) is not linear per channel"
    return consumers


def weight_of(node: fx.Node) -> fx.Node:
    return node.args[2] if node.target == aten.addmm.default else node.args[1]


def fold_forward(gm: fx.GraphModule, consumers: list[fx.Node], scale: torch.Tensor,
                 shift: torch.Tensor) -> list[fx.Node]:
    """Rewrites every consumer for input s * x + t (float64 scale and shift, per input channel);
    returns the consumers as they are now (an mm becomes an addmm)."""
    done = []
    for node in consumers:
        op = LinearOp.of(gm, node)
        assert not isinstance(op, str), op  # channel_paths accepted it
        # W (s x + t) + b = (W s) x + (b + W t): t summed over the input channel (and the kernel window)
        extra = (op.weight * per_in(shift, op.weight)).flatten(1).sum(1)
        bias = extra if op.bias is None else op.bias + extra
        done.append(op.with_weights(gm, op.weight * per_in(scale, op.weight), bias)[0])
    return done
