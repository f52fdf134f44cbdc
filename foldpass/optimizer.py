"""The library's front door: `optimize(model, example_input)` -> OptimizeResult."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Callable

import onnx
import torch
import torch.fx as fx
from torch.export import Dim, ExportedProgram

from ._version import __version__
from .blend_weight import set_t as _set_t
from .defaults import DEFAULT_MAX_FOLD_BYTES
from .errors import FoldpassError, InputError, VerificationError
from .export import (DEFAULT_OPSET, MIN_OPSET, check_opset, direct_export_ops, onnx_op_counts, rename_batch_axis,
                     rename_io, save_atomic, to_onnx)
from .graph import BATCH_KEY, INPUTS_KEY, BatchPlan, op_name
from .loading import Source
from .outputs import atomic_write, check_outputs
from .passes import run_pipeline
from .peer import DirectOps
from .precision import PRECISIONS, to_half
from .provenance import sha256, stamp
from .quiet import quiet
from .report import GraphStats, Report
from .tracing import batch_of_two, program_of, trace
from .verification import (DEFAULT_ATOL, DEFAULT_RTOL, LARGE_BATCH, Recorded, Verification, check_tolerances, compare,
                           effective_rtol, export_errors, float32_noise, float64_errors, output_tensors,
                           verification_inputs, verify, verify_module)


@dataclass(frozen=True)
class _Save:
    """One save_onnx call's options, as it was given them (save_onnx's docstring)."""

    path: str
    verify: bool
    rtol: float
    atol: float
    extra_inputs: tuple
    opset: int | None
    force: bool
    precision: str
    half_io: bool
    compare: bool  # count the direct export's ops (fp32 only)


@dataclass
class OptimizeResult:
    """The optimized GraphModule (runnable in PyTorch), what was done, and how to write it out."""

    module: fx.GraphModule
    report: Report
    original: torch.nn.Module = field(repr=False)
    inputs: tuple[torch.Tensor, ...] = field(repr=False)
    reference: Callable | None = field(default=None, repr=False)  # what the gate compares with (default: original)
    opset: int = DEFAULT_OPSET
    io_names: tuple[list[str] | None, list[str] | None] = (None, None)
    source_path: str | None = None  # the file the model was read from: never written over
    batch_name: str | None = None  # the source's name for its batch axis
    program: ExportedProgram | None = field(default=None, repr=False)  # the direct export's program (see optimize)
    _source_sha256: str | None = field(default=None, repr=False)
    _peer: tuple[int, DirectOps] | None = field(default=None, repr=False)  # (opset, the count started by optimize)

    @property
    def batch_plan(self) -> BatchPlan:
        """How the batch came out (dynamic, restored, or fixed and why): the module's BatchPlan."""
        return BatchPlan.of(self.module)

    def to_onnx(self, opset: int | None = None, precision: str = "fp32", half_io: bool = False):
        """The checked ONNX model in memory, with its provenance (provenance.py) stamped in.
        precision "fp16": weights stored and computed in float16 (precision.py); half_io: float16 inputs
        and outputs too (by default they stay float32, with a Cast at each edge)."""
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        module, inputs = self.module, self.inputs
        if precision == "fp16":
            module = to_half(self.module, half_io)
            inputs = tuple(x.half() for x in inputs) if half_io else inputs
        model = to_onnx(module, inputs, opset=opset or self.opset, dynamic_batch=self.batch_plan.size is None)
        model = rename_batch_axis(rename_io(model, *self.io_names), self.batch_name)
        return stamp(model, self.module, self._metadata())

    def _metadata(self) -> dict[str, str]:
        meta = {"version": __version__, "pipeline": self.report.pipeline, "source": os.path.basename(self.report.source),
                "batch": self.report.batch, "precision": self.report.precision}
        if self.source_path and os.path.isfile(self.source_path):
            if self._source_sha256 is None:  # hashed once: the metadata is stamped twice per save
                self._source_sha256 = sha256(self.source_path)
            meta["source_sha256"] = self._source_sha256
        if self.report.verification:
            v = self.report.verification
            meta.update(max_abs_error=f"{v['max_abs_error']:.6g}", tolerance=f"{v['tolerance']:.6g}",
                        verified_cases=str(v["cases"]))
        meta["report"] = json.dumps(self.report.as_dict())
        return meta

    def save_onnx(self, path: str | os.PathLike, verify_output: bool = True, rtol: float = DEFAULT_RTOL,
                  atol: float = DEFAULT_ATOL, extra_inputs: list[tuple[torch.Tensor, ...]] = (),
                  opset: int | None = None, force: bool = False, precision: str = "fp32",
                  half_io: bool = False, compare_direct: bool = True) -> Verification | None:
        """Exports to ONNX, checks the written file against the original under onnxruntime, then
        moves it into `path` (outputs.py's policy: never over the input, nor over an existing file
        unless force). On a failed check VerificationError is raised and `path` is left untouched.
        compare_direct: also count the ops of the original exported the usual way (for an .onnx
        source: the source file) and warn in the report where foldpass's file has more.
        """
        path = check_outputs({"output": os.fspath(path)}, [self.source_path], force)["output"]
        check_tolerances(rtol, atol)
        save = _Save(path, verify_output, rtol, atol, tuple(extra_inputs), opset, force, precision, half_io,
                     compare_direct and precision == "fp32")
        with self._direct_count(save) as peer:
            return self._write(save, peer)

    @contextlib.contextmanager
    def _direct_count(self, save: _Save):
        """The direct export's op count, started on a second core (peer.py) while this process exports
        and verifies; None where it is counted in-process or not at all. Stopped however the save ends."""
        peer = None
        if save.compare and self.program is not None:
            opset = save.opset or self.opset
            peer = self._started_peer(opset) or DirectOps.start(self.program, opset, self.report.timings.get("trace", 0.0))
        try:
            yield peer
        finally:
            if peer is not None:
                peer.cancel()

    def _write(self, save: _Save, peer: DirectOps | None) -> Verification | None:
        opset, precision, half_io, rtol, atol = save.opset, save.precision, save.half_io, save.rtol, save.atol
        t0 = time.perf_counter()
        model = self.to_onnx(opset, precision, half_io)
        self.report.precision = precision + (" (float16 inputs and outputs)" if half_io else "")
        if precision == "fp16":  # the float32 original computes more precisely than the file: fp16's tolerance
            rtol = effective_rtol(rtol, torch.float16)
        self.report.timings["export"] = time.perf_counter() - t0
        self.report.onnx_ops = onnx_op_counts(model)
        if save.compare and not save.verify:
            self._compare_direct(opset, peer)
        checked: list[Verification] = []

        def gate(written: str) -> None:
            t0 = time.perf_counter()
            stamped = onnx.load(written, load_external_data=False)  # the file as it is checked
            checked_graph = stamped.graph.SerializeToString()
            # the reference runs once per case, however many checks the gate makes on its outputs
            reference, cases = Recorded(self.reference or self.original), self.gate_inputs(list(save.extra_inputs))
            try:
                checked.append(verify(written, reference, cases, rtol=rtol, atol=atol))
            except VerificationError as failed:
                allowance = self._export_errors(reference, cases, opset, precision, failed)
                if allowance is None:
                    raise
                checked.append(verify(written, reference, cases, rtol=rtol, atol=atol, allowance=allowance))
                v = checked[0]
                self.report.warnings.append(
                    f"the model's own float32 rounding is {v.allowance / 2:.3g} where foldpass's file is "
                    f"{v.max_abs_error:.3g} from PyTorch (output scale {v.output_scale:.3g}; the unoptimized export "
                    "and PyTorch in float64 are that far off too): the difference is float32 arithmetic, not a fold; "
                    "foldpass was held to twice that plus the tolerance")
            self.report.verification = checked[0].as_dict()
            self.report.timings["verify"] = time.perf_counter() - t0
            if save.compare:  # before the stamp: the report it writes holds the comparison
                self._compare_direct(opset, peer)
            stamp(stamped, self.module, self._metadata())  # the verified file also says how it was verified
            if stamped.graph.SerializeToString() != checked_graph:  # metadata only: the graph is the bytes checked
                raise VerificationError("the file's graph changed after its check (stamping its metadata); not written")
            onnx.save(stamped, written)

        save_atomic(model, save.path, check=gate if save.verify else None, force=save.force)
        return checked[0] if checked else None

    def _export_errors(self, reference, cases, opset: int | None, precision: str, failed: VerificationError):
        """Per case and output, the model's own float32 noise: how far the model exported as it is
        (no pass) lies from PyTorch, and PyTorch in float32 from float64; twice the larger is the
        allowance the gate grants on top of its tolerance (None: none applies, the failure stands).
        Only for a finite error of a float32 file from a PyTorch source (an ONNX source is its own
        reference: its export error is 0)."""
        if precision != "fp32" or not math.isfinite(failed.max_abs_error or math.inf) or \
                (self.source_path or "").endswith(".onnx"):
            return None
        t0 = time.perf_counter()
        try:
            base = to_onnx(self.original, self.inputs, opset=opset or self.opset,
                           dynamic_batch=self.batch_plan.size is None)
            return float32_noise(export_errors(base, reference, cases), float64_errors(reference, cases))
        except (FoldpassError, RuntimeError):  # the model does not export (or run) as it is: no allowance
            return None
        finally:
            self.report.timings["unoptimized export"] = time.perf_counter() - t0

    def _started_peer(self, opset: int) -> DirectOps | None:
        """The count optimize(compare_direct=True) started, if it is for this opset (else it stops)."""
        started, self._peer = self._peer, None
        if started is None:
            return None
        if started[0] != opset:
            started[1].cancel()
            return None
        return started[1]

    def _compare_direct(self, opset: int | None, running: DirectOps | None = None) -> None:
        """The guard against a file bigger than the usual export: report.direct_ops, and a warning.
        `running`: the count started on another core (its wait is the time reported)."""
        t0 = time.perf_counter()
        if self.source_path and self.source_path.endswith(".onnx"):
            peer, what = onnx_op_counts(onnx.load(self.source_path, load_external_data=False)), "the source ONNX"
        else:
            peer = running.result() if running is not None else None
            if peer is None:  # not started, or it did not answer: counted here
                dynamic = self.batch_plan.size is None
                # the program torch.export already traced: torch.onnx translates it, no second export
                original = self.program if self.program is not None else self.original
                peer = direct_export_ops(original, self.inputs, opset or self.opset, dynamic)
            what = "the direct export (torch.onnx.export, dynamo=True)"
        self.report.timings["direct export"] = time.perf_counter() - t0
        if isinstance(peer, str):
            self.report.warnings.append(f"no op count to compare with: {peer}")
            return
        self.report.direct_ops = peer
        ours, theirs = sum(self.report.onnx_ops.values()), sum(peer.values())
        if ours > theirs:
            more = {k: v - peer.get(k, 0) for k, v in self.report.onnx_ops.items() if v > peer.get(k, 0)}
            self.report.warnings.append(
                f"foldpass's ONNX has {ours} ops, {what} {theirs}: more "
                + ", ".join(f"{k} +{v}" for k, v in sorted(more.items(), key=lambda kv: -kv[1])[:6])
                + "; it may run slower than that export (compare them with foldpass bench)")

    def gate_inputs(self, extra_inputs=(), random_cases: int | None = None) -> list[tuple[torch.Tensor, ...]]:
        """The inputs every check of this result runs on (verification.verification_inputs), at batch
        LARGE_BATCH too where foldpass made the batch dynamic itself."""
        return verification_inputs(self.inputs, self.batch_plan.size, extra_inputs, random_cases=random_cases,
                                   large_batch=LARGE_BATCH if self.batch_plan.restored else None)

    def save_pt2(self, path: str | os.PathLike, verify_output: bool = True, rtol: float = DEFAULT_RTOL,
                 atol: float = DEFAULT_ATOL, extra_inputs: list[tuple[torch.Tensor, ...]] = (),
                 force: bool = False) -> Verification | None:
        """Writes the optimized program with torch.export.save (dynamic batch as for ONNX), for
        AOTInductor or ExecuTorch. The written file is loaded back and checked in PyTorch against the
        original (the same inputs and tolerances as the ONNX gate) before it is moved into `path`."""
        path = check_outputs({"output": os.fspath(path)}, [self.source_path], force)["output"]
        check_tolerances(rtol, atol)
        opaque = sorted({op_name(n) for n in self.module.graph.nodes if op_name(n).startswith("onnx ")})
        if opaque:
            raise InputError(f"{', '.join(opaque)} passed through from the ONNX input and run only under "
                             "onnxruntime; write an .onnx file")
        static = self.batch_plan.size
        dynamic = None if static else tuple({0: Dim("batch")} for _ in self.inputs)
        with quiet():
            program = torch.export.export(self.module, self.inputs if static else batch_of_two(self.inputs),
                                          dynamic_shapes=dynamic, strict=False)
        checked: list[Verification] = []

        def gate(written: str) -> None:
            with quiet():
                loaded = torch.export.load(written).module()
            checked.append(verify_module(loaded, self.reference or self.original, self.gate_inputs(extra_inputs),
                                         rtol=rtol, atol=atol))
            self.report.verification = checked[0].as_dict()

        atomic_write(path, lambda tmp: torch.export.save(program, tmp), gate if verify_output else None, force)
        return checked[0] if checked else None

    def bench(self, written: str, batches=(1, 64), progress: bool = False):
        """Times the original (exported as it is) against the written ONNX, interleaved (bench.py)."""
        import tempfile

        from .benchmark import bench

        with tempfile.TemporaryDirectory() as tmp:
            original = os.path.join(tmp, "original.onnx")
            save_atomic(to_onnx(self.original, self.inputs), original)
            return bench([original, written], ["original", "foldpass"], batches=batches, progress=progress)


