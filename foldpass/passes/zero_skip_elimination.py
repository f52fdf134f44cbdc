"""Zero-skip elimination: a blend whose weight is exactly 0 loses that input, and its branch.

    (1-t)*b + t*s,  t == 0   ->   b          (the t = 0 skip, and the shortcut behind it, vanish)

Rules, applied to each add / sub / mul / div node; `0` and `1` are exact constants (a literal,
or a tensor of zeros / ones, as constant propagation leaves `1 - t` and `t`):

    x * 0, 0 * x   ->   0        exact for finite x; a branch whose weights are not finite is kept
    x + 0, 0 + x   ->   x        only where the result has x's shape and dtype (no broadcast)
    x - 0          ->   x
    x * 1, 1 * x   ->   x
    x / 1          ->   x

A `0` is never materialized: `x * 0` is only recognized as zero, and disappears when the add
that reads it is rewritten; dead-code elimination then removes the whole shortcut branch
(its downsample conv and batch norm included). Only an exact 0 counts: t = 1e-9 keeps the skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.fx as fx

from ..graph import ancestors, attr, constant_value, drop_unused_attrs
from ..shapes import ShapeInfo
from .base import Notes, PassResult
from .context import PassContext

NAME = "zero_skip_elimination"
aten = torch.ops.aten


def _is_const(gm: fx.GraphModule, arg, value: float) -> bool:
    """True if `arg` is the exact constant `value` everywhere (a Python number or a constant tensor)."""
    v = constant_value(gm, arg)
    if isinstance(v, bool) or v is None:
        return False
    if isinstance(v, (int, float)):
        return v == value
    return isinstance(v, torch.Tensor) and v.numel() > 0 and bool((v == value).all())


def is_zero(gm: fx.GraphModule, arg) -> bool:
    """`arg` is exactly zero: the constant 0, or a product with a zero factor, or its negation.
    A worklist, not recursion: a chain of any length (1,500 negations) is walked, each node once."""
    todo, seen = [arg], set()
    while todo:
        a = todo.pop()
        if isinstance(a, fx.Node):
            if a in seen:
                continue
            seen.add(a)
        if _is_const(gm, a, 0.0):
            return True
        if isinstance(a, fx.Node) and a.op == "call_function":
            if a.target == aten.mul.Tensor:  # 0 * y = y * 0 = 0
                todo.extend(a.args[:2])
            elif a.target == aten.neg.default:  # -0 = 0
                todo.append(a.args[0])
    return False


def is_one(gm: fx.GraphModule, arg) -> bool:
    return _is_const(gm, arg, 1.0)


@dataclass(frozen=True)
class Rule:
    """`pattern` on `op` -> the argument the node is replaced by (index into args), if `when` holds."""

    op: object
    pattern: str
    keep: int  # index of the argument that replaces the node
    when: Callable[[fx.GraphModule, tuple], bool]


RULES = (
    Rule(aten.add.Tensor, "x + 0 -> x", 0, lambda gm, a: is_zero(gm, a[1])),  # x + 0 = x
    Rule(aten.add.Tensor, "0 + x -> x", 1, lambda gm, a: is_zero(gm, a[0])),  # 0 + x = x
    Rule(aten.sub.Tensor, "x - 0 -> x", 0, lambda gm, a: is_zero(gm, a[1])),  # x - 0 = x
    Rule(aten.mul.Tensor, "x * 1 -> x", 0, lambda gm, a: is_one(gm, a[1])),  # x * 1 = x
    Rule(aten.mul.Tensor, "1 * x -> x", 1, lambda gm, a: is_one(gm, a[0])),  # 1 * x = x
    Rule(aten.div.Tensor, "x / 1 -> x", 0, lambda gm, a: is_one(gm, a[1])),  # x / 1 = x
)


def _same_value_type(node: fx.Node, keep, shapes: dict[fx.Node, ShapeInfo]) -> str | None:
    """Why `keep` cannot stand in for `node` (a broadcast or a dtype change), or None if it can."""
    if not isinstance(keep, fx.Node):
        return "the kept operand is a constant, not a tensor"
    out, kept = shapes.get(node), shapes.get(keep)
    if out is None or kept is None:
        return "shapes unknown"
    if out.shapes != kept.shapes:
        return f"the result broadcasts {kept.shape} to {out.shape}"
    if out.dtype != kept.dtype:
        return f"the result promotes {kept.dtype} to {out.dtype}"
    return None


def _dead_branch(node: fx.Node, keep: fx.Node) -> set[fx.Node]:
    """Nodes that become dead when `node` is replaced by `keep` (the dropped operand's cone)."""
    dead: set[fx.Node] = {node}
    changed = True
    candidates = set()
    for a in node.all_input_nodes:
        if a is not keep and a.op != "placeholder":
            candidates |= ancestors(a, within=lambda n: n.op not in ("placeholder", "output"))
    while changed:
        changed = False
        for n in candidates - dead:
            if n is not keep and all(u in dead for u in n.users):
                dead.add(n)
                changed = True
    return dead - {node}


def _non_finite_weights(gm: fx.GraphModule, nodes: set[fx.Node]) -> list[str]:
    bad = []
    for n in nodes:
        if n.op == "get_attr":
            value = attr(gm, n.target)
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
                bad.append(n.target)
    return sorted(bad)


def zero_skip_elimination(gm: fx.GraphModule, ctx: PassContext | None = None) -> PassResult:
    """Replaces `x + 0`, `x - 0`, `x * 1`, `x / 1` by x, where 0 may be `s * 0`; the zeroed branch dies."""
    notes = Notes(NAME)
    shapes = (ctx or PassContext()).shapes(gm)
    rewrites = 0
    removed_ops: dict[str, int] = {}
    applied: dict[str, int] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        for rule in RULES:
            if node.target != rule.op or not rule.when(gm, node.args):
                continue
            if "alpha" in node.kwargs and rule.pattern.startswith("0 +"):
                continue  # 0 + alpha*x is not x
            keep = node.args[rule.keep]
            why = _same_value_type(node, keep, shapes)
            if why:
                notes.declined(f"{rule.pattern} not applied: {why}", node.name)
                continue
            dead = _dead_branch(node, keep)
            bad = _non_finite_weights(gm, dead)
            if bad:
                notes.declined(f"{rule.pattern} not applied: the dropped branch reads non-finite weights "
                               f"({', '.join(bad[:3])}), where x * 0 is NaN, not 0", node.name)
                continue
            node.replace_all_uses_with(keep)
            for n in dead:
                if n.op == "call_function":
                    name = n.target._schema.name.split("::")[-1] if hasattr(n.target, "_schema") else "getitem"
                    if name != "getitem":
                        removed_ops[name] = removed_ops.get(name, 0) + 1
            gm.graph.erase_node(node)
            rewrites += 1
            applied[rule.pattern] = applied.get(rule.pattern, 0) + 1
            break
    if rewrites:
        drop_unused_attrs(gm)
        notes.applied("rewrote " + ", ".join(f"{p} (x{k})" for p, k in applied.items()))
        if removed_ops:
            dead_summary = ", ".join(f"{k} x{v}" for k, v in sorted(removed_ops.items()))
            notes.applied(f"removed the dead branches: {dead_summary}")
    return PassResult(gm, rewrites > 0, notes)
