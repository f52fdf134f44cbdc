"""foldpass: a graph-rewriting compiler pass for CNNs (Joyce & Verschelde, Theorem 3.1 and the
skip-connection homotopy). Load -> trace -> passes -> export -> verify -> write.

    source = foldpass.load_source("model.pt2")      # or any nn.Module / ExportedProgram
    result = foldpass.optimize(source)
    result.module            # optimized torch.fx.GraphModule
    result.report            # what was done (result.report.render() prints the table)
    result.save_onnx("model.onnx")   # exported, verified under onnxruntime, then written

Side products, each its own package built on the core: foldpass.homotopy (blended skips, schedules,
training), foldpass.decomposition (CP / Tucker-2 / TT) and foldpass.compression (`compress`: the
lossless folds with de-skip, pruning, low rank and int8, each kept only where it measures faster
within an accuracy budget). Names are imported on first use, so
`import foldpass` (and `foldpass --help`) does not import torch.
"""

from __future__ import annotations

import importlib

from . import defaults  # noqa: F401 - re-exported (__all__ below)
from ._version import __version__  # noqa: F401 - re-exported
from .errors import FoldpassError, InputError, PassError, VerificationError  # noqa: F401 - re-exported

# public name -> the module that defines it
# (no module is named like a public function: importing it would replace the function on the package)
_API = {
    "Source": "loading", "load_source": "loading", "parse_input_shape": "loading", "load_npy_inputs": "loading",
    "optimize": "optimizer", "OptimizeResult": "optimizer", "check_options": "optimizer",
    "optimize_onnx": "optimizer",
    "Report": "report", "trace": "tracing", "set_t": "blend_weight", "get_t": "blend_weight",
    "PIPELINES": "passes", "PassResult": "passes", "run_pipeline": "passes",
    "check_outputs": "outputs", "write_json": "outputs", "verify": "verification", "Verification": "verification",
    "bench": "benchmark", "BenchResult": "benchmark", "demo": "quickstart", "DemoResult": "quickstart",
    "load_data": "data", "DataSplits": "data",
    "versions": "about", "require": "extras", "info": "info", "Info": "info",
    # the side products
    "Blend": "homotopy", "MultiBlend": "homotopy", "blend_residuals": "homotopy", "make_schedule": "homotopy",
    "Schedule": "homotopy", "train": "homotopy",
    "decompose": "decomposition", "DecomposeResult": "decomposition",
    "compress": "compression", "CompressResult": "compression",
}


_SUBPACKAGES = ("homotopy", "decomposition", "compression", "models", "passes", "rules")


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    if name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'foldpass' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(_API))


__all__ = sorted(["FoldpassError", "InputError", "PassError", "VerificationError", "__version__", "defaults", *_API])
