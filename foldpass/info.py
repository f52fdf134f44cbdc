"""`foldpass info model.onnx`: what foldpass recorded in an ONNX file it wrote (provenance.py),
read back from the file alone."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .errors import InputError


@dataclass
class Info:
    path: str
    metadata: dict[str, str]
    report: dict | None
    produced: list[tuple[str, str, str]] = field(default_factory=list)  # (node name, op type, doc_string)

    def as_dict(self) -> dict:
        return {"path": self.path, "metadata": {k: v for k, v in self.metadata.items() if k != "report"},
                "report": self.report, "produced": [list(p) for p in self.produced]}

    def render(self, console=None) -> None:
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        if not self.metadata:
            console.print(f"{self.path}: not written by foldpass (no foldpass metadata)", soft_wrap=True)
            return
        meta = self.metadata
        console.print(f"{self.path}: written by foldpass {meta.get('version', '?')} on {meta.get('date', '?')}",
                      highlight=False)
        for key in ("source", "source_sha256", "pipeline", "batch", "precision"):
            if key in meta:
                console.print(f"  {key:<14} {meta[key]}", highlight=False)
        if "max_abs_error" in meta:
            console.print(f"  verified       max abs error {meta['max_abs_error']} <= tolerance {meta['tolerance']} "
                          f"on {meta.get('verified_cases', '?')} inputs", highlight=False)
        else:
            console.print("  verified       no (written with --no-verify)")
        if self.report:
            before, after = self.report["before"], self.report["after"]
            table = Table(title="ops before / after", title_justify="left")
            for col in ("op", "before", "after"):
                table.add_column(col, justify="left" if col == "op" else "right")
            for op in sorted(set(before["ops"]) | set(after["ops"])):
                table.add_row(op, str(before["ops"].get(op, "-")), str(after["ops"].get(op, "-")))
            table.add_row("parameters", f"{before['params']:,}", f"{after['params']:,}")
            table.add_row("MACs / sample", f"{before['macs_per_sample']:,}", f"{after['macs_per_sample']:,}")
            console.print(table)
        if "compress" in meta:
            self._render_compress(console, meta["compress"])
        for name, op, doc in self.produced:
            console.print(f"  {op:<6} {name}: {doc}", highlight=False, soft_wrap=True)


    @staticmethod
    def _render_compress(console, text: str) -> None:
        """The plan and the table `foldpass compress` recorded (each try, kept or not, and why)."""
        from rich.table import Table

        try:
            record = json.loads(text)
            batches = record["settings"]["batches"]
            table = Table(title=f"foldpass compress (max drop {record['settings']['max_drop']:g} points): "
                                f"kept {', '.join(record['kept']) or 'nothing'}", title_justify="left")
            for col in ("step", "", "selection", "test", *[f"speed-up b{b}" for b in batches], "why"):
                table.add_column(col, justify="right" if col.startswith(("sel", "test", "speed")) else "left")
            for r in record["rows"]:
                pct = [("-" if v is None else f"{v:.2%}") for v in (r["selection_acc"], r["test_acc"])]
                speed = [f"{r['speedup'][str(b)]:.2f}x" if str(b) in r["speedup"] else "-" for b in batches]
                table.add_row(f"{r['step']} {r['option']}".strip(), r["status"], *pct, *speed, r["why"])
        except (ValueError, KeyError, TypeError):
            console.print("  compress       (its record is not readable)")
            return
        console.print(table)


def info(path: str) -> Info:
    """The provenance of an ONNX file (its graph only is read, not its weights)."""
    import onnx

    from .provenance import read

    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's decode errors have no common base: any is "not ONNX"
        raise InputError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    meta = read(model)
    try:
        report = json.loads(meta["report"]) if "report" in meta else None
    except ValueError:
        report = None
    produced = [(n.name, n.op_type, n.doc_string) for n in model.graph.node if n.doc_string.startswith(
        ("batchnorm_folding", "scale_folding", "affine_folding"))]
    return Info(path, meta, report, produced)
