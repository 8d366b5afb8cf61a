// Multi-scale deformable attention: CUDA forward and backward kernels (lvseg).
//
// Semantics: Deformable-DETR's op (bilinear, align_corners=False, zeros outside the map), with pixel
// coordinates computed as F.grid_sample does on CUDA, so results agree with the pure-PyTorch reference.
//
// Work mapping: a "group" of G lanes (G = smallest power of two >= min(D, 32)) handles one (n, q, m); lane k
// handles channels k, k + G, ... so value rows (D contiguous elements) are read coalesced, and the per-point
// reductions over D (gradients of locations and weights) are warp shuffles inside the group. Several groups
// share a warp when D < 32. Loops are grid-stride with 64-bit indices, so any batch size works (there is no
// im2col_step).
//
// Dtypes: float64 computes in double; float32, float16 and bfloat16 accumulate in float. grad_value is
// accumulated in float (double for float64) and converted at the end, so no half-precision atomics are used.
// Backward: grad_value by atomicAdd (fast, run-to-run order dependent), or, with deterministic=true, by sorting
// the (value row, coefficient) pairs of all bilinear corners with a stable sort and summing each row's
// contributions in that fixed order (no atomics).

// Only the method operators of Tensor and the ops included below: keeps nvcc's front end fast.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "ms_deform_attn_cuda.h"

namespace lvseg_msda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid-stride beyond this

struct Dims {
  int64_t N, S, M, D, Lq, L, P;
};

template <typename acc_t>
struct Footprint {
  int64_t pix[4];  // y * W + x of the corners (nw, ne, sw, se)
  bool valid[4];
  acc_t weight[4];
  acc_t hy, ly, hx, lx;
};

// grid_sample(align_corners=False) on CUDA: pixel = ((g + 1) * size - 1) / 2 with g = 2 * loc - 1.
template <typename acc_t>
__device__ __forceinline__ acc_t to_pixel(acc_t loc, int64_t size) {
  const acc_t g = loc * acc_t(2) - acc_t(1);
  return ((g + acc_t(1)) * static_cast<acc_t>(size) - acc_t(1)) / acc_t(2);
}

template <typename acc_t>
__device__ __forceinline__ bool make_footprint(acc_t loc_x, acc_t loc_y, int64_t H, int64_t W,
                                               Footprint<acc_t>& f) {
  const acc_t x = to_pixel(loc_x, W);
  const acc_t y = to_pixel(loc_y, H);
  if (!(x >= acc_t(-1) && y >= acc_t(-1) && x < static_cast<acc_t>(W) && y < static_cast<acc_t>(H))) {
    return false;
  }
  const acc_t x0f = floor(x);
  const acc_t y0f = floor(y);
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
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int64_t xc = x0 + (c & 1);
    const int64_t yc = y0 + (c >> 1);
    f.valid[c] = xc >= 0 && xc < W && yc >= 0 && yc < H;
    f.pix[c] = f.valid[c] ? yc * W + xc : 0;
  }
  return true;
}

__host__ __device__ __forceinline__ int group_size_for(int64_t D) {
  int g = 1;
  while (g < D && g < 32) g <<= 1;
  return g;
}

// Sum of v over the G lanes of this lane's group (G a power of two <= 32; groups aligned inside the warp).
template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t v, int G) {
  const unsigned lane_in_warp = threadIdx.x & 31u;
  const unsigned mask =
      G == 32 ? 0xffffffffu : (((1u << G) - 1u) << (lane_in_warp & ~static_cast<unsigned>(G - 1)));
  for (int offset = G / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(mask, v, offset, G);
  return v;
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                               const int64_t* __restrict__ starts, const acc_t* __restrict__ loc,
                               const acc_t* __restrict__ attn, scalar_t* __restrict__ out, Dims d, int G) {
  const int64_t groups = d.N * d.Lq * d.M;
  const int64_t per_block = blockDim.x / G;
  const int lane = threadIdx.x % G;
  const int64_t LP = d.L * d.P;
  const int64_t row_stride = d.M * d.D;
  for (int64_t grp = blockIdx.x * per_block + threadIdx.x / G; grp < groups; grp += gridDim.x * per_block) {
    const int64_t n = grp / (d.Lq * d.M);
    const int64_t m = grp % d.M;
    for (int64_t k = lane; k < d.D; k += G) {
      acc_t acc = 0;
      for (int64_t l = 0; l < d.L; ++l) {
        const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
        const scalar_t* level = value + ((n * d.S + starts[l]) * d.M + m) * d.D + k;
        for (int64_t p = 0; p < d.P; ++p) {
          const int64_t i = grp * LP + l * d.P + p;
          Footprint<acc_t> f;
          if (!make_footprint(loc[2 * i], loc[2 * i + 1], H, W, f)) continue;
          acc_t s = 0;
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            if (f.valid[c]) s += f.weight[c] * static_cast<acc_t>(level[f.pix[c] * row_stride]);
          }
          acc += attn[i] * s;
        }
      }
      out[grp * d.D + k] = static_cast<scalar_t>(acc);
    }
  }
}

