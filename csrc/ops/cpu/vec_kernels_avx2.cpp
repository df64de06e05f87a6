// Leaf loops compiled for AVX2 + FMA + F16C; chosen at run time by vec_kernels().
#if defined(__x86_64__) || defined(__i386__)  // other CPUs use the portable table alone
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx2,fma,f16c")
#elif defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#endif
#pragma GCC diagnostic ignored "-Wpsabi"

#define NORMEXT_VEC_NS avx2
#define NORMEXT_VEC_ISA 1
#define NORMEXT_VEC_NAME "avx2"
#include "ops/cpu/vec_kernels_impl.h"

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
