// LayerNorm and RMSNorm ops: argument checks with torch's messages, output allocation, then the
// device kernel. Mirrors aten/src/ATen/native/layer_norm.{h,cpp} (native_layer_norm,
// _fused_rms_norm and rms_norm's checks).
#include "ops/layer_norm.h"

#include <limits>
#include <sstream>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include "common/profiling.h"
#include "ops/op_common.h"

namespace normext {
namespace {

at::ScalarType acc_dtype_of(const at::Tensor& input) {
  return at::toOpMathType(input.scalar_type());
}

// _check_layer_norm_inputs / _check_rms_norm_inputs: normalized_shape, parameter shapes, the
// input's trailing dims. `rms` picks RMSNorm's variants of the messages.
RowNormShape check_row_norm_inputs(const at::Tensor& input, at::IntArrayRef normalized_shape,
                                   const at::Tensor& weight, const at::Tensor& bias, bool rms) {
  const int64_t normalized_ndim = static_cast<int64_t>(normalized_shape.size());
  TORCH_CHECK(normalized_ndim >= 1,
              "Expected normalized_shape to be at least 1-dimensional, i.e., ",
              "containing at least one element, but got normalized_shape = ", normalized_shape);
  TORCH_CHECK(!weight.defined() || weight.sizes().equals(normalized_shape),
              "Expected weight to be of same shape as normalized_shape, but got ",
              "weight of shape ", weight.sizes(), " and normalized_shape = ", normalized_shape);
  TORCH_CHECK(!bias.defined() || bias.sizes().equals(normalized_shape),
              "Expected bias to be of same shape as normalized_shape, but got ", "bias of shape ",
              bias.sizes(), " and normalized_shape = ", normalized_shape);
  const int64_t input_ndim = input.dim();
  if (rms) {
    TORCH_CHECK_VALUE(input_ndim >= normalized_ndim, "Input tensor must have at least ",
                      normalized_ndim, " dimensions, but got ", input_ndim);
  }
  if (input_ndim < normalized_ndim ||
      !input.sizes().slice(input_ndim - normalized_ndim).equals(normalized_shape)) {
    std::stringstream ss;
    ss << "Given normalized_shape=" << normalized_shape << ", expected input with shape [*";
    for (const auto i : c10::irange(normalized_ndim)) {
      ss << (rms && i == 0 ? "" : ", ") << normalized_shape[i];
    }
    ss << "], but got input of size" << input.sizes();
    TORCH_CHECK(false, ss.str());
  }
  check_same_device(input, {weight, bias});
  const int64_t axis = input_ndim - normalized_ndim;
  int64_t M = 1, D = 1;
  for (const auto d : c10::irange(input_ndim)) {
    (d < axis ? M : D) *= input.size(d);
  }
  return {M, D};
}

// ATen's is_mixed_type / check_mixed_data_type for LayerNorm: mixed when the first given parameter's
// dtype is not the input's; then every parameter must be float32 and the input bfloat16/half.
// NB: when the first parameter matches but a later one does not, ATen fails reading the later one
// as the input's dtype; the same message is raised here.
void check_layer_norm_dtypes(const at::Tensor& input, const at::Tensor& weight,
                             const at::Tensor& bias) {
  const at::Tensor& first = weight.defined() ? weight : bias;
  if (!first.defined()) {
    return;
  }
  if (first.scalar_type() != input.scalar_type()) {
    check_mixed_param_dtypes(input, {weight, bias});
    return;
  }
  TORCH_CHECK(!bias.defined() || bias.scalar_type() == input.scalar_type(),
              "expected scalar type ", input.scalar_type(), " but found ", bias.scalar_type());
}

void check_floating(const at::Tensor& input, const char* op) {
  TORCH_CHECK_NOT_IMPLEMENTED(at::isFloatingType(input.scalar_type()), "normext ", op,
                              ": not implemented for '", input.scalar_type(),
                              "' (expected float32, float64, bfloat16 or float16)");
}

at::Tensor param_in_acc_dtype(const at::Tensor& param, const at::Tensor& input) {
  if (!param.defined()) {
    return at::Tensor();
  }
  return param.to(acc_dtype_of(input)).contiguous().view(-1);
}

// mean / rstd keep the input's leading dims and a 1 for each normalized dim, as ATen's.
std::vector<int64_t> stat_shape(const at::Tensor& input, at::IntArrayRef normalized_shape) {
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  for (size_t i = shape.size() - normalized_shape.size(); i < shape.size(); ++i) {
    shape[i] = 1;
  }
  return shape;
}

double rms_eps(const at::Tensor& input, std::optional<double> eps) {
  // torch: the machine epsilon of the accumulation type (float32 for half/bfloat16).
  if (eps.has_value()) {
    return *eps;
  }
  return input.scalar_type() == at::kDouble ? std::numeric_limits<double>::epsilon()
                                            : std::numeric_limits<float>::epsilon();
}

void check_residual(const at::Tensor& input, const at::Tensor& residual) {
  TORCH_CHECK(residual.sizes() == input.sizes(), "Expected residual of shape ", input.sizes(),
              " (the input's), but got ", residual.sizes());
  TORCH_CHECK(residual.scalar_type() == input.scalar_type(), "Expected residual of dtype ",
              input.scalar_type(), " (the input's), but got ", residual.scalar_type());
  check_same_device(input, {residual});
}

struct ForwardResult {
  at::Tensor y, summed, mean, rstd;
};

// The shared forward: residual may be undefined (plain norm), rms selects RMSNorm (no mean).
ForwardResult row_norm_forward(const at::Tensor& input, const at::Tensor& residual,
                               at::IntArrayRef normalized_shape, const at::Tensor& weight,
                               const at::Tensor& bias, double eps, bool rms,
                               RowNormForwardKernel kernel) {
  const RowNormShape shape = check_row_norm_inputs(input, normalized_shape, weight, bias, rms);
  if (!rms) {
    check_layer_norm_dtypes(input, weight, bias);
  }
  check_floating(input, rms ? "rms_norm" : "layer_norm");
  if (residual.defined()) {
    check_residual(input, residual);
  }
  const at::Tensor X = input.contiguous();
  const at::Tensor R = residual.defined() ? residual.contiguous() : at::Tensor();
  ForwardResult out;
  out.y = at::empty_like(X, at::MemoryFormat::Contiguous);
  at::Tensor S = R.defined() ? at::empty_like(X, at::MemoryFormat::Contiguous) : at::Tensor();
  const auto stats_options = X.options().dtype(acc_dtype_of(input));
  const std::vector<int64_t> stats = stat_shape(input, normalized_shape);
  out.mean = rms ? at::Tensor() : at::empty(stats, stats_options);
  out.rstd = at::empty(stats, stats_options);
  if (shape.M > 0 && shape.D == 0) {
    // torch: an empty row has mean 0 (LayerNorm) and rstd nan.
    if (out.mean.defined()) {
      out.mean.zero_();
    }
    out.rstd.fill_(std::numeric_limits<double>::quiet_NaN());
  } else if (shape.M > 0) {
    kernel(shape, X, R, param_in_acc_dtype(weight, input), param_in_acc_dtype(bias, input), eps,
           out.y, S, out.mean, out.rstd);
  }
  out.summed = S;
  return out;
}

struct BackwardResult {
  at::Tensor dx, dweight, dbias;
};

BackwardResult row_norm_backward(const at::Tensor& grad_out, const at::Tensor& input,
                                 at::IntArrayRef normalized_shape, const at::Tensor& mean,
                                 const at::Tensor& rstd, const at::Tensor& weight,
                                 const at::Tensor& bias, bool rms, std::array<bool, 3> mask,
                                 RowNormBackwardKernel kernel) {
  const RowNormShape shape = check_row_norm_inputs(input, normalized_shape, weight, bias, rms);
  if (!rms) {
    check_layer_norm_dtypes(input, weight, bias);
  }
  check_floating(input, rms ? "rms_norm" : "layer_norm");
  TORCH_CHECK(grad_out.sizes() == input.sizes(), "Expected grad_out of shape ", input.sizes(),
              " (the input's), but got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == input.scalar_type(), "Expected grad_out of dtype ",
              input.scalar_type(), " (the input's), but got ", grad_out.scalar_type());
  // NB: the kernels take raw pointers (mean is undefined for RMSNorm: skipped).
  check_same_device(input, {grad_out, mean, rstd});
  const auto acc = acc_dtype_of(input);
  for (const at::Tensor* stat : {&mean, &rstd}) {
    TORCH_CHECK(!stat->defined() || (stat->numel() == shape.M && stat->scalar_type() == acc),
                "Expected ", rms ? "rstd" : "mean and rstd", " with ", shape.M,
                " elements of dtype ", acc, ", but got shape ", stat->sizes(), " and dtype ",
                stat->scalar_type());
  }
  const at::Tensor X = input.contiguous();
  const at::Tensor dY = grad_out.contiguous();
  at::Tensor dX = mask[0] ? at::empty_like(X, at::MemoryFormat::Contiguous) : at::Tensor();
  at::Tensor dgamma = mask[1] && weight.defined() ? at::empty({shape.D}, X.options().dtype(acc))
                                                  : at::Tensor();
  at::Tensor dbeta = mask[2] ? at::empty({shape.D}, X.options().dtype(acc)) : at::Tensor();
  if (shape.M == 0 || shape.D == 0) {
    for (at::Tensor* t : {&dgamma, &dbeta}) {
      if (t->defined()) {
        t->zero_();
      }
    }
  } else if (dX.defined() || dgamma.defined() || dbeta.defined()) {
    kernel(shape, dY, X, rms ? at::Tensor() : mean.contiguous(), rstd.contiguous(),
           param_in_acc_dtype(weight, input), dX, dgamma, dbeta);
  }
  // Parameter gradients in the parameters' shape (normalized_shape) and dtype; masked-out ones come
  // back as empty tensors (custom op schemas cannot return None).
  const at::ScalarType weight_dtype = weight.defined() ? weight.scalar_type() : acc;
  const at::ScalarType bias_dtype = bias.defined() ? bias.scalar_type() : weight_dtype;
  auto param_grad = [&](const at::Tensor& t, at::ScalarType dtype) {
    return t.defined() ? t.view(normalized_shape).to(dtype)
                       : at::empty({0}, X.options().dtype(dtype));
  };
  return {dX.defined() ? dX : at::empty({0}, X.options()), param_grad(dgamma, weight_dtype),
          param_grad(dbeta, bias_dtype)};
}

const at::Tensor& value_or_undefined(const std::optional<at::Tensor>& t) {
  static const at::Tensor undefined;
  return t.has_value() ? *t : undefined;
}

} // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_forward(
    const at::Tensor& input, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    RowNormForwardKernel kernel) {
  NORMEXT_RANGE("normext::layer_norm_forward");
  ForwardResult r = row_norm_forward(input, at::Tensor(), normalized_shape,
                                     value_or_undefined(weight), value_or_undefined(bias), eps,
                                     /*rms=*/false, kernel);
  return {r.y, r.mean, r.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward(
    const at::Tensor& grad_out, const at::Tensor& input, at::IntArrayRef normalized_shape,
    const at::Tensor& mean, const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, std::array<bool, 3> output_mask,
    RowNormBackwardKernel kernel) {
  NORMEXT_RANGE("normext::layer_norm_backward");
  BackwardResult r = row_norm_backward(grad_out, input, normalized_shape, mean, rstd,
                                       value_or_undefined(weight), value_or_undefined(bias),
                                       /*rms=*/false, output_mask, kernel);
  return {r.dx, r.dweight, r.dbias};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_forward(const at::Tensor& input,
                                                    at::IntArrayRef normalized_shape,
                                                    const std::optional<at::Tensor>& weight,
                                                    std::optional<double> eps,
                                                    RowNormForwardKernel kernel) {
  NORMEXT_RANGE("normext::rms_norm_forward");
  ForwardResult r = row_norm_forward(input, at::Tensor(), normalized_shape,
                                     value_or_undefined(weight), at::Tensor(),
                                     rms_eps(input, eps), /*rms=*/true, kernel);
  return {r.y, r.rstd};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& grad_out,
                                                     const at::Tensor& input,
                                                     at::IntArrayRef normalized_shape,
                                                     const at::Tensor& rstd,
                                                     const std::optional<at::Tensor>& weight,
                                                     std::array<bool, 2> output_mask,
                                                     RowNormBackwardKernel kernel) {
  NORMEXT_RANGE("normext::rms_norm_backward");
  BackwardResult r = row_norm_backward(grad_out, input, normalized_shape, at::Tensor(), rstd,
                                       value_or_undefined(weight), at::Tensor(), /*rms=*/true,
                                       {output_mask[0], output_mask[1], false}, kernel);
  return {r.dx, r.dweight};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm_forward(
    const at::Tensor& input, const at::Tensor& residual, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    RowNormForwardKernel kernel) {
  NORMEXT_RANGE("normext::add_layer_norm_forward");
  ForwardResult r = row_norm_forward(input, residual, normalized_shape, value_or_undefined(weight),
                                     value_or_undefined(bias), eps, /*rms=*/false, kernel);
  return {r.y, r.summed, r.mean, r.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_forward(
    const at::Tensor& input, const at::Tensor& residual, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, std::optional<double> eps,
    RowNormForwardKernel kernel) {
  NORMEXT_RANGE("normext::add_rms_norm_forward");
  ForwardResult r = row_norm_forward(input, residual, normalized_shape, value_or_undefined(weight),
                                     at::Tensor(), rms_eps(input, eps), /*rms=*/true, kernel);
  return {r.y, r.summed, r.rstd};
}

TORCH_LIBRARY_IMPL(normext, CPU, m) {
  m.impl("layer_norm_forward", &layer_norm_forward_on<row_norm_forward_cpu_kernel>);
  m.impl("layer_norm_backward", &layer_norm_backward_on<row_norm_backward_cpu_kernel>);
  m.impl("rms_norm_forward", &rms_norm_forward_on<row_norm_forward_cpu_kernel>);
  m.impl("rms_norm_backward", &rms_norm_backward_on<row_norm_backward_cpu_kernel>);
  m.impl("add_layer_norm_forward", &add_layer_norm_forward_on<row_norm_forward_cpu_kernel>);
  m.impl("add_rms_norm_forward", &add_rms_norm_forward_on<row_norm_forward_cpu_kernel>);
}

} // namespace normext
