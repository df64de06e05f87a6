// Row-norm CUDA registration (LayerNorm, RMSNorm, fused residual add): the shared op layer
// (ops/layer_norm.cpp: checks, allocation) with the CUDA kernels of layer_norm_kernel.cu. This
// file turns tensors into raw pointers, plans the launch for the current device, allocates the
// scratch through the caching allocator and enqueues the kernels on the current stream.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime_api.h>

#include "common/profiling.h"
#include "ops/cuda/cuda_host_common.h"
#include "ops/cuda/layer_norm_kernel.h"
#include "ops/cuda/layer_norm_launch.h"
#include "ops/layer_norm.h"

namespace normext {
namespace {

namespace rn = cuda::row_norm;
using Kind = rn::Scalar;

// NB: asked per call of the tensor's device (a cheap driver query), never cached for device 0.
rn::RowNormPlan plan_for(const RowNormShape& s, const at::Tensor& X) {
  return rn::make_row_norm_plan(s.M, s.D, static_cast<int64_t>(X.element_size()),
                               sm_count_of(X));
}

void row_norm_forward_cuda_kernel(const RowNormShape& shape, const at::Tensor& X,
                                  const at::Tensor& R, const at::Tensor& gamma,
                                  const at::Tensor& beta, double eps, at::Tensor& Y,
                                  at::Tensor& S, at::Tensor& mean, at::Tensor& rstd) {
  NORMEXT_RANGE("normext::row_norm_forward_cuda_kernel");
  const c10::cuda::CUDAGuard guard(X.device());
  const rn::RowNormPlan plan = plan_for(shape, X);
  rn::ForwardArgs args{};
  args.x = X.const_data_ptr();
  args.residual = data_or_null(R);
  args.y = Y.mutable_data_ptr();
  args.summed = mutable_data_or_null(S);
  args.gamma = data_or_null(gamma);
  args.beta = data_or_null(beta);
  args.mean = mutable_data_or_null(mean);
  args.rstd = rstd.mutable_data_ptr();
  args.eps = eps;
  C10_CUDA_CHECK(rn::launch_row_norm_forward(plan, scalar_kind_of<Kind>(X), args,
                                             c10::cuda::getCurrentCUDAStream().stream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void row_norm_backward_cuda_kernel(const RowNormShape& shape, const at::Tensor& dY,
                                   const at::Tensor& X, const at::Tensor& mean,
                                   const at::Tensor& rstd, const at::Tensor& gamma,
                                   at::Tensor& dX, at::Tensor& dgamma, at::Tensor& dbeta) {
  NORMEXT_RANGE("normext::row_norm_backward_cuda_kernel");
  const c10::cuda::CUDAGuard guard(X.device());
  const rn::RowNormPlan plan = plan_for(shape, X);
  at::Tensor partials = dgamma.defined() || dbeta.defined()
                            ? at::empty({2 * plan.partials}, X.options().dtype(rstd.scalar_type()))
                            : at::Tensor();
  rn::BackwardArgs args{};
  args.dy = dY.const_data_ptr();
  args.x = X.const_data_ptr();
  args.mean = data_or_null(mean);
  args.rstd = rstd.const_data_ptr();
  args.gamma = data_or_null(gamma);
  args.dx = mutable_data_or_null(dX);
  args.dgamma = mutable_data_or_null(dgamma);
  args.dbeta = mutable_data_or_null(dbeta);
  args.partials = mutable_data_or_null(partials);
  C10_CUDA_CHECK(rn::launch_row_norm_backward(plan, scalar_kind_of<Kind>(X), args,
                                              c10::cuda::getCurrentCUDAStream().stream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

} // namespace

TORCH_LIBRARY_IMPL(normext, CUDA, m) {
  m.impl("layer_norm_forward", &layer_norm_forward_on<row_norm_forward_cuda_kernel>);
  m.impl("layer_norm_backward", &layer_norm_backward_on<row_norm_backward_cuda_kernel>);
  m.impl("rms_norm_forward", &rms_norm_forward_on<row_norm_forward_cuda_kernel>);
  m.impl("rms_norm_backward", &rms_norm_backward_on<row_norm_backward_cuda_kernel>);
  m.impl("add_layer_norm_forward", &add_layer_norm_forward_on<row_norm_forward_cuda_kernel>);
  m.impl("add_rms_norm_forward", &add_rms_norm_forward_on<row_norm_forward_cuda_kernel>);
}

} // namespace normext
