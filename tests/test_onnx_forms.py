"""onnx_forms: the ONNX form onnxruntime runs fastest, written where the exporter wrote another of
the same value (a spatial mean with kept dims -> GlobalAveragePool)."""

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import foldpass
from foldpass.export import to_onnx
from foldpass.onnx_forms import global_average_pools


class SqueezeExcite(nn.Module):
    """efficientnet's pool, and two means that are not a global pool."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        scale = torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True)))  # -> GlobalAveragePool
        return (y * scale).mean((-2, -1)), y.mean(1, keepdim=True)  # dims dropped; over channels: kept as they are


def ops(model):
    return [n.op_type for n in model.graph.node]


def test_a_spatial_mean_with_kept_dims_becomes_a_global_average_pool(tmp_path):
    model = SqueezeExcite().eval()
    foldpass.optimize(model, torch.randn(1, 4, 8, 8)).save_onnx(tmp_path / "se.onnx")
    written = onnx.load(str(tmp_path / "se.onnx"))
    assert ops(written).count("GlobalAveragePool") == 1 and ops(written).count("ReduceMean") == 2
    x = torch.randn(3, 4, 8, 8)
    session = ort.InferenceSession(str(tmp_path / "se.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-6)


def test_a_second_run_changes_nothing_and_other_means_stay():
    proto = to_onnx(SqueezeExcite().eval(), (torch.randn(1, 4, 8, 8),))
    before = ops(proto)
    assert global_average_pools(proto) == 0 and ops(proto) == before  # to_onnx already rewrote the pool


def test_a_float16_mean_keeps_its_reduce_mean():
    """onnxruntime's CPU provider has GlobalAveragePool for float32 only: a float16 model is left as it is."""
    proto = to_onnx(SqueezeExcite().half().eval(), (torch.randn(1, 4, 8, 8).half(),))
    assert "GlobalAveragePool" not in ops(proto) and ops(proto).count("ReduceMean") == 3
