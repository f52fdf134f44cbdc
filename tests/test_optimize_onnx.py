"""foldpass.optimize_onnx (issue 17, part 2): ONNX in, ONNX out, in memory, the check returned."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
import foldpass
from foldpass.export import onnx_op_counts


def model_proto() -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu, written by hand (torch.onnx would fold the batch norm itself)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("w", rng.standard_normal((4, 1, 3, 3))), ("b", rng.standard_normal(4)), ("s", rng.random(4) + 0.5),
        ("bb", rng.standard_normal(4)), ("m", rng.standard_normal(4)), ("v", rng.random(4) + 0.5))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"]),
             helper.make_node("Relu", ["n"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_in_memory_with_the_check_returned():
    proto = model_proto()
    assert onnx_op_counts(proto).get("BatchNormalization") == 1
    optimized, check = foldpass.optimize_onnx(proto, check_n=3, inputs=[np.ones((5, 1, 8, 8), np.float32)])
    assert isinstance(optimized, onnx.ModelProto) and "BatchNormalization" not in onnx_op_counts(optimized)
    assert check.passed and check.cases == 3 + 3 + 1  # random, structured, the user's
    assert any(d["batch"] == 5 for d in check.details)


def test_a_failed_check_is_returned_not_raised(monkeypatch):
    import foldpass.optimizer as opt

    real = opt.verify

    def strict(*a, **k):
        k["rtol"], k["atol"] = 0.0, 0.0
        return real(*a, **k)

    proto = model_proto()
    monkeypatch.setattr(opt, "verify", strict)
    _, check = foldpass.optimize_onnx(proto)  # folding reassociates sums: not bit-exact
    assert not check.passed and "verification failed" in check.message


def test_bad_input_still_raises():
    with pytest.raises(foldpass.InputError):
        foldpass.optimize_onnx(onnx.ModelProto())
    with pytest.raises(foldpass.InputError, match="check_n"):
        foldpass.optimize_onnx(model_proto(), check_n=-1)
