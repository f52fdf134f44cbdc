"""The converter: residual adds -> blends; exact at the starting t; gone after optimize at t = 0."""

import pytest
import torch
import torchvision
from torch import nn

import foldpass
import models
from foldpass.errors import InputError
from foldpass.homotopy import Blend, blend_residuals, blends, get_t


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return models.randomize_batchnorm(torchvision.models.resnet18(num_classes=10)).eval()


def test_torchvision_resnet18_is_exact_at_its_starting_t(resnet18):
    x = torch.randn(2, 3, 32, 32)
    converted = blend_residuals(resnet18, 0.5).eval()
    assert len(blends(converted)) == 8  # one per BasicBlock
    with torch.no_grad():
        assert torch.equal(converted(x), resnet18(x))  # t0 = 0.5: the scales are exact powers of two
        converted9 = blend_residuals(resnet18, 0.9).eval()
        torch.testing.assert_close(converted9(x), resnet18(x), rtol=1e-5, atol=1e-5)


def test_torchvision_bottleneck_blocks_are_found():
    model = torchvision.models.resnet50(num_classes=10).eval()
    converted = blend_residuals(model, 0.5)
    assert len(blends(converted)) == 16
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))


def test_at_t0_optimize_removes_every_blend_and_its_scale(resnet18):
    converted = blend_residuals(resnet18, 0.5).eval()
    result = foldpass.optimize(converted, torch.randn(1, 3, 64, 64), set_t=0.0)  # layer4 on 2 x 2 maps
    ops = result.report.after.ops
    assert "add" not in ops and "mul" not in ops  # no blend, no 1 / (1 - t0) left behind
    assert ops["convolution"] == 20 - 3  # the three downsample convs went with their shortcuts
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = result.original(x)
        assert (result.module(x) - want).abs().max() <= 1e-4 * want.abs().max()


def test_the_converted_model_trains_and_set_t_reaches_every_blend(resnet18):
    converted = blend_residuals(resnet18, 0.9, exact=False)
    assert foldpass.set_t(converted, 0.3) == 8 and get_t(converted) == pytest.approx(0.3)
    converted.train()
    loss = converted(torch.randn(2, 3, 32, 32)).sum()
    loss.backward()
    assert resnet18.conv1.weight.grad is not None  # the parameters are shared, not copied
    resnet18.zero_grad()


class TwoTowers(nn.Module):
    """a(x) + b(x) with towers of equal depth: not a residual (no shortcut to tell apart)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 2, 1)

    def forward(self, x):
        return self.a(x) + self.b(x)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.conv1(x)))  # shortcut first: the roles still come out right


def test_a_model_without_residual_adds_is_refused():
    with pytest.raises(InputError, match="no residual add"):
        blend_residuals(TwoTowers())


def test_shortcut_first_residual_and_its_roles():
    model = Residual().eval()
    converted = blend_residuals(model, 0.5)
    node = next(n for n in converted.graph.nodes if n.op == "call_module" and n.target.startswith("blend"))
    branch, shortcut = node.args
    assert shortcut.op == "placeholder" and branch.target == "conv2"
    foldpass.set_t(converted, 1.0)  # t = 1 cuts the branch out: the identity remains (times its scale 2)
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), 2 * x)


def test_exact_needs_t_inside_the_interval():
    with pytest.raises(InputError, match="0 < t < 1"):
        blend_residuals(Residual(), 0.0)
    assert isinstance(blends(blend_residuals(Residual(), 0.0, exact=False))[0], Blend)
