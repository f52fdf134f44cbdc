"""Graph helpers every pass uses: reading and adding constants, names, op counts, and one
iterative walk over a node's inputs (graphs of any depth: no recursion)."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable

from dataclasses import dataclass

import torch
import torch.fx as fx

from .errors import InputError

aten = torch.ops.aten

INPUTS_KEY = "foldpass_inputs"  # gm.meta: the example inputs the graph was traced with
BATCH_KEY = "foldpass_batch"  # gm.meta: the graph's BatchPlan


@dataclass(frozen=True)
class BatchPlan:
    """How the batch axis came out of tracing, and why: one value that the shapes, the gate, the
    export and the report read (no note string is matched)."""

    size: int | None = None  # the batch the graph is fixed to; None: dynamic
    restored: bool = False  # dynamic because foldpass made it so (a program exported at a fixed batch):
    #                         the gate then also checks a large batch, sample by sample
    note: str = "dynamic"  # in words, for the report

    @staticmethod
    def of(gm: fx.GraphModule) -> BatchPlan:
        return gm.meta.get(BATCH_KEY) or BatchPlan()

    @staticmethod
    def fixed(size: int, note: str) -> BatchPlan:
        """A batch fixed to `size`, for the reason `note`."""
        return BatchPlan(size, False, f"static: {note}")

# views and reshapes: batch-preserving ones are canonicalized at trace time; regions fold through them
VIEW_OPS = frozenset({aten.view.default, aten._unsafe_view.default, aten.reshape.default})


def shape_of(node) -> tuple | None:
    """The shape the trace recorded for a node's value (symbolic sizes included), or None."""
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def same_shape(a: tuple | None, b: tuple | None) -> bool:
    """Whether two recorded shapes are provably equal (an undecidable symbolic size: not equal)."""
    if a is None or b is None or len(a) != len(b):
        return False
    try:
        return all(bool(x == y) for x, y in zip(a, b))
    except Exception:  # noqa: BLE001 - a symbolic comparison that cannot be decided
        return False


def node_key(n: fx.Node) -> tuple:
    """A node as its op, target and arguments (the nodes it reads by name): equal keys, the same
    computation on the same values. The analyses cached until the graph changes compare these."""
    return n, n.op, n.target, str(n.args), str(n.kwargs)


def ancestors(node: fx.Node, within: Callable[[fx.Node], bool] | None = None) -> set[fx.Node]:
    """`node` and every node it reads, transitively (only through nodes `within` accepts, if given)."""
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(a for a in n.all_input_nodes if within is None or within(a))
    return seen


def unique_name(owner: torch.nn.Module, hint: str) -> str:
    """A fresh attribute name `_foldpass_<hint>_<n>` on `owner`."""
    name = f"_foldpass_{hint}_{next(_counter)}"
    while hasattr(owner, name):
        name = f"_foldpass_{hint}_{next(_counter)}"
    return name


def pair(v) -> tuple[int, int]:
    """An int or a 1- / 2-sequence (conv stride, padding, ...) as a pair."""
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    return (int(v[0]), int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1]))


def random_like(shape, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype)
    raise InputError(f"input of dtype {dtype} is not supported: foldpass optimizes floating-point inputs")



_counter = itertools.count()


def inputs_of(gm: fx.GraphModule) -> tuple[torch.Tensor, ...]:
    return gm.meta[INPUTS_KEY]


def attr(gm: fx.GraphModule, target: str) -> Any:
    """The object a get_attr node reads."""
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def add_constant(gm: fx.GraphModule, tensor: torch.Tensor, hint: str, before: fx.Node) -> fx.Node:
    """Registers `tensor` as a buffer of gm and returns a get_attr node for it, inserted before `before`.

    Its strides are kept (a materialized `W.t()` stays a transposed view of a row-major W), so an op
    reading it runs the same kernel on the same memory layout: no arithmetic changes.
    """
    name = unique_name(gm, hint)
    gm.register_buffer(name, tensor.detach().clone())
    with gm.graph.inserting_before(before):
        node = gm.graph.get_attr(name)
    node.meta["val"] = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device="meta")
    return node


