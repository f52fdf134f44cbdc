import copy

import pytest
import torch
from torch import nn

import foldpass
import models
from foldpass import InputError, PassError, PassResult, trace
from foldpass.passes import PIPELINES, run_pipeline


def _gm():
    return trace(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval(), (torch.randn(2, 1, 28, 28),))


def test_pipelines_are_named_in_one_dict():
    assert set(PIPELINES) >= {"default", "skips-only", "none"}


def test_unknown_pipeline_lists_the_valid_names():
    with pytest.raises(InputError, match="valid pipelines: default, skips-only, none"):
        run_pipeline(_gm(), "fast")


def test_a_failing_pass_is_named():
    def broken_pass(gm):
        raise RuntimeError("boom")

    with pytest.raises(PassError, match="pass 'broken_pass' failed: RuntimeError: boom"):
        run_pipeline(_gm(), (broken_pass,))


def test_a_pass_that_breaks_the_graph_is_caught_by_lint():
    def dangling_pass(gm):
        out = next(n for n in gm.graph.nodes if n.op == "output")
        gm.graph.erase_node(out)  # a graph without output fails lint
        return PassResult(gm, True, [])

    with pytest.raises(PassError, match="dangling_pass"):
        run_pipeline(_gm(), (dangling_pass,))


def test_fixed_point_stops_when_nothing_changes():
    calls = []

    def changes_twice(gm):
        calls.append(1)
        return PassResult(gm, len(calls) <= 2, [])

    result = run_pipeline(_gm(), (changes_twice,))
    assert result.rounds == 3 and len(calls) == 3


def test_none_pipeline_changes_nothing():
    model = models.randomize_batchnorm(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
    result = foldpass.optimize(model, torch.randn(1, 1, 28, 28), pipeline="none")
    assert result.report.before.ops == result.report.after.ops


def test_the_loop_says_when_it_stopped_at_its_round_limit_and_times_each_pass():
    model = models.CNN3(width=4, t=0.0).eval()
    gm = foldpass.trace(model, (torch.randn(1, 1, 28, 28),))
    cut = run_pipeline(copy.deepcopy(gm), "default", max_rounds=1)
    assert not cut.fixed_point and cut.rounds == 1  # round 1 changed the graph; no round was left to confirm it
    done = run_pipeline(gm, "default")
    assert done.fixed_point and done.rounds >= 2
    assert set(done.changed_by) <= set(done.seconds) and "zero_skip_elimination" in done.changed_by
    assert all(seconds >= 0 for seconds in done.seconds.values())
