"""fp16 output: the graph computes in float16, its weights are stored in float16.

    to_half(gm)                 x -> Cast(float16) -> the graph, weights in float16 -> Cast(float32) -> y
    to_half(gm, half_io=True)   the same without the two Casts: the model takes and returns float16

Folding already happened in float64 on the float32 model; only the result is rounded, once, here.
The verification gate then compares with the float32 original at float16's tolerance
(verification.effective_rtol: 8 machine epsilons, 7.8e-3 of each output's scale).
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx

aten = torch.ops.aten

PRECISIONS = ("fp32", "fp16")


def to_half(gm: fx.GraphModule, half_io: bool = False) -> fx.GraphModule:
    """A float16 copy of `gm` (see the module docstring); `gm` is not changed."""
    half = copy.deepcopy(gm)
    for name, value in list(half.named_buffers()) + list(half.named_parameters()):
        if value.is_floating_point():
            owner, _, leaf = name.rpartition(".")
            module = half.get_submodule(owner) if owner else half
            if isinstance(value, torch.nn.Parameter):
                setattr(module, leaf, torch.nn.Parameter(value.detach().half(), requires_grad=False))
            else:
                setattr(module, leaf, value.detach().half())
    graph = half.graph
    if not half_io:
        for node in list(graph.nodes):
            if node.op == "placeholder":
                with graph.inserting_after(node):
                    cast = graph.call_function(aten._to_copy.default, (node,), {"dtype": torch.float16})
                node.replace_all_uses_with(cast, delete_user_cb=lambda user: user is not cast)
        output = next(n for n in graph.nodes if n.op == "output")

        def back(arg):
            with graph.inserting_before(output):
                return graph.call_function(aten._to_copy.default, (arg,), {"dtype": torch.float32})

        output.args = fx.node.map_arg(output.args, back)
    for node in graph.nodes:  # ops that name float32 themselves (full, arange, _to_copy) now name float16
        if node.kwargs.get("dtype") == torch.float32 and not (node.target is aten._to_copy.default and
                                                                all(u.op == "output" for u in node.users)):
            node.kwargs = {**node.kwargs, "dtype": torch.float16}
    graph.lint()
    half.recompile()
    return half
