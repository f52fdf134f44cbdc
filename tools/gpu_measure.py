"""The paper's prediction-time measurement on a GPU, in one command (issue 19, part 3).

The paper's four cases (linear ResNet34, 3-layer CNN with a linear skip, ResNet34 at t = 0, 6-layer
CNN at t = 0; 1 x 28 x 28, width 64, random weights and batch-norm statistics) at batch 64 and 1,
original against foldpass, in PyTorch on the device:
    eager               the module as it is / foldpass's optimized GraphModule
    CUDA graphs         each captured once and replayed (cuda only)
    torch.compile       backend="inductor" on the original / backend="foldpass" (foldpass, then inductor)
and, when the installed onnxruntime has CUDAExecutionProvider, the original's and foldpass's ONNX
under it (the providers it has are recorded either way). Timing: CUDA events after warm-up
(time.perf_counter on the CPU), variants interleaved round by round, medians; us per image.

    python tools/gpu_measure.py                         # on a GPU machine: docs/results_cuda.md + .json (< 8 min)
    python tools/gpu_measure.py --device cpu --quick    # the smoke run the tests use (small widths, batch 1, no inductor)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import foldpass
from foldpass import models

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs")
PAPER_RTX2060 = {  # the paper's Table (RTX 2060, PyTorch, batch 64): us per image, original -> reduced
    "linear ResNet34": "104.91 -> 2.06",
    "3-layer CNN (linear, skip)": "12.05 -> 2.06",
    "ResNet34 at t = 0": "106.83 -> 83.1",
    "6-layer CNN at t = 0": "30.72 -> 16.44",
}
CASES = {  # name: (builder of width, input shape without the batch, batch sizes)
    "linear ResNet34": (lambda w: models.linear_resnet34(width=w), (1, 28, 28), (64, 1)),
    "3-layer CNN (linear, skip)": (lambda w: models.CNN3(width=w, linear=True), (1, 28, 28), (64, 1)),
    "ResNet34 at t = 0": (lambda w: models.resnet34(width=w, t=0.0), (1, 28, 28), (64, 1)),
    "6-layer CNN at t = 0": (lambda w: models.CNN6(width=w, t=0.0), (1, 28, 28), (64, 1)),
}
TORCHVISION = {  # --torchvision: standard zoo nets (random weights), 3 x 224 x 224
    "torchvision resnet18": ("resnet18", (3, 224, 224), (8, 1)),
    "torchvision mobilenet_v3_small": ("mobilenet_v3_small", (3, 224, 224), (8, 1)),
}


class Timer:
    """us per call of fn: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __call__(self, fn, runs: int) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(runs):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) * 1e3 / runs
        t0 = time.perf_counter()
        for _ in range(runs):
            fn()
        return (time.perf_counter() - t0) * 1e6 / runs