class PerSample(torch.nn.Module):
    """Runs a module that only takes batch 1 on each sample of a batch: the reference for a
    program whose batch foldpass made dynamic."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = module

    def forward(self, *inputs):
        outs = [self.inner(*(x[i:i + 1] for x in inputs)) for i in range(inputs[0].shape[0])]
        if isinstance(outs[0], torch.Tensor):
            return torch.cat(outs)
        return type(outs[0])(torch.cat(parts) for parts in zip(*outs))


def _as_inputs(example) -> tuple[torch.Tensor, ...]:
    inputs = example if isinstance(example, (tuple, list)) else (example,)
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise InputError("example_input must be a tensor or a tuple of tensors")
    for x in inputs:
        if not x.is_floating_point():
            raise InputError(f"example input has dtype {x.dtype}; foldpass optimizes floating-point inputs")
        if x.dim() == 0:
            raise InputError("example input must have a batch dimension")
    return tuple(inputs)


def _prepare(model: torch.nn.Module, t: float | None, report_warnings: list[str]) -> torch.nn.Module:
    """A copy of the model in eval mode with t set: the caller's module is never changed."""
    model = copy.deepcopy(model)
    if model.training:
        report_warnings.append("the model was in training mode: optimized in eval mode (batch norm uses its "
                               "running statistics, dropout is off)")
    model.eval()
    if t is not None:
        count = _set_t(model, t)
        if not count:
            report_warnings.append(f"set_t {t}: no blend weight found (no Blend module, no attribute or buffer named t)")
    return model


