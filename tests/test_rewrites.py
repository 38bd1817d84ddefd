"""The graph rewrites of lsg_export/onnx/rewrites: where they apply, where they must not, same results,
and what ONNX Runtime makes of the rewritten graph when it loads it (the reason they exist)."""
import math

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lsg_export.onnx.rewrites import apply_rewrites

D, F = 16, 32
RNG = np.random.default_rng(0)


def weight(name, *shape, value=None):
    array = np.asarray(value, np.float32) if value is not None else RNG.standard_normal(shape).astype(np.float32)
    return numpy_helper.from_array(array, name)


def model(nodes, initializers, outputs=("y",)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", D])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def gelu_model(half_first=True):
    """MatMul + bias, then exact GELU in torch.export's spelling: x * (0.5 * (1 + erf(x / sqrt 2)))."""
    half = ["half", "a"] if half_first else ["a", "half"]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["lin"]),
             helper.make_node("Div", ["lin", "root2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", half, ["ha"]),
             helper.make_node("Mul", ["lin", "ha"], ["y"])]
    inits = [weight("w", D, F), weight("b", F), weight("root2", value=math.sqrt(2.0)), weight("one", value=1.0),
             weight("half", value=0.5)]
    return model(nodes, inits)


def residual_model(extra_use=False):
    """MatMul + bias + residual, then LayerNormalization (extra_use: the biased sum is also an output)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["lin"]),
             helper.make_node("Add", ["lin", "x"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    inits = [weight("w", D, D), weight("b", D), weight("gamma", D), weight("beta", D)]
    return model(nodes, inits, ("y", "lin") if extra_use else ("y",))


def rewrite(proto, device="cpu"):
    graph = ir.from_proto(proto)
    counts = apply_rewrites(graph, device)
    return ir.to_proto(graph), counts


def run(proto, x, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL, saved=None):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    if saved:
        options.optimized_model_filepath = str(saved)
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def ops(proto):
    return [node.op_type for node in proto.graph.node]


X = RNG.standard_normal((2, 7, D)).astype(np.float32)


@pytest.mark.parametrize("half_first", [True, False])
def test_gelu_order_same_bits_and_fused_by_onnxruntime(half_first, tmp_path):
    original = gelu_model(half_first)
    rewritten, counts = rewrite(original)
    assert counts["gelu_order"] == 1
    np.testing.assert_array_equal(run(rewritten, X)[0], run(original, X)[0])  # bit for bit
    # what ONNX Runtime makes of each when it loads them: the torch spelling stays 5 element-wise ops
    for proto, fused in ((original, False), (rewritten, True)):
        run(proto, X, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, tmp_path / "opt.onnx")
        loaded = ops(onnx.load(str(tmp_path / "opt.onnx")))
        assert ("BiasGelu" in loaded and "Erf" not in loaded) == fused, loaded


def test_gelu_order_needs_the_exact_constants():
    proto = gelu_model()
    for init in proto.graph.initializer:
        if init.name == "half":
            init.CopyFrom(weight("half", value=0.25))
    _, counts = rewrite(proto)
    assert counts["gelu_order"] == 0


def test_residual_sum_same_bits_and_no_skip_layer_norm(tmp_path):
    original = residual_model()
    rewritten, counts = rewrite(original)
    assert counts["residual_sum"] == 1 and "Sum" in ops(rewritten) and ops(rewritten).count("Add") == 0
    np.testing.assert_array_equal(run(rewritten, X)[0], run(original, X)[0])
    for proto, skip in ((original, True), (rewritten, False)):
        run(proto, X, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, tmp_path / "opt.onnx")
        assert ("SkipLayerNormalization" in ops(onnx.load(str(tmp_path / "opt.onnx")))) == skip


def test_residual_sum_only_on_cpu_and_only_when_safe():
    assert rewrite(residual_model(), "cuda")[1] == {"gelu_order": 0}  # CUDA keeps SkipLayerNormalization
    # the biased sum used elsewhere: the Adds must stay
    rewritten, counts = rewrite(residual_model(extra_use=True))
    assert counts["residual_sum"] == 0 and ops(rewritten).count("Add") == 2


def ffn_model():
    """The feed-forward block as the rewrites before row_tiles leave it: MatMul + bias, GELU ending on * 0.5,
    MatMul, Sum(y, bias, residual), LayerNormalization."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["lin"]),
             helper.make_node("Div", ["lin", "root2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["lin", "a"], ["g0"]),
             helper.make_node("Mul", ["g0", "half"], ["g"]), helper.make_node("MatMul", ["g", "w2"], ["m2"]),
             helper.make_node("Sum", ["m2", "b2", "x"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    inits = [weight("w1", D, F), weight("b1", F), weight("root2", value=math.sqrt(2.0)), weight("one", value=1.0),
             weight("half", value=0.5), weight("w2", F, D), weight("b2", D), weight("gamma", D), weight("beta", D)]
    return model(nodes, inits)


def test_row_tiles_same_bits_at_every_row_count(monkeypatch):
    """Tiles of MIN_ROWS rows (4 here): row counts below, at and above the tile, past TILES x MIN_ROWS, and
    rows that leave every tile but the first empty; ONNX Runtime with its fusions gives the same bits."""
    from lsg_export.onnx.rewrites import row_tiles
    monkeypatch.setattr(row_tiles, "MIN_ROWS", 4)
    original = ffn_model()
    rewritten, counts = rewrite(original)
    assert counts["row_tiles"] == 1
    kinds = ops(rewritten)
    assert kinds.count("MatMul") == 2 * row_tiles.TILES and kinds.count("Slice") == row_tiles.TILES
    assert kinds.count("LayerNormalization") == row_tiles.TILES and kinds.count("Concat") == 2
    for rows in (1, 3, 4, 5, 63, 64, 65, 130):
        x = RNG.standard_normal((2, rows, D)).astype(np.float32)
        level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        np.testing.assert_array_equal(run(rewritten, x, level)[0], run(original, x, level)[0])


def test_row_tiles_only_on_cpu_and_only_the_exact_block():
    assert "row_tiles" not in rewrite(ffn_model(), "cuda")[1]
    proto = ffn_model()
    for init in proto.graph.initializer:
        if init.name == "half":
            init.CopyFrom(weight("half", value=0.25))  # not GELU
    assert rewrite(proto)[1]["row_tiles"] == 0
