"""trainable_batchnorm / recalibrate_batchnorm: batch norm that trains again inside the IR."""

import copy
from collections import Counter

import torch
from torch import nn
from torch.utils.data import TensorDataset

from foldpass.decomposition.batchnorm_training import recalibrate_batchnorm, trainable_batchnorm
from foldpass.graph import attr, compute_nodes, op_name
from foldpass.tracing import trace

BN_OP = torch.ops.aten._native_batch_norm_legit_no_training.default


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3),
                        nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.BatchNorm1d(5))
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    return net.eval()


def _ops(gm) -> Counter:
    return Counter(op_name(n) for n in compute_nodes(gm))  # getitem included: the swap back restores it too


def test_swap_and_back_changes_nothing_in_eval_mode():
    net, x = _net(), torch.randn(4, 3, 6, 6)
    gm = trace(net, (x,))
    before, want = _ops(gm), gm(x)
    with trainable_batchnorm(gm) as modules:
        assert len(modules) == 3
        assert sum(1 for n in gm.graph.nodes if n.target is BN_OP) == 0
        torch.testing.assert_close(gm.eval()(x), want, rtol=1e-6, atol=1e-6)
    assert _ops(gm) == before
    assert sum(1 for n in gm.graph.nodes if n.target is BN_OP) == 3
    torch.testing.assert_close(gm(x), want, rtol=1e-6, atol=1e-6)


def test_training_mode_matches_torch_batchnorm_and_updates_the_ir():
    net, x = _net(), torch.randn(8, 3, 6, 6)
    gm = trace(net, (x,))
    reference = copy.deepcopy(net).train()
    with trainable_batchnorm(gm):
        gm.train()
        out = gm(x)
        out.sum().backward()
        gm.eval()
    torch.testing.assert_close(out, reference(x), rtol=1e-5, atol=1e-5)
    grads = [p.grad for p in gm.parameters() if p.grad is not None]
    assert len(grads) >= 3 * 2  # every batch norm's weight and bias is trainable
    # the running statistics moved as torch's did, and the inference graph reads the moved ones
    net_after = reference.eval()
    torch.testing.assert_close(gm(x), net_after(x), rtol=1e-5, atol=1e-5)


def test_recalibration_estimates_the_statistics_of_the_data():
    net = _net()
    x = torch.randn(64, 3, 6, 6) * 3 + 1
    gm = trace(net, (x[:2],))
    with torch.no_grad():
        off = gm(x).mean(0).abs().max()
    assert recalibrate_batchnorm(gm, TensorDataset(x, torch.zeros(64)), batch_size=64) == 3
    with torch.no_grad():
        first = net[0](x)  # the first batch norm's input does not depend on any other batch norm
    bn = next(n for n in gm.graph.nodes if n.target is BN_OP)
    mean = attr(gm, bn.args[3].target)
    var = attr(gm, bn.args[4].target)
    torch.testing.assert_close(mean, first.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var, first.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        out = gm(x)
    assert off > 0.1 and out.mean(0).abs().max() < 1e-3  # the last batch norm (bias 0) now centres its outputs


def test_a_graph_without_batchnorm_is_left_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    x = torch.randn(2, 3, 5, 5)
    gm = trace(net, (x,))
    code, want = gm.code, gm(x)
    assert recalibrate_batchnorm(gm, TensorDataset(x, torch.zeros(2))) == 0
    assert gm.code == code
    assert torch.equal(gm(x), want)