// Gradients of locations and weights (always) and of value (by atomics, when grad_value != nullptr).
template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                                const int64_t* __restrict__ starts, const acc_t* __restrict__ loc,
                                const acc_t* __restrict__ attn, const scalar_t* __restrict__ grad_out,
                                acc_t* __restrict__ grad_value, acc_t* __restrict__ grad_loc,
                                acc_t* __restrict__ grad_attn, Dims d, int G) {
  const int64_t groups = d.N * d.Lq * d.M;
  const int64_t per_block = blockDim.x / G;
  const int lane = threadIdx.x % G;
  const int64_t LP = d.L * d.P;
  const int64_t row_stride = d.M * d.D;
  for (int64_t grp = blockIdx.x * per_block + threadIdx.x / G; grp < groups; grp += gridDim.x * per_block) {
    const int64_t n = grp / (d.Lq * d.M);
    const int64_t m = grp % d.M;
    for (int64_t l = 0; l < d.L; ++l) {
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
      const int64_t level_offset = ((n * d.S + starts[l]) * d.M + m) * d.D;
      for (int64_t p = 0; p < d.P; ++p) {
        const int64_t i = grp * LP + l * d.P + p;
        Footprint<acc_t> f;
        // the branch is uniform over the group (same point), so the shuffles below are safe
        if (!make_footprint(loc[2 * i], loc[2 * i + 1], H, W, f)) {
          if (lane == 0) {
            grad_attn[i] = 0;
            grad_loc[2 * i] = 0;
            grad_loc[2 * i + 1] = 0;
          }
          continue;
        }
        const acc_t a = attn[i];
        acc_t sum_s = 0, sum_x = 0, sum_y = 0;
        for (int64_t k = lane; k < d.D; k += G) {
          acc_t v[4];
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            v[c] = f.valid[c] ? static_cast<acc_t>(value[level_offset + f.pix[c] * row_stride + k]) : acc_t(0);
          }
          const acc_t go = static_cast<acc_t>(grad_out[grp * d.D + k]);
          sum_s += go * (f.weight[0] * v[0] + f.weight[1] * v[1] + f.weight[2] * v[2] + f.weight[3] * v[3]);
          sum_x += go * (f.hy * (v[1] - v[0]) + f.ly * (v[3] - v[2]));
          sum_y += go * (f.hx * (v[2] - v[0]) + f.lx * (v[3] - v[1]));
          if (grad_value != nullptr) {
#pragma unroll
            for (int c = 0; c < 4; ++c) {
              if (f.valid[c]) atomicAdd(grad_value + level_offset + f.pix[c] * row_stride + k, a * f.weight[c] * go);
            }
          }
        }
        sum_s = group_sum(sum_s, G);
        sum_x = group_sum(sum_x, G);
        sum_y = group_sum(sum_y, G);
        if (lane == 0) {
          grad_attn[i] = sum_s;
          grad_loc[2 * i] = a * sum_x * static_cast<acc_t>(W);
          grad_loc[2 * i + 1] = a * sum_y * static_cast<acc_t>(H);
        }
      }
    }
  }
}

// Deterministic grad_value, step 1: for every bilinear corner e = (n, q, m, l, p, c) the value row it reads
// (key, a row of [N*S*M, D]; INT64_MAX when outside the map) and its coefficient attn * bilinear weight.
template <typename acc_t>
__global__ void corner_keys_kernel(const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
                                   const acc_t* __restrict__ loc, const acc_t* __restrict__ attn,
                                   int64_t* __restrict__ keys, acc_t* __restrict__ coefs, Dims d) {
  const int64_t LP = d.L * d.P;
  const int64_t total = d.N * d.Lq * d.M * LP * 4;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / 4;
    const int c = static_cast<int>(e % 4);
    const int64_t grp = i / LP;
    const int64_t n = grp / (d.Lq * d.M);
    const int64_t m = grp % d.M;
    const int64_t l = (i % LP) / d.P;
    Footprint<acc_t> f;
    if (make_footprint(loc[2 * i], loc[2 * i + 1], shapes[2 * l], shapes[2 * l + 1], f) && f.valid[c]) {
      keys[e] = (n * d.S + starts[l] + f.pix[c]) * d.M + m;
      coefs[e] = attn[i] * f.weight[c];
    } else {
      keys[e] = std::numeric_limits<int64_t>::max();
      coefs[e] = 0;
    }
  }
}

