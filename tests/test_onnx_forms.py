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


def agrees(path, model, x) -> None:
    """The written file computes what the model does, output by output."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-6)


def test_a_spatial_mean_with_kept_dims_becomes_a_global_average_pool(tmp_path):
    model = SqueezeExcite().eval()
    foldpass.optimize(model, torch.randn(1, 4, 8, 8)).save_onnx(tmp_path / "se.onnx", compare_direct=False)
    written = onnx.load(str(tmp_path / "se.onnx"))
    assert ops(written).count("GlobalAveragePool") == 1 and ops(written).count("ReduceMean") == 2
    agrees(tmp_path / "se.onnx", model, torch.randn(3, 4, 8, 8))


def test_a_second_run_changes_nothing_and_other_means_stay():
    proto = to_onnx(SqueezeExcite().eval(), (torch.randn(1, 4, 8, 8),))
    before = ops(proto)
    assert global_average_pools(proto) == 0 and ops(proto) == before  # to_onnx already rewrote the pool


def test_a_float16_mean_keeps_its_reduce_mean():
    """onnxruntime's CPU provider has GlobalAveragePool for float32 only: a float16 model is left as it is."""
    proto = to_onnx(SqueezeExcite().half().eval(), (torch.randn(1, 4, 8, 8).half(),))
    assert "GlobalAveragePool" not in ops(proto) and ops(proto).count("ReduceMean") == 3


class MLP(nn.Module):
    """A transformer MLP with exact GELU, and GELU's tanh approximation beside it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x):
        return self.b(nn.functional.gelu(self.a(x))) + nn.functional.gelu(x, approximate="tanh")


def _fused(path, tmp_path) -> list[str]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return ops(onnx.load(str(tmp_path / "fused.onnx")))


def test_gelu_is_written_in_the_order_onnxruntime_fuses(tmp_path):
    """torch.onnx writes x * (0.5 * (1 + erf(x / sqrt 2))); onnxruntime fuses (x * 0.5) * (1 + ...)
    into one Gelu (and the tanh form into one FastGelu). Under onnxruntime the direct export keeps
    its elementwise ops; foldpass's file has one kernel each."""
    from foldpass.export import direct_export
    from foldpass.onnx_forms import gelu_forms

    model, x = MLP().eval(), torch.randn(2, 5, 8)
    foldpass.optimize(model, x[:1]).save_onnx(tmp_path / "mlp.onnx", compare_direct=False)
    direct = direct_export(model, (x[:1],))
    onnx.save(direct, str(tmp_path / "direct.onnx"))
    assert "Erf" in _fused(tmp_path / "direct.onnx", tmp_path)  # not fused as the exporter writes it
    fused = _fused(tmp_path / "mlp.onnx", tmp_path)
    assert fused.count("Gelu") + fused.count("BiasGelu") == 1 and "Erf" not in fused  # (with the linear's bias)
    assert fused.count("FastGelu") == 1 and "Tanh" not in fused
    assert gelu_forms(direct) == 2 and gelu_forms(direct) == 0  # two rewrites; a second run changes nothing
    session = ort.InferenceSession(str(tmp_path / "mlp.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], want, rtol=1e-5,
                               atol=1e-6)


def test_a_half_scaled_sigmoid_is_not_rewritten():
    class NotGelu(nn.Module):
        def forward(self, x):
            return x * (0.5 * (1 + torch.sigmoid(x)))

    proto = to_onnx(NotGelu().eval(), (torch.randn(1, 4),))
    from foldpass.onnx_forms import gelu_forms

    before = [list(n.input) for n in proto.graph.node]
    assert gelu_forms(proto) == 0 and [list(n.input) for n in proto.graph.node] == before


class Head(nn.Module):
    """A classifier's flatten before its linear layer, and a reshape that is not a flatten."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 2 * 2, 5)

    def forward(self, x):
        y = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(torch.flatten(y, 1)), y.reshape(-1, 8)  # -> Flatten; rows of 8 across the batch: kept


def test_a_flatten_before_the_classifier_is_written_as_flatten(tmp_path):
    from foldpass.onnx_forms import flattens

    model = Head().eval()
    foldpass.optimize(model, torch.randn(1, 3, 8, 8)).save_onnx(tmp_path / "head.onnx", compare_direct=False)
    written = onnx.load(str(tmp_path / "head.onnx"))
    assert ops(written).count("Flatten") == 1 and ops(written).count("Reshape") == 1
    assert flattens(written) == 0  # a second run changes nothing
    agrees(tmp_path / "head.onnx", model, torch.randn(3, 3, 8, 8))  # the batch stayed dynamic


def test_a_reshape_that_merges_the_batch_is_not_a_flatten():
    from foldpass.onnx_forms import flattens

    class Rows(nn.Module):
        def forward(self, x):
            return x.reshape(-1, 4) * 2  # N x 8 -> 2N x 4

    proto = to_onnx(Rows().eval(), (torch.randn(1, 8),))
    assert "Reshape" in ops(proto) and "Flatten" not in ops(proto) and flattens(proto) == 0


def test_a_zero_in_the_shape_keeps_dim_0_only_without_allowzero():
    """Reshape(x, [0, -1]) keeps dim 0 (a flatten) unless allowzero=1 says that 0 means size 0."""
    from onnx import TensorProto, helper

    from foldpass.onnx_forms import flattens

    def reshape(allowzero: int) -> onnx.ModelProto:
        graph = helper.make_graph(
            [helper.make_node("Reshape", ["x", "shape"], ["y"], allowzero=allowzero)], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [helper.make_tensor("shape", TensorProto.INT64, [2], [0, -1])])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    flat, literal = reshape(0), reshape(1)
    assert flattens(flat) == 1 and ops(flat) == ["Flatten"]
    assert flattens(literal) == 0 and ops(literal) == ["Reshape"]
    x = np.random.randn(4, 2, 3).astype(np.float32)
    session = ort.InferenceSession(flat.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x.reshape(4, 6))
