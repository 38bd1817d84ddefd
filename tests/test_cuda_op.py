"""ai.lsg.BlockSparseAttention and ai.lsg.LSGAttention on CUDA.

On any machine with nvcc (CI): the CUDA sources compile (one architecture), the library's C entry
runs the op's checks, and the CPU kernel of that build still matches PyTorch. With a C++ compiler:
the CUDA kernels themselves, run by a CPU emulation of CUDA (custom_ops/emulation/), against
PyTorch. On a GPU (marked `gpu`): the kernel through the ctypes harness against lsg_attention.block_attention, the ONNX
Runtime CUDA op against the CPU op, and the MiniLM-LSG export with the custom op on CUDA. LSGAttention
(q, k, v in the projections' (n, G + T, h * d) layout, global rows included) is checked against
lsg_attention.lsg_attend the same ways, emulated and on a GPU.
"""
import functools

import numpy as np
import pytest
import torch

from lsg_export import ops
from lsg_export.errors import LSGExportError
from lsg_export.modeling.lsg_attention import attend, block_attention
from lsg_export.ops import cuda_harness

from _op_cases import block_reference, compressed, half_tolerance, lsg_reference, make_lsg_case, padding_mask

SPARSITY_TYPES = ("norm", "pooling", "stride", "block_stride", "bos_pooling", "none")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FLOAT32_ATOL = 1e-4


@functools.lru_cache(maxsize=None)
def gpu_skip_reason(need_ort=False):
    """None when the GPU tests can run, else the one reason they cannot."""
    if not torch.cuda.is_available():
        return "needs a CUDA GPU and a CUDA build of torch"
    if ops.build._find_nvcc() is None:
        return "needs nvcc to build the CUDA kernel"
    if need_ort:
        try:
            import onnxruntime as ort
        except ImportError:
            return "needs onnxruntime-gpu"
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "needs onnxruntime-gpu (this onnxruntime has no CUDAExecutionProvider)"
    return None


def requires_gpu(need_ort=False):
    reason = gpu_skip_reason(need_ort)
    if reason:
        pytest.skip(reason)


def make_case(seed, n, h, blocks, d, g, bs, sbs, sf, sparsity_type, lengths, device="cpu"):
    """Float32 inputs of the op (masked tail per row) and block_attention's output, on `device`."""
    generator = torch.Generator().manual_seed(seed)
    t = blocks * bs
    q, k, v = (torch.randn(n, h, t, d, generator=generator) for _ in range(3))
    global_k, global_v = (torch.randn(n, h, g, d, generator=generator) for _ in range(2))
    key_mask = padding_mask(t, lengths)[:, None, :, None]
    sparse = compressed(q, k, v, key_mask[:, 0, :, 0], g, bs, sbs, sf, sparsity_type)
    expected = block_attention(q, k, v, key_mask, global_k, global_v, *(sparse or [None] * 3), bs, sbs, sf)
    inputs = [x.contiguous().to(device) for x in [q, k, v, key_mask, global_k, global_v, *sparse]]
    return inputs, expected.to(device)


def block_atol(inputs, expected, bs, sbs, sf):
    """The kernel's max error allowed on `inputs` (in the dtype under test) against the float32 `expected`:
    FLOAT32_ATOL in float32, else half_tolerance of block_attention's own result in that dtype."""
    if inputs[0].dtype == torch.float32:
        return FLOAT32_ATOL
    return half_tolerance(block_reference(inputs, bs, sbs, sf), expected)


def lsg_atol(inputs, expected, heads, g, bs, sbs, sf):
    """block_atol for LSGAttention (lsg_attend's own result)."""
    if inputs[0].dtype == torch.float32:
        return FLOAT32_ATOL
    return half_tolerance(lsg_reference(inputs, heads, g, bs, sbs, sf), expected)


def as_dtype(inputs, dtype):
    # masks: float16's lowest at most (finfo(float32).min would round to -inf, which is masked too)
    return [x.clamp(min=-65504).to(dtype) if x.dtype != dtype else x for x in inputs]


