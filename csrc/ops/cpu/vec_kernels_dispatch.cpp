// Picks the leaf-loop table for this CPU once, like ATen's DispatchStub.
#include <cstdlib>
#include <cstring>

#include "ops/cpu/vec_kernels.h"

namespace normext {
namespace cpu {
namespace {

// 0 = default, 1 = avx2, 2 = avx512, 3 = avx512_bf16; NORMEXT_CPU_CAPABILITY caps what the CPU
// offers (an unknown value caps nothing).
int capability_cap() {
  const char* env = std::getenv("NORMEXT_CPU_CAPABILITY");
  const char* names[] = {"default", "avx2", "avx512", "avx512_bf16"};
  for (int level = 0; env != nullptr && level < 4; ++level) {
    if (std::strcmp(env, names[level]) == 0) {
      return level;
    }
  }
  return 3;
}

const VecKernelTable& pick_table() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const int cap = capability_cap();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (cap >= 3 && avx512 && __builtin_cpu_supports("avx512bf16")) {
    return avx512_bf16::vec_kernel_table();
  }
  if (cap >= 2 && avx512) {
    return avx512::vec_kernel_table();
  }
  if (cap >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return avx2::vec_kernel_table();
  }
#endif
  return scalar::vec_kernel_table();
}

} // namespace

const VecKernelTable& vec_kernels() {
  static const VecKernelTable& table = pick_table();
  return table;
}

bool stream_output(int64_t bytes) {
  static const int64_t min_bytes = [] {
    const char* env = std::getenv("NORMEXT_STREAM_MIN_BYTES");
    return env != nullptr && *env != '\0' ? std::strtoll(env, nullptr, 10) : int64_t{16} << 20;
  }();
  return min_bytes >= 0 && bytes >= min_bytes;
}

} // namespace cpu
} // namespace normext
