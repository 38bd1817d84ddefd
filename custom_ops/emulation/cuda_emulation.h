// A CPU emulation of the few CUDA features src/block_sparse_attention_cuda.cu uses, so that the
// kernels themselves (key lists, tiles, online softmax, mma fragment layouts, prefetching) run and
// are checked against PyTorch on a machine without a GPU (tests/test_cuda_op.py). Not a product
// path: it is compiled only with -DLSG_CUDA_EMULATION, as C++20, by lsg_export/ops/cuda_harness.py.
//
// Every CUDA thread of a thread block is a coroutine (ucontext) of one OS thread; the blocks of a
// grid run one after another. A thread runs until it reaches a barrier (__syncthreads, or a warp
// operation: __syncwarp, shuffles, ballots, mma), and a barrier opens when every live thread of
// its block (or of its warp) waits at it. Warp operations exchange values through a per-warp
// buffer between two warp barriers. mma.m16n8k16 reads its A, B and C fragments at the positions
// the PTX ISA gives (groupID = lane / 4, threadID_in_group = lane % 4), and ldmatrix fills them
// as the ISA says, so a kernel that puts its operands elsewhere computes wrong results here too. Dynamic shared memory starts as NaN bytes,
// so reading what no thread wrote shows.
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float4 __ldg(const float4* p) { return *p; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
[[noreturn]] inline void __trap() { std::abort(); }

// --- float16 / bfloat16 (bits only; conversions round to nearest even) -------------------------

namespace lsg {
void half_to_float(const uint16_t* src, float* dst, size_t count);  // block_sparse_attention_cpu.cc
void float_to_half(const float* src, uint16_t* dst, size_t count);
}  // namespace lsg

struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
struct __half2 {
  __half x, y;
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
inline float __half2float(__half h) {
  float f;
  lsg::half_to_float(&h.bits, &f, 1);
  return f;
}
inline __half __float2half_rn(float f) {
  __half h;
  lsg::float_to_half(&f, &h.bits, 1);
  return h;
}
inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t bits = static_cast<uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return __nv_bfloat16{static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16)};
}
inline __half2 __floats2half2_rn(float lo, float hi) { return __half2{__float2half_rn(lo), __float2half_rn(hi)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}

// --- the scheduler -----------------------------------------------------------------------------

namespace emu {

enum Wait { kRunning, kBlockBarrier, kWarpBarrier, kDone };

struct Thread {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  dim3 index;
  Wait wait = kRunning;
};

struct WarpBuffer {  // what the lanes of one warp exchange
  uint32_t words[32][6];
  float floats[32];
  const uint16_t* rows[32];
};

struct Block {
  std::vector<Thread> threads;
  std::vector<WarpBuffer> warps;
  std::vector<unsigned char> shared;
  ucontext_t scheduler;
  int current = 0;
  dim3 block_index, block_dim, grid_dim;
  std::function<void()> body;
};

inline Block*& block() {
  static Block* current = nullptr;
  return current;
}
inline Thread& thread() { return block()->threads[block()->current]; }
inline int lane() { return block()->current & 31; }
inline WarpBuffer& warp_buffer() { return block()->warps[block()->current >> 5]; }

inline void wait(Wait kind) {
  Block& b = *block();
  b.threads[b.current].wait = kind;
  swapcontext(&b.threads[b.current].context, &b.scheduler);
}

inline void entry() {
  block()->body();
  wait(kDone);
}

// Runs one thread block to the end: every thread until it waits, then opens the barriers that
// every live thread of the block (or warp) has reached.
inline void run_block(Block& b) {
  const int n = static_cast<int>(b.threads.size());
  for (int i = 0; i < n; ++i) {
    Thread& t = b.threads[i];
    t.stack.reset(new char[1 << 16]);
    getcontext(&t.context);
    t.context.uc_stack.ss_sp = t.stack.get();
    t.context.uc_stack.ss_size = 1 << 16;
    t.context.uc_link = nullptr;
    makecontext(&t.context, entry, 0);
  }
  block() = &b;
  for (;;) {
    for (int i = 0; i < n; ++i) {
      if (b.threads[i].wait != kRunning) continue;
      b.current = i;
      swapcontext(&b.scheduler, &b.threads[i].context);
    }
    int done = 0, at_block = 0;
    for (const Thread& t : b.threads) done += t.wait == kDone, at_block += t.wait == kBlockBarrier;
    if (done == n) break;
    bool opened = false;
    if (at_block + done == n && at_block > 0) {
      for (Thread& t : b.threads)
        if (t.wait == kBlockBarrier) t.wait = kRunning;
      opened = true;
    }
    for (int w = 0; w * 32 < n; ++w) {
      int waiting = 0, live = 0;
      for (int i = w * 32; i < n && i < w * 32 + 32; ++i) {
        live += b.threads[i].wait != kDone;
        waiting += b.threads[i].wait == kWarpBarrier;
      }
      if (live > 0 && waiting == live) {
        for (int i = w * 32; i < n && i < w * 32 + 32; ++i)
          if (b.threads[i].wait == kWarpBarrier) b.threads[i].wait = kRunning;
        opened = true;
      }
    }
    if (!opened) {
      std::fprintf(stderr, "cuda emulation: deadlock (threads waiting at different barriers)\n");
      std::abort();
    }
  }
  block() = nullptr;
}

template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, dim3 threads, size_t shared_bytes, Args... args) {
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        Block b;
        b.block_index = dim3(x, y, z);
        b.block_dim = threads;
        b.grid_dim = grid;
        b.threads.resize(threads.x * threads.y * threads.z);
        for (unsigned i = 0; i < b.threads.size(); ++i) b.threads[i].index = dim3(i % threads.x, i / threads.x, 0);
        b.warps.resize((b.threads.size() + 31) / 32);
        b.shared.assign(shared_bytes + 16, 0xFF);  // NaN floats until written
        b.body = [&] { kernel(args...); };
        run_block(b);
      }
}

