"""GraphModule -> ONNX: torch.onnx's dynamo exporter (opset >= 17, dynamic batch), tidied by
onnx-graphsurgeon (cleanup, toposort), checked by onnx.checker."""

from __future__ import annotations

import os

import onnx
import torch
import torch.fx as fx
from torch.export import Dim

from .errors import FoldpassError, InputError, first_line
from .ir import batch_of_two
from .quiet import quiet

DEFAULT_OPSET = 18


def to_onnx(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], opset: int = DEFAULT_OPSET,
            dynamic_batch: bool = True, output_names: list[str] | None = None) -> onnx.ModelProto:
    """Exports `module` (a GraphModule or any nn.Module) to a checked, tidied ONNX model in memory."""
    if opset < 17:
        raise InputError(f"opset {opset} is too old: foldpass exports opset 17 or newer")
    dynamic = tuple({0: Dim("batch")} for _ in inputs) if dynamic_batch else None
    if isinstance(module, fx.GraphModule):
        for m in module.modules():
            m.training = False
    with quiet():
        try:
            program = torch.onnx.export(module, batch_of_two(inputs) if dynamic_batch else inputs, dynamo=True, opset_version=opset,
                                        dynamic_shapes=dynamic, output_names=output_names, verbose=False)
        except Exception as first:  # noqa: BLE001
            if not dynamic_batch:
                raise FoldpassError(f"ONNX export failed: {type(first).__name__}: {str(first).splitlines()[0]}") from first
            return to_onnx(module, inputs, opset, dynamic_batch=False, output_names=output_names)
    with quiet():
        model = tidy(program.model_proto)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001 - e.g. an op without a kernel for this dtype in this opset
        hint = ""
        if any(x.dtype == torch.bfloat16 for x in inputs):
            hint = " (bfloat16: most ONNX ops take it only from opset 22; cast the model to float32 or float16)"
        raise FoldpassError(f"the exported ONNX does not pass onnx.checker: {first_line(exc)}{hint}") from exc
    return model


def tidy(model: onnx.ModelProto) -> onnx.ModelProto:
    """Removes dead nodes and sorts the graph (onnx-graphsurgeon), keeping opset and IR version."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    tidied = gs.export_onnx(graph, do_type_check=False)
    tidied.ir_version = model.ir_version
    del tidied.opset_import[:]
    tidied.opset_import.extend(model.opset_import)
    tidied.producer_name, tidied.producer_version = "foldpass", _version()
    return tidied


def _version() -> str:
    from . import __version__

    return __version__


def save_atomic(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Writes `model` to `path` via a temporary file in the same directory and a rename."""
    path = os.fspath(path)
    tmp = f"{path}.foldpass-tmp-{os.getpid()}"
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    except OSError as exc:  # disk full, permissions: the old file (if any) stays as it was
        raise FoldpassError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def onnx_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
