// GroupNorm CUDA registration: the shared op layer (ops/group_norm.cpp: checks, layout choice,
// allocation) with the CUDA kernels of group_norm_kernel.cu. This file turns tensors into raw
// pointers, plans the launch for the current device, allocates the scratch buffers through the
// caching allocator and enqueues the kernels on the current stream.
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime_api.h>

#include "common/profiling.h"
#include "ops/cuda/cuda_host_common.h"
#include "ops/cuda/group_norm_kernel.h"
#include "ops/cuda/group_norm_launch.h"
#include "ops/group_norm.h"

namespace normext {
namespace {

using Kind = cuda::ScalarKind;

cuda::GroupNormPlan plan_for(const GroupNormShape& s, const at::Tensor& X) {
  return cuda::make_group_norm_plan(s.N, s.C, s.HxW, s.G, s.channels_last, sm_count_of(X));
}

void group_norm_forward_cuda_kernel(const GroupNormShape& shape, const at::Tensor& X,
                                    const at::Tensor& gamma, const at::Tensor& beta, double eps,
                                    const GroupNormFusion& fusion, at::Tensor& Y,
                                    at::Tensor& mean, at::Tensor& rstd) {
  NORMEXT_RANGE("normext::group_norm_forward_cuda_kernel");
  const c10::cuda::CUDAGuard guard(X.device());
  // NB: on CUDA the residual add is its own elementwise pass (summed is written, then normalized
  // like any input); the activation is fused into the apply kernel.
  const at::Tensor& src = fusion.residual.defined() ? fusion.summed : X;
  if (fusion.residual.defined()) {
    at::Tensor summed = fusion.summed;  // a handle to the same storage
    at::add_out(summed, X, fusion.residual);
  }
  const cuda::GroupNormPlan plan = plan_for(shape, X);
  const auto acc_options = X.options().dtype(mean.scalar_type());
  // Scratch through the caching allocator: no cudaMalloc per call, stream-ordered reuse.
  at::Tensor stat_partials =
      at::empty({plan.stat_partials * static_cast<int64_t>(cuda::kStatPartialBytes)},
                X.options().dtype(at::kByte));
  at::Tensor channel_coeffs = at::empty({3 * shape.N * shape.C}, acc_options);
  cuda::ForwardArgs args{};
  args.x = src.const_data_ptr();
  args.y = Y.mutable_data_ptr();
  args.gamma = data_or_null(gamma);
  args.beta = data_or_null(beta);
  args.mean = mean.mutable_data_ptr();
  args.rstd = rstd.mutable_data_ptr();
  args.stat_partials = stat_partials.mutable_data_ptr();
  args.channel_coeffs = channel_coeffs.mutable_data_ptr();
  args.eps = eps;
  args.activation = static_cast<int>(fusion.activation);
  C10_CUDA_CHECK(cuda::launch_group_norm_forward(plan, scalar_kind_of<Kind>(X), args,
                                                 c10::cuda::getCurrentCUDAStream().stream()));
}

void group_norm_backward_cuda_kernel(const GroupNormShape& shape, const at::Tensor& dY,
                                     const at::Tensor& X, const at::Tensor& mean,
                                     const at::Tensor& rstd, const at::Tensor& gamma,
                                     const at::Tensor& beta, int64_t activation,
                                     at::Tensor& dX, at::Tensor& dgamma, at::Tensor& dbeta) {
  NORMEXT_RANGE("normext::group_norm_backward_cuda_kernel");
  const c10::cuda::CUDAGuard guard(X.device());
  const cuda::GroupNormPlan plan = plan_for(shape, X);
  // With an activation, dY is the gradient of act(z): one elementwise pass recomputes z from X
  // and the statistics and turns dY into g = dY * act'(z), which the GroupNorm backward takes.
  at::Tensor G;
  if (activation != 0) {
    const at::Tensor coeffs =
        at::empty({3 * shape.N * shape.C}, X.options().dtype(mean.scalar_type()));
    G = at::empty_like(dY);
    cuda::ActGradArgs act_args{};
    act_args.dy = dY.const_data_ptr();
    act_args.x = X.const_data_ptr();
    act_args.mean = mean.const_data_ptr();
    act_args.rstd = rstd.const_data_ptr();
    act_args.gamma = data_or_null(gamma);
    act_args.beta = data_or_null(beta);
    act_args.coeffs = coeffs.mutable_data_ptr();
    act_args.g = G.mutable_data_ptr();
    act_args.activation = static_cast<int>(activation);
    C10_CUDA_CHECK(cuda::launch_group_norm_act_grad(plan, scalar_kind_of<Kind>(X), act_args,
                                                    c10::cuda::getCurrentCUDAStream().stream()));
  }
  const at::Tensor& grad = activation != 0 ? G : dY;
  const auto acc_options = X.options().dtype(mean.scalar_type());
  const int64_t NC = shape.N * shape.C;
  at::Tensor sum_partials = at::empty({2 * plan.sum_partials}, acc_options);
  at::Tensor channel_sums = at::empty({2 * NC}, acc_options);
  at::Tensor dx_coeffs = dX.defined() ? at::empty({5 * NC}, acc_options) : at::Tensor();
  cuda::BackwardArgs args{};
  args.dy = grad.const_data_ptr();
  args.x = X.const_data_ptr();
  args.mean = mean.const_data_ptr();
  args.rstd = rstd.const_data_ptr();
  args.gamma = data_or_null(gamma);
  args.dx = mutable_data_or_null(dX);
  args.dgamma = mutable_data_or_null(dgamma);
  args.dbeta = mutable_data_or_null(dbeta);
  args.sum_partials = sum_partials.mutable_data_ptr();
  args.channel_sums = channel_sums.mutable_data_ptr();
  args.dx_coeffs = mutable_data_or_null(dx_coeffs);
  C10_CUDA_CHECK(cuda::launch_group_norm_backward(plan, scalar_kind_of<Kind>(X), args,
                                                  c10::cuda::getCurrentCUDAStream().stream()));
}

} // namespace

TORCH_LIBRARY_IMPL(normext, CUDA, m) {
  m.impl("group_norm_forward", &group_norm_forward_on<group_norm_forward_cuda_kernel>);
  m.impl("group_norm_backward", &group_norm_backward_on<group_norm_backward_cuda_kernel>);
  m.impl("add_group_norm_forward", &add_group_norm_forward_on<group_norm_forward_cuda_kernel>);
  m.impl("group_norm_inplace", &group_norm_inplace_on<group_norm_forward_cuda_kernel>);
}

} // namespace normext
