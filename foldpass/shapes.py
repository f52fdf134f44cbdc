"""Shapes by running the graph: each tensor value's shape at two batch sizes.

The graph runs on fake tensors (shapes and dtypes, no data, no arithmetic), and on real random
inputs only when an op needs values (a data-dependent size).

A value is *batch-major* when dim 0 follows the batch size and every other dim stays put.
Every op a linear region may hold must keep its values batch-major: that one check
rejects whatever mixes samples (a view over the batch, a sum over dim 0, a cat on dim 0).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.fx as fx

from .graph import BatchPlan, inputs_of, random_like

DYNAMIC_BATCHES = (1, 2)


@dataclass(frozen=True)
class ShapeInfo:
    shapes: tuple[tuple[int, ...], ...]  # one per batch size in `batches`
    batches: tuple[int, ...]
    dtype: torch.dtype

    @property
    def batch_major(self) -> bool:
        first = self.shapes[0]
        return all(
            len(s) >= 1 and s[0] == b and s[1:] == first[1:] for s, b in zip(self.shapes, self.batches)
        )

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample (dim 0 dropped); only meaningful when batch_major."""
        return self.shapes[0][1:]

    @property
    def sample_numel(self) -> int:
        n = 1
        for d in self.sample_shape:
            n *= d
        return n

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape at the first batch size (1 unless the graph has a static batch)."""
        return self.shapes[0]


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.seen: dict[fx.Node, torch.Tensor] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.seen[n] = (tuple(out.shape), out.dtype)
        return out


def batches_of(gm: fx.GraphModule) -> tuple[int, ...]:
    static = BatchPlan.of(gm).size
    return (static,) if static else DYNAMIC_BATCHES


def sample_inputs(gm: fx.GraphModule, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    return tuple(
        random_like((batch, *x.shape[1:]), x.dtype, seed=seed + i) for i, x in enumerate(inputs_of(gm))
    )


def _run_fake(gm: fx.GraphModule, batch: int) -> dict:
    from torch._subclasses.fake_tensor import FakeTensorMode

    rec = _Recorder(gm)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.no_grad():
        rec.run(*(mode.from_tensor(x) for x in sample_inputs(gm, batch)))
    return rec.seen


def _run_real(gm: fx.GraphModule, batch: int) -> dict:
    rec = _Recorder(gm)
    with torch.no_grad():
        rec.run(*sample_inputs(gm, batch))
    return rec.seen


# gm -> (its fingerprint, its shapes): an analysis cached until the graph changes
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fingerprint(gm: fx.GraphModule) -> list:
    """What the shapes depend on: every node with its op, target and arguments, every constant's
    shape and dtype, the example inputs' and the batch sizes. Equal fingerprints, equal shapes."""
    from .graph import attr, node_key

    nodes = []
    for n in gm.graph.nodes:
        entry = node_key(n)
        if n.op == "get_attr":
            value = attr(gm, n.target)
            entry += (tuple(value.shape), value.dtype) if isinstance(value, torch.Tensor) else (type(value),)
        nodes.append(entry)
    return [batches_of(gm), [(tuple(x.shape), x.dtype) for x in inputs_of(gm)], nodes]


def infer_shapes(gm: fx.GraphModule) -> dict[fx.Node, ShapeInfo]:
    """Runs gm at each batch size of `batches_of(gm)` and records every tensor value's shape.
    The result is cached per graph and computed again only once the graph has changed (a pass
    that rewrote it), so the passes of a round that change nothing share one run."""
    key = fingerprint(gm)
    cached = _CACHE.get(gm)
    if cached is not None and cached[0] == key:
        return dict(cached[1])
    shapes = _infer(gm)
    _CACHE[gm] = (key, shapes)
    return dict(shapes)


def _infer(gm: fx.GraphModule) -> dict[fx.Node, ShapeInfo]:
    batches = batches_of(gm)
    try:
        runs = [_run_fake(gm, b) for b in batches]
    except Exception:  # noqa: BLE001 - an op that needs real values
        runs = [_run_real(gm, b) for b in batches]
    return {
        node: ShapeInfo(tuple(run[node][0] for run in runs), batches, shape_dtype[1])
        for node, shape_dtype in runs[0].items()
        if all(node in run for run in runs)
    }
