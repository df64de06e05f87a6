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
