"""The pass manager: named pipelines, run to a fixed point, the graph linted after every pass.

    default    = constant_propagation, zero_skip_elimination, broadcast_matmul, batched_matmul, batchnorm_folding,
                 scale_folding, affine_folding, linear_matmul, reshape_chains, concat_chains
                 (then the linear-regions analysis is reported, for --explain)
    skips-only = constant_propagation, zero_skip_elimination

The order matters. Constant propagation comes first: it turns `1 - t`, `t / K` and `w[1]` into
constants, and only then can zero-skip elimination see `(1 - t) * b + t * s` with t == 0 as
`1 * b + 0 * s`. broadcast_matmul needs to know the weights are constants (it reads the same
constant analysis) and goes before the folds that read matmuls as regions; batched_matmul
(attention's flatten + bmm + unflatten -> matmul) with it. Batch norm folds into its conv, and scalar scales (a blend's leftover
`1 / (1 - t0)`) into theirs, before the regions are measured, so that a region's cost is that of
the convs that will really run. Affine folding rewrites the linear regions, an analysis it reads
from the context (context.py), as the other passes read shapes and constants. linear_matmul comes last: it turns
reshape + Gemm + reshape into MatMul (+ Add) once nothing before it needs the addmm, and
reshape_chains collapses the reshapes the folds left next to each other, and concat_chains joins a
concatenation into the one that reads it.

A pipeline runs in order, and again, until no pass changes the graph (at most `max_rounds`; the
report warns when it stops there). Every pass is called as `p(gm, ctx)`: one PassContext per run
carries the options (`max_fold_bytes`) and the cached analyses. After every pass:
`graph.lint()` and a recompile; whatever a pass raises comes back as a PassError that names the pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch.fx as fx

from ..defaults import DEFAULT_MAX_FOLD_BYTES, PIPELINE_NAMES
from ..errors import FoldpassError, InputError, PassError
from .affine_folding import affine_folding
from .base import Note, PassResult
from .batchnorm_folding import batchnorm_folding
from .batched_matmul import batched_matmul
from .broadcast_matmul import broadcast_matmul
from .concat_chains import concat_chains
from .constant_propagation import constant_propagation
from .linear_matmul import linear_matmul
from .context import PassContext
from .linear_regions import linear_region_detection
from .reshape_chains import reshape_chains
from .scale_folding import scale_folding
from .zero_skip_elimination import zero_skip_elimination

Pass = Callable[..., PassResult]

PIPELINES: dict[str, tuple[Pass, ...]] = {
    "default": (constant_propagation, zero_skip_elimination, broadcast_matmul, batched_matmul, batchnorm_folding,
                scale_folding, affine_folding, linear_matmul, reshape_chains, concat_chains),
    "skips-only": (constant_propagation, zero_skip_elimination),
    "none": (),
}
assert tuple(PIPELINES) == PIPELINE_NAMES
# the analyses a pipeline's report shows once its passes are done (what `--explain` prints under "info")
REPORTED: dict[str, tuple[Pass, ...]] = {"default": (linear_region_detection,)}


def get_pipeline(name: str) -> tuple[Pass, ...]:
    try:
        return PIPELINES[name]
    except KeyError:
        raise InputError(f"unknown pipeline '{name}'; valid pipelines: {', '.join(PIPELINES)}") from None


def pass_name(p: Pass) -> str:
    return p.func.__name__ if isinstance(p, partial) else p.__name__


@dataclass
class PipelineResult:
    module: fx.GraphModule
    notes: list[Note] = field(default_factory=list)
    rounds: int = 0
    changed_by: dict[str, int] = field(default_factory=dict)  # pass name -> rounds in which it changed the graph
    seconds: dict[str, float] = field(default_factory=dict)  # pass name -> its time, summed over the rounds
    fixed_point: bool = True  # False: the last round still changed the graph (stopped at max_rounds)
    context: PassContext | None = None  # the run's options and analyses (ctx.computed: how often each was computed)


def run_pipeline(gm: fx.GraphModule, pipeline: str | tuple[Pass, ...] = "default", max_rounds: int = 8,
                 on_pass: Callable[[str], None] | None = None,
                 max_fold_bytes: int = DEFAULT_MAX_FOLD_BYTES, context: PassContext | None = None) -> PipelineResult:
    """Runs the passes (a pipeline's name, or passes) in order until none changes gm, each as
    `p(gm, ctx)` with one context for the run (`context`, or one made with `max_fold_bytes`).
    Notes of the last round are kept (declined / info), applied notes of every round; then the
    pipeline's reported analyses (REPORTED) as info notes.
    """
    passes = get_pipeline(pipeline) if isinstance(pipeline, str) else tuple(pipeline)
    ctx = context or PassContext(max_fold_bytes=max_fold_bytes)
    result = PipelineResult(gm, context=ctx)
    last_round: list[Note] = []
    for round_no in range(1, max_rounds + 1):
        changed, last_round = False, []
        for p in passes:
            name = pass_name(p)
            if on_pass:
                on_pass(name)
            began = time.perf_counter()
            try:
                out = p(result.module, ctx)
                out.module.graph.lint()
                out.module.recompile()
            except FoldpassError:  # the pass refused its input (a missing extra, a bad option): said as it is
                raise
            except Exception as exc:
                raise PassError(name, exc) from exc
            result.seconds[name] = result.seconds.get(name, 0.0) + time.perf_counter() - began
            if out.modified:
                ctx.invalidate(out.module)
            result.module = out.module
            result.notes.extend(n for n in out.notes if n.action == "applied")
            last_round.extend(n for n in out.notes if n.action != "applied")
            if out.modified:
                changed = True
                result.changed_by[name] = result.changed_by.get(name, 0) + 1
        result.rounds = round_no
        if not changed:
            break
    result.fixed_point = not changed
    result.notes.extend(last_round)
    for analysis in REPORTED.get(pipeline, ()) if isinstance(pipeline, str) else ():
        result.notes.extend(analysis(result.module, ctx).notes)
    return result
