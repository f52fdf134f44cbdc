"""Broadcast matmul: a constant weight expanded once per row block, then bmm  ->  one matmul.

    bmm(view(expand(x, [b, m, k])), view(expand(W, [b, k, n])))   ->   matmul(x, W)
        x: [b, m, k] already (its expand and view change nothing); W: a constant [k, n]
        identity: for each i < b, (x[i] @ W) is the i-th [m, n] block of bmm's result

torch's decomposition of `linear` on a 3-D input that is not contiguous (attention's in-projection
after a transpose: torchvision's ViT, nn.MultiheadAttention with batch_first) broadcasts the weight
with expand and runs bmm. Exported, that Expand writes the weight b times per call ([197, 768, 2304]
per ViT layer: 76% of its run time under onnxruntime). matmul broadcasts W itself, with no copy.
Declines when W is not a constant, when x would need its expand, or when the shapes are unknown.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ..graph import VIEW_OPS, drop_unused_attrs, replace, shape_of
from .base import Notes, PassResult
from .context import PassContext

NAME = "broadcast_matmul"
aten = torch.ops.aten


def _expanded(node) -> fx.Node | None:
    """x for view(expand(x, shape), shape), else None."""
    if not (isinstance(node, fx.Node) and node.op == "call_function" and node.target in VIEW_OPS):
        return None
    inner = node.args[0]
    if not (isinstance(inner, fx.Node) and inner.op == "call_function" and inner.target is aten.expand.default):
        return None
    return inner.args[0]


def _match(node: fx.Node, const: set[fx.Node]) -> str | tuple[fx.Node, fx.Node] | None:
    """(x, W) where the rewrite applies, why not where the pattern is there but the rule declines,
    None where the bmm is not the pattern."""
    a, b = node.args
    x, w = _expanded(a), _expanded(b)
    if x is None or w is None:
        return None
    xs, ws = shape_of(x), shape_of(w)
    if xs is None or ws is None or shape_of(node) is None:
        return "the shapes of its operands are not known"
    if w not in const or len(ws) != 2:
        return "the broadcast operand is not a constant 2-D weight"
    if len(xs) != 3 or xs != shape_of(a):
        return f"the data operand {list(xs)} is itself broadcast"
    return x, w


def broadcast_matmul(gm: fx.GraphModule, ctx: PassContext | None = None) -> PassResult:
    """Replaces bmm over an expanded constant weight by one matmul (see the module docstring)."""
    notes = Notes(NAME)
    const = (ctx or PassContext()).constants(gm)
    rewritten = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.bmm.default:
            continue
        found = _match(node, const)
        if found is None:
            continue
        if isinstance(found, str):
            notes.declined(f"bmm kept: {found}", node.name)
            continue
        x, w = found
        with gm.graph.inserting_before(node):
            matmul = gm.graph.call_function(aten.matmul.default, (x, w))
        replace(node, matmul)
        rewritten += 1
    if rewritten:
        drop_unused_attrs(gm)
        notes.applied(f"{rewritten} bmm over an expanded weight -> matmul (no per-row copy of the weight)")
    return PassResult(gm, rewritten > 0, notes)
