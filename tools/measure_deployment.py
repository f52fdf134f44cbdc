"""Deployment outputs (issue 17), measured: a .pt2 exported the usual way (no dynamic_shapes, so
torch fixes the batch to 1) through `foldpass optimize`, and --precision fp16 against fp32 on CPU.

For the paper's linear ResNet34 and ResNet34 at t = 0 (width 64, 1 x 28 x 28, random weights and
batch-norm statistics), one interleaved onnxruntime run (foldpass.bench) times, at batch 1 and 64:
    direct export   torch.onnx.export(model, dynamo=True) with a dynamic batch: the strongest peer
    foldpass fp32   `foldpass optimize m.pt2` of the batch-1 .pt2
    foldpass fp16   the same with --precision fp16 (float32 I/O)
and it records the ONNX input shape foldpass wrote and fp16's error against the float32 original.

    python tools/measure_deployment.py            # writes docs/deployment.md and docs/deployment.json
    python tools/measure_deployment.py --quick    # fewer rounds, width 16: a smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import foldpass
from foldpass import models
from foldpass.benchmark import bench, environment
from foldpass.export import save_atomic, to_onnx

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs")
CASES = {
    "linear ResNet34": lambda w: models.linear_resnet34(width=w),
    "ResNet34 at t = 0": lambda w: models.resnet34(width=w, t=0.0),
}


def input_shape(path: str) -> list:
    dims = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def fp16_error(path: str, model: torch.nn.Module) -> tuple[float, float]:
    """(max abs error, that / the output's scale) of an ONNX file against the float32 model, batch 64."""
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    err = float(np.abs(got - want).max())
    return err, err / float(np.abs(want).max())


def measure(name: str, width: int, rounds: int, tmp: str) -> dict:
    torch.manual_seed(0)
    model = models.randomize_batchnorm(CASES[name](width)).eval()
    pt2, direct, fp32, fp16 = (os.path.join(tmp, f) for f in ("m.pt2", "direct.onnx", "fp32.onnx", "fp16.onnx"))
    torch.export.save(torch.export.export(model, (torch.randn(1, 1, 28, 28),)), pt2)  # the usual way: batch 1
    save_atomic(to_onnx(model, (torch.randn(1, 1, 28, 28),)), direct)
    result = foldpass.optimize(foldpass.load_source(pt2))
    result.save_onnx(fp32)
    check = result.save_onnx(fp16, precision="fp16")
    timing = bench([direct, fp32, fp16], ["direct export", "foldpass fp32", "foldpass fp16"], batches=(1, 64),
                   rounds=rounds)
    err, rel = fp16_error(fp16, model)
    ratio = {f"{t.name} b{t.batch}": t.speedup for t in timing.timings}
    us = {f"{t.name} b{t.batch}": t.median_us for t in timing.timings}
    return {"case": name, "width": width, "batch": result.report.batch, "onnx_input": input_shape(fp32),
            "fp16_input": input_shape(fp16), "fp16_max_abs_error": err, "fp16_relative_error": rel,
            "fp16_gate_tolerance": check.tolerance, "us_per_image": us, "speedup_vs_direct": ratio}


def markdown(records: list[dict], env: dict, rounds: int) -> str:
    lines = [
        "# Deployment outputs: a batch-1 .pt2, and fp16 (measured)",
        "",
        f"Measured {env['date']} on {env['cpu']} ({env['cores']} cores), onnxruntime {env['onnxruntime']} "
        f"({env['provider']}), torch {env['torch']}, Python {env['python']}. Re-run: "
        "`python tools/measure_deployment.py` (about a minute on 2 cores).",
        "",
        "Each model (random weights and batch-norm statistics, 1 x 28 x 28, width "
        f"{records[0]['width']}) is exported the usual way, `torch.export.export(model, (torch.randn(1, 1, 28, 28),))`"
        " with no `dynamic_shapes`, so the `.pt2` fixes its batch to 1; `foldpass optimize` writes the ONNX. "
        "The peer is the same model exported directly with `torch.onnx.export(dynamo=True)` and a dynamic batch. "
        f"One interleaved onnxruntime run, {rounds} rounds, medians; speed-up = direct export's time / this one's.",
        "",
        "| model | batch foldpass wrote | ONNX input | direct export b1 / b64 (us per image) | foldpass fp32 b1 / b64 | "
        "foldpass fp16 b1 / b64 |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in records:
        us, sp = r["us_per_image"], r["speedup_vs_direct"]
        cell = lambda n: (f"{us[n + ' b1']:.2f} / {us[n + ' b64']:.2f} us ({sp[n + ' b1']:.2f}x / "  # noqa: E731 - a one-line helper, local to this function
                          f"{sp[n + ' b64']:.2f}x)")
        lines.append(f"| {r['case']} | {r['batch'].split(' (')[0]} | {r['onnx_input']} | "
                     f"{us['direct export b1']:.2f} / {us['direct export b64']:.2f} | {cell('foldpass fp32')} | "
                     f"{cell('foldpass fp16')} |")
    lines += [
        "",
        "fp16's error against the float32 original (batch 64, random normal inputs):",
        "",
        "| model | max abs error | relative to the output's scale | the gate's tolerance |",
        "|---|---:|---:|---:|",
    ]
    for r in records:
        lines.append(f"| {r['case']} | {r['fp16_max_abs_error']:.3g} | {r['fp16_relative_error']:.2e} | "
                     f"{r['fp16_gate_tolerance']:.3g} |")
    lines += [
        "",
        "Reading:",
        "- The batch-1 `.pt2` comes out with a dynamic batch (`['batch', 1, 28, 28]`): the same file runs at batch 64.",
        "- On this CPU, fp16 is no faster than fp32: onnxruntime's CPU provider has few float16 kernels and "
        "inserts casts around the others. fp16 halves the file and is meant for GPUs (onnxruntime's CUDA "
        "provider, TensorRT); those timings need a GPU and are not measured here.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=DOCS)
    args = parser.parse_args()
    width, rounds = (16, 3) if args.quick else (64, 9)
    records = []
    for name in CASES:
        print(f"measuring {name} ...", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            records.append(measure(name, width, rounds, tmp))
    env = environment("CPUExecutionProvider")
    foldpass.write_json(os.path.join(args.out, "deployment.json"), {"environment": env, "records": records}, force=True)
    text = markdown(records, env, rounds)
    with open(os.path.join(args.out, "deployment.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
