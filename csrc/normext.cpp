// Every normext operator schema, in one place. Kernels register per device in csrc/ops/.
#include <torch/library.h>

TORCH_LIBRARY(normext, m) {
  // Mirrors aten::native_group_norm: y, plus mean and rstd of shape (N, num_groups), float32 for
  // half/bfloat16 input (float64 for double), saved for the backward.
  m.def(
      "group_norm_forward(Tensor input, Tensor? weight, Tensor? bias, int num_groups, float eps,"
      " int activation=0) -> (Tensor, Tensor, Tensor)");
  // (dx, dweight, dbias); an output not asked for by output_mask (or dweight when weight is None)
  // comes back as an empty tensor of shape [0].
  m.def(
      "group_norm_backward(Tensor grad_out, Tensor input, Tensor mean, Tensor rstd, Tensor? weight,"
      " int num_groups, bool[3] output_mask, Tensor? bias=None, int activation=0)"
      " -> (Tensor, Tensor, Tensor)");

  // ---- Row norms (LayerNorm, RMSNorm): csrc/ops/layer_norm.{h,cpp} ----
  // Mirror aten::native_layer_norm / native_layer_norm_backward: y, plus mean and rstd of the
  // input's shape with a 1 for each normalized dim, float32 for half/bfloat16 input (float64 for
  // double). Backward: (dx, dweight, dbias), masked-out outputs as empty tensors of shape [0].
  m.def(
      "layer_norm_forward(Tensor input, SymInt[] normalized_shape, Tensor? weight, Tensor? bias,"
      " float eps) -> (Tensor, Tensor, Tensor)");
  m.def(
      "layer_norm_backward(Tensor grad_out, Tensor input, SymInt[] normalized_shape, Tensor mean,"
      " Tensor rstd, Tensor? weight, Tensor? bias, bool[3] output_mask)"
      " -> (Tensor, Tensor, Tensor)");
  // Mirror aten::_fused_rms_norm / _fused_rms_norm_backward: (y, rstd); eps None is the machine
  // epsilon of the accumulation dtype, as torch.rms_norm's.
  m.def(
      "rms_norm_forward(Tensor input, SymInt[] normalized_shape, Tensor? weight, float? eps)"
      " -> (Tensor, Tensor)");
  m.def(
      "rms_norm_backward(Tensor grad_out, Tensor input, SymInt[] normalized_shape, Tensor rstd,"
      " Tensor? weight, bool[2] output_mask) -> (Tensor, Tensor)");
  // Fused residual add + norm: summed = input + residual (rounded to the input dtype) is written
  // once and normalized while in cache: (y, summed, mean, rstd) / (y, summed, rstd). The backward
  // is layer_norm_backward / rms_norm_backward on summed.
  m.def(
      "add_layer_norm_forward(Tensor input, Tensor residual, SymInt[] normalized_shape,"
      " Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "add_rms_norm_forward(Tensor input, Tensor residual, SymInt[] normalized_shape,"
      " Tensor? weight, float? eps) -> (Tensor, Tensor, Tensor)");

  // ---- BatchNorm (and SyncBatchNorm's steps) ------------------------------------------------
  // Mirrors aten::native_batch_norm: (y, save_mean, save_invstd), statistics (C,) in the
  // accumulation dtype; in training the running statistics are updated in place (unbiased
  // variance); in evaluation they normalize and save_mean / save_invstd are empty.
  m.def(
      "batch_norm_forward(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean,"
      " Tensor(b!)? running_var, bool training, float momentum, float eps)"
      " -> (Tensor, Tensor, Tensor)");
  // batch_norm_forward as a functional op (batch_norm_forward, a composite, copies the new running
  // statistics in place): (y, save_mean, save_invstd, new running_mean, new running_var), the last
  // two empty in evaluation or when not given. It carries the autograd formula.
  m.def(
      "batch_norm_forward_impl(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean,"
      " Tensor? running_var, bool training, float momentum, float eps)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Mirrors aten::native_batch_norm_backward: (dx, dweight, dbias); outputs not asked for come
  // back as empty tensors of shape [0].
  m.def(
      "batch_norm_backward(Tensor grad_out, Tensor input, Tensor? weight, Tensor? running_mean,"
      " Tensor? running_var, Tensor? save_mean, Tensor? save_invstd, bool train, float eps,"
      " bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // Per-channel (mean, M2) of the local batch in float64, for an exact Chan merge across processes.
  m.def("batch_norm_stats(Tensor input) -> (Tensor, Tensor)");
  // y = (x - mean) * invstd * weight + bias with given per-channel statistics.
  m.def(
      "batch_norm_elemt(Tensor input, Tensor? weight, Tensor? bias, Tensor mean, Tensor invstd)"
      " -> Tensor");
  // Local per-channel (sum_dy, sum_dy_xmu) for the all-reduce of the backward.
  m.def("batch_norm_backward_reduce(Tensor grad_out, Tensor input, Tensor mean) -> (Tensor, Tensor)");
  // dx from the (global) sums over `count` elements per channel.
  m.def(
      "batch_norm_backward_elemt(Tensor grad_out, Tensor input, Tensor? weight, Tensor mean,"
      " Tensor invstd, Tensor sum_dy, Tensor sum_dy_xmu, int count) -> Tensor");
  // ---- end BatchNorm ------------------------------------------------------------------------

  // ---- fused GroupNorm (issue 5): activation 0 none, 1 silu, 2 gelu, 3 gelu_tanh, 4 relu on
  // the output of group_norm_forward; group_norm_backward then takes the gradient of the
  // activated output and recomputes the activation's input from input, mean, rstd, weight, bias.
  // (out, summed, mean, rstd): summed = input + residual, normalized in the same pass.
  m.def(
      "add_group_norm_forward(Tensor input, Tensor residual, Tensor? weight, Tensor? bias,"
      " int num_groups, float eps, int activation=0) -> (Tensor, Tensor, Tensor, Tensor)");
  // Inference: act(GroupNorm(input)) written into input.
  m.def(
      "group_norm_inplace(Tensor(a!) input, Tensor? weight, Tensor? bias, int num_groups,"
      " float eps, int activation=0) -> ()");

  // ---- DyT (csrc/ops/dyt.*) ----
  // y = weight * tanh(alpha * x) + bias; alpha has one element. channels_last: parameters over
  // the trailing dims (True) or over dim 1 of an (N, C, *) input (False).
  m.def(
      "dyt_forward(Tensor input, Tensor alpha, Tensor? weight, Tensor? bias, bool channels_last)"
      " -> Tensor");
  // (dx, dalpha, dweight, dbias); masked-out outputs (and dweight when weight is None) come back
  // as empty tensors of shape [0].
  m.def(
      "dyt_backward(Tensor grad_out, Tensor input, Tensor alpha, Tensor? weight,"
      " bool channels_last, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
}
