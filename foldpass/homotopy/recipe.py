"""The whole homotopy recipe in one call, as `foldpass train` and `foldpass deskip` run it: data,
schedule, an optional conversion of residual adds into blends, the training loop, and the trained
model ready to be written as a .pt2 that `foldpass optimize` folds (t == 0: every skip removed).

    train_homotopy(model)   train a blended network from scratch down to t = 0
    deskip(model)           a trained residual network -> the same function as blends (exact at t0),
                            fine-tuned down to t = 0; says how far its accuracy moved

The recipes (docs/homotopy.md has the ablation that chose the default):

    paper       the paper's list 0.9, 0.7, ..., 0.01, 0, one value per stage; constant lr
    foldpass    first a teacher: a copy of the model trained at a static t = 0.5 (skips kept) for the
                same budget, unless one is given (`teacher=`, `foldpass train --teacher`); then t from
                t0 down a cosine, step by step, to 0 at 70 % of the run, the last 30 % at t = 0 (the
                skip-free network's own phase), the loss mixed half and half with distillation from
                the teacher, the batch-norm statistics re-estimated when t reaches 0 and then frozen
                (batch norm in eval mode: the network learns to predict with the statistics it is
                deployed with); cosine learning-rate decay
    no-teacher  the same without the teacher (half the training; 1.4 points less in docs/homotopy.md)
    deskip    the same path of t from the trained model's t0, with batch norm frozen from the first
              step with the trained network's statistics, never re-estimated: training never sees
              batch statistics, so the network cannot come to depend on them (a deep plain network
              trained on batch statistics can predict one class with its running ones), and the
              weights adapt step by step to fixed statistics (re-estimating them mid-run is a shock
              the narrow ResNet34 does not survive: docs/homotopy.md, de-skip)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import nn

from ..blend_weight import get_t
from ..defaults import DEFAULT_DATASET, DEFAULT_DESKIP_RECIPE, DEFAULT_RECIPE
from ..data import DataSplits, load_data
from ..errors import InputError, VerificationError
from .blend import blend_residuals
from .schedules import make_schedule
from .training import EpochLog, evaluate, export_pt2, init_distributed, train


@dataclass(frozen=True)
class Recipe:
    schedule: str
    t0: float | None = None  # None: the schedule's own default (paper: 0.9)
    per: str = "epoch"
    zero_fraction: float = 0.0
    lr_schedule: str = "constant"
    recalibrate: bool = False
    freeze_bn: str = "no"  # when batch norm stops using batch statistics: no, at-zero, start, below (train's docs)
    freeze_t: float = 0.0  # "below": frozen once t <= freeze_t
    distill: float = 0.0  # weight of distillation (from a teacher, deskip's original, or the model itself)
    self_teacher_t: float | None = None  # the model itself, copied once t <= this, is the teacher
    teacher_t: float | None = None  # no teacher given: train a copy at this static t first, as the teacher


RECIPES = {
    "paper": Recipe("paper"),
    "foldpass": Recipe("cosine", t0=0.9, per="step", zero_fraction=0.3, lr_schedule="cosine", freeze_bn="at-zero",
                       distill=0.5, teacher_t=0.5),
    "no-teacher": Recipe("cosine", t0=0.9, per="step", zero_fraction=0.3, lr_schedule="cosine", freeze_bn="at-zero"),
    "deskip": Recipe("cosine", per="step", zero_fraction=0.3, lr_schedule="cosine", freeze_bn="start"),
}


def recipe(name: str = DEFAULT_RECIPE, **overrides) -> Recipe:
    """A named recipe, with any field replaced (None leaves it)."""
    if name not in RECIPES:
        raise InputError(f"unknown recipe '{name}'; valid recipes: {', '.join(RECIPES)}")
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})


def _resolve(chosen: Recipe | str) -> Recipe:
    """A Recipe as it is, or the named one (an unknown name: InputError, as `recipe` says it)."""
    return chosen if isinstance(chosen, Recipe) else recipe(chosen)


@dataclass
class TrainResult:
    model: nn.Module
    history: list[EpochLog] = field(default_factory=list)  # per stage; val_* on the selection split
    rank: int = 0  # the process's rank under torchrun: only rank 0 writes
    recipe: Recipe | None = None
    test_acc: float | None = None  # the final evaluation, on the test split (after every choice)
    data: dict = field(default_factory=dict)  # DataSplits.describe(): which images each split holds
    input_shape: tuple[int, int, int] = (1, 28, 28)  # C, H, W: what the written .pt2 takes

    @property
    def t(self) -> float | None:
        return get_t(self.model)

    def save_pt2(self, path: str, force: bool = False) -> None:
        export_pt2(self.model, path, force=force, input_shape=self.input_shape)

    def history_dicts(self) -> list[dict]:
        return [vars(h) for h in self.history]


@dataclass
class DeskipResult(TrainResult):
    original_val_acc: float = 0.0  # on the selection split
    conversion_error: float = 0.0  # max |converted - original| on selection images, before fine-tuning
    original_test_acc: float | None = None  # on the test split, evaluated with the final model's, at the end

    @property
    def final_val_acc(self) -> float:
        return self.history[-1].val_acc if self.history else self.original_val_acc

    @property
    def change(self) -> float:
        """Test accuracy at t = 0 minus the original's, in points."""
        return ((self.test_acc or 0.0) - (self.original_test_acc or 0.0)) * 100


