// CPU kernel of ai.lsg.BlockSparseAttention and ai.lsg.LSGAttention (float32 math; see
// include/lsg_ops/block_sparse_attention.h).
//
// One task = one (batch, head, block) of bs queries (or, for LSGAttention, the G global queries of
// one (batch, head) over all keys). Its keys are streamed in place, in order
// (globals, left compressed window, right compressed window, the three local blocks), in tiles of
// at most kTile visible keys: masked and out-of-range keys are skipped while a tile is gathered
// (only row pointers are kept: keys and values are read where they are), and an online softmax
// (running max m, running sum l, rescaled output accumulator o) folds each tile in. Nothing of
// size (blocks, keys) is ever materialised and the per-thread scratch is allocated once and
// reused by every task that thread runs.
//
// Scores are computed key-major (S^T = K . Q^T, queries transposed once per task), so the softmax
// runs down columns, 8 queries per vector, with no horizontal reduction, and keys need no copy.
// Inner loops are fixed-size register tiles (6 keys x 16 queries for the scores, 6 queries x 16
// channels for P.V) that the compiler vectorises; scores are kept in base 2 (log2 e folded into
// the query scale) so that exp is 2^x: a branch-free degree-6 polynomial that vectorises too.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "lsg_ops/block_sparse_attention.h"

