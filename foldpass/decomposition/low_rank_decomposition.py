"""Low-rank decomposition: one k x k conv -> a chain of smaller convs (lossy, unlike every fold).

    Tucker-2  W[o,i,y,x] ~ sum U[o,a] C[a,b,y,x] V[i,b]         1x1 I->Ri, kxk Ri->Ro, 1x1 Ro->O
    CP        W[o,i,y,x] ~ sum_r A[o,r] B[i,r] Y[y,r] X[x,r]     1x1 I->R, depthwise kx1, depthwise 1xk, 1x1 R->O
    TT        W[i,y,x,o] ~ G1[i,r1] G2[r1,y,r2] G3[r2,x,r3] G4[r3,o]   1x1 I->r1, kx1 r1->r2, 1xk r2->r3, 1x1 r3->O

(Corazza & Stojanovic, the seed in ../shared/seeds/003; Kim et al. 2016 for Tucker-2, Lebedev et al.
2015 for CP, Novikov et al. 2015 for TT.) The factorizations are TensorLy's (partial_tucker,
parafac, tensor_train), in float64. The stride and padding go to the spatial steps; the bias to
the last 1x1.

`method` is one of them for every layer, or a dict {conv node name: method} (compress chooses each
layer's method by its measured latency: foldpass.compression.layer_choice); a conv the dict does not
name is kept.

Ranks: an int is the rank itself; a float in (0, 1) the fraction of the layer's parameters to
keep; "auto" is EVBMF (foldpass.vbmf) on the output- and input-mode unfoldings. A layer is
factorized only when its chain has fewer MACs than the conv (the same cost model as the folds);
1x1 and grouped convs are left alone, and so is a layer whose chosen rank says there is nothing
to factorize: a fraction that affords only rank 1 (typically the stem, which reads 3 channels), or
EVBMF rank 0 (no component above the noise level, as in weights still close to their random
init). Every layer reports rank, parameters, MACs and the relative reconstruction error
||W - W'|| / ||W||. The new weights are nn.Parameters, so the
decomposed module can be fine-tuned.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx

from ..defaults import DECOMPOSITION_METHODS
from ..errors import InputError
from ..extras import require
from ..graph import constant_value, drop_unused_attrs, pair as _pair, unique_name
from ..passes.base import Notes, PassResult
from ..shapes import infer_shapes
from .cost import chain_cost as _chain_cost

NAME = "low_rank_decomposition"
aten = torch.ops.aten
_N_RANKS = {"tucker": 2, "cp": 1, "tt": 3}  # each method, and how many ranks its chain has
METHODS = DECOMPOSITION_METHODS
assert set(METHODS) == set(_N_RANKS)
CP_SWEEPS = 25  # ALS sweeps per layer: TensorLy's ALS takes seconds per sweep on a 512 x 512 x 3 x 3 kernel


@dataclass
class LayerReport:
    node: str
    shape: tuple[int, ...]
    rank: tuple[int, ...]
    params: tuple[int, int]  # before, after
    macs: tuple[int, int]
    error: float  # relative reconstruction error

    def as_dict(self) -> dict:
        return {"node": self.node, "shape": list(self.shape), "rank": list(self.rank), "params": list(self.params),
                "macs": list(self.macs), "error": self.error}


def parse_rank(text) -> str | int | float:
    """'auto' | '0.25' (a parameter fraction) | '16' (a rank)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = text
    elif text == "auto":
        return "auto"
    else:
        try:
            value = float(text) if "." in str(text) else int(text)
        except ValueError:
            raise InputError(f"rank must be auto, a fraction like 0.25, or an integer; got '{text}'") from None
    if isinstance(value, float) and not 0 < value < 1 or isinstance(value, int) and value < 1:
        raise InputError(f"rank {value}: a fraction must lie in (0, 1), a rank must be at least 1")
    return value


# ----------------------------------------------------------------------------- ranks and costs


def _ranks_for(method: str, n: int, o: int, i: int, kh: int, kw: int) -> tuple[int, ...]:
    if method == "tucker":
        return (min(n, o), min(n, i))
    if method == "cp":
        return (n,)
    return (min(n, i), min(n, i * kh, o * kw), min(n, o))


def _auto_ranks(method: str, w: np.ndarray) -> tuple[int, ...]:
    from .vbmf import evbmf_rank

    o, i, kh, kw = w.shape
    ro = evbmf_rank(w.reshape(o, -1))  # 0: nothing above the noise level; the pass then keeps the layer
    ri = evbmf_rank(np.moveaxis(w, 1, 0).reshape(i, -1))
    if min(ro, ri) == 0:
        return (0,) * _N_RANKS[method]
    if method == "tucker":
        return (ro, ri)
    if method == "cp":
        return (max(ro, ri),)
    return (ri, min(max(ro, ri), ri * kh, ro * kw), ro)


