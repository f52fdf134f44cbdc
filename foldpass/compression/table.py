"""compress's table (rich, and markdown for docs) and its plot: accuracy against latency, one point per
step, with the budget line."""

from __future__ import annotations


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2%}"


def _cells(result, row) -> list[str]:
    batches = result.settings["batches"]
    ms = " / ".join(f"{row.ms[b]:.3f}" if b in row.ms else "-" for b in batches)
    speed = " / ".join(f"{row.speedup[b]:.2f}x" if b in row.speedup else "-" for b in batches)
    macs = "-" if row.macs is None else f"{row.macs / 1e6:,.1f}M"
    params = "-" if row.params is None else f"{row.params / 1e3:,.0f}k"
    drop = "-" if row.drop is None else f"{-row.drop:+.2f}"
    step = row.step + (f" {row.option}" if row.option else "")
    return [step, row.status, _pct(row.selection_acc), _pct(row.test_acc), drop, ms, speed, params, macs,
            f"{row.seconds:.0f}"]


def _header(result) -> list[str]:
    b = "/".join(map(str, result.settings["batches"]))
    return ["step", "", "selection", "test", "change", f"ms / image (batch {b})", "speed-up", "params", "MACs", "s"]


def render(result, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"foldpass compress (max drop {result.settings['max_drop']:g} points on the selection split; "
                        "test read once, at the end)", title_justify="left")
    for i, col in enumerate(_header(result)):
        table.add_column(col, justify="left" if i < 2 else "right", no_wrap=i < 2)
    for row in result.rows:
        style = {"kept": "green", "reverted": "yellow", "declined": "dim"}.get(row.status)
        table.add_row(*_cells(result, row), style=style)
    console.print(table)
    for row in result.rows[1:]:  # why each step was kept, reverted or declined
        console.print(f"  {row.step}{' ' + row.option if row.option else ''}: {row.status}: {row.why}", highlight=False)
    o, f = result.original, result.final
    speed = ", ".join(f"{f.speedup.get(b, 1.0):.2f}x at batch {b}" for b in result.settings["batches"])
    console.print(f"kept: {', '.join(result.kept) or 'nothing'}; test accuracy {_pct(o.test_acc)} -> {_pct(f.test_acc)}; "
                  f"{speed} (onnxruntime CPU, {result.settings['threads']} thread(s)); {result.seconds / 60:.1f} min",
                  highlight=False)
    if result.verification:
        v = result.verification
        console.print(f"the file is verified against the last PyTorch model: max abs error {v['max_abs_error']:.3g} "
                      f"<= tolerance {v['tolerance']:.3g}", highlight=False)
    elif "int8" in result.kept:
        console.print("the int8 file is judged by its accuracy above, not verified exactly", highlight=False)


def markdown(result) -> str:
    header = [*_header(result)[:2], "why", *_header(result)[2:]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in [*cells[:2], row.why, *cells[2:]]) + " |"
              for row, cells in ((row, _cells(result, row)) for row in result.rows)]
    return "\n".join(lines)


def plot(result, path: str, force: bool = False) -> None:
    from ..extras import require
    from ..outputs import atomic_write

    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = result.settings["batches"]
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    floor = (result.original.selection_acc - result.settings["max_drop"] / 100) * 100
    for ax, b in zip(axes[0], batches):
        for row in result.rows:
            if b not in row.ms or row.selection_acc is None:
                continue
            colour = {"original": "black", "kept": "tab:green", "reverted": "tab:orange"}.get(row.status, "grey")
            ax.scatter(row.ms[b], row.selection_acc * 100, color=colour)
            ax.annotate(f"{row.step} {row.option}".strip(), (row.ms[b], row.selection_acc * 100), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.axhline(floor, color="tab:red", linestyle="--", linewidth=1, label="budget")
        ax.set_xscale("log")
        ax.set_xlabel("ms per image (onnxruntime CPU, log scale)")
        ax.set_ylabel("selection accuracy (%)")
        ax.set_title(f"batch {b}")
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), force=force)
    finally:
        plt.close(fig)
