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
import weakref
from typing import Callable

import torch
import torch.fx as fx
from torch.export import Dim, ExportedProgram

from .defaults import DEFAULT_ATOL, DEFAULT_RTOL
from .errors import InputError
from .graph import BATCH_KEY, INPUTS_KEY, VIEW_OPS, BatchPlan, random_like
from .quiet import quiet
from .shapes import infer_shapes
from .verification import compare, output_tensors

aten = torch.ops.aten




def trace(model: torch.nn.Module | ExportedProgram, inputs: tuple[torch.Tensor, ...],
          batch: str = "auto") -> fx.GraphModule:
    """Returns the normalized GraphModule of `model` (an nn.Module in eval mode, or an ExportedProgram).

    batch: "auto" -- dynamic where the model allows it; an ExportedProgram that fixes its batch only
    because it was exported without dynamic_shapes gets a dynamic batch back (restore_dynamic_batch);
    "dynamic" -- the same, but an error where the batch cannot be dynamic; "static" -- as traced.
    What happened is gm's BatchPlan (graph.BatchPlan.of(gm)).
    """
    if isinstance(model, ExportedProgram):
        ep, static = model, _has_static_batch(model)
    else:
        ep, static, _ = _export(model, inputs, dynamic=batch != "static")
    restore = static and batch != "static" and isinstance(model, ExportedProgram)
    # a program to restore is exported again: its decompositions run once, on the dynamic one
    gm = _normalize(ep, inputs, static, decompose=not restore)
    if not static:
        _PROGRAMS[gm] = ep
    if restore:
        gm = restore_dynamic_batch(gm, inputs, static_graph=lambda: _normalize(ep, inputs, static))
    if batch == "dynamic" and BatchPlan.of(gm).size:
        raise InputError(f"the batch cannot be dynamic: {BatchPlan.of(gm).note}")
    return gm


# gm -> the program torch.export traced it from (dynamic batch only): the direct-export comparison
# hands it to torch.onnx instead of exporting the model a second time. Weak: never copied with gm.
_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def program_of(gm: fx.GraphModule) -> ExportedProgram | None:
    """The dynamic-batch program gm was traced from (before foldpass's decompositions), if any."""
    return _PROGRAMS.get(gm)


def _normalize(ep: ExportedProgram, inputs: tuple[torch.Tensor, ...], static: bool,
               decompose: bool = True) -> fx.GraphModule:
    """run_decompositions -> .module() -> guards stripped, batch views canonicalized."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if decompose:
            ep = ep.run_decompositions(_decompositions())
        gm = ep.module()
    gm = fx.GraphModule(gm, gm.graph)  # a plain GraphModule: ep.module()'s own class refuses .eval() / .train()
    gm.meta[INPUTS_KEY] = tuple(inputs)
    gm.meta[BATCH_KEY] = BatchPlan.fixed(inputs[0].shape[0], "the model fixes its batch size") if static \
        else BatchPlan()
    _strip_guards(gm)
    canonicalize_batch_views(gm)
    gm.eval()  # the ops are already the eval-mode ones
    return gm


# Ops kept whole. Activations: ONNX has an op for each (HardSwish, ...), and their decompositions
# into clamp / add / mul / div run slower. Attention: torch.onnx writes scaled_dot_product_attention
# as the direct export does (MatMul, Softmax, MatMul), while its decomposition adds a guard for
# fully masked rows (Equal, Not, ReduceMax, Cast, Where: 7 ops per attention block). Einsum: ONNX
# has Einsum, and its decomposition writes 4 to 6 Unsqueeze / Transpose / Reshape ops around each
# MatMul (MaxViT's attention: 44 einsums, +390 ops). None of them is affine in its activations, so
# no pass needs to look inside; an einsum that reads a weight is kept whole too, and is not folded.
# avg_pool1d: ONNX's AveragePool takes 3-D input, its decomposition adds an Unsqueeze and a Squeeze.
# linalg_vector_norm: ONNX's ReduceL2 (ReduceL1, ...), as the direct export and the TorchScript exporter
# write it; its decomposition is Pow, ReduceSum, Pow (swin_v2's cosine attention: 24 norms, +48 ops).
KEEP_WHOLE = ("hardswish", "hardsigmoid", "silu", "mish", "softplus", "scaled_dot_product_attention", "einsum",
              "avg_pool1d", "linalg_vector_norm")


def _decompositions() -> dict:
    table = torch.export.default_decompositions()
    for name in KEEP_WHOLE:
        table.pop(getattr(aten, name).default, None)
    return table


def batch_of_two(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The example at batch 2: torch.export specializes a dimension whose example size is 1."""
    return tuple(torch.cat([x, x]) if x.shape[0] == 1 else x for x in inputs)


