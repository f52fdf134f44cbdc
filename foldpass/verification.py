"""The verification gate: the written ONNX, run by onnxruntime, against the original module.

For every input and every output k:

    max |onnx(x)_k - original(x)_k|  <=  atol + rtol * max |original(x)_k|      (finite entries)

and the non-finite entries must agree exactly: a NaN where the original has a NaN, +inf where it
has +inf, -inf where -inf. The scale is each output's own (a large first output cannot hide an
error in a small second one) and comes from the finite values only (an inf in the original must
not make the tolerance infinite). The tolerance is relative to the scale because folding
reassociates float32 sums. For a float16 or bfloat16 model, rtol is at least 8 machine epsilons of
that type (7.8e-3 for float16): the original computes with no more precision than that.

The inputs: random normal ones at batch 1 and 3, then structured ones at batch 2 -- all zeros, all
ones, and random normal times 100 (large magnitude) -- and the user's own, if given. Each side gets
its own copy of every input, so a model that changes its input in place cannot skew the check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from .defaults import DEFAULT_ATOL, DEFAULT_RTOL
from .errors import InputError, VerificationError, first_line

VERIFY_BATCHES = (1, 3)
_BATCH_CYCLE = (1, 3, 2, 4, 5, 8)
LARGE_BATCH = 16  # also checked where foldpass made the batch dynamic itself
STRUCTURED_BATCH = 2
LARGE_MAGNITUDE = 100.0
LOW_PRECISION_EPS = 8


def check_tolerances(rtol: float, atol: float) -> None:
    """Refuses a negative or non-finite tolerance (InputError names it)."""
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"{name} must be a finite number >= 0; got {value}")


def effective_rtol(rtol: float, dtype: torch.dtype) -> float:
    """rtol, raised to LOW_PRECISION_EPS machine epsilons for half-precision outputs."""
    if dtype in (torch.float16, torch.bfloat16):
        return max(rtol, LOW_PRECISION_EPS * torch.finfo(dtype).eps)
    return rtol


@dataclass
class Verification:
    max_abs_error: float
    output_scale: float
    tolerance: float
    cases: int
    details: list[dict] = field(default_factory=list)
    passed: bool = True
    message: str = ""  # why it failed, when it did
    # "tolerance": within atol + rtol * scale of the original; "float32 noise": the model's own float32
    # rounding at that input is that large (the unoptimized export, or PyTorch in float32 against
    # float64, is that far off), and foldpass's file is within twice it, plus the tolerance
    basis: str = "tolerance"
    allowance: float = 0.0  # the error granted on top of the tolerance at the worst case (basis "float32 noise")

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / self.output_scale if self.output_scale else self.max_abs_error

    def as_dict(self) -> dict:
        return {"passed": self.passed, "message": self.message, "basis": self.basis, "allowance": self.allowance,
                "max_abs_error": self.max_abs_error, "output_scale": self.output_scale, "tolerance": self.tolerance,
                "relative_error": self.relative_error, "cases": self.cases, "details": self.details}


def _flatten(out) -> list[np.ndarray]:
    return [t.detach().float().numpy() for t in output_tensors(out)]


def output_tensors(out):
    """Every tensor of a model's output (a tensor, or nested tuples / lists / dicts of them), in order."""
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (list, tuple)):
        for o in out:
            yield from output_tensors(o)
    elif isinstance(out, dict):
        for o in out.values():
            yield from output_tensors(o)
    else:
        raise VerificationError(f"the model returns {type(out).__name__}, not tensors")


def verification_inputs(example: tuple[torch.Tensor, ...], static_batch: int | None,
                        extra: list[tuple[torch.Tensor, ...]] = (), seed: int = 1234,
                        structured: bool = True, large_batch: int | None = None,
                        random_cases: int | None = None) -> list[tuple[torch.Tensor, ...]]:
    """Random normal inputs at each batch size (and `large_batch`, if given), then zeros, ones and
    large ones (see the docstring). `random_cases` sets how many random inputs (batch sizes 1, 3,
    2, 4, 5, 8, ... in turn; the default is VERIFY_BATCHES)."""
    gen = torch.Generator().manual_seed(seed)
    dynamic = VERIFY_BATCHES if random_cases is None else tuple(_BATCH_CYCLE[i % len(_BATCH_CYCLE)]
                                                                 for i in range(random_cases))
    batches = (static_batch,) * len(dynamic) if static_batch else dynamic + ((large_batch,) if large_batch else ())
    cases = [tuple(torch.randn(b, *x.shape[1:], generator=gen).to(x.dtype) for x in example) for b in batches]
    if structured:
        b = static_batch or STRUCTURED_BATCH
        cases.append(tuple(torch.zeros(b, *x.shape[1:], dtype=x.dtype) for x in example))
        cases.append(tuple(torch.ones(b, *x.shape[1:], dtype=x.dtype) for x in example))
        cases.append(tuple((LARGE_MAGNITUDE * torch.randn(b, *x.shape[1:], generator=gen)).to(x.dtype)
                           for x in example))
    return cases + list(extra)


