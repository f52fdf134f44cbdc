"""`foldpass.compress`: a trained classifier and its data in, the fastest ONNX file within an accuracy
budget out, step by step, each step measured on the target and kept only where it pays.

    original   the model exported directly (torch.onnx.export), the baseline every speed-up is against
    for each step (steps.py), its options from the strongest to the mildest:
        candidate = step(current, option)        exported through foldpass's pipeline, verified
        accuracy on the selection split (onnxruntime), latency interleaved against the original
        and the current file (onnxruntime CPU, each batch)
        drop > max_drop           -> reverted, the next (milder) option tried
        not faster than current   -> reverted, the step ends (a milder option is slower still)
        else                      -> kept: current = candidate
    the test split is read once, at the end: the original and every kept step

--checkpoint DIR keeps every finished step there (state.json, the model's weights, the ONNX files);
resume=True continues after the last finished step of the same model, data and settings.

Under torchrun (WORLD_SIZE > 1) every rank runs the same steps and fine-tunes its share of each batch
(DistributedDataParallel, as `foldpass train`); rank 0 alone measures accuracy and latency and hands
the numbers to the others (shared()), so that every rank keeps and reverts the same tries, and rank 0
alone writes the checkpoint (the others work in a private folder).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field

import torch

from ..errors import InputError, VerificationError, first_line
from .measure import SLOWER_LIMIT, Latency, latency, module_macs, onnx_accuracy, onnx_params, shared
from .steps import STEPS, Decline, Job, State

STATE_FILE = "state.json"
WEIGHTS_FILE = "model.pt"


@dataclass
class Row:
    """One line of the table: a step's try, or the original."""

    step: str
    option: str
    status: str  # original, kept, reverted, declined
    why: str
    selection_acc: float | None = None
    drop: float | None = None  # points below the original on the selection split
    ms: dict = field(default_factory=dict)  # batch -> ms per image
    speedup: dict = field(default_factory=dict)  # batch -> vs the original
    params: int | None = None
    macs: int | None = None
    seconds: float = 0.0
    test_acc: float | None = None  # the original and kept rows, read at the end
    file: str | None = None  # the candidate's ONNX file (in the working folder), for the kept rows


@dataclass
class CompressResult:
    rows: list[Row]
    model: torch.nn.Module | None  # the last PyTorch model (None: the file is int8)
    onnx: object  # the final onnx.ModelProto
    verification: dict | None  # the exact check of the final file against `model` (None: judged by accuracy)
    settings: dict
    data: dict
    seconds: float = 0.0
    rank: int = 0  # the process's rank under torchrun: only rank 0 writes

    @property
    def original(self) -> Row:
        return self.rows[0]

    @property
    def final(self) -> Row:
        return [r for r in self.rows if r.status in ("original", "kept")][-1]

    @property
    def kept(self) -> list[str]:
        return [r.step for r in self.rows if r.status == "kept"]

    def as_dict(self) -> dict:
        rows = [{k: v for k, v in asdict(r).items() if k != "file"} for r in self.rows]
        return {"settings": self.settings, "data": self.data, "rows": rows, "kept": self.kept,
                "verification": self.verification, "seconds": self.seconds,
                "test": {"original": self.original.test_acc, "final": self.final.test_acc}}

    def render(self, console=None) -> None:
        from .table import render

        render(self, console)

    def plot(self, path: str, force: bool = False) -> None:
        from .table import plot

        plot(self, path, force)

    def save_onnx(self, path: str, force: bool = False, inputs=()) -> None:
        """The final file with the plan and the table in its metadata, written through outputs.py's policy;
        the written bytes are checked to compute what the chosen file computed."""
        import numpy as np

        from ..export import save_atomic
        from ..outputs import check_outputs
        from ..provenance import PREFIX
        from .measure import session

        path = check_outputs({"output": os.fspath(path)}, inputs, force)["output"]
        model = copy.deepcopy(self.onnx)
        for key, value in (("compress", json.dumps(self.as_dict())), ("pipeline", "compress: " + ", ".join(self.kept))):
            entry = model.metadata_props.add()
            entry.key, entry.value = PREFIX + key, value
        reference = session(self.onnx.SerializeToString())
        name = reference.get_inputs()[0].name
        shape = [2 if not isinstance(d, int) else d for d in reference.get_inputs()[0].shape]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        want = reference.run(None, {name: x})[0]

        def check(tmp: str) -> None:
            got = session(tmp).run(None, {name: x})[0]
            if not np.array_equal(got, want):
                raise VerificationError("the written file does not compute what the chosen one computed")

        save_atomic(model, path, check, force=True)


