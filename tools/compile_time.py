"""Compile time (issue 26): foldpass's wall time by phase on the zoo's models, beside torch.onnx.export alone
and onnx-simplifier.

For each model of docs/zoo.md (random weights, 3 x 224 x 224), in its own process, one thread:
  export     `torch.onnx.export(dynamo=True)` of the model alone, dynamic batch (the direct export)
  onnxsim    onnx-simplifier on that direct export
  foldpass   what `foldpass optimize M.pt2 -o M.onnx` runs, from a .pt2 saved with a dynamic batch:
             load, trace, each pass (summed over rounds and sweeps), export, the direct-export
             comparison (on by default; `--no-compare-direct` turns it off), verification
Goal: each model under 60 s, or under twice its export where the export alone takes over 30 s; the
foldpass total at most 3 x the export total.

    python tools/compile_time.py                       # every model (hours; resumable)
    python tools/compile_time.py --only tv:densenet201 --only swin_b --redo tv:densenet201
    python tools/compile_time.py --profile tv:maxvit_t  # cProfile of foldpass on one model (top 25, cumulative)
    python tools/compile_time.py --docs-only            # redraw docs/compile_time.md
    python tools/compile_time.py --baseline ../old-checkout --only tv:maxvit_t
                                                        # an older foldpass on this machine: the "before" table

Resumable: a finished model is kept in .cache/results/compile_time.json; docs/compile_time.json and
docs/compile_time.md are written when the run ends.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results_store import Store, run_measurement
from zoo import DOCS, ROOT, build, chosen, direct_export, too_large

LIMIT_S, RATIO = 60.0, 2.0  # the goal per model: under LIMIT_S, or under RATIO x an export over LIMIT_S / 2
TOTAL_RATIO = 3.0
PHASES = ("load", "trace", "passes", "export", "direct export", "verify")


def foldpass_run(pt2: str, out: str) -> tuple[dict, object]:
    """`foldpass optimize pt2 -o out` through the library: per-phase seconds and the result."""
    import foldpass

    began = time.perf_counter()
    source = foldpass.load_source(pt2)
    loaded = time.perf_counter() - began
    result = foldpass.optimize(source)
    result.save_onnx(out)
    total = time.perf_counter() - began
    timings = result.report.timings
    phases = {"load": loaded} | {k: timings[k] for k in PHASES[1:] if k in timings}
    phases["other"] = max(total - sum(phases.values()), 0.0)
    passes = {k.removeprefix("pass "): v for k, v in timings.items() if k.startswith("pass ")}
    return {"seconds": total, "phases": phases, "passes": passes,
            "ops": sum(result.report.onnx_ops.values())}, result


def measure(name: str) -> dict:
    """One model, in this process."""
    import subprocess

    import onnx
    import torch

    import foldpass
    from foldpass.quiet import quiet

    torch.set_num_threads(1)
    model = build(name)
    x = torch.randn(1, 3, 224, 224)
    entry: dict = {"commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                            cwd=os.path.dirname(foldpass.__file__)).stdout.strip()}
    with tempfile.TemporaryDirectory() as tmp:
        pt2, direct, out = (os.path.join(tmp, f) for f in ("m.pt2", "direct.onnx", "foldpass.onnx"))
        with quiet():
            try:
                program = torch.export.export(model, (torch.cat([x, x]),), strict=False,
                                              dynamic_shapes=({0: torch.export.Dim("batch")},))
            except Exception:  # noqa: BLE001 - a model whose batch torch.export keeps fixed: saved at batch 1
                program, entry["pt2"] = torch.export.export(model, (x,), strict=False), "batch 1"
            torch.export.save(program, pt2)
            began = time.perf_counter()
            direct_export(model, x, direct)
            entry["export_seconds"] = time.perf_counter() - began
        began = time.perf_counter()
        try:
            import onnxsim

            simplified, ok = onnxsim.simplify(onnx.load(direct))
            entry["onnxsim_seconds"] = time.perf_counter() - began
            entry["onnxsim_ops"] = len(simplified.graph.node) if ok else None
        except Exception as exc:  # noqa: BLE001 - a peer that fails is recorded as such
            entry["onnxsim_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        entry["direct_ops"] = len(onnx.load(direct, load_external_data=False).graph.node)
        del model
        try:
            entry["foldpass"], _ = foldpass_run(pt2, out)
            entry["status"] = "verified"
        except foldpass.FoldpassError as exc:
            entry["status"] = "failed"
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    return entry


def profile(name: str, top: int = 25) -> str:
    """cProfile of foldpass (load to written file) on one model: the functions with the most cumulative time."""
    import cProfile
    import io
    import pstats

    import torch

    torch.set_num_threads(1)
    model = build(name)
    x = torch.randn(2, 3, 224, 224)
    with tempfile.TemporaryDirectory() as tmp:
        pt2 = os.path.join(tmp, "m.pt2")
        torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},),
                                              strict=False), pt2)
        profiler = cProfile.Profile()
        profiler.enable()
        foldpass_run(pt2, os.path.join(tmp, "foldpass.onnx"))
        profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).strip_dirs().sort_stats("cumulative").print_stats(top)
    return text.getvalue()


NOTES = """## Where the time went

