// Body of the leaf loops, included once per instruction set by vec_kernels_{avx512,avx2,scalar}.cpp
// with NORMEXT_VEC_NS (namespace) and NORMEXT_VEC_ISA (0 portable, 1 AVX2, 2 AVX-512, 3 AVX-512 with
// the BF16 extension) defined.
//
// NB: written with GCC/Clang vector extensions (a 64-byte vector of float or double): the compiler
// lowers each operation to one zmm, two ymm or four xmm instructions, so one source serves every
// ISA and the arithmetic (hence every bit of the result) is the same on all of them, except for FMA
// contraction. bf16/fp16 conversions use intrinsics where the ISA has them (GCC does not
// vectorize _Float16 casts) and branch-free integer code otherwise.
#pragma once

#include <cmath>
#include <cstring>
#include <type_traits>

#include "common/welford.h"
#include "ops/cpu/vec_kernels.h"

#if NORMEXT_VEC_ISA >= 1
#include <immintrin.h>
#endif

namespace normext {
namespace cpu {
namespace NORMEXT_VEC_NS {
namespace {

// NB: the vector width follows the ISA (64, 32, 16 bytes): GCC lowers a vector wider than the
// machine's registers through the stack, which is slower than scalar code.
constexpr int kVecBytes = NORMEXT_VEC_ISA >= 2 ? 64 : NORMEXT_VEC_ISA == 1 ? 32 : 16;
constexpr int kFloatLanes = kVecBytes / 4;
typedef float vfloat __attribute__((vector_size(kVecBytes)));
typedef double vdouble __attribute__((vector_size(kVecBytes)));
typedef int32_t vint32 __attribute__((vector_size(kVecBytes)));
typedef int64_t vint64 __attribute__((vector_size(kVecBytes)));
typedef uint16_t vu16 __attribute__((vector_size(kVecBytes / 2)));
typedef uint32_t vu32 __attribute__((vector_size(kVecBytes)));

typedef float vfloat_half __attribute__((vector_size(kVecBytes / 2)));

// NB: helpers that take or return vectors are always inlined. GCC emits no vzeroupper in a function
// with vector arguments (its caller's registers are live), so a leaf that ended in a tail call to
// one (store_n for the tail of a row, say) returned to the driver code, compiled for baseline
// x86-64, with the upper halves of the vector registers dirty, and every SSE instruction there
// then waited on them (measured: GroupNorm forward 8x256x25x38 bf16 0.97 -> 1.56 ms, its driver
// loop from 2% to 15% of the time). tests/test_cpu_capabilities.py checks the built library.
#define NORMEXT_VEC_INLINE inline __attribute__((always_inline))

// The two halves of an fp32 vector, widened to double (exactly).
inline void widen_halves(vfloat v, vdouble* lo, vdouble* hi) {
  vfloat_half a, b;
  std::memcpy(&a, &v, sizeof(a));
  std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof(a), sizeof(b));
  *lo = __builtin_convertvector(a, vdouble);
  *hi = __builtin_convertvector(b, vdouble);
}

template <typename acc_t>
struct Vec;
template <>
struct Vec<float> {
  using type = vfloat;
  using index_type = vint32;
  static constexpr int size = kFloatLanes;
};
template <>
struct Vec<double> {
  using type = vdouble;
  using index_type = vint64;
  static constexpr int size = kFloatLanes / 2;
};

inline vfloat as_float(vu32 bits) {
  vfloat v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}
inline vu32 as_bits(vfloat v) {
  vu32 bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits;
}

// Load / store Vec<acc_type<T>>::size elements of T as one accumulator vector.
// float and double are their own accumulation type: moved as they are.
template <typename T>
struct Io {
  using V = typename Vec<T>::type;
  static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static void store(T* p, V v) { std::memcpy(p, &v, sizeof(v)); }
};

template <>
struct Io<bf16_t> {
  static vfloat load(const bf16_t* p) {
#if NORMEXT_VEC_ISA >= 2
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return (vfloat)_mm512_slli_epi32(wide, 16);
#elif NORMEXT_VEC_ISA == 1
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return (vfloat)_mm256_slli_epi32(wide, 16);
#else
    vu16 h;
    std::memcpy(&h, p, sizeof(h));
    const vu32 bits = __builtin_convertvector(h, vu32) << 16;
    vfloat v;
    std::memcpy(&v, &bits, sizeof(v));
    return v;
#endif
  }
#if NORMEXT_VEC_ISA >= 2
  static __m256i round_bits(vfloat v) {
    const __m512i bits = _mm512_castps_si512((__m512)v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    const __mmask16 nan = _mm512_cmp_ps_mask((__m512)v, (__m512)v, _CMP_UNORD_Q);
    rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(bits, _mm512_set1_epi32(0x400000)));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
  }
  [[gnu::noinline, gnu::cold]] static void store_rounded_bits(bf16_t* p, vfloat v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), round_bits(v));
  }
#endif
#if NORMEXT_VEC_ISA >= 3
  // Lanes the native conversion would get wrong: vcvtneps2bf16 reads subnormals as zero.
  static __mmask16 subnormal_lanes(vfloat v) { return _mm512_fpclass_ps_mask((__m512)v, 0x20); }
#endif
  // Round to nearest even, as c10::BFloat16 does; NaN stays a (quiet) NaN; subnormals are kept.
  NORMEXT_VEC_INLINE static void store(bf16_t* p, vfloat v) {
#if NORMEXT_VEC_ISA >= 3
    // NB: vcvtneps2bf16 reads subnormal inputs as zero (whatever MXCSR says), so a vector holding
    // one (a rare event: |v| < 1.2e-38) takes the integer rounding instead, out of line: written
    // as a select, the compiler computed both roundings for every vector (5 more instructions
    // in loops of 20-30).
    const __mmask16 subnormal = subnormal_lanes(v);
    if (__builtin_expect(!_kortestz_mask16_u8(subnormal, subnormal), 0)) {  // one kortestw
      store_rounded_bits(p, v);
      return;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh((__m512)v));
#elif NORMEXT_VEC_ISA == 2
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), round_bits(v));
#elif NORMEXT_VEC_ISA == 1
    const __m256i bits = _mm256_castps_si256((__m256)v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    const __m256i rounded =
        _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps((__m256)v, (__m256)v, _CMP_UNORD_Q));
    const __m256i out = _mm256_srli_epi32(
        _mm256_blendv_epi8(rounded, _mm256_or_si256(bits, _mm256_set1_epi32(0x400000)), nan), 16);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm_packus_epi32(_mm256_castsi256_si128(out), _mm256_extracti128_si256(out, 1)));
#else
    vu32 bits;
    std::memcpy(&bits, &v, sizeof(bits));
    const vu32 rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    const vu32 nan = (bits >> 16) | 0x40u;
    const vu32 out = ((bits & 0x7fffffffu) > 0x7f800000u) ? nan : rounded;
    const vu16 h = __builtin_convertvector(out, vu16);
    std::memcpy(p, &h, sizeof(h));
#endif
  }
};

template <>
struct Io<fp16_t> {
  static vfloat load(const fp16_t* p) {
#if NORMEXT_VEC_ISA >= 2
    return (vfloat)_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif NORMEXT_VEC_ISA == 1
    return (vfloat)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
    // NB: branch-free bit manipulation (c10's fp16_ieee_to_fp32_value), so it vectorizes; the
    // baseline ISA has no conversion instruction and _Float16 casts become library calls.
    vu16 h;
    std::memcpy(&h, p, sizeof(h));
    const vu32 w = __builtin_convertvector(h, vu32) << 16;
    const vu32 sign = w & 0x80000000u;
    const vu32 two_w = w + w;
    const vfloat normalized = as_float((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const vfloat denormalized = as_float((two_w >> 17) | (126u << 23)) - 0.5f;
    const vu32 magnitude = two_w < (1u << 27) ? as_bits(denormalized) : as_bits(normalized);
    return as_float(sign | magnitude);
#endif
  }
  static void store(fp16_t* p, vfloat v) {
#if NORMEXT_VEC_ISA >= 2
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif NORMEXT_VEC_ISA == 1
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
    // c10's fp16_ieee_from_fp32_value, vectorized: round to nearest even, inf and NaN kept.
    const vu32 w = as_bits(v);
    const vu32 shl1_w = w + w;
    const vu32 sign = w & 0x80000000u;
    vu32 bias = shl1_w & 0xFF000000u;
    bias = bias < 0x71000000u ? vu32{} + 0x71000000u : bias;
    vfloat base = as_float(as_bits(v) & 0x7FFFFFFFu) * 0x1.0p+112f * 0x1.0p-110f;
    base = as_float((bias >> 1) + 0x07800000u) + base;
    const vu32 bits = as_bits(base);
    const vu32 nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
    const vu32 out = (sign >> 16) | (shl1_w > 0xFF000000u ? vu32{} + 0x7E00u : nonsign);
    const vu16 h = __builtin_convertvector(out, vu16);
    std::memcpy(p, &h, sizeof(h));
#endif
  }
};

template <typename T>
using vacc = typename Vec<acc_type<T>>::type;
template <typename T>
constexpr int kLanes = Vec<acc_type<T>>::size;

// Partial vectors (the last n < kLanes elements; the other lanes load as zero) go through a small
// buffer. NB: on AVX-512 its first n elements move with one masked load or store (lanes past n are
// never touched, so they cannot fault); a variable-length memcpy costs a call and a failed store
// forward per tail, which dominated small planes (BatchNorm 16x1024x14x14 bf16: 196-value planes,
// three tails each).
template <typename T>
NORMEXT_VEC_INLINE vacc<T> load_n(const T* p, int64_t n) {
  alignas(64) T buf[kLanes<T>];
#if NORMEXT_VEC_ISA >= 2
  constexpr int kBytes = static_cast<int>(sizeof(T)) * kLanes<T>;
  const unsigned mask = (1u << n) - 1;
  if constexpr (kBytes == 64 && sizeof(T) == 4) {
    _mm512_store_si512(buf, _mm512_maskz_loadu_epi32(static_cast<__mmask16>(mask), p));
    return Io<T>::load(buf);
  } else if constexpr (kBytes == 64 && sizeof(T) == 8) {
    _mm512_store_si512(buf, _mm512_maskz_loadu_epi64(static_cast<__mmask8>(mask), p));
    return Io<T>::load(buf);
  } else if constexpr (kBytes == 32 && sizeof(T) == 2) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(buf),
                       _mm256_maskz_loadu_epi16(static_cast<__mmask16>(mask), p));
    return Io<T>::load(buf);
  }
#endif
  std::memset(buf, 0, sizeof(buf));
  std::memcpy(buf, p, n * sizeof(T));
  return Io<T>::load(buf);
}

template <typename T>
NORMEXT_VEC_INLINE void store_n(T* p, vacc<T> v, int64_t n) {
  alignas(64) T buf[kLanes<T>];
  Io<T>::store(buf, v);
#if NORMEXT_VEC_ISA >= 2
  constexpr int kBytes = static_cast<int>(sizeof(T)) * kLanes<T>;
  const unsigned mask = (1u << n) - 1;
  if constexpr (kBytes == 64 && sizeof(T) == 4) {
    _mm512_mask_storeu_epi32(p, static_cast<__mmask16>(mask), _mm512_load_si512(buf));
    return;
  } else if constexpr (kBytes == 64 && sizeof(T) == 8) {
    _mm512_mask_storeu_epi64(p, static_cast<__mmask8>(mask), _mm512_load_si512(buf));
    return;
  } else if constexpr (kBytes == 32 && sizeof(T) == 2) {
    _mm256_mask_storeu_epi16(p, static_cast<__mmask16>(mask),
                             _mm256_load_si256(reinterpret_cast<const __m256i*>(buf)));
    return;
  }
#endif
  std::memcpy(p, buf, n * sizeof(T));
}

// ---- Streaming (non-temporal) output stores ---------------------------------------------------
// NB: a plain store first reads the line it writes into cache (read for ownership), so writing an
// output that will not be read back from cache moves each line twice; a streaming store writes it
// once, around the cache (measured: GroupNorm forward 1x256x256x256 fp32 5.5 -> 4.0 ms, copy
// 3.5 ms). Ops take the streaming table (vec_kernels_for<T>(true)) only for tensors larger than
// the cache, where the line would be evicted before its next use anyway. The leaves that write an
// output take kStream; partial vectors and unaligned addresses use plain stores.
template <typename T>
NORMEXT_VEC_INLINE void stream_vec(T* p, vacc<T> v) {
  constexpr int kBytes = static_cast<int>(sizeof(T)) * kLanes<T>;
  alignas(64) T buf[kLanes<T>];
  Io<T>::store(buf, v);
#if NORMEXT_VEC_ISA >= 2
  if constexpr (kBytes == 64) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p),
                        _mm512_load_si512(reinterpret_cast<const __m512i*>(buf)));
    return;
  }