def replace(old: fx.Node, new: fx.Node, provenance: fx.Node | None = None) -> fx.Node:
    """`new` takes `old`'s place, the same way in every pass: every reader of old reads new; new
    carries old's value ("val": the same shape and dtype) and the metadata of `provenance` (the op it
    continues: its stack trace, module path, provenance record; old's by default); old is erased
    once nothing reads it. Returns new."""
    new.meta.update({k: v for k, v in (provenance or old).meta.items() if k != "val"})
    if "val" in old.meta:
        new.meta["val"] = old.meta["val"]
    old.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    if not old.users and old.op == "call_function":
        old.graph.erase_node(old)
    return new


def insert_after(node: fx.Node, target, args: tuple) -> fx.Node:
    """A new op `target(*args)` (args read node) placed after node, read instead of node by
    everything that read it (`replace`'s metadata rules: the new op continues node)."""
    with node.graph.inserting_after(node):
        new = node.graph.call_function(target, args)
    return replace(node, new)


def constant_value(gm: fx.GraphModule, arg: Any) -> Any:
    """The value of an argument if it is a constant (a literal or a get_attr tensor), else None."""
    if isinstance(arg, fx.Node):
        return attr(gm, arg.target) if arg.op == "get_attr" else None
    return arg


def drop_unused_attrs(gm: fx.GraphModule) -> None:
    """Removes parameters, buffers and submodules no get_attr / call_module reads any more."""
    gm.graph.eliminate_dead_code()
    used = {n.target for n in gm.graph.nodes if n.op in ("get_attr", "call_module")}
    for name, _ in list(itertools.chain(gm.named_parameters(), gm.named_buffers())):
        if name not in used:
            _delete_attr(gm, name)
    for name, value in list(vars(gm).items()):
        if isinstance(value, torch.Tensor) and name not in used and not name.startswith("_"):
            delattr(gm, name)
    gm.delete_all_unused_submodules()
    gm.recompile()


def _delete_attr(gm: fx.GraphModule, dotted: str) -> None:
    *path, leaf = dotted.split(".")
    owner = gm
    for part in path:
        owner = getattr(owner, part)
    delattr(owner, leaf)


def op_name(node: fx.Node) -> str:
    """A short, stable name for a node's operation: 'convolution', 'add', 'getitem', ..."""
    if node.op == "call_function":
        target = node.target
        if isinstance(target, torch._ops.OpOverload):
            if target._schema.name == "foldpass::onnx_node":  # a passed-through ONNX node: by its op type
                from .onnx_opaque import node_of

                return f"onnx {node_of(node.args[1]).label}"
            return target._schema.name.split("::")[-1]
        return getattr(target, "__name__", str(target))
    if node.op == "call_module":
        return type(attr(node.graph.owning_module, node.target)).__name__
    return node.op


def compute_nodes(gm: fx.GraphModule) -> Iterable[fx.Node]:
    return (n for n in gm.graph.nodes if n.op in ("call_function", "call_module", "call_method"))


def count_ops(gm: fx.GraphModule) -> dict[str, int]:
    """Histogram of operation names, getitem and sym_size left out (they are bookkeeping)."""
    counts: dict[str, int] = {}
    for node in compute_nodes(gm):
        name = op_name(node)
        if name in ("getitem", "sym_size"):
            continue
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def count_params(gm: fx.GraphModule) -> int:
    """Elements in the tensors the graph reads (parameters, buffers and folded constants)."""
    seen, total = set(), 0
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target not in seen:
            seen.add(node.target)
            value = attr(gm, node.target)
            if isinstance(value, torch.Tensor):
                total += value.numel()
    return total
