// BatchNorm CPU kernels: how the work is cut into tasks and the per-channel partials merged. The
// vectorized loops are GroupNorm's (vec_kernels_impl.h); only the mapping to channels differs.
//
// A channel's statistics are, by definition, the in-order Chan merge (in double) of fixed-size
// chunk statistics. NCHW, a chunk is a kChunkElems-element piece of an (n, c) plane, or, when a
// plane is smaller than that, the planes of channel c in kChunkElems / HxW consecutive samples
// (one call, one merge for 16 planes of 14x14 instead of 16). Channels-last, it is a block of
// channels_last_chunk_rows(C) rows (chunk_stats_cl with one channel per group).
// Tasks only decide who computes a chunk, never how, so every result is bitwise identical for any
// thread count. The gradient sums follow the same chunking, summed per channel in chunk order.
#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/welford.h"
#include "ops/batch_norm.h"
#include "ops/cpu/kernel_common.h"
#include "ops/cpu/vec_kernels.h"

namespace normext {
namespace {

using cpu::VecKernels;

constexpr int64_t kChunkElems = cpu::kMaxChunkElems;

// How a shape is cut. NCHW: the N samples into `groups` groups of `group` samples (group = 1
// unless a plane is smaller than a chunk), each (group, channel) into `per_plane` chunks of
// `planes(t)` runs of up to kChunkElems values, `stride` apart. Channels-last: blocks of
// `block_rows` rows of the N * HxW rows.
struct Tiling {
  explicit Tiling(const BatchNormShape& s)
      : s(s),
        group(s.channels_last || s.HxW >= kChunkElems
                  ? 1
                  : std::max<int64_t>(1, std::min(s.N, kChunkElems / std::max<int64_t>(1, s.HxW)))),
        groups(s.channels_last ? 0 : ceil_div(s.N, group)),
        per_plane(s.channels_last ? 0 : ceil_div(s.HxW, kChunkElems)),
        stride(s.C * s.HxW),
        block_rows(s.channels_last ? channels_last_chunk_rows(s.C) : 0),
        tasks(s.channels_last ? ceil_div(s.N * s.HxW, block_rows) : groups * s.C * per_plane) {}
  const BatchNormShape& s;
  int64_t group;
  int64_t groups;
  int64_t per_plane;
  int64_t stride;  // between the runs of an NCHW chunk
  int64_t block_rows;
  int64_t tasks;
  // NCHW task t: sample group t / (C * per_plane), channel, piece t % per_plane of the planes.
  int64_t channel(int64_t t) const { return (t / per_plane) % s.C; }
  int64_t offset(int64_t t) const {  // of the first element, in elements
    if (s.channels_last) {
      return t * block_rows * s.C;
    }
    const int64_t g = t / (per_plane * s.C);
    return (g * group * s.C + channel(t)) * s.HxW + (t % per_plane) * kChunkElems;
  }
  int64_t length(int64_t t) const {  // of each run NCHW, rows channels-last
    return s.channels_last ? std::min(block_rows, s.N * s.HxW - t * block_rows)
                           : std::min(kChunkElems, s.HxW - (t % per_plane) * kChunkElems);
  }
  int64_t planes(int64_t t) const {  // runs of an NCHW chunk
    return std::min(group, s.N - t / (per_plane * s.C) * group);
  }
  // NCHW: piece j of channel c in sample group g.
  int64_t task(int64_t g, int64_t c, int64_t j) const { return (g * s.C + c) * per_plane + j; }
};

// Rows of a channels-last block whose gradient sums are added in double (NCHW: see
// grad_sums_planes).
constexpr int64_t kSumRows = 32;

// Per-channel arrays padded to padded_channels(C), as the channels-last loops load whole vectors.
template <typename acc_t>
std::vector<acc_t> padded(const acc_t* v, int64_t C) {
  std::vector<acc_t> out(cpu::padded_channels(C), acc_t(0));
  std::copy(v, v + C, out.begin());
  return out;
}

// Exact statistics in double (exact_stats_of) of channel c.
template <typename scalar_t>
WelfordStat<double> exact_channel_stats(const BatchNormShape& s, const scalar_t* X, int64_t c) {
  return exact_stats_of(s.N * s.HxW, [&](int64_t i) {  // i-th element of channel c, in memory order
    return static_cast<double>(s.channels_last ? X[i * s.C + c]
                                               : X[((i / s.HxW) * s.C + c) * s.HxW + i % s.HxW]);
  });
}

// ---------------------------------------------------------------------------------------------
// Statistics

template <typename scalar_t>
void stats_impl(const BatchNormShape& s, const scalar_t* X, double* mean, double* m2) {
  using T = typename Storage<scalar_t>::type;
  using acc_t = acc_type<T>;
  const VecKernels<T>& k = cpu::vec_kernels_for<T>();
  const auto* x = reinterpret_cast<const T*>(X);
  const Tiling tiling(s);
  const int64_t C = s.C;
  // partial_mean[t * stride + c], partial_m2[...]: mean and M2 of task t (NCHW one per task,
  // channels-last one per channel).
  const int64_t stride = s.channels_last ? C : 1;
  std::vector<double> partial_mean(tiling.tasks * stride);
  std::vector<acc_t> partial_m2(tiling.tasks * stride);
  at::parallel_for(0, tiling.tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(s.channels_last ? 3 * cpu::padded_channels(C) : 0);
    for (int64_t t = begin; t < end; ++t) {
      double* mean_out = &partial_mean[t * stride];
      acc_t* m2_out = &partial_m2[t * stride];
      if (s.channels_last) {
        k.chunk_stats_cl(x + tiling.offset(t), tiling.length(t), C, 1, scratch.data(), mean_out,
                         m2_out);
      } else {
        k.planes_stats(x + tiling.offset(t), tiling.planes(t), tiling.length(t), tiling.stride,
                       mean_out, m2_out);
      }
    }
  });
  auto finish = [&](int64_t c, WelfordStat<double> stat) {
    if (welford_overflowed(stat)) {
      stat = exact_channel_stats(s, X, c);
    }
    mean[c] = stat.mean;
    m2[c] = stat.m2;
  };
  if (!s.channels_last) {
    at::parallel_for(0, C, 16, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        WelfordStat<double> stat{0, 0, 0};
        for (int64_t g = 0; g < tiling.groups; ++g) {
          for (int64_t j = 0; j < tiling.per_plane; ++j) {
            const int64_t t = tiling.task(g, c, j);
            stat = welford_merge(stat, WelfordStat<double>{partial_mean[t],
                                                           static_cast<double>(partial_m2[t]),
                                                           tiling.planes(t) * tiling.length(t)});
          }
        }
        finish(c, stat);
      }
    });
    return;
  }
  // NB: channels-last has a partial per (block, channel), numel / 64 of them: instead of a Chan
  // merge (a division each) they are pooled in double in block order, rows of C channels at a
  // time: mean = sum n_t mean_t / n, M2 = sum M2_t + n_t (mean_t - mean)^2. The same quantity,
  // computed from centered terms only, so as stable, and a vectorizable sweep over the partials.
  const double count = static_cast<double>(s.N * s.HxW);
  std::vector<double> sum(C, 0.0), sq(C, 0.0);
  for (int64_t t = 0; t < tiling.tasks; ++t) {
    const double n_t = static_cast<double>(tiling.length(t));
    const double* mean_t = &partial_mean[t * stride];
    for (int64_t c = 0; c < C; ++c) {
      sum[c] += n_t * mean_t[c];
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    sum[c] /= count;
  }
  for (int64_t t = 0; t < tiling.tasks; ++t) {
    const double n_t = static_cast<double>(tiling.length(t));
    const double* mean_t = &partial_mean[t * stride];
    const acc_t* m2_t = &partial_m2[t * stride];
    for (int64_t c = 0; c < C; ++c) {
      const double d = mean_t[c] - sum[c];
      sq[c] += static_cast<double>(m2_t[c]) + n_t * d * d;
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    finish(c, WelfordStat<double>{sum[c], sq[c], s.N * s.HxW});
  }
}

// ---------------------------------------------------------------------------------------------
// Apply: y = (x - mean) * scale + shift per channel

template <typename scalar_t>
void apply_impl(const BatchNormShape& s, const scalar_t* X, const at::opmath_type<scalar_t>* mean,
                const at::opmath_type<scalar_t>* scale, const at::opmath_type<scalar_t>* shift,
                scalar_t* Y) {
  using T = typename Storage<scalar_t>::type;
  const VecKernels<T>& k = cpu::vec_kernels_for<T>(cpu::stream_output(2 * s.N * s.C * s.HxW * static_cast<int64_t>(sizeof(T))));
  const auto* x = reinterpret_cast<const T*>(X);
  auto* y = reinterpret_cast<T*>(Y);
  const Tiling tiling(s);
  // NB: each thread gets the same range of tasks as the statistics pass and walks it backwards,
  // so the chunks it read last (still in its L2) are normalized first.
  if (s.channels_last) {
    const auto mean_p = padded(mean, s.C), scale_p = padded(scale, s.C), shift_p = padded(shift, s.C);
    at::parallel_for(0, tiling.tasks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = end - 1; t >= begin; --t) {
        const int64_t o = tiling.offset(t);
        k.normalize_cl(x + o, y + o, tiling.length(t), s.C, mean_p.data(), scale_p.data(),
                       shift_p.data());
      }
    });
    return;
  }
  at::parallel_for(0, tiling.tasks, 1, [&](int64_t begin, int64_t end) {
    // NB: task t = (g * C + c) * per_plane + j, walked down with running indices: the divisions
    // of Tiling's accessors cost more per task than a 7x7 plane's normalize.
    int64_t j = (end - 1) % tiling.per_plane;
    int64_t c = (end - 1) / tiling.per_plane % s.C;
    int64_t g = (end - 1) / (tiling.per_plane * s.C);
    for (int64_t t = end - 1; t >= begin; --t) {
      const int64_t o = (g * tiling.group * s.C + c) * s.HxW + j * kChunkElems;
      k.normalize_planes(x + o, y + o, std::min(tiling.group, s.N - g * tiling.group),
                         std::min(kChunkElems, s.HxW - j * kChunkElems), tiling.stride, mean[c],
                         scale[c], shift[c]);
      if (--j < 0) {
        j = tiling.per_plane - 1;
        if (--c < 0) {
          c = s.C - 1;
          --g;
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward

template <typename scalar_t>
void grad_sums_impl(const BatchNormShape& s, const scalar_t* dY, const scalar_t* X,
                    const at::opmath_type<scalar_t>* mean, at::opmath_type<scalar_t>* sum_dy_xmu,
                    at::opmath_type<scalar_t>* sum_dy) {
  using T = typename Storage<scalar_t>::type;
  using acc_t = acc_type<T>;
  const VecKernels<T>& k = cpu::vec_kernels_for<T>();
  const auto* dy = reinterpret_cast<const T*>(dY);
  const auto* x = reinterpret_cast<const T*>(X);
  const Tiling tiling(s);
  const int64_t C = s.C, Cp = cpu::padded_channels(C);
  const auto mean_p = padded(mean, C);
  // partial[t]: (ds, db) of task t in double, channels-last [ds C | db C], NCHW one pair.
  // NB: pieces of kGradSumPiece elements (kSumRows rows) are summed in double: sum dy * (x - mean)
  // need not be centered (running statistics in evaluation), and long fp32 lane sums lose ulps.
  const int64_t stride = s.channels_last ? 2 * C : 2;
  std::vector<double> partial(tiling.tasks * stride);
  at::parallel_for(0, tiling.tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> piece(s.channels_last ? 2 * Cp : 0);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t o = tiling.offset(t);
      const int64_t n = tiling.length(t);
      double* out = &partial[t * stride];
      if (s.channels_last) {
        for (int64_t r = 0; r < n; r += kSumRows) {
          k.grad_sums_cl(dy + o + r * C, x + o + r * C, std::min(kSumRows, n - r), C,
                         mean_p.data(), piece.data(), piece.data() + Cp);
          for (int64_t c = 0; c < C; ++c) {
            out[c] += piece[c];
            out[C + c] += piece[Cp + c];
          }
        }
      } else {
        k.grad_sums_planes(dy + o, x + o, tiling.planes(t), n, tiling.stride,
                           mean[tiling.channel(t)], out, out + 1);
      }
    }
  });
  // Task sums are added per channel in task order, in double.
  if (s.channels_last) {
    // NB: a sweep over the partials row by row (sequential, vectorizable), not channel by channel.
    std::vector<double> ds(C, 0.0), db(C, 0.0);
    for (int64_t t = 0; t < tiling.tasks; ++t) {
      const double* part = &partial[t * stride];
      for (int64_t c = 0; c < C; ++c) {
        ds[c] += part[c];
        db[c] += part[C + c];
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      sum_dy_xmu[c] = static_cast<acc_t>(ds[c]);
      sum_dy[c] = static_cast<acc_t>(db[c]);
    }
    return;
  }
  at::parallel_for(0, C, 16, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double ds = 0, db = 0;
      for (int64_t g = 0; g < tiling.groups; ++g) {
        for (int64_t j = 0; j < tiling.per_plane; ++j) {
          const int64_t t = tiling.task(g, c, j);
          ds += partial[2 * t];
          db += partial[2 * t + 1];
        }
      }
      sum_dy_xmu[c] = static_cast<acc_t>(ds);
      sum_dy[c] = static_cast<acc_t>(db);
    }
  });
}

template <typename scalar_t>
void grad_input_impl(const BatchNormShape& s, const scalar_t* dY, const scalar_t* X,
                     const at::opmath_type<scalar_t>* a, const at::opmath_type<scalar_t>* mean,
                     const at::opmath_type<scalar_t>* rstd, const at::opmath_type<scalar_t>* b,
                     const at::opmath_type<scalar_t>* kc, scalar_t* dX) {
  using T = typename Storage<scalar_t>::type;
  const VecKernels<T>& k = cpu::vec_kernels_for<T>(cpu::stream_output(3 * s.N * s.C * s.HxW * static_cast<int64_t>(sizeof(T))));
  const auto* dy = reinterpret_cast<const T*>(dY);
  const auto* x = reinterpret_cast<const T*>(X);
  auto* dx = reinterpret_cast<T*>(dX);
  const Tiling tiling(s);
  const int64_t C = s.C;
  const auto a_p = padded(a, C), mean_p = padded(mean, C), rstd_p = padded(rstd, C),
             b_p = padded(b, C), k_p = padded(kc, C);
  // Backwards over the same task ranges as grad_sums, as in apply_impl.
  at::parallel_for(0, tiling.tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = end - 1; t >= begin; --t) {
      const int64_t o = tiling.offset(t);
      if (s.channels_last) {
        k.grad_input_cl(dy + o, x + o, dx + o, tiling.length(t), C, a_p.data(), mean_p.data(),
                        rstd_p.data(), b_p.data(), k_p.data());
      } else {
        const int64_t c = tiling.channel(t);
        k.grad_input_planes(dy + o, x + o, dx + o, tiling.planes(t), tiling.length(t),
                            tiling.stride, a[c], mean[c], rstd[c], b[c], kc[c]);
      }
    }
  });
}


