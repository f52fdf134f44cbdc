"""A network's residual blocks as blends in a graph, and the two ways compress takes a block apart:

    plain_at_zero   the skip leaves (deskip's end):     (1-t)*s_b*b + t*s_s*s, t == 0  ->  s_b*b
    drop_blocks     the branch leaves (depth's rewrite):  (1-t)*s_b*b + t*s_s*s        ->  s
                    the block becomes its shortcut at scale 1: no op is left of it (a scale t*s_s
                    or the branch's mean would stay as a Mul or BatchNormalization node between two
                    ReLUs, measured at 0.70x of the plain shortcut at batch 1 on the paper's ResNet34);
                    the batch norms after it are re-estimated, then fine-tuning does the rest

Both return a GraphModule of the model's own layers (the same qualified names, the unused ones
deleted), so that Torch-Pruning, the checkpoint's replay and further steps see ordinary modules.
"""

from __future__ import annotations

import operator

import torch.fx as fx
from torch import nn


class _BlendLeaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from ..homotopy.blend import Blend, MultiBlend

        return isinstance(m, (Blend, MultiBlend)) or super().is_leaf_module(m, qualname)


def _traced(model: nn.Module) -> fx.GraphModule:
    return fx.GraphModule(model, _BlendLeaves().trace(model))


def _blend_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_module" and hasattr(gm.get_submodule(n.target), "t")]


def _cleaned(gm: fx.GraphModule) -> fx.GraphModule:
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval()


def with_blends(model: nn.Module) -> nn.Module:
    """The model if it has blends (a weight t), else its residual adds as exact blends at t = 0.5
    (blend_residuals: the same function); InputError where it has no residual add."""
    from ..homotopy.blend import blend_residuals, get_t

    return model if get_t(model) is not None else blend_residuals(model, 0.5)


def residual_blocks(model: nn.Module) -> list[str]:
    """The qualified names of the model's two-input blends (Blend), in graph order: the blocks drop_blocks takes."""
    from ..homotopy.blend import Blend

    gm = _traced(model)
    return [n.target for n in _blend_nodes(gm) if isinstance(gm.get_submodule(n.target), Blend)]


def drop_blocks(model: nn.Module, names) -> fx.GraphModule:
    """The model with each named blend replaced by its shortcut, its branch gone from the graph."""
    from .steps import Decline

    names = set(names)
    gm = _traced(model)
    found = set()
    for node in _blend_nodes(gm):
        if node.target in names:
            node.replace_all_uses_with(node.args[1])  # the shortcut
            gm.graph.erase_node(node)
            found.add(node.target)
    if names - found:
        raise Decline(f"no residual block named {', '.join(sorted(names - found))}")
    return _cleaned(gm)


def plain_at_zero(model: nn.Module) -> fx.GraphModule:
    """A blended network at t = 0 as a plain feed-forward GraphModule of the same layers:
    (1-t)*s_b*b + t*s_s*s, t == 0  ->  s_b*b  (a MultiBlend: b). The shortcut branches leave the graph."""
    from ..homotopy.blend import Blend
    from .steps import Decline

    gm = _traced(model)
    for node in _blend_nodes(gm):
        blend = gm.get_submodule(node.target)
        if float(blend.t) != 0.0:
            raise Decline(f"{node.target} is at t = {float(blend.t):g}, not 0")
        scale = blend.branch_scale if isinstance(blend, Blend) else 1.0
        branch = node.args[0]
        if scale != 1.0:
            with gm.graph.inserting_before(node):
                branch = gm.graph.call_function(operator.mul, (branch, scale))
        node.replace_all_uses_with(branch)
        gm.graph.erase_node(node)
    return _cleaned(gm)
