"""Odd but valid models (issue 5): handled, or refused with a reason; never a wrong file."""

import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import foldpass
import models
from foldpass.cli import main
from foldpass.errors import FoldpassError, InputError, VerificationError


class TwoInTwoOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 2, 1)

    def forward(self, x, y):
        u = self.c(self.a(x) + self.b(y))
        return u, torch.relu(u).mean((2, 3))


def test_several_inputs_and_outputs_are_verified(tmp_path):
    result = foldpass.optimize(TwoInTwoOut().eval(), (torch.randn(1, 1, 6, 6), torch.randn(1, 1, 6, 6)))
    check = result.save_onnx(tmp_path / "m.onnx", compare_direct=False)
    model = onnx.load(tmp_path / "m.onnx")
    assert len(model.graph.input) == 2 and len(model.graph.output) == 2
    assert check.cases == 2 + 3  # random at batch 1, 3; zeros, ones, large


def test_float16_model_folds_with_a_half_precision_tolerance(tmp_path):
    model = models.randomize_batchnorm(models.linear_resnet34(width=4)).half().eval()
    result = foldpass.optimize(model, torch.randn(1, 1, 28, 28).half())
    assert result.module.graph.find_nodes(op="call_function", target=torch.ops.aten.addmm.default)
    check = result.save_onnx(tmp_path / "m.onnx", compare_direct=False)
    assert check.tolerance == pytest.approx(1e-5 + 8 * 2**-10 * check.output_scale)
    assert onnx.load(tmp_path / "m.onnx").graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_bfloat16_is_refused_with_a_reason_and_nothing_is_written(tmp_path):
    conv = models.CNN3(width=4, t=0.0).to(torch.bfloat16).eval()
    result = foldpass.optimize(conv, torch.randn(1, 1, 28, 28).to(torch.bfloat16))
    with pytest.raises(FoldpassError, match="bfloat16"):  # opset 18 has no bfloat16 Conv
        result.save_onnx(tmp_path / "m.onnx", compare_direct=False)
    gemm = models.CNN3(width=4, linear=True).to(torch.bfloat16).eval()
    result = foldpass.optimize(gemm, torch.randn(1, 1, 28, 28).to(torch.bfloat16))
    assert result.report.after.ops == {"addmm": 1, "view": 1}  # one Gemm: it exports, but cannot be verified
    with pytest.raises(VerificationError, match="bfloat16"):  # onnxruntime CPU cannot run it
        result.save_onnx(tmp_path / "m.onnx", compare_direct=False)
    assert not (tmp_path / "m.onnx").exists()
    result.save_onnx(tmp_path / "m.onnx", verify_output=False, compare_direct=False)  # the user's explicit choice
    assert (tmp_path / "m.onnx").exists()


def test_channels_last_model_and_input(tmp_path):
    model = models.CNN6(width=4, t=0.0).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 1, 28, 28).to(memory_format=torch.channels_last)
    result = foldpass.optimize(model, x)
    assert "mul" not in result.report.after.ops
    result.save_onnx(tmp_path / "m.onnx", compare_direct=False)


def test_train_mode_bn_and_dropout_switch_to_eval_with_a_warning():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout(0.5)).train()
    result = foldpass.optimize(model, torch.randn(1, 1, 6, 6))
    assert any("training mode" in w for w in result.report.warnings)
    assert model.training  # the caller's module is untouched
    x = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(result.module(x), model.eval()(x))


def test_integer_inputs_are_refused():
    with pytest.raises(InputError, match="floating-point"):
        foldpass.optimize(nn.Conv2d(1, 1, 1), torch.ones(1, 1, 4, 4, dtype=torch.long))


UNTRACEABLE = textwrap.dedent("""
    import torch
    from torch import nn

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            y = self.conv(x)
            if y.sum() > 0:
                return y
            return -y
""")


def test_data_dependent_control_flow_names_the_line_and_the_fix(tmp_path, monkeypatch, capfd):
    (tmp_path / "branchy.py").write_text(UNTRACEABLE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["optimize", "branchy:Branchy", "-o", "o.onnx", "--input-shape", "1,1,8,8"])
    err = capfd.readouterr().err
    assert code == 2 and not (tmp_path / "o.onnx").exists()
    assert "branchy.py" in err and "line 12" in err and "torch.where" in err
    assert len(err.strip().splitlines()) == 1, err  # no graph dump, no warnings, no traceback


def test_integer_input_pt2_exits_2(tmp_path, capsys):
    class Embed(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(10, 4)

        def forward(self, idx):
            return self.table(idx)

    ep = torch.export.export(Embed(), (torch.zeros(2, 3, dtype=torch.long),), strict=False)
    torch.export.save(ep, tmp_path / "e.pt2")
    assert main(["optimize", str(tmp_path / "e.pt2"), "-o", str(tmp_path / "o.onnx")]) == 2
    assert "floating-point" in capsys.readouterr().err


def test_unwritable_output_directory_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("os.access", lambda path, mode: False)
    code = main(["optimize", "models:CNN3", "-o", str(tmp_path / "o.onnx"), "--input-shape", "1,1,28,28"])
    assert code == 2 and "not writable" in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "o.onnx"
    out.write_bytes(b"precious")

    def disk_full(model, path, *a, **k):
        open(path, "wb").write(b"half")
        raise OSError(28, "No space left on device")

    result = foldpass.optimize(models.CNN3(width=4), torch.randn(1, 1, 28, 28))
    monkeypatch.setattr(onnx, "save", disk_full)
    with pytest.raises(FoldpassError, match="No space left"):
        result.save_onnx(out, force=True, compare_direct=False)
    assert out.read_bytes() == b"precious" and [p.name for p in tmp_path.iterdir()] == ["o.onnx"]


class SwinBlock(torch.nn.Module):
    """torchvision's shifted-window attention on a small map: its mask is built by copying python ints
    into slices (aten.copy of a 0-dim tensor), which torch.onnx wrote without the broadcast."""

    def __init__(self):
        super().__init__()
        from torchvision.models.swin_transformer import ShiftedWindowAttention

        self.attn = ShiftedWindowAttention(dim=8, window_size=[4, 4], shift_size=[2, 2], num_heads=2)

    def forward(self, x):
        return self.attn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("pipeline", ["none", "default"])
def test_a_swin_shaped_block_exports_and_verifies(tmp_path, pipeline):
    model = SwinBlock().eval()
    result = foldpass.optimize(model, torch.randn(1, 8, 8, 8), pipeline=pipeline)
    code = result.module.code
    result.save_onnx(tmp_path / "swin.onnx", compare_direct=False)
    assert result.module.code == code  # the export's rewrite (copy -> copy of an expand) went on its own copy
    x = torch.randn(2, 8, 8, 8)
    session = ort.InferenceSession(str(tmp_path / "swin.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(x)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - want.numpy()).max() <= 1e-4 * np.abs(want.numpy()).max()  # the file, checked on its own
