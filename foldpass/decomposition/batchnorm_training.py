"""Batch norm that trains again inside the IR: what a lossy pass needs before it fine-tunes.

The IR holds batch norm in its inference form, `_native_batch_norm_legit_no_training(x, w, b, mean,
var, momentum, eps)`: y = (x - mean) / sqrt(var + eps) * w + b with frozen statistics. After a
lossy rewrite (low-rank decomposition) the activations feeding each batch norm change scale, and
the frozen statistics then mis-normalize layer after layer.

`trainable_batchnorm(gm)` swaps every such node for an `nn.BatchNorm2d` / `1d` call that shares
its tensors: `gm.train()` normalizes by batch statistics and updates the running ones in place,
`gm.eval()` uses them; on exit the inference nodes come back, reading the updated tensors.
`recalibrate_batchnorm(gm, data)` re-estimates every running mean and variance on data (the
cumulative average over batches; AdaBN, Li et al. 2016): no weight changes, no labels needed.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator

import torch
import torch.fx as fx
from torch import nn
from torch.utils.data import Dataset

from ..graph import attr

_BN = torch.ops.aten._native_batch_norm_legit_no_training.default
_PREFIX = "_foldpass_trainable_bn_"


class _BatchNorm(nn.modules.batchnorm._BatchNorm):
    """nn.BatchNorm{1,2,3}d in one: the IR's batch norm does not say which it was."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"batch norm expects at least 2 dims (N, C, ...), got {input.dim()}")


def _as_parameter(gm: fx.GraphModule, node: fx.Node) -> nn.Parameter:
    """The tensor a get_attr node reads, as an nn.Parameter sharing its storage (registered in gm)."""
    value = attr(gm, node.target)
    if isinstance(value, nn.Parameter):
        return value
    owner, _, name = node.target.rpartition(".")
    module = gm.get_submodule(owner) if owner else gm
    param = nn.Parameter(value)  # same storage: optimizer steps land in the original tensor
    delattr(module, name)
    module.register_parameter(name, param)
    return param


@contextlib.contextmanager
def trainable_batchnorm(gm: fx.GraphModule, momentum: float | None = 0.1) -> Iterator[list[_BatchNorm]]:
    """Swaps gm's inference batch norms for BatchNorm modules sharing their tensors; yields the modules."""
    swapped = []  # (module name, call_module node, the batch norm's original args)
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not _BN:
            continue
        x, w, b, mean, var, _, eps = node.args
        if not all(isinstance(a, fx.Node) and a.op == "get_attr" for a in (w, b, mean, var)):
            continue  # a batch norm without learnable tensors stays frozen
        module = _BatchNorm(attr(gm, mean.target).numel(), eps=eps, momentum=momentum)
        module.weight, module.bias = _as_parameter(gm, w), _as_parameter(gm, b)
        # detach(): the same storage, so the running statistics are updated where the IR reads them
        module.running_mean, module.running_var = attr(gm, mean.target).detach(), attr(gm, var.target).detach()
        name = f"{_PREFIX}{len(swapped)}"
        gm.add_submodule(name, module)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(name, (x,))
        outputs = [u for u in node.users if u.target is operator.getitem and u.args[1] == 0]
        for out in outputs:
            out.replace_all_uses_with(call)
        for user in list(node.users):
            gm.graph.erase_node(user)
        swapped.append((name, call, node.args))
        gm.graph.erase_node(node)
    gm.recompile()
    try:
        yield [gm.get_submodule(name) for name, _, _ in swapped]
    finally:
        for name, call, args in swapped:
            with gm.graph.inserting_before(call):
                bn = gm.graph.call_function(_BN, args)
                out = gm.graph.call_function(operator.getitem, (bn, 0))
            call.replace_all_uses_with(out)
            gm.graph.erase_node(call)
            delattr(gm, name)
        gm.graph.lint()
        gm.recompile()


def recalibrate_batchnorm(gm: fx.GraphModule, data: Dataset, batch_size: int = 128, max_batches: int = 32) -> int:
    """Re-estimates every batch norm's running statistics on `data` (inputs only); returns how many."""
    from ..homotopy.training import recalibrate_batchnorm as recalibrate

    with trainable_batchnorm(gm):
        count = recalibrate(gm, data, batch_size, max_batches)
    gm.eval()
    return count
