"""Property-based tests (hypothesis) over random CNNs from tests/random_nets.py.

- Theorem 3.1: any random linear CNN (convs, BN, padding, strides, nearest upsampling, pooling,
  skips with weights summing to 1) is one region, and its W, B reproduce it in float64.
  The default pipeline keeps the outputs equal.
- The homotopy at t = 0: random nonlinear nets lose every blend and projection; `skips-only`
  changes no arithmetic, so the outputs are bit-for-bit those of the traced graph.

The default run is short and deterministic (CI); FOLDPASS_PROPERTY_EXAMPLES=500 runs longer,
with fresh random draws.
"""

import os

import torch
from hypothesis import HealthCheck, given, settings

import foldpass
from foldpass.graph import count_ops
from foldpass.passes.affine_folding import affine_map
from foldpass.passes.linear_regions import find_linear_regions
from foldpass.shapes import infer_shapes
from random_nets import RandomCNN, specs

EXAMPLES = int(os.environ.get("FOLDPASS_PROPERTY_EXAMPLES", "0"))
PROPERTY = settings(max_examples=EXAMPLES or 8, derandomize=not EXAMPLES, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _input(spec, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, spec["channels"], spec["size"], spec["size"], generator=gen)


def _close(got, want, rtol=1e-4):
    scale = want.abs().max().item()
    return (got - want).abs().max().item() <= rtol * scale + 1e-6


@PROPERTY
@given(specs())
def test_random_linear_cnn_is_one_affine_map(spec):
    model = RandomCNN(spec, linear=True).eval()
    gm = foldpass.trace(model, (_input(spec),))
    regions = find_linear_regions(gm, infer_shapes(gm))
    assert len(regions) == 1 and len(regions[0].inputs) == 1, [r.describe() for r in regions]
    region = regions[0]
    shapes = infer_shapes(gm)
    w, b = affine_map(gm, region, shapes[region.inputs[0]].sample_shape, shapes[region.output].sample_numel)
    x = _input(spec, batch=3, seed=1)
    with torch.no_grad():
        want = model.double()(x.double()).reshape(3, -1)
    assert _close(x.double().reshape(3, -1) @ w.T + b, want, rtol=1e-10)


@PROPERTY
@given(specs())
def test_random_linear_cnn_optimizes_to_an_equal_model(spec):
    model = RandomCNN(spec, linear=True).eval()
    result = foldpass.optimize(model, _input(spec))
    x = _input(spec, batch=3, seed=2)
    with torch.no_grad():
        assert _close(result.module(x), model(x))


@PROPERTY
@given(specs())
def test_random_net_at_t0_loses_every_skip_bit_for_bit(spec):
    model = RandomCNN(spec, linear=False, t=0.0).eval()
    x = _input(spec)
    traced = foldpass.trace(model, (x,))
    result = foldpass.optimize(model, x, pipeline="skips-only")
    ops = count_ops(result.module)
    branch_convs = sum(layer["kind"] == "conv" for layer in spec["layers"])
    assert ops.get("convolution", 0) == branch_convs  # every projection is gone
    assert "add" not in ops and "mul" not in ops  # every blend is gone
    for batch in (1, 3):
        xb = _input(spec, batch=batch, seed=batch)
        with torch.no_grad():
            assert torch.equal(result.module(xb), traced(xb))  # no arithmetic changed
            assert _close(result.module(xb), model(xb))


@PROPERTY
@given(specs())
def test_random_net_at_t0_default_pipeline_keeps_outputs(spec):
    model = RandomCNN(spec, linear=False, t=0.0).eval()
    result = foldpass.optimize(model, _input(spec))
    assert "mul" not in count_ops(result.module)
    xb = _input(spec, batch=3, seed=5)
    with torch.no_grad():
        assert _close(result.module(xb), model(xb))
