"""The pass context: a pipeline's options, and the analyses its passes read, each cached until the graph changes.

    ctx.shapes(gm)     every value's shape and dtype at the example batch sizes    shapes.infer_shapes
    ctx.constants(gm)  the values that depend on no graph input                    constant_propagation.constant_nodes
    ctx.regions(gm)    the maximal linear regions (Theorem 3.1's affine subgraphs) linear_regions.find_linear_regions

An analysis is computed when a pass asks for it and kept until the graph changes, as LLVM's
analysis manager keeps its results until a pass says it did not preserve them: the pass manager
invalidates a graph's analyses after every pass that reports `modified`, and a pass that changes
the graph and then asks again (affine_folding, sweep after sweep) invalidates them itself
(`ctx.invalidate(gm)`). Passes that change nothing in a round share one computation. A context
made with `check=True` (the tests' pipelines) also keeps the graph's fingerprint
(shapes.fingerprint: every node's op, target and arguments, every constant's shape) with each
result and fails when it would serve a result computed on another graph: a pass that changed the
graph without saying so.

Beside the analyses, the context carries the pipeline's options (`max_fold_bytes`) and a store per
pass and graph that lives as long as the context: affine_folding keeps its verdict on each region
it kept there, so a region is weighed once across sweeps and rounds.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch.fx as fx

from ..defaults import DEFAULT_MAX_FOLD_BYTES
from ..shapes import ShapeInfo, fingerprint, infer_shapes


@dataclass
class PassContext:
    """Options and cached analyses for one run of a pipeline (or one pass called on its own)."""

    max_fold_bytes: int = DEFAULT_MAX_FOLD_BYTES
    check: bool = False  # fail when a cached analysis no longer matches its graph (costs a fingerprint per request)
    computed: dict[str, int] = field(default_factory=dict)  # analysis -> times computed (not served from cache)
    _cache: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, repr=False)
    _stores: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, repr=False)

    def shapes(self, gm: fx.GraphModule) -> dict[fx.Node, ShapeInfo]:
        """A copy: a pass may add the values it creates."""
        return dict(self._analysis(gm, "shapes", infer_shapes))

    def constants(self, gm: fx.GraphModule) -> set[fx.Node]:
        from .constant_propagation import constant_nodes

        return self._analysis(gm, "constants", constant_nodes)

    def regions(self, gm: fx.GraphModule) -> list:
        from .linear_regions import find_linear_regions

        return list(self._analysis(gm, "regions", lambda g: find_linear_regions(g, self.shapes(g), self.constants(g))))

    def invalidate(self, gm: fx.GraphModule) -> None:
        """gm changed: its analyses are computed again when next asked for (a pass's store is kept)."""
        self._cache.pop(gm, None)

    def store(self, gm: fx.GraphModule, owner: str) -> dict:
        """`owner`'s own memory for gm, kept as long as this context and gm live."""
        return self._stores.setdefault(gm, {}).setdefault(owner, {})

    def _analysis(self, gm: fx.GraphModule, name: str, compute: Callable[[fx.GraphModule], object]):
        results = self._cache.setdefault(gm, {})
        if name in results:
            if self.check and results[name][1] != fingerprint(gm):
                raise AssertionError(f"the {name} analysis was served for a graph that changed since it was computed: "
                                     "a pass changed the graph without reporting it (or without ctx.invalidate)")
            return results[name][0]
        self.computed[name] = self.computed.get(name, 0) + 1
        value = compute(gm)
        results[name] = (value, fingerprint(gm) if self.check else None)
        return value