def off_alignment(x):
    """x's values at a data pointer one element past an aligned one (the CUDA-core path)."""
    buffer = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
    buffer[1:] = x.reshape(-1)
    return buffer[1:].view(x.shape)


def max_error(out, expected):
    assert out.shape == expected.shape
    return (out.float() - expected).abs().max().item()


# --- CPU: the CUDA sources compile, the C entry checks its inputs ---------------------------------

def test_cuda_sources_compile(tmp_path, monkeypatch):
    if ops.build._find_nvcc() is None:
        pytest.skip("nvcc not found")
    monkeypatch.setenv("ORT_INCLUDE_DIR", str(ops.ort_include_dir()))
    monkeypatch.setenv("LSG_EXPORT_CACHE", str(tmp_path))  # a fresh build, not the cached one
    monkeypatch.setenv("LSG_OPS_CUDA_ARCHS", "80")  # one architecture: the CI time budget
    library = ops.build_ops(cuda=True)
    assert library.is_file() and str(tmp_path) in str(library)
    entry = cuda_harness.cuda_entry(library)  # the C entry is exported

    shapes = [(1, 2, 32, 64)] * 3 + [(1, 1, 32, 1), (1, 2, 1, 64), (1, 2, 1, 64)]
    fake = [16] * 6  # never dereferenced: the checks come first
    with pytest.raises(LSGExportError, match="not a multiple of block_size 12"):
        cuda_harness.call_entry(entry, fake, shapes, 16, 1, 12)
    with pytest.raises(LSGExportError, match="all three or none"):
        cuda_harness.call_entry(entry, fake + [16, 16, None], shapes + [(1, 2, 16, 64)] * 2 + [(0,)], 16, 1, 16, 16, 2)
    with pytest.raises(LSGExportError, match="'k' has shape"):
        cuda_harness.call_entry(entry, fake, [shapes[0], (1, 2, 16, 64)] + shapes[2:], 16, 1, 16)
    with pytest.raises(LSGExportError, match="sparsity_factor must be >= 1 and divide block_size"):
        cuda_harness.call_entry(entry, fake, shapes, 16, 1, 16, 0, 3)
    if not ops.build._gpu_visible():  # valid shapes reach CUDA, which reports the missing GPU as an error
        with pytest.raises(LSGExportError) as error:
            cuda_harness.call_entry(entry, fake, shapes, 16, 1, 16)
        assert "block_size" not in str(error.value) and str(error.value)

    # LSGAttention's entry: (n, G + T, h * d) inputs, its attributes in the C signature's order
    lsg_entry = cuda_harness.cuda_entry(library, cuda_harness.LSG_ENTRY)
    lsg_shapes = [(1, 33, 128)] * 3 + [(1, 32)]
    with pytest.raises(LSGExportError, match="not a multiple of num_heads"):
        cuda_harness.call_lsg_entry(lsg_entry, fake[:4], lsg_shapes, 16, 1, 3, 1, 16)
    with pytest.raises(LSGExportError, match="not a multiple of block_size 12"):
        cuda_harness.call_lsg_entry(lsg_entry, fake[:4], lsg_shapes, 16, 1, 2, 1, 12)
    with pytest.raises(LSGExportError, match="'key_mask' has shape"):
        cuda_harness.call_lsg_entry(lsg_entry, fake[:4], lsg_shapes, 16, 1, 2, 3, 2)  # T = 30

    # the CPU kernel of a CUDA build is the same
    ort = pytest.importorskip("onnxruntime")
    from test_custom_op import op_model

    inputs, expected = make_case(0, 2, 3, 5, 32, 2, 16, 16, 2, "pooling", [80, 37])
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(library))
    session = ort.InferenceSession(op_model(len(inputs), 16, 16, 2), options, providers=["CPUExecutionProvider"])
    out = session.run(None, dict(zip(cuda_harness.INPUT_NAMES, [x.numpy() for x in inputs])))[0]
    assert np.abs(out - expected.numpy()).max() <= 1e-5


