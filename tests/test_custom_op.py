"""ai.lsg.BlockSparseAttention and ai.lsg.LSGAttention (CPU kernel) against lsg_attention.block_attention and
lsg_attention.lsg_attend."""
import types

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from _op_cases import block_reference, half_tolerance, lsg_reference, make_lsg_case
from lsg_export.errors import LSGExportError
from lsg_export.modeling.lsg_attention import LSGAttention, block_attention

ort = pytest.importorskip("onnxruntime")
ops = pytest.importorskip("lsg_export.ops")

INPUTS = ("q", "k", "v", "key_mask", "global_k", "global_v", "sparse_k", "sparse_v", "sparse_mask")
LSG_INPUTS = ("q", "k", "v", "key_mask", "sparse_k", "sparse_v", "sparse_mask")


@pytest.fixture(scope="session")
def library():
    return ops.build_ops()


def op_model(num_inputs, block_size, sparse_block_size, sparsity_factor, elem=TensorProto.FLOAT, scale=None,
             op_type=ops.OP_TYPE, **more):
    names = list((LSG_INPUTS if op_type == ops.LSG_OP_TYPE else INPUTS)[:num_inputs])
    attributes = dict(block_size=block_size, sparse_block_size=sparse_block_size, sparsity_factor=sparsity_factor,
                      **more)
    if scale is not None:
        attributes["scale"] = scale
    node = helper.make_node(op_type, names, ["out"], domain=ops.DOMAIN, **attributes)
    inputs = [helper.make_tensor_value_info(name, elem, None) for name in names]
    graph = helper.make_graph([node], "block_sparse_attention", inputs,
                              [helper.make_tensor_value_info("out", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(ops.DOMAIN, ops.OP_VERSION)], ir_version=10)
    return model.SerializeToString()


def run_op(library, arrays, block_size, sparse_block_size, sparsity_factor, **kwargs):
    elem = TensorProto.FLOAT16 if arrays[0].dtype == np.float16 else TensorProto.FLOAT
    model = op_model(len(arrays), block_size, sparse_block_size, sparsity_factor, elem, **kwargs)
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(library))
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = LSG_INPUTS if kwargs.get("op_type") == ops.LSG_OP_TYPE else INPUTS
    return session.run(None, dict(zip(names, arrays)))[0]


def run_lsg_op(library, inputs, heads, g, bs, sbs, sf, **kwargs):
    arrays = [x.numpy() for x in inputs]
    return run_op(library, arrays, bs, sbs, sf, op_type=ops.LSG_OP_TYPE, num_heads=heads, num_global=g, **kwargs)


def make_case(seed, n, h, blocks, d, g, block_size, sparse_block_size, sparsity_factor, sparsity_type, lengths):
    generator = torch.Generator().manual_seed(seed)
    t = blocks * block_size
    q, k, v = (torch.randn(n, h, t, d, generator=generator) for _ in range(3))
    global_k, global_v = (torch.randn(n, h, g, d, generator=generator) for _ in range(2))
    minimum = torch.finfo(torch.float32).min
    key_mask = torch.zeros(n, 1, t, 1)
    for row, length in enumerate(lengths):
        key_mask[row, :, length:] = minimum
    sparse = (None, None, None)
    if sparsity_type != "none" and sparse_block_size:
        config = types.SimpleNamespace(block_size=block_size, sparse_block_size=sparse_block_size,
                                       sparsity_factor=sparsity_factor, sparsity_type=sparsity_type,
                                       num_global_tokens=g)
        sparse = LSGAttention(config).compress(q, k, v, key_mask)
    expected = block_attention(q, k, v, key_mask, global_k, global_v, *sparse, block_size, sparse_block_size,
                               sparsity_factor)
    arrays = [q, k, v, key_mask, global_k, global_v] + ([] if sparse[0] is None else list(sparse))
    return [a.contiguous().numpy() for a in arrays], expected.numpy()


SPARSITY_TYPES = ("norm", "pooling", "stride", "block_stride", "bos_pooling", "none")