Before issue 26's changes (cProfile, one thread; docs/zoo.md's times of then): densenet121 spent 47 of
its 104 s reading the same merged-conv Jacobian again, the transition conv + pool part that lies in every
region of the next dense block, once per region and sweep (34 times); maxvit_t spent 207 of its 212 s
of affine folding re-deriving the parts of regions it had already kept, in every sweep of every round;
shapes were inferred again on every sweep; and every forward-mode Jacobian raised (torch.func.jacfwd
takes no chunk size) and fell back to reverse mode. densenet201 took 588 s, densenet161 555 s, swin_s
294 s, maxvit_t 269 s.

Then a region's verdict was kept for the run (the pass context's store), shapes, constants and the
linear regions became analyses computed once per graph, a merged conv was rejected by its cost bound
before any Jacobian, and the direct-export comparison moved to the second core, translating the program
the trace already made (peer.py; its column is what the user still waits for it).

Since a88d0e5 (the "before" table), four more, each checked to change nothing but the time:
- **Cuts by dominators.** A region that cannot fold whole offers its single-input parts
  (linear_regions.sub_regions): for each value, the cone cut at one of its 24 nearest ancestors. Every
  cut was tried and its cone walked (maxvit_t: 233 regions, 345,000 walks, most of its affine
  folding). Only a value that every path from the region's inputs to the sink passes through (a
  dominator) leaves one input, so only those are tried now: the same parts in the same order (a test
  compares with every cut); on maxvit_t 34.8 s -> 5.2 s of it.
- **Shapes where the graph changed.** After a rewrite the whole graph ran again on fake tensors at two
  batch sizes; now only the nodes the rewrite reached run (their arguments changed, or a value they
  read came out with another shape or stride), in the fake mode of the last run with its op cache:
  the same shapes as a fresh run (tested); the runs after the first take 0.1 to 0.9 s on maxvit_t.
- **Kernels composed, not differentiated.** A conv-shaped region's kernel was the Jacobian of one
  output position: C_out backward passes of the whole region (DenseNet-201's last transition,
  1792 -> 896 channels: 9 s). It is now composed from its ops' kernels (rules/kernel_composition.py:
  conv, depthwise conv, avg-pool, BN, per-channel scales, padding, sums of branches), the Jacobian
  only where an op has no rule: the same kernels on the 663 regions of densenet201, repvgg_a0,
  mobileone_s0, efficientnet_b0, fastvit_t8, repghostnet_050, maxvit_t and efficientvit_m0 (one
  process computing both: 88 s of merged convs by Jacobian, 14 s composed, the check on the real
  shape included in both).
- **One decomposition per program.** A .pt2 exported at a fixed batch was decomposed as it was, then
  exported again with a dynamic batch and decomposed again; now only the second is decomposed.