def test_default_build_needs_a_gpu(monkeypatch):
    monkeypatch.setattr(ops.build, "_find_nvcc", lambda: "/usr/local/cuda/bin/nvcc")
    monkeypatch.setattr(ops.build, "_gpu_visible", lambda: False)
    assert ops.build._cuda_choice(None)[0] is False  # nvcc alone: the CPU build
    assert ops.build._cuda_choice(True)[0] is True
    monkeypatch.setattr(ops.build, "_gpu_visible", lambda: True)
    monkeypatch.setenv("LSG_OPS_CUDA_ARCHS", "90")
    assert ops.build._cuda_choice(None) == (True, "/usr/local/cuda/bin/nvcc", "90")
    monkeypatch.setattr(ops.build, "_find_nvcc", lambda: None)
    assert ops.build._cuda_choice(None)[0] is False
    with pytest.raises(LSGExportError, match="nvcc is not found"):
        ops.build._cuda_choice(True)


# --- CPU: the CUDA kernels themselves, run by the CPU emulation of CUDA -----------------------------

@pytest.fixture(scope="module")
def emulated_library(tmp_path_factory):
    # only a missing compiler skips: a compile error fails the tests with the compiler's message
    if cuda_harness.emulation_compiler() is None:
        pytest.skip("the CUDA emulation needs a C++20 compiler (g++ or c++ on PATH, or $CXX)")
    return cuda_harness.build_emulation(tmp_path_factory.mktemp("cuda-emulation"))


# (dtype, head_dim, G, sparsity, blocks, bs, sbs, sf, lengths): each kernel path once: tensor cores with 8
# warps and prefetch (d 32, 64), with 4 warps and 2 query tiles per block (d 128, bs 128), bfloat16,
# several key tiles, the float32 CUDA-core path, per-head compressed masks, padded rows
EMULATED_CASES = [
    ("float16", 64, 7, "norm", 6, 16, 16, 2, [96, 41]),
    ("bfloat16", 32, 1, "stride", 3, 16, 16, 2, [48, 20]),
    ("float16", 128, 1, "pooling", 2, 128, 64, 4, [256, 200]),
    ("float32", 64, 3, "block_stride", 4, 16, 16, 2, [64, 30]),
]


@pytest.mark.parametrize("case", EMULATED_CASES, ids=lambda c: f"{c[0]}-d{c[1]}-{c[3]}")
def test_emulated_kernel_matches_block_attention(emulated_library, case):
    dtype, d, g, sparsity_type, blocks, bs, sbs, sf, lengths = case
    inputs, expected = make_case(11, len(lengths), 2, blocks, d, g, bs, sbs, sf, sparsity_type, lengths)
    inputs = as_dtype(inputs, DTYPES[dtype])
    out = cuda_harness.block_sparse_attention_emulated(*inputs, block_size=bs, sparse_block_size=sbs,
                                                       sparsity_factor=sf, library=emulated_library)
    assert out.dtype == DTYPES[dtype]
    assert max_error(out, expected) <= block_atol(inputs, expected, bs, sbs, sf)


def test_emulated_kernel_edge_cases(emulated_library):
    """float16 off 16-byte alignment and head_dim 48 (CUDA-core path), a row that sees no key (0)."""
    run = functools.partial(cuda_harness.block_sparse_attention_emulated, library=emulated_library)
    inputs, expected = make_case(12, 1, 2, 3, 48, 2, 16, 16, 2, "norm", [40])
    halves = as_dtype(inputs, torch.float16)
    out = run(*halves, block_size=16, sparse_block_size=16, sparsity_factor=2)
    assert max_error(out, expected) <= block_atol(halves, expected, 16, 16, 2)
    inputs, expected = make_case(12, 1, 2, 3, 64, 2, 16, 16, 2, "norm", [40])
    halves = as_dtype(inputs, torch.float16)
    shifted = [off_alignment(x) for x in halves]
    assert shifted[0].data_ptr() % 16
    out = run(*shifted, block_size=16, sparse_block_size=16, sparsity_factor=2)
    assert max_error(out, expected) <= block_atol(halves, expected, 16, 16, 2)
    inputs, expected = make_case(13, 2, 2, 2, 64, 0, 16, 0, 2, "none", [32, 0])
    halves = as_dtype(inputs, torch.float16)
    out = run(*halves, block_size=16)
    assert max_error(out[:1], expected[:1]) <= block_atol([x[:1] for x in halves], expected[:1], 16, 0, 2)
    assert torch.count_nonzero(out[1]).item() == 0


