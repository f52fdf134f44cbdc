"""The verification gate: the written ONNX, run by onnxruntime, against the original module.

Passes when   max |onnx(x) - original(x)|  <=  atol + rtol * max |original(x)|   for every input:
random normal inputs at several batch sizes (and the user's own, if given). The tolerance is
relative to the output's scale, because folding reassociates float32 sums. For a float16 or
bfloat16 model, rtol is at least 8 machine epsilons of that type (7.8e-3 for float16): the
original computes with no more precision than that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from .errors import VerificationError, first_line

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5
VERIFY_BATCHES = (1, 3)
LOW_PRECISION_EPS = 8


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

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / self.output_scale if self.output_scale else self.max_abs_error

    def as_dict(self) -> dict:
        return {"max_abs_error": self.max_abs_error, "output_scale": self.output_scale, "tolerance": self.tolerance,
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
                        extra: list[tuple[torch.Tensor, ...]] = (), seed: int = 1234) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(seed)
    batches = (static_batch,) if static_batch else VERIFY_BATCHES
    cases = [tuple(torch.randn(b, *x.shape[1:], generator=gen).to(x.dtype) for x in example) for b in batches]
    return cases + list(extra)


def verify(onnx_model: onnx.ModelProto | str, reference: torch.nn.Module, cases: list[tuple[torch.Tensor, ...]],
           rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> Verification:
    """Runs both on every case; raises VerificationError when any output is out of tolerance."""
    import onnxruntime as ort

    if any(x.dtype == torch.bfloat16 for case in cases for x in case):
        raise VerificationError("cannot verify a bfloat16 model: onnxruntime's CPU provider has no bfloat16 kernels "
                                "for most ops and numpy has no bfloat16 type; cast the model to float32 or float16, "
                                "or write it unverified with --no-verify")
    payload = onnx_model if isinstance(onnx_model, str) else onnx_model.SerializeToString()
    try:
        session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - a missing kernel, an unsupported type
        raise VerificationError(f"cannot verify: onnxruntime (CPU) cannot load the optimized model: "
                                f"{first_line(exc)}") from exc
    names = [i.name for i in session.get_inputs()]
    worst, scale, details, dtype = 0.0, 0.0, [], torch.float32
    for case in cases:
        with torch.no_grad():
            out = reference(*case)
        want = _flatten(out)
        dtype = next((o.dtype for o in output_tensors(out)), dtype)
        try:
            got = session.run(None, {n: x.numpy() for n, x in zip(names, case)})
        except Exception as exc:  # noqa: BLE001
            raise VerificationError(f"cannot verify: onnxruntime (CPU) failed to run the optimized model: "
                                    f"{first_line(exc)}") from exc
        if len(got) != len(want):
            raise VerificationError(f"the ONNX model has {len(got)} outputs, the original {len(want)}")
        for w, g in zip(want, got):
            if w.shape != g.shape:
                raise VerificationError(f"output shape {g.shape} differs from the original's {w.shape}")
            err = float(np.max(np.abs(w - g))) if w.size else 0.0
            s = float(np.max(np.abs(w))) if w.size else 0.0
            if not np.isfinite(err):
                err = float("inf")
            details.append({"batch": int(case[0].shape[0]), "max_abs_error": err, "output_scale": s})
            worst, scale = max(worst, err), max(scale, s)
    rtol = effective_rtol(rtol, dtype)
    tolerance = atol + rtol * scale
    result = Verification(worst, scale, tolerance, len(cases), details)
    if not worst <= tolerance:
        raise VerificationError(
            f"verification failed: the optimized model differs from the original by {worst:.3g} "
            f"(output scale {scale:.3g}, tolerance {tolerance:.3g} = atol {atol:g} + rtol {rtol:g} * scale)",
            max_abs_error=worst, tolerance=tolerance)
    return result
