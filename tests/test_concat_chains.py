"""concat_chains: cat([a, cat([b, c], d), e], d) -> cat([a, b, c, e], d), and where it must not fire."""

import torch
from torch import nn

from conftest import check_pass
from foldpass.passes import concat_chains

X = torch.randn(2, 2, 4, 4)


class Nested(nn.Module):
    """Inception's shape: a branch pair concatenated, then concatenated with the other branches."""

    def forward(self, x):
        inner = torch.cat([x * 2, x + 1], 1)
        return torch.cat([x, inner, x - 1], -3)  # the same axis, written from the end


class Shared(nn.Module):
    def forward(self, x):
        inner = torch.cat([x * 2, x + 1], 1)
        return torch.cat([x, inner], 1) + inner.sum()  # the inner cat is also read elsewhere


class Across(nn.Module):
    def forward(self, x):
        return torch.cat([x, torch.cat([x * 2, x + 1], 2)[:, :, :4]], 1)  # another axis


def test_a_cat_read_only_by_a_cat_on_the_same_axis_joins_it():
    result = check_pass(concat_chains, Nested(), {"cat": -1}, x=X)
    assert any("joined 1" in n.message for n in result.notes)


def test_a_cat_read_elsewhere_or_on_another_axis_stays():
    result = check_pass(concat_chains, Shared(), {}, x=X)
    assert any(n.action == "declined" and "also read outside" in n.message for n in result.notes)
    check_pass(concat_chains, Across(), {}, x=X)