#endif
#if NORMEXT_VEC_ISA >= 1
  if constexpr (kBytes == 32) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p),
                        _mm256_load_si256(reinterpret_cast<const __m256i*>(buf)));
    return;
  } else if constexpr (kBytes == 16) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(p),
                     _mm_load_si128(reinterpret_cast<const __m128i*>(buf)));
    return;
  }
#endif
  std::memcpy(p, buf, sizeof(buf));
}

template <bool kStream, typename T>
NORMEXT_VEC_INLINE void store_out(T* p, vacc<T> v) {
  constexpr uintptr_t kBytes = sizeof(T) * kLanes<T>;
  if constexpr (kStream && NORMEXT_VEC_ISA >= 1) {
    if (reinterpret_cast<uintptr_t>(p) % kBytes == 0) {
      stream_vec(p, v);
      return;
    }
  }
  Io<T>::store(p, v);
}

// Two consecutive vectors at p. bf16 with the native conversion rounds both with one instruction
// (vcvtne2ps2bf16) into one 64-byte store, and checks both for subnormals at once: 15% off a bf16
// normalize loop in L1, where two vcvtneps2bf16 and two checks were most of its vector work.
template <bool kStream, typename T>
NORMEXT_VEC_INLINE void store_out_pair(T* p, vacc<T> v0, vacc<T> v1) {
#if NORMEXT_VEC_ISA >= 3
  // (a streaming store wants 64-byte alignment; otherwise each half streams on its own below)
  if constexpr (std::is_same<T, bf16_t>::value) {
    if (!kStream || reinterpret_cast<uintptr_t>(p) % 64 == 0) {
      using Bf16 = Io<bf16_t>;  // see Io<bf16_t>::store
      // NB: kortestw tests both masks in one instruction (an OR of them in integer registers
      // took two kmovw and an or)
      if (__builtin_expect(!_kortestz_mask16_u8(Bf16::subnormal_lanes(v0), Bf16::subnormal_lanes(v1)),
                           0)) {
        Bf16::store_rounded_bits(p, v0);
        Bf16::store_rounded_bits(p + kLanes<T>, v1);
        return;
      }
      const __m512i bits = (__m512i)_mm512_cvtne2ps_pbh((__m512)v1, (__m512)v0);  // v0 low half
      if (kStream) {
        _mm512_stream_si512(reinterpret_cast<__m512i*>(p), bits);
      } else {
        _mm512_storeu_si512(p, bits);
      }
      return;
    }
  }
#endif
  store_out<kStream>(p, v0);
  store_out<kStream>(p + kLanes<T>, v1);
}

// Streaming stores are weakly ordered: a leaf that may have issued them fences before it returns,
// so its output is visible to whichever thread reads it next.
template <bool kStream>
struct StreamFence {
  ~StreamFence() {
#if NORMEXT_VEC_ISA >= 1
    if constexpr (kStream) {
      _mm_sfence();
    }
#endif
  }
};

// Lanes >= n set to zero (for centered sums over a partial vector).
template <typename A>
NORMEXT_VEC_INLINE typename Vec<A>::type mask_first(typename Vec<A>::type v, int64_t n) {
  using index_t = typename Vec<A>::index_type;
  using lane_t = typename std::remove_reference<decltype(index_t{}[0])>::type;
  index_t lane;
  for (int i = 0; i < Vec<A>::size; ++i) {
    lane[i] = i;
  }
  return lane < static_cast<lane_t>(n) ? v : typename Vec<A>::type{};
}

// Fixed pairwise order over the lanes.
template <typename V>
NORMEXT_VEC_INLINE auto reduce_lanes(V v) -> typename std::remove_reference<decltype(v[0])>::type {
  constexpr int n = sizeof(V) / sizeof(v[0]);
  for (int width = n / 2; width > 0; width /= 2) {
    for (int i = 0; i < width; ++i) {
      v[i] += v[i + width];
    }
  }
  return v[0];
}

template <typename T>
inline vacc<T> splat(acc_type<T> s) {
  return vacc<T>{} + s;
}

// ---------------------------------------------------------------------------------------------
// Contiguous rows (NCHW and friends)

// First pass of the fp32 / fp64 chunk statistics: the sum of n values.
template <typename T>
acc_type<T> sum_values(const T* x, int64_t n) {
  constexpr int L = kLanes<T>;
  // NB: four accumulators hide the add latency; their order is fixed, so the sum is deterministic.
  vacc<T> s0{}, s1{}, s2{}, s3{};
  int64_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {
    s0 += Io<T>::load(x + i);
    s1 += Io<T>::load(x + i + L);
    s2 += Io<T>::load(x + i + 2 * L);
    s3 += Io<T>::load(x + i + 3 * L);
  }
  for (; i + L <= n; i += L) {
    s0 += Io<T>::load(x + i);
  }
  if (i < n) {
    s1 += load_n(x + i, n - i);
  }
  return reduce_lanes((s0 + s1) + (s2 + s3));
}

// Prefetches the kBytes bytes from p on (whole lines; a prefetch never faults, so p may run past
// the end of the tensor).
template <int kBytes>
inline void prefetch_bytes(const void* p) {
  for (int b = 0; b < kBytes; b += 64) {
    __builtin_prefetch(static_cast<const char*>(p) + b);
  }
}

// Sums of the deviations d of values from a center m (r) and of their squares (q), in a fixed
// lane order: the accumulators of centered_stats and shifted_stats. finish: mean = m + r / n (in
// double), M2 = q - r^2 / n.
template <typename V>
struct CenteredSums {
  V q0{}, q1{}, q2{}, q3{}, r0{}, r1{};
  NORMEXT_VEC_INLINE void add4(V v0, V v1, V v2, V v3, V m) {
    const V d0 = v0 - m, d1 = v1 - m, d2 = v2 - m, d3 = v3 - m;
    q0 += d0 * d0;
    q1 += d1 * d1;
    q2 += d2 * d2;
    q3 += d3 * d3;
    r0 += d0 + d1;
    r1 += d2 + d3;
  }
  NORMEXT_VEC_INLINE void add1(V v, V m) {
    const V d = v - m;
    q0 += d * d;
    r0 += d;
  }
  // A partial vector: d of the lanes >= n set to zero.
  NORMEXT_VEC_INLINE void add_first(V v, V m, int64_t n) {
    using A = typename std::remove_reference<decltype(v[0])>::type;
    const V d = mask_first<A>(v - m, n);
    q1 += d * d;
    r1 += d;
  }
  template <typename A>
  void finish(A m, int64_t n, double* mean_out, A* m2_out) const {
    const A residual = reduce_lanes(r0 + r1);
    *mean_out = static_cast<double>(m) + static_cast<double>(residual) / static_cast<double>(n);
    *m2_out = reduce_lanes((q0 + q1) + (q2 + q3)) - residual * residual / static_cast<A>(n);
  }
};

// Second pass over n values already in L1: squared deviations from `mean`, plus their plain sum r,
// which corrects the rounding of the first pass (the "corrected two-pass" algorithm of Chan, Golub
// and LeVeque): mean += r / n (in double, see VecKernels::chunk_stats), M2 -= r^2 / n. `ahead`
// is where the caller reads next: it is prefetched meanwhile (prefetches never fault), since
// this pass leaves memory idle otherwise.
template <int kAheadBytesPerStep, typename A>
void centered_stats(const A* x, int64_t n, A mean, const char* ahead, double* mean_out,
                    A* m2_out) {
  constexpr int L = Vec<A>::size;
  using V = typename Vec<A>::type;
  const V vmean = V{} + mean;
  CenteredSums<V> sums;
  int64_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {
    // NB: each step of this loop prefetches as many bytes of the next chunk as the step covers of
    // this one in the caller's dtype, so a full pass prefetches exactly the next chunk.
    prefetch_bytes<kAheadBytesPerStep>(ahead + i / (4 * L) * kAheadBytesPerStep);
    sums.add4(Io<A>::load(x + i), Io<A>::load(x + i + L), Io<A>::load(x + i + 2 * L),
              Io<A>::load(x + i + 3 * L), vmean);
  }
  for (; i + L <= n; i += L) {
    sums.add1(Io<A>::load(x + i), vmean);
  }
  if (i < n) {
    sums.add_first(load_n(x + i, n - i), vmean, n - i);
  }
  sums.finish(mean, n, mean_out, m2_out);
}

// Values whose mean is the shift of shifted_stats.
constexpr int64_t kShiftElems = 64;

// Mean and M2 of `planes` runs of `len` bf16 / fp16 values, `stride` elements apart (n = planes *
// len values), in one pass, in fp32: the deviations d = x - K from a shift K, the mean of the
// first min(n, kShiftElems) values (in plane order), summed (r) and squared (q); mean = K + r / n,
// M2 = q - r^2 / n.
// The subtraction cancels n (mean - K)^2 of q, which is at most n / kShiftElems times M2 (the
// values that average K deviate from the mean by kShiftElems (K - mean)^2 alone): M2 keeps a
// relative error of at most ~64 fp32 roundings for a 4096-value chunk whatever the data (1e4 +
// randn included) and ~1 for typical data, far below the bf16 / fp16 rounding of the output.
// One pass instead of two (the second over an fp32 copy in L1) measured 1.1-1.4x faster bf16
// LayerNorm and GroupNorm forward. With kAhead, each step prefetches as many bytes from `ahead`
// as it reads (as in sum_squares).
template <bool kAhead, typename T>
void shifted_stats(const T* x, int64_t planes, int64_t len, int64_t stride, const char* ahead,
                   double* mean_out, acc_type<T>* m2_out) {
  using A = acc_type<T>;
  constexpr int L = kLanes<T>;
  const int64_t n = planes * len;
  vacc<T> s{};
  int64_t k = 0, i = 0;  // k: values summed into the shift, in plane order
  for (int64_t p = 0; p < planes && k < kShiftElems; ++p) {
    const int64_t m = std::min(len, kShiftElems - k);
    for (i = 0; i + L <= m; i += L) {
      s += Io<T>::load(x + p * stride + i);
    }
    if (i < m) {
      s += load_n(x + p * stride + i, m - i);
    }
    k += m;
  }
  const A center = reduce_lanes(s) / static_cast<A>(k);
  const vacc<T> shift = splat<T>(center);
  CenteredSums<vacc<T>> sums;
  for (int64_t p = 0; p < planes; ++p) {
    const T* xp = x + p * stride;
    for (i = 0; i + 4 * L <= len; i += 4 * L) {
      if constexpr (kAhead) {
        prefetch_bytes<4 * L * sizeof(T)>(ahead);
        ahead += 4 * L * sizeof(T);
      }
#if NORMEXT_VEC_ISA >= 2
      if constexpr (std::is_same<T, bf16_t>::value) {
        // NB: 2 * L values per load, widened as their even positions and their odd ones (a
        // shift and a mask: half the work of two widening loads); they are only summed, so the
        // lane order is free (but fixed).
        const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
        const __m512i v01 = _mm512_loadu_si512(xp + i), v23 = _mm512_loadu_si512(xp + i + 2 * L);
        sums.add4((vfloat)_mm512_slli_epi32(v01, 16), (vfloat)_mm512_and_si512(v01, hi),
                  (vfloat)_mm512_slli_epi32(v23, 16), (vfloat)_mm512_and_si512(v23, hi), shift);
        continue;
      }
#endif
      sums.add4(Io<T>::load(xp + i), Io<T>::load(xp + i + L), Io<T>::load(xp + i + 2 * L),
                Io<T>::load(xp + i + 3 * L), shift);
    }
    for (; i + L <= len; i += L) {
      sums.add1(Io<T>::load(xp + i), shift);
    }
    if (i < len) {
      sums.add_first(load_n(xp + i, len - i), shift, len - i);
    }
  }
  sums.finish(center, n, mean_out, m2_out);
}

// Mean and M2 of n <= kMaxChunkElems contiguous values: fp32 / fp64 in two passes over a chunk
// that sits in L1 (the corrected two-pass algorithm), bf16 / fp16 in one (shifted_stats).
template <typename T>
void chunk_stats(const T* x, int64_t n, double* mean_out, acc_type<T>* m2_out) {
  using acc_t = acc_type<T>;
  // NB: prefetching never faults, so reading past the end of the tensor here is harmless.
  const char* ahead = reinterpret_cast<const char*>(x + n);  // the next chunk of a group
  if constexpr (std::is_same<T, acc_t>::value) {
    const acc_t mean = sum_values(x, n) / static_cast<acc_t>(n);
    centered_stats<4 * kLanes<T> * sizeof(T)>(x, n, mean, ahead, mean_out, m2_out);
  } else {
    shifted_stats<true>(x, 1, n, n, ahead, mean_out, m2_out);
  }
}

