// GroupNorm op: argument checks, output allocation and layout choice (group_norm.cpp), shared by
// the CPU and CUDA registrations, which differ only in the kernel they pass in.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace normext {

// How the kernels see an input: N samples of C channels times HxW positions, G groups of
// D = C / G adjacent channels, stored NCHW (each channel's HxW values contiguous) or channels-last
// (each position's C values contiguous).
struct GroupNormShape {
  int64_t N;
  int64_t C;
  int64_t HxW;
  int64_t G;
  bool channels_last;
};

// X, Y: contiguous in the layout `shape.channels_last` names. gamma / beta: the parameters in the
// accumulation dtype (float32, or float64 for double input), or undefined. mean / rstd: (N, G) in
// the accumulation dtype.
using GroupNormForwardKernel = void (*)(const GroupNormShape& shape, const at::Tensor& X,
                                        const at::Tensor& gamma, const at::Tensor& beta,
                                        double eps, at::Tensor& Y, at::Tensor& mean,
                                        at::Tensor& rstd);

// dY, X, dX in the layout of `shape`; dgamma / dbeta (C,) in the accumulation dtype, allocated
// when requested by the mask, otherwise undefined.
using GroupNormBackwardKernel = void (*)(const GroupNormShape& shape, const at::Tensor& dY,
                                         const at::Tensor& X, const at::Tensor& mean,
                                         const at::Tensor& rstd, const at::Tensor& gamma,
                                         at::Tensor& dX, at::Tensor& dgamma, at::Tensor& dbeta);

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, int64_t num_groups, double eps,
    GroupNormForwardKernel kernel);

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& rstd, const std::optional<at::Tensor>& weight, int64_t num_groups,
    std::array<bool, 3> output_mask, GroupNormBackwardKernel kernel);

// The op for one device: its registration is `m.impl("group_norm_forward",
// &group_norm_forward_on<device_kernel>)`, and likewise for the backward.
template <GroupNormForwardKernel kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_forward_on(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, int64_t num_groups, double eps) {
  return group_norm_forward(input, weight, bias, num_groups, eps, kernel);
}

template <GroupNormBackwardKernel kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward_on(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& rstd, const std::optional<at::Tensor>& weight, int64_t num_groups,
    std::array<bool, 3> output_mask) {
  return group_norm_backward(grad_out, input, mean, rstd, weight, num_groups, output_mask,
                             kernel);
}

void group_norm_forward_cpu_kernel(const GroupNormShape& shape, const at::Tensor& X,
                                   const at::Tensor& gamma, const at::Tensor& beta, double eps,
                                   at::Tensor& Y, at::Tensor& mean, at::Tensor& rstd);

void group_norm_backward_cpu_kernel(const GroupNormShape& shape, const at::Tensor& dY,
                                    const at::Tensor& X, const at::Tensor& mean,
                                    const at::Tensor& rstd, const at::Tensor& gamma,
                                    at::Tensor& dX, at::Tensor& dgamma, at::Tensor& dbeta);

} // namespace normext
