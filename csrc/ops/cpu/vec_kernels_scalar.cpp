// Leaf loops compiled for the baseline ISA of the build (any CPU the toolchain targets).
#pragma GCC diagnostic ignored "-Wpsabi"

#define NORMEXT_VEC_NS scalar
#define NORMEXT_VEC_ISA 0
#define NORMEXT_VEC_NAME "default"
#include "ops/cpu/vec_kernels_impl.h"