# ----------------------------------------------------------------------------- the run


def _fingerprint(model: torch.nn.Module, splits, settings: dict) -> str:
    h = hashlib.sha256(json.dumps({"settings": settings, "data": splits.describe()}, sort_keys=True, default=str).encode())
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def parse_steps(steps) -> tuple[str, ...]:
    steps = tuple(steps.split(",") if isinstance(steps, str) else steps)
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise InputError(f"unknown step(s) {', '.join(unknown) or '(none)'}; steps are {', '.join(STEPS)}")
    return tuple(s for s in STEPS if s in steps)  # always in the canonical order


def compress(model: torch.nn.Module, data, *, example: torch.Tensor | None = None, steps=tuple(STEPS),
             max_drop: float = 1.0, batches=(1, 64), epochs: int = 5, lr: float = 1e-3, threads: int = 1,
             budget_minutes: float | None = None, checkpoint: str | None = None, resume: bool = False,
             seed: int = 0, timing: tuple[int, float] = (9, 0.3), progress: bool = False, log=None) -> CompressResult:
    """Compresses a trained classifier within `max_drop` points of its selection accuracy (see the
    module docstring). `data`: a DataSplits or anything foldpass.load_data takes. `log(text)` hears
    each step's progress. timing: (rounds, seconds per round) of each interleaved latency measurement.
    Returns the rows, the final ONNX model and the last PyTorch model."""
    from ..data import DataSplits, load_data
    from ..export import direct_export
    from ..homotopy.training import init_distributed

    began = time.perf_counter()
    splits = data if isinstance(data, DataSplits) else load_data(data)
    steps = parse_steps(steps)
    if not max_drop >= 0:
        raise InputError(f"max_drop must be >= 0 points; got {max_drop}")
    if not batches or any(not isinstance(b, int) or b < 1 for b in batches):
        raise InputError(f"batches must be positive integers; got {list(batches)}")
    for name, value in (("epochs", epochs), ("threads", threads)):
        if not isinstance(value, int) or value < 0 or (name == "threads" and value < 1):
            raise InputError(f"{name} must be a {'positive' if name == 'threads' else 'non-negative'} integer; got {value}")
    if budget_minutes is not None and not budget_minutes > 0:
        raise InputError(f"budget_minutes must be positive; got {budget_minutes}")
    rank, _ = init_distributed()
    log = log if log and rank == 0 else (lambda text: None)
    progress = progress and rank == 0
    model = copy.deepcopy(model).eval()
    example = example if example is not None else torch.zeros(2, *splits.shape)
    settings = {"steps": list(steps), "max_drop": max_drop, "batches": list(batches), "epochs": epochs, "lr": lr,
                "threads": threads, "seed": seed}
    deadline = began + budget_minutes * 60 if budget_minutes else None
    if checkpoint and not resume and os.path.isfile(os.path.join(checkpoint, STATE_FILE)):
        raise InputError(f"{checkpoint} holds a compress run already: --resume continues it, another folder starts anew")
    if checkpoint and os.path.exists(checkpoint) and not os.path.isdir(checkpoint):
        raise InputError(f"{checkpoint}: not a folder (--checkpoint names a folder for the run's files)")
    workdir = checkpoint if checkpoint and rank == 0 else tempfile.mkdtemp(prefix="foldpass-compress-")
    os.makedirs(workdir, exist_ok=True)
    fingerprint = _fingerprint(model, splits, settings)
    job = Job(splits, model, example, workdir, tuple(batches), threads, epochs, lr, seed, progress, log)
    try:
        saved = _load_checkpoint(checkpoint, fingerprint, model) if resume else None  # read only
        if resume and saved is None:
            log(f"no finished step in {workdir}: starting from the beginning")
        if saved:
            rows, state, done = saved
            log(f"resumed after: {', '.join(done)}")
        else:
            original = os.path.join(workdir, "original.onnx")
            with torch.no_grad():
                direct = direct_export(model, (example,))
            import onnx

            onnx.save(direct, original)
            acc = shared(lambda: onnx_accuracy(original, splits.selection, threads))
            rows = [Row("original", "", "original", "torch.onnx.export, no foldpass", acc, 0.0,
                        params=onnx_params(original), macs=module_macs(model, example), file=original)]
            state, done = State(model, original), []
            log(f"original: selection accuracy {acc:.2%}")
        job.latency = lambda cand, current: shared(lambda: latency(rows[0].file, current, cand, batches, threads,
                                                                   *timing))
        original_acc = rows[0].selection_acc
        first = rows[0]
        if not first.ms:  # the original timed against itself: its ms per image
            same = job.latency(first.file, first.file)
            first.ms, first.speedup = same.ms, {b: 1.0 for b in batches}
        for step in steps:
            if step in done:
                continue
            state = _run_step(job, step, state, rows, original_acc, max_drop, deadline)
            done.append(step)
            if checkpoint and rank == 0:
                _save_checkpoint(workdir, fingerprint, rows, state, done)
        # the final evaluation: the test split, read here for the first time
        for row in rows:
            if row.status in ("original", "kept"):
                row.test_acc = shared(lambda: onnx_accuracy(row.file, splits.test, threads))
        import onnx

        final = onnx.load(state.onnx)
        judged = any(r.step == "int8" and r.status == "kept" for r in rows)  # int8: accuracy, not an exact check
        return CompressResult(rows, state.model, final, None if judged else state.verification, settings,
                              splits.describe(), time.perf_counter() - began, rank)
    finally:
        if workdir != checkpoint:
            shutil.rmtree(workdir, ignore_errors=True)


