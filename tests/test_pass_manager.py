import copy

import pytest
import torch
from torch import nn

import foldpass
import models
from foldpass import InputError, PassError, PassResult, trace
from foldpass.passes import PIPELINES, PassContext, constant_propagation, linear_region_detection, run_pipeline


def _gm():
    return trace(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval(), (torch.randn(2, 1, 28, 28),))


def test_pipelines_are_named_in_one_dict():
    assert set(PIPELINES) >= {"default", "skips-only", "none"}


def test_unknown_pipeline_lists_the_valid_names():
    with pytest.raises(InputError, match="valid pipelines: default, skips-only, none"):
        run_pipeline(_gm(), "fast")


def test_a_failing_pass_is_named():
    def broken_pass(gm, ctx):
        raise RuntimeError("boom")

    with pytest.raises(PassError, match="pass 'broken_pass' failed: RuntimeError: boom"):
        run_pipeline(_gm(), (broken_pass,))


def test_a_pass_that_breaks_the_graph_is_caught_by_lint():
    def dangling_pass(gm, ctx):
        out = next(n for n in gm.graph.nodes if n.op == "output")
        gm.graph.erase_node(out)  # a graph without output fails lint
        return PassResult(gm, True, [])

    with pytest.raises(PassError, match="dangling_pass"):
        run_pipeline(_gm(), (dangling_pass,))


def test_fixed_point_stops_when_nothing_changes():
    calls = []

    def changes_twice(gm, ctx):
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


def test_shapes_are_an_analysis_cached_until_the_graph_changes(monkeypatch):
    from foldpass import shapes as shapes_module

    gm = trace(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval(), (torch.randn(2, 1, 12, 12),))
    runs = []
    real = shapes_module._infer
    monkeypatch.setattr(shapes_module, "_infer", lambda g, previous: runs.append(g) or real(g, previous))
    shapes_module._CACHE.pop(gm, None)  # tracing already asked for the shapes
    first = shapes_module.infer_shapes(gm)
    first.clear()  # a caller's copy: clearing it leaves the cache whole
    again = shapes_module.infer_shapes(gm)
    assert len(runs) == 1 and again
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0][0]
    assert again[out].sample_shape == (2, 8, 8)
    # a rewrite (the last conv now reads the first conv, not the ReLU) is seen: the shapes run again
    relu = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.relu.default)
    out.replace_input_with(relu, relu.args[0])
    assert shapes_module.infer_shapes(gm)[out].sample_shape == (2, 8, 8) and len(runs) == 2
    # a constant replaced by one of another shape under the same name is seen too
    for arg, shape in ((out.args[1], (3, 4, 3, 3)), (out.args[2], (3,))):
        owner, _, name = arg.target.rpartition(".")
        setattr(gm.get_submodule(owner), name, nn.Parameter(torch.randn(shape)))
    assert shapes_module.infer_shapes(gm)[out].sample_shape == (3, 8, 8) and len(runs) == 3


def test_shapes_after_a_rewrite_run_only_the_nodes_it_reached_and_equal_a_fresh_run(monkeypatch):
    from foldpass import shapes as shapes_module

    gm = trace(models.CNN3(width=4, t=0.0).eval(), (torch.randn(2, 1, 28, 28),))
    shapes_module.infer_shapes(gm)
    ran = []
    real = torch.fx.Interpreter.run_node
    monkeypatch.setattr(torch.fx.Interpreter, "run_node", lambda self, n: ran.append(n) or real(self, n))
    relu = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.relu.default)
    with gm.graph.inserting_after(relu):  # relu(x) -> clone(relu(x)): one new node, its users re-read it
        clone = gm.graph.call_function(torch.ops.aten.clone.default, (relu,))
    relu.replace_all_uses_with(clone, delete_user_cb=lambda u: u is not clone)
    gm.recompile()
    again = shapes_module.infer_shapes(gm)
    computed = {n for n in ran if n.op == "call_function"}
    assert computed == {clone, *clone.users}  # at both batch sizes; nothing before it, nothing after its readers
    assert again == shapes_module._infer(gm, None)[0]  # the same as running the whole graph afresh


def test_an_analysis_is_computed_once_until_the_graph_changes():
    gm = trace(models.CNN3(width=4, t=0.0).eval(), (torch.randn(2, 1, 28, 28),))
    ctx = PassContext(check=True)
    first = ctx.constants(gm)
    assert ctx.constants(gm) is first and ctx.computed["constants"] == 1  # served from the cache
    ctx.regions(gm), ctx.regions(gm)
    assert ctx.computed == {"constants": 1, "regions": 1, "shapes": 1}  # regions read the cached constants
    run_pipeline(gm, (constant_propagation,), context=ctx)  # `1 - t` becomes a constant: the graph changed
    assert ctx.constants(gm) is not first and ctx.computed["constants"] >= 2


def test_a_pass_that_changes_the_graph_without_saying_so_is_caught_by_a_checking_context():
    def silent_pass(gm, ctx):
        ctx.constants(gm)
        gm.graph.eliminate_dead_code()
        relu = next(n for n in gm.graph.nodes if n.op == "call_function")
        with gm.graph.inserting_after(relu):
            neg = gm.graph.call_function(torch.ops.aten.neg.default, (relu,))
        relu.replace_all_uses_with(neg, delete_user_cb=lambda u: u is not neg)
        return PassResult(gm, False, [])  # it did change the graph

    with pytest.raises(PassError, match="silent_pass.*changed the graph without reporting it"):
        run_pipeline(_gm(), (silent_pass, silent_pass), context=PassContext(check=True))


@pytest.mark.parametrize("net", ["cnn3_blend", "resnet18", "repnet"])
def test_no_pass_of_the_default_pipeline_is_served_a_stale_analysis(net):
    from multibranch import RepNet

    model = {"cnn3_blend": lambda: models.CNN3(width=4, t=0.0), "resnet18": lambda: models.resnet18(width=4),
             "repnet": lambda: RepNet(width=8)}[net]()
    gm = trace(models.randomize_batchnorm(model).eval(), (torch.randn(2, 1, 28, 28),))
    result = run_pipeline(gm, "default", context=PassContext(check=True))
    assert result.notes and result.fixed_point


def test_region_detection_is_an_analysis_reported_after_the_passes_not_a_pass_in_the_loop():
    assert linear_region_detection not in PIPELINES["default"]
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU()).eval()
    result = run_pipeline(trace(model, (torch.randn(2, 1, 28, 28),)), "default")
    assert [n.action for n in result.notes if n.pass_name == "linear_region_detection"] == ["info", "info"]
    ctx = result.context
    computed = ctx.computed["regions"]
    linear_region_detection(result.module, ctx)  # the last round's regions, from the cache
    assert ctx.computed["regions"] == computed
    skips = run_pipeline(trace(model, (torch.randn(2, 1, 28, 28),)), "skips-only")
    assert not any(n.pass_name == "linear_region_detection" for n in skips.notes)


def test_pass_options_come_through_the_context():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.Linear(64, 10)).eval()
    capped = run_pipeline(trace(model, (torch.randn(2, 1, 28, 28),)), "default", max_fold_bytes=1000)
    assert capped.context.max_fold_bytes == 1000
    assert any("max_fold_bytes" in n.message for n in capped.notes)
    folded = run_pipeline(trace(model, (torch.randn(2, 1, 28, 28),)), "default")
    assert not any("max_fold_bytes" in n.message for n in folded.notes)
