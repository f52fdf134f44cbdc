"""Homotopy training: a short run lowers the loss and ends at t = 0; checkpoints resume; the .pt2
goes straight into `foldpass optimize`; under DDP every rank trains with the same t."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import TensorDataset

import models
from foldpass.cli import main
from foldpass.data import load_data
from foldpass.homotopy import get_t
from foldpass.homotopy.schedules import make_schedule
from foldpass.homotopy.training import train


@pytest.fixture(scope="module")
def digits():
    splits = load_data("digits", limit=256)
    return splits.train, splits.selection


def test_short_run_lowers_the_loss_and_ends_at_t0(digits):
    torch.manual_seed(0)
    model = models.CNN3(width=8)
    seen = []
    history = train(model, *digits, make_schedule("paper", 4), 4, lr=3e-3, log=seen.append)
    assert [h.t for h in history] == [0.9, 0.7, 0.5, 0.0] and len(seen) == 4
    assert history[-1].train_loss < history[0].train_loss
    assert get_t(model) == 0.0 and not model.training


def test_checkpoint_resumes_where_it_stopped(digits, tmp_path):
    ck = str(tmp_path / "ck.pt")
    torch.manual_seed(0)
    model = models.CNN3(width=4)
    train(model, *digits, make_schedule("threshold", 3, values=(0.6, 0.3, 0.0), thresholds=(0.0, 2.0)), 1, checkpoint=ck)
    resumed_schedule = make_schedule("threshold", 3, t0=0.6)
    history = train(models.CNN3(width=4), *digits, resumed_schedule, 3, resume=ck)
    assert [h.epoch for h in history] == [1, 2, 3]
    assert history[1].t == 0.3  # the restored schedule had already stepped down once
    assert resumed_schedule.thresholds == (0.0, 2.0)


def test_cli_train_writes_a_pt2_that_optimize_takes_as_it_is(tmp_path, capsys):
    pt2, onnx_out, hist = tmp_path / "m.pt2", tmp_path / "m.onnx", tmp_path / "h.json"
    assert main(["train", "models:CNN3", "-o", str(pt2), "--epochs", "2", "--limit", "128", "--recipe", "paper",
                 "--history", str(hist)]) == 0
    assert [e["t"] for e in json.loads(hist.read_text())["stages"]] == [0.9, 0.0]
    assert main(["optimize", str(pt2), "-o", str(onnx_out), "--report", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert "mul" not in report["after"]["ops"] and "add" not in report["after"]["ops"]


def test_cli_train_refuses_a_model_without_blends_unless_converted(tmp_path, capsys):
    out = str(tmp_path / "m.pt2")
    assert main(["train", "torchvision.models:resnet18", "-o", out, "--epochs", "1", "--input-shape", "1,3,28,28"]) == 2
    assert "--convert" in capsys.readouterr().err and not os.path.exists(out)


def _ddp_worker(rank, world, rdv, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
        model = models.CNN3(width=4)
        seen = []
        model.blend.register_forward_pre_hook(lambda m, args: seen.append(float(m.t)) if m.training else None)
        schedule = make_schedule("linear", 2, t0=0.5 + 0.1 * rank, per="step", steps_per_epoch=2)  # rank-skewed
        data = TensorDataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
        train(model, data, data, schedule, 2, batch_size=16)
        state = {k: v.tolist() for k, v in model.state_dict().items()}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"t": seen, "state": state}, f)
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_train_with_the_same_t_and_weights(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "rdv"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(r0["t"]) == 4 and r0["t"] == r1["t"]  # 2 steps per rank per epoch, 2 epochs
    assert r0["t"][0] == 0.5  # rank 0's schedule wins
    assert r0["state"] == r1["state"]
