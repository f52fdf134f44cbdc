"""ONNX ops foldpass does not rewrite pass through: each is one opaque node in the fx IR, written back verbatim.

    ONNX node n (any op type, domain, attributes, subgraphs)
      ->  torch.ops.foldpass.onnx_node(inputs, key)       in the fx IR (a boundary no pass crosses)
      ->  foldpass.opaque::Node(inputs, key=key)           written by torch.onnx's exporter
      ->  n, inputs and outputs renamed                    in the file foldpass writes (`write_back`)

Why a `torch.library` custom op: torch.export traces it as one node from its fake implementation
(output dtypes and shapes from ONNX shape inference, the batch kept symbolic), constant propagation,
verification and the Jacobian probes run it eagerly (onnxruntime on a one-node model), and torch.onnx
takes a translation for it (`custom_translation_table`). torch.onnx.ops.symbolic also writes an
arbitrary node, but it computes nothing in eager mode, so a pass bordering it could not be verified.
A node with subgraphs (If, Loop, Scan) takes the outer values its subgraphs read as extra inputs.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from .errors import InputError

DOMAIN = "foldpass.opaque"

_TORCH_OF_ONNX = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
                  9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}
_NUMPY_OF_ONNX = {t: onnx.helper.tensor_dtype_to_np_dtype(t) for t in _TORCH_OF_ONNX if t != 16}
_ONNX_OF_NUMPY = {np.dtype(v): k for k, v in _NUMPY_OF_ONNX.items()}


@dataclass
class OpaqueNode:
    """One ONNX node kept as it is, with what running and tracing it needs."""

    node: onnx.NodeProto
    inputs: list[str]  # the node's own inputs ("" for an omitted optional one), then its subgraphs' outer reads
    in_types: list[int]  # ONNX element type of each input
    in_dims: list[list]  # each input's dims: int, a dim_param name, or None
    out_types: list[int]
    out_dims: list[list]
    opsets: list[onnx.OperatorSetIdProto]
    functions: list[onnx.FunctionProto] = field(default_factory=list)
    ir_version: int = 8
    opset: int = 0  # the file's default-domain opset
    _sessions: dict = field(default_factory=dict, repr=False)
    _shapes: dict = field(default_factory=dict, repr=False)

    def _alone(self, inputs: list, outputs: list) -> onnx.ModelProto:
        """A model of this node alone, with these graph inputs and outputs, in the file's opsets (a value
        the node reads twice, as Slice's starts and steps can be, is one graph input)."""
        unique: dict[str, onnx.ValueInfoProto] = {}
        for v in inputs:
            unique.setdefault(v.name, v)
        graph = onnx.helper.make_graph([self.node], "opaque", list(unique.values()), outputs)
        model = onnx.helper.make_model(graph, opset_imports=self.opsets, functions=self.functions)
        model.ir_version = self.ir_version
        return model

    def inferred(self, shapes: tuple) -> list | None:
        """Each output's dims by ONNX shape inference on this node alone, its inputs of these shapes
        (ints and dim_param names); None where inference fails."""
        if shapes not in self._shapes:
            model = self._alone([onnx.helper.make_tensor_value_info(n, t, list(s) if s is not None else None)
                                 for n, t, s in zip(self.inputs, self.in_types, shapes) if n and t],
                                [onnx.helper.make_value_info(n, onnx.TypeProto()) for n in self.node.output])
            try:
                g = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True).graph
                found = {v.name: v.type.tensor_type for v in list(g.output) + list(g.value_info)}
                self._shapes[shapes] = [
                    [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in found[o].shape.dim]
                    if o in found and found[o].HasField("shape") else None for o in self.node.output]
            except Exception:  # noqa: BLE001 -- inference is a help: the file's own inference is the fallback
                self._shapes[shapes] = None
        return self._shapes[shapes]

    @property
    def label(self) -> str:
        return f"{self.node.domain + '::' if self.node.domain else ''}{self.node.op_type}"

    def session(self, types: tuple[int, ...]):
        """onnxruntime on a model of this node alone, its inputs of the given element types."""
        if types not in self._sessions:
            import onnxruntime as ort

            model = self._alone([onnx.helper.make_tensor_value_info(n, t, None) for n, t in zip(self.inputs, types) if n],
                                [onnx.helper.make_tensor_value_info(n, t, None)
                                 for n, t in zip(self.node.output, self.out_types) if n])
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.log_severity_level = 3
            self._sessions[types] = ort.InferenceSession(model.SerializeToString(), options,
                                                         providers=["CPUExecutionProvider"])
        return self._sessions[types]


_NODES: dict[str, OpaqueNode] = {}


def register(node: OpaqueNode) -> str:
    """The key under which the fx IR's onnx_node calls find `node` (stable for the same node and model)."""
    facts = (node.inputs, node.in_types, node.in_dims, node.out_types, node.out_dims,
             [(o.domain, o.version) for o in node.opsets], [f.SerializeToString() for f in node.functions])
    digest = hashlib.sha256(node.node.SerializeToString() + repr(facts).encode()).hexdigest()[:16]
    key = f"{digest}:{node.node.output[0] if node.node.output else ''}"
    _NODES.setdefault(key, node)
    return key


