"""torch.compile(model, backend="foldpass") (issue 19, part 1): found through the entry point, folds a
linear net and a t = 0 net, folds each side of a graph break, and falls back with one warning when
its check fails. Run in eager (inductor off) to keep the suite fast; the benchmark uses inductor."""

import warnings

import pytest
import torch
from torch import nn

import foldpass.compile_backend as backend
from models import linear_resnet34, randomize_batchnorm, resnet18

EAGER = {"inductor": False}


@pytest.fixture(autouse=True)
def fresh():
    torch._dynamo.reset()
    backend.REPORTS.clear()
    yield
    torch._dynamo.reset()


def compiled_equal(model, x, **kw):
    fast = torch.compile(model, backend="foldpass", options={**EAGER, **kw})
    with torch.no_grad():
        want, got = model(x), fast(x)
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= 1e-4 * scale + 1e-5
    return fast


def test_the_backend_is_registered():
    from torch._dynamo.backends.registry import list_backends, lookup_backend

    assert "foldpass" in list_backends(exclude_tags=()) and lookup_backend("foldpass") is backend.foldpass_backend


def test_a_linear_net_folds_to_one_gemm():
    model = randomize_batchnorm(linear_resnet34(width=2)).eval()
    compiled_equal(model, torch.randn(4, 1, 28, 28))
    (report,) = backend.REPORTS
    assert report.after.ops == {"addmm": 1, "view": 1}


def test_a_t0_net_loses_its_skips():
    model = randomize_batchnorm(resnet18(width=4, t=0.0)).eval()
    compiled_equal(model, torch.randn(2, 1, 28, 28))
    (report,) = backend.REPORTS
    assert report.before.ops.get("mul", 0) > 0 and "mul" not in report.after.ops and "add" not in report.after.ops


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
        self.b = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))

    def forward(self, x):
        y = self.a(x)
        torch._dynamo.graph_break()
        return self.b(y)


def test_each_side_of_a_graph_break_is_folded():
    model = randomize_batchnorm(Broken()).eval()
    compiled_equal(model, torch.randn(2, 1, 12, 12))
    assert len(backend.REPORTS) == 2
    assert all("_native_batch_norm_legit_no_training" not in r.after.ops for r in backend.REPORTS)


def test_a_failed_check_falls_back_with_one_warning(monkeypatch):
    from foldpass.errors import VerificationError

    def fails(*a, **k):
        raise VerificationError("verification failed: planted")

    monkeypatch.setattr("foldpass.verification.verify_module", fails)
    model = randomize_batchnorm(linear_resnet34(width=2)).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled_equal(model, torch.randn(2, 1, 28, 28))
    mine = [w for w in caught if issubclass(w.category, backend.FoldpassCompileWarning)]
    assert len(mine) == 1 and "planted" in str(mine[0].message) and not backend.REPORTS


def test_an_unknown_option_falls_back():
    model = nn.Linear(4, 2).eval()
    with pytest.warns(backend.FoldpassCompileWarning, match="unknown option"):
        compiled_equal(model, torch.randn(3, 4), colour="blue")
