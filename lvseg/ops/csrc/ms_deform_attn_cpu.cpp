// Multi-scale deformable attention: CPU forward and backward kernels (lvseg).
//
// Semantics are those of Deformable-DETR's op (bilinear sampling, align_corners=False, zeros outside the map),
// computed the way F.grid_sample computes pixel coordinates so that results agree with the pure-PyTorch
// reference to float rounding.
//
// Layout: value [N, S, M, D] is read as rows of D contiguous elements (one row per pixel and head); the work
// for one (query, head) touches L*P*4 such rows and accumulates them into D accumulators, so the inner loops
// are unit-stride over D and vectorise.
//
// Parallelism (at::parallel_for):
//   forward  - over (n, q): every output row is written by exactly one task.
//   backward - over (n, m) pairs: grad_value[n, :, m, :] is only touched by queries of batch n and head m, so
//              each task owns its slice and no atomics or reductions are needed (deterministic); the
//              location/weight gradients of a (n, q, m) are written by the task owning (n, m).
//              When there are fewer (n, m) pairs than threads, the queries are split into chunks too, each
//              chunk accumulating into a private grad_value buffer that is summed in a fixed order.
//
// Dtypes: float64 computes in double; float32, float16 and bfloat16 values accumulate in float. Sampling
// locations and attention weights arrive in the accumulation type (the Python wrapper casts them).

// Light headers only (no torch/extension.h): the binding is its own translation unit, built in parallel.
#include "ms_deform_attn_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#if defined(__GNUC__)
#define MSDA_ALWAYS_INLINE __attribute__((always_inline))
#else
#define MSDA_ALWAYS_INLINE
#endif

// The package is compiled for the baseline ISA (the cache may be shared by machines with different CPUs), and
// the hot loops are compiled a second time for AVX2+FMA, picked at run time. (An AVX-512 variant measured no
// faster than AVX2 on the AMD EPYC development machine for D = 32 and doubled the build time.)
#if defined(__GNUC__) && defined(__x86_64__)
#define MSDA_X86_DISPATCH 1
#define MSDA_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

namespace {

enum Isa : int { kIsaDefault = 0, kIsaAvx2 = 1 };
constexpr int kNumIsas = 2;
const char* const kIsaNames[kNumIsas] = {"default", "avx2"};

int detect_isa() {
#ifdef MSDA_X86_DISPATCH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    return kIsaAvx2;
  }
#endif
  return kIsaDefault;
}

// Work (multiply-adds) below which a loop runs on the calling thread only.
constexpr int64_t kMinWorkPerThread = int64_t(1) << 20;

int best_isa() {
  static const int best = detect_isa();
  return best;
}

std::atomic<int> g_isa_override{-1};  // -1: the best the CPU supports

int current_isa() {
  const int forced = g_isa_override.load();
  return forced >= 0 ? forced : best_isa();
}

// Bilinear footprint of one sampling point on one level: the four corner rows and their weights. Corners
// outside the map get weight 0 and point at a zero row, so the inner loops need no branches.
template <typename acc_t>
struct Footprint {
  int64_t pix[4];      // pixel index y * W + x of each corner within the level
  bool valid[4];
  acc_t weight[4];     // bilinear weights (nw, ne, sw, se)
  acc_t hy, ly, hx, lx;  // 1 - frac_y, frac_y, 1 - frac_x, frac_x
};

// Pixel coordinates from normalised ones, as F.grid_sample(align_corners=False) computes them on the CPU:
// g = 2 * loc - 1; pixel = (g + 1) * size / 2 - 0.5  (== loc * size - 0.5 up to rounding).
template <typename acc_t>
inline acc_t to_pixel(acc_t loc, int64_t size) {
  const acc_t g = loc * acc_t(2) - acc_t(1);
  return (g + acc_t(1)) * (static_cast<acc_t>(size) / acc_t(2)) - acc_t(0.5);
}

