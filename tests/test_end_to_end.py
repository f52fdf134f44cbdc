"""The paper's networks through optimize() -> ONNX -> onnxruntime (small widths: the suite stays fast)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import models
from foldpass import VerificationError, defaults, optimize
from models import randomize_batchnorm
from foldpass.graph import count_ops


def onnx_ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_linear_resnet34_becomes_one_gemm(tmp_path):
    model = randomize_batchnorm(models.linear_resnet34(width=4))
    result = optimize(model, torch.randn(1, 1, 28, 28))
    out = tmp_path / "r34.onnx"
    v = result.save_onnx(out, compare_direct=False)
    ops = onnx_ops(out)
    assert ops.count("Gemm") == 1
    assert set(ops) <= {"Gemm", "Reshape", "Flatten", "Shape", "Slice", "Concat", "Constant"}
    assert v.cases >= 5  # what the gate compared; the file is checked again here, on its own
    x = torch.randn(4, 1, 28, 28)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = model.eval()(x).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    model_onnx = onnx.load(str(out))
    assert model_onnx.opset_import[0].version == defaults.DEFAULT_OPSET
    assert model_onnx.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert result.report.after.params == 784 * 10 + 10


def test_nonlinear_resnet34_at_t0_loses_every_blend_and_the_downsample_convs():
    model = randomize_batchnorm(models.resnet34(width=4, t=0.0))
    result = optimize(model, torch.randn(1, 1, 28, 28), pipeline="skips-only")
    ops = count_ops(result.module)
    assert ops["convolution"] == 33  # 36 - 3 downsample convs
    assert "mul" not in ops and "add" not in ops and "sub" not in ops


def test_nonlinear_resnet34_default_pipeline(tmp_path):
    model = randomize_batchnorm(models.resnet34(width=4, t=0.0))
    result = optimize(model, torch.randn(1, 1, 28, 28))
    ops = count_ops(result.module)
    # every 3x3 conv on a 1x1 map is a Gemm (only its centre tap does work): convs + those Gemms = 33
    assert ops["convolution"] + ops.get("addmm", 0) - 1 == 33
    assert "mul" not in ops and "add" not in ops and "_native_batch_norm_legit_no_training" not in ops
    result.save_onnx(tmp_path / "r34.onnx", compare_direct=False)


def test_cnn6_at_t0_equals_the_hand_written_net_without_skips():
    model = randomize_batchnorm(models.CNN6(width=4, t=0.0)).eval()
    plain = models.CNN6(width=4, skips=False).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    result = optimize(model, torch.randn(1, 1, 28, 28))
    hand = optimize(plain, torch.randn(1, 1, 28, 28))
    assert count_ops(result.module) == count_ops(hand.module)
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(result.module(x), plain(x), rtol=1e-5, atol=1e-6)


def test_failed_verification_writes_nothing(tmp_path, monkeypatch):
    model = models.CNN3(width=4, linear=True)
    result = optimize(model, torch.randn(1, 1, 28, 28))
    with torch.no_grad():  # break the optimized module: the gate must catch it
        attr = next(n.target for n in result.module.graph.nodes if n.op == "get_attr" and "_B_" in n.target)
        getattr(result.module, attr).add_(1.0)
    out = tmp_path / "bad.onnx"
    with pytest.raises(VerificationError, match="differs from the original"):
        result.save_onnx(out, compare_direct=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_caller_model_is_not_changed():
    model = models.CNN3(width=4, t=0.5).train()
    optimize(model, torch.randn(1, 1, 28, 28), set_t=0.0)
    assert model.training and model.blend.t.item() == 0.5


def test_the_direct_export_comparison_translates_the_traced_program_to_the_same_ops(monkeypatch):
    """The comparison hands torch.onnx the program foldpass's trace already exported (no second
    torch.export): the same op counts as exporting the model; a batch fixed on request has no program."""
    import foldpass.optimizer
    from foldpass.export import direct_export_ops

    model = randomize_batchnorm(models.CNN6(width=4, t=0.5)).eval()
    result = optimize(model, torch.randn(1, 1, 28, 28))
    assert result.program is not None
    assert direct_export_ops(result.program, result.inputs) == direct_export_ops(result.original, result.inputs)
    handed = []
    monkeypatch.setattr(foldpass.optimizer, "direct_export_ops", lambda m, *a: handed.append(m) or {})
    result.report.onnx_ops = {}
    result._compare_direct(None)
    assert handed == [result.program]
    assert optimize(model, torch.randn(1, 1, 28, 28), batch=4).program is None
