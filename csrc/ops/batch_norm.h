// BatchNorm ops: argument checks, output allocation, layout choice and the per-channel math
// (batch_norm.cpp), shared by the CPU and CUDA registrations, which differ only in the four
// kernels they pass in. SyncBatchNorm's building blocks are the same four kernels, exposed as ops.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace normext {

// How the kernels see an input: N samples of C channels times HxW positions, stored NCHW (each
// (n, c) plane of HxW values contiguous) or channels-last (N * HxW rows of C contiguous channels).
// NB: inputs with HxW == 1 ((N, C) batches) are channels-last rows whatever their format says.
struct BatchNormShape {
  int64_t N;
  int64_t C;
  int64_t HxW;
  bool channels_last;
};

// The per-device kernels. Tensors named X, Y, dY, dX are contiguous in the layout the shape
// names; per-channel tensors are (C,) contiguous in the accumulation dtype (float32, float64 for
// double input).
struct BatchNormKernels {
  // Per-channel mean and M2 (sum of squared deviations) over N x HxW, Chan-merged in a fixed
  // order, as (C,) float64: M2 of a float32 input can pass float32's range.
  void (*stats)(const BatchNormShape& shape, const at::Tensor& X, at::Tensor& mean, at::Tensor& m2);
  // Y = (X - mean[c]) * scale[c] + shift[c].
  void (*apply)(const BatchNormShape& shape, const at::Tensor& X, const at::Tensor& mean,
                const at::Tensor& scale, const at::Tensor& shift, at::Tensor& Y);
  // sum_dy_xmu[c] = sum dY * (X - mean[c]),  sum_dy[c] = sum dY.
  void (*grad_sums)(const BatchNormShape& shape, const at::Tensor& dY, const at::Tensor& X,
                    const at::Tensor& mean, at::Tensor& sum_dy_xmu, at::Tensor& sum_dy);
  // dX = a[c] * dY + b[c] * (X - mean[c]) * rstd[c] + k[c].
  void (*grad_input)(const BatchNormShape& shape, const at::Tensor& dY, const at::Tensor& X,
                     const at::Tensor& a, const at::Tensor& mean, const at::Tensor& rstd,
                     const at::Tensor& b, const at::Tensor& k, at::Tensor& dX);
  // Optional one-sweep training paths (nullptr: none), for shapes where a channel's data stays
  // in cache between its reduction and its elementwise pass. They return false, having done
  // nothing, where they do not apply (a function of the shape only, so results stay
  // deterministic), and the op then composes the kernels above.
  // Forward: mean / m2 (double), invstd (acc) and Y, with weight / bias in acc or undefined.
  // It may also set save_mean (acc) and, where running_mean / running_var are defined, the
  // updated running statistics new_mean / new_var (running_stat_update, in the running dtype);
  // what it leaves undefined the op layer computes.
  bool (*train_forward)(const BatchNormShape& shape, const at::Tensor& X, const at::Tensor& weight,
                        const at::Tensor& bias, double eps, at::Tensor& Y, at::Tensor& mean,
                        at::Tensor& m2, at::Tensor& invstd, const at::Tensor& running_mean,
                        const at::Tensor& running_var, double momentum, at::Tensor& save_mean,
                        at::Tensor& new_mean, at::Tensor& new_var);
  // Backward with batch statistics: sum_dy_xmu / sum_dy (acc) and dX.
  bool (*train_backward)(const BatchNormShape& shape, const at::Tensor& dY, const at::Tensor& X,
                         const at::Tensor& weight, const at::Tensor& mean,
                         const at::Tensor& invstd, at::Tensor& sum_dy_xmu, at::Tensor& sum_dy,
                         at::Tensor& dX);
};

// The forward as a functional op (it carries the autograd formula): y, save_mean, save_invstd,
// and in training the updated running statistics (empty when not given or in evaluation).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_forward_impl(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps,
    const BatchNormKernels& kernels);

// normext::batch_norm_forward, for every device (CompositeImplicitAutograd): batch_norm_forward_impl,
// then the running statistics copied in place in training.
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps);

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    const std::optional<at::Tensor>& save_mean, const std::optional<at::Tensor>& save_invstd,
    bool train, double eps, std::array<bool, 3> output_mask, const BatchNormKernels& kernels);

