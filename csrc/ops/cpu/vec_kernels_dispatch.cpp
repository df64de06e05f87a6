// Picks the leaf-loop table for this CPU once, like ATen's DispatchStub.
#include <cstdlib>
#include <cstring>

#include "ops/cpu/vec_kernels.h"

namespace normext {
namespace cpu {
namespace {

// 0 = default, 1 = avx2, 2 = avx512; NORMEXT_CPU_CAPABILITY caps what the CPU offers.
int capability_cap() {
  const char* env = std::getenv("NORMEXT_CPU_CAPABILITY");
  if (env == nullptr) {
    return 2;
  }
  if (std::strcmp(env, "default") == 0) {
    return 0;
  }
  if (std::strcmp(env, "avx2") == 0) {
    return 1;
  }
  return 2;
}

const VecKernelTable& pick_table() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const int cap = capability_cap();
  if (cap >= 2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
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

} // namespace cpu
} // namespace normext
