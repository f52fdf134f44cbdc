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

import os
import time
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


def evaluate(model: nn.Module, data: Dataset, batch_size: int = 256, device: str = "cpu") -> tuple[float, float]:
    """(mean loss, accuracy) over the whole dataset in eval mode; every rank reads all of it, so every
    rank sees the same accuracy (a threshold schedule then steps the same on every rank)."""
    model.eval()
    loss = correct = count = 0.0
    with torch.no_grad():
        for x, y in DataLoader(data, batch_size=batch_size):
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            count += len(y)
    return loss / max(count, 1), correct / max(count, 1)


def train(model: nn.Module, train_set: Dataset, val_set: Dataset, schedule: Schedule | None, epochs: int, *,
          lr: float = 1e-3, batch_size: int = 64, seed: int = 0, device: str = "cpu",
          checkpoint: str | None = None, resume: str | None = None, progress: bool = False,
          log: Callable[[EpochLog], None] | None = None) -> list[EpochLog]:
    """Trains `model` (in place) for `epochs` with t from `schedule` (None: no blends, plain training);
    returns one EpochLog per epoch."""
    torch.manual_seed(seed)
    model.to(device)
    net = nn.parallel.DistributedDataParallel(model) if _distributed() else model
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[EpochLog] = []
    start = 0
    if resume:
        start, history = _load_checkpoint(resume, model, optimizer, schedule)
    sampler = torch.utils.data.DistributedSampler(train_set, seed=seed) if _distributed() else None
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, generator=gen)
    steps = len(loader)
    for epoch in range(start, epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        t = apply_t(model, schedule.value(epoch if schedule.per == "epoch" else epoch * steps)) if schedule else None
        began = time.perf_counter()
        net.train()
        total = correct = count = 0.0
        bar = _progress(progress and _rank() == 0, steps, f"epoch {epoch + 1}/{epochs}")
        for i, (x, y) in enumerate(loader):
            if schedule is not None and schedule.per == "step":
                t = apply_t(model, schedule.value(epoch * steps + i))
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            out = net(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            count += len(y)
            bar.advance(f"loss {total / count:.4f}" + (f"  t {t:g}" if t is not None else ""))
        bar.close()
        if _distributed():  # batch-norm statistics drift apart per rank: take rank 0's, as DDP does
            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)
        val_loss, val_acc = evaluate(model, val_set, device=device)
        if schedule is not None:
            schedule.observe(val_acc)
        entry = EpochLog(epoch + 1, t, total / count, correct / count, val_loss, val_acc, time.perf_counter() - began)
        history.append(entry)
        if log and _rank() == 0:
            log(entry)
        if checkpoint and _rank() == 0:
            _save_checkpoint(checkpoint, model, optimizer, schedule, epoch + 1, history)
    if schedule is not None and schedule.kind != "static":
        apply_t(model, 0.0)
    model.eval()
    return history


class _progress:
    """A rich progress bar over the batches of one epoch (or nothing)."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=True)
            self.task = self.bar.add_task(label, total=total, info="")
            self.bar.start()

    def advance(self, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _save_checkpoint(path: str, model, optimizer, schedule: Schedule, epoch: int, history: list[EpochLog]) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "schedule": schedule.state_dict() if schedule else None,
             "epoch": epoch, "history": [asdict(h) for h in history]}
    atomic_write(path, lambda tmp: torch.save(state, tmp), force=True)  # the same run's file, epoch after epoch


def _load_checkpoint(path: str, model, optimizer, schedule: Schedule) -> tuple[int, list[EpochLog]]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(state["schedule"])
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: not a foldpass training checkpoint for this model ({type(exc).__name__}: "
                         f"{first_line(exc)})") from exc
    return int(state["epoch"]), [EpochLog(**h) for h in state["history"]]


def export_pt2(model: nn.Module, path: str, example: torch.Tensor | None = None, force: bool = False) -> None:
    """Saves the eval-mode model as a torch.export program with a dynamic batch (outputs.atomic_write)."""
    from torch.export import Dim

    model = model.eval().cpu()
    example = torch.zeros(2, 1, 28, 28) if example is None else example
    program = torch.export.export(model, (example,), dynamic_shapes=({0: Dim("batch")},), strict=False)
    atomic_write(path, lambda tmp: torch.export.save(program, tmp), force=force)
