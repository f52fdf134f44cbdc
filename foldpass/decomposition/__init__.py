"""Low-rank decomposition of convolutions (lossy; the seed study 003): CP, Tucker-2 and Tensor-Train
with VBMF ranks, then batch-norm recalibration and fine-tuning. A side product built on the
compiler core (the 'decompose' extra: TensorLy, SciPy); the core never imports this package.

    decompose.py               decompose(): trace -> the low-rank pass (run_pipeline) -> recalibrate -> fine-tune
    low_rank_decomposition.py  the pass: k x k conv -> a chain of smaller convs, where that saves MACs
    cost.py                    parameters and MACs of a factorized chain
    vbmf.py                    EVBMF rank selection
    batchnorm_training.py      batch-norm recalibration (AdaBN) and trainable batch norm in the fx IR
"""

from .decompose import DecomposeResult, decompose
from .low_rank_decomposition import METHODS, LayerReport, low_rank_decomposition, parse_rank, plan

__all__ = ["METHODS", "DecomposeResult", "LayerReport", "decompose", "low_rank_decomposition", "parse_rank", "plan"]
