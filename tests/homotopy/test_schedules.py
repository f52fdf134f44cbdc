"""t schedules: the paper's lists, the decays, the accuracy threshold; all end at exactly 0."""

import math

import pytest
import torch

from foldpass.errors import InputError
from foldpass.homotopy.schedules import PAPER, PAPER_T05, SCHEDULES, Schedule, make_schedule


def test_paper_lists_are_the_papers():
    assert make_schedule("paper", 10).preview() == list(PAPER)
    assert make_schedule("paper-t05", 10).preview() == list(PAPER_T05)
    assert make_schedule("paper", 12).preview() == [*PAPER, 0.0, 0.0]
    assert make_schedule("paper", 4).preview() == [0.9, 0.7, 0.5, 0.0]  # cut short: the last epoch is 0


@pytest.mark.parametrize("kind", [k for k in SCHEDULES if k != "static"])
@pytest.mark.parametrize("epochs", [1, 2, 7])
def test_every_schedule_ends_at_exactly_zero_and_never_rises_above_t0(kind, epochs):
    values = make_schedule(kind, epochs, t0=0.6).preview()
    assert values[-1] == 0.0 and len(values) == epochs
    assert all(0.0 <= v <= 0.9 for v in values)


def test_decay_formulas():
    assert make_schedule("linear", 5, t0=0.8).preview() == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.0])
    cos = make_schedule("cosine", 5, t0=1.0).preview()
    assert cos == pytest.approx([1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2, 0.0])
    assert make_schedule("exp", 4, t0=0.5, rate=0.1).preview() == pytest.approx([0.5, 0.05, 0.005, 0.0])
    assert make_schedule("static", 3, t0=0.5).preview() == [0.5, 0.5, 0.5]


def test_per_step_counts_steps():
    s = make_schedule("linear", 2, t0=1.0, per="step", steps_per_epoch=3)
    assert s.total == 6 and s.value(0) == 1.0 and s.value(5) == 0.0 and s.value(99) == 0.0


def test_threshold_steps_down_when_accuracy_is_reached():
    s = make_schedule("threshold", 10, t0=0.8, values=(0.8, 0.4, 0.0), thresholds=(0.5, 0.9))
    assert s.value(0) == 0.8
    s.observe(0.4)
    assert s.value(1) == 0.8
    s.observe(0.6)
    assert s.value(2) == 0.4
    s.observe(0.95)
    assert s.value(3) == 0.0 and s.value(9) == 0.0


def test_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    s = make_schedule("threshold", 10, t0=0.8)
    s.observe(0.85)
    torch.save({"schedule": s.state_dict()}, tmp_path / "ck.pt")
    restored = make_schedule("paper", 3)
    restored.load_state_dict(torch.load(tmp_path / "ck.pt", weights_only=True)["schedule"])
    assert restored == s and restored.value(4) == s.value(4) == 0.4


def test_bad_schedules_are_refused():
    with pytest.raises(InputError, match="valid schedules"):
        Schedule("warp", 10)
    with pytest.raises(InputError):
        make_schedule("linear", 0)
    with pytest.raises(InputError):
        make_schedule("linear", 5, t0=1.5)
