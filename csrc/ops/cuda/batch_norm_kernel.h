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

// Training forward, between the statistics and the apply: per channel, from the float64 mean and
// M2, invstd (welford_rstd, as the CPU), the apply coefficients mean, scale = invstd * weight,
// shift = bias, and the updated running statistics (common/welford.h's running_stat_update, as
// the CPU), in one launch instead of a dozen small ops.
struct TrainFinalizeArgs {
  const double* mean;  // [C]
  const double* m2;    // [C]
  int64_t count;       // values per channel, N * HxW
  double eps;
  const void* weight;  // acc_t[C] or nullptr
  const void* bias;    // acc_t[C] or nullptr
  void* invstd;        // acc_t[C]
  void* coeffs;        // acc_t[3 * C]: mean | scale | shift
  // Running statistics (running_mean == nullptr: none to update). They and new_* are [C] of
  // acc_t when running_in_acc, else of the input's dtype.
  const void* running_mean;
  const void* running_var;
  void* new_mean;
  void* new_var;
  bool running_in_acc;
  double momentum;
};

// Training backward, between the sums and dx: per channel, the coefficients a, b, k of
// dx = a dy + b (x - mean) rstd + k (common/welford.h's batch_norm_grad_coeffs, as the CPU).
struct TrainGradCoeffsArgs {
  const void* sum_dy_xmu;  // acc_t[C]
  const void* sum_dy;      // acc_t[C]
  const void* invstd;      // acc_t[C]
  const void* weight;      // acc_t[C] or nullptr
  double inv_count;
  void* coeffs;            // acc_t[3 * C]: a | b | k
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
cudaError_t launch_batch_norm_train_finalize(const BatchNormPlan& plan, ScalarKind kind,
                                             const TrainFinalizeArgs& args, cudaStream_t stream);
cudaError_t launch_batch_norm_train_grad_coeffs(const BatchNormPlan& plan, ScalarKind kind,
                                                const TrainGradCoeffsArgs& args,
                                                cudaStream_t stream);

} // namespace bn
} // namespace cuda
} // namespace normext