# (dtype, head_dim, G, sparsity, blocks, bs, sbs, sf, lengths) of LSGAttention, q/k/v read in the
# (n, G + T, h * d) layout: the CUDA-core path (float32), tensor cores at d 32 and 64, bfloat16, G 1 and
# 3, with and without compressed keys, padded rows, a row of masked tokens only (its rows see the globals)
EMULATED_LSG_CASES = [
    ("float32", 32, 1, "norm", 3, 16, 16, 2, [48, 20]),
    ("float16", 32, 3, "pooling", 3, 16, 16, 2, [48, 0]),
    ("float16", 64, 1, "none", 2, 16, 0, 2, [32, 9]),
    ("bfloat16", 32, 3, "stride", 2, 16, 16, 2, [32, 17]),
]


def check_lsg_edge_cases(run, device, dtype):
    """LSGAttention through `run` (the emulated or the CUDA harness, num_heads 2): head_dim 48 with
    mask values other than 0, pointers off 16-byte alignment (both the CUDA-core path), G = 0 with a
    row of masked tokens only (0, not NaN), T = 0 (the global rows alone: dense attention among them)."""
    inputs, expected = make_lsg_case(22, 1, 2, 3, 48, 3, 16, 16, 2, "norm", [40], device, soft_mask=True)
    inputs = as_dtype(inputs, dtype)
    out = run(*inputs, num_global=3, block_size=16, sparse_block_size=16, sparsity_factor=2)
    assert out.dtype == dtype and max_error(out, expected) <= lsg_atol(inputs, expected, 2, 3, 16, 16, 2)
    inputs, expected = make_lsg_case(23, 1, 2, 3, 64, 1, 16, 16, 2, "norm", [40], device)
    inputs = as_dtype(inputs, dtype)
    shifted = [off_alignment(x) for x in inputs]
    assert shifted[0].data_ptr() % 16
    out = run(*shifted, num_global=1, block_size=16, sparse_block_size=16, sparsity_factor=2)
    assert max_error(out, expected) <= lsg_atol(inputs, expected, 2, 1, 16, 16, 2)
    inputs, expected = make_lsg_case(24, 2, 2, 2, 64, 0, 16, 0, 2, "none", [32, 0], device)
    inputs = as_dtype(inputs, dtype)
    out = run(*inputs, num_global=0, block_size=16)
    assert max_error(out[:1], expected[:1]) <= lsg_atol([x[:1] for x in inputs], expected[:1], 2, 0, 16, 0, 2)
    assert torch.count_nonzero(out[1]).item() == 0
    generator = torch.Generator().manual_seed(25)
    q, k, v = (torch.randn(2, 3, 64, generator=generator).to(device) for _ in range(3))
    heads = lambda x: x.reshape(2, 3, 2, 32).transpose(1, 2)  # noqa: E731
    dense = lambda q, k, v: attend(heads(q), heads(k), heads(v), 0.0).transpose(1, 2).reshape(2, 3, 64)  # noqa: E731
    expected = dense(q, k, v)
    inputs = as_dtype([q, k, v, q.new_zeros(2, 0)], dtype)
    out = run(*inputs, num_global=3, block_size=16)
    atol = FLOAT32_ATOL if dtype == torch.float32 else half_tolerance(dense(*(x.cpu() for x in inputs[:3])), expected)
    assert max_error(out, expected) <= atol


