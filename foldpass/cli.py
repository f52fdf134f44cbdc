"""foldpass's command line: parses arguments, calls the library's public API, prints what it returns.

Exit codes: 0 success; 1 the verification gate failed (or an internal error); 2 bad input or usage;
130 interrupted; 143 terminated; 141 stdout closed. Library errors name parameters (set_t, rtol);
`_as_flags` shows them as this command line's flags (--set-t, --rtol).

Nothing here imports torch before a command runs: `foldpass --help` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys

import foldpass
from foldpass import FoldpassError, InputError, defaults


def _add_trust(p) -> None:
    p.add_argument("--trust", "--trust-pickle", dest="trust", action="store_true",
                   help="the file is yours: allow unpickling a torch.save(model) file and skip the .pt2 checks "
                        "(both can run code from the file)")


def _add_optimize(sub) -> None:
    p = sub.add_parser("optimize", help="trace a model, run the passes, write verified ONNX")
    p.add_argument("source", help="model.pt2 | model.onnx | model.pt (with --trust) | pkg.module:build")
    p.add_argument("-o", "--output", required=True,
                   help="the file to write: .onnx, or .pt2 (torch.export.save, for AOTInductor / ExecuTorch)")
    p.add_argument("--input-shape", help="example input shape with batch, e.g. 1,1,28,28 (required except for .pt2 / .onnx)")
    p.add_argument("--weights", help="state dict for pkg.module:build (loaded with weights_only=True)")
    _add_trust(p)
    p.add_argument("--max-model-bytes", type=int, default=defaults.DEFAULT_MAX_MODEL_BYTES,
                   help="refuse an ONNX source (with its external data) larger than this (default 32 GiB)")
    p.add_argument("--pipeline", default="default", choices=defaults.PIPELINE_NAMES, help="which passes to run")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, metavar="N", help="fix the batch size to N on purpose")
    batch.add_argument("--dynamic-batch", dest="batch_mode", action="store_const", const="dynamic",
                       help="require a dynamic batch (an error, with the reason, where the graph depends on it)")
    batch.add_argument("--static-batch", dest="batch_mode", action="store_const", const="static",
                       help="keep the batch as the source has it")
    p.add_argument("--set-t", type=float, metavar="VALUE", help="set every blend weight t to VALUE first")
    p.add_argument("--max-fold-bytes", type=int, default=defaults.DEFAULT_MAX_FOLD_BYTES,
                   help="largest Gemm weight a fold may create (default 256 MiB)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime verification gate")
    p.add_argument("--rtol", type=float, default=defaults.DEFAULT_RTOL, help="verification rtol, relative to output scale")
    p.add_argument("--atol", type=float, default=defaults.DEFAULT_ATOL, help="verification atol")
    p.add_argument("--inputs", help=".npy file of extra inputs (with batch) for the verification gate")
    p.add_argument("--opset", type=int, help="ONNX opset (>= 18; default 18, or the input's for an .onnx source)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16"),
                   help="fp16: weights stored and computed in float16, float32 inputs and outputs (folding stays float64)")
    p.add_argument("--fp16-io", action="store_true", help="with --precision fp16: float16 inputs and outputs too")
    p.add_argument("--report", help="also write the report as JSON to this file")
    p.add_argument("--explain", action="store_true", help="list every region and every rule's decision")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--bench", action="store_true", help="then benchmark the original against the output")
    p.add_argument("--no-compare-direct", action="store_true",
                   help="skip counting the ops of the usual export (torch.onnx.export) to warn where foldpass's are more")
    p.set_defaults(func=cmd_optimize)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time ONNX models side by side under onnxruntime")
    p.add_argument("models", nargs="+", help="ONNX files; ratios are against the first")
    p.add_argument("--provider", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--batch", default="1,64", help="batch sizes, comma-separated (default 1,64)")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds (median over them)")
    p.add_argument("--peers", action="store_true", help="also time the first model after ORT_ENABLE_ALL and onnxsim")
    p.add_argument("--json", help="write the results as JSON")
    p.add_argument("--plot", help="write a bar chart (PNG; the 'plot' extra)")
    p.add_argument("--force", action="store_true", help="overwrite existing --json / --plot files")
    p.set_defaults(func=cmd_bench)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="fold the paper's linear ResNet34 into one Gemm and time it (no files needed)")
    p.add_argument("-o", "--output", help="where to write the folded ONNX (default: a temporary directory)")
    p.add_argument("--width", type=int, default=64, help="ResNet base width (64 is the paper's)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(func=cmd_demo)


def _add_data_options(p, default: str) -> None:
    """--data and its companions: one set for every command that takes data (docs/data.md)."""
    p.add_argument("--data", default=default,
                   help=f"{', '.join(defaults.DATASET_NAMES)} (built in; default {default}), folder:PATH (one "
                        "sub-folder per class), PATH.npz (arrays x and y) or pkg.module:callable returning "
                        "(train, val) datasets")
    p.add_argument("--val-data", help="a folder or .npz held out as the test split (default: a fixed stratified "
                                      "fifth of --data)")
    p.add_argument("--image-size", help="resize every image to H or H,W (needed for images of mixed sizes)")
    p.add_argument("--mean", help="per-channel mean to subtract after scaling to [0, 1], e.g. 0.485,0.456,0.406")
    p.add_argument("--std", help="per-channel standard deviation to divide by, e.g. 0.229,0.224,0.225")
    p.add_argument("--augment", action="store_true", help="random flips and crops on the training images")
    p.add_argument("--workers", type=int, help="data-loading processes (default: 0 for data held in memory, "
                                                 "2 for images decoded per item)")
    p.add_argument("--split-seed", type=int, default=defaults.DEFAULT_SPLIT_SEED,
                   help="the seed of the train / selection / test split (default 0: the same for every run)")
    p.add_argument("--data-dir", help="where MNIST is (or goes, with --download)")
    p.add_argument("--download", action="store_true", help="download MNIST into --data-dir")
    p.add_argument("--limit", type=int, help="use only the first N images of each split")


def _add_recipe_options(p, default_epochs: int, default_recipe: str) -> None:
    """The training options `train` and `deskip` share: recipe, budget, data, checkpoints."""
    p.add_argument("--recipe", default=default_recipe, choices=defaults.RECIPE_NAMES,
                   help=f"how t falls to 0 and how the lr moves (default: {default_recipe}; "
                        "docs/homotopy.md compares them)")
    p.add_argument("--schedule", choices=defaults.SCHEDULE_NAMES, help="override the recipe's schedule of t")
    p.add_argument("--t0", type=float, help="override the starting t")
    p.add_argument("--per", choices=["epoch", "step"], help="override: update t per stage or per step")
    p.add_argument("--zero-fraction", type=float, help="override: the last fraction of the run spent at t = 0")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], help="override the learning-rate schedule")
    p.add_argument("--recalibrate", action=argparse.BooleanOptionalAction, default=None,
                   help="override: re-estimate batch-norm statistics at t = 0 before the last evaluation")
    p.add_argument("--freeze-bn", choices=["no", "at-zero", "start", "below"],
                   help="override: when batch norm stops using batch statistics: once t = 0, re-estimated "
                        "(at-zero); from the first step (start); once t <= --freeze-t (below)")
    p.add_argument("--freeze-t", type=float, help="override: the t below which --freeze-bn below freezes")
    p.add_argument("--distill", type=float,
                   help="override: weight in [0, 1] of distillation (from --teacher, the static teacher the "
                        "foldpass recipe trains first, or deskip's residual original)")
    p.add_argument("--self-teacher-t", type=float,
                   help="override: distill from the model itself, copied once t <= this value (with --distill)")
    p.add_argument("--epochs", type=int, default=default_epochs,
                   help=f"stages of training: one value of t each, as the paper (default {default_epochs})")
    p.add_argument("--steps-per-t", type=int,
                   help="steps per stage (default: one pass over the data; the paper: 938, one MNIST epoch)")
    _add_data_options(p, defaults.DEFAULT_DATASET)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", help="write a checkpoint here after every stage")
    p.add_argument("--resume", help="resume from a checkpoint")
    p.add_argument("--history", help="write the per-stage log as JSON")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train with blended skips while a schedule drives t to 0; write a .pt2 "
                                     "(the 'train' extra)")
    p.add_argument("source", help="pkg.module:build (e.g. models:resnet34), as for optimize")
    p.add_argument("-o", "--output", required=True, help="the trained model, a .pt2 file for foldpass optimize")
    p.add_argument("--input-shape", help="the model's input with batch (default: the data's, e.g. 1,1,28,28)")
    p.add_argument("--weights", help="start from these weights (a state dict, loaded with weights_only=True)")
    p.add_argument("--convert", action="store_true",
                   help="blend the model's residual adds first (for a model without Blend modules)")
    p.add_argument("--teacher", help="distill from this trained model (a .pt2, or pkg.module:build with "
                                     "--teacher-weights), e.g. a static-t model with its skips, instead of training "
                                     "one first (the foldpass recipe); --distill (default 0.5)")
    p.add_argument("--teacher-weights", help="the teacher's weights (a state dict, loaded with weights_only=True)")
    _add_recipe_options(p, default_epochs=10, default_recipe=defaults.DEFAULT_RECIPE)
    p.set_defaults(func=cmd_train)


def _add_deskip(sub) -> None:
    p = sub.add_parser("deskip", help="a trained residual network -> the same network as blends, fine-tuned to "
                                      "t = 0 (no skips); write a .pt2 (the 'train' extra)")
    p.add_argument("source", help="pkg.module:build or file.py:build, with --weights (the trained state dict)")
    p.add_argument("-o", "--output", required=True, help="the de-skipped model, a .pt2 file for foldpass optimize")
    p.add_argument("--input-shape", help="the model's input with batch (default: the data's, e.g. 1,1,28,28)")
    p.add_argument("--weights", help="the trained weights (a state dict, loaded with weights_only=True)")
    p.add_argument("--start-t", type=float, default=0.5,
                   help="the blend weight the conversion is exact at, where fine-tuning starts (default 0.5)")
    _add_recipe_options(p, default_epochs=5, default_recipe=defaults.DEFAULT_DESKIP_RECIPE)
    p.set_defaults(func=cmd_deskip)


def _add_decompose(sub) -> None:
    p = sub.add_parser("decompose", help="factorize convs (CP / Tucker-2 / TT; lossy) and write a .pt2 "
                                         "(the 'decompose' extra)")
    p.add_argument("source", help="model.pt2 | model.onnx | model.pt (with --trust) | pkg.module:build")
    p.add_argument("-o", "--output", required=True, help="the decomposed model, a .pt2 file for foldpass optimize")
    p.add_argument("--method", default="tucker", choices=defaults.DECOMPOSITION_METHODS)
    p.add_argument("--rank", default="auto", help="auto (VBMF) | a parameter fraction like 0.1 | a rank like 16")
    p.add_argument("--input-shape", help="example input shape with batch (required except for .pt2 / .onnx)")
    p.add_argument("--weights", help="state dict for pkg.module:build (loaded with weights_only=True)")
    _add_trust(p)
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune the decomposed model this many epochs")
    p.add_argument("--recalibrate", action=argparse.BooleanOptionalAction, default=None,
                   help="re-estimate batch-norm statistics on the data after factorizing (default: when fine-tuning)")
    _add_data_options(p, "digits")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (Adam)")
    p.add_argument("--report", help="also write the per-layer report as JSON")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(func=cmd_decompose)


def _add_compress(sub) -> None:
    p = sub.add_parser("compress", help="a trained classifier and its data -> the fastest ONNX within an accuracy "
                                        "budget: exact folds, de-skip, pruning, low rank, int8, each kept only where "
                                        "it measures faster (the 'compress' extra)")
    p.add_argument("source", help="pkg.module:build or file.py:build with --weights (or model.pt2: then only the "
                                  "steps that need no nn.Module layers apply)")
    p.add_argument("-o", "--output", required=True, help="the compressed model, an .onnx file")
    p.add_argument("--weights", help="the trained state dict for pkg.module:build (loaded with weights_only=True)")
    p.add_argument("--input-shape", help="the model's input with batch (default: the data's, e.g. 1,1,28,28)")
    _add_trust(p)
    p.add_argument("--max-drop", type=float, default=1.0,
                   help="accuracy budget: points below the original on the selection split (default 1.0)")
    p.add_argument("--steps", default=",".join(defaults.COMPRESS_STEPS),
                   help=f"which steps, comma-separated (default: all, always in this order: "
                        f"{','.join(defaults.COMPRESS_STEPS)})")
    p.add_argument("--batch", default="1,64", help="the batch sizes latency is measured at (default 1,64)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads per session (default 1: one request per core)")
    p.add_argument("--epochs", type=int, default=5,
                   help="fine-tuning epochs after pruning and low rank, and de-skip's (then twice as many); "
                        "default 5, raised to at least 1,000 steps on a small data set")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (Adam)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-minutes", type=float, help="stop trying steps once the run has taken this long")
    p.add_argument("--checkpoint", help="a folder that keeps every finished step (and the candidates' files)")
    p.add_argument("--resume", action="store_true", help="continue the run in --checkpoint after its last finished step")
    p.add_argument("--report", help="also write the table and the settings as JSON")
    p.add_argument("--plot", help="also draw accuracy against latency per step as a PNG (the 'plot' extra)")
    _add_data_options(p, defaults.DEFAULT_DATASET)
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(func=cmd_compress)


class _Versions(argparse.Action):
    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, help="print the versions of foldpass, torch, onnx, onnxruntime")

    def __call__(self, parser, namespace, values, option_string=None):
        print(", ".join(f"{k} {v}" for k, v in foldpass.versions().items()))
        parser.exit()


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="what foldpass recorded in an ONNX file it wrote (source, checks, report)")
    p.add_argument("model", help="an ONNX file written by foldpass")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=cmd_info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foldpass", description="Fold trained CNNs into faster, verified ONNX.")
    parser.add_argument("--version", action=_Versions)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_optimize(sub)
    _add_bench(sub)
    _add_demo(sub)
    _add_train(sub)
    _add_deskip(sub)
    _add_decompose(sub)
    _add_compress(sub)
    _add_info(sub)
    for command in sub.choices.values():  # --debug also after the command, where a user adds it on a rerun
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


# ----------------------------------------------------------------------------- helpers


def _outputs(args, *flags: str, inputs=()) -> dict[str, str]:
    """Checks every output a command will write, before any work (the library's output policy)."""
    named = {flag: getattr(args, flag.lstrip("-").replace("-", "_"), None) for flag in flags}
    return foldpass.check_outputs(named, [*inputs, getattr(args, "source", None)], getattr(args, "force", False))


def _positive(value: int | None, flag: str, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise InputError(f"{flag} must be at least {minimum}; got {value}")


def _console():
    from rich.console import Console

    console = Console(stderr=False)
    if not console.is_terminal:  # a log or a pipe: whole lines and tables, never wrapped mid-field at 80 columns
        console = Console(stderr=False, soft_wrap=True, width=int(os.environ.get("COLUMNS", "0") or 0) or 200)
    console.on_broken_pipe = _broken_pipe  # rich would exit 1; main() turns this into 141, as print() does
    return console


def _broken_pipe() -> None:
    raise BrokenPipeError(32, "stdout closed by the reader")


def _status(console, text: str):
    from rich.console import Console

    return Console(stderr=True).status(text) if console.is_terminal else _Null()


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, *_a, **_k):
        pass


# library parameter -> this command line's flag, in error messages
_FLAGS = {"trust=True": "--trust", "force=True": "--force", "verify_output=False": "--no-verify",
          "download=True": "--download", "data='digits'": "--data digits", "data='mnist'": "--data mnist",
          "convert=True": "--convert"}
_PARAMS = ("set_t", "input_shape", "max_fold_bytes", "max_model_bytes", "data_dir", "image_size", "val_data", "rtol",
           "atol", "batch_size",
           "epochs", "limit", "batches", "rounds")
_LEADING = ("rank", "inputs", "weights", "opset")  # only where the message starts with them


def _as_flags(message: str) -> str:
    """Library parameter names as this command line's flags, where they stand as words (not inside a path)."""
    for param, flag in _FLAGS.items():
        message = re.sub(r"(^|(?<=\s))" + re.escape(param) + r"(?=[\s:;,.)]|$)", flag, message)
    message = re.sub(r"(^|(?<=\s))(" + "|".join(_PARAMS) + r")(?=[\s:;,.)=]|$)",
                     lambda m: "--" + m.group(2).replace("_", "-"), message)
    return re.sub(r"^(" + "|".join(_LEADING) + r")(?=[\s:])", r"--\1", message)


# ----------------------------------------------------------------------------- commands


def cmd_optimize(args) -> int:
    paths = _outputs(args, "--output", "--report")
    foldpass.check_options(set_t=args.set_t, max_fold_bytes=args.max_fold_bytes, rtol=args.rtol, atol=args.atol,
                           opset=args.opset)
    _positive(args.max_model_bytes, "--max-model-bytes")
    _positive(args.batch, "--batch")
    if args.fp16_io and args.precision != "fp16":
        raise InputError("--fp16-io goes with --precision fp16")
    if args.output.endswith(".pt2") and (args.precision != "fp32" or args.opset or args.bench):
        raise InputError("--precision, --opset and --bench are for ONNX outputs; -o names a .pt2")
    console = _console()
    shape = foldpass.parse_input_shape(args.input_shape)
    with _status(console, "loading") as status:
        source = foldpass.load_source(args.source, shape, args.weights, args.trust, args.max_model_bytes)
        extra = foldpass.load_npy_inputs(args.inputs, source.inputs, source.static_batch) if args.inputs else []
        status.update("tracing and running passes")
        result = foldpass.optimize(source, pipeline=args.pipeline, set_t=args.set_t, max_fold_bytes=args.max_fold_bytes,
                                   on_pass=lambda name: status.update(f"pass: {name}"),
                                   batch=args.batch or args.batch_mode or "auto",
                                   compare_direct=not args.output.endswith(".pt2") and not args.no_compare_direct
                                   and args.precision == "fp32")
        if args.output.endswith(".pt2"):  # for AOTInductor / ExecuTorch: verified in PyTorch
            status.update("exporting the program and verifying it in PyTorch")
            result.save_pt2(paths["--output"], verify_output=not args.no_verify, rtol=args.rtol, atol=args.atol,
                            extra_inputs=extra, force=args.force)
        else:
            status.update("exporting ONNX and verifying under onnxruntime")
            result.save_onnx(paths["--output"], verify_output=not args.no_verify, rtol=args.rtol, atol=args.atol,
                             extra_inputs=extra, opset=args.opset, force=args.force, precision=args.precision,
                             half_io=args.fp16_io, compare_direct=not args.no_compare_direct)
    if args.report:
        result.report.to_json(paths["--report"], force=args.force)
    result.report.render(console, explain=args.explain)
    console.print(f"wrote {args.output}")
    if args.bench:
        print(result.bench(paths["--output"], progress=console.is_terminal).markdown())
    return 0


def cmd_bench(args) -> int:
    batches = tuple(_ints(args.batch, "--batch"))
    _positive(args.rounds, "--rounds")
    paths = _outputs(args, "--json", "--plot", inputs=args.models)
    if args.plot:
        foldpass.require("matplotlib", "plot")
    console = _console()
    res = foldpass.bench(args.models, provider=args.provider, batches=batches, rounds=args.rounds,
                         progress=console.is_terminal, peers=args.peers)
    print(res.markdown())
    for note in res.notes:
        console.print(f"note: {note}")
    if args.json:
        res.to_json(paths["--json"], force=args.force)
    if args.plot:
        res.plot(paths["--plot"], force=args.force)
    return 0


def _training(args, console):
    """The options train and deskip share, checked, as keyword arguments for the library."""
    _positive(args.epochs, "--epochs")
    _positive(args.batch_size, "--batch-size")
    _positive(args.limit, "--limit")
    _positive(args.steps_per_t, "--steps-per-t")

    def log(e):
        t = f"t {e.t:<6g}" if e.t is not None else ""
        console.print(f"stage {e.epoch:>3}  {t} loss {e.train_loss:.4f}  train acc {e.train_acc:6.2%}  "
                      f"selection loss {e.val_loss:.4f}  selection acc {e.val_acc:6.2%}  ({e.seconds:.1f} s)")

    plan = foldpass.homotopy.recipe(args.recipe, schedule=args.schedule, t0=args.t0, per=args.per,
                                    zero_fraction=args.zero_fraction, lr_schedule=args.lr_schedule,
                                    recalibrate=args.recalibrate, freeze_bn=args.freeze_bn, freeze_t=args.freeze_t,
                                    distill=args.distill, self_teacher_t=args.self_teacher_t)
    return dict(recipe=plan, epochs=args.epochs, steps_per_t=args.steps_per_t, batch_size=args.batch_size,
                lr=args.lr, seed=args.seed, resume=args.resume, progress=console.is_terminal, log=log)


def _data(args, console, shape: tuple[int, ...] | None):
    """The data's three splits (for a model of `shape` where known) and the model's input shape, with batch."""
    _positive(args.limit, "--limit")
    _positive(args.workers, "--workers", minimum=0)
    image_size = foldpass.parse_input_shape(args.image_size) if args.image_size else None
    with _status(console, f"reading {args.data}"):
        splits = foldpass.load_data(args.data, shape=shape, image_size=image_size, mean=_floats(args.mean, "--mean"),
                                    std=_floats(args.std, "--std"), val_data=args.val_data, data_dir=args.data_dir,
                                    download=args.download, limit=args.limit, seed=args.split_seed,
                                    augment=args.augment, progress=console.is_terminal)
    if args.workers is None:
        args.workers = 0 if splits.in_memory else min(2, os.cpu_count() or 1)
    console.print(splits.summary(), highlight=False)
    return splits, (1, *splits.shape)


def _floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{flag} must be numbers separated by commas; got '{text}'") from None


def _check_labels(model, splits, shape) -> None:
    """The model's outputs must cover every label of the data (a label out of range: exit 2)."""
    import torch

    exported = isinstance(model, torch.export.ExportedProgram)
    module = model.module() if exported else model
    was_training = not exported and module.training  # an exported program's module keeps its mode
    with torch.no_grad():
        if not exported:
            module.eval()
        try:
            out = module(torch.zeros(shape))
        except Exception as exc:  # noqa: BLE001 - the user's model, on images of another shape
            raise InputError(f"the model cannot take the data's images ({' x '.join(map(str, shape[1:]))}): "
                             f"{type(exc).__name__}: {foldpass.errors.first_line(exc)}; pass --input-shape "
                             "(the built-in data sets follow it) or --image-size") from None
        if was_training:
            module.train()
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise InputError(f"the model's output is {tuple(getattr(out, 'shape', ()))}; a classifier returns "
                         "(batch, classes) scores")
    splits.check_outputs(out.shape[1])


def _write_trained(args, paths, result, console) -> None:
    if result.rank != 0:
        return
    result.save_pt2(paths["--output"], force=args.force)
    if args.history:
        foldpass.write_json(paths["--history"], {"data": result.data, "test_acc": result.test_acc,
                                                 "stages": result.history_dicts()}, force=args.force)
    console.print(f"wrote {args.output} (t = {result.t:g}, input {' x '.join(map(str, result.input_shape))}); "
                  f"next: foldpass optimize {args.output} -o model.onnx")


def cmd_train(args) -> int:
    paths = _outputs(args, "--output", "--checkpoint", "--history",
                     inputs=[args.resume, args.weights, args.teacher, args.teacher_weights])
    console = _console()
    if args.teacher and args.distill is None:
        args.distill = 0.5
    options = _training(args, console)
    given = foldpass.parse_input_shape(args.input_shape)
    splits, shape = _data(args, console, given)
    model = foldpass.load_source(args.source, shape, args.weights).model
    _check_labels(model, splits, shape)
    teacher = None
    if args.teacher:
        import torch

        teacher = foldpass.load_source(args.teacher, shape, args.teacher_weights).model
        teacher = teacher.module() if isinstance(teacher, torch.export.ExportedProgram) else teacher
    if teacher is None and options["recipe"].teacher_t is not None and options["recipe"].distill:
        console.print(f"training the teacher first: a copy at a static t = {options['recipe'].teacher_t:g} with its "
                      f"skips, {args.epochs} stages (--teacher takes one you have; --recipe no-teacher skips it)")
    result = foldpass.homotopy.train_homotopy(model, convert=args.convert, exact=bool(args.weights),
                                              checkpoint=paths.get("--checkpoint"), teacher=teacher, data=splits,
                                              workers=args.workers, **options)
    console.print(f"test accuracy (the test split, read once, after training): {result.test_acc:.2%}")
    _write_trained(args, paths, result, console)
    return 0


def cmd_deskip(args) -> int:
    paths = _outputs(args, "--output", "--checkpoint", "--history", inputs=[args.resume, args.weights])
    console = _console()
    options = _training(args, console)
    if args.start_t is not None and not 0.0 < args.start_t < 1.0:
        raise InputError(f"--start-t must lie in (0, 1); got {args.start_t}")
    splits, shape = _data(args, console, foldpass.parse_input_shape(args.input_shape))
    model = foldpass.load_source(args.source, shape, args.weights).model
    _check_labels(model, splits, shape)
    result = foldpass.homotopy.deskip(model, t0=args.start_t, checkpoint=paths.get("--checkpoint"), data=splits,
                                      workers=args.workers, **options)
    verdict = "within 1 point of" if result.change >= -1.0 else "MORE THAN 1 POINT BELOW"
    console.print(f"test accuracy: original {result.original_test_acc:.2%}, de-skipped (t = 0) "
                  f"{result.test_acc:.2%} ({result.change:+.2f} points: {verdict} the original); "
                  f"conversion error before training {result.conversion_error:.2g}")
    _write_trained(args, paths, result, console)
    return 0


def cmd_decompose(args) -> int:
    paths = _outputs(args, "--output", "--report")
    _positive(args.finetune_epochs, "--finetune-epochs", minimum=0)
    decomposition = foldpass.decomposition
    rank = decomposition.parse_rank(args.rank)
    console = _console()
    source = foldpass.load_source(args.source, foldpass.parse_input_shape(args.input_shape), args.weights, args.trust)
    finetune = None
    recalibrate = bool(args.finetune_epochs) if args.recalibrate is None else args.recalibrate
    if args.finetune_epochs or recalibrate:
        splits, _ = _data(args, console, tuple(source.inputs[0].shape[1:]))
        _check_labels(source.model, splits, tuple(source.inputs[0].shape))
        finetune = (splits, args.finetune_epochs)
    with _status(console, f"decomposing ({args.method}, rank {args.rank})"):
        result = decomposition.decompose(
            source.model, source.inputs[0], args.method, rank, finetune=finetune, lr=args.lr, recalibrate=recalibrate,
            log=lambda e: console.print(f"fine-tune epoch {e.epoch}: loss {e.train_loss:.4f}, selection acc {e.val_acc:.2%}"))
    result.render(console)
    result.save_pt2(paths["--output"], force=args.force)
    if args.report:
        foldpass.write_json(paths["--report"], result.as_dict(), force=args.force)
    console.print(f"wrote {args.output}; next: foldpass optimize {args.output} -o model.onnx")
    return 0


def cmd_compress(args) -> int:
    paths = _outputs(args, "--output", "--report", "--plot", inputs=[args.weights])
    for flag in ("--threads", "--epochs"):
        _positive(getattr(args, flag[2:]), flag, minimum=1 if flag == "--threads" else 0)
    if args.resume and not args.checkpoint:
        raise InputError("--resume continues the run in a --checkpoint folder; pass --checkpoint DIR")
    batches = _ints(args.batch, "--batch")
    steps = foldpass.compression.parse_steps(args.steps)
    console = _console()
    splits, shape = _data(args, console, foldpass.parse_input_shape(args.input_shape))
    source = foldpass.load_source(args.source, shape, args.weights, args.trust)
    model = source.model
    _check_labels(model, splits, shape)
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    result = foldpass.compress(model, splits, steps=steps, max_drop=args.max_drop, batches=batches,
                               epochs=args.epochs, lr=args.lr, threads=args.threads, seed=args.seed,
                               budget_minutes=args.budget_minutes, checkpoint=args.checkpoint, resume=args.resume,
                               progress=console.is_terminal, log=lambda text: console.print(text, highlight=False))
    if result.rank != 0:  # under torchrun: rank 0 prints and writes
        return 0
    result.render(console)
    result.save_onnx(paths["--output"], force=args.force, inputs=[args.source, args.weights])
    if args.report:
        foldpass.write_json(paths["--report"], result.as_dict(), force=args.force)
    if args.plot:
        result.plot(paths["--plot"], force=args.force)
    console.print(f"wrote {args.output}")
    return 0


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise InputError(f"{flag} must be positive integers separated by commas; got '{text}'")
    return values


def cmd_info(args) -> int:
    result = foldpass.info(args.model)
    if args.json:
        import json

        print(json.dumps(result.as_dict(), indent=2))
    else:
        result.render(_console())
    return 0


def cmd_demo(args) -> int:
    paths = _outputs(args, "--output")
    _positive(args.width, "--width")
    console = _console()
    with _status(console, "folding the linear ResNet34") as status:
        result = foldpass.demo(width=args.width, output=paths.get("--output"), force=args.force,
                               progress=console.is_terminal, on_step=status.update)
    result.render(console)
    return 0


# ----------------------------------------------------------------------------- main


class _Terminated(BaseException):
    """SIGTERM, raised as an exception so that every `finally` (temporary files) runs."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def _say(text: str) -> None:
    """One line on stderr, whatever bytes a file name in it holds."""
    data = (text + "\n").encode("utf-8", "backslashreplace")
    if hasattr(sys.stderr, "buffer"):
        sys.stderr.flush()
        sys.stderr.buffer.write(data)
    else:
        sys.stderr.write(data.decode("utf-8"))
    sys.stderr.flush()


def _is_allocation_failure(exc: BaseException) -> bool:
    """torch reports a failed allocation as a RuntimeError ("DefaultCPUAllocator: can't allocate memory")."""
    text = str(exc).lower()
    return "can't allocate memory" in text or "out of memory" in text


def _internal_error(exc: BaseException, args, interrupted: list) -> int:
    if interrupted:  # Ctrl-C inside an import that wrapped it into another exception
        _say("foldpass: interrupted")
        return 130
    if args.debug:
        raise exc
    _say(f"foldpass: internal error: {type(exc).__name__}: {foldpass.errors.first_line(exc)} "
         "(run with --debug for the traceback)")
    return 1


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    interrupted: list[int] = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        previous = signal.signal(signal.SIGTERM, _on_sigterm), signal.signal(signal.SIGINT, on_sigint)
    try:
        args = build_parser().parse_args(argv)
        try:
            return args.func(args)
        except FoldpassError as exc:
            if args.debug:
                raise
            # the first line: torch's interpreter appends the graph node it was running to an error raised in it
            text = str(exc).strip()
            _say(f"foldpass: error: {_as_flags(text.splitlines()[0] if text else type(exc).__name__)}")
            return exc.exit_code
        except KeyboardInterrupt:
            _say("foldpass: interrupted")
            return 130
        except _Terminated:
            _say("foldpass: terminated")
            return 143
        except BrokenPipeError:  # `foldpass ... | head`: stop quietly, as the Unix tools do
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        except (MemoryError, RuntimeError) as exc:
            if not isinstance(exc, MemoryError) and not _is_allocation_failure(exc):
                return _internal_error(exc, args, interrupted)
            if args.debug:
                raise
            _say("foldpass: error: out of memory: the model (or a fold) needs more memory than this machine has; "
                 "try a smaller --max-fold-bytes or batch")
            return 2
        except Exception as exc:  # noqa: BLE001 - one line unless --debug
            return _internal_error(exc, args, interrupted)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
