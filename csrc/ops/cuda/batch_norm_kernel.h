// Entry points of the CUDA BatchNorm kernels (batch_norm_kernel.cu), called by the host glue
// (batch_norm_cuda.cpp). No torch types cross this boundary: raw pointers, the launch plan and a
// dtype tag, so the .cu file never includes a torch header.
#pragma once

#include <cuda_runtime_api.h>

#include "common/welford.h"
#include "ops/cuda/batch_norm_launch.h"
#include "ops/cuda/group_norm_kernel.h"  // ScalarKind

namespace normext {
namespace cuda {
namespace bn {

// acc_t below is double for Double input, float otherwise. Per-channel arrays have C entries.

struct StatsArgs {
  const void* x;                      // input, in the plan's layout
  double* mean;                       // [C]
  double* m2;                         // [C]
  WelfordStat<double>* partials;      // [plan.partials] of scratch
};

struct ApplyArgs {
  const void* x;
  void* y;
  const void* mean;   // acc_t[C]
  const void* scale;  // acc_t[C]
  const void* shift;  // acc_t[C]
};

struct GradSumsArgs {
  const void* dy;
  const void* x;
  const void* mean;   // acc_t[C]
  void* sum_dy_xmu;   // acc_t[C]
  void* sum_dy;       // acc_t[C]
  double* partials;   // [2 * plan.partials] of scratch: (ds, db) per partial
};

struct GradInputArgs {
  const void* dy;
  const void* x;
  void* dx;
  const void* a;      // acc_t[C] each: dx = a dy + b (x - mean) rstd + k
  const void* mean;
  const void* rstd;
  const void* b;
  const void* k;
};

// Enqueue the kernels of one step on `stream`. Return the first launch error, or cudaSuccess;
// nothing is synchronized.
cudaError_t launch_batch_norm_stats(const BatchNormPlan& plan, ScalarKind kind,
                                    const StatsArgs& args, cudaStream_t stream);
cudaError_t launch_batch_norm_apply(const BatchNormPlan& plan, ScalarKind kind,
                                    const ApplyArgs& args, cudaStream_t stream);
cudaError_t launch_batch_norm_grad_sums(const BatchNormPlan& plan, ScalarKind kind,
                                        const GradSumsArgs& args, cudaStream_t stream);
cudaError_t launch_batch_norm_grad_input(const BatchNormPlan& plan, ScalarKind kind,
                                         const GradInputArgs& args, cudaStream_t stream);

} // namespace bn
} // namespace cuda
} // namespace normext
