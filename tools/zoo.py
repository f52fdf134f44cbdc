"""The zoo benchmark: foldpass against the direct export and the hand-written deploy form, model by model.

For every model (random weights, random batch-norm statistics, 224 x 224): ONNX op counts of
    direct   the train form exported by torch.onnx.export(dynamo=True) (its own optimizer on)
    deploy   timm's hand-written reparameterize_model() form, exported the same way (timm only)
    foldpass foldpass.optimize on the train form, then save_onnx (verified against the original)
with the verification error, the optimize time, what --explain says was kept, and, where the op
counts differ (and --speed), the speed of all of them under onnxruntime CPU, interleaved, at
batch 1 and 8 (ratios against the direct export; the direct export is timed a second time as
its own peer, and how far that ratio is from 1 is the noise band).

    python tools/zoo.py                       # timm's re-parameterizable families, then torchvision
    python tools/zoo.py --set timm --no-speed # op counts only
    python tools/zoo.py --only fastvit_t8     # one model
    python tools/zoo.py --only tv:efficientnet_b0 --legacy   # also against the TorchScript exporter's file
    python tools/zoo.py --docs-only           # redraw docs/zoo.md from the results

Every model runs in its own subprocess with a time limit (--timeout), one thread for export and
optimize; a finished model is kept in .cache/results/zoo.json at once, so a rerun skips it (--redo
NAME to measure again); docs/zoo.json and docs/zoo.md are written when the run ends (results_store).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
DOCS = os.path.join(ROOT, "docs")

# timm's families with a hand-written reparameterize() / fuse(): the smallest model of each
TIMM = ("repvgg_a0", "mobileone_s0", "lcnetv2_small", "fastvit_t8", "repvit_m0_9", "repghostnet_050", "levit_128s",
        "efficientvit_m0", "tiny_vit_5m_224", "efficientvim_m1", "ghostnetv3_050", "shvit_s1", "iformer_t",
        "nextvit_small")
MAX_TORCHVISION_PARAMS = 100e6


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def chosen(which: str, only: list[str] | None) -> list[str]:
    """The models a run measures: `only`, else timm's families and / or torchvision's classifiers, in the
    zoo's order (torchvision's still to be filtered by `too_large` where the user did not name them)."""
    names = only or ([*TIMM] if which in ("timm", "all") else [])
    if not only and which in ("torchvision", "all"):
        names += [f"tv:{n}" for n in torchvision_names()]
    return names


def too_large(name: str) -> bool:
    """A torchvision model over the zoo's 100M parameters (built to count them)."""
    return name.startswith("tv:") and sum(p.numel() for p in build(name).parameters()) > MAX_TORCHVISION_PARAMS


def build(name: str, seed: int = 0):
    import torch

    import models

    torch.manual_seed(seed)
    if name.startswith("tv:"):
        import torchvision

        model = torchvision.models.get_model(name[3:])
    else:
        import timm

        model = timm.create_model(name, pretrained=False)
    return models.randomize_batchnorm(model, seed).eval()


def ops_of(path: str) -> dict[str, int]:
    import onnx

    from foldpass.export import onnx_op_counts

    return onnx_op_counts(onnx.load(path, load_external_data=False))


def kept_reasons(declined) -> dict[str, int]:
    """What --explain says was kept, as 'pass: reason' with names and numbers blanked, by count."""
    import collections
    import re

    counts = collections.Counter(f"{n.pass_name}: " + re.sub(r"\b[a-z_]+_\d+\b|\d+", "#", n.message) for n in declined)
    return dict(counts.most_common(10))


def direct_export(model, x, path: str) -> None:
    """torch.onnx.export with a dynamic batch, from an example at batch 2 (torch.export specializes a
    dimension whose example size is 1, and the file would then hold batch 1 only)."""
    import torch

    with torch.no_grad():
        torch.onnx.export(model, (torch.cat([x, x]),), path, dynamo=True, opset_version=18, optimize=True,
                          dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    import onnx

    dims = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    if dims[0].dim_value:  # a fixed batch: not the peer foldpass is compared with
        raise RuntimeError(f"the export fixed the batch to {dims[0].dim_value}")


def legacy_export(model, x, path: str) -> None:
    """torch's TorchScript exporter (dynamo=False, opset 17, dynamic batch): what most pipelines still run."""
    import torch

    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "N"}})