namespace lsg {
namespace {

constexpr int kTile = 128;  // visible keys per tile
constexpr int kRows = 6;    // keys (scores) or queries (P.V) per register tile: 12 accumulators + 2 loads + 1 broadcast = 15 AVX2 registers
constexpr int kCols = 16;   // queries (scores) or channels (P.V) per register tile
constexpr float kLog2e = 1.44269504088896341f;  // scores are kept in base 2: exp(x) = 2^(x log2 e)

// 8 floats: one AVX register with -march=native, two SSE registers otherwise (GCC/Clang vector
// extension: no intrinsics, so the file builds on any target those compilers have).
typedef float vf8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));
inline vf8 load8(const float* p) {
  vf8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store8(float* p, vf8 v) { std::memcpy(p, &v, sizeof(v)); }
inline vf8 splat8(float x) { return vf8{x, x, x, x, x, x, x, x}; }
inline vf8 max8(vf8 a, vf8 b) { return a > b ? a : b; }

// 2^x for x <= 0 (the shifted scores), 8 lanes: x = n + f with n integer and |f| <= 1/2,
// 2^f by a degree-6 polynomial (relative error ~1e-7, float32's own), 2^n added to the exponent
// bits. x below -125 (padding scores are -inf) gives ~0, which no sum notices.
inline vf8 exp2_nonpositive8(vf8 x) {
  const vf8 magic = splat8(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  x = max8(x, splat8(-125.0f));
  const vf8 t = x + magic;
  const vf8 f = x - (t - magic);
  vf8 p = splat8(1.5332508e-4f);
  p = p * f + splat8(1.3394702e-3f);
  p = p * f + splat8(9.6184909e-3f);
  p = p * f + splat8(5.5503424e-2f);
  p = p * f + splat8(2.4022648e-1f);
  p = p * f + splat8(6.9314718e-1f);
  p = p * f + splat8(1.0f);
  const vi8 n = (vi8)t - 0x4B400000;  // GCC/Clang vector cast: a bit cast
  return (vf8)((vi8)p + (n << 23));
}

struct Scratch {
  int64_t rows = 0, d = 0, ld = 0;  // this task's queries (bs, or G), head_dim, rows rounded up to kCols
  std::vector<float> qt;      // (d, ld) queries * scale * log2 e, transposed (padding queries 0)
  std::vector<const float*> krows, vrows;  // (kTile) key and value rows of the tile, read in place
  std::vector<float> bias;    // (kTile) additive mask of the tile's keys * log2 e
  std::vector<float> st;      // (kTile, ld) scores of the tile, transposed; then weights
  std::vector<float> o;       // (rows, d) running output
  std::vector<float> m, l, alpha, tile_max;  // (ld) per query: running max and sum, rescale, tile's max

  // Sizes the buffers for `query_rows` queries (they only grow: block and global tasks alternate)
  // and resets the running state.
  void start(int64_t query_rows, int64_t head_dim) {
    rows = query_rows;
    d = head_dim;
    ld = (rows + kCols - 1) / kCols * kCols;
    auto fit = [](auto& v, size_t size) { if (v.size() < size) v.resize(size); };
    fit(qt, d * ld);
    fit(krows, kTile);
    fit(vrows, kTile);
    fit(bias, kTile);
    fit(st, kTile * ld);
    fit(o, rows * d);
    for (auto* v : {&m, &l, &alpha, &tile_max}) fit(*v, ld);
    std::fill(m.begin(), m.begin() + ld, -std::numeric_limits<float>::infinity());
    std::fill(l.begin(), l.begin() + ld, 0.0f);
    std::fill(o.begin(), o.begin() + rows * d, 0.0f);
  }
};

Scratch& thread_scratch() {
  static thread_local Scratch scratch;
  return scratch;
}

// R x kCols float32 accumulators held in registers (two 8-lane vectors per row), updated by
// rank-1 products: the one inner loop of both Q.K^T and P.V.
template <int R>
struct RegisterTile {
  vf8 acc[R][2];

  void load(const float* p, int64_t stride) {
    for (int r = 0; r < R; ++r) acc[r][0] = load8(p + r * stride), acc[r][1] = load8(p + r * stride + 8);
  }
  void store(float* p, int64_t stride) const {
    for (int r = 0; r < R; ++r) store8(p + r * stride, acc[r][0]), store8(p + r * stride + 8, acc[r][1]);
  }
  // acc[r] += x(r) * (y0 | y1)
  template <typename X>
  void add(X x, vf8 y0, vf8 y1) {
    for (int r = 0; r < R; ++r) {
      const vf8 xr = splat8(x(r));
      acc[r][0] += xr * y0;
      acc[r][1] += xr * y1;
    }
  }
};
static_assert(kCols == 16, "a register tile row is two 8-lane vectors");

// Runs f(std::integral_constant<int, R>, r0) over groups [r0, r0 + R) covering [0, rows): kRows
// at a time, then one narrower group for the rest (no padding rows are computed).
template <typename F>
void for_row_tiles(int64_t rows, F&& f) {
  int64_t r0 = 0;
  for (; r0 + kRows <= rows; r0 += kRows) f(std::integral_constant<int, kRows>{}, r0);
  switch (rows - r0) {
    case 5: f(std::integral_constant<int, 5>{}, r0); break;
    case 4: f(std::integral_constant<int, 4>{}, r0); break;
    case 3: f(std::integral_constant<int, 3>{}, r0); break;
    case 2: f(std::integral_constant<int, 2>{}, r0); break;
    case 1: f(std::integral_constant<int, 1>{}, r0); break;
    default: break;
  }
  static_assert(kRows == 6, "the tail cases cover 1 .. kRows - 1");
}

// st[j][r] = bias[j] + sum_c k_j[c] * qt[c][r] for the tile's count keys (keys read in place),
// and tile_max[r] = max_j st[j][r]. Scores are laid out key-major so that the softmax runs down
// columns: 8 queries per vector, no horizontal reductions.
void tile_scores(Scratch& w, int count) {
  const int64_t d = w.d, ld = w.ld;
  std::fill(w.tile_max.begin(), w.tile_max.begin() + ld, -std::numeric_limits<float>::infinity());
  for_row_tiles(count, [&](auto rows_tag, int64_t j0) {
    constexpr int R = decltype(rows_tag)::value;
    const float* const* k = &w.krows[j0];
    for (int64_t r0 = 0; r0 < ld; r0 += kCols) {
      RegisterTile<R> tile;
      for (int i = 0; i < R; ++i) tile.acc[i][0] = tile.acc[i][1] = splat8(w.bias[j0 + i]);
      const float* qcol = &w.qt[r0];
      for (int64_t c = 0; c < d; ++c, qcol += ld) tile.add([&](int i) { return k[i][c]; }, load8(qcol), load8(qcol + 8));
      tile.store(&w.st[j0 * ld + r0], ld);
      vf8 mx0 = load8(&w.tile_max[r0]), mx1 = load8(&w.tile_max[r0 + 8]);
      for (int i = 0; i < R; ++i) mx0 = max8(mx0, tile.acc[i][0]), mx1 = max8(mx1, tile.acc[i][1]);
      store8(&w.tile_max[r0], mx0);
      store8(&w.tile_max[r0 + 8], mx1);
    }
  });
}

// Online-softmax update of every query with the tile's scores (the weights replace the scores),
// then o = o * alpha + P . V.
void tile_accumulate(Scratch& w, int count) {
  const int64_t d = w.d, ld = w.ld;
  for (int64_t r = 0; r < ld; r += 8) {
    const vf8 m_old = load8(&w.m[r]);
    const vf8 m_new = max8(m_old, load8(&w.tile_max[r]));
    const vf8 alpha = exp2_nonpositive8(m_old - m_new);  // m = -inf at first: alpha ~ 0, o = l = 0
    vf8 sum = splat8(0.0f);
    float* p = &w.st[r];
    for (int j = 0; j < count; ++j, p += ld) {
      const vf8 e = exp2_nonpositive8(load8(p) - m_new);
      store8(p, e);
      sum += e;
    }
    store8(&w.m[r], m_new);
    store8(&w.alpha[r], alpha);
    store8(&w.l[r], load8(&w.l[r]) * alpha + sum);
  }
  const int64_t d_full = d / kCols * kCols;
  for_row_tiles(w.rows, [&](auto rows_tag, int64_t r0) {
    constexpr int R = decltype(rows_tag)::value;
    for (int64_t c0 = 0; c0 < d_full; c0 += kCols) {
      RegisterTile<R> tile;
      tile.load(&w.o[r0 * d + c0], d);
      for (int i = 0; i < R; ++i) tile.acc[i][0] *= splat8(w.alpha[r0 + i]), tile.acc[i][1] *= splat8(w.alpha[r0 + i]);
      const float* p = &w.st[r0];
      for (int j = 0; j < count; ++j, p += ld) {
        const float* vrow = w.vrows[j] + c0;
        tile.add([&](int i) { return p[i]; }, load8(vrow), load8(vrow + 8));
      }
      tile.store(&w.o[r0 * d + c0], d);
    }
    for (int64_t i = 0; i < R && d_full < d; ++i) {  // head_dim not a multiple of kCols: plain loops for the rest
      float* orow = &w.o[(r0 + i) * d];
      for (int64_t c = d_full; c < d; ++c) orow[c] *= w.alpha[r0 + i];
      for (int j = 0; j < count; ++j) {
        const float pj = w.st[j * ld + r0 + i];
        for (int64_t c = d_full; c < d; ++c) orow[c] += pj * w.vrows[j][c];
      }
    }
  });
}

// Rows far apart (the token layout) defeat the hardware prefetchers, which follow runs of adjacent
// lines: each row is requested kAhead rows before it is read.
constexpr int64_t kAhead = 8;
inline void prefetch_row(const float* row, int64_t d) {
  for (int64_t c = 0; c < d; c += 16) __builtin_prefetch(row + c);
}

inline void copy_row(float* dst, const float* src, int64_t d) {
  int64_t c = 0;
  for (; c + 8 <= d; c += 8) store8(dst + c, load8(src + c));
  for (; c < d; ++c) dst[c] = src[c];
}

}  // namespace

int64_t keys_copy_elements(const BlockSparseShape& s) {
  return s.tokens.row == s.head_dim ? 0 : s.batch * s.heads * s.length * s.head_dim;
}

void copy_keys_cpu_task(const BlockSparseShape& s, const BlockSparseTensors& t, float* k, float* v, int64_t task) {
  const int64_t b = task / s.heads, h = task % s.heads, d = s.head_dim;
  const float* k_src = t.k + s.tokens.at(b, h, 0);
  const float* v_src = t.v + s.tokens.at(b, h, 0);
  float* k_dst = k + task * s.length * d;
  float* v_dst = v + task * s.length * d;
  for (int64_t j = 0; j < s.length; ++j) {
    if (j + kAhead < s.length) {
      prefetch_row(k_src + (j + kAhead) * s.tokens.row, d);
      prefetch_row(v_src + (j + kAhead) * s.tokens.row, d);
    }
    copy_row(k_dst + j * d, k_src + j * s.tokens.row, d);
    copy_row(v_dst + j * d, v_src + j * s.tokens.row, d);
  }
}

namespace {

// One query tile: `rows` queries at `q` (row stride q_stride) attend to the keys `add_keys` streams;
// the normalised output goes to `out` (row stride out_stride).
template <typename AddKeys>
void attend_rows(const BlockSparseShape& s, const float* q, int64_t q_stride, int64_t rows, float* out,
                 int64_t out_stride, AddKeys&& add_keys) {
  const int64_t d = s.head_dim;
  Scratch& w = thread_scratch();
  w.start(rows, d);
  const float q_scale = s.scale * kLog2e;
  for (int64_t r = 0; r < rows; ++r) {  // row by row: q's rows may be far apart (h * d)
    if (q_stride != d && r + kAhead < rows) prefetch_row(q + (r + kAhead) * q_stride, d);
    for (int64_t c = 0; c < d; ++c) w.qt[c * w.ld + r] = q[r * q_stride + c] * q_scale;
  }
  for (int64_t c = 0; c < d; ++c) std::fill(&w.qt[c * w.ld + rows], &w.qt[c * w.ld + w.ld], 0.0f);

  int count = 0;
  auto flush = [&]() {
    if (count == 0) return;
    tile_scores(w, count);
    tile_accumulate(w, count);
    count = 0;
  };
  // Appends the visible keys of rows [range) of (keys, values) (row stride `stride`), mask stride 1
  // (nullptr: all visible).
  auto stream = [&](const float* keys, const float* values, int64_t stride, const float* mask, KeyRange range) {
    for (int64_t j = range.begin; j < range.end; ++j) {
      const float bias = mask ? mask[j] : 0.0f;
      if (is_masked(bias)) continue;
      w.krows[count] = keys + j * stride;
      w.vrows[count] = values + j * stride;
      w.bias[count] = bias * kLog2e;
      if (++count == kTile) flush();
    }
  };
  add_keys(stream);
  flush();

  for (int64_t r = 0; r < rows; ++r) {
    const float inv = w.l[r] > 0.0f ? 1.0f / w.l[r] : 0.0f;  // no visible key at all: 0
    for (int64_t c = 0; c < d; ++c) out[r * out_stride + c] = w.o[r * d + c] * inv;
  }
}

}  // namespace

void block_sparse_attention_cpu_task(const BlockSparseShape& s, const BlockSparseTensors& t, const Strides& ks,
                                     int64_t task) {
  const int64_t bs = s.block_size, nb = s.num_blocks();
  const bool global_rows = task >= s.num_block_tasks();
  // block tasks in (batch, block, head) order
  const int64_t bh = global_rows ? task - s.num_block_tasks()
                                 : (task / (nb * s.heads)) * s.heads + task % s.heads;  // batch * heads + head
  const int64_t b = bh / s.heads, h = bh % s.heads;
  const Strides& ts = s.tokens;
  const Strides& gs = s.globals;
  const float* key_mask = t.key_mask + b * s.length;
  auto globals = [&](auto& stream) {
    if (s.num_global > 0)
      stream(t.global_k + gs.at(b, h, 0), t.global_v + gs.at(b, h, 0), gs.row, nullptr, KeyRange{0, s.num_global});
  };

  if (global_rows) {  // the G global queries: every global, then every visible token
    attend_rows(s, t.global_q + gs.at(b, h, 0), gs.row, s.num_global, t.global_out + gs.at(b, h, 0), gs.row,
                [&](auto& stream) {
                  globals(stream);
                  stream(t.k + ks.at(b, h, 0), t.v + ks.at(b, h, 0), ks.row, key_mask, KeyRange{0, s.length});
                });
    return;
  }
  const int64_t block = (task / s.heads) % nb;
  attend_rows(s, t.q + ts.at(b, h, block * bs), ts.row, bs, t.out + ts.at(b, h, block * bs), ts.row,
              [&](auto& stream) {
                globals(stream);
                if (s.has_sparse()) {
                  const int64_t offset = bh * s.sparse_length * s.head_dim;
                  const float* mask = t.sparse_mask + (b * s.sparse_mask_heads + (s.sparse_mask_heads > 1 ? h : 0)) *
                                                          s.sparse_length;
                  for (int side = 0; side < 2; ++side)
                    stream(t.sparse_k + offset, t.sparse_v + offset, s.head_dim, mask, sparse_keys(s, block, side));
                }
                stream(t.k + ks.at(b, h, 0), t.v + ks.at(b, h, 0), ks.row, key_mask, local_keys(s, block));
              });
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
