"""Constant propagation: op(constants...)  ->  one constant.

    f(c1, ..., ck)  ->  C          with C = f(c1, ..., ck) evaluated once, here

A node is constant when every tensor it reads is a parameter, buffer or an earlier constant
(`1 - t`, `t / 3`, `permute(fc.weight)`, `w[1]`). Only the frontier is materialized -- constants
that a data-dependent node reads -- and each is evaluated exactly as the runtime would have
(same op, same dtype), so the result is bit-for-bit what the original computed.
A constant that would be larger than the tensors it is computed from (an `expand`) is left as is,
unless it is built by a tensor-creating op (`zeros`, `full`, `arange`, an ONNX node passed through)
and is at most GENERATED_LIMIT elements: a mask built from sizes (`zeros`, slices, `masked_fill`:
Swin's shifted-window mask), which the runtime would otherwise rebuild on every call.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ..graph import add_constant, ancestors, attr, drop_unused_attrs
from .base import Notes, PassResult
from .context import PassContext

NAME = "constant_propagation"
GENERATED_LIMIT = 2**18  # elements (1 MiB in float32)
_GENERATORS = {"full", "zeros", "ones", "arange", "new_zeros", "new_ones", "new_full", "full_like", "zeros_like",
               "ones_like", "scalar_tensor", "onnx_node"}

_IMPURE = {"rand", "randn", "rand_like", "randn_like", "bernoulli", "dropout", "native_dropout",
           "empty", "empty_like", "uniform", "normal", "randint", "randperm"}


def _is_pure(node: fx.Node) -> bool:
    target = node.target
    if target is operator.getitem:
        return True
    if isinstance(target, torch._ops.OpOverload):
        base = target._schema.name.split("::")[-1]
        return base not in _IMPURE and not target._schema.is_mutable
    return False


def constant_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose value does not depend on any graph input."""
    const: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            const.add(node)
        elif node.op == "call_function" and _is_pure(node):
            if all(arg in const for arg in node.all_input_nodes):
                const.add(node)
    return const


def _materialize(gm: fx.GraphModule, node: fx.Node, env: dict[fx.Node, object]) -> object:
    """The value of a constant node, its inputs evaluated first (an explicit stack: chains of any length)."""
    stack = [node]
    while stack:
        current = stack[-1]
        if current in env:
            stack.pop()
            continue
        missing = [n for n in current.all_input_nodes if n not in env]
        if missing:
            stack.extend(missing)
            continue
        stack.pop()
        if current.op == "get_attr":
            env[current] = attr(gm, current.target)
        else:
            args, kwargs = fx.node.map_arg((current.args, current.kwargs), env.__getitem__)
            with torch.no_grad():
                env[current] = current.target(*args, **kwargs)
    return env[node]


def constant_propagation(gm: fx.GraphModule, ctx: PassContext | None = None) -> PassResult:
    """Replaces every constant subexpression that data-dependent nodes read by one precomputed tensor."""
    notes = Notes(NAME)
    const = (ctx or PassContext()).constants(gm)
    env: dict[fx.Node, object] = {}
    folded: dict[str, int] = {}
    for node in list(gm.graph.nodes):
        if node not in const or node.op == "get_attr" or not any(u not in const for u in node.users):
            continue
        value = _materialize(gm, node, env)
        if not isinstance(value, torch.Tensor):
            continue  # tuples (a getitem will fold) or Python numbers (already literals downstream)
        above = ancestors(node)
        leaves = [attr(gm, n.target) for n in above if n.op == "get_attr"]
        # every tensor it reads counts, integer ones too: efficientvit's per-head attention bias is a
        # gather of 64 biases by a 256-entry index; materialized, it replaces both (counting the
        # floating weights alone kept 24 gathers and adds in the file)
        sources = sum(t.numel() for t in leaves if isinstance(t, torch.Tensor))
        generated = value.numel() <= GENERATED_LIMIT and _builds_a_tensor((node, *above))
        if value.numel() > max(sources, 1) and not generated:
            notes.declined(f"kept {node.name}: its value ({value.numel()} elements) is larger than the tensors it "
                           f"reads ({sources}); materializing it would grow the model", node.name)
            continue
        new = add_constant(gm, value, "const", before=node)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        name = node.name.rstrip("_0123456789") or node.name
        folded[name] = folded.get(name, 0) + 1
    if folded:
        drop_unused_attrs(gm)
        summary = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in sorted(folded.items()))
        notes.applied(f"precomputed {sum(folded.values())} constant subexpression(s): {summary}")
    return PassResult(gm, bool(folded), notes)


def _builds_a_tensor(nodes) -> bool:
    """Whether a constant subexpression (its nodes) creates a tensor (rather than broadcasting a weight)."""
    return any(n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
               and n.target._schema.name.split("::")[-1] in _GENERATORS for n in nodes)
