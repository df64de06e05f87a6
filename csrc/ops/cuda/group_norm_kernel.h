// Entry points of the CUDA GroupNorm kernels (group_norm_kernel.cu), called by the host glue
// (group_norm_cuda.cpp). No torch types cross this boundary: raw pointers, the launch plan and a
// dtype tag, so the .cu file never includes a torch header.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "common/welford.h"
#include "ops/cuda/group_norm_launch.h"

namespace normext {
namespace cuda {

enum class ScalarKind { Float, Double, Half, BFloat16 };

// Bytes of one forward statistics partial (a WelfordStat<double>).
constexpr size_t kStatPartialBytes = sizeof(WelfordStat<double>);

// Pointers of one forward call. acc_t is double for Double, float otherwise.
struct ForwardArgs {
  const void* x;       // input, in the plan's layout
  void* y;             // output, same layout
  const void* gamma;   // acc_t[C] or null (1)
  const void* beta;    // acc_t[C] or null (0)
  void* mean;          // acc_t[N * G]
  void* rstd;          // acc_t[N * G]
  void* stat_partials; // plan.stat_partials * kStatPartialBytes bytes of scratch
  void* channel_coeffs;  // acc_t[3 * N * C] of scratch: per (n, c) mean, scale, bias
  double eps;
  int activation;  // applied to y: 0 none, 1 silu, 2 gelu, 3 gelu_tanh, 4 relu
};

// Pointers of one backward call.
struct BackwardArgs {
  const void* dy;
  const void* x;
  const void* mean;    // acc_t[N * G]
  const void* rstd;    // acc_t[N * G]
  const void* gamma;   // acc_t[C] or null (1)
  void* dx;            // or null: not wanted
  void* dgamma;        // acc_t[C] or null: not wanted
  void* dbeta;         // acc_t[C] or null: not wanted
  void* sum_partials;  // acc_t[2 * plan.sum_partials] of scratch
  void* channel_sums;  // acc_t[2 * N * C] of scratch: per (n, c) ds, db
  void* dx_coeffs;     // acc_t[5 * N * C] of scratch when dx is wanted, else null
};

// Enqueue the forward (backward) kernels of `plan` on `stream`. Returns the first launch error,
// or cudaSuccess; nothing is synchronized.
// Fused activation backward: g = dy * act'(z), z = (x - mean_c) * scale_c + bias_c recomputed
// from x with per-(n, c) coefficients (layout of ForwardArgs::channel_coeffs); g (the layout of
// x) then goes through launch_group_norm_backward in place of dy.
struct ActGradArgs {
  const void* dy;
  const void* x;
  const void* mean;    // acc_t[N * G]: the forward's statistics
  const void* rstd;    // acc_t[N * G]
  const void* gamma;   // acc_t[C] or nullptr
  const void* beta;    // acc_t[C] or nullptr
  void* coeffs;        // acc_t[3 * N * C] of scratch: mean | scale | bias per (n, c)
  void* g;
  int activation;
};

cudaError_t launch_group_norm_act_grad(const GroupNormPlan& plan, ScalarKind kind,
                                       const ActGradArgs& args, cudaStream_t stream);

cudaError_t launch_group_norm_forward(const GroupNormPlan& plan, ScalarKind kind,
                                      const ForwardArgs& args, cudaStream_t stream);
cudaError_t launch_group_norm_backward(const GroupNormPlan& plan, ScalarKind kind,
                                       const BackwardArgs& args, cudaStream_t stream);

} // namespace cuda
} // namespace normext
