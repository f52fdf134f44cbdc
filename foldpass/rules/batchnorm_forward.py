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

from ..graph import VIEW_OPS, add_constant, constant_value, shape_of

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


def _add_bias(gm: fx.GraphModule, node: fx.Node, extra: torch.Tensor, dtype: torch.dtype) -> None:
    """node + extra (float64): into the constant bias add that already follows node (behind reshapes
    that keep the last dim), or a new add."""
    walk = node
    while len(walk.users) == 1 and next(iter(walk.users)).target in VIEW_OPS and \
            (shape_of(next(iter(walk.users))) or (0,))[-1] == extra.shape[0]:
        walk = next(iter(walk.users))
    users = list(walk.users)
    if len(users) == 1 and users[0].target == aten.add.Tensor and users[0].args[0] is walk:
        bias = constant_value(gm, users[0].args[1])
        if isinstance(bias, torch.Tensor) and bias.dim() == 1 and bias.shape[0] == extra.shape[0]:
            new = add_constant(gm, (bias.to(torch.float64) + extra).to(bias.dtype), "b", before=users[0])
            users[0].args = (walk, new)
            return
    new = add_constant(gm, extra.to(dtype), "b", before=node)
    with gm.graph.inserting_after(node):
        biased = gm.graph.call_function(aten.add.Tensor, (node, new))
    biased.meta = dict(node.meta)
    node.replace_all_uses_with(biased, delete_user_cb=lambda u: u is not biased)


def weight_of(node: fx.Node) -> fx.Node:
    return node.args[2] if node.target == aten.addmm.default else node.args[1]


def fold_forward(gm: fx.GraphModule, consumers: list[fx.Node], scale: torch.Tensor,
                 shift: torch.Tensor) -> list[fx.Node]:
    """Rewrites every consumer for input s * x + t (float64 scale and shift, per input channel);
    returns the consumers as they are now (an mm becomes an addmm)."""
    done = []
    for node in consumers:
        if node.target == CONV:
            w = constant_value(gm, node.args[1])
            b = constant_value(gm, node.args[2]) if node.args[2] is not None else None
            w64 = w.to(torch.float64)
            b2 = (torch.zeros(w.shape[0], dtype=torch.float64) if b is None else b.to(torch.float64)) + \
                (w64 * shift.view(1, -1, *[1] * (w.dim() - 2))).flatten(1).sum(1)
            new_w = add_constant(gm, (w64 * scale.view(1, -1, *[1] * (w.dim() - 2))).to(w.dtype), "w", before=node)
            new_b = add_constant(gm, b2.to(w.dtype), "b", before=node)
            node.args = (node.args[0], new_w, new_b, *node.args[3:])
            done.append(node)
            continue
        w = constant_value(gm, node.args[2] if node.target == aten.addmm.default else node.args[1])
        w64 = w.to(torch.float64)
        new_w = add_constant(gm, (w64 * scale[:, None]).to(w.dtype), "w", before=node)
        if node.target == aten.addmm.default:
            b = constant_value(gm, node.args[0])
            new_b = add_constant(gm, (b.to(torch.float64) + shift @ w64).to(b.dtype), "b", before=node)
            node.args = (new_b, node.args[1], new_w, *node.args[3:])
        elif node.target == aten.mm.default:
            new_b = add_constant(gm, (shift @ w64).to(w.dtype), "b", before=node)
            with gm.graph.inserting_before(node):
                addmm = gm.graph.call_function(aten.addmm.default, (new_b, node.args[0], new_w))
            addmm.meta = dict(node.meta)
            node.replace_all_uses_with(addmm)
            gm.graph.erase_node(node)
            node = addmm
        else:
            node.args = (node.args[0], new_w)
            _add_bias(gm, node, shift @ w64, w.dtype)
        done.append(node)
    return done
