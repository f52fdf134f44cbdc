"""foldpass's command line: parses arguments and calls the library; nothing else.

Exit codes: 0 success; 1 the verification gate failed (or an internal error); 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile

from .errors import FoldpassError, InputError, first_line


def _add_trust(p) -> None:
    p.add_argument("--trust", "--trust-pickle", dest="trust", action="store_true",
                   help="the file is yours: allow unpickling a torch.save(model) file and skip the .pt2 checks "
                        "(both can run code from the file)")


def _add_optimize(sub) -> None:
    from .passes import PIPELINES
    from .passes.affine_folding import DEFAULT_MAX_FOLD_BYTES
    from .verify import DEFAULT_ATOL, DEFAULT_RTOL

    p = sub.add_parser("optimize", help="trace a model, run the passes, write verified ONNX")
    p.add_argument("source", help="model.pt2 | model.onnx | model.pt (with --trust-pickle) | pkg.module:build")
    p.add_argument("-o", "--output", required=True, help="the ONNX file to write")
    p.add_argument("--input-shape", help="example input shape with batch, e.g. 1,1,28,28 (required except for .pt2 / .onnx)")
    p.add_argument("--weights", help="state dict for pkg.module:build (loaded with weights_only=True)")
    _add_trust(p)
    p.add_argument("--max-model-bytes", type=int, default=None,
                   help="refuse an ONNX source (with its external data) larger than this (default 32 GiB)")
    p.add_argument("--pipeline", default="default", choices=list(PIPELINES), help="which passes to run")
    p.add_argument("--set-t", type=float, metavar="VALUE", help="set every blend weight t to VALUE first")
    p.add_argument("--max-fold-bytes", type=int, default=DEFAULT_MAX_FOLD_BYTES,
                   help="largest Gemm weight a fold may create (default 256 MiB)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime verification gate")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL, help="verification rtol, relative to output scale")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="verification atol")
    p.add_argument("--inputs", help=".npy file of extra inputs (with batch) for the verification gate")
    p.add_argument("--opset", type=int, help="ONNX opset (>= 18; default 18, or the input's for an .onnx source)")
    p.add_argument("--report", help="also write the report as JSON to this file")
    p.add_argument("--explain", action="store_true", help="list every region and every rule's decision")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--bench", action="store_true", help="then benchmark the original against the output")
    p.set_defaults(func=cmd_optimize)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time ONNX models side by side under onnxruntime")
    p.add_argument("models", nargs="+", help="ONNX files; ratios are against the first")
    p.add_argument("--provider", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--batch", default="1,64", help="batch sizes, comma-separated (default 1,64)")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds (median over them)")
    p.add_argument("--peers", action="store_true", help="also time the first model after ORT_ENABLE_ALL and onnxsim")
    p.add_argument("--json", help="write the results as JSON")
    p.add_argument("--plot", help="write a bar chart (PNG)")
    p.add_argument("--force", action="store_true", help="overwrite existing --json / --plot files")
    p.set_defaults(func=cmd_bench)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="fold the paper's linear ResNet34 into one Gemm and time it (no files needed)")
    p.add_argument("-o", "--output", help="where to write the folded ONNX (default: a temporary directory)")
    p.add_argument("--width", type=int, default=64, help="ResNet base width (64 is the paper's)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(func=cmd_demo)


def _add_train(sub) -> None:
    from .data import DATASETS
    from .schedules import SCHEDULES

    p = sub.add_parser("train", help="train with blended skips while a schedule drives t to 0; write a .pt2")
    p.add_argument("source", help="pkg.module:build (e.g. models:resnet34), as for optimize")
    p.add_argument("-o", "--output", required=True, help="the trained model, a .pt2 file for foldpass optimize")
    p.add_argument("--weights", help="start from these weights (a state dict, loaded with weights_only=True)")
    p.add_argument("--schedule", default="paper", choices=SCHEDULES, help="how t falls to 0 (default: paper)")
    p.add_argument("--t0", type=float, help="starting t (default 0.9 for paper, else 0.5)")
    p.add_argument("--per", default="epoch", choices=["epoch", "step"], help="update t per epoch or per step")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data", default="digits", choices=DATASETS, help="digits (bundled, offline) or mnist")
    p.add_argument("--data-dir", help="where MNIST is (or goes, with --download)")
    p.add_argument("--download", action="store_true", help="download MNIST into --data-dir")
    p.add_argument("--limit", type=int, help="use only the first N training and validation images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--convert", action="store_true",
                   help="blend the model's residual adds first (for a model without Blend modules)")
    p.add_argument("--checkpoint", help="write a checkpoint here after every epoch")
    p.add_argument("--resume", help="resume from a checkpoint")
    p.add_argument("--history", help="write the per-epoch log as JSON")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(func=cmd_train)


def _add_decompose(sub) -> None:
    from .passes.low_rank_decomposition import METHODS

    p = sub.add_parser("decompose", help="factorize convs (CP / Tucker-2 / TT; lossy) and write a .pt2")
    p.add_argument("source", help="model.pt2 | model.onnx | model.pt (with --trust-pickle) | pkg.module:build")
    p.add_argument("-o", "--output", required=True, help="the decomposed model, a .pt2 file for foldpass optimize")
    p.add_argument("--method", default="tucker", choices=METHODS)
    p.add_argument("--rank", default="auto", help="auto (VBMF) | a parameter fraction like 0.1 | a rank like 16")
    p.add_argument("--input-shape", help="example input shape with batch (required except for .pt2 / .onnx)")
    p.add_argument("--weights", help="state dict for pkg.module:build (loaded with weights_only=True)")
    _add_trust(p)
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune the decomposed model this many epochs")
    p.add_argument("--recalibrate", action=argparse.BooleanOptionalAction, default=None,
                   help="re-estimate batch-norm statistics on the data after factorizing (default: when fine-tuning)")
    p.add_argument("--data", default="digits", help="recalibration / fine-tuning data: digits (bundled) or mnist")
    p.add_argument("--data-dir", help="where MNIST is")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (Adam)")
    p.add_argument("--report", help="also write the per-layer report as JSON")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(func=cmd_decompose)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="foldpass", description="Fold trained CNNs into faster, verified ONNX.")
    parser.add_argument("--version", action="version", version=f"foldpass {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_optimize(sub)
    _add_bench(sub)
    _add_demo(sub)
    _add_train(sub)
    _add_decompose(sub)
    for command in sub.choices.values():  # --debug also after the command, where a user adds it on a rerun
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


def _outputs(args, *flags: str, inputs=()) -> dict[str, str]:
    """Checks every output a command will write, before any work (outputs.py's policy)."""
    from .outputs import check_outputs

    named = {flag: getattr(args, flag.lstrip("-").replace("-", "_"), None) for flag in flags}
    return check_outputs(named, [*inputs, getattr(args, "source", None)], getattr(args, "force", False))


def _positive(value: int | None, flag: str, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise InputError(f"{flag} must be at least {minimum}; got {value}")


def _console():
    from rich.console import Console

    return Console(stderr=False)


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


def cmd_optimize(args) -> int:
    import foldpass
    from .export import check_opset
    from .loading import DEFAULT_MAX_MODEL_BYTES, load_npy_inputs
    from .optimize import check_options
    from .verify import check_tolerances

    paths = _outputs(args, "--output", "--report")
    check_tolerances(args.rtol, args.atol)
    check_options(set_t=args.set_t, max_fold_bytes=args.max_fold_bytes)
    _positive(args.max_model_bytes, "--max-model-bytes")
    if args.opset is not None:
        check_opset(args.opset)
    console = _console()
    shape = foldpass.parse_input_shape(args.input_shape)
    with _status(console, "loading") as status:
        source = foldpass.load_source(args.source, shape, args.weights, args.trust,
                                      args.max_model_bytes or DEFAULT_MAX_MODEL_BYTES)
        extra = load_npy_inputs(args.inputs, source.inputs, source.static_batch) if args.inputs else []
        status.update("tracing and running passes")
        result = foldpass.optimize(source, pipeline=args.pipeline, set_t=args.set_t,
                                   max_fold_bytes=args.max_fold_bytes,
                                   on_pass=lambda name: status.update(f"pass: {name}"))
        status.update("exporting ONNX and verifying under onnxruntime")
        result.save_onnx(paths["--output"], verify_output=not args.no_verify, rtol=args.rtol, atol=args.atol,
                         extra_inputs=extra, opset=args.opset, force=args.force)
    if args.report:
        result.report.to_json(paths["--report"], force=args.force)
    result.report.render(console, explain=args.explain)
    console.print(f"wrote {args.output}")
    if args.bench:
        _bench_pair(result, paths["--output"], console)
    return 0


def _bench_pair(result, output: str, console) -> None:
    from .bench import bench
    from .export import save_atomic, to_onnx

    with tempfile.TemporaryDirectory() as tmp:
        original = os.path.join(tmp, "original.onnx")
        save_atomic(to_onnx(result.original, result.inputs), original)
        res = bench([original, output], ["original", "foldpass"], batches=(1, 64), progress=console.is_terminal)
    print(res.markdown())


def cmd_bench(args) -> int:
    from .bench import bench, bench_with_peers

    try:
        batches = tuple(int(b) for b in args.batch.split(","))
    except ValueError:
        raise InputError(f"--batch must be integers separated by commas; got '{args.batch}'") from None
    if any(b < 1 for b in batches):
        raise InputError(f"--batch sizes must be at least 1; got '{args.batch}'")
    _positive(args.rounds, "--rounds")
    paths = _outputs(args, "--json", "--plot", inputs=args.models)
    console = _console()
    run = bench_with_peers if args.peers else bench
    res = run(args.models, provider=args.provider, batches=batches, rounds=args.rounds, progress=console.is_terminal)
    print(res.markdown())
    for note in res.notes:
        console.print(f"note: {note}")
    if args.json:
        from .outputs import write_json

        write_json(paths["--json"], res.as_dict(), force=args.force)
    if args.plot:
        res.plot(paths["--plot"], force=args.force)
    return 0


def cmd_train(args) -> int:
    import foldpass
    from .outputs import write_json
    from .data import load_dataset
    from .homotopy import blend_residuals, get_t
    from .schedules import make_schedule
    from .training import export_pt2, init_distributed, train

    paths = _outputs(args, "--output", "--checkpoint", "--history", inputs=[args.resume, args.weights])
    _positive(args.epochs, "--epochs")
    _positive(args.batch_size, "--batch-size")
    _positive(args.limit, "--limit")
    rank, device = init_distributed()
    console = _console()
    model = foldpass.load_source(args.source, (1, 1, 28, 28), args.weights).model
    schedule = make_schedule(args.schedule, args.epochs, args.t0, args.per)
    train_set, val_set = load_dataset(args.data, args.data_dir, args.download, args.limit)
    if args.per == "step":
        from torch.utils.data import DataLoader

        steps = len(DataLoader(train_set, batch_size=args.batch_size))
        schedule = make_schedule(args.schedule, args.epochs, args.t0, "step", steps)
    if args.convert:
        model = blend_residuals(model, schedule.value(0), exact=bool(args.weights))
    elif get_t(model) is None:
        raise InputError(f"{args.source} has no blend weight t; pass --convert to blend its residual adds")
    show = rank == 0 and console.is_terminal

    def log(e):
        if rank == 0:
            console.print(f"epoch {e.epoch:>3}  t {e.t:<6g} loss {e.train_loss:.4f}  train acc {e.train_acc:6.2%}  "
                          f"val loss {e.val_loss:.4f}  val acc {e.val_acc:6.2%}  ({e.seconds:.1f} s)")

    history = train(model, train_set, val_set, schedule, args.epochs, lr=args.lr, batch_size=args.batch_size,
                    seed=args.seed, device=device, checkpoint=paths.get("--checkpoint"), resume=args.resume,
                    progress=show, log=log)
    if rank == 0:
        export_pt2(model, paths["--output"], force=args.force)
        if args.history:
            write_json(paths["--history"], [vars(h) for h in history], force=args.force)
        final = get_t(model)
        console.print(f"wrote {args.output} (t = {final:g}); next: foldpass optimize {args.output} -o model.onnx")
    return 0


def cmd_decompose(args) -> int:
    import foldpass
    from .outputs import write_json
    from .data import load_dataset
    from .passes.low_rank_decomposition import parse_rank

    paths = _outputs(args, "--output", "--report")
    _positive(args.finetune_epochs, "--finetune-epochs", minimum=0)
    rank = parse_rank(args.rank)
    console = _console()
    source = foldpass.load_source(args.source, foldpass.parse_input_shape(args.input_shape), args.weights, args.trust)
    model, inputs = source.model, source.inputs
    finetune = None
    recalibrate = bool(args.finetune_epochs) if args.recalibrate is None else args.recalibrate
    if args.finetune_epochs or recalibrate:
        shape = tuple(inputs[0].shape[1:])
        finetune = (*load_dataset(args.data, args.data_dir, image_shape=shape), args.finetune_epochs)
    with _status(console, f"decomposing ({args.method}, rank {args.rank})"):
        result = foldpass.decompose(model, inputs[0], args.method, rank, finetune=finetune, lr=args.lr,
                                    recalibrate=recalibrate,
                                    log=lambda e: console.print(f"fine-tune epoch {e.epoch}: loss {e.train_loss:.4f}, "
                                                                f"val acc {e.val_acc:.2%}"))
    _decompose_table(result, console)
    result.save_pt2(paths["--output"], force=args.force)
    if args.report:
        write_json(paths["--report"], result.as_dict(), force=args.force)
    console.print(f"wrote {args.output}; next: foldpass optimize {args.output} -o model.onnx")
    return 0


def _decompose_table(result, console) -> None:
    from rich.table import Table

    table = Table(title=f"{result.method} decomposition (lossy)")
    for col in ("layer", "shape", "rank", "params", "MACs / sample", "rel. error"):
        table.add_column(col, justify="left" if col in ("layer", "shape") else "right")
    for layer in result.layers:
        table.add_row(layer.node, "x".join(map(str, layer.shape)), ",".join(map(str, layer.rank)),
                      f"{layer.params[0]:,} -> {layer.params[1]:,}", f"{layer.macs[0]:,} -> {layer.macs[1]:,}",
                      f"{layer.error:.3f}")
    console.print(table)
    for reason in result.kept:
        console.print(f"  {reason}", highlight=False)
    p, m = result.params, result.macs
    console.print(f"model: {p[0]:,} -> {p[1]:,} parameters ({p[1] / p[0]:.1%}), {m[0]:,} -> {m[1]:,} MACs "
                  f"({m[1] / max(m[0], 1):.1%}); outputs moved by {result.output_error:.3g} of their scale "
                  "(decomposition is lossy: this is reported, not verified)")
    if result.accuracy:
        console.print("validation accuracy: " + ", ".join(f"{k} {v:.2%}" for k, v in result.accuracy.items()))
    if not result.layers:
        console.print("no layer was decomposed (each one's reason is listed above)")


def cmd_demo(args) -> int:
    import torch

    import foldpass
    from models import linear_resnet34

    from .bench import bench
    from .export import save_atomic, to_onnx

    paths = _outputs(args, "--output")
    _positive(args.width, "--width")
    console = _console()
    torch.manual_seed(0)
    model = foldpass.randomize_batchnorm(linear_resnet34(width=args.width)).eval()
    x = torch.randn(2, 1, 28, 28)
    with tempfile.TemporaryDirectory() as tmp:
        output = paths.get("--output") or os.path.join(tmp, "linear_resnet34.folded.onnx")
        with _status(console, "folding the linear ResNet34") as status:
            result = foldpass.optimize(model, x, source="models:linear_resnet34 (random weights, random BN statistics)")
            status.update("exporting and verifying")
            result.save_onnx(output, force=args.force)
            original = os.path.join(tmp, "original.onnx")
            save_atomic(to_onnx(model, (x,)), original)
        result.report.render(console)
        res = bench([original, output], ["linear ResNet34 (original)", "folded: one Gemm"], batches=(64,),
                    rounds=5, progress=console.is_terminal)
    print(res.markdown())
    console.print(f"speed-up at batch 64 on {res.provider}: {res.timings[1].speedup:,.0f}x")
    return 0


class _Terminated(BaseException):
    """SIGTERM, raised as an exception so that every `finally` (temporary files) runs."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def _say(text: str) -> None:
    """One line on stderr, whatever bytes a file name in it holds."""
    sys.stderr.buffer.write((text + "\n").encode("utf-8", "backslashreplace")) if hasattr(sys.stderr, "buffer") \
        else print(text, file=sys.stderr)
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    import signal

    interrupted = []
    previous_int = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    in_main_thread = threading_is_main()
    if in_main_thread:
        previous_term = signal.signal(signal.SIGTERM, _on_sigterm)
        signal.signal(signal.SIGINT, on_sigint)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FoldpassError as exc:
        if args.debug:
            raise
        _say(f"foldpass: error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _say("foldpass: interrupted")
        return 130
    except _Terminated:
        _say("foldpass: terminated")
        return 143
    except BrokenPipeError:  # `foldpass ... | head`: stop quietly, as the Unix tools do
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except MemoryError:
        if args.debug:
            raise
        _say("foldpass: error: out of memory: the model (or a fold) needs more memory than this machine has; "
             "try a smaller --max-fold-bytes or batch")
        return 2
    except Exception as exc:  # noqa: BLE001 - one line unless --debug
        if interrupted:  # Ctrl-C inside an import that wrapped it into another exception
            _say("foldpass: interrupted")
            return 130
        if args.debug:
            raise
        _say(f"foldpass: internal error: {type(exc).__name__}: {first_line(exc)} (run with --debug for the traceback)")
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_term)
            signal.signal(signal.SIGINT, previous_int)


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
