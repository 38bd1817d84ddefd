// CUDA kernels of ai.lsg.BlockSparseAttention and ai.lsg.LSGAttention (see
// include/lsg_ops/block_sparse_attention.h). Every operand is read at the shape's strides, so one
// kernel serves both layouts: (n, h, rows, d) tensors, or the projections' (n, G + T, h * d).
//
// Flash-attention style: one thread block per (query tile, head, batch), where a query tile is
// the rows [row0, row0 + kRows) of one LSG block. The thread block first lists the keys its LSG
// block sees and that are visible (globals, left and right compressed windows, the three local
// blocks, through the shared window arithmetic; masked and out-of-range keys never enter the
// list), compacted in shared memory as (row code, mask value). It then streams that list in
// tiles of kKeys keys read straight from the inputs, with an online softmax in float32 (running
// max, running sum, rescaled output accumulator). Nothing of size (blocks, keys) exists in
// global memory and every key a tile holds is visible (only the last tile has padding keys).
//
// Two paths:
// - tensor cores (float16 / bfloat16, head_dim 32, 64, 128): 8 warps (4 for head_dim 128) x 16
//   query rows, 64-key tiles, mma.sync m16n8k16 with float32 accumulators; S = Q K^T and O = P V
//   stay in registers (the S accumulator fragment is the P operand fragment, as in
//   FlashAttention-2); keys and values sit row-major in shared memory and reach the tensor cores
//   through ldmatrix (transposed for V), and (head_dim <= 64) the next tile's keys and values are
//   loaded while the current one is computed;
// - CUDA cores (float32, other head dims, unaligned pointers): 8 threads per query row, 32-key
//   tiles, float32 FMA; exact enough for the float32 contract (1e-4 against PyTorch).
// With global queries (LSGAttention) a second launch computes the G global rows
// (global_query_kernel).
#if defined(LSG_CUDA_EMULATION)  // the kernels on the CPU, for tests: custom_ops/emulation/cuda_emulation.h
#include "cuda_emulation.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define LSG_DYNAMIC_SHARED(name) extern __shared__ float4 name[]
#define LSG_LAUNCH(kernel, grid, threads, smem, stream, ...) kernel<<<grid, threads, smem, stream>>>(__VA_ARGS__)
#endif

#include <climits>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "lsg_ops/block_sparse_attention.h"