def cuda_graph(module, x):
    """module(x) captured in a CUDA graph; the returned function replays it."""
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            module(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        module(static_x)
    return graph.replay


def variants(model, optimized, x, device: str, compile_: bool, quick: bool) -> tuple[dict, dict]:
    """{name: callable} to time, and {name: compile seconds}."""
    out = {"original eager": lambda: model(x), "foldpass eager": lambda: optimized(x)}
    compile_s = {}
    if device.startswith("cuda"):
        out["original CUDA graph"] = cuda_graph(model, x)
        out["foldpass CUDA graph"] = cuda_graph(optimized, x)
    if compile_:
        torch._dynamo.reset()
        # --quick (the tests' smoke run) skips inductor's C++ / Triton compile: dynamo alone, then eager
        for name, backend, opts in (("original torch.compile", "eager" if quick else "inductor", None),
                                    ("foldpass torch.compile", "foldpass", {"inductor": not quick})):
            t0 = time.perf_counter()
            fn = torch.compile(model, backend=backend, options=opts, dynamic=False)
            fn(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            compile_s[name] = time.perf_counter() - t0
            out[name] = (lambda f: lambda: f(x))(fn)
    return out, compile_s


def ort_cuda(model, optimized_result, x, tmp: str, rounds: int) -> dict:
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return {"providers": providers, "note": "this onnxruntime has no CUDAExecutionProvider: not measured"}
    from foldpass.export import save_atomic, to_onnx

    original, folded = os.path.join(tmp, "original.onnx"), os.path.join(tmp, "folded.onnx")
    save_atomic(to_onnx(model.cpu(), (x[:1].cpu(),)), original)
    optimized_result.save_onnx(folded, force=True)
    res = foldpass.bench([original, folded], ["original", "foldpass"], provider="cuda", batches=(1, 64), rounds=rounds)
    return {"providers": providers, "timings": [{"name": t.name, "batch": t.batch, "us": t.median_us}
                                                for t in res.timings]}


def cases(width: int, torchvision: bool):
    for case, (build, shape, batches) in CASES.items():
        yield case, lambda build=build: build(width), shape, batches
    if torchvision:
        import torchvision.models as tv

        for case, (name, shape, batches) in TORCHVISION.items():
            yield case, lambda name=name: getattr(tv, name)(), shape, batches


def measure(device: str, width: int, rounds: int, runs: int, compile_: bool, quick: bool,
            torchvision: bool = False) -> list[dict]:
    records = []
    for case, build, shape, batches in cases(width, torchvision):
        torch.manual_seed(0)
        model = models.randomize_batchnorm(build()).eval()
        result = foldpass.optimize(model, torch.randn(1, *shape))
        optimized = result.module.to(device)
        model = model.to(device)
        for batch in batches[-1:] if quick else batches:  # the smoke run: batch 1 only (the same code path)
            x = torch.randn(batch, *shape, device=device)
            timer = Timer(device)
            with torch.inference_mode():
                # the smoke run (--quick) compiles the first case only: the same code path, a quarter of the time
                fns, compile_s = variants(model, optimized, x, device, compile_ and not (quick and records), quick)
                for fn in fns.values():  # warm-up
                    timer(fn, 3)
                samples = {name: [] for name in fns}
                for _ in range(rounds):  # interleaved: every variant once per round
                    for name, fn in fns.items():
                        samples[name].append(timer(fn, runs) / batch)
            records.append({"case": case, "batch": batch, "us_per_image": {k: statistics.median(v) for k, v in
                                                                           samples.items()},
                            "compile_s": compile_s})
            print(f"{case:<28} batch {batch:>2}: " + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in
                                                             samples.items()), flush=True)
        if device.startswith("cuda"):
            with tempfile.TemporaryDirectory() as tmp:
                records[-1]["onnxruntime"] = ort_cuda(model, result, x, tmp, rounds)
    return records


def environment(device: str) -> dict:
    import onnxruntime as ort

    env = {"date": date.today().isoformat(), "device": device, "torch": torch.__version__,
           "onnxruntime": ort.__version__, "foldpass": foldpass.__version__, "python": platform.python_version(),
           "machine": platform.machine()}
    if not device.startswith("cuda"):
        from foldpass.benchmark import _cpu_name

        env["cpu"], env["cores"] = _cpu_name(), os.cpu_count()
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        try:
            import subprocess

            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception:  # noqa: BLE001 - no nvidia-smi, or it failed: the driver is just not known
            env["driver"] = "unknown"
    return env


def markdown(records: list[dict], env: dict) -> str:
    where = env.get("gpu") or f"{env.get('cpu', env['device'])} ({env.get('cores', '?')} cores)"
    lines = [f"# The paper's cases on {where} (measured)", "",
             f"Measured {env['date']}: {where}" + (f", driver {env.get('driver')}, CUDA {env.get('cuda')}"
                                                   if "gpu" in env else "") +
             f", torch {env['torch']}, onnxruntime {env['onnxruntime']}, foldpass {env['foldpass']}. "
             "Re-run: `python tools/gpu_measure.py" + ("`" if "gpu" in env else " --device cpu --torchvision`")
             + ". us per image, medians over interleaved rounds; the paper's column is its RTX 2060 table.", "",
             "| case | batch | " + " | ".join(records[0]["us_per_image"]) + " | paper (RTX 2060, b64) |",
             "|---|---:|" + "---:|" * len(records[0]["us_per_image"]) + "---|"]
    for r in records:
        paper = PAPER_RTX2060.get(r["case"], "") if r["batch"] == 64 else ""
        lines.append(f"| {r['case']} | {r['batch']} | " + " | ".join(f"{v:.2f}" for v in r["us_per_image"].values())
                     + f" | {paper} |")
    lines += ["", "Speed-up of foldpass (original's time / foldpass's, same mode):", "",
              "| case | batch | eager | torch.compile |", "|---|---:|---:|---:|"]
    for r in records:
        us = r["us_per_image"]
        compiled = (f"{us['original torch.compile'] / us['foldpass torch.compile']:.2f}x"
                    if "foldpass torch.compile" in us else "")
        lines.append(f"| {r['case']} | {r['batch']} | {us['original eager'] / us['foldpass eager']:.2f}x | {compiled} |")
    compiles = [r for r in records if r["compile_s"]]
    if compiles:
        lines += ["", "Compile time (s, first call): " + "; ".join(
            f"{r['case']} b{r['batch']}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["compile_s"].items())
            for r in compiles)]
    ort_notes = [r["onnxruntime"] for r in records if "onnxruntime" in r]
    if ort_notes:
        lines += ["", f"onnxruntime providers here: {ort_notes[0]['providers']}."]
    if "gpu" not in env:  # what this CPU run showed; a GPU run is read afresh
        lines += ["", "Reading: foldpass's GraphModule in eager PyTorch is the fastest form of every linear case (one Gemm); "
                  "handing that one Gemm to inductor adds its call overhead (the compile column is slower than eager "
                  "foldpass there). On the t = 0 nets the skip-free graph is faster in both modes. The torchvision nets "
                  "(random weights) gain only what folding batch norm and re-parameterizing give (about 1.0x for "
                  "resnet18). CPU timings of 2 cores move by several percent between runs; ratios within 5% are noise."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small widths, few rounds: a smoke run")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--out", default=DOCS, help="where results_<device>.md / .json go")
    parser.add_argument("--torchvision", action="store_true", help="also torchvision's resnet18 and mobilenet_v3_small")
    parser.add_argument("--docs-only", action="store_true", help="redraw the .md from the .json of an earlier run")
    args = parser.parse_args()
    stem = "results_cuda" if args.device.startswith("cuda") else "results_torch_cpu"
    if args.docs_only:
        with open(os.path.join(args.out, stem + ".json")) as f:
            data = json.load(f)
        with open(os.path.join(args.out, stem + ".md"), "w") as f:
            f.write(markdown(data["records"], data["environment"]))
        return
    width, rounds, runs = (4, 2, 2) if args.quick else (64, 15, 20) if args.device.startswith("cuda") else (64, 7, 5)
    records = measure(args.device, width, rounds, runs, not args.no_compile, args.quick, args.torchvision)
    env = environment(args.device)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, stem + ".json"), "w") as f:
        json.dump({"environment": env, "width": width, "records": records}, f, indent=2)
    with open(os.path.join(args.out, stem + ".md"), "w") as f:
        f.write(markdown(records, env))
    print(f"wrote {os.path.join(args.out, stem + '.md')}")


if __name__ == "__main__":
    main()
