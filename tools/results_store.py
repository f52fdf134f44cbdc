"""Where a resumable measurement tool keeps its results: a scratch file while it works, docs/ when
it finishes. A result then never rides along in an unrelated commit, and a fresh checkout resumes
from what docs/ published.

    store = Store("zoo.json")
    results = store.load({"models": {}})   # .cache/results/zoo.json, else docs/zoo.json, else the default
    store.save(results)                    # after every finished run (atomic: a kill leaves the last one)
    store.publish(results)                 # the run is over: docs/zoo.json
"""

from __future__ import annotations

import copy
import json
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DOCS = os.path.join(ROOT, "docs")
SCRATCH = os.path.join(ROOT, ".cache", "results")


def _write(path: str, results: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(path + ".tmp", path)


class Store:
    def __init__(self, name: str, scratch: str | None = None, docs: str = DOCS):
        self.scratch = scratch or os.path.join(SCRATCH, name)
        self.published = os.path.join(docs, name)

    def load(self, default: dict) -> dict:
        for path in (self.scratch, self.published):
            if os.path.exists(path):
                with open(path) as f:
                    return json.load(f)
        return copy.deepcopy(default)

    def save(self, results: dict) -> None:
        _write(self.scratch, results)

    def publish(self, results: dict) -> None:
        _write(self.published, results)


def run_measurement(cmd: list[str], timeout: int) -> dict:
    """One measurement in its own process (one thread): the last JSON line it prints, with its wall time,
    or a timeout / crash entry naming the last line of its errors."""
    import subprocess
    import time

    began = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"over the {timeout} s limit"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": "crashed", "error": tail[:300], "seconds": time.perf_counter() - began}
    return json.loads(lines[-1]) | {"seconds": time.perf_counter() - began}
