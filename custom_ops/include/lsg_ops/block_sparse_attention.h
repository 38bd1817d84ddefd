// Shared contract of ai.lsg.BlockSparseAttention: shapes, window positions and the kernel entry
// points. Device-neutral (no ONNX Runtime, no CUDA include): the CPU kernel
// (src/block_sparse_attention_cpu.cc), the CUDA kernel (src/block_sparse_attention_cuda.cu, where
// the functions below run on the device too) and the ORT registration (src/lsg_ops.cc) all
// include this one file, so the window arithmetic exists once.
//
// Math, identical to lsg_export.modeling.lsg_attention.block_attention: block i (bs queries) of
// every (batch, head) attends with softmax(q * scale . k + mask) to
//   - the G global keys (never masked),
//   - the compressed keys at positions [(i-1)c - sbs, (i-1)c) and [(i+2)c, (i+2)c + sbs),
//     c = bs / sf, of the T/sf compressed tokens (positions outside [0, T/sf) do not exist),
//   - the local keys at positions [(i-1)bs, (i+2)bs) of the T tokens (outside [0, T): none).
// Masks are additive; a value <= kMaskedBelow (float16's lowest, float32's finfo.min, -inf)
// marks a masked key, which the kernels skip entirely (its softmax weight is exactly 0).
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define LSG_HD __host__ __device__ __forceinline__
#else
#define LSG_HD inline
#endif

namespace lsg {

// Every mask value at or below this is "masked": -65504 is float16's lowest finite value, so
// finfo(float16).min, finfo(float32).min, finfo(bfloat16).min and -inf all qualify.
constexpr float kMaskedBelow = -65504.0f;

LSG_HD bool is_masked(float mask_value) { return !(mask_value > kMaskedBelow); }

struct BlockSparseShape {
  int64_t batch = 0;          // n
  int64_t heads = 0;          // h
  int64_t length = 0;         // T, the non-global tokens, a multiple of block_size
  int64_t head_dim = 0;       // d
  int64_t num_global = 0;     // G (0 allowed; a row with no visible key then outputs 0)
  int64_t sparse_length = 0;  // T / sparsity_factor, 0 when there is no compressed part
  int64_t sparse_mask_heads = 1;  // 1 (shared by all heads) or h
  int64_t block_size = 0;         // bs
  int64_t sparse_block_size = 0;  // sbs (0: no compressed part)
  int64_t sparsity_factor = 1;    // sf, divides bs
  float scale = 0.0f;             // multiplies q before the product; 1/sqrt(d) by default

  LSG_HD int64_t num_blocks() const { return length / block_size; }
  LSG_HD bool has_sparse() const { return sparse_length > 0 && sparse_block_size > 0; }
  // one task = one (batch, head, block): the unit of parallel work of every kernel
  LSG_HD int64_t num_tasks() const { return batch * heads * num_blocks(); }
  // most keys one block can see: G + 2 sbs + 3 bs
  LSG_HD int64_t max_keys() const {
    return num_global + (has_sparse() ? 2 * sparse_block_size : 0) + 3 * block_size;
  }
};

// A contiguous run [begin, end) of key rows; begin == end when empty.
struct KeyRange {
  int64_t begin;
  int64_t end;
};

LSG_HD KeyRange clip_range(int64_t begin, int64_t end, int64_t limit) {
  KeyRange r;
  r.begin = begin < 0 ? 0 : (begin > limit ? limit : begin);
  r.end = end < 0 ? 0 : (end > limit ? limit : end);
  if (r.end < r.begin) r.end = r.begin;
  return r;
}

// The three local blocks of block i, clipped to the sequence: one contiguous run of rows.
LSG_HD KeyRange local_keys(const BlockSparseShape& s, int64_t block) {
  return clip_range((block - 1) * s.block_size, (block + 2) * s.block_size, s.length);
}

// side 0: the sbs compressed tokens left of block i's local window, side 1: right of it.
LSG_HD KeyRange sparse_keys(const BlockSparseShape& s, int64_t block, int side) {
  const int64_t c = s.block_size / s.sparsity_factor;
  const int64_t begin = side == 0 ? (block - 1) * c - s.sparse_block_size : (block + 2) * c;
  return clip_range(begin, begin + s.sparse_block_size, s.sparse_length);
}

// Views of the inputs, row-major and contiguous, in the op's layout:
//   q, k, v:      (n, h, T, d)       key_mask: (n, T) (the (n, 1, T, 1) input)
//   global_k/v:   (n, h, G, d)
//   sparse_k/v:   (n, h, T/sf, d)    sparse_mask: (n, sparse_mask_heads, T/sf)
//   out:          (n, h, T, d)
// Element: float for the CPU kernel (float32 views), void for the CUDA kernel (device pointers in
// the inputs' element type). sparse_* may be null when the shape has no compressed part,
// global_* when num_global is 0.
template <typename Element>
struct BlockSparseViews {
  const Element* q = nullptr;
  const Element* k = nullptr;
  const Element* v = nullptr;
  const Element* key_mask = nullptr;
  const Element* global_k = nullptr;
  const Element* global_v = nullptr;
  const Element* sparse_k = nullptr;
  const Element* sparse_v = nullptr;
  const Element* sparse_mask = nullptr;
  Element* out = nullptr;
};
using BlockSparseTensors = BlockSparseViews<float>;

// CPU kernel (src/block_sparse_attention_cpu.cc). Computes task `task` in [0, num_tasks()):
// thread-safe, any order; per-thread scratch is reused across tasks (no allocation per block).
void block_sparse_attention_cpu_task(const BlockSparseShape& shape, const BlockSparseTensors& t,
                                     int64_t task);

// IEEE half <-> float conversions used by the float16 entry (computed in float32).
void half_to_float(const uint16_t* src, float* dst, size_t count);
void float_to_half(const float* src, uint16_t* dst, size_t count);

// --- CUDA kernel (src/block_sparse_attention_cuda.cu, built with LSG_OPS_CUDA) ----------------

// Element type of every input and of the output (the mask too).
enum class ElementType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

using BlockSparseDeviceTensors = BlockSparseViews<void>;

// Enqueues the whole op on `stream` (a cudaStream_t; nullptr: the legacy default stream) and
// returns nullptr, or a static message when the shapes exceed the kernel's limits or the launch
// fails. Tensor-core path: float16/bfloat16, head_dim 32, 64 or 128, 16-byte aligned pointers;
// any other case (float32 included) takes the float32 CUDA-core path (head_dim <= 128).
const char* block_sparse_attention_cuda(const BlockSparseShape& shape, const BlockSparseDeviceTensors& tensors,
                                        ElementType type, void* stream);

}  // namespace lsg