def node_of(key: str) -> OpaqueNode:
    if key not in _NODES:
        raise InputError(f"an ONNX node passed through by an earlier import is not known in this process ({key})")
    return _NODES[key]


def _promoted(node: OpaqueNode, inputs) -> bool:
    """True when a float32 input arrives as float64 (foldpass computes folds in float64): outputs follow."""
    return any(x is not None and x.dtype == torch.float64 and t == onnx.TensorProto.FLOAT
               for x, t in zip(inputs, node.in_types))


def evaluate(key: str, arrays: list[np.ndarray | None]) -> list[np.ndarray]:
    """The node's outputs for these inputs, by onnxruntime (each input cast to the type the file gives it)."""
    node = node_of(key)
    feeds, types = {}, []
    for name, x, t in zip(node.inputs, arrays, node.in_types):
        t = t or (_ONNX_OF_NUMPY.get(x.dtype, 0) if x is not None else 0)
        types.append(t)
        if name and x is not None:
            feeds[name] = np.ascontiguousarray(x, dtype=_NUMPY_OF_ONNX.get(t, x.dtype))
    session = node.session(tuple(types))
    try:
        return session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types; the file's node fails on these inputs
        from .errors import first_line

        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
        raise InputError(f"onnxruntime cannot run the file's {node.label} node on {shapes}: {first_line(exc)[:200]}; "
                         "a file exported for one batch size (its per-image loops unrolled) runs at that size "
                         "only: pass --batch N") from None


@torch.library.custom_op("foldpass::onnx_node", mutates_args=())
def onnx_node(inputs: list[torch.Tensor | None], key: str) -> list[torch.Tensor]:
    """Runs one passed-through ONNX node with onnxruntime."""
    node = node_of(key)
    outs = evaluate(key, [None if x is None else x.detach().cpu().numpy() for x in inputs])
    promoted = _promoted(node, inputs)
    result = []
    for o, t in zip(outs, node.out_types):
        y = torch.from_numpy(np.ascontiguousarray(o))
        result.append(y.double() if promoted and t == onnx.TensorProto.FLOAT else y)
    return result


@onnx_node.register_fake
def _(inputs, key):
    """Output shapes: ONNX shape inference on the node alone with these inputs' shapes (a symbolic
    size as a named dim), else the whole file's inference, else a data-dependent size."""
    node = node_of(key)
    sizes = {}
    for x, dims in zip(inputs, node.in_dims):
        if x is not None:
            for d, s in zip(dims, x.shape):
                if isinstance(d, str):
                    sizes.setdefault(d, s)
    shapes = [None if x is None else [d if isinstance(d, int) else f"fp_{d}" for d in x.shape] for x in inputs]
    sizes.update({f"fp_{d}": d for x in inputs if x is not None for d in x.shape if not isinstance(d, int)})
    alone = node.inferred(tuple(tuple(s) if s is not None else None for s in shapes))
    promoted = _promoted(node, inputs)
    ctx = None
    out = []
    for i, (dims, t) in enumerate(zip(node.out_dims, node.out_types)):
        mine = alone[i] if alone and i < len(alone) and alone[i] is not None and len(alone[i]) == len(dims) else None
        shape = []
        for j, d in enumerate(dims):
            for guess in ((mine[j],) if mine else ()) + (d,):
                if isinstance(guess, int) or isinstance(guess, str) and guess in sizes:
                    shape.append(guess if isinstance(guess, int) else sizes[guess])
                    break
            else:
                ctx = ctx or torch.library.get_ctx()
                shape.append(ctx.new_dynamic_size())
        dtype = torch.float64 if promoted and t == onnx.TensorProto.FLOAT else _TORCH_OF_ONNX[t]
        out.append(torch.empty(shape, dtype=dtype))
    return out


def translation(inputs, key: str):
    """torch.onnx's translation of onnx_node: a placeholder node that `write_back` replaces.

    It is built the way torch.onnx builds its own torch.onnx.ops.symbolic nodes (`_call_symbolic_op`)."""
    from torch.onnx._internal.exporter._torchlib.ops.symbolic import _call_symbolic_op

    node = node_of(key)
    return list(_call_symbolic_op("Node", DOMAIN, list(inputs), {"key": key}, dtypes=node.out_types, version=1,
                                  metadata_props=None))


TRANSLATIONS = {torch.ops.foldpass.onnx_node.default: translation}


def write_back(model: onnx.ModelProto) -> int:
    """Replaces each placeholder by its original node (inputs and outputs renamed); returns how many."""
    graph = model.graph
    count = 0
    domains = {o.domain for o in model.opset_import}
    target = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    for i, placeholder in enumerate(graph.node):
        if placeholder.domain != DOMAIN:
            continue
        key = next(onnx.helper.get_attribute_value(a) for a in placeholder.attribute if a.name == "key").decode()
        opaque = node_of(key)
        _check_version(opaque, target)
        names = dict(zip([n for n in opaque.inputs if n], [n for n in placeholder.input if n]))
        names.update(zip(opaque.node.output, placeholder.output))
        node = copy.deepcopy(opaque.node)
        _rename(node, names)
        graph.node[i].CopyFrom(node)
        for o in opaque.opsets:
            if o.domain not in domains:
                model.opset_import.append(o)
                domains.add(o.domain)
        for f in opaque.functions:
            if not any(g.name == f.name and g.domain == f.domain for g in model.functions):
                model.functions.append(f)
        count += 1
    kept = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return count