@pytest.fixture(scope="module")
def gather_graph(tmp_path_factory):
    """gather_graph(d, sparse) -> an ONNX Runtime session on the gather backend's block attention alone
    (what `--attention gather` puts in the graph), exported once per head dim and sparse part."""
    from lsg_export.onnx.attention_kinds import get_attention_kind
    from lsg_export.onnx.export import export_block_attention
    sessions = {}

    def make(d, sparse):
        if (d, sparse) not in sessions:
            arrays, _ = make_case(0, 2, 3, 3, d, 2, 16, 16 if sparse else 0, 2, "pooling" if sparse else "none",
                                  [48, 30])
            path = tmp_path_factory.mktemp("gather") / "block_attention.onnx"
            export_block_attention(get_attention_kind("gather"), [torch.from_numpy(a) for a in arrays], path,
                                   16, 16 if sparse else 0, 2)
            sessions[(d, sparse)] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sessions[(d, sparse)]

    return make


@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
@pytest.mark.parametrize("d", [32, 64])
@pytest.mark.parametrize("g", [1, 7])
def test_matches_block_attention_and_gather_graph(library, gather_graph, sparsity_type, d, g):
    """The op against PyTorch (lsg_attention.block_attention) and against the gather subgraph it replaces,
    on the same inputs: 1 to 11 blocks, a padded row."""
    bs, sbs, sf = 16, 16, 2
    sparse = sparsity_type != "none"
    gather = gather_graph(d, sparse)
    for seed, (blocks, lengths) in enumerate([(1, [16, 9]), (2, [32, 20]), (6, [96, 41]), (11, [176, 3])]):
        arrays, expected = make_case(seed, 2, 3, blocks, d, g, bs, sbs if sparse else 0, sf, sparsity_type, lengths)
        out = run_op(library, arrays, bs, sbs if sparse else 0, sf)
        assert out.shape == expected.shape and out.dtype == np.float32
        assert np.abs(out - expected).max() <= 1e-5, (blocks, lengths)
        reference = gather.run(None, dict(zip(INPUTS, arrays)))[0]
        assert np.abs(out - reference).max() <= 1e-5, (blocks, lengths)


# head dims that are no multiple of the kernel's 16-channel tiles, block sizes that are no
# multiple of its 6-row or 16-query tiles
@pytest.mark.parametrize("bs,sbs,sf,sparsity_type,d", [(8, 4, 4, "pooling", 32), (16, 48, 2, "stride", 24),
                                                       (32, 8, 8, "block_stride", 40), (4, 4, 1, "norm", 32),
                                                       (16, 24, 4, "bos_pooling", 32), (20, 10, 2, "norm", 8)])
def test_other_geometries(library, bs, sbs, sf, sparsity_type, d):
    arrays, expected = make_case(3, 1, 4, 7, d, 2, bs, sbs, sf, sparsity_type, [7 * bs - 5])
    out = run_op(library, arrays, bs, sbs, sf)
    assert np.abs(out - expected).max() <= 1e-5


def test_sparse_block_size_zero_ignores_sparse_inputs(library):
    arrays, expected = make_case(4, 1, 2, 4, 32, 1, 16, 0, 2, "none", [64])
    out = run_op(library, arrays, 16, 0, 2)
    assert np.abs(out - expected).max() <= 1e-5
    # empty sparse tensors mean "no compressed part" as well
    empty = [np.zeros((1, 2, 0, 32), np.float32)] * 2 + [np.zeros((1, 1, 0, 1), np.float32)]
    out = run_op(library, arrays + empty, 16, 16, 2)
    assert np.abs(out - expected).max() <= 1e-5


def test_scale_attribute(library):
    arrays, _ = make_case(5, 1, 2, 3, 32, 1, 16, 16, 2, "pooling", [48])
    reference = run_op(library, arrays, 16, 16, 2)
    scaled = [arrays[0] * 2.0] + arrays[1:]
    out = run_op(library, scaled, 16, 16, 2, scale=0.5 / np.sqrt(32))
    assert np.abs(out - reference).max() <= 1e-5


def test_float16(library):
    arrays, expected = make_case(6, 2, 3, 5, 32, 7, 16, 16, 2, "pooling", [80, 37])
    # masks: float16's lowest for masked keys (finfo(float32).min would overflow to -inf)
    halves = [np.maximum(a, np.float32(-65504)).astype(np.float16) for a in arrays]
    out = run_op(library, halves, 16, 16, 2)
    assert out.dtype == np.float16
    # against float32 PyTorch on the float32 inputs: within twice PyTorch's own float16 error
    torch_half = block_reference([torch.from_numpy(a) for a in halves], 16, 16, 2)
    out, expected = torch.from_numpy(out.astype(np.float32)), torch.from_numpy(expected)
    assert (out - expected).abs().max().item() <= half_tolerance(torch_half, expected)
    # the kernel computes in float32: on the rounded inputs only its output's rounding is left
    rounded = [torch.from_numpy(a.astype(np.float32)) for a in halves]
    assert (out - block_attention(*rounded, 16, 16, 2)).abs().max().item() <= 2e-3