// Deterministic grad_value, step 2: one group per run of equal keys in the stably sorted corner list; sums
// coef * grad_out over the run in sorted order and stores the row (each row is written by one group).
template <typename scalar_t, typename acc_t>
__global__ void segment_sum_kernel(const int64_t* __restrict__ sorted_keys, const int64_t* __restrict__ order,
                                   const int64_t* __restrict__ run_starts, int64_t runs, int64_t total,
                                   const acc_t* __restrict__ coefs, const scalar_t* __restrict__ grad_out,
                                   acc_t* __restrict__ grad_value, Dims d, int G) {
  const int64_t per_block = blockDim.x / G;
  const int lane = threadIdx.x % G;
  const int64_t LP4 = d.L * d.P * 4;
  for (int64_t r = blockIdx.x * per_block + threadIdx.x / G; r < runs; r += gridDim.x * per_block) {
    const int64_t begin = run_starts[r];
    const int64_t end = r + 1 < runs ? run_starts[r + 1] : total;
    const int64_t key = sorted_keys[begin];
    if (key == std::numeric_limits<int64_t>::max()) continue;
    for (int64_t k = lane; k < d.D; k += G) {
      acc_t sum = 0;
      for (int64_t j = begin; j < end; ++j) {
        const int64_t e = order[j];
        sum += coefs[e] * static_cast<acc_t>(grad_out[(e / LP4) * d.D + k]);
      }
      grad_value[key * d.D + k] = sum;
    }
  }
}

int64_t blocks_for(int64_t work_items, int64_t items_per_block) {
  const int64_t blocks = (work_items + items_per_block - 1) / items_per_block;
  return std::max<int64_t>(1, std::min(blocks, kMaxBlocks));
}

Dims check_and_get_dims(const at::Tensor& value, const at::Tensor& spatial_shapes,
                        const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                        const at::Tensor& attn_weight) {
  TORCH_CHECK(value.is_cuda(), "value must be a CUDA tensor");
  for (const at::Tensor* t : {&spatial_shapes, &level_start_index, &sampling_loc, &attn_weight}) {
    TORCH_CHECK(t->device() == value.device(), "all inputs must be on value's device");
    TORCH_CHECK(t->is_contiguous(), "inputs must be contiguous");
  }
  TORCH_CHECK(value.is_contiguous(), "value must be contiguous");
  TORCH_CHECK(value.dim() == 4, "value must be [N, S, M, D]");
  TORCH_CHECK(sampling_loc.dim() == 6 && sampling_loc.size(5) == 2, "sampling_loc must be [N, Lq, M, L, P, 2]");
  TORCH_CHECK(attn_weight.dim() == 5, "attn_weight must be [N, Lq, M, L, P]");
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "spatial_shapes and level_start_index must be int64");
  const auto acc_type = value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(sampling_loc.scalar_type() == acc_type && attn_weight.scalar_type() == acc_type,
              "sampling_loc and attn_weight must be float64 for float64 value, float32 otherwise");
  Dims d{value.size(0), value.size(1), value.size(2), value.size(3),
         sampling_loc.size(1), sampling_loc.size(3), sampling_loc.size(4)};
  TORCH_CHECK(sampling_loc.size(0) == d.N && sampling_loc.size(2) == d.M, "sampling_loc batch/heads mismatch");
  TORCH_CHECK(attn_weight.size(0) == d.N && attn_weight.size(1) == d.Lq && attn_weight.size(2) == d.M &&
                  attn_weight.size(3) == d.L && attn_weight.size(4) == d.P,
              "attn_weight shape mismatch");
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(0) == d.L && spatial_shapes.size(1) == 2 &&
                  level_start_index.dim() == 1 && level_start_index.size(0) == d.L,
              "level count mismatch");
  return d;
}

}  // namespace

