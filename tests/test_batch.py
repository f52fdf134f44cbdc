"""The batch of what foldpass writes (issue 17, part 1): a .pt2 exported the usual way (no
dynamic_shapes: torch specializes the batch to 1) comes out with a dynamic batch, unless its graph
really depends on the batch; --batch / --dynamic-batch / --static-batch; the user's axis names kept."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from foldpass.cli import main
import models
from models import linear_resnet34, randomize_batchnorm, resnet34


class MixesTheBatch(nn.Module):
    """Subtracts the batch mean: valid at any batch, but each output depends on the other samples."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return self.conv(x - x.mean(dim=0, keepdim=True)).flatten(1)


def exported_the_usual_way(model, path):
    torch.export.save(torch.export.export(model.eval(), (torch.randn(1, 1, 28, 28),)), path)


def run(path, batch):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 1, 28, 28)).astype(np.float32)
    return session, session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("name, model", [
    ("linear ResNet34", lambda: randomize_batchnorm(linear_resnet34(width=2))),
    ("ResNet34 at t = 0", lambda: randomize_batchnorm(resnet34(width=2, t=0.0))),
])
def test_a_pt2_exported_at_batch_1_gets_a_dynamic_batch(tmp_path, capsys, name, model):
    model = model().eval()
    src, out = tmp_path / "m.pt2", tmp_path / "m.onnx"
    exported_the_usual_way(model, src)
    assert main(["optimize", str(src), "-o", str(out), "--no-compare-direct"]) == 0
    assert "restored" in capsys.readouterr().out
    session, y = run(out, 64)
    assert not isinstance(session.get_inputs()[0].shape[0], int) and y.shape[0] == 64
    with torch.no_grad():
        want = model(torch.from_numpy(np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32)))
    assert np.abs(y - want.numpy()).max() <= 1e-4 * np.abs(want.numpy()).max() + 1e-5


def test_a_graph_that_mixes_the_batch_stays_static_and_says_where(tmp_path, capsys):
    src, out = tmp_path / "m.pt2", tmp_path / "m.onnx"
    exported_the_usual_way(MixesTheBatch(), src)
    assert main(["optimize", str(src), "-o", str(out), "--no-compare-direct"]) == 0
    printed = capsys.readouterr().out
    assert "mean" in printed and "across the batch axis" in printed
    assert onnx.load(out).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert main(["optimize", str(src), "-o", str(tmp_path / "d.onnx"), "--dynamic-batch"]) == 2
    assert "cannot be dynamic" in capsys.readouterr().err and not (tmp_path / "d.onnx").exists()


@pytest.mark.parametrize("model, restored", [(lambda: linear_resnet34(width=2), True), (MixesTheBatch, False)],
                         ids=["restored", "kept static"])
def test_a_program_to_restore_is_decomposed_once(monkeypatch, model, restored):
    """The static program is exported again with a dynamic batch; only that one is decomposed (the
    static graph too only where it is kept), and what comes out is decomposed either way."""
    from foldpass.graph import BatchPlan
    from foldpass.tracing import trace

    program = torch.export.export(model().eval(), (torch.randn(1, 1, 28, 28),))
    calls = []
    real = torch.export.ExportedProgram.run_decompositions
    monkeypatch.setattr(torch.export.ExportedProgram, "run_decompositions",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    gm = trace(program, (torch.randn(1, 1, 28, 28),))
    assert len(calls) == 1 + (not restored) and (BatchPlan.of(gm).size is None) == restored
    assert not any(n.target in (torch.ops.aten.conv2d.default, torch.ops.aten.batch_norm.default)
                   for n in gm.graph.nodes)  # decomposed: the ATen core ops the passes read


def test_static_batch_and_a_fixed_batch_on_request(tmp_path):
    src = tmp_path / "m.pt2"
    exported_the_usual_way(randomize_batchnorm(models.CNN3(width=4, t=0.0)), src)  # the batch, not the folds
    assert main(["optimize", str(src), "-o", str(tmp_path / "s.onnx"), "--static-batch", "--no-compare-direct"]) == 0
    assert onnx.load(tmp_path / "s.onnx").graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert main(["optimize", str(src), "-o", str(tmp_path / "b.onnx"), "--batch", "8", "--no-compare-direct"]) == 0
    assert onnx.load(tmp_path / "b.onnx").graph.input[0].type.tensor_type.shape.dim[0].dim_value == 8


def test_the_onnx_batch_axis_keeps_its_name(tmp_path):
    from foldpass.export import to_onnx

    model = to_onnx(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval(), (torch.randn(2, 1, 8, 8),))
    for v in [*model.graph.input, *model.graph.output]:
        v.type.tensor_type.shape.dim[0].dim_param = "n"
    onnx.save(model, tmp_path / "in.onnx")
    assert main(["optimize", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out.onnx")]) == 0
    out = onnx.load(tmp_path / "out.onnx")
    assert [v.type.tensor_type.shape.dim[0].dim_param for v in [*out.graph.input, *out.graph.output]] == ["n", "n"]


def test_an_onnx_file_that_runs_only_at_its_own_batch_is_optimized_at_the_batch_given(tmp_path, capsys):
    """The TorchScript exporter unrolls per-image loops (torchvision's detection models) for the batch it
    was given, yet names the axis dynamic: such a file runs at that batch only. --batch 2 traces it at 2
    (before, the trace ran it at batch 1 and 3, and onnxruntime refused the Split)."""
    import numpy as np
    import onnxruntime as ort

    from test_onnx_input import HEADER, parsed

    model = parsed(HEADER + """g (float[N, 2, 6, 6] x) => (float[N, 4, 6, 6] y) {
        s = Constant <value = int64[2] s {1, 1}> ()
        a, b = Split <axis = 0> (x, s)
        c = Concat <axis = 1> (a, b)
        d = Concat <axis = 0> (c, c)
        y = Conv <pads = [1, 1, 1, 1]> (d, w)
    }""", w=np.random.default_rng(0).standard_normal((4, 4, 3, 3)))
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    assert main(["optimize", str(src), "-o", str(out)]) == 2  # at batch 1 the file cannot run: one clear line
    assert "\n" not in capsys.readouterr().err.strip()
    assert main(["optimize", str(src), "-o", str(out), "--batch", "2"]) == 0
    written = onnx.load(out)
    assert written.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    x = np.random.default_rng(1).standard_normal((2, 2, 6, 6)).astype(np.float32)
    want, got = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
                 for m in (model, written))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
