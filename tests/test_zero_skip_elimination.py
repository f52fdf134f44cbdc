"""Zero-skip elimination: however the blend was written, an exact t == 0 removes the shortcut."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from conftest import check_pass
from foldpass import Blend, MultiBlend
from foldpass.graph import count_ops
from foldpass.passes import constant_propagation, zero_skip_elimination

PREP = (lambda gm: constant_propagation(gm),)


class ModuleBlend(nn.Module):
    """Our Blend, with a downsampling shortcut (conv + BN) that must vanish at t = 0."""

    def __init__(self, t=0.0):
        super().__init__()
        self.body = nn.Conv2d(1, 4, 3, padding=1)
        self.down = nn.Sequential(nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4))
        self.blend = Blend(t)

    def forward(self, x):
        return F.relu(self.blend(self.body(x), self.down(x)))


class AttrBlend(nn.Module):
    def __init__(self, t=0.0):
        super().__init__()
        self.t = t  # a float attribute: export bakes it in as a literal
        self.body = nn.Conv2d(1, 4, 3, padding=1)
        self.short = nn.Conv2d(1, 4, 1)

    def forward(self, x):
        return (1 - self.t) * self.body(x) + self.t * self.short(x)


class BufferBlend(AttrBlend):
    def __init__(self, t=0.0):
        super().__init__()
        del self.t
        self.register_buffer("t", torch.tensor(t))


class InlineBlend(nn.Module):
    """A user's own forward: the shortcut weighted by a literal 0 (and the branch by 1)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(1, 4, 3, padding=1)
        self.short = nn.Conv2d(1, 4, 1)

    def forward(self, x):
        return self.body(x) * 1.0 + 0.0 * self.short(x)


class WeightsBlend(nn.Module):
    """Paper eq. 10: weights over three earlier values, summing to 1, read from a buffer."""

    def __init__(self, w=(1.0, 0.0, 0.0)):
        super().__init__()
        self.register_buffer("w", torch.tensor(w))
        self.a, self.b, self.c = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 1), nn.Conv2d(1, 4, 5, padding=2)

    def forward(self, x):
        return self.w[0] * self.a(x) + self.w[1] * self.b(x) + self.w[2] * self.c(x)


def test_blend_module_removes_shortcut_conv_and_bn():
    model = ModuleBlend()
    check_pass(zero_skip_elimination, model,
               {"_native_batch_norm_legit_no_training": -1, "add": -1, "convolution": -1, "mul": -2}, prep=PREP)


def test_float_attribute_blend():
    check_pass(zero_skip_elimination, AttrBlend(), {"add": -1, "convolution": -1, "mul": -2}, prep=PREP)


def test_buffer_blend():
    check_pass(zero_skip_elimination, BufferBlend(), {"add": -1, "convolution": -1, "mul": -2}, prep=PREP)


def test_inline_expression():
    check_pass(zero_skip_elimination, InlineBlend(), {"add": -1, "convolution": -1, "mul": -2}, prep=PREP)


def test_multi_input_weights_summing_to_one():
    check_pass(zero_skip_elimination, WeightsBlend(), {"add": -2, "convolution": -2, "mul": -3}, prep=PREP)


def test_multiblend_module_at_t0():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 1)
            self.blend = MultiBlend(2, t=0.0)

        def forward(self, x):
            h = self.a(x)
            return self.blend(h, self.b(x), F.avg_pool2d(F.interpolate(h, scale_factor=2.0), 2))

    check_pass(zero_skip_elimination, M(),
               {"add": -2, "avg_pool2d": -1, "convolution": -1, "mul": -3, "upsample_nearest2d": -1}, prep=PREP)


def test_nonzero_t_keeps_the_skip():
    check_pass(zero_skip_elimination, ModuleBlend(0.5), {}, prep=PREP)


def test_tiny_t_keeps_the_skip_but_drops_the_exact_factor_one():
    # 1 - 1e-9 rounds to exactly 1.0 in float32: (1-t)*b -> b is exact; t*s is not zero, so the add stays
    result = check_pass(zero_skip_elimination, ModuleBlend(1e-9), {"mul": -1}, prep=PREP)
    assert any("1 * x -> x" in n.message for n in result.notes)


def test_non_finite_shortcut_weights_are_not_dropped():
    model = ModuleBlend()
    with torch.no_grad():
        model.down[0].weight[0, 0, 0, 0] = math.inf
    gm = constant_propagation(__import__("foldpass").trace(model.eval(), (torch.randn(2, 1, 28, 28),))).module
    result = zero_skip_elimination(gm)
    assert count_ops(result.module)["convolution"] == 2  # the shortcut conv (with the inf) stays
    assert count_ops(result.module)["add"] == 1
    assert any(n.action == "declined" and "non-finite" in n.message for n in result.notes)


def test_broadcasting_add_is_not_rewritten():
    class Bcast(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("z", torch.zeros(1, 4, 28, 28))

        def forward(self, x):  # x: [B, 1, 28, 28]; x + 0 broadcasts to 4 channels
            return x + self.z

    result = check_pass(zero_skip_elimination, Bcast(), {}, prep=PREP)
    assert any("broadcasts" in n.message for n in result.notes)
