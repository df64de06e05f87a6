// BatchNorm CUDA registration: the shared op layer (ops/batch_norm.cpp: checks, layout choice,
// allocation, per-channel math) with the CUDA kernels of batch_norm_kernel.cu. This file turns
// tensors into raw pointers, plans the launch for the current device, allocates the partial
// buffers through the caching allocator and enqueues the kernels on the current stream.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime_api.h>

#include "common/profiling.h"
#include "ops/cuda/cuda_host_common.h"
#include "ops/batch_norm.h"
#include "ops/cuda/batch_norm_kernel.h"
#include "ops/cuda/batch_norm_launch.h"

namespace normext {
namespace {

using Kind = cuda::ScalarKind;

cuda::bn::BatchNormPlan plan_for(const BatchNormShape& s, const at::Tensor& X) {
  return cuda::bn::make_batch_norm_plan(s.N, s.C, s.HxW, s.channels_last, sm_count_of(X));
}

// The statistics kernels of `plan` on `stream`, with their partials from the caching allocator.
void enqueue_stats(const cuda::bn::BatchNormPlan& plan, const at::Tensor& X, at::Tensor& mean,
                   at::Tensor& m2, cudaStream_t stream) {
  at::Tensor partials = at::empty(
      {plan.partials * static_cast<int64_t>(sizeof(WelfordStat<double>))},
      X.options().dtype(at::kByte));
  cuda::bn::StatsArgs args{};
  args.x = X.const_data_ptr();
  args.mean = mean.mutable_data_ptr<double>();
  args.m2 = m2.mutable_data_ptr<double>();
  args.partials = static_cast<WelfordStat<double>*>(partials.mutable_data_ptr());
  C10_CUDA_CHECK(cuda::bn::launch_batch_norm_stats(plan, scalar_kind_of<Kind>(X), args, stream));
}

// The backward sums of `plan` on `stream`, likewise.
void enqueue_grad_sums(const cuda::bn::BatchNormPlan& plan, const at::Tensor& dY,
                       const at::Tensor& X, const at::Tensor& mean, at::Tensor& sum_dy_xmu,
                       at::Tensor& sum_dy, cudaStream_t stream) {
  at::Tensor partials = at::empty({2 * plan.partials}, X.options().dtype(at::kDouble));
  cuda::bn::GradSumsArgs args{};
  args.dy = dY.const_data_ptr();
  args.x = X.const_data_ptr();
  args.mean = mean.const_data_ptr();
  args.sum_dy_xmu = sum_dy_xmu.mutable_data_ptr();
  args.sum_dy = sum_dy.mutable_data_ptr();
  args.partials = partials.mutable_data_ptr<double>();
  C10_CUDA_CHECK(
      cuda::bn::launch_batch_norm_grad_sums(plan, scalar_kind_of<Kind>(X), args, stream));
}

// Slice k (of 3) of a [3 * C] per-channel coefficient buffer, as the kernels' untyped pointer.
const void* coeff_slice(const at::Tensor& coeffs, int64_t C, int64_t k) {
  return static_cast<const char*>(coeffs.const_data_ptr()) + k * C * coeffs.element_size();
}

void stats_cuda(const BatchNormShape& shape, const at::Tensor& X, at::Tensor& mean,
                at::Tensor& m2) {
  NORMEXT_RANGE("normext::batch_norm_stats_cuda");
  const c10::cuda::CUDAGuard guard(X.device());
  enqueue_stats(plan_for(shape, X), X, mean, m2, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void apply_cuda(const BatchNormShape& shape, const at::Tensor& X, const at::Tensor& mean,
                const at::Tensor& scale, const at::Tensor& shift, at::Tensor& Y) {
  NORMEXT_RANGE("normext::batch_norm_apply_cuda");
  const c10::cuda::CUDAGuard guard(X.device());
  cuda::bn::ApplyArgs args{};
  args.x = X.const_data_ptr();
  args.y = Y.mutable_data_ptr();
  args.mean = mean.const_data_ptr();
  args.scale = scale.const_data_ptr();
  args.shift = shift.const_data_ptr();
  C10_CUDA_CHECK(cuda::bn::launch_batch_norm_apply(plan_for(shape, X), scalar_kind_of<Kind>(X),
                                                   args, c10::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void grad_sums_cuda(const BatchNormShape& shape, const at::Tensor& dY, const at::Tensor& X,
                    const at::Tensor& mean, at::Tensor& sum_dy_xmu, at::Tensor& sum_dy) {
  NORMEXT_RANGE("normext::batch_norm_grad_sums_cuda");
  const c10::cuda::CUDAGuard guard(X.device());
  enqueue_grad_sums(plan_for(shape, X), dY, X, mean, sum_dy_xmu, sum_dy,
                    c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void grad_input_cuda(const BatchNormShape& shape, const at::Tensor& dY, const at::Tensor& X,
                     const at::Tensor& a, const at::Tensor& mean, const at::Tensor& rstd,
                     const at::Tensor& b, const at::Tensor& k, at::Tensor& dX) {
  NORMEXT_RANGE("normext::batch_norm_grad_input_cuda");
  const c10::cuda::CUDAGuard guard(X.device());
  cuda::bn::GradInputArgs args{};
  args.dy = dY.const_data_ptr();
  args.x = X.const_data_ptr();
  args.dx = dX.mutable_data_ptr();
  args.a = a.const_data_ptr();
  args.mean = mean.const_data_ptr();
  args.rstd = rstd.const_data_ptr();
  args.b = b.const_data_ptr();
  args.k = k.const_data_ptr();
  C10_CUDA_CHECK(cuda::bn::launch_batch_norm_grad_input(plan_for(shape, X), scalar_kind_of<Kind>(X),
                                                        args, c10::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Training forward in four launches (statistics and their merge, the per-channel finalize with
// the running statistics' update, apply): composed from the kernels above with ATen ops between
// them it was ~25 small launches, ~300 us of host time per call on an H200 against ~30 us of
// memory traffic for a ResNet-50 feature map (15 with the running update as ATen ops).
bool train_forward_cuda(const BatchNormShape& shape, const at::Tensor& X, const at::Tensor& weight,
                        const at::Tensor& bias, double eps, at::Tensor& Y, at::Tensor& mean,
                        at::Tensor& m2, at::Tensor& invstd, const at::Tensor& running_mean,
                        const at::Tensor& running_var, double momentum, at::Tensor& save_mean,
                        at::Tensor& new_mean, at::Tensor& new_var) {
  NORMEXT_RANGE("normext::batch_norm_train_forward_cuda");
  const c10::cuda::CUDAGuard guard(X.device());
  const cuda::bn::BatchNormPlan plan = plan_for(shape, X);
  const Kind kind = scalar_kind_of<Kind>(X);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  enqueue_stats(plan, X, mean, m2, stream);
  at::Tensor coeffs = at::empty({3 * shape.C}, invstd.options());  // mean | scale | shift
  cuda::bn::TrainFinalizeArgs fin{};
  fin.mean = mean.const_data_ptr<double>();
  fin.m2 = m2.const_data_ptr<double>();
  fin.count = shape.N * shape.HxW;
  fin.eps = eps;
  fin.weight = data_or_null(weight);
  fin.bias = data_or_null(bias);
  fin.invstd = invstd.mutable_data_ptr();
  fin.coeffs = coeffs.mutable_data_ptr();
  // NB: the op layer checked that running_mean and running_var are both given or both not, on
  // X's device, of X's dtype or (half / bfloat16 input) float32.
  at::Tensor running_mean_in, running_var_in;
  if (running_mean.defined()) {
    running_mean_in = running_mean.contiguous();
    running_var_in = running_var.contiguous();
    // NB: the running tensors' own shapes (C values), as the CPU's running_update returns.
    new_mean = at::empty(running_mean.sizes(), running_mean.options());
    new_var = at::empty(running_var.sizes(), running_var.options());
    fin.running_mean = running_mean_in.const_data_ptr();
    fin.running_var = running_var_in.const_data_ptr();
    fin.new_mean = new_mean.mutable_data_ptr();
    fin.new_var = new_var.mutable_data_ptr();
    fin.running_in_acc = running_mean.scalar_type() == invstd.scalar_type();
    fin.momentum = momentum;
  }
  C10_CUDA_CHECK(cuda::bn::launch_batch_norm_train_finalize(plan, kind, fin, stream));
  save_mean = coeffs.narrow(0, 0, shape.C);  // the acc mean the apply reads
  cuda::bn::ApplyArgs args{};
  args.x = X.const_data_ptr();
  args.y = Y.mutable_data_ptr();
  args.mean = coeff_slice(coeffs, shape.C, 0);
  args.scale = coeff_slice(coeffs, shape.C, 1);
  args.shift = coeff_slice(coeffs, shape.C, 2);
  C10_CUDA_CHECK(cuda::bn::launch_batch_norm_apply(plan, kind, args, stream));
  return true;
}

// Training backward (dx wanted) in four launches: sums, their finalize, the per-channel dx
// coefficients, dx.
bool train_backward_cuda(const BatchNormShape& shape, const at::Tensor& dY, const at::Tensor& X,
                         const at::Tensor& weight, const at::Tensor& mean, const at::Tensor& invstd,
                         at::Tensor& sum_dy_xmu, at::Tensor& sum_dy, at::Tensor& dX) {
  NORMEXT_RANGE("normext::batch_norm_train_backward_cuda");
  const c10::cuda::CUDAGuard guard(X.device());
  const cuda::bn::BatchNormPlan plan = plan_for(shape, X);
  const Kind kind = scalar_kind_of<Kind>(X);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  enqueue_grad_sums(plan, dY, X, mean, sum_dy_xmu, sum_dy, stream);
  at::Tensor coeffs = at::empty({3 * shape.C}, invstd.options());  // a | b | k
  cuda::bn::TrainGradCoeffsArgs co{};
  co.sum_dy_xmu = sum_dy_xmu.const_data_ptr();
  co.sum_dy = sum_dy.const_data_ptr();
  co.invstd = invstd.const_data_ptr();
  co.weight = data_or_null(weight);
  co.inv_count = 1.0 / static_cast<double>(shape.N * shape.HxW);
  co.coeffs = coeffs.mutable_data_ptr();
  C10_CUDA_CHECK(cuda::bn::launch_batch_norm_train_grad_coeffs(plan, kind, co, stream));
  cuda::bn::GradInputArgs args{};
  args.dy = dY.const_data_ptr();
  args.x = X.const_data_ptr();
  args.dx = dX.mutable_data_ptr();
  args.a = coeff_slice(coeffs, shape.C, 0);
  args.mean = mean.const_data_ptr();
  args.rstd = invstd.const_data_ptr();
  args.b = coeff_slice(coeffs, shape.C, 1);
  args.k = coeff_slice(coeffs, shape.C, 2);
  C10_CUDA_CHECK(cuda::bn::launch_batch_norm_grad_input(plan, kind, args, stream));
  return true;
}

} // namespace

extern const BatchNormKernels batch_norm_cuda_kernels;
const BatchNormKernels batch_norm_cuda_kernels{&stats_cuda,         &apply_cuda,
                                               &grad_sums_cuda,     &grad_input_cuda,
                                               &train_forward_cuda, &train_backward_cuda};

TORCH_LIBRARY_IMPL(normext, CUDA, m) {
  NORMEXT_REGISTER_BATCH_NORM_OPS(m, batch_norm_cuda_kernels);
}

} // namespace normext
