"""ONNX -> the fx IR: an .onnx file becomes an nn.Module that torch.export traces like any other.

`OnnxModule(model)` keeps the float initializers and Constant tensors as buffers (constants in the
traced graph, so constant propagation, zero-skip elimination, BN folding and region folding apply
to them exactly as to a PyTorch model) and integer ones (shapes, axes, pads) as Python values.
Its forward runs the ONNX nodes in order through `ONNX_OPS`, one torch function per op type.

Why not a converter such as onnx2torch (1.5.15, evaluated): it has no converter for opset-18
Resize and ReduceMean and refuses Reshape with allowzero=1, which torch.onnx's exporter writes for
every reshape; our own files could not go through it. A table of ~40 ops is short, and every
unsupported op is named in one error before any work.
"""

from __future__ import annotations

import inspect
import math
import os

import numpy as np
import onnx
import torch
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from .errors import InputError, first_line

_DTYPES = {1: torch.float32, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16, 6: torch.int32, 7: torch.int64,
           9: torch.bool}


def _ints(v) -> list[int]:
    if isinstance(v, torch.Tensor):
        raise InputError("an ONNX shape / axes / pads input is computed at run time; foldpass needs it constant")
    return [i if isinstance(i, torch.SymInt) else int(i) for i in (v if isinstance(v, (list, tuple)) else [v])]


def _pads(pads, spatial: int) -> list[int]:
    """ONNX [x1_begin, x2_begin, ..., x1_end, x2_end] -> F.pad's [last_begin, last_end, ...]."""
    pads = list(pads) if pads else [0] * 2 * spatial
    out = []
    for d in reversed(range(spatial)):
        out += [pads[d], pads[d + spatial]]
    return out


def _conv(x, w, b=None, strides=None, pads=None, dilations=None, group=1, auto_pad="NOTSET", kernel_shape=None):
    n = w.dim() - 2
    if auto_pad not in ("NOTSET", "VALID"):
        raise InputError(f"Conv auto_pad={auto_pad} is not supported; re-export with explicit pads")
    p = _pads(pads, n)
    symmetric = all(p[2 * i] == p[2 * i + 1] for i in range(n))
    if not symmetric:
        x = F.pad(x, p)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    padding = [p[2 * (n - 1 - d)] for d in range(n)] if symmetric else 0
    return conv(x, w, b, strides or 1, padding, dilations or 1, group)


def _pool(kind):
    def pool(x, kernel_shape, strides=None, pads=None, ceil_mode=0, count_include_pad=0, auto_pad="NOTSET",
             dilations=None, storage_order=0):
        n = len(kernel_shape)
        p = _pads(pads, n)
        if any(p[2 * i] != p[2 * i + 1] for i in range(n)) or auto_pad not in ("NOTSET", "VALID"):
            raise InputError(f"{kind} with asymmetric or automatic padding is not supported")
        padding = [p[2 * (n - 1 - d)] for d in range(n)]
        if kind == "MaxPool":
            return F.max_pool2d(x, kernel_shape, strides or kernel_shape, padding, dilations or 1, bool(ceil_mode))
        return F.avg_pool2d(x, kernel_shape, strides or kernel_shape, padding, bool(ceil_mode), bool(count_include_pad))
    return pool


def _gemm(a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0):
    a, b = (a.t() if transA else a), (b.t() if transB else b)
    if c is not None and alpha == 1.0 and beta == 1.0 and c.dim() <= 2:
        return torch.addmm(c, a, b)
    y = a @ b
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


def _reshape(x, shape, allowzero=0):
    shape = _ints(shape)
    if isinstance(x, list):  # a shape value: to a vector or a scalar (any other shape: onnxruntime's)
        if len(shape) > 1 or any(isinstance(v, list) for v in x):
            raise TypeError("a shape value reshaped to a matrix")
        return x[0] if not shape else x
    if not allowzero:
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _flatten(x, axis=1):
    return x.reshape(math.prod(x.shape[:axis]) if axis else 1, -1)