namespace lsg {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kListWarps = 8;  // room for the per-warp counts of the key-list compaction

struct Params {
  BlockSparseShape s;
  BlockSparseDeviceTensors t;
  float scale_log2;  // scale * log2(e): scores are kept in base 2 (exp2f)
};

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Rows of the key list are coded in one int: [0, G) globals, [G, G + Ts) compressed tokens,
// [G + Ts, G + Ts + T) tokens (Ts = 0 without a compressed part).
__device__ __forceinline__ int64_t sparse_rows(const BlockSparseShape& s) { return s.has_sparse() ? s.sparse_length : 0; }

// Key and value rows of list code `code` for batch b, head h: globals and tokens at the shape's
// strides, the compressed tokens contiguous (n, h, T/sf, d).
template <typename T>
__device__ __forceinline__ void key_rows(const Params& p, int64_t b, int64_t h, int code, const T*& krow,
                                         const T*& vrow) {
  const BlockSparseShape& s = p.s;
  const int64_t g = s.num_global, ts = sparse_rows(s);
  const void *kbase, *vbase;
  int64_t at;
  if (code < g) {
    kbase = p.t.global_k, vbase = p.t.global_v, at = s.globals.at(b, h, code);
  } else if (code < g + ts) {
    kbase = p.t.sparse_k, vbase = p.t.sparse_v, at = ((b * s.heads + h) * ts + (code - g)) * s.head_dim;
  } else {
    kbase = p.t.k, vbase = p.t.v, at = s.tokens.at(b, h, code - g - ts);
  }
  krow = static_cast<const T*>(kbase) + at;
  vrow = static_cast<const T*>(vbase) + at;
}

// Writes the visible keys of LSG block `block` of (b, h) into codes/biases (capacity
// s.max_keys()), in order globals, left window, right window, local blocks, and returns their
// number (the same in every thread). warp_counts: kListWarps ints of shared memory. Ends with
// a barrier, so the list is readable on return.
template <typename T, int kThreads>
__device__ int build_key_list(const Params& p, int64_t b, int64_t h, int64_t block, int* codes, float* biases,
                              int* warp_counts) {
  static_assert(kThreads % 32 == 0 && kThreads / 32 <= kListWarps, "one count per warp");
  const BlockSparseShape& s = p.s;
  const int g = static_cast<int>(s.num_global);
  const int ts = static_cast<int>(sparse_rows(s));
  KeyRange left{0, 0}, right{0, 0};
  const T* sparse_mask = nullptr;
  if (s.has_sparse()) {
    left = sparse_keys(s, block, 0);
    right = sparse_keys(s, block, 1);
    sparse_mask = static_cast<const T*>(p.t.sparse_mask) +
                  (b * s.sparse_mask_heads + (s.sparse_mask_heads > 1 ? h : 0)) * s.sparse_length;
  }
  const KeyRange local = local_keys(s, block);
  const T* key_mask = static_cast<const T*>(p.t.key_mask) + b * s.length;
  const int num_left = static_cast<int>(left.end - left.begin), num_right = static_cast<int>(right.end - right.begin);
  const int total = g + num_left + num_right + static_cast<int>(local.end - local.begin);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  int count = 0;
  for (int base = 0; base < total; base += kThreads) {
    int j = base + static_cast<int>(threadIdx.x), code = 0;
    float bias = 0.0f;
    bool visible = j < total;
    if (visible) {
      if (j < g) {
        code = j;  // globals: never masked
      } else if ((j -= g) < num_left + num_right) {
        const int64_t row = j < num_left ? left.begin + j : right.begin + (j - num_left);
        code = g + static_cast<int>(row);
        bias = to_float(sparse_mask[row]);
      } else {
        const int64_t row = local.begin + (j - num_left - num_right);
        code = g + ts + static_cast<int>(row);
        bias = to_float(key_mask[row]);
      }
      visible = !is_masked(bias);
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, visible);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int offset = count, chunk = 0;
    for (int w = 0; w < kThreads / 32; ++w) {
      offset += w < warp ? warp_counts[w] : 0;
      chunk += warp_counts[w];
    }
    if (visible) {
      const int at = offset + __popc(ballot & ((1u << lane) - 1u));
      codes[at] = code;
      biases[at] = bias;
    }
    count += chunk;
    __syncthreads();  // warp_counts is rewritten by the next chunk; the list is complete at the end
  }
  return count;
}

// Shared-memory bytes of the key list (codes, then biases) and the compaction counts.
__host__ __device__ inline size_t list_bytes(const BlockSparseShape& s) {
  return static_cast<size_t>(s.max_keys()) * (sizeof(int) + sizeof(float)) + kListWarps * sizeof(int);
}

// ---------------------------------------------------------------------------------------------
// CUDA-core path: float32 math on any element type, head_dim <= 8 * kChunks.

constexpr int kSimtThreads = 256;
constexpr int kSimtRows = 32;  // query rows per thread block: 8 threads per row
constexpr int kSimtKeys = 32;  // keys per tile: 4 per thread for the scores

__host__ __device__ inline size_t simt_tile_floats(int64_t d) {
  // q (rows x d+1), k (keys x d+1), v (keys x d), p (rows x keys+1), bias (keys)
  return kSimtRows * (d + 1) + kSimtKeys * (d + 1) + kSimtKeys * d + kSimtRows * (kSimtKeys + 1) + kSimtKeys;
}

template <typename T, int kChunks>
__global__ void __launch_bounds__(kSimtThreads) simt_kernel(const Params p) {
  LSG_DYNAMIC_SHARED(smem4);
  const BlockSparseShape& s = p.s;
  const int d = static_cast<int>(s.head_dim), bs = static_cast<int>(s.block_size);
  const int tiles = (bs + kSimtRows - 1) / kSimtRows;
  const int64_t block = blockIdx.x / tiles;
  const int row0 = (blockIdx.x % tiles) * kSimtRows;
  const int64_t h = blockIdx.y, b = blockIdx.z, row_stride = s.tokens.row;

  float* qs = reinterpret_cast<float*>(smem4);
  float* ks = qs + kSimtRows * (d + 1);
  float* vs = ks + kSimtKeys * (d + 1);
  float* ps = vs + kSimtKeys * d;
  float* tile_bias = ps + kSimtRows * (kSimtKeys + 1);
  int* codes = reinterpret_cast<int*>(tile_bias + kSimtKeys);
  float* biases = reinterpret_cast<float*>(codes + s.max_keys());
  int* warp_counts = reinterpret_cast<int*>(biases + s.max_keys());

  const T* q = static_cast<const T*>(p.t.q) + s.tokens.at(b, h, block * bs);
  for (int i = threadIdx.x; i < kSimtRows * d; i += kSimtThreads) {
    const int r = i / d, c = i % d;
    qs[r * (d + 1) + c] = row0 + r < bs ? to_float(q[(row0 + r) * row_stride + c]) : 0.0f;
  }
  const int count = build_key_list<T, kSimtThreads>(p, b, h, block, codes, biases, warp_counts);

  const int r = threadIdx.x >> 3, part = threadIdx.x & 7;  // row of this thread, its 1/8 of keys/channels
  float o[kChunks];
#pragma unroll
  for (int m = 0; m < kChunks; ++m) o[m] = 0.0f;
  float row_max = -INFINITY, row_sum = 0.0f;

  for (int t0 = 0; t0 < count; t0 += kSimtKeys) {
    for (int i = threadIdx.x; i < kSimtKeys * d; i += kSimtThreads) {
      const int j = i / d, c = i % d;
      float kx = 0.0f, vx = 0.0f;
      if (t0 + j < count) {
        const T *krow, *vrow;
        key_rows<T>(p, b, h, codes[t0 + j], krow, vrow);
        kx = to_float(krow[c]);
        vx = to_float(vrow[c]);
      }
      ks[j * (d + 1) + c] = kx;
      vs[j * d + c] = vx;
    }
    if (threadIdx.x < kSimtKeys)
      tile_bias[threadIdx.x] = t0 + static_cast<int>(threadIdx.x) < count ? biases[t0 + threadIdx.x] * kLog2e : -INFINITY;
    __syncthreads();

    float score[kSimtKeys / 8];
    float tile_max = -INFINITY;
#pragma unroll
    for (int m = 0; m < kSimtKeys / 8; ++m) {
      const int j = part + 8 * m;
      const float* qrow = qs + r * (d + 1);
      const float* krow = ks + j * (d + 1);
      float dot = 0.0f;
      for (int c = 0; c < d; ++c) dot = fmaf(qrow[c], krow[c], dot);
      score[m] = dot * p.scale_log2 + tile_bias[j];
      tile_max = fmaxf(tile_max, score[m]);
    }
#pragma unroll
    for (int lanes = 1; lanes < 8; lanes <<= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, lanes));
    const float new_max = fmaxf(row_max, tile_max);  // finite: the tile's first key is visible
    const float alpha = exp2f(row_max - new_max);
    row_max = new_max;
    float tile_sum = 0.0f;
#pragma unroll
    for (int m = 0; m < kSimtKeys / 8; ++m) {
      const float weight = exp2f(score[m] - new_max);
      ps[r * (kSimtKeys + 1) + part + 8 * m] = weight;
      tile_sum += weight;
    }
#pragma unroll
    for (int lanes = 1; lanes < 8; lanes <<= 1) tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, lanes);
    row_sum = row_sum * alpha + tile_sum;
    __syncwarp();  // the row's weights come from the 8 lanes of this warp that read them below

