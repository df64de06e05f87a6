// Entry points of the CUDA DyT kernels (dyt_kernel.cu), called by dyt_cuda.cpp. Raw pointers, the
// launch plan and a dtype tag: no torch types cross this boundary.
#pragma once

#include <cuda_runtime_api.h>

#include "ops/cuda/dyt_launch.h"

namespace normext {
namespace cuda {

enum class DytScalarKind { Float, Double, Half, BFloat16 };

// acc_t is double for Double, float otherwise.
struct DytForwardArgs {
  const void* x;
  void* y;
  const void* alpha;  // acc_t[1]
  const void* gamma;  // acc_t[C] or null (1)
  const void* beta;   // acc_t[C] or null (0)
};

struct DytBackwardArgs {
  const void* dy;
  const void* x;
  const void* alpha;     // acc_t[1]
  const void* gamma;     // acc_t[C] or null (1)
  void* dx;              // or null: not wanted
  void* dalpha;          // acc_t[1] or null
  void* dgamma;          // acc_t[C] or null
  void* dbeta;           // acc_t[C] or null
  void* sum_partials;    // acc_t[2 * plan.sum_partials] of scratch
  void* alpha_partials;  // acc_t[plan.sum_tiles] of scratch
};

cudaError_t launch_dyt_forward(const DytPlan& plan, DytScalarKind kind, const DytForwardArgs& args,
                               cudaStream_t stream);
cudaError_t launch_dyt_backward(const DytPlan& plan, DytScalarKind kind,
                                const DytBackwardArgs& args, cudaStream_t stream);

} // namespace cuda
} // namespace normext
