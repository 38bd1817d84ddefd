"""The CUDA kernel of ai.lsg.BlockSparseAttention and ai.lsg.LSGAttention on torch CUDA tensors,
without ONNX Runtime.

The library built with CUDA exports one C entry per op, `lsg_block_sparse_attention_cuda` and
`lsg_attention_cuda`, that runs the op's own shape checks and then the very kernel the ONNX Runtime
CUDA op launches; this module calls them through ctypes on torch's current stream, so the kernel can
be checked against `lsg_attention` on any GPU machine with torch, onnxruntime-gpu or not.

    from lsg_export.ops.cuda_harness import block_sparse_attention_cuda, lsg_attention_cuda
    out = block_sparse_attention_cuda(q, k, v, key_mask, global_k, global_v, sparse_k, sparse_v, sparse_mask,
                                      block_size=128, sparse_block_size=128, sparsity_factor=2)
    out = lsg_attention_cuda(q, k, v, key_mask, sparse_k, sparse_v, sparse_mask,  # q, k, v: (n, G + T, h * d)
                             num_heads=12, num_global=1, block_size=128, sparse_block_size=128, sparsity_factor=2)
"""
import ctypes
import functools
import os

from ..errors import LSGExportError

ENTRY = "lsg_block_sparse_attention_cuda"
LSG_ENTRY = "lsg_attention_cuda"
INPUT_NAMES = ("q", "k", "v", "key_mask", "global_k", "global_v", "sparse_k", "sparse_v", "sparse_mask")
LSG_INPUT_NAMES = ("q", "k", "v", "key_mask", "sparse_k", "sparse_v", "sparse_mask")
NUM_INPUTS = len(INPUT_NAMES)
ELEMENT_TYPES = {"float32": 0, "float16": 1, "bfloat16": 2}  # lsg::ElementType
# int64 attributes between element_type and scale: (block_size, sparse_block_size, sparsity_factor),
# LSGAttention's preceded by (num_heads, num_global)
_INT_ATTRIBUTES = {ENTRY: 3, LSG_ENTRY: 5}


@functools.lru_cache(maxsize=None)
def cuda_entry(library=None, name=ENTRY):
    """The C entry `name` (ENTRY or LSG_ENTRY) of `library` (default: the library built with CUDA,
    built first if needed)."""
    if library is None:
        from .build import build_ops
        library = build_ops(cuda=True)
    handle = ctypes.CDLL(str(library))
    entry = getattr(handle, name, None)
    if entry is None:
        if getattr(handle, ENTRY, None) is None:
            raise LSGExportError(f"{library} was built without CUDA: run `lsg-export build-ops --cuda`")
        raise LSGExportError(f"{library} has no {name}: rebuild it with `lsg-export build-ops --cuda --force`")
    entry.restype = ctypes.c_int
    entry.argtypes = ([ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64),
                       ctypes.c_int, ctypes.c_void_p, ctypes.c_int] + [ctypes.c_int64] * _INT_ATTRIBUTES[name]
                      + [ctypes.c_float, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t])
    return entry


def call_entry(entry, pointers, shapes, out, element_type, block_size, sparse_block_size=0, sparsity_factor=1,
               scale=0.0, stream=None):
    """Raw call of ENTRY: device addresses (int or None) and shapes of the inputs in the op's order,
    the output address, lsg::ElementType code. Raises LSGExportError with the library's message."""
    _call(entry, pointers, shapes, 6, NUM_INPUTS, out, element_type,
          (block_size, sparse_block_size, sparsity_factor), scale, stream)


def call_lsg_entry(entry, pointers, shapes, out, element_type, num_heads, num_global, block_size,
                   sparse_block_size=0, sparsity_factor=1, scale=0.0, stream=None):
    """Raw call of LSG_ENTRY (inputs q, k, v, key_mask [, sparse_k, sparse_v, sparse_mask]), as call_entry."""
    _call(entry, pointers, shapes, 4, len(LSG_INPUT_NAMES), out, element_type,
          (num_heads, num_global, block_size, sparse_block_size, sparsity_factor), scale, stream)


def _call(entry, pointers, shapes, min_inputs, max_inputs, out, element_type, int_attributes, scale, stream):
    if not min_inputs <= len(pointers) <= max_inputs or len(shapes) != len(pointers):
        raise LSGExportError(f"{min_inputs} to {max_inputs} inputs, each with a shape")
    addresses = (ctypes.c_void_p * max_inputs)(*[p or None for p in pointers])
    dims = (ctypes.c_int64 * (4 * max_inputs))()
    ranks = (ctypes.c_int64 * max_inputs)()
    for i, shape in enumerate(shapes):
        if len(shape) > 4:
            raise LSGExportError(f"input {i} has rank {len(shape)} > 4")
        ranks[i] = len(shape)
        for j, size in enumerate(shape):
            dims[4 * i + j] = int(size)
    error = ctypes.create_string_buffer(512)
    status = entry(addresses, dims, ranks, len(pointers), out, element_type, *int_attributes, scale, stream, error,
                   len(error))
    if status:
        raise LSGExportError(error.value.decode(errors="replace"))


def block_sparse_attention_cuda(q, k, v, key_mask, global_k, global_v, sparse_k=None, sparse_v=None, sparse_mask=None,
                                *, block_size, sparse_block_size=0, sparsity_factor=1, scale=0.0, library=None):
    """The op on CUDA tensors of one dtype (float32, float16 or bfloat16): returns a new (n, h, T, d)
    tensor, computed on torch's current stream. Same contract as the ONNX op (custom_ops/README.md):
    without compressed inputs pass None for all three; scale 0 = 1/sqrt(head_dim)."""
    import torch

    inputs = _checked_inputs([q, k, v, key_mask, global_k, global_v], [sparse_k, sparse_v, sparse_mask], "cuda")
    with torch.cuda.device(q.device):
        stream = torch.cuda.current_stream(q.device).cuda_stream
        return _run(call_entry, cuda_entry(library), inputs, stream, block_size, sparse_block_size, sparsity_factor,
                    scale)


