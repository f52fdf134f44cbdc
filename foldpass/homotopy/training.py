"""Homotopy training (paper, Sections 4 and 5.3): train with blended skips while a schedule
drives t to 0, then hand the skip-free network to `foldpass optimize` as a .pt2 file.

    history = train(model, train_set, val_set, schedule, epochs=10)
    export_pt2(model, "trained.pt2")          # t == 0: `foldpass optimize` removes every skip

Distributed: under torchrun (or any initialized torch.distributed process group) the model is
wrapped in DistributedDataParallel, each rank reads its shard (DistributedSampler), and t is
broadcast from rank 0 whenever it is set, so every rank trains with the same t at every step.
Rank 0 alone prints, shows progress and writes checkpoints.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..blend_weight import set_t
from ..errors import InputError, first_line
from ..outputs import atomic_write
from .schedules import Schedule


@dataclass
class EpochLog:
    epoch: int
    t: float | None  # None when trained without a schedule (plain fine-tuning)
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def init_distributed() -> tuple[int, str]:
    """(rank, device). Under torchrun (WORLD_SIZE > 1) it joins the process group: NCCL on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world > 1 and not _distributed():
        dist.init_process_group("nccl" if cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    return _rank(), f"cuda:{local}" if cuda else "cpu"


def apply_t(model: nn.Module, t: float) -> float:
    """Sets t on every blend, the same on every rank (rank 0's value is broadcast)."""
    if _distributed():
        value = torch.tensor([t], dtype=torch.float64)
        dist.broadcast(value, src=0)
        t = float(value.item())
    if not set_t(model, t):
        raise InputError("the model has no blend weight t (no Blend module, no attribute or buffer named t); "
                         "convert it first: foldpass.homotopy.blend_residuals(model)")
    return t


def evaluate(model: nn.Module, data: Dataset, batch_size: int = 256, device: str = "cpu",
             workers: int = 0) -> tuple[float, float]:
    """(mean loss, accuracy) over the whole dataset in eval mode; every rank reads all of it, so every
    rank sees the same accuracy (a threshold schedule then steps the same on every rank)."""
    model.eval()
    loss = correct = count = 0.0
    with torch.no_grad():
        for x, y in DataLoader(data, batch_size=batch_size, num_workers=workers):
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            count += len(y)
    return loss / max(count, 1), correct / max(count, 1)


def train(model: nn.Module, train_set: Dataset, val_set: Dataset, schedule: Schedule | None, epochs: int, *,
          lr: float = 1e-3, batch_size: int = 64, seed: int = 0, device: str = "cpu", workers: int = 0,
          steps_per_t: int | None = None, lr_schedule: str = "constant", recalibrate: bool = False,
          freeze_bn: str | bool = "no", freeze_t: float = 0.0, teacher: nn.Module | None = None, distill: float = 0.0,
          self_teacher_t: float | None = None,
          checkpoint: str | None = None, resume: str | None = None, progress: bool = False,
          log: Callable[[EpochLog], None] | None = None) -> list[EpochLog]:
    """Trains `model` (in place) for `epochs` stages with t from `schedule` (None: no blends, plain
    training); returns one EpochLog per stage. `val_set` is the selection split (data.py): what the
    log shows and a threshold schedule reacts to; the test split never comes here.
    workers: DataLoader worker processes (for images decoded per item, a large image folder).

    A stage is one pass over the data, or exactly `steps_per_t` steps (batches drawn round after
    round of reshuffled data): the paper gives every t one MNIST epoch, 938 steps of batch 64.
    lr_schedule: "constant" (the paper's Adam), or "cosine": lr * (1 + cos(pi * step / all steps)) / 2.
    recalibrate: before the last evaluation, re-estimate every batch norm's running statistics at
    the final t on the training data (no labels, no weight change).
    freeze_bn: when batch norm stops using batch statistics (eval mode from then on, its affine
    weights still trained): the network then learns to predict with the statistics it is deployed
    with, not with those of each batch.
        "at-zero" (True)  once t reaches 0, re-estimated on the training data, then frozen
        "start"           from the first step, as the model has them (a trained network's)
        "below"           once t <= freeze_t, as they are then (the running averages)
    teacher, distill: knowledge distillation (Hinton et al. 2015): the loss is
    (1 - distill) * cross-entropy + distill * T^2 * KL(teacher || model) at temperature T = DISTILL_T,
    the teacher (for example the residual original) in eval mode.
    self_teacher_t: no teacher needed: once t <= self_teacher_t, a copy of the model as it is then
    (with its skips at that t, in eval mode) becomes the teacher for the rest of the run.
    """
    if lr_schedule not in LR_SCHEDULES:
        raise InputError(f"unknown lr schedule '{lr_schedule}'; valid: {', '.join(LR_SCHEDULES)}")
    freeze_bn = {True: "at-zero", False: "no"}.get(freeze_bn, freeze_bn)
    if freeze_bn not in FREEZE_BN:
        raise InputError(f"unknown freeze_bn '{freeze_bn}'; valid: {', '.join(FREEZE_BN)}")
    if not 0.0 <= distill <= 1.0 or (distill > 0) != (teacher is not None or self_teacher_t is not None):
        raise InputError(f"distill must be in [0, 1], and distillation needs a teacher and a teacher a distill "
                         f"weight (foldpass deskip uses the residual original; train_homotopy takes teacher=MODEL "
                         f"with recipe(..., distill=0.5)); got {distill:g} with"
                         f"{'' if teacher is not None else 'out'} a teacher")
    if teacher is not None:
        teacher = _eval_mode(teacher.to(device))
    torch.manual_seed(seed)
    model.to(device)
    net = nn.parallel.DistributedDataParallel(model) if _distributed() else model
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    sampler = torch.utils.data.DistributedSampler(train_set, seed=seed) if _distributed() else None
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, generator=gen,
                        num_workers=workers, persistent_workers=workers > 0)
    steps = steps_per_t or len(loader)
    total_steps = steps * epochs
    decay = (lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total_steps) / total_steps))) \
        if lr_schedule == "cosine" else (lambda k: 1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    history: list[EpochLog] = []
    start = 0
    if resume:
        start, history = _load_checkpoint(resume, model, optimizer, scheduler, schedule)
    batches = _batches(loader, sampler, start * steps // max(len(loader), 1))
    frozen = False
    for epoch in range(start, epochs):
        t = apply_t(model, schedule.value(epoch if schedule.per == "epoch" else epoch * steps)) if schedule else None
        began = time.perf_counter()
        net.train()
        if frozen:
            _batchnorm_eval(model)
        total = correct = count = 0.0
        bar = _progress(progress and _rank() == 0, steps, f"{'t stage' if steps_per_t else 'epoch'} {epoch + 1}/{epochs}")
        for i in range(steps):
            x, y = next(batches)
            if schedule is not None and schedule.per == "step":
                t = apply_t(model, schedule.value(epoch * steps + i))
            if teacher is None and self_teacher_t is not None and t is not None and t <= self_teacher_t:
                teacher = _eval_mode(copy.deepcopy(model))
            if not frozen and _freezes(freeze_bn, t, freeze_t):
                if freeze_bn == "at-zero":
                    recalibrate_batchnorm(model, train_set, device=device)
                _batchnorm_eval(model)
                frozen = True
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            out = net(x)
            loss = F.cross_entropy(out, y)
            if teacher is not None:
                with torch.no_grad():
                    target = F.log_softmax(teacher(x) / DISTILL_T, dim=1)
                soft = F.kl_div(F.log_softmax(out / DISTILL_T, dim=1), target, log_target=True, reduction="batchmean")
                loss = (1 - distill) * loss + distill * DISTILL_T ** 2 * soft
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            count += len(y)
            bar.advance(len(y), f"loss {total / count:.4f}" + (f"  t {t:g}" if t is not None else ""))
        bar.close()
        if _distributed():  # batch-norm statistics drift apart per rank: take rank 0's, as DDP does
            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)
        if recalibrate and epoch == epochs - 1:
            recalibrate_batchnorm(model, train_set, device=device)
        val_loss, val_acc = evaluate(model, val_set, device=device, workers=workers)
        if schedule is not None:
            schedule.observe(val_acc)
        entry = EpochLog(epoch + 1, t, total / count, correct / count, val_loss, val_acc, time.perf_counter() - began)
        history.append(entry)
        if log and _rank() == 0:
            log(entry)
        if checkpoint and _rank() == 0:
            _save_checkpoint(checkpoint, model, optimizer, scheduler, schedule, epoch + 1, history)
    if schedule is not None and schedule.kind != "static":
        apply_t(model, 0.0)
    model.eval()
    return history


LR_SCHEDULES = ("constant", "cosine")
FREEZE_BN = ("no", "at-zero", "start", "below")


def _freezes(mode: str, t: float | None, freeze_t: float) -> bool:
    """Whether batch norm freezes at this step (see train's freeze_bn)."""
    return mode == "start" or (t is not None and ((mode == "at-zero" and t == 0.0) or (mode == "below" and t <= freeze_t)))
DISTILL_T = 4.0  # distillation temperature: softened targets carry the teacher's class similarities


def _eval_mode(model: nn.Module) -> nn.Module:
    """model.eval(); a torch.export program's module refuses it and is already in its exported mode."""
    try:
        return model.eval()
    except NotImplementedError:
        return model


def _batchnorm_eval(model: nn.Module) -> int:
    """Puts every batch norm in eval mode (running statistics used and left as they are)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.eval()
    return len(norms)


def _batches(loader: DataLoader, sampler, epoch: int) -> Iterator:
    """Batches without end: pass after pass over the loader, reshuffled each pass."""
    while True:
        if sampler is not None:
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def recalibrate_batchnorm(model: nn.Module, data: Dataset, batch_size: int = 128, max_batches: int = 32,
                          device: str = "cpu") -> int:
    """Re-estimates the running statistics of every batch norm in `model` on `data` (inputs only; the
    cumulative average over batches, AdaBN, Li et al. 2016); returns how many it re-estimated."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for k, batch in enumerate(loader):
            if k == max_batches:
                break
            model((batch[0] if isinstance(batch, (tuple, list)) else batch).to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return len(norms)


class _progress:
    """A rich progress bar over the batches of one epoch, with images per second (or nothing)."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.bar = None
        self.images, self.began = 0, time.perf_counter()
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=True)
            self.task = self.bar.add_task(label, total=total, info="")
            self.bar.start()

    def advance(self, images: int, info: str) -> None:
        self.images += images
        if self.bar is not None:
            rate = self.images / max(time.perf_counter() - self.began, 1e-9)
            self.bar.update(self.task, advance=1, info=f"{info}  {rate:,.0f} img/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _save_checkpoint(path: str, model, optimizer, scheduler, schedule: Schedule, epoch: int,
                     history: list[EpochLog]) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr": scheduler.state_dict(),
             "schedule": schedule.state_dict() if schedule else None,
             "epoch": epoch, "history": [asdict(h) for h in history]}
    atomic_write(path, lambda tmp: torch.save(state, tmp), force=True)  # the same run's file, epoch after epoch


def _load_checkpoint(path: str, model, optimizer, scheduler, schedule: Schedule) -> tuple[int, list[EpochLog]]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr"])
        if schedule is not None:
            schedule.load_state_dict(state["schedule"])
    except Exception as exc:
        raise InputError(f"{path}: not a foldpass training checkpoint for this model ({type(exc).__name__}: "
                         f"{first_line(exc)})") from exc
    return int(state["epoch"]), [EpochLog(**h) for h in state["history"]]


def export_pt2(model: nn.Module, path: str, example: torch.Tensor | None = None, force: bool = False,
               input_shape: tuple[int, ...] | None = None) -> None:
    """Saves the eval-mode model as a torch.export program with a dynamic batch (outputs.atomic_write),
    traced at `example`, or at a batch of 2 of `input_shape` (C, H, W; default 1 x 28 x 28)."""
    from torch.export import Dim

    model = model.eval().cpu()
    example = torch.zeros(2, *(input_shape or (1, 28, 28))[-3:]) if example is None else example
    program = torch.export.export(model, (example,), dynamic_shapes=({0: Dim("batch")},), strict=False)
    atomic_write(path, lambda tmp: torch.export.save(program, tmp), force=force)
