// Leaf loops compiled for AVX-512 (F, BW, VL, DQ) + FMA + F16C; chosen at run time by vec_kernels().
#if defined(__x86_64__) || defined(__i386__)  // other CPUs use the portable table alone
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#elif defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))), apply_to = function)
#endif
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positive on _mm512_undefined_ps
#pragma GCC diagnostic ignored "-Wuninitialized"  // the same, through the AVX-512 math of vexp

#define NORMEXT_VEC_NS avx512
#define NORMEXT_VEC_ISA 2
#define NORMEXT_VEC_NAME "avx512"
#include "ops/cpu/vec_kernels_impl.h"

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
