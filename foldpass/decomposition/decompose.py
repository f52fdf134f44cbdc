"""`decompose(model, example_input, method, rank)`: low-rank factorization of a model's convs, with
optional batch-norm recalibration and fine-tuning. Lossy, unlike `optimize`: the result reports
how far its outputs moved instead of refusing to be written.

    result = foldpass.decompose(model, x, method="tucker", rank=0.1, finetune=(foldpass.load_data("digits"), 2))
    result.save_pt2("small.pt2")            # then: foldpass optimize small.pt2 -o small.onnx

With data, the steps after factorizing are: (1) recalibrate every batch norm's running statistics
on the training inputs (the factorized convs feed them activations of another scale, and frozen
statistics compound that layer by layer); (2) fine-tune everything, batch norm in training mode.
"""

from __future__ import annotations

import copy
from functools import partial
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch.export import ExportedProgram

from ..cost import graph_macs
from ..extras import require
from ..passes import run_pipeline
from ..shapes import infer_shapes
from ..tracing import trace
from .batchnorm_training import recalibrate_batchnorm, trainable_batchnorm
from .low_rank_decomposition import LayerReport, low_rank_decomposition, total_params


@dataclass
class DecomposeResult:
    module: fx.GraphModule
    method: str | dict  # one for every layer, or {conv node name: method}
    rank: object
    layers: list[LayerReport]
    params: tuple[int, int]
    macs: tuple[int, int]
    output_error: float  # max |new - old| / max |old| on random inputs, before fine-tuning
    accuracy: dict = field(default_factory=dict)  # "original", "decomposed", "recalibrated", "finetuned" (selection)
    test_accuracy: dict = field(default_factory=dict)  # "original", "final": the test split, read once at the end
    data: dict = field(default_factory=dict)  # DataSplits.describe()
    kept: list[str] = field(default_factory=list)  # each conv left alone, and why
    inputs: tuple[torch.Tensor, ...] = field(default=(), repr=False)

    def save_pt2(self, path: str, force: bool = False) -> None:
        from ..homotopy.training import export_pt2

        export_pt2(self.module, path, torch.cat([self.inputs[0]] * 2) if self.inputs[0].shape[0] == 1 else self.inputs[0],
                   force=force)

    def render(self, console=None) -> None:
        """The per-layer table, the convs left alone and why, and the model's totals (rich)."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        shown = self.method if isinstance(self.method, str) else "per-layer"
        table = Table(title=f"{shown} decomposition (lossy)")
        for col in ("layer", "shape", "rank", "params", "MACs / sample", "rel. error"):
            table.add_column(col, justify="left" if col in ("layer", "shape") else "right")
        for layer in self.layers:
            table.add_row(layer.node, "x".join(map(str, layer.shape)), ",".join(map(str, layer.rank)),
                          f"{layer.params[0]:,} -> {layer.params[1]:,}", f"{layer.macs[0]:,} -> {layer.macs[1]:,}",
                          f"{layer.error:.3f}")
        console.print(table)
        for reason in self.kept:
            console.print(f"  {reason}", highlight=False)
        p, m = self.params, self.macs
        console.print(f"model: {p[0]:,} -> {p[1]:,} parameters ({p[1] / p[0]:.1%}), {m[0]:,} -> {m[1]:,} MACs "
                      f"({m[1] / max(m[0], 1):.1%}); outputs moved by {self.output_error:.3g} of their scale "
                      "(decomposition is lossy: this is reported, not verified)")
        if self.accuracy:
            console.print("selection accuracy: " + ", ".join(f"{k} {v:.2%}" for k, v in self.accuracy.items()))
        if self.test_accuracy:
            t = self.test_accuracy
            console.print(f"test accuracy: original {t['original']:.2%}, decomposed {t['final']:.2%} "
                          f"({(t['final'] - t['original']) * 100:+.2f} points)")
        if not self.layers:
            console.print("no layer was decomposed (each one's reason is listed above)")

    def as_dict(self) -> dict:
        return {"method": self.method, "rank": self.rank, "params": list(self.params), "macs": list(self.macs),
                "output_error": self.output_error, "accuracy": self.accuracy, "test_accuracy": self.test_accuracy,
                "data": self.data,
                "layers": [layer.as_dict() for layer in self.layers], "kept": self.kept}


def decompose(model: torch.nn.Module | ExportedProgram, example_input: torch.Tensor, method: str | dict = "tucker",
              rank="auto", finetune: tuple | None = None, lr: float = 1e-3, recalibrate: bool = True,
              log=None) -> DecomposeResult:
    """Traces `model`, factorizes its k x k convs where that saves MACs, and optionally fine-tunes.

    `finetune`: (DataSplits, epochs); batch norm is recalibrated on its train split first (unless
    `recalibrate` is False), then trained `epochs` with Adam at `lr`; the selection accuracy after
    each step is recorded in `accuracy` ("original", "decomposed", "recalibrated", "finetuned"), and
    at the end the original and the result are evaluated on the test split (`test_accuracy`).
    """
    from ..homotopy.training import evaluate, train

    for module in ("tensorly", "scipy"):  # before any work: the extra this needs
        require(module, "decompose")
    inputs = (example_input,)
    if isinstance(model, torch.nn.Module):
        model = copy.deepcopy(model).eval()
    gm = trace(model, inputs)
    original = copy.deepcopy(gm)
    before_params, before_macs = total_params(gm), graph_macs(gm, infer_shapes(gm))
    layers: list[LayerReport] = []
    # one round: the pass's own output (a Tucker core is a k x k conv) must not be factorized again
    result = run_pipeline(gm, (partial(low_rank_decomposition, method=method, rank=rank, report=layers),), max_rounds=1)
    gm = result.module
    after_macs = graph_macs(gm, infer_shapes(gm))
    x = torch.randn(4, *example_input.shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = original(x), gm(x)
    error = ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
    out = DecomposeResult(gm, method, rank, layers, (before_params, total_params(gm)), (before_macs, after_macs),
                          error, kept=[n.message for n in result.notes if n.action == "declined"], inputs=inputs)
    if finetune:
        splits, epochs = finetune
        train_set, val_set = splits.train, splits.selection
        out.data = splits.describe()
        out.accuracy["original"] = evaluate(original, val_set)[1]
        out.accuracy["decomposed"] = evaluate(gm, val_set)[1]
        if recalibrate and recalibrate_batchnorm(gm, train_set):
            out.accuracy["recalibrated"] = evaluate(gm, val_set)[1]
        if epochs:
            with trainable_batchnorm(gm):
                train(gm, train_set, val_set, None, epochs, lr=lr, log=log)
            out.accuracy["finetuned"] = evaluate(gm, val_set)[1]
        out.test_accuracy = {"original": evaluate(original, splits.test)[1], "final": evaluate(gm, splits.test)[1]}
    return out