def _batchnorm(x, scale, bias, mean, var, epsilon=1e-5, momentum=0.9, training_mode=0, spatial=1, is_test=1):
    """Also opset 6-7's form: `spatial` (1, the only mode opset 9 kept) and `is_test`."""
    if spatial != 1 or training_mode:
        raise InputError("BatchNormalization with spatial=0 or training_mode=1 is not supported")
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, epsilon)


def _reduce(fn):
    def reduce(x, axes=None, keepdims=1, noop_with_empty_axes=0):
        axes = _ints(axes) if axes is not None else list(range(x.dim()))
        return fn(x, dim=axes, keepdim=bool(keepdims))
    return reduce


def _resize(x, roi=None, scales=None, sizes=None, mode="nearest", coordinate_transformation_mode="half_pixel",
            nearest_mode="round_prefer_floor", cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0,
            antialias=0, axes=None, keep_aspect_ratio_policy="stretch"):
    if isinstance(sizes, torch.Tensor) or axes is not None or x.dim() not in (3, 4, 5):
        raise InputError("Resize of computed sizes, on chosen axes or of this rank passes through")
    if sizes is not None and len(_ints(sizes)):
        size = _ints(sizes)
        if len(size) != x.dim() or any(a is not b and a != b for a, b in zip(size[:2], x.shape[:2])):
            raise InputError("Resize of the batch or channel axis passes through")
        kw = {"size": size[2:]}
    else:
        factors = [float(s) for s in (scales.tolist() if isinstance(scales, torch.Tensor) else scales)]
        if len(factors) != x.dim() or factors[:2] != [1.0, 1.0]:
            raise InputError("Resize of the batch or channel axis passes through")
        kw = {"scale_factor": factors[2:]}
    if mode == "nearest":
        factors = kw.get("scale_factor") or [o / i for o, i in zip(kw["size"], x.shape[2:])]
        floor = coordinate_transformation_mode == "asymmetric" and nearest_mode == "floor"
        if not floor and not all(float(f).is_integer() for f in factors):  # integer factors: every rule picks alike
            raise InputError(f"Resize nearest with {coordinate_transformation_mode} / {nearest_mode} and "
                             f"non-integer factors is not supported")
        return F.interpolate(x, mode="nearest", **kw)
    if mode == "linear":
        return F.interpolate(x, mode="bilinear", align_corners=coordinate_transformation_mode == "align_corners", **kw)
    raise InputError(f"Resize mode {mode} is not supported")


