"""Where each produced node and weight came from, so that a person can audit the ONNX in Netron.

The passes record it on the graph as they rewrite (`record`, `label`): for a node, the pass and
what it replaced; for a weight, a name made of the modules it came from. `stamp` then writes it
into the exported ONNX:

    node:        name "layer1.0.conv1+bn1", doc_string "batchnorm_folding: layer1.0.conv1 (Conv2d) +
                 layer1.0.bn1 (BatchNorm2d) -> one convolution"
    initializer: "layer1.0.conv1+bn1.weight" instead of "_foldpass_w_12"
    model:       metadata_props foldpass.version, .pipeline, .source, .source_sha256, .max_abs_error,
                 .tolerance, .date, .report (the whole report as JSON: `foldpass info model.onnx`)
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import torch.fx as fx

NODES_KEY = "foldpass_provenance"  # gm.meta: the produced node's weight (buffer name) -> {"pass", "replaced", "name"}
CONSTANTS_KEY = "foldpass_constant_names"  # gm.meta: buffer name -> readable name
PREFIX = "foldpass."


def module_path(node: fx.Node) -> str | None:
    """The module a traced node came from ('layer1.0.conv1'), from torch.export's nn_module_stack."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else None


def module_type(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][1]).rsplit(".", 1)[-1] if stack else node.name


def joined(nodes) -> str:
    """'layer1.0.conv1+bn1': module paths joined, the common prefix said once."""
    paths = [p for p in dict.fromkeys(module_path(n) for n in nodes) if p]
    if not paths:
        return ""
    head = paths[0]
    out = [head]
    prefix = head.rsplit(".", 1)[0] + "." if "." in head else ""
    for p in paths[1:]:
        out.append(p[len(prefix):] if prefix and p.startswith(prefix) else p)
    return "+".join(out)


def span(nodes) -> str:
    """A name for a region: its modules joined, or first..last when there are more than two."""
    paths = [p for p in dict.fromkeys(module_path(n) for n in nodes) if p]
    if len(paths) <= 2:
        return joined(nodes)
    return f"{paths[0]}..{paths[-1]}"


def record(gm: fx.GraphModule, node: fx.Node, weight: fx.Node, pass_name: str, replaced: str, name: str = "") -> None:
    """Records what `node` (reading the constant `weight`) replaced. Keyed by the weight: node names
    do not survive the export (torch.onnx traces again), weight names do."""
    gm.meta.setdefault(NODES_KEY, {})[weight.target] = {"pass": pass_name, "replaced": replaced, "name": name}
    if name:
        node.meta["nn_module_stack"] = {"foldpass": (name, "foldpass")}  # so a later fold names it again


def label(gm: fx.GraphModule, constant: fx.Node, name: str) -> None:
    if name:
        gm.meta.setdefault(CONSTANTS_KEY, {})[constant.target] = name


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stamp(model, gm: fx.GraphModule, metadata: dict[str, str]):
    """Writes the recorded provenance into the ONNX model (in place; returned)."""
    produced = gm.meta.get(NODES_KEY, {})
    names = {node.name for node in model.graph.node}
    for node in model.graph.node:
        info = next((produced[i] for i in node.input if i in produced), None)
        if info:
            node.doc_string = f"{info['pass']}: {info['replaced']}"
            if info["name"] and info["name"] != node.name:  # node names must stay unique: name, name_2, ...
                new = next(n for n in (info["name"], *(f"{info['name']}_{k}" for k in range(2, len(names) + 2)))
                           if n not in names)
                names.discard(node.name)
                names.add(new)
                node.name = new
    renames = {k: v for k, v in gm.meta.get(CONSTANTS_KEY, {}).items()}
    taken = {i.name for i in model.graph.initializer} | {v.name for v in model.graph.input}
    mapping = {}
    for init in model.graph.initializer:
        new = renames.get(init.name)
        if new and new not in taken:
            mapping[init.name] = new
            taken.add(new)
    for init in model.graph.initializer:
        init.name = mapping.get(init.name, init.name)
    for node in model.graph.node:
        node.input[:] = [mapping.get(i, i) for i in node.input]
    for v in model.graph.value_info:
        v.name = mapping.get(v.name, v.name)
    del model.metadata_props[:]
    stamped = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **metadata}
    for key, value in stamped.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = PREFIX + key, str(value)
    return model


def read(model) -> dict[str, str]:
    """The foldpass metadata of an ONNX model ({} if foldpass did not write it)."""
    return {p.key.removeprefix(PREFIX): p.value for p in model.metadata_props if p.key.startswith(PREFIX)}
