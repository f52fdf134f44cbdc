"""`foldpass demo`: the paper's linear ResNet34 (random weights, random batch-norm statistics)
folded into one Gemm, verified, and timed against the original. Needs no files and no extras."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from .benchmark import BenchResult
from .optimizer import OptimizeResult


@dataclass
class DemoResult:
    optimized: OptimizeResult
    timing: BenchResult
    output: str | None  # where the folded ONNX was written (None: a temporary directory)

    def render(self, console=None) -> None:
        from rich.console import Console

        console = console or Console()
        self.optimized.report.render(console)
        console.print(self.timing.markdown(), highlight=False)
        console.print(f"speed-up at batch 64 on {self.timing.provider}: {self.timing.timings[1].speedup:,.0f}x")


def demo(width: int = 64, output: str | None = None, force: bool = False, progress: bool = False,
         on_step=None) -> DemoResult:
    """Folds models.linear_resnet34(width) and times it at batch 64; writes the ONNX to `output` if given."""
    import torch

    from .benchmark import bench
    from .export import save_atomic, to_onnx
    from .models import linear_resnet34, randomize_batchnorm
    from .optimizer import optimize

    step = on_step or (lambda text: None)
    torch.manual_seed(0)
    model = randomize_batchnorm(linear_resnet34(width=width)).eval()
    x = torch.randn(2, 1, 28, 28)
    with tempfile.TemporaryDirectory() as tmp:
        written = output or os.path.join(tmp, "linear_resnet34.folded.onnx")
        step("folding the linear ResNet34")
        result = optimize(model, x, source="models:linear_resnet34 (random weights, random BN statistics)")
        step("exporting and verifying")
        result.save_onnx(written, force=force)
        original = os.path.join(tmp, "original.onnx")
        save_atomic(to_onnx(model, (x,)), original)
        step("timing")
        timing = bench([original, written], ["linear ResNet34 (original)", "folded: one Gemm"], batches=(64,),
                       rounds=5, progress=progress)
    return DemoResult(result, timing, output)
