"""Model sources a user can name, each loaded without running code it did not ask to run:

    model.pt2              torch.export.save() output: checked and loaded with no pickle (safe_pt2.py)
    model.onnx             an ONNX file (external data included): read as data, imported by onnx_import
    model.pt / .pth        torch.save(model): a pickle, unpickled only with trust=True
    pkg.module:build       an importable callable returning an nn.Module (+ weights= a state dict,
                           loaded with weights_only=True); importing it runs its code: the user named it

`load_source` returns one `Source`: the model, example inputs, what the verification gate compares
against, the I/O names and opset to keep, and the batch policy. `optimize` takes it as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.export import ExportedProgram

from .defaults import DEFAULT_MAX_MODEL_BYTES
from .errors import InputError, first_line
from .graph import random_like
from .tracing import example_inputs_of

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".bin")
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass
class Source:
    """A loaded model and everything the rest of the flow needs to know about where it came from."""

    model: torch.nn.Module | ExportedProgram
    inputs: tuple[torch.Tensor, ...]
    name: str = ""  # what the user named (a path or pkg.module:build)
    path: str | None = None  # the file read, if any: no output may be written over it
    reference: Callable | None = None  # what the gate compares with (None: the model itself)
    input_names: list[str] | None = None
    output_names: list[str] | None = None
    opset: int | None = None  # the input's opset, for an ONNX source
    static_batch: int | None = None  # the source fixes its batch to this size
    batch_name: str | None = None  # the name of the source's dynamic batch axis (ONNX dim_param), kept on output
    warnings: list[str] = field(default_factory=list)


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """'1,1,28,28' -> (1, 1, 28, 28)."""
    if text is None:
        return None
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise InputError(f"input_shape must be integers separated by commas, like 1,1,28,28; got '{text}'") from None
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise InputError(f"input_shape needs a batch and at least one more positive dimension; got '{text}'")
    return shape


def load_source(source: str, input_shape: tuple[int, ...] | None = None, weights: str | None = None,
                trust: bool = False, max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES, *,
                trust_pickle: bool | None = None) -> Source:
    """The model a source names, with example inputs for it. `trust` allows unpickling (and skips the
    .pt2 checks); `trust_pickle` is its older name."""
    trust = trust or bool(trust_pickle)
    if source.endswith((".onnx", ".pt2")) and weights:
        raise InputError(f"weights: {source} already holds its weights; weights go with a pkg.module:build source")
    if source.endswith(".onnx"):
        return _load_onnx(source, input_shape, max_model_bytes)
    if source.endswith(".pt2"):
        program = _load_pt2(source, trust)
        inputs = (random_like(input_shape, torch.float32),) if input_shape else example_inputs_of(program)
        return Source(program, inputs, source, path=source)
    path = None
    if os.path.exists(source) or not _looks_like_builder(source):
        path = source
        if not source.endswith(PICKLE_SUFFIXES):
            _require_file(source)
            raise InputError(f"{source}: unknown kind of model file; expected .pt2, .onnx, .pt / .pth, "
                             "or pkg.module:build")
        model = _load_pickle(source, trust)
    else:
        model = _load_builder(source, weights)
    if input_shape is None:
        raise InputError(f"{source}: input_shape is required for this source (for example 1,1,28,28)")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return Source(model, (random_like(input_shape, dtype),), source, path=path)


def _looks_like_builder(source: str) -> bool:
    """pkg.module:callable, and not a file name with a colon in it (data:2024.pt)."""
    module, sep, attr = source.partition(":")
    return bool(sep) and bool(_MODULE_NAME.fullmatch(module)) and bool(_MODULE_NAME.fullmatch(attr))


def _load_onnx(path: str, input_shape: tuple[int, ...] | None, max_model_bytes: int) -> Source:
    from .onnx_import import load_onnx

    _require_file(path)
    return onnx_source(load_onnx(path, max_model_bytes), input_shape, name=path, path=path)


def onnx_source(model, input_shape: tuple[int, ...] | None = None, name: str = "<onnx model>",
                path: str | None = None) -> Source:
    """A Source for an ONNX model already in memory (onnx.ModelProto); its reference is the same
    model under onnxruntime."""
    from .defaults import DEFAULT_OPSET
    from .onnx_import import OnnxModule, OrtReference, check_onnx, input_specs, opset_of, upgraded

    if path is None:
        check_onnx(model, name)
    specs = input_specs(model)
    if input_shape is not None and len(specs) != 1:
        raise InputError(f"{name}: input_shape gives one shape, the model has {len(specs)} inputs")
    inputs, notes = [], []
    for name, dims, dtype in specs:
        if input_shape is not None:
            if len(input_shape) != len(dims) or any(isinstance(d, int) and d and d != s
                                                     for d, s in zip(dims[1:], input_shape[1:])):
                raise InputError(f"{name}: input_shape {','.join(map(str, input_shape))} does not fit input "
                                 f"'{name}' of shape {dims}")
            shape = input_shape
        else:
            if any(not isinstance(d, int) or not d for d in dims[1:]):
                raise InputError(f"{name}: input '{name}' has dynamic dims {dims}; give input_shape")
            shape = (dims[0] if isinstance(dims[0], int) and dims[0] else 1, *dims[1:])
        inputs.append(random_like(shape, dtype))
        dynamic = [i for i, d in enumerate(dims) if i and not isinstance(d, int)]
        if dynamic:
            notes.append(f"input '{name}': dynamic dims {dynamic} are fixed to the example's sizes; "
                         "only the batch stays dynamic")
    fixed = [dims[0] for _, dims, _ in specs if dims and isinstance(dims[0], int) and dims[0]]
    names = [dims[0] for _, dims, _ in specs if dims and isinstance(dims[0], str)]
    module = OnnxModule(upgraded(model, DEFAULT_OPSET), path).eval()
    if module.passed_through:
        notes.append(f"passed through as they are (no rewrite crosses them): {', '.join(module.passed_through)}")
    # onnxruntime opens a path only by a UTF-8 name; any other name is read here (the model already is)
    reference = OrtReference(path if path and _utf8(path) else model.SerializeToString())
    return Source(module, tuple(inputs), name, path=path, reference=reference,
                  input_names=module.input_names, output_names=module.output_names, opset=opset_of(model),
                  static_batch=fixed[0] if fixed else None, batch_name=names[0] if names else None, warnings=notes)


def _utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _require_file(path: str) -> None:
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise InputError(f"{path}: not a file")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: the file is empty")


def _load_pt2(path: str, trust: bool = False) -> ExportedProgram:
    """torch.export.load on a sanitized copy of the archive (safe_pt2), or on the file itself with trust."""
    from .quiet import quiet
    from .safe_pt2 import sanitized_archive

    _require_file(path)
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a torch.export archive (.pt2 files are zip archives written by torch.export.save)")
    archive = path if trust else sanitized_archive(path)
    try:
        with quiet():  # torch logs a traceback of its own before re-raising
            return torch.export.load(archive)
    except Exception as exc:
        raise InputError(f"{path}: cannot load the exported program ({type(exc).__name__}: {first_line(exc)})") from exc


def _load_pickle(path: str, trust: bool) -> torch.nn.Module:
    _require_file(path)
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol: the error below says what matters
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust:
            raise InputError(f"{path}: holds pickled objects beyond weights (a full torch.save(model)); unpickling "
                             "runs code from the file, so foldpass will not do it without trust=True") from exc
        obj = _unpickle_trusted(path)
    except Exception as exc:
        raise InputError(f"{path}: not a readable PyTorch file ({type(exc).__name__}: {first_line(exc)})") from exc
    if isinstance(obj, torch.nn.Module):
        return obj
    if isinstance(obj, dict):
        raise InputError(f"{path}: holds a state dict (weights only), not a model; name the architecture "
                         "(a pkg.module:build source) and pass this file as weights")
    raise InputError(f"{path}: holds a {type(obj).__name__}, not an nn.Module")


def _unpickle_trusted(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputError(f"{path}: cannot unpickle ({type(exc).__name__}: {first_line(exc)})") from exc


def import_user_module(module_name: str):
    """Imports the user's module. The working directory is searched *after* every installed package
    (appended to sys.path), so a file planted there can never shadow foldpass's own imports."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    if importlib.util.find_spec(module_name.split(".")[0]) is None and module_name.split(".")[0] == "models":
        module_name = "foldpass." + module_name  # the paper's networks, shipped as foldpass.models
    return importlib.import_module(module_name)


