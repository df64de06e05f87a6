// DyT: argument checks, layout choice and allocation, then the device kernel.
#include "ops/dyt.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "common/profiling.h"
#include "ops/op_common.h"

namespace normext {
namespace {

// Number of trailing input dims the parameters cover (channels_last=True), or 1.
int64_t param_dims(const at::Tensor& weight, const at::Tensor& bias) {
  if (weight.defined()) {
    return weight.dim();
  }
  return bias.defined() ? bias.dim() : 1;
}

void check_param_shape(const at::Tensor& input, const at::Tensor& param, const char* name,
                       bool channels_last) {
  if (!param.defined()) {
    return;
  }
  if (channels_last) {
    const int64_t k = param.dim();
    TORCH_CHECK(k >= 1 && k <= input.dim() && param.sizes() == input.sizes().slice(input.dim() - k),
                "dyt: expected ", name, " of the shape of the trailing dimensions of input (",
                "channels_last=True), but got ", name, " of shape ", param.sizes(),
                " and input of shape ", input.sizes());
  } else {
    TORCH_CHECK(param.dim() == 1 && param.size(0) == input.size(1), "dyt: expected ", name,
                " to be a vector of size equal to the number of channels in input (dim 1, "
                "channels_last=False), but got ", name, " of shape ", param.sizes(),
                " and input of shape ", input.sizes());
  }
}

void check_args(const at::Tensor& input, const at::Tensor& alpha, const at::Tensor& weight,
                const at::Tensor& bias, bool channels_last) {
  TORCH_CHECK_NOT_IMPLEMENTED(at::isFloatingType(input.scalar_type()),
                              "normext dyt: not implemented for '", input.scalar_type(),
                              "' (expected float32, float64, bfloat16 or float16)");
  if (channels_last) {
    TORCH_CHECK(input.dim() >= 1, "dyt: expected an input with at least 1 dimension "
                "(channels_last=True), but got a 0-dimensional tensor");
  } else {
    TORCH_CHECK(input.dim() >= 2, "dyt: expected an input with at least 2 dimensions (N, C, *) "
                "(channels_last=False), but got input of shape ", input.sizes());
  }
  TORCH_CHECK(alpha.numel() == 1, "dyt: expected alpha with exactly one element, but got alpha "
              "of shape ", alpha.sizes());
  check_param_shape(input, weight, "weight", channels_last);
  check_param_shape(input, bias, "bias", channels_last);
  TORCH_CHECK(!weight.defined() || !bias.defined() || weight.sizes() == bias.sizes(),
              "dyt: expected weight and bias of the same shape, but got ", weight.sizes(), " and ",
              bias.sizes());
  check_same_device(input, {alpha, weight, bias});
  check_param_dtypes(input, {alpha, weight, bias});
}

DytShape shape_of(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                  bool channels_last) {
  const int64_t numel = input.numel();
  if (channels_last) {
    const int64_t k = param_dims(weight, bias);
    int64_t C = 1;
    for (int64_t d = input.dim() - k; d < input.dim(); ++d) {
      C *= input.size(d);
    }
    return {C == 0 ? 0 : numel / C, C, 1, false};
  }
  const int64_t N = input.size(0), C = input.size(1);
  const int64_t inner = N * C == 0 ? 0 : numel / (N * C);
  const bool rows_of_c = inner == 1 || keeps_channels_last(input);
  if (rows_of_c) {
    return {N * inner, C, 1, false};
  }
  return {N, C, inner, true};
}

// The layout the kernels read and write: rows of C on a channels-last input keeps its format.
at::MemoryFormat memory_format_of(const at::Tensor& input, const DytShape& shape,
                                  bool channels_last) {
  if (channels_last || shape.planes || input.dim() < 4 || input.is_contiguous()) {
    return at::MemoryFormat::Contiguous;
  }
  return input.dim() == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::ChannelsLast3d;
}

at::ScalarType acc_dtype_of(const at::Tensor& input) {
  return at::toOpMathType(input.scalar_type());
}

at::Tensor in_acc_dtype(const at::Tensor& t, const at::Tensor& input) {
  return t.defined() ? t.to(acc_dtype_of(input)).contiguous().reshape({-1}) : at::Tensor();
}

} // namespace

at::Tensor dyt_forward(const at::Tensor& input, const at::Tensor& alpha,
                       const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias, bool channels_last,
                       DytForwardKernel kernel) {
  NORMEXT_RANGE("normext::dyt_forward");
  const at::Tensor weight_t = weight.value_or(at::Tensor());
  const at::Tensor bias_t = bias.value_or(at::Tensor());
  check_args(input, alpha, weight_t, bias_t, channels_last);
  const DytShape shape = shape_of(input, weight_t, bias_t, channels_last);
  const at::MemoryFormat format = memory_format_of(input, shape, channels_last);
  const at::Tensor X = input.contiguous(format);
  at::Tensor Y = at::empty_like(X, X.options(), format);
  if (X.numel() == 0) {
    return Y;
  }
  kernel(shape, X, in_acc_dtype(alpha, input), in_acc_dtype(weight_t, input),
         in_acc_dtype(bias_t, input), Y);
  return Y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dyt_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& alpha,
    const std::optional<at::Tensor>& weight, bool channels_last, std::array<bool, 4> output_mask,
    DytBackwardKernel kernel) {
  NORMEXT_RANGE("normext::dyt_backward");
  const at::Tensor weight_t = weight.value_or(at::Tensor());
  check_args(input, alpha, weight_t, at::Tensor(), channels_last);
  TORCH_CHECK(grad_out.sizes() == input.sizes(), "Expected grad_out of shape ", input.sizes(),
              " (the input's), but got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == input.scalar_type(), "Expected grad_out of dtype ",
              input.scalar_type(), " (the input's), but got ", grad_out.scalar_type());
  check_same_device(input, {grad_out});
  const DytShape shape = shape_of(input, weight_t, at::Tensor(), channels_last);
  const at::MemoryFormat format = memory_format_of(input, shape, channels_last);
  const at::Tensor X = input.contiguous(format);
  const at::Tensor dY = grad_out.contiguous(format);
  const auto acc = X.options().dtype(acc_dtype_of(input));
  at::Tensor dX = output_mask[0] ? at::empty_like(X, X.options(), format) : at::Tensor();
  at::Tensor dalpha = output_mask[1] ? at::empty({1}, acc) : at::Tensor();
  at::Tensor dgamma = output_mask[2] && weight_t.defined() ? at::empty({shape.C}, acc) : at::Tensor();
  at::Tensor dbeta = output_mask[3] ? at::empty({shape.C}, acc) : at::Tensor();
  if (X.numel() == 0) {
    for (at::Tensor* t : {&dalpha, &dgamma, &dbeta}) {
      if (t->defined()) {
        t->zero_();
      }
    }
  } else if (dX.defined() || dalpha.defined() || dgamma.defined() || dbeta.defined()) {
    kernel(shape, dY, X, in_acc_dtype(alpha, input), in_acc_dtype(weight_t, input), dX, dalpha,
           dgamma, dbeta);
  }
  // Parameter gradients in the parameters' dtype and shape; masked-out ones as empty tensors.
  const auto param_dtype = weight_t.defined() ? weight_t.scalar_type() : acc_dtype_of(input);
  auto or_empty = [&](const at::Tensor& t, at::ScalarType dtype, at::IntArrayRef sizes) {
    return t.defined() ? t.to(dtype).reshape(sizes) : at::empty({0}, X.options().dtype(dtype));
  };
  const std::vector<int64_t> c_shape =
      weight_t.defined() ? weight_t.sizes().vec() : std::vector<int64_t>{shape.C};
  return {dX.defined() ? dX : at::empty({0}, X.options()),
          or_empty(dalpha, alpha.scalar_type(), alpha.sizes()),
          or_empty(dgamma, param_dtype, c_shape), or_empty(dbeta, param_dtype, c_shape)};
}

TORCH_LIBRARY_IMPL(normext, CPU, m) {
  m.impl("dyt_forward", &dyt_forward_on<dyt_forward_cpu_kernel>);
  m.impl("dyt_backward", &dyt_backward_on<dyt_backward_cpu_kernel>);
}

} // namespace normext
