// NVTX ranges named after each op, so nsys timelines show normext ops by name on CPU and CUDA.
// NVTX3 is header-only and costs a branch when no profiler is attached. Builds without the
// header (NORMEXT_WITH_NVTX undefined) compile the ranges away. torch.profiler needs nothing here:
// the dispatcher already records every normext:: op by name.
#pragma once

#if defined(NORMEXT_WITH_NVTX)
#include <nvtx3/nvToolsExt.h>

namespace normext {
class NvtxRange {
 public:
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};
} // namespace normext

#define NORMEXT_RANGE_CONCAT_(a, b) a##b
#define NORMEXT_RANGE_CONCAT(a, b) NORMEXT_RANGE_CONCAT_(a, b)
#define NORMEXT_RANGE(name) \
  ::normext::NvtxRange NORMEXT_RANGE_CONCAT(normext_nvtx_range_, __LINE__)(name)
#else
#define NORMEXT_RANGE(name) static_cast<void>(0)
#endif
