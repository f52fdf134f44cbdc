"""ONNX input (issue 8): the same passes for models that come as .onnx, checked against the input
file under onnxruntime; names, batch axis and opset kept; foldpass's own output passes unchanged."""

import io

import numpy as np
import onnx
import pytest
import torch
import torchvision
from onnx import numpy_helper

import foldpass
import models
from foldpass.cli import main
from foldpass.export import onnx_op_counts, save_atomic, to_onnx

RNG = np.random.default_rng(0)


def parsed(text: str, **weights) -> onnx.ModelProto:
    """A hand-written graph (onnx.parser text) with its weights attached as initializers."""
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in weights.items())
    onnx.checker.check_model(model, full_check=True)
    return model


HEADER = '<ir_version: 8, opset_import: ["" : 18]>\n'


def run(tmp_path, model: onnx.ModelProto, *extra) -> tuple[int, onnx.ModelProto | None]:
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    code = main(["optimize", str(src), "-o", str(out), "--force", *extra])
    return code, (onnx.load(out) if out.exists() else None)


def test_blend_at_t0_loses_its_shortcut(tmp_path):
    model = parsed(HEADER + """g (float[N, 2, 6, 6] x) => (float[N, 2, 6, 6] y) {
        b = Conv <pads = [1, 1, 1, 1]> (x, w)
        s = Conv (x, w1)
        bt = Mul (b, one)
        st = Mul (s, zero)
        y = Add (bt, st)
    }""", w=RNG.standard_normal((2, 2, 3, 3)), w1=RNG.standard_normal((2, 2, 1, 1)), one=1.0, zero=0.0)
    code, out = run(tmp_path, model)
    assert code == 0 and onnx_op_counts(out) == {"Conv": 1}


def test_nonzero_blend_is_kept(tmp_path):
    model = parsed(HEADER + """g (float[N, 2, 6, 6] x) => (float[N, 2, 6, 6] y) {
        s = Conv (x, w1)
        st = Mul (s, half)
        y = Add (x, st)
    }""", w1=RNG.standard_normal((2, 2, 1, 1)), half=0.5)
    code, out = run(tmp_path, model)
    assert code == 0 and onnx_op_counts(out) == {"Conv": 1}  # x + 0.5 conv(x): one conv with a Dirac term


def test_conv_batchnorm_folds_and_relu_stops_it(tmp_path):
    weights = dict(w=RNG.standard_normal((3, 2, 3, 3)), g=RNG.random(3) + 0.5, b=RNG.standard_normal(3),
                   m=RNG.standard_normal(3), v=RNG.random(3) + 0.5)
    model = parsed(HEADER + """g (float[N, 2, 6, 6] x) => (float[N, 3, 4, 4] y) {
        c = Conv (x, w)
        r = Relu (c)
        y = BatchNormalization (r, g, b, m, v)
    }""", **weights)
    code, out = run(tmp_path, model)
    assert code == 0 and onnx_op_counts(out) == {"BatchNormalization": 1, "Conv": 1, "Relu": 1}  # BN after ReLU stays
    model = parsed(HEADER + """g (float[N, 2, 6, 6] x) => (float[N, 3, 4, 4] y) {
        c = Conv (x, w)
        n = BatchNormalization (c, g, b, m, v)
        y = Relu (n)
    }""", **weights)
    code, out = run(tmp_path, model)
    assert code == 0 and onnx_op_counts(out) == {"Conv": 1, "Relu": 1}


def test_sequential_linear_convs_merge_and_a_relu_between_them_does_not(tmp_path):
    weights = dict(w1=RNG.standard_normal((8, 2, 3, 3)), w2=RNG.standard_normal((1, 8, 3, 3)))
    code, out = run(tmp_path, parsed(HEADER + """g (float[N, 2, 10, 10] x) => (float[N, 1, 6, 6] y) {
        a = Conv (x, w1)
        y = Conv (a, w2)
    }""", **weights))
    assert code == 0 and onnx_op_counts(out) == {"Conv": 1}  # one 5x5 conv 2 -> 1
    code, out = run(tmp_path, parsed(HEADER + """g (float[N, 2, 10, 10] x) => (float[N, 1, 6, 6] y) {
        a = Conv (x, w1)
        r = Relu (a)
        y = Conv (r, w2)
    }""", **weights))
    assert code == 0 and onnx_op_counts(out) == {"Conv": 2, "Relu": 1}