def optimize(model: torch.nn.Module | ExportedProgram | Source, example_input=None, *, pipeline: str = "default",
             set_t: float | None = None, max_fold_bytes: int = DEFAULT_MAX_FOLD_BYTES,
             source: str | None = None, on_pass: Callable[[str], None] | None = None,
             batch: str | int = "auto", compare_direct: bool = False) -> OptimizeResult:
    """Traces `model`, runs the named pipeline to a fixed point, and reports what changed.

    `model`: an nn.Module, an ExportedProgram, or the `Source` that `load_source` returns (then
    `example_input` comes from it). `example_input`: a tensor (or tuple of tensors) with a batch
    dimension; its values do not matter.
    `compare_direct`: a `save_onnx` that compares with the direct export will follow; its count
    starts now on a second core (peer.py), beside the passes.
    `batch`: "auto" (dynamic where the model allows it; a .pt2 exported at a fixed batch gets a
    dynamic one back when its graph does not depend on it), "dynamic" (an error where it cannot
    be), "static" (as the source has it), or an int (fixed to that size on purpose).
    """
    from .passes import get_pipeline

    get_pipeline(pipeline)  # a bad name fails before any work
    check_options(set_t=set_t, max_fold_bytes=max_fold_bytes)
    if not (batch in ("auto", "dynamic", "static") or isinstance(batch, int) and not isinstance(batch, bool) and batch > 0):
        raise InputError(f"batch must be 'auto', 'dynamic', 'static' or a positive int; got {batch!r}")
    if not isinstance(model, Source):
        if example_input is None:
            raise InputError("example_input is required unless model is a Source from load_source")
        model = Source(model, _as_inputs(example_input), source or type(model).__name__)
    src = model
    inputs = _as_inputs(src.inputs if example_input is None else example_input)
    mode = batch if isinstance(batch, str) else "auto"
    if isinstance(batch, int) and not isinstance(src.model, ExportedProgram):
        # a size on purpose: a module is traced at that size (it may run at no other: an ONNX file with its
        # per-image loops unrolled for it); a program is traced as it is, then fixed below
        mode, inputs = "static", tuple(torch.cat([x[:1]] * batch) for x in inputs)
    report_warnings: list[str] = list(src.warnings)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if isinstance(src.model, ExportedProgram):
        if set_t is not None:
            raise InputError("set_t needs the module: an exported program's weights are fixed")
        original = src.model.module()
        gm = trace(src.model, inputs, mode)
    elif isinstance(src.model, torch.nn.Module):
        original = _prepare(src.model, set_t, report_warnings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = trace(original, inputs, "static" if src.static_batch and mode != "dynamic" else mode)
    else:
        raise InputError(f"cannot optimize a {type(src.model).__name__}: expected an nn.Module or an ExportedProgram")
    fell_back = getattr(original, "fell_back", None)  # an ONNX source: table ops that passed through as traced
    if fell_back:
        report_warnings.append("also passed through as they are: " + ", ".join(f"{op} ({why})" for op, why in
                                                                               sorted(fell_back.items())))
    if src.static_batch and mode != "dynamic":  # an ONNX input with a fixed batch keeps it
        gm.meta[BATCH_KEY] = BatchPlan.fixed(src.static_batch, f"the ONNX input fixes its batch to {src.static_batch}")
    plan = BatchPlan.of(gm)
    if plan.restored:  # the program only runs at its own batch: the reference runs it sample by sample
        original = PerSample(original)
    if isinstance(batch, int):
        if plan.size and plan.size != batch:
            raise InputError(f"batch {batch}: the model runs only at batch {plan.size} ({plan.note})")
        inputs = tuple(torch.cat([x[:1]] * batch) for x in inputs)
        gm.meta[INPUTS_KEY] = inputs
        gm.meta[BATCH_KEY] = plan = BatchPlan.fixed(batch, f"fixed to {batch} on request")
    # the direct export's program: a PyTorch source traced at a dynamic batch (an ONNX source compares with itself)
    onnx_source = (src.path or "").endswith(".onnx")
    program = None if plan.restored or plan.size or onnx_source else program_of(gm)
    opset = src.opset if src.opset is not None and src.opset >= MIN_OPSET else DEFAULT_OPSET
    peer = DirectOps.start(program, opset, time.perf_counter() - t0) if compare_direct and program is not None else None
    try:  # a failure from here on stops the count started beside it
        timings["trace"] = time.perf_counter() - t0
        before = GraphStats.of(gm)
        t0 = time.perf_counter()
        result = run_pipeline(gm, pipeline, max_fold_bytes=max_fold_bytes, on_pass=on_pass)
        timings["passes"] = time.perf_counter() - t0
        timings.update({f"pass {name}": seconds for name, seconds in result.seconds.items()})
        if not result.fixed_point:
            report_warnings.append(f"the passes still changed the graph in round {result.rounds}, the last one allowed: "
                                   "the result is correct (verified) but may not be fully optimized")
        optimized = result.module
        static = BatchPlan.of(optimized).size
        if static and not isinstance(batch, int):
            report_warnings.append(f"the batch stays fixed at {static}: {plan.note.removeprefix('static: ')}")
        report = Report(
            source=source or src.name or type(src.model).__name__, pipeline=pipeline,
            input_shapes=[list(x.shape) for x in inputs], before=before, after=GraphStats.of(optimized),
            notes=result.notes, rounds=result.rounds, changed_by=result.changed_by, static_batch=static, timings=timings,
            warnings=report_warnings,
            batch=plan.note,
        )
        report.max_error = _max_error(optimized, original, inputs, static)
        if src.opset is not None and src.opset < MIN_OPSET:
            report_warnings.append(f"the input is opset {src.opset}: written as opset {DEFAULT_OPSET} "
                                   f"(foldpass exports opset {MIN_OPSET} or newer)")
        out = OptimizeResult(optimized, report, original, inputs, reference=src.reference, opset=opset,
                             program=program, _peer=None if peer is None else (opset, peer),
                             io_names=(src.input_names, src.output_names), source_path=src.path,
                             batch_name=src.batch_name)
    except BaseException:
        if peer is not None:
            peer.cancel()
        raise
    if peer is not None:
        weakref.finalize(out, peer.cancel)  # a result never saved does not leave the count running
    return out


def check_options(set_t: float | None = None, max_fold_bytes: int | None = None, rtol: float | None = None,
                  atol: float | None = None, opset: int | None = None) -> None:
    """Refuses option values that cannot mean anything (InputError names the parameter), before any work."""
    if rtol is not None or atol is not None:
        check_tolerances(DEFAULT_RTOL if rtol is None else rtol, DEFAULT_ATOL if atol is None else atol)
    if opset is not None:
        check_opset(opset)
    if set_t is not None and not (math.isfinite(set_t) and 0.0 <= set_t <= 1.0):
        raise InputError(f"set_t must lie in [0, 1] (the blend weight t); got {set_t}")
    if max_fold_bytes is not None and max_fold_bytes < 0:
        raise InputError(f"max_fold_bytes must be 0 or more; got {max_fold_bytes}")


def _max_error(optimized: fx.GraphModule, original: torch.nn.Module, inputs, static) -> float:
    """The largest difference between the optimized module and the original in PyTorch (inf where
    their non-finite entries disagree)."""
    worst = 0.0
    with torch.no_grad():
        for case in verification_inputs(inputs, static, structured=False):
            got = output_tensors(optimized(*(x.clone() for x in case)))
            want = output_tensors(original(*(x.clone() for x in case)))
            for x, y in zip(got, want):
                err, _, mismatch = compare(y.detach().float().numpy(), x.detach().float().numpy())
                worst = max(worst, float("inf") if mismatch else err)
    return worst


def optimize_onnx(model, *, check_n: int | None = None, inputs=(), pipeline: str = "default",
                  rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
                  max_fold_bytes: int = DEFAULT_MAX_FOLD_BYTES, batch: str | int = "auto",
                  input_shape: tuple[int, ...] | None = None, opset: int | None = None):
    """ONNX in, ONNX out, in memory (the onnx-simplifier idiom): returns (optimized ModelProto, Verification).

    model: an onnx.ModelProto, or a path. The verification runs the optimized model and the input
    model under onnxruntime on random inputs (`check_n` of them; default 2, at batch 1 and 3), the
    zeros / ones / large inputs, and `inputs` (real data: arrays, or tuples of arrays for several
    inputs, each with its batch). It is returned, not raised: check `verification.passed`.
    Bad input (an unreadable model, an op foldpass cannot import) still raises InputError.
    """
    from .loading import load_source, onnx_source

    check_options(rtol=rtol, atol=atol, opset=opset)
    if check_n is not None and check_n < 0:
        raise InputError(f"check_n must be 0 or more; got {check_n}")
    source = load_source(os.fspath(model), input_shape) if isinstance(model, (str, os.PathLike)) \
        else onnx_source(model, input_shape)
    result = optimize(source, pipeline=pipeline, max_fold_bytes=max_fold_bytes, batch=batch)
    proto = result.to_onnx(opset)
    extra = [tuple(torch.as_tensor(a).to(x.dtype) for a, x in zip(case if isinstance(case, (tuple, list)) else (case,),
                                                                  source.inputs))
             for case in inputs]
    cases = result.gate_inputs(extra, random_cases=check_n)
    try:
        check = verify(proto, result.reference or result.original, cases, rtol=rtol, atol=atol)
    except VerificationError as exc:
        check = Verification(exc.max_abs_error if exc.max_abs_error is not None else float("nan"), 0.0,
                             exc.tolerance if exc.tolerance is not None else float("nan"), len(cases),
                             passed=False, message=str(exc))
    result.report.verification = check.as_dict()
    return proto, check
