"""Loading a `.pt2` archive without running code from it.

`torch.export.load` is not safe on an untrusted file (its own docstring says so). Reading
torch/export/pt2_archive/_package.py and torch/_export/serde/serialize.py (torch 2.14), these are
the places where the archive's bytes can run code:

    archive entry / field                                  what torch does with it
    data/weights/* with "use_pickle": true                 torch.load(weights_only=False)
    data/constants/* (pickled, custom_obj_, opaque_obj_)   torch.load(weights_only=False), pickle.loads
    data/sample_inputs/<model>.pt                          torch.load: weights_only=True, then False on failure
    data/weights/<model>.pt, data/constants/<model>.pt     the older layout: the same fallback to weights_only=False
    a zip without archive_format (the 2.7-era layout)      the same, through serialize.deserialize
    data/aotinductor/*                                     a compiled shared library, dlopen'ed
    models/<model>.json: every "expr_str"                  sympy.sympify: Python eval of the string
    models/<model>.json: "guards_code"                     exec'd when .module() is called
    models/<model>.json: a node's "target"                 getattr chain from `torch` / `math` / `_operator`
                                                           (torch.ops.load_library, torch.ops.import_module...)

`read_pt2(path)` therefore never hands torch the user's file. It reads the zip itself, checks each
entry against that table, and writes a new archive in memory holding only what it checked:
- raw tensor records (no pickle anywhere), listed in weight / constant configs with use_pickle false;
- the program JSON, where every expr_str must parse in a closed grammar (sympy's srepr of
  integer shape expressions: Symbol('s0', ...), Integer(3), Add/Mul/FloorDiv/Max/... calls),
  every node target must be a `torch.ops.{aten,prims}` overload or an `_operator` / `math` /
  `torch.sym_*` function, and there are no custom objects;
- guards_code emptied and sample inputs dropped (foldpass strips the input guards anyway and makes
  its own example inputs); extra/ files dropped.
Anything else is refused with the entry's name. `trust=True` skips all of this.
"""

from __future__ import annotations

import ast
import io
import json
import math
import operator
import re
import zipfile

from .errors import InputError

MAX_EXPR_CHARS = 20_000
MAX_JSON_DEPTH = 200

_ARCHIVE_META = {"archive_format", "archive_version"}  # PyTorchFileWriter writes byteorder and .data/* itself

# sympy's srepr of an integer shape expression, and torch's own sympy functions (serialize.py's
# `sympy_functions`). Calls of these names, with int / float / str / bool literals, nothing else.
_SYMPY_CALLS = frozenset({
    "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Mod", "Eq", "Ne", "Lt",
    "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan",
    "And", "Or", "Not", "Piecewise", "ExprCondPair", "floor", "ceiling",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
})
_IGNORED = {"models/model.json", "data/sample_inputs/model.pt", "byteorder", ".data/version",
            ".data/serialization_id"}  # rewritten, dropped, or written anew by the archive writer
_SYMPY_NAMES = frozenset({"true", "false", "oo", "zoo", "nan", "S"})
_SYMBOL_KEYWORDS = frozenset({"positive", "integer", "real", "nonnegative", "negative", "finite", "precision"})
_SYMBOL_NAME = re.compile(r"[a-z]{1,3}\d{1,9}")
_MAX_INT = 2**63
_MAX_POW = 64
_OP = re.compile(r"torch\.ops\.(aten|prims)\.[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
_SYM_FUNCTIONS = frozenset({"sym_max", "sym_min", "sym_float", "sym_int", "sym_not", "sym_ite", "sym_sqrt",
                            "sym_sum", "_sym_sqrt"})


def _refuse(path: str, why: str) -> InputError:
    return InputError(f"{path}: refused: {why}; foldpass loads a .pt2 only when nothing in it can run code "
                      "(trust=True if you wrote this file yourself)")


def check_expr(expr: str) -> str | None:
    """None if `expr` is a shape expression in the closed grammar, else why not."""
    if len(expr) > MAX_EXPR_CHARS:
        return f"an expression of {len(expr)} characters"
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return f"an expression that is not a sympy expression: {expr[:60]!r}"
    stack = [tree.body]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _SYMPY_CALLS:
                return f"a call outside the shape grammar: {ast.unparse(node.func)[:60]!r}"
            for kw in node.keywords:
                if kw.arg not in _SYMBOL_KEYWORDS or not isinstance(kw.value, ast.Constant):
                    return f"a keyword outside the shape grammar: {kw.arg!r}"
            if node.func.id == "Symbol":
                if not node.args or not isinstance(node.args[0], ast.Constant) \
                        or not _SYMBOL_NAME.fullmatch(str(node.args[0].value)):
                    return "a symbol name outside the shape grammar"
            if node.func.id in ("Pow", "PowByNatural", "FloatPow") and len(node.args) == 2:
                exp = node.args[1]
                if isinstance(exp, ast.Call) and exp.args:
                    exp = exp.args[0]
                if isinstance(exp, ast.UnaryOp):
                    exp = exp.operand
                if not isinstance(exp, ast.Constant) or not isinstance(exp.value, int) or exp.value > _MAX_POW:
                    return "a power outside the shape grammar"
            stack.extend(node.args)
        elif isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, int) and abs(value) < _MAX_INT:
                continue
            if isinstance(value, float) and math.isfinite(value):
                continue
            if isinstance(value, str) and (_SYMBOL_NAME.fullmatch(value) or re.fullmatch(r"-?[0-9.e+-]{1,40}", value)):
                continue
            return f"a literal outside the shape grammar: {str(value)[:40]!r}"
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            stack.append(node.operand)
        elif isinstance(node, ast.Name):
            if node.id not in _SYMPY_NAMES:
                return f"a name outside the shape grammar: {node.id!r}"
        else:
            return f"a {type(node).__name__} in a shape expression"
    return None


