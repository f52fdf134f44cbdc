"""GraphModule -> ONNX: torch.onnx's dynamo exporter (opset >= 18, dynamic batch), tidied by
onnx-graphsurgeon (cleanup, toposort), checked by onnx.checker."""

from __future__ import annotations

import copy
import os
import sys

import onnx
import torch
import torch.fx as fx
from torch.export import Dim

from ._version import __version__
from .defaults import DEFAULT_OPSET, MIN_OPSET
from .errors import FoldpassError, InputError, first_line
from .onnx_forms import flattens, gelu_forms, global_average_pools
from .quiet import quiet
from .tracing import batch_of_two


def to_onnx(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], opset: int = DEFAULT_OPSET,
            dynamic_batch: bool = True, output_names: list[str] | None = None) -> onnx.ModelProto:
    """Exports `module` (a GraphModule or any nn.Module) to a checked, tidied ONNX model in memory."""
    check_opset(opset)
    dynamic = tuple({0: Dim("batch")} for _ in inputs) if dynamic_batch else None
    if isinstance(module, fx.GraphModule):  # pre-export rewrites go on a copy of the graph (the weights shared)
        module = fx.GraphModule(module, copy.deepcopy(module.graph))
        for m in module.modules():
            m.training = False
        broadcast_copy_sources(module)
    translations = _opaque_translations(module)
    with quiet():
        try:
            program = torch.onnx.export(module, batch_of_two(inputs) if dynamic_batch else inputs, dynamo=True,
                                        opset_version=opset, custom_translation_table=translations,
                                        dynamic_shapes=dynamic, output_names=output_names, verbose=False)
        except Exception as first:
            if not dynamic_batch:
                raise FoldpassError(f"ONNX export failed: {type(first).__name__}: {first_line(first)}") from first
            return to_onnx(module, inputs, opset, dynamic_batch=False, output_names=output_names)
    model = program.model_proto
    if translations:
        from .onnx_opaque import write_back

        write_back(model)  # the ONNX nodes that passed through, as they were
    global_average_pools(model)  # onnx_forms: the forms onnxruntime runs fastest, exactly equal
    gelu_forms(model)
    flattens(model)
    with quiet():
        model = tidy(model)
    if _written_opset(model) != opset:
        raise InputError(f"opset {opset}: torch.onnx wrote opset {_written_opset(model)} instead; "
                         f"choose {DEFAULT_OPSET}")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        hint = ""
        if any(x.dtype == torch.bfloat16 for x in inputs):
            hint = " (bfloat16: most ONNX ops take it only from opset 22; cast the model to float32 or float16)"
        raise FoldpassError(f"the exported ONNX does not pass onnx.checker: {first_line(exc)}{hint}") from exc
    return model


def _opaque_translations(module: torch.nn.Module) -> dict | None:
    """torch.onnx's translation of passed-through ONNX nodes (onnx_opaque), once any was imported."""
    if "foldpass.onnx_opaque" not in sys.modules:
        return None
    from .onnx_opaque import TRANSLATIONS

    return TRANSLATIONS


def broadcast_copy_sources(gm: fx.GraphModule) -> int:
    """copy(dst, src) with a smaller src  ->  copy(dst, expand(src, dst.shape)): the same values.

    torch.onnx (2.14) writes aten.copy as Identity(src) and drops the broadcast; a 0-dim src then
    reaches ops that expect dst's shape (torchvision's Swin builds its attention mask this way, and
    its export failed onnx.checker with "Transpose: invalid attribute perm {1, 0}"). Returns how
    many copies it rewrote (in place: to_onnx runs it on its own copy of the graph, so the
    optimized module a user holds is not changed by writing it)."""
    aten = torch.ops.aten
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.copy.default:
            continue
        dst, src = node.args[0], node.args[1]
        want = dst.meta.get("val") if isinstance(dst, fx.Node) else None
        have = src.meta.get("val") if isinstance(src, fx.Node) else None
        if want is None or have is None or tuple(want.shape) == tuple(have.shape):
            continue
        with gm.graph.inserting_before(node):
            expanded = gm.graph.call_function(aten.expand.default, (src, list(want.shape)))
        expanded.meta["val"] = want
        node.args = (dst, expanded, *node.args[2:])
        count += 1
    if count:
        gm.recompile()
    return count


def check_opset(opset: int) -> None:
    """Refuses an opset foldpass cannot write (InputError names it and the range)."""
    if opset < MIN_OPSET:
        raise InputError(f"opset {opset} is too old: foldpass exports opset {MIN_OPSET} or newer (torch.onnx's "
                         "exporter writes 18, and onnx's version converter cannot take ReduceMean below it)")
    if opset > onnx.defs.onnx_opset_version():
        raise InputError(f"opset {opset} is newer than this onnx knows ({onnx.defs.onnx_opset_version()}); "
                         f"choose {MIN_OPSET} to {onnx.defs.onnx_opset_version()}")


