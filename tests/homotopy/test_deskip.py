"""MNIST-5k offline, stages of a set number of steps, the recipes, batch-norm recalibration, and
de-skipping a trained residual network (library and `foldpass deskip`, end to end)."""

import json
import os

import numpy as np
import onnx
import pytest
import torch
from torch.utils.data import TensorDataset

import models
from foldpass.cli import main
from foldpass.errors import InputError
from foldpass.homotopy import RECIPES, deskip, get_t, recalibrate_batchnorm, recipe
from foldpass.data import load_data
from foldpass.homotopy.schedules import make_schedule
from foldpass.homotopy.training import train

from tiny_resnet import build

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def mnist_slice():
    splits = load_data("mnist5k", limit=128)
    return splits.train, splits.selection


def test_a_slice_keeps_its_shape(mnist_slice):
    train_set, val_set = mnist_slice
    assert len(train_set) == len(val_set) == 128 and train_set.tensors[0].shape[1:] == (1, 28, 28)


def test_steps_per_t_gives_every_t_that_many_steps():
    data = TensorDataset(torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,)))
    model = models.CNN3(width=4)
    seen = []
    model.blend.register_forward_pre_hook(lambda m, a: seen.append(float(m.t)) if m.training else None)
    history = train(model, data, data, make_schedule("paper", 3), 3, batch_size=16, steps_per_t=5)
    assert seen == pytest.approx([0.9] * 5 + [0.7] * 5 + [0.0] * 5)  # 5 steps each, over 3 batches a pass
    assert [h.t for h in history] == [0.9, 0.7, 0.0] and get_t(model) == 0.0


def test_cosine_lr_decays_to_zero_and_zero_fraction_holds_t_at_zero():
    data = TensorDataset(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,)))
    model = models.CNN3(width=4)
    lrs, ts = [], []
    model.blend.register_forward_pre_hook(lambda m, a: ts.append(float(m.t)) if m.training else None)
    plan = make_schedule("cosine", 4, t0=0.9, per="step", steps_per_epoch=5, zero_fraction=0.5)
    opt_step = torch.optim.Adam.step

    def spy(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return opt_step(self, *a, **k)

    torch.optim.Adam.step = spy
    try:
        train(model, data, data, plan, 4, batch_size=16, steps_per_t=5, lr_schedule="cosine")
    finally:
        torch.optim.Adam.step = opt_step
    assert ts[0] == pytest.approx(0.9) and ts[10:] == [0.0] * 10 and all(a >= b for a, b in zip(ts, ts[1:]))
    assert lrs[0] == 1e-3 and lrs[-1] < 1e-5 and all(a >= b for a, b in zip(lrs, lrs[1:]))
    with pytest.raises(InputError, match="lr schedule"):
        train(model, data, data, plan, 1, lr_schedule="step")


def test_recalibration_sets_the_running_statistics_to_the_data_statistics():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.BatchNorm2d(3))
    x = 5 + 2 * torch.randn(256, 1, 4, 4)
    assert recalibrate_batchnorm(model, TensorDataset(x), batch_size=256) == 1
    with torch.no_grad():
        h = model[0](x)
    torch.testing.assert_close(model[1].running_mean, h.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert model[1].momentum == 0.1 and model.training


def test_the_recipes_and_their_overrides():
    assert RECIPES["paper"].schedule == "paper" and RECIPES["paper"].lr_schedule == "constant"
    assert recipe("foldpass", zero_fraction=0.5, t0=None).zero_fraction == 0.5
    with pytest.raises(InputError, match="valid recipes"):
        recipe("magic")
    assert RECIPES["deskip"].freeze_bn == "start" and RECIPES["foldpass"].freeze_bn == "at-zero"
    with pytest.raises(InputError, match="needs a teacher"):
        from foldpass.homotopy import train_homotopy

        train_homotopy(models.CNN3(width=4), recipe=recipe("no-teacher", distill=0.5), epochs=1, limit=16)


def test_the_converted_model_is_exact_before_any_training():
    result = deskip(build().eval(), epochs=1, limit=32, steps_per_t=1, data="mnist5k")
    assert result.conversion_error == 0.0  # t0 = 0.5: the scales are exactly 2 and 2
    assert get_t(result.model) == 0.0 and result.history[-1].t == 0.0
    assert result.original_test_acc is not None and result.test_acc is not None
    assert result.change == pytest.approx((result.test_acc - result.original_test_acc) * 100)


def test_deskip_refuses_a_network_without_skips():
    with pytest.raises(InputError, match="no residual add"):
        deskip(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), epochs=1, limit=16)


