"""tools/gpu_measure.py's CPU smoke mode (issue 19, part 3): the script a GPU machine will run, run
here on the CPU with small widths, so that it cannot rot before a GPU is lent."""

import json
import os
import subprocess
import sys

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "gpu_measure.py")


def test_cpu_smoke_run(tmp_path):
    run = subprocess.run([sys.executable, TOOL, "--device", "cpu", "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    data = json.loads((tmp_path / "results_torch_cpu.json").read_text())
    assert {r["case"] for r in data["records"]} == {"linear ResNet34", "3-layer CNN (linear, skip)",
                                                      "ResNet34 at t = 0", "6-layer CNN at t = 0"}
    first = data["records"][0]["us_per_image"]
    assert set(first) == {"original eager", "foldpass eager", "original torch.compile", "foldpass torch.compile"}
    assert "paper (RTX 2060, b64)" in (tmp_path / "results_torch_cpu.md").read_text()
