"""Concat chains: a concatenation read only by a concatenation on the same axis joins it.

    cat([a, cat([b, c], d), e], d)   ->   cat([a, b, c, e], d)     the same entries, in the same order

What Inception's blocks leave (a branch concatenated, then concatenated again with the others),
and one Concat fewer in the ONNX file for each. The inner cat must have no other reader (else it
is still computed) and the same axis, compared after normalizing a negative axis by the rank.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ..graph import shape_of
from .base import Notes, PassResult
from .context import PassContext

NAME = "concat_chains"
aten = torch.ops.aten


def _axis(node: fx.Node) -> int | None:
    """The cat's axis, non-negative; None when its rank is unknown."""
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if dim >= 0:
        return dim
    shape = shape_of(node)
    return dim + len(shape) if shape is not None else None


def concat_chains(gm: fx.GraphModule, ctx: PassContext | None = None) -> PassResult:
    """Joins each cat read only by a cat on the same axis into that cat (see the module docstring)."""
    notes = Notes(NAME)
    joined = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.cat.default:
            continue
        axis = _axis(node)
        parts = []
        for part in node.args[0]:
            inner = isinstance(part, fx.Node) and part.op == "call_function" and part.target is aten.cat.default
            if inner and len(part.users) == 1 and axis is not None and _axis(part) == axis:
                parts.extend(part.args[0])
                joined += 1
            else:
                if inner and len(part.users) > 1:
                    notes.declined(f"kept {part.name}: also read outside {node.name}", part.name)
                parts.append(part)
        if len(parts) != len(node.args[0]):
            node.args = (parts, *node.args[1:])
    if joined:
        gm.graph.eliminate_dead_code()
        notes.applied(f"joined {joined} concatenation(s) into the concatenation that reads them")
    return PassResult(gm, bool(joined), notes)