@pytest.mark.parametrize("case", EMULATED_LSG_CASES, ids=lambda c: f"{c[0]}-d{c[1]}-g{c[2]}-{c[3]}")
def test_emulated_lsg_kernel_matches_lsg_attend(emulated_library, case):
    dtype, d, g, sparsity_type, blocks, bs, sbs, sf, lengths = case
    inputs, expected = make_lsg_case(21, len(lengths), 2, blocks, d, g, bs, sbs, sf, sparsity_type, lengths)
    inputs = as_dtype(inputs, DTYPES[dtype])
    out = cuda_harness.lsg_attention_emulated(*inputs, num_heads=2, num_global=g, block_size=bs,
                                              sparse_block_size=sbs, sparsity_factor=sf, library=emulated_library)
    assert out.dtype == DTYPES[dtype]
    atol = lsg_atol(inputs, expected, 2, g, bs, sbs, sf)
    assert max_error(out[:, :g], expected[:, :g]) <= atol  # the global rows
    assert max_error(out, expected) <= atol


def test_emulated_lsg_kernel_edge_cases(emulated_library):
    run = functools.partial(cuda_harness.lsg_attention_emulated, num_heads=2, library=emulated_library)
    check_lsg_edge_cases(run, "cpu", torch.float16)


# --- GPU: the kernel through the ctypes harness ---------------------------------------------------

