"""peer.py: the direct export's op counts from a second process, and every way back to counting in this one."""

import glob
import os
import subprocess
import sys
import tempfile

import pytest
import torch

import foldpass
import models
from foldpass import peer
from foldpass.export import direct_export_ops
from models import randomize_batchnorm


@pytest.fixture(autouse=True)
def private_tempdir(tmp_path_factory, monkeypatch):
    """Each test's peer folders in a temp dir of its own: under pytest -n 2 the other worker's
    peers come and go in the shared one, and a check for leftovers would count theirs."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("tmp")))


def _result():
    return foldpass.optimize(randomize_batchnorm(models.CNN3(width=4)).eval(), torch.randn(1, 1, 28, 28))


def _leftovers():
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "foldpass-peer-*")))


def test_one_core_a_quick_trace_or_a_large_program_counts_in_this_process(monkeypatch):
    result = _result()
    monkeypatch.setattr(peer, "_cores", lambda: 1)
    assert peer.DirectOps.start(result.program, 18) is None
    monkeypatch.setattr(peer, "_cores", lambda: 2)
    assert peer.DirectOps.start(result.program, 18, trace_s=1.0) is None  # a second interpreter would cost more
    monkeypatch.setattr(peer, "MAX_PROGRAM_BYTES", 10)
    assert peer.DirectOps.start(result.program, 18) is None


def test_a_peer_that_does_not_answer_is_counted_here(tmp_path):
    result = _result()
    result.report.onnx_ops = {"Gemm": 1}
    silent = peer.DirectOps(str(tmp_path / "peer"), subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"],
                                                                       stdout=subprocess.PIPE, text=True))
    result._compare_direct(None, silent)
    assert result.report.direct_ops == direct_export_ops(result.program, result.inputs)


def test_save_onnx_compares_through_the_peer_and_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(peer, "_cores", lambda: 2)
    monkeypatch.setattr(peer, "MIN_TRACE_S", 0.0)
    started = []
    real = peer.DirectOps.start
    monkeypatch.setattr(peer.DirectOps, "start", classmethod(lambda cls, *a: started.append(1) or real(*a)))
    result, before = _result(), _leftovers()
    result.save_onnx(tmp_path / "m.onnx")
    assert started and result.report.direct_ops == direct_export_ops(result.program, result.inputs)
    assert "direct export" in result.report.timings and _leftovers() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_optimize_starts_the_count_beside_the_passes_and_save_onnx_takes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(peer, "_cores", lambda: 2)
    monkeypatch.setattr(peer, "MIN_TRACE_S", 0.0)
    result = foldpass.optimize(randomize_batchnorm(models.CNN3(width=4)).eval(), torch.randn(1, 1, 28, 28),
                               compare_direct=True)
    running = result._peer[1]
    result.save_onnx(tmp_path / "m.onnx")
    assert result._peer is None and running._process.returncode == 0  # taken and finished
    assert result.report.direct_ops == direct_export_ops(result.program, result.inputs)
    other = foldpass.optimize(models.CNN3(width=4).eval(), torch.randn(1, 1, 28, 28), compare_direct=True)
    stale = other._peer[1]
    other.save_onnx(tmp_path / "o.onnx", opset=19)  # another opset: the started count stops, one for 19 runs
    assert stale._process.poll() is not None  # stopped (killed, or it had finished): nothing left running
    assert other.report.direct_ops == direct_export_ops(other.program, other.inputs, 19)


def test_a_failed_optimize_stops_the_count(monkeypatch):
    import foldpass.optimizer

    monkeypatch.setattr(peer, "_cores", lambda: 2)
    monkeypatch.setattr(peer, "MIN_TRACE_S", 0.0)
    started = []
    real = peer.DirectOps.start
    monkeypatch.setattr(peer.DirectOps, "start", classmethod(lambda cls, *a: started.append(real(*a)) or started[-1]))
    monkeypatch.setattr(foldpass.optimizer, "run_pipeline", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    try:
        foldpass.optimize(models.CNN3(width=4).eval(), torch.randn(1, 1, 28, 28), compare_direct=True)
    except RuntimeError:
        pass
    assert started and started[0]._process.poll() is not None  # not left running