// Returns false when the point reads nothing (all four corners outside the map, or a NaN coordinate).
template <typename acc_t>
inline bool make_footprint(acc_t loc_x, acc_t loc_y, int64_t H, int64_t W, Footprint<acc_t>& f) {
  const acc_t x = to_pixel(loc_x, W);
  const acc_t y = to_pixel(loc_y, H);
  // -1 <= x < W keeps points whose right/bottom corner is on the map; at exactly -1 that corner has weight 0
  // but a non-zero gradient, as in grid_sample.
  if (!(x >= acc_t(-1) && y >= acc_t(-1) && x < static_cast<acc_t>(W) && y < static_cast<acc_t>(H))) {
    return false;
  }
  const acc_t x0f = std::floor(x);
  const acc_t y0f = std::floor(y);
  const int64_t x0 = static_cast<int64_t>(x0f);
  const int64_t y0 = static_cast<int64_t>(y0f);
  f.lx = x - x0f;
  f.ly = y - y0f;
  f.hx = acc_t(1) - f.lx;
  f.hy = acc_t(1) - f.ly;
  f.weight[0] = f.hy * f.hx;
  f.weight[1] = f.hy * f.lx;
  f.weight[2] = f.ly * f.hx;
  f.weight[3] = f.ly * f.lx;
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  for (int c = 0; c < 4; ++c) {
    f.valid[c] = xs[c] >= 0 && xs[c] < W && ys[c] >= 0 && ys[c] < H;
    f.pix[c] = f.valid[c] ? ys[c] * W + xs[c] : 0;
  }
  return true;
}

// How many queries ahead the backward prefetches its strided per-query rows.
constexpr int64_t kPrefetchQueries = 2;

inline void prefetch_range(const void* ptr, int64_t bytes, bool for_write) {
#if defined(__GNUC__)
  const char* p = static_cast<const char*>(ptr);
  for (int64_t off = 0; off < bytes; off += 64) {
    if (for_write) {
      __builtin_prefetch(p + off, 1, 3);
    } else {
      __builtin_prefetch(p + off, 0, 3);
    }
  }
#else
  (void)ptr;
  (void)bytes;
  (void)for_write;
#endif
}

struct Dims {
  int64_t N, S, M, D, Lq, L, P;
};

Dims check_and_get_dims(const at::Tensor& value, const at::Tensor& spatial_shapes,
                        const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                        const at::Tensor& attn_weight) {
  TORCH_CHECK(value.dim() == 4, "value must be [N, S, M, D]");
  TORCH_CHECK(sampling_loc.dim() == 6 && sampling_loc.size(5) == 2, "sampling_loc must be [N, Lq, M, L, P, 2]");
  TORCH_CHECK(attn_weight.dim() == 5, "attn_weight must be [N, Lq, M, L, P]");
  TORCH_CHECK(value.is_contiguous() && sampling_loc.is_contiguous() && attn_weight.is_contiguous(),
              "inputs must be contiguous");
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "spatial_shapes and level_start_index must be int64");
  TORCH_CHECK(spatial_shapes.is_contiguous() && level_start_index.is_contiguous(),
              "spatial_shapes and level_start_index must be contiguous");
  TORCH_CHECK(!value.is_cuda(), "the cpu kernels got a CUDA tensor");
  const auto acc_type = value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(sampling_loc.scalar_type() == acc_type && attn_weight.scalar_type() == acc_type,
              "sampling_loc and attn_weight must be float64 for float64 value, float32 otherwise");
  Dims d{value.size(0), value.size(1), value.size(2), value.size(3),
         sampling_loc.size(1), sampling_loc.size(3), sampling_loc.size(4)};
  TORCH_CHECK(sampling_loc.size(0) == d.N && sampling_loc.size(2) == d.M, "sampling_loc batch/heads mismatch");
  TORCH_CHECK(attn_weight.size(0) == d.N && attn_weight.size(1) == d.Lq && attn_weight.size(2) == d.M &&
                  attn_weight.size(3) == d.L && attn_weight.size(4) == d.P,
              "attn_weight shape mismatch");
  TORCH_CHECK(spatial_shapes.size(0) == d.L && level_start_index.size(0) == d.L, "level count mismatch");
  const int64_t* shapes = spatial_shapes.data_ptr<int64_t>();
  const int64_t* starts = level_start_index.data_ptr<int64_t>();
  for (int64_t l = 0; l < d.L; ++l) {
    TORCH_CHECK(shapes[2 * l] > 0 && shapes[2 * l + 1] > 0 && starts[l] >= 0 &&
                    starts[l] + shapes[2 * l] * shapes[2 * l + 1] <= d.S,
                "level ", l, " does not fit in value");
  }
  return d;
}