def run_harness(inputs, bs, sbs, sf, **kwargs):
    return cuda_harness.block_sparse_attention_cuda(*inputs, block_size=bs, sparse_block_size=sbs,
                                                    sparsity_factor=sf, **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
@pytest.mark.parametrize("d", [32, 64, 128])
@pytest.mark.parametrize("g", [1, 7])
def test_kernel_matches_block_attention(dtype, sparsity_type, d, g):
    requires_gpu()
    bs, sf = 16, 2
    sbs = 16 if sparsity_type != "none" else 0
    for seed, (blocks, lengths) in enumerate([(1, [16, 9]), (2, [32, 20]), (6, [96, 41]), (11, [176, 3])]):
        inputs, expected = make_case(seed, 2, 3, blocks, d, g, bs, sbs, sf, sparsity_type, lengths, "cuda")
        inputs = as_dtype(inputs, DTYPES[dtype])
        out = run_harness(inputs, bs, sbs, sf)
        assert out.dtype == DTYPES[dtype] and out.shape == expected.shape
        assert max_error(out, expected) <= block_atol(inputs, expected, bs, sbs, sf), (blocks, lengths)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("d", [64, 128])
def test_kernel_bert_geometry(dtype, d):
    """bs 128 (two query tiles per block), 641 keys per block (eleven 64-key tiles), padding."""
    requires_gpu()
    inputs, expected = make_case(1, 2, 4, 12, d, 1, 128, 128, 2, "norm", [1536, 1000], "cuda")
    inputs = as_dtype(inputs, DTYPES[dtype])
    out = run_harness(inputs, 128, 128, 2)
    assert max_error(out, expected) <= block_atol(inputs, expected, 128, 128, 2)


@pytest.mark.gpu
@pytest.mark.parametrize("bs,sbs,sf,sparsity_type", [(8, 4, 4, "pooling"), (16, 48, 2, "stride"),
                                                     (32, 8, 8, "block_stride"), (4, 4, 1, "norm"),
                                                     (16, 24, 4, "bos_pooling"), (64, 32, 4, "norm")])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_kernel_other_geometries(bs, sbs, sf, sparsity_type, dtype):
    requires_gpu()
    inputs, expected = make_case(3, 1, 4, 7, 64, 2, bs, sbs, sf, sparsity_type, [7 * bs - 5], "cuda")
    inputs = as_dtype(inputs, DTYPES[dtype])
    out = run_harness(inputs, bs, sbs, sf)
    assert max_error(out, expected) <= block_atol(inputs, expected, bs, sbs, sf)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_kernel_mask_shapes_scale_and_empty_sparse(dtype):
    requires_gpu()
    inputs, expected = make_case(4, 2, 3, 4, 64, 1, 16, 16, 2, "pooling", [64, 30], "cuda")
    inputs = as_dtype(inputs, DTYPES[dtype])
    atol = block_atol(inputs, expected, 16, 16, 2)
    flat_mask = inputs[3].reshape(2, 64)  # (n, T) as well as (n, 1, T, 1)
    out = run_harness(inputs[:3] + [flat_mask] + inputs[4:], 16, 16, 2)
    assert max_error(out, expected) <= atol
    scaled = run_harness([inputs[0] * 2] + inputs[1:], 16, 16, 2, scale=0.5 / 8.0)
    assert max_error(scaled, out.float()) <= atol
    # sparse_block_size 0 ignores the compressed inputs; empty ones mean none
    local, local_expected = make_case(4, 2, 3, 4, 64, 1, 16, 0, 2, "none", [64, 30], "cuda")
    local = as_dtype(local, DTYPES[dtype])
    local_atol = block_atol(local, local_expected, 16, 0, 2)
    assert max_error(run_harness(inputs, 16, 0, 2), local_expected) <= local_atol
    empty = [inputs[0].new_zeros(2, 3, 0, 64)] * 2 + [inputs[0].new_zeros(2, 1, 0, 1)]
    assert max_error(run_harness(local + empty, 16, 16, 2), local_expected) <= local_atol


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_kernel_unaligned_and_odd_head_dim(dtype):
    """The CUDA-core path: head_dim 48, and float16/bfloat16 pointers off 16-byte alignment."""
    requires_gpu()
    inputs, expected = make_case(5, 1, 2, 5, 48, 3, 16, 16, 2, "norm", [70], "cuda")
    inputs = as_dtype(inputs, DTYPES[dtype])
    out = run_harness(inputs, 16, 16, 2)
    assert max_error(out, expected) <= block_atol(inputs, expected, 16, 16, 2)
    inputs, expected = make_case(6, 1, 2, 5, 64, 3, 16, 16, 2, "norm", [70], "cuda")
    inputs = as_dtype(inputs, DTYPES[dtype])
    out = run_harness([off_alignment(x) for x in inputs], 16, 16, 2)
    assert max_error(out, expected) <= block_atol(inputs, expected, 16, 16, 2)


@pytest.mark.gpu
def test_kernel_row_without_keys_outputs_zero():
    requires_gpu()
    inputs, expected = make_case(7, 2, 2, 3, 64, 0, 16, 0, 2, "none", [48, 0], "cuda")
    for dtype in ("float32", "float16"):
        typed = as_dtype(inputs, DTYPES[dtype])
        out = run_harness(typed, 16, 0, 2).float()
        assert max_error(out[:1], expected[:1]) <= block_atol([x[:1] for x in typed], expected[:1], 16, 0, 2)
        assert torch.count_nonzero(out[1]).item() == 0  # G = 0 and every key masked: 0, not NaN


@pytest.mark.gpu
def test_kernel_runs_on_the_current_stream():
    requires_gpu()
    inputs, expected = make_case(8, 1, 12, 16, 64, 1, 128, 128, 2, "norm", [2048], "cuda")
    halves = as_dtype(inputs, torch.float16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = run_harness(halves, 128, 128, 2)
        out_sum = out.float().sum()  # ordered after the kernel on the same stream
    stream.synchronize()
    assert max_error(out, expected) <= block_atol(halves, expected, 128, 128, 2)
    assert torch.isfinite(out_sum).item()


def run_lsg_harness(inputs, h, g, bs, sbs, sf, **kwargs):
    return cuda_harness.lsg_attention_cuda(*inputs, num_heads=h, num_global=g, block_size=bs,
                                           sparse_block_size=sbs, sparsity_factor=sf, **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("sparsity_type", ["norm", "pooling", "none"])
@pytest.mark.parametrize("d", [32, 64, 128])
@pytest.mark.parametrize("g", [1, 3])
def test_lsg_kernel_matches_lsg_attend(dtype, sparsity_type, d, g):
    requires_gpu()
    sbs = 16 if sparsity_type != "none" else 0
    for seed, (blocks, lengths) in enumerate([(1, [16, 9]), (6, [96, 41]), (11, [176, 0])]):
        inputs, expected = make_lsg_case(seed, 2, 3, blocks, d, g, 16, sbs, 2, sparsity_type, lengths, "cuda")
        inputs = as_dtype(inputs, DTYPES[dtype])
        out = run_lsg_harness(inputs, 3, g, 16, sbs, 2)
        assert out.dtype == DTYPES[dtype]
        atol = lsg_atol(inputs, expected, 3, g, 16, sbs, 2)
        assert max_error(out[:, :g], expected[:, :g]) <= atol, (blocks, lengths)  # the global rows
        assert max_error(out, expected) <= atol, (blocks, lengths)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_lsg_kernel_bert_geometry(dtype):
    """12 heads of 64 (rows of 768 channels), bs 128, G 1, 1536 tokens with padding, 641 keys per block."""
    requires_gpu()
    inputs, expected = make_lsg_case(1, 2, 12, 12, 64, 1, 128, 128, 2, "norm", [1536, 1000], "cuda")
    inputs = as_dtype(inputs, DTYPES[dtype])
    out = run_lsg_harness(inputs, 12, 1, 128, 128, 2)
    assert max_error(out, expected) <= lsg_atol(inputs, expected, 12, 1, 128, 128, 2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_lsg_kernel_edge_cases(dtype):
    requires_gpu()
    check_lsg_edge_cases(functools.partial(cuda_harness.lsg_attention_cuda, num_heads=2), "cuda", DTYPES[dtype])


# --- GPU: the ONNX Runtime CUDA op ---------------------------------------------------------------

def ort_session(model, provider):
    """A session of `model` on one provider; on CUDA, loading fails if any node would fall back to the CPU."""
    import onnxruntime as ort

    options = ops.session_options_with_ops()
    if provider == "CUDAExecutionProvider":
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return ort.InferenceSession(model, options, providers=[provider])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("sparsity_type", ["norm", "stride", "none"])
def test_ort_cuda_op_matches_cpu_op(dtype, sparsity_type):
    requires_gpu(need_ort=True)
    from onnx import TensorProto
    from test_custom_op import op_model

    sbs = 128 if sparsity_type != "none" else 0
    inputs, expected = make_case(9, 2, 4, 8, 64, 1, 128, sbs, 2, sparsity_type, [1024, 700])
    inputs = as_dtype(inputs, DTYPES[dtype])
    atol = block_atol(inputs, expected, 128, sbs, 2)
    arrays = [x.numpy() for x in inputs]
    elem = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.FLOAT
    model = op_model(len(arrays), 128, sbs, 2, elem)
    feeds = dict(zip(cuda_harness.INPUT_NAMES, arrays))
    on_cuda = ort_session(model, "CUDAExecutionProvider").run(None, feeds)[0]
    on_cpu = ort_session(model, "CPUExecutionProvider").run(None, feeds)[0]
    assert on_cuda.dtype == arrays[0].dtype
    assert np.abs(on_cuda.astype(np.float32) - on_cpu.astype(np.float32)).max() <= atol
    assert np.abs(on_cuda.astype(np.float32) - expected.numpy()).max() <= atol


@pytest.mark.gpu
@pytest.mark.parametrize("seq,fp16", [(4096, False), (4096, True), (16384, False), (16384, True)])
def test_minilm_custom_op_export_on_cuda(tmp_path, seq, fp16):
    requires_gpu(need_ort=True)
    from lsg_export import convert
    from lsg_export.onnx import export_onnx

    folder = convert(None, tmp_path / "minilm", max_sequence_length=seq).path
    atol = 2e-2 if fp16 else 1e-4
    result = export_onnx(folder, tmp_path / "onnx", attention="custom-op", device="cuda", fp16=fp16, atol=atol,
                         lengths=[1, 1000, seq])
    report = result.report.to_dict()
    assert result.passed and report["max_abs_diff"] <= atol, report
    assert result.info["attention"] == "custom-op" and result.info["device"] == "cuda"
