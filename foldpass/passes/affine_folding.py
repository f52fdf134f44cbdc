"""Affine folding (Theorem 3.1): a linear region -> one Gemm or one conv, whichever is cheapest.

    Gemm:  f(x) = W x + B,   W = df/dx  (m x n, by autograd in float64),   B = f(0)
    conv:  f(x) = K * x + b  when the region is one convolution in disguise (conv_merging.py:
           parallel branches, identity, BN, avg-pool, sequential convs, linear residuals)

W comes from m vector-Jacobian products (reverse mode) or n Jacobian-vector products (forward
mode), whichever count is smaller, with the region's constants in float64: no bias enters W,
so nothing cancels (f(e_i) - f(0) in float32 would lose W wherever B dominates).
Each fold is checked on a random point in float64 before it replaces anything. A region that
cannot fold whole (it reads several values, shares inner values, or costs more as one op) folds
its largest single-input parts instead (linear_regions.sub_regions), none overlapping, each
through the same cost model: RepGhost's 1 x 1 conv -> (3 x 3 depthwise + BN) + BN keeps its
1 x 1 conv and merges the rest into one depthwise conv.

The cost model compares keeping the region, a merged conv and a dense Gemm, and takes the
cheapest replacement that does less work, moves no more memory and does not add ops:
  MACs <= the region's own MACs;
  bytes (weights, input, output) <= the region's (its weights and every value it writes and reads);
  fewer ops than the region, or at most half its MACs (a Gemm brings its reshapes);
  a Gemm's W fits `max_fold_bytes`.
A 3x3 conv on a 2x2 map has fewer MACs as a dense Gemm, but a larger weight: it is kept. Two 1x1
convs 144 -> 24 -> 144 compose to a larger 144 -> 144 conv: they are kept.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.fx as fx

from ..cost import gemm_macs
from ..errors import first_line
from ..graph import add_constant, attr, drop_unused_attrs, node_key, replace
from ..provenance import label, record, span
from ..rules.conv_merging import MergedConv, merged_conv, region_window
from ..shapes import ShapeInfo
from .base import Notes, PassResult
from .constant_propagation import _materialize
from .context import PassContext
from .linear_regions import Region, sub_regions

NAME = "affine_folding"
aten = torch.ops.aten
_GEMM_OPS = {aten.addmm.default, aten.mm.default}


def _fmt_macs(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _fmt_bytes(n: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


@dataclass
class Option:
    """A replacement for a region: its kind, cost and what it needs to be built."""

    kind: str  # "Gemm" | "conv"
    macs: int
    bytes: int
    ops: int
    conv: MergedConv | None = None

    def describe(self, n: int, m: int) -> str:
        if self.kind == "Gemm":
            return f"Gemm {n}->{m}"
        k, groups = self.conv.window.size, self.conv.groups
        return f"{k[0]}x{k[1]} conv {self.conv.weight.shape[1] * groups}->{self.conv.weight.shape[0]}" + \
            (f" (groups {groups})" if groups > 1 else "")


def _region_ops(region: Region) -> int:
    return sum(1 for x in region.compute_nodes if x.target not in _SHAPE_ONLY)


def _gemm_option(region: Region, shapes: dict[fx.Node, ShapeInfo], max_fold_bytes: int) -> Option | str:
    in_info, out_info = shapes[region.inputs[0]], shapes[region.output]
    n, m = in_info.sample_numel, out_info.sample_numel
    itemsize = out_info.dtype.itemsize
    w_bytes = n * m * itemsize
    if w_bytes > max_fold_bytes:
        return f"W ({m} x {n}) would take {w_bytes / 2**20:.1f} MiB > max_fold_bytes {max_fold_bytes / 2**20:.0f} MiB"
    ops = 1 + (len(in_info.sample_shape) != 1) + (len(out_info.sample_shape) != 1)
    return Option("Gemm", gemm_macs(n, m), w_bytes + (n + m) * itemsize, ops)


def _conv_option(gm: fx.GraphModule, region: Region, shapes: dict[fx.Node, ShapeInfo]) -> Option | str:
    window = region_window(region, shapes)
    if isinstance(window, str):
        return window
    in_info, out_info = shapes[region.inputs[0]], shapes[region.output]
    bound = _conv_bound(window, in_info, out_info)
    if bound.macs > region.macs or bound.bytes > region.bytes:  # rejected before its kernel is computed
        k = window.size
        return (f"a merged {k[0]}x{k[1]} conv costs at least {_fmt_macs(bound.macs)} MACs and moves "
                f"{_fmt_bytes(bound.bytes)}, more than the region's {_fmt_macs(region.macs)} / {_fmt_bytes(region.bytes)}")
    try:
        conv = merged_conv(extract(gm, region), window, in_info.sample_shape, out_info.sample_shape)
    except RuntimeError as exc:  # the probe is smaller than the real map: a constant of the map's size
        return f"it reads a constant shaped like the feature map, not per channel ({first_line(exc)})"
    if isinstance(conv, str):
        return conv
    itemsize = out_info.dtype.itemsize
    nbytes = (conv.weight.numel() + conv.bias.numel() + in_info.sample_numel + out_info.sample_numel) * itemsize
    return Option("conv", conv.macs(out_info.sample_shape), nbytes, 1, conv)


def _conv_bound(window, in_info: ShapeInfo, out_info: ShapeInfo) -> Option:
    """The least any merged conv on this window can cost: as many groups as the channels allow
    (gcd(C_in, C_out)), so C_in / gcd weights per output; its kernel may only be larger."""
    c_in, c_out = in_info.sample_shape[0], out_info.sample_shape[0]
    per_out = c_in // math.gcd(c_in, c_out) * window.size[0] * window.size[1]
    weights = c_out * per_out + c_out
    nbytes = (weights + in_info.sample_numel + out_info.sample_numel) * out_info.dtype.itemsize
    return Option("conv", out_info.sample_numel * per_out, nbytes, 1)


def choose(gm: fx.GraphModule, region: Region, shapes: dict[fx.Node, ShapeInfo],
           max_fold_bytes: int) -> Option | str:
    """The cheapest replacement of `region`, or why it is kept as it is."""
    if len(region.inputs) != 1:
        names = ", ".join(n.name for n in region.inputs)
        return f"reads {len(region.inputs)} values from outside ({names}); a region folds whole from one input only"
    if region.shared:
        return f"{region.shared[0].name} is also read outside the region; folding would compute it twice"
    ops = _region_ops(region)
    targets = {x.target for x in region.compute_nodes if x.target not in _SHAPE_ONLY}
    if ops <= 1 and targets <= _GEMM_OPS:
        return "already a single Gemm"
    single_conv = ops <= 1 and targets == {aten.convolution.default}
    options, reasons = [], []
    candidates = [] if single_conv else [("conv", _conv_option(gm, region, shapes))]
    candidates.append(("Gemm", _gemm_option(region, shapes, max_fold_bytes)))
    for kind, option in candidates:
        if isinstance(option, str):
            reasons.append(f"no {kind}: {option}")
        elif option.macs > region.macs:
            reasons.append(f"a {kind} costs {_fmt_macs(option.macs)} MACs > the region's {_fmt_macs(region.macs)}")
        elif option.bytes > region.bytes:
            reasons.append(f"a {kind} moves {_fmt_bytes(option.bytes)} > the region's {_fmt_bytes(region.bytes)} "
                           f"(fewer MACs, {_fmt_macs(option.macs)} vs {_fmt_macs(region.macs)}, but a larger weight)")
        elif option.ops >= ops and 2 * option.macs > region.macs:
            reasons.append(f"a {kind} needs {option.ops} ops for the region's {ops} and saves under half its MACs "
                           f"({_fmt_macs(option.macs)} vs {_fmt_macs(region.macs)})")
        else:
            options.append(option)
    if not options:
        return "; ".join(reasons)
    return min(options, key=lambda o: (o.macs, o.bytes, o.ops))


_SHAPE_ONLY = {aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.permute.default,
               aten.unsqueeze.default, aten.squeeze.dims, aten.squeeze.dim, aten.clone.default, aten.alias.default}


def extract(gm: fx.GraphModule, region: Region, dtype: torch.dtype = torch.float64) -> fx.GraphModule:
    """The region as a GraphModule of one input, its constants cast to `dtype`."""
    root = torch.nn.Module()
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {region.inputs[0]: graph.placeholder("x")}
    consts: dict[fx.Node, object] = {}

    def lookup(arg: fx.Node) -> fx.Node:
        if arg in env:
            return env[arg]
        value = attr(gm, arg.target) if arg.op == "get_attr" else _materialize(gm, arg, consts)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            value = value.detach().to(dtype)
        name = f"c{len(env)}"
        root.register_buffer(name, value)
        env[arg] = graph.get_attr(name)
        return env[arg]

    for node in region.nodes:
        env[node] = graph.node_copy(node, lookup)
    graph.output(env[region.output])
    return fx.GraphModule(root, graph)


def affine_map(gm: fx.GraphModule, region: Region, in_shape, out_numel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, B) in float64 with f(x) = W @ x.flatten() + B for one sample."""
    sub = extract(gm, region)
    n = 1
    for d in in_shape:
        n *= d

    def f(v: torch.Tensor) -> torch.Tensor:
        return sub(v.reshape(1, *in_shape)).reshape(-1)

    zero = torch.zeros(n, dtype=torch.float64)
    chunk = max(1, min(256, min(out_numel, n)))
    modes = (_reverse, _forward) if out_numel <= n else (_forward, _reverse)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # functorch's "no batching rule" performance notes
        try:
            w = modes[0](f, zero, chunk)
        except RuntimeError:  # an op without this mode's derivative formula or batching rule: the other mode
            w = modes[1](f, zero, chunk)
        with torch.no_grad():
            b = f(zero)
            probe = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
            want, got = f(probe), w @ probe + b
    scale = want.abs().max().item() + 1e-30
    if (want - got).abs().max().item() > 1e-9 * scale:
        raise ValueError(f"the region is not affine: f(v) and W v + B differ by {(want - got).abs().max().item():.3g}")
    return w.detach(), b.detach()


