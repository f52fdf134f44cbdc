"""Linear-region detection: the maximal subgraphs made only of affine ops.

    f = A_k o ... o A_1  with every A_i affine   =>   f(x) = W x + B        (Theorem 3.1)

An op is affine in its data operands when its other operands are constants; `AFFINE` below lists
each such op with the positions of its data operands. A value joins a region when its op is in
that table, its non-data operands are constants, and it keeps the batch dimension in front
(shapes observed at two batch sizes) so that the region maps each sample on its own.

A region is read off from each *sink* (an affine value something non-affine reads): its cone,
back through affine values, to the values it reads from outside (its inputs).
A region that reads several values, or whose inner values are read outside it, cannot fold
whole; `sub_regions` then offers its single-input parts: for a value s of the region, the cone of
s cut at one value x it reads (x is then the input), when nothing outside reads its inner values.
So a RepVGG-style block (conv3(x) + conv1(x) + x, then BN) that sits inside a larger region
with a second input (a residual add from further up) still folds to one conv.
This is an analysis (context.py: `ctx.regions(gm)`), not a pass: it only finds regions, and
affine_folding decides which to fold; `--explain` prints it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from ..cost import node_macs
from ..graph import VIEW_OPS, ancestors, attr, op_name
from ..shapes import ShapeInfo, infer_shapes
from .base import Notes, PassResult
from .constant_propagation import constant_nodes
from .context import PassContext

NAME = "linear_region_detection"
aten = torch.ops.aten

ANY = "any"  # every tensor operand may carry data: a + b, cat([a, b])
ONE = "one"  # exactly one operand carries data, the others are constants: a * c, x @ W

# op -> positions of its data operands (the rest must be constants or literals)
AFFINE = {
    aten.convolution.default: (0,),  # W * x + b
    aten._native_batch_norm_legit_no_training.default: (0,),  # gamma * (x - mean) / sqrt(var + eps) + beta
    operator.getitem: (0,),  # the normalized value out of a batch norm (index 0 only)
    aten.addmm.default: (1,),  # b + x @ W
    aten.mm.default: ONE,  # x @ W, W @ x
    aten.matmul.default: ONE,  # x @ W over leading dims (linear_matmul's output)
    aten.add.Tensor: ANY,  # x + y, x + c
    aten.sub.Tensor: ANY,  # x - y, x - c
    aten.mul.Tensor: ONE,  # c * x
    aten.div.Tensor: (0,),  # x / c
    aten.neg.default: (0,),  # -x
    aten.constant_pad_nd.default: (0,),  # zero (or constant) border
    aten.reflection_pad2d.default: (0,),  # a selection of x's entries
    aten.replication_pad2d.default: (0,),
    aten.upsample_nearest2d.vec: (0,),  # nearest resampling: a 0/1 matrix (paper eq. 6)
    aten.upsample_nearest2d.default: (0,),
    aten.upsample_bilinear2d.vec: (0,),  # interpolation weights are constants
    aten.avg_pool2d.default: (0,),  # mean over windows
    aten._adaptive_avg_pool2d.default: (0,),
    aten.mean.dim: (0,),
    aten.sum.dim_IntList: (0,),
    aten.view.default: (0,),  # reshapes, permutations and slices move entries around
    aten._unsafe_view.default: (0,),
    aten.reshape.default: (0,),
    aten.permute.default: (0,),
    aten.unsqueeze.default: (0,),
    aten.squeeze.dims: (0,),
    aten.squeeze.dim: (0,),
    aten.clone.default: (0,),
    aten.alias.default: (0,),
    aten.slice.Tensor: (0,),
    aten.cat.default: ANY,  # [x; y]
}


_TUPLE_OUT = {aten._native_batch_norm_legit_no_training.default}  # judged by their input's shape


@dataclass
class Region:
    """One candidate: the affine cone that ends in `output` and reads `inputs` from outside."""

    output: fx.Node
    nodes: list[fx.Node]  # in graph order, output last
    inputs: list[fx.Node]
    shared: list[fx.Node] = field(default_factory=list)  # cone values read outside the cone
    macs: int = 0
    bytes: int = 0  # weights read plus every value written and read, per sample

    @property
    def compute_nodes(self) -> list[fx.Node]:
        return [n for n in self.nodes if n.target is not operator.getitem]

    def describe(self) -> str:
        counts: dict[str, int] = {}
        for n in self.compute_nodes:
            counts[op_name(n)] = counts.get(op_name(n), 0) + 1
        ops = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        return f"region -> {self.output.name} ({len(self.compute_nodes)} ops: {ops})"


def _data_positions(node: fx.Node) -> list[int] | str | None:
    spec = AFFINE.get(node.target)
    if spec is None:
        return None
    return spec if isinstance(spec, str) else list(spec)


def _flat_args(node: fx.Node) -> list:
    if node.target == aten.cat.default:
        return list(node.args[0])
    return list(node.args)


def _is_affine(node: fx.Node, data: set[fx.Node], const: set[fx.Node], shapes: dict[fx.Node, ShapeInfo]) -> bool:
    """Whether `node` (which reads data) is an affine op of its data operands."""
    spec = _data_positions(node)
    if spec is None or node.kwargs.get("alpha", 1) is None:
        return False
    if node.target is operator.getitem:
        src = node.args[0]
        return src.target == aten._native_batch_norm_legit_no_training.default and node.args[1] == 0
    info = shapes.get(node, shapes.get(node.args[0]) if node.target in _TUPLE_OUT else None)
    if info is None or not info.batch_major or not info.dtype.is_floating_point:
        return False
    args = _flat_args(node)
    nodes_in = [(i, a) for i, a in enumerate(args) if isinstance(a, fx.Node)]
    data_pos = [i for i, a in nodes_in if a in data]
    other = [a for i, a in nodes_in if a not in data]
    if any(a not in const for a in other):
        return False  # reads a run-time value that is not a tensor of the region (a symbolic size, say)
    if spec == ANY:
        return bool(data_pos)
    if spec == ONE:
        return len(data_pos) == 1
    return bool(data_pos) and set(data_pos) <= set(spec)


def affine_values(gm: fx.GraphModule, shapes: dict[fx.Node, ShapeInfo], const: set[fx.Node]) -> set[fx.Node]:
    """Every data-dependent value computed by an affine op of its data operands."""
    data = {n for n in gm.graph.nodes if n.op != "output" and n not in const}
    return {n for n in gm.graph.nodes if n.op == "call_function" and n in data and _is_affine(n, data, const, shapes)}


def find_linear_regions(gm: fx.GraphModule, shapes: dict[fx.Node, ShapeInfo] | None = None,
                        const: set[fx.Node] | None = None) -> list[Region]:
    """The regions of gm with at least one op doing arithmetic, one per sink, in graph order
    (passes read them from the context: `ctx.regions(gm)`, cached until the graph changes)."""
    shapes = shapes if shapes is not None else infer_shapes(gm)
    const = const if const is not None else constant_nodes(gm)
    affine = affine_values(gm, shapes, const)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    regions = []
    for sink in gm.graph.nodes:
        if sink not in affine or all(u in affine for u in sink.users):
            continue
        cone = ancestors(sink, within=affine.__contains__)
        inputs = sorted({a for n in cone for a in n.all_input_nodes if a not in affine and a not in const},
                        key=order.get)
        shared = sorted((n for n in cone if n is not sink and any(u not in cone for u in n.users)), key=order.get)
        region = Region(sink, sorted(cone, key=order.get), inputs, shared)
        region.macs = sum(node_macs(n, shapes) for n in region.nodes)
        region.bytes = _region_bytes(gm, region, shapes)
        if region.macs > 0:
            regions.append(region)
    return regions


def sub_regions(gm: fx.GraphModule, region: Region, shapes: dict[fx.Node, ShapeInfo], max_nodes: int = 400,
                max_cuts: int = 24, const: set[fx.Node] | None = None) -> list[Region]:
    """The single-input, unshared sub-regions of `region` with at least two ops, largest first
    (see the module docstring); none for a region over `max_nodes` values."""
    if len(region.nodes) > max_nodes:
        return []
    const = const if const is not None else constant_nodes(gm)
    members = set(region.nodes)
    order = {n: i for i, n in enumerate(region.nodes)}
    found: dict[frozenset, Region] = {frozenset(region.nodes): region}  # the whole is not a part
    dom = _dominators(region.nodes, members, const)
    for sink in region.nodes:
        if sink.target in _TUPLE_OUT:
            continue
        full = ancestors(sink, within=members.__contains__)
        cuts = sorted((n for n in full if n is not sink), key=order.get, reverse=True)[:max_cuts]
        # a cut that some path from an input to the sink avoids leaves two inputs (that one and the cut)
        cuts = [c for c in cuts if dom[sink] is None or c in dom[sink] or c in const]
        for cut in [None, *cuts]:
            cone = full if cut is None else ancestors(sink, within=lambda a, c=cut: a in members and a is not c)
            inputs = {a for n in cone for a in n.all_input_nodes if a not in cone and a not in const}
            if len(inputs) != 1 or frozenset(cone) in found:
                continue
            if any(u not in cone for n in cone if n is not sink for u in n.users):
                continue
            sub = Region(sink, sorted(cone, key=order.get), list(inputs))
            if len([n for n in sub.compute_nodes if n.target not in VIEW_OPS]) < 2:
                continue
            sub.macs = sum(node_macs(n, shapes) for n in sub.nodes)
            if sub.macs > 0:
                sub.bytes = _region_bytes(gm, sub, shapes)
                found[frozenset(cone)] = sub
    parts = [r for r in found.values() if r is not region]
    return sorted(parts, key=lambda r: (-len(r.compute_nodes), order[r.output]))


def _dominators(nodes: list[fx.Node], members: set[fx.Node], const: set[fx.Node]) -> dict[fx.Node, set | None]:
    """Per value of a region (in graph order), the values every path to it from the region's inputs
    passes through, itself included: dom(n) = {n} | intersection of dom(a) over the values a it reads
    (an input's is itself; constants impose nothing). None: no input reaches it (every value qualifies)."""
    dom: dict[fx.Node, set | None] = {}
    for n in nodes:
        reach = None
        for a in n.all_input_nodes:
            d = None if a in const else dom[a] if a in members else {a}
            if d is not None:
                reach = set(d) if reach is None else reach & d
        dom[n] = None if reach is None else reach | {n}
    return dom


def _region_bytes(gm: fx.GraphModule, region: Region, shapes: dict[fx.Node, ShapeInfo]) -> int:
    weights = {a for n in region.nodes for a in n.all_input_nodes if a.op == "get_attr"}
    total = 0
    for w in weights:
        value = attr(gm, w.target)
        total += value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0
    for n in [*region.inputs, *region.nodes]:
        info = shapes.get(n)
        if info is not None and info.batch_major and n.target not in _VIEWS:
            total += info.sample_numel * info.dtype.itemsize
    return total


_VIEWS = VIEW_OPS | {aten.alias.default}


def linear_region_detection(gm: fx.GraphModule, ctx: PassContext | None = None) -> PassResult:
    """The regions analysis as notes, for `--explain` (it does not change the graph; not a pass of any
    pipeline: run_pipeline reports it once the passes are done)."""
    notes = Notes(NAME)
    for region in (ctx or PassContext()).regions(gm):
        notes.info(f"{region.describe()}, {region.macs:,} MACs, reads {', '.join(n.name for n in region.inputs)}",
                   region.output.name)
    return PassResult(gm, False, notes)