def measure(name: str, speed: bool, rounds: int, legacy: bool = False) -> dict:
    """One model, in this process: op counts, verification, time, and (speed) the timings."""
    import copy

    import torch

    import foldpass
    from foldpass.quiet import quiet

    torch.set_num_threads(1)
    model = build(name)
    x = torch.randn(1, 3, 224, 224)
    params = sum(p.numel() for p in model.parameters())
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    entry: dict = {"params": params, "commit": commit.stdout.strip() or "?"}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        with quiet():
            for kind in ("direct", "deploy", "legacy"):
                if kind == "legacy" and not legacy:
                    continue
                if kind == "deploy":
                    if name.startswith("tv:"):
                        continue
                    from timm.utils.model import reparameterize_model

                    deploy = reparameterize_model(copy.deepcopy(model)).eval()
                    if sum(1 for _ in deploy.modules()) == sum(1 for _ in model.modules()) and \
                            str(deploy) == str(model):
                        continue  # nothing to re-parameterize
                began = time.perf_counter()
                try:
                    paths[kind] = os.path.join(tmp, f"{kind}.onnx")
                    if kind == "legacy":
                        legacy_export(model, x, paths[kind])
                    else:
                        direct_export(model if kind == "direct" else deploy, x, paths[kind])
                except Exception as exc:  # noqa: BLE001 - a peer that fails to export is recorded as such
                    entry[f"{kind}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    paths.pop(kind)
                entry[f"{kind}_seconds"] = time.perf_counter() - began
        began = time.perf_counter()
        try:
            result = foldpass.optimize(model, x)
            entry["optimize_only_seconds"] = time.perf_counter() - began
            # the direct export is counted above: save_onnx need not export it again
            result.save_onnx(os.path.join(tmp, "foldpass.onnx"), compare_direct=False)
            paths["foldpass"] = os.path.join(tmp, "foldpass.onnx")
            entry["status"] = "verified"
            v = result.report.verification or {}
            entry["max_error"] = v["max_abs_error"] / max(v["output_scale"], 1e-30)  # relative to the output scale
            entry["kept"] = kept_reasons(result.report.declined)
        except foldpass.FoldpassError as exc:
            entry["status"] = "failed"
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        entry["optimize_seconds"] = time.perf_counter() - began
        entry["ops"] = {k: ops_of(p) for k, p in paths.items()}
        # timed where the files differ in any op type's count (not only in their totals: GlobalAveragePool
        # in one where the other has ReduceMean is the same count and another speed)
        if speed and "foldpass" in paths and len({tuple(sorted(o.items())) for o in entry["ops"].values()}) > 1:
            if "direct" in paths:  # the direct export timed twice: its ratio to itself is the noise band
                import shutil

                paths["direct again"] = os.path.join(tmp, "direct_again.onnx")  # same folder: same external data
                shutil.copyfile(paths["direct"], paths["direct again"])
            names = list(paths)
            torch.set_num_threads(2)
            bench = foldpass.bench([paths[k] for k in names], names=names, batches=(1, 8), rounds=rounds)
            entry["speed"] = {f"{t['model']}@{t['batch']}": {"us": t["median_us_per_image"],
                                                              "vs_direct": t["speedup_vs_first"]}
                              for t in bench.as_dict()["results"]}
    return entry


def run_one(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--one", name, "--rounds", str(args.rounds)] + ([] if args.speed else ["--no-speed"])
    cmd += ["--legacy"] if args.legacy else []
    from results_store import run_measurement

    return run_measurement(cmd, args.timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=["timm", "torchvision", "all"], default="all")
    parser.add_argument("--only", action="append", help="just these models (timm names, or tv:NAME)")
    parser.add_argument("--redo", action="append", default=[], help="measure these again ('all': every model chosen)")
    parser.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True,
                        help="time the models whose op counts differ (default on)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per model")
    parser.add_argument("--docs-only", action="store_true")
    parser.add_argument("--legacy", action="store_true",
                        help="also time torch's TorchScript exporter's file (opset 17) as a peer")
    parser.add_argument("--merge", action="append", default=[],
                        help="add the models of another results file (one made from another checkout); an entry "
                             "here stays unless it records no commit")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.speed, args.rounds, args.legacy)), flush=True)
        return
    from results_store import Store

    store = Store("zoo.json")
    results = store.load({"models": {}})
    for other in args.merge:
        with open(other) as f:
            for name, entry in json.load(f)["models"].items():
                if "commit" not in results["models"].get(name, {}):
                    results["models"][name] = entry
        store.save(results)
    if not args.docs_only:
        import torch

        from foldpass.about import versions
        from foldpass.benchmark import environment

        names = chosen(args.set, args.only)
        results["meta"] = {"versions": versions(), "machine": "{cpu}, {cores} cores".format(**environment("cpu")),
                           "date": datetime.date.today().isoformat(), "torch": torch.__version__}
        for name in names:
            if name in results["models"] and name not in args.redo and "all" not in args.redo:
                continue
            if not args.only and too_large(name):
                continue
            print(f"== {name}", flush=True)
            entry = run_one(name, args)
            results["models"][name] = entry
            store.save(results)
            total = {k: sum(v.values()) for k, v in entry.get("ops", {}).items()}
            print(f"   {entry.get('status')}: ops {total} {entry.get('error', '')}", flush=True)
    from zoo_docs import write_docs

    store.publish(results)
    write_docs(results, DOCS)


if __name__ == "__main__":
    main()
