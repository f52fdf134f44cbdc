"""compress's depth step: residual blocks dropped, each replaced by its shortcut (blocks.drop_blocks),
the least sensitive first, and the checkpoint that rebuilds the shallower network."""

import copy

import pytest
import torch
from torch import nn

from foldpass.compression import run as run_module
from foldpass.compression import steps as steps_module
from foldpass.compression.blocks import drop_blocks, residual_blocks, with_blends
from foldpass.compression.steps import Decline, Depth
from foldpass.homotopy import blend_residuals
from foldpass.homotopy.training import train
from test_compress import splits


class TwoBlocks(nn.Module):
    """A stem, then two identity residual blocks relu(bn(conv(x)) + x), then the classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv_a, self.bn_a = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv_b, self.bn_b = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def head(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.bn_a(self.conv_a(x)) + x)
        x = torch.relu(self.bn_b(self.conv_b(x)) + x)
        return self.head(x)


@pytest.fixture(autouse=True)
def short_fine_tuning(monkeypatch):
    monkeypatch.setattr(steps_module, "MIN_STEPS", 8)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = TwoBlocks()
    data = splits()
    train(model, data.train, data.selection, None, 2, lr=3e-3)
    return model.eval()


def _job(tmp_path, model):
    return steps_module.Job(splits(), model, torch.zeros(2, 1, 8, 8), str(tmp_path), epochs=0, log=lambda _: None)


def test_a_dropped_block_is_its_shortcut_and_only_its_branch_leaves(trained):
    blended = blend_residuals(trained, 0.5)
    assert residual_blocks(blended) == ["blend0", "blend1"]
    dropped = drop_blocks(copy.deepcopy(blended), ["blend0"])
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():  # the first block computes relu(stem(x)) = stem(x): the shortcut alone
        s = trained.stem(x)
        want = trained.head(torch.relu(trained.bn_b(trained.conv_b(s)) + s))
        assert torch.allclose(dropped(x), want, rtol=0, atol=1e-5)
    before = {n.target for n in blended.graph.nodes if n.op == "call_module"}
    after = {n.target for n in dropped.graph.nodes if n.op == "call_module"}
    assert before - after == {"blend0", "conv_a", "bn_a"} and after <= before
    assert len(dropped.graph.nodes) == len(blended.graph.nodes) - 3
    assert residual_blocks(dropped) == ["blend1"]
    again = drop_blocks(dropped, [])  # nothing named: nothing changes
    assert len(again.graph.nodes) == len(dropped.graph.nodes)


def test_a_block_that_is_not_there_is_a_decline_and_a_plain_network_has_none(trained):
    with pytest.raises(Decline, match="no residual block named blend7"):
        drop_blocks(blend_residuals(trained, 0.5), ["blend7"])
    plain = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    with pytest.raises(Exception, match="no residual add"):
        with_blends(plain)


def test_depth_drops_the_least_sensitive_blocks_and_its_checkpoint_rebuilds_them(trained, tmp_path, monkeypatch):
    measured = {}

    def scripted(job, model):  # the real measurement, then blend0 made the sensitive one
        measured.update(real(job, model))
        return {"blend0": 5.0, "blend1": 0.0}

    real = steps_module.block_sensitivities
    monkeypatch.setattr(steps_module, "block_sensitivities", scripted)
    job = _job(tmp_path, trained)
    state = steps_module.depth(job, steps_module.State(trained, "", []), Depth(0.5))
    assert set(measured) == {"blend0", "blend1"} and all(isinstance(v, float) for v in measured.values())
    assert state.structure == [{"step": "depth", "blocks": ["blend1"]}]
    assert residual_blocks(state.model) == ["blend0"]  # the sensitive block stays
    assert state.verification and state.verification["max_abs_error"] <= state.verification["tolerance"]
    assert isinstance(trained.conv_b, nn.Conv2d)  # the original is not touched
    run_module._save_checkpoint(str(tmp_path), "print", [run_module.Row("original", "", "original", "")], state,
                                ["exact", "depth"])
    _, loaded, done = run_module._load_checkpoint(str(tmp_path), "print", trained)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), state.model(x))
    assert done == ["exact", "depth"] and residual_blocks(loaded.model) == ["blend0"]


def test_depth_declines_where_its_share_is_no_block(trained, tmp_path, monkeypatch):
    monkeypatch.setattr(steps_module, "block_sensitivities", lambda job, model: {"blend0": 0.0, "blend1": 0.0})
    with pytest.raises(Decline, match="0.25 of 2 residual blocks is none to drop"):
        steps_module.depth(_job(tmp_path, trained), steps_module.State(trained, "", []), Depth(0.25))
    assert str(Depth(0.25)) == "0.25 of the blocks"


def test_the_command_lists_every_step_in_the_library_order():
    from foldpass import defaults

    assert defaults.COMPRESS_STEPS == tuple(steps_module.STEPS)  # --steps' default: all of them