@pytest.mark.filterwarnings("ignore:.*legacy TorchScript-based ONNX export:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")
def test_models_cnn6_from_the_legacy_exporter_keeps_names_and_batch_axis(tmp_path, capsys):
    model = models.randomize_batchnorm(models.CNN6(width=4, t=0.0)).eval()
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.randn(1, 1, 28, 28),), buf, dynamo=False, opset_version=13,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    code, out = run(tmp_path, onnx.load_from_string(buf.getvalue()))
    assert code == 0
    assert [i.name for i in out.graph.input] == ["image"] and [o.name for o in out.graph.output] == ["logits"]
    assert not out.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")  # the batch stays dynamic
    assert "Mul" not in onnx_op_counts(out) and "Resize" not in onnx_op_counts(out)  # the blends are gone
    assert "written as opset 18" in capsys.readouterr().out  # opset 13 upgraded, and said so


@pytest.mark.filterwarnings("ignore:.*legacy TorchScript-based ONNX export:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")
def test_torchvision_resnet18_onnx_loses_its_batch_norms(tmp_path, capsys):
    model = models.randomize_batchnorm(torchvision.models.resnet18(num_classes=10)).eval()
    buf = io.BytesIO()  # the legacy exporter without constant folding keeps the BatchNormalization nodes
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), buf, dynamo=False, do_constant_folding=False, opset_version=17)
    onnx_in = onnx.load_from_string(buf.getvalue())
    assert onnx_op_counts(onnx_in)["BatchNormalization"] == 20
    code, out = run(tmp_path, onnx_in)
    assert code == 0 and "BatchNormalization" not in onnx_op_counts(out) and onnx_op_counts(out)["Conv"] == 20
    assert out.opset_import[0].version == 18 and "opset 17: written as opset 18" in capsys.readouterr().out


def test_foldpass_output_passes_through_unchanged(tmp_path):
    model = models.randomize_batchnorm(models.resnet18(width=4, t=0.0)).eval()
    first = tmp_path / "first.onnx"
    foldpass.optimize(model, torch.randn(1, 1, 28, 28)).save_onnx(first)
    again = foldpass.optimize(foldpass.load_source(str(first)))
    assert not [n for n in again.report.notes if n.action == "applied"]
    assert again.report.before.ops == again.report.after.ops
    again.save_onnx(tmp_path / "second.onnx")
    assert onnx_op_counts(onnx.load(tmp_path / "second.onnx")) == onnx_op_counts(onnx.load(first))


def test_broken_files_exit_2(tmp_path, capsys):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x01garbage")
    assert main(["optimize", str(tmp_path / "bad.onnx"), "-o", str(tmp_path / "o.onnx")]) == 2
    assert not (tmp_path / "o.onnx").exists()


def test_external_data_in_and_out(tmp_path, monkeypatch):
    model = models.randomize_batchnorm(models.CNN3(width=16, t=0.0)).eval()
    src = tmp_path / "in.onnx"
    onnx.save_model(to_onnx(model, (torch.randn(1, 1, 28, 28),)), src, save_as_external_data=True,
                    all_tensors_to_one_file=True, location="in.onnx.data")
    assert (tmp_path / "in.onnx.data").exists()
    monkeypatch.setattr("foldpass.export.EXTERNAL_DATA_BYTES", 0)  # as if the weights were over 2 GB
    assert main(["optimize", str(src), "-o", str(tmp_path / "out.onnx")]) == 0
    assert (tmp_path / "out.onnx.data").exists()
    onnx.checker.check_model(str(tmp_path / "out.onnx"))


def test_a_failed_check_removes_the_external_data_too(tmp_path, monkeypatch):
    monkeypatch.setattr("foldpass.export.EXTERNAL_DATA_BYTES", 0)
    model = to_onnx(models.CNN3(width=4).eval(), (torch.randn(1, 1, 28, 28),))

    def fails(path):
        raise foldpass.VerificationError("no")

    with pytest.raises(foldpass.VerificationError):
        save_atomic(model, tmp_path / "o.onnx", check=fails)
    assert list(tmp_path.iterdir()) == []
