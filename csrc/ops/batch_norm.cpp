// BatchNorm: argument checks with torch's messages, layout choice, output allocation and the
// per-channel (C-sized) math, then the device kernels. Mirrors aten/src/ATen/native/Normalization.cpp.
#include "ops/batch_norm.h"

#include <cmath>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/profiling.h"
#include "common/welford.h"
#include "ops/op_common.h"

namespace normext {
namespace {

at::Tensor value_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? *t : at::Tensor();
}

at::ScalarType acc_dtype_of(const at::Tensor& input) {
  return at::toOpMathType(input.scalar_type());
}

void check_floating(const at::Tensor& input) {
  TORCH_CHECK_NOT_IMPLEMENTED(at::isFloatingType(input.scalar_type()),
                              "\"batch_norm\" not implemented for '",
                              c10::toString(input.scalar_type()), "'");
}

// Number of channels as ATen's _batch_norm_impl_index reads it (0 for inputs without a dim 1).
int64_t num_features_of(const at::Tensor& input) {
  return input.dim() >= 2 ? input.size(1) : 0;
}

// ATen's check_dims_match_num_input_features.
void check_features(const char* name, int64_t expected, const at::Tensor& t) {
  if (!t.defined()) {
    return;
  }
  TORCH_CHECK(t.numel() == expected, name, " should contain ", expected, " elements not ",
              t.numel());
}

// ATen CPU's is_mixed_type / check_mixed_data_type: the first given parameter decides. When it
// has the input's dtype every other one must too (else the kernel's "expected scalar type");
// otherwise the input is bfloat16/half and every parameter is float32.
void check_batch_norm_dtypes(const at::Tensor& input, std::initializer_list<at::Tensor> params) {
  at::ScalarType first = at::ScalarType::Undefined;
  for (const at::Tensor& p : params) {
    if (p.defined()) {
      first = p.scalar_type();
      break;
    }
  }
  if (first == at::ScalarType::Undefined) {
    return;
  }
  if (first == input.scalar_type()) {
    for (const at::Tensor& p : params) {
      TORCH_CHECK(!p.defined() || p.scalar_type() == input.scalar_type(),
                  "expected scalar type ", input.scalar_type(), " but found ", p.scalar_type());
    }
    return;
  }
  check_mixed_param_dtypes(input, params);
}

// GroupNorm's rule (keeps_channels_last), plus what ATen's batch_norm adds: an input whose strides
// are channels-last except on dims of size 1 (is_contiguous(channels_last), which ignores them,
// while suggest_memory_format does not) is channels-last too (test_batchnorm_non_contig_cpu).
bool batch_norm_channels_last(const at::Tensor& input) {
  if (keeps_channels_last(input)) {
    return true;
  }
  return !input.is_contiguous() &&
         ((input.dim() == 4 && input.is_contiguous(at::MemoryFormat::ChannelsLast)) ||
          (input.dim() == 5 && input.is_contiguous(at::MemoryFormat::ChannelsLast3d)));
}

BatchNormShape shape_of(const at::Tensor& input) {
  const int64_t N = input.size(0);
  const int64_t C = input.size(1);
  const int64_t HxW = spatial_size(input);
  const bool channels_last = batch_norm_channels_last(input);
  // NB: with one position per sample, contiguous NCHW is N rows of C channels: the channels-last
  // loops vectorize over C instead of running N * C one-element planes.
  return {N, C, HxW, channels_last || HxW == 1};
}

at::MemoryFormat memory_format_of(const at::Tensor& input) {
  if (batch_norm_channels_last(input)) {
    return input.dim() == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::ChannelsLast3d;
  }
  return at::MemoryFormat::Contiguous;
}

// A per-channel vector in the accumulation dtype, contiguous, on the input's device.
at::Tensor per_channel(const at::Tensor& t, const at::Tensor& input) {
  return t.to(input.device(), acc_dtype_of(input)).contiguous();
}

at::Tensor invstd_of_var(const at::Tensor& var, double eps) {
  return (var + eps).rsqrt();
}

// y = (x - mean) * scale + shift per channel, in the input's layout.
at::Tensor apply_coeffs(const at::Tensor& input, const at::Tensor& mean, const at::Tensor& scale,
                        const at::Tensor& shift, const BatchNormKernels& kernels) {
  const BatchNormShape shape = shape_of(input);
  const at::MemoryFormat format = memory_format_of(input);
  const at::Tensor X = input.contiguous(format);
  at::Tensor Y = at::empty_like(X, X.options(), format);
  if (X.numel() > 0) {
    kernels.apply(shape, X, mean, scale, shift, Y);
  }
  return Y;
}

// y = (x - mean) * invstd * weight + bias with the coefficients folded per channel.
at::Tensor apply(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                 const at::Tensor& mean, const at::Tensor& invstd,
                 const BatchNormKernels& kernels) {
  const at::Tensor scale =
      weight.defined() ? (invstd * per_channel(weight, input)).contiguous() : invstd;
  const at::Tensor shift =
      bias.defined() ? per_channel(bias, input) : at::zeros_like(invstd);
  return apply_coeffs(input, mean, scale, shift, kernels);
}

// Evaluation mode: y = (x - running_mean) * rsqrt(running_var + eps) * weight + bias. On the CPU
// the per-channel mean, scale and shift come from one loop over C (op by op they cost ~10 us, as
// much as normalizing a 512x7x7 feature map), with the values the ops compute: the rsqrt of
// var + eps in the accumulation dtype, times the weight.
at::Tensor apply_running(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                         const at::Tensor& running_mean, const at::Tensor& running_var,
                         double eps, const BatchNormKernels& kernels) {
  const at::Tensor mean = per_channel(running_mean, input);
  const at::Tensor var = per_channel(running_var, input);
  if (!input.is_cpu()) {
    return apply(input, weight, bias, mean, invstd_of_var(var, eps), kernels);
  }
  const int64_t C = mean.numel();
  at::Tensor coeffs = at::empty({2, C}, mean.options());  // [scale | shift]
  const at::Tensor weight_in = weight.defined() ? per_channel(weight, input) : at::Tensor();
  const at::Tensor bias_in = bias.defined() ? per_channel(bias, input) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(coeffs.scalar_type(), "batch_norm_eval_coefficients", [&] {
    const scalar_t* v = var.const_data_ptr<scalar_t>();
    const scalar_t* w = weight_in.defined() ? weight_in.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* b = bias_in.defined() ? bias_in.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* out = coeffs.mutable_data_ptr<scalar_t>();
    const scalar_t eps_t = static_cast<scalar_t>(eps);
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t invstd = scalar_t(1) / std::sqrt(v[c] + eps_t);
      out[c] = w != nullptr ? invstd * w[c] : invstd;
      out[C + c] = b != nullptr ? b[c] : scalar_t(0);
    }
  });
  return apply_coeffs(input, mean, coeffs[0], coeffs[1], kernels);
}

