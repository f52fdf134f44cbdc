"""Low-rank decomposition (CP, Tucker-2, TT): exact at full rank, the rank rules, the cost model,
and a decomposed model that exports to ONNX and runs."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import foldpass
from foldpass.cli import main
from foldpass.errors import InputError
from foldpass.decomposition.low_rank_decomposition import _chain, _factorize, choose_rank, low_rank_decomposition, parse_rank
from foldpass.decomposition.vbmf import evbmf_rank

RNG = np.random.default_rng(0)


def chain_conv(method, factors, x, stride, pad):
    for k, (w, st, pd, g) in enumerate(_chain(method, factors, stride, pad)):
        x = F.conv2d(x, torch.from_numpy(np.ascontiguousarray(w)), None, st, pd, 1, g)
    return x


@pytest.mark.parametrize("stride,pad", [((1, 1), (1, 1)), ((2, 2), (1, 1)), ((1, 1), (0, 0))])
def test_tucker_and_tt_are_exact_at_full_rank(stride, pad):
    w = RNG.standard_normal((6, 4, 3, 3))
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    want = F.conv2d(x, torch.from_numpy(w), None, stride, pad)
    for method, rank in (("tucker", (6, 4)), ("tt", (4, 12, 6))):
        factors, recon = _factorize(method, w, rank)
        assert np.abs(recon - w).max() < 1e-8
        assert (chain_conv(method, factors, x, stride, pad) - want).abs().max() < 1e-8


def test_cp_recovers_a_tensor_of_its_rank():
    a, b, y, x_ = (RNG.standard_normal((n, 3)) for n in (5, 4, 3, 3))
    w = np.einsum("or,ir,yr,xr->oiyx", a, b, y, x_)
    factors, recon = _factorize("cp", w, (3,))
    assert np.linalg.norm(recon - w) / np.linalg.norm(w) < 1e-4
    x = torch.randn(1, 4, 7, 7, dtype=torch.float64)
    got = chain_conv("cp", factors, x, (1, 1), (1, 1))
    want = F.conv2d(x, torch.from_numpy(w), None, 1, 1)
    assert ((got - want).norm() / want.norm()).item() < 1e-4


def test_rank_rules():
    w = RNG.standard_normal((32, 16, 3, 3))
    assert choose_rank("tucker", 8, w) == (8, 8) and choose_rank("cp", 8, w) == (8,)
    assert choose_rank("tt", 100, w) == (16, 48, 32)  # r2 <= I * kh and O * kw
    for method in ("tucker", "cp", "tt"):
        from foldpass.decomposition.cost import chain_cost as _chain_cost
        params = _chain_cost(method, choose_rank(method, 0.2, w), 32, 16, 3, 3, 1, 1, 1)[0]
        assert 0.1 * w.size < params <= 0.2 * w.size
    low = RNG.standard_normal((32, 5)) @ RNG.standard_normal((5, 16 * 9))
    assert choose_rank("tucker", "auto", (low + 0.01 * RNG.standard_normal(low.shape)).reshape(32, 16, 3, 3))[0] == 5
    assert evbmf_rank(RNG.standard_normal((40, 60))) == 0
    assert parse_rank("auto") == "auto" and parse_rank("0.25") == 0.25 and parse_rank("16") == 16
    for bad in ("1.5", "0", "x"):
        with pytest.raises(InputError):
            parse_rank(bad)


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 32, 3, padding=1, stride=2)
        self.c = nn.Conv2d(32, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.fc(self.c(x).mean((2, 3)))


def test_only_convs_whose_chain_is_cheaper_are_decomposed():
    gm = foldpass.trace(Small().eval(), (torch.randn(2, 3, 16, 16),))
    kept = low_rank_decomposition(gm, method="tucker", rank=32)  # full rank: every chain costs more than its conv
    assert not kept.modified and sum("the tucker chain" in n.message for n in kept.notes) == 2
    assert any("1x1" in n.message for n in kept.notes)
    result = low_rank_decomposition(kept.module, method="tucker", rank=4)
    assert sum(n.action == "applied" for n in result.notes) == 2
    assert foldpass.graph.count_ops(result.module)["convolution"] == 2 * 3 + 1
    again = low_rank_decomposition(result.module, method="tucker", rank=4)  # the chain's convs are 1x1 or cost more
    assert not again.modified


def test_a_chosen_rank_with_nothing_to_factorize_keeps_the_layer():
    def decompose(rank, method="tucker"):
        gm = foldpass.trace(Small().eval(), (torch.randn(2, 3, 16, 16),))
        result = low_rank_decomposition(gm, method=method, rank=rank)
        return [n.message for n in result.notes if n.action == "applied"], [n.message for n in result.notes]

    applied, notes = decompose(0.05)  # the 3-channel stem's 5% budget affords rank (1, 1); the 32 -> 32 conv's (4, 4)
    assert len(applied) == 1 and "32x32x3x3" in applied[0]
    assert sum("affords only rank (1, 1)" in n for n in notes) == 1
    applied, notes = decompose("auto")  # random init: no component above the noise level
    assert applied == [] and sum("EVBMF finds no component" in n for n in notes) == 2
    applied, _ = decompose(1, "cp")  # an int rank is the user's own: applied as given
    assert len(applied) == 2


def test_decomposed_model_exports_to_onnx_and_runs(tmp_path):
    model = Small().eval()
    x = torch.randn(1, 3, 16, 16)
    result = foldpass.decompose(model, x, method="cp", rank=0.3)
    assert result.params[1] < result.params[0] and result.macs[1] < result.macs[0]
    assert 0 < result.output_error < 1
    result.save_pt2(str(tmp_path / "small.pt2"))
    assert main(["optimize", str(tmp_path / "small.pt2"), "-o", str(tmp_path / "small.onnx")]) == 0


def test_cli_decompose_with_finetuning(tmp_path, capsys):
    report = tmp_path / "r.json"
    code = main(["decompose", "models:CNN6", "-o", str(tmp_path / "d.pt2"), "--input-shape", "1,1,28,28",
                 "--method", "tt", "--rank", "0.5", "--finetune-epochs", "1", "--report", str(report)])
    assert code == 0 and (tmp_path / "d.pt2").exists()
    data = json.loads(report.read_text())
    assert set(data["accuracy"]) == {"original", "decomposed", "recalibrated", "finetuned"}
    assert set(data["test_accuracy"]) == {"original", "final"} and data["data"]["test"] == 355  # digits' test split
    said = capsys.readouterr().out
    assert "lossy" in said and "test accuracy: original" in said


def test_cli_decompose_fine_tunes_on_an_npz_of_the_models_shape(tmp_path, capsys):
    """Any --data form reaches decompose; the model's input shape (from the .pt2) decides the data's."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((60, 3, 16, 16), dtype=np.float32), y=np.arange(60) % 4)
    torch.export.save(torch.export.export(Small().eval(), (torch.randn(2, 3, 16, 16),)), str(tmp_path / "s.pt2"))
    report = tmp_path / "r.json"
    assert main(["decompose", str(tmp_path / "s.pt2"), "-o", str(tmp_path / "d.pt2"), "--method", "cp", "--rank",
                 "0.3", "--finetune-epochs", "1", "--data", str(tmp_path / "d.npz"), "--report", str(report)]) == 0
    data = json.loads(report.read_text())["data"]
    assert data["shape"] == [3, 16, 16] and (data["train"], data["selection"], data["test"]) == (44, 4, 12)
    np.savez(tmp_path / "e.npz", x=rng.random((60, 1, 16, 16), dtype=np.float32), y=np.arange(60) % 4)
    assert main(["decompose", str(tmp_path / "s.pt2"), "-o", str(tmp_path / "e.pt2"), "--finetune-epochs", "1",
                 "--data", str(tmp_path / "e.npz")]) == 2
    assert "the model takes 3 x 16 x 16" in capsys.readouterr().err and not (tmp_path / "e.pt2").exists()


def test_cli_recalibrate_alone_and_opt_out(tmp_path, capsys):
    def run(*flags):
        report = tmp_path / "r.json"
        assert main(["decompose", "models:CNN6", "-o", str(tmp_path / "d.pt2"), "--input-shape", "1,1,28,28",
                     "--method", "tucker", "--rank", "0.3", "--report", str(report), "--force", *flags]) == 0
        return set(json.loads(report.read_text())["accuracy"])

    assert run("--recalibrate") == {"original", "decomposed", "recalibrated"}
    assert "convolution kept: a 0.3 parameter budget affords only rank (1, 1)" in " ".join(capsys.readouterr().out.split())
    assert run() == set()  # no data asked for: none is loaded