// Mean and M2 of `planes` runs of `len` values, `stride` elements apart (planes * len <=
// kMaxChunkElems), as one chunk: bf16 / fp16 in one pass (shifted_stats); fp32 / fp64 in two, the
// first summing the runs and gathering them into an L1 buffer, the second chunk_stats' over it.
template <typename T>
void planes_stats(const T* x, int64_t planes, int64_t len, int64_t stride, double* mean_out,
                  acc_type<T>* m2_out) {
  using A = acc_type<T>;
  if (planes == 1) {
    chunk_stats<T>(x, len, mean_out, m2_out);
    return;
  }
  if constexpr (!std::is_same<T, A>::value) {
    shifted_stats<false>(x, planes, len, stride, nullptr, mean_out, m2_out);
    return;
  }
  constexpr int L = kLanes<T>;
  alignas(64) A buf[kMaxChunkElems];
  vacc<T> s0{}, s1{};
  A* out = buf;
  for (int64_t p = 0; p < planes; ++p, out += len) {
    const T* xp = x + p * stride;
    int64_t i = 0;
    for (; i + 2 * L <= len; i += 2 * L) {
      const vacc<T> v0 = Io<T>::load(xp + i), v1 = Io<T>::load(xp + i + L);
      s0 += v0;
      s1 += v1;
      Io<A>::store(out + i, v0);
      Io<A>::store(out + i + L, v1);
    }
    for (; i < len; i += L) {
      const int64_t m = std::min<int64_t>(L, len - i);
      const vacc<T> v = load_n(xp + i, m);  // padded lanes are zero
      s0 += v;
      store_n(out + i, v, m);
    }
  }
  const int64_t n = planes * len;
  const A mean = reduce_lanes(s0 + s1) / static_cast<A>(n);
  centered_stats<0>(buf, n, mean, nullptr, mean_out, m2_out);
}

// ds0 + ds1 += dy * (x - mean), db0 + db1 += dy over n contiguous values, in a fixed lane order.
template <typename T>
inline void accumulate_grad_sums(const T* dy, const T* x, int64_t n, vacc<T> vmean, vacc<T>& ds0,
                                 vacc<T>& ds1, vacc<T>& db0, vacc<T>& db1) {
  constexpr int L = kLanes<T>;
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    const vacc<T> g0 = Io<T>::load(dy + i), g1 = Io<T>::load(dy + i + L);
    ds0 += g0 * (Io<T>::load(x + i) - vmean);
    ds1 += g1 * (Io<T>::load(x + i + L) - vmean);
    db0 += g0;
    db1 += g1;
  }
  for (; i + L <= n; i += L) {
    const vacc<T> g = Io<T>::load(dy + i);
    ds0 += g * (Io<T>::load(x + i) - vmean);
    db0 += g;
  }
  if (i < n) {
    // padded dy lanes are zero, so the padded x lanes contribute nothing
    const vacc<T> g = load_n(dy + i, n - i);
    ds1 += g * (load_n(x + i, n - i) - vmean);
    db1 += g;
  }
}

template <typename T>
void grad_sums(const T* dy, const T* x, int64_t n, acc_type<T> mean, acc_type<T>* ds_out,
               acc_type<T>* db_out) {
  vacc<T> ds0{}, ds1{}, db0{}, db1{};
  accumulate_grad_sums(dy, x, n, splat<T>(mean), ds0, ds1, db0, db1);
  *ds_out = reduce_lanes(ds0 + ds1);
  *db_out = reduce_lanes(db0 + db1);
}

// ds = sum dy * (x - mean), db = sum dy over `planes` runs of `len` values, `stride` elements
// apart. fp32 input: sums in double, as ATen's CPU batch_norm_backward takes them (the sums span
// N x HxW values; long fp32 lane sums would cost dweight a few ulps).
// bf16 / fp16 input: pieces of kGradSumPiece values (whole runs when shorter, so that a 7x7
// plane does not pay a flush of its own) are summed in fp32 lanes, then added lane by lane to
// double accumulators, summed pairwise at the end.
template <typename T>
void grad_sums_planes(const T* dy, const T* x, int64_t planes, int64_t len, int64_t stride,
                      acc_type<T> mean, double* ds_out, double* db_out) {
  constexpr int L = kLanes<T>;
  if constexpr (std::is_same<T, float>::value) {
    // NB: four vectors of products are added pairwise in fp32 (two roundings on sums of four
    // terms), and only that sum is widened and added in double: most of the precision of
    // double products at a third of the widening.
    const vfloat vmean = splat<T>(mean);
    vdouble ds_lo{}, ds_hi{}, db_lo{}, db_hi{};
    auto add_wide = [](vfloat v, vdouble& lo, vdouble& hi) {
      vdouble a, b;
      widen_halves(v, &a, &b);
      lo += a;
      hi += b;
    };
    for (int64_t p = 0; p < planes; ++p) {
      const float* g = dy + p * stride;
      const float* xp = x + p * stride;
      int64_t i = 0;
      for (; i + 4 * L <= len; i += 4 * L) {
        const vfloat g0 = Io<float>::load(g + i), g1 = Io<float>::load(g + i + L),
                     g2 = Io<float>::load(g + i + 2 * L), g3 = Io<float>::load(g + i + 3 * L);
        const vfloat s = (g0 * (Io<float>::load(xp + i) - vmean) +
                          g1 * (Io<float>::load(xp + i + L) - vmean)) +
                         (g2 * (Io<float>::load(xp + i + 2 * L) - vmean) +
                          g3 * (Io<float>::load(xp + i + 3 * L) - vmean));
        add_wide(s, ds_lo, ds_hi);
        add_wide((g0 + g1) + (g2 + g3), db_lo, db_hi);
      }
      if (i < len) {
        // The last (up to four) vectors of the run, summed in fp32 and widened once.
        vfloat s0{}, s1{}, b0{}, b1{};
        accumulate_grad_sums(g + i, xp + i, len - i, vmean, s0, s1, b0, b1);
        add_wide(s0 + s1, ds_lo, ds_hi);
        add_wide(b0 + b1, db_lo, db_hi);
      }
    }
    *ds_out = reduce_lanes(ds_lo + ds_hi);
    *db_out = reduce_lanes(db_lo + db_hi);
  } else {
    const vacc<T> vmean = splat<T>(mean);
    vacc<T> ds0{}, ds1{}, db0{}, db1{};
    double ds_lanes[L] = {}, db_lanes[L] = {};
    int64_t pending = 0;
    auto flush = [&] {
      const vacc<T> ds = ds0 + ds1, db = db0 + db1;
      for (int l = 0; l < L; ++l) {
        ds_lanes[l] += static_cast<double>(ds[l]);
        db_lanes[l] += static_cast<double>(db[l]);
      }
      ds0 = ds1 = db0 = db1 = vacc<T>{};
      pending = 0;
    };
    for (int64_t p = 0; p < planes; ++p) {
      for (int64_t start = 0; start < len; start += kGradSumPiece) {
        const int64_t n = std::min(kGradSumPiece, len - start);
        accumulate_grad_sums(dy + p * stride + start, x + p * stride + start, n, vmean, ds0, ds1,
                             db0, db1);
        pending += n;
        if (pending >= kGradSumPiece) {
          flush();
        }
      }
    }
    if (pending > 0) {
      flush();
    }
    for (int width = L / 2; width > 0; width /= 2) {
      for (int l = 0; l < width; ++l) {
        ds_lanes[l] += ds_lanes[l + width];
        db_lanes[l] += db_lanes[l + width];
      }
    }
    *ds_out = ds_lanes[0];
    *db_out = db_lanes[0];
  }
}

// dx = a * dy + b * ((x - mean) * rstd) + c over n values; dy stored as T, or as acc_t
// (grad_input_from_g). The caller holds the StreamFence.
template <typename T, typename G, bool kStream>
inline void grad_input_run(const G* dy, const T* x, T* dx, int64_t n, vacc<T> va, vacc<T> vmean,
                           vacc<T> vrstd, vacc<T> vb, vacc<T> vc) {
  constexpr int L = kLanes<T>;
  auto dx_at = [&](int64_t at) {
    return va * Io<G>::load(dy + at) + vb * ((Io<T>::load(x + at) - vmean) * vrstd) + vc;
  };
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    store_out_pair<kStream>(dx + i, dx_at(i), dx_at(i + L));
  }
  for (; i + L <= n; i += L) {
    store_out<kStream>(dx + i, dx_at(i));
  }
  if (i < n) {
    const vacc<T> xhat = (load_n(x + i, n - i) - vmean) * vrstd;
    store_n(dx + i, va * load_n(dy + i, n - i) + vb * xhat + vc, n - i);
  }
}

template <typename T, typename G, bool kStream>
void grad_input_impl(const G* dy, const T* x, T* dx, int64_t n, acc_type<T> a, acc_type<T> mean,
                     acc_type<T> rstd, acc_type<T> b, acc_type<T> c) {
  const StreamFence<kStream> fence;
  grad_input_run<T, G, kStream>(dy, x, dx, n, splat<T>(a), splat<T>(mean), splat<T>(rstd),
                                splat<T>(b), splat<T>(c));
}

template <typename T, bool kStream>
void grad_input(const T* dy, const T* x, T* dx, int64_t n, acc_type<T> a, acc_type<T> mean,
                acc_type<T> rstd, acc_type<T> b, acc_type<T> c) {
  grad_input_impl<T, T, kStream>(dy, x, dx, n, a, mean, rstd, b, c);
}

template <typename T, bool kStream>
void grad_input_planes(const T* dy, const T* x, T* dx, int64_t planes, int64_t len, int64_t stride,
                       acc_type<T> a, acc_type<T> mean, acc_type<T> rstd, acc_type<T> b,
                       acc_type<T> c) {
  const StreamFence<kStream> fence;
  for (int64_t p = 0; p < planes; ++p) {
    grad_input_run<T, T, kStream>(dy + p * stride, x + p * stride, dx + p * stride, len,
                                  splat<T>(a), splat<T>(mean), splat<T>(rstd), splat<T>(b),
                                  splat<T>(c));
  }
}

// ---------------------------------------------------------------------------------------------
// Channels-last rows (NHWC, NDHWC): vectorized over channels, accumulated down the rows.

// NB: every channels-last loop walks the rows in memory order (rows outer, channels inner), so a
// chunk streams from memory sequentially and the prefetchers keep up; the per-channel
// accumulators and coefficients are small arrays that stay in L1.

// acc[c] += f(c-block) over the C channels of one row, for full and partial vectors.
template <typename T, typename F>
inline void for_channel_blocks(int64_t C, F&& f) {
  constexpr int L = kLanes<T>;
  int64_t c = 0;
  for (; c + L <= C; c += L) {
    f(c, std::true_type{});
  }
  if (c < C) {
    f(c, std::false_type{});
  }
}

template <typename T, typename Full>
inline vacc<T> load_x(const T* p, int64_t c, int64_t C, Full) {
  if constexpr (Full::value) {
    return Io<T>::load(p + c);
  } else {
    return load_n(p + c, C - c);
  }
}

template <bool kStream = false, typename T, typename Full>
NORMEXT_VEC_INLINE void store_x(T* p, vacc<T> v, int64_t c, int64_t C, Full) {
  if constexpr (Full::value) {
    store_out<kStream>(p + c, v);
  } else {
    store_n(p + c, v, C - c);
  }
}

// In-L1 accumulator arrays are padded by the caller to a multiple of the vector width.
template <typename A>
inline typename Vec<A>::type load_acc(const A* p, int64_t c) {
  typename Vec<A>::type v;
  std::memcpy(&v, p + c, sizeof(v));
  return v;
}

template <typename A>
NORMEXT_VEC_INLINE void store_acc(A* p, typename Vec<A>::type v, int64_t c) {
  std::memcpy(p + c, &v, sizeof(v));
}

