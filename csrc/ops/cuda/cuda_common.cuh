// Device helpers shared by the CUDA kernels (csrc/ops/cuda/*_kernel.cu): conversions between the
// storage types and their accumulation type, 16-byte packs, Welford steps, launch-error returns
// and the dtype dispatch of the launchers. Raw CUDA only: no torch headers (as the .cu files).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/welford.h"

namespace normext {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// ---------------------------------------------------------------------------------------------
// Storage <-> accumulation type (acc_type<T>: float for float / half / bfloat16, double for double)

__device__ __forceinline__ float to_acc(float v) {
  return v;
}
__device__ __forceinline__ double to_acc(double v) {
  return v;
}
__device__ __forceinline__ float to_acc(__half v) {
  return __half2float(v);
}
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_acc(acc_type<T> v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ double from_acc<double>(double v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// An optional per-channel parameter: p[i], or `fallback` where p is null.
template <typename A>
__device__ __forceinline__ A param_or(const A* p, int64_t i, A fallback) {
  return p != nullptr ? p[i] : fallback;
}

// ---------------------------------------------------------------------------------------------
// 16-byte vectors: 4 float, 2 double, 8 half / bfloat16.

template <typename T>
constexpr int kVec = 16 / sizeof(T);

template <typename T>
struct alignas(16) Pack {
  T v[kVec<T>];
};

// A GPU faults on a misaligned 16-byte access; the CPU emulator of tests/cuda_emu would not, so
// it defines this to check each pack's address.
#ifndef NORMEXT_CHECK_ALIGNED16
#define NORMEXT_CHECK_ALIGNED16(p)
#endif

template <typename T>
__device__ __forceinline__ Pack<T> load_pack(const T* p) {
  NORMEXT_CHECK_ALIGNED16(p);
  return *reinterpret_cast<const Pack<T>*>(p);
}

// NB: one explicit 16-byte store: assigned as a Pack<T>, a pack whose values were computed one by
// one came out as one store per element (seen in the row-norm kernels' PTX).
template <typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& v) {
  NORMEXT_CHECK_ALIGNED16(p);
  uint4 u;
  memcpy(&u, &v, sizeof(u));
  __stwb(reinterpret_cast<uint4*>(p), u);
}

// True when p + e is 16-byte aligned (computed on the address: p may be null).
template <typename A>
__device__ __forceinline__ bool aligned16_at(const A* p, int64_t e) {
  return (reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(e) * sizeof(A)) % 16 == 0;
}

// V per-channel parameters from channel e (V a whole number of 16-byte vectors of A): 16-byte
// loads where `vec` (p + e 16-byte aligned), else one at a time; `fallback` where p is null.
template <int V, typename A>
__device__ __forceinline__ void load_params(const A* p, int64_t e, bool vec, A fallback,
                                            A (&out)[V]) {
  constexpr int VA = kVec<A>;
  static_assert(V % VA == 0, "V values are whole 16-byte vectors of A");
  if (p == nullptr) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      out[k] = fallback;
    }
  } else if (vec) {
#pragma unroll
    for (int q = 0; q < V / VA; ++q) {
      const Pack<A> pk = load_pack(p + e + q * VA);
#pragma unroll
      for (int k = 0; k < VA; ++k) {
        out[q * VA + k] = pk.v[k];
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      out[k] = p[e + k];
    }
  }
}

// W values at element i, widened to acc_t (W == kVec<T>: one 16-byte load, aligned by the caller;
// W == 1: one element); store_acc the reverse, rounded to T.
template <int W, typename T>
__device__ __forceinline__ void load_acc(const T* p, int64_t i, acc_type<T> (&out)[W]) {
  if constexpr (W == 1) {
    out[0] = to_acc(p[i]);
  } else {
    const Pack<T> pk = load_pack(p + i);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      out[k] = to_acc(pk.v[k]);
    }
  }
}

template <int W, typename T>
__device__ __forceinline__ void store_acc(T* p, int64_t i, const acc_type<T> (&in)[W]) {
  if constexpr (W == 1) {
    p[i] = from_acc<T>(in[0]);
  } else {
    Pack<T> pk;
#pragma unroll
    for (int k = 0; k < W; ++k) {
      pk.v[k] = from_acc<T>(in[k]);
    }
    store_pack(p + i, pk);
  }
}

// True when two arrays read or written at the same offsets are both 16-byte aligned at the same
// elements, so one head/vector/tail split serves both.
__device__ __forceinline__ bool same_alignment(const void* a, const void* b) {
  return ((reinterpret_cast<uintptr_t>(a) ^ reinterpret_cast<uintptr_t>(b)) & 15u) == 0;
}

// ---------------------------------------------------------------------------------------------
// Welford

template <typename acc_t>
__device__ __forceinline__ WelfordStat<acc_t> welford_add(WelfordStat<acc_t> s, acc_t v) {
  s.count += 1;
  const acc_t delta = v - s.mean;
  s.mean += delta / static_cast<acc_t>(s.count);
  s.m2 += delta * (v - s.mean);
  return s;
}

__device__ __forceinline__ WelfordStat<double> widen(WelfordStat<float> s) {
  return {static_cast<double>(s.mean), static_cast<double>(s.m2), s.count};
}
__device__ __forceinline__ WelfordStat<double> widen(WelfordStat<double> s) {
  return s;
}

__device__ __forceinline__ WelfordStat<double> shfl_down_stat(WelfordStat<double> s, int offset) {
  return {__shfl_down_sync(kFullMask, s.mean, offset), __shfl_down_sync(kFullMask, s.m2, offset),
          static_cast<int64_t>(
              __shfl_down_sync(kFullMask, static_cast<long long>(s.count), offset))};
}

// Lane 0 ends with the merge of the warp's 32 statistics, in a fixed tree order (the whole warp
// calls it).
__device__ __forceinline__ WelfordStat<double> warp_merge_stat(WelfordStat<double> s) {
  for (int offset = 16; offset > 0; offset /= 2) {
    s = welford_merge(s, shfl_down_stat(s, offset));
  }
  return s;
}

// Lane 0 ends with the warp's sums of a and of b, in a fixed tree order.
template <typename A>
__device__ __forceinline__ void warp_sum_pair(A& a, A& b) {
  for (int offset = 16; offset > 0; offset /= 2) {
    a += __shfl_down_sync(kFullMask, a, offset);
    b += __shfl_down_sync(kFullMask, b, offset);
  }
}

// ---------------------------------------------------------------------------------------------
// Launchers

// Returns the launch error, if any, from the enclosing launcher.
#define NORMEXT_RETURN_IF_LAUNCH_FAILED()        \
  do {                                           \
    const cudaError_t err = cudaGetLastError();  \
    if (err != cudaSuccess) {                    \
      return err;                                \
    }                                            \
  } while (0)

inline dim3 grid_of(int64_t blocks) {
  return dim3(static_cast<unsigned>(blocks));
}

template <typename T>
struct TypeTag {
  using type = T;
};

// f(TypeTag<T>{}) for the storage type T named by `kind` (an enum class with Float, Double, Half
// and BFloat16); cudaErrorInvalidValue for any other value.
template <typename Kind, typename F>
cudaError_t dispatch_scalar(Kind kind, F&& f) {
  switch (kind) {
    case Kind::Float:
      return f(TypeTag<float>{});
    case Kind::Double:
      return f(TypeTag<double>{});
    case Kind::Half:
      return f(TypeTag<__half>{});
    case Kind::BFloat16:
      return f(TypeTag<__nv_bfloat16>{});
  }
  return cudaErrorInvalidValue;
}

} // namespace cuda
} // namespace normext
