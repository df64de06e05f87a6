// The statistics core shared by every normext kernel, CPU and CUDA.
//
// Plain C++ with no torch headers, so nvcc compiles it for the device and CPU tests cover the same
// math the GPU runs. Every norm computes its statistics as a sequence of (count, mean, M2) partials
// merged with Chan's formula, then folds them into per-element coefficients here.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define NORMEXT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define NORMEXT_HOST_DEVICE inline
#endif

namespace normext {

// The accumulation type of a storage type, for every kernel on every device: double for double,
// float for everything else (float, half, bfloat16 in whatever type the device code names them).
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_type = typename AccType<T>::type;

// Count, mean and sum of squared deviations (M2) of a set of values.
template <typename acc_t>
struct WelfordStat {
  acc_t mean;
  acc_t m2;
  int64_t count;
};

// Chan et al.'s parallel merge: exact for any split of the data, stable for large means because it
// only ever combines centered quantities. NB: not associative bitwise, so callers merge partials in
// a fixed order (the order of their chunks) to stay deterministic for any thread count.
template <typename acc_t>
NORMEXT_HOST_DEVICE WelfordStat<acc_t> welford_merge(WelfordStat<acc_t> a, WelfordStat<acc_t> b) {
  if (b.count == 0) {
    return a;
  }
  if (a.count == 0) {
    return b;
  }
  const int64_t count = a.count + b.count;
  const acc_t delta = b.mean - a.mean;
  const acc_t b_fraction = static_cast<acc_t>(b.count) / static_cast<acc_t>(count);
  return {a.mean + delta * b_fraction,
          a.m2 + b.m2 + delta * delta * static_cast<acc_t>(a.count) * b_fraction, count};
}

// 1 / sqrt(biased variance + eps). The variance is clamped at 0 against rounding, eps is always
// added (never replaced), and a NaN variance stays NaN.
template <typename acc_t>
NORMEXT_HOST_DEVICE acc_t welford_rstd(WelfordStat<acc_t> s, acc_t eps) {
  acc_t var = s.count > 0 ? s.m2 / static_cast<acc_t>(s.count) : acc_t(0);
  var = var < acc_t(0) ? acc_t(0) : var;
  return acc_t(1) / std::sqrt(var + eps);
}

// True when fp32/fp64 accumulation overflowed (or the data holds inf/nan): the caller then
// recomputes the group in double so a huge finite input never turns into a silently wrong number.
template <typename acc_t>
NORMEXT_HOST_DEVICE bool welford_overflowed(WelfordStat<acc_t> s) {
  return !(std::isfinite(s.mean) && std::isfinite(s.m2));
}

// Mean and M2 in double of `count` values, at(i) (as double) for i in [0, count), by two passes:
// every op's fallback for a group whose fp32 accumulation overflowed (|x| ~ 1e19 and above), so a
// huge finite input still gets the right answer instead of a silently wrong one. inf / nan
// propagate.
template <typename At>
NORMEXT_HOST_DEVICE WelfordStat<double> exact_stats_of(int64_t count, At at) {
  double sum = 0;
  for (int64_t i = 0; i < count; ++i) {
    sum += at(i);
  }
  const double mean = sum / static_cast<double>(count);
  double m2 = 0;
  for (int64_t i = 0; i < count; ++i) {
    const double d = at(i) - mean;
    m2 += d * d;
  }
  return {mean, m2, count};
}

// Backward of y = (x - mean) * rstd * gamma + beta over one group of `count` elements:
//   dx = rstd * gamma[c] * dy + xhat_coeff * xhat + bias,  xhat = (x - mean) * rstd,
// from the per-group sums  sum_gamma_ds = sum_c gamma[c] * sum_hw dy * (x - mean)  and
// sum_gamma_db = sum_c gamma[c] * sum_hw dy. NB: written in terms of xhat, not x, so no rstd^3
// term can underflow and no x * c2 + c3 term cancels when the mean is large.
template <typename acc_t>
struct GroupBackwardCoeffs {
  acc_t xhat_coeff;
  acc_t bias;
};

template <typename acc_t>
NORMEXT_HOST_DEVICE GroupBackwardCoeffs<acc_t> group_backward_coeffs(acc_t sum_gamma_ds,
                                                                     acc_t sum_gamma_db, acc_t rstd,
                                                                     int64_t count) {
  const acc_t inv_count = acc_t(1) / static_cast<acc_t>(count);
  // mean(gamma * dy * xhat) and mean(gamma * dy) over the group
  const acc_t mean_dy_xhat = sum_gamma_ds * rstd * inv_count;
  const acc_t mean_dy = sum_gamma_db * inv_count;
  return {-rstd * mean_dy_xhat, -rstd * mean_dy};
}

// BatchNorm's per-channel backward in training: dx = a * dy + b * xhat + k with a = invstd * weight
// (weight = 1 without one), b = -a * mean(dy * xhat), k = -a * mean(dy), from the channel's sums
// sum_dy_xmu = sum dy * (x - mean) and sum_dy = sum dy over its count values (inv_count = 1 / count).
template <typename acc_t>
struct BatchNormGradCoeffs {
  acc_t a;
  acc_t b;
  acc_t k;
};

template <typename acc_t>
NORMEXT_HOST_DEVICE BatchNormGradCoeffs<acc_t> batch_norm_grad_coeffs(acc_t sum_dy_xmu,
                                                                      acc_t sum_dy, acc_t invstd,
                                                                      acc_t weight,
                                                                      acc_t inv_count) {
  const acc_t a = invstd * weight;
  return {a, -a * (sum_dy_xmu * invstd * inv_count), -a * (sum_dy * inv_count)};
}

// BatchNorm's running-statistic step in double: running * (1 - momentum) + batch / divisor *
// momentum (divisor 1 for the mean, count - 1 for the unbiased variance from M2), as ATen's CPU
// update; the caller rounds it to the running tensor's dtype. Shared by the CPU loop and the CUDA
// training finalize so both devices give the same values.
NORMEXT_HOST_DEVICE double running_stat_update(double running, double batch, double divisor,
                                               double momentum) {
  return running * (1 - momentum) + batch / divisor * momentum;
}

} // namespace normext