def compare(want: np.ndarray, got: np.ndarray) -> tuple[float, float, str | None]:
    """(max abs error over the finite entries, max |want| over them, a mismatch of non-finite entries or None)."""
    if want.shape != got.shape:
        return float("inf"), 0.0, f"output shape {got.shape} differs from the original's {want.shape}"
    if not want.size:
        return 0.0, 0.0, None
    want, got = want.astype(np.float64), got.astype(np.float64)
    finite = np.isfinite(want)
    for name, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        if not np.array_equal(test(want), test(got)):
            where = np.argwhere(test(want) != test(got))[0].tolist()
            return float("inf"), 0.0, f"the original and the optimized model disagree on {name} at index {where}"
    if not finite.any():
        return 0.0, 0.0, None
    error = float(np.max(np.abs(want[finite] - got[finite])))
    return error, float(np.max(np.abs(want[finite]))), None


def verify(onnx_model: onnx.ModelProto | str, reference: torch.nn.Module, cases: list[tuple[torch.Tensor, ...]],
           rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
           allowance: list[list[float]] | None = None) -> Verification:
    """Runs both on every case; raises VerificationError when any output is out of tolerance.
    allowance[case][output]: the model's own float32 noise there (float32_noise), added to that
    output's tolerance: foldpass is held to what it changed, not to float32 rounding."""
    return _compare_all(_onnx_runner(onnx_model, cases), reference, cases, rtol, atol, "the ONNX model", allowance)


def export_errors(onnx_model: onnx.ModelProto | str, reference, cases: list[tuple[torch.Tensor, ...]]
                  ) -> list[list[float]]:
    """Per case, per output: max |ONNX - reference| over the finite entries (no tolerance, no raising):
    how far an export alone is from PyTorch (a non-finite mismatch counts as no allowance)."""
    return _errors(_onnx_runner(onnx_model, cases), reference, cases)


def float64_errors(reference, cases: list[tuple[torch.Tensor, ...]]) -> list[list[float]]:
    """Per case, per output: how far the float32 reference is from itself computed in float64
    (its own rounding at that input). No estimate (empty lists) when the model does not run in float64."""
    import copy

    try:
        wide = copy.deepcopy(reference.module if isinstance(reference, Recorded) else reference).double()

        def run(case):
            with torch.no_grad():
                return [o.float() for o in output_tensors(wide(*(x.double() if x.is_floating_point() else x.clone()
                                                                 for x in case)))]

        return _errors(lambda case: [o.numpy() for o in run(case)], reference, cases)
    except (RuntimeError, TypeError):  # an op without a float64 kernel (NotImplementedError is a RuntimeError)
        return [[] for _ in cases]


def float32_noise(export: list[list[float]], wide: list[list[float]]) -> list[list[float]]:
    """The allowance per case and output: twice the larger estimate of the model's float32 rounding there
    (two float32 evaluations of the same function, each that far from the exact value, can be twice
    that far from each other)."""
    return [[2 * max(a, w[k] if k < len(w) else 0.0) for k, a in enumerate(e)] for e, w in zip(export, wide)]


def _errors(run, reference, cases) -> list[list[float]]:
    return [[0.0 if mismatch else err for err, _, mismatch in (compare(w, g) for w, g in zip(want, got))]
            for _, want, got, _ in _run_both(run, reference, cases)]


def _onnx_runner(onnx_model: onnx.ModelProto | str, cases):
    """case -> the ONNX model's outputs under onnxruntime's CPU provider (VerificationError if it cannot run)."""
    import onnxruntime as ort

    if any(x.dtype == torch.bfloat16 for case in cases for x in case):
        raise VerificationError("cannot verify a bfloat16 model: onnxruntime's CPU provider has no bfloat16 kernels "
                                "for most ops and numpy has no bfloat16 type; cast the model to float32 or float16, "
                                "or write it unverified with verify_output=False")
    payload = onnx_model if isinstance(onnx_model, str) else onnx_model.SerializeToString()
    try:
        session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise VerificationError(f"cannot verify: onnxruntime (CPU) cannot load the optimized model: "
                                f"{first_line(exc)}") from exc
    names = [i.name for i in session.get_inputs()]
    half = [i.type == "tensor(float16)" for i in session.get_inputs()]

    def run(case):
        try:
            got = session.run(None, {n: (x.half() if h else x).numpy().copy() for n, x, h in zip(names, case, half)})
        except Exception as exc:
            raise VerificationError(f"cannot verify: onnxruntime (CPU) failed to run the optimized model: "
                                    f"{first_line(exc)}") from exc
        return got

    return run