def _run_step(job: Job, step: str, state: State, rows: list[Row], original_acc: float, max_drop: float,
              deadline: float | None) -> State:
    fn, options = STEPS[step]
    for option in options(job) if callable(options) else options:
        shown = "" if option is None else str(option)
        if deadline and time.perf_counter() > deadline:
            rows.append(Row(step, shown, "declined", "the time budget (--budget-minutes) is spent"))
            job.log(f"{step}: not tried, the time budget is spent")
            return state
        began = time.perf_counter()
        job.log(f"{step}{' ' + shown if shown else ''}: applying")
        try:
            cand = fn(job, state, option)
        except Decline as why:
            rows.append(Row(step, shown, "declined", str(why), seconds=time.perf_counter() - began))
            job.log(f"{step}: declined: {why}")
            if why.final:
                return state
            continue
        acc = shared(lambda: onnx_accuracy(cand.onnx, job.splits.selection, job.threads))
        drop = (original_acc - acc) * 100
        speed: Latency = job.latency(cand.onnx, state.onnx)
        row = Row(step, shown, "", "", acc, drop, speed.ms, speed.vs_original, onnx_params(cand.onnx),
                  cand.macs if cand.macs is not None else  # a step of the user's own that did not count them
                  module_macs(cand.model, job.example) if cand.model is not None else rows[-1].macs,
                  time.perf_counter() - began, file=cand.onnx)
        rows.append(row)
        faster, how = speed.faster()
        if drop > max_drop + 1e-9:  # accuracies are counts over the split: 1.00 point is within 1 (0.98 - 0.97 > 0.01)
            row.status, row.why = "reverted", f"over budget: {drop:.2f} points below the original (max {max_drop:g})"
            job.log(f"{step}: {row.why}")
            continue
        if step == "exact" and min(speed.vs_current.values()) >= SLOWER_LIMIT:
            faster, how = True, "lossless, verified exactly: " + speed.shown  # every later export goes through it anyway
        if not faster:
            row.status, row.why = "reverted", how
            job.log(f"{step}: reverted: {how}")
            return state
        row.status = "kept"
        row.why = how if step == "exact" else f"{how} vs the current file" + (
            "; verified exactly" if cand.verification else "; judged by accuracy (not exact)")
        job.log(f"{step}: kept ({how})")
        return cand
    return state


