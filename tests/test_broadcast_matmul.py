"""broadcast_matmul: bmm over an expanded constant weight -> one matmul (attention's in-projection)."""

import torch
from torch import nn

from conftest import check_pass
from foldpass.passes import broadcast_matmul


class Attention(nn.Module):
    """nn.MultiheadAttention with batch_first: its in-projection runs linear on a transposed 3-D input."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def test_the_in_projection_becomes_one_matmul():
    # the in-projection's bmm and the expand + view of each operand go (the attention itself is
    # scaled_dot_product_attention, kept whole by the trace)
    check_pass(broadcast_matmul, Attention(), {"bmm": -1, "expand": -2, "view": -2, "matmul": 1},
               x=torch.randn(2, 5, 16))


class DataBmm(nn.Module):
    """Two data operands: nothing is a weight, the pass must not fire."""

    def forward(self, x):
        return torch.bmm(x, x.transpose(1, 2))


def test_a_bmm_of_two_data_operands_is_kept():
    check_pass(broadcast_matmul, DataBmm(), {}, x=torch.randn(2, 5, 4))
