"""Reproduce the paper's prediction-time table (Section 5) with foldpass, under onnxruntime and PyTorch.

Each case builds a network from models/ (random weights, non-trivial BN statistics) and times,
side by side in one interleaved run, the original exported the usual way (torch.onnx.export,
run with ORT_ENABLE_ALL), the same after ORT's offline optimization and after onnxsim (the
peers), foldpass's output, and a hand-written reference (the network without skips, or a bare
Gemm). Then the PyTorch side: eager original, eager reference, and foldpass's GraphModule.

    python tools/reproduce_paper.py                 # writes docs/results.md, docs/results.json, docs/paper_cases.png
    python tools/reproduce_paper.py --quick         # fewer rounds, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import foldpass
import models
from foldpass.benchmark import bench_with_peers, environment
from foldpass.export import save_atomic, to_onnx

PAPER = {  # RTX 2060, PyTorch, batch 64, us per image
    "linear ResNet34": ("104.91 us -> 2.06 us (98%)", "one Gemm"),
    "3-layer CNN (linear, skip)": ("12.05 us -> 2.06 us", "one Gemm"),
    "ResNet34 at t = 0": ("106.83 us -> 83.1 us (22%)", "skips removed"),
    "6-layer CNN at t = 0": ("30.72 us -> 16.44 us (46%)", "skips removed"),
}


def gemm_onnx(n: int, m: int, path: str) -> None:
    """A hand-built Flatten -> Gemm model: the floor a folded linear network can reach."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((n, m)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(m).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("Gemm", ["f", "W", "B"], ["y"])],
        "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", m])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, path)


def torch_times(modules: dict[str, torch.nn.Module], batch: int, rounds: int) -> dict[str, float]:
    """Median us per image for each module, interleaved round by round."""
    x = torch.randn(batch, 1, 28, 28)
    times = {k: [] for k in modules}
    with torch.inference_mode():
        for m in modules.values():
            m(x)
        for _ in range(rounds):
            for k, m in modules.items():
                start = time.perf_counter()
                m(x)
                times[k].append((time.perf_counter() - start) / batch)
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