template <typename T>
void chunk_stats_cl(const T* x, int64_t rows, int64_t C, int64_t D, acc_type<T>* scratch,
                    double* mean_g, acc_type<T>* m2_g) {
  using acc_t = acc_type<T>;
  const int64_t Cp = padded_channels(C);
  acc_t* col = scratch;                 // per-channel sums, then sums of squared deviations
  acc_t* col_residual = scratch + Cp;   // per-channel sums of deviations
  acc_t* mean_c = scratch + 2 * Cp;     // group mean broadcast to its channels
  const int64_t G = C / D;
  const acc_t count = static_cast<acc_t>(rows * D);
  std::memset(col, 0, 2 * Cp * sizeof(acc_t));
  // NB: four rows per update of the in-L1 accumulators: a load-add-store chain through memory per
  // row would make small C latency bound.
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const T* xr = x + r * C;
    for_channel_blocks<T>(C, [&](int64_t c, auto full) {
      const vacc<T> s = (load_x(xr, c, C, full) + load_x(xr + C, c, C, full)) +
                        (load_x(xr + 2 * C, c, C, full) + load_x(xr + 3 * C, c, C, full));
      store_acc(col, load_acc(col, c) + s, c);
    });
  }
  for (; r < rows; ++r) {
    const T* xr = x + r * C;
    for_channel_blocks<T>(C, [&](int64_t c, auto full) {
      store_acc(col, load_acc(col, c) + load_x(xr, c, C, full), c);
    });
  }
  // NB: with one channel per group (BatchNorm, InstanceNorm) the per-group steps here and at the
  // end run on whole vectors of channels: the same divisions, so the same results, for a fraction
  // of the scalar loop's time (which, one division per channel, cost as much as the 64 rows of a
  // C = 1024 chunk).
  // The first pass's group means, broadcast to their channels in mean_c.
  int64_t g = 0;
  if (D == 1) {
    for (; g + kLanes<T> <= G; g += kLanes<T>) {
      store_acc(mean_c, load_acc(col, g) / count, g);
    }
  }
  for (; g < G; ++g) {
    acc_t sum = 0;
    for (int64_t d = 0; d < D; ++d) {
      sum += col[g * D + d];
    }
    for (int64_t d = 0; d < D; ++d) {
      mean_c[g * D + d] = sum / count;
    }
  }
  for (int64_t c = C; c < Cp; ++c) {
    mean_c[c] = 0;
  }
  // Second pass, corrected as in centered_stats. Padded lanes load x = 0 and mean 0: they add 0.
  // It runs from cache, so it prefetches the next chunk (the rows that follow) as it goes.
  std::memset(col, 0, Cp * sizeof(acc_t));
  const int64_t row_bytes = C * static_cast<int64_t>(sizeof(T));
  const char* ahead = reinterpret_cast<const char*>(x + rows * C);
  for (r = 0; r + 4 <= rows; r += 4) {
    const T* xr = x + r * C;
    const char* next = ahead + r * row_bytes;  // the next chunk's rows r .. r + 3
    for_channel_blocks<T>(C, [&](int64_t c, auto full) {
      // NB: one prefetch per row and vector, spread over the loop: a burst of a whole row group
      // (up to 256 lines for wide C) overflows the fill buffers and is mostly dropped.
      for (int i = 0; i < 4; ++i) {
        __builtin_prefetch(next + i * row_bytes + c * static_cast<int64_t>(sizeof(T)));
      }
      const vacc<T> m = load_acc(mean_c, c);
      const vacc<T> d0 = load_x(xr, c, C, full) - m, d1 = load_x(xr + C, c, C, full) - m,
                    d2 = load_x(xr + 2 * C, c, C, full) - m,
                    d3 = load_x(xr + 3 * C, c, C, full) - m;
      store_acc(col, load_acc(col, c) + ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)), c);
      store_acc(col_residual, load_acc(col_residual, c) + ((d0 + d1) + (d2 + d3)), c);
    });
  }
  for (; r < rows; ++r) {
    const T* xr = x + r * C;
    for_channel_blocks<T>(C, [&](int64_t c, auto full) {
      const vacc<T> d = load_x(xr, c, C, full) - load_acc(mean_c, c);
      store_acc(col, load_acc(col, c) + d * d, c);
      store_acc(col_residual, load_acc(col_residual, c) + d, c);
    });
  }
  // The corrected means in double (see VecKernels::chunk_stats); with D == 1 the M2 on whole
  // vectors, and the means after them, lane by lane (the compiler vectorizes the widening).
  g = 0;
  if (D == 1) {
    for (; g + kLanes<T> <= G; g += kLanes<T>) {
      const vacc<T> res = load_acc(col_residual, g);
      store_acc(m2_g, load_acc(col, g) - res * res / count, g);
      store_acc(col_residual, res / count, g);
    }
    for (int64_t i = 0; i < g; ++i) {
      mean_g[i] = static_cast<double>(mean_c[i]) + static_cast<double>(col_residual[i]);
    }
  }
  for (; g < G; ++g) {
    acc_t q = 0, res = 0;
    for (int64_t d = 0; d < D; ++d) {
      q += col[g * D + d];
      res += col_residual[g * D + d];
    }
    mean_g[g] = static_cast<double>(mean_c[g * D]) + static_cast<double>(res / count);
    m2_g[g] = q - res * res / count;
  }
}

template <typename T>
void grad_sums_cl(const T* dy, const T* x, int64_t rows, int64_t C, const acc_type<T>* mean_c,
                  acc_type<T>* ds_c, acc_type<T>* db_c) {
  std::memset(ds_c, 0, padded_channels(C) * sizeof(acc_type<T>));
  std::memset(db_c, 0, padded_channels(C) * sizeof(acc_type<T>));
  // Padded dy lanes are zero, so the padded x lanes contribute nothing. Two rows per update of
  // the in-L1 accumulators, as in chunk_stats_cl.
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2) {
    const T* dyr = dy + r * C;
    const T* xr = x + r * C;
    for_channel_blocks<T>(C, [&](int64_t c, auto full) {
      const vacc<T> m = load_acc(mean_c, c);
      const vacc<T> g0 = load_x(dyr, c, C, full), g1 = load_x(dyr + C, c, C, full);
      const vacc<T> ds = g0 * (load_x(xr, c, C, full) - m) + g1 * (load_x(xr + C, c, C, full) - m);
      store_acc(ds_c, load_acc(ds_c, c) + ds, c);
      store_acc(db_c, load_acc(db_c, c) + (g0 + g1), c);
    });
  }
  for (; r < rows; ++r) {
    const T* dyr = dy + r * C;
    const T* xr = x + r * C;
    for_channel_blocks<T>(C, [&](int64_t c, auto full) {
      const vacc<T> g = load_x(dyr, c, C, full);
      store_acc(ds_c, load_acc(ds_c, c) + g * (load_x(xr, c, C, full) - load_acc(mean_c, c)), c);
      store_acc(db_c, load_acc(db_c, c) + g, c);
    });
  }
}