def _rank_too_low(rank, ranks: tuple[int, ...]) -> str | None:
    """Why a chosen (not a given) rank is no factorization worth making, or None."""
    if rank == "auto" and min(ranks) == 0:
        return "EVBMF finds no component above the noise level in one of its unfoldings (rank 0)"
    if isinstance(rank, float) and min(ranks) < 2:
        return (f"a {rank:g} parameter budget affords only rank {ranks}: every output channel would be a multiple of "
                "one feature map")
    return None  # an int rank is the user's: it is applied as given


def choose_rank(method: str, rank, w: np.ndarray) -> tuple[int, ...]:
    o, i, kh, kw = w.shape
    if rank == "auto":
        return _auto_ranks(method, w)
    if isinstance(rank, int):
        return _ranks_for(method, rank, o, i, kh, kw)
    budget = rank * w.size  # the largest uniform rank whose chain keeps at most this many parameters
    best = (1,) * _N_RANKS[method]
    for n in range(1, max(o, i) * max(kh, kw) + 1):
        candidate = _ranks_for(method, n, o, i, kh, kw) if method != "tucker" else \
            (max(1, round(n * o / max(o, i))), max(1, round(n * i / max(o, i))))
        if _chain_cost(method, candidate, o, i, kh, kw, 1, 1, 1)[0] > budget:
            break
        best = candidate
    return best


# ----------------------------------------------------------------------------- factorizations


def _factorize(method: str, w: np.ndarray, rank: tuple[int, ...]):
    """The chain's weights (float64 numpy) and the reconstruction."""
    tl = require("tensorly", "decompose")
    from tensorly.decomposition import parafac, partial_tucker, tensor_train

    tl.set_backend("numpy")
    o, i, kh, kw = w.shape
    if method == "tucker":
        ro, ri = rank
        (core, (u, v)), _ = partial_tucker(w, rank=[ro, ri], modes=[0, 1], init="svd", n_iter_max=50)
        recon = np.einsum("abyx,oa,ib->oiyx", core, u, v, optimize=True)
        return [v.T.reshape(ri, i, 1, 1), core, u.reshape(o, ro, 1, 1)], recon
    if method == "cp":
        (r,) = rank
        with warnings.catch_warnings():
            # the SVD init fills the kh and kw factors' columns beyond rank 3 at random, as it says: expected here
            warnings.filterwarnings("ignore", "Trying to compute SVD with n_eigenvecs", UserWarning)
            cp = parafac(w, rank=r, init="svd" if r <= min(o, i) else "random", n_iter_max=CP_SWEEPS, tol=1e-6,
                         random_state=0, normalize_factors=False)
        a, b, y, x = cp.factors
        a = a * cp.weights[None, :]
        recon = np.einsum("or,ir,yr,xr->oiyx", a, b, y, x, optimize=True)
        return [b.T.reshape(r, i, 1, 1), y.T.reshape(r, 1, kh, 1), x.T.reshape(r, 1, 1, kw), a.reshape(o, r, 1, 1)], recon
    r1, r2, r3 = rank
    tt = tensor_train(np.transpose(w, (1, 2, 3, 0)), rank=[1, r1, r2, r3, 1])
    g1, g2, g3, g4 = tt.factors  # (1, I, r1), (r1, kh, r2), (r2, kw, r3), (r3, O, 1)
    r1, r2, r3 = g1.shape[2], g2.shape[2], g3.shape[2]  # TensorLy caps ranks at the tensor's
    recon = np.einsum("aib,byc,cxd,doe->oiyx", g1, g2, g3, g4, optimize=True)
    return [g1[0].T.reshape(r1, i, 1, 1), np.transpose(g2, (2, 0, 1))[..., None],
            np.transpose(g3, (2, 0, 1))[:, :, None, :], g4[..., 0].T.reshape(o, r3, 1, 1)], recon


def factor_shapes(method: str, ranks: tuple[int, ...], shape: tuple[int, int, int, int]) -> list[tuple[int, ...]]:
    """The shape of each conv weight in the chain of an O x I x kh x kw conv at `ranks` (_factorize's
    output without the factorization: what a latency measurement needs)."""
    o, i, kh, kw = shape
    if method == "tucker":
        ro, ri = ranks
        return [(ri, i, 1, 1), (ro, ri, kh, kw), (o, ro, 1, 1)]
    if method == "cp":
        (r,) = ranks
        return [(r, i, 1, 1), (r, 1, kh, 1), (r, 1, 1, kw), (o, r, 1, 1)]
    r1, r2, r3 = ranks
    return [(r1, i, 1, 1), (r2, r1, kh, 1), (r3, r2, 1, kw), (o, r3, 1, 1)]


def _chain(method, factors, stride, pad):
    """(weight, stride, padding, groups) of each conv in the chain."""
    sh, sw = stride
    ph, pw = pad
    if method == "tucker":
        return [(factors[0], [1, 1], [0, 0], 1), (factors[1], [sh, sw], [ph, pw], 1), (factors[2], [1, 1], [0, 0], 1)]
    if method == "cp":
        r = factors[0].shape[0]
        return [(factors[0], [1, 1], [0, 0], 1), (factors[1], [sh, 1], [ph, 0], r), (factors[2], [1, sw], [0, pw], r),
                (factors[3], [1, 1], [0, 0], 1)]
    return [(factors[0], [1, 1], [0, 0], 1), (factors[1], [sh, 1], [ph, 0], 1), (factors[2], [1, sw], [0, pw], 1),
            (factors[3], [1, 1], [0, 0], 1)]


