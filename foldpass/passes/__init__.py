"""foldpass's passes: one file each, every one a function (GraphModule, PassContext) -> PassResult."""

from .affine_folding import affine_folding
from .base import Note, PassResult
from .batchnorm_folding import batchnorm_folding
from .batched_matmul import batched_matmul
from .broadcast_matmul import broadcast_matmul
from .concat_chains import concat_chains
from .constant_propagation import constant_propagation
from .context import PassContext
from .linear_matmul import linear_matmul
from .linear_regions import find_linear_regions, linear_region_detection
from .manager import PIPELINES, PipelineResult, get_pipeline, run_pipeline
from .reshape_chains import reshape_chains
from .scale_folding import scale_folding
from .zero_skip_elimination import zero_skip_elimination

__all__ = [
    "PIPELINES", "Note", "PassContext", "PassResult", "PipelineResult", "affine_folding", "batched_matmul", "batchnorm_folding",
    "broadcast_matmul", "concat_chains",
    "constant_propagation", "find_linear_regions", "get_pipeline", "linear_matmul", "linear_region_detection",
    "reshape_chains", "run_pipeline", "scale_folding", "zero_skip_elimination",
]
