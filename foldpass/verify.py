"""The verification gate: the written ONNX, run by onnxruntime, against the original module.

Passes when   max |onnx(x) - original(x)|  <=  atol + rtol * max |original(x)|   for every input:
random normal inputs at several batch sizes (and the user's own, if given). The tolerance is
relative to the output's scale, because folding reassociates float32 sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from .errors import VerificationError

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5
VERIFY_BATCHES = (1, 3)


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
    if isinstance(out, torch.Tensor):
        return [out.detach().float().numpy()]
    if isinstance(out, (list, tuple)):
        return [a for o in out for a in _flatten(o)]
    if isinstance(out, dict):
        return [a for o in out.values() for a in _flatten(o)]
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

    payload = onnx_model if isinstance(onnx_model, str) else onnx_model.SerializeToString()
    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    worst, scale, details = 0.0, 0.0, []
    for case in cases:
        with torch.no_grad():
            want = _flatten(reference(*case))
        got = session.run(None, {n: x.numpy() for n, x in zip(names, case)})
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
    tolerance = atol + rtol * scale
    result = Verification(worst, scale, tolerance, len(cases), details)
    if not worst <= tolerance:
        raise VerificationError(
            f"verification failed: the optimized model differs from the original by {worst:.3g} "
            f"(output scale {scale:.3g}, tolerance {tolerance:.3g} = atol {atol:g} + rtol {rtol:g} * scale)",
            max_abs_error=worst, tolerance=tolerance)
    return result
