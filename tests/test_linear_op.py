"""LinearOp (rules/linear_op.py): every conv / linear form read in one layout and written back."""

import pytest
import torch
from torch import nn

from foldpass import trace
from foldpass.graph import count_ops
from foldpass.passes import constant_propagation, linear_matmul
from foldpass.rules.linear_op import LinearOp

aten = torch.ops.aten


class TokenLinear(nn.Module):  # x @ W^T (+ b) on tokens: after linear_matmul a matmul, its bias the add after it
    def __init__(self, bias: bool):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 5))
        self.b = nn.Parameter(torch.randn(6)) if bias else None

    def forward(self, x):
        y = torch.matmul(x.flatten(2).transpose(1, 2), self.w.t())
        return y if self.b is None else y + self.b


CASES = {
    "conv": (nn.Conv2d(4, 6, 3), (2, 4, 8, 8)),
    "grouped conv, no bias": (nn.Conv2d(4, 6, 3, groups=2, bias=False), (2, 4, 8, 8)),
    "transposed conv": (nn.ConvTranspose2d(4, 6, 3), (2, 4, 8, 8)),
    "linear (addmm)": (nn.Linear(5, 6), (2, 5)),
    "linear without bias (mm)": (nn.Linear(5, 6, bias=False), (2, 5)),
    "token linear (matmul)": (TokenLinear(bias=False), (2, 5, 3, 3)),
    "token linear + bias (matmul, add)": (TokenLinear(bias=True), (2, 5, 3, 3)),
}


def _traced(module, x):
    return linear_matmul(constant_propagation(trace(module, (x,))).module).module


def _linear_node(gm):
    return next(n for n in gm.graph.nodes if n.op == "call_function" and n.target in (
        aten.convolution.default, aten.addmm.default, aten.mm.default, aten.matmul.default))


@pytest.mark.parametrize("case", CASES)
def test_a_rescaled_op_computes_the_rescaled_map(case):
    """2 (W x + b) + 1 = (2 W) x + (2 b + 1): the graph computes it once the weights are written,
    in the stored weight's layout, and the op reads them back."""
    module, shape = CASES[case]
    module = module.eval()
    x = torch.randn(*shape)
    gm = _traced(module, x)
    node = _linear_node(gm)
    op = LinearOp.of(gm, node)
    assert not isinstance(op, str), op
    out = op.weight.shape[0]
    assert out == 6 and op.weight.dtype == torch.float64
    bias = torch.zeros(out, dtype=torch.float64) if op.bias is None else op.bias
    with torch.no_grad():
        want = 2 * module(x).double() + 1
    new, w_node, _ = op.with_weights(gm, 2 * op.weight, 2 * bias + 1)
    gm.graph.lint()
    gm.recompile()
    with torch.no_grad():
        got = gm(x).double()
    assert (got - want).abs().max() < 1e-4 * want.abs().max()
    stored = getattr(gm, w_node.target)
    assert stored.stride() == op.stored.stride() and stored.dtype == op.stored.dtype  # the same layout, the same kernel
    again = LinearOp.of(gm, new)
    assert torch.allclose(again.weight, 2 * op.weight, rtol=1e-6) and torch.allclose(again.bias, 2 * bias + 1, rtol=1e-6)


def test_an_mm_given_a_bias_becomes_one_addmm_and_a_token_linear_one_add():
    for case, want in (("linear without bias (mm)", {"addmm": 1}), ("token linear (matmul)", {"add": 1, "matmul": 1})):
        module, shape = CASES[case]
        gm = _traced(module.eval(), torch.randn(*shape))
        op = LinearOp.of(gm, _linear_node(gm))
        op.with_weights(gm, op.weight, torch.ones(6, dtype=torch.float64))
        gm.graph.eliminate_dead_code()
        ops = count_ops(gm)
        assert {k: ops.get(k, 0) for k in want} == want and "mm" not in ops, (case, ops)


def test_a_token_linear_with_a_bias_keeps_one_add():
    module, shape = CASES["token linear + bias (matmul, add)"]
    gm = _traced(module.eval(), torch.randn(*shape))
    op = LinearOp.of(gm, _linear_node(gm))
    assert op.bias_add is not None and torch.allclose(op.bias, module.b.double())
    op.with_weights(gm, op.weight, op.bias + 1)
    assert count_ops(gm)["add"] == 1


def test_what_it_declines_and_why():
    gm = trace(nn.ConvTranspose2d(4, 6, 3, groups=2).eval(), (torch.randn(1, 4, 8, 8),))
    assert "grouped transposed" in LinearOp.of(gm, _linear_node(gm))
    relu = next(n for n in trace(nn.ReLU(), (torch.randn(1, 3),)).graph.nodes if n.op == "call_function")
    assert "not a conv or linear" in LinearOp.of(None, relu)

    class RunTimeWeight(nn.Module):
        def forward(self, x, w):
            return nn.functional.conv2d(x, w)

    gm = trace(RunTimeWeight(), (torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)))
    assert "computed at run time" in LinearOp.of(gm, _linear_node(gm))