// ---------------------------------------------------------------------------------------------
// One-sweep training paths (NCHW): one task per channel, whose N planes stay in L2 between the
// reduction and the elementwise pass, so memory is read once instead of twice. Same chunking,
// leaves and merge order as the kernels above.

// Bytes of a channel's data (all tensors it touches) that stay in the 2 MiB L2 of a core.
constexpr int64_t kFusedCacheBytes = 1536 * 1024;

template <typename scalar_t>
bool fusable(const BatchNormShape& s, int tensors) {
  return !s.channels_last &&
         s.N * s.HxW * static_cast<int64_t>(sizeof(scalar_t)) * tensors <= kFusedCacheBytes;
}

template <typename scalar_t>
void train_forward_impl(const BatchNormShape& s, const scalar_t* X,
                        const at::opmath_type<scalar_t>* weight,
                        const at::opmath_type<scalar_t>* bias, double eps, scalar_t* Y,
                        double* mean, double* m2, at::opmath_type<scalar_t>* invstd) {
  using T = typename Storage<scalar_t>::type;
  using acc_t = acc_type<T>;
  const VecKernels<T>& k = cpu::vec_kernels_for<T>(cpu::stream_output(2 * s.N * s.C * s.HxW * static_cast<int64_t>(sizeof(T))));
  const auto* x = reinterpret_cast<const T*>(X);
  auto* y = reinterpret_cast<T*>(Y);
  const Tiling tiling(s);
  at::parallel_for(0, s.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      WelfordStat<double> stat{0, 0, 0};
      for (int64_t g = 0; g < tiling.groups; ++g) {
        for (int64_t j = 0; j < tiling.per_plane; ++j) {
          const int64_t t = tiling.task(g, c, j);
          double mean_t;
          acc_t m2_t;
          k.planes_stats(x + tiling.offset(t), tiling.planes(t), tiling.length(t), tiling.stride,
                         &mean_t, &m2_t);
          stat = welford_merge(stat, WelfordStat<double>{mean_t, static_cast<double>(m2_t),
                                                         tiling.planes(t) * tiling.length(t)});
        }
      }
      if (welford_overflowed(stat)) {
        stat = exact_channel_stats(s, X, c);
      }
      mean[c] = stat.mean;
      m2[c] = stat.m2;
      invstd[c] = static_cast<acc_t>(welford_rstd(stat, eps));
      const acc_t scale = weight ? invstd[c] * weight[c] : invstd[c];
      const acc_t shift = bias ? bias[c] : acc_t(0);
      const acc_t m = static_cast<acc_t>(stat.mean);
      // NB: backwards, so the chunks read last (still in L1/L2) are written first.
      for (int64_t g = tiling.groups - 1; g >= 0; --g) {
        for (int64_t j = tiling.per_plane - 1; j >= 0; --j) {
          const int64_t t = tiling.task(g, c, j);
          k.normalize_planes(x + tiling.offset(t), y + tiling.offset(t), tiling.planes(t),
                             tiling.length(t), tiling.stride, m, scale, shift);
        }
      }
    }
  });
}

