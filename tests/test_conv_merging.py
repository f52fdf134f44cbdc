"""Conv merging (structural re-parameterization, found automatically): each rule, its border, and
the cases that must stay as they are."""

import copy

import pytest
import torch
from torch import nn

from conftest import check_pass
from foldpass import optimize
from models import randomize_batchnorm
from foldpass.passes import affine_folding, batchnorm_folding, constant_propagation, scale_folding
from multibranch import RepBlock, RepNet

PREP = (constant_propagation, batchnorm_folding, scale_folding)
X = torch.randn(2, 4, 12, 12)


class Net(nn.Module):
    """`body(x)` between two ReLUs, so the region is exactly the body."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return torch.relu(self.body(torch.relu(x)))


class Residual(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return x + self.inner(x)


class Parallel(nn.Module):
    def __init__(self, *branches):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return sum(b(x) for b in self.branches)


def fold(body, delta, x=X, prep=PREP):
    return check_pass(affine_folding, randomize_batchnorm(Net(body)), delta, x=x, prep=prep, rtol=1e-4)


def test_parallel_3x3_1x1_identity_become_one_3x3():  # RepVGG
    result = fold(RepBlock(4), {"_native_batch_norm_legit_no_training": -1, "add": -2, "convolution": -1})
    assert any("3x3 conv 4->4" in n.message for n in result.notes if n.action == "applied")


def test_depthwise_branches_stay_depthwise():  # MobileOne
    result = fold(RepBlock(4, groups=4, k_branches=3), {"_native_batch_norm_legit_no_training": -1, "add": -4,
                                                         "convolution": -3})
    assert any("(groups 4)" in n.message for n in result.notes if n.action == "applied")


def test_linear_residual_becomes_one_conv_with_a_dirac_kernel():
    fold(Residual(nn.Conv2d(4, 4, 3, padding=1)), {"add": -1})


def test_sequential_convs_without_inner_padding_compose():
    fold(nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 2, 3)), {"convolution": -1})


def test_bias_free_1x1_before_a_padded_3x3_composes_exactly():
    fold(nn.Sequential(nn.Conv2d(4, 8, 1, bias=False), nn.Conv2d(8, 2, 3, padding=1)), {"convolution": -1})


def test_padding_between_convs_is_the_border_trap():
    """conv2 pads conv1's output with zeros, but conv1 of a zero border is its bias: no single conv."""
    result = fold(nn.Sequential(nn.Conv2d(4, 8, 1), nn.Conv2d(8, 2, 3, padding=1)), {})
    assert any("bias varies with the position" in n.message for n in result.notes)
    result = fold(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.Conv2d(8, 1, 3, padding=1)), {})
    assert any("at the border" in n.message for n in result.notes)


def test_bn_before_a_conv_folds_only_without_padding():
    # the conv-merging rule itself (in the pipeline, batchnorm_folding takes the unpadded case first)
    only_constants = (constant_propagation,)
    fold(nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3)), {"_native_batch_norm_legit_no_training": -1},
         prep=only_constants)
    result = fold(nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3, padding=1)), {}, prep=only_constants)
    assert any("varies with the position" in n.message for n in result.notes)


def test_avg_pool_after_a_conv_becomes_a_strided_conv():
    fold(nn.Sequential(nn.Conv2d(4, 8, 1), nn.AvgPool2d(2)), {"avg_pool2d": -1}, x=torch.randn(2, 4, 12, 12))


def test_composition_that_would_grow_is_kept_without_computing_its_kernel(monkeypatch):
    """1x1 32 -> 4 then 4 -> 32 composes to a 32 -> 32 conv, four times the MACs; a depthwise one
    (groups = gcd(32, 32)) would cost less, so only its kernel can tell, and it is computed. 3x3 8 -> 1
    then 1x1 1 -> 7: any merged conv (groups = gcd(8, 7) = 1) costs 7 x 72 MACs per output position
    against the region's 72 + 7, so the cost bound rejects it before any kernel is computed."""
    import importlib

    affine = importlib.import_module("foldpass.passes.affine_folding")
    calls = []
    real = affine.merged_conv
    monkeypatch.setattr(affine, "merged_conv", lambda *a: calls.append(1) or real(*a))
    result = fold(nn.Sequential(nn.Conv2d(32, 4, 1), nn.Conv2d(4, 32, 1)), {}, x=torch.randn(2, 32, 6, 6))
    assert any("a conv costs" in n.message for n in result.notes) and calls
    calls.clear()
    result = fold(nn.Sequential(nn.Conv2d(8, 1, 3), nn.Conv2d(1, 7, 1)), {}, x=torch.randn(2, 8, 6, 6))
    assert any("costs at least" in n.message for n in result.notes) and not calls, result.notes


def test_a_relu_between_branches_stops_the_merge():
    fold(Parallel(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()), nn.Conv2d(4, 4, 1)), {})


def test_multibranch_network_equals_its_hand_written_deploy_form():
    torch.manual_seed(0)
    train_time = randomize_batchnorm(RepNet(width=8)).eval()
    deploy = copy.deepcopy(train_time).switch_to_deploy().eval()
    x = torch.randn(1, 1, 28, 28)
    auto, hand = optimize(train_time, x), optimize(deploy, x, pipeline="skips-only")
    assert auto.report.after.ops == hand.report.after.ops == {"addmm": 1, "convolution": 5, "mean": 1, "relu": 5}
    xs = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        want = deploy(xs)
        assert (auto.module(xs) - want).abs().max() <= 1e-4 * want.abs().max()


@pytest.mark.parametrize("stride", [1, 2])
def test_strided_parallel_branches(stride):
    fold(Parallel(nn.Conv2d(4, 4, 3, stride=stride, padding=1), nn.Conv2d(4, 4, 1, stride=stride)),
         {"add": -2, "convolution": -1})  # sum() starts at 0: 0 + a + b