def _reverse(f, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """W by vector-Jacobian products, `chunk` rows at a time."""
    return torch.func.jacrev(f, chunk_size=chunk)(x)


def _forward(f, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """W by Jacobian-vector products, `chunk` columns at a time (torch.func.jacfwd takes no chunk size)."""
    basis = torch.eye(x.numel(), dtype=x.dtype)
    jvp = torch.func.vmap(lambda v: torch.func.jvp(f, (x,), (v,))[1])
    return torch.cat([jvp(basis[i:i + chunk]) for i in range(0, x.numel(), chunk)]).t()


def signature(region: Region, shapes: dict[fx.Node, ShapeInfo]) -> tuple:
    """What the cost model's verdict on a region depends on: its nodes with their ops, arguments and
    readers (a fold elsewhere that reads into the region changes it), the constants it reads (their
    tensors and in-place versions: new weights under an old name count), its inputs and their shapes."""
    def constants(n: fx.Node) -> tuple:
        values = (attr(gm, a.target) for a in n.all_input_nodes if a.op == "get_attr")
        return tuple((id(v), v._version) if isinstance(v, torch.Tensor) else id(v) for v in values)

    gm = region.output.graph.owning_module
    nodes = tuple((*node_key(n), tuple(n.users), constants(n)) for n in region.nodes)
    return nodes, tuple(region.inputs), tuple(shapes[x].shapes if x in shapes else None for x in region.inputs)


MAX_SWEEPS = 32  # folds that unlock further folds (a part, then the region around it) within one pass


def affine_folding(gm: fx.GraphModule, ctx: PassContext | None = None) -> PassResult:
    """Replaces each linear region by the one Gemm or conv the cost model prefers, sweep after
    sweep until a sweep folds nothing (regions found again after every sweep that changed the graph)."""
    ctx = ctx or PassContext()
    notes = Notes(NAME)
    # a region's signature -> why it was kept: the same region is not weighed twice, in this sweep,
    # the next, or the next round's call (kept in the context, per graph)
    memo: dict[tuple, str] = ctx.store(gm, NAME)
    folded = 0
    for _ in range(MAX_SWEEPS):
        declined = Notes(NAME)
        count = _sweep(gm, ctx, notes, declined, memo)
        folded += count
        if count:
            gm.graph.eliminate_dead_code()
            ctx.invalidate(gm)
        else:
            break
    notes.extend(declined)
    if folded:
        drop_unused_attrs(gm)
    return PassResult(gm, folded > 0, notes)


def _sweep(gm, ctx: PassContext, notes: Notes, declined: Notes, memo: dict) -> int:
    """One pass over the regions: folds what the cost model takes; the rest goes to `declined`."""
    folded = 0
    shapes, const, max_fold_bytes = ctx.shapes(gm), ctx.constants(gm), ctx.max_fold_bytes
    touched: set[fx.Node] = set()  # values a fold replaced: regions through them wait for the next sweep
    for region in ctx.regions(gm):
        if touched & set(region.nodes):
            continue
        key = signature(region, shapes)
        option = memo.get(key) or _choose(gm, region, shapes, max_fold_bytes)
        if isinstance(option, str):
            parts, tried = (0, 0) if option.startswith("already a single") or key in memo else \
                _fold_parts(gm, region, shapes, const, max_fold_bytes, notes, touched, memo)
            folded += parts
            if not parts:
                memo[key] = option = option + (f"; none of its {tried} single-input parts folds for less" if tried else "")
            if not option.startswith("already a single"):
                declined.declined(f"{region.describe()} kept" + (f" whole ({parts} single-input parts folded)"
                                                                  if parts else "") + f": {option}", region.output.name)
            continue
        folded += _fold(gm, region, option, shapes, notes) is not None
        touched.update(region.nodes)
    return folded


def _choose(gm, region: Region, shapes, max_fold_bytes: int) -> Option | str:
    try:
        return choose(gm, region, shapes, max_fold_bytes)
    except (RuntimeError, ValueError) as exc:  # torch cannot run the region (an op with no float64 kernel...)
        return f"evaluating it failed ({type(exc).__name__}: {exc})"  # anything else is a bug: the pass fails


def _fold_parts(gm, region: Region, shapes, const: set[fx.Node], max_fold_bytes: int, notes: Notes,
                used: set[fx.Node], memo: dict) -> tuple[int, int]:
    """Folds the largest single-input parts of a region that cannot fold whole, none overlapping
    (`used` collects the values they replaced); (parts folded, parts weighed). A part kept is
    remembered in `memo`: regions that overlap share their parts (DenseNet's transition conv and
    pool lie in every region of the next block that reads it), and each is weighed once."""
    replaced: dict[fx.Node, fx.Node] = {}
    count = 0
    parts = sub_regions(gm, region, shapes, const=const)
    for part in parts:
        if used & set(part.nodes):
            continue
        part.inputs = [replaced.get(part.inputs[0], part.inputs[0])]  # a part folded just now: read its fold
        key = ("part", *signature(part, shapes))
        option = memo.get(key) or _choose(gm, part, shapes, max_fold_bytes)
        if isinstance(option, str):
            memo[key] = option
            continue
        y = _fold(gm, part, option, shapes, notes)
        if y is not None:
            used.update(part.nodes)
            replaced[part.output] = y
            shapes[y] = shapes[part.output]
            count += 1
    return count, len(parts)


def _fold(gm, region: Region, option: Option, shapes, notes: Notes) -> fx.Node | None:
    """Replaces `region` by `option`: the new value, or None if computing the fold failed (it says why)."""
    x, out = region.inputs[0], region.output
    in_info, out_info = shapes[x], shapes[out]
    name = span(region.nodes)
    if option.kind == "conv":
        y = _replace_with_conv(gm, region, option.conv, out_info, name)
    else:
        try:
            w, b = affine_map(gm, region, in_info.sample_shape, out_info.sample_numel)
        except (RuntimeError, ValueError) as exc:  # the map cannot be read (or is not affine): kept, with the reason
            notes.declined(f"{region.describe()} kept: computing W failed ({type(exc).__name__}: {exc})", out.name)
            return None
        y = _replace_with_gemm(gm, region, w, b, in_info, out_info, name)
    notes.applied(f"{region.describe()} -> {option.describe(in_info.sample_numel, out_info.sample_numel)}: "
                  f"{_fmt_macs(region.macs)} -> {_fmt_macs(option.macs)} MACs", out.name)
    return y


def _replace_with_conv(gm, region: Region, conv: MergedConv, out_info: ShapeInfo, name: str) -> None:
    x, out = region.inputs[0], region.output
    dtype = out_info.dtype
    weight = add_constant(gm, conv.weight.to(dtype), "K", before=out)
    bias = add_constant(gm, conv.bias.to(dtype), "b", before=out)
    label(gm, weight, name and f"{name}.weight")
    label(gm, bias, name and f"{name}.bias")
    w = conv.window
    with gm.graph.inserting_before(out):
        y = gm.graph.call_function(aten.convolution.default, (x, weight, bias, list(w.stride), list(w.pad), [1, 1],
                                                              False, [0, 0], conv.groups))
    replace(out, y)
    record(gm, y, weight, NAME, f"{region.describe()} -> one convolution", name)
    return y


def _replace_with_gemm(gm, region: Region, w, b, in_info: ShapeInfo, out_info: ShapeInfo, name: str) -> None:
    x, out = region.inputs[0], region.output
    dtype = out_info.dtype
    graph = gm.graph
    wt = add_constant(gm, w.t().to(dtype).contiguous(), "W", before=out)
    bias = add_constant(gm, b.to(dtype), "B", before=out)
    label(gm, wt, name and f"{name}.weight")
    label(gm, bias, name and f"{name}.bias")
    with graph.inserting_before(out):
        flat = x
        if tuple(in_info.sample_shape) != (in_info.sample_numel,):
            flat = graph.call_function(aten.view.default, (x, [-1, in_info.sample_numel]))
        gemm = y = graph.call_function(aten.addmm.default, (bias, flat, wt))
        if tuple(out_info.sample_shape) != (out_info.sample_numel,):
            y = graph.call_function(aten.view.default, (y, [-1, *out_info.sample_shape]))
    replace(out, y)
    record(gm, gemm, wt, NAME, f"{region.describe()} -> Gemm {in_info.sample_numel}->{out_info.sample_numel}", name)
    return y
