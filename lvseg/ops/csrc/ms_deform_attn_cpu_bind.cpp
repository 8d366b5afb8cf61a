// Python bindings of the CPU multi-scale deformable attention kernels (lvseg).
// torch/csrc/utils/pybind.h holds pybind11's Tensor conversions and costs a fifth of torch/extension.h to parse.
#include <torch/csrc/utils/pybind.h>

#include "ms_deform_attn_cpu.h"

namespace py = pybind11;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lvseg multi-scale deformable attention, CPU kernels";
  m.def("forward", &lvseg_msda_cpu::forward, "MSDA forward (CPU)", py::arg("value"), py::arg("spatial_shapes"),
        py::arg("level_start_index"), py::arg("sampling_loc"), py::arg("attn_weight"));
  m.def("backward", &lvseg_msda_cpu::backward, "MSDA backward (CPU)", py::arg("value"), py::arg("spatial_shapes"),
        py::arg("level_start_index"), py::arg("sampling_loc"), py::arg("attn_weight"), py::arg("grad_output"),
        py::arg("need_value_grad"), py::arg("deterministic"));
  m.def("isa", &lvseg_msda_cpu::isa, "instruction set the kernels use now: default or avx2");
  m.def("best_isa", &lvseg_msda_cpu::best_isa, "best instruction set this CPU supports");
  m.def("set_isa", &lvseg_msda_cpu::set_isa, "force the kernels' instruction set (auto, default, avx2)",
        py::arg("name"));
}