    const int keys = min(kSimtKeys, count - t0);
#pragma unroll
    for (int m = 0; m < kChunks; ++m) o[m] *= alpha;
    for (int j = 0; j < keys; ++j) {
      const float weight = ps[r * (kSimtKeys + 1) + j];
      const float* vrow = vs + j * d;
#pragma unroll
      for (int m = 0; m < kChunks; ++m) {
        const int c = part + 8 * m;
        if (c < d) o[m] = fmaf(weight, vrow[c], o[m]);
      }
    }
    __syncthreads();  // before the next tile overwrites ks, vs, tile_bias
  }

  if (row0 + r < bs) {
    const float inv = row_sum > 0.0f ? 1.0f / row_sum : 0.0f;  // no visible key at all: 0
    T* out = static_cast<T*>(p.t.out) + s.tokens.at(b, h, block * bs + row0 + r);
#pragma unroll
    for (int m = 0; m < kChunks; ++m) {
      const int c = part + 8 * m;
      if (c < d) out[c] = from_float<T>(o[m] * inv);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core path: float16 / bfloat16, head_dim D in {32, 64, 128}.

// Warps per thread block: 8 (128 query rows, one thread block per LSG block of 128) where the
// registers allow two such blocks per SM, 4 for head_dim 128. More rows per thread block means
// fewer reads of the same keys.
template <int D>
constexpr int kMmaWarps = D == 128 ? 4 : 8;
template <int D>
constexpr int kMmaBlocksPerSM = D == 128 ? 1 : 2;  // <= 128 registers: 2 x 8 warps per SM (d 128: ~166, 3 x 4)
template <int D>
constexpr int kMmaRows = 16 * kMmaWarps<D>;  // query rows per thread block: 16 per warp
constexpr int kMmaKeys = 64;                 // keys per tile

// Elements per row of the query, key and value tiles: 8 more than D keeps rows 16-byte aligned
// and puts the 8 rows that one ldmatrix phase (or 32-bit fragment read) touches in 32 different
// banks.
template <int D>
constexpr int kKStride = D + 8;
template <int D>
constexpr int kTileRows = kMmaRows<D> > kMmaKeys ? kMmaRows<D> : kMmaKeys;  // the queries, then each key tile

template <int D>
__host__ __device__ constexpr size_t mma_tile_bytes() {
  return (static_cast<size_t>(kTileRows<D>) + kMmaKeys) * kKStride<D> * 2 + kMmaKeys * sizeof(float);
}

__device__ __forceinline__ uint32_t load32(const void* shared) { return *static_cast<const uint32_t*>(shared); }

__device__ __forceinline__ uint32_t pack2(float lo, float hi, __half) {
  const __half2 x = __floats2half2_rn(lo, hi);
  uint32_t word;
  memcpy(&word, &x, sizeof(word));
  return word;
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi, __nv_bfloat16) {
  const __nv_bfloat162 x = __floats2bfloat162_rn(lo, hi);
  uint32_t word;
  memcpy(&word, &x, sizeof(word));
  return word;
}

// c (16 x 8, float32) += a (16 x 16, row-major) . b (16 x 8, column-major), T = __half or __nv_bfloat16
template <typename T>
__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1, T) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define LSG_MMA(TYPE)                                                                                              \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." TYPE "." TYPE                                              \
               ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"                                      \
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                                    \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))
  if constexpr (std::is_same<T, __half>::value) {
    LSG_MMA("f16");
  } else {
    LSG_MMA("bf16");
  }
