// Every normext operator schema, in one place. Kernels register per device in csrc/ops/.
#include <torch/library.h>

TORCH_LIBRARY(normext, m) {
  // Mirrors aten::native_group_norm: y, plus mean and rstd of shape (N, num_groups), float32 for
  // half/bfloat16 input (float64 for double), saved for the backward.
  m.def(
      "group_norm_forward(Tensor input, Tensor? weight, Tensor? bias, int num_groups, float eps)"
      " -> (Tensor, Tensor, Tensor)");
  // (dx, dweight, dbias); an output not asked for by output_mask (or dweight when weight is None)
  // comes back as an empty tensor of shape [0].
  m.def(
      "group_norm_backward(Tensor grad_out, Tensor input, Tensor mean, Tensor rstd, Tensor? weight,"
      " int num_groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");

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
}
