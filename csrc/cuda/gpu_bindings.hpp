// Registers the GPU engine's Python API (gpu_bindings.cpp) on a module, for one backend.
#pragma once

#include <pybind11/pybind11.h>

#include "gpu_backend.hpp"

namespace ecgpu {

/// `cuda`: the arrays speak __cuda_array_interface__ (else __array_interface__: the host model).
void bind_gpu_backend(pybind11::module_& m, ec::gpu::Backend& backend, bool cuda);

}  // namespace ecgpu
