"""Affine folding (Theorem 3.1): a linear region R^n -> R^m  ->  flatten -> Gemm -> reshape.

    f(x) = W x + B,   W = df/dx  (m x n, by autograd in float64),   B = f(0)

W comes from m vector-Jacobian products (reverse mode) or n Jacobian-vector products (forward
mode), whichever count is smaller, with the region's constants in float64: no bias enters W,
so nothing cancels (f(e_i) - f(0) in float32 would lose W wherever B dominates).
Each fold is checked on a random point, f(v) == W v + B in float64, before it replaces anything.

The cost model folds a region only when the Gemm does less work and moves no more memory:
m * n MACs <= the region's own MACs (strictly fewer, or as many with fewer ops), the Gemm's bytes
(W, input, output) <= the region's (its weights and every value it writes and reads), and
W fits `max_fold_bytes`. A 3x3 conv on a 2x2 map has fewer MACs as a dense Gemm, but a larger
weight: it is kept.
"""

from __future__ import annotations

import warnings

import torch
import torch.fx as fx

from ..cost import gemm_macs
from ..ir import add_constant, attr, drop_unused_attrs
from ..shapes import ShapeInfo, infer_shapes
from .base import Notes, PassResult
from .constant_propagation import _materialize
from .linear_regions import Region, find_linear_regions

NAME = "affine_folding"
aten = torch.ops.aten

DEFAULT_MAX_FOLD_BYTES = 256 * 2**20
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


def _why_not(region: Region, shapes: dict[fx.Node, ShapeInfo], max_fold_bytes: int) -> str | None:
    """The reason the cost model keeps `region` as it is, or None to fold it."""
    if len(region.inputs) != 1:
        names = ", ".join(n.name for n in region.inputs)
        return f"reads {len(region.inputs)} values from outside ({names}); only single-input regions fold"
    if region.shared:
        return f"{region.shared[0].name} is also read outside the region; folding would compute it twice"
    n, m = shapes[region.inputs[0]].sample_numel, shapes[region.output].sample_numel
    gemm = gemm_macs(n, m)
    w_bytes = n * m * shapes[region.output].dtype.itemsize
    if w_bytes > max_fold_bytes:
        return f"W ({m} x {n}) would take {w_bytes / 2**20:.1f} MiB > max_fold_bytes {max_fold_bytes / 2**20:.0f} MiB"
    compute = [x for x in region.compute_nodes if x.target not in _SHAPE_ONLY]
    if gemm > region.macs:
        return f"a Gemm {n}->{m} costs {_fmt_macs(gemm)} MACs > the region's {_fmt_macs(region.macs)}"
    itemsize = shapes[region.output].dtype.itemsize
    gemm_bytes = w_bytes + (n + m) * itemsize
    if gemm_bytes > region.bytes:
        return (f"a Gemm {n}->{m} moves {_fmt_bytes(gemm_bytes)} > the region's {_fmt_bytes(region.bytes)} "
                f"(fewer MACs, {_fmt_macs(gemm)} vs {_fmt_macs(region.macs)}, but a larger weight)")
    if gemm == region.macs and len(compute) <= 1:
        return "already a single Gemm" if compute and compute[0].target in _GEMM_OPS else "nothing to gain"
    return None


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # functorch's "no batching rule" performance notes
        first, second = (torch.func.jacrev, torch.func.jacfwd) if out_numel <= n else (torch.func.jacfwd, torch.func.jacrev)
        chunk = max(1, min(256, min(out_numel, n)))
        try:
            w = first(f, chunk_size=chunk)(zero)
        except Exception:  # an op without the mode's derivative formula: try the other mode
            w = second(f, chunk_size=chunk)(zero)
        with torch.no_grad():
            b = f(zero)
            probe = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
            want, got = f(probe), w @ probe + b
    scale = want.abs().max().item() + 1e-30
    if (want - got).abs().max().item() > 1e-9 * scale:
        raise ValueError(f"the region is not affine: f(v) and W v + B differ by {(want - got).abs().max().item():.3g}")
    return w.detach(), b.detach()


def affine_folding(gm: fx.GraphModule, max_fold_bytes: int = DEFAULT_MAX_FOLD_BYTES) -> PassResult:
    """Replaces each linear region the cost model prefers as a Gemm by flatten -> Gemm -> reshape."""
    notes = Notes(NAME)
    shapes = infer_shapes(gm)
    folded = 0
    for region in find_linear_regions(gm, shapes):
        why = _why_not(region, shapes, max_fold_bytes)
        if why:
            if why != "already a single Gemm":
                notes.declined(f"{region.describe()} kept: {why}", region.output.name)
            continue
        x, out = region.inputs[0], region.output
        in_info, out_info = shapes[x], shapes[out]
        try:
            w, b = affine_map(gm, region, in_info.sample_shape, out_info.sample_numel)
        except Exception as exc:  # noqa: BLE001 - any failure means: do not fold, and say why
            notes.declined(f"{region.describe()} kept: computing W failed ({type(exc).__name__}: {exc})", out.name)
            continue
        _replace_with_gemm(gm, region, w, b, in_info, out_info)
        folded += 1
        n, m = in_info.sample_numel, out_info.sample_numel
        notes.applied(f"{region.describe()} -> Gemm {n}->{m}: {_fmt_macs(region.macs)} -> "
                      f"{_fmt_macs(gemm_macs(n, m))} MACs", out.name)
    if folded:
        drop_unused_attrs(gm)
    return PassResult(gm, folded > 0, notes)


def _replace_with_gemm(gm, region: Region, w, b, in_info: ShapeInfo, out_info: ShapeInfo) -> None:
    x, out = region.inputs[0], region.output
    dtype = out_info.dtype
    graph = gm.graph
    wt = add_constant(gm, w.t().to(dtype).contiguous(), "W", before=out)
    bias = add_constant(gm, b.to(dtype), "B", before=out)
    with graph.inserting_before(out):
        flat = x
        if tuple(in_info.sample_shape) != (in_info.sample_numel,):
            flat = graph.call_function(aten.view.default, (x, [-1, in_info.sample_numel]))
        y = graph.call_function(aten.addmm.default, (bias, flat, wt))
        if tuple(out_info.sample_shape) != (out_info.sample_numel,):
            y = graph.call_function(aten.view.default, (y, [-1, *out_info.sample_shape]))
    out.replace_all_uses_with(y)
