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
}
