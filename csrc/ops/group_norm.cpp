// GroupNorm: argument checks with torch's messages, layout choice and output allocation, then the
// device kernel. Mirrors aten/src/ATen/native/group_norm.cpp.
#include "ops/group_norm.h"

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "common/profiling.h"
#include "ops/op_common.h"

namespace normext {
namespace {

void check_param(const at::Tensor& input, const at::Tensor& param, const char* name, int64_t C) {
  if (!param.defined()) {
    return;
  }
  TORCH_CHECK(param.dim() == 1 && param.numel() == C, "Expected ", name,
              " to be a vector of size equal to the number of channels in input, but got ", name,
              " of shape ", param.sizes(), " and input of shape ", input.sizes());
  check_same_device(input, {param});
}

void check_input(const at::Tensor& input, int64_t num_groups) {
  TORCH_CHECK(input.dim() >= 2,
              "Expected at least 2 dimensions for input tensor but received ", input.dim());
  TORCH_CHECK_NOT_IMPLEMENTED(at::isFloatingType(input.scalar_type()),
                              "normext group_norm: not implemented for '",
                              input.scalar_type(), "' (expected float32, float64, bfloat16 or float16)");
  const int64_t C = input.size(1);
  TORCH_CHECK(C > 0, "Expected number of channels to be greater than 0, got ", C);
  TORCH_CHECK(num_groups > 0, "Expected num groups to be greater than 0, got ", num_groups);
  TORCH_CHECK(C % num_groups == 0,
              "Expected number of channels in input to be divisible by num_groups, but got input of "
              "shape ",
              input.sizes(), " and num_groups=", num_groups);
}

GroupNormShape shape_of(const at::Tensor& input, int64_t num_groups) {
  const int64_t N = input.size(0);
  const int64_t C = input.size(1);
  const int64_t HxW = spatial_size(input);
  const bool channels_last = keeps_channels_last(input);
  return {N, C, HxW, num_groups, channels_last};
}

at::MemoryFormat memory_format_of(const at::Tensor& input, const GroupNormShape& shape) {
  if (!shape.channels_last) {
    return at::MemoryFormat::Contiguous;
  }
  return input.dim() == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::ChannelsLast3d;
}

at::ScalarType acc_dtype_of(const at::Tensor& input) {
  return at::toOpMathType(input.scalar_type());
}

at::Tensor param_in_acc_dtype(const std::optional<at::Tensor>& param, const at::Tensor& input) {
  if (!param.has_value() || !param->defined()) {
    return at::Tensor();
  }
  return param->to(acc_dtype_of(input)).contiguous();
}

void check_activation(int64_t activation) {
  TORCH_CHECK(activation >= 0 && activation < kNumActivations,
              "group_norm: activation must be 0 (none), 1 (silu), 2 (gelu), 3 (gelu_tanh) or 4 "
              "(relu), but got ", activation);
}

// Checks shared by every forward; returns the shape the kernels see.
GroupNormShape check_forward_args(const at::Tensor& input,
                                  const std::optional<at::Tensor>& weight_opt,
                                  const std::optional<at::Tensor>& bias_opt, int64_t num_groups,
                                  int64_t activation) {
  const at::Tensor weight = weight_opt.value_or(at::Tensor());
  const at::Tensor bias = bias_opt.value_or(at::Tensor());
  check_input(input, num_groups);
  check_param(input, weight, "weight", input.size(1));
  check_param(input, bias, "bias", input.size(1));
  check_param_dtypes(input, {weight, bias});
  check_activation(activation);
  const GroupNormShape shape = shape_of(input, num_groups);
  // NB: as ATen's, even for an empty batch (only C > 0 was checked before).
  TORCH_CHECK(shape.HxW > 0, "Expected HxW to be greater than 0, got ", shape.HxW);
  return shape;
}

// Runs the kernel, or fills the statistics of an empty input.
void run_forward(const GroupNormShape& shape, const at::Tensor& X, const at::Tensor& input,
                 const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                 double eps, const GroupNormFusion& fusion, at::Tensor& Y, at::Tensor& mean,
                 at::Tensor& rstd, GroupNormForwardKernel kernel) {
  if (X.numel() == 0) {
    mean.zero_();
    rstd.fill_(1.0 / std::sqrt(eps));
    return;
  }
  kernel(shape, X, param_in_acc_dtype(weight, input), param_in_acc_dtype(bias, input), eps,
         fusion, Y, mean, rstd);
}

std::pair<at::Tensor, at::Tensor> empty_stats(const at::Tensor& X, const GroupNormShape& shape,
                                              const at::Tensor& input) {
  const auto stats_options = X.options().dtype(acc_dtype_of(input));
  return {at::empty({shape.N, shape.G}, stats_options), at::empty({shape.N, shape.G}, stats_options)};
}

} // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, int64_t num_groups, double eps, int64_t activation,
    GroupNormForwardKernel kernel) {
  NORMEXT_RANGE("normext::group_norm_forward");
  const GroupNormShape shape = check_forward_args(input, weight, bias, num_groups, activation);
  const at::MemoryFormat format = memory_format_of(input, shape);
  const at::Tensor X = input.contiguous(format);
  at::Tensor Y = at::empty_like(X, X.options(), format);
  auto [mean, rstd] = empty_stats(X, shape, input);
  GroupNormFusion fusion;
  fusion.activation = activation;
  run_forward(shape, X, input, weight, bias, eps, fusion, Y, mean, rstd, kernel);
  return {Y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_group_norm_forward(
    const at::Tensor& input, const at::Tensor& residual, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, int64_t num_groups, double eps, int64_t activation,
    GroupNormForwardKernel kernel) {
  NORMEXT_RANGE("normext::add_group_norm_forward");
  const GroupNormShape shape = check_forward_args(input, weight, bias, num_groups, activation);
  TORCH_CHECK(residual.sizes() == input.sizes(), "add_group_norm: expected residual of shape ",
              input.sizes(), " (the input's), but got ", residual.sizes());
  TORCH_CHECK(residual.scalar_type() == input.scalar_type(),
              "add_group_norm: expected residual of dtype ", input.scalar_type(),
              " (the input's), but got ", residual.scalar_type());
  check_same_device(input, {residual});
  const at::MemoryFormat format = memory_format_of(input, shape);
  const at::Tensor X = input.contiguous(format);
  GroupNormFusion fusion;
  fusion.activation = activation;
  fusion.residual = residual.contiguous(format);
  fusion.summed = at::empty_like(X, X.options(), format);
  at::Tensor Y = at::empty_like(X, X.options(), format);
  auto [mean, rstd] = empty_stats(X, shape, input);
  run_forward(shape, X, input, weight, bias, eps, fusion, Y, mean, rstd, kernel);
  return {Y, fusion.summed, mean, rstd};
}

void group_norm_inplace(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                        const std::optional<at::Tensor>& bias, int64_t num_groups, double eps,
                        int64_t activation, GroupNormForwardKernel kernel) {
  NORMEXT_RANGE("normext::group_norm_inplace");
  const GroupNormShape shape = check_forward_args(input, weight, bias, num_groups, activation);
  at::assert_no_internal_overlap(input);
  const at::MemoryFormat format = memory_format_of(input, shape);
  // NB: the kernels read every element of a chunk before writing it, so Y may be X itself; other
  // strides go through a dense copy and back.
  const bool dense = input.is_contiguous(format);
  at::Tensor X = dense ? input : input.contiguous(format);
  auto [mean, rstd] = empty_stats(X, shape, input);
  GroupNormFusion fusion;
  fusion.activation = activation;
  run_forward(shape, X, input, weight, bias, eps, fusion, X, mean, rstd, kernel);
  if (!dense) {
    input.copy_(X);  // bumps the version counter itself
  } else {
    // NB: a kernel writing through the data pointer bumps nothing, and the op has no
    // ADInplaceOrView kernel: without this, autograd would not notice that a tensor another op
    // saved for its backward has been overwritten (raises for an inference tensor outside
    // inference mode, as torch's in-place ops do).
    input.unsafeGetTensorImpl()->bump_version();
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& rstd, const std::optional<at::Tensor>& weight, int64_t num_groups,
    std::array<bool, 3> output_mask, const std::optional<at::Tensor>& bias, int64_t activation,
    GroupNormBackwardKernel kernel) {
  NORMEXT_RANGE("normext::group_norm_backward");
  check_input(input, num_groups);
  const at::Tensor weight_t = weight.value_or(at::Tensor());
  // The bias only matters to recompute an activation's input; without one it is not read.
  const at::Tensor bias_t = activation != 0 ? bias.value_or(at::Tensor()) : at::Tensor();
  check_param(input, weight_t, "weight", input.size(1));
  check_param(input, bias_t, "bias", input.size(1));
  check_param_dtypes(input, {weight_t, bias_t});
  check_activation(activation);
  TORCH_CHECK(grad_out.sizes() == input.sizes(), "Expected grad_out of shape ", input.sizes(),
              " (the input's), but got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == input.scalar_type(), "Expected grad_out of dtype ",
              input.scalar_type(), " (the input's), but got ", grad_out.scalar_type());
  // NB: the kernels take raw pointers: a tensor on another device would be read as if it were
  // on the input's (a CUDA illegal address, or garbage).
  check_same_device(input, {grad_out, mean, rstd});
  const GroupNormShape shape = shape_of(input, num_groups);
  const auto acc = acc_dtype_of(input);
  for (const at::Tensor* stat : {&mean, &rstd}) {
    TORCH_CHECK(stat->numel() == shape.N * num_groups && stat->scalar_type() == acc,
                "Expected mean and rstd with N * num_groups = ", shape.N * num_groups,
                " elements of dtype ", acc, ", but got shape ", stat->sizes(), " and dtype ",
                stat->scalar_type());
  }
  const at::MemoryFormat format = memory_format_of(input, shape);
  const at::Tensor X = input.contiguous(format);
  const at::Tensor dY = grad_out.contiguous(format);
  const auto param_options = X.options().dtype(weight_t.defined() ? weight_t.scalar_type() : acc);
  at::Tensor dX = output_mask[0] ? at::empty_like(X, X.options(), format) : at::Tensor();
  at::Tensor dgamma = output_mask[1] && weight_t.defined()
                          ? at::empty({shape.C}, X.options().dtype(acc))
                          : at::Tensor();
  at::Tensor dbeta = output_mask[2] ? at::empty({shape.C}, X.options().dtype(acc)) : at::Tensor();
  if (X.numel() == 0) {
    for (at::Tensor* t : {&dgamma, &dbeta}) {
      if (t->defined()) {
        t->zero_();
      }
    }
  } else if (dX.defined() || dgamma.defined() || dbeta.defined()) {
    kernel(shape, dY, X, mean.contiguous(), rstd.contiguous(), param_in_acc_dtype(weight, input),
           param_in_acc_dtype(bias_t, input), activation, dX, dgamma, dbeta);
  }
  // Masked-out gradients come back as empty tensors: custom op schemas cannot return None.
  auto or_empty = [&](const at::Tensor& t, const at::TensorOptions& options) {
    return t.defined() ? t.to(options.dtype()) : at::empty({0}, options);
  };
  return {or_empty(dX, X.options()), or_empty(dgamma, param_options),
          or_empty(dbeta, param_options)};
}

TORCH_LIBRARY_IMPL(normext, CPU, m) {
  m.impl("group_norm_forward", &group_norm_forward_on<group_norm_forward_cpu_kernel>);
  m.impl("group_norm_backward", &group_norm_backward_on<group_norm_backward_cpu_kernel>);
  m.impl("add_group_norm_forward", &add_group_norm_forward_on<group_norm_forward_cpu_kernel>);
  m.impl("group_norm_inplace", &group_norm_inplace_on<group_norm_forward_cpu_kernel>);
}

} // namespace normext
