"""The steps of `foldpass compress`, each a function (job, state, option) -> the candidate state, that a
user can also call one by one. Each step's options run from the strongest to the mildest: compress
tries them in that order and keeps the first that is faster and within the accuracy budget.

    exact    the folds of `foldpass optimize` (batch norm, re-parameterization, linear regions),
             verified against the PyTorch model: lossless
    depth    residual blocks dropped, each replaced by its shortcut (blocks.drop_blocks), the least
             sensitive first (each block dropped alone, batch norm re-estimated, measured on the
             selection split), then batch norm re-estimated and fine-tuned with distillation:
             (1-t)*s_b*b + t*s_s*s  ->  s
    prune    structured channel pruning with Torch-Pruning (its dependency graph keeps residual adds,
             concatenations and depthwise groups consistent), a uniform ratio, then the same ratio with
             the layers most sensitive to it (measured on the selection split) at half, fine-tuned
             with distillation from the original
    deskip   residual adds -> blends, fine-tuned down to t = 0 (foldpass.homotopy.deskip), then the
             skips leave the graph:  (1-t)*s_b*b + t*s_s*s, t == 0  ->  s_b*b
    lowrank  CP / Tucker-2 / TT factorization of the k x k convs (foldpass.decomposition); each
             layer's method chosen by its latency measured on the target (layer_choice), batch norm
             recalibrated, fine-tuned
    int8     onnxruntime.quantization.quantize_static: QDQ, per-channel int8 weights, uint8
             activations calibrated on training images; judged by accuracy (lossy, not verified)

A step that does not apply raises Decline with the reason, which the table shows.
"""

from __future__ import annotations

import collections
import copy
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..errors import FoldpassError, InputError, first_line
from .blocks import plain_at_zero

DISTILL = 0.5  # weight of distillation from the original in every fine-tuning
MIN_STEPS = 1000  # fine-tuning runs at least this many steps (batch 64): 5 epochs of 1,258 images are 100 steps
CALIBRATION_IMAGES = 256


class Decline(FoldpassError):
    """The step does not apply to this network (the message says why). final=False: only this option
    does not apply; the next one is tried."""

    def __init__(self, message: str, final: bool = True):
        super().__init__(message)
        self.final = final


@dataclass
class Job:
    """What every step reads: the data, the original, where files go, and how to measure."""

    splits: object  # foldpass.data.DataSplits: train for fine-tuning, selection for every choice
    original: nn.Module  # never changed: the distillation teacher
    example: torch.Tensor  # 2 x C x H x W
    workdir: str
    batches: tuple[int, ...] = (1, 64)
    threads: int = 1
    epochs: int = 5  # at least: see fine_tune_epochs
    lr: float = 1e-3
    seed: int = 0
    progress: bool = False
    log: Callable[[str], None] = print
    latency: Callable | None = None  # (candidate path, current path) -> measure.Latency; set by compress


@dataclass
class State:
    """The current network: its PyTorch model (None once only its ONNX file is left), its verified
    ONNX file, and the structural changes made to the original (to rebuild it on resume)."""

    model: nn.Module | None
    onnx: str
    structure: list[dict] = field(default_factory=list)
    verification: dict | None = None  # the last exact check of `onnx` against `model`
    macs: int | None = None  # per sample, of `model` (from the optimize run that wrote `onnx`)


@dataclass
class Exported:
    path: str
    verification: dict
    macs: int  # per sample, foldpass's cost model on the traced model (optimize's report: no second trace)


def export(job: Job, model: nn.Module, name: str) -> Exported:
    """The model through foldpass's own pipeline into job.workdir/name.onnx, verified (optimize's gate)."""
    from ..optimizer import optimize

    path = os.path.join(job.workdir, f"{name}.onnx")
    if os.path.exists(path):
        os.remove(path)  # a retried step's file of an earlier try: ours, in our working folder
    result = optimize(model.eval(), job.example)
    checked = result.save_onnx(path, force=True, compare_direct=False)
    return Exported(path, checked.as_dict() if checked else {}, result.report.before.macs)


