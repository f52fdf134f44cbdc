"""The ONNX form onnxruntime runs fastest, where torch.onnx's exporter writes another of the same
value. A lowering after export (the IR has no such ops), each rule exact:

    ReduceMean(x, axes = all spatial axes, keepdims=1)  ->  GlobalAveragePool(x)
        mean over H, W of an N x C x H x W tensor, kept as N x C x 1 x 1: the definition of
        GlobalAveragePool. torch's older TorchScript exporter writes the squeeze-excitation pools
        of efficientnet / mobilenet this way; onnxruntime's CPU provider has a faster NCHWc kernel
        for it than for ReduceMean (issue 28: efficientnet_b0 0.955x without it).

    Reshape(x, [-1, K] or [0, K] or [0, -1])  ->  Flatten(x, axis=1)     where K = d1 * ... * dr-1
        the classifier's flatten before its Gemm: both give N x K in the same element order. The
        TorchScript exporter writes Flatten; torch.onnx's dynamo exporter a Reshape with a constant
        shape. The same speed under onnxruntime (both are views), one op fewer to read: the file
        says what the model does.

    x * (0.5 * (1 + Erf(x / sqrt(2))))  ->  (x * 0.5) * (1 + Erf(x / sqrt(2)))
    x * (0.5 * (1 + Tanh(...)))          ->  (x * 0.5) * (1 + Tanh(...))
        GELU (exact, and its tanh approximation) as torch.onnx's opset-18 translation writes it,
        reassociated into the form onnxruntime's GeluFusion / FastGeluFusion match (one kernel for
        five or eight elementwise ops; neither matches the exporter's order, both the TorchScript
        exporter's: maxvit_t's and the ViTs' MLPs). Multiplying by 0.5 is exact in binary floating
        point (outside the subnormal range), so both orders give the same value, whatever the rest.

The verification gate then checks the written file against the original, as for every fold.
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper


def _constant(model: onnx.ModelProto, name: str):
    """The value of an initializer or Constant node named `name`, as a numpy array (None if not constant)."""
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


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


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """The shape of every float32 value ONNX shape inference knows, a dimension None where it is not a
    number (onnxruntime's CPU provider has a GlobalAveragePool kernel for float32; other types keep
    their ReduceMean)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - no shapes: no rewrite, never a failure
        return {}
    shapes = {}
    for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if v.type.tensor_type.HasField("shape") and v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            shapes[v.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                   for d in v.type.tensor_type.shape.dim)
    return shapes


def _spatial_mean(model: onnx.ModelProto, node: onnx.NodeProto, shapes: dict) -> bool:
    """ReduceMean over every axis from 2 on, dims kept, of a tensor of rank >= 3."""
    if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx"):
        return False
    attrs = {a.name: a for a in node.attribute}
    if "keepdims" in attrs and attrs["keepdims"].i != 1:
        return False
    rank = len(shapes[node.input[0]]) if node.input[0] in shapes else None
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
    shapes = _shapes(model)
    count = 0
    for node in model.graph.node:
        if _spatial_mean(model, node, shapes):
            x = node.input[0]
            node.op_type = "GlobalAveragePool"
            del node.input[:]
            node.input.append(x)
            del node.attribute[:]
            count += 1
    return count


def _flattening(model: onnx.ModelProto, node: onnx.NodeProto, shapes: dict) -> bool:
    """A Reshape of a tensor of rank >= 2 into N x (everything else), dim 0 kept."""
    if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return False
    target, dims = _constant_ints(model, node.input[1]), shapes.get(node.input[0])
    if target is None or len(target) != 2 or dims is None or len(dims) < 2 or target[0] not in (-1, 0):
        return False
    if 0 in target and any(a.name == "allowzero" and a.i for a in node.attribute):
        return False  # a 0 in the shape then means size 0, not "keep this dim"
    if target == [0, -1]:
        return True  # dim 0 kept, the rest in one
    rest = dims[1:]
    if target[1] <= 0 or None in rest:
        return False
    product = 1
    for d in rest:
        product *= d
    return product == target[1]


def flattens(model: onnx.ModelProto) -> int:
    """Rewrites each Reshape into N x (the rest) as Flatten(axis=1), in place; returns how many."""
    shapes = _shapes(model)
    count = 0
    for node in model.graph.node:
        if _flattening(model, node, shapes):
            del node.input[1:]
            del node.attribute[:]
            node.op_type = "Flatten"
            node.attribute.append(onnx.helper.make_attribute("axis", 1))
            count += 1
    return count


def _is_scalar(model: onnx.ModelProto, name: str, value: float) -> bool:
    c = _constant(model, name)
    return c is not None and c.size == 1 and c.dtype.kind == "f" and float(c.reshape(-1)[0]) == float(
        c.dtype.type(value))


def gelu_forms(model: onnx.ModelProto) -> int:
    """Reassociates each `x * (0.5 * (1 + Erf(.) or Tanh(.)))` into `(x * 0.5) * (1 + ...)`, in place;
    returns how many."""
    nodes = model.graph.node
    producer = {o: n for n in nodes for o in n.output}
    readers: dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1

    def made_by(name: str, *ops: str):
        n = producer.get(name)
        return n if n is not None and n.op_type in ops and n.domain in ("", "ai.onnx") else None

    count = 0
    for outer in nodes:
        if outer.op_type != "Mul" or outer.domain not in ("", "ai.onnx") or len(outer.input) != 2:
            continue
        for k in (0, 1):
            x, inner = outer.input[1 - k], made_by(outer.input[k], "Mul")
            if inner is None or readers.get(inner.output[0]) != 1 or x in inner.input:
                continue
            half = next((i for i in inner.input if _is_scalar(model, i, 0.5)), None)
            add = made_by(inner.input[1] if inner.input[0] == half else inner.input[0], "Add") if half else None
            if add is None or readers.get(add.output[0]) != 1:
                continue
            squash = next((e for e in (made_by(i, "Erf", "Tanh") for i in add.input) if e is not None), None)
            if squash is None or not any(_is_scalar(model, i, 1.0) for i in add.input if i != squash.output[0]):
                continue
            inner.input[:] = [x, half]  # x * 0.5
            outer.input[:] = [inner.output[0], add.output[0]]  # (x * 0.5) * (1 + squash)
            count += 1
            break
    return count