#undef LSG_MMA
#elif defined(LSG_CUDA_EMULATION)
  LSG_MMA_EMULATED(T, c, a, b0, b1);
#else
  __trap();
#endif
}

// Four 8 x 8 matrices of 16-bit elements from shared memory: lane L gives the address of row L % 8
// of matrix L / 8; register i receives matrix i's elements (row L / 4, columns 2(L % 4), +1), or
// with `trans` (rows 2(L % 4), +1, column L / 4): the mma fragments of a row-major tile (A, or B
// stored n-major) and of a B operand stored k-major.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row, bool trans) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if (trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
#elif defined(LSG_CUDA_EMULATION)
  LSG_LDMATRIX_EMULATED(r, row, trans);
#else
  __trap();
#endif
}

// Fragment layouts of mma.m16n8k16 (PTX ISA), with g = lane / 4 and t = lane % 4:
//   A (16 x 16): a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..)
//   B (16 x 8):  b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C (16 x 8):  c[0..1] = (g, 2t..2t+1), c[2..3] = (g+8, 2t..2t+1)
template <typename T, int D>
__global__ void __launch_bounds__(32 * kMmaWarps<D>, kMmaBlocksPerSM<D>) mma_kernel(const Params p) {
  constexpr int kThreads = 32 * kMmaWarps<D>, kRows = kMmaRows<D>, kStride = kKStride<D>;
  constexpr int kVectors = D / 8;                            // 16-byte vectors per row
  constexpr int kPerThread = kMmaKeys * kVectors / kThreads;  // key (and value) vectors per thread per tile
  static_assert(kMmaKeys * kVectors % kThreads == 0, "whole vectors per thread");
  constexpr bool kPrefetch = kPerThread <= 4;  // registers for the next tile (not with head_dim 128)
  LSG_DYNAMIC_SHARED(smem4);
  const BlockSparseShape& s = p.s;
  const int bs = static_cast<int>(s.block_size);
  const int tiles = (bs + kRows - 1) / kRows;
  const int64_t block = blockIdx.x / tiles;
  const int row0 = (blockIdx.x % tiles) * kRows;
  const int64_t h = blockIdx.y, b = blockIdx.z, row_stride = s.tokens.row;

  T* ks = reinterpret_cast<T*>(smem4);     // kTileRows x kStride: the queries first, then each key tile
  T* vs = ks + kTileRows<D> * kStride;     // kMmaKeys x kStride: the value tile
  float* tile_bias = reinterpret_cast<float*>(vs + kMmaKeys * kStride);
  int* codes = reinterpret_cast<int*>(tile_bias + kMmaKeys);
  float* biases = reinterpret_cast<float*>(codes + s.max_keys());
  int* warp_counts = reinterpret_cast<int*>(biases + s.max_keys());

  const T* q = static_cast<const T*>(p.t.q) + s.tokens.at(b, h, block * bs);
  for (int i = threadIdx.x; i < kRows * kVectors; i += kThreads) {
    const int r = i / kVectors, c = (i % kVectors) * 8;
    float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (row0 + r < bs) x = __ldg(reinterpret_cast<const float4*>(q + (row0 + r) * row_stride + c));
    *reinterpret_cast<float4*>(ks + r * kStride + c) = x;
  }
  const int count = build_key_list<T, kThreads>(p, b, h, block, codes, biases, warp_counts);

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  uint32_t qf[D / 16][4];
  {
    const T* q0 = ks + (warp * 16 + g) * kStride + 2 * t;
    const T* q1 = q0 + 8 * kStride;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      qf[kk][0] = load32(q0 + kk * 16);
      qf[kk][1] = load32(q1 + kk * 16);
      qf[kk][2] = load32(q0 + kk * 16 + 8);
      qf[kk][3] = load32(q1 + kk * 16 + 8);
    }
  }

  // The next tile's keys and values travel in registers while the current tile is computed
  // (kPrefetch): thread i holds vectors i, i + kThreads, ... of the tile (key j = i / kVectors).
  float4 next_k[kPerThread], next_v[kPerThread];
  auto fetch = [&](int t0) {
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
      const int i = threadIdx.x + e * kThreads, j = i / kVectors, c = (i % kVectors) * 8;
      next_k[e] = next_v[e] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);  // padding keys: zeros (never NaN)
      if (t0 + j < count) {
        const T *krow, *vrow;
        key_rows<T>(p, b, h, codes[t0 + j], krow, vrow);
        next_k[e] = __ldg(reinterpret_cast<const float4*>(krow + c));
        next_v[e] = __ldg(reinterpret_cast<const float4*>(vrow + c));
      }
    }
  };
  if (kPrefetch && count > 0) fetch(0);
  __syncthreads();  // the query tile is in registers: ks now holds keys

  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float max0 = -INFINITY, max1 = -INFINITY, sum0 = 0.0f, sum1 = 0.0f;  // rows g and g + 8

  for (int t0 = 0; t0 < count; t0 += kMmaKeys) {
    if (!kPrefetch) fetch(t0);
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
      const int i = threadIdx.x + e * kThreads, j = i / kVectors, c = (i % kVectors) * 8;
      *reinterpret_cast<float4*>(ks + j * kStride + c) = next_k[e];
      *reinterpret_cast<float4*>(vs + j * kStride + c) = next_v[e];
    }
    if (threadIdx.x < kMmaKeys)
      tile_bias[threadIdx.x] = t0 + static_cast<int>(threadIdx.x) < count ? biases[t0 + threadIdx.x] * kLog2e : -INFINITY;
    __syncthreads();
    if (kPrefetch && t0 + kMmaKeys < count) fetch(t0 + kMmaKeys);

    // S = Q K^T: 16 rows x 64 keys per warp. One ldmatrix.x4 gives the B fragments of key
    // groups n and n + 1: its matrices are (keys of n, channels kk*16 + 0..7 | + 8..15), then n + 1.
    float sc[kMmaKeys / 8][4];
