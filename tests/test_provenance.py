"""Provenance a person can audit (issue 17, part 3): produced nodes and weights named for what they
came from, a doc_string per produced node, the model's metadata, and `foldpass info` reading it back."""

import json

import onnx
import torch

import foldpass
from foldpass.cli import main
from models import linear_resnet34, randomize_batchnorm, resnet18


def test_folded_nodes_and_weights_say_where_they_came_from(tmp_path):
    model = randomize_batchnorm(resnet18(width=4, t=0.0)).eval()
    foldpass.optimize(model, torch.randn(1, 1, 28, 28)).save_onnx(tmp_path / "m.onnx", compare_direct=False)
    out = onnx.load(tmp_path / "m.onnx")
    node = next(n for n in out.graph.node if n.name == "layer1.0.conv1+bn1")
    assert node.op_type == "Conv" and node.doc_string.startswith("batchnorm_folding: layer1.0.conv1 (Conv2d) + layer1.0.bn1")
    assert "layer1.0.conv1+bn1.weight" in node.input
    assert not any(i.name.startswith("_foldpass") for i in out.graph.initializer if "bn" in i.name)


def test_metadata_and_info_read_back(tmp_path, capsys):
    src, out = tmp_path / "m.pt2", tmp_path / "m.onnx"
    model = randomize_batchnorm(linear_resnet34(width=2)).eval()
    torch.export.save(torch.export.export(model, (torch.randn(2, 1, 28, 28),),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},)), src)
    assert main(["optimize", str(src), "-o", str(out)]) == 0
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta["foldpass.version"] == foldpass.__version__ and meta["foldpass.pipeline"] == "default"
    assert meta["foldpass.source"] == "m.pt2" and len(meta["foldpass.source_sha256"]) == 64
    assert float(meta["foldpass.max_abs_error"]) <= float(meta["foldpass.tolerance"])
    gemm = next(n for n in onnx.load(out).graph.node if n.op_type == "Gemm")
    assert gemm.doc_string.startswith("affine_folding: region") and "-> Gemm 784->10" in gemm.doc_string
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["report"]["after"]["ops"] == {"addmm": 1, "view": 1}
    assert shown["metadata"]["source_sha256"] == meta["foldpass.source_sha256"]
    assert main(["info", str(out)]) == 0 and "verified" in capsys.readouterr().out


def test_info_on_a_file_foldpass_did_not_write(tmp_path, capsys):
    from foldpass.export import to_onnx

    onnx.save(to_onnx(torch.nn.Linear(4, 2).eval(), (torch.randn(1, 4),)), tmp_path / "plain.onnx")
    assert main(["info", str(tmp_path / "plain.onnx")]) == 0
    assert "not written by foldpass" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "missing.onnx")]) == 2
