"""The ONNX form onnxruntime runs fastest, where torch.onnx's exporter writes another of the same
value. A lowering after export (the IR has no such ops), each rule exact:

    ReduceMean(x, axes = all spatial axes, keepdims=1)  ->  GlobalAveragePool(x)
        mean over H, W of an N x C x H x W tensor, kept as N x C x 1 x 1: the definition of
        GlobalAveragePool. torch's older TorchScript exporter writes the squeeze-excitation pools
        of efficientnet / mobilenet this way; onnxruntime's CPU provider has a faster NCHWc kernel
        for it than for ReduceMean (issue 28: efficientnet_b0 0.955x without it).

The verification gate then checks the written file against the original, as for every fold.
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper


def _constant_ints(model: onnx.ModelProto, name: str) -> list[int] | None:
    """The integer values of an initializer or Constant node named `name` (None if not constant)."""
    for t in model.graph.initializer:
        if t.name == name:
            return [int(v) for v in numpy_helper.to_array(t).reshape(-1)]
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return [int(v) for v in numpy_helper.to_array(a.t).reshape(-1)]
                if a.name == "value_ints":
                    return list(a.ints)
    return None


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """The rank of every float32 value ONNX shape inference knows (onnxruntime's CPU provider has a
    GlobalAveragePool kernel for float32; other types keep their ReduceMean)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - no ranks: no rewrite, never a failure
        return {}
    ranks = {}
    for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if v.type.tensor_type.HasField("shape") and v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    return ranks


def _spatial_mean(model: onnx.ModelProto, node: onnx.NodeProto, ranks: dict[str, int]) -> bool:
    """ReduceMean over every axis from 2 on, dims kept, of a tensor of rank >= 3."""
    if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx"):
        return False
    attrs = {a.name: a for a in node.attribute}
    if "keepdims" in attrs and attrs["keepdims"].i != 1:
        return False
    rank = ranks.get(node.input[0])
    if rank is None or rank < 3:
        return False
    axes = list(attrs["axes"].ints) if "axes" in attrs else (
        _constant_ints(model, node.input[1]) if len(node.input) > 1 and node.input[1] else None)
    if not axes:  # absent axes: all of them (batch and channels too), not a pool
        return False
    return sorted(a % rank for a in axes) == list(range(2, rank))


def global_average_pools(model: onnx.ModelProto) -> int:
    """Rewrites each spatial mean with kept dims into GlobalAveragePool, in place; returns how many
    (the axes constants they leave unused go with the exporter's tidy-up)."""
    ranks = _ranks(model)
    count = 0
    for node in model.graph.node:
        if _spatial_mean(model, node, ranks):
            x = node.input[0]
            node.op_type = "GlobalAveragePool"
            del node.input[:]
            node.input.append(x)
            del node.attribute[:]
            count += 1
    return count