def _param(gm: fx.GraphModule, value: torch.Tensor, before: fx.Node) -> fx.Node:
    name = unique_name(gm, "lowrank")
    gm.register_parameter(name, torch.nn.Parameter(value.contiguous()))
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(name)


@dataclass
class _Planned:
    node: fx.Node
    method: str
    w: np.ndarray  # float64
    dtype: torch.dtype
    ranks: tuple[int, ...]
    params: tuple[int, int]  # before, after
    macs: tuple[int, int]


def plan(gm: fx.GraphModule, method: str | dict[str, str], rank, notes: Notes | None = None) -> list[_Planned]:
    """The convs the pass would factorize, with their ranks and costs; each one it keeps goes to notes."""
    for m in ([method] if isinstance(method, str) else method.values()):
        if m not in METHODS:
            raise InputError(f"unknown method '{m}'; valid methods: {', '.join(METHODS)}")
    rank = parse_rank(rank)
    notes = Notes(NAME) if notes is None else notes
    shapes = infer_shapes(gm)
    planned = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target != aten.convolution.default:
            continue
        weight = constant_value(gm, node.args[1])
        _, _, dil, transposed, _, groups = node.args[3:9]
        if weight is None or weight.dim() != 4:
            continue
        o, i, kh, kw = weight.shape
        layer_method = method if isinstance(method, str) else method.get(node.name)
        why = ("it is 1x1 (a matrix)" if kh * kw == 1 else "it is grouped" if groups != 1 else
               "it is transposed or dilated" if transposed or any(d != 1 for d in dil) else
               "no factorization of it measured faster than the conv" if layer_method is None else None)
        if why is None:
            w = weight.detach().to(torch.float64).numpy()
            ranks = choose_rank(layer_method, rank, w)
            why = _rank_too_low(rank, ranks)
        if why:
            notes.declined(f"{node.name} kept: {why}", node.name)
            continue
        hin, win = shapes[node.args[0]].sample_shape[1:]
        hout, wout = shapes[node].sample_shape[1:]
        params_after, macs_after = _chain_cost(layer_method, ranks, o, i, kh, kw, hin * win, hout * win, hout * wout)
        macs_before = hout * wout * w.size
        if macs_after >= macs_before:
            notes.declined(f"{node.name} kept: the {layer_method} chain at rank {ranks} costs {macs_after:,} MACs >= the "
                           f"conv's {macs_before:,}", node.name)
            continue
        planned.append(_Planned(node, layer_method, w, weight.dtype, ranks, (w.size, params_after), (macs_before, macs_after)))
    return planned


def low_rank_decomposition(gm: fx.GraphModule, ctx=None, *, method: str | dict[str, str] = "tucker", rank="auto",
                           report: list[LayerReport] | None = None) -> PassResult:
    """Replaces each k x k conv whose factorized chain costs fewer MACs by that chain."""
    notes = Notes(NAME)
    planned = plan(gm, method, rank, notes)
    for p in planned:
        node, (o, i, kh, kw) = p.node, p.w.shape
        factors, recon = _factorize(p.method, p.w, p.ranks)
        error = float(np.linalg.norm(p.w - recon) / max(np.linalg.norm(p.w), 1e-30))
        bias, stride, pad = node.args[2:5]
        x = node.args[0]
        for k, (fw, st, pd, g) in enumerate(_chain(p.method, factors, _pair(stride), _pair(pad))):
            last = k == len(factors) - 1
            wnode = _param(gm, torch.from_numpy(np.ascontiguousarray(fw)).to(p.dtype), node)
            with gm.graph.inserting_before(node):
                x = gm.graph.call_function(aten.convolution.default,
                                           (x, wnode, bias if last else None, st, pd, [1, 1], False, [0, 0], g))
        node.replace_all_uses_with(x)
        gm.graph.erase_node(node)
        actual = {"tucker": (factors[1].shape[0], factors[0].shape[0]), "cp": p.ranks,
                  "tt": tuple(int(f.shape[0]) for f in factors[:-1])}[p.method]
        layer = LayerReport(node.name, (o, i, kh, kw), actual, p.params, p.macs, error)
        if report is not None:
            report.append(layer)
        notes.applied(f"{node.name} {o}x{i}x{kh}x{kw} -> {p.method} rank {actual}: params {p.params[0]:,} -> "
                      f"{p.params[1]:,}, MACs {p.macs[0]:,} -> {p.macs[1]:,}, error {error:.3f}", node.name)
    if planned:
        drop_unused_attrs(gm)
    return PassResult(gm, bool(planned), notes)


def total_params(gm: fx.GraphModule) -> int:
    return sum(p.numel() for p in gm.parameters()) + sum(b.numel() for b in gm.buffers())