def _written_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def tidy(model: onnx.ModelProto) -> onnx.ModelProto:
    """Removes dead nodes and sorts the graph (onnx-graphsurgeon), keeping opset and IR version."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    tidied = gs.export_onnx(graph, do_type_check=False)
    tidied.ir_version = model.ir_version
    del tidied.opset_import[:]
    tidied.opset_import.extend(model.opset_import)
    tidied.producer_name, tidied.producer_version = "foldpass", __version__
    return tidied


EXTERNAL_DATA_BYTES = 2**31 - 2**27  # protobuf's 2 GiB limit, with room for the graph itself


def _weight_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) or 4 * len(t.float_data) for t in model.graph.initializer)


def save_atomic(model: onnx.ModelProto, path: str | os.PathLike, check=None, force: bool = True) -> None:
    """Writes `model` to `path` through outputs.atomic_write (temporary file beside it, then a move).

    `check(tmp_path)`, if given, runs on the written temporary file first (the verification gate);
    if it raises, nothing is moved and the temporary file is removed. Weights over
    EXTERNAL_DATA_BYTES go to an external data file `<name>.data` next to it, which follows the same
    policy (never over an existing file without force) and is removed if the model is not written.
    """
    from .outputs import atomic_write, check_output

    path = os.path.abspath(os.fspath(path))
    if _weight_bytes(model) <= EXTERNAL_DATA_BYTES:
        atomic_write(path, lambda tmp: onnx.save(model, tmp), check, force)
        return
    data = os.path.basename(path) + ".data"
    data_path = check_output(os.path.join(os.path.dirname(path), data), "external data file", force)
    done = False
    try:
        # the model names its data file by the final name; the tmp model sits beside it until the move
        atomic_write(path, lambda tmp: onnx.save_model(model, tmp, save_as_external_data=True,
                                                      all_tensors_to_one_file=True, location=data), check, force)
        done = True
    finally:
        if not done and os.path.exists(data_path):
            os.remove(data_path)


def rename_io(model: onnx.ModelProto, inputs: list[str] | None, outputs: list[str] | None) -> onnx.ModelProto:
    """Gives the graph's inputs and outputs the names of the model it came from."""
    mapping = {}
    for values, names in ((model.graph.input, inputs), (model.graph.output, outputs)):
        if names and len(names) == len(values):
            mapping.update({v.name: n for v, n in zip(values, names) if v.name != n})
    if not mapping:
        return model
    for v in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        v.name = mapping.get(v.name, v.name)
    for node in model.graph.node:
        node.input[:] = [mapping.get(i, i) for i in node.input]
        node.output[:] = [mapping.get(o, o) for o in node.output]
    return model


def rename_batch_axis(model: onnx.ModelProto, name: str | None, exported_as: str = "batch") -> onnx.ModelProto:
    """Gives the dynamic batch axis of the graph's inputs and outputs the source's own name."""
    if name and name != exported_as:
        for v in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
            for d in v.type.tensor_type.shape.dim:
                if d.dim_param == exported_as:
                    d.dim_param = name
    return model


def direct_export(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], opset: int = DEFAULT_OPSET,
                  dynamic_batch: bool = True) -> onnx.ModelProto:
    """The model exported the usual way, without foldpass: torch.onnx.export(dynamo=True) with its own
    optimizer on (the peer foldpass's files are compared with). `module` may be the ExportedProgram
    torch.export already made of it (dynamic batch): torch.onnx then translates it without exporting again."""
    dynamic = tuple({0: Dim("batch")} for _ in inputs) if dynamic_batch else None
    if isinstance(module, torch.export.ExportedProgram):
        dynamic = None  # the program carries its own
    with quiet(), torch.no_grad():
        program = torch.onnx.export(module, batch_of_two(inputs) if dynamic_batch else inputs, dynamo=True,
                                    opset_version=opset, dynamic_shapes=dynamic, optimize=True, verbose=False)
    return program.model_proto


def direct_export_ops(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], opset: int = DEFAULT_OPSET,
                      dynamic_batch: bool = True) -> dict[str, int] | str:
    """The op counts of direct_export: what foldpass's file must not be bigger than. A string says why
    there is none."""
    try:
        return onnx_op_counts(direct_export(module, inputs, opset, dynamic_batch))
    except Exception as exc:  # noqa: BLE001 - the direct export failing is itself the answer
        return f"the direct export fails ({type(exc).__name__}: {first_line(exc)})"


def onnx_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