#pragma unroll
    for (int n = 0; n < kMmaKeys / 8; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
#pragma unroll
    for (int n = 0; n < kMmaKeys / 8; n += 2) {
      const T* rows = ks + ((n + (lane >> 4)) * 8 + (lane & 7)) * kStride + ((lane >> 3) & 1) * 8;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t b[4];
        ldmatrix_x4(b, rows + kk * 16, false);
        mma16816(sc[n], qf[kk], b[0], b[1], T());
        mma16816(sc[n + 1], qf[kk], b[2], b[3], T());
      }
    }

    // online softmax, base 2; the 4 lanes of a group share rows g and g + 8
    float tile0 = -INFINITY, tile1 = -INFINITY;
#pragma unroll
    for (int n = 0; n < kMmaKeys / 8; ++n) {
      const float bias_a = tile_bias[n * 8 + 2 * t], bias_b = tile_bias[n * 8 + 2 * t + 1];
      sc[n][0] = sc[n][0] * p.scale_log2 + bias_a;
      sc[n][1] = sc[n][1] * p.scale_log2 + bias_b;
      sc[n][2] = sc[n][2] * p.scale_log2 + bias_a;
      sc[n][3] = sc[n][3] * p.scale_log2 + bias_b;
      tile0 = fmaxf(tile0, fmaxf(sc[n][0], sc[n][1]));
      tile1 = fmaxf(tile1, fmaxf(sc[n][2], sc[n][3]));
    }
#pragma unroll
    for (int lanes = 1; lanes < 4; lanes <<= 1) {
      tile0 = fmaxf(tile0, __shfl_xor_sync(0xffffffffu, tile0, lanes));
      tile1 = fmaxf(tile1, __shfl_xor_sync(0xffffffffu, tile1, lanes));
    }
    const float new0 = fmaxf(max0, tile0), new1 = fmaxf(max1, tile1);  // finite: key t0 is visible
    const float alpha0 = exp2f(max0 - new0), alpha1 = exp2f(max1 - new1);
    max0 = new0;
    max1 = new1;
    float part0 = 0.0f, part1 = 0.0f;  // this lane's share of the row sums, reduced at the end