def _export(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...],
            dynamic: bool = True) -> tuple[ExportedProgram, bool, str | None]:
    """(program, static, why the batch could not be dynamic): exports with a dynamic batch dimension,
    and falls back to the example's static batch."""
    why = None
    if dynamic:
        shapes = tuple({0: Dim("batch")} for _ in inputs)
        params = list(inspect.signature(model.forward).parameters.values())
        if len(params) == 1 and params[0].kind is inspect.Parameter.VAR_POSITIONAL:
            shapes = (shapes,)  # forward(*inputs): the specs nest like the arguments
        with quiet():
            try:
                return torch.export.export(model, batch_of_two(inputs), dynamic_shapes=shapes, strict=False), False, None
            except Exception as exc:  # noqa: BLE001 - the model specializes its batch size: keep the example's (why)
                why = _trace_hint(exc)
    with quiet():
        try:
            return torch.export.export(model, inputs, strict=False), True, why
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


def restore_dynamic_batch(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...],
                          static_graph: Callable[[], fx.GraphModule] | None = None) -> fx.GraphModule:
    """A program exported at a fixed batch (torch.export without dynamic_shapes specializes it) is
    traced again with a dynamic batch, then checked: at batch 1 it must equal the program, and at
    batch 3 each sample must equal that sample run alone. Where either fails, or torch.export cannot
    make the batch dynamic, the static graph is kept (gm, or static_graph() where gm is not yet
    decomposed) and its BatchPlan says why, naming the node.
    """
    def kept(why: str) -> fx.GraphModule:
        static = static_graph() if static_graph is not None else gm
        static.meta[BATCH_KEY] = BatchPlan.fixed(inputs[0].shape[0], why)
        return static

    ep, static, why = _export(gm, inputs)
    if static:
        return kept(f"the batch cannot be made dynamic ({why or 'torch.export kept it fixed'})")
    new = _normalize(ep, inputs, static=False)
    mixing = _batch_mixing_node(gm, new, inputs)
    if mixing:
        return kept(mixing)
    new.meta[BATCH_KEY] = BatchPlan(None, True, f"dynamic (restored: the program was exported at batch "
                                                f"{inputs[0].shape[0]}; checked sample by sample at batch 3)")
    return new


def _close(got, want) -> bool:
    """got equals want within the verification gate's default tolerance (verification.compare)."""
    if not isinstance(got, torch.Tensor) or not isinstance(want, torch.Tensor):
        return False
    err, scale, mismatch = compare(want.detach().float().numpy(), got.detach().float().numpy())
    return mismatch is None and err <= DEFAULT_ATOL + DEFAULT_RTOL * scale


def _batch_mixing_node(static_gm: fx.GraphModule, gm: fx.GraphModule, inputs) -> str | None:
    """None if `gm` treats the samples of a batch independently (and equals static_gm at its batch),
    else which node mixes them."""
    gen = torch.Generator().manual_seed(7)
    x1 = tuple(torch.randn(x.shape, generator=gen).to(x.dtype) for x in inputs)
    with torch.no_grad():
        if not all(_close(a, b) for a, b in zip(output_tensors(gm(*x1)), output_tensors(static_gm(*x1)))):
            return "the re-traced graph differs from the program at its own batch size"
        x3 = tuple(torch.randn(3, *x.shape[1:], generator=gen).to(x.dtype) for x in inputs)
        together = _node_values(gm, x3)
        alone = [_node_values(gm, tuple(x[i:i + 1] for x in x3)) for i in range(3)]
    data = {n for n in gm.graph.nodes if n.op == "placeholder"}
    for node in gm.graph.nodes:
        if node.op != "call_function" or not any(a in data for a in node.all_input_nodes):
            continue
        data.add(node)
        value = together.get(node.name)
        if not isinstance(value, torch.Tensor):
            continue
        if value.dim() == 0 or value.shape[0] != 3:
            return (f"{node.name} ({_op(node)}) reduces or reshapes across the batch axis (its output is "
                    f"{list(value.shape)} at batch 3)")
        if not all(_close(value[i:i + 1], alone[i].get(node.name)) for i in range(3)):
            return f"{node.name} ({_op(node)}) mixes the samples of a batch"
    return None


def _op(node: fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target))


def _node_values(gm: fx.GraphModule, args) -> dict[str, object]:
    values: dict[str, object] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            values[n.name] = out
            return out

    Recorder(gm).run(*args)
    return values