// Forward for the (n, q) rows [begin, end).
template <typename scalar_t, typename acc_t>
MSDA_ALWAYS_INLINE inline void forward_rows(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                                            const acc_t* loc, const acc_t* attn, scalar_t* out, const Dims& d,
                                            int64_t begin, int64_t end) {
  const int64_t LP = d.L * d.P;
  const int64_t row_stride = d.M * d.D;  // elements between two pixels of one head
  std::vector<acc_t> acc(d.D);
  std::vector<scalar_t> zeros(d.D, scalar_t(0));
  Footprint<acc_t> f;
  for (int64_t nq = begin; nq < end; ++nq) {
    const int64_t n = nq / d.Lq;
    for (int64_t m = 0; m < d.M; ++m) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const int64_t base = (nq * d.M + m) * LP;  // index of (n, q, m, 0, 0)
      for (int64_t l = 0; l < d.L; ++l) {
        const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
        const scalar_t* level = value + ((n * d.S + starts[l]) * d.M + m) * d.D;
        for (int64_t p = 0; p < d.P; ++p) {
          const int64_t i = base + l * d.P + p;
          const acc_t a = attn[i];
          if (!make_footprint(loc[2 * i], loc[2 * i + 1], H, W, f)) continue;
          const scalar_t* __restrict r0 = f.valid[0] ? level + f.pix[0] * row_stride : zeros.data();
          const scalar_t* __restrict r1 = f.valid[1] ? level + f.pix[1] * row_stride : zeros.data();
          const scalar_t* __restrict r2 = f.valid[2] ? level + f.pix[2] * row_stride : zeros.data();
          const scalar_t* __restrict r3 = f.valid[3] ? level + f.pix[3] * row_stride : zeros.data();
          const acc_t c0 = a * f.weight[0], c1 = a * f.weight[1], c2 = a * f.weight[2], c3 = a * f.weight[3];
          acc_t* __restrict ac = acc.data();
#pragma omp simd
          for (int64_t k = 0; k < d.D; ++k) {
            ac[k] += c0 * static_cast<acc_t>(r0[k]) + c1 * static_cast<acc_t>(r1[k]) +
                     c2 * static_cast<acc_t>(r2[k]) + c3 * static_cast<acc_t>(r3[k]);
          }
        }
      }
      scalar_t* o = out + (nq * d.M + m) * d.D;
      for (int64_t k = 0; k < d.D; ++k) o[k] = static_cast<scalar_t>(acc[k]);
    }
  }
}

