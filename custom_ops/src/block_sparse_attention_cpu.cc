// CPU kernel of ai.lsg.BlockSparseAttention (float32 math; see include/lsg_ops/block_sparse_attention.h).
//
// One task = one (batch, head, block) of bs queries. Its keys are streamed in place, in order
// (globals, left compressed window, right compressed window, the three local blocks), in tiles of
// at most kTile visible keys: masked and out-of-range keys are skipped while a tile is gathered,
// the tile's keys are transposed into a small per-thread buffer (values are read in place through
// row pointers), and an online softmax (running max m, running sum l, rescaled output
// accumulator o) folds each tile in. Nothing of size (blocks, keys) is ever materialised and
// the per-thread scratch is allocated once and reused by every task that thread runs.
//
// Inner loops are fixed-size register tiles (6 query rows x 16 keys for the scores, 6 rows x 16
// channels for P.V) that the compiler vectorises; exp is a branch-free polynomial (Cephes expf,
// relative error ~2e-7) that vectorises too.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "lsg_ops/block_sparse_attention.h"

namespace lsg {
namespace {

constexpr int kTile = 128;  // visible keys per tile (multiple of kCols)
constexpr int kRows = 6;    // query rows per register tile: 12 accumulators + 2 keys + 1 broadcast = 15 AVX2 registers
constexpr int kCols = 16;   // keys (scores) or channels (P.V) per register tile

// 8 floats: one AVX register with -march=native, two SSE registers otherwise (GCC/Clang vector
// extension: no intrinsics, so the file builds on any target those compilers have).
typedef float vf8 __attribute__((vector_size(32)));
inline vf8 load8(const float* p) {
  vf8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store8(float* p, vf8 v) { std::memcpy(p, &v, sizeof(v)); }
inline vf8 splat8(float x) { return vf8{x, x, x, x, x, x, x, x}; }

inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : x;  // exp(-87) ~ 1.6e-38: weights that small are 0 to every sum
  x = x > 88.0f ? 88.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float t = x * 1.44269504088896341f + magic;
  const float n = t - magic;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &t, sizeof(bits));
  bits = (bits - 0x4B400000 + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// fast_exp on 8 lanes at once (same arithmetic).
typedef int32_t vi8 __attribute__((vector_size(32)));
inline vf8 fast_exp8(vf8 x) {
  const vf8 lo = splat8(-87.0f), hi = splat8(88.0f), magic = splat8(12582912.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vf8 t = x * splat8(1.44269504088896341f) + magic;
  const vf8 n = t - magic;
  vf8 r = x - n * splat8(0.693359375f);
  r = r - n * splat8(-2.12194440e-4f);
  vf8 p = splat8(1.9875691500e-4f);
  p = p * r + splat8(1.3981999507e-3f);
  p = p * r + splat8(8.3334519073e-3f);
  p = p * r + splat8(4.1665795894e-2f);
  p = p * r + splat8(1.6666665459e-1f);
  p = p * r + splat8(5.0000001201e-1f);
  p = p * r * r + r + splat8(1.0f);
  vi8 bits = (vi8)t;  // GCC/Clang vector cast: a bit cast
  bits = (bits - 0x4B400000 + 127) << 23;
  return p * (vf8)bits;
}

struct Scratch {
  int64_t bs = -1, d = -1;
  std::vector<float> q;       // (bs, d) scaled queries
  std::vector<float> kt;      // (d, kTile) transposed keys of the tile
  std::vector<float> bias;    // (kTile) additive mask of the tile's keys
  std::vector<const float*> vrows;  // (kTile) value rows of the tile's keys, read in place
  std::vector<float> s;       // (bs, kTile) scores, then weights
  std::vector<float> o;       // (bs, d) running output
  std::vector<float> m, l;    // (bs) running max and sum

  void reserve(int64_t block_size, int64_t head_dim) {
    if (block_size == bs && head_dim == d) return;
    bs = block_size;
    d = head_dim;
    const int64_t rows = (bs + kRows - 1) / kRows * kRows;  // register tiles may overrun bs
    q.assign(rows * d, 0.0f);
    kt.assign(d * kTile, 0.0f);
    bias.assign(kTile, 0.0f);
    vrows.assign(kTile, nullptr);
    s.assign(rows * kTile, 0.0f);
    o.assign(rows * d, 0.0f);
    m.assign(rows, 0.0f);
    l.assign(rows, 0.0f);
  }
};

Scratch& thread_scratch() {
  static thread_local Scratch scratch;
  return scratch;
}

// kRows x kCols float32 accumulators held in registers (two 8-lane vectors per row), updated by
// rank-1 products: the one inner loop of both Q.K^T and P.V.
struct RegisterTile {
  vf8 acc[kRows][2];

  void load(const float* p, int64_t stride) {
    for (int r = 0; r < kRows; ++r) acc[r][0] = load8(p + r * stride), acc[r][1] = load8(p + r * stride + 8);
  }
  void store(float* p, int64_t stride) const {
    for (int r = 0; r < kRows; ++r) store8(p + r * stride, acc[r][0]), store8(p + r * stride + 8, acc[r][1]);
  }
  // acc[r] += x[r * x_stride] * (y0 | y1)
  void add(const float* x, int64_t x_stride, vf8 y0, vf8 y1) {
    for (int r = 0; r < kRows; ++r) {
      const vf8 xr = splat8(x[r * x_stride]);
      acc[r][0] += xr * y0;
      acc[r][1] += xr * y1;
    }
  }
};
static_assert(kCols == 16, "a register tile row is two 8-lane vectors");

// s[r][j] = bias[j] + sum_c q[r][c] * kt[c][j] for all rows and j < round_up(count, kCols).
void tile_scores(Scratch& w, int64_t rows, int64_t d, int count) {
  const int cols = (count + kCols - 1) / kCols * kCols;
  for (int j = count; j < cols; ++j) {  // padding columns: never the max, never summed
    w.bias[j] = -std::numeric_limits<float>::infinity();
    for (int64_t c = 0; c < d; ++c) w.kt[c * kTile + j] = 0.0f;
  }
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const float* q = &w.q[r0 * d];
    for (int j0 = 0; j0 < cols; j0 += kCols) {
      RegisterTile tile;
      tile.load(&w.bias[j0], 0);  // every row starts from the mask
      const float* kcol = &w.kt[j0];
      for (int64_t c = 0; c < d; ++c, kcol += kTile) tile.add(q + c, d, load8(kcol), load8(kcol + 8));
      tile.store(&w.s[r0 * kTile + j0], kTile);
    }
  }
}

// Online-softmax update of every row with the tile's scores, then o += P . V.
void tile_accumulate(Scratch& w, int64_t rows, int64_t d, int count) {
  for (int64_t r = 0; r < rows; ++r) {
    float* srow = &w.s[r * kTile];
    const int cols = (count + kCols - 1) / kCols * kCols;  // padding scores are -inf
    vf8 max8 = load8(srow);
    for (int j = 8; j < cols; j += 8) {
      const vf8 x = load8(srow + j);
      max8 = x > max8 ? x : max8;
    }
    float tile_max = max8[0];
    for (int lane = 1; lane < 8; ++lane) tile_max = max8[lane] > tile_max ? max8[lane] : tile_max;
    const float m_new = tile_max > w.m[r] ? tile_max : w.m[r];
    const float alpha = fast_exp(w.m[r] - m_new);  // m = -inf at first: alpha ~ 0, o = l = 0
    // exp over all round_up(count, kCols) scores, the padding then set to 0
    const vf8 shift = splat8(m_new);
    vf8 sum8 = splat8(0.0f);
    for (int j = 0; j < cols; j += 8) {
      const vf8 p = fast_exp8(load8(srow + j) - shift);
      store8(srow + j, p);
      if (j + 8 <= count) sum8 += p;
    }
    for (int j = count; j < cols; ++j) srow[j] = 0.0f;
    float sum = 0.0f;
    for (int j = count / 8 * 8; j < count; ++j) sum += srow[j];
    for (int lane = 0; lane < 8; ++lane) sum += sum8[lane];
    w.m[r] = m_new;
    w.l[r] = w.l[r] * alpha + sum;
    float* orow = &w.o[r * d];
    if (alpha != 1.0f)
      for (int64_t c = 0; c < d; ++c) orow[c] *= alpha;
  }
  const int64_t d_full = d / kCols * kCols;
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const float* p = &w.s[r0 * kTile];
    for (int64_t c0 = 0; c0 < d_full; c0 += kCols) {
      RegisterTile tile;
      tile.load(&w.o[r0 * d + c0], d);
      for (int j = 0; j < count; ++j) {
        const float* vrow = w.vrows[j] + c0;
        tile.add(p + j, kTile, load8(vrow), load8(vrow + 8));
      }
      tile.store(&w.o[r0 * d + c0], d);
    }
    if (d_full < d) {  // head_dim not a multiple of kCols: plain loops for the rest
      for (int64_t rr = 0; rr < kRows; ++rr) {
        float* orow = &w.o[(r0 + rr) * d];
        const float* prow = &w.s[(r0 + rr) * kTile];
        for (int j = 0; j < count; ++j) {
          const float* vrow = w.vrows[j];
          for (int64_t c = d_full; c < d; ++c) orow[c] += prow[j] * vrow[c];
        }
      }
    }
  }
}

}  // namespace

void block_sparse_attention_cpu_task(const BlockSparseShape& s, const BlockSparseTensors& t, int64_t task) {
  const int64_t bs = s.block_size, d = s.head_dim, nb = s.num_blocks();
  const int64_t block = task % nb;
  const int64_t bh = task / nb;  // batch * heads + head
  const int64_t b = bh / s.heads, h = bh % s.heads;
  const int64_t rows = (bs + kRows - 1) / kRows * kRows;

  Scratch& w = thread_scratch();
  w.reserve(bs, d);

  const float* q = t.q + (bh * s.length + block * bs) * d;
  for (int64_t i = 0; i < bs * d; ++i) w.q[i] = q[i] * s.scale;
  std::fill(w.m.begin(), w.m.end(), -std::numeric_limits<float>::infinity());
  std::fill(w.l.begin(), w.l.end(), 0.0f);
  std::fill(w.o.begin(), w.o.end(), 0.0f);

  int count = 0;
  auto flush = [&]() {
    if (count == 0) return;
    tile_scores(w, rows, d, count);
    tile_accumulate(w, rows, d, count);
    count = 0;
  };
  // Appends the visible keys of rows [range) of (keys, values), mask stride 1 (nullptr: all visible).
  auto stream = [&](const float* keys, const float* values, const float* mask, KeyRange range) {
    for (int64_t j = range.begin; j < range.end; ++j) {
      const float bias = mask ? mask[j] : 0.0f;
      if (is_masked(bias)) continue;
      const float* krow = keys + j * d;
      for (int64_t c = 0; c < d; ++c) w.kt[c * kTile + count] = krow[c];
      w.bias[count] = bias;
      w.vrows[count] = values + j * d;
      if (++count == kTile) flush();
    }
  };

  if (s.num_global > 0) {
    const int64_t offset = bh * s.num_global * d;
    stream(t.global_k + offset, t.global_v + offset, nullptr, KeyRange{0, s.num_global});
  }
  if (s.has_sparse()) {
    const int64_t offset = bh * s.sparse_length * d;
    const float* mask = t.sparse_mask + (b * s.sparse_mask_heads + (s.sparse_mask_heads > 1 ? h : 0)) * s.sparse_length;
    for (int side = 0; side < 2; ++side)
      stream(t.sparse_k + offset, t.sparse_v + offset, mask, sparse_keys(s, block, side));
  }
  {
    const int64_t offset = bh * s.length * d;
    stream(t.k + offset, t.v + offset, t.key_mask + b * s.length, local_keys(s, block));
  }
  flush();

  float* out = t.out + (bh * s.length + block * bs) * d;
  for (int64_t r = 0; r < bs; ++r) {
    const float inv = w.l[r] > 0.0f ? 1.0f / w.l[r] : 0.0f;  // no visible key at all: 0
    for (int64_t c = 0; c < d; ++c) out[r * d + c] = w.o[r * d + c] * inv;
  }
}

void half_to_float(const uint16_t* src, float* dst, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    const uint32_t h = src[i];
    const uint32_t sign = (h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1Fu;
    uint32_t mantissa = h & 0x3FFu;
    uint32_t bits;
    if (exponent == 0x1F) {
      bits = sign | 0x7F800000u | (mantissa << 13);  // inf / nan
    } else if (exponent != 0) {
      bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal half: normalise
      exponent = 113;
      while (!(mantissa & 0x400u)) {
        mantissa <<= 1;
        --exponent;
      }
      bits = sign | (exponent << 23) | ((mantissa & 0x3FFu) << 13);
    }
    std::memcpy(&dst[i], &bits, sizeof(bits));
  }
}

void float_to_half(const float* src, uint16_t* dst, size_t count) {
  for (size_t i = 0; i < count; ++i) {  // round to nearest even, overflow to inf
    uint32_t bits;
    std::memcpy(&bits, &src[i], sizeof(bits));
    const uint32_t sign = (bits >> 16) & 0x8000u;
    const uint32_t abs = bits & 0x7FFFFFFFu;
    uint16_t out;
    if (abs >= 0x7F800000u) {
      out = static_cast<uint16_t>(sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0u));
    } else if (abs >= 0x477FF000u) {  // >= 65520 rounds to inf
      out = static_cast<uint16_t>(sign | 0x7C00u);
    } else if (abs >= 0x38800000u) {  // normal half
      const uint32_t rounded = abs + 0xFFFu + ((abs >> 13) & 1u);
      out = static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
    } else if (abs > 0x33000000u) {  // subnormal half: v * 2^-24 with v = mantissa >> (126 - e)
      const uint32_t shift = 126 - (abs >> 23);
      const uint32_t mantissa = (abs & 0x7FFFFFu) | 0x800000u;
      const uint32_t half_ulp = 1u << (shift - 1);
      const uint32_t remainder = mantissa & ((1u << shift) - 1);
      uint32_t value = mantissa >> shift;
      if (remainder > half_ulp || (remainder == half_ulp && (value & 1u))) ++value;
      out = static_cast<uint16_t>(sign | value);
    } else {
      out = static_cast<uint16_t>(sign);
    }
    dst[i] = out;
  }
}

}  // namespace lsg
