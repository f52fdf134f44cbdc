"""`foldpass compress` against the peers a user would reach for, per network (docs/compress.md).

    python tools/compress_benchmark.py                    # every network, then docs/compress.md
    python tools/compress_benchmark.py --nets resnet34    # one (resumable: finished networks are kept)

Per network, in a subprocess of its own:
  1. the original, trained here on its data (cached in .cache/compress_benchmark, keyed by its settings);
  2. foldpass.compress(original, data, max_drop=1.0) with its defaults (its own checkpoint folder);
  3. the peers, each at the same budget on the same splits:
     - onnxruntime's quantize_static alone on the original's direct export (QDQ, uint8 activations,
       per-channel int8 weights, as its docs recommend for x86; calibrated on the first 256 training images);
     - NNCF's post-training quantization (nncf.quantize on the ONNX model, its defaults, the same images);
     - Torch-Pruning alone: uniform pruning at the largest of 75 / 50 / 25 % within the budget on the
       selection split, fine-tuned with distillation (compress's prune step on the original), exported
       directly by torch.onnx.export;
  4. every file timed in one interleaved run (foldpass.bench: medians of block-by-block ratios against
     the original, with the original a second time as the A/A band), at batch 1 and 64, with one and
     with two onnxruntime threads per session; every file's accuracy on the test split, read at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tools.results_store import Store

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CACHE = os.path.join(ROOT, ".cache", "compress_benchmark")
STORE = Store("compress.json")
MAX_DROP = 1.0
BATCHES = (1, 64)
COLOUR = os.path.join(ROOT, ".cache", "colour_folder", "digits")

# name -> how it is built and trained
NETS = {
    "resnet18": dict(what="torchvision resnet18 (1-channel 7 x 7 stem), MNIST-5k 1 x 28 x 28", data="mnist5k",
                     shape=None, epochs=10),
    # an epoch of this 8-wide network takes about 2 s: compress (and Torch-Pruning alone) fine-tune 20 epochs
    "resnet34": dict(what="the paper's ResNet34, width 8, trained with its skips (static t = 0.5), MNIST-5k",
                     data="mnist5k", shape=None, epochs=30, compress_epochs=20),
    "mobilenet_v2": dict(what="torchvision mobilenet_v2 (1-channel stem), MNIST-5k resized to 1 x 32 x 32",
                         data="mnist5k", shape=(1, 32, 32), epochs=10),
    "colour": dict(what="a ResNet (the paper's, widths 16-128, 2 blocks per stage) on a colour image folder "
                        "(digits coloured, 3 x 32 x 32), through --data folder:", data=f"folder:{COLOUR}",
                   shape=None, epochs=40),
}


def build(name: str):
    import torch
    import torchvision

    from foldpass import models

    if name == "resnet18":
        model = torchvision.models.resnet18(num_classes=10)
        model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    elif name == "resnet34":
        model = models.resnet34(t=0.5, width=8)
    elif name == "mobilenet_v2":
        model = torchvision.models.mobilenet_v2(num_classes=10)
        model.features[0][0] = torch.nn.Conv2d(1, 32, 3, 2, 1, bias=False)
    else:
        model = models.resnet.ResNet(layers=(2, 2, 2, 2), width=16, in_channels=3, t=0.5)
    return model


def splits_of(name: str):
    from foldpass import load_data

    net = NETS[name]
    if name == "colour" and not os.path.isdir(COLOUR):
        from tools.colour_folder import make_folder

        make_folder(COLOUR)
    return load_data(net["data"], shape=net["shape"])


def original(name: str, splits):
    """The trained original: from the cache, or trained here (Adam, cosine lr, 1e-3)."""
    import torch

    from foldpass.homotopy.training import train

    net = NETS[name]
    path = os.path.join(CACHE, f"{name}-e{net['epochs']}.pt")
    model = build(name)
    if os.path.exists(path):
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), None
    began = time.perf_counter()
    train(model, splits.train, splits.selection, None, net["epochs"], lr=1e-3, seed=0, lr_schedule="cosine",
          progress=sys.stdout.isatty())
    os.makedirs(CACHE, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval(), time.perf_counter() - began


def ort_int8(src: str, dst: str, splits) -> None:
    """onnxruntime's static quantization in the form its docs recommend for x86 CPUs (QDQ, uint8
    activations, int8 per-channel weights): the strongest of its settings here (its plain defaults,
    int8 activations per-tensor, ran at 0.44x of the float32 original on resnet18)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from foldpass.compression.measure import session
    from foldpass.compression.steps import Calibration  # the reader compress's own int8 step uses

    quantize_static(src, dst, Calibration(splits.train, session(src).get_inputs()[0].name), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def nncf_int8(src: str, dst: str, splits) -> None:
    import nncf
    import onnx

    from foldpass.compression.measure import session

    name = session(src).get_inputs()[0].name
    images = [splits.train[i][0].unsqueeze(0).numpy() for i in range(256)]
    quantized = nncf.quantize(onnx.load(src), nncf.Dataset(images, lambda x: {name: x}))
    onnx.save(quantized, dst)


def pruning_alone(model, splits, example, workdir: str, dst: str, original_acc: float, epochs: int) -> dict:
    """Torch-Pruning as a user who knows it would run it: the largest uniform ratio within the budget."""
    import onnx

    from foldpass.compression import steps
    from foldpass.compression.measure import onnx_accuracy
    from foldpass.export import direct_export

    job = steps.Job(splits, model, example, workdir, epochs=epochs, log=lambda text: print(text, flush=True))
    tried = []
    for ratio in (0.75, 0.5, 0.25):
        state = steps.prune(job, steps.State(model, ""), ratio)
        onnx.save(direct_export(state.model, (example,)), dst)
        acc = onnx_accuracy(dst, splits.selection)
        tried.append({"ratio": ratio, "selection_acc": acc})
        if (original_acc - acc) * 100 <= MAX_DROP:
            return {"ratio": ratio, "tried": tried}
    os.remove(dst)
    return {"ratio": None, "tried": tried}


def run_one(name: str) -> dict:
    import onnx
    import torch

    import foldpass
    from foldpass.benchmark import bench, environment
    from foldpass.compression.measure import onnx_accuracy, onnx_params
    from foldpass.compression.table import markdown
    from foldpass.export import direct_export

    torch.set_num_threads(2)
    splits = splits_of(name)
    model, train_s = original(name, splits)
    example = torch.zeros(2, *splits.shape)
    work = os.path.join(CACHE, name)
    os.makedirs(work, exist_ok=True)
    files = {"original": os.path.join(work, "original-direct.onnx")}
    onnx.save(direct_export(model, (example,)), files["original"])
    original_acc = onnx_accuracy(files["original"], splits.selection)
    entry = {"what": NETS[name]["what"], "data": splits.describe(), "train_seconds": train_s, "seconds": {}}

    began = time.perf_counter()
    ckpt = os.path.join(work, "compress")
    resume = os.path.isfile(os.path.join(ckpt, "state.json"))
    epochs = NETS[name].get("compress_epochs", 5)  # 5: compress's default
    entry["compress_epochs"] = epochs
    result = foldpass.compress(model, splits, max_drop=MAX_DROP, epochs=epochs, checkpoint=ckpt, resume=resume,
                               progress=False,
                               log=lambda text: print(f"[{name}] {text}", flush=True))
    entry["seconds"]["compress"] = time.perf_counter() - began
    entry["compress"] = result.as_dict()
    entry["compress_table"] = markdown(result)
    files["foldpass compress"] = os.path.join(work, "compressed.onnx")
    if os.path.exists(files["foldpass compress"]):
        os.remove(files["foldpass compress"])
    result.save_onnx(files["foldpass compress"])

    for peer, fn in (("onnxruntime quantize_static", ort_int8), ("NNCF quantize", nncf_int8)):
        began = time.perf_counter()
        files[peer] = os.path.join(work, peer.split()[0].lower() + "-int8.onnx")
        try:
            fn(files["original"], files[peer], splits)
        except Exception as exc:  # noqa: BLE001 - a peer failing is itself the result
            entry.setdefault("peer_errors", {})[peer] = f"{type(exc).__name__}: {exc}"[:300]
            del files[peer]
        entry["seconds"][peer] = time.perf_counter() - began
    began = time.perf_counter()
    files["Torch-Pruning alone"] = os.path.join(work, "torch-pruning.onnx")
    entry["pruning_alone"] = pruning_alone(model, splits, example, work, files["Torch-Pruning alone"], original_acc,
                                           epochs)
    if entry["pruning_alone"]["ratio"] is None:
        del files["Torch-Pruning alone"]
    entry["seconds"]["Torch-Pruning alone"] = time.perf_counter() - began

    names = ["original", "original (A/A)", *[k for k in files if k != "original"]]
    paths = [files["original"], files["original"], *[files[k] for k in names[2:]]]
    entry["speed"] = {}
    for threads in (1, 2):
        timed = bench(paths, names, batches=BATCHES, rounds=9, round_s=0.3, threads=threads)
        entry["speed"][str(threads)] = [t.as_dict() for t in timed.timings]
    entry["accuracy"] = {k: {"selection": onnx_accuracy(p, splits.selection), "test": onnx_accuracy(p, splits.test),
                             "params": onnx_params(p)} for k, p in files.items()}
    entry["environment"] = environment("cpu")
    entry["versions"] = foldpass.versions()
    entry["date"] = datetime.date.today().isoformat()
    return entry


# ----------------------------------------------------------------------------- the page


def _speed(entry: dict, threads: str, model: str, batch: int) -> dict:
    return next(t for t in entry["speed"][threads] if t["model"] == model and t["batch"] == batch)


def page(results: dict) -> str:
    lines = ["# foldpass compress against the peers", "",
             "Written by `python tools/compress_benchmark.py` from docs/compress.json. Each network: trained here, then "
             "`foldpass.compress(model, data, max_drop=1.0)` with its defaults (every choice on the selection split), "
             "and the peers at the same budget on the same splits. Speed-ups: onnxruntime CPU, one interleaved run of "
             "every file, median of block-by-block ratios against the original's direct export (`torch.onnx.export`); "
             "the original timed a second time gives the A/A band. Accuracy: the test split, read once at the end.", ""]
    lines += summary(results)
    for name, entry in results["nets"].items():
        if "speed" not in entry:
            continue
        env = entry["environment"]
        lines += [f"## {name}", "", f"{entry['what']}. Data: {entry['data']['train']:,} train / "
                  f"{entry['data']['selection']:,} selection / {entry['data']['test']:,} test. "
                  f"Measured {entry['date']} on {env.get('cpu', '?')} ({env.get('cores', '?')} cores), "
                  f"{', '.join(f'{k} {v}' for k, v in entry['versions'].items())}.", "",
                  "| file | test accuracy | change (points) | params | "
                  + " | ".join(f"speed-up b{b}, {t} thr" for t in ("1", "2") for b in BATCHES) + " |",
                  "|---|---:|---:|---:|" + "---:|" * 4]
        base = entry["accuracy"]["original"]["test"]
        for model in [m for m in dict.fromkeys(t["model"] for t in entry["speed"]["1"])]:
            acc = entry["accuracy"].get("original" if model == "original (A/A)" else model)
            speeds = [f"{_speed(entry, t, model, b)['speedup_vs_first']:.2f}x" for t in ("1", "2") for b in BATCHES]
            lines.append(f"| {model} | {acc['test']:.2%} | {(acc['test'] - base) * 100:+.2f} | {acc['params']:,} | "
                         + " | ".join(speeds) + " |")
        ms = [f"{_speed(entry, '1', 'original', b)['median_us_per_image'] / 1000:.3f} ms at batch {b}" for b in BATCHES]
        lines += ["", f"The original (1 thread): {', '.join(ms)} per image.", ""]
        pa = entry["pruning_alone"]
        tried = ", ".join(f"{t['ratio']:.0%} -> {t['selection_acc']:.2%}" for t in pa["tried"])
        lines += [f"Torch-Pruning alone: ratio {pa['ratio'] if pa['ratio'] is not None else 'none within the budget'}"
                  f" (tried: {tried}, "
                  "selection accuracy).", ""]
        for peer, error in entry.get("peer_errors", {}).items():
            lines += [f"{peer} failed: `{error}`", ""]
        c = entry["compress"]
        lines += [f"foldpass compress kept: {', '.join(c['kept'])}; run took {entry['seconds']['compress'] / 60:.1f} min "
                  f"(training the original: {(entry['train_seconds'] or 0) / 60:.1f} min, or cached). Its own table "
                  "(latency against the original's direct export, measured during the run, 1 thread):", "",
                  entry["compress_table"], ""]
    return "\n".join(lines)


GOAL = {"resnet18": 4.0, "resnet34": 4.0}  # the goal: at least 4x at batch 1 and 64 (stretch 6x)
PEERS = ("onnxruntime quantize_static", "NNCF quantize", "Torch-Pruning alone")


def summary(results: dict) -> list[str]:
    """One line per network: kept steps, test accuracy, speed-ups (1 thread), the peers, the goal."""
    lines = ["## Summary", "", "Speed-ups with one onnxruntime thread per session; 'vs' columns: foldpass's time "
             "against the peer's at batch 1 / 64 (above 1: foldpass is faster), in parentheses the peer's own change "
             "of test accuracy. The A/A column is the original against itself: ratios inside that distance of 1 are "
             "noise. The goal (the issue): at least 4x at batch 1 and 64 within 1 point on resnet18 and the ResNet34; "
             "the other networks: never slower, within the budget.", "",
             "| network | kept | test before -> after | speed-up b1 / b64 | A/A b1 / b64 | "
             + " | ".join(f"vs {p}" for p in PEERS) + " | goal |", "|---|---|---|---:|---:|" + "---:|" * len(PEERS) + "---|"]
    for name, entry in results["nets"].items():
        if "speed" not in entry:
            continue
        ours = [_speed(entry, "1", "foldpass compress", b)["speedup_vs_first"] for b in BATCHES]
        aa = [_speed(entry, "1", "original (A/A)", b)["speedup_vs_first"] for b in BATCHES]
        acc = entry["accuracy"]
        vs = []
        for peer in PEERS:
            if peer not in acc:
                vs.append("none within budget" if peer == "Torch-Pruning alone" else "failed")
                continue
            theirs = [_speed(entry, "1", peer, b)["speedup_vs_first"] for b in BATCHES]
            drop = (acc["original"]["test"] - acc[peer]["test"]) * 100
            vs.append(" / ".join(f"{o / t:.2f}x" for o, t in zip(ours, theirs)) + f" ({-drop + 0.0:+.1f} pt)")
        change = (acc["foldpass compress"]["test"] - acc["original"]["test"]) * 100
        goal = GOAL.get(name)
        if goal:
            met = min(ours) >= goal and change >= -1.0
            verdict = f"{'met' if met else 'missed'} ({goal:g}x)"
        else:
            verdict = "never slower, within budget: " + ("yes" if min(ours) >= 0.97 and change >= -1.0 else "no")
        lines.append(f"| {name} | {', '.join(entry['compress']['kept'])} | {acc['original']['test']:.2%} -> "
                     f"{acc['foldpass compress']['test']:.2%} ({change:+.2f}) | "
                     f"{ours[0]:.2f}x / {ours[1]:.2f}x | {aa[0]:.2f}x / {aa[1]:.2f}x | " + " | ".join(vs) + f" | {verdict} |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", default=",".join(NETS), help=f"comma-separated, of {', '.join(NETS)}")
    parser.add_argument("--redo", action="store_true", help="measure again the networks already in the results")
    parser.add_argument("--page", action="store_true", help="only write docs/compress.md again from docs/compress.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.page:
        with open(os.path.join(ROOT, "docs", "compress.md"), "w") as f:
            f.write(page(STORE.load({"nets": {}})))
        return
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one)), flush=True)
        return
    results = STORE.load({"nets": {}})
    for name in args.nets.split(","):
        if name in results["nets"] and not args.redo:
            continue
        print(f"== {name}", flush=True)
        found = []
        with subprocess.Popen([sys.executable, __file__, "--one", name], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True) as proc:
            for line in proc.stdout:  # the child's progress, as it goes
                if line.startswith("RESULT "):
                    found.append(line)
                else:
                    print(line, end="", flush=True)
        if proc.returncode or not found:
            print(f"{name}: failed (exit {proc.returncode})", flush=True)
            continue
        results["nets"][name] = json.loads(found[-1][len("RESULT "):])
        STORE.save(results)
    if all(n in results["nets"] for n in args.nets.split(",")):
        STORE.publish(results)
        with open(os.path.join(ROOT, "docs", "compress.md"), "w") as f:
            f.write(page(results))
        print("wrote docs/compress.md")


if __name__ == "__main__":
    main()
