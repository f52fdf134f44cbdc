"""The rewrites that keep attention and token-wise linears as compact as the direct export:
batched_matmul, linear_matmul, reshape_chains; each with its op-count change, equivalence,
idempotence and a case where it must not fire."""

import torch
from torch import nn

from conftest import check_pass
from foldpass.passes import batched_matmul, constant_propagation, linear_matmul, reshape_chains

PREP = (lambda gm: constant_propagation(gm),)


class Attention(nn.Module):
    """q @ k^T and attn @ v on [B, H, N, D]: torch traces each as expand, clone, view, bmm, view."""

    def forward(self, x):  # x: [B, N, 3 * H * D]
        b, n, _ = x.shape
        q, k, v = x.reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        return (attn @ v).transpose(1, 2).reshape(b, n, 8)


def test_batched_matmul_turns_flatten_bmm_unflatten_into_matmul():
    result = check_pass(batched_matmul, Attention(), {"bmm": -2, "matmul": 2, "view": -6, "expand": -4, "clone": -3,
                                                     "mul": -1},  # the copies, and b * H in sizes
                        x=torch.randn(2, 5, 24), prep=PREP)
    assert any("bmm" in n.message for n in result.notes)


def test_batched_matmul_keeps_a_bmm_whose_views_regroup_the_rows():
    class Regroup(nn.Module):  # the bmm's 4B matrices are not the result's leading dims (B, 2)
        def forward(self, x):  # [B, 12, 5]
            b = x.shape[0]
            return torch.bmm(x.reshape(4 * b, 3, 5), x.reshape(4 * b, 5, 3)).reshape(b, 2, 2, 9)

    check_pass(batched_matmul, Regroup(), {}, x=torch.randn(2, 12, 5), prep=PREP)


class Tokens(nn.Module):
    def __init__(self, bias=True):
        super().__init__()
        self.fc = nn.Linear(6, 5, bias=bias)

    def forward(self, x):  # [B, N, 6]
        return self.fc(x)


def test_linear_matmul_on_tokens_becomes_matmul_plus_add():
    sizes = {"mul": -1}  # B * N for the flattening view goes too
    check_pass(linear_matmul, Tokens(), {"addmm": -1, "view": -2, "matmul": 1, "add": 1, **sizes},
               x=torch.randn(2, 7, 6), prep=PREP)
    check_pass(linear_matmul, Tokens(bias=False), {"mm": -1, "view": -2, "matmul": 1, **sizes},
               x=torch.randn(2, 7, 6), prep=PREP)


def test_linear_matmul_leaves_a_2d_linear_as_gemm():
    check_pass(linear_matmul, Tokens(), {}, x=torch.randn(3, 6), prep=PREP)


class Chain(nn.Module):
    def forward(self, x):  # [B, N, C] -> [B * N, C] -> [B, N, C] -> [B, N * C]
        b, n, c = x.shape
        return (x.reshape(b * n, c).reshape(b, n, c) * 2).reshape(b, n * c)


def test_reshape_chains_collapse_and_identities_go():
    check_pass(reshape_chains, Chain(), {"view": -2, "mul": -1}, x=torch.randn(2, 3, 4), prep=PREP)


def test_reshape_chains_keep_a_permute_between_reshapes():
    class Permuted(nn.Module):
        def forward(self, x):  # the two reshapes collapse into one; the permute and the last reshape stay
            b, n, c = x.shape
            return x.reshape(b, n * c).reshape(b, c, n).permute(0, 2, 1).reshape(b, n * c)

    check_pass(reshape_chains, Permuted(), {"view": -2, "reshape": 1}, x=torch.randn(2, 3, 4), prep=PREP)


def test_save_onnx_counts_the_direct_export_and_warns_when_foldpass_writes_more(tmp_path, monkeypatch):
    import foldpass
    import foldpass.optimizer as optimizer

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    result = foldpass.optimize(model, torch.randn(1, 1, 8, 8))
    result.save_onnx(tmp_path / "a.onnx")
    assert sum(result.report.direct_ops.values()) >= sum(result.report.onnx_ops.values())
    assert not any("direct export" in w for w in result.report.warnings)
    monkeypatch.setattr(optimizer, "direct_export_ops", lambda *a, **k: {"Conv": 1})  # a peer smaller than ours
    result = foldpass.optimize(model, torch.randn(1, 1, 8, 8))
    result.save_onnx(tmp_path / "b.onnx")
    assert any(w.startswith("foldpass's ONNX has 2 ops, the direct export (torch.onnx.export, dynamo=True) 1: more")
               for w in result.report.warnings), result.report.warnings


def test_attention_exports_without_the_masked_row_guard(tmp_path):
    import onnx

    import foldpass

    class SDPA(nn.Module):
        def forward(self, x):  # [B, N, 24] -> q, k, v of [B, 2, N, 4]
            b, n, c = x.shape
            q, k, v = x.reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4)
            return nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, 8)

    result = foldpass.optimize(SDPA().eval(), torch.randn(1, 5, 24))
    result.save_onnx(tmp_path / "a.onnx")
    ops = [n.op_type for n in onnx.load(tmp_path / "a.onnx").graph.node]
    assert ops.count("MatMul") == 2 and "Softmax" in ops
    assert not {"Where", "ReduceMax", "Not", "Equal"} & set(ops)  # the decomposition's guard is not there
    assert sum(result.report.onnx_ops.values()) <= sum(result.report.direct_ops.values())


def test_einsum_attention_exports_as_einsum_not_its_decomposition(tmp_path):
    import foldpass

    class EinsumAttention(nn.Module):  # torchvision MaxViT's RelativePositionalMultiHeadAttention
        def forward(self, x):  # [B, G, P, 24] -> q, k, v of [B, G, 2, P, 4]
            b, g, p, _ = x.shape
            q, k, v = x.reshape(b, g, p, 3, 2, 4).permute(3, 0, 1, 4, 2, 5)
            attn = torch.einsum("B G H I D, B G H J D -> B G H I J", q, k).softmax(-1)
            return torch.einsum("B G H I J, B G H J D -> B G H I D", attn, v).sum(2)

    result = foldpass.optimize(EinsumAttention().eval(), torch.randn(1, 3, 5, 24))
    result.save_onnx(tmp_path / "e.onnx")
    assert result.report.onnx_ops.get("Einsum") == 2
    assert sum(result.report.onnx_ops.values()) <= sum(result.report.direct_ops.values()), \
        (result.report.onnx_ops, result.report.direct_ops)


def test_cosine_attention_norms_export_as_reduce_l2_not_their_decomposition(tmp_path):
    import foldpass

    class CosineAttention(nn.Module):  # torchvision Swin V2's attention logits
        def forward(self, x):  # [B, N, 16] -> q, k of [B, 2, N, 4]
            b, n, _ = x.shape
            q, k = x.reshape(b, n, 2, 2, 4).permute(2, 0, 3, 1, 4)
            q, k = nn.functional.normalize(q, dim=-1), nn.functional.normalize(k, dim=-1)
            return (q @ k.transpose(-2, -1)).softmax(-1)

    result = foldpass.optimize(CosineAttention().eval(), torch.randn(1, 5, 16))
    result.save_onnx(tmp_path / "c.onnx")
    assert result.report.onnx_ops.get("ReduceL2") == 2 and "Pow" not in result.report.onnx_ops
    assert result.report.onnx_ops == result.report.direct_ops  # what torch.onnx.export writes
