"""Scale folding: a constant factor after a conv or linear goes into its weights.

    conv(x; W, b) * c   ->   conv(x; W * c, b * c)       c a scalar or per output channel ([C, 1, 1])
    addmm(b, x, W) * c  ->   addmm(b * c, x, W * c)       c a scalar or per output feature ([M])
    (x @ W + b) * c     ->   x @ (W * c) + b * c          x @ W: a Linear on tokens (matmul)
    y / c               ->   y * (1 / c)                  the same rules, with 1 / c in float64
    c * permute(y)      ->   permute(y * c')              the factor's channel followed back through
                                                          permutes and reshapes that keep it (ConvNeXt's
                                                          layer scale after its last Linear)

This is what is left of an exactly-scaled blend at t == 0 (`foldpass.homotopy.blend_residuals`
keeps a converted network's function by scaling the branch by 1 / (1 - t0): at t = 0 the blend
becomes `branch * 2` for t0 = 0.5). Computed in float64, cast back to the weights' dtype.
Folds only where the conv / linear output is read by the mul alone and its weights are constants.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx

from ..graph import VIEW_OPS, add_constant, constant_value, drop_unused_attrs, shape_of
from ..provenance import joined, record
from ..rules.linear_op import LinearOp, per_out
from .base import Notes, PassResult
from .context import PassContext

NAME = "scale_folding"
aten = torch.ops.aten
_PRODUCERS = (aten.convolution.default, aten.addmm.default, aten.matmul.default)


def _channel_axis(c: torch.Tensor, rank: int) -> int | None:
    """The dim of a rank-`rank` value that a broadcast factor varies along (None: a scalar; -1: several)."""
    if c.numel() == 1:
        return None
    varying = [i for i, d in enumerate(c.shape) if d != 1]
    return rank - c.dim() + varying[0] if len(varying) == 1 and c.dim() <= rank else -1


def _axis_before_view(node: fx.Node, axis: int) -> int:
    """Where the dim `axis` of a reshape's output is in its input (-1: split or merged)."""
    shape_in, shape_out = shape_of(node.args[0]), shape_of(node)
    if not shape_in or not shape_out or not all(isinstance(d, int) for d in (*shape_in[1:], *shape_out[1:])):
        return -1
    prefix = tuple(shape_out[:axis])
    for k in range(len(shape_in)):
        if shape_in[k] == shape_out[axis] and (tuple(shape_in[:k]) == prefix or (
                k and axis and shape_in[0] == shape_out[0] and math.prod(shape_in[1:k]) == math.prod(shape_out[1:axis]))):
            return k
    return -1


def _walk_back(gm: fx.GraphModule, node: fx.Node, axis: int | None):
    """From the scaled value back through single-user permutes, reshapes and constant bias adds to
    the conv / linear that computes it: (that op, the adds passed, the factor's axis there), or None."""
    adds = []
    while node.op == "call_function" and node.target not in _PRODUCERS and len(node.users) == 1:
        if node.target == aten.permute.default:
            axis = None if axis is None else node.args[1][axis] % len(node.args[1])
        elif node.target in VIEW_OPS:
            axis = None if axis is None else _axis_before_view(node, axis)
            if axis == -1:
                return None
        elif node.target == aten.add.Tensor and isinstance(node.args[0], fx.Node) and \
                _bias_fits(constant_value(gm, node.args[1]), shape_of(node), axis):
            adds.append(node)
        else:
            return None
        node = node.args[0]
    return (node, adds, axis) if node.op == "call_function" and node.target in _PRODUCERS else None


def _bias_fits(bias, shape, axis: int | None) -> bool:
    """A constant bias that a factor along `axis` (None: a scalar) scales into another constant bias."""
    if not isinstance(bias, torch.Tensor) or shape is None:
        return False
    return True if axis is None else (axis == len(shape) - 1 and bias.dim() == 1)


