"""`foldpass bench`: several ONNX models timed side by side under onnxruntime.

Every model runs under the same session options (ORT_ENABLE_ALL, intra-op threads that sleep
rather than spin between runs) after a warm-up. Timing is interleaved in short blocks (A B C,
B C A, C A B, ...: each block a calibrated number of runs, about BLOCK_S long; each sweep over the
models starts with the next one in turn), so machine drift and
interrupts hit all models alike; per-image time is a block's time / (runs * batch).
Reported: per round the median block, the median over rounds and the interquartile spread,
throughput, and each model's ratio to the first, taken block by block (neighbours in time,
same conditions) and then the median over every block of every round.
On CUDA, inputs and outputs are bound on the device (IOBinding) so no copy is timed, and the
provider that really ran is read back from the session (onnxruntime falls back to CPU silently).
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date

import numpy as np

from .errors import InputError
from .extras import require

BLOCK_S = 0.002  # the shortest stretch timed at once: long enough that the clock's overhead is noise


@dataclass
class Timing:
    name: str
    batch: int
    per_image_s: list[float] = field(default_factory=list)  # one per round: the median of its blocks
    blocks_s: list[float] = field(default_factory=list)  # per-image time of every block, in the order timed
    ratios: list[float] = field(default_factory=list)  # first model's time / this model's, block by block

    @property
    def median_us(self) -> float:
        return statistics.median(self.per_image_s) * 1e6

    @property
    def spread_us(self) -> tuple[float, float]:
        q = np.percentile(np.array(self.per_image_s) * 1e6, [25, 75])
        return float(q[0]), float(q[1])

    @property
    def speedup(self) -> float:
        return statistics.median(self.ratios) if self.ratios else 1.0

    def as_dict(self) -> dict:
        lo, hi = self.spread_us
        return {"model": self.name, "batch": self.batch, "median_us_per_image": self.median_us, "q25_us": lo,
                "q75_us": hi, "images_per_s": 1e6 / self.median_us, "speedup_vs_first": self.speedup,
                "rounds_us": [t * 1e6 for t in self.per_image_s]}


@dataclass
class BenchResult:
    provider: str
    timings: list[Timing]
    notes: list[str] = field(default_factory=list)
    environment: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"provider": self.provider, "environment": self.environment, "notes": self.notes,
                "results": [t.as_dict() for t in self.timings]}

    def markdown(self) -> str:
        lines = ["| model | batch | us / image (median) | IQR | images / s | speed-up vs first |",
                 "|---|---:|---:|---:|---:|---:|"]
        for t in self.timings:
            lo, hi = t.spread_us
            lines.append(f"| {t.name} | {t.batch} | {t.median_us:,.2f} | {lo:,.2f} - {hi:,.2f} | "
                         f"{1e6 / t.median_us:,.0f} | {t.speedup:,.2f}x |")
        return "\n".join(lines)

    def to_json(self, path: str, force: bool = False) -> None:
        from .outputs import write_json

        write_json(path, self.as_dict(), force=force)

    def plot(self, path: str, force: bool = False) -> None:
        from .outputs import atomic_write

        matplotlib = require("matplotlib", "plot")
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        batches = sorted({t.batch for t in self.timings})
        names = list(dict.fromkeys(t.name for t in self.timings))
        fig, axes = plt.subplots(1, len(batches), figsize=(4 + 2.2 * len(names), 4), squeeze=False)
        for ax, b in zip(axes[0], batches):
            rows = [t for t in self.timings if t.batch == b]
            ys = [t.median_us for t in rows]
            errs = np.array([[t.median_us - t.spread_us[0], t.spread_us[1] - t.median_us] for t in rows]).T
            ax.bar(range(len(rows)), ys, yerr=errs, color="tab:blue", capsize=3)
            ax.set_xticks(range(len(rows)), [t.name for t in rows], rotation=30, ha="right", fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("us per image (median, log scale)")
            ax.set_title(f"batch {b}, {self.provider}")
            for i, t in enumerate(rows):
                ax.annotate(f"{t.median_us:.3g}", (i, t.median_us), ha="center", va="bottom", fontsize=7)
        fig.tight_layout()
        try:
            atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), force=force)
        finally:
            plt.close(fig)


def environment(provider: str) -> dict:
    import onnxruntime as ort

    env = {"date": date.today().isoformat(), "machine": platform.machine(), "cpu": _cpu_name(),
           "cores": os.cpu_count(), "python": platform.python_version(), "onnxruntime": ort.__version__,
           "provider": provider}
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def resolve_provider(provider: str) -> str:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider == "auto":
        return "CUDAExecutionProvider" if "CUDAExecutionProvider" in available else "CPUExecutionProvider"
    name = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}.get(provider)
    if name is None:
        raise InputError(f"unknown provider '{provider}'; valid: auto, cuda, cpu")
    if name not in available:
        raise InputError(f"onnxruntime here has no {name} (available: {', '.join(available)}); "
                         "install onnxruntime-gpu for CUDA")
    return name


class _Runner:
    """One model's session and a run() that executes it once on fixed inputs."""

    def __init__(self, path: str, provider: str, batch: int, threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        # Several sessions share the cores in one run: a session whose worker threads spin-wait
        # after each run steals CPU from the next one timed, which skews ratios by tens of percent.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, opts, providers=list(dict.fromkeys([provider, "CPUExecutionProvider"])))
        self.actual_provider = self.session.get_providers()[0]
        rng = np.random.default_rng(0)
        self.feeds = {}
        for inp in self.session.get_inputs():
            dims = list(inp.shape)
            if dims and not isinstance(dims[0], int):
                dims[0] = batch
            elif dims and dims[0] != batch:
                raise InputError(f"{os.path.basename(path)} has a fixed batch of {dims[0]}, not {batch}")
            if any(not isinstance(d, int) for d in dims):
                raise InputError(f"{os.path.basename(path)}: input '{inp.name}' has dynamic dims besides the batch")
            self.feeds[inp.name] = rng.standard_normal(dims).astype(_np_dtype(inp.type))
        self.run = self._bind_cuda() if self.actual_provider == "CUDAExecutionProvider" else self._run_cpu

    def _run_cpu(self):
        self.session.run(None, self.feeds)

    def _bind_cuda(self):
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, value in self.feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
        for out in self.session.get_outputs():
            binding.bind_output(out.name, "cuda")

        def run():
            self.session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return run


def _np_dtype(onnx_type: str):
    return {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}.get(
        onnx_type, np.float32)


def _calibrate(run, block_s: float, round_s: float) -> tuple[int, int]:
    """(runs per block, blocks per round) for a model whose single run takes what it takes now."""
    start = time.perf_counter()
    run()
    once = max(time.perf_counter() - start, 1e-7)
    per_block = max(1, int(block_s / once))
    return per_block, max(1, int(round_s / (per_block * once)))


def check_bench_args(models: list[str], batches, rounds: int) -> None:
    """Refuses, before any timing, what cannot be benchmarked (InputError names the argument)."""
    import onnx

    if not batches or any(not isinstance(b, int) or b < 1 for b in batches):
        raise InputError(f"batches must be positive integers; got {list(batches)}")
    if not isinstance(rounds, int) or rounds < 1:
        raise InputError(f"rounds must be at least 1; got {rounds}")
    for m in models:
        if not os.path.isfile(m):
            raise InputError(f"{m}: no such file")
        try:
            onnx.load(m, load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise InputError(f"{m}: not an ONNX model ({type(exc).__name__})") from None


def bench(models: list[str], names: list[str] | None = None, provider: str = "auto", batches=(1, 64),
          rounds: int = 9, round_s: float = 0.05, warmup: int = 3, threads: int = 0, progress: bool = False,
          peers: bool = False) -> BenchResult:
    """Times every model at every batch size, interleaved; see the module docstring. peers=True also
    times the first model after ORT_ENABLE_ALL offline and onnxsim (bench_with_peers)."""
    check_bench_args(models, batches, rounds)
    if peers:
        return bench_with_peers(models, names, provider=provider, batches=batches, rounds=rounds, round_s=round_s,
                                warmup=warmup, threads=threads, progress=progress)
    names = names or [os.path.basename(m) for m in models]
    provider = resolve_provider(provider)
    result = BenchResult(provider, [], environment=environment(provider))
    total = len(batches) * rounds
    bar = _progress(progress, total)
    for batch in batches:
        runners = [_Runner(m, provider, batch, threads) for m in models]
        for name, r in zip(names, runners):
            if r.actual_provider != provider:
                result.notes.append(f"{name}: onnxruntime ran {r.actual_provider}, not {provider} (fallback)")
        for r in runners:
            for _ in range(warmup):
                r.run()
        plans = [_calibrate(r.run, BLOCK_S, round_s) for r in runners]
        blocks = min(b for _, b in plans)  # the same count for all, so every block has neighbours
        timings = [Timing(n, batch) for n in names]
        turn = 0
        for _ in range(rounds):
            this_round: list[list[float]] = [[] for _ in runners]
            for _ in range(blocks):
                # each block starts with the next model in turn: no model always runs first (after the
                # gap between blocks) or always after the same neighbour, whose cache state it inherits
                first, turn = turn % len(runners), turn + 1
                for i in [*range(first, len(runners)), *range(first)]:
                    r, k = runners[i], plans[i][0]
                    start = time.perf_counter()
                    for _ in range(k):
                        r.run()
                    this_round[i].append((time.perf_counter() - start) / (k * batch))
            for t, mine in zip(timings, this_round):
                t.per_image_s.append(statistics.median(mine))
                t.blocks_s.extend(mine)
            if bar:
                bar.advance(bar.task_ids[0])
        for t in timings:
            t.ratios = [a / b for a, b in zip(timings[0].blocks_s, t.blocks_s)]
        result.timings.extend(timings)
    if bar:
        bar.stop()
    result.provider = provider.replace("ExecutionProvider", "")
    return result


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("benchmarking"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
    bar.add_task("rounds", total=total)
    bar.start()
    return bar


def peer_models(path: str, workdir: str) -> list[tuple[str, str]]:
    """The tools a user would reach for instead, applied to `path`: [(name, optimized path)].

    ORT_ENABLE_ALL offline optimization (the session's optimized_model_filepath), and onnxsim
    where it is installed.
    """
    import onnxruntime as ort

    out = []
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # its note that the file holds host-specific kernels is for us, not the user
    ort_path = os.path.join(workdir, "ort_enable_all.onnx")
    opts.optimized_model_filepath = ort_path
    ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    out.append(("ORT_ENABLE_ALL offline", ort_path))
    try:
        import onnx
        import onnxsim

        simplified, ok = onnxsim.simplify(onnx.load(path))
        if ok:
            sim_path = os.path.join(workdir, "onnxsim.onnx")
            onnx.save(simplified, sim_path)
            out.append(("onnxsim", sim_path))
    except ImportError:
        pass
    return out


def bench_with_peers(models: list[str], names: list[str] | None = None, **kw) -> BenchResult:
    """bench(), with the first model's peers inserted right after it."""
    names = names or [os.path.basename(m) for m in models]
    with tempfile.TemporaryDirectory() as tmp:
        peers = peer_models(models[0], tmp)
        all_models = [models[0], *[p for _, p in peers], *models[1:]]
        all_names = [names[0], *[f"{names[0]} + {n}" for n, _ in peers], *names[1:]]
        result = bench(all_models, all_names, **kw)
        if not any(n == "onnxsim" for n, _ in peers):
            result.notes.append("onnxsim is not installed: pip install onnxsim to compare with it")
        return result
