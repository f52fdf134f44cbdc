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
    if sizes is not None and not isinstance(sizes, torch.Tensor) and len(_ints(sizes)):
        size = _ints(sizes)[2:]
        kw = {"size": size}
    else:
        kw = {"scale_factor": [float(s) for s in (scales.tolist() if isinstance(scales, torch.Tensor) else scales)][2:]}
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


def _list_or(fn_list, fn_tensor):
    """An op that works on Python shape lists (Shape -> Gather -> Concat -> Reshape) and on tensors."""
    def op(*args, **kw):
        if any(isinstance(a, list) for a in args):
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
    index = [slice(None)] * x.dim()
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a] = slice(s, min(e, 2**62), st)
    return x[tuple(index)]


# ONNX op type -> torch function of (inputs..., **attributes)
ONNX_OPS = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": torch.matmul,
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": lambda a, b: a / b,
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
    "Squeeze": lambda x, axes=None: x.squeeze(_ints(axes)) if axes is not None else x.squeeze(),
    "Unsqueeze": _list_or(_unsqueeze_list, lambda x, axes=None: _unsqueeze(x, _ints(axes))),
    "Concat": _list_or(_concat_list, lambda *xs, axis=0: torch.cat(xs, axis)),
    "Gather": _list_or(_gather_list, lambda x, i, axis=0: torch.index_select(x, axis, i.reshape(-1)).reshape(
        *x.shape[:axis], *i.shape, *x.shape[axis + 1:]) if isinstance(i, torch.Tensor) else x.select(axis, int(i))),
    "Slice": _slice,
    "Shape": lambda x, start=0, end=None: list(x.shape)[start:end],
    "Identity": lambda x: x,
    "Dropout": lambda x, *rest, **kw: x,
    "Cast": lambda x, to: x if isinstance(x, list) else x.to(_DTYPES[to]),
    "Pad": _pad,
    "Resize": _resize,
    "Upsample": lambda x, scales, mode="nearest": _resize(x, scales=scales, mode=mode,
                                                          coordinate_transformation_mode="asymmetric",
                                                          nearest_mode="floor"),
    "Sqrt": torch.sqrt,
    "Pow": lambda a, b: a ** b,
    "Erf": torch.erf,
}


def _unsqueeze(x, axes):
    for a in sorted(a % (x.dim() + len(axes)) for a in axes):
        x = x.unsqueeze(a)
    return x


_SHAPE_INPUTS = {"Resize": (1, 2, 3), "Upsample": (1,)}


def _check_attributes(op: str, attrs: dict, opset: int) -> None:
    """Refuses, before any work, an op whose attributes its torch function does not take (old opsets)."""
    try:
        signature = inspect.signature(ONNX_OPS[op])
    except (TypeError, ValueError):  # a builtin without a signature: takes no attributes
        signature = None
    try:
        if signature is not None:
            signature.bind_partial(**attrs)
        elif attrs:
            raise TypeError
    except TypeError:
        raise InputError(
            f"ONNX {op} with attributes {sorted(attrs)} (opset {opset}) is not supported; upgrade the file to "
            "opset 18: python -c \"import onnx, onnx.version_converter as v; "
            "onnx.save(v.convert_version(onnx.load('in.onnx'), 18), 'out.onnx')\"") from None


def _attr(a: onnx.AttributeProto):
    value = onnx.helper.get_attribute_value(a)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return torch.from_numpy(numpy_helper.to_array(value).copy())
    return list(value) if isinstance(value, (list, tuple)) else value


class OnnxModule(nn.Module):
    """An ONNX graph as an nn.Module (float constants as buffers, integer constants as Python values)."""

    def __init__(self, model: onnx.ModelProto, path: str | None = None):
        super().__init__()
        self.path, self.opset = path, opset_of(model)
        graph = model.graph
        known = set(ONNX_OPS) | {"Constant"}
        unsupported = sorted({n.op_type for n in graph.node if n.op_type not in known or n.domain not in ("", "ai.onnx")})
        if unsupported:
            raise InputError(f"the ONNX graph uses ops foldpass cannot import: {', '.join(unsupported)}")
        self.static: dict[str, object] = {}
        self._buffers_by_name: dict[str, str] = {}
        # float constants that are shape arguments (Resize's roi / scales / sizes) stay Python values
        self._shape_args = {n.input[i] for n in graph.node for i in _SHAPE_INPUTS.get(n.op_type, ())
                            if i < len(n.input) and n.input[i]}
        for init in graph.initializer:
            self._add_constant(init.name, numpy_helper.to_array(init))
        self.steps = []
        for node in graph.node:
            attrs = {a.name: _attr(a) for a in node.attribute}
            if node.op_type == "Constant":
                value = next(iter(attrs.values()))
                self._add_constant(node.output[0], value.numpy() if isinstance(value, torch.Tensor) else np.array(value))
                continue
            _check_attributes(node.op_type, attrs, self.opset)
            self.steps.append((node.op_type, list(node.input), list(node.output), attrs))
        init_names = {i.name for i in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in init_names]
        self.output_names = [o.name for o in graph.output]

    def _add_constant(self, name: str, array: np.ndarray) -> None:
        if np.issubdtype(array.dtype, np.floating) and name not in self._shape_args:
            attr = f"c{len(self._buffers_by_name)}"
            self.register_buffer(attr, torch.from_numpy(np.array(array, copy=True)))
            self._buffers_by_name[name] = attr
        else:
            self.static[name] = array.tolist() if array.ndim else array.item()

    def forward(self, *inputs):
        env: dict[str, object] = dict(self.static)
        env.update({k: getattr(self, v) for k, v in self._buffers_by_name.items()})
        env.update(zip(self.input_names, inputs))
        for op, ins, outs, attrs in self.steps:
            args = [env[i] if i else None for i in ins]
            while args and args[-1] is None:
                args.pop()
            result = ONNX_OPS[op](*args, **attrs)
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

        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs):
        out = self.session.run(None, {n: x.detach().numpy() for n, x in zip(self.names, inputs)})
        tensors = tuple(torch.from_numpy(o) for o in out)
        return tensors[0] if len(tensors) == 1 else tensors
