"""Scale folding: a constant factor after a conv or linear goes into its weights.

    conv(x; W, b) * c   ->   conv(x; W * c, b * c)       c a scalar or per output channel ([C, 1, 1])
    addmm(b, x, W) * c  ->   addmm(b * c, x, W * c)       c a scalar or per output feature ([M])
    y / c               ->   y * (1 / c)                  the same rules, with 1 / c in float64

This is what is left of an exactly-scaled blend at t == 0 (`foldpass.homotopy.blend_residuals`
keeps a converted network's function by scaling the branch by 1 / (1 - t0): at t = 0 the blend
becomes `branch * 2` for t0 = 0.5). Computed in float64, cast back to the weights' dtype.
Folds only where the conv / linear output is read by the mul alone and its weights are constants.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ..graph import add_constant, constant_value, drop_unused_attrs
from ..provenance import joined, record
from .base import Notes, PassResult

NAME = "scale_folding"
aten = torch.ops.aten
_PRODUCERS = (aten.convolution.default, aten.addmm.default)


def _factor(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, torch.Tensor] | None:
    """(the conv / addmm the node scales, its factor in float64), if the node is such a scaling."""
    if node.op != "call_function" or node.target not in (aten.mul.Tensor, aten.div.Tensor):
        return None
    a, b = node.args[:2]
    if node.target == aten.mul.Tensor and (not isinstance(a, fx.Node) or constant_value(gm, a) is not None):
        a, b = b, a  # c * y
    if not isinstance(a, fx.Node) or a.target not in _PRODUCERS:
        return None
    c = constant_value(gm, b)
    if c is None or isinstance(c, bool):
        return None
    w = constant_value(gm, a.args[1] if a.target == aten.convolution.default else a.args[2])
    if isinstance(c, torch.Tensor) and c.dim() > 0 and (w is None or c.dtype != w.dtype):
        return None  # unknown weights, or the mul would promote the dtype: not a pure scaling
    c = torch.as_tensor(c, dtype=torch.float64) if not isinstance(c, torch.Tensor) else c.detach().to(torch.float64)
    return a, (1.0 / c if node.target == aten.div.Tensor else c)


def _why_not(gm: fx.GraphModule, producer: fx.Node, c: torch.Tensor) -> str | None:
    if len(producer.users) != 1:
        return f"{producer.name} is also read elsewhere"
    if not bool(torch.isfinite(c).all()):
        return "the factor is not finite"
    if producer.target == aten.convolution.default:
        weights = [producer.args[1], producer.args[2]]
        if bool(producer.args[6]):
            return "transposed convolutions are left alone"
        fits = c.dim() == 0 or (c.dim() in (3, 4) and all(d == 1 for i, d in enumerate(c.shape) if i != c.dim() - 3))
    else:
        weights = [producer.args[0], producer.args[2]]
        fits = c.dim() == 0 or (c.dim() in (1, 2) and all(d == 1 for d in c.shape[:-1]))
    if not fits:
        return f"the factor's shape {tuple(c.shape)} is not a scalar or one per output channel"
    if any(w is not None and constant_value(gm, w) is None for w in weights):
        return f"{producer.name}'s weights are computed at run time"
    return None


def _scaled(gm, arg, c: torch.Tensor, before: fx.Node, shape) -> fx.Node:
    w = constant_value(gm, arg)
    return add_constant(gm, (w.to(torch.float64) * c.reshape(shape)).to(w.dtype), "scaled", before=before)


def scale_folding(gm: fx.GraphModule) -> PassResult:
    """Replaces a constant scaling of a conv / linear output by scaled weights."""
    notes = Notes(NAME)
    folded = 0
    for node in list(gm.graph.nodes):
        found = _factor(gm, node)
        if found is None:
            continue
        producer, c = found
        why = _why_not(gm, producer, c)
        if why:
            notes.declined(f"scaling kept: {why}", node.name)
            continue
        args = list(producer.args)
        if producer.target == aten.convolution.default:
            k = c.numel()
            args[1] = _scaled(gm, args[1], c, producer, (k, 1, 1, 1) if k > 1 else ())
            if args[2] is not None:  # a bias-free conv stays bias-free: c * 0 = 0
                args[2] = _scaled(gm, args[2], c, producer, (k,) if k > 1 else ())
        else:  # addmm(b, x, W^T): W^T is [in, out], so the factor scales its columns
            k = c.numel()
            args[0] = _scaled(gm, args[0], c, producer, (k,) if k > 1 else ())
            args[2] = _scaled(gm, args[2], c, producer, (1, k) if k > 1 else ())
        producer.args = tuple(args)
        name = joined([producer]) and f"{joined([producer])}*scale"
        weight = args[1] if producer.target == aten.convolution.default else args[2]
        record(gm, producer, weight, NAME, f"{producer.name} * {node.name} (a constant factor) -> the weights scaled",
               name)
        node.replace_all_uses_with(producer)
        gm.graph.erase_node(node)
        folded += 1
    if folded:
        drop_unused_attrs(gm)
        notes.applied(f"folded {folded} constant scaling(s) into the weights of their conv / linear")
    return PassResult(gm, folded > 0, notes)