// running * (1 - momentum) + batch / divisor * momentum (running_stat_update), computed in
// float64 and rounded to the running statistics' dtype, as ATen updates them; batch: (C,)
// float64. On the CPU one loop over the C values (op by op it was ~8 us per tensor, more than the
// whole BatchNorm of a small feature map). CUDA updates them in its training finalize kernel
// (train_forward sets new_mean / new_var).
at::Tensor running_update(const at::Tensor& running, const at::Tensor& batch, double divisor,
                          double momentum) {
  TORCH_INTERNAL_ASSERT(running.is_cpu() && batch.is_cpu());
  const at::Tensor old = running.contiguous();
  const at::Tensor batch_values = batch.contiguous();
  at::Tensor result = at::empty(running.sizes(), running.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, running.scalar_type(), "batch_norm_running_update", [&] {
        const scalar_t* old_data = old.const_data_ptr<scalar_t>();
        const double* batch_data = batch_values.const_data_ptr<double>();
        scalar_t* out = result.mutable_data_ptr<scalar_t>();
        for (int64_t c = 0; c < result.numel(); ++c) {
          out[c] = static_cast<scalar_t>(running_stat_update(static_cast<double>(old_data[c]),
                                                             batch_data[c], divisor, momentum));
        }
      });
  return result;
}

} // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_forward_impl(
    const at::Tensor& input, const std::optional<at::Tensor>& weight_opt,
    const std::optional<at::Tensor>& bias_opt, const std::optional<at::Tensor>& running_mean_opt,
    const std::optional<at::Tensor>& running_var_opt, bool training, double momentum, double eps,
    const BatchNormKernels& kernels) {
  NORMEXT_RANGE("normext::batch_norm_forward_impl");
  const at::Tensor weight = value_or_undefined(weight_opt);
  const at::Tensor bias = value_or_undefined(bias_opt);
  const at::Tensor running_mean = value_or_undefined(running_mean_opt);
  const at::Tensor running_var = value_or_undefined(running_var_opt);
  const int64_t C = num_features_of(input);
  const auto stats_options = input.options().dtype(acc_dtype_of(input));
  // The running statistics after this step: in training only, and only those given.
  auto new_running = [&](const at::Tensor& running, const at::Tensor& batch, double divisor) {
    if (!training || !running.defined()) {
      return at::empty({0}, stats_options);
    }
    if (!batch.defined()) {  // empty input: unchanged
      return running.clone();
    }
    return running_update(running, batch, divisor, momentum);
  };
  check_floating(input);
  if (input.numel() == 0) {
    // ATen returns before checking the parameters: an empty output, (C,) statistics, and the
    // running statistics untouched.
    return {at::empty_like(input, input.options(), memory_format_of(input)),
            at::zeros({C}, stats_options), at::zeros({C}, stats_options),
            new_running(running_mean, at::Tensor(), 1.0),
            new_running(running_var, at::Tensor(), 1.0)};
  }
  check_features("running_mean", C, running_mean);
  TORCH_CHECK(running_mean.defined() || training, "running_mean must be defined in evaluation mode");
  check_features("running_var", C, running_var);
  TORCH_CHECK(running_var.defined() || training, "running_var must be defined in evaluation mode");
  TORCH_CHECK_VALUE(running_mean.defined() == running_var.defined(),
                    "running_mean and running_var must either both be None or neither be None");
  check_features("weight", C, weight);
  check_features("bias", C, bias);
  TORCH_CHECK(input.dim() >= 2, "Expected at least 2 dimensions for input tensor but received ",
              input.dim());
  check_same_device(input, {weight, bias, running_mean, running_var});
  check_batch_norm_dtypes(input, {weight, bias, running_mean, running_var});

  const BatchNormShape shape = shape_of(input);
  if (!training) {
    return {apply_running(input, weight, bias, running_mean, running_var, eps, kernels),
            at::empty({0}, stats_options),
            at::empty({0}, stats_options), at::empty({0}, stats_options),
            at::empty({0}, stats_options)};
  }
  const at::MemoryFormat format = memory_format_of(input);
  const at::Tensor X = input.contiguous(format);
  const auto double_options = input.options().dtype(at::kDouble);
  at::Tensor mean = at::empty({C}, double_options);
  at::Tensor m2 = at::empty({C}, double_options);
  const double count = static_cast<double>(shape.N * shape.HxW);
  at::Tensor Y = at::empty_like(X, X.options(), format);
  at::Tensor invstd = at::empty({C}, stats_options);
  const at::Tensor weight_acc = weight.defined() ? per_channel(weight, input) : at::Tensor();
  const at::Tensor bias_acc = bias.defined() ? per_channel(bias, input) : at::Tensor();
  at::Tensor save_mean, new_mean, new_var;
  if (kernels.train_forward != nullptr &&
      kernels.train_forward(shape, X, weight_acc, bias_acc, eps, Y, mean, m2, invstd, running_mean,
                            running_var, momentum, save_mean, new_mean, new_var)) {
    if (!save_mean.defined()) {
      save_mean = mean.to(acc_dtype_of(input));
    }
  } else {
    kernels.stats(shape, X, mean, m2);
    // NB: invstd from the float64 statistics: M2 of a huge float32 input may pass float32's
    // range while invstd does not.
    invstd = invstd_of_var((m2 / count).clamp_min(0), eps).to(acc_dtype_of(input));
    save_mean = mean.to(acc_dtype_of(input));
    Y = apply(X, weight, bias, save_mean, invstd, kernels);
  }
  // The unbiased variance, m2 / (count - 1) as ATen computes it (inf or nan for one value).
  if (!new_mean.defined()) {
    new_mean = new_running(running_mean, mean, 1.0);
    new_var = new_running(running_var, m2, count - 1);
  }
  return {Y, save_mean, invstd, new_mean, new_var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps) {
  NORMEXT_RANGE("normext::batch_norm_forward");
  static const auto impl =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("normext::batch_norm_forward_impl", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const std::optional<at::Tensor>&,
              const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
              const std::optional<at::Tensor>&, bool, double, double)>();
  auto [y, save_mean, save_invstd, new_mean, new_var] =
      impl.call(input, weight, bias, running_mean, running_var, training, momentum, eps);
  if (training) {
    at::NoGradGuard no_grad;
    if (running_mean.has_value() && running_mean->defined()) {
      at::Tensor(*running_mean).copy_(new_mean);
    }
    if (running_var.has_value() && running_var->defined()) {
      at::Tensor(*running_var).copy_(new_var);
    }
  }
  return {y, save_mean, save_invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const std::optional<at::Tensor>& weight_opt,
    const std::optional<at::Tensor>& running_mean_opt,
    const std::optional<at::Tensor>& running_var_opt,
    const std::optional<at::Tensor>& save_mean_opt,
    const std::optional<at::Tensor>& save_invstd_opt, bool train, double eps,
    std::array<bool, 3> output_mask, const BatchNormKernels& kernels) {
  NORMEXT_RANGE("normext::batch_norm_backward");
  check_floating(input);
  const at::Tensor weight = value_or_undefined(weight_opt);
  const int64_t C = num_features_of(input);
  check_features("weight", C, weight);
  check_same_device(input, {grad_out, weight});
  TORCH_CHECK(grad_out.sizes() == input.sizes(), "Expected grad_out of shape ", input.sizes(),
              " (the input's), but got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == input.scalar_type(), "Expected grad_out of dtype ",
              input.scalar_type(), " (the input's), but got ", grad_out.scalar_type());
  const auto acc_options = input.options().dtype(acc_dtype_of(input));
  const auto param_options =
      input.options().dtype(weight.defined() ? weight.scalar_type() : input.scalar_type());
  const at::MemoryFormat format = memory_format_of(input);

  auto masked = [&](bool wanted, const at::Tensor& t, const at::TensorOptions& options) {
    return wanted ? t.to(options.dtype()) : at::empty({0}, options);
  };
  if (input.numel() == 0) {
    return {masked(output_mask[0], at::empty_like(input, input.options(), format), input.options()),
            masked(output_mask[1], at::zeros({C}, param_options), param_options),
            masked(output_mask[2], at::zeros({C}, param_options), param_options)};
  }
  TORCH_CHECK(input.dim() >= 2, "Expected at least 2 dimensions for input tensor but received ",
              input.dim());
  at::Tensor mean, invstd;
  if (train) {
    TORCH_CHECK(save_mean_opt.has_value() && save_invstd_opt.has_value() &&
                    save_mean_opt->numel() == C && save_invstd_opt->numel() == C,
                "batch_norm_backward: training needs save_mean and save_invstd of ", C,
                " elements");
    mean = per_channel(*save_mean_opt, input);
    invstd = per_channel(*save_invstd_opt, input);
  } else {
    const at::Tensor running_mean = value_or_undefined(running_mean_opt);
    const at::Tensor running_var = value_or_undefined(running_var_opt);
    TORCH_CHECK(running_mean.defined() && running_var.defined() && running_mean.numel() == C &&
                    running_var.numel() == C,
                "batch_norm_backward: evaluation mode needs running_mean and running_var of ", C,
                " elements");
    mean = per_channel(running_mean, input);
    invstd = invstd_of_var(per_channel(running_var, input), eps);
  }
  const BatchNormShape shape = shape_of(input);
  const at::Tensor X = input.contiguous(format);
  const at::Tensor dY = grad_out.contiguous(format);
  at::Tensor sum_dy_xmu, sum_dy;
  if (train && output_mask[0] && kernels.train_backward != nullptr) {
    sum_dy_xmu = at::empty({C}, acc_options);
    sum_dy = at::empty({C}, acc_options);
    at::Tensor dX = at::empty_like(X, X.options(), format);
    const at::Tensor w = weight.defined() ? per_channel(weight, input) : at::Tensor();
    if (kernels.train_backward(shape, dY, X, w, mean, invstd, sum_dy_xmu, sum_dy, dX)) {
      return {dX,
              masked(output_mask[1], output_mask[1] ? sum_dy_xmu * invstd : at::Tensor(),
                     param_options),
              masked(output_mask[2], sum_dy, param_options)};
    }
  }
  const bool need_sums = (train && output_mask[0]) || output_mask[1] || output_mask[2];
  if (need_sums) {
    sum_dy_xmu = at::empty({C}, acc_options);
    sum_dy = at::empty({C}, acc_options);
    kernels.grad_sums(shape, dY, X, mean, sum_dy_xmu, sum_dy);
  }
  at::Tensor dX;
  if (output_mask[0]) {
    const at::Tensor w = weight.defined() ? per_channel(weight, input) : at::ones_like(invstd);
    const at::Tensor a = (invstd * w).contiguous();
    if (train) {
      // batch_norm_grad_coeffs (common/welford.h) as tensor ops, for kernels without a
      // train_backward hook: dx = a dy + b xhat + k, b = -a * mean(dy * xhat), k = -a * mean(dy).
      const double inv_count = 1.0 / static_cast<double>(shape.N * shape.HxW);
      const at::Tensor b = (-a * (sum_dy_xmu * invstd * inv_count)).contiguous();
      const at::Tensor k = (-a * (sum_dy * inv_count)).contiguous();
      dX = at::empty_like(X, X.options(), format);
      kernels.grad_input(shape, dY, X, a, mean, invstd, b, k, dX);
    } else {
      // Evaluation: dx = a * dy, which does not read x (so an inf or nan in x stays out of dx,
      // as in ATen): the apply kernel's (dy - 0) * a + 0, in the input's layout (dY's).
      const at::Tensor zeros = at::zeros_like(a);
      dX = apply_coeffs(dY, zeros, a, zeros, kernels);
    }
  }
  return {masked(output_mask[0], dX, input.options()),
          masked(output_mask[1], output_mask[1] ? sum_dy_xmu * invstd : at::Tensor(), param_options),
          masked(output_mask[2], sum_dy, param_options)};
}

std::tuple<at::Tensor, at::Tensor> batch_norm_stats(const at::Tensor& input,
                                                    const BatchNormKernels& kernels) {
  NORMEXT_RANGE("normext::batch_norm_stats");
  check_floating(input);
  TORCH_CHECK(input.dim() >= 2, "Expected at least 2 dimensions for input tensor but received ",
              input.dim());
  const auto stats_options = input.options().dtype(at::kDouble);
  const int64_t C = input.size(1);
  at::Tensor mean = at::zeros({C}, stats_options);
  at::Tensor m2 = at::zeros({C}, stats_options);
  if (input.numel() > 0) {
    kernels.stats(shape_of(input), input.contiguous(memory_format_of(input)), mean, m2);
  }
  return {mean, m2};
}

namespace {

void check_stat(const at::Tensor& input, const at::Tensor& t, const char* name) {
  const int64_t C = input.size(1);
  TORCH_CHECK(t.numel() == C, name, " should contain ", C, " elements not ", t.numel());
  check_same_device(input, {t});
}

} // namespace

at::Tensor batch_norm_elemt(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias, const at::Tensor& mean,
                            const at::Tensor& invstd, const BatchNormKernels& kernels) {
  NORMEXT_RANGE("normext::batch_norm_elemt");
  check_floating(input);
  TORCH_CHECK(input.dim() >= 2, "Expected at least 2 dimensions for input tensor but received ",
              input.dim());
  const at::Tensor weight_t = value_or_undefined(weight);
  const at::Tensor bias_t = value_or_undefined(bias);
  check_features("weight", input.size(1), weight_t);
  check_features("bias", input.size(1), bias_t);
  check_stat(input, mean, "mean");
  check_stat(input, invstd, "invstd");
  check_same_device(input, {weight_t, bias_t});
  check_batch_norm_dtypes(input, {weight_t, bias_t});
  return apply(input, weight_t, bias_t, per_channel(mean, input), per_channel(invstd, input),
               kernels);
}

std::tuple<at::Tensor, at::Tensor> batch_norm_backward_reduce(const at::Tensor& grad_out,
                                                              const at::Tensor& input,
                                                              const at::Tensor& mean,
                                                              const BatchNormKernels& kernels) {
  NORMEXT_RANGE("normext::batch_norm_backward_reduce");
  check_floating(input);
  TORCH_CHECK(input.dim() >= 2, "Expected at least 2 dimensions for input tensor but received ",
              input.dim());
  TORCH_CHECK(grad_out.sizes() == input.sizes() && grad_out.scalar_type() == input.scalar_type(),
              "Expected grad_out of the input's shape and dtype");
  check_same_device(input, {grad_out});
  check_stat(input, mean, "mean");
  const auto acc_options = input.options().dtype(acc_dtype_of(input));
  const int64_t C = input.size(1);
  at::Tensor sum_dy = at::zeros({C}, acc_options);
  at::Tensor sum_dy_xmu = at::zeros({C}, acc_options);
  if (input.numel() > 0) {
    const at::MemoryFormat format = memory_format_of(input);
    kernels.grad_sums(shape_of(input), grad_out.contiguous(format), input.contiguous(format),
                      per_channel(mean, input), sum_dy_xmu, sum_dy);
  }
  return {sum_dy, sum_dy_xmu};
}

at::Tensor batch_norm_backward_elemt(const at::Tensor& grad_out, const at::Tensor& input,
                                     const std::optional<at::Tensor>& weight,
                                     const at::Tensor& mean, const at::Tensor& invstd,
                                     const at::Tensor& sum_dy, const at::Tensor& sum_dy_xmu,
                                     int64_t count, const BatchNormKernels& kernels) {
  NORMEXT_RANGE("normext::batch_norm_backward_elemt");
  check_floating(input);
  TORCH_CHECK(input.dim() >= 2, "Expected at least 2 dimensions for input tensor but received ",
              input.dim());
  TORCH_CHECK(grad_out.sizes() == input.sizes() && grad_out.scalar_type() == input.scalar_type(),
              "Expected grad_out of the input's shape and dtype");
  check_same_device(input, {grad_out});
  TORCH_CHECK(count > 0, "batch_norm_backward_elemt: count must be positive, got ", count);
  const at::Tensor weight_t = value_or_undefined(weight);
  check_features("weight", input.size(1), weight_t);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{mean, "mean"},
                                {invstd, "invstd"},
                                {sum_dy, "sum_dy"},
                                {sum_dy_xmu, "sum_dy_xmu"}}) {
    check_stat(input, t, name);
  }
  const at::MemoryFormat format = memory_format_of(input);
  const at::Tensor X = input.contiguous(format);
  at::Tensor dX = at::empty_like(X, X.options(), format);
  if (X.numel() == 0) {
    return dX;
  }
  const at::Tensor m = per_channel(mean, input);
  const at::Tensor r = per_channel(invstd, input);
  const at::Tensor w = weight_t.defined() ? per_channel(weight_t, input) : at::ones_like(r);
  const at::Tensor a = (r * w).contiguous();
  const double inv_count = 1.0 / static_cast<double>(count);
  const at::Tensor b = (-a * (per_channel(sum_dy_xmu, input) * r * inv_count)).contiguous();
  const at::Tensor k = (-a * (per_channel(sum_dy, input) * inv_count)).contiguous();
  kernels.grad_input(shape_of(input), grad_out.contiguous(format), X, a, m, r, b, k, dX);
  return dX;
}

TORCH_LIBRARY_IMPL(normext, CompositeImplicitAutograd, m) {
  m.impl("batch_norm_forward", &batch_norm_forward);
}

TORCH_LIBRARY_IMPL(normext, CPU, m) {
  NORMEXT_REGISTER_BATCH_NORM_OPS(m, batch_norm_cpu_kernels);
}

} // namespace normext
