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
// With global queries (the LSGAttention op, lsg_attention.lsg_attend), each of the G global
// queries attends to all G + T keys (globals unmasked, tokens with key_mask).
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

// Element strides of an (n, h, rows, d) operand whose rows of d channels are contiguous: element
// (b, head, row, c) is at b * batch + head * head + row * row + c.
struct Strides {
  int64_t batch = 0;
  int64_t head = 0;
  int64_t row = 0;

  LSG_HD int64_t at(int64_t b, int64_t h, int64_t r) const { return b * batch + h * head + r * row; }
  // (n, h, rows, d) contiguous: the BlockSparseAttention layout
  static LSG_HD Strides head_major(int64_t heads, int64_t rows, int64_t head_dim) {
    Strides s;
    s.row = head_dim;
    s.head = rows * head_dim;
    s.batch = heads * rows * head_dim;
    return s;
  }
  // (n, rows, h * d) contiguous: the projections' own layout, read by LSGAttention
  static LSG_HD Strides token_major(int64_t heads, int64_t rows, int64_t head_dim) {
    Strides s;
    s.row = heads * head_dim;
    s.head = head_dim;
    s.batch = rows * heads * head_dim;
    return s;
  }
};

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
  Strides tokens;                 // q, k, v, out (rows: the T tokens)
  Strides globals;                // global_k, global_v, and global_q, global_out when present (rows: G)
  bool global_queries = false;    // also the G global queries' rows: dense attention over all G + T keys

  LSG_HD int64_t num_blocks() const { return length / block_size; }
  LSG_HD bool has_sparse() const { return sparse_length > 0 && sparse_block_size > 0; }
  // one task = one (batch, head, block), then with global_queries one per (batch, head) for the
  // global rows: the unit of parallel work of the CPU kernel
  LSG_HD int64_t num_block_tasks() const { return batch * heads * num_blocks(); }
  LSG_HD int64_t num_tasks() const { return num_block_tasks() + (global_queries ? batch * heads : 0); }
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

// Views of the inputs:
//   q, k, v, out:     T rows at shape.tokens strides       key_mask: (n, T) contiguous
//   global_k/v:       G rows at shape.globals strides
//   global_q/out:     G rows at shape.globals strides (shape.global_queries only, else null)
//   sparse_k/v:       (n, h, T/sf, d) contiguous          sparse_mask: (n, sparse_mask_heads, T/sf)
// BlockSparseAttention: every operand its own contiguous (n, h, rows, d) tensor. LSGAttention:
// q, k, v and out are (n, G + T, h * d) tensors, the globals their first G rows (token_major).
// Element: float for the CPU kernel (float32 views), void for the CUDA kernel (device pointers in
// the inputs' element type). sparse_* may be null when the shape has no compressed part,
// global_k/v when num_global is 0.
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
  const Element* global_q = nullptr;
  Element* out = nullptr;
  Element* global_out = nullptr;
};
using BlockSparseTensors = BlockSparseViews<float>;

// CPU kernel (src/block_sparse_attention_cpu.cc), two steps:
// 1. when k and v rows are strided (LSGAttention), copy_keys_cpu_task(shape, t, k, v, task) for task
//    in [0, batch * heads) lays the T token rows of k and v out head-major (n, h, T, d) into k and v
//    (keys_copy_elements(shape) floats each; 0: no copy needed): every block reads its keys three
//    times, from contiguous rows, where rows h * d apart are slow to read (cache sets, prefetchers);
// 2. block_sparse_attention_cpu_task(shape, t, keys, task) for task in [0, num_tasks()): a block of
//    queries, or (task >= num_block_tasks()) the global queries of one (batch, head); `keys`: the
//    strides of t.k and t.v (shape.tokens, or head-major after step 1). Thread-safe, any order;
//    per-thread scratch is reused across tasks (no allocation per block).
int64_t keys_copy_elements(const BlockSparseShape& shape);
void copy_keys_cpu_task(const BlockSparseShape& shape, const BlockSparseTensors& t, float* k, float* v, int64_t task);
void block_sparse_attention_cpu_task(const BlockSparseShape& shape, const BlockSparseTensors& t, const Strides& keys,
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