def check_target(target: str) -> str | None:
    """None if a serialized node target names a plain operator, else why not."""
    if _OP.fullmatch(target):
        return None
    module, _, name = target.partition(".")
    if module == "_operator" and name.isidentifier() and callable(getattr(operator, name, None)):
        return None
    if module == "math" and name.isidentifier() and callable(getattr(math, name, None)):
        return None
    if module == "torch" and name in _SYM_FUNCTIONS:
        return None
    return f"a node calls {target[:80]!r}, which is not an ATen operator"


def check_program(program) -> str | None:
    """Walks the program JSON (iteratively); None if it is safe to deserialize, else why not."""
    stack = [(program, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return "the program is nested too deeply"
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "expr_str":
                    why = check_expr(item) if isinstance(item, str) else "an expr_str that is not a string"
                    if why:
                        return why
                elif key in ("as_custom_obj", "custom_obj", "as_custom_objs") and item:
                    return "a custom (pickled) object in the program"
                elif key == "target" and "inputs" in value and "outputs" in value:
                    why = check_target(item) if isinstance(item, str) else "a node target that is not a string"
                    if why:
                        return why
                else:
                    stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
    return None


def _common_root(names: list[str]) -> str:
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        return ""
    return roots.pop() + "/"


def _check_payloads(path: str, config_bytes: bytes, entries: dict[str, bytes], directory: str, prefix: str) -> set[str]:
    """The raw tensor records a weights / constants config lists; refuses pickled ones."""
    config = _json(path, config_bytes, directory)
    records = set()
    table = config.get("config") if isinstance(config, dict) else None
    if not isinstance(table, dict):
        raise _refuse(path, f"{directory} config is malformed")
    for fqn, meta in table.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise _refuse(path, f"'{fqn}' in {directory} is stored as a pickle")
        name = meta.get("path_name")
        if not isinstance(name, str) or not name.startswith(prefix) or "/" in name:
            raise _refuse(path, f"'{fqn}' in {directory} is not a raw tensor record ({str(name)[:40]!r})")
        if directory + name not in entries:
            raise _refuse(path, f"'{fqn}' names a missing record {directory + name}")
        records.add(directory + name)
    return records


def _json(path: str, data: bytes, what: str):
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise _refuse(path, f"{what} is not valid JSON ({type(exc).__name__})") from None


def sanitized_archive(path: str) -> io.BytesIO:
    """A new .pt2 archive in memory with only the checked records of `path` (see the module docstring)."""
    from torch.export.pt2_archive._package import PT2ArchiveWriter

    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            entries = {n: zf.read(n) for n in names}
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .pt2 archive ({type(exc).__name__})") from None
    root = _common_root(names)
    entries = {n[len(root):]: data for n, data in entries.items()}
    if entries.get("archive_format", b"").strip() != b"pt2":
        if "serialized_exported_program.json" in entries or any(n.endswith("/version") or n == "version"
                                                                 for n in entries):
            raise _refuse(path, "the pre-2.8 .pt2 layout stores its weights as pickles")
        raise InputError(f"{path}: not a torch.export archive (.pt2 files are zip archives written by "
                         "torch.export.save)")
    models = [n for n in entries if n.startswith("models/") and n.endswith(".json")]
    if models != ["models/model.json"]:
        raise _refuse(path, f"expected one program, models/model.json; found {models or 'none'}")
    keep = set(_ARCHIVE_META) & set(entries)
    for config, directory, prefix in (("data/weights/model_weights_config.json", "data/weights/", "weight_"),
                                      ("data/constants/model_constants_config.json", "data/constants/", "tensor_")):
        if config not in entries:
            raise _refuse(path, f"{config} is missing (an older layout whose tensors are pickles)")
        keep |= {config} | _check_payloads(path, entries[config], entries, directory, prefix)
    program = _json(path, entries["models/model.json"], "models/model.json")
    if not isinstance(program, dict):
        raise _refuse(path, "models/model.json is not a program")
    why = check_program(program)
    if why:
        raise _refuse(path, why)
    program["guards_code"] = []
    for name in entries:
        if name in keep or name in _IGNORED or name.startswith("extra/"):
            continue
        raise _refuse(path, f"it holds {name}, which foldpass does not load (pickles, compiled code or an "
                            "unknown kind of record)")
    buffer = io.BytesIO()
    with PT2ArchiveWriter(buffer) as writer:
        for name in sorted(keep):
            writer.write_bytes(name, entries[name])
        writer.write_string("models/model.json", json.dumps(program))
        writer.write_bytes("data/sample_inputs/model.pt", b"")
    buffer.seek(0)
    return buffer
