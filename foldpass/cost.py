"""Cost model: multiply-accumulates (MACs) per sample, from shapes.

conv: out_numel * (C_in / groups) * prod(kernel)     linear/mm: M * N * K
batch norm, elementwise add/sub/mul/div: one per output element
avg pool: one per window element; mean / adaptive avg pool: one per input element
reshapes, pads, resampling, slicing: zero (they move data, they do no arithmetic)
A dense Gemm R^n -> R^m costs m * n.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx

from .graph import attr, op_name
from .shapes import ShapeInfo

_ELEMENTWISE = {"add", "sub", "mul", "div", "neg", "relu", "_native_batch_norm_legit_no_training",
                "_native_batch_norm_legit_functional", "hardtanh", "sigmoid", "tanh", "clamp", "rsub"}
_PER_INPUT = {"mean", "sum", "_adaptive_avg_pool2d", "adaptive_avg_pool2d"}


def _numel(shape) -> int:
    return math.prod(shape)


def node_macs(node: fx.Node, shapes: dict[fx.Node, ShapeInfo]) -> int:
    """MACs of one node for one sample (0 for nodes without arithmetic or without shapes)."""
    info = shapes.get(node)
    name = op_name(node)
    if name == "_native_batch_norm_legit_no_training":  # its value is the getitem; count the input
        info = shapes.get(node.args[0])
    if info is None:
        return 0
    batch = info.batches[0]
    out = _numel(info.shape)
    if name == "convolution":
        w_shape = _attr_shape(node.args[1])  # [C_out, C_in / groups, *kernel]  (transposed: [C_in, C_out / groups, ...])
        if node.args[6]:  # transposed: every input element meets C_out / groups * prod(kernel) weights
            return _numel(shapes[node.args[0]].shape) * w_shape[1] * _numel(w_shape[2:]) // batch
        return out * w_shape[1] * _numel(w_shape[2:]) // batch
    if name in ("addmm", "mm", "bmm", "matmul"):
        a = node.args[1] if name == "addmm" else node.args[0]
        return out * _attr_or_value_shape(a, shapes)[-1] // batch
    if name == "avg_pool2d":
        return out * _numel(node.args[1]) // batch
    if name in _PER_INPUT:
        src = shapes.get(node.args[0])
        return _numel(src.shape) // batch if src else 0
    if name in _ELEMENTWISE:
        return out // batch
    return 0


def _attr_shape(node: fx.Node) -> tuple[int, ...]:
    value = attr(node.graph.owning_module, node.target) if node.op == "get_attr" else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else ()


def _attr_or_value_shape(node: fx.Node, shapes: dict[fx.Node, ShapeInfo]) -> tuple[int, ...]:
    return shapes[node].shape if node in shapes else _attr_shape(node)


def graph_macs(gm: fx.GraphModule, shapes: dict[fx.Node, ShapeInfo]) -> int:
    return sum(node_macs(n, shapes) for n in gm.graph.nodes if n.op == "call_function")


def gemm_macs(n_in: int, n_out: int) -> int:
    return n_in * n_out
