// Multi-scale deformable attention, CUDA entry points (lvseg). Implemented in ms_deform_attn_cuda.cu.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace lvseg_msda {

// value [N, S, M, D] (float32/float64/float16/bfloat16), spatial_shapes [L, 2] int64, level_start_index [L]
// int64, sampling_loc [N, Lq, M, L, P, 2] and attn_weight [N, Lq, M, L, P] in float64 for float64 values and
// float32 otherwise; all contiguous and on one CUDA device. Returns [N, Lq, M * D] in value's dtype.
at::Tensor ms_deform_attn_cuda_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                       const at::Tensor& attn_weight);

// Returns {grad_value (undefined unless need_value_grad), grad_sampling_loc, grad_attn_weight}. With
// deterministic=true grad_value is reduced without atomics (sort + segmented sum; more memory, run-to-run
// identical results).
std::vector<at::Tensor> ms_deform_attn_cuda_backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                     const at::Tensor& grad_output, bool need_value_grad,
                                                     bool deterministic);

}  // namespace lvseg_msda