template <typename T, bool kStream>
void grad_input_cl(const T* dy, const T* x, T* dx, int64_t rows, int64_t C,
                   const acc_type<T>* a_c, const acc_type<T>* mean_c, const acc_type<T>* rstd_c,
                   const acc_type<T>* b_c, const acc_type<T>* c_c) {
  const StreamFence<kStream> fence;
  for (int64_t r = 0; r < rows; ++r) {
    const T* dyr = dy + r * C;
    const T* xr = x + r * C;
    T* dxr = dx + r * C;
    for_channel_blocks<T>(C, [&](int64_t c, auto full) {
      const vacc<T> xhat = (load_x(xr, c, C, full) - load_acc(mean_c, c)) * load_acc(rstd_c, c);
      const vacc<T> v =
          load_acc(a_c, c) * load_x(dyr, c, C, full) + load_acc(b_c, c) * xhat + load_acc(c_c, c);
      store_x<kStream>(dxr, v, c, C, full);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Row norms (LayerNorm, RMSNorm): rows of n contiguous values with per-element parameters.

// Per-element parameter vectors (acc_t arrays, not padded: the tail goes through load_n).
template <typename A>
inline typename Vec<A>::type load_param(const A* p, int64_t i) {
  return Io<A>::load(p + i);
}

// NB: sum_squares and row_grad_sums are the row norms' first pass over a row (or chunk), the one
// that reads memory; the caller's next call reads the n values that follow. Each step prefetches
// as many bytes of those as it reads, so the next row streams in while this one is summed and then
// normalized (or its dx written) from L1, instead of memory idling during that second pass
// (measured, 2 threads: RMSNorm forward 8% faster over the benchmark's rows, 18% at 8x512x768
// bf16; LayerNorm / RMSNorm forward+backward 6%). LayerNorm's forward prefetches in centered_stats.
template <typename T>
acc_type<T> sum_squares(const T* x, int64_t n) {
  constexpr int L = kLanes<T>;
  vacc<T> s0{}, s1{}, s2{}, s3{};
  int64_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {
    prefetch_bytes<4 * L * sizeof(T)>(x + n + i);
    const vacc<T> v0 = Io<T>::load(x + i), v1 = Io<T>::load(x + i + L),
                  v2 = Io<T>::load(x + i + 2 * L), v3 = Io<T>::load(x + i + 3 * L);
    s0 += v0 * v0;
    s1 += v1 * v1;
    s2 += v2 * v2;
    s3 += v3 * v3;
  }
  for (; i + L <= n; i += L) {
    const vacc<T> v = Io<T>::load(x + i);
    s0 += v * v;
  }
  if (i < n) {
    const vacc<T> v = load_n(x + i, n - i);  // zero-padded lanes add 0
    s1 += v * v;
  }
  return reduce_lanes((s0 + s1) + (s2 + s3));
}

template <bool kGamma, bool kBeta, bool kStream, typename T>
void normalize_row_impl(const T* x, T* y, int64_t n, acc_type<T> mean, acc_type<T> rstd,
                        const acc_type<T>* gamma, const acc_type<T>* beta) {
  using A = acc_type<T>;
  constexpr int L = kLanes<T>;
  const vacc<T> vmean = splat<T>(mean), vrstd = splat<T>(rstd);
  auto apply = [&](vacc<T> v, vacc<T> g, vacc<T> b) {
    v = (v - vmean) * vrstd;
    if constexpr (kGamma) {
      v = v * g;
    }
    if constexpr (kBeta) {
      v = v + b;
    }
    return v;
  };
  auto y_at = [&](int64_t at) {
    const vacc<T> g = kGamma ? load_param(gamma, at) : vacc<T>{};
    const vacc<T> b = kBeta ? load_param(beta, at) : vacc<T>{};
    return apply(Io<T>::load(x + at), g, b);
  };
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    store_out_pair<kStream>(y + i, y_at(i), y_at(i + L));
  }
  for (; i + L <= n; i += L) {
    store_out<kStream>(y + i, y_at(i));
  }
  if (i < n) {
    const vacc<T> g = kGamma ? load_n<A>(gamma + i, n - i) : vacc<T>{};
    const vacc<T> b = kBeta ? load_n<A>(beta + i, n - i) : vacc<T>{};
    store_n(y + i, apply(load_n(x + i, n - i), g, b), n - i);
  }
}

template <typename T, bool kStream>
void normalize_row(const T* x, T* y, int64_t n, acc_type<T> mean, acc_type<T> rstd,
                   const acc_type<T>* gamma, const acc_type<T>* beta) {
  const StreamFence<kStream> fence;
  if (gamma != nullptr && beta != nullptr) {
    normalize_row_impl<true, true, kStream>(x, y, n, mean, rstd, gamma, beta);
  } else if (gamma != nullptr) {
    normalize_row_impl<true, false, kStream>(x, y, n, mean, rstd, gamma, beta);
  } else if (beta != nullptr) {
    normalize_row_impl<false, true, kStream>(x, y, n, mean, rstd, gamma, beta);
  } else {
    normalize_row_impl<false, false, kStream>(x, y, n, mean, rstd, gamma, beta);
  }
}

// NB: gamma is never null here: the caller passes a row of ones for a norm without weight (it
// stays in L1), which halves the number of instantiations.
template <typename T>
void row_grad_sums(const T* dy, const T* x, const acc_type<T>* gamma, int64_t n, acc_type<T> mean,
                   acc_type<T>* ds_out, acc_type<T>* db_out) {
  using A = acc_type<T>;
  constexpr int L = kLanes<T>;
  const vacc<T> vmean = splat<T>(mean);
  vacc<T> ds0{}, ds1{}, db0{}, db1{};
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    prefetch_bytes<2 * L * sizeof(T)>(dy + n + i);  // the next row (see sum_squares)
    prefetch_bytes<2 * L * sizeof(T)>(x + n + i);
    const vacc<T> g0 = Io<T>::load(dy + i) * load_param(gamma, i);
    const vacc<T> g1 = Io<T>::load(dy + i + L) * load_param(gamma, i + L);
    ds0 += g0 * (Io<T>::load(x + i) - vmean);
    ds1 += g1 * (Io<T>::load(x + i + L) - vmean);
    db0 += g0;
    db1 += g1;
  }
  for (; i + L <= n; i += L) {
    const vacc<T> g = Io<T>::load(dy + i) * load_param(gamma, i);
    ds0 += g * (Io<T>::load(x + i) - vmean);
    db0 += g;
  }
  if (i < n) {
    // padded dy lanes are zero, so the padded x lanes contribute nothing
    const vacc<T> g = load_n(dy + i, n - i) * load_n<A>(gamma + i, n - i);
    ds1 += g * (load_n(x + i, n - i) - vmean);
    db1 += g;
  }
  *ds_out = reduce_lanes(ds0 + ds1);
  *db_out = reduce_lanes(db0 + db1);
}

template <bool kDx, bool kAcc, bool kStream, typename T>
void row_grad_input_impl(const T* dy, const T* x, const acc_type<T>* gamma, T* dx, int64_t rows,
                         int64_t stride, int64_t n, const acc_type<T>* mean,
                         const acc_type<T>* rstd, const acc_type<T>* b, const acc_type<T>* c,
                         acc_type<T>* dgamma_acc, acc_type<T>* dbeta_acc) {
  using A = acc_type<T>;
  constexpr int L = kLanes<T>;
  vacc<T> vmean[kMaxGradRows], vrstd[kMaxGradRows], vb[kMaxGradRows], vc[kMaxGradRows];
  for (int64_t r = 0; r < rows; ++r) {
    vmean[r] = splat<T>(mean[r]);
    vrstd[r] = splat<T>(rstd[r]);
    vb[r] = splat<T>(b[r]);
    vc[r] = splat<T>(c[r]);
  }
  // One vector of every row: full vectors, or the zero-padded tail of m values.
  auto step = [&](int64_t i, int64_t m) {
    const bool full = m == L;
    const vacc<T> gv = full ? load_param(gamma, i) : load_n<A>(gamma + i, m);
    vacc<T> dg{}, db{};
    if constexpr (kAcc) {
      dg = full ? Io<A>::load(dgamma_acc + i) : load_n<A>(dgamma_acc + i, m);
      db = full ? Io<A>::load(dbeta_acc + i) : load_n<A>(dbeta_acc + i, m);
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t at = r * stride + i;
      const vacc<T> g = full ? Io<T>::load(dy + at) : load_n(dy + at, m);
      const vacc<T> xhat = ((full ? Io<T>::load(x + at) : load_n(x + at, m)) - vmean[r]) * vrstd[r];
      if constexpr (kDx) {
        const vacc<T> v = vrstd[r] * gv * g + vb[r] * xhat + vc[r];
        if (full) {
          store_out<kStream>(dx + at, v);
        } else {
          store_n(dx + at, v, m);
        }
      }
      if constexpr (kAcc) {
        dg += g * xhat;
        db += g;
      }
    }
    if constexpr (kAcc) {
      if (full) {
        Io<A>::store(dgamma_acc + i, dg);
        Io<A>::store(dbeta_acc + i, db);
      } else {
        store_n(dgamma_acc + i, dg, m);
        store_n(dbeta_acc + i, db, m);
      }
    }
  };
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    step(i, L);
  }
  if (i < n) {
    step(i, n - i);
  }
}

template <typename T, bool kStream>
void row_grad_input(const T* dy, const T* x, const acc_type<T>* gamma, T* dx, int64_t rows,
                    int64_t stride, int64_t n, const acc_type<T>* mean, const acc_type<T>* rstd,
                    const acc_type<T>* b, const acc_type<T>* c, acc_type<T>* dgamma_acc,
                    acc_type<T>* dbeta_acc) {
  const StreamFence<kStream> fence;
  const bool acc = dgamma_acc != nullptr;
  if (dx != nullptr && acc) {
    row_grad_input_impl<true, true, kStream>(dy, x, gamma, dx, rows, stride, n, mean, rstd, b, c,
                                    dgamma_acc, dbeta_acc);
  } else if (dx != nullptr) {
    row_grad_input_impl<true, false, kStream>(dy, x, gamma, dx, rows, stride, n, mean, rstd, b, c,
                                     dgamma_acc, dbeta_acc);
  } else if (acc) {
    row_grad_input_impl<false, true, kStream>(dy, x, gamma, dx, rows, stride, n, mean, rstd, b, c,
                                     dgamma_acc, dbeta_acc);
  }
}

// =============================================================================================
// DyT and fused GroupNorm activations (dyt_kernel.cpp, group_norm_kernel.cpp)
//
// fp32 lanes get vectorized transcendentals accurate to about 1 ulp (measured against libm in
// double by tests/test_dyt.py and tests/test_group_norm_fused.py); fp64 lanes call libm per lane
// (double inputs are for checking, not for speed).

inline vfloat vabs(vfloat v) {
  return as_float(as_bits(v) & 0x7fffffffu);
}
inline vfloat vcopysign(vfloat magnitude, vfloat sign) {
  return as_float((as_bits(magnitude) & 0x7fffffffu) | (as_bits(sign) & 0x80000000u));
}

// exp(y) for fp32 lanes: y = k ln2 + r with |r| <= ln2 / 2 (Cody-Waite split of ln2, exact
// products), exp(r) by its degree-7 Taylor polynomial (truncation below 1e-8), then 2^k applied as
// two factors so k in [-150, 128] needs no special case: overflow gives inf and underflow 0 or a
// subnormal through ordinary rounding. NaN stays NaN.
// kBf16: for results rounded to bf16, a degree-3 minimax polynomial on [-ln2/2, ln2/2] (1.0e-4
// relative, 2^-13) in place of degree 7; its constant term is 1, so exp(0) stays exactly 1 (SiLU
// of a tiny z is then exactly z / 2, ties to even included).
template <bool kBf16 = false>
inline vfloat vexp(vfloat y) {
#if NORMEXT_VEC_ISA >= 2
  // NB: AVX-512 rounds and scales by 2^k in one instruction each (vrndscaleps, vscalefps, which
  // also turns k = 128 into inf and k < -126 into subnormals or 0); min/max return their second
  // operand when one is NaN, so NaN passes through the clamp and the whole computation.
  const __m512 yc = _mm512_min_ps(_mm512_set1_ps(89.0f),
                                  _mm512_max_ps(_mm512_set1_ps(-104.0f), (__m512)y));
  const vfloat kf = (vfloat)_mm512_roundscale_ps(
      _mm512_mul_ps(yc, _mm512_set1_ps(1.44269504088896341f)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const vfloat r = ((vfloat)yc - kf * 0.693359375f) - kf * -2.12194440e-4f;
#else
  vfloat yc = y > 89.0f ? vfloat{} + 89.0f : y;
  yc = yc < -104.0f ? vfloat{} - 104.0f : yc;
  const vfloat magic = vfloat{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const vfloat kf = (yc * 1.44269504088896341f + magic) - magic;
  const vfloat r = (yc - kf * 0.693359375f) - kf * -2.12194440e-4f;
#endif
  vfloat p;
  if constexpr (kBf16) {
    p = ((0.16517921f * r + 0.50412995f) * r + 1.00019586f) * r + 1.0f;
  } else {
    p = vfloat{} + (1.0f / 5040.0f);
    p = p * r + (1.0f / 720.0f);
    p = p * r + (1.0f / 120.0f);
    p = p * r + (1.0f / 24.0f);
    p = p * r + (1.0f / 6.0f);
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
  }
#if NORMEXT_VEC_ISA >= 2
  return (vfloat)_mm512_scalef_ps((__m512)p, (__m512)kf);
#else
  const vint32 k = __builtin_convertvector(kf, vint32);
  const vint32 k1 = k >> 1;
  const vint32 k2 = k - k1;
  const vfloat scale1 = as_float((vu32)((k1 + 127) << 23));
  const vfloat scale2 = as_float((vu32)((k2 + 127) << 23));
  const vfloat result = (p * scale1) * scale2;
  return y != y ? y : result;
#endif
}

// tanh(x) and, when sech2 is not null, 1 - tanh(x)^2, for fp32 lanes.
// |x| < 0.625: x + x^3 P(x^2), P a degree-4 minimax fit (relative error below 1e-8).
// Otherwise 1 - q with q = 2 / (exp(2|x|) + 1). Max error over the fp32 inputs in [1e-4, 12]
// (the rest is x or 1): 0.85 ulp with FMA (AVX2; AVX-512 differs only in the reciprocal's first
// estimate), 1.10 without (torch's Sleef tanh: 0.51-0.57). 1 - tanh^2 = q (2 - q) has no
// cancellation, so the backward keeps full relative precision where tanh saturates (1 - t*t
// would lose it).
//
// NB: both branches are evaluated for every lane (DyT inputs mix them within a vector), so the
// exp branch is kept lean: |x| is clamped to 44 (exp(88) + 1 is finite; beyond it tanh is 1 and
// q (2 - q) underflows to 0 as it should), 2|x| = k ln2 + r is reduced from |x| itself with the
// Taylor coefficients of exp(2r') folded (r' = r / 2), and no NaN or underflow case remains for
// exp. On AVX-512 the division is a 14-bit reciprocal estimate refined by one Newton step taken
// against the exact e + 1 (so it also corrects the rounding of e + 1): about 2^-28 relative plus
// one rounding, more accurate than 2 / (e + 1) rounded, and far cheaper than vdivps zmm.
// NaN lanes take the polynomial branch (NaN >= 0.625 is false) and so come back NaN.
inline vfloat vtanh(vfloat x, vfloat* sech2) {
  const vfloat a = vabs(x);
  const vfloat s = a * a;
  vfloat p = vfloat{} - 0.005702601745724678f;
  p = p * s + 0.020637037232518196f;
  p = p * s - 0.053739115595817566f;
  p = p * s + 0.1333143562078476f;
  p = p * s - 0.3333328068256378f;
  const vfloat small = a + (a * s) * p;
  // exp(2 ac) = 2^k exp(2 r'), ac = k ln2 / 2 + r', |r'| <= ln2 / 4
#if NORMEXT_VEC_ISA >= 2
  const vfloat ac = (vfloat)_mm512_min_ps((__m512)a, _mm512_set1_ps(44.0f));
  const vfloat kf = (vfloat)_mm512_roundscale_ps(
      _mm512_mul_ps((__m512)ac, _mm512_set1_ps(2.88539008177792682f)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  const vfloat ac = a < 44.0f ? a : vfloat{} + 44.0f;
  const vfloat magic = vfloat{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const vfloat kf = (ac * 2.88539008177792682f + magic) - magic;
#endif
  const vfloat r = (ac - kf * 0.3466796875f) - kf * -1.06097220e-4f;
  // exp(2r) = 1 + 2r + 2r^2 + r^3 P(r), P a degree-3 minimax fit of the relative error over
  // |r| <= ln2 / 4 (4e-9 with these fp32 coefficients; degree-7 Taylor: 5e-9)
  vfloat pe = vfloat{} + 0.08872804790735245f;
  pe = pe * r + 0.267760306596756f;
  pe = pe * r + 0.6666758060455322f;
  pe = pe * r + 1.3333227634429932f;
  pe = pe * r + 2.0f;
  pe = pe * r + 2.0f;
  // The rounding error of the last step, pe_lo (exact with FMA, as 1 - pe_hi is exact for pe_hi
  // in [0.5, 2]; without, that of the add), goes into err below: rounding e was the largest error
  // of tanh (1.07 ulp with it, 0.85 without; torch's AVX2 tanh is 0.51, and DyT's is held to 2x).
  const vfloat pe_hi = pe * r + 1.0f;
  const vfloat pe_lo = pe * r + (1.0f - pe_hi);
#if NORMEXT_VEC_ISA >= 2
  const vfloat e = (vfloat)_mm512_scalef_ps((__m512)pe_hi, (__m512)kf);
  const vfloat e_lo = (vfloat)_mm512_scalef_ps((__m512)pe_lo, (__m512)kf);
#else
  // k in [0, 127]: one exact power of two
  const vint32 k = __builtin_convertvector(kf, vint32);
  const vfloat scale = as_float((vu32)((k + 127) << 23));
  const vfloat e = pe_hi * scale;
  const vfloat e_lo = pe_lo * scale;
#endif
  // e + e_lo + 1 = D + err (Fast2Sum, e >= 1: exact but for e_lo)
  const vfloat D = e + 1.0f;
  const vfloat err = (1.0f - (D - e)) + e_lo;
#if NORMEXT_VEC_ISA >= 2
  // r1 = 1 / (e + 1): Newton step from the estimate r0 with the residual h = 1 - (D + err) r0.
  const __m512 r0 = _mm512_rcp14_ps((__m512)D);
  __m512 h = _mm512_fnmadd_ps((__m512)D, r0, _mm512_set1_ps(1.0f));
  h = _mm512_fnmadd_ps((__m512)err, r0, h);
  const vfloat q = (vfloat)_mm512_fmadd_ps(r0, h, r0) * 2.0f;
#elif NORMEXT_VEC_ISA == 1
  // The same step from r0 = 1 / D rounded (the 12-bit vrcpps would need two steps).
  const __m256 r0 = (__m256)(1.0f / D);
  __m256 h = _mm256_fnmadd_ps((__m256)D, r0, _mm256_set1_ps(1.0f));
  h = _mm256_fnmadd_ps((__m256)err, r0, h);
  const vfloat q = (vfloat)_mm256_fmadd_ps(r0, h, r0) * 2.0f;
#else
  // q = 2 / D * (1 - err / D): without the correction the rounding of e + 1 costs up to 1.4 ulp
  // of tanh near |x| = 0.625.
  const vfloat q0 = 2.0f / D;
  const vfloat q = q0 - q0 * (err * (q0 * 0.5f));
#endif
  const auto is_big = a >= 0.625f;
  const vfloat t = is_big ? 1.0f - q : small;
  if (sech2 != nullptr) {
    *sech2 = is_big ? q * (2.0f - q) : 1.0f - small * small;
  }
  // NB: t >= 0 (a NaN from |x| too), so the sign of x is OR-ed in (one vpternlogd).
  return as_float(as_bits(t) | (as_bits(x) & 0x80000000u));
}

// tanh(x) for values that are then rounded to bf16 or fp16: x P(x^2) / Q(x^2), P and Q of degree 4
// in x^2 with P(0) = Q(0) = 1 (fitted for this file: Lawson's iteratively reweighted least squares
// on the linearized relative error over 22000 points of [0, 9], rounded to fp32). Max error over
// every fp32 input, measured exhaustively: 5.2 ulp, 3.1e-7 relative, about 1/6000 of a bf16 ulp
// and 1/1600 of an fp16 one. Half of vtanh's instructions, which matters because bf16 DyT is
// compute-bound: one branch, no exp.
// |x| is clamped to 8.0013943, where the fraction first rounds to 1 (the clamp keeps NaN: a
// comparison with NaN is false).
// kBf16: for lanes stored as bf16 (8 significant bits), P and Q of degree 2 fitted the same way
// on [-5, 5] (5.7e-5 relative, clamp at 5 included) and the reciprocal estimate without its
// Newton step: at most 1.2e-4 (2^-13) off, 1/30 of a bf16 rounding step, in 10 instructions
// instead of 16.
template <bool kBf16 = false>
inline vfloat vtanh_lowp(vfloat x) {
  constexpr float kClamp = kBf16 ? 5.0f : 8.00139427f;
#if NORMEXT_VEC_ISA >= 2
  // NB: vminps(a, b) is exactly a < b ? a : b (b when either is NaN): one instruction where GCC
  // emits a compare and a masked move for the select below.
  const vfloat xc = (vfloat)_mm512_max_ps(_mm512_set1_ps(-kClamp),
                                          _mm512_min_ps(_mm512_set1_ps(kClamp), (__m512)x));
#else
  vfloat xc = kClamp < x ? vfloat{} + kClamp : x;
  xc = -kClamp > xc ? vfloat{} - kClamp : xc;
#endif
  const vfloat s = xc * xc;
  vfloat p, q;
  if constexpr (kBf16) {
    p = (s * xc) * (6.7792053e-04f * s + 1.0273644e-01f) + xc;
    q = s * (1.2904040e-02f * s + 4.3584852e-01f) + 1.0f;
  } else {
    p = 1.3456451e-08f * s + 2.0685822e-05f;
    p = p * s + 3.5004225e-03f;
    p = p * s + 1.3385165e-01f;
    p = (s * xc) * p + xc;
    q = 7.8191425e-07f * s + 3.2934142e-04f;
    q = q * s + 2.5895579e-02f;
    q = q * s + 4.6718487e-01f;
    q = q * s + 1.0f;
  }
#if NORMEXT_VEC_ISA >= 2
  // p / q: a 14-bit reciprocal estimate and (but for bf16) one Newton step on the quotient
  // (vdivps zmm would cost as much as everything above)
  const __m512 r0 = _mm512_rcp14_ps((__m512)q);
  const __m512 y0 = _mm512_mul_ps((__m512)p, r0);
  if constexpr (kBf16) {
    return (vfloat)y0;
  } else {
    const __m512 e = _mm512_fnmadd_ps((__m512)q, y0, (__m512)p);
    return (vfloat)_mm512_fmadd_ps(e, r0, y0);
  }
#elif NORMEXT_VEC_ISA == 1
  return p / q;
#else
  // without FMA the fraction can round just above 1 near the clamp
  const vfloat t = p / q;
  const vfloat t1 = 1.0f < t ? vfloat{} + 1.0f : t;
  return -1.0f > t1 ? vfloat{} - 1.0f : t1;
#endif
}

// erf for fp32 lanes, about 1 ulp (N. Juffa's minimax fits: x P(x^2) below 0.9277, else
// 1 - exp(-|x| Q(|x|)) with the sign of x).
inline vfloat verf(vfloat x) {
  const vfloat t = vabs(x);
  const vfloat s = x * x;
  vfloat r = -1.72853470e-5f * t + 3.83197126e-4f;
  const vfloat u = -3.88396438e-3f * t + 2.42546219e-2f;
  r = r * s + u;
  r = r * t - 1.06777877e-1f;
  r = r * t - 6.34846687e-1f;
  r = r * t - 1.28717512e-1f;
  r = r * t - t;
  const vfloat big = vcopysign(1.0f - vexp(r), x);
  vfloat p = vfloat{} - 5.96761703e-4f;
  p = p * s + 4.99119423e-3f;
  p = p * s - 2.67681349e-2f;
  p = p * s + 1.12819925e-1f;
  p = p * s - 3.76125336e-1f;
  p = p * s + 1.28379166e-1f;
  const vfloat small = p * x + x;
  return t > 0.927734375f ? big : small;
}

inline vdouble vtanh(vdouble x, vdouble* sech2) {
  vdouble t;
  for (int i = 0; i < Vec<double>::size; ++i) {
    t[i] = std::tanh(x[i]);
    if (sech2 != nullptr) {
      const double c = std::cosh(x[i]);
      (*sech2)[i] = 1.0 / (c * c);
    }
  }
  return t;
}

// ---- Prefetching for the compute-heavy leaves (DyT, fused activations) ----------------------
// NB: a tanh or an activation is heavy enough that the out-of-order window cannot run ahead to
// the next cache lines by itself; without a software prefetch the memory time adds to the compute
// time instead of overlapping it (measured on DyT: 1.1 ns per fp32 element vs 0.5 in cache, copy
// 0.4). A prefetch of the line kPrefetchAheadBytes ahead overlaps them (a prefetch past the end of
// the buffer is harmless). Loops without such compute stream at copy speed and take none.
#ifndef NORMEXT_PREFETCH_AHEAD
#define NORMEXT_PREFETCH_AHEAD 1024
#endif
constexpr int64_t kPrefetchAheadBytes = NORMEXT_PREFETCH_AHEAD;
template <typename T>
inline T* lines_ahead(T* p) {
  return reinterpret_cast<T*>(reinterpret_cast<uintptr_t>(p) + kPrefetchAheadBytes);
}
template <typename T>
inline void prefetch_ahead(const T* p) {
  __builtin_prefetch(lines_ahead(p), 0, 3);
}
// The lines of two consecutive vectors at p (one line when they are 32 bytes each).
template <typename T>
inline void prefetch_pair(const T* p) {
  __builtin_prefetch(p, 0, 3);
  if constexpr (sizeof(T) * kLanes<T> >= 64) {
    __builtin_prefetch(p + kLanes<T>, 0, 3);
  }
}
template <typename T>
inline void prefetch_ahead_pair(const T* p) {
  prefetch_pair(lines_ahead(p));
}

// NB: the heavy leaves take two vectors per step, in one basic block, and GCC's pre-register-
// allocation scheduler (off by default on x86) interleaves their two chains: the out-of-order
// core then finds independent work next to every dependent op (~10% in cache).
#if defined(__GNUC__) && !defined(__clang__)
#define NORMEXT_HEAVY_SCHED __attribute__((optimize("schedule-insns", "sched-pressure")))
#else
#define NORMEXT_HEAVY_SCHED
#endif

// Activations of the fused GroupNorm, with torch's definitions: silu(z) = z / (1 + exp(-z)),
// gelu(z) = z / 2 (1 + erf(z / sqrt 2)), gelu_tanh(z) = z / 2 (1 + tanh(u)), u = sqrt(2 / pi)
// (z + 0.044715 z^3), computed as z sigmoid(2u) (the same function without the cancellation of
// 1 + tanh(u) for negative u), relu(z) = max(z, 0) with NaN kept. grad() is the derivative.
// Indices match the op's `activation` argument minus one (0 is no activation); kIdentity is the
// plain normalize / normalize_cl leaves, which are normalize_act / normalize_act_cl without one.
enum ActivationKind { kIdentity = -1, kSilu = 0, kGelu = 1, kGeluTanh = 2, kRelu = 3 };

constexpr float kSqrtHalf = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;
constexpr float kSqrt2OverPi = 0.79788456080286536f;
constexpr float kGeluTanhCubic = 0.044715f;

// s = sigmoid(y) = 1 / (1 + e), e = exp(-y), and 1 - s = e s without cancellation where s > 1/2.
inline vfloat sigmoid_and_complement(vfloat e, vfloat* one_minus) {
  const vfloat s = 1.0f / (1.0f + e);
  *one_minus = e < 1.0f ? e * s : 1.0f - s;
  return s;
}

template <int kAct>
struct Activation;

template <>
struct Activation<kSilu> {
  static vfloat apply(vfloat z) { return z / (1.0f + vexp(-z)); }
  // For outputs rounded to bf16: vexp<true> and, with AVX-512, the 14-bit reciprocal estimate in
  // place of the division (about 2^-13 relative in all; 14 vector instructions instead of 18 and
  // a division, which bound GN+SiLU on 2 cores).
  static vfloat apply_bf16(vfloat z) {
    const vfloat d = 1.0f + vexp<true>(-z);
#if NORMEXT_VEC_ISA >= 2
    return (vfloat)_mm512_mul_ps((__m512)z, _mm512_rcp14_ps((__m512)d));
#else
    return z / d;
#endif
  }
  static vfloat grad(vfloat z) {
    vfloat one_minus_s;
    const vfloat s = sigmoid_and_complement(vexp(-z), &one_minus_s);
    return s * (1.0f + z * one_minus_s);
  }
  // The backward's act'(z) for bf16 tensors, as apply_bf16 (about 2^-13 relative).
  static vfloat grad_bf16(vfloat z) {
    const vfloat e = vexp<true>(-z);
#if NORMEXT_VEC_ISA >= 2
    const vfloat s = (vfloat)_mm512_rcp14_ps((__m512)(1.0f + e));
#else
    const vfloat s = 1.0f / (1.0f + e);
#endif
    const vfloat one_minus_s = e < 1.0f ? e * s : 1.0f - s;
    return s * (1.0f + z * one_minus_s);
  }
  static double apply(double z) { return z / (1.0 + std::exp(-z)); }
  static double grad(double z) {
    const double s = 1.0 / (1.0 + std::exp(-z));
    return s * (1.0 + z * (1.0 - s));
  }
};

template <>
struct Activation<kGelu> {
  static vfloat apply(vfloat z) { return 0.5f * z * (1.0f + verf(z * kSqrtHalf)); }
  static vfloat grad(vfloat z) {
    return 0.5f * (1.0f + verf(z * kSqrtHalf)) + z * vexp(-0.5f * z * z) * kInvSqrt2Pi;
  }
  static double apply(double z) { return 0.5 * z * (1.0 + std::erf(z * M_SQRT1_2)); }
  static double grad(double z) {
    return 0.5 * (1.0 + std::erf(z * M_SQRT1_2)) + z * std::exp(-0.5 * z * z) * 0.5 * M_2_SQRTPI * M_SQRT1_2;
  }
};

template <>
struct Activation<kGeluTanh> {
  static vfloat apply(vfloat z) {
    const vfloat u = kSqrt2OverPi * (z + kGeluTanhCubic * z * z * z);
    return z / (1.0f + vexp(-2.0f * u));
  }
  static vfloat grad(vfloat z) {
    const vfloat z2 = z * z;
    const vfloat u = kSqrt2OverPi * (z + kGeluTanhCubic * z2 * z);
    vfloat one_minus_s;
    const vfloat s = sigmoid_and_complement(vexp(-2.0f * u), &one_minus_s);
    return s + 2.0f * z * s * one_minus_s * kSqrt2OverPi * (1.0f + 3.0f * kGeluTanhCubic * z2);
  }
  static double apply(double z) {
    const double u = 0.5 * M_2_SQRTPI * M_SQRT2 * (z + 0.044715 * z * z * z);
    return z / (1.0 + std::exp(-2.0 * u));
  }
  static double grad(double z) {
    const double k0 = 0.5 * M_2_SQRTPI * M_SQRT2;
    const double u = k0 * (z + 0.044715 * z * z * z);
    const double s = 1.0 / (1.0 + std::exp(-2.0 * u));
    return s + 2.0 * z * s * (1.0 - s) * k0 * (1.0 + 3.0 * 0.044715 * z * z);
  }
};

template <>
struct Activation<kRelu> {
  static vfloat apply(vfloat z) { return z > 0.0f ? z : (z != z ? z : vfloat{}); }
  // NB: 1 unless z <= 0, so a NaN z passes the gradient, as torch's relu backward does.
  static vfloat grad(vfloat z) { return z <= 0.0f ? vfloat{} : vfloat{} + 1.0f; }
  static double apply(double z) { return z > 0.0 ? z : (z != z ? z : 0.0); }
  static double grad(double z) { return z <= 0.0 ? 0.0 : 1.0; }
};

// fp64 lanes take the double overloads lane by lane (libm), fp32 lanes the vector ones.
template <typename F>
inline vdouble per_lane(vdouble z, F f) {
  for (int i = 0; i < Vec<double>::size; ++i) {
    z[i] = f(static_cast<double>(z[i]));
  }
  return z;
}
template <int kAct, typename T = double>
inline vdouble act_apply(vdouble z) {
  if constexpr (kAct == kIdentity) {
    return z;
  } else {
    return per_lane(z, [](double v) { return Activation<kAct>::apply(v); });
  }
}
// T: the type the result is stored as (bf16 outputs of SiLU take its cheaper form).
template <int kAct, typename T = float>
inline vfloat act_apply(vfloat z) {
  if constexpr (kAct == kIdentity) {
    return z;
  } else if constexpr (kAct == kSilu && std::is_same<T, bf16_t>::value) {
    return Activation<kAct>::apply_bf16(z);
  } else {
    return Activation<kAct>::apply(z);
  }
}
template <int kAct, typename T = double>
inline vdouble act_grad(vdouble z) {
  return per_lane(z, [](double v) { return Activation<kAct>::grad(v); });
}
// T: the type of the tensors (bf16 SiLU takes its cheaper form, as act_apply).
template <int kAct, typename T = float>
inline vfloat act_grad(vfloat z) {
  if constexpr (kAct == kSilu && std::is_same<T, bf16_t>::value) {
    return Activation<kAct>::grad_bf16(z);
  } else {
    return Activation<kAct>::grad(z);
  }
}

// ---- DyT leaves ---------------------------------------------------------------------------------

// tanh for DyT's forward: vtanh_lowp<true> when the results are stored as bf16, vtanh_lowp as fp16,
// vtanh otherwise.
template <typename T>
constexpr bool kLowpTanh = std::is_same<T, bf16_t>::value || std::is_same<T, fp16_t>::value;

template <typename T>
inline vacc<T> dyt_tanh(vacc<T> u) {
  if constexpr (std::is_same<T, bf16_t>::value) {
    return vtanh_lowp<true>(u);
  } else if constexpr (kLowpTanh<T>) {
    return vtanh_lowp(u);
  } else {
    return vtanh(u, nullptr);
  }
}

// tanh and sech^2 = 1 - tanh^2 for the backward. fp32 / fp64: vtanh's, full relative precision
// where tanh saturates. bf16 / fp16: 1 - t^2 from vtanh_lowp, absolute error below 7e-7, which
// is below half a bf16 ulp of sech^2 up to |u| = 4.4 (and of dx wherever sech^2 is not negligible
// next to its peak of 1; torch's bf16 autograd takes 1 - t^2 of a bf16-rounded t, ~1e-2 off).
template <typename T>
inline vacc<T> dyt_tanh_sech2(vacc<T> u, vacc<T>* sech2) {
  if constexpr (kLowpTanh<T>) {
    const vacc<T> t = vtanh_lowp(u);
    *sech2 = 1.0f - t * t;
    return t;
  } else {
    return vtanh(u, sech2);
  }
}

template <typename T, bool kStream>
NORMEXT_HEAVY_SCHED void dyt_forward(const T* x, T* y, int64_t n, acc_type<T> alpha, acc_type<T> w,
                                   acc_type<T> b) {
  const StreamFence<kStream> fence;
  constexpr int L = kLanes<T>;
  const vacc<T> valpha = splat<T>(alpha), vw = splat<T>(w), vb = splat<T>(b);
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    prefetch_ahead_pair<T>(x + i);
    const vacc<T> t0 = dyt_tanh<T>(Io<T>::load(x + i) * valpha);
    const vacc<T> t1 = dyt_tanh<T>(Io<T>::load(x + i + L) * valpha);
    store_out_pair<kStream>(y + i, t0 * vw + vb, t1 * vw + vb);
  }
  for (; i + L <= n; i += L) {
    store_out<kStream>(y + i, dyt_tanh<T>(Io<T>::load(x + i) * valpha) * vw + vb);
  }
  if (i < n) {
    store_n(y + i, dyt_tanh<T>(load_n(x + i, n - i) * valpha) * vw + vb, n - i);
  }
}

template <typename T, bool kStream>
NORMEXT_HEAVY_SCHED void dyt_forward_cl(const T* x, T* y, int64_t rows, int64_t width, int64_t ld,
                                      acc_type<T> alpha, const acc_type<T>* w_c,
                                      const acc_type<T>* b_c) {
  const StreamFence<kStream> fence;
  constexpr int L = kLanes<T>;
  const vacc<T> valpha = splat<T>(alpha);
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * ld;
    T* yr = y + r * ld;
    auto block = [&](int64_t c, auto full) {
      prefetch_ahead(xr + c);
      const vacc<T> t = dyt_tanh<T>(load_x(xr, c, width, full) * valpha);
      store_x<kStream>(yr, t * load_acc(w_c, c) + load_acc(b_c, c), c, width, full);
    };
    int64_t c = 0;
    for (; c + 2 * L <= width; c += 2 * L) {
      prefetch_ahead_pair<T>(xr + c);
      const vacc<T> t0 = dyt_tanh<T>(Io<T>::load(xr + c) * valpha);
      const vacc<T> t1 = dyt_tanh<T>(Io<T>::load(xr + c + L) * valpha);
      store_out_pair<kStream>(yr + c, t0 * load_acc(w_c, c) + load_acc(b_c, c),
                              t1 * load_acc(w_c, c + L) + load_acc(b_c, c + L));
    }
    for (; c + L <= width; c += L) {
      block(c, std::true_type{});
    }
    if (c < width) {
      block(c, std::false_type{});
    }
  }
}

// Padded lanes load x = dy = 0 and so add nothing to any sum.
template <typename T, bool kStream>
void dyt_backward(const T* dy, const T* x, T* dx, int64_t n, acc_type<T> alpha, acc_type<T> w,
                  acc_type<T>* sum_dyt, acc_type<T>* sum_dy, acc_type<T>* dalpha) {
  const StreamFence<kStream> fence;
  constexpr int L = kLanes<T>;
  const vacc<T> valpha = splat<T>(alpha), vw = splat<T>(w);
  vacc<T> s_dyt{}, s_dy{}, s_da{};
  // NB: the vector sums are flushed into double every kFlush steps: one fp32 accumulator per lane
  // over a whole block would cost dalpha (a sum over the entire tensor) ~1e-6 relative.
  constexpr int kFlush = 16;
  double t_dyt = 0, t_dy = 0, t_da = 0;
  int pending = 0;
  auto flush = [&] {
    t_dyt += reduce_lanes(s_dyt);
    t_dy += reduce_lanes(s_dy);
    t_da += reduce_lanes(s_da);
    s_dyt = s_dy = s_da = vacc<T>{};
    pending = 0;
  };
  auto step = [&](vacc<T> g, vacc<T> xv) {
    if (++pending == kFlush) {
      flush();
    }
    vacc<T> sech2;
    const vacc<T> t = dyt_tanh_sech2<T>(xv * valpha, &sech2);
    s_dyt += g * t;
    s_dy += g;
    const vacc<T> gu = g * vw * sech2;  // gradient at u = alpha * x
    s_da += gu * xv;
    return gu * valpha;
  };
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    prefetch_ahead(dy + i);
    prefetch_ahead(x + i);
    const vacc<T> d = step(Io<T>::load(dy + i), Io<T>::load(x + i));
    if (dx != nullptr) {
      store_out<kStream>(dx + i, d);
    }
  }
  if (i < n) {
    const vacc<T> d = step(load_n(dy + i, n - i), load_n(x + i, n - i));
    if (dx != nullptr) {
      store_n(dx + i, d, n - i);
    }
  }
  flush();
  *sum_dyt = static_cast<acc_type<T>>(t_dyt);
  *sum_dy = static_cast<acc_type<T>>(t_dy);
  *dalpha = static_cast<acc_type<T>>(t_da);
}

template <typename T, bool kStream>
NORMEXT_HEAVY_SCHED void dyt_backward_cl(const T* dy, const T* x, T* dx, int64_t rows, int64_t width,
                                       int64_t ld, acc_type<T> alpha, const acc_type<T>* w_c,
                                       acc_type<T>* sum_dyt_c, acc_type<T>* sum_dy_c,
                                       acc_type<T>* dalpha) {
  const StreamFence<kStream> fence;
  constexpr int L = kLanes<T>;
  std::memset(sum_dyt_c, 0, padded_channels(width) * sizeof(acc_type<T>));
  std::memset(sum_dy_c, 0, padded_channels(width) * sizeof(acc_type<T>));
  const vacc<T> valpha = splat<T>(alpha);
  vacc<T> s_da{};
  double t_da = 0;  // flushed into double every row, as in dyt_backward
  for (int64_t r = 0; r < rows; ++r) {
    if (r > 0) {
      t_da += reduce_lanes(s_da);
      s_da = vacc<T>{};
    }
    const T* dyr = dy + r * ld;
    const T* xr = x + r * ld;
    // gradient at u = alpha * x of the block at c; the sums in channel order
    auto grad_u = [&](vacc<T> g, vacc<T> xv, int64_t c) {
      vacc<T> sech2;
      const vacc<T> t = dyt_tanh_sech2<T>(xv * valpha, &sech2);
      store_acc(sum_dyt_c, load_acc(sum_dyt_c, c) + g * t, c);
      store_acc(sum_dy_c, load_acc(sum_dy_c, c) + g, c);
      return g * load_acc(w_c, c) * sech2;
    };
    auto block = [&](int64_t c, auto full) {
      prefetch_ahead(dyr + c);
      prefetch_ahead(xr + c);
      const vacc<T> xv = load_x(xr, c, width, full);
      const vacc<T> gu = grad_u(load_x(dyr, c, width, full), xv, c);
      s_da += gu * xv;
      if (dx != nullptr) {
        store_x<kStream>(dx + r * ld, gu * valpha, c, width, full);
      }
    };
    int64_t c = 0;
    for (; c + 2 * L <= width; c += 2 * L) {
      prefetch_ahead_pair<T>(dyr + c);
      prefetch_ahead_pair<T>(xr + c);
      const vacc<T> x0 = Io<T>::load(xr + c), x1 = Io<T>::load(xr + c + L);
      const vacc<T> gu0 = grad_u(Io<T>::load(dyr + c), x0, c);
      const vacc<T> gu1 = grad_u(Io<T>::load(dyr + c + L), x1, c + L);
      s_da += gu0 * x0;
      s_da += gu1 * x1;
      if (dx != nullptr) {
        store_out_pair<kStream>(dx + r * ld + c, gu0 * valpha, gu1 * valpha);
      }
    }
    for (; c + L <= width; c += L) {
      block(c, std::true_type{});
    }
    if (c < width) {
      block(c, std::false_type{});
    }
  }
  *dalpha = static_cast<acc_type<T>>(t_da + reduce_lanes(s_da));
}

// ---- fused GroupNorm activation leaves ---------------------------------------------------------
// z = (x - mean) * scale + bias, and y = act(z) (y = z for kIdentity: the plain normalize leaves);
// the backward recomputes z from x and the statistics and takes g = dy * act'(z) as the gradient
// of z.

// The caller holds the StreamFence. prefetch: null, or n values the caller reads next, fetched
// into cache line by line while this (compute-bound, with an activation) loop runs.
template <int kAct, typename T, bool kStream>
inline void normalize_run(const T* x, T* y, int64_t n, vacc<T> vmean, vacc<T> vscale,
                          vacc<T> vbias, const T* prefetch = nullptr) {
  constexpr int L = kLanes<T>;
  int64_t i = 0;
  // Two vectors (two chains) per step, fetching meanwhile the lines `prefetch` holds, or with an
  // activation those x holds 1 KB ahead.
  const T* fetch = prefetch != nullptr ? prefetch : kAct != kIdentity ? lines_ahead(x) : nullptr;
  auto pairs = [&](auto fetching) {
    for (; i + 2 * L <= n; i += 2 * L) {
      if constexpr (decltype(fetching)::value) {
        prefetch_pair(fetch + i);
      }
      const vacc<T> y0 = act_apply<kAct, T>((Io<T>::load(x + i) - vmean) * vscale + vbias);
      const vacc<T> y1 = act_apply<kAct, T>((Io<T>::load(x + i + L) - vmean) * vscale + vbias);
      store_out_pair<kStream>(y + i, y0, y1);
    }
  };
  if (fetch != nullptr) {
    pairs(std::true_type{});
  } else {
    pairs(std::false_type{});
  }
  for (; i + L <= n; i += L) {
    store_out<kStream>(y + i, act_apply<kAct, T>((Io<T>::load(x + i) - vmean) * vscale + vbias));
  }
  if (i < n) {
    store_n(y + i, act_apply<kAct, T>((load_n(x + i, n - i) - vmean) * vscale + vbias), n - i);
  }
}

// `rows` consecutive runs of n values (channel rows of a GroupNorm group, NCHW): row r gets
// scale rstd * gamma[r] and bias beta[r] (null: 1 and 0). NB: one call per group span rather
// than per channel row: a 16x16 plane is 16 vectors, and a call per row (indirect call, splats,
// tails) cost about as much as normalizing it.
template <int kAct, typename T, bool kStream>
NORMEXT_HEAVY_SCHED void normalize_rows(const T* x, T* y, int64_t rows, int64_t n,
                                        acc_type<T> mean, acc_type<T> rstd,
                                        const acc_type<T>* gamma, const acc_type<T>* beta,
                                        const T* prefetch) {
  using A = acc_type<T>;
  const StreamFence<kStream> fence;
  const vacc<T> vmean = splat<T>(mean);
  for (int64_t r = 0; r < rows; ++r) {
    const A scale = gamma != nullptr ? rstd * gamma[r] : rstd;
    const A bias = beta != nullptr ? beta[r] : A(0);
    normalize_run<kAct, T, kStream>(x + r * n, y + r * n, n, vmean, splat<T>(scale),
                                    splat<T>(bias), prefetch != nullptr ? prefetch + r * n : nullptr);
  }
}

template <typename T, bool kStream>
void normalize_planes(const T* x, T* y, int64_t planes, int64_t len, int64_t stride,
                      acc_type<T> mean, acc_type<T> scale, acc_type<T> bias) {
  const StreamFence<kStream> fence;
  for (int64_t p = 0; p < planes; ++p) {
    normalize_run<kIdentity, T, kStream>(x + p * stride, y + p * stride, len, splat<T>(mean),
                                         splat<T>(scale), splat<T>(bias));
  }
}

template <int kAct, typename T, bool kStream>
void normalize_act_cl(const T* x, T* y, int64_t rows, int64_t C, const acc_type<T>* mean_c,
                      const acc_type<T>* scale_c, const acc_type<T>* bias_c) {
  const StreamFence<kStream> fence;
  constexpr int L = kLanes<T>;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    T* yr = y + r * C;
    auto y_at = [&](int64_t c, auto full) {
      if constexpr (kAct != kIdentity) {
        prefetch_ahead(xr + c);
      }
      const vacc<T> z = (load_x(xr, c, C, full) - load_acc(mean_c, c)) * load_acc(scale_c, c) +
                        load_acc(bias_c, c);
      return act_apply<kAct, T>(z);
    };
    // NB: two channel blocks per step, stored as a pair (bf16: one conversion, one subnormal
    // test and one 64-byte store for both; see store_out_pair).
    int64_t c = 0;
    for (; c + 2 * L <= C; c += 2 * L) {
      store_out_pair<kStream>(yr + c, y_at(c, std::true_type{}), y_at(c + L, std::true_type{}));
    }
    for (; c + L <= C; c += L) {
      store_out<kStream>(yr + c, y_at(c, std::true_type{}));
    }
    if (c < C) {
      store_n(yr + c, y_at(c, std::false_type{}), C - c);
    }
  }
}

// g = dy * act'(z) and xc = x - mean of the two vectors at i (the backward leaves' step of two).
template <int kAct, typename T>
inline void act_grad_pair(const T* dy, const T* x, int64_t i, vacc<T> vmean, vacc<T> vscale,
                          vacc<T> vbias, vacc<T>* xc, vacc<T>* g) {
  constexpr int L = kLanes<T>;
  prefetch_ahead_pair(dy + i);
  prefetch_ahead_pair(x + i);
  xc[0] = Io<T>::load(x + i) - vmean;
  xc[1] = Io<T>::load(x + i + L) - vmean;
  g[0] = Io<T>::load(dy + i) * act_grad<kAct, T>(xc[0] * vscale + vbias);
  g[1] = Io<T>::load(dy + i + L) * act_grad<kAct, T>(xc[1] * vscale + vbias);
}

template <int kAct, typename T>
NORMEXT_HEAVY_SCHED void grad_sums_act(const T* dy, const T* x, int64_t n, acc_type<T> mean,
                                     acc_type<T> scale, acc_type<T> bias, acc_type<T>* ds_out,
                                     acc_type<T>* db_out, acc_type<T>* g_out) {
  constexpr int L = kLanes<T>;
  const vacc<T> vmean = splat<T>(mean), vscale = splat<T>(scale), vbias = splat<T>(bias);
  // NB: two vectors per step with their own accumulators, like the forward's normalize_run
  // (~10% in cache: act' is a long dependent chain).
  vacc<T> ds{}, db{}, ds1{}, db1{};
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    vacc<T> xc[2], g[2];
    act_grad_pair<kAct>(dy, x, i, vmean, vscale, vbias, xc, g);
    if (g_out != nullptr) {
      Io<acc_type<T>>::store(g_out + i, g[0]);
      Io<acc_type<T>>::store(g_out + i + L, g[1]);
    }
    ds += g[0] * xc[0];
    db += g[0];
    ds1 += g[1] * xc[1];
    db1 += g[1];
  }
  ds += ds1;
  db += db1;
  for (; i + L <= n; i += L) {
    const vacc<T> xc = Io<T>::load(x + i) - vmean;
    const vacc<T> g = Io<T>::load(dy + i) * act_grad<kAct, T>(xc * vscale + vbias);
    if (g_out != nullptr) {
      Io<acc_type<T>>::store(g_out + i, g);
    }
    ds += g * xc;
    db += g;
  }
  if (i < n) {
    const vacc<T> xc = load_n(x + i, n - i) - vmean;
    // padded dy lanes are zero; mask_first keeps a non-finite act' of padded lanes out
    const vacc<T> g = mask_first<acc_type<T>>(
        load_n(dy + i, n - i) * act_grad<kAct, T>(xc * vscale + vbias), n - i);
    if (g_out != nullptr) {
      store_n(g_out + i, g, n - i);  // acc_type<T> lanes
    }
    ds += g * xc;
    db += g;
  }
  *ds_out = reduce_lanes(ds);
  *db_out = reduce_lanes(db);
}

template <int kAct, typename T, bool kStream>
NORMEXT_HEAVY_SCHED void grad_input_act(const T* dy, const T* x, T* dx, int64_t n, acc_type<T> a,
                                      acc_type<T> mean, acc_type<T> rstd, acc_type<T> b,
                                      acc_type<T> c, acc_type<T> bias) {
  const StreamFence<kStream> fence;
  constexpr int L = kLanes<T>;
  const vacc<T> va = splat<T>(a), vmean = splat<T>(mean), vrstd = splat<T>(rstd),
                vb = splat<T>(b), vc = splat<T>(c), vbias = splat<T>(bias);
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    vacc<T> xc[2], g[2];
    act_grad_pair<kAct>(dy, x, i, vmean, va, vbias, xc, g);
    store_out_pair<kStream>(dx + i, va * g[0] + vb * (xc[0] * vrstd) + vc,
                            va * g[1] + vb * (xc[1] * vrstd) + vc);
  }
  for (; i + L <= n; i += L) {
    const vacc<T> xc = Io<T>::load(x + i) - vmean;
    const vacc<T> g = Io<T>::load(dy + i) * act_grad<kAct, T>(xc * va + vbias);
    store_out<kStream>(dx + i, va * g + vb * (xc * vrstd) + vc);
  }
  if (i < n) {
    const vacc<T> xc = load_n(x + i, n - i) - vmean;
    const vacc<T> g = load_n(dy + i, n - i) * act_grad<kAct, T>(xc * va + vbias);
    store_n(dx + i, va * g + vb * (xc * vrstd) + vc, n - i);
  }
}

template <int kAct, typename T>
void grad_sums_act_cl(const T* dy, const T* x, int64_t rows, int64_t C,
                      const acc_type<T>* mean_c, const acc_type<T>* scale_c,
                      const acc_type<T>* bias_c, acc_type<T>* ds_c, acc_type<T>* db_c,
                      acc_type<T>* g_out) {
  std::memset(ds_c, 0, padded_channels(C) * sizeof(acc_type<T>));
  std::memset(db_c, 0, padded_channels(C) * sizeof(acc_type<T>));
  for (int64_t r = 0; r < rows; ++r) {
    const T* dyr = dy + r * C;
    const T* xr = x + r * C;
    for_channel_blocks<T>(C, [&](int64_t c, auto full) {
      prefetch_ahead(dyr + c);
      prefetch_ahead(xr + c);
      const vacc<T> xc = load_x(xr, c, C, full) - load_acc(mean_c, c);
      vacc<T> g = load_x(dyr, c, C, full) *
                  act_grad<kAct, T>(xc * load_acc(scale_c, c) + load_acc(bias_c, c));
      if constexpr (!decltype(full)::value) {
        g = mask_first<acc_type<T>>(g, C - c);
      }
      if (g_out != nullptr) {
        store_x(g_out + r * C, g, c, C, full);  // acc_type<T> lanes
      }
      store_acc(ds_c, load_acc(ds_c, c) + g * xc, c);
      store_acc(db_c, load_acc(db_c, c) + g, c);
    });
  }
}

template <int kAct, typename T, bool kStream>
void grad_input_act_cl(const T* dy, const T* x, T* dx, int64_t rows, int64_t C,
                       const acc_type<T>* a_c, const acc_type<T>* mean_c,
                       const acc_type<T>* rstd_c, const acc_type<T>* b_c,
                       const acc_type<T>* c_c, const acc_type<T>* bias_c) {
  const StreamFence<kStream> fence;
  for (int64_t r = 0; r < rows; ++r) {
    const T* dyr = dy + r * C;
    const T* xr = x + r * C;
    T* dxr = dx + r * C;
    for_channel_blocks<T>(C, [&](int64_t c, auto full) {
      prefetch_ahead(dyr + c);
      prefetch_ahead(xr + c);
      const vacc<T> a = load_acc(a_c, c);
      const vacc<T> xc = load_x(xr, c, C, full) - load_acc(mean_c, c);
      const vacc<T> g = load_x(dyr, c, C, full) * act_grad<kAct, T>(xc * a + load_acc(bias_c, c));
      const vacc<T> v = a * g + load_acc(b_c, c) * (xc * load_acc(rstd_c, c)) + load_acc(c_c, c);
      store_x<kStream>(dxr, v, c, C, full);
    });
  }
}

// dx = a * g + b * ((x - mean) * rstd) + c with g (= dy * act'(z)) read from an acc_t buffer.
template <typename T, bool kStream>
void grad_input_from_g(const acc_type<T>* g, const T* x, T* dx, int64_t n, acc_type<T> a,
                       acc_type<T> mean, acc_type<T> rstd, acc_type<T> b, acc_type<T> c) {
  grad_input_impl<T, acc_type<T>, kStream>(g, x, dx, n, a, mean, rstd, b, c);
}

// s = x + r, rounded to T, over n contiguous values (the residual add of the add_*_norm ops).
template <typename T>
void add_values(const T* x, const T* r, T* s, int64_t n) {
  constexpr int L = kLanes<T>;
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    Io<T>::store(s + i, Io<T>::load(x + i) + Io<T>::load(r + i));
  }
  if (i < n) {
    store_n(s + i, load_n(x + i, n - i) + load_n(r + i, n - i), n - i);
  }
}

