import torch
from torch import nn

from conftest import check_pass
from models import randomize_batchnorm
from foldpass.passes import batchnorm_folding, constant_propagation

PREP = (lambda gm: constant_propagation(gm),)


def test_conv_bn_folds():
    model = randomize_batchnorm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                              nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(4)))
    check_pass(batchnorm_folding, model, {"_native_batch_norm_legit_no_training": -2})


def test_transposed_conv_and_linear_bn_fold():
    model = randomize_batchnorm(nn.Sequential(nn.ConvTranspose2d(1, 3, 2, stride=2), nn.BatchNorm2d(3), nn.Flatten(),
                                              nn.Linear(3 * 56 * 56, 8), nn.BatchNorm1d(8)))
    check_pass(batchnorm_folding, model, {"_native_batch_norm_legit_no_training": -2}, prep=PREP)


def test_bn_whose_conv_output_is_read_twice_is_kept():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    result = check_pass(batchnorm_folding, randomize_batchnorm(Two()), {})
    assert any("also read elsewhere" in n.message for n in result.notes)


def test_bn_after_relu_is_kept():
    model = randomize_batchnorm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)))
    result = check_pass(batchnorm_folding, model, {})
    assert any("not a conv or linear" in n.message for n in result.notes)


class LinearNorm(nn.Module):
    """LeViT's Linear + BatchNorm1d over the flattened tokens."""

    def __init__(self, cin=6, cout=5, bias=False):
        super().__init__()
        self.linear, self.bn = nn.Linear(cin, cout, bias=bias), nn.BatchNorm1d(cout)

    def forward(self, x):  # x: [B, N, C]
        y = self.linear(x)
        return self.bn(y.flatten(0, 1)).reshape_as(y)


def test_batchnorm1d_over_flattened_tokens_folds_into_the_linear_through_reshapes():
    x = torch.randn(2, 12, 6)
    for bias in (False, True):  # mm (a new bias appears) and addmm
        check_pass(batchnorm_folding, randomize_batchnorm(LinearNorm(bias=bias)),
                   {"_native_batch_norm_legit_no_training": -1, "mm": -1, "addmm": 1} if not bias else
                   {"_native_batch_norm_legit_no_training": -1}, x=x, prep=PREP)


def test_batchnorm1d_on_a_3d_input_normalizes_dim_1_and_is_kept():
    class Channels(nn.Module):  # BN1d on [B, C, L]: dim 1 is the channel, not the linear's last dim
        def __init__(self):
            super().__init__()
            self.linear, self.bn = nn.Linear(4, 4, bias=False), nn.BatchNorm1d(3)

        def forward(self, x):
            return self.bn(self.linear(x.flatten(2)[:, :3, :4]))

    result = check_pass(batchnorm_folding, randomize_batchnorm(Channels()), {}, x=torch.randn(2, 3, 2, 2), prep=PREP)
    assert any("not a conv or linear" in n.message for n in result.notes)


def test_bn_before_an_unpadded_conv_folds_into_it():
    model = randomize_batchnorm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 6, 1)))
    check_pass(batchnorm_folding, model, {"_native_batch_norm_legit_no_training": -1}, prep=PREP)


def test_bn_before_a_padded_conv_is_kept():
    model = randomize_batchnorm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4),
                                              nn.Conv2d(4, 6, 3, padding=1)))
    result = check_pass(batchnorm_folding, model, {}, prep=PREP)
    assert any("does not feed one unpadded conv" in n.message for n in result.notes)
