// Python bindings of the CUDA multi-scale deformable attention kernels (lvseg).
#include <torch/extension.h>

#include "ms_deform_attn_cuda.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lvseg multi-scale deformable attention, CUDA kernels";
  m.def("forward", &lvseg_msda::ms_deform_attn_cuda_forward, "MSDA forward (CUDA)", py::arg("value"),
        py::arg("spatial_shapes"), py::arg("level_start_index"), py::arg("sampling_loc"), py::arg("attn_weight"));
  m.def("backward", &lvseg_msda::ms_deform_attn_cuda_backward, "MSDA backward (CUDA)", py::arg("value"),
        py::arg("spatial_shapes"), py::arg("level_start_index"), py::arg("sampling_loc"), py::arg("attn_weight"),
        py::arg("grad_output"), py::arg("need_value_grad"), py::arg("deterministic"));
}
