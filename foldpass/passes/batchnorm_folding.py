"""Batch-norm folding: BN(conv(x)) -> conv'(x), BN(linear(x)) -> linear'(x).

    W' = W * gamma / sqrt(var + eps)                (per output channel)
    b' = (b - mean) * gamma / sqrt(var + eps) + beta

The arithmetic is torch.nn.utils.fusion's (fuse_conv_bn_weights, on every op's weight in the
[out, in, *k] layout of rules/linear_op.py), run in float64 and cast back to the weights' dtype. Folds only an eval-mode BN
(`_native_batch_norm_legit_no_training`) whose input is a conv / addmm / mm read by nothing else.

    BN(x @ W)  ->  x @ W' + b'                       (matmul with a constant 2-D weight)
    BN(x) -> its consumers, forward                 a BN that no conv or linear produces folds into
        x @ W  ->  x @ (s * W) + t @ W               what reads it: linears and unpadded groups-1 convs,
        conv(x, K)  ->  conv(x, K * s) + sum K * t   through reshapes, permutes and per-channel averages
        s = gamma / sigma, t = beta - mean * s       (NextViT's pre-norms; rules/batchnorm_forward.py)
    BN1d over flattened tokens (LeViT's LinearNorm):
    BN(reshape(x @ W^T, [B * N, C]))  ->  reshape(x @ W'^T + b', [B * N, C])
    a 2-D batch norm normalizes the last dim; a reshape that keeps the last dim keeps every
    entry's channel, so the BN reaches the linear through any chain of such reshapes.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..graph import VIEW_OPS, constant_value, drop_unused_attrs, shape_of
from ..rules.batchnorm_forward import channel_paths, fold_forward, weight_of
from ..rules.linear_op import LinearOp
from ..provenance import joined, label, module_path, module_type, record
from .base import Notes, PassResult
from .context import PassContext

NAME = "batchnorm_folding"
aten = torch.ops.aten
_BN = aten._native_batch_norm_legit_no_training.default


def _f64(t):
    return None if t is None else t.detach().to(torch.float64)


def _bn_output(bn: fx.Node) -> fx.Node | None:
    """The getitem(bn, 0) node, if the BN's statistics outputs are unused."""
    outs = [u for u in bn.users if u.target is operator.getitem]
    if len(outs) != len(bn.users) or any(u.args[1] != 0 for u in outs if u.users) or not outs:
        return None
    live = [u for u in outs if u.args[1] == 0]
    return live[0] if len(live) == 1 else None


_LINEAR = {aten.addmm.default, aten.mm.default, aten.matmul.default}


def _last_dim(node: fx.Node) -> int | None:
    shape = shape_of(node)
    return int(shape[-1]) if shape and isinstance(shape[-1], int) else None


def _producer(bn: fx.Node) -> fx.Node:
    """The op the BN normalizes: its input, or for a 2-D BN the linear behind reshapes that keep
    the last (channel) dim and that nothing else reads."""
    node = bn.args[0]
    shape = shape_of(node)
    if shape is None or len(shape) != 2:
        return node
    channels = _last_dim(node)
    walk = node
    while walk.target in VIEW_OPS and len(walk.users) == 1 and _last_dim(walk.args[0]) == channels:
        walk = walk.args[0]
    return walk if walk.target in _LINEAR and _last_dim(walk) == channels else node


def _why_not(gm: fx.GraphModule, bn: fx.Node) -> str | None:
    producer = _producer(bn)
    if not isinstance(producer, fx.Node) or producer.target not in (aten.convolution.default, *_LINEAR):
        return f"its input is {getattr(producer, 'name', producer)}, not a conv or linear"
    if len(producer.users) != 1:
        return f"{producer.name} is also read elsewhere ({len(producer.users)} users)"
    if _affine(gm, bn) is None:
        return "its statistics are not constant tensors"
    op = LinearOp.of(gm, producer)
    if isinstance(op, str):
        return op
    if _bn_output(bn) is None:
        return "its batch statistics outputs are used"
    return None