def _load_builder(spec: str, weights: str | None) -> torch.nn.Module:
    module_name, _, attr_name = spec.partition(":")
    reading = f"'{spec}' (read as pkg.module:callable, since no file of that name exists)"
    try:
        module = import_user_module(module_name)
    except Exception as exc:
        raise InputError(f"{reading}: cannot import {module_name} ({type(exc).__name__}: {first_line(exc)})") from exc
    builder = module
    for part in attr_name.split("."):
        builder = getattr(builder, part, None)
        if builder is None:
            raise InputError(f"{reading}: {module_name} has no attribute '{attr_name}'")
    try:
        model = builder() if callable(builder) and not isinstance(builder, torch.nn.Module) else builder
    except Exception as exc:
        raise InputError(f"'{spec}': calling it failed ({type(exc).__name__}: {first_line(exc)})") from exc
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"'{spec}' returned a {type(model).__name__}, not an nn.Module")
    if weights:
        load_weights(model, weights, spec)
    return model


def load_weights(model: torch.nn.Module, weights: str, spec: str = "the model") -> None:
    """Loads a state dict (weights_only=True; a {'state_dict': ...} checkpoint too) into `model`."""
    _require_file(weights)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{weights}: not a weights file loadable with weights_only=True "
                         f"({type(exc).__name__}: {first_line(exc)})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"{weights}: holds a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{weights}: does not fit '{spec}': {first_line(exc)}") from exc


def load_npy_inputs(path: str, example: tuple[torch.Tensor, ...], static_batch: int | None = None
                    ) -> list[tuple[torch.Tensor, ...]]:
    """Extra verification inputs from a .npy file: one array, with the batch dimension, shaped like
    the model's single input. Read with allow_pickle=False; checked before any work."""
    import numpy as np

    if not path.endswith(".npy"):
        raise InputError(f"inputs {path}: expected a .npy file (one array saved with numpy.save)")
    _require_file(path)
    if len(example) != 1:
        raise InputError(f"inputs {path}: one array feeds one input; the model has {len(example)}")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"inputs {path}: not a readable .npy array ({type(exc).__name__})") from exc
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"inputs {path}: holds {array.dtype}; verification inputs must be floating point")
    want = tuple(example[0].shape)
    if array.ndim != len(want) or tuple(array.shape[1:]) != want[1:] or array.shape[0] < 1:
        raise InputError(f"inputs {path}: shape {tuple(array.shape)} does not fit the model's input "
                         f"(batch, {', '.join(map(str, want[1:]))})")
    if static_batch and array.shape[0] != static_batch:
        raise InputError(f"inputs {path}: batch {array.shape[0]}, but the model fixes its batch to {static_batch}")
    return [(torch.from_numpy(np.ascontiguousarray(array)).to(example[0].dtype),)]
