"""torch.export -> the one IR: a torch.fx GraphModule of core ATen ops.

`trace(model, inputs)` normalizes an nn.Module or an ExportedProgram into that IR:
torch.export (non-strict, batch dimension dynamic) -> run_decompositions() -> .module(),
the input guard stripped, and every batch-preserving view rewritten to `view(x, [-1, ...])`
so the graph carries no batch size of its own. The example inputs travel in
`gm.meta["foldpass_inputs"]`; passes read them from there to infer shapes (graph.inputs_of).
"""

from __future__ import annotations

import inspect
import warnings

import torch
import torch.fx as fx
from torch.export import Dim, ExportedProgram

from .errors import InputError
from .graph import INPUTS_KEY, STATIC_KEY, VIEW_OPS, random_like
from .quiet import quiet
from .shapes import infer_shapes

aten = torch.ops.aten



def trace(model: torch.nn.Module | ExportedProgram, inputs: tuple[torch.Tensor, ...]) -> fx.GraphModule:
    """Returns the normalized GraphModule of `model` (an nn.Module in eval mode, or an ExportedProgram)."""
    if isinstance(model, ExportedProgram):
        ep, static = model, _has_static_batch(model)
    else:
        ep, static = _export(model, inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = ep.run_decompositions(_decompositions())
        gm = ep.module()
    gm = fx.GraphModule(gm, gm.graph)  # a plain GraphModule: ep.module()'s own class refuses .eval() / .train()
    gm.meta[INPUTS_KEY] = tuple(inputs)
    gm.meta[STATIC_KEY] = inputs[0].shape[0] if static else None
    _strip_guards(gm)
    canonicalize_batch_views(gm)
    gm.eval()  # the ops are already the eval-mode ones
    return gm


# Activations kept whole: ONNX has an op for each (HardSwish, ...), and their decompositions into
# clamp / add / mul / div run slower. None of them is affine, so no pass needs to look inside.
KEEP_WHOLE = ("hardswish", "hardsigmoid", "silu", "mish", "softplus")


def _decompositions() -> dict:
    table = torch.export.default_decompositions()
    for name in KEEP_WHOLE:
        table.pop(getattr(aten, name).default, None)
    return table


def batch_of_two(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The example at batch 2: torch.export specializes a dimension whose example size is 1."""
    return tuple(torch.cat([x, x]) if x.shape[0] == 1 else x for x in inputs)


def _export(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[ExportedProgram, bool]:
    """Exports with a dynamic batch dimension; falls back to the example's static batch."""
    batch = Dim("batch")
    dynamic = tuple({0: batch} for _ in inputs)
    params = list(inspect.signature(model.forward).parameters.values())
    if len(params) == 1 and params[0].kind is inspect.Parameter.VAR_POSITIONAL:
        dynamic = (dynamic,)  # forward(*inputs): the specs nest like the arguments
    with quiet():
        try:
            return torch.export.export(model, batch_of_two(inputs), dynamic_shapes=dynamic, strict=False), False
        except Exception:  # the model specializes its batch size: keep the example's
            pass
        try:
            return torch.export.export(model, inputs, strict=False), True
        except Exception as exc:
            raise InputError(f"cannot trace the model with torch.export: {_trace_hint(exc)}") from exc


def _trace_hint(exc: BaseException) -> str:
    """One line out of a torch.export failure: what failed, where, and the usual fix."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    where = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("File ") or "line " in stripped and ".py" in stripped:
            where = stripped
    hint = ""
    lowered = text.lower()
    if "data dependent" in lowered or "data-dependent" in lowered or "guardondatadependent" in lowered:
        hint = (" -- the forward() branches on tensor values; make the branch a Python constant, "
                "or use torch.cond / torch.where")
    return f"{type(exc).__name__}: {first}" + (f" [{where}]" if where else "") + hint


def _has_static_batch(ep: ExportedProgram) -> bool:
    for spec in ep.graph_signature.input_specs:
        if spec.kind.name == "USER_INPUT":
            node = next(n for n in ep.graph.nodes if n.name == spec.arg.name)
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor) and val.dim() > 0:
                return not isinstance(val.shape[0], torch.SymInt)
    return True


def example_inputs_of(ep: ExportedProgram) -> tuple[torch.Tensor, ...]:
    """Random inputs with the user-input shapes an ExportedProgram was traced with (dynamic dims as 2)."""
    out = []
    for spec in ep.graph_signature.input_specs:
        if spec.kind.name != "USER_INPUT":
            continue
        node = next(n for n in ep.graph.nodes if n.name == spec.arg.name)
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise InputError(f"input '{spec.arg.name}' of the exported program is not a tensor")
        shape = [s if isinstance(s, int) else 2 for s in val.shape]
        out.append(random_like(shape, val.dtype))
    return tuple(out)


def _strip_guards(gm: fx.GraphModule) -> None:
    """Drops the `_guards_fn` call torch.export inserts: it only re-checks input shapes."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            gm.graph.erase_node(node)
    if hasattr(gm, "_guards_fn"):
        delattr(gm, "_guards_fn")
    gm.recompile()


def canonicalize_batch_views(gm: fx.GraphModule) -> bool:
    """Replaces `view(x, [batch, *rest])` by `view(x, [-1, *rest])` where x and the result lead with the batch."""
    shapes = infer_shapes(gm)
    changed = False
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in VIEW_OPS:
            continue
        src, dst = shapes.get(node.args[0]), shapes.get(node)
        if src is None or dst is None or not (src.batch_major and dst.batch_major):
            continue
        target = [-1, *dst.sample_shape]
        if list(node.args[1]) != target:
            node.args = (node.args[0], target)
            changed = True
    if changed:
        gm.graph.eliminate_dead_code()  # the sym_size nodes the views used
        gm.recompile()
    return changed