// kStream: the leaves that write an output use streaming stores (see store_out).
template <typename T, bool kStream>
constexpr VecKernels<T> make_kernels() {
  return {&chunk_stats<T>,
          &chunk_stats_cl<T>, &normalize_act_cl<kIdentity, T, kStream>,
          &grad_sums<T>, &grad_input<T, kStream>, &grad_sums_cl<T>, &grad_input_cl<T, kStream>,
          &planes_stats<T>, &normalize_planes<T, kStream>, &grad_sums_planes<T>,
          &grad_input_planes<T, kStream>,
          // row norms
          &sum_squares<T>, &normalize_row<T, kStream>, &row_grad_sums<T>,
          &row_grad_input<T, kStream>,
          // ---- DyT, fused GroupNorm activations, residual add ----
          &dyt_forward<T, kStream>, &dyt_forward_cl<T, kStream>, &dyt_backward<T, kStream>, &dyt_backward_cl<T, kStream>,
          {&normalize_rows<kIdentity, T, kStream>, &normalize_rows<kSilu, T, kStream>,
           &normalize_rows<kGelu, T, kStream>, &normalize_rows<kGeluTanh, T, kStream>,
           &normalize_rows<kRelu, T, kStream>},
          {&normalize_act_cl<kSilu, T, kStream>, &normalize_act_cl<kGelu, T, kStream>,
           &normalize_act_cl<kGeluTanh, T, kStream>, &normalize_act_cl<kRelu, T, kStream>},
          {&grad_sums_act<kSilu, T>, &grad_sums_act<kGelu, T>, &grad_sums_act<kGeluTanh, T>,
           &grad_sums_act<kRelu, T>},
          {&grad_input_act<kSilu, T, kStream>, &grad_input_act<kGelu, T, kStream>, &grad_input_act<kGeluTanh, T, kStream>,
           &grad_input_act<kRelu, T, kStream>},
          {&grad_sums_act_cl<kSilu, T>, &grad_sums_act_cl<kGelu, T>,
           &grad_sums_act_cl<kGeluTanh, T>, &grad_sums_act_cl<kRelu, T>},
          {&grad_input_act_cl<kSilu, T, kStream>, &grad_input_act_cl<kGelu, T, kStream>,
           &grad_input_act_cl<kGeluTanh, T, kStream>, &grad_input_act_cl<kRelu, T, kStream>},
          &add_values<T>, &grad_input_from_g<T, kStream>};
}

} // namespace

const VecKernelTable& vec_kernel_table() {
  static const VecKernelTable table{
      NORMEXT_VEC_NAME,
      {make_kernels<float, false>(), make_kernels<float, true>()},
      {make_kernels<double, false>(), make_kernels<double, true>()},
      {make_kernels<bf16_t, false>(), make_kernels<bf16_t, true>()},
      {make_kernels<fp16_t, false>(), make_kernels<fp16_t, true>()}};
  return table;
}

} // namespace NORMEXT_VEC_NS
} // namespace cpu
} // namespace normext
