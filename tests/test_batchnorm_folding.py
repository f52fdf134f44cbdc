import torch
from torch import nn

from conftest import check_pass
from models import randomize_batchnorm
from foldpass.passes import batchnorm_folding, broadcast_matmul, constant_propagation

PREP = (lambda gm: constant_propagation(gm),)


def test_conv_bn_folds():
    model = randomize_batchnorm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                              nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(4)))
    check_pass(batchnorm_folding, model, {"_native_batch_norm_legit_no_training": -2})


def test_transposed_conv_and_linear_bn_fold():
    model = randomize_batchnorm(nn.Sequential(nn.ConvTranspose2d(1, 3, 2, stride=2), nn.BatchNorm2d(3), nn.Flatten(),
                                              nn.Linear(3 * 56 * 56, 8), nn.BatchNorm1d(8)))
    check_pass(batchnorm_folding, model, {"_native_batch_norm_legit_no_training": -2}, prep=PREP)


def test_bn_after_a_grouped_transposed_conv_is_kept_with_its_reason():
    """torch's fuse_conv_bn_weights(transpose=True) broadcasts the scale over the weight's dim 1,
    out / groups wide: on a grouped transposed conv it raised, and the whole pass failed."""
    model = randomize_batchnorm(nn.Sequential(nn.ConvTranspose2d(4, 6, 3, groups=2), nn.BatchNorm2d(6)))
    result = check_pass(batchnorm_folding, model, {}, x=torch.randn(2, 4, 8, 8))
    assert any("grouped transposed convolution" in n.message for n in result.notes)


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
    assert any("is padded, grouped or transposed" in n.message for n in result.notes)


class PreNormAttention(nn.Module):
    """NextViT's NextTransformerBlock input: BN2d -> tokens -> q, and -> pooled -> BN1d -> k, v."""

    def __init__(self, c=6, bias=True):
        super().__init__()
        self.norm1, self.norm = nn.BatchNorm2d(c), nn.BatchNorm1d(c)
        self.q, self.k, self.v = (nn.Linear(c, c, bias=bias) for _ in range(3))
        self.sr = nn.AvgPool1d(4, 4)

    def forward(self, x):  # [B, C, H, W]
        b, c = x.shape[:2]
        tokens = self.norm1(x).reshape(b, c, -1).transpose(-1, -2)
        pooled = self.norm(self.sr(tokens.transpose(1, 2))).transpose(1, 2)
        return self.q(tokens).sum(1) + self.k(pooled).sum(1) * self.v(pooled).sum(1)


def test_prenorm_batch_norms_fold_forward_into_every_linear_that_reads_them():
    x = torch.randn(2, 6, 4, 4)
    prep = (*PREP, lambda gm: broadcast_matmul(gm))  # a Linear on tokens: x @ W, as the pipeline has it by now
    check_pass(batchnorm_folding, randomize_batchnorm(PreNormAttention()), {"_native_batch_norm_legit_no_training": -2},
               x=x, prep=prep)
    # without biases the linears get one: an add each
    check_pass(batchnorm_folding, randomize_batchnorm(PreNormAttention(bias=False)),
               {"_native_batch_norm_legit_no_training": -2, "add": 3}, x=x, prep=prep)


def test_a_final_batch_norm_folds_into_the_classifier_through_the_pooling():
    model = randomize_batchnorm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4),
                                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)))
    check_pass(batchnorm_folding, model, {"_native_batch_norm_legit_no_training": -1}, prep=PREP)


def test_a_batch_norm_read_by_a_nonlinearity_or_a_channel_merging_reshape_is_kept():
    for mid, reason in ((nn.ReLU(), "is not linear per channel"), (nn.Flatten(), "merges the channel dim")):
        model = randomize_batchnorm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), mid,
                                                  nn.Flatten(), nn.LazyLinear(3)))
        model(torch.randn(1, 1, 28, 28))
        result = check_pass(batchnorm_folding, model, {}, prep=PREP)
        assert any(reason in n.message for n in result.notes), [n.message for n in result.notes]


def test_prenorm_folds_export_with_distinct_node_names(tmp_path):
    """k and v each absorb two BNs and come out with the same provenance name: the ONNX file must
    still give every node its own name (onnxruntime refuses duplicates)."""
    import foldpass

    result = foldpass.optimize(randomize_batchnorm(PreNormAttention(bias=False)).eval(), torch.randn(1, 6, 4, 4))
    result.save_onnx(tmp_path / "p.onnx", compare_direct=False)
    assert "BatchNormalization" not in result.report.onnx_ops
