"""Low-rank decomposition of ResNet18 in its CIFAR shape (the seed's 003 setting) with foldpass:
parameters, MACs, accuracy before and after fine-tuning, and per-image prediction time under
onnxruntime (CPU), original and each method side by side in one interleaved run.

CIFAR-10 cannot be downloaded here, so the data is scikit-learn's bundled digits at 3 x 32 x 32
(8 x 8 scans resized, the gray channel repeated). Each method runs at the seed's parameter ratio
per layer (CP 8.4%, Tucker 9.6%, TT 7.4%).

    python tools/reproduce_decomposition.py           # writes docs/decomposition.md and .json
    python tools/reproduce_decomposition.py --quick   # 1 training epoch, smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch
import torchvision
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import foldpass  # noqa: E402
from foldpass.bench import bench, environment  # noqa: E402
from foldpass.data import load_dataset  # noqa: E402
from foldpass.training import evaluate, train  # noqa: E402

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs")
SEED = {  # Corazza & Stojanovic, ResNet18 on CIFAR-10: parameters and accuracy
    "original": ("11.69M", "84.21%"), "cp": ("0.98M (8.4%)", "69.08%"), "tucker": ("1.12M (9.6%)", "75.07%"),
    "tt": ("0.86M (7.4%)", "not given"),
}
RATIOS = {"cp": 0.084, "tucker": 0.096, "tt": 0.074}


def cifar_resnet18() -> nn.Module:
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cp-sweeps", type=int, default=8, help="CP ALS sweeps per layer (TensorLy's ALS is slow)")
    parser.add_argument("--docs-only", action="store_true", help="redraw docs/decomposition.md from the JSON")
    parser.add_argument("--trained", help="cache of the trained weights: loaded if it exists, else written")
    args = parser.parse_args()
    if args.docs_only:
        write_docs(json.load(open(os.path.join(DOCS, "decomposition.json"))))
        print(open(os.path.join(DOCS, "decomposition.md")).read())
        return
    if args.quick:
        args.epochs, args.rounds = 1, 3
    import foldpass.passes.low_rank_decomposition as lrd

    lrd.CP_SWEEPS = args.cp_sweeps
    torch.manual_seed(0)
    data = load_dataset("digits", image_shape=(3, 32, 32))
    model = cifar_resnet18()
    began = time.perf_counter()
    if args.trained and os.path.exists(args.trained):
        model.load_state_dict(torch.load(args.trained, weights_only=True))
    else:
        train(model, *data, None, args.epochs, lr=1e-3,
              log=lambda e: print(f"train epoch {e.epoch}: val acc {e.val_acc:.4f}", flush=True))
        if args.trained:
            torch.save(model.state_dict(), args.trained)
    train_s = time.perf_counter() - began
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    records = {"original": {"params": sum(p.numel() for p in model.parameters()), "accuracy": evaluate(model, data[1])[1]}}
    modules = {"original": model}
    for method, ratio in RATIOS.items():
        began = time.perf_counter()
        result = foldpass.decompose(model, x, method, ratio, finetune=(*data, args.finetune_epochs), lr=1e-4)
        records[method] = {"params": result.params[1], "params_before": result.params[0], "macs": list(result.macs),
                           "output_error": result.output_error, "accuracy": result.accuracy,
                           "layers": [layer.as_dict() for layer in result.layers], "seconds": time.perf_counter() - began}
        modules[method] = result.module
        print(f"{method}: params {result.params[0]:,} -> {result.params[1]:,}, accuracy {result.accuracy}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, module in modules.items():
            path = os.path.join(tmp, f"{name}.onnx")
            foldpass.optimize(module, x).save_onnx(path)
            paths.append(path)
        res = bench(paths, list(modules), provider="cpu", batches=(1, 8), rounds=args.rounds, round_s=0.2)
    print(res.markdown())
    data_out = {"environment": environment("CPUExecutionProvider"), "epochs": args.epochs, "train_s": train_s,
                "finetune_epochs": args.finetune_epochs, "cp_sweeps": args.cp_sweeps, "records": records, "timings": res.as_dict()["results"]}
    with open(os.path.join(DOCS, "decomposition.json"), "w") as f:
        json.dump(data_out, f, indent=1)
    write_docs(data_out)
    print(open(os.path.join(DOCS, "decomposition.md")).read())


def write_docs(d: dict) -> None:
    env, rec = d["environment"], d["records"]
    times = {}
    for t in d["timings"]:
        times.setdefault(t["model"], {})[t["batch"]] = t
    base = rec["original"]["params"]
    lines = ["# Low-rank decomposition: ResNet18 (CIFAR shape), measured", "",
             f"{env['cpu']}, {env['cores']} cores; onnxruntime {env['onnxruntime']}, torch {env['torch']}; {env['date']}. "
             f"Data: sklearn digits at 3 x 32 x 32 (CIFAR-10 cannot be downloaded here); {d['epochs']} training epochs "
             f"(Adam 1e-3), then each method at the seed's parameter ratio per layer and {d['finetune_epochs']} "
             f"fine-tuning epoch(s) (Adam 1e-4, batch norm frozen); CP runs {d['cp_sweeps']} ALS sweeps per layer "
             "(TensorLy's ALS takes seconds per sweep on a 512 x 512 x 3 x 3 kernel). Times: onnxruntime CPU, per-image median, "
             "all models interleaved in one run; ratio = original / model per round. "
             "Re-run: `python tools/reproduce_decomposition.py`.", "",
             "| model | params | vs original | MACs / image | accuracy, decomposed | after fine-tuning | "
             "batch 1, us (ratio) | batch 8, us (ratio) | seed: params | seed: accuracy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for name, r in rec.items():
        acc = r["accuracy"]
        macs = r.get("macs", [None, None])[1] or (rec["cp"]["macs"][0] if "cp" in rec else 0)
        t1, t8 = times[name][1], times[name][8]
        lines.append(
            f"| {name} | {r['params']:,} | {r['params'] / base:.1%} | {macs / 1e6:,.1f}M | "
            + (f"{acc['decomposed']:.2%} | {acc.get('finetuned', float('nan')):.2%}" if isinstance(acc, dict) else f"{acc:.2%} | -")
            + f" | {t1['median_us_per_image']:,.0f} ({t1['speedup_vs_first']:.2f}x) | "
              f"{t8['median_us_per_image']:,.0f} ({t8['speedup_vs_first']:.2f}x) | {SEED[name][0]} | {SEED[name][1]} |")
    errors = {m: sum(x["error"] for x in r["layers"]) / max(len(r["layers"]), 1) for m, r in rec.items() if "layers" in r}
    lines += ["", "Mean relative reconstruction error per layer: "
              + ", ".join(f"{m} {e:.2f}" for m, e in errors.items()) + ".", "",
              "Reading: the speed-up is real (the factorized chains do about a tenth of the MACs and run 4-6x faster "
              "under onnxruntime), but at the seed's parameter ratio the accuracy falls to chance here and one "
              "fine-tuning epoch does not bring it back, so the goal (better accuracy than the seed's figures) is "
              "**not met**. The weights after 3 epochs on 1,442 images are still close to their random, full-rank "
              "initialization, so keeping a tenth of each layer loses most of it (the errors above); the seed "
              "fine-tunes a CIFAR-trained network for many epochs. Still to try: more fine-tuning epochs, a higher "
              "fine-tuning rate, batch-norm recalibration after factorizing, and VBMF ranks (`--rank auto`) rather "
              "than a fixed ratio.", "",
              "Per layer (rank, parameters, relative reconstruction error ||W - W'|| / ||W||) is in "
              "docs/decomposition.json. The first conv (3 input channels) and the 1x1 downsample convs are left "
              "alone: no chain is cheaper there.", ""]
    with open(os.path.join(DOCS, "decomposition.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