at::Tensor ms_deform_attn_cuda_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                       const at::Tensor& attn_weight) {
  const Dims d = check_and_get_dims(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  const c10::cuda::CUDAGuard device_guard(value.device());
  auto out = at::empty({d.N, d.Lq, d.M * d.D}, value.options());
  const int64_t groups = d.N * d.Lq * d.M;
  if (out.numel() == 0 || groups == 0) return out;
  const int G = group_size_for(d.D);
  const int64_t blocks = blocks_for(groups, kThreads / G);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "lvseg_msda_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
        level_start_index.const_data_ptr<int64_t>(), sampling_loc.const_data_ptr<acc_t>(),
        attn_weight.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), d, G);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::vector<at::Tensor> ms_deform_attn_cuda_backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                     const at::Tensor& grad_output, bool need_value_grad,
                                                     bool deterministic) {
  const Dims d = check_and_get_dims(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  TORCH_CHECK(grad_output.is_contiguous() && grad_output.device() == value.device() &&
                  grad_output.scalar_type() == value.scalar_type() && grad_output.dim() == 3 &&
                  grad_output.size(0) == d.N && grad_output.size(1) == d.Lq && grad_output.size(2) == d.M * d.D,
              "grad_output must be a contiguous [N, Lq, M*D] tensor of value's dtype on value's device");
  const c10::cuda::CUDAGuard device_guard(value.device());
  const auto acc_type = value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto acc_opts = value.options().dtype(acc_type);
  at::Tensor grad_value_acc;
  if (need_value_grad) grad_value_acc = at::zeros(value.sizes(), acc_opts);
  auto grad_loc = at::zeros(sampling_loc.sizes(), acc_opts);
  auto grad_attn = at::zeros(attn_weight.sizes(), acc_opts);
  const int64_t groups = d.N * d.Lq * d.M;
  if (groups > 0 && d.D > 0 && d.L * d.P > 0) {
    const int G = group_size_for(d.D);
    const int64_t blocks = blocks_for(groups, kThreads / G);
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const bool atomics = need_value_grad && !deterministic;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "lvseg_msda_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      backward_kernel<scalar_t, acc_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
          level_start_index.const_data_ptr<int64_t>(), sampling_loc.const_data_ptr<acc_t>(),
          attn_weight.const_data_ptr<acc_t>(), grad_output.const_data_ptr<scalar_t>(),
          atomics ? grad_value_acc.mutable_data_ptr<acc_t>() : nullptr, grad_loc.mutable_data_ptr<acc_t>(),
          grad_attn.mutable_data_ptr<acc_t>(), d, G);
      C10_CUDA_KERNEL_LAUNCH_CHECK();

      if (need_value_grad && deterministic) {
        const int64_t corners = groups * d.L * d.P * 4;
        auto keys = at::empty({corners}, value.options().dtype(at::kLong));
        auto coefs = at::empty({corners}, acc_opts);
        corner_keys_kernel<acc_t><<<static_cast<unsigned>(blocks_for(corners, kThreads)), kThreads, 0, stream>>>(
            spatial_shapes.const_data_ptr<int64_t>(), level_start_index.const_data_ptr<int64_t>(),
            sampling_loc.const_data_ptr<acc_t>(), attn_weight.const_data_ptr<acc_t>(),
            keys.mutable_data_ptr<int64_t>(), coefs.mutable_data_ptr<acc_t>(), d);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        // a stable sort keeps corners of one row in (n, q, m, l, p, c) order: a fixed summation order
        auto sorted = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
        const at::Tensor& sorted_keys = std::get<0>(sorted);
        const at::Tensor& order = std::get<1>(sorted);
        auto is_start = at::ones({corners}, value.options().dtype(at::kBool));
        if (corners > 1) {
          is_start.slice(0, 1).copy_(sorted_keys.slice(0, 1).ne(sorted_keys.slice(0, 0, corners - 1)));
        }
        auto run_starts = at::nonzero(is_start).flatten().contiguous();
        const int64_t runs = run_starts.numel();
        segment_sum_kernel<scalar_t, acc_t>
            <<<static_cast<unsigned>(blocks_for(runs, kThreads / G)), kThreads, 0, stream>>>(
                sorted_keys.const_data_ptr<int64_t>(), order.const_data_ptr<int64_t>(),
                run_starts.const_data_ptr<int64_t>(), runs, corners, coefs.const_data_ptr<acc_t>(),
                grad_output.const_data_ptr<scalar_t>(), grad_value_acc.mutable_data_ptr<acc_t>(), d, G);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  at::Tensor grad_value;
  if (need_value_grad) {
    grad_value = grad_value_acc.scalar_type() == value.scalar_type() ? grad_value_acc
                                                                     : grad_value_acc.to(value.scalar_type());
  }
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace lvseg_msda