def test_cli_deskip_end_to_end_leaves_no_blend_in_the_onnx(tmp_path, capsys, monkeypatch):
    weights, pt2, out = tmp_path / "w.pt", tmp_path / "d.pt2", tmp_path / "d.onnx"
    torch.save(build().state_dict(), weights)
    monkeypatch.syspath_prepend(HERE)
    assert main(["deskip", "tiny_resnet:build", "--weights", str(weights), "-o", str(pt2), "--epochs", "1",
                 "--limit", "128", "--history", str(tmp_path / "h.json")]) == 0
    said = capsys.readouterr().out
    assert "original" in said and "de-skipped (t = 0)" in said and "points" in said
    history = json.loads((tmp_path / "h.json").read_text())
    assert history["stages"][-1]["t"] == 0.0 and history["data"]["test"] == 128
    assert f"de-skipped (t = 0) {history['test_acc']:.2%}" in said  # the figure printed is the test split's
    assert main(["optimize", str(pt2), "-o", str(out)]) == 0
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "Add" not in ops and "Mul" not in ops and ops.count("Conv") == 5


def test_cli_train_default_recipe_ends_at_zero(tmp_path):
    hist = tmp_path / "h.json"
    assert main(["train", "models:CNN3", "-o", str(tmp_path / "m.pt2"), "--epochs", "2", "--limit", "64",
                 "--steps-per-t", "2", "--history", str(hist)]) == 0
    log = json.loads(hist.read_text())["stages"]
    assert len(log) == 2 and log[-1]["t"] == 0.0 and np.isfinite(log[-1]["val_loss"])


def test_batch_norm_frozen_at_zero_keeps_its_recalibrated_statistics():
    data = TensorDataset(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,)))
    model = models.CNN3(width=4)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    seen = []
    model.blend.register_forward_pre_hook(
        lambda m, a: seen.append((float(m.t), [n.running_mean.clone() for n in norms], norms[0].training)))
    train(model, data, data, make_schedule("paper", 3), 3, batch_size=16, steps_per_t=2, freeze_bn="at-zero")
    at_zero = [s for s in seen if s[0] == 0.0 and len(s[1]) and not s[2]]
    assert len(at_zero) >= 2  # the t = 0 steps ran with batch norm in eval mode ...
    assert all(torch.equal(a, b) for s in at_zero for a, b in zip(s[1], at_zero[0][1]))  # ... its statistics fixed
    assert any(s[2] for s in seen if s[0] > 0)  # before t = 0, batch statistics as usual


def test_batch_norm_frozen_from_the_start_or_below_a_t_keeps_the_statistics_it_had():
    data = TensorDataset(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,)))
    for mode, frozen_from in (("start", 1.0), ("below", 0.3)):
        model = models.CNN3(width=4)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        seen = []
        model.blend.register_forward_pre_hook(  # training steps only (evaluation runs without gradients)
            lambda m, a: seen.append((float(m.t), norms[0].training, norms[0].running_mean.clone()))
            if torch.is_grad_enabled() else None)
        train(model, data, data, make_schedule("cosine", 3, 0.5, "step", 2), 3, batch_size=16, steps_per_t=2,
              freeze_bn=mode, freeze_t=0.3)
        frozen = [s for s in seen if s[0] <= frozen_from]
        assert frozen and not any(s[1] for s in frozen)  # eval-mode batch norm from there on ...
        assert all(torch.equal(s[2], frozen[0][2]) for s in frozen)  # ... with the statistics it had, never re-estimated
        assert all(s[1] for s in seen if s[0] > frozen_from)  # batch statistics before


