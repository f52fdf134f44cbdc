"""`torch.compile(model, backend="foldpass")`: foldpass's passes inside PyTorch.

torch finds the backend through the `torch_dynamo_backends` entry point in pyproject.toml (after
`pip install foldpass`; `import foldpass` is not needed). For each graph dynamo captures:

    captured graph -> foldpass's IR (the same torch.export trace as `optimize`) -> the pipeline
      -> checked against the captured graph on the example inputs (the ONNX gate's tolerances)
      -> handed to inductor (options={"inductor": False}: run as an fx GraphModule in eager)

A compile backend must never change results or crash the user's program: when the graph is not
supported (an input that is not a float tensor, a trace that fails) or the check fails, the
backend warns once, with the reason, and returns the captured graph unchanged.

Parameters: dynamo passes a module's parameters and buffers to the graph as inputs. foldpass
folds them as constants (that is the point), so a compiled model does not see later changes to
its weights: call torch._dynamo.reset() (or compile again) after changing them.

Graph breaks: each captured subgraph is folded on its own; a linear region cut by a break becomes
two regions, each folded (or kept) by itself.

Options (torch.compile(..., options={...})): pipeline ("default"), max_fold_bytes, verify (True),
inductor (True), rtol / atol.
"""

from __future__ import annotations

import collections
import warnings
from typing import Callable

import torch
import torch.fx as fx

from .defaults import DEFAULT_ATOL, DEFAULT_MAX_FOLD_BYTES, DEFAULT_RTOL

OPTIONS = {"pipeline": "default", "max_fold_bytes": DEFAULT_MAX_FOLD_BYTES, "verify": True, "inductor": True,
           "rtol": DEFAULT_RTOL, "atol": DEFAULT_ATOL}


# the Report of the last graphs the backend optimized, newest last (for a look from outside); bounded, so
# that a long-running program that compiles many graphs does not keep every report
REPORTS: collections.deque = collections.deque(maxlen=64)


class FoldpassCompileWarning(UserWarning):
    """The foldpass backend fell back to the captured graph; the message says why."""


def _is_weight(node: fx.Node, example) -> bool:
    """A module's parameter or buffer that dynamo lifted into an input (named l_self_..._parameters_...)."""
    return isinstance(example, torch.nn.Parameter) or ("_parameters_" in node.name or "_buffers_" in node.name)


def _bake(gm: fx.GraphModule, examples: list) -> tuple[fx.GraphModule, list[int]]:
    """The captured graph with its parameter inputs turned into constants, and the positions of the
    inputs that remain (the data)."""
    gm = fx.GraphModule(gm, gm.graph)  # a copy of the module object; the graph is rewritten below
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    keep: list[int] = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i, (node, example) in enumerate(zip(placeholders, examples)):
        if _is_weight(node, example):
            name = f"_foldpass_input_{i}"
            gm.register_buffer(name, example.detach())
            env[node] = graph.get_attr(name)
        else:
            env[node] = graph.placeholder(node.name)
            keep.append(i)
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            env[node] = graph.node_copy(node, lambda n: env[n])
    return fx.GraphModule(gm, graph), keep


def _fallback(gm: fx.GraphModule, why: str) -> Callable:
    warnings.warn(f"foldpass backend: running the captured graph unoptimized: {why}", FoldpassCompileWarning,
                  stacklevel=2)
    return gm.forward


def foldpass_backend(gm: fx.GraphModule, example_inputs: list, options: dict | None = None, **_) -> Callable:
    """The torch.compile backend (see the module docstring)."""
    from .errors import FoldpassError, first_line
    from .optimizer import optimize
    from .verification import verification_inputs, verify_module

    opts = {**OPTIONS, **(options or {})}
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        return _fallback(gm, f"unknown option(s) {unknown}; known: {sorted(OPTIONS)}")
    if any(isinstance(x, torch.SymInt) or not isinstance(x, torch.Tensor) for x in example_inputs):
        return _fallback(gm, "the graph takes non-tensor inputs (dynamic shapes); compile with dynamic=False")
    baked, data = _bake(gm, list(example_inputs))
    inputs = tuple(example_inputs[i] for i in data)
    if not inputs or not all(x.is_floating_point() and x.dim() > 0 for x in inputs):
        return _fallback(gm, "foldpass optimizes graphs whose inputs are floating-point tensors with a batch")
    try:
        with torch.no_grad():
            result = optimize(baked, inputs, pipeline=opts["pipeline"], max_fold_bytes=opts["max_fold_bytes"],
                              batch="static")
            optimized = result.module
            if opts["verify"]:
                cases = [inputs] + verification_inputs(inputs, inputs[0].shape[0], structured=True)
                verify_module(optimized, baked, cases, rtol=opts["rtol"], atol=opts["atol"])
    except FoldpassError as exc:
        return _fallback(gm, str(exc))
    except Exception as exc:  # noqa: BLE001 - a compile backend must not crash the user's program
        return _fallback(gm, f"{type(exc).__name__}: {first_line(exc)}")
    runner = optimized
    if opts["inductor"]:
        from torch._inductor.compile_fx import compile_fx

        runner = compile_fx(optimized, list(inputs))

    def run(*args):
        out = runner(*(args[i] for i in data))
        return out

    REPORTS.append(result.report)
    return run