#pragma unroll
    for (int n = 0; n < kMmaKeys / 8; ++n) {
      sc[n][0] = exp2f(sc[n][0] - new0);
      sc[n][1] = exp2f(sc[n][1] - new0);
      sc[n][2] = exp2f(sc[n][2] - new1);
      sc[n][3] = exp2f(sc[n][3] - new1);
      part0 += sc[n][0] + sc[n][1];
      part1 += sc[n][2] + sc[n][3];
    }
    sum0 = sum0 * alpha0 + part0;
    sum1 = sum1 * alpha1 + part1;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      o[n][0] *= alpha0;
      o[n][1] *= alpha0;
      o[n][2] *= alpha1;
      o[n][3] *= alpha1;
    }

    // O += P V: the S fragments of keys [16kc, 16kc + 16) are the A fragment of P
    const int chunks = (min(kMmaKeys, count - t0) + 15) / 16;  // chunks of padding keys only: skipped
#pragma unroll
    for (int kc = 0; kc < kMmaKeys / 16; ++kc) {
      if (kc >= chunks) break;
      const uint32_t a[4] = {pack2(sc[2 * kc][0], sc[2 * kc][1], T()), pack2(sc[2 * kc][2], sc[2 * kc][3], T()),
                             pack2(sc[2 * kc + 1][0], sc[2 * kc + 1][1], T()),
                             pack2(sc[2 * kc + 1][2], sc[2 * kc + 1][3], T())};
      // transposed ldmatrix.x4: matrices (keys 16kc + 0..7 | + 8..15, channels of n), then n + 1
      const T* rows = vs + (kc * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * kStride + (lane >> 4) * 8;
#pragma unroll
      for (int n = 0; n < D / 8; n += 2) {
        uint32_t b[4];
        ldmatrix_x4(b, rows + n * 8, true);
        mma16816(o[n], a, b[0], b[1], T());
        mma16816(o[n + 1], a, b[2], b[3], T());
      }
    }
    __syncthreads();  // before the next tile overwrites ks, vs, tile_bias
  }

#pragma unroll
  for (int lanes = 1; lanes < 4; lanes <<= 1) {
    sum0 += __shfl_xor_sync(0xffffffffu, sum0, lanes);
    sum1 += __shfl_xor_sync(0xffffffffu, sum1, lanes);
  }
  const float inv0 = sum0 > 0.0f ? 1.0f / sum0 : 0.0f, inv1 = sum1 > 0.0f ? 1.0f / sum1 : 0.0f;  // no key: 0
  const int r0 = row0 + warp * 16 + g, r1 = r0 + 8;
  T* out = static_cast<T*>(p.t.out) + s.tokens.at(b, h, block * bs) + 2 * t;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    if (r0 < bs) *reinterpret_cast<uint32_t*>(out + r0 * row_stride + n * 8) = pack2(o[n][0] * inv0, o[n][1] * inv0, T());
    if (r1 < bs) *reinterpret_cast<uint32_t*>(out + r1 * row_stride + n * 8) = pack2(o[n][2] * inv1, o[n][3] * inv1, T());
  }
}

// ---------------------------------------------------------------------------------------------
// Global queries (shape.global_queries): each of the G global query rows attends densely to all
// G + T keys (globals never masked, tokens through key_mask). One thread block per (global query,
// head, batch): its warps take every kGlobalWarps-th key, the lanes split head_dim (lane l holds
// channels l, l + 32, ...), the dot product is a warp reduction, and each warp keeps an online
// softmax in float32 (base 2) that the warps merge in shared memory at the end. These rows are
// G / (G + T) of the output with G small: simple rather than fast.

constexpr int kGlobalWarps = 8;
constexpr int kGlobalChunks = 4;  // channels per lane: head_dim <= 128

// shared memory: each warp's running max and sum, then its accumulator (kGlobalWarps x d)
__host__ __device__ inline size_t global_smem_floats(int64_t d) { return kGlobalWarps * (d + 2); }