def test_distillation_reads_the_teacher_and_moves_the_loss():
    data = TensorDataset(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,)))
    teacher, calls = models.CNN3(width=4).eval(), []
    teacher.register_forward_hook(lambda m, a, out: calls.append(1))
    before = [p.clone() for p in teacher.parameters()]
    runs = {}
    for distill in (0.0, 0.5):
        torch.manual_seed(0)
        model = models.CNN3(width=4)
        runs[distill] = train(model, data, data, make_schedule("static", 1, 0.5), 1, batch_size=16,
                              teacher=teacher if distill else None, distill=distill)[-1].train_loss
    assert len(calls) == 2  # one teacher forward per step, with distillation only
    assert runs[0.0] != runs[0.5]
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))  # the teacher is not trained
    with pytest.raises(InputError, match="needs a teacher"):
        train(models.CNN3(width=4), data, data, make_schedule("static", 1, 0.5), 1, distill=0.5)


def test_cli_train_distills_from_a_pt2_teacher(tmp_path):
    teacher = tmp_path / "static.pt2"
    assert main(["train", "models:CNN3", "-o", str(teacher), "--epochs", "1", "--limit", "64", "--steps-per-t", "1",
                 "--schedule", "static", "--t0", "0.5"]) == 0
    hist = tmp_path / "h.json"
    assert main(["train", "models:CNN3", "-o", str(tmp_path / "m.pt2"), "--epochs", "2", "--limit", "64",
                 "--steps-per-t", "2", "--teacher", str(teacher), "--history", str(hist)]) == 0
    assert json.loads(hist.read_text())["stages"][-1]["t"] == 0.0
    assert main(["train", "models:CNN3", "-o", str(tmp_path / "n.pt2"), "--epochs", "1", "--limit", "64",
                 "--recipe", "no-teacher", "--distill", "0.5"]) == 2  # distillation without a teacher: a clear error


def test_self_distillation_copies_the_model_once_t_falls_to_its_t_and_distills_from_it():
    data = TensorDataset(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,)))
    torch.manual_seed(0)
    model = models.CNN3(width=4)
    calls = []
    model.blend.register_forward_pre_hook(lambda m, a: calls.append((m is model.blend, float(m.t)))
                                          if torch.is_grad_enabled() or m is not model.blend else None)
    train(model, data, data, make_schedule("cosine", 3, 0.9, "step", 2), 3, batch_size=16, steps_per_t=2,
          distill=0.5, self_teacher_t=0.5)
    student = [t for own, t in calls if own]
    teacher = [t for own, t in calls if not own]
    assert len(student) == 6
    assert teacher and len(set(teacher)) == 1 and teacher[0] <= 0.5  # one copy, its t frozen where it was taken
    assert len(teacher) == sum(t <= 0.5 for t in student)  # one teacher forward per step from then on


def test_the_default_recipe_trains_a_static_teacher_first_and_distills_from_it():
    from foldpass.homotopy import train_homotopy

    model = models.CNN3(width=4)
    seen = []
    model.blend.register_forward_pre_hook(  # copied with the model: the teacher's blend reports too
        lambda m, a: seen.append((m is model.blend, float(m.t), torch.is_grad_enabled())))
    result = train_homotopy(model, epochs=2, steps_per_t=2, limit=32)
    teacher_steps = [t for own, t, grad in seen if not own and grad]
    first = next(i for i, (own, _, grad) in enumerate(seen) if own and grad)  # the student's first step
    teacher_reads = [t for own, t, grad in seen[first:] if not own]
    assert teacher_steps and set(teacher_steps) == {0.5}  # trained first, at a static t = 0.5 ...
    assert len(teacher_reads) == 4 and set(teacher_reads) == {0.5}  # ... then read once per student step
    assert result.t == 0.0 and result.recipe.teacher_t == 0.5