// SyncBatchNorm's steps: local (mean, M2) in float64, the apply with given statistics, the local gradient
// sums and the input gradient from (globally reduced) sums over `count` elements per channel.
std::tuple<at::Tensor, at::Tensor> batch_norm_stats(const at::Tensor& input,
                                                    const BatchNormKernels& kernels);

at::Tensor batch_norm_elemt(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias, const at::Tensor& mean,
                            const at::Tensor& invstd, const BatchNormKernels& kernels);

std::tuple<at::Tensor, at::Tensor> batch_norm_backward_reduce(const at::Tensor& grad_out,
                                                              const at::Tensor& input,
                                                              const at::Tensor& mean,
                                                              const BatchNormKernels& kernels);

at::Tensor batch_norm_backward_elemt(const at::Tensor& grad_out, const at::Tensor& input,
                                     const std::optional<at::Tensor>& weight,
                                     const at::Tensor& mean, const at::Tensor& invstd,
                                     const at::Tensor& sum_dy, const at::Tensor& sum_dy_xmu,
                                     int64_t count, const BatchNormKernels& kernels);

// Registers every batch_norm op for one device: `register_batch_norm_ops<kernels>(m)` inside
// TORCH_LIBRARY_IMPL(normext, <device>, m).
template <const BatchNormKernels& kernels>
struct BatchNormOps {
  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_impl(
      const at::Tensor& input, const std::optional<at::Tensor>& weight,
      const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
      const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps) {
    return batch_norm_forward_impl(input, weight, bias, running_mean, running_var, training,
                                   momentum, eps, kernels);
  }
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
      const at::Tensor& grad_out, const at::Tensor& input, const std::optional<at::Tensor>& weight,
      const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
      const std::optional<at::Tensor>& save_mean, const std::optional<at::Tensor>& save_invstd,
      bool train, double eps, std::array<bool, 3> output_mask) {
    return batch_norm_backward(grad_out, input, weight, running_mean, running_var, save_mean,
                               save_invstd, train, eps, output_mask, kernels);
  }
  static std::tuple<at::Tensor, at::Tensor> stats(const at::Tensor& input) {
    return batch_norm_stats(input, kernels);
  }
  static at::Tensor elemt(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias, const at::Tensor& mean,
                          const at::Tensor& invstd) {
    return batch_norm_elemt(input, weight, bias, mean, invstd, kernels);
  }
  static std::tuple<at::Tensor, at::Tensor> backward_reduce(const at::Tensor& grad_out,
                                                            const at::Tensor& input,
                                                            const at::Tensor& mean) {
    return batch_norm_backward_reduce(grad_out, input, mean, kernels);
  }
  static at::Tensor backward_elemt(const at::Tensor& grad_out, const at::Tensor& input,
                                   const std::optional<at::Tensor>& weight,
                                   const at::Tensor& mean, const at::Tensor& invstd,
                                   const at::Tensor& sum_dy, const at::Tensor& sum_dy_xmu,
                                   int64_t count) {
    return batch_norm_backward_elemt(grad_out, input, weight, mean, invstd, sum_dy, sum_dy_xmu,
                                     count, kernels);
  }
};

#define NORMEXT_REGISTER_BATCH_NORM_OPS(m, kernels)                                      \
  do {                                                                                  \
    using Ops = ::normext::BatchNormOps<kernels>;                                        \
    (m).impl("batch_norm_forward_impl", &Ops::forward_impl);                                \
    (m).impl("batch_norm_backward", &Ops::backward);                                    \
    (m).impl("batch_norm_stats", &Ops::stats);                                          \
    (m).impl("batch_norm_elemt", &Ops::elemt);                                          \
    (m).impl("batch_norm_backward_reduce", &Ops::backward_reduce);                      \
    (m).impl("batch_norm_backward_elemt", &Ops::backward_elemt);                        \
  } while (0)

extern const BatchNormKernels batch_norm_cpu_kernels;

} // namespace normext
