"""The timing harness on tiny models: structure, same-round ratios, provider fallback (no absolute times)."""

import json
import statistics

import pytest
import torch
from torch import nn

from foldpass.benchmark import bench, bench_with_peers
from foldpass.cli import main
from foldpass.errors import InputError
from foldpass.export import save_atomic, to_onnx


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    x = torch.randn(2, 1, 8, 8)
    a, b = d / "a.onnx", d / "b.onnx"
    save_atomic(to_onnx(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)).eval(), (x,)), a)
    save_atomic(to_onnx(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).eval(), (x,)), b)
    return str(a), str(b)


def test_structure_and_neighbouring_block_ratios(two_models):
    res = bench(list(two_models), ["a", "b"], provider="cpu", batches=(1, 4), rounds=3, round_s=0.01, warmup=1)
    assert [(t.name, t.batch) for t in res.timings] == [("a", 1), ("b", 1), ("a", 4), ("b", 4)]
    for first, other in ((res.timings[0], res.timings[1]), (res.timings[2], res.timings[3])):
        assert len(other.per_image_s) == 3
        assert len(other.blocks_s) == len(first.blocks_s) and len(first.blocks_s) % 3 == 0
        per_round = len(first.blocks_s) // 3
        assert other.per_image_s == [statistics.median(other.blocks_s[k * per_round:(k + 1) * per_round])
                                     for k in range(3)]
        assert other.ratios == pytest.approx([x / y for x, y in zip(first.blocks_s, other.blocks_s)])
        assert other.speedup == pytest.approx(statistics.median(other.ratios))
        assert first.speedup == 1.0
    table = res.markdown()
    assert table.count("\n") == 5 and "speed-up vs first" in table
    assert res.as_dict()["environment"]["provider"] == "CPUExecutionProvider"


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available:UserWarning")
def test_fallback_is_reported(two_models, monkeypatch):
    from foldpass import benchmark as bench_mod

    monkeypatch.setattr(bench_mod, "resolve_provider", lambda p: "CUDAExecutionProvider")
    res = bench(list(two_models), provider="cuda", batches=(1,), rounds=1, round_s=0.001, warmup=0)
    assert any("fallback" in n for n in res.notes)


def test_cuda_request_without_cuda_is_a_clear_error(two_models):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InputError, match="no CUDAExecutionProvider"):
        bench(list(two_models), provider="cuda")


def test_peers_and_cli_outputs(two_models, tmp_path, capsys):
    res = bench_with_peers([two_models[0]], ["a"], provider="cpu", batches=(1,), rounds=1, round_s=0.001, warmup=0)
    assert [t.name for t in res.timings][:2] == ["a", "a + ORT_ENABLE_ALL offline"]
    js, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["bench", *two_models, "--provider", "cpu", "--batch", "1", "--rounds", "2",
                 "--json", str(js), "--plot", str(png)]) == 0
    assert len(json.loads(js.read_text())["results"]) == 2 and png.stat().st_size > 1000
    assert main(["bench", "missing.onnx"]) == 2
