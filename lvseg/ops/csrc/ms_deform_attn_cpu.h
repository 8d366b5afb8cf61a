// Multi-scale deformable attention: the CPU kernels' entry points (lvseg).
// Only the Tensor class is declared here, so that the binding (ms_deform_attn_cpu_bind.cpp) and the kernels
// (ms_deform_attn_cpu.cpp) compile as two translation units in parallel, neither including torch/extension.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace lvseg_msda_cpu {

// value [N, S, M, D], spatial_shapes [L, 2] int64, level_start_index [L] int64,
// sampling_loc [N, Lq, M, L, P, 2], attn_weight [N, Lq, M, L, P]  ->  output [N, Lq, M * D]
at::Tensor forward(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                   const at::Tensor& sampling_loc, const at::Tensor& attn_weight);

// -> {grad_value [N, S, M, D] (undefined unless need_value_grad), grad_loc, grad_attn}
std::vector<at::Tensor> backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                 const at::Tensor& attn_weight, const at::Tensor& grad_output, bool need_value_grad,
                                 bool deterministic);

std::string isa();        // the instruction set the kernels use now: "default" or "avx2"
std::string best_isa();   // the best one this CPU supports
void set_isa(const std::string& name);  // "auto", "default" or "avx2"

}  // namespace lvseg_msda_cpu
