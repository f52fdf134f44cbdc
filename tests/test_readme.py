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
