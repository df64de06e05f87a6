// DyT op ("Transformers without Normalization", Zhu et al. 2025): y = weight * tanh(alpha * x) +
// bias with a learnable scalar alpha. Argument checks, layout choice and allocation (dyt.cpp),
// shared by the CPU and CUDA registrations, which differ only in the kernel they pass in.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace normext {

// How the kernels see an input. rows x C, C contiguous (planes == false): channels_last=True
// (parameters over the trailing dims), or channels_last=False on a channels-last tensor or one
// with no spatial dims. Otherwise (planes == true) rows = N planes of C channels of `inner`
// contiguous values each: channels_last=False on an NCHW-like input.
struct DytShape {
  int64_t rows;
  int64_t C;
  int64_t inner;
  bool planes;
};

// X, Y: contiguous in the layout `shape` names. alpha: one value, gamma / beta: C values or
// undefined (1 / 0), all in the accumulation dtype (float32, or float64 for double input).
using DytForwardKernel = void (*)(const DytShape& shape, const at::Tensor& X,
                                  const at::Tensor& alpha, const at::Tensor& gamma,
                                  const at::Tensor& beta, at::Tensor& Y);

// dX in the layout of X, or undefined (not wanted); dalpha (1,), dgamma / dbeta (C,) in the
// accumulation dtype, or undefined (not wanted).
using DytBackwardKernel = void (*)(const DytShape& shape, const at::Tensor& dY,
                                   const at::Tensor& X, const at::Tensor& alpha,
                                   const at::Tensor& gamma, at::Tensor& dX, at::Tensor& dalpha,
                                   at::Tensor& dgamma, at::Tensor& dbeta);

at::Tensor dyt_forward(const at::Tensor& input, const at::Tensor& alpha,
                       const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias, bool channels_last,
                       DytForwardKernel kernel);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dyt_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& alpha,
    const std::optional<at::Tensor>& weight, bool channels_last, std::array<bool, 4> output_mask,
    DytBackwardKernel kernel);

template <DytForwardKernel kernel>
at::Tensor dyt_forward_on(const at::Tensor& input, const at::Tensor& alpha,
                          const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias, bool channels_last) {
  return dyt_forward(input, alpha, weight, bias, channels_last, kernel);
}

template <DytBackwardKernel kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dyt_backward_on(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& alpha,
    const std::optional<at::Tensor>& weight, bool channels_last,
    std::array<bool, 4> output_mask) {
  return dyt_backward(grad_out, input, alpha, weight, channels_last, output_mask, kernel);
}

void dyt_forward_cpu_kernel(const DytShape& shape, const at::Tensor& X, const at::Tensor& alpha,
                            const at::Tensor& gamma, const at::Tensor& beta, at::Tensor& Y);

void dyt_backward_cpu_kernel(const DytShape& shape, const at::Tensor& dY, const at::Tensor& X,
                             const at::Tensor& alpha, const at::Tensor& gamma, at::Tensor& dX,
                             at::Tensor& dalpha, at::Tensor& dgamma, at::Tensor& dbeta);

} // namespace normext
