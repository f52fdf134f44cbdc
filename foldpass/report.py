"""What `optimize` did: op counts, parameters and MACs before and after, every pass's notes,
every candidate it declined and why, and the verification result. As a table, or as JSON."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.fx as fx

from .cost import graph_macs
from .graph import count_ops, count_params
from .passes.base import Note
from .shapes import infer_shapes


@dataclass
class GraphStats:
    ops: dict[str, int]
    params: int
    macs: int  # per sample

    @classmethod
    def of(cls, gm: fx.GraphModule) -> "GraphStats":
        return cls(count_ops(gm), count_params(gm), graph_macs(gm, infer_shapes(gm)))

    @property
    def nodes(self) -> int:
        return sum(self.ops.values())


@dataclass
class Report:
    source: str
    pipeline: str
    input_shapes: list[list[int]]
    before: GraphStats
    after: GraphStats
    notes: list[Note] = field(default_factory=list)
    rounds: int = 0
    changed_by: dict[str, int] = field(default_factory=dict)  # pass name -> rounds in which it changed the graph
    static_batch: int | None = None
    batch: str = "dynamic"  # how the batch came out, and why (tracing.BATCH_NOTE_KEY)
    precision: str = "fp32"  # of the written ONNX
    max_error: float | None = None  # optimized fx module vs original, PyTorch
    verification: dict | None = None  # the ONNX gate, once save_onnx ran
    onnx_ops: dict[str, int] | None = None
    direct_ops: dict[str, int] | None = None  # the usual export of the same model (save_onnx's guard)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def applied(self) -> list[Note]:
        return [n for n in self.notes if n.action == "applied"]

    @property
    def declined(self) -> list[Note]:
        return [n for n in self.notes if n.action == "declined"]

    def as_dict(self) -> dict:
        stats = lambda s: {"ops": s.ops, "nodes": s.nodes, "params": s.params, "macs_per_sample": s.macs}  # noqa: E731 - a one-line helper, local to this function
        return {
            "source": self.source, "pipeline": self.pipeline, "input_shapes": self.input_shapes,
            "static_batch": self.static_batch, "batch": self.batch, "precision": self.precision,
            "rounds": self.rounds, "changed_by": self.changed_by,
            "before": stats(self.before), "after": stats(self.after),
            "applied": [n.as_dict() for n in self.applied], "declined": [n.as_dict() for n in self.declined],
            "info": [n.as_dict() for n in self.notes if n.action == "info"],
            "max_error": self.max_error, "verification": self.verification, "onnx_ops": self.onnx_ops,
            "direct_ops": self.direct_ops,
            "timings_s": self.timings, "warnings": self.warnings,
        }

    def to_json(self, path: str, force: bool = False) -> None:
        from .outputs import write_json

        write_json(path, self.as_dict(), force=force)

    def render(self, console=None, explain: bool = False) -> None:
        """Prints the before/after table and the passes' notes with rich."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        table = Table(title=f"foldpass: {self.source}  (pipeline '{self.pipeline}')", title_justify="left")
        table.add_column("op")
        table.add_column("before", justify="right")
        table.add_column("after", justify="right")
        for op in sorted(set(self.before.ops) | set(self.after.ops)):
            b, a = self.before.ops.get(op, 0), self.after.ops.get(op, 0)
            style = "green" if a < b else ("yellow" if a > b else "")
            table.add_row(op, str(b or "-"), str(a or "-"), style=style)
        table.add_section()
        table.add_row("ops (total)", f"{self.before.nodes:,}", f"{self.after.nodes:,}")
        table.add_row("parameters", f"{self.before.params:,}", f"{self.after.params:,}")
        table.add_row("MACs / sample", f"{self.before.macs:,}", f"{self.after.macs:,}")
        if self.onnx_ops:
            table.add_row("ONNX ops", "", ", ".join(f"{k} x{v}" if v > 1 else k for k, v in self.onnx_ops.items()))
        if self.onnx_ops and self.direct_ops:
            table.add_row("ONNX ops, direct export", str(sum(self.direct_ops.values())),
                          str(sum(self.onnx_ops.values())))
        console.print(table)
        console.print(f"  batch    {self.batch}", highlight=False)
        for note in self.applied:
            console.print(f"  [green]applied[/]  {note.pass_name}: {note.message}")
        declined = self.declined
        for note in declined if explain else declined[:12]:
            console.print(f"  [yellow]kept[/]     {note.pass_name}: {note.message}")
        if not explain and len(declined) > 12:
            console.print(f"  ... and {len(declined) - 12} more kept (--explain lists them all)")
        if explain:
            for note in self.notes:
                if note.action == "info":
                    console.print(f"  [dim]info     {note.pass_name}: {note.message}[/]")
        for w in self.warnings:
            console.print(f"  [red]warning[/]  {w}")
        if explain and self.timings:
            console.print("  time     " + ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items()), highlight=False)
        if self.verification:
            v = self.verification
            held = (f" = twice the model's own float32 noise {v['allowance'] / 2:.3g} + the tolerance"
                    if v.get("basis") == "float32 noise" else "")
            console.print(f"  [bold green]verified[/] onnxruntime vs original on {v['cases']} inputs: max abs error "
                          f"{v['max_abs_error']:.3g} (output scale {v['output_scale']:.3g}, tolerance "
                          f"{v['tolerance']:.3g}{held})")
        elif self.max_error is not None:
            console.print(f"  max abs error (PyTorch, optimized vs original): {self.max_error:.3g}")
