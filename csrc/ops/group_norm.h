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

// Fused work around the normalization (issue 5). activation: 0 none, 1 silu, 2 gelu, 3
// gelu_tanh, 4 relu, applied to the output. residual: undefined, or R in X's layout; the kernel
// then writes S = X + R into `summed` and normalizes S (add_group_norm).
struct GroupNormFusion {
  int64_t activation = 0;
  at::Tensor residual;
  at::Tensor summed;
};

constexpr int64_t kNumActivations = 5;  // including 0 (none)

// X, Y: contiguous in the layout `shape.channels_last` names (Y may be X itself: in place). gamma / beta: the parameters in the
// accumulation dtype (float32, or float64 for double input), or undefined. mean / rstd: (N, G) in
// the accumulation dtype.
using GroupNormForwardKernel = void (*)(const GroupNormShape& shape, const at::Tensor& X,
                                        const at::Tensor& gamma, const at::Tensor& beta,
                                        double eps, const GroupNormFusion& fusion,
                                        at::Tensor& Y, at::Tensor& mean, at::Tensor& rstd);

// dY, X, dX in the layout of `shape`; dgamma / dbeta (C,) in the accumulation dtype, allocated
// when requested by the mask, otherwise undefined. With an activation, dY is the gradient of
// act(z), z = the GroupNorm output, recomputed from X, mean, rstd, gamma and beta.
using GroupNormBackwardKernel = void (*)(const GroupNormShape& shape, const at::Tensor& dY,
                                         const at::Tensor& X, const at::Tensor& mean,
                                         const at::Tensor& rstd, const at::Tensor& gamma,
                                         const at::Tensor& beta, int64_t activation,
                                         at::Tensor& dX, at::Tensor& dgamma, at::Tensor& dbeta);

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, int64_t num_groups, double eps, int64_t activation,
    GroupNormForwardKernel kernel);

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& rstd, const std::optional<at::Tensor>& weight, int64_t num_groups,
    std::array<bool, 3> output_mask, const std::optional<at::Tensor>& bias, int64_t activation,
    GroupNormBackwardKernel kernel);

// (out, summed, mean, rstd): summed = input + residual, out = act(GroupNorm(summed)), one pass.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_group_norm_forward(
    const at::Tensor& input, const at::Tensor& residual, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, int64_t num_groups, double eps, int64_t activation,
    GroupNormForwardKernel kernel);

// input = act(GroupNorm(input)), written into input's storage.
void group_norm_inplace(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                        const std::optional<at::Tensor>& bias, int64_t num_groups, double eps,
                        int64_t activation, GroupNormForwardKernel kernel);

// The op for one device: its registration is `m.impl("group_norm_forward",
// &group_norm_forward_on<device_kernel>)`, and likewise for the backward.
template <GroupNormForwardKernel kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_forward_on(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, int64_t num_groups, double eps, int64_t activation) {
  return group_norm_forward(input, weight, bias, num_groups, eps, activation, kernel);
}

template <GroupNormBackwardKernel kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward_on(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& rstd, const std::optional<at::Tensor>& weight, int64_t num_groups,
    std::array<bool, 3> output_mask, const std::optional<at::Tensor>& bias, int64_t activation) {
  return group_norm_backward(grad_out, input, mean, rstd, weight, num_groups, output_mask, bias,
                             activation, kernel);
}

template <GroupNormForwardKernel kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_group_norm_forward_on(
    const at::Tensor& input, const at::Tensor& residual, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, int64_t num_groups, double eps, int64_t activation) {
  return add_group_norm_forward(input, residual, weight, bias, num_groups, eps, activation,
                                kernel);
}

template <GroupNormForwardKernel kernel>
void group_norm_inplace_on(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias, int64_t num_groups, double eps,
                           int64_t activation) {
  group_norm_inplace(input, weight, bias, num_groups, eps, activation, kernel);
}

void group_norm_forward_cpu_kernel(const GroupNormShape& shape, const at::Tensor& X,
                                   const at::Tensor& gamma, const at::Tensor& beta, double eps,
                                   const GroupNormFusion& fusion, at::Tensor& Y, at::Tensor& mean,
                                   at::Tensor& rstd);

void group_norm_backward_cpu_kernel(const GroupNormShape& shape, const at::Tensor& dY,
                                    const at::Tensor& X, const at::Tensor& mean,
                                    const at::Tensor& rstd, const at::Tensor& gamma,
                                    const at::Tensor& beta, int64_t activation, at::Tensor& dX,
                                    at::Tensor& dgamma, at::Tensor& dbeta);

} // namespace normext
