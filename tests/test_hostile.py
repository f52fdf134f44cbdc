"""Hostile and odd inputs (issue 14): every promise of the README's security and error sections, by class.

1. code execution: a .pt2 never runs code from the file without --trust; the working directory
   cannot shadow foldpass's own imports; a file name with a colon is not a module name
2. files: one output policy (no clobbering, no following links, no half-written or racing files)
3. the verification gate: non-finite values, a scale per output, input copies, structured inputs
4. exit codes: bad options and files are one line and exit 2, never a traceback
5. valid inputs that used to be refused
"""

from __future__ import annotations

import builtins
import io
import json
import os
import signal
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn
from torch.export import Dim

import foldpass
from foldpass.cli import main
from foldpass.errors import InputError, VerificationError
from foldpass.export import to_onnx
from foldpass.outputs import atomic_write
from foldpass.verification import verification_inputs, verify

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.register_buffer("k", torch.ones(2))

    def forward(self, x):
        return (self.conv(x) * self.k.view(1, 2, 1, 1)).flatten(1)


_EXPORTED: list[bytes] = []


def save_pt2(path) -> None:
    """A small model's .pt2, exported once per session and copied."""
    if not _EXPORTED:
        buffer = io.BytesIO()
        ep = torch.export.export(Small().eval(), (torch.randn(2, 1, 8, 8),), dynamic_shapes=({0: Dim("batch")},))
        torch.export.save(ep, buffer)
        _EXPORTED.append(buffer.getvalue())
    with open(path, "wb") as f:
        f.write(_EXPORTED[0])


class Payload:
    """A pickle that writes `marker` when unpickled, then returns `value` (a stealth payload)."""

    def __init__(self, marker, value="torch.randn(2, 1, 8, 8)"):
        self.code = f"(open({str(marker)!r}, 'w').write('ran'), __import__('torch').{value.split('torch.', 1)[1]})[1]"

    def __reduce__(self):
        return builtins.eval, (self.code,)