def block_sparse_attention_emulated(q, k, v, key_mask, global_k, global_v, sparse_k=None, sparse_v=None,
                                    sparse_mask=None, *, block_size, sparse_block_size=0, sparsity_factor=1, scale=0.0,
                                    library):
    """The same kernels run by the CPU emulation of CUDA (`build_emulation`) on CPU tensors: slow, for
    checking the kernels' logic on machines without a GPU."""
    inputs = _checked_inputs([q, k, v, key_mask, global_k, global_v], [sparse_k, sparse_v, sparse_mask], "cpu")
    return _run(call_entry, cuda_entry(library), inputs, None, block_size, sparse_block_size, sparsity_factor, scale)


def lsg_attention_cuda(q, k, v, key_mask, sparse_k=None, sparse_v=None, sparse_mask=None, *, num_heads, num_global,
                       block_size, sparse_block_size=0, sparsity_factor=1, scale=0.0, library=None):
    """ai.lsg.LSGAttention on CUDA tensors of one dtype: q, k, v (n, G + T, h * d) in the projections'
    layout (the first G rows the global tokens), key_mask (n, T) (the T tokens'), compressed inputs
    as for block_sparse_attention_cuda. Returns a new (n, G + T, h * d) tensor, global rows included,
    computed on torch's current stream."""
    import torch

    inputs = _checked_inputs([q, k, v, key_mask], [sparse_k, sparse_v, sparse_mask], "cuda")
    with torch.cuda.device(q.device):
        stream = torch.cuda.current_stream(q.device).cuda_stream
        return _run(call_lsg_entry, cuda_entry(library, LSG_ENTRY), inputs, stream, num_heads, num_global, block_size,
                    sparse_block_size, sparsity_factor, scale)


def lsg_attention_emulated(q, k, v, key_mask, sparse_k=None, sparse_v=None, sparse_mask=None, *, num_heads, num_global,
                           block_size, sparse_block_size=0, sparsity_factor=1, scale=0.0, library):
    """lsg_attention_cuda's kernels run by the CPU emulation of CUDA on CPU tensors (slow)."""
    inputs = _checked_inputs([q, k, v, key_mask], [sparse_k, sparse_v, sparse_mask], "cpu")
    return _run(call_lsg_entry, cuda_entry(library, LSG_ENTRY), inputs, None, num_heads, num_global, block_size,
                sparse_block_size, sparsity_factor, scale)


def _checked_inputs(required, sparse, device_type):
    import torch

    inputs = required + (sparse if any(x is not None for x in sparse) else [])
    if any(not isinstance(x, torch.Tensor) for x in inputs):
        raise LSGExportError("the compressed inputs are given all three or none")
    q = inputs[0]
    if q.device.type != device_type or any(x.device != q.device or x.dtype != q.dtype for x in inputs):
        raise LSGExportError(f"every input must be a {device_type} tensor on one device, of one dtype")
    if str(q.dtype).removeprefix("torch.") not in ELEMENT_TYPES:
        raise LSGExportError(f"dtype {q.dtype} is not supported (float32, float16, bfloat16)")
    return [x.contiguous() for x in inputs]  # alive until the kernel is enqueued (same stream after)


def _run(call, entry, inputs, stream, *attributes):
    """A new output shaped as q (both ops), filled by call(entry, ...) (call_entry or call_lsg_entry)."""
    import torch

    out = torch.empty_like(inputs[0])
    call(entry, [x.data_ptr() if x.numel() else None for x in inputs], [tuple(x.shape) for x in inputs],
         out.data_ptr() if out.numel() else None, ELEMENT_TYPES[str(out.dtype).removeprefix("torch.")],
         *attributes, stream=stream)
    return out


def emulation_compiler():
    """The C++20 compiler build_emulation uses ($CXX, else g++, else c++ on PATH), or None."""
    import shutil

    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


def build_emulation(folder):
    """Compile the library with its CUDA kernels for the CPU emulation (custom_ops/emulation/) into
    `folder`; returns the library path. Needs a C++20 compiler, not nvcc nor a GPU."""
    import subprocess
    from pathlib import Path

    from .build import ort_include_dir, source_dir
    compiler = emulation_compiler()
    if compiler is None:
        raise LSGExportError("the CUDA emulation needs a C++20 compiler (g++ or c++ on PATH, or $CXX)")
    src, library = source_dir(), Path(folder) / "liblsg_ops_emulated.so"
    command = [compiler, "-std=c++20", "-O2", "-shared", "-fPIC", "-DLSG_CUDA_EMULATION", "-DLSG_OPS_WITH_CUDA=1",
               f"-I{src / 'include'}", f"-I{src / 'emulation'}", "-isystem", str(ort_include_dir()),
               "-x", "c++", str(src / "src" / "block_sparse_attention_cuda.cu"), "-x", "none",
               str(src / "src" / "lsg_ops.cc"), str(src / "src" / "block_sparse_attention_cpu.cc"), "-o", str(library)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise LSGExportError(f"compiling the CUDA emulation failed:\n{result.stderr.strip()[-2000:]}")
    return library


__all__ = ["block_sparse_attention_cuda", "block_sparse_attention_emulated", "build_emulation", "call_entry",
           "call_lsg_entry", "cuda_entry", "ELEMENT_TYPES", "emulation_compiler", "INPUT_NAMES", "LSG_INPUT_NAMES",
           "lsg_attention_cuda", "lsg_attention_emulated"]