def _check_version(opaque: OpaqueNode, target: int) -> None:
    """Refuses to write a node into an opset that defines its op differently from the file's opset."""
    op = opaque.node
    if op.domain not in ("", "ai.onnx") or not opaque.opset or opaque.opset == target:
        return
    try:
        was = onnx.defs.get_schema(op.op_type, opaque.opset).since_version
        now = onnx.defs.get_schema(op.op_type, target).since_version
    except onnx.defs.SchemaError:
        return
    if was != now:
        raise InputError(f"ONNX {op.op_type} passes through as it is, but opset {target} defines it differently "
                         f"from the file's opset {opaque.opset}; convert the file to opset {target} first "
                         f"(onnx.version_converter.convert_version) or write opset {opaque.opset}")


def _rename(node: onnx.NodeProto, names: dict[str, str]) -> None:
    for field_ in (node.input, node.output):
        renamed = [names.get(n, n) for n in field_]
        del field_[:]
        field_.extend(renamed)
    for a in node.attribute:
        for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for n in g.node:
                _rename(n, names)


def outer_reads(node: onnx.NodeProto) -> list[str]:
    """The names a node's subgraphs read from the enclosing graph, in first-use order."""
    found: list[str] = []

    def visit(g: onnx.GraphProto, bound: set[str]) -> None:
        bound = bound | {i.name for i in g.input} | {i.name for i in g.initializer}
        for n in g.node:
            for name in n.input:
                if name and name not in bound and name not in found:
                    found.append(name)
            for a in n.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    visit(sub, bound)
            bound = bound | set(n.output)

    for a in node.attribute:
        for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            visit(sub, set())
    return found


def value_types(model: onnx.ModelProto) -> dict[str, tuple[int, list]]:
    """name -> (ONNX element type, dims) of every value ONNX shape inference can type."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 -- inference is a help here: without it, types come from the graph alone
        inferred = model
    out = {}
    g = inferred.graph
    for v in list(g.input) + list(g.value_info) + list(g.output):
        t = v.type.tensor_type
        if not t.elem_type:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim] \
            if t.HasField("shape") else None
        out[v.name] = (t.elem_type, dims)
    for init in g.initializer:
        out[init.name] = (init.data_type, list(init.dims))
    unknown = [o for n in g.node for o in n.output if o and o not in out]
    if unknown:  # ops ONNX does not know (com.microsoft's): onnxruntime's own inference
        out.update(_ort_types(model, unknown))
    return out


_ONNX_OF_NAME = {f"tensor({n})": t for n, t in (("float", 1), ("uint8", 2), ("int8", 3), ("int16", 5),
                                                ("int32", 6), ("int64", 7), ("bool", 9), ("float16", 10),
                                                ("double", 11), ("bfloat16", 16))}


def _ort_types(model: onnx.ModelProto, names: list[str]) -> dict[str, tuple[int, list]]:
    """Types and dims of intermediate values as onnxruntime infers them (the values made graph outputs)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 -- the reference session reports a model onnxruntime cannot load
        return {}
    return {o.name: (_ONNX_OF_NAME.get(o.type, 0), [d if isinstance(d, (int, str)) else None for d in o.shape])
            for o in session.get_outputs() if o.name in names}


def opaque_of(node: onnx.NodeProto, model: onnx.ModelProto, types: dict[str, tuple[int, list]]) -> OpaqueNode:
    """The OpaqueNode for `node` of `model`, or InputError naming what is unknown about it."""
    inputs = list(node.input) + [n for n in outer_reads(node) if n not in node.input]
    in_types, in_dims, out_types, out_dims = [], [], [], []
    for n in inputs:
        t, d = types.get(n, (onnx.TensorProto.UNDEFINED, None)) if n else (onnx.TensorProto.UNDEFINED, [])
        in_types.append(t)
        in_dims.append(d or [])
    for n in node.output:
        t, d = types.get(n, (0, None))
        if not t or d is None:
            raise InputError(f"ONNX {node.op_type} node '{node.name or n}': shape inference cannot give the "
                             f"type and rank of its output '{n}', which foldpass needs to pass it through")
        if t not in _TORCH_OF_ONNX:
            raise InputError(f"ONNX {node.op_type} node '{node.name or n}': output type "
                             f"{onnx.TensorProto.DataType.Name(t)} cannot pass through")
        out_types.append(t)
        out_dims.append(d)
    return OpaqueNode(copy.deepcopy(node), inputs, in_types, in_dims, out_types, out_dims,
                      [copy.deepcopy(o) for o in model.opset_import], list(model.functions), model.ir_version,
                      next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0))
