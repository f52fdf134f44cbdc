"""Batched matmul: flatten the leading dims, bmm, unflatten  ->  one matmul.

    view(bmm(view(e(A), [L, n, k]), view(e(B), [L, k, m])), [*lead, n, m])   ->   matmul(A, B)
        e(.) = expand to [*lead, ., .] and / or clone (no-ops or broadcasts), L = prod(lead)
        identity: bmm multiplies the L pairs of matrices one by one, as matmul does over
        leading dims (broadcasting them as expand did)

torch's decomposition of `q @ k.transpose(-2, -1)` and `attn @ v` on [B, H, N, D] tensors
(every attention block) expands, copies (clone), flattens to [B * H, N, D], runs bmm and
unflattens: exported, that is Expand + Reshape + Reshape + MatMul + Reshape where the direct
export has one MatMul, and the clone of a permuted tensor is a real copy. ONNX MatMul takes
the leading dims, and broadcasts them, itself.
Declines when the views do anything but flatten and unflatten the same leading dims.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ..graph import VIEW_OPS, replace, same_shape, shape_of
from .base import Notes, PassResult
from .context import PassContext

NAME = "batched_matmul"
aten = torch.ops.aten


def _operand(node, lead: tuple) -> fx.Node | None:
    """A for view(clone?(expand?(A)), [L, ., .]) where A's leading dims broadcast to `lead`."""
    if not (isinstance(node, fx.Node) and node.target in VIEW_OPS):
        return None
    src = node.args[0]
    while isinstance(src, fx.Node) and src.target in (aten.clone.default, aten.expand.default):
        if src.target is aten.clone.default and src.kwargs.get("memory_format") not in (None, torch.contiguous_format):
            return None
        src = src.args[0]
    shape = shape_of(src)
    if shape is None or len(shape) != len(lead) + 2:
        return None
    try:
        if tuple(torch.broadcast_shapes(shape[:-2], lead)) != tuple(lead):
            return None
    except Exception:  # noqa: BLE001 - not broadcastable, or undecidable
        return None
    if not same_shape(shape_of(node)[1:], shape[-2:]):
        return None
    return src


def batched_matmul(gm: fx.GraphModule, ctx: PassContext | None = None) -> PassResult:
    """Rewrites flatten + bmm + unflatten as one matmul over the leading dims."""
    notes = Notes(NAME)
    rewritten = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.bmm.default or len(node.users) != 1:
            continue
        out = next(iter(node.users))
        out_shape = shape_of(out)
        if out.target not in VIEW_OPS or out_shape is None or len(out_shape) < 3:
            continue
        lead = out_shape[:-2]
        a, b = (_operand(arg, lead) for arg in node.args[:2])
        if a is None or b is None:
            continue
        with gm.graph.inserting_before(out):
            y = gm.graph.call_function(aten.matmul.default, (a, b))
        replace(out, y, provenance=node)
        rewritten += 1
    if rewritten:
        gm.graph.eliminate_dead_code()
        notes.applied(f"{rewritten} flatten + bmm + unflatten -> matmul over the leading dims")
    return PassResult(gm, rewritten > 0, notes)
