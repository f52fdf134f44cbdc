"""ONNX ops foldpass has no rewrite for pass through (issue 27): imported as one opaque node each,
computed by onnxruntime where a value is needed, written back as they were; the folds around them
still apply, and the batch stays dynamic."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from foldpass.cli import main
from foldpass.export import onnx_op_counts
from test_onnx_input import HEADER, parsed, run

RNG = np.random.default_rng(0)
BN = {"s": RNG.random(4) + 0.5, "bb": RNG.standard_normal(4), "m": RNG.standard_normal(4), "v": RNG.random(4) + 0.5}
W = {"w": RNG.standard_normal((4, 4, 3, 3)), "w1": RNG.standard_normal((4, 4, 1, 1)), "two": 2.0}


def _body(middle: str) -> str:
    """conv -> batch norm -> MIDDLE (reads b, writes n) -> conv -> x2: both ends fold around the middle."""
    return f"""g (float[N, 4, 6, 6] x) => (float[N, 4, 6, 6] y) {{
        a = Conv <pads = [1, 1, 1, 1]> (x, w)
        b = BatchNormalization (a, s, bb, m, v)
        {middle}
        p = Conv (n, w1)
        y = Mul (p, two)
    }}"""


def _same(model_in: onnx.ModelProto, model_out: onnx.ModelProto, op_type: str) -> None:
    """The passed-through node is written back with the same op, domain and attributes."""
    (a,) = [n for n in model_in.graph.node if n.op_type == op_type]
    (b,) = [n for n in model_out.graph.node if n.op_type == op_type]
    assert (a.domain, len(a.input), len(a.output)) == (b.domain, len(b.input), len(b.output))
    assert [x.SerializeToString() for x in a.attribute] == [x.SerializeToString() for x in b.attribute] or \
        op_type == "If"  # If's branches read the outer value by its new name


def _outputs_agree(tmp_path, model_in, model_out, batch: int) -> None:
    x = RNG.standard_normal((batch, 4, 6, 6)).astype(np.float32)
    want, got = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
                 for m in (model_in, model_out))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


CASES = {
    "LayerNormalization": (HEADER, """t = Transpose <perm = [0, 2, 3, 1]> (b)
        l = LayerNormalization <axis = -1, epsilon = 0.001> (t, g, be)
        n = Transpose <perm = [0, 3, 1, 2]> (l)""", {"g": RNG.random(4) + 0.5, "be": RNG.standard_normal(4)}),
    "Gelu": ('<ir_version: 8, opset_import: ["" : 18, "com.microsoft" : 1]>\n', "n = com.microsoft.Gelu (b)", {}),
    # a table op with a negative step (torch indexing has none): passes through
    "Slice": (HEADER, """st = Constant <value = int64[1] st {-1}> ()
        en = Constant <value = int64[1] en {-9223372036854775807}> ()
        ax = Constant <value = int64[1] ax {1}> ()
        sp = Constant <value = int64[1] sp {-1}> ()
        n = Slice (b, st, en, ax, sp)""", {}),
    # a table op whose bound is known only at run time (a value of the data, not of the file): passes through
    "Clip": (HEADER, """lo = Constant <value = float lo {0.0}> ()
        hi = ReduceMax <keepdims = 0> (b)
        h = Div (hi, two)
        n = Clip (b, lo, h)""", {}),
    # a count only the data gives (NonZero's size: a data-dependent SymInt) used as a value
    "NonZero": (HEADER, """nz = NonZero (b)
        sh = Shape (nz)
        i1 = Constant <value = int64 i1 {1}> ()
        k = Gather <axis = 0> (sh, i1)
        kf = Cast <to = 1> (k)
        n = Div (b, kf)""", {}),
    "If": (HEADER, """r = ReduceSum <keepdims = 0> (b)
        c = Greater (r, zero)
        n = If (c) <then_branch = g1 () => (float[N, 4, 6, 6] o1) { o1 = Relu (b) },
                    else_branch = g2 () => (float[N, 4, 6, 6] o2) { o2 = Neg (b) }>""", {"zero": 0.0}),
}


@pytest.mark.parametrize("op_type", sorted(CASES))
def test_an_op_outside_the_table_passes_through_and_the_folds_around_it_apply(tmp_path, op_type, capsys):
    header, middle, weights = CASES[op_type]
    model = parsed(header + _body(middle), **W, **BN, **weights)
    code, out = run(tmp_path, model)
    assert code == 0, capsys.readouterr().err
    assert "passed through as they are" in capsys.readouterr().out.replace("\n", " ")
    counts = onnx_op_counts(out)
    assert counts["Conv"] == 2 and "BatchNormalization" not in counts and "Mul" not in counts  # folded around it
    _same(model, out, op_type)
    assert out.graph.output[0].type.tensor_type.shape.dim[0].dim_param  # the batch stays dynamic
    _outputs_agree(tmp_path, model, out, batch=3)
    again = tmp_path / "again.onnx"
    assert main(["optimize", str(tmp_path / "out.onnx"), "-o", str(again)]) == 0  # a second run changes nothing
    assert onnx_op_counts(onnx.load(again)) == counts


def test_a_shape_chain_keeps_the_batch_dynamic_across_an_opaque_node(tmp_path):
    model = parsed(HEADER + """g (float[N, 4, 6, 6] x) => (float[N, 144] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, w)
        e = Einsum <equation = "nchw->nhwc"> (a)
        zero = Constant <value = int64 zero {0}> ()
        axes = Constant <value = int64[1] axes {0}> ()
        rest = Constant <value = int64[1] rest {-1}> ()
        sh = Shape (e)
        n = Gather <axis = 0> (sh, zero)
        n1 = Unsqueeze (n, axes)
        k = Concat <axis = 0> (n1, rest)
        y = Reshape (e, k)
    }""", w=RNG.standard_normal((4, 4, 3, 3)))
    code, out = run(tmp_path, model)
    assert code == 0 and onnx_op_counts(out)["Einsum"] == 1
    for batch in (1, 5):
        x = RNG.standard_normal((batch, 4, 6, 6)).astype(np.float32)
        want, got = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x})[0] for m in (model, out))
        assert got.shape == (batch, 144)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_an_old_opset_node_that_passes_through_is_written_in_the_output_opset(tmp_path):
    model = onnx.parser.parse_model("""<ir_version: 7, opset_import: ["" : 11]>
    g (float[N, 4, 6, 6] x) => (float[N, 2, 6, 6] y) {
        a, b = Split <axis = 1, split = [2, 2]> (x)
        y = Add (a, b)
    }""")
    code, out = run(tmp_path, model)
    assert code == 0
    (split,) = [n for n in out.graph.node if n.op_type == "Split"]
    assert len(split.input) == 2 and not split.attribute[1:]  # opset 13's form: the sizes as an input


def test_a_model_onnxruntime_cannot_run_is_one_line_exit_2(tmp_path, capsys):
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 18, "my.domain" : 1]>
    g (float[N, 4] x) => (float[N, 4] y) { y = my.domain.Foo (x) }""")
    code, out = run(tmp_path, model)
    err = capsys.readouterr().err
    assert code == 2 and out is None and "onnxruntime cannot run the input model" in err and len(err.splitlines()) == 1


def test_a_pt2_output_is_refused_when_an_onnx_node_passed_through(tmp_path, capsys):
    header, middle, weights = CASES["LayerNormalization"]
    onnx.save(parsed(header + _body(middle), **W, **BN, **weights), tmp_path / "in.onnx")
    assert main(["optimize", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "o.pt2")]) == 2
    assert "onnx LayerNormalization passed through" in capsys.readouterr().err
    assert not (tmp_path / "o.pt2").exists()


def test_a_node_the_written_opset_defines_differently_is_one_line_exit_2(tmp_path, capsys):
    model = parsed(HEADER + """g (float[N, 4] x) => (float[N, 4] y) {
        s = Size (x)
        f = Cast <to = 1> (s)
        y = Mul (x, f)
    }""")
    code, out = run(tmp_path, model, "--opset", "21")  # Size changed in opsets 19 and 21
    err = capsys.readouterr().err
    assert code == 2 and out is None and "opset 21 defines it differently" in err and len(err.splitlines()) == 1