// Backward for the queries [q_begin, q_end) of one (n, m). v_head: this (n, m)'s first value row, rows
// v_stride elements apart; gv: its grad_value accumulator (rows gv_stride apart), or nullptr when grad_value
// is not needed. Writes the location/weight gradients of those queries.
template <typename scalar_t, typename acc_t>
MSDA_ALWAYS_INLINE inline void backward_queries(const scalar_t* v_head, int64_t v_stride, const int64_t* shapes,
                                                const int64_t* starts, const acc_t* loc, const acc_t* attn,
                                                const scalar_t* grad_out, acc_t* gv, int64_t gv_stride,
                                                acc_t* grad_loc, acc_t* grad_attn, const Dims& d, int64_t n, int64_t m, int64_t q_begin,
                      int64_t q_end, std::vector<acc_t>& scratch, std::vector<acc_t>& go_buf,
                      const std::vector<scalar_t>& zeros) {
  const int64_t LP = d.L * d.P;
  Footprint<acc_t> f;
  acc_t* sink[4] = {scratch.data(), scratch.data() + d.D, scratch.data() + 2 * d.D, scratch.data() + 3 * d.D};
  for (int64_t q = q_begin; q < q_end; ++q) {
    const int64_t nqm = (n * d.Lq + q) * d.M + m;
    if (q + kPrefetchQueries < q_end) {
      // the per-query rows of this head are M rows apart (strided), which the hardware prefetchers miss:
      // fetch the ones of a later query now
      const int64_t later = nqm + kPrefetchQueries * d.M;
      prefetch_range(grad_out + later * d.D, d.D * sizeof(scalar_t), false);
      prefetch_range(loc + later * LP * 2, LP * 2 * sizeof(acc_t), false);
      prefetch_range(attn + later * LP, LP * sizeof(acc_t), false);
      prefetch_range(grad_loc + later * LP * 2, LP * 2 * sizeof(acc_t), true);
      prefetch_range(grad_attn + later * LP, LP * sizeof(acc_t), true);
    }
    const scalar_t* go_row = grad_out + nqm * d.D;
    bool any = false;
    for (int64_t k = 0; k < d.D; ++k) {
      go_buf[k] = static_cast<acc_t>(go_row[k]);
      any = any || go_buf[k] != acc_t(0);
    }
    for (int64_t l = 0; l < d.L; ++l) {
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
      const scalar_t* level = v_head + starts[l] * v_stride;
      acc_t* glevel = gv == nullptr ? nullptr : gv + starts[l] * gv_stride;
      for (int64_t p = 0; p < d.P; ++p) {
        const int64_t i = nqm * LP + l * d.P + p;
        grad_attn[i] = acc_t(0);
        grad_loc[2 * i] = acc_t(0);
        grad_loc[2 * i + 1] = acc_t(0);
        if (!any) continue;
        const acc_t a = attn[i];
        if (!make_footprint(loc[2 * i], loc[2 * i + 1], H, W, f)) continue;
        const scalar_t* r[4];
        acc_t* g[4];
        for (int c = 0; c < 4; ++c) {
          r[c] = f.valid[c] ? level + f.pix[c] * v_stride : zeros.data();
          g[c] = (f.valid[c] && glevel != nullptr) ? glevel + f.pix[c] * gv_stride : sink[c];
        }
        const acc_t w0 = f.weight[0], w1 = f.weight[1], w2 = f.weight[2], w3 = f.weight[3];
        const acc_t hy = f.hy, ly = f.ly, hx = f.hx, lx = f.lx;
        const acc_t* __restrict go = go_buf.data();
        const scalar_t* __restrict r0 = r[0];
        const scalar_t* __restrict r1 = r[1];
        const scalar_t* __restrict r2 = r[2];
        const scalar_t* __restrict r3 = r[3];
        acc_t* __restrict g0 = g[0];
        acc_t* __restrict g1 = g[1];
        acc_t* __restrict g2 = g[2];
        acc_t* __restrict g3 = g[3];
        const acc_t aw0 = a * w0, aw1 = a * w1, aw2 = a * w2, aw3 = a * w3;
        // dot products of grad_out with the four corner rows; the weight gradient and both location gradients
        // are combinations of them (fewer operations per channel than expanding the bilinear formula)
        acc_t dot0 = 0, dot1 = 0, dot2 = 0, dot3 = 0;
#pragma omp simd reduction(+ : dot0, dot1, dot2, dot3)
        for (int64_t k = 0; k < d.D; ++k) {
          const acc_t gk = go[k];
          dot0 += gk * static_cast<acc_t>(r0[k]);
          dot1 += gk * static_cast<acc_t>(r1[k]);
          dot2 += gk * static_cast<acc_t>(r2[k]);
          dot3 += gk * static_cast<acc_t>(r3[k]);
          g0[k] += aw0 * gk;
          g1[k] += aw1 * gk;
          g2[k] += aw2 * gk;
          g3[k] += aw3 * gk;
        }
        grad_attn[i] = w0 * dot0 + w1 * dot1 + w2 * dot2 + w3 * dot3;
        const acc_t sum_x = hy * (dot1 - dot0) + ly * (dot3 - dot2);
        const acc_t sum_y = hx * (dot2 - dot0) + lx * (dot3 - dot1);
        // d pixel / d loc = size (2 from g = 2 loc - 1, size / 2 from unnormalising)
        grad_loc[2 * i] = a * sum_x * static_cast<acc_t>(W);
        grad_loc[2 * i + 1] = a * sum_y * static_cast<acc_t>(H);
      }
    }
  }
}

