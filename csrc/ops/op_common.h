// Argument checks and layout rules shared by the ops (csrc/ops/*.cpp), with torch's messages.
#pragma once

#include <cstdint>
#include <initializer_list>

#include <ATen/core/Tensor.h>

namespace normext {

bool is_reduced_float(at::ScalarType t);

// The mixed-dtype case of ATen's check_mixed_data_type: every given parameter is float32 and the
// input bfloat16/half.
void check_mixed_param_dtypes(const at::Tensor& input, std::initializer_list<at::Tensor> params);

// ATen's check_mixed_data_type: parameters share the input's dtype, or the input is
// bfloat16/half and every given parameter is float32.
void check_param_dtypes(const at::Tensor& input, std::initializer_list<at::Tensor> params);

// Every defined tensor is on the input's device ("Tensor on device ... is not on the expected
// device ...!").
void check_same_device(const at::Tensor& input, std::initializer_list<at::Tensor> tensors);

// Product of the input's dims after the first two (1 for a 2D input).
int64_t spatial_size(const at::Tensor& input);

// Whether torch keeps the input's layout channels-last: channels_last (4D) and channels_last_3d
// (5D) strides stay; any other strides are copied to contiguous NCHW.
bool keeps_channels_last(const at::Tensor& input);

} // namespace normext