template <typename scalar_t>
void train_backward_impl(const BatchNormShape& s, const scalar_t* dY, const scalar_t* X,
                         const at::opmath_type<scalar_t>* weight,
                         const at::opmath_type<scalar_t>* mean,
                         const at::opmath_type<scalar_t>* invstd,
                         at::opmath_type<scalar_t>* sum_dy_xmu, at::opmath_type<scalar_t>* sum_dy,
                         scalar_t* dX) {
  using T = typename Storage<scalar_t>::type;
  using acc_t = acc_type<T>;
  const VecKernels<T>& k = cpu::vec_kernels_for<T>(cpu::stream_output(3 * s.N * s.C * s.HxW * static_cast<int64_t>(sizeof(T))));
  const auto* dy = reinterpret_cast<const T*>(dY);
  const auto* x = reinterpret_cast<const T*>(X);
  auto* dx = reinterpret_cast<T*>(dX);
  const Tiling tiling(s);
  const acc_t inv_count = static_cast<acc_t>(1.0 / static_cast<double>(s.N * s.HxW));
  at::parallel_for(0, s.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double ds = 0, db = 0;
      for (int64_t g = 0; g < tiling.groups; ++g) {
        for (int64_t j = 0; j < tiling.per_plane; ++j) {
          const int64_t t = tiling.task(g, c, j);
          const int64_t o = tiling.offset(t);
          double ds_t, db_t;
          k.grad_sums_planes(dy + o, x + o, tiling.planes(t), tiling.length(t), tiling.stride,
                             mean[c], &ds_t, &db_t);
          ds += ds_t;
          db += db_t;
        }
      }
      sum_dy_xmu[c] = static_cast<acc_t>(ds);
      sum_dy[c] = static_cast<acc_t>(db);
      const BatchNormGradCoeffs<acc_t> q = batch_norm_grad_coeffs<acc_t>(
          sum_dy_xmu[c], sum_dy[c], invstd[c], weight ? weight[c] : acc_t(1), inv_count);
      for (int64_t g = tiling.groups - 1; g >= 0; --g) {
        for (int64_t j = tiling.per_plane - 1; j >= 0; --j) {
          const int64_t t = tiling.task(g, c, j);
          const int64_t o = tiling.offset(t);
          k.grad_input_planes(dy + o, x + o, dx + o, tiling.planes(t), tiling.length(t),
                              tiling.stride, q.a, mean[c], invstd[c], q.b, q.k);
        }
      }
    }
  });
}

