#include "ops/op_common.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>

namespace normext {

bool is_reduced_float(at::ScalarType t) {
  return t == at::kBFloat16 || t == at::kHalf;
}

void check_mixed_param_dtypes(const at::Tensor& input,
                              std::initializer_list<at::Tensor> params) {
  for (const at::Tensor& p : params) {
    TORCH_CHECK(!p.defined() || p.scalar_type() == at::kFloat,
                "mixed dtype (CPU): expect parameter to have scalar type of Float");
  }
  TORCH_CHECK(is_reduced_float(input.scalar_type()),
              "mixed dtype (CPU): all inputs must share same datatype.");
}

void check_param_dtypes(const at::Tensor& input, std::initializer_list<at::Tensor> params) {
  bool mixed = false;
  for (const at::Tensor& p : params) {
    mixed |= p.defined() && p.scalar_type() != input.scalar_type();
  }
  if (!mixed) {
    return;
  }
  check_mixed_param_dtypes(input, params);
}

void check_same_device(const at::Tensor& input, std::initializer_list<at::Tensor> tensors) {
  for (const at::Tensor& t : tensors) {
    TORCH_CHECK(!t.defined() || t.device() == input.device(), "Tensor on device ", t.device(),
                " is not on the expected device ", input.device(), "!");
  }
}

int64_t spatial_size(const at::Tensor& input) {
  int64_t HxW = 1;
  for (const auto d : c10::irange(2, input.dim())) {
    HxW *= input.size(d);
  }
  return HxW;
}

bool keeps_channels_last(const at::Tensor& input) {
  const auto format = input.suggest_memory_format();
  return !input.is_contiguous() &&
         ((input.dim() == 4 && format == at::MemoryFormat::ChannelsLast) ||
          (input.dim() == 5 && format == at::MemoryFormat::ChannelsLast3d));
}

} // namespace normext