def build_cases(width: int):
    fb = models.randomize_batchnorm
    torch.manual_seed(0)
    lin34 = fb(models.linear_resnet34(width=width)).eval()
    cnn3 = fb(models.CNN3(linear=True)).eval()
    r34 = fb(models.resnet34(width=width, t=0.0)).eval()
    r34_plain = models.resnet34(width=width, skips=False).eval()
    r34_plain.load_state_dict(r34.state_dict(), strict=False)
    cnn6 = fb(models.CNN6(t=0.0)).eval()
    cnn6_plain = models.CNN6(skips=False).eval()
    cnn6_plain.load_state_dict(cnn6.state_dict(), strict=False)
    return [
        ("linear ResNet34", lin34, None),
        ("3-layer CNN (linear, skip)", cnn3, None),
        ("ResNet34 at t = 0", r34, r34_plain),
        ("6-layer CNN at t = 0", cnn6, cnn6_plain),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs"))
    ap.add_argument("--docs-only", action="store_true", help="rewrite results.md and the plot from OUT/results.json")
    args = ap.parse_args()
    if args.docs_only:
        with open(os.path.join(args.out, "results.json")) as f:
            data = json.load(f)
        write_docs(args.out, data["environment"], data["cases"])
        return 0
    rounds = 3 if args.quick else 9
    x = torch.randn(1, 1, 28, 28)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, plain in build_cases(args.width):
            print(f"== {name}", flush=True)
            start = time.perf_counter()
            result = foldpass.optimize(model, x, source=name)
            fold_s = time.perf_counter() - start
            paths = {k: os.path.join(tmp, f"{k}.onnx") for k in ("original", "foldpass", "reference")}
            start = time.perf_counter()
            v = result.save_onnx(paths["foldpass"])
            export_s = time.perf_counter() - start
            save_atomic(to_onnx(model, (x,)), paths["original"])
            if plain is None:
                gemm_onnx(784, 10, paths["reference"])
                ref_name = "hand-built single Gemm"
            else:
                save_atomic(to_onnx(plain, (x,)), paths["reference"])
                ref_name = "hand-written, no skips"
            res = bench_with_peers([paths["original"], paths["foldpass"], paths["reference"]],
                                   ["original", "foldpass", ref_name], provider="cpu", batches=(1, 64),
                                   rounds=rounds, round_s=0.05)
            torch_modules = {"eager original": model, "foldpass GraphModule": result.module}
            if plain is not None:
                torch_modules["eager hand-written, no skips"] = plain
            tt = torch_times(torch_modules, 64, rounds)
            record = {"case": name, "paper": PAPER[name][0], "fold_s": fold_s, "export_verify_s": export_s,
                      "max_abs_error": v.max_abs_error, "tolerance": v.tolerance,
                      "ops_before": result.report.before.ops, "ops_after": result.report.after.ops,
                      "onnx_ops": result.report.onnx_ops, "onnxruntime": res.as_dict(), "pytorch_us_b64": tt}
            records.append(record)
            print(res.markdown(), flush=True)
    env = environment("CPUExecutionProvider")
    write_docs(args.out, env, records)
    return 0


def write_docs(out: str, env: dict, records: list[dict]) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"environment": env, "cases": records}, f, indent=2)
    lines = [
        "# Measured: the paper's cases under foldpass",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores ({env['machine']}); onnxruntime {env['onnxruntime']} "
        f"(CPUExecutionProvider, ORT_ENABLE_ALL), torch {env.get('torch')}, Python {env['python']}; {env['date']}.",
        "Random weights with non-trivial batch-norm statistics; MNIST shape 1x28x28; width 64 for the ResNets.",
        "Each table comes from one interleaved run: inside each round the models alternate in blocks of about",
        "2 ms; reported are the median over rounds and, as the speed-up, the median ratio to the original over",
        "neighbouring blocks. onnxruntime's intra-op threads do not spin between runs (see foldpass/bench.py).",
        "",
        "**CUDA: not yet measured.** No GPU was lent to the sessions so far. The paper's own figures are on an",
        "RTX 2060 in PyTorch, so only the ratios can be compared with ours.",
        "",
        "Re-run: `python tools/reproduce_paper.py` (about 5 minutes on 2 cores).",
        "",
        "![batch 64 per-image times](paper_cases.png)",
        "",
        "| case | paper (GPU, PyTorch, batch 64) | foldpass vs original, ORT CPU, batch 64 / 1 | "
        "hand-written reference, batch 64 / 1 |",
        "|---|---|---:|---:|",
    ]
    for rec in records:
        by = {(r["model"], r["batch"]): r for r in rec["onnxruntime"]["results"]}
        ref = next(r["model"] for r in rec["onnxruntime"]["results"] if r["model"].startswith("hand"))
        f64, f1 = by[("foldpass", 64)], by[("foldpass", 1)]
        r64, r1 = by[(ref, 64)], by[(ref, 1)]
        lines.append(f"| {rec['case']} | {rec['paper']} | {f64['median_us_per_image']:,.2f} us ({f64['speedup_vs_first']:,.2f}x)"
                     f" / {f1['median_us_per_image']:,.2f} us ({f1['speedup_vs_first']:,.2f}x) | {ref}: "
                     f"{r64['median_us_per_image']:,.2f} us / {r1['median_us_per_image']:,.2f} us |")
    lines.append("")
    for rec in records:
        name = rec["case"]
        lines += [f"## {name}", "", f"Paper (GPU, PyTorch, batch 64): {rec['paper']}.", ""]
        lines.append(f"foldpass: trace + passes {rec['fold_s']:.1f} s, export + verification {rec['export_verify_s']:.1f} s; "
                     f"max abs error {rec['max_abs_error']:.2g} (tolerance {rec['tolerance']:.2g}); ONNX ops after: "
                     + ", ".join(f"{k} x{v}" for k, v in (rec["onnx_ops"] or {}).items()) + ".")
        lines += ["", "onnxruntime, CPU:", ""]
        lines.append("| model | batch | us / image | IQR | speed-up vs original |")
        lines.append("|---|---:|---:|---:|---:|")
        for r in rec["onnxruntime"]["results"]:
            lines.append(f"| {r['model']} | {r['batch']} | {r['median_us_per_image']:,.2f} | "
                         f"{r['q25_us']:,.2f} - {r['q75_us']:,.2f} | {r['speedup_vs_first']:,.2f}x |")
        for note in rec["onnxruntime"]["notes"]:
            lines.append(f"\nNote: {note}")
        lines += ["", "PyTorch (CPU, batch 64, inference_mode), us / image: "
                  + ", ".join(f"{k} {v:,.2f}" for k, v in rec["pytorch_us_b64"].items()), ""]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot_cases(os.path.join(out, "paper_cases.png"), records)


def plot_cases(path: str, records: list[dict]) -> None:
    """One panel per case, batch 64; bars start from a floor well below the smallest, so heights compare."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(records), figsize=(4.5 * len(records), 4.5))
    for ax, rec in zip(axes, records):
        rows = [r for r in rec["onnxruntime"]["results"] if r["batch"] == 64]
        ys = [r["median_us_per_image"] for r in rows]
        ax.bar(range(len(rows)), ys, color=["tab:gray"] * (len(rows) - 2) + ["tab:green", "tab:blue"])
        ax.set_xticks(range(len(rows)), [r["model"] for r in rows], rotation=35, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylim(bottom=min(ys) / 4, top=max(ys) * 2)
        ax.set_title(f"{rec['case']}\n(batch 64, onnxruntime CPU)", fontsize=9)
        ax.set_ylabel("us per image (median, log scale)")
        for i, y in enumerate(ys):
            ax.annotate(f"{y:.3g}", (i, y), ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