template <typename acc_t>
const acc_t* cptr(const at::Tensor& t) {
  return t.const_data_ptr<acc_t>();
}

void stats_cpu(const BatchNormShape& shape, const at::Tensor& X, at::Tensor& mean,
               at::Tensor& m2) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, X.scalar_type(), "batch_norm_stats_cpu",
                                  [&] {
                                    stats_impl(shape, X.const_data_ptr<scalar_t>(),
                                               mean.data_ptr<double>(), m2.data_ptr<double>());
                                  });
}

void apply_cpu(const BatchNormShape& shape, const at::Tensor& X, const at::Tensor& mean,
               const at::Tensor& scale, const at::Tensor& shift, at::Tensor& Y) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, X.scalar_type(), "batch_norm_apply_cpu",
                                  [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    apply_impl(shape, X.const_data_ptr<scalar_t>(),
                                               cptr<acc_t>(mean), cptr<acc_t>(scale),
                                               cptr<acc_t>(shift), Y.data_ptr<scalar_t>());
                                  });
}

void grad_sums_cpu(const BatchNormShape& shape, const at::Tensor& dY, const at::Tensor& X,
                   const at::Tensor& mean, at::Tensor& sum_dy_xmu, at::Tensor& sum_dy) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, X.scalar_type(), "batch_norm_grad_sums_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        grad_sums_impl(shape, dY.const_data_ptr<scalar_t>(), X.const_data_ptr<scalar_t>(),
                       cptr<acc_t>(mean), sum_dy_xmu.data_ptr<acc_t>(), sum_dy.data_ptr<acc_t>());
      });
}

