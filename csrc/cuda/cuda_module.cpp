// embedcluster._cuda: the CUDA engine (built when CMake finds a CUDA compiler). Importing it needs
// no GPU; available() says whether one can run the engine here.
#include "gpu_bindings.hpp"

namespace ec {
namespace gpu {
std::string cuda_device_summary();  // cuda_device.cu
}
}  // namespace ec

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "embedcluster's CUDA engine: exact k-means passes, kNN and DBSCAN on TF32 tensor-core tiles.";
  ecgpu::bind_gpu_backend(m, ec::gpu::cuda_backend(), true);
  m.def("device_summary", &ec::gpu::cuda_device_summary, "The first CUDA device, in words ('' when none).");
}
