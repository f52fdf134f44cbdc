"""LinearOp: one view of every op that computes y = W x + b, whatever its layout.

    conv(x, K, b)           K: [out, in / groups, *k]     stored as is
    conv_transpose(x, K, b) K: [in, out, *k]              groups 1 only: the weight's dims swap
    addmm(b, x, Wt)         Wt = W^T: [in, out]           nn.Linear as aten writes it
    mm(x, Wt)               Wt: [in, out], no bias        gains one (becomes addmm) when given a bias
    matmul(x, Wt)           Wt: [in, out]                 a Linear on tokens: its bias is the constant
                                                          add that follows (through reshapes that keep
                                                          the last dim), or a new add when given one

The passes that rescale weights read a LinearOp's weight in one layout, float64 `[out, in, *k]`
(a linear's is `[out, in]`), do their algebra there, and write it back with `with_weights`, which
picks the node form and keeps the stored weight's memory layout (its strides: an op reading it
runs the same kernel):

    BN(W x + b)          = (s W) x + (s b + t)                batchnorm_folding (s, t per output)
    c (W x + b)          = (c W) x + c b                      scale_folding
    W (s x + t) + b      = (W s) x + (b + W t)                rules/batchnorm_forward (s, t per input)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from ..graph import VIEW_OPS, add_constant, constant_value, insert_after, replace, shape_of

aten = torch.ops.aten
CONV = aten.convolution.default
LINEARS = {aten.addmm.default, aten.mm.default, aten.matmul.default}


@dataclass
class LinearOp:
    node: fx.Node
    x: fx.Node  # the data input
    weight: torch.Tensor  # float64, [out, in (/ groups), *k]
    bias: torch.Tensor | None  # float64, [out]
    stored: torch.Tensor  # the weight as the graph holds it (dtype, layout)
    bias_add: fx.Node | None = None  # matmul: the constant add that carries its bias

    @classmethod
    def of(cls, gm: fx.GraphModule, node: fx.Node) -> LinearOp | str:
        """The view of `node`, or why it is not a linear op with constant weights."""
        if not isinstance(node, fx.Node) or node.op != "call_function" or node.target not in (CONV, *LINEARS):
            return f"{getattr(node, 'name', node)} is not a conv or linear"
        if node.target == CONV:
            x, w_arg, b_arg = node.args[:3]
        elif node.target == aten.addmm.default:
            b_arg, x, w_arg = node.args[:3]
        else:
            (x, w_arg), b_arg = node.args[:2], None
        w = constant_value(gm, w_arg)
        b = constant_value(gm, b_arg) if b_arg is not None else None
        if not isinstance(w, torch.Tensor) or (b_arg is not None and not isinstance(b, torch.Tensor)):
            return f"{node.name}'s weights are computed at run time"
        if node.target != CONV and w.dim() != 2:
            return f"{node.name} multiplies by a batch of matrices"
        bias_add = _bias_add(gm, node, w.shape[1]) if node.target == aten.matmul.default else None
        if bias_add is not None:
            b = constant_value(gm, bias_add.args[1])
        w64 = w.detach().to(torch.float64)
        if node.target == CONV and node.args[6]:
            if node.args[8] != 1:
                return f"{node.name} is a grouped transposed convolution"
            w64 = w64.transpose(0, 1)
        elif node.target != CONV:
            w64 = w64.t()
        return cls(node, x, w64, None if b is None else b.detach().to(torch.float64), w, bias_add)

    def with_weights(self, gm: fx.GraphModule, weight: torch.Tensor,
                     bias: torch.Tensor | None) -> tuple[fx.Node, fx.Node, fx.Node | None]:
        """The op computing `weight x + bias` (float64, this view's layout) in the graph: this node with new
        constants (an mm given a bias becomes an addmm, a matmul gets or updates its bias add);
        returns (the op, its weight constant, its bias constant)."""
        node, target = self.node, self.node.target
        if target == CONV and node.args[6]:
            weight = weight.transpose(0, 1)
        elif target != CONV:
            weight = weight.t()
        stored = torch.empty_like(self.stored).copy_(weight.detach())  # the stored weight's dtype and strides
        w = add_constant(gm, stored, "w", before=node)
        b = None if bias is None else add_constant(gm, bias.detach().to(self.stored.dtype), "b", before=node)
        if target == CONV:
            node.args = (node.args[0], w, b, *node.args[3:])
        elif target == aten.addmm.default:
            node.args = (b, node.args[1], w, *node.args[3:])
        elif target == aten.mm.default and b is not None:
            with node.graph.inserting_before(node):
                addmm = node.graph.call_function(aten.addmm.default, (b, self.x, w))
            return replace(node, addmm), w, b
        else:
            node.args = (node.args[0], w)
            if self.bias_add is not None and b is not None:
                self.bias_add.args = (self.bias_add.args[0], b)
            elif b is not None:
                insert_after(node, aten.add.Tensor, (node, b))
        return node, w, b


def _bias_add(gm: fx.GraphModule, node: fx.Node, out: int) -> fx.Node | None:
    """The constant [out] bias add that alone reads `node` (behind reshapes that keep the last dim)."""
    walk = node
    while len(walk.users) == 1 and next(iter(walk.users)).target in VIEW_OPS and \
            (shape_of(next(iter(walk.users))) or (0,))[-1] == out:
        walk = next(iter(walk.users))
    users = list(walk.users)
    if len(users) == 1 and users[0].target == aten.add.Tensor and users[0].args[0] is walk:
        bias = constant_value(gm, users[0].args[1])
        if isinstance(bias, torch.Tensor) and bias.dim() == 1 and bias.shape[0] == out:
            return users[0]
    return None


def per_out(v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A per-output-channel vector shaped to scale `weight` ([out, in, *k])."""
    return v.reshape(-1, *[1] * (weight.dim() - 1))


def per_in(v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A per-input-channel vector shaped to scale `weight` ([out, in, *k])."""
    return v.reshape(1, -1, *[1] * (weight.dim() - 2))