def _check(epochs: int, batch_size: int, limit: int | None, steps_per_t: int | None) -> None:
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("limit", limit), ("steps_per_t", steps_per_t)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be at least 1; got {value}")


def splits_of(data: str | DataSplits, limit: int | None = None, **options) -> DataSplits:
    """The data as three splits: a DataSplits as it is (cut to `limit`), or load_data(data, **options)."""
    if isinstance(data, DataSplits):
        return data.limited(limit)
    return load_data(data, limit=limit, **{k: v for k, v in options.items() if v is not None})


def train_homotopy(model: nn.Module, *, recipe: Recipe | str = DEFAULT_RECIPE, epochs: int = 10,
                   steps_per_t: int | None = None, data: str | DataSplits = DEFAULT_DATASET,
                   data_dir: str | None = None, download: bool = False, limit: int | None = None,
                   batch_size: int = 64, lr: float = 1e-3, seed: int = 0, convert: bool = False, exact: bool = False,
                   checkpoint: str | None = None, resume: str | None = None, progress: bool = False,
                   teacher: nn.Module | None = None, workers: int = 0, final_test: bool = True,
                   log: Callable[[EpochLog], None] | None = None) -> TrainResult:
    """Trains `model` for `epochs` stages (passes over the data, or `steps_per_t` steps each) along
    the recipe's schedule of t down to 0, on the data's train split; the log is on its selection
    split and, once training is over, the result is evaluated on its test split (`test_acc`).

    data: a built-in name, folder:PATH, PATH.npz, pkg.module:callable (load_data) or a DataSplits.

    convert: blend the model's residual adds first (blend_residuals; exact=True keeps a pretrained
    model's function at t0). Without it the model must already have a blend weight t.
    teacher: distill from this trained model (a static-t model with its skips, say), with the
    recipe's distill weight; with none, a recipe with a teacher_t trains one first (a copy of the
    model at that static t, the same budget; trained again on resume).
    final_test: False leaves the test split unread (test_acc None): for a caller whose choices are
    not over yet (foldpass.compress reads it once, at its own end).
    """
    _check(epochs, batch_size, limit, steps_per_t)
    plan_recipe = _resolve(recipe)
    rank, device = init_distributed()
    splits = splits_of(data, limit, data_dir=data_dir, download=download)
    train_set, val_set = splits.train, splits.selection
    steps = steps_per_t or -(-len(train_set) // batch_size)
    plan = make_schedule(plan_recipe.schedule, epochs, plan_recipe.t0, plan_recipe.per, steps,
                         zero_fraction=plan_recipe.zero_fraction)
    if convert:
        model = blend_residuals(model, plan.value(0), exact=exact)
    elif get_t(model) is None:
        raise InputError("the model has no blend weight t; pass convert=True to blend its residual adds")
    if teacher is None and plan_recipe.distill and plan_recipe.teacher_t is not None:
        teacher = copy.deepcopy(model)  # the same start, kept at a static t with its skips
        train(teacher, train_set, val_set, make_schedule("static", epochs, plan_recipe.teacher_t), epochs, lr=lr,
              batch_size=batch_size, seed=seed, device=device, steps_per_t=steps_per_t, workers=workers,
              progress=progress and rank == 0)
    history = train(model, train_set, val_set, plan, epochs, lr=lr, batch_size=batch_size, seed=seed, device=device,
                    steps_per_t=steps_per_t, lr_schedule=plan_recipe.lr_schedule, recalibrate=plan_recipe.recalibrate,
                    freeze_bn=plan_recipe.freeze_bn, freeze_t=plan_recipe.freeze_t, teacher=teacher,
                    self_teacher_t=plan_recipe.self_teacher_t,
                    distill=plan_recipe.distill,
                    checkpoint=checkpoint, resume=resume, progress=progress and rank == 0, workers=workers,
                    log=log if rank == 0 else None)
    test_acc = evaluate(model, splits.test, device=device, workers=workers)[1] if final_test else None
    return TrainResult(model, history, rank, plan_recipe, test_acc, splits.describe(), tuple(splits.shape))


def deskip(model: nn.Module, *, epochs: int = 5, t0: float = 0.5, recipe: Recipe | str = DEFAULT_DESKIP_RECIPE,
           data: str | DataSplits = DEFAULT_DATASET, **options) -> DeskipResult:
    """A trained residual network -> the same function with its residual adds as blends at t0
    (checked on selection images before any training), fine-tuned along the recipe to t = 0. The
    original and the de-skipped network are evaluated on the test split at the end (`change`).

    A model that already has blends (a weight t) starts from its own t. `options` go to
    train_homotopy (steps_per_t, data_dir, lr, seed, checkpoint, progress, log, ...).
    """
    base = _resolve(recipe)
    splits = splits_of(data, options.pop("limit", None), data_dir=options.pop("data_dir", None),
                       download=options.pop("download", False))
    val_set = splits.selection
    model.eval()
    original = copy.deepcopy(model)  # evaluated on the test split once everything is chosen
    original_acc = evaluate(model, val_set)[1]
    if base.distill:  # the residual original, before any conversion, is the teacher
        options["teacher"] = copy.deepcopy(model)
    start = get_t(model)
    error = 0.0
    if start is None:
        converted = blend_residuals(model, t0, exact=True)
        if get_t(converted) is None:
            raise InputError("no residual add found to blend: the model has no skip connection to remove")
        x = torch.stack([val_set[i][0] for i in range(min(256, len(val_set)))])
        with torch.no_grad():
            reference, out = model(x), converted.eval()(x)
        error = float((reference - out).abs().max())
        scale = float(reference.abs().max()) or 1.0
        if not error <= 1e-5 * scale:
            raise VerificationError(f"the converted model differs from the original by {error:.3g} "
                                    f"(scale {scale:.3g}) before any training")
        model, start = converted, t0
    if base.schedule in ("paper", "paper-t05"):  # printed lists: 0.9, ... and 0.5, ...
        if start not in (0.9, 0.5):
            raise InputError(f"the paper's lists start at 0.9 or 0.5, the model at t = {start:g}; use recipe 'foldpass'")
        base = replace(base, schedule="paper" if start == 0.9 else "paper-t05")
    result = train_homotopy(model, recipe=replace(base, t0=start), epochs=epochs, data=splits, **options)
    original_test = (evaluate(original, splits.test, workers=options.get("workers", 0))[1]
                     if options.get("final_test", True) else None)
    return DeskipResult(result.model, result.history, result.rank, result.recipe, result.test_acc, result.data,
                        result.input_shape, original_acc, error, original_test)
