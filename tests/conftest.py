"""Shared helpers: `check_pass` is every pass test's core (node-count change, equivalence, idempotence)."""

from __future__ import annotations

import torch
import pytest

from foldpass import trace
from models import randomize_batchnorm
from foldpass.graph import count_ops


def ops_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    keys = set(before) | set(after)
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys) if after.get(k, 0) != before.get(k, 0)}


def check_pass(pass_fn, model, delta: dict[str, int], x=None, prep=(), rtol=1e-5, **kw):
    """Runs `pass_fn` on the traced model (after the `prep` passes) and asserts:

    - the op histogram changes by exactly `delta` (and `modified` says so),
    - the outputs equal the original model's, relative to the output scale,
    - a second run changes nothing.
    """
    model = model.eval()
    x = torch.randn(2, 1, 28, 28) if x is None else x
    gm = trace(model, (x,))
    for p in prep:
        gm = p(gm).module
    before = count_ops(gm)
    result = pass_fn(gm, **kw)
    result.module.graph.lint()
    after = count_ops(result.module)
    assert ops_delta(before, after) == delta, result.notes
    assert result.modified == bool(delta), result.notes  # a pass that changes nothing says so
    for batch in (1, 3):
        xs = torch.randn(batch, *x.shape[1:])
        with torch.no_grad():
            want, got = model(xs), result.module(xs)
        assert got.shape == want.shape
        scale = want.abs().max().item()
        assert (got - want).abs().max().item() <= rtol * scale + 1e-6, (got - want).abs().max().item()
    again = pass_fn(result.module, **kw)
    assert not again.modified, again.notes
    assert count_ops(again.module) == after
    return result


@pytest.fixture
def bn_random():
    return randomize_batchnorm
