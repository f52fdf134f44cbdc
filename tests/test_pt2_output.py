"""A .pt2 output (issue 19, part 2): `foldpass optimize SRC -o out.pt2` writes the optimized program
with torch.export.save, dynamic batch, verified in PyTorch before the move; it loads and runs."""

import torch

from foldpass.cli import main
from models import linear_resnet34, randomize_batchnorm, resnet18


def test_pt2_round_trip(tmp_path, capsys):
    model = randomize_batchnorm(resnet18(width=4, t=0.0)).eval()
    src, out = tmp_path / "m.pt2", tmp_path / "folded.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 1, 28, 28),)), src)  # batch 1, the usual way
    assert main(["optimize", str(src), "-o", str(out)]) == 0
    assert "verified" in capsys.readouterr().out
    program = torch.export.load(out)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        want, got = model(x), program.module()(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max() + 1e-5
    ops = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.mul.Tensor not in ops  # the t = 0 blends are gone


def test_pt2_output_refuses_onnx_only_options(tmp_path, capsys):
    src = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(randomize_batchnorm(linear_resnet34(width=2)).eval(),
                                          (torch.randn(2, 1, 28, 28),)), src)
    assert main(["optimize", str(src), "-o", str(tmp_path / "o.pt2"), "--precision", "fp16"]) == 2
    assert "ONNX outputs" in capsys.readouterr().err and not (tmp_path / "o.pt2").exists()
