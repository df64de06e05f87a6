// DyT CUDA registration: the shared op layer (ops/dyt.cpp) with the kernels of dyt_kernel.cu.
// Tensors become raw pointers; the launch is planned for the current device, scratch comes from
// the caching allocator and the kernels run on the current stream.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime_api.h>

#include "common/profiling.h"
#include "ops/cuda/cuda_host_common.h"
#include "ops/cuda/dyt_kernel.h"
#include "ops/cuda/dyt_launch.h"
#include "ops/dyt.h"

namespace normext {
namespace {

using Kind = cuda::DytScalarKind;

cuda::DytPlan plan_for(const DytShape& s, const at::Tensor& X) {
  // NB: 4 blocks of 256 threads per SM: one wave of the reduction kernels.
  return cuda::make_dyt_plan(s.rows, s.C, s.inner, s.planes, 4 * sm_count_of(X));
}

void dyt_forward_cuda_kernel(const DytShape& shape, const at::Tensor& X, const at::Tensor& alpha,
                             const at::Tensor& gamma, const at::Tensor& beta, at::Tensor& Y) {
  NORMEXT_RANGE("normext::dyt_forward_cuda_kernel");
  const c10::cuda::CUDAGuard guard(X.device());
  const cuda::DytPlan plan = plan_for(shape, X);
  cuda::DytForwardArgs args{};
  args.x = X.const_data_ptr();
  args.y = Y.mutable_data_ptr();
  args.alpha = alpha.const_data_ptr();
  args.gamma = data_or_null(gamma);
  args.beta = data_or_null(beta);
  C10_CUDA_CHECK(cuda::launch_dyt_forward(plan, scalar_kind_of<Kind>(X), args,
                                          c10::cuda::getCurrentCUDAStream().stream()));
}

void dyt_backward_cuda_kernel(const DytShape& shape, const at::Tensor& dY, const at::Tensor& X,
                              const at::Tensor& alpha, const at::Tensor& gamma, at::Tensor& dX,
                              at::Tensor& dalpha, at::Tensor& dgamma, at::Tensor& dbeta) {
  NORMEXT_RANGE("normext::dyt_backward_cuda_kernel");
  const c10::cuda::CUDAGuard guard(X.device());
  const cuda::DytPlan plan = plan_for(shape, X);
  const auto acc_options = X.options().dtype(alpha.scalar_type());
  at::Tensor sum_partials = at::empty({2 * plan.sum_partials}, acc_options);
  at::Tensor alpha_partials = at::empty({plan.sum_tiles}, acc_options);
  cuda::DytBackwardArgs args{};
  args.dy = dY.const_data_ptr();
  args.x = X.const_data_ptr();
  args.alpha = alpha.const_data_ptr();
  args.gamma = data_or_null(gamma);
  args.dx = mutable_data_or_null(dX);
  args.dalpha = mutable_data_or_null(dalpha);
  args.dgamma = mutable_data_or_null(dgamma);
  args.dbeta = mutable_data_or_null(dbeta);
  args.sum_partials = sum_partials.mutable_data_ptr();
  args.alpha_partials = alpha_partials.mutable_data_ptr();
  C10_CUDA_CHECK(cuda::launch_dyt_backward(plan, scalar_kind_of<Kind>(X), args,
                                           c10::cuda::getCurrentCUDAStream().stream()));
}

} // namespace

TORCH_LIBRARY_IMPL(normext, CUDA, m) {
  m.impl("dyt_forward", &dyt_forward_on<dyt_forward_cuda_kernel>);
  m.impl("dyt_backward", &dyt_backward_on<dyt_backward_cuda_kernel>);
}

} // namespace normext
