"""Reshape chains: reshapes of reshapes collapse, and a reshape to the shape it has goes.

    view(view(x, a), b)   ->   view(x, b)          a reshape reads entries in row-major order, whatever came before
    view(x, shape(x))     ->   x                   nothing moves

What a folded batch norm over flattened tokens leaves behind ([B, N, C] -> [B * N, C] -> [B, N, C]),
and what a traced attention block is full of; each would be a Reshape (and its shape arithmetic)
in the ONNX file. Shapes are compared as the trace recorded them (symbolic sizes included), so a
dynamic batch stays dynamic. Only reshapes: a permute between two views is not a reshape.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ..graph import VIEW_OPS, same_shape, shape_of
from .base import Notes, PassResult
from .context import PassContext

NAME = "reshape_chains"
aten = torch.ops.aten


def reshape_chains(gm: fx.GraphModule, ctx: PassContext | None = None) -> PassResult:
    """Collapses reshape chains and drops identity reshapes (see the module docstring)."""
    notes = Notes(NAME)
    chained = dropped = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in VIEW_OPS:
            continue
        src = node.args[0]
        while isinstance(src, fx.Node) and src.op == "call_function" and src.target in VIEW_OPS:
            src = src.args[0]
        if src is not node.args[0]:
            node.target = aten.reshape.default  # view needs strides that fit; reshape takes any layout
            node.args = (src, *node.args[1:])
            chained += 1
        if same_shape(shape_of(node), shape_of(src)) and isinstance(src, fx.Node):
            node.replace_all_uses_with(src)
            dropped += 1
    if chained or dropped:
        gm.graph.eliminate_dead_code()
        notes.applied(f"{chained} reshape(s) of a reshape read the source directly; {dropped} reshape(s) to the "
                      "same shape removed")
    return PassResult(gm, bool(chained or dropped), notes)