def pickled(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def rewrite(src, dst, edit) -> None:
    """Copies the zip `src` to `dst`, letting edit(entries) change the {name: bytes} map (names without the root)."""
    with zipfile.ZipFile(src) as zf:
        root = zf.namelist()[0].split("/", 1)[0] + "/"
        entries = {n[len(root):]: zf.read(n) for n in zf.namelist()}
    edit(entries)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(root + name, data)


def program(entries) -> dict:
    return json.loads(entries["models/model.json"])


def set_program(entries, prog) -> None:
    entries["models/model.json"] = json.dumps(prog).encode()


def pickle_weight(marker):
    def edit(entries):
        config = json.loads(entries["data/weights/model_weights_config.json"])
        config["config"]["conv.weight"]["use_pickle"] = True
        entries["data/weights/model_weights_config.json"] = json.dumps(config).encode()
        entries["data/weights/weight_0"] = pickled(Payload(marker, "torch.randn(2, 1, 3, 3)"))
    return edit


def pickle_constant(prefix):
    def factory(marker):
        def edit(entries):
            entries["data/constants/model_constants_config.json"] = json.dumps({"config": {"c": {
                "path_name": f"{prefix}0", "is_param": False, "use_pickle": True, "tensor_meta": None}}}).encode()
            entries[f"data/constants/{prefix}0"] = pickled(Payload(marker))
        return edit
    return factory


def expr_payload(marker):
    def edit(entries):
        prog = program(entries)
        stack, found = [prog], []
        while stack:  # every expr_str in the program (the dynamic batch's symbol)
            value = stack.pop()
            if isinstance(value, dict):
                found += [value] if "expr_str" in value else []
                stack.extend(value.values())
            elif isinstance(value, list):
                stack.extend(value)
        assert found
        for holder in found:
            holder["expr_str"] = f"__import__('os').system('touch {marker}') or Symbol('s77')"
        set_program(entries, prog)
    return edit


def target_payload(marker):
    def edit(entries):
        prog = program(entries)
        prog["graph_module"]["graph"]["nodes"][0]["target"] = "torch.ops.import_module"
        set_program(entries, prog)
    return edit


def old_layout(marker):
    def edit(entries):
        entries.clear()
        entries.update({"version": b"8.0", "serialized_exported_program.json": b"{}",
                        "serialized_state_dict.json": pickled(Payload(marker))})
    return edit


def legacy_weights(marker):
    def edit(entries):
        del entries["data/weights/model_weights_config.json"]
        entries["data/weights/model.pt"] = pickled(Payload(marker))
    return edit


def aoti(marker):
    def edit(entries):
        entries["data/aotinductor/model/model.so"] = b"\x7fELF"
    return edit


REFUSED = {"pickled weight": pickle_weight, "pickled tensor constant": pickle_constant("tensor_"),
           "custom object": pickle_constant("custom_obj_"), "opaque object": pickle_constant("opaque_obj_"),
           "expr_str": expr_payload, "node target": target_payload, "old layout": old_layout,
           "legacy weights file": legacy_weights, "compiled library": aoti}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_hostile_pt2_is_refused_and_runs_nothing(tmp_path, capsys, case):
    clean, src, out, marker = tmp_path / "clean.pt2", tmp_path / "m.pt2", tmp_path / "m.onnx", tmp_path / "ran"
    save_pt2(clean)
    rewrite(clean, src, REFUSED[case](marker))
    assert main(["optimize", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("refused" in err or "cannot load" in err), err
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("where", ["sample inputs", "guards code"])
def test_payloads_torch_would_run_are_dropped(tmp_path, capsys, where):
    """Sample inputs (a stealth pickle returning valid inputs) and guards_code are never handed to
    torch: the model loads and folds, nothing runs. With --trust, torch runs the payload: the
    payload is live, so this test can fail."""
    clean, src, marker = tmp_path / "clean.pt2", tmp_path / "m.pt2", tmp_path / "ran"
    save_pt2(clean)

    def edit(entries):
        if where == "sample inputs":
            entries["data/sample_inputs/model.pt"] = pickled(Payload(marker, "torch.randn(2, 1, 8, 8)"))
        else:
            prog = program(entries)
            prog["guards_code"] = [f"open({str(marker)!r}, 'w').write('ran') is None"]
            set_program(entries, prog)

    rewrite(clean, src, edit)
    assert main(["optimize", str(src), "-o", str(tmp_path / "a.onnx")]) == 0
    assert not marker.exists()
    main(["optimize", str(src), "-o", str(tmp_path / "b.onnx"), "--trust"])
    assert marker.exists()


def test_a_zip_that_is_not_a_torch_archive_is_one_line(tmp_path, capsys):
    src = tmp_path / "m.pt2"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("hello.txt", "not a model")
    assert main(["optimize", str(src), "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a torch.export archive" in err


def test_the_working_directory_cannot_shadow_foldpass_imports(tmp_path):
    """Modules planted in the cwd, named like foldpass's own imports, never run: not under
    `python -m foldpass` (which puts the cwd first), not through a user module's import."""
    for name in ("rich", "onnxruntime", "onnx_graphsurgeon"):
        (tmp_path / f"{name}.py").write_text(f"open('shadowed-{name}', 'w').write('ran')\n")
    (tmp_path / "m.onnx").write_bytes(small_onnx())
    run = subprocess.run([sys.executable, "-m", "foldpass", "bench", "m.onnx", "--batch", "1", "--rounds", "1",
                          "--json", "b.json"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert not list(tmp_path.glob("shadowed-*")) and (tmp_path / "b.json").exists()


def test_a_user_module_is_found_in_the_working_directory_after_the_installed_packages(tmp_path, monkeypatch):
    from foldpass.loading import import_user_module

    (tmp_path / "mymodel_cwd.py").write_text("def build():\n    return 42\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert import_user_module("mymodel_cwd").build() == 42
    assert sys.path[-1] == str(tmp_path)  # appended: every installed package comes first


def test_a_missing_file_with_a_colon_is_not_a_module(tmp_path, capsys):
    assert main(["optimize", str(tmp_path / "data:2024.pt"), "-o", str(tmp_path / "o.onnx"),
                 "--input-shape", "1,4"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["optimize", "no_such_module:build", "-o", str(tmp_path / "o.onnx"), "--input-shape", "1,4"]) == 2
    assert "read as pkg.module:callable" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 2. files


@pytest.fixture
def pt2(tmp_path):
    path = tmp_path / "m.pt2"
    save_pt2(path)
    return path


def test_a_symlink_at_the_output_is_never_followed(tmp_path, pt2, capsys):
    victim, link = tmp_path / "victim.txt", tmp_path / "out.onnx"
    victim.write_text("precious")
    link.symlink_to(victim)
    assert main(["optimize", str(pt2), "-o", str(link)]) == 2
    assert "symbolic link" in capsys.readouterr().err and victim.read_text() == "precious"
    dangling = tmp_path / "dangling.onnx"
    dangling.symlink_to(tmp_path / "nowhere")
    assert main(["optimize", str(pt2), "-o", str(dangling)]) == 2
    assert not (tmp_path / "nowhere").exists()
    assert main(["optimize", str(pt2), "-o", str(link), "--force"]) == 0  # replaces the link, not its target
    assert victim.read_text() == "precious" and not link.is_symlink() and onnx.load(link)


def test_temporary_files_are_fresh_and_removed(tmp_path, pt2, monkeypatch):
    """The temporary name is random and created exclusively: a symlink planted at the old
    predictable name is not touched, and a failed verification leaves nothing behind."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for pid in range(os.getpid() - 2, os.getpid() + 3):
        (tmp_path / f"out.onnx.foldpass-tmp-{pid}").symlink_to(victim)
    opt = sys.modules["foldpass.optimizer"]

    def fail(*a, **k):
        raise VerificationError("verification failed: planted")

    monkeypatch.setattr(opt, "verify", fail)
    assert main(["optimize", str(pt2), "-o", str(tmp_path / "out.onnx"), "--report", str(tmp_path / "r.json")]) == 1
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.is_symlink()) == ["m.pt2", "victim.txt"]


@pytest.mark.parametrize("flags, message", [
    (["--report", "{src}"], "is the input file"),
    (["--report", "{out}"], "is also the --output path"),
    (["--report", "{existing}"], "exists; pass --force"),
    (["--report", "{missing}/r.json"], "does not exist"),
    (["-o", "{tmp}/"], "is a directory"),
    (["-o", "{src}", "--force"], "is the input file"),
    (["-o", "/dev/null"], "is not a regular file"),
])
def test_one_output_policy(tmp_path, pt2, capsys, flags, message):
    existing = tmp_path / "existing.json"
    existing.write_text("keep")
    names = {"src": pt2, "out": tmp_path / "o.onnx", "existing": existing, "missing": tmp_path / "nodir",
             "tmp": tmp_path}
    argv = ["optimize", str(pt2), *[f.format(**names) for f in flags]]
    if "-o" not in flags:
        argv += ["-o", str(tmp_path / "o.onnx")]
    before = pt2.read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.onnx").exists() and existing.read_text() == "keep" and pt2.read_bytes() == before


def test_a_device_or_a_pipe_is_never_replaced_even_with_force(tmp_path, pt2, capsys):
    """-o onto a device node with --force used to move a regular file over the node (as root,
    `-o /dev/null --force` would have replaced /dev/null). Tried on nodes made in tmp_path."""
    import stat

    nodes = [tmp_path / "fifo"]
    os.mkfifo(nodes[0])
    try:
        os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null of our own (root)
        nodes.append(tmp_path / "null")
    except PermissionError:
        pass
    for node in nodes:
        kind = stat.S_IFMT(os.lstat(node).st_mode)
        assert main(["optimize", str(pt2), "-o", str(node), "--force"]) == 2
        assert "is not a regular file" in capsys.readouterr().err
        assert stat.S_IFMT(os.lstat(node).st_mode) == kind  # still the node it was


def test_a_name_too_long_for_a_suffix_still_works(tmp_path, pt2):
    out = tmp_path / ("n" * 250 + ".onnx")
    assert main(["optimize", str(pt2), "-o", str(out)]) == 0 and out.exists()


def test_a_file_that_appears_meanwhile_is_not_replaced(tmp_path):
    target = tmp_path / "o.txt"

    def write(tmp):
        open(tmp, "w").write("mine")
        target.write_text("theirs")  # another process got there first

    with pytest.raises(InputError, match="appeared while"):
        atomic_write(str(target), write)
    assert target.read_text() == "theirs" and [p.name for p in tmp_path.iterdir()] == ["o.txt"]


def test_sigterm_leaves_no_temporary_file(tmp_path):
    """SIGTERM while a file is half written (here bench's --json): exit 143, no temporary file left."""
    (tmp_path / "m.onnx").write_bytes(small_onnx())
    code = ("import sys, time, foldpass.outputs as o\n"
            "real = o.atomic_write\n"
            "def slow(path, write, check=None, force=False):\n"
            "    def w(tmp):\n"
            "        write(tmp); print('WRITING', flush=True); time.sleep(60)\n"
            "    return real(path, w, check, force)\n"
            "o.atomic_write = slow\n"
            "from foldpass.cli import main\n"
            f"sys.exit(main(['bench', {str(tmp_path / 'm.onnx')!r}, '--batch', '1', '--rounds', '1', "
            f"'--json', {str(tmp_path / 'b.json')!r}]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "WRITING" in line:
            break
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_a_closed_stdout_pipe_is_quiet(tmp_path):
    code = ("import sys, foldpass.cli as c\n"
            "c.cmd_demo = lambda args: [print('x' * 100) for _ in range(200000)] and 0\n"
            "sys.exit(c.main(['demo']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141
    assert proc.stderr.read() == b""


# ----------------------------------------------------------------------------- 3. the gate


class Scales(nn.Module):
    """x * 1e20 * 1e20 * 1e-20 * 1e-20 in four linear layers: inf in float32, x once folded in float64."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(4, 4, bias=False) for _ in range(4)])
        with torch.no_grad():
            for layer, s in zip(self.layers, (1e20, 1e20, 1e-20, 1e-20)):
                layer.weight.copy_(torch.eye(4) * s)

    def forward(self, x):
        return self.layers(x)


def test_an_inf_in_the_original_is_not_an_infinite_tolerance(tmp_path):
    result = foldpass.optimize(Scales().eval(), torch.randn(1, 4))
    with pytest.raises(VerificationError, match="disagree on"):  # the original's inf * 0 gives NaN too
        result.save_onnx(tmp_path / "o.onnx", compare_direct=False)
    assert not (tmp_path / "o.onnx").exists()


class Pair(nn.Module):
    def __init__(self, sign):
        super().__init__()
        self.sign = sign

    def forward(self, x):
        return 1e6 * x, self.sign * x


def test_each_output_has_its_own_scale():
    x = torch.randn(1, 4)
    wrong = to_onnx(Pair(-1.0).eval(), (x,))
    with pytest.raises(VerificationError, match="output 1"):
        verify(wrong, Pair(1.0).eval(), verification_inputs((x,), None))
    verify(to_onnx(Pair(1.0).eval(), (x,)), Pair(1.0).eval(), verification_inputs((x,), None))


def test_nan_where_the_original_has_nan_is_equal(tmp_path, capsys):
    model = nn.Linear(4, 3).eval()
    with torch.no_grad():
        model.bias[1] = float("nan")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    (tmp_path / "nanmodel.py").write_text("import torch\ndef build():\n    return torch.nn.Linear(4, 3)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        for pipeline in ("none", "default"):
            out = tmp_path / f"{pipeline}.onnx"
            assert main(["optimize", "nanmodel:build", "--weights", str(tmp_path / "w.pt"), "-o", str(out),
                         "--input-shape", "1,4", "--pipeline", pipeline]) == 0, capsys.readouterr().err
    finally:
        sys.path.remove(str(tmp_path))


class InPlace(nn.Module):
    def forward(self, x):
        x.add_(1)
        return x * 2


def test_a_model_that_changes_its_input_in_place_verifies(tmp_path):
    foldpass.optimize(InPlace().eval(), torch.randn(1, 4)).save_onnx(tmp_path / "o.onnx", compare_direct=False)
    session = ort.InferenceSession(str(tmp_path / "o.onnx"), providers=["CPUExecutionProvider"])
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], (x + 1) * 2)


class ZeroSpecial(nn.Module):
    def forward(self, x):
        return torch.where(x == 0, torch.full_like(x, 5.0), x)


def test_structured_inputs_catch_what_random_ones_miss():
    cases = verification_inputs((torch.randn(1, 4),), None)
    assert any(bool((c[0] == 0).all()) for c in cases) and any(bool((c[0] == 1).all()) for c in cases)
    assert max(float(c[0].abs().max()) for c in cases) > 50
    identity = to_onnx(nn.Identity().eval(), (torch.randn(1, 4),))
    with pytest.raises(VerificationError):
        verify(identity, ZeroSpecial().eval(), cases)


# ----------------------------------------------------------------------------- 4. exit codes


def small_onnx(_cache=[]) -> bytes:
    if not _cache:
        _cache.append(to_onnx(nn.Linear(4, 2).eval(), (torch.randn(1, 4),)).SerializeToString())
    return _cache[0]


def _npy(tmp_path, name, array):
    path = tmp_path / name
    with open(path, "wb") as f:
        np.save(f, array)
    return str(path)


BAD_OPTIONS = [
    (["--rtol", "-1"], "--rtol"), (["--atol", "nan"], "--atol"), (["--set-t", "nan"], "--set-t"),
    (["--set-t", "inf"], "--set-t"), (["--set-t", "2"], "--set-t"), (["--max-fold-bytes", "-1"], "--max-fold-bytes"),
    (["--opset", "99"], "--opset 99"), (["--inputs", "{npz}"], ".npy"), (["--inputs", "{shape}"], "does not fit"),
    (["--inputs", "{ints}"], "floating point"), (["--weights", "{npz}"], "already holds its weights"),
    (["--max-model-bytes", "0"], "--max-model-bytes"),
]


@pytest.mark.parametrize("flags, message", BAD_OPTIONS)
def test_bad_optimize_options_exit_2_before_any_work(tmp_path, pt2, capsys, flags, message):
    names = {"npz": str(tmp_path / "x.npz"), "shape": _npy(tmp_path, "s.npy", np.zeros((2, 1, 5, 5), np.float32)),
             "ints": _npy(tmp_path, "i.npy", np.zeros((2, 1, 8, 8), np.int64))}
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(pt2), "-o", str(out), *[f.format(**names) for f in flags]]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["bench", "{onnx}", "--batch", "0"], "--batch"), (["bench", "{onnx}", "--batch", "-1"], "--batch"),
    (["bench", "{onnx}", "--rounds", "0"], "--rounds"), (["bench", "{txt}"], "not an ONNX model"),
    (["bench", "{onnx}", "--json", "{tmp}/nodir/b.json"], "does not exist"),
    (["train", "models:CNN3", "-o", "{tmp}/t.pt2", "--batch-size", "0"], "--batch-size"),
    (["train", "models:CNN3", "-o", "{tmp}/t.pt2", "--limit", "0"], "--limit"),
    (["train", "models:CNN3", "-o", "{tmp}/t.pt2", "--checkpoint", "{tmp}/nodir/c.pt"], "does not exist"),
    (["decompose", "{pt2}", "-o", "{tmp}/d.pt2", "--finetune-epochs", "-1"], "--finetune-epochs"),
    (["optimize", "{pt2}", "-o", b"{tmp}/\xff.onnx"], "not valid UTF-8"),
])
def test_bad_arguments_of_every_command_exit_2(tmp_path, pt2, capsys, argv, message):
    onnx_path, txt = tmp_path / "m.onnx", tmp_path / "m.txt"
    onnx_path.write_bytes(small_onnx())
    txt.write_text("hello")
    names = {"onnx": str(onnx_path), "txt": str(txt), "tmp": str(tmp_path), "pt2": str(pt2)}

    def fill(arg):
        if isinstance(arg, bytes):
            return os.fsdecode(arg.replace(b"{tmp}", os.fsencode(tmp_path)))
        return arg.format(**names)

    before = sorted(os.listdir(tmp_path))
    assert main([fill(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:121] . "
                                                                 "DefaultCPUAllocator: can't allocate memory")])
def test_out_of_memory_is_one_line_exit_2(tmp_path, pt2, capsys, monkeypatch, error):
    def oom(*a, **k):
        raise error

    monkeypatch.setattr(foldpass, "load_source", oom)
    assert main(["optimize", str(pt2), "-o", str(tmp_path / "o.onnx")]) == 2
    err = capsys.readouterr().err
    assert "out of memory" in err and err.count("\n") == 1


def test_ctrl_c_inside_an_import_exits_130(tmp_path, capsys, monkeypatch):
    import foldpass.cli as cli

    def interrupted_import(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt as exc:
            raise ImportError("a library wrapped the interrupt") from exc
        return 0

    monkeypatch.setattr(cli, "cmd_demo", interrupted_import)
    assert main(["demo"]) == 130
    assert "interrupted" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 5. valid inputs


def test_torch_onnx_upsample_imports(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Upsample(scale_factor=2, mode="nearest")).eval()
    src = tmp_path / "up.onnx"
    onnx.save(to_onnx(model, (torch.randn(1, 1, 6, 6),)), src)
    assert any(n.op_type == "Resize" for n in onnx.load(src).graph.node)
    assert main(["optimize", str(src), "-o", str(tmp_path / "o.onnx")]) == 0


def test_a_long_constant_chain_does_not_recurse():
    """1,100 constant ops in a row: past the recursion limit of the old recursive evaluation."""
    from foldpass.passes.constant_propagation import constant_propagation

    root = nn.Module()
    root.w = nn.Parameter(torch.ones(4))
    graph = torch.fx.Graph()
    x, c = graph.placeholder("x"), graph.get_attr("w")
    for _ in range(1100):
        c = graph.call_function(torch.ops.aten.mul.Tensor, (c, 1.0001))
    graph.output(graph.call_function(torch.ops.aten.mul.Tensor, (x, c)))
    gm = torch.fx.GraphModule(root, graph)
    result = constant_propagation(gm)
    assert result.modified and len([n for n in result.module.graph.nodes if n.op == "call_function"]) == 1
    x = torch.randn(2, 4)
    assert torch.allclose(result.module(x), x * 1.0001 ** 1100, rtol=1e-4)


def test_a_zero_size_output(tmp_path, capsys):
    (tmp_path / "emptymodel.py").write_text("import torch\nclass E(torch.nn.Module):\n    def forward(self, x):\n"
                                            "        return x[:, :0] * 2\ndef build():\n    return E()\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert main(["optimize", "emptymodel:build", "-o", str(tmp_path / "o.onnx"), "--input-shape", "1,4"]) == 0, \
            capsys.readouterr().err
    finally:
        sys.path.remove(str(tmp_path))


def test_old_opset_batchnorm_and_clip(tmp_path):
    c = 2
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], spatial=1, epsilon=1e-5),
             helper.make_node("Clip", ["y"], ["z"], min=0.0, max=6.0)]
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in
             (("s", rng.random(c) + 0.5), ("b", rng.standard_normal(c)), ("m", rng.standard_normal(c)),
              ("v", rng.random(c) + 0.5))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", c, 4, 4])],
                              [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", c, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, tmp_path / "old.onnx")
    assert main(["optimize", str(tmp_path / "old.onnx"), "-o", str(tmp_path / "o.onnx")]) == 0


def test_an_attribute_an_op_does_not_take_makes_the_node_pass_through():
    from foldpass.onnx_import import _takes

    assert not _takes("BatchNormalization", {"consumed_inputs": [0], "epsilon": 1e-5})  # opset 1's form
    assert _takes("BatchNormalization", {"spatial": 1, "epsilon": 1e-5})  # opset 7's form is imported


def test_max_model_bytes_is_checked_before_loading(tmp_path, capsys):
    onnx.save(to_onnx(nn.Linear(64, 64).eval(), (torch.randn(1, 64),)), tmp_path / "m.onnx")
    assert main(["optimize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--max-model-bytes", "1000"]) == 2
    assert "--max-model-bytes" in capsys.readouterr().err  # the library's max_model_bytes, shown as the flag


class LongZeroedChain(nn.Module):
    """1,100 negations of the input in a branch scaled by t = 0: past Python's recursion limit."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.t = 0.0

    def forward(self, x):
        y = x
        for _ in range(1100):
            y = -y
        return (1 - self.t) * self.conv(x) + self.t * y


def test_a_long_zeroed_chain_is_removed_without_recursion():
    from foldpass.passes.zero_skip_elimination import zero_skip_elimination

    gm = foldpass.trace(LongZeroedChain().eval(), (torch.randn(1, 2, 8, 8),))
    result = zero_skip_elimination(gm)
    ops = foldpass.graph.count_ops(result.module)
    assert result.modified and "neg" not in ops, ops


def test_a_non_utf8_onnx_name_works(tmp_path):
    from foldpass.export import to_onnx

    name = os.path.join(os.fsencode(tmp_path), b"m\xff.onnx")
    onnx.save(to_onnx(nn.Conv2d(1, 2, 3).eval(), (torch.randn(1, 1, 8, 8),)), name)
    assert main(["optimize", os.fsdecode(name), "-o", str(tmp_path / "out.onnx")]) == 0
    assert (tmp_path / "out.onnx").exists()


def test_stdout_closed_before_any_output_exits_141_with_the_file_written(tmp_path):
    """`foldpass optimize ... | head -c0`: rich used to exit 1 on the broken pipe."""
    out = tmp_path / "o.onnx"
    proc = subprocess.Popen([sys.executable, "-m", "foldpass", "optimize", "models:CNN3", "--input-shape", "1,1,28,28",
                             "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()
    assert proc.wait(timeout=300) == 141, proc.stderr.read()
    assert out.exists() and proc.stderr.read() == b""