void grad_input_cpu(const BatchNormShape& shape, const at::Tensor& dY, const at::Tensor& X,
                    const at::Tensor& a, const at::Tensor& mean, const at::Tensor& rstd,
                    const at::Tensor& b, const at::Tensor& k, at::Tensor& dX) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, X.scalar_type(), "batch_norm_grad_input_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        grad_input_impl(shape, dY.const_data_ptr<scalar_t>(), X.const_data_ptr<scalar_t>(),
                        cptr<acc_t>(a), cptr<acc_t>(mean), cptr<acc_t>(rstd), cptr<acc_t>(b),
                        cptr<acc_t>(k), dX.data_ptr<scalar_t>());
      });
}

bool train_forward_cpu(const BatchNormShape& shape, const at::Tensor& X, const at::Tensor& weight,
                       const at::Tensor& bias, double eps, at::Tensor& Y, at::Tensor& mean,
                       at::Tensor& m2, at::Tensor& invstd, const at::Tensor& /*running_mean*/,
                       const at::Tensor& /*running_var*/, double /*momentum*/,
                       at::Tensor& /*save_mean*/, at::Tensor& /*new_mean*/,
                       at::Tensor& /*new_var*/) {
  // NB: save_mean and the running update are left to the op layer (one loop over C on the CPU).
  bool done = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, X.scalar_type(), "batch_norm_train_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        // x is read twice (statistics, then normalize) and y written: 2 tensors in cache.
        if (!fusable<scalar_t>(shape, 2)) {
          return;
        }
        train_forward_impl(shape, X.const_data_ptr<scalar_t>(), const_data_or_null<acc_t>(weight),
                           const_data_or_null<acc_t>(bias), eps, Y.data_ptr<scalar_t>(),
                           mean.data_ptr<double>(), m2.data_ptr<double>(),
                           invstd.data_ptr<acc_t>());
        done = true;
      });
  return done;
}

bool train_backward_cpu(const BatchNormShape& shape, const at::Tensor& dY, const at::Tensor& X,
                        const at::Tensor& weight, const at::Tensor& mean, const at::Tensor& invstd,
                        at::Tensor& sum_dy_xmu, at::Tensor& sum_dy, at::Tensor& dX) {
  bool done = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, X.scalar_type(), "batch_norm_train_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        // dy and x are read twice and dx written: 3 tensors in cache.
        if (!fusable<scalar_t>(shape, 3)) {
          return;
        }
        train_backward_impl(shape, dY.const_data_ptr<scalar_t>(), X.const_data_ptr<scalar_t>(),
                            const_data_or_null<acc_t>(weight), cptr<acc_t>(mean),
                            cptr<acc_t>(invstd),
                            sum_dy_xmu.data_ptr<acc_t>(), sum_dy.data_ptr<acc_t>(),
                            dX.data_ptr<scalar_t>());
        done = true;
      });
  return done;
}

} // namespace

const BatchNormKernels batch_norm_cpu_kernels{&stats_cpu,       &apply_cpu,         &grad_sums_cpu,
                                              &grad_input_cpu,  &train_forward_cpu, &train_backward_cpu};

} // namespace normext