def _factor(gm: fx.GraphModule, node: fx.Node):
    """(the conv / linear the node scales, the bias adds between, the factor in float64: a scalar or
    one per output channel), if the node is such a scaling."""
    if node.op != "call_function" or node.target not in (aten.mul.Tensor, aten.div.Tensor):
        return None
    a, b = node.args[:2]
    if node.target == aten.mul.Tensor and (not isinstance(a, fx.Node) or constant_value(gm, a) is not None):
        a, b = b, a  # c * y
    c = constant_value(gm, b)
    if not isinstance(a, fx.Node) or c is None or isinstance(c, bool) or shape_of(node) is None:
        return None
    if isinstance(c, torch.Tensor) and c.dim() > 0 and (not c.dtype.is_floating_point or c.dtype != node.meta["val"].dtype):
        return None  # the mul would promote the dtype: not a pure scaling
    c = torch.as_tensor(c, dtype=torch.float64) if not isinstance(c, torch.Tensor) else c.detach().to(torch.float64)
    axis = _channel_axis(c, len(shape_of(node)))
    found = _walk_back(gm, a, axis) if axis != -1 else None
    if found is None:
        return None
    producer, adds, axis = found
    c = c.reshape(()) if axis is None else c.flatten()
    return producer, adds, axis, (1.0 / c if node.target == aten.div.Tensor else c)


def _why_not(gm: fx.GraphModule, producer: fx.Node, axis: int | None, c: torch.Tensor) -> str | None:
    if len(producer.users) != 1:
        return f"{producer.name} is also read elsewhere"
    if not bool(torch.isfinite(c).all()):
        return "the factor is not finite"
    rank = len(shape_of(producer) or ())
    if producer.target == aten.convolution.default:
        if bool(producer.args[6]):
            return "transposed convolutions are left alone"
        fits = axis in (None, 1)
    else:
        fits = axis in (None, rank - 1)
    if not fits:
        return f"the factor varies along dim {axis}, not along {producer.name}'s output channels"
    op = LinearOp.of(gm, producer)
    return op if isinstance(op, str) else None


def _scaled(gm, arg, c: torch.Tensor, before: fx.Node, shape) -> fx.Node:
    w = constant_value(gm, arg)
    return add_constant(gm, (w.to(torch.float64) * c.reshape(shape)).to(w.dtype), "scaled", before=before)


def scale_folding(gm: fx.GraphModule, ctx: PassContext | None = None) -> PassResult:
    """Replaces a constant scaling of a conv / linear output by scaled weights."""
    notes = Notes(NAME)
    folded = 0
    for node in list(gm.graph.nodes):
        found = _factor(gm, node)
        if found is None:
            continue
        producer, adds, axis, c = found
        why = _why_not(gm, producer, axis, c)
        if why:
            notes.declined(f"scaling kept: {why}", node.name)
            continue
        op = LinearOp.of(gm, producer)
        # c (W x + b) = (c W) x + c b: a bias-free op stays bias-free (c * 0 = 0)
        producer, weight, _ = op.with_weights(gm, op.weight * per_out(c.expand(op.weight.shape[0]), op.weight),
                                              None if op.bias is None else op.bias * c)
        for add in adds:  # (y + b) * c = y * c + b * c, for the bias adds that are not the op's own
            if add is not op.bias_add:
                add.args = (add.args[0], _scaled(gm, add.args[1], c, add, (c.numel(),) if c.numel() > 1 else ()))
        name = joined([producer]) and f"{joined([producer])}*scale"
        record(gm, producer, weight, NAME, f"{producer.name} * {node.name} (a constant factor) -> the weights scaled",
               name)
        data = node.args[0] if node.args[0] is not None and constant_value(gm, node.args[0]) is None else node.args[1]
        node.replace_all_uses_with(data)
        gm.graph.erase_node(node)
        folded += 1
    if folded:
        drop_unused_attrs(gm)
        notes.applied(f"folded {folded} constant scaling(s) into the weights of their conv / linear")
    return PassResult(gm, folded > 0, notes)