template <typename T>
__global__ void __launch_bounds__(32 * kGlobalWarps) global_query_kernel(const Params p) {
  LSG_DYNAMIC_SHARED(smem4);
  const BlockSparseShape& s = p.s;
  const int d = static_cast<int>(s.head_dim);
  const int64_t query = blockIdx.x, h = blockIdx.y, b = blockIdx.z, g = s.num_global;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  const T* q = static_cast<const T*>(p.t.global_q) + s.globals.at(b, h, query);
  float qr[kGlobalChunks], o[kGlobalChunks];
#pragma unroll
  for (int m = 0; m < kGlobalChunks; ++m) {
    const int c = lane + 32 * m;
    qr[m] = c < d ? to_float(q[c]) * p.scale_log2 : 0.0f;
    o[m] = 0.0f;
  }
  float row_max = -INFINITY, row_sum = 0.0f;
  const T* key_mask = static_cast<const T*>(p.t.key_mask) + b * s.length;
  for (int64_t j = warp; j < g + s.length; j += kGlobalWarps) {
    float bias = 0.0f;
    const T *krow, *vrow;
    if (j < g) {
      krow = static_cast<const T*>(p.t.global_k) + s.globals.at(b, h, j);
      vrow = static_cast<const T*>(p.t.global_v) + s.globals.at(b, h, j);
    } else {
      bias = to_float(key_mask[j - g]);
      if (is_masked(bias)) continue;  // one key for the whole warp: it skips it together
      krow = static_cast<const T*>(p.t.k) + s.tokens.at(b, h, j - g);
      vrow = static_cast<const T*>(p.t.v) + s.tokens.at(b, h, j - g);
    }
    float dot = 0.0f;
#pragma unroll
    for (int m = 0; m < kGlobalChunks; ++m) {
      const int c = lane + 32 * m;
      if (c < d) dot = fmaf(qr[m], to_float(krow[c]), dot);
    }
#pragma unroll
    for (int lanes = 16; lanes >= 1; lanes >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, lanes);
    const float score = dot + bias * kLog2e;  // the same in every lane (butterfly sums are symmetric)
    const float new_max = fmaxf(row_max, score);
    const float alpha = exp2f(row_max - new_max), weight = exp2f(score - new_max);
    row_max = new_max;
    row_sum = row_sum * alpha + weight;
#pragma unroll
    for (int m = 0; m < kGlobalChunks; ++m) {
      const int c = lane + 32 * m;
      if (c < d) o[m] = fmaf(weight, to_float(vrow[c]), o[m] * alpha);
    }
  }

  float* maxes = reinterpret_cast<float*>(smem4);
  float* sums = maxes + kGlobalWarps;
  float* accs = sums + kGlobalWarps;
  if (lane == 0) maxes[warp] = row_max, sums[warp] = row_sum;
#pragma unroll
  for (int m = 0; m < kGlobalChunks; ++m) {
    const int c = lane + 32 * m;
    if (c < d) accs[warp * d + c] = o[m];
  }
  __syncthreads();
  float top = -INFINITY;
  for (int w = 0; w < kGlobalWarps; ++w) top = fmaxf(top, maxes[w]);
  T* out = static_cast<T*>(p.t.global_out) + s.globals.at(b, h, query);
  for (int c = threadIdx.x; c < d; c += 32 * kGlobalWarps) {
    float sum = 0.0f, acc = 0.0f;
    for (int w = 0; w < kGlobalWarps; ++w) {
      if (!(sums[w] > 0.0f)) continue;  // a warp that saw no key (its max is -inf)
      const float factor = exp2f(maxes[w] - top);
      sum += sums[w] * factor;
      acc += accs[w * d + c] * factor;
    }
    out[c] = from_float<T>(sum > 0.0f ? acc / sum : 0.0f);  // no visible key at all: 0
  }
}

// ---------------------------------------------------------------------------------------------
// Host side

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

// Every row start of an operand at these strides keeps a 16-byte aligned base 16-byte aligned.
bool aligned16(const Strides& st, size_t element_bytes) {
  return (st.batch * element_bytes) % 16 == 0 && (st.head * element_bytes) % 16 == 0 &&
         (st.row * element_bytes) % 16 == 0;
}

template <typename Kernel>
const char* launch(Kernel kernel, const Params& params, int rows_per_cta, int threads, size_t smem, cudaStream_t stream) {
  const BlockSparseShape& s = params.s;
  int device = 0, max_smem = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  if (smem > static_cast<size_t>(max_smem))
    return "BlockSparseAttention (CUDA): too many keys per block (num_global + 2 sparse_block_size + 3 block_size) "
           "for this GPU's shared memory";
  if (smem > 48 * 1024) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return cudaGetErrorString(err);
  }
  const int64_t tiles = (s.block_size + rows_per_cta - 1) / rows_per_cta;
  if (s.num_blocks() * tiles > INT_MAX || s.heads > 65535 || s.batch > 65535)
    return "BlockSparseAttention (CUDA): more than 65535 heads or batch rows, or too many blocks";
  const dim3 grid(static_cast<unsigned>(s.num_blocks() * tiles), static_cast<unsigned>(s.heads),
                  static_cast<unsigned>(s.batch));
  LSG_LAUNCH(kernel, grid, threads, smem, stream, params);
  err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <typename T, int D>
