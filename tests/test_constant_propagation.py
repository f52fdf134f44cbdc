import torch
from torch import nn

from conftest import check_pass
from foldpass.passes import constant_propagation


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("t", torch.tensor(0.25))
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return self.conv(x) * (1 - self.t) * (self.t * 2)  # 1 - t and t * 2 are constants


def test_folds_constant_subexpressions_exactly():
    # sub (1 - t) and mul (t * 2) become constants; the two data muls stay
    result = check_pass(constant_propagation, Scaled(), {"mul": -1, "sub": -1})
    assert any("precomputed 2" in n.message for n in result.notes)


def test_leaves_data_dependent_nodes_alone():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    check_pass(constant_propagation, model, {})


def test_does_not_materialize_growing_constants():
    class Expand(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("s", torch.ones(1, 1, 1, 1))

        def forward(self, x):
            return x * self.s.expand(1, 1, 28, 28)

    result = check_pass(constant_propagation, Expand(), {})
    assert any(n.action == "declined" and "larger" in n.message for n in result.notes)


class Masked(nn.Module):
    """A mask built from sizes alone (zeros, slice assignments, masked_fill), as Swin builds its shifted
    windows' attention mask: larger than any weight, but rebuilt on every call unless it is a constant."""

    def __init__(self, side: int = 6):
        super().__init__()
        self.side = side

    def forward(self, x):
        mask = torch.zeros(self.side, self.side)
        mask[: self.side // 2] = 1.0
        mask = mask.masked_fill(mask != 0, -100.0)
        return x + mask


def test_materializes_a_small_constant_built_from_sizes():
    built = {"full": -1, "slice": -1, "clone": -1, "copy": -1, "slice_scatter": -1, "ne": -1, "scalar_tensor": -1,
             "where": -1}  # the mask's construction, now one constant
    result = check_pass(constant_propagation, Masked(), built, x=torch.randn(1, 1, 6, 6))
    assert any("precomputed" in n.message for n in result.notes)


def test_keeps_a_constant_built_from_sizes_over_the_limit(monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules["foldpass.passes.constant_propagation"], "GENERATED_LIMIT", 35)
    result = check_pass(constant_propagation, Masked(), {}, x=torch.randn(1, 1, 6, 6))
    assert any(n.action == "declined" and "larger" in n.message for n in result.notes)


class _GatheredBias(nn.Module):
    """efficientvit's attention bias: 8 learned offsets gathered into a 16 x 16 table by an integer index."""

    def __init__(self):
        super().__init__()
        self.biases = nn.Parameter(torch.randn(2, 8))
        self.register_buffer("idx", torch.randint(0, 8, (16, 16)))

    def forward(self, x):
        return x + self.biases[:, self.idx][0]


def test_a_bias_gathered_by_an_integer_index_is_precomputed():
    """The table (256 values) replaces the 16 weights and the 256-entry index it is read from: counting
    the floating weights alone kept the gather and its add in efficientvit_m0's file (459 -> 495 ops)."""
    check_pass(constant_propagation, _GatheredBias(), {"index": -1, "select": -1}, x=torch.randn(2, 16, 16))
