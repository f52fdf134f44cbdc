"""fp16 output (issue 17, part 4): folded in float64, stored in float16, float32 I/O by default with
a Cast at each edge only, verified against the float32 original at float16's tolerance."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import foldpass
from foldpass.cli import main
from foldpass.export import onnx_op_counts
from models import linear_resnet34, randomize_batchnorm, resnet18


@pytest.mark.parametrize("model", [lambda: linear_resnet34(width=2), lambda: resnet18(width=4, t=0.0)],
                         ids=["linear ResNet34", "ResNet18 at t = 0"])
def test_fp16_with_casts_only_at_the_edges(tmp_path, model):
    net = randomize_batchnorm(model()).eval()
    result = foldpass.optimize(net, torch.randn(1, 1, 28, 28))
    check = result.save_onnx(tmp_path / "h.onnx", precision="fp16")
    out = onnx.load(tmp_path / "h.onnx")
    casts = [n for n in out.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2 and casts[0].input[0] == out.graph.input[0].name
    assert casts[1].output[0] == out.graph.output[0].name
    assert {i.data_type for i in out.graph.initializer if i.data_type in (1, 10)} == {onnx.TensorProto.FLOAT16}
    assert out.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert check.tolerance >= 7.8e-3 * check.output_scale  # float16's tolerance, against the float32 original
    assert result.report.precision == "fp16"


def test_fp16_io_has_no_casts(tmp_path, capsys):
    src = tmp_path / "m.pt2"
    net = randomize_batchnorm(linear_resnet34(width=2)).eval()
    torch.export.save(torch.export.export(net, (torch.randn(2, 1, 28, 28),),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},)), src)
    assert main(["optimize", str(src), "-o", str(tmp_path / "h.onnx"), "--precision", "fp16", "--fp16-io"]) == 0
    out = onnx.load(tmp_path / "h.onnx")
    assert "Cast" not in onnx_op_counts(out) and out.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    session = ort.InferenceSession(str(tmp_path / "h.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {session.get_inputs()[0].name: np.zeros((4, 1, 28, 28), np.float16)})[0].dtype == np.float16
    assert main(["optimize", str(src), "-o", str(tmp_path / "x.onnx"), "--fp16-io"]) == 2
