"""foldpass: a graph-rewriting compiler pass for CNNs (Joyce & Verschelde, Theorem 3.1 and the
skip-connection homotopy). Trace -> remove t = 0 skips -> fold linear regions into one Gemm ->
verified ONNX.

    result = foldpass.optimize(model, example_input)
    result.module            # optimized torch.fx.GraphModule
    result.report            # what was done
    result.save_onnx("model.onnx")   # exported, verified under onnxruntime, then written

Also: homotopy training (blend_residuals, make_schedule, train) and low-rank decomposition (decompose).
"""

__version__ = "0.1.0"

import numpy as _np
import torch as _torch

from .errors import FoldpassError, InputError, PassError, VerificationError
from .decompose import DecomposeResult, decompose
from .homotopy import Blend, MultiBlend, blend_residuals, set_t
from .ir import trace
from .loading import Source, load_source, parse_input_shape
from .optimize import OptimizeResult, optimize
from .passes import PIPELINES, PassResult, run_pipeline
from .report import Report
from .schedules import Schedule, make_schedule
from .training import train


def randomize_batchnorm(model: _torch.nn.Module, seed: int = 0) -> _torch.nn.Module:
    """Gives every batch norm non-trivial statistics and affine parameters (for examples and tests)."""
    gen = _torch.Generator().manual_seed(seed)
    with _torch.no_grad():
        for m in model.modules():
            if isinstance(m, _torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(_torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(_torch.rand(n, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(_torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(_torch.randn(n, generator=gen) * 0.2)
    return model


__all__ = [
    "PIPELINES", "Blend", "DecomposeResult", "FoldpassError", "InputError", "MultiBlend", "OptimizeResult",
    "PassError", "PassResult", "Report", "Schedule", "Source", "VerificationError", "__version__", "blend_residuals",
    "decompose", "load_source", "make_schedule", "optimize", "parse_input_shape",
    "randomize_batchnorm", "run_pipeline", "set_t", "trace", "train",
]