What is left is mostly torch's: the trace (torch.export's run_decompositions, about half an export),
foldpass's own export of the optimized graph (about one export), and the comparison's export where it
cannot be hidden (swin_s: its export outlasts everything it runs beside). "other" is the before/after
op statistics, the PyTorch-side error check, and writing and re-reading the file (large on vit_b_16 and
resnext101, 330 MB of weights).
"""


def meets(entry: dict) -> bool:
    seconds, export = entry["foldpass"]["seconds"], entry["export_seconds"]
    return seconds < LIMIT_S or (export > LIMIT_S / 2 and seconds < RATIO * export)


def markdown(results: dict) -> str:
    rows = {k: v for k, v in results["models"].items() if v.get("status") == "verified"}
    meta = results.get("meta", {})
    lines = ["# Compile time: foldpass beside torch.onnx.export and onnx-simplifier", "",
             f"{meta.get('machine', '?')}; {meta.get('versions', '')}; {meta.get('date', '?')}. Each model of "
             "docs/zoo.md (random weights, 3 x 224 x 224) in its own process with one thread, the machine otherwise "
             "idle. **foldpass** is what `foldpass optimize M.pt2 -o M.onnx` runs, from a .pt2 saved with a dynamic "
             "batch: load, trace, the passes, export, the direct-export comparison (on by default; "
             "`--no-compare-direct` saves that column) and verification. **export** is `torch.onnx.export"
             "(dynamo=True)` of the model alone; **onnxsim** is onnx-simplifier on that export. Goal (issue 26): "
             f"under {LIMIT_S:.0f} s, or under {RATIO:.0f} x the export where the export alone takes over "
             f"{LIMIT_S / 2:.0f} s. Re-run: `python tools/compile_time.py` (resumable; `--only M --redo M` for one).",
             ""]
    if rows:
        total = sum(r["foldpass"]["seconds"] for r in rows.values())
        export = sum(r["export_seconds"] for r in rows.values())
        compare = sum(r["foldpass"]["phases"].get("direct export", 0.0) for r in rows.values())
        met = [k for k, r in rows.items() if meets(r)]
        lines += [f"**{len(met)} of {len(rows)}** models within the goal. Totals over these {len(rows)} models: "
                  f"foldpass {total:,.0f} s ({total - compare:,.0f} s without the direct-export comparison), "
                  f"`torch.onnx.export` alone {export:,.0f} s: {total / export:.2f} x "
                  f"({(total - compare) / export:.2f} x without the comparison; goal: at most {TOTAL_RATIO:.0f} x).",
                  "", "| model | foldpass | export | onnxsim | load | trace | passes | foldpass export | comparison "
                  "| verify | other | slowest pass | ops (direct / onnxsim / foldpass) | goal |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
        for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["foldpass"]["seconds"]):
            f, p = r["foldpass"], r["foldpass"]["phases"]
            slow = max(f["passes"].items(), key=lambda kv: kv[1]) if f["passes"] else ("-", 0.0)
            cells = [f"{p.get(k, 0.0):.1f}" for k in ("load", "trace", "passes", "export", "direct export", "verify",
                                                     "other")]
            sim = f"{r['onnxsim_seconds']:.1f} s" if "onnxsim_seconds" in r else "failed"
            lines.append(f"| {name} | {f['seconds']:.1f} s | {r['export_seconds']:.1f} s | {sim} | "
                         + " | ".join(cells) + f" | {slow[0]} {slow[1]:.1f} s | {r['direct_ops']} / "
                         f"{r.get('onnxsim_ops', '-')} / {f['ops']} | {'yes' if meets(r) else '**no**'} |")
    lines += _before_after(results) + _again(results)
    failed = {k: v for k, v in results["models"].items() if v.get("status") != "verified"}
    if failed:
        lines += ["", "Not measured: " + "; ".join(f"{k} ({v.get('status')}: {v.get('error', '')})"
                                                 for k, v in failed.items())]
    lines += ["", NOTES.strip()]
    return "\n".join(lines) + "\n"


def _before_after(results: dict) -> list[str]:
    """The models measured with an older foldpass too (--baseline), on this machine: where the time went before and after."""
    pairs = {k: (b, results["models"][k]) for k, b in results.get("before", {}).items()
             if b.get("status") == "verified" and results["models"].get(k, {}).get("status") == "verified"
             and b.get("commit") != results["models"][k].get("commit")}  # the same code twice is no before
    if not pairs:
        return []

    def cells(r: dict) -> str:
        f = r["foldpass"]
        slow = max(f["passes"].items(), key=lambda kv: kv[1]) if f["passes"] else ("-", 0.0)
        return (f"{f['seconds']:.1f} s | {f['phases'].get('trace', 0):.1f} | {f['phases'].get('passes', 0):.1f} | "
                f"{slow[0]} {slow[1]:.1f} s")

    lines = ["", "### Before and after, on this machine", "",
             "The same models with the foldpass of the commit named (`--baseline`), one after the other on this machine, "
             "idle. Phases in seconds.", "",
             "| model | before | trace | passes | slowest pass | after | trace | passes | slowest pass | after / before |",
             "|---|---:|---:|---:|---|---:|---:|---:|---|---:|"]
    for name, (b, a) in sorted(pairs.items(), key=lambda kv: -kv[1][0]["foldpass"]["seconds"]):
        lines.append(f"| {name} | {b.get('commit', '?')}: {cells(b)} | {a.get('commit', '?')}: {cells(a)} | "
                     f"{a['foldpass']['seconds'] / b['foldpass']['seconds']:.2f} |")
    return lines


def _again(results: dict) -> list[str]:
    """The noise: models measured twice with the same commit (an earlier run kept under "again")."""
    pairs = [(k, a["foldpass"], results["models"][k]["foldpass"]) for k, a in results.get("again", {}).items()
             if a.get("status") == "verified" and results["models"].get(k, {}).get("commit") == a.get("commit")]
    if not pairs:
        return []

    def spread(key) -> list[float]:
        return [abs(key(b) - key(a)) / min(key(a), key(b)) for _, a, b in pairs]

    total, passes = spread(lambda f: f["seconds"]), spread(lambda f: f["phases"]["passes"])
    worst = max(range(len(pairs)), key=total.__getitem__)
    name, a, b = pairs[worst]
    return ["", f"Run to run, on this machine: {len(pairs)} models measured twice with the same commit differ by "
                f"{min(total):.0%} to {max(total):.0%} in their total ({name}: {a['seconds']:.1f} s and "
                f"{b['seconds']:.1f} s) and by {min(passes):.0%} to {max(passes):.0%} in their passes: a before / after "
                "ratio inside that is noise."]


def environment() -> dict:
    import onnx
    import onnxruntime
    import torch

    import foldpass
    from foldpass.benchmark import _cpu_name

    return {"date": datetime.date.today().isoformat(), "machine": f"{_cpu_name()}, {os.cpu_count()} cores",
            "versions": f"foldpass {foldpass.__version__}, torch {torch.__version__}, onnx {onnx.__version__}, "
                        f"onnxruntime {onnxruntime.__version__}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=["timm", "torchvision", "all"], default="all")
    parser.add_argument("--only", action="append", help="just these models (timm names, or tv:NAME)")
    parser.add_argument("--redo", action="append", default=[], help="measure these again ('all': every model chosen)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per model")
    parser.add_argument("--docs-only", action="store_true")
    parser.add_argument("--profile", help="print cProfile's top functions for one model and stop")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="measure the foldpass of another checkout (an older commit) as each model's 'before'")
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        if args.root:  # the checkout whose foldpass is measured (zoo.py put this one's first)
            sys.path.insert(0, os.path.abspath(args.root))
        print(json.dumps(measure(args.one)))
        return
    if args.profile:
        print(profile(args.profile))
        return
    store = Store("compile_time.json")
    results = store.load({"models": {}})
    if not args.docs_only:
        names = [n for n in chosen(args.set, args.only) if args.only or not too_large(n)]
        redo = set(names) if "all" in args.redo else set(args.redo)
        table = results.setdefault("before", {}) if args.baseline else results["models"]
        for name in names:
            if name in table and name not in redo:
                continue
            print(f"{name} ...", flush=True)
            root = ["--root", args.baseline] if args.baseline else []
            table[name] = run_measurement([sys.executable, __file__, "--one", name, *root], args.timeout)
            if not args.baseline:
                results["meta"] = environment()
            store.save(results)
            r = table[name]
            print(f"  {r.get('status')}: foldpass {r.get('foldpass', {}).get('seconds', 0):.1f} s, "
                  f"export {r.get('export_seconds', 0):.1f} s {r.get('error', '')}", flush=True)
        store.publish(results)
    with open(os.path.join(DOCS, "compile_time.md"), "w") as f:
        f.write(markdown(results))


if __name__ == "__main__":
    assert os.path.isdir(ROOT)
    main()
