// Row norms: LayerNorm and RMSNorm (and their fused residual-add variants). Argument checks,
// output allocation (layer_norm.cpp), shared by the CPU and CUDA registrations, which differ only
// in the kernels they pass in.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace normext {

// How the kernels see an input: M rows of D = prod(normalized_shape) contiguous values.
struct RowNormShape {
  int64_t M;
  int64_t D;
};

// X, R (the residual, or undefined), Y, S (X + R, defined exactly when R is): contiguous M x D.
// gamma / beta: D parameters in the accumulation dtype (float32, float64 for double), or
// undefined. mean: M values in the accumulation dtype, undefined for RMSNorm (no centering);
// rstd: M values. With R, the statistics are those of S = X + R rounded to the input dtype, as
// the unfused `layer_norm(x + r)` computes them.
using RowNormForwardKernel = void (*)(const RowNormShape& shape, const at::Tensor& X,
                                      const at::Tensor& R, const at::Tensor& gamma,
                                      const at::Tensor& beta, double eps, at::Tensor& Y,
                                      at::Tensor& S, at::Tensor& mean, at::Tensor& rstd);

// dY, X, dX: contiguous M x D; mean undefined for RMSNorm; gamma in the accumulation dtype or
// undefined; dgamma / dbeta (D,) in the accumulation dtype, allocated when requested, otherwise
// undefined. dX undefined when not requested.
using RowNormBackwardKernel = void (*)(const RowNormShape& shape, const at::Tensor& dY,
                                       const at::Tensor& X, const at::Tensor& mean,
                                       const at::Tensor& rstd, const at::Tensor& gamma,
                                       at::Tensor& dX, at::Tensor& dgamma, at::Tensor& dbeta);

// ---- LayerNorm: mirrors aten::native_layer_norm / native_layer_norm_backward ----

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_forward(
    const at::Tensor& input, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    RowNormForwardKernel kernel);

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward(
    const at::Tensor& grad_out, const at::Tensor& input, at::IntArrayRef normalized_shape,
    const at::Tensor& mean, const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, std::array<bool, 3> output_mask,
    RowNormBackwardKernel kernel);

// ---- RMSNorm: mirrors aten::_fused_rms_norm / _fused_rms_norm_backward ----

std::tuple<at::Tensor, at::Tensor> rms_norm_forward(const at::Tensor& input,
                                                    at::IntArrayRef normalized_shape,
                                                    const std::optional<at::Tensor>& weight,
                                                    std::optional<double> eps,
                                                    RowNormForwardKernel kernel);

std::tuple<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& grad_out,
                                                     const at::Tensor& input,
                                                     at::IntArrayRef normalized_shape,
                                                     const at::Tensor& rstd,
                                                     const std::optional<at::Tensor>& weight,
                                                     std::array<bool, 2> output_mask,
                                                     RowNormBackwardKernel kernel);

// ---- Fused residual add + norm: (y, summed, stats...) with summed = input + residual ----

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm_forward(
    const at::Tensor& input, const at::Tensor& residual, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    RowNormForwardKernel kernel);

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_forward(
    const at::Tensor& input, const at::Tensor& residual, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, std::optional<double> eps,
    RowNormForwardKernel kernel);

// The ops for one device: `m.impl("layer_norm_forward", &layer_norm_forward_on<kernel>)`, etc.
template <RowNormForwardKernel kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_forward_on(
    const at::Tensor& input, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps) {
  return layer_norm_forward(input, normalized_shape, weight, bias, eps, kernel);
}

template <RowNormBackwardKernel kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward_on(
    const at::Tensor& grad_out, const at::Tensor& input, at::IntArrayRef normalized_shape,
    const at::Tensor& mean, const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, std::array<bool, 3> output_mask) {
  return layer_norm_backward(grad_out, input, normalized_shape, mean, rstd, weight, bias,
                             output_mask, kernel);
}

template <RowNormForwardKernel kernel>
std::tuple<at::Tensor, at::Tensor> rms_norm_forward_on(const at::Tensor& input,
                                                       at::IntArrayRef normalized_shape,
                                                       const std::optional<at::Tensor>& weight,
                                                       std::optional<double> eps) {
  return rms_norm_forward(input, normalized_shape, weight, eps, kernel);
}

template <RowNormBackwardKernel kernel>
std::tuple<at::Tensor, at::Tensor> rms_norm_backward_on(const at::Tensor& grad_out,
                                                        const at::Tensor& input,
                                                        at::IntArrayRef normalized_shape,
                                                        const at::Tensor& rstd,
                                                        const std::optional<at::Tensor>& weight,
                                                        std::array<bool, 2> output_mask) {
  return rms_norm_backward(grad_out, input, normalized_shape, rstd, weight, output_mask, kernel);
}

template <RowNormForwardKernel kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm_forward_on(
    const at::Tensor& input, const at::Tensor& residual, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps) {
  return add_layer_norm_forward(input, residual, normalized_shape, weight, bias, eps, kernel);
}

template <RowNormForwardKernel kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_forward_on(
    const at::Tensor& input, const at::Tensor& residual, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, std::optional<double> eps) {
  return add_rms_norm_forward(input, residual, normalized_shape, weight, eps, kernel);
}

void row_norm_forward_cpu_kernel(const RowNormShape& shape, const at::Tensor& X,
                                 const at::Tensor& R, const at::Tensor& gamma,
                                 const at::Tensor& beta, double eps, at::Tensor& Y, at::Tensor& S,
                                 at::Tensor& mean, at::Tensor& rstd);

void row_norm_backward_cpu_kernel(const RowNormShape& shape, const at::Tensor& dY,
                                  const at::Tensor& X, const at::Tensor& mean,
                                  const at::Tensor& rstd, const at::Tensor& gamma,
                                  at::Tensor& dX, at::Tensor& dgamma, at::Tensor& dbeta);

} // namespace normext