# --- LSGAttention: q, k, v in the projections' (n, G + T, h * d) layout, the global rows included ------

@pytest.mark.parametrize("sparsity_type,g,d,bs,sbs,sf", [("norm", 1, 32, 16, 16, 2), ("pooling", 3, 64, 16, 32, 4),
                                                         ("stride", 7, 24, 8, 8, 2), ("none", 1, 32, 16, 0, 2),
                                                         ("bos_pooling", 2, 16, 16, 16, 2)])
@pytest.mark.quick
def test_lsg_op_matches_lsg_attend(library, sparsity_type, g, d, bs, sbs, sf):
    """Every row of the output, global rows included, over padded rows (a masked tail crossing blocks)."""
    inputs, expected = make_lsg_case(11, 3, 3, 5, d, g, bs, sbs, sf, sparsity_type, [5 * bs, 3 * bs - 5, 7])
    out = run_lsg_op(library, inputs, 3, g, bs, sbs, sf)
    assert out.shape == expected.shape == (3, g + 5 * bs, 3 * d)
    assert np.abs(out - expected.numpy()).max() <= 1e-5


def test_lsg_op_soft_mask_float16_and_no_globals(library):
    # additive mask values other than 0 / finfo.min; a row of padding only (its global row still sees the globals)
    inputs, expected = make_lsg_case(12, 2, 2, 4, 32, 2, 16, 16, 2, "pooling", [64, 0], soft_mask=True)
    assert np.abs(run_lsg_op(library, inputs, 2, 2, 16, 16, 2) - expected.numpy()).max() <= 1e-5
    halves = [torch.from_numpy(np.maximum(x.numpy(), np.float32(-65504)).astype(np.float16)) for x in inputs]
    out = run_lsg_op(library, halves, 2, 2, 16, 16, 2)
    atol = half_tolerance(lsg_reference(halves, 2, 2, 16, 16, 2), expected)
    assert out.dtype == np.float16 and np.abs(out.astype(np.float32) - expected.numpy()).max() <= atol
    # G = 0: no global rows; every row still sees its local window
    inputs, expected = make_lsg_case(13, 1, 2, 3, 32, 0, 16, 0, 2, "none", [48])
    assert np.abs(run_lsg_op(library, inputs, 2, 0, 16, 0, 2) - expected.numpy()).max() <= 1e-5


@pytest.mark.quick
def test_lsg_op_bad_input_is_a_clear_error(library):
    inputs, _ = make_lsg_case(14, 1, 2, 2, 32, 1, 16, 0, 2, "none", [32])
    with pytest.raises(Exception, match="LSGAttention: .*not a multiple of num_heads"):
        run_lsg_op(library, inputs, 5, 1, 16, 0, 2)
    with pytest.raises(Exception, match="LSGAttention: .*not a multiple of block_size"):
        run_lsg_op(library, inputs, 2, 2, 16, 0, 2)  # 33 rows = 2 globals + 31 tokens


def test_bad_shape_is_a_clear_error(library):
    arrays, _ = make_case(7, 1, 2, 2, 32, 1, 16, 0, 2, "none", [32])
    with pytest.raises(Exception, match="not a multiple of block_size"):
        run_op(library, arrays, 12, 0, 2)


def test_missing_library_error_is_one_clear_line(library, tmp_path, monkeypatch):
    model = op_model(6, 16, 0, 2)
    with pytest.raises(LSGExportError, match="lsg-export build-ops") as error:
        ops.inference_session(model, with_ops=False)
    assert "\n" not in str(error.value)
    monkeypatch.setenv("LSG_EXPORT_CACHE", str(tmp_path))
    monkeypatch.delenv("ORT_INCLUDE_DIR", raising=False)
    with pytest.raises(LSGExportError, match="lsg-export build-ops"):
        ops.library_path(build=False)


@pytest.mark.quick
def test_build_ops_command_prints_the_cached_library(library):
    from _cli import invoke
    result = invoke("build-ops")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(library)


def test_build_is_cached(library):
    assert ops.build_ops() == library
    assert ops.library_path() == library
    session = ops.inference_session(op_model(6, 16, 0, 2))
    assert [i.name for i in session.get_inputs()] == list(INPUTS[:6])
