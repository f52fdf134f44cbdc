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
