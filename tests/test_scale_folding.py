"""scale_folding: conv(x) * c -> conv'(x), linear(x) * c -> linear'(x)."""

import torch
from torch import nn

from conftest import check_pass
from foldpass.passes import constant_propagation
from foldpass.passes.scale_folding import scale_folding


class Scaled(nn.Module):
    def __init__(self, factor, divide=False, read_twice=False):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 3, 3), nn.Linear(3, 4)
        self.register_buffer("factor", torch.as_tensor(factor, dtype=torch.float32))
        self.divide, self.read_twice = divide, read_twice

    def forward(self, x):
        y = self.conv(x)
        z = y / self.factor if self.divide else self.factor * y
        if self.read_twice:
            z = z + y
        z = torch.relu(z).mean((2, 3))
        return self.fc(z) * 0.5


def test_scalar_and_linear_scalings_fold():
    check_pass(scale_folding, Scaled(2.0), {"mul": -2}, x=torch.randn(2, 1, 6, 6), prep=(constant_propagation,))


def test_per_channel_division_folds():
    check_pass(scale_folding, Scaled(torch.tensor([2.0, -3.0, 0.25]).reshape(3, 1, 1), divide=True),
               {"div": -1, "mul": -1}, x=torch.randn(2, 1, 6, 6), prep=(constant_propagation,))


def test_conv_read_twice_keeps_its_scaling():
    result = check_pass(scale_folding, Scaled(2.0, read_twice=True), {"mul": -1}, x=torch.randn(2, 1, 6, 6),
                        prep=(constant_propagation,))
    assert any("also read elsewhere" in n.message for n in result.notes)


def test_a_factor_that_is_not_per_channel_is_kept():
    check_pass(scale_folding, Scaled(torch.randn(1, 4, 4)), {"mul": -1}, x=torch.randn(2, 1, 6, 6),
               prep=(constant_propagation,))


class LayerScaleBlock(nn.Module):
    """ConvNeXt's block: the layer scale multiplies the last Linear's output after the permute back."""

    def __init__(self, c=4, along_tokens=False):
        super().__init__()
        self.dw, self.norm = nn.Conv2d(c, c, 3, padding=1, groups=c), nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 2 * c), nn.Linear(2 * c, c)
        shape = (1, 1, 5) if along_tokens else (c, 1, 1)  # [C, 1, 1]: per channel; [1, 1, W]: per column
        self.layer_scale = nn.Parameter(torch.rand(*shape) + 0.5)

    def forward(self, x):
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(nn.functional.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return x + self.layer_scale * y


def _tokens_prep():
    from foldpass.passes import broadcast_matmul, linear_matmul, reshape_chains

    return (constant_propagation, lambda gm: broadcast_matmul(gm), lambda gm: linear_matmul(gm),
            lambda gm: reshape_chains(gm))


def test_a_layer_scale_after_a_permuted_linear_folds_into_it():
    check_pass(scale_folding, LayerScaleBlock(), {"mul": -1}, x=torch.randn(2, 4, 5, 5), prep=_tokens_prep())


def test_a_scale_along_the_tokens_is_not_the_linears_channel_and_is_kept():
    result = check_pass(scale_folding, LayerScaleBlock(along_tokens=True), {}, x=torch.randn(2, 4, 5, 5),
                        prep=_tokens_prep())
    assert not result.modified
