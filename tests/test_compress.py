"""foldpass compress (foldpass.compression): the loop that keeps a step only where it is within the
accuracy budget and faster, resume after an interruption, the test split read only at the end, the
t = 0 skip removal it rests on, and a colour image folder through the whole command."""

import json
import os

import onnx
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import foldpass
from foldpass.cli import main
from foldpass.compression import run as run_module
from foldpass.compression import steps as steps_module
from foldpass.compression.steps import Decline, plain_at_zero
from foldpass.data import DataSplits
from foldpass.homotopy import blend_residuals, set_t
from foldpass.homotopy.training import train

FAST = dict(timing=(1, 0.01), batches=(1, 4))  # latency measured once, briefly: these tests check the logic


@pytest.fixture
def steady(monkeypatch):
    """Every candidate 1.5x its current file: a test of the loop's logic must not hang on a 0.01 s timing
    round (one judged 'exact' slower than the export on CI's 2 cores, and the test failed)."""
    monkeypatch.setattr(run_module, "latency", lambda o, cur, cand, batches, *_: run_module.Latency(
        {b: 1.0 for b in batches}, {b: 1.5 for b in batches}, {b: 1.5 for b in batches}))


class TinyResNet(nn.Module):
    """One residual block with a 1 x 1 projection shortcut: what de-skip removes."""

    def __init__(self, classes: int = 4, channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1, self.bn1 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32)
        self.down = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.stem(x)
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        x = torch.relu(y + self.down(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def quadrants(n: int, seed: int, channels: int = 1) -> TensorDataset:
    """8 x 8 images, the class is the bright quadrant (learnable in a few steps)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.3 * torch.randn(n, channels, 8, 8, generator=g)
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, :, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 1.0
    return TensorDataset(x, y)


def splits(test: Dataset | None = None) -> DataSplits:
    return DataSplits(quadrants(256, 0), quadrants(64, 1), test if test is not None else quadrants(64, 2),
                      (1, 8, 8), 4, "quadrants")


@pytest.fixture(autouse=True)
def short_fine_tuning(monkeypatch):
    """A few steps of fine-tuning: these tests check the loop, not what fine-tuning reaches."""
    monkeypatch.setattr(steps_module, "MIN_STEPS", 8)


def test_fine_tuning_runs_at_least_min_steps_on_a_small_data_set(monkeypatch):
    monkeypatch.setattr(steps_module, "MIN_STEPS", 1000)
    job = steps_module.Job(splits(), None, None, "")  # 256 images: 4 steps of 64 per epoch
    assert steps_module.fine_tune_epochs(job) == 250
    job.epochs = 300
    assert steps_module.fine_tune_epochs(job) == 300
    job.epochs = 0
    assert steps_module.fine_tune_epochs(job) == 0


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = TinyResNet()
    data = splits()
    train(model, data.train, data.selection, None, 3, lr=3e-3)
    return model.eval()


# ----------------------------------------------------------------------------- t = 0 skip removal


def test_plain_at_zero_removes_the_skip_and_its_shortcut_branch_exactly(trained):
    blended = blend_residuals(trained, 0.5)
    set_t(blended, 0.0)
    plain = plain_at_zero(blended)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(plain(x), blended(x), rtol=0, atol=1e-6)
    before = {n.target for n in blended.graph.nodes if n.op == "call_module"}
    after = {n.target for n in plain.graph.nodes if n.op == "call_module"}
    # the blend and the projection shortcut (its conv and batch norm) leave; a mul by 1 / (1 - t0) = 2 comes in
    assert before - after == {"blend0", "down.0", "down.1"} and after <= before
    assert len(plain.graph.nodes) == len(blended.graph.nodes) - 3 + 1
    again = plain_at_zero(plain)  # nothing left to remove
    assert len(again.graph.nodes) == len(plain.graph.nodes)


def test_plain_at_zero_declines_a_blend_that_is_not_at_zero(trained):
    blended = blend_residuals(trained, 0.5)
    with pytest.raises(Decline, match="t = 0.5, not 0"):
        plain_at_zero(blended)


# ----------------------------------------------------------------------------- the loop


def _ruin(job, state, option):
    """A lossy step for the tests: 'ruin' sets the classifier to zero (chance accuracy), 'same' changes nothing."""
    model = steps_module.copy.deepcopy(state.model)
    if option == "ruin":
        with torch.no_grad():
            model.fc.weight.zero_()
            model.fc.bias.copy_(torch.tensor([5.0, 0, 0, 0]))
    out = steps_module.export(job, model, f"ruin-{option}")
    return steps_module.State(model, out.path, [*state.structure, {"step": "ruin", "replayable": False}],
                              out.verification, out.macs)


@pytest.fixture
def ruin_step(monkeypatch):
    monkeypatch.setitem(steps_module.STEPS, "ruin", (_ruin, ("ruin", "same")))
    return "ruin"


def test_a_step_over_budget_is_reverted_and_retried_milder(trained, ruin_step, steady):
    result = foldpass.compress(trained, splits(), steps=("exact", "ruin"), max_drop=1.0, epochs=0, **FAST)
    rows = [(r.step, r.option, r.status) for r in result.rows]
    assert rows[:2] == [("original", "", "original"), ("exact", "", "kept")]
    assert rows[2] == ("ruin", "ruin", "reverted") and "over budget" in result.rows[2].why
    assert rows[3] == ("ruin", "same", "kept")  # within the budget, and (steady) faster
    assert result.final.selection_acc >= result.original.selection_acc - 0.01
    assert result.verification and result.verification["max_abs_error"] <= result.verification["tolerance"]


def test_the_test_split_is_read_only_after_every_choice(trained, steady):
    events = []

    class Watched(Dataset):
        def __init__(self, data):
            self.data = data

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            events.append("test read")
            return self.data[i]

    result = foldpass.compress(trained, splits(Watched(quadrants(64, 2))), steps=("exact", "deskip", "int8"),
                               epochs=1, log=events.append, **FAST)
    assert "test read" in events
    first_read = events.index("test read")
    assert first_read > max(i for i, e in enumerate(events) if e.startswith(("exact", "deskip", "int8")))
    assert result.original.test_acc is not None and result.final.test_acc is not None


def test_resume_continues_after_the_last_finished_step(trained, ruin_step, monkeypatch, tmp_path, steady):
    ckpt = str(tmp_path / "ckpt")

    def interrupted(job, state, option):
        raise KeyboardInterrupt

    monkeypatch.setitem(steps_module.STEPS, "ruin", (interrupted, ("ruin",)))
    with pytest.raises(KeyboardInterrupt):
        foldpass.compress(trained, splits(), steps=("exact", "deskip", "ruin"), epochs=1, checkpoint=ckpt, **FAST)
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["done"] == ["exact", "deskip"]
    with pytest.raises(foldpass.InputError, match="--resume continues it"):
        foldpass.compress(trained, splits(), steps=("exact", "deskip", "ruin"), epochs=1, checkpoint=ckpt, **FAST)

    def never(*_a, **_k):
        raise AssertionError("a finished step ran again")

    monkeypatch.setitem(steps_module.STEPS, "exact", (never, (None,)))
    monkeypatch.setitem(steps_module.STEPS, "deskip", (never, (None,)))
    monkeypatch.setitem(steps_module.STEPS, "ruin", (_ruin, ("ruin",)))
    log = []
    result = foldpass.compress(trained, splits(), steps=("exact", "deskip", "ruin"), epochs=1, checkpoint=ckpt,
                               resume=True, log=log.append, **FAST)
    assert log[0] == "resumed after: exact, deskip"
    assert list(dict.fromkeys(r.step for r in result.rows)) == ["original", "exact", "deskip", "ruin"]
    # the resumed model is the de-skipped one, rebuilt: ruin is measured on it
    assert result.rows[-1].step == "ruin" and result.rows[-1].status == "reverted"
    with pytest.raises(foldpass.InputError, match="another model, data or settings"):
        foldpass.compress(trained, splits(), steps=("exact", "deskip", "ruin"), epochs=1, checkpoint=ckpt,
                          resume=True, max_drop=2.0, **FAST)


def test_a_pruned_model_is_rebuilt_from_its_checkpoint(trained, tmp_path):
    tp = pytest.importorskip("torch_pruning")
    model = steps_module.copy.deepcopy(trained)
    tp.pruner.MetaPruner(model, torch.zeros(2, 1, 8, 8), importance=tp.importance.GroupMagnitudeImportance(p=2),
                         pruning_ratio=0.5, ignored_layers=[model.fc]).step()
    assert model.conv1.out_channels == 8
    state = steps_module.State(model, str(tmp_path / "x.onnx"), [{"step": "prune", "ratio": 0.5}])
    run_module._save_checkpoint(str(tmp_path), "print", [run_module.Row("original", "", "original", "")], state, ["prune"])
    rows, loaded, done = run_module._load_checkpoint(str(tmp_path), "print", trained)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert loaded.model.conv1.out_channels == 8 and done == ["prune"]


class _Payload:
    """What a tampered checkpoint would carry: an object whose unpickling runs a command."""

    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("payload", ["code", "garbage", "wrong shapes"])
def test_a_tampered_checkpoint_is_one_line_and_runs_nothing(trained, tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    state = steps_module.State(steps_module.copy.deepcopy(trained), str(tmp_path / "x.onnx"), [])
    run_module._save_checkpoint(str(tmp_path), "print", [run_module.Row("original", "", "original", "")], state, ["exact"])
    weights = tmp_path / run_module.WEIGHTS_FILE
    if payload == "code":
        torch.save({"conv1.weight": _Payload()}, weights)
    elif payload == "garbage":
        weights.write_bytes(b"not a zip at all")
    else:
        torch.save({"conv1.weight": torch.zeros(3)}, weights)
    with pytest.raises(foldpass.InputError, match="not weights foldpass can read as data") as info:
        run_module._load_checkpoint(str(tmp_path), "print", trained)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "PWNED").exists()


# ----------------------------------------------------------------------------- the command

BUILDER = """
import torch
from torch import nn


def colour():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
"""


def test_a_colour_folder_network_goes_through_the_whole_command(tmp_path, monkeypatch, capsys, steady):
    from test_data import image_folder

    (tmp_path / "colour_models.py").write_text(BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    root = image_folder(tmp_path / "imgs", per_class=10, size=(16, 16))
    weights = tmp_path / "w.pt"
    import colour_models

    torch.save(colour_models.colour().state_dict(), weights)
    out, report = tmp_path / "fast.onnx", tmp_path / "r.json"
    assert main(["compress", "colour_models:colour", "--weights", str(weights), "--data", f"folder:{root}",
                 "-o", str(out), "--report", str(report), "--steps", "exact,prune,int8", "--epochs", "1",
                 "--batch", "1,4"]) == 0
    model = onnx.load(str(out))
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 16, 16]
    written = json.loads(report.read_text())
    assert [r["step"] for r in written["rows"]][:2] == ["original", "exact"]
    assert {r["step"] for r in written["rows"]} >= {"prune", "int8"}
    info = foldpass.info(str(out))
    assert json.loads(info.metadata["compress"])["kept"] == written["kept"]
    assert info.metadata["pipeline"].startswith("compress: exact")
    capsys.readouterr()
    monkeypatch.delenv("COLUMNS", raising=False)  # the width off a terminal (pytest-xdist's workers set 80)
    assert main(["info", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "foldpass compress (max drop 1 points): kept exact" in shown and "prune 0.75" in shown


@pytest.mark.parametrize("args, message", [
    (["--resume"], "--resume continues the run in a --checkpoint folder"),
    (["--steps", "exact,shrink"], "unknown step(s) shrink"),
    (["--batch", "0"], "--batch must be positive integers"),
])
def test_bad_options_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    out = tmp_path / "o.onnx"
    code = main(["compress", "torchvision.models:resnet18", "-o", str(out), "--data", "digits", "--limit", "8", *args])
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_a_drop_of_exactly_the_budget_is_within_it(monkeypatch, tmp_path):
    """0.98 - 0.97 is 0.010000000000000009 in floating point: 1.00 point must still be within --max-drop 1."""
    from foldpass.compression.measure import Latency

    def step(job, state, option):
        return steps_module.State(None, str(tmp_path / "c.onnx"), [], None)

    monkeypatch.setitem(steps_module.STEPS, "fake", (step, (None,)))
    monkeypatch.setattr(run_module, "onnx_accuracy", lambda *a, **k: 0.97)
    monkeypatch.setattr(run_module, "onnx_params", lambda *a, **k: 0)
    job = steps_module.Job(splits(), None, None, str(tmp_path), log=lambda text: None)
    job.latency = lambda cand, current: Latency({1: 0.1}, {1: 2.0}, {1: 2.0})
    rows = [run_module.Row("original", "", "original", "", 0.98, macs=1)]
    state = run_module._run_step(job, "fake", steps_module.State(None, "o.onnx"), rows, 0.98, 1.0, None)
    assert rows[-1].status == "kept" and state.onnx.endswith("c.onnx")


# ----------------------------------------------------------------------------- per-layer pruning


def _channels(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_per_layer_pruning_keeps_more_channels_where_the_selection_accuracy_is_most_sensitive(
        trained, tmp_path, monkeypatch):
    job = steps_module.Job(splits(), trained, torch.zeros(2, 1, 8, 8), str(tmp_path), epochs=0, log=lambda _: None)
    state = steps_module.State(trained, "", [])
    uniform = steps_module.prune(job, state, 0.5)
    measured = {}

    def sensitive_block(job, model, ratio, prune_with):  # the block's output group: conv2 and down.0, added
        measured.update(real(job, model, ratio, prune_with))
        return {root: (9.0 if root == "down.0" else 0.0) for root in measured}

    real = steps_module.sensitivities
    monkeypatch.setattr(steps_module, "sensitivities", sensitive_block)
    per_layer = steps_module.prune(job, state, steps_module.PerLayer(0.5))
    assert set(measured) == {"stem.0", "conv1", "down.0"}  # one drop per group of coupled layers
    assert _channels(trained)["conv2"] == 32  # the original is not touched
    before, spared, plain = _channels(trained), _channels(per_layer.model), _channels(uniform.model)
    for coupled in ("conv2", "down.0"):
        assert (plain[coupled], spared[coupled], before[coupled]) == (16, 24, 32)  # at 0.25, not 0.5
    assert {n: spared[n] for n in ("stem.0", "conv1")} == {n: plain[n] for n in ("stem.0", "conv1")}
    assert per_layer.structure == [{"step": "prune", "ratio": 0.5, "per_layer": True}]
    assert str(steps_module.PerLayer(0.5)) == "0.5 per layer"


# ----------------------------------------------------------------------------- torchrun


def _compress_rank(rank, world, rdv, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world)
    try:
        steps_module.MIN_STEPS = 8
        speed = 1.5 if rank == 0 else 0.5  # rank 1's own timings would revert every step: rank 0's must decide
        run_module.latency = lambda o, cur, cand, batches, *_: run_module.Latency(
            {b: 1.0 for b in batches}, {b: speed for b in batches}, {b: speed for b in batches})
        torch.manual_seed(0)  # every rank loads the same model, as under torchrun
        result = foldpass.compress(TinyResNet(), splits(), steps=("exact", "prune"), max_drop=100.0, epochs=1,
                                   batches=(1, 4), timing=(1, 0.01), checkpoint=os.path.join(out_dir, f"ck{rank}"))
        state = {k: v.tolist() for k, v in result.model.state_dict().items()}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"rank": result.rank, "kept": result.kept, "statuses": [r.status for r in result.rows],
                       "accuracies": [r.selection_acc for r in result.rows], "state": state}, f)
    finally:
        dist.destroy_process_group()


def test_under_torchrun_every_rank_follows_rank_0s_measurements_and_only_rank_0_checkpoints(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_compress_rank, args=(2, str(tmp_path / "rdv"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["kept"] == r1["kept"] == ["exact", "prune"]  # rank 1 alone would have reverted pruning
    assert r0["statuses"] == r1["statuses"] and r0["accuracies"] == r1["accuracies"]
    assert r0["state"] == r1["state"]  # fine-tuned together (DistributedDataParallel)
    assert (tmp_path / "ck0" / "state.json").is_file() and not (tmp_path / "ck1").exists()


def test_per_layer_pruning_declines_where_no_group_is_more_sensitive_than_the_median(trained, tmp_path, monkeypatch):
    job = steps_module.Job(splits(), trained, torch.zeros(2, 1, 8, 8), str(tmp_path), epochs=0, log=lambda _: None)
    monkeypatch.setattr(steps_module, "sensitivities", lambda job, model, ratio, prune_with: {"a": 0.5, "b": 0.5})
    with pytest.raises(Decline, match="no group is more sensitive than the median at 0.5") as declined:
        steps_module.prune(job, steps_module.State(trained, "", []), steps_module.PerLayer(0.5))
    assert not declined.value.final  # the next, milder ratio is still tried