def fine_tune_epochs(job: Job) -> int:
    """job.epochs, or more where that is under MIN_STEPS steps (a small data set); 0 stays 0."""
    per_epoch = -(-len(job.splits.train) // 64)
    return max(job.epochs, -(-MIN_STEPS // per_epoch)) if job.epochs else 0


def _fine_tune(job: Job, model: nn.Module, what: str) -> None:
    from ..homotopy.training import train

    epochs = fine_tune_epochs(job)
    if epochs:
        job.log(f"{what}: fine-tuning {epochs} epochs with distillation from the original")
        train(model, job.splits.train, job.splits.selection, None, epochs, lr=job.lr, seed=job.seed,
              teacher=job.original, distill=DISTILL, lr_schedule="cosine", progress=job.progress)
    model.eval()


def _needs_model(state: State, step: str) -> nn.Module:
    if state.model is None:
        raise Decline(f"{step} needs the PyTorch model, and only an ONNX file is left (after int8, or resumed "
                      "after lowrank)")
    return state.model


# ----------------------------------------------------------------------------- exact


def exact(job: Job, state: State, option=None) -> State:
    """The model exported through foldpass's passes, verified: the lossless base of every later step."""
    model = _needs_model(state, "exact")
    out = export(job, model, "exact")
    return State(model, out.path, list(state.structure), out.verification, out.macs)


# ----------------------------------------------------------------------------- depth


@dataclass(frozen=True)
class Depth:
    """A share of the residual blocks dropped: the least sensitive ones (block_sensitivities)."""

    share: float

    def __str__(self) -> str:
        return f"{self.share:g} of the blocks"


def block_sensitivities(job: Job, model: nn.Module) -> dict[str, float]:
    """Each residual block's selection accuracy drop (points) when it alone is dropped (its batch norms
    re-estimated on training images, as depth() does before fine-tuning), in graph order."""
    from ..homotopy.training import evaluate, recalibrate_batchnorm
    from .blocks import drop_blocks, residual_blocks
    from .measure import shared

    def measure() -> dict[str, float]:
        base = evaluate(model, job.splits.selection)[1]
        drops = {}
        for name in residual_blocks(model):
            trial = drop_blocks(copy.deepcopy(model), [name])
            recalibrate_batchnorm(trial, job.splits.train, max_batches=4)
            drops[name] = (base - evaluate(trial, job.splits.selection)[1]) * 100
        return drops

    return shared(measure)  # under torchrun: rank 0's, so that every rank drops the same blocks


def depth(job: Job, state: State, share: float | Depth = 0.5) -> State:
    """`share` of the residual blocks (rounded down) dropped, the least sensitive first, each one replaced
    by its shortcut (blocks.drop_blocks); a network without blends gets them first, exactly
    (blend_residuals at t = 0.5). Batch norm is re-estimated on the training images, then the network
    is fine-tuned with distillation from the original."""
    from ..homotopy.training import recalibrate_batchnorm
    from .blocks import drop_blocks, with_blends

    share = share.share if isinstance(share, Depth) else share
    try:
        blended = with_blends(copy.deepcopy(_needs_model(state, "depth")))
    except InputError as exc:
        raise Decline(first_line(exc)) from None
    drops = block_sensitivities(job, blended)
    count = int(share * len(drops))
    if not count:
        raise Decline(f"{share:g} of {len(drops)} residual block{'s' * (len(drops) != 1)} is none to drop")
    order = list(drops)
    chosen = sorted(sorted(drops, key=lambda n: (drops[n], order.index(n)))[:count], key=order.index)
    job.log(f"depth {share:g}: dropping {count} of {len(drops)} blocks ({', '.join(chosen[:4])}"
            f"{', ...' if count > 4 else ''}; each alone cost {max(drops[n] for n in chosen):.1f} points at most)")
    model = drop_blocks(blended, chosen)
    recalibrate_batchnorm(model, job.splits.train)
    _fine_tune(job, model, f"depth {share:g}")
    out = export(job, model, f"depth-{share:g}")
    return State(model, out.path, [*state.structure, {"step": "depth", "blocks": chosen}], out.verification, out.macs)


# ----------------------------------------------------------------------------- deskip


def deskip(job: Job, state: State, epochs: int = 5) -> State:
    """Residual adds -> blends at t0 = 0.5 (exact), fine-tuned to t = 0 over `epochs` stages with
    foldpass's deskip recipe (docs/homotopy.md: resnet18 needs 5, the narrow ResNet34 10), then the
    skips removed from the graph. compress tries fine_tune_epochs(job), then twice as many."""
    from ..homotopy.recipe import deskip as deskip_recipe

    model = copy.deepcopy(_needs_model(state, "deskip"))
    try:
        result = deskip_recipe(model, epochs=epochs, data=job.splits, final_test=False, seed=job.seed,
                                lr=job.lr, progress=job.progress)
    except InputError as exc:
        raise Decline(first_line(exc)) from None
    plain = plain_at_zero(result.model)
    out = export(job, plain, "deskip")
    return State(plain, out.path, [*state.structure, {"step": "deskip"}], out.verification, out.macs)


# ----------------------------------------------------------------------------- prune


def _prunable(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@dataclass(frozen=True)
class PerLayer:
    """Pruning at `ratio` where it costs the least, at ratio / 2 where it costs the most: each group of
    coupled layers is pruned alone at `ratio` (no fine-tuning) and its selection accuracy measured (a
    sensitivity analysis, as in Li et al., "Pruning Filters for Efficient ConvNets", 2017); the groups
    whose drop is above the median keep twice the channels."""

    ratio: float

    def __str__(self) -> str:
        return f"{self.ratio:g} per layer"


def _groups(tp, model: nn.Module, example: torch.Tensor, keep: list[nn.Module]) -> list[str]:
    """The name of each prunable group's root layer, in Torch-Pruning's own order (the layer a
    pruning_ratio_dict entry must name)."""
    names = {m: n for n, m in model.named_modules()}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    return [names[g[0].dep.target.module] for g in graph.get_all_groups(ignored_layers=keep,
                                                                       root_module_types=[nn.Conv2d, nn.Linear])]


def sensitivities(job: Job, model: nn.Module, ratio: float, prune_with: Callable) -> dict[str, float]:
    """Each group's selection accuracy drop (points) when it alone loses `ratio` of its channels."""
    from ..homotopy.training import evaluate
    from .measure import shared

    def measure() -> dict[str, float]:
        base = evaluate(model, job.splits.selection)[1]
        drops = {}
        for root in prune_with(model, None):
            trial = copy.deepcopy(model)
            prune_with(trial, {root: ratio}, default=0.0)
            drops[root] = (base - evaluate(trial, job.splits.selection)[1]) * 100
        return drops

    return shared(measure)  # under torchrun: rank 0's, so that every rank spares the same layers


def prune(job: Job, state: State, ratio: float | PerLayer = 0.5) -> State:
    """Structured pruning of `ratio` of each layer's channels (Torch-Pruning, L2 magnitude of each
    coupled group), the classifier's outputs kept, then fine-tuned with distillation. A PerLayer ratio:
    the more sensitive half of the groups (sensitivities()) at half of it."""
    from ..extras import require

    tp = require("torch_pruning", "compress")
    model = copy.deepcopy(_needs_model(state, "prune")).eval()
    if not _prunable(model):
        raise Decline("the model holds no nn.Conv2d layers (a .pt2 or a factorized graph): Torch-Pruning needs "
                      "the modules; pass the model as pkg.module:build --weights")
    classes = job.splits.num_classes
    # channel counts in multiples of 8 where the layers are wide enough: onnxruntime's CPU convolutions
    # work in blocks of 8 or 16 channels (NCHWc), so 12 channels cost what 16 do
    wide = min((m.out_channels for m in _prunable(model) if m.out_channels != classes), default=0) >= 16

    def prune_with(target: nn.Module, ratios: dict[str, float] | None, default: float = 0.0):
        """Prunes `target` in place, each named group root at its ratio (None: lists the roots)."""
        keep = [m for m in target.modules() if isinstance(m, nn.Linear) and m.out_features == classes]
        keep += [m for m in _prunable(target) if m.out_channels == classes]
        if ratios is None:
            return _groups(tp, target, job.example, keep)
        layers = dict(target.named_modules())
        pruner = tp.pruner.MetaPruner(target, job.example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=default, ignored_layers=keep, round_to=8 if wide else None,
                                      pruning_ratio_dict={layers[n]: r for n, r in ratios.items()})
        pruner.step()

    per_layer = isinstance(ratio, PerLayer)
    value = ratio.ratio if per_layer else ratio
    try:
        if per_layer:
            drops = sensitivities(job, model, value, prune_with)
            if len(drops) < 2:
                raise Decline("one prunable group: no layer to spare", final=False)
            median = sorted(drops.values())[len(drops) // 2]
            spared = sorted(n for n, d in drops.items() if d > median)
            if not spared:  # the per-layer ratios would be the uniform ones, tried already
                raise Decline(f"no group is more sensitive than the median at {value:g} "
                              f"({max(drops.values()):.2f} points at most)", final=False)
            job.log(f"prune {ratio}: {len(spared)} of {len(drops)} groups at {value / 2:g} (the most sensitive: "
                    f"{', '.join(spared[:4])}{', ...' if len(spared) > 4 else ''})")
            prune_with(model, {n: value / 2 for n in spared}, default=value)
        else:
            prune_with(model, {}, default=value)
    except (RuntimeError, ValueError, KeyError, IndexError) as exc:
        raise Decline(f"Torch-Pruning cannot prune this model ({type(exc).__name__}: {first_line(exc)})") from None
    _fine_tune(job, model, f"prune {ratio}")
    out = export(job, model, f"prune-{value:g}{'-per-layer' if per_layer else ''}")
    change = {"step": "prune", "ratio": value, **({"per_layer": True} if per_layer else {})}
    return State(model, out.path, [*state.structure, change], out.verification, out.macs)


# ----------------------------------------------------------------------------- lowrank


def lowrank(job: Job, state: State, rank="auto") -> State:
    """Each k x k conv given the method (CP, Tucker-2, TT) whose chain at `rank` ("auto": VBMF; a
    fraction: of each conv's parameters) runs fastest on the target, timed layer by layer
    (layer_choice; a layer no chain beats stays a conv); the factorized model then fine-tuned (batch
    norm recalibrated first, then trained with distillation). compress times the whole file after."""
    from ..decomposition import decompose
    from ..decomposition.batchnorm_training import recalibrate_batchnorm, trainable_batchnorm
    from ..extras import require
    from .layer_choice import layer_methods
    from .measure import shared

    for module in ("tensorly", "scipy"):
        require(module, "decompose")
    model = _needs_model(state, "lowrank")
    methods, _ = shared(lambda: layer_methods(model, job.example, rank, job.batches, job.threads, log=job.log))
    if not methods:
        raise Decline(f"no conv's factorization at rank {rank} runs faster than the conv on the target", final=False)
    result = decompose(model, job.example[:1], methods, rank)
    if not result.layers:
        raise Decline(f"no conv is worth factorizing at rank {rank} (each one's reason: foldpass decompose)", final=False)
    counts = collections.Counter(methods.values())
    job.log(f"lowrank at rank {rank}: {', '.join(f'{n} {m}' for m, n in counts.items())} of the convs")
    gm = result.module
    recalibrate_batchnorm(gm, job.splits.train)
    with trainable_batchnorm(gm):  # the traced graph's batch norms as modules that train
        _fine_tune(job, gm, "lowrank")
    gm.eval()
    out = export(job, gm, f"lowrank-{rank}")
    change = {"step": "lowrank", "methods": methods, "rank": rank, "replayable": False}
    return State(gm, out.path, [*state.structure, change], out.verification, out.macs)


# ----------------------------------------------------------------------------- int8


class Calibration:
    """onnxruntime.quantization's CalibrationDataReader over the first training images."""

    def __init__(self, dataset, name: str, count: int = CALIBRATION_IMAGES, batch: int = 32):
        from torch.utils.data import DataLoader, Subset

        subset = Subset(dataset, range(min(count, len(dataset))))
        self._batches = iter([{name: x.numpy()} for x, _ in DataLoader(subset, batch_size=batch)])

    def get_next(self):
        return next(self._batches, None)


def int8(job: Job, state: State, option: str = "all") -> State:
    """Post-training static quantization of the current file (onnxruntime.quantization, QDQ, per-channel
    weights). option "all": every conv and matmul; "keep-ends": the first conv and the classifier
    stay float (the milder retry)."""
    from ..extras import require
    from .measure import session

    require("onnxruntime.quantization", "compress")
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    import onnx

    model = onnx.load(state.onnx)
    weighted = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    exclude = [weighted[0], weighted[-1]] if option == "keep-ends" and len(weighted) > 2 else []
    name = session(state.onnx).get_inputs()[0].name
    path = os.path.join(job.workdir, f"int8-{option}.onnx")
    if os.path.exists(path):
        os.remove(path)
    quantize_static(state.onnx, path, Calibration(job.splits.train, name), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude)
    return State(None, path, [*state.structure, {"step": "int8", "option": option}], None)


# the steps in order, each with its options from the strongest to the mildest
# Pruning comes before de-skip: both spend the accuracy budget, and pruning is the larger lever. Measured
# (docs/compress.md, resnet18): with de-skip first (1.08x for 0.6 points), 75 % pruning no longer fitted
# in the budget and 50 % did, for 9.5x in all, where Torch-Pruning alone at 75 % gave 17x.
STEPS: dict[str, tuple[Callable, tuple]] = {
    "exact": (exact, (None,)),
    # three quarters of the blocks, then half, then a quarter: a block is a whole layer's worth of ops,
    # the one lever at batch 1 on a narrow network (docs/compress.md, the paper's ResNet34)
    "depth": (depth, (Depth(0.75), Depth(0.5), Depth(0.25))),
    # each ratio uniform, then with the most sensitive half of the layers at half of it
    "prune": (prune, (0.75, PerLayer(0.75), 0.5, PerLayer(0.5), 0.25, PerLayer(0.25))),
    "deskip": (deskip, lambda job: (fine_tune_epochs(job), 2 * fine_tune_epochs(job))),  # the milder: a longer path
    "lowrank": (lowrank, ("auto", 0.5)),
    "int8": (int8, ("all", "keep-ends")),
}
LOSSY = {"depth", "deskip", "prune", "lowrank", "int8"}