def _affine(gm: fx.GraphModule, bn: fx.Node) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(s, t) in float64 with BN(x) = s * x + t per channel, or None where the statistics are not constants."""
    consts = [constant_value(gm, a) for a in bn.args[1:5]]
    if any(c is not None and not isinstance(c, torch.Tensor) for c in consts) or consts[2] is None or consts[3] is None:
        return None
    gamma, beta, mean, var = (_f64(c) if c is not None else None for c in consts)
    scale = (torch.ones_like(mean) if gamma is None else gamma) / torch.sqrt(var + float(bn.args[6]))
    return scale, (torch.zeros_like(mean) if beta is None else beta) - mean * scale


def _fold_forward(gm: fx.GraphModule, bn: fx.Node) -> str | list[fx.Node]:
    """BN(x) -> the consumers every path from it ends in (rules/batchnorm_forward.py), or why not."""
    out, affine = _bn_output(bn), _affine(gm, bn)
    if out is None or affine is None:
        return "its statistics are not constant tensors" if affine is None else "its batch statistics outputs are used"
    consumers = channel_paths(gm, out)
    if isinstance(consumers, str):
        return consumers
    what = ", ".join(_described(c) for c in consumers)
    consumers = fold_forward(gm, consumers, *affine)
    out.replace_all_uses_with(bn.args[0])
    for node in [*bn.users, bn]:  # gone now, so that a BN before this one sees its own paths
        gm.graph.erase_node(node)
    for node in consumers:
        record(gm, node, weight_of(node), NAME, f"{_described(bn)} -> folded into {what} (the BN before them)",
               joined([bn, node]))
    return consumers


def _described(node: fx.Node) -> str:
    return f"{module_path(node)} ({module_type(node)})" if module_path(node) else node.name


def batchnorm_folding(gm: fx.GraphModule, ctx: PassContext | None = None) -> PassResult:
    """Replaces an eval-mode BN after a conv or linear by rescaled weights of that conv / linear."""
    notes = Notes(NAME)
    folded = 0
    kinds = {"conv": 0, "linear": 0, "following linears and convs": 0}
    kept: dict[fx.Node, str] = {}
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or bn.target != _BN:
            continue
        why = _why_not(gm, bn)
        if why:
            kept[bn] = why
            continue
        producer, out = _producer(bn), _bn_output(bn)
        op = LinearOp.of(gm, producer)
        gamma, beta, mean, var = (_f64(constant_value(gm, a)) for a in bn.args[1:5])
        # BN(W x + b) = (s W) x + (s b + t): torch.nn.utils.fusion's arithmetic, on the [out, in, *k] layout
        w2, b2 = fuse_conv_bn_weights(op.weight, op.bias, mean, var, float(bn.args[6]), gamma, beta)
        kind = "convolution" if producer.target == aten.convolution.default else "linear"
        producer, new_w, new_b = op.with_weights(gm, w2, b2)
        out.replace_all_uses_with(bn.args[0])  # the producer, or the reshapes that lead to it
        name = joined([producer, bn])
        record(gm, producer, new_w, NAME, f"{_described(producer)} + {_described(bn)} -> one {kind} "
                                          "(W' = W * gamma / sqrt(var + eps))", name)
        label(gm, new_w, name and f"{name}.weight")
        label(gm, new_b, name and f"{name}.bias")
        folded += 1
        kinds["conv" if kind == "convolution" else "linear"] += 1
    for bn, why in reversed(kept.items()):  # backwards: a BN between this one and its consumers goes first
        forward = _fold_forward(gm, bn)
        if isinstance(forward, str):
            notes.declined(f"batch norm kept: {why}; nor does it fold forward: {forward}", bn.name)
            continue
        folded += 1
        kinds["following linears and convs"] += 1
    if folded:
        drop_unused_attrs(gm)
        notes.applied("folded " + ", ".join(f"{k} batch norm(s) into their {c}" for c, k in kinds.items() if k))
    return PassResult(gm, folded > 0, notes)
