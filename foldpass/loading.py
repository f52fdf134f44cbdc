"""Model sources a user can name, each loaded without running code it did not ask to run:

    model.pt2              torch.export.save() output: no pickle, safe to load
    model.onnx             an ONNX file (external data included): read as data, imported by onnx_import
    model.pt / .pth        torch.save(model): a pickle, unpickled only with trust_pickle=True
    pkg.module:build       an importable callable returning an nn.Module (+ weights= a state dict,
                           loaded with weights_only=True)
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import warnings
import zipfile

import torch
from torch.export import ExportedProgram

from .errors import InputError, first_line
from .ir import example_inputs_of, random_like

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".bin")


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """'1,1,28,28' -> (1, 1, 28, 28)."""
    if text is None:
        return None
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise InputError(f"--input-shape must be integers separated by commas, like 1,1,28,28; got '{text}'") from None
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise InputError(f"--input-shape needs a batch and at least one more positive dimension; got '{text}'")
    return shape


def load_source(source: str, input_shape: tuple[int, ...] | None = None, weights: str | None = None,
                trust_pickle: bool = False) -> tuple[torch.nn.Module | ExportedProgram, tuple[torch.Tensor, ...]]:
    """The model a source names and example inputs for it."""
    if source.endswith(".onnx"):
        return _load_onnx(source, input_shape)
    if source.endswith(".pt2"):
        program = _load_pt2(source)
        inputs = (random_like(input_shape, torch.float32),) if input_shape else example_inputs_of(program)
        return program, inputs
    if ":" in source and not os.path.exists(source):
        model = _load_builder(source, weights)
    elif source.endswith(PICKLE_SUFFIXES):
        model = _load_pickle(source, trust_pickle)
    else:
        _require_file(source)
        raise InputError(f"{source}: unknown kind of model file; expected .pt2, .pt / .pth, or pkg.module:build")
    if input_shape is None:
        raise InputError(f"{source}: --input-shape is required for this source (for example --input-shape 1,1,28,28)")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return model, (random_like(input_shape, dtype),)


def _load_onnx(path: str, input_shape: tuple[int, ...] | None):
    from .onnx_import import OnnxModule, input_specs, load_onnx

    _require_file(path)
    model = load_onnx(path)
    specs = input_specs(model)
    if input_shape is not None and len(specs) != 1:
        raise InputError(f"{path}: --input-shape gives one shape, the model has {len(specs)} inputs")
    inputs = []
    for name, dims, dtype in specs:
        if input_shape is not None:
            if len(input_shape) != len(dims) or any(isinstance(d, int) and d and d != s
                                                     for d, s in zip(dims[1:], input_shape[1:])):
                raise InputError(f"{path}: --input-shape {','.join(map(str, input_shape))} does not fit input "
                                 f"'{name}' of shape {dims}")
            shape = input_shape
        else:
            if any(not isinstance(d, int) or not d for d in dims[1:]):
                raise InputError(f"{path}: input '{name}' has dynamic dims {dims}; give --input-shape")
            shape = (dims[0] if isinstance(dims[0], int) and dims[0] else 1, *dims[1:])
        inputs.append(random_like(shape, dtype))
    module = OnnxModule(model, path).eval()
    module.dynamic_dims = {name: [i for i, d in enumerate(dims) if i and not isinstance(d, int)] for name, dims, _ in specs}
    fixed = [dims[0] for _, dims, _ in specs if dims and isinstance(dims[0], int) and dims[0]]
    module.static_batch = fixed[0] if fixed else None  # the input file fixes its batch: so will the output
    return module, tuple(inputs)


def _require_file(path: str) -> None:
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise InputError(f"{path}: not a file")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: the file is empty")


def _load_pt2(path: str) -> ExportedProgram:
    _require_file(path)
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a torch.export archive (.pt2 files are zip archives written by torch.export.save)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.load(path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot load the exported program ({type(exc).__name__}: {first_line(exc)})") from exc


def _load_pickle(path: str, trust_pickle: bool) -> torch.nn.Module:
    _require_file(path)
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol: the error below says what matters
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise InputError(f"{path}: holds pickled objects beyond weights (a full torch.save(model)); unpickling "
                             "runs code from the file, so foldpass will not do it without --trust-pickle") from exc
        obj = _unpickle_trusted(path)
    except Exception as exc:  # noqa: BLE001 - truncated, random bytes, ...
        raise InputError(f"{path}: not a readable PyTorch file ({type(exc).__name__}: {first_line(exc)})") from exc
    if isinstance(obj, torch.nn.Module):
        return obj
    if isinstance(obj, dict):
        raise InputError(f"{path}: holds a state dict (weights only), not a model; name the architecture: "
                         "foldpass optimize pkg.module:build --weights " + path)
    raise InputError(f"{path}: holds a {type(obj).__name__}, not an nn.Module")


def _unpickle_trusted(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot unpickle ({type(exc).__name__}: {first_line(exc)})") from exc


def _load_builder(spec: str, weights: str | None) -> torch.nn.Module:
    module_name, _, attr_name = spec.partition(":")
    if not module_name or not attr_name:
        raise InputError(f"'{spec}': expected pkg.module:callable")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"'{spec}': cannot import {module_name} ({type(exc).__name__}: {first_line(exc)})") from exc
    builder = module
    for part in attr_name.split("."):
        builder = getattr(builder, part, None)
        if builder is None:
            raise InputError(f"'{spec}': {module_name} has no attribute '{attr_name}'")
    try:
        model = builder() if callable(builder) and not isinstance(builder, torch.nn.Module) else builder
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"'{spec}': calling it failed ({type(exc).__name__}: {first_line(exc)})") from exc
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"'{spec}' returned a {type(model).__name__}, not an nn.Module")
    if weights:
        _require_file(weights)
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
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
    return model
