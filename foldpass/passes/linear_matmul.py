"""Token-wise linear: reshape -> Gemm -> reshape  ->  one MatMul (+ the bias).

    view(addmm(b, view(x, [-1, K]), W), [*lead, M])   ->   matmul(x, W) + b      x: [*lead, K], rank >= 3
    view(mm(view(x, [-1, K]), W), [*lead, M])         ->   matmul(x, W)
        identity: row i of the flattened product is x[i] @ W, whatever the leading dims

torch's decomposition of `nn.Linear` on a [B, N, K] input flattens the tokens for addmm and
unflattens the result: exported, that is Reshape + Gemm + Reshape, one op more than the direct
export's MatMul + Add (two more without a bias). ONNX MatMul broadcasts over the leading dims.
This runs last in the pipeline: the folds before it (batch norm into the linear, affine regions)
read addmm, and a MatMul is where they stop.
Declines when the reshapes do anything else (the leading dims change), when W is not a constant
2-D weight, or when the flattened value is read by anything else.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ..graph import VIEW_OPS, replace, shape_of
from .base import Notes, PassResult
from .context import PassContext

NAME = "linear_matmul"
aten = torch.ops.aten


def _match(node: fx.Node, const: set[fx.Node]) -> tuple[fx.Node, fx.Node, fx.Node | None] | None:
    """(x, W, bias or None) when `node` (an addmm / mm) is the pattern, else None."""
    if node.target == aten.addmm.default:
        bias, flat, w = node.args[:3]
        if node.kwargs or len(node.args) > 3 or bias not in const:
            return None
    else:
        (flat, w), bias = node.args[:2], None
    if not (isinstance(flat, fx.Node) and flat.target in VIEW_OPS and len(flat.users) == 1) or w not in const:
        return None
    x = flat.args[0]
    out = next(iter(node.users)) if len(node.users) == 1 else None
    xs, ws, outs = shape_of(x), shape_of(w), shape_of(out) if out is not None else None
    if out is None or out.target not in VIEW_OPS or xs is None or ws is None or outs is None:
        return None
    if len(xs) < 3 or len(ws) != 2 or outs != (*xs[:-1], ws[1]) or xs[-1] != ws[0]:
        return None
    return x, w, bias


def linear_matmul(gm: fx.GraphModule, ctx: PassContext | None = None) -> PassResult:
    """Rewrites every token-wise linear's reshape + Gemm + reshape as matmul (+ add)."""
    notes = Notes(NAME)
    const = (ctx or PassContext()).constants(gm)
    rewritten = biased = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (aten.addmm.default, aten.mm.default):
            continue
        found = _match(node, const)
        if found is None:
            continue
        x, w, bias = found
        out = next(iter(node.users))
        with gm.graph.inserting_before(out):
            y = gm.graph.call_function(aten.matmul.default, (x, w))
            y.meta["val"] = out.meta.get("val")
            if bias is not None:
                y = gm.graph.call_function(aten.add.Tensor, (y, bias))
                y.meta["val"] = out.meta.get("val")
                biased += 1
        replace(out, y, provenance=node)  # the linear's provenance
        rewritten += 1
    if rewritten:
        gm.graph.eliminate_dead_code()
        notes.applied(f"{rewritten} token-wise linear(s): reshape + Gemm + reshape -> MatMul ({biased} with an Add "
                      "for the bias)")
    return PassResult(gm, rewritten > 0, notes)
