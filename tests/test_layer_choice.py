"""compress's lowrank, per layer: each conv timed alone against each method's chain, the fastest chain
chosen where it pays, and the decomposition applying each layer's own method."""

import numpy as np
import onnxruntime as ort
from onnx import numpy_helper
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import foldpass
from foldpass import benchmark
from foldpass.benchmark import Timing
from foldpass.compression.layer_choice import conv_chain_onnx, layer_methods
from foldpass.decomposition.low_rank_decomposition import _chain, _factorize, factor_shapes, low_rank_decomposition


class Two(nn.Module):
    """Two 32 -> 32 3 x 3 convs (each factorizable at rank 4) and a 1 x 1 (never)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(32, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1, stride=2), \
            nn.Conv2d(32, 8, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x))))).mean((2, 3))


@pytest.mark.parametrize("method", ["tucker", "cp", "tt"])
def test_the_timed_chain_has_the_shapes_of_the_real_factorization(method):
    """conv_chain_onnx of factor_shapes runs the same convs as the factorization, with other weights:
    fed the real factors' values it computes the chain the decomposition writes."""
    w = np.random.default_rng(0).standard_normal((12, 8, 3, 3))
    ranks = {"tucker": (4, 3), "cp": (5,), "tt": (3, 4, 5)}[method]
    factors, _ = _factorize(method, w, ranks)
    assert [f.shape for f in factors] == factor_shapes(method, ranks, w.shape)
    chain = _chain(method, factors, (2, 2), (1, 1))
    model = conv_chain_onnx([(f.shape, st, pd, g) for f, st, pd, g in chain], (8, 9, 9))
    for init, (f, *_) in zip(model.graph.initializer, chain):  # the real weights into the timed model
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(f, np.float32), init.name))
    x = torch.randn(3, 8, 9, 9)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = x.double()
    for f, st, pd, g in chain:
        want = F.conv2d(want, torch.from_numpy(np.ascontiguousarray(f)), None, st, pd, 1, g)
    np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], want.numpy(), rtol=1e-4, atol=1e-4)


def fake_bench(speed: dict[str, float]):
    """bench() as if each chain ran `speed[method]` times the conv's speed at every batch."""

    def bench(models, names, batches, **_):
        class Result:
            timings = [Timing(n, b, blocks_s=[1.0 / speed.get(n, 1.0)] * 3) for b in batches for n in names]
        return Result()

    return bench


def test_each_layer_gets_the_fastest_chain_where_it_pays(monkeypatch):
    monkeypatch.setattr(benchmark, "bench", fake_bench({"tucker": 1.3, "cp": 2.0, "tt": 0.8}))
    methods, timings = layer_methods(Two().eval(), torch.zeros(2, 32, 16, 16), 4, batches=(1, 4))
    assert set(methods.values()) == {"cp"} and len(methods) == 2  # the 1 x 1 is never a candidate
    assert all(t.chosen == "cp" and set(t.speedup) == {"tucker", "cp", "tt"} for t in timings)
    monkeypatch.setattr(benchmark, "bench", fake_bench({"tucker": 1.02, "cp": 0.9, "tt": 0.5}))
    methods, timings = layer_methods(Two().eval(), torch.zeros(2, 32, 16, 16), 4, batches=(1, 4))
    assert methods == {} and [t.chosen for t in timings] == [None, None]  # 2 % is inside the noise: kept


def test_the_decomposition_applies_each_layers_own_method_and_keeps_the_rest():
    gm = foldpass.trace(Two().eval(), (torch.zeros(1, 32, 16, 16),))
    convs = [n.name for n in gm.graph.nodes if n.op == "call_function" and "convolution" in str(n.target)]
    result = low_rank_decomposition(gm, method={convs[0]: "cp"}, rank=4)
    applied = [n.message for n in result.notes if n.action == "applied"]
    assert len(applied) == 1 and " -> cp rank" in applied[0]
    assert any(f"{convs[1]} kept: no factorization of it measured faster" in n.message for n in result.notes)
    assert foldpass.graph.count_ops(result.module)["convolution"] == 4 + 1 + 1  # CP's four, the kept conv, the 1 x 1
    x = torch.randn(2, 32, 16, 16)
    with torch.no_grad():
        assert result.module(x).shape == Two().eval()(x).shape
    again = low_rank_decomposition(result.module, method={convs[0]: "cp"}, rank=4)  # that node is gone now
    assert not again.modified


def test_the_lowrank_step_factorizes_the_layers_chosen_and_verifies_its_file(monkeypatch, tmp_path):
    from test_compress import splits

    from foldpass.compression import steps

    monkeypatch.setattr(steps, "MIN_STEPS", 8)
    monkeypatch.setattr(benchmark, "bench", fake_bench({"tucker": 1.5, "cp": 1.1, "tt": 0.9}))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4)).eval()
    job = steps.Job(splits(), model, torch.zeros(2, 1, 8, 8), str(tmp_path), epochs=1, log=lambda _: None)
    state = steps.lowrank(job, steps.State(model, ""), 4)
    (change,) = state.structure
    assert change["step"] == "lowrank" and set(change["methods"].values()) == {"tucker"}
    assert state.verification and state.verification["max_abs_error"] <= state.verification["tolerance"]
    import onnx

    convs = sum(n.op_type == "Conv" for n in onnx.load(state.onnx).graph.node)
    # each Tucker-2 chain is three convs for one; the exact folds may merge a 1 x 1 of it into a neighbour
    # (the stem's rank-1 input step), never the whole chain back
    assert 2 + len(change["methods"]) <= convs <= 2 + 2 * len(change["methods"])