def _pad(x, pads, value=None, axes=None, mode="constant"):
    pads = _ints(pads)
    n = len(pads) // 2
    torch_pads = []
    for d in reversed(range(n)):
        torch_pads += [pads[d], pads[d + n]]
    while torch_pads and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    if not torch_pads:  # pads of zero (Swin's pad to a multiple of its window, at a size that is one)
        return x
    v = _scalar(value) or 0.0
    return F.pad(x, torch_pads, mode={"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode], value=v)


def _scalar(v) -> float | None:
    """An optional scalar operand (a Python number or a one-element constant tensor) as a float."""
    return None if v is None else float(v.item() if isinstance(v, torch.Tensor) else v)


def _clip(x, lo=None, hi=None, min=None, max=None):
    lo, hi = _scalar(lo if lo is not None else min), _scalar(hi if hi is not None else max)
    if lo == 0.0 and hi is None:
        return torch.relu(x)
    return torch.clamp(x, lo, hi)


def _hardsigmoid(x, alpha=0.2, beta=0.5):
    """max(0, min(1, alpha x + beta)); torch's hardsigmoid (kept whole by the trace) when alpha = 1/6, beta = 1/2."""
    if abs(alpha - 1 / 6) < 1e-7 and beta == 0.5:
        return F.hardsigmoid(x)
    return torch.clamp(alpha * x + beta, 0, 1)


def _list_or(fn_list, fn_tensor, all_args: bool = False):
    """An op that works on Python shape lists (Shape -> Gather -> Concat -> Reshape) and on tensors,
    chosen by its data input (by every input for Concat); axes and indices may be lists either way."""
    def op(*args, **kw):
        if any(isinstance(a, (list, int, float, torch.SymInt)) for a in (args if all_args else args[:1])):
            return fn_list(*args, **kw)
        return fn_tensor(*args, **kw)
    return op


def _concat_list(*parts, axis=0):
    return [v for p in parts for v in (p if isinstance(p, list) else _ints(p))]


def _gather_list(data, indices, axis=0):
    idx = _ints(indices)
    return [data[i] for i in idx] if isinstance(indices, list) else data[idx[0]]


def _unsqueeze_list(x, axes=None):
    return x if isinstance(x, list) else [x]


def _slice(x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    if isinstance(x, list):
        return x[slice(starts[0], min(ends[0], len(x)), steps[0])]
    if any(st < 0 for st in steps):  # torch indexing takes no negative step: the node passes through
        raise InputError("a negative step")
    index = [slice(None)] * x.dim()
    for s, e, a, st in zip(starts, ends, axes, steps):
        size = x.shape[a]
        if s == 0 and st == 1 and (e >= 2**62 or isinstance(size, int) and e >= size):
            continue  # the whole axis: no slice
        index[a] = slice(s, min(e, 2**62), st)
    return x[tuple(index)] if any(i != slice(None) for i in index) else x


def _is_int(v) -> bool:
    return isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool)


def _arith(fn):
    """A binary op on tensors, and elementwise (broadcast) on shape values held as Python lists."""
    def op(a, b):
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            a, b = (_as_tensor(v) if isinstance(v, list) else v for v in (a, b))
        elif isinstance(a, list) or isinstance(b, list):
            a, b = (v if isinstance(v, list) else [v] for v in (a, b))
            n = max(len(a), len(b))
            return [fn(a[i if len(a) > 1 else 0], b[i if len(b) > 1 else 0]) for i in range(n)]
        return fn(a, b)
    return op


def _constant_of_shape(shape, value=None):
    """`value` is a Python (number, dtype) pair: OnnxModule reads the attribute's tensor once, at import."""
    fill, dtype = value if value is not None else (0.0, torch.float32)
    shape = _ints(shape)
    if dtype in (torch.int64, torch.int32) and len(shape) <= 1:  # a shape value, as the shape ops keep it
        return [int(fill)] * shape[0] if shape else int(fill)
    return torch.full(shape, fill, dtype=dtype)


def _expand(x, shape):
    """ONNX Expand broadcasts both ways: a 1 in `shape` keeps x's size."""
    shape = _ints(shape)
    have = [1] * (len(shape) - x.dim()) + list(x.shape)
    want = [h if isinstance(s, int) and s == 1 else s for s, h in zip([1] * (x.dim() - len(shape)) + shape, have)]
    return x.reshape(have).expand(want)


def _where(c, a, b):
    if any(isinstance(v, list) for v in (c, a, b)):
        c, a, b = (v if isinstance(v, list) else [v] for v in (c, a, b))
        n = max(len(c), len(a), len(b))
        pick = [(c[i if len(c) > 1 else 0], a[i if len(a) > 1 else 0], b[i if len(b) > 1 else 0]) for i in range(n)]
        return [x if cond else y for cond, x, y in pick]
    return torch.where(c, a, b)


def _shape_of(x) -> list:
    if isinstance(x, torch.Tensor):
        return list(x.shape)
    return [len(x)] if isinstance(x, list) else []


def _range(start, limit, delta):
    """Range of Python numbers (sizes) stays a shape value; of tensors, torch.arange."""
    start, limit, delta = (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point()
                           else v for v in (start, limit, delta))
    if all(_is_int(v) for v in (start, limit, delta)):
        return torch.arange(start, limit, delta, dtype=torch.int64)
    return torch.arange(float(start), float(limit), float(delta))


def _symbolic(v) -> bool:
    """Whether a shape value holds a symbolic size (the dynamic batch)."""
    return isinstance(v, torch.SymInt) or isinstance(v, list) and any(isinstance(i, torch.SymInt) for i in v)


def _as_tensor(v) -> torch.Tensor:
    """A shape value (Python numbers, the batch's SymInt among them) as a tensor: int64, or float32."""
    items = v if isinstance(v, list) else [v]
    dtype = torch.float32 if any(isinstance(i, float) for i in items) else torch.int64
    if not any(isinstance(i, torch.SymInt) for i in items):
        return torch.tensor(v, dtype=dtype)
    # scalar_tensor takes a data-dependent size (an unbacked SymInt: a count out of NonMaxSuppression or
    # NonZero) without guarding on its value; as_tensor would need the value
    stacked = torch.stack([torch.scalar_tensor(i, dtype=dtype) if isinstance(i, torch.SymInt) else
                           torch.as_tensor(i, dtype=dtype) for i in items])
    return stacked if isinstance(v, list) else stacked[0]


def _cast_value(x, to: int):
    """Cast of a shape value (a Python number or list): int types truncate, float types convert."""
    if isinstance(x, list):
        return [_cast_value(v, to) for v in x]
    if _DTYPES.get(to) in (torch.int32, torch.int64):
        return x if _is_int(x) else int(x)
    return x if isinstance(x, torch.SymInt) else float(x)


# ONNX op type -> torch function of (inputs..., **attributes)
ONNX_OPS = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": torch.matmul,
    "Add": _arith(lambda a, b: a + b),
    "Sub": _arith(lambda a, b: a - b),
    "Mul": _arith(lambda a, b: a * b),
    "Div": _arith(lambda a, b: a // b if _is_int(a) and _is_int(b) else a / b),  # ONNX integer Div: shapes
    "Neg": lambda x: -x,
    "BatchNormalization": _batchnorm,
    "Relu": torch.relu,
    "LeakyRelu": lambda x, alpha=0.01: F.leaky_relu(x, alpha),
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "HardSigmoid": _hardsigmoid,
    "HardSwish": F.hardswish,
    "Clip": _clip,
    "Softmax": lambda x, axis=-1: torch.softmax(x, axis),
    "MaxPool": _pool("MaxPool"),
    "AveragePool": _pool("AveragePool"),
    "GlobalAveragePool": lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "GlobalMaxPool": lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
    "ReduceMean": _reduce(torch.mean),
    "ReduceSum": _reduce(torch.sum),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda x, perm=None: x.permute(perm or list(reversed(range(x.dim())))),
    "Squeeze": _list_or(lambda x, axes=None: x[0] if len(x) == 1 else x,
                        lambda x, axes=None: x.squeeze(_ints(axes)) if axes is not None else x.squeeze()),
    "Unsqueeze": _list_or(_unsqueeze_list, lambda x, axes=None: _unsqueeze(x, _ints(axes))),
    "Concat": _list_or(_concat_list, lambda *xs, axis=0: torch.cat(xs, axis), all_args=True),
    "Gather": _list_or(_gather_list, lambda x, i, axis=0: torch.index_select(x, axis, i.reshape(-1)).reshape(
        *x.shape[:axis], *i.shape, *x.shape[axis + 1:]) if isinstance(i, torch.Tensor) else x.select(axis, int(i))),
    "Slice": _slice,
    "Shape": lambda x, start=0, end=None: _shape_of(x)[start:end],
    "Identity": lambda x: x,
    "Dropout": lambda x, *rest, **kw: x,
    "Cast": lambda x, to, saturate=1: x.to(_DTYPES[to]) if isinstance(x, torch.Tensor) else _cast_value(x, to),
    "Pad": _pad,
    "Resize": _resize,
    "Upsample": lambda x, scales, mode="nearest": _resize(x, scales=scales, mode=mode,
                                                          coordinate_transformation_mode="asymmetric",
                                                          nearest_mode="floor"),
    "Sqrt": torch.sqrt,
    "ConstantOfShape": _constant_of_shape,
    "Expand": _expand,
    "Equal": _arith(lambda a, b: a == b),
    "Where": _where,
    "Mod": lambda a, b, fmod=0: _arith(lambda x, y: x % y if not fmod else math.fmod(x, y))(a, b),
    "Not": _list_or(lambda x: [not v for v in x], torch.logical_not),
    "Range": _range,
    "Pow": lambda a, b: a ** b,
    "Erf": torch.erf,
}


def _unsqueeze(x, axes):
    for a in sorted(a % (x.dim() + len(axes)) for a in axes):
        x = x.unsqueeze(a)
    return x


_SHAPE_INPUTS = {"Resize": (1, 2, 3), "Upsample": (1,)}


def _takes(op: str, attrs: dict) -> bool:
    """Whether the torch function of `op` takes these attributes (older opsets' forms pass through)."""
    try:
        signature = inspect.signature(ONNX_OPS[op])
    except (TypeError, ValueError):  # a builtin without a signature: takes no attributes
        return not attrs
    try:
        signature.bind_partial(**attrs)
    except TypeError:
        return False
    return True


def _known(node: onnx.NodeProto, attrs: dict) -> bool:
    """Whether `node` is imported through ONNX_OPS (else it passes through as it is)."""
    return node.op_type in ONNX_OPS and node.domain in ("", "ai.onnx") and _takes(node.op_type, attrs)


def passed_through(model: onnx.ModelProto) -> list[str]:
    """The op types of `model` that pass through as they are (no rewrite knows them)."""
    return sorted({_label(n) for n in model.graph.node if n.op_type != "Constant" and
                   not _known(n, {a.name: _attr(a) for a in n.attribute})})


def upgraded(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """`model` at `opset` when it has ops that pass through (their form must be the written opset's)."""
    if opset_of(model) >= opset or not passed_through(model):
        return model
    import onnx.version_converter

    try:
        return onnx.version_converter.convert_version(model, opset)
    except Exception:  # noqa: BLE001 -- the converter's failure leaves the model as it is; write_back checks
        return model


def _label(node: onnx.NodeProto) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def _attr(a: onnx.AttributeProto):
    value = onnx.helper.get_attribute_value(a)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return torch.from_numpy(numpy_helper.to_array(value).copy())
    return list(value) if isinstance(value, (list, tuple)) else value


_FELL_BACK: dict[str, dict[str, str]] = {}  # OnnxModule._token -> its table ops that passed through as traced


class OnnxModule(nn.Module):
    """An ONNX graph as an nn.Module (float constants as buffers, integer constants as Python values)."""

    def __init__(self, model: onnx.ModelProto, path: str | None = None):
        super().__init__()
        self.path, self.opset = path, opset_of(model)
        graph = model.graph
        self.static: dict[str, object] = {}
        self._static_types: dict[str, int] = {}
        self._buffers_by_name: dict[str, str] = {}
        # float constants that are shape arguments (Resize's roi / scales / sizes) stay Python values
        self._shape_args = {n.input[i] for n in graph.node for i in _SHAPE_INPUTS.get(n.op_type, ())
                            if i < len(n.input) and n.input[i]}
        for init in graph.initializer:
            self._add_constant(init.name, numpy_helper.to_array(init), init.data_type)
        self._model, self._types = model, None
        self.steps = []
        for node in graph.node:
            attrs = {a.name: _attr(a) for a in node.attribute}
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(attrs) == 1:
                value = next(iter(attrs.values()))
                if isinstance(value, torch.Tensor):
                    self._add_constant(node.output[0], value.numpy(), node.attribute[0].t.data_type)
                else:
                    self._add_constant(node.output[0], np.array(value))
                continue
            if node.op_type == "ConstantOfShape" and isinstance(attrs.get("value"), torch.Tensor):
                attrs["value"] = (attrs["value"].reshape(-1)[0].item(), attrs["value"].dtype)
            self.steps.append((node.op_type if _known(node, attrs) else None, list(node.input), list(node.output),
                               attrs, node))
        self.passed_through = sorted({_label(n) for op, *_, n in self.steps if op is None})
        self._token = os.urandom(8).hex()  # the key of fell_back (a deep copy traced by torch.export keeps it)
        init_names = {i.name for i in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in init_names]
        self.output_names = [o.name for o in graph.output]

    @property
    def fell_back(self) -> dict[str, str]:
        """op -> why, for each table op that passed through as it ran (the traced copy's record)."""
        return _FELL_BACK.get(self._token, {})

    def _opaque(self, node: onnx.NodeProto) -> str:
        """The key of `node` passed through as it is (onnx_opaque), registered on first use."""
        from .onnx_opaque import opaque_of, register, value_types

        if self._types is None:
            self._types = value_types(self._model)
        return register(opaque_of(node, self._model, self._types))

    def _run_opaque(self, node: onnx.NodeProto, env: dict) -> list:
        """The node through onnx_node; evaluated now when every input is a Python value of the file
        (a shape computation): integer results stay Python values, as the shape ops keep them."""
        from .onnx_opaque import _NUMPY_OF_ONNX, evaluate, node_of

        key = self._opaque(node)
        opaque = node_of(key)
        values = [env.get(name) if name else None for name in opaque.inputs]
        if not any(isinstance(v, torch.Tensor) or _symbolic(v) for v in values):
            arrays = [None if v is None else np.asarray(v, dtype=_NUMPY_OF_ONNX.get(
                self._static_types.get(name) or t, np.int64)) for v, name, t in
                zip(values, opaque.inputs, opaque.in_types)]
            outs = evaluate(key, arrays)
            return [o.tolist() if o.dtype.kind in "iub" else torch.from_numpy(o) for o in outs]
        args = [v if v is None or isinstance(v, torch.Tensor) else _as_tensor(v) for v in values]
        return torch.ops.foldpass.onnx_node(args, key)

    def _add_constant(self, name: str, array: np.ndarray, onnx_type: int = 0) -> None:
        if onnx_type:
            self._static_types[name] = onnx_type
        # integer and bool tensors of rank >= 2 (index tables, masks) are data, not shape values
        if (np.issubdtype(array.dtype, np.floating) or array.ndim >= 2) and name not in self._shape_args:
            attr = f"c{len(self._buffers_by_name)}"
            self.register_buffer(attr, torch.from_numpy(np.array(array, copy=True)))
            self._buffers_by_name[name] = attr
        else:
            self.static[name] = array.tolist() if array.ndim else array.item()

    def forward(self, *inputs):
        env: dict[str, object] = dict(self.static)
        env.update({k: getattr(self, v) for k, v in self._buffers_by_name.items()})
        env.update(zip(self.input_names, inputs))
        for op, ins, outs, attrs, node in self.steps:
            if op is None:
                env.update(zip(outs, self._run_opaque(node, env)))
                continue
            args = [env[i] if i else None for i in ins]
            while args and args[-1] is None:
                args.pop()
            try:
                result = ONNX_OPS[op](*args, **attrs)
            except (InputError, GuardOnDataDependentSymNode) as exc:
                # a form of a known op that foldpass does not rewrite, or one that would need a value known
                # only at run time (a Clip bound computed from the data): it passes through
                why = "a value known only at run time" if isinstance(exc, GuardOnDataDependentSymNode) \
                    else first_line(exc)
                _FELL_BACK.setdefault(self._token, {}).setdefault(_label(node), why)
                env.update(zip(outs, self._run_opaque(node, env)))
                continue
            except (TypeError, AttributeError, IndexError):  # a tensor op on a shape value
                if not any(isinstance(a, (list, int, float, torch.SymInt)) for a in args):
                    raise
                if not any(isinstance(a, torch.Tensor) or _symbolic(a) for a in args):  # all constant
                    env.update(zip(outs, self._run_opaque(node, env)))
                    continue
                result = ONNX_OPS[op](*[_as_tensor(a) if isinstance(a, (list, int, float, torch.SymInt)) else a
                                        for a in args], **attrs)
            if len(outs) == 1 or not isinstance(result, tuple):
                env[outs[0]] = result
            else:
                env.update(zip(outs, result))
        outputs = tuple(env[o] for o in self.output_names)
        return outputs[0] if len(outputs) == 1 else outputs


def load_onnx(path: str, max_bytes: int | None = None) -> onnx.ModelProto:
    """Loads an .onnx file (external data included) and checks it, or raises InputError.

    The graph is read first without its external data; each external file must lie inside the
    model's directory, and the total is checked against `max_bytes` before any weight is read.
    """
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise InputError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from exc
    base = os.path.dirname(os.path.abspath(path))
    total = os.path.getsize(path)
    for location in sorted(_external_locations(model)):
        full = os.path.realpath(os.path.join(base, location))
        if os.path.isabs(location) or not full.startswith(os.path.realpath(base) + os.sep):
            raise InputError(f"{path}: external data '{location}' lies outside the model's directory")
        if not os.path.isfile(full):
            raise InputError(f"{path}: external data file '{location}' is missing")
        total += os.path.getsize(full)
    if max_bytes is not None and total > max_bytes:
        raise InputError(f"{path}: the model and its external data are {total / 2**30:.1f} GiB, over "
                         f"max_model_bytes ({max_bytes / 2**30:.1f} GiB); raise it to load this model")
    try:
        onnx.load_external_data_for_model(model, base)
    except Exception as exc:
        raise InputError(f"{path}: cannot read its external data ({type(exc).__name__}: {first_line(exc)})") from exc
    check_onnx(model, path, path)
    return model


def check_onnx(model: onnx.ModelProto, name: str, path: str | None = None) -> None:
    """onnx.checker on the model (by path when it is over protobuf's 2 GB), or InputError."""
    if not isinstance(model, onnx.ModelProto):
        raise InputError(f"{name}: expected an onnx.ModelProto, got {type(model).__name__}")
    try:
        onnx.checker.check_model(path if path and model.ByteSize() > 2**31 - 1 else model)
    except Exception as exc:
        raise InputError(f"{name}: the ONNX model does not pass onnx.checker: {first_line(exc)}") from exc


def _external_locations(model: onnx.ModelProto) -> set[str]:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return {entry.value for t in _get_all_tensors(model) if uses_external_data(t)
            for entry in t.external_data if entry.key == "location"}


def input_specs(model: onnx.ModelProto) -> list[tuple[str, list, torch.dtype]]:
    """(name, dims with str / None for dynamic, dtype) of each real input."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        out.append((inp.name, dims, _DTYPES.get(t.elem_type, torch.float32)))
    return out


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


class OrtReference:
    """The input ONNX under onnxruntime (CPU), callable like a module: the verification gate's reference."""

    def __init__(self, path: str | bytes):
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as exc:  # any load failure is the input's
            raise InputError(f"onnxruntime cannot run the input model, so foldpass cannot check its output "
                             f"against it: {first_line(exc)}") from exc
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs):
        out = self.session.run(None, {n: x.detach().numpy() for n, x in zip(self.names, inputs)})
        tensors = tuple(torch.from_numpy(o) for o in out)
        return tensors[0] if len(tensors) == 1 else tensors
