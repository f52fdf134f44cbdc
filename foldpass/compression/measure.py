"""What compress measures of each candidate ONNX file: accuracy under onnxruntime on a split, latency
interleaved against the original and the current file (foldpass.bench), parameters and MACs; under
torchrun, rank 0 measures and every rank takes its numbers (shared).

Latency: bench() times [original, current, candidate] in interleaved blocks at each batch with the
same session options; a candidate's speed-up is the median of the block-by-block ratios against
the original (as `foldpass bench` reports it) and against the current file (neighbours in time).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np
import onnx

# A lossy step must be this much faster than the current file (geometric mean over the batches) and
# at no batch slower: a step at 1.06x / 1.01x (low rank after pruning, resnet18) was within the noise
# of small models at batch 1 and ended slower than pruning alone in the final, longer measurement.
KEEP_MARGIN = 1.05
NOT_SLOWER = 1.0
SLOWER_LIMIT = 0.97  # the exact step (lossless) is kept unless some batch is slower than this


def geomean(values) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def block_ratio(reference, timed) -> float:
    """The median over interleaved blocks of reference's time / timed's (foldpass.bench Timings of one
    run and batch): block neighbours share the machine's state, so their ratio is the steadiest."""
    return statistics.median(a / b for a, b in zip(reference.blocks_s, timed.blocks_s))


@dataclass
class Latency:
    ms: dict[int, float]  # per image, median over rounds, per batch
    vs_original: dict[int, float]  # speed-up (original's time / this one's)
    vs_current: dict[int, float]

    @property
    def shown(self) -> str:
        """The speed-ups against the current file, in words."""
        return ", ".join(f"{v:.2f}x at batch {b}" for b, v in self.vs_current.items())

    def faster(self) -> tuple[bool, str]:
        """Kept only where it pays: faster than the current file beyond the noise, at no batch slower."""
        mean = geomean(self.vs_current.values())
        shown = self.shown
        if mean < KEEP_MARGIN:
            return False, f"not faster than the current file ({shown})"
        worst = min(self.vs_current, key=self.vs_current.get)
        if self.vs_current[worst] < NOT_SLOWER:
            return False, f"slower at batch {worst} ({shown})"
        return True, shown


def session(path: str, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def onnx_accuracy(path: str, dataset, threads: int = 1, batch_size: int = 256) -> float:
    """Top-1 accuracy of the ONNX classifier on `dataset` ((image, label) pairs), under onnxruntime."""
    from torch.utils.data import DataLoader

    sess = session(path, threads)
    name = sess.get_inputs()[0].name
    right = total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        out = sess.run(None, {name: x.numpy().astype(np.float32)})[0]
        right += int((out.argmax(1) == y.numpy()).sum())
        total += len(y)
    return right / max(total, 1)


def latency(original: str, current: str, candidate: str, batches, threads: int = 1, rounds: int = 9,
            round_s: float = 0.3, progress: bool = False) -> Latency:
    from ..benchmark import bench

    result = bench([original, current, candidate], ["original", "current", "candidate"], batches=tuple(batches),
                   rounds=rounds, round_s=round_s, threads=threads, progress=progress)
    out = Latency({}, {}, {})
    for batch in batches:
        rows = {t.name: t for t in result.timings if t.batch == batch}
        cand, cur = rows["candidate"], rows["current"]
        out.ms[batch] = cand.median_us / 1000
        out.vs_original[batch] = cand.speedup
        out.vs_current[batch] = block_ratio(cur, cand)
    return out


def onnx_params(path: str) -> int:
    """Weights in the file (initializers' elements; an int8 weight counts one, like a float)."""
    model = onnx.load(path)
    return int(sum(math.prod(t.dims) for t in model.graph.initializer if len(t.dims) > 1))


def module_macs(module, example) -> int | None:
    """MACs per sample of a PyTorch model (foldpass's cost model on its traced graph), None where it cannot trace."""
    from ..cost import graph_macs
    from ..errors import FoldpassError
    from ..shapes import infer_shapes
    from ..tracing import trace

    try:
        gm = trace(module, (example,))
        return int(graph_macs(gm, infer_shapes(gm)))
    except (FoldpassError, RuntimeError):
        return None


def shared(measure):
    """measure() on rank 0, its value handed to every rank under torchrun (no process group: measure()).
    A failure on rank 0 is raised on every rank, so that none waits for a value that will not come."""
    from torch import distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return measure()
    box = [None]
    if dist.get_rank() == 0:
        try:
            box = [(True, measure())]
        except Exception as exc:  # handed to the other ranks, then raised here as it was
            from ..errors import first_line

            box = [(False, f"{type(exc).__name__}: {first_line(exc)}")]
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        from ..errors import VerificationError

        raise VerificationError(f"rank 0 failed to measure: {value}")
    return value