// value and grad_value are [N, M, S, D] when head_major, else [N, S, M, D].
template <typename scalar_t, typename acc_t>
void backward_kernel(const scalar_t* value, bool head_major, const int64_t* shapes, const int64_t* starts,
                     const acc_t* loc, const acc_t* attn, const scalar_t* grad_out, acc_t* grad_value,
                     acc_t* grad_loc, acc_t* grad_attn, const Dims& d) {
  const int isa = current_isa();
  const int64_t pairs = d.N * d.M;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  // split queries into chunks only when (n, m) pairs alone cannot keep the threads busy
  const int64_t work = d.N * d.Lq * d.M * d.L * d.P * 4 * d.D;
  const bool small = work < kMinWorkPerThread;  // run inline, see forward_kernel
  int64_t chunks = 1;
  if (!small && pairs < threads && d.Lq >= 2) chunks = std::min<int64_t>(d.Lq, (threads + pairs - 1) / pairs);
  const int64_t q_per_chunk = (d.Lq + chunks - 1) / chunks;
  // private grad_value buffers ([S, D] per (pair, chunk > 0)) when chunking
  std::vector<acc_t> extra;
  const int64_t row_stride = head_major ? d.D : d.M * d.D;
  auto head_offset = [&](int64_t n, int64_t m) { return head_major ? (n * d.M + m) * d.S * d.D : (n * d.S * d.M + m) * d.D; };
  if (grad_value != nullptr && chunks > 1) extra.assign(static_cast<size_t>(pairs * (chunks - 1) * d.S * d.D), 0);

  at::parallel_for(0, pairs * chunks, small ? pairs * chunks : 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(4 * d.D);
    std::vector<acc_t> go_buf(d.D);
    std::vector<scalar_t> zeros(d.D, scalar_t(0));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t pair = t / chunks, chunk = t % chunks;
      const int64_t n = pair / d.M, m = pair % d.M;
      const int64_t q0 = chunk * q_per_chunk, q1 = std::min(d.Lq, q0 + q_per_chunk);
      if (q0 >= q1) continue;
      const scalar_t* v_head = value + head_offset(n, m);
      acc_t* gv = nullptr;
      int64_t gv_stride = row_stride;
      if (grad_value != nullptr) {
        if (chunk == 0) {
          gv = grad_value + head_offset(n, m);
        } else {
          gv = extra.data() + ((pair * (chunks - 1) + chunk - 1) * d.S) * d.D;
          gv_stride = d.D;
        }
      }
#ifdef MSDA_X86_DISPATCH
      if (isa == kIsaAvx2) {
        backward_queries_avx2<scalar_t, acc_t>(v_head, row_stride, shapes, starts, loc, attn, grad_out, gv, gv_stride, grad_loc,
                                               grad_attn, d, n, m, q0, q1, scratch, go_buf, zeros);
        continue;
      }
#endif
      backward_queries<scalar_t, acc_t>(v_head, row_stride, shapes, starts, loc, attn, grad_out, gv, gv_stride, grad_loc,
                                        grad_attn, d, n, m, q0, q1, scratch, go_buf, zeros);
    }
  });
  if (grad_value != nullptr && chunks > 1) {
    // fixed-order sum of the private buffers into grad_value
    at::parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) {
      for (int64_t pair = begin; pair < end; ++pair) {
        acc_t* dst = grad_value + head_offset(pair / d.M, pair % d.M);
        for (int64_t c = 1; c < chunks; ++c) {
          const acc_t* src = extra.data() + ((pair * (chunks - 1) + c - 1) * d.S) * d.D;
          for (int64_t s = 0; s < d.S; ++s) {
            for (int64_t k = 0; k < d.D; ++k) dst[s * row_stride + k] += src[s * d.D + k];
          }
        }
      }
    });
  }
}

#ifdef MSDA_X86_DISPATCH
template <typename scalar_t, typename acc_t, typename... Args>
MSDA_TARGET_AVX2 void forward_rows_avx2(Args&&... args) {
  forward_rows<scalar_t, acc_t>(std::forward<Args>(args)...);
}
template <typename scalar_t, typename acc_t, typename... Args>
MSDA_TARGET_AVX2 void backward_queries_avx2(Args&&... args) {
  backward_queries<scalar_t, acc_t>(std::forward<Args>(args)...);
}
#endif

template <typename scalar_t, typename acc_t>
void forward_kernel(const scalar_t* value, const int64_t* shapes, const int64_t* starts, const acc_t* loc,
                    const acc_t* attn, scalar_t* out, const Dims& d) {
  const int isa = current_isa();
  // ~M*L*P*4*D multiply-adds per (n, q); give each thread at least ~1M of them, so that small problems (a
  // decoder with a handful of queries) run inline instead of paying for waking threads (milliseconds on a
  // loaded machine)
  const int64_t per_row = std::max<int64_t>(1, d.M * d.L * d.P * 4 * d.D);
  const int64_t grain = std::max<int64_t>(1, kMinWorkPerThread / per_row);
  at::parallel_for(0, d.N * d.Lq, grain, [&](int64_t begin, int64_t end) {
#ifdef MSDA_X86_DISPATCH
    if (isa == kIsaAvx2) return forward_rows_avx2<scalar_t, acc_t>(value, shapes, starts, loc, attn, out, d, begin, end);
#endif
    forward_rows<scalar_t, acc_t>(value, shapes, starts, loc, attn, out, d, begin, end);
  });
}

at::Tensor forward_impl(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                  const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                  const at::Tensor& attn_weight) {
  const Dims d = check_and_get_dims(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  auto out = at::empty({d.N, d.Lq, d.M * d.D}, value.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t>(value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
                                    level_start_index.data_ptr<int64_t>(), sampling_loc.data_ptr<acc_t>(),
                                    attn_weight.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), d);
  });
  return out;
}