const char* launch_mma(const Params& params, cudaStream_t stream) {
  return launch(mma_kernel<T, D>, params, kMmaRows<D>, 32 * kMmaWarps<D>, mma_tile_bytes<D>() + list_bytes(params.s),
                stream);
}

template <typename T>
const char* launch_mma(const Params& params, cudaStream_t stream) {
  switch (params.s.head_dim) {
    case 32:
      return launch_mma<T, 32>(params, stream);
    case 64:
      return launch_mma<T, 64>(params, stream);
    default:
      return launch_mma<T, 128>(params, stream);
  }
}

template <typename T>
const char* launch_simt(const Params& params, cudaStream_t stream) {
  const int64_t d = params.s.head_dim;
  const size_t smem = simt_tile_floats(d) * sizeof(float) + list_bytes(params.s);
  if (d <= 32) return launch(simt_kernel<T, 4>, params, kSimtRows, kSimtThreads, smem, stream);
  if (d <= 64) return launch(simt_kernel<T, 8>, params, kSimtRows, kSimtThreads, smem, stream);
  return launch(simt_kernel<T, 16>, params, kSimtRows, kSimtThreads, smem, stream);
}

template <typename T>
const char* launch_global(const Params& params, cudaStream_t stream) {
  const BlockSparseShape& s = params.s;
  if (s.num_global > INT_MAX || s.heads > 65535 || s.batch > 65535)
    return "LSGAttention (CUDA): more than 65535 heads or batch rows, or too many global tokens";
  const dim3 grid(static_cast<unsigned>(s.num_global), static_cast<unsigned>(s.heads), static_cast<unsigned>(s.batch));
  LSG_LAUNCH(global_query_kernel<T>, grid, 32 * kGlobalWarps, global_smem_floats(s.head_dim) * sizeof(float), stream,
             params);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// The block rows (when T > 0), then the global rows (global_queries, G > 0), on one stream.
template <typename T>
const char* launch_op(const Params& params, bool tensor_cores, cudaStream_t stream) {
  const char* error = nullptr;
  if (params.s.num_block_tasks() > 0) {
    if constexpr (std::is_same<T, float>::value) {
      error = launch_simt<T>(params, stream);
    } else {
      error = tensor_cores ? launch_mma<T>(params, stream) : launch_simt<T>(params, stream);
    }
  }
  if (error == nullptr && params.s.global_queries && params.s.num_global > 0) error = launch_global<T>(params, stream);
  return error;
}

}  // namespace

const char* block_sparse_attention_cuda(const BlockSparseShape& shape, const BlockSparseDeviceTensors& tensors,
                                        ElementType type, void* stream) {
  if (shape.num_tasks() == 0 || shape.head_dim == 0) return nullptr;  // an empty output
  if (shape.head_dim > 128) return "BlockSparseAttention (CUDA): head_dim above 128 is not supported";
  if (shape.max_keys() > INT_MAX / 2 || shape.length + shape.num_global + shape.sparse_length > INT_MAX)
    return "BlockSparseAttention (CUDA): sequence too long";
  Params params;
  params.s = shape;
  params.t = tensors;
  params.scale_log2 = shape.scale * kLog2e;
  cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);

  // the tensor-core path reads 16-byte vectors of q, k, v and the globals (the global rows'
  // kernel reads single elements): every row start must be 16-byte aligned
  const int64_t d = shape.head_dim;
  const void* pointers[] = {tensors.q, tensors.k, tensors.v, tensors.global_k, tensors.global_v,
                            tensors.sparse_k, tensors.sparse_v, tensors.out};
  bool tensor_cores = type != ElementType::kFloat32 && (d == 32 || d == 64 || d == 128) &&
                      aligned16(shape.tokens, 2) && (shape.num_global == 0 || aligned16(shape.globals, 2));
  for (const void* ptr : pointers) tensor_cores = tensor_cores && aligned16(ptr);  // null counts as aligned
  switch (type) {
    case ElementType::kFloat32:
      return launch_op<float>(params, false, cuda_stream);
    case ElementType::kFloat16:
      return launch_op<__half>(params, tensor_cores, cuda_stream);
    case ElementType::kBFloat16:
      return launch_op<__nv_bfloat16>(params, tensor_cores, cuda_stream);
  }
  return "BlockSparseAttention (CUDA): unknown element type";
}

}  // namespace lsg
