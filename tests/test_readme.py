"""The README's examples still work: its Python blocks run, and every `foldpass ...` command line
in its bash blocks is accepted by the CLI's parser (running them all would take too long)."""

import re
import shlex
from pathlib import Path

import pytest

from foldpass.cli import build_parser

README = (Path(__file__).parent.parent / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def command_lines() -> list[str]:
    lines = []
    for block in blocks("bash"):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if "foldpass.cli" in words:  # torchrun ... -m foldpass.cli train ...
                    words = ["foldpass"] + words[words.index("foldpass.cli") + 1:]
                if words[:1] == ["foldpass"]:
                    lines.append(shlex.join(words[1:]))
    return lines


def test_the_readme_has_examples():
    assert len(blocks("python")) >= 1 and len(command_lines()) >= 10


@pytest.mark.parametrize("command", command_lines())
def test_readme_command_parses(command):
    args = build_parser().parse_args(shlex.split(command))
    assert callable(args.func)


@pytest.mark.parametrize("code", blocks("python"))
def test_readme_python_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})


def test_every_option_the_readme_names_exists():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict)).choices
    known = {opt for sub in subparsers.values() for opt in sub._option_string_actions} | set(parser._option_string_actions)
    tools = "".join(p.read_text() for p in (Path(__file__).parent.parent / "tools").glob("*.py"))
    known |= set(re.findall(r'add_argument\("(--[a-z0-9-]+)"', tools))  # the README names the tools' flags too
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", README)) - {"--nproc-per-node"}  # torchrun's own
    assert named and not named - known, f"README names options the CLI lacks: {sorted(named - known)}"


def python_c_lines() -> list[str]:
    return [line.strip() for block in blocks("bash") for line in block.splitlines()
            if line.strip().startswith(("python -c", "python3 -c"))]


@pytest.mark.parametrize("line", python_c_lines())
def test_readme_python_c_line_runs(line, tmp_path):
    """Each `python -c` line of the README, run as written, in a folder holding the files it reads
    (a folded.pt2, as `foldpass optimize model.pt2 -o folded.pt2` writes it before it)."""
    import os
    import subprocess
    import sys

    import torch

    import foldpass
    from foldpass import models

    if "aoti_compile_and_package" in line and not os.environ.get("FOLDPASS_SLOW"):
        pytest.skip("AOTInductor compiles C++ for 1-2 minutes on 2 cores: FOLDPASS_SLOW=1 runs it")
    if "folded.pt2" in line:
        result = foldpass.optimize(models.CNN3(width=4, t=0.0).eval(), torch.randn(1, 1, 28, 28))
        result.save_pt2(str(tmp_path / "folded.pt2"))
    code = shlex.split(line)[2]
    before = set(os.listdir(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = set(os.listdir(tmp_path)) - before
    assert written and all(name in line for name in written), written  # it wrote the file it names