std::vector<at::Tensor> backward_impl(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                const at::Tensor& level_start_index,
                                                const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                const at::Tensor& grad_output, bool need_value_grad,
                                                bool deterministic) {
  (void)deterministic;  // the CPU backward is always deterministic
  const Dims d = check_and_get_dims(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  TORCH_CHECK(grad_output.is_contiguous() && grad_output.scalar_type() == value.scalar_type() &&
                  grad_output.dim() == 3 && grad_output.size(0) == d.N && grad_output.size(1) == d.Lq &&
                  grad_output.size(2) == d.M * d.D,
              "grad_output must be a contiguous [N, Lq, M*D] tensor of value's dtype");
  const auto acc_type = value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto acc_opts = value.options().dtype(acc_type);
  // With many points per value row (the encoder), work on head-major [N, M, S, D] copies of value and
  // grad_value so that one (n, m)'s rows are contiguous: in [N, S, M, D] they sit M*D elements apart (1 KiB
  // for 256 floats), which maps them onto a fraction of the cache sets. With few (a decoder), the copies
  // would cost more than they save.
  const bool head_major = d.M > 1 && d.Lq * d.L * d.P * 4 >= d.S;
  const at::Tensor value_k = head_major ? value.permute({0, 2, 1, 3}).contiguous() : value;
  at::Tensor grad_value_acc;
  if (need_value_grad) {
    grad_value_acc = head_major ? at::zeros({d.N, d.M, d.S, d.D}, acc_opts) : at::zeros(value.sizes(), acc_opts);
  }
  auto grad_loc = at::empty(sampling_loc.sizes(), acc_opts);
  auto grad_attn = at::empty(attn_weight.sizes(), acc_opts);
  if (d.N * d.Lq * d.M > 0 && d.L * d.P > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      backward_kernel<scalar_t, acc_t>(value_k.data_ptr<scalar_t>(), head_major, spatial_shapes.data_ptr<int64_t>(),
                                       level_start_index.data_ptr<int64_t>(), sampling_loc.data_ptr<acc_t>(),
                                       attn_weight.data_ptr<acc_t>(), grad_output.data_ptr<scalar_t>(),
                                       need_value_grad ? grad_value_acc.data_ptr<acc_t>() : nullptr,
                                       grad_loc.data_ptr<acc_t>(), grad_attn.data_ptr<acc_t>(), d);
    });
  } else {
    grad_loc.zero_();
    grad_attn.zero_();
  }
  at::Tensor grad_value;
  if (need_value_grad) {
    if (!head_major && grad_value_acc.scalar_type() == value.scalar_type()) {
      grad_value = grad_value_acc;
    } else {
      // back to [N, S, M, D] in value's dtype, in one pass
      grad_value = at::empty(value.sizes(), value.options());
      grad_value.copy_(head_major ? grad_value_acc.permute({0, 2, 1, 3}) : grad_value_acc);
    }
  }
  return {grad_value, grad_loc, grad_attn};
}

std::string get_isa() { return kIsaNames[current_isa()]; }

// "auto" restores the automatic choice; forcing an ISA the CPU lacks is refused.
void set_isa_impl(const std::string& name) {
  if (name == "auto") {
    g_isa_override.store(-1);
    return;
  }
  for (int i = 0; i < kNumIsas; ++i) {
    if (name == kIsaNames[i]) {
      TORCH_CHECK(i <= best_isa(), "this CPU does not support the ", name, " kernels (best: ", kIsaNames[best_isa()], ")");
      g_isa_override.store(i);
      return;
    }
  }
  TORCH_CHECK(false, "unknown ISA ", name, "; use auto, default or avx2");
}

}  // namespace

namespace lvseg_msda_cpu {

at::Tensor forward(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                   const at::Tensor& sampling_loc, const at::Tensor& attn_weight) {
  return forward_impl(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
}

std::vector<at::Tensor> backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                 const at::Tensor& attn_weight, const at::Tensor& grad_output, bool need_value_grad,
                                 bool deterministic) {
  return backward_impl(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, grad_output,
                       need_value_grad, deterministic);
}

std::string isa() { return get_isa(); }
std::string best_isa() { return kIsaNames[::best_isa()]; }
void set_isa(const std::string& name) { set_isa_impl(name); }

}  // namespace lvseg_msda_cpu
