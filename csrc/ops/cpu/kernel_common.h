// Helpers shared by the CPU kernels of the ops (csrc/ops/cpu/*_kernel.cpp): the storage type the
// VecKernels table is instantiated for, task-count arithmetic, the channels-last chunk size and
// optional-tensor pointers.
#pragma once

#include <algorithm>
#include <cstdint>

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "ops/cpu/vec_kernels.h"

namespace normext {

// The type VecKernels works on for a torch scalar type: c10::BFloat16 / c10::Half map to the
// torch-free bf16_t / fp16_t (same bits), float and double to themselves.
template <typename scalar_t>
struct Storage {
  using type = scalar_t;
};
template <>
struct Storage<c10::BFloat16> {
  using type = cpu::bf16_t;
};
template <>
struct Storage<c10::Half> {
  using type = cpu::fp16_t;
};

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Channels-last chunks (BatchNorm's blocks, GroupNorm's chunks) take at least this many rows, so
// the per-chunk partials (two values per channel) stay a few percent of the chunk even for wide C.
constexpr int64_t kMinChannelsLastChunkRows = 64;

inline int64_t channels_last_chunk_rows(int64_t C) {
  return std::max(kMinChannelsLastChunkRows, ceil_div(cpu::kMaxChunkElems, C));
}

// Data of an optional tensor, nullptr where it is undefined.
template <typename T>
T* data_or_null(at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}
template <typename T>
const T* const_data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

} // namespace normext
