// Minimal CPU emulation of the CUDA execution model: a block of blockDim.x threads, run as
// cooperative fibers on one OS thread, blocks one after another; __syncthreads is a barrier of
// the block's fibers, warp shuffles go through per-warp slots and a warp barrier. The runnable
// fiber of highest priority (emu::g_sched_order) runs until it reaches a barrier, so a missing
// barrier shows as a result that depends on that order. A barrier that can never complete (some
// threads of the block or warp returned, or wait elsewhere) aborts with a message. Not emulated:
// the memory model (every write is seen at once), timing, occupancy, launch limits, shared
// memory size, and the lanes of a warp run apart except at shuffles (as independent thread
// scheduling allows).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <vector>
#include <memory>
#include <cassert>
#include <cstdio>
#include <cstdlib>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
extern dim3 threadIdx;  // of the running fiber (set by the scheduler at every switch)
extern dim3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;

typedef void* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

// 16-byte stores (cuda_common.cuh's store_pack) as plain assignments.
struct alignas(16) uint4 { unsigned x, y, z, w; };
template <class T> inline void __stwb(T* p, T v) { *p = v; }

// The 16-byte loads and stores of cuda_common.cuh (load_pack, store_pack) fault on a GPU when
// misaligned; the CPU would not notice.
#define NORMEXT_CHECK_ALIGNED16(p)                                                           \
  do {                                                                                       \
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {                                          \
      std::fprintf(stderr, "misaligned 16-byte access at %p (%s:%d)\n", (const void*)(p), \
                   __FILE__, __LINE__);                                                      \
      std::abort();                                                                          \
    }                                                                                        \
  } while (0)

using std::isfinite;  // NB: device code calls it unqualified
// NB: the kernels use these to keep a product from being fused into a later add; plain C++
// without -ffp-contract (no FMA in the default x86-64 target) rounds each product anyway.
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }

struct __half { uint16_t x; };
struct __nv_bfloat16 { uint16_t x; };
inline float __half2float(__half h) { _Float16 f; std::memcpy(&f, &h.x, 2); return (float)f; }
inline __half __float2half_rn(float v) { _Float16 f = (_Float16)v; __half h; std::memcpy(&h.x, &f, 2); return h; }
inline float __bfloat162float(__nv_bfloat16 b) { uint32_t u = uint32_t(b.x) << 16; float f; std::memcpy(&f, &u, 4); return f; }
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  uint32_t u; std::memcpy(&u, &v, 4);
  __nv_bfloat16 b;
  if (std::isnan(v)) { b.x = 0x7fc0; return b; }
  u += 0x7fff + ((u >> 16) & 1);
  b.x = uint16_t(u >> 16);
  return b;
}

namespace emu {
// The priority of a block's fibers: 0 by thread index (thread 0 first), 1 reversed, 2 a fixed
// pseudo-random permutation per block. Env EMU_SCHED=0|1|2 sets it too.
extern int g_sched_order;
// Grid cap: the kernels are grid-stride loops, so at most this many blocks are emulated (the
// kernels see the capped gridDim). Env EMU_MAX_BLOCKS sets it too.
extern unsigned g_max_blocks;
extern uint64_t* g_slots;      // one per thread of the block: the shuffle exchange
void block_sync();             // __syncthreads of the running fiber
void warp_sync(int warp);      // every lane of `warp` arrives

template <class T>
inline T exchange(T v, int src) {
  static_assert(sizeof(T) <= 8, "");
  const int warp = threadIdx.x / 32;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  g_slots[threadIdx.x] = bits;
  warp_sync(warp);
  T out;
  uint64_t got = g_slots[warp * 32 + src];
  std::memcpy(&out, &got, sizeof(T));
  warp_sync(warp);
  return out;
}
}  // namespace emu

inline void __syncthreads() { emu::block_sync(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_sync(threadIdx.x / 32); }
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int o) {
  if (mask != 0xffffffffu) { std::fprintf(stderr, "partial mask\n"); std::abort(); }
  return emu::exchange(v, (threadIdx.x % 32) ^ o);
}
template <class T> inline T __shfl_down_sync(unsigned mask, T v, int o) {
  if (mask != 0xffffffffu) { std::fprintf(stderr, "partial mask\n"); std::abort(); }
  const int lane = threadIdx.x % 32;
  T got = emu::exchange(v, lane + o < 32 ? lane + o : lane);
  return got;
}
template <class T> inline T __shfl_sync(unsigned mask, T v, int src) {
  if (mask != 0xffffffffu) { std::fprintf(stderr, "partial mask\n"); std::abort(); }
  return emu::exchange(v, src);
}

namespace emu {
struct Cfg { dim3 grid; int block; };
inline Cfg cfg(dim3 g, int b, int, cudaStream_t) { return {g, b}; }
template <class F> struct Pending { F f; Cfg c; };
template <class F> Pending<std::decay_t<F>> operator|(F&& f, Cfg c) { return {f, c}; }
template <class... A> std::tuple<std::decay_t<A>...> args(A&&... a) { return std::tuple<std::decay_t<A>...>(a...); }

void run_grid(dim3 grid, int block, const std::function<void()>& body);

template <class F, class... A>
void operator|(Pending<F> p, std::tuple<A...> a) {
  run_grid(p.c.grid, p.c.block, [&]() { std::apply(p.f, a); });
}
}  // namespace emu
using emu::operator|;
