"""lowrank per layer: each factorizable conv timed alone against the chain of each method (CP, Tucker-2,
TT) under onnxruntime on the target, and each layer given the fastest chain where it pays.

    conv(x)  vs  chain_m(x),  m in METHODS, x at the layer's own input shape, at each batch
    speed-up_m(b) = median over blocks of  t_conv(b) / t_chain_m(b)       (foldpass.bench, interleaved)
    layer -> argmax_m  geomean_b speed-up_m(b),  where compress's keep rule holds (measure.Latency.faster:
             >= KEEP_MARGIN, and no batch slower)
    else the layer stays a conv

A depthwise CP chain has the fewest MACs and can still run slower than Tucker-2's dense convs under
onnxruntime (its kh x 1 and 1 x kw depthwise convs are memory-bound), which is why MACs alone do not
choose: each method's chain is timed where it will run. The chain's weights are random (a latency
needs only shapes: decomposition.low_rank_decomposition.factor_shapes). The whole model is timed again
after the factorization (compress's step loop), since layers timed alone do not add up exactly.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from .measure import Latency, block_ratio, geomean

OPSET = 18


@dataclass
class LayerTiming:
    node: str
    shape: tuple[int, int, int, int]  # O, I, kh, kw
    speedup: dict[str, dict[int, float]]  # method -> batch -> the conv's time / the chain's
    chosen: str | None

    def as_dict(self) -> dict:
        return {"node": self.node, "shape": list(self.shape), "chosen": self.chosen,
                "speedup": {m: {str(b): v for b, v in s.items()} for m, s in self.speedup.items()}}


def conv_chain_onnx(convs: list[tuple[tuple[int, ...], list[int], list[int], int]], in_shape: tuple[int, int, int],
                    seed: int = 0) -> onnx.ModelProto:
    """An ONNX model of a chain of convs (weight shape, stride, padding, groups), random weights, a
    dynamic batch: what one layer, or its factorization, costs on its own."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for k, (shape, stride, pad, groups) in enumerate(convs):
        w = f"w{k}"
        inits.append(numpy_helper.from_array((0.1 * rng.standard_normal(shape)).astype(np.float32), w))
        out = "y" if k == len(convs) - 1 else f"h{k}"
        nodes.append(helper.make_node("Conv", [x, w], [out], kernel_shape=list(shape[2:]), strides=list(stride),
                                      pads=[pad[0], pad[1], pad[0], pad[1]], group=groups))
        x = out
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def layer_methods(model: torch.nn.Module, example: torch.Tensor, rank, batches=(1, 64), threads: int = 1,
                  rounds: int = 5, round_s: float = 0.05, log=None) -> tuple[dict[str, str], list[LayerTiming]]:
    """({conv node name: its fastest method}, every layer's timings) for decompose(model, example[:1],
    method=that dict, rank): the node names are those of the same trace."""
    import copy

    from ..benchmark import bench
    from ..decomposition.low_rank_decomposition import METHODS, _chain, factor_shapes, plan
    from ..graph import pair
    from ..shapes import infer_shapes
    from ..tracing import trace

    gm = trace(copy.deepcopy(model).eval(), (example[:1],))
    shapes = infer_shapes(gm)
    planned = {m: {p.node.name: p for p in plan(gm, m, rank)} for m in METHODS}
    names = list(dict.fromkeys(n for m in METHODS for n in planned[m]))
    chosen, timings = {}, []
    with tempfile.TemporaryDirectory(prefix="foldpass-layers-") as tmp:
        for name in names:
            first = next(planned[m][name] for m in METHODS if name in planned[m])
            node = first.node
            stride, pad = pair(node.args[3]), pair(node.args[4])
            shape = tuple(first.w.shape)
            in_shape = tuple(shapes[node.args[0]].sample_shape)
            files = {"conv": os.path.join(tmp, f"{name}-conv.onnx")}
            onnx.save(conv_chain_onnx([(shape, stride, pad, 1)], in_shape), files["conv"])
            for m in METHODS:
                if name in planned[m]:
                    p = planned[m][name]
                    factors = [np.zeros(s) for s in factor_shapes(m, p.ranks, shape)]
                    chain = [(f.shape, st, pd, g) for f, st, pd, g in _chain(m, factors, stride, pad)]
                    files[m] = os.path.join(tmp, f"{name}-{m}.onnx")
                    onnx.save(conv_chain_onnx(chain, in_shape), files[m])
            result = bench(list(files.values()), list(files), batches=tuple(batches), rounds=rounds, round_s=round_s,
                           threads=threads)
            speedup = {m: {} for m in files if m != "conv"}
            for b in batches:
                rows = {t.name: t for t in result.timings if t.batch == b}
                for m in speedup:
                    speedup[m][b] = block_ratio(rows["conv"], rows[m])
            best = max(speedup, key=lambda m: geomean(speedup[m].values()), default=None)
            # the rule compress keeps a step by, with the conv as the current file
            pays = best is not None and Latency({}, {}, speedup[best]).faster()[0]
            timings.append(LayerTiming(name, shape, speedup, best if pays else None))
            if pays:
                chosen[name] = best
            if log:
                shown = ", ".join(f"{m} {geomean(s.values()):.2f}x" for m, s in speedup.items())
                log(f"lowrank: {name} {'x'.join(map(str, shape))}: {shown} -> {best if pays else 'kept'}")
    return chosen, timings