# ----------------------------------------------------------------------------- checkpoint


def _save_checkpoint(workdir: str, fingerprint: str, rows: list[Row], state: State, done: list[str]) -> None:
    from ..outputs import atomic_write

    replayable = state.model is not None and all(s.get("replayable", True) for s in state.structure)
    if replayable:  # tensors only (Torch-Pruning's own state_dict pickles modules: not loadable as weights)
        atomic_write(os.path.join(workdir, WEIGHTS_FILE), lambda tmp: torch.save(state.model.state_dict(), tmp),
                     force=True)
    body = {"version": 1, "fingerprint": fingerprint, "done": done, "rows": [asdict(r) for r in rows],
            "onnx": os.path.basename(state.onnx), "structure": state.structure, "verification": state.verification,
            "model": replayable}

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(body, f, indent=1)

    atomic_write(os.path.join(workdir, STATE_FILE), write, force=True)


def _load_checkpoint(workdir: str, fingerprint: str, original: torch.nn.Module):
    """(rows, state, done) of the last finished step, or None where there is none. Read as data only:
    JSON, and the weights with torch.load(weights_only=True)."""
    path = os.path.join(workdir, STATE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            body = json.load(f)
        rows = [Row(**{**r, "ms": {int(k): v for k, v in r["ms"].items()},
                       "speedup": {int(k): v for k, v in r["speedup"].items()}}) for r in body["rows"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a foldpass compress checkpoint ({type(exc).__name__})") from None
    if body.get("fingerprint") != fingerprint:
        raise InputError(f"{workdir} holds a run of another model, data or settings; resume with the same ones, "
                         "or use another --checkpoint folder")
    for row in rows:  # files named by the checkpoint, inside its folder only
        if row.file:
            row.file = os.path.join(workdir, os.path.basename(row.file))
    model = None
    if body.get("model"):
        weights = os.path.join(workdir, WEIGHTS_FILE)
        try:  # weights_only: a pickle that would run code is refused by torch before it runs
            model = _replay(original, body["structure"], weights)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, LookupError, TypeError, ValueError) as exc:
            raise InputError(f"{weights}: not weights foldpass can read as data, nothing of it was run "
                             f"({type(exc).__name__}: {first_line(exc)[:160]}); start again without --resume") from None
    onnx_path = os.path.join(workdir, os.path.basename(body["onnx"]))
    return rows, State(model, onnx_path, body["structure"], body.get("verification")), list(body["done"])


def _replay(original: torch.nn.Module, structure: list[dict], weights: str) -> torch.nn.Module:
    """The original rebuilt with the recorded structural changes, then the saved weights loaded, each
    layer resized to its saved tensors (a pruned layer keeps fewer channels)."""
    from ..homotopy.blend import blend_residuals, get_t, set_t
    from .blocks import drop_blocks, plain_at_zero, with_blends

    model = copy.deepcopy(original).eval()
    for change in structure:
        if change["step"] == "depth":
            model = drop_blocks(with_blends(model), change["blocks"])
        if change["step"] == "deskip":
            blended = blend_residuals(model, 0.5) if get_t(model) is None else model
            set_t(blended, 0.0)
            model = plain_at_zero(blended)
    state = torch.load(weights, weights_only=True)
    resize_to(model, state)
    model.load_state_dict(state)
    return model.eval()


def resize_to(model: torch.nn.Module, state: dict) -> None:
    """Gives each layer the shapes of its tensors in `state` (channel counts after pruning; a depthwise
    conv stays depthwise), so that load_state_dict fills them."""
    from torch import nn

    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        for kind in ("_parameters", "_buffers"):
            for key, value in getattr(m, kind).items():
                saved = state.get(prefix + key)
                if value is not None and saved is not None and saved.shape != value.shape:
                    new = torch.empty_like(saved)
                    getattr(m, kind)[key] = nn.Parameter(new, value.requires_grad) if kind == "_parameters" else new
        w = state.get(prefix + "weight")
        if w is None:
            continue
        if isinstance(m, nn.Conv2d):
            if m.groups > 1 and m.groups == m.in_channels and w.shape[1] == 1:
                m.groups = w.shape[0]
            m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.num_features = w.shape[0]
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = w.shape
