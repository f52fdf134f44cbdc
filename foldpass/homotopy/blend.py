"""The skip-connection homotopy (paper, Section 4): blends whose weight t training drives to 0.

Convention, used everywhere in foldpass:

    layer input = (1 - t) * branch + t * shortcut

t = 0 is a plain feed-forward network (the skip is gone), t = 0.5 the usual residual sum up to
a factor 2, and t = 1 cuts the branch out. The paper's text and its Figure 2 discussion use this
reading; its eq. 23 prints the two roles swapped (t * x^(i-1) + (1 - t) * x^(j)).

t is a registered buffer, so it is saved with the weights, and at t == 0 `foldpass optimize`
removes the shortcut and everything only it reads.

`blend_residuals(model, t0)` turns the residual adds of an existing network (torchvision
ResNet's BasicBlock / Bottleneck, or any fx-traceable model) into blends. With `exact=True`
(the default) each blend carries the scales that keep a pretrained network's function at t0:

    (1 - t) * (1 / (1 - t0)) * branch + t * (1 / t0) * shortcut   ==   branch + shortcut   at t = t0

bit for bit at t0 = 0.5 (the scales are 2 and 1 * 2 = 2 exactly), to a rounding otherwise. At
t = 0 what is left is `branch * 1 / (1 - t0)`, which foldpass's scale_folding pass puts into the
branch's last conv: nothing of the blend remains.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch import nn

from ..blend_weight import get_t, set_t  # noqa: F401 - re-exported: the homotopy API
from ..errors import InputError, first_line
from ..graph import ancestors


class Blend(nn.Module):
    """(1 - t) * branch_scale * branch + t * shortcut_scale * shortcut, t a buffer (scales default 1)."""

    def __init__(self, t: float = 0.5, branch_scale: float = 1.0, shortcut_scale: float = 1.0):
        super().__init__()
        self.register_buffer("t", torch.tensor(float(t)))
        self.branch_scale, self.shortcut_scale = float(branch_scale), float(shortcut_scale)

    def forward(self, branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        if self.branch_scale == 1.0 and self.shortcut_scale == 1.0:
            return (1 - self.t) * branch + self.t * shortcut
        return ((1 - self.t) * self.branch_scale) * branch + (self.t * self.shortcut_scale) * shortcut

    def extra_repr(self) -> str:
        scales = "" if self.branch_scale == self.shortcut_scale == 1.0 else \
            f", branch_scale={self.branch_scale:g}, shortcut_scale={self.shortcut_scale:g}"
        return f"t={self.t.item():g}{scales}"


class MultiBlend(nn.Module):
    """(1 - t) * branch + sum_k (t / K) * shortcut_k: the paper's eq. 10 weights, summing to 1."""

    def __init__(self, num_shortcuts: int, t: float = 0.5):
        super().__init__()
        self.num_shortcuts = num_shortcuts
        self.register_buffer("t", torch.tensor(float(t)))

    def forward(self, branch: torch.Tensor, *shortcuts: torch.Tensor) -> torch.Tensor:
        out = (1 - self.t) * branch
        for s in shortcuts:
            out = out + (self.t / self.num_shortcuts) * s
        return out

    def extra_repr(self) -> str:
        return f"shortcuts={self.num_shortcuts}, t={self.t.item():g}"


# ----------------------------------------------------------------------------- the converter

_ADDS = {operator.add, operator.iadd, torch.add}


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _ADDS:
        return len(node.args) == 2 and not node.kwargs and all(isinstance(a, fx.Node) for a in node.args)
    return node.op == "call_method" and node.target in ("add", "add_") and len(node.args) == 2 \
        and not node.kwargs and all(isinstance(a, fx.Node) for a in node.args)


def _ancestors(node: fx.Node, memo: dict) -> frozenset:
    if node not in memo:
        memo[node] = frozenset(ancestors(node))
    return memo[node]


def residual_roles(node: fx.Node, memo: dict | None = None) -> tuple[fx.Node, fx.Node] | str:
    """(branch, shortcut) of a residual add, or why the add is not one.

    The two operands fork from a common value; the shortcut is the side with fewer ops after the
    fork (none for an identity skip, a 1x1 conv + BN for a projection), the branch the other.
    """
    memo = {} if memo is None else memo
    a, b = node.args
    anc_a, anc_b = _ancestors(a, memo), _ancestors(b, memo)
    common = anc_a & anc_b
    if not common:
        return "its operands share no input"
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    fork = max(common, key=order.__getitem__)
    fork_anc = _ancestors(fork, memo)

    def ops(anc):
        return sum(1 for n in anc - fork_anc if n.op in ("call_module", "call_function", "call_method"))

    len_a, len_b = ops(anc_a), ops(anc_b)
    if len_a == len_b:
        return f"both operands are {len_a} ops from their fork {fork.name}: no branch / shortcut to tell apart"
    return (a, b) if len_a > len_b else (b, a)


def blend_residuals(model: nn.Module, t: float = 0.5, exact: bool = True) -> fx.GraphModule:
    """Returns `model` with every residual add `branch + shortcut` replaced by a Blend at weight t.

    The model must be traceable by torch.fx.symbolic_trace (torchvision's ResNets are). With
    `exact=True`, t must lie in (0, 1) and the converted model computes what `model` computes
    at that t (see the module docstring); `exact=False` gives the paper's plain blend, as in
    training from scratch. The parameters are shared with `model`'s modules, not copied.
    """
    if exact and not 0.0 < t < 1.0:
        raise InputError(f"exact conversion needs 0 < t < 1 (the scales are 1 / (1 - t) and 1 / t); got t = {t}")
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:
        raise InputError(f"cannot convert: torch.fx.symbolic_trace failed on {type(model).__name__} "
                         f"({type(exc).__name__}: {first_line(exc)})") from exc
    memo: dict = {}
    count = 0
    for node in list(gm.graph.nodes):
        if not _is_add(node):
            continue
        roles = residual_roles(node, memo)
        if isinstance(roles, str):
            continue
        branch, shortcut = roles
        scales = (1.0 / (1.0 - t), 1.0 / t) if exact else (1.0, 1.0)
        name = f"blend{count}"
        gm.add_submodule(name, Blend(t, *scales))
        with gm.graph.inserting_after(node):
            blended = gm.graph.call_module(name, (branch, shortcut))
        node.replace_all_uses_with(blended)
        gm.graph.erase_node(node)
        count += 1
    if not count:
        raise InputError(f"{type(model).__name__} has no residual add to blend")
    gm.graph.lint()
    gm.recompile()
    gm.training = model.training
    return gm


def blends(model: nn.Module) -> list[nn.Module]:
    """The model's Blend / MultiBlend modules."""
    return [m for m in model.modules() if isinstance(m, (Blend, MultiBlend))]