def verify_module(module, reference, cases: list[tuple[torch.Tensor, ...]], rtol: float = DEFAULT_RTOL,
                  atol: float = DEFAULT_ATOL) -> Verification:
    """verify() for a PyTorch module (a written .pt2, a compiled graph) instead of an ONNX file."""

    def run(case):
        with torch.no_grad():
            return _flatten(module(*(x.clone() for x in case)))

    return _compare_all(run, reference, cases, rtol, atol, "the optimized module")


class Recorded:
    """A reference whose outputs on the gate's cases are computed once and shared by every check
    that runs on them (the gate, the unoptimized export's error, the check with an allowance)."""

    def __init__(self, reference):
        self.module = reference.module if isinstance(reference, Recorded) else reference
        self._outputs: dict[int, tuple[object, list]] = {}  # id(case) -> (the case, its outputs)

    def __call__(self, *inputs):
        return self.module(*inputs)

    def outputs(self, case: tuple[torch.Tensor, ...]):
        if id(case) not in self._outputs or self._outputs[id(case)][0] is not case:
            with torch.no_grad():
                self._outputs[id(case)] = (case, self.module(*(x.clone() for x in case)))
        return self._outputs[id(case)][1]


def _run_both(run, reference, cases):
    """Per case: (the case, the reference's outputs, `run`'s outputs, the reference's output dtype or None)."""
    for case in cases:
        if isinstance(reference, Recorded):
            out = reference.outputs(case)
        else:
            with torch.no_grad():
                out = reference(*(x.clone() for x in case))
        yield case, _flatten(out), run(case), next((o.dtype for o in output_tensors(out)), None)


def _compare_all(run, reference, cases, rtol: float, atol: float, what: str,
                 allowance: list[list[float]] | None = None) -> Verification:
    """Runs `run` and the reference on every case and compares each output (see the module docstring)."""
    worst_ratio, worst, details, dtype = -1.0, None, [], torch.float32
    for i, (case, want, got, out_dtype) in enumerate(_run_both(run, reference, cases)):
        dtype = out_dtype or dtype
        tol_rtol = effective_rtol(rtol, dtype)
        if len(got) != len(want):
            raise VerificationError(f"{what} has {len(got)} outputs, the original {len(want)}")
        for k, (w, g) in enumerate(zip(want, got)):
            err, scale, mismatch = compare(w, g)
            batch = int(case[0].shape[0]) if case and case[0].dim() else 0
            if mismatch:
                raise VerificationError(f"verification failed: output {k} (batch {batch}): {mismatch}",
                                        max_abs_error=float("inf"), tolerance=0.0)
            granted = allowance[i][k] if allowance and k < len(allowance[i]) else 0.0
            tolerance = atol + tol_rtol * scale + granted
            details.append({"batch": batch, "output": k, "max_abs_error": err, "output_scale": scale,
                            "tolerance": tolerance, "allowance": granted})
            ratio = err / tolerance if tolerance else (0.0 if err == 0 else float("inf"))
            if ratio > worst_ratio:
                worst_ratio, worst = ratio, details[-1]
    worst = worst or {"max_abs_error": 0.0, "output_scale": 0.0, "tolerance": atol, "output": 0, "batch": 0,
                      "allowance": 0.0}
    result = Verification(worst["max_abs_error"], worst["output_scale"], worst["tolerance"], len(cases), details,
                          basis="float32 noise" if allowance else "tolerance", allowance=worst["allowance"])
    if not worst["max_abs_error"] <= worst["tolerance"]:
        granted = (f" + twice the model's own float32 noise there {worst['allowance'] / 2:.3g}" if allowance else "")
        raise VerificationError(
            f"verification failed: output {worst['output']} of the optimized model differs from the original by "
            f"{worst['max_abs_error']:.3g} (output scale {worst['output_scale']:.3g}, tolerance "
            f"{worst['tolerance']:.3g} = atol {atol:g} + rtol {effective_rtol(rtol, dtype):g} * scale{granted})",
            max_abs_error=worst["max_abs_error"], tolerance=worst["tolerance"])
    return result
