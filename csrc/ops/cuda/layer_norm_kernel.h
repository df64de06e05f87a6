// Entry points of the CUDA row-norm kernels (layer_norm_kernel.cu: LayerNorm, RMSNorm), called by
// the host glue (layer_norm_cuda.cpp). No torch types cross this boundary: raw pointers, the launch
// plan and a dtype tag, so the .cu file never includes a torch header.
#pragma once

#include <cuda_runtime_api.h>

#include "ops/cuda/layer_norm_launch.h"

namespace normext {
namespace cuda {
namespace row_norm {

enum class Scalar { Float, Double, Half, BFloat16 };

// Pointers of one forward call; acc_t is double for Double, float otherwise. All M x D arrays
// are contiguous.
struct ForwardArgs {
  const void* x;
  const void* residual;  // or null: plain norm
  void* y;
  void* summed;          // x + residual (rounded to T), when residual is given
  const void* gamma;     // acc_t[D] or null (1)
  const void* beta;      // acc_t[D] or null (0)
  void* mean;            // acc_t[M], or null: RMSNorm
  void* rstd;            // acc_t[M]
  double eps;
};

struct BackwardArgs {
  const void* dy;
  const void* x;
  const void* mean;      // acc_t[M], or null: RMSNorm
  const void* rstd;      // acc_t[M]
  const void* gamma;     // acc_t[D] or null (1)
  void* dx;              // or null: not wanted
  void* dgamma;          // acc_t[D] or null: not wanted
  void* dbeta;           // acc_t[D] or null: not wanted
  void* partials;        // acc_t[2 * plan.partials] of scratch when dgamma or dbeta is wanted
};

// Enqueue the kernels of `plan` on `stream`; returns the first launch error or cudaSuccess.
cudaError_t launch_row_norm_forward(const RowNormPlan& plan, Scalar kind, const ForwardArgs& args,
                                    cudaStream_t stream);
cudaError_t launch_row_norm_backward(const RowNormPlan& plan, Scalar kind,
                                     const BackwardArgs& args, cudaStream_t stream);

} // namespace row_norm
} // namespace cuda
} // namespace normext
