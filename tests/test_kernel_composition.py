"""Kernel composition: each rule's kernel equals the Jacobian's, read off the same region; an op
without a rule (or a constant that varies over the image) gives None, and the Jacobian decides."""

import importlib

import pytest
import torch
from torch import nn

from foldpass import trace
from foldpass.passes.affine_folding import extract
from foldpass.passes.context import PassContext
from foldpass.rules.conv_merging import region_window
from foldpass.rules.kernel_composition import compose
from models import randomize_batchnorm
from multibranch import RepBlock
from test_conv_merging import Net, Parallel, Residual

merging = importlib.import_module("foldpass.rules.conv_merging")


class Scaled(nn.Module):
    """(-x * a) / b - c: per-channel constants, a negation, a constant subtracted."""

    def __init__(self, channels: int, per_width: bool = False):
        super().__init__()
        shape = (12,) if per_width else (channels, 1, 1)
        self.a, self.b, self.c = (nn.Parameter(torch.rand(*shape) + 0.5) for _ in range(3))
        self.conv = nn.Conv2d(channels, channels, 3)  # unpadded: the constant subtracted stays bias

    def forward(self, x):
        return self.conv((-x * self.a) / self.b - self.c)


class Difference(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 1)

    def forward(self, x):
        return self.a(x) - self.b(x)


BODIES = {
    "repvgg": lambda: RepBlock(4),
    "mobileone (depthwise)": lambda: RepBlock(4, groups=4, k_branches=3),
    "grouped": lambda: RepBlock(4, groups=2),
    "residual": lambda: Residual(nn.Conv2d(4, 4, 3, padding=1)),
    "sequential": lambda: nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 2, 3, stride=2)),
    "bn then conv": lambda: nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3)),
    "conv then avg-pool": lambda: nn.Sequential(nn.Conv2d(4, 8, 1), nn.AvgPool2d(2)),
    "depthwise then pointwise": lambda: nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.BatchNorm2d(4),
                                                      nn.Conv2d(4, 6, 1)),
    "padding": lambda: nn.Sequential(nn.ZeroPad2d(1), nn.Conv2d(4, 3, 3)),
    "scaled": lambda: Scaled(4),
    "difference": lambda: Difference(),
    "strided branches": lambda: Parallel(nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 1, stride=2)),
}


def region_of(body):
    torch.manual_seed(0)
    gm = trace(randomize_batchnorm(Net(body)).eval(), (torch.randn(2, 4, 12, 12),))
    ctx = PassContext()
    shapes = ctx.shapes(gm)
    region = max(ctx.regions(gm), key=lambda r: len(r.nodes))
    window = region_window(region, shapes)
    return extract(gm, region), window, shapes[region.inputs[0]].sample_shape, shapes[region.output].sample_shape


@pytest.mark.parametrize("name", BODIES)
def test_the_composed_kernel_is_the_jacobians(name, monkeypatch):
    sub, window, in_shape, out_shape = region_of(BODIES[name]())
    assert compose(sub, window, in_shape) is not None  # every op here has a rule
    composed = merging.merged_conv(sub, window, in_shape, out_shape)
    monkeypatch.setattr("foldpass.rules.kernel_composition.compose", lambda *a: None)
    jacobian = merging.merged_conv(sub, window, in_shape, out_shape)
    assert not isinstance(jacobian, str), jacobian
    assert composed.groups == jacobian.groups and composed.window == jacobian.window
    assert torch.allclose(composed.weight, jacobian.weight, rtol=1e-12, atol=1e-14)
    assert torch.equal(composed.bias, jacobian.bias)


def test_a_constant_that_varies_along_the_width_is_not_composed():
    """x * a with a of shape [W] is no conv: composition declines, the Jacobian's check says why."""
    sub, window, in_shape, out_shape = region_of(Scaled(4, per_width=True))
    assert compose(sub, window, in_shape) is None
    assert isinstance(merging.merged_conv(sub, window, in_shape, out_shape), str)


def test_an_op_without_a_rule_falls_back_to_the_jacobian(monkeypatch):
    sub, window, in_shape, out_shape = region_of(RepBlock(4))
    monkeypatch.setattr("foldpass.rules.kernel_composition._rule", lambda *a: None)
    assert compose(sub, window, in_shape) is None
    calls = []
    real = torch.func.jacrev
    monkeypatch.setattr(torch.func, "jacrev", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert not isinstance(merging.merged_conv(sub, window, in_shape, out_shape), str) and calls
