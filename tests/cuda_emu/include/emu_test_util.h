// What the emulator tests (tests/cuda_emu/test_*_emu.cpp) share: conversions between the storage
// types and double, their names, epsilons and the dtype tag of a launcher.
#pragma once
#include <type_traits>

#include "emu.h"

template <class T> T from_d(double v);
template <> inline float from_d<float>(double v) { return (float)v; }
template <> inline double from_d<double>(double v) { return v; }
template <> inline __half from_d<__half>(double v) { return __float2half_rn((float)v); }
template <> inline __nv_bfloat16 from_d<__nv_bfloat16>(double v) { return __float2bfloat16_rn((float)v); }
inline double to_d(float v) { return v; }
inline double to_d(double v) { return v; }
inline double to_d(__half v) { return __half2float(v); }
inline double to_d(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T> const char* name_of();
template <> inline const char* name_of<float>() { return "f32"; }
template <> inline const char* name_of<double>() { return "f64"; }
template <> inline const char* name_of<__half>() { return "f16"; }
template <> inline const char* name_of<__nv_bfloat16>() { return "bf16"; }

// The dtype tag (an enum class with Float, Double, Half and BFloat16) of storage type T.
template <class Kind, class T> constexpr Kind scalar_kind() {
  if constexpr (std::is_same_v<T, double>) return Kind::Double;
  else if constexpr (std::is_same_v<T, float>) return Kind::Float;
  else if constexpr (std::is_same_v<T, __half>) return Kind::Half;
  else return Kind::BFloat16;
}

// Machine epsilon (2^(1 - significand bits)), twice the unit roundoff of one rounding.
template <class T> constexpr double eps_of() {
  if constexpr (std::is_same_v<T, double>) return 0x1p-52;
  else if constexpr (std::is_same_v<T, float>) return 0x1p-23;
  else if constexpr (std::is_same_v<T, __half>) return 0x1p-10;
  else return 0x1p-7;
}
// The smallest subnormal: the absolute rounding error of a tiny value stored in T is half of it
// (fp16 rounds anything under 6.1e-5 to a multiple of 2^-24).
template <class T> constexpr double denorm_of() {
  if constexpr (std::is_same_v<T, double>) return 0x1p-1074;
  else if constexpr (std::is_same_v<T, float>) return 0x1p-149;
  else if constexpr (std::is_same_v<T, __half>) return 0x1p-24;
  else return 0x1p-133;
}
