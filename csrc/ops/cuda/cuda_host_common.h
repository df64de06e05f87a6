// Host glue shared by the CUDA registrations (csrc/ops/cuda/*_cuda.cpp): the kernels' dtype enum
// of a tensor, the SM count the launch plans take, and raw pointers of optional tensors.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include <cuda_runtime_api.h>

namespace normext {

// The kernels' storage-type enum (an enum class with Float, Double, Half and BFloat16) of t.
template <typename Kind>
Kind scalar_kind_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return Kind::Float;
    case at::kDouble:
      return Kind::Double;
    case at::kHalf:
      return Kind::Half;
    case at::kBFloat16:
      return Kind::BFloat16;
    default:
      break;
  }
  // Unreachable: the op layers accept floating dtypes only.
  TORCH_CHECK_NOT_IMPLEMENTED(false, "normext (CUDA): not implemented for '", t.scalar_type(),
                              "'");
  return Kind::Float;
}

// NB: asked per call of the tensor's device (a cheap driver query), never cached for device 0.
inline int64_t sm_count_of(const at::Tensor& t) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, t.get_device()));
  return sms;
}

inline const void* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr() : nullptr;
}

inline void* mutable_data_or_null(at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr() : nullptr;
}

} // namespace normext
