"""The whole homotopy recipe in one call, as `foldpass train` runs it: data, schedule, an optional
conversion of residual adds into blends, the training loop, and the trained model ready to be
written as a .pt2 that `foldpass optimize` folds (t == 0: every skip removed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ..blend_weight import get_t
from ..errors import InputError
from .blend import blend_residuals
from .data import load_dataset
from .schedules import make_schedule
from .training import EpochLog, export_pt2, init_distributed, train


@dataclass
class TrainResult:
    model: nn.Module
    history: list[EpochLog] = field(default_factory=list)
    rank: int = 0  # the process's rank under torchrun: only rank 0 writes

    @property
    def t(self) -> float | None:
        return get_t(self.model)

    def save_pt2(self, path: str, force: bool = False) -> None:
        export_pt2(self.model, path, force=force)

    def history_dicts(self) -> list[dict]:
        return [vars(h) for h in self.history]


def train_homotopy(model: nn.Module, *, schedule: str = "paper", epochs: int = 10, t0: float | None = None,
                   per: str = "epoch", data: str = "digits", data_dir: str | None = None, download: bool = False,
                   limit: int | None = None, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                   convert: bool = False, exact: bool = False, checkpoint: str | None = None,
                   resume: str | None = None, progress: bool = False,
                   log: Callable[[EpochLog], None] | None = None) -> TrainResult:
    """Trains `model` along a schedule of t down to 0 (see the package docstring).

    convert: blend the model's residual adds first (blend_residuals; exact=True keeps a pretrained
    model's function at t0). Without it the model must already have a blend weight t.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("limit", limit)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be at least 1; got {value}")
    rank, device = init_distributed()
    train_set, val_set = load_dataset(data, data_dir, download, limit)
    steps = -(-len(train_set) // batch_size)
    plan = make_schedule(schedule, epochs, t0, per, steps)
    if convert:
        model = blend_residuals(model, plan.value(0), exact=exact)
    elif get_t(model) is None:
        raise InputError("the model has no blend weight t; pass convert=True to blend its residual adds")
    history = train(model, train_set, val_set, plan, epochs, lr=lr, batch_size=batch_size, seed=seed, device=device,
                    checkpoint=checkpoint, resume=resume, progress=progress and rank == 0,
                    log=log if rank == 0 else None)
    return TrainResult(model, history, rank)
