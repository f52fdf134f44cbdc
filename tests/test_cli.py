"""The command line: exit codes (0 ok, 1 failed verification, 2 bad input) and no stray output files."""

import os
import pickle

import pytest
import onnx
import onnx.numpy_helper
import torch

import models
from foldpass.cli import main
from foldpass.errors import FoldpassError


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(models.CNN3().state_dict(), path)
    return path


def test_optimize_builder_with_weights_and_set_t(tmp_path, weights, capsys):
    out, report = tmp_path / "m.onnx", tmp_path / "r.json"
    code = main(["optimize", "models:CNN3", "--weights", str(weights), "-o", str(out), "--input-shape", "1,1,28,28",
                 "--set-t", "0", "--report", str(report)])
    assert code == 0 and out.exists()
    import json

    rep = json.loads(report.read_text())
    assert rep["before"]["ops"]["mul"] == 2 and "mul" not in rep["after"]["ops"]  # the blend is gone
    assert rep["verification"]["max_abs_error"] <= rep["verification"]["tolerance"]


def test_weights_that_do_not_fit_exit_2(tmp_path, capsys):
    small = tmp_path / "small.pt"
    torch.save(models.CNN3(width=4).state_dict(), small)
    out = tmp_path / "m.onnx"
    assert main(["optimize", "models:CNN3", "--weights", str(small), "-o", str(out), "--input-shape", "1,1,28,28"]) == 2
    assert not out.exists()
    assert "does not fit" in capsys.readouterr().err


def test_optimize_pt2(tmp_path, capsys):
    model = models.CNN3(width=4, t=0.0).eval()
    ep = torch.export.export(model, (torch.randn(2, 1, 28, 28),),
                             dynamic_shapes=({0: torch.export.Dim("batch")},), strict=False)
    src, out, report = tmp_path / "m.pt2", tmp_path / "m.onnx", tmp_path / "r.json"
    torch.export.save(ep, src)
    assert main(["optimize", str(src), "-o", str(out), "--report", str(report)]) == 0
    assert out.exists() and report.exists()
    assert "verified" in capsys.readouterr().out


def test_full_pickle_needs_trust(tmp_path, capsys):
    src, out = tmp_path / "m.pt", tmp_path / "m.onnx"
    torch.save(models.CNN3(width=4), src)
    assert main(["optimize", str(src), "-o", str(out), "--input-shape", "1,1,28,28"]) == 2
    assert "--trust" in capsys.readouterr().err and not out.exists()
    assert main(["optimize", str(src), "-o", str(out), "--input-shape", "1,1,28,28", "--trust-pickle",
                 "--no-compare-direct"]) == 0
    assert out.exists()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hostile_pickle_runs_nothing_without_trust(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pt"
    with open(src, "wb") as f:
        pickle.dump(_Payload(str(marker)), f)
    assert main(["optimize", str(src), "-o", str(tmp_path / "o.onnx"), "--input-shape", "1,1,28,28"]) == 2
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 10])
@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
def test_broken_files_exit_2(tmp_path, content, suffix, capsys):
    src = tmp_path / f"bad{suffix}"
    src.write_bytes(content)
    assert main(["optimize", str(src), "-o", str(tmp_path / "o.onnx"), "--input-shape", "1,1,28,28"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("foldpass: error:") and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_before_or_after_the_command_shows_the_traceback(tmp_path, where):
    src = tmp_path / "bad.pt2"
    src.write_bytes(b"")
    argv = ["optimize", str(src), "-o", str(tmp_path / "o.onnx")]
    with pytest.raises(FoldpassError):
        main(["--debug", *argv] if where == "before" else [*argv, "--debug"])


def test_bad_usage_exit_2(tmp_path, weights, capsys):
    out = tmp_path / "o.onnx"
    assert main(["optimize", "missing.pt2", "-o", str(out)]) == 2
    assert main(["optimize", "models:CNN3", "-o", str(out)]) == 2  # no --input-shape
    assert main(["optimize", "models:CNN3", "-o", str(out), "--input-shape", "1,x"]) == 2
    assert main(["optimize", "models:CNN3", "-o", str(tmp_path / "nodir" / "o.onnx"), "--input-shape", "1,1,28,28"]) == 2
    assert main(["optimize", "models:Nope", "-o", str(out), "--input-shape", "1,1,28,28"]) == 2
    assert main(["optimize", str(weights), "-o", str(out), "--input-shape", "1,1,28,28"]) == 2  # a state dict
    with pytest.raises(SystemExit) as exc:
        main(["optimize", "models:CNN3", "-o", str(out), "--pipeline", "fast"])
    assert exc.value.code == 2
    assert not out.exists()


def test_existing_output_is_never_clobbered(tmp_path):
    out = tmp_path / "o.onnx"
    out.write_bytes(b"precious")
    assert main(["optimize", "models:CNN3", "-o", str(out), "--input-shape", "1,1,28,28"]) == 2
    assert out.read_bytes() == b"precious"


def test_failed_verification_exits_1_and_writes_nothing(tmp_path, capsys, monkeypatch):
    # a wrong fold: the exported file's first weight scaled by 1.5. (A zero tolerance no longer makes a sure
    # failure: the gate allows the unoptimized export's own error, which is sometimes as large as the fold's.)
    from foldpass.optimizer import OptimizeResult

    exported = OptimizeResult.to_onnx

    def wrong(self, *a, **k):
        model = exported(self, *a, **k)
        weight = next(t for t in model.graph.initializer if len(t.dims) > 1)
        array = onnx.numpy_helper.to_array(weight) * 1.5
        weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
        return model

    monkeypatch.setattr(OptimizeResult, "to_onnx", wrong)
    out = tmp_path / "o.onnx"
    code = main(["optimize", "models:CNN3", "-o", str(out), "--input-shape", "1,1,28,28", "--no-compare-direct"])
    assert code == 1
    assert "verification failed" in capsys.readouterr().err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_truncated_files_of_every_kind_exit_2(tmp_path, capsys):
    model = models.CNN3(width=4).eval()
    pt2, pt, weights = tmp_path / "m.pt2", tmp_path / "m.pt", tmp_path / "w.pt"
    torch.export.save(torch.export.export(model, (torch.randn(2, 1, 28, 28),), strict=False), pt2)
    torch.save(model, pt)
    torch.save(model.state_dict(), weights)
    for path in (pt2, pt, weights):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    out = str(tmp_path / "o.onnx")
    shape = ["--input-shape", "1,1,28,28"]
    assert main(["optimize", str(pt2), "-o", out]) == 2
    assert main(["optimize", str(pt), "-o", out, "--trust-pickle", *shape]) == 2
    assert main(["optimize", "models:CNN3", "--weights", str(weights), "-o", out, *shape]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("foldpass: error:") for line in err), err
    assert not os.path.exists(out)