template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(block()->shared.data());
}

// --- warp operations ---------------------------------------------------------------------------

inline void warp_barrier() { wait(kWarpBarrier); }

inline float shfl_xor(float value, int lane_mask) {
  warp_buffer().floats[lane()] = value;
  warp_barrier();
  const float other = warp_buffer().floats[lane() ^ lane_mask];
  warp_barrier();
  return other;
}

inline unsigned ballot(bool predicate) {
  warp_buffer().words[lane()][0] = predicate;
  warp_barrier();
  unsigned bits = 0;
  for (int i = 0; i < 32; ++i) bits |= (warp_buffer().words[i][0] ? 1u : 0u) << i;
  warp_barrier();
  return bits;
}

template <typename T>
float element(uint32_t word, int half) {
  T x{static_cast<uint16_t>(half ? word >> 16 : word & 0xFFFFu)};
  if constexpr (std::is_same<T, __half>::value) return __half2float(x);
  else return __bfloat162float(x);
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: lane L holds A as a[0..3], B as b0, b1 and
// its C/D elements c[0..3], at the PTX ISA's fragment positions.
template <typename T>
void mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  WarpBuffer& w = warp_buffer();
  for (int r = 0; r < 4; ++r) w.words[lane()][r] = a[r];
  w.words[lane()][4] = b0;
  w.words[lane()][5] = b1;
  warp_barrier();
  auto a_at = [&](int row, int col) {  // A: a[0] (g, 2t..) a[1] (g+8, 2t..) a[2] (g, 2t+8..) a[3] (g+8, 2t+8..)
    const int holder = (row % 8) * 4 + (col % 8) / 2, reg = (row >= 8 ? 1 : 0) + (col >= 8 ? 2 : 0);
    return element<T>(w.words[holder][reg], col % 2);
  };
  auto b_at = [&](int k, int n) {  // B: b0 (k 2t..2t+1, n g), b1 (k 2t+8..2t+9, n g)
    const int holder = n * 4 + (k % 8) / 2;
    return element<T>(w.words[holder][4 + (k >= 8 ? 1 : 0)], k % 2);
  };
  float d[4];
  for (int i = 0; i < 4; ++i) {  // C: c[0..1] (g, 2t..2t+1), c[2..3] (g+8, 2t..2t+1)
    const int row = lane() / 4 + (i >= 2 ? 8 : 0), col = (lane() % 4) * 2 + i % 2;
    float sum = c[i];
    for (int k = 0; k < 16; ++k) sum += a_at(row, k) * b_at(k, col);
    d[i] = sum;
  }
  warp_barrier();
  for (int i = 0; i < 4; ++i) c[i] = d[i];
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane L gives row L % 8 of matrix L / 8;
// register i of lane L receives matrix i's (row L / 4, columns 2(L % 4) + 0..1), or with trans
// (rows 2(L % 4) + 0..1, column L / 4); the lower half holds the first element.
inline void ldmatrix_x4(uint32_t r[4], const void* row, bool trans) {
  WarpBuffer& w = warp_buffer();
  w.rows[lane()] = static_cast<const uint16_t*>(row);
  warp_barrier();
  const int l = lane();
  for (int i = 0; i < 4; ++i) {
    uint16_t e[2];
    for (int h = 0; h < 2; ++h)
      e[h] = trans ? w.rows[i * 8 + 2 * (l % 4) + h][l / 4] : w.rows[i * 8 + l / 4][2 * (l % 4) + h];
    r[i] = static_cast<uint32_t>(e[0]) | static_cast<uint32_t>(e[1]) << 16;
  }
  warp_barrier();
}

}  // namespace emu

#define threadIdx (::emu::thread().index)
#define blockIdx (::emu::block()->block_index)
#define blockDim (::emu::block()->block_dim)
#define gridDim (::emu::block()->grid_dim)
inline void __syncthreads() { emu::wait(emu::kBlockBarrier); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_barrier(); }
inline float __shfl_xor_sync(unsigned, float value, int lane_mask) { return emu::shfl_xor(value, lane_mask); }
inline unsigned __ballot_sync(unsigned, bool predicate) { return emu::ballot(predicate); }

// --- the runtime calls of the launcher ---------------------------------------------------------

typedef void* cudaStream_t;
enum cudaError_t { cudaSuccess = 0 };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
inline cudaError_t cudaGetDevice(int* device) { return *device = 0, cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) { return *value = 227 * 1024, cudaSuccess; }
template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel, cudaFuncAttribute, int) { return cudaSuccess; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "no error"; }

#define LSG_DYNAMIC_SHARED(name) float4* name = ::emu::dynamic_shared<float4>()
#define LSG_LAUNCH(kernel, grid, threads, smem, stream, ...) ::emu::launch(kernel, grid, threads, smem, __VA_ARGS__)
#define LSG_MMA_EMULATED(T, c, a, b0, b1) ::emu::mma16816<T>(c, a, b0, b1)
#define LSG_LDMATRIX_EMULATED(r, row, trans) ::emu::ldmatrix_x4(r, row, trans)
