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


def batches_of(gm: fx.GraphModule) -> tuple[int, ...]:
    static = BatchPlan.of(gm).size
    return (static,) if static else DYNAMIC_BATCHES


def sample_inputs(gm: fx.GraphModule, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    return tuple(
        random_like((batch, *x.shape[1:]), x.dtype, seed=seed + i) for i, x in enumerate(inputs_of(gm))
    )


@dataclass
class _Run:
    """One fake run at one batch size: its mode (and the mode's op cache), every node's value and key."""

    mode: object
    env: dict
    keys: dict


def _meta(v) -> object:
    """What a fake value's users see: shape, dtype and strides (nested for tuple outputs)."""
    if isinstance(v, torch.Tensor):
        return tuple(v.shape), v.dtype, v.stride()
    if isinstance(v, (tuple, list)):
        return tuple(_meta(x) for x in v)
    return v if isinstance(v, (int, float, bool, str, type(None))) else type(v)


def _run_fake(gm: fx.GraphModule, batch: int, previous: _Run | None = None) -> _Run:
    """gm on fake tensors at `batch`. Given the previous run of this graph, a node is run again only
    where its op or arguments changed or a value it reads came out different: a pass that replaced
    one region costs the nodes it touched, not the whole graph."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .graph import node_key

    mode = previous.mode if previous is not None else FakeTensorMode(allow_non_fake_inputs=True)
    interpreter = fx.Interpreter(gm, garbage_collect_values=False)
    env, keys, changed = {}, {}, set()
    interpreter.env = env
    with mode, torch.no_grad():
        interpreter.args_iter = iter([mode.from_tensor(x) for x in sample_inputs(gm, batch)])
        for n in gm.graph.nodes:
            keys[n] = key = node_key(n)
            old = previous.env.get(n, _MISSING) if previous is not None else _MISSING
            if old is not _MISSING and n.op not in ("placeholder", "get_attr") and previous.keys[n] == key \
                    and not any(a in changed for a in n.all_input_nodes):
                env[n] = old
                continue
            env[n] = interpreter.run_node(n)
            if old is _MISSING or _meta(old) != _meta(env[n]):
                changed.add(n)
    return _Run(mode, env, keys)


_MISSING = object()


def _seen(env: dict) -> dict:
    return {n: (tuple(v.shape), v.dtype) for n, v in env.items() if isinstance(v, torch.Tensor)}


def _run_real(gm: fx.GraphModule, batch: int) -> dict:
    interpreter = fx.Interpreter(gm, garbage_collect_values=False)
    with torch.no_grad():
        interpreter.run(*sample_inputs(gm, batch))
    return _seen(interpreter.env)


# gm -> (its fingerprint, its shapes, its fake runs): an analysis cached until the graph changes,
# the runs kept to compute it again only where the graph changed
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
    that rewrote it), and then only for the nodes the change reached (`_run_fake`)."""
    key = fingerprint(gm)
    cached = _CACHE.get(gm)
    if cached is not None and cached[0] == key:
        return dict(cached[1])
    shapes, runs = _infer(gm, cached[2] if cached is not None else None)
    _CACHE[gm] = (key, shapes, runs)
    return dict(shapes)


def _infer(gm: fx.GraphModule, previous: dict | None) -> tuple[dict[fx.Node, ShapeInfo], dict | None]:
    batches = batches_of(gm)
    try:
        runs = {b: _run_fake(gm, b, (previous or {}).get(b)) for b in batches}
        seen = [_seen(runs[b].env) for b in batches]
    except Exception:  # noqa: BLE001 - an op that needs real values
        runs, seen = None, [_run_real(gm, b) for b in batches]
    return {
        node: ShapeInfo(tuple(run[node][0] for run in seen), batches, shape_dtype[1])
        for node, shape_dtype in seen[0].items()
        if all(node in run for run in seen)
    }, runs
