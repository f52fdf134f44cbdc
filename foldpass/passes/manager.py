"""The pass manager: named pipelines, run to a fixed point, the graph linted after every pass.

    PIPELINES["default"] = constant_propagation, zero_skip_elimination, batchnorm_folding,
                           scale_folding, linear_region_detection, affine_folding

A pipeline runs in order, and again, until no pass changes the graph (at most `max_rounds`).
After every pass: `graph.lint()` and a recompile; whatever a pass raises comes back as a
PassError that names the pass.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch.fx as fx

from ..errors import InputError, PassError
from .affine_folding import affine_folding
from .base import Note, PassResult
from .batchnorm_folding import batchnorm_folding
from .constant_propagation import constant_propagation
from .linear_regions import linear_region_detection
from .scale_folding import scale_folding
from .zero_skip_elimination import zero_skip_elimination

Pass = Callable[..., PassResult]

PIPELINES: dict[str, tuple[Pass, ...]] = {
    "default": (constant_propagation, zero_skip_elimination, batchnorm_folding, scale_folding,
                linear_region_detection, affine_folding),
    "skips-only": (constant_propagation, zero_skip_elimination),
    "none": (),
}


def get_pipeline(name: str) -> tuple[Pass, ...]:
    try:
        return PIPELINES[name]
    except KeyError:
        raise InputError(f"unknown pipeline '{name}'; valid pipelines: {', '.join(PIPELINES)}") from None


@dataclass
class PipelineResult:
    module: fx.GraphModule
    notes: list[Note] = field(default_factory=list)
    rounds: int = 0
    changed_by: dict[str, int] = field(default_factory=dict)  # pass name -> rounds in which it changed the graph


def run_pipeline(gm: fx.GraphModule, pipeline: str | tuple[Pass, ...] = "default", max_rounds: int = 8,
                 on_pass: Callable[[str], None] | None = None, **options) -> PipelineResult:
    """Runs the passes in order until none changes gm; `options` go to the passes that take them.

    Notes of the last round are kept for analyses (declined / info), applied notes of every round.
    """
    passes = get_pipeline(pipeline) if isinstance(pipeline, str) else tuple(pipeline)
    result = PipelineResult(gm)
    last_round: list[Note] = []
    for round_no in range(1, max_rounds + 1):
        changed, last_round = False, []
        for p in passes:
            name = p.__name__
            if on_pass:
                on_pass(name)
            kwargs = {k: v for k, v in options.items() if k in inspect.signature(p).parameters}
            try:
                out = p(result.module, **kwargs)
                out.module.graph.lint()
                out.module.recompile()
            except Exception as exc:  # noqa: BLE001 - reported with the pass's name
                raise PassError(name, exc) from exc
            result.module = out.module
            result.notes.extend(n for n in out.notes if n.action == "applied")
            last_round.extend(n for n in out.notes if n.action != "applied")
            if out.modified:
                changed = True
                result.changed_by[name] = result.changed_by.get(name, 0) + 1
        result.rounds = round_no
        if not changed:
            break
    result.notes.extend(last_round)
    return result
