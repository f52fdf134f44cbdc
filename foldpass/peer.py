"""The direct export's op counts, counted in a second process beside foldpass's own export and its check.

The comparison `save_onnx` makes (foldpass's file against `torch.onnx.export(dynamo=True)` of the
original) costs one more export. On a machine with a second core it runs there: the program the
trace already made is saved to a private temporary folder, `python -I -m foldpass.peer` (isolated:
the working directory cannot shadow an import) translates it and prints its op counts, and the
user waits only for whichever of the two exports is longer. Where that cannot run (one core, a
program too large to save quickly, foldpass not importable in a fresh interpreter, a crash) the
caller counts in its own process, as before.

    peer = DirectOps.start(program, opset)   # None: count in this process
    ...                                      # foldpass's own export and verification
    counts = peer.result()                   # dict of op counts, a str saying why there are none, or None
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

MAX_PROGRAM_BYTES = 512 << 20  # larger programs are counted in-process (saving them would cost what it saves)
# A second interpreter spends about 5 s importing torch and torch.onnx before it counts: it pays only
# where this process has that long of other work to do meanwhile. Its trace time is the proxy used.
MIN_TRACE_S = 5.0
TIMEOUT_S = 1800


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class DirectOps:
    def __init__(self, folder: str, process: subprocess.Popen):
        self._folder, self._process = folder, process

    @classmethod
    def start(cls, program, opset: int, trace_s: float = MIN_TRACE_S) -> DirectOps | None:
        """The count started beside this process, or None where it should run in this one (one core,
        a large program, or a model whose trace took under MIN_TRACE_S: counting here is quicker)."""
        import torch

        weights = sum(t.numel() * t.element_size() for t in program.state_dict.values() if isinstance(t, torch.Tensor))
        if _cores() < 2 or weights > MAX_PROGRAM_BYTES or trace_s < MIN_TRACE_S:
            return None
        folder = tempfile.mkdtemp(prefix="foldpass-peer-")
        try:
            path = os.path.join(folder, "original.pt2")
            torch.export.save(program, path)
            process = subprocess.Popen([sys.executable, "-I", "-m", "foldpass.peer", path, str(opset)],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       env=dict(os.environ, OMP_NUM_THREADS="1"))
        except Exception:  # noqa: BLE001 - any failure to start: the caller counts in its own process
            shutil.rmtree(folder, ignore_errors=True)
            return None
        return cls(folder, process)

    def result(self) -> dict[str, int] | str | None:
        """The op counts; a str where the direct export itself failed; None where the peer did not
        answer (the caller then counts in its own process)."""
        try:
            out, _ = self._process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.communicate()
            return None
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if self._process.returncode or not lines:
            return None
        answer = json.loads(lines[-1])
        return answer.get("error") or answer["ops"]

    def cancel(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.communicate()
        shutil.rmtree(self._folder, ignore_errors=True)


def main(argv: list[str]) -> int:
    """python -I -m foldpass.peer PROGRAM.pt2 OPSET: prints {"ops": {...}} or {"error": "..."}."""
    import torch

    from .export import direct_export_ops
    from .quiet import quiet

    path, opset = argv[0], int(argv[1])
    torch.set_num_threads(1)
    with quiet():
        program = torch.export.load(path)  # our own file, written a moment ago by this user's process
    counts = direct_export_ops(program, (), opset, True)
    print(json.dumps({"error": counts} if isinstance(counts, str) else {"ops": counts}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
