// GroupNorm CPU kernels: how the work is cut into tasks and statistics merged. The vectorized
// loops themselves live in vec_kernels_impl.h.
//
// Statistics of a group are, by definition, the in-order Chan merge of fixed-size chunk statistics
// (kChunkElems contiguous elements NCHW, channels_last_chunk_rows(C) positions channels-last).
// Tasks only decide who computes a chunk, never how, so every result is bitwise identical for any
// thread count.
#include <algorithm>
#include <type_traits>
#include <cmath>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/welford.h"
#include "ops/cpu/kernel_common.h"
#include "ops/cpu/vec_kernels.h"
#include "ops/group_norm.h"

namespace normext {
namespace {

using cpu::VecKernels;

constexpr int64_t kChunkElems = cpu::kMaxChunkElems;

// One task per group keeps a group in cache between its statistics and its apply pass; it needs
// enough groups to keep every thread busy with little imbalance.
bool one_task_per_group(int64_t groups) {
  const int64_t threads = at::get_num_threads();
  return groups % threads == 0 || groups >= 8 * threads;
}

// Exact statistics in double (exact_stats_of) of `rows` runs of `width` values `row_stride` apart.
template <typename scalar_t>
WelfordStat<double> exact_stats(const scalar_t* x, int64_t rows, int64_t row_stride,
                                int64_t width) {
  return exact_stats_of(rows * width, [&](int64_t i) {
    return static_cast<double>(x[(i / width) * row_stride + i % width]);
  });
}

// Chunk statistics come out of the vector loops as a double mean and an acc_t M2 and are merged
// in double: the merge runs once per chunk, not per element, and keeps the group statistics as
// accurate over thousands of chunks as over one (a merge in fp32, or of fp32-rounded chunk
// means, drifts when the mean is large).

template <typename scalar_t, typename acc_t>
void finalize_group(WelfordStat<double> stat, double eps, const scalar_t* group, int64_t rows,
                    int64_t row_stride, int64_t width, acc_t* mean, acc_t* rstd) {
  if (welford_overflowed(stat)) {
    stat = exact_stats(group, rows, row_stride, width);
  }
  *mean = static_cast<acc_t>(stat.mean);
  *rstd = static_cast<acc_t>(welford_rstd(stat, eps));
}

template <typename scalar_t, typename acc_t>
struct Params {
  const acc_t* gamma;  // nullptr means 1
  const acc_t* beta;   // nullptr means 0
  acc_t weight(int64_t c) const { return gamma ? gamma[c] : acc_t(1); }
  acc_t bias(int64_t c) const { return beta ? beta[c] : acc_t(0); }
};

// ---------------------------------------------------------------------------------------------
// Forward

// Pointers of the fused forward (GroupNormFusion): R (residual) null or S = X + R to write and
// normalize; act the activation (0 none).
template <typename scalar_t>
struct ForwardFusion {
  const scalar_t* R;
  scalar_t* S;
  int64_t act;
};

template <typename scalar_t>
void forward_nchw(const GroupNormShape& s, const scalar_t* X_in, scalar_t* Y,
                  Params<scalar_t, at::opmath_type<scalar_t>> p, double eps,
                  at::opmath_type<scalar_t>* mean, at::opmath_type<scalar_t>* rstd,
                  ForwardFusion<scalar_t> fusion) {
  using T = typename Storage<scalar_t>::type;
  using acc_t = acc_type<T>;
  static_assert(std::is_same<acc_t, at::opmath_type<scalar_t>>::value, "accumulation type");
  // x and y, plus r and s with a residual
  const int64_t tensors = fusion.R != nullptr ? 4 : 2;
  const VecKernels<T>& k = cpu::vec_kernels_for<T>(cpu::stream_output(tensors * s.N * s.C * s.HxW * static_cast<int64_t>(sizeof(T))));
  // With a residual, the statistics step writes S = X + R chunk by chunk (S stays in cache for
  // the statistics) and everything after it reads S.
  const scalar_t* X = fusion.R ? fusion.S : X_in;
  const auto* x_in = reinterpret_cast<const T*>(X_in);
  const auto* r = reinterpret_cast<const T*>(fusion.R);
  auto* sum = reinterpret_cast<T*>(fusion.S);
  const auto* x = reinterpret_cast<const T*>(X);
  auto* y = reinterpret_cast<T*>(Y);
  const int64_t D = s.C / s.G;
  const int64_t L = D * s.HxW;  // elements of one group, contiguous
  const int64_t groups = s.N * s.G;
  const int64_t nchunk = ceil_div(L, kChunkElems);

  auto chunk_stat = [&](int64_t group, int64_t j) {
    const int64_t n = std::min(kChunkElems, L - j * kChunkElems);
    const int64_t offset = group * L + j * kChunkElems;
    if (r != nullptr) {
      k.add_values(x_in + offset, r + offset, sum + offset, n);
    }
    double mean_j;
    acc_t m2_j;
    k.chunk_stats(x + offset, n, &mean_j, &m2_j);
    return WelfordStat<double>{mean_j, static_cast<double>(m2_j), n};
  };
  auto finalize = [&](int64_t group, WelfordStat<double> stat) {
    finalize_group(stat, eps, X + group * L, 1, L, L, mean + group, rstd + group);
  };
  auto* const normalize = k.normalize_rows[fusion.act];
  // Normalizes elements [begin, end) of a group (a partial first channel row, the whole rows, a
  // partial last row: a call each), prefetching as many values from `prefetch` on (null: none).
  auto normalize_span = [&](int64_t group, int64_t begin, int64_t end, const T* prefetch) {
    const int64_t first_c = (group % s.G) * D;
    const acc_t* gamma = p.gamma != nullptr ? p.gamma + first_c : nullptr;
    const acc_t* beta = p.beta != nullptr ? p.beta + first_c : nullptr;
    auto rows = [&](int64_t count, int64_t n) {
      const int64_t d = begin / s.HxW;
      const int64_t offset = group * L + begin;
      normalize(x + offset, y + offset, count, n, mean[group], rstd[group],
                gamma != nullptr ? gamma + d : nullptr, beta != nullptr ? beta + d : nullptr,
                prefetch);
      if (prefetch != nullptr) {
        prefetch += count * n;
      }
      begin += count * n;
    };
    const int64_t col = begin % s.HxW;
    if (col != 0) {
      rows(1, std::min(end - begin, s.HxW - col));
    }
    if (end - begin >= s.HxW) {
      rows((end - begin) / s.HxW, s.HxW);
    }
    if (begin < end) {
      rows(1, end - begin);
    }
  };

  if (one_task_per_group(groups) && !std::is_same<T, acc_t>::value) {
    // bf16 / fp16: group by group, statistics then normalize. NB: the pipelined loop below
    // measured 0.9-1.0x of this for bf16 (its bytes are half fp32's, the conversions the cost).
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t group = begin; group < end; ++group) {
        WelfordStat<double> stat{0, 0, 0};
        for (int64_t j = 0; j < nchunk; ++j) {
          stat = welford_merge(stat, chunk_stat(group, j));
        }
        finalize(group, stat);
        normalize_span(group, 0, L, nullptr);
      }
    });
    return;
  }
  if (one_task_per_group(groups)) {
    // NB: software pipelined: chunk j of the next group's statistics streams in from memory while
    // chunk j of this group (still in cache) is normalized and written, so reads and writes flow
    // together as in a copy instead of alternating in group-sized bursts.
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      WelfordStat<double> stat{0, 0, 0};
      for (int64_t j = 0; j < nchunk; ++j) {
        stat = welford_merge(stat, chunk_stat(begin, j));
      }
      finalize(begin, stat);
      for (int64_t group = begin; group < end; ++group) {
        const bool has_next = group + 1 < end;
        WelfordStat<double> next{0, 0, 0};
        for (int64_t j = 0; j < nchunk; ++j) {
          if (has_next) {
            next = welford_merge(next, chunk_stat(group + 1, j));
          }
          // NB: the chunk the next chunk_stat reads (chunk j + 1 of the next group, or chunk 0
          // of the one after it; of the input x_in with a residual, whose sum it writes) is
          // prefetched while this one is normalized, so its memory time overlaps the normalize's
          // compute (an activation makes it compute-bound) instead of following it.
          const int64_t next_offset = j + 1 < nchunk ? (group + 1) * L + (j + 1) * kChunkElems
                                                     : (group + 2) * L;
          const T* prefetch = has_next && next_offset < end * L ? x_in + next_offset : nullptr;
          normalize_span(group, j * kChunkElems, std::min(L, (j + 1) * kChunkElems), prefetch);
        }
        if (has_next) {
          finalize(group + 1, next);
        }
      }
    });
    return;
  }
  // Few groups: split every group into its chunks for the statistics, merge, then apply in blocks.
  std::vector<WelfordStat<double>> chunks(groups * nchunk);
  at::parallel_for(0, groups * nchunk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      chunks[t] = chunk_stat(t / nchunk, t % nchunk);
    }
  });
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t group = begin; group < end; ++group) {
      WelfordStat<double> stat{0, 0, 0};
      for (int64_t j = 0; j < nchunk; ++j) {
        stat = welford_merge(stat, chunks[group * nchunk + j]);
      }
      finalize(group, stat);
    }
  });
  const int64_t row_blocks = ceil_div(s.HxW, kChunkElems);
  at::parallel_for(0, s.N * s.C * row_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = t / row_blocks, c = row % s.C;
      const int64_t group = (row / s.C) * s.G + c / D;
      const int64_t b = (t % row_blocks) * kChunkElems;
      const int64_t offset = row * s.HxW + b;
      normalize(x + offset, y + offset, 1, std::min(s.HxW - b, kChunkElems), mean[group],
                rstd[group], p.gamma != nullptr ? p.gamma + c : nullptr,
                p.beta != nullptr ? p.beta + c : nullptr, nullptr);
    }
  });
}

// Per (sample, channel) copies of the group statistics for the channels-last loops, one padded
// row of Cp = padded_channels(C) entries per sample: the mean and rstd of the channel's group,
// scale = rstd * gamma (the forward's factor, the backward's dx coefficient of dy and, with an
// activation, its z) and bias = beta.
template <typename acc_t>
struct ChannelCoeffs {
  std::vector<acc_t> mean, rstd, scale, bias;
};

template <typename scalar_t, typename acc_t>
ChannelCoeffs<acc_t> channel_coeffs(const GroupNormShape& s, Params<scalar_t, acc_t> p,
                                    const acc_t* mean, const acc_t* rstd) {
  const int64_t D = s.C / s.G, Cp = cpu::padded_channels(s.C);
  ChannelCoeffs<acc_t> out{std::vector<acc_t>(s.N * Cp), std::vector<acc_t>(s.N * Cp),
                           std::vector<acc_t>(s.N * Cp), std::vector<acc_t>(s.N * Cp)};
  // NB: walked per group, so no division per channel
  for (int64_t ng = 0; ng < s.N * s.G; ++ng) {
    const int64_t row = (ng / s.G) * Cp;
    for (int64_t c = (ng % s.G) * D; c < (ng % s.G + 1) * D; ++c) {
      out.mean[row + c] = mean[ng];
      out.rstd[row + c] = rstd[ng];
      out.scale[row + c] = rstd[ng] * p.weight(c);
      out.bias[row + c] = p.bias(c);
    }
  }
  return out;
}

template <typename scalar_t>
void forward_channels_last(const GroupNormShape& s, const scalar_t* X_in, scalar_t* Y,
                           Params<scalar_t, at::opmath_type<scalar_t>> p, double eps,
                           at::opmath_type<scalar_t>* mean, at::opmath_type<scalar_t>* rstd,
                           ForwardFusion<scalar_t> fusion) {
  using T = typename Storage<scalar_t>::type;
  using acc_t = acc_type<T>;
  const int64_t tensors = fusion.R != nullptr ? 4 : 2;  // as in forward_nchw
  const VecKernels<T>& k = cpu::vec_kernels_for<T>(cpu::stream_output(tensors * s.N * s.C * s.HxW * static_cast<int64_t>(sizeof(T))));
  const scalar_t* X = fusion.R ? fusion.S : X_in;  // as in forward_nchw
  const auto* x_in = reinterpret_cast<const T*>(X_in);
  const auto* r = reinterpret_cast<const T*>(fusion.R);
  auto* sum = reinterpret_cast<T*>(fusion.S);
  const auto* x = reinterpret_cast<const T*>(X);
  auto* y = reinterpret_cast<T*>(Y);
  const int64_t C = s.C, G = s.G, D = C / G;
  const int64_t Cp = cpu::padded_channels(C);  // per-channel arrays, one per sample, are padded
  const int64_t R = channels_last_chunk_rows(C);
  const int64_t nchunk = ceil_div(s.HxW, R);
  const int64_t tasks = s.N * nchunk;
  auto rows_of = [&](int64_t j) { return std::min(R, s.HxW - j * R); };

  // 1. per chunk and group: mean and M2, laid out [task][G]
  std::vector<double> partial_mean(tasks * G);
  std::vector<acc_t> partial_m2(tasks * G);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(3 * Cp);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / nchunk, j = t % nchunk;
      if (r != nullptr) {
        const int64_t offset = (n * s.HxW + j * R) * C;
        k.add_values(x_in + offset, r + offset, sum + offset, rows_of(j) * C);
      }
      k.chunk_stats_cl(x + (n * s.HxW + j * R) * C, rows_of(j), C, D, scratch.data(),
                       &partial_mean[t * G], &partial_m2[t * G]);
    }
  });
  // 2. merge the chunks of each group in order
  at::parallel_for(0, s.N * G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t n = ng / G, g = ng % G;
      WelfordStat<double> stat{0, 0, 0};
      for (int64_t j = 0; j < nchunk; ++j) {
        const int64_t part = (n * nchunk + j) * G + g;
        stat = welford_merge(stat, WelfordStat<double>{partial_mean[part],
                                                       static_cast<double>(partial_m2[part]),
                                                       rows_of(j) * D});
      }
      finalize_group(stat, eps, X + n * s.HxW * C + g * D, s.HxW, C, D, mean + ng, rstd + ng);
    }
  });
  // 3. per channel coefficients, then apply chunk by chunk
  const ChannelCoeffs<acc_t> cc = channel_coeffs(s, p, mean, rstd);
  // NB: each thread gets the same range of chunks as in step 1 and walks it backwards, so the
  // chunks it read last (still in its L2) are normalized first.
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = end - 1; t >= begin; --t) {
      const int64_t n = t / nchunk, j = t % nchunk;
      const int64_t offset = (n * s.HxW + j * R) * C;
      auto* normalize = fusion.act ? k.normalize_act_cl[fusion.act - 1] : k.normalize_cl;
      normalize(x + offset, y + offset, rows_of(j), C, &cc.mean[n * Cp], &cc.scale[n * Cp],
                &cc.bias[n * Cp]);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward

// dgamma[c] = sum_n ds[n, c] * rstd[n, g], dbeta[c] = sum_n db[n, c], summed in n order.
template <typename acc_t>
void param_grads(const GroupNormShape& s, const acc_t* ds, const acc_t* db, const acc_t* rstd,
                 at::Tensor& dgamma, at::Tensor& dbeta) {
  const int64_t D = s.C / s.G;
  acc_t* dgamma_ptr = dgamma.defined() ? dgamma.data_ptr<acc_t>() : nullptr;
  acc_t* dbeta_ptr = dbeta.defined() ? dbeta.data_ptr<acc_t>() : nullptr;
  for (int64_t g = 0; g < s.G; ++g) {
    for (int64_t c = g * D; c < (g + 1) * D; ++c) {
      acc_t sum_ds = 0, sum_db = 0;
      for (int64_t n = 0; n < s.N; ++n) {
        sum_ds += ds[n * s.C + c] * rstd[n * s.G + g];
        sum_db += db[n * s.C + c];
      }
      if (dgamma_ptr) {
        dgamma_ptr[c] = sum_ds;
      }
      if (dbeta_ptr) {
        dbeta_ptr[c] = sum_db;
      }
    }
  }
}

// The dx coefficients of group ng = n * G + g from the per-(n, c) sums ds and db (N x C).
template <typename scalar_t, typename acc_t>
GroupBackwardCoeffs<acc_t> group_coeffs(const GroupNormShape& s, Params<scalar_t, acc_t> p,
                                        const acc_t* ds, const acc_t* db, const acc_t* rstd,
                                        int64_t ng) {
  const int64_t D = s.C / s.G;
  const int64_t first_channel = (ng % s.G) * D;
  const int64_t first = (ng / s.G) * s.C + first_channel;
  acc_t sum_gamma_ds = 0, sum_gamma_db = 0;
  for (int64_t d = 0; d < D; ++d) {
    const acc_t w = p.weight(first_channel + d);
    sum_gamma_ds += w * ds[first + d];
    sum_gamma_db += w * db[first + d];
  }
  return group_backward_coeffs(sum_gamma_ds, sum_gamma_db, rstd[ng], D * s.HxW);
}

template <typename scalar_t>
void backward_nchw(const GroupNormShape& s, const scalar_t* dY, const scalar_t* X, scalar_t* dX,
                   Params<scalar_t, at::opmath_type<scalar_t>> p,
                   const at::opmath_type<scalar_t>* mean, const at::opmath_type<scalar_t>* rstd,
                   at::Tensor& dgamma, at::Tensor& dbeta, int64_t act) {
  using T = typename Storage<scalar_t>::type;
  using acc_t = acc_type<T>;
  const VecKernels<T>& k = cpu::vec_kernels_for<T>(cpu::stream_output(3 * s.N * s.C * s.HxW * static_cast<int64_t>(sizeof(T))));
  const auto* dy = reinterpret_cast<const T*>(dY);
  const auto* x = reinterpret_cast<const T*>(X);
  auto* dx = reinterpret_cast<T*>(dX);
  const int64_t C = s.C, G = s.G, D = C / G, HxW = s.HxW;
  const int64_t groups = s.N * G;
  std::vector<acc_t> ds(s.N * C), db(s.N * C);
  std::vector<GroupBackwardCoeffs<acc_t>> coeffs(groups);

  // With an activation, dy is the gradient of act(z): the _act leaves recompute z from x and
  // use g = dy * act'(z) in its place. NB: the sums pass stores g (in acc_t) and the dx pass reads
  // it back instead of evaluating act' a second time: into dx itself when T is acc_t (float,
  // double), else (bf16, fp16) into a per-thread buffer of one group, when a task is a group.
  constexpr bool kExact = std::is_same<T, acc_t>::value;
  const bool per_group = one_task_per_group(groups);
  const bool stash_g = act && dx != nullptr && (kExact || per_group);
  // NB: a row is addressed by (row, group, channel c, d = c - the group's first channel), kept as
  // running indices by the loops: the divisions that map a row to them cost about as much as a
  // leaf on a 16x16 plane.
  // g of row `row` (only when stash_g): dx itself, or row d of the calling thread's group buffer
  auto g_row = [&](int64_t row, int64_t d, acc_t* group_buf) -> acc_t* {
    if constexpr (kExact) {
      return reinterpret_cast<acc_t*>(dx) + row * HxW;
    } else {
      return group_buf + d * HxW;
    }
  };
  // NB: a row's sums are taken in pieces of kChunkElems values added in double: fp32 lane sums
  // over a whole 512x512 plane (16384 terms a lane with AVX2) gave dbias 3x torch's error.
  auto row_sums = [&](int64_t row, int64_t group, int64_t c, int64_t d, acc_t* group_buf) {
    double ds_row = 0, db_row = 0;
    for (int64_t at = 0; at < HxW; at += kChunkElems) {
      const int64_t n = std::min(kChunkElems, HxW - at);
      const int64_t o = row * HxW + at;
      acc_t ds_piece, db_piece;
      if (act) {
        k.grad_sums_act[act - 1](dy + o, x + o, n, mean[group], rstd[group] * p.weight(c),
                                 p.bias(c), &ds_piece, &db_piece,
                                 stash_g ? g_row(row, d, group_buf) + at : nullptr);
      } else {
        k.grad_sums(dy + o, x + o, n, mean[group], &ds_piece, &db_piece);
      }
      ds_row += ds_piece;
      db_row += db_piece;
    }
    ds[row] = static_cast<acc_t>(ds_row);
    db[row] = static_cast<acc_t>(db_row);
  };
  auto grad_input_row = [&](int64_t row, int64_t group, int64_t c, int64_t d, int64_t begin,
                            int64_t end, acc_t* group_buf) {
    const GroupBackwardCoeffs<acc_t> q = coeffs[group];
    const int64_t o = row * HxW + begin;
    if (stash_g) {
      k.grad_input_from_g(g_row(row, d, group_buf) + begin, x + o, dx + o, end - begin,
                          rstd[group] * p.weight(c), mean[group], rstd[group], q.xhat_coeff,
                          q.bias);
    } else if (act) {
      k.grad_input_act[act - 1](dy + o, x + o, dx + o, end - begin, rstd[group] * p.weight(c),
                                mean[group], rstd[group], q.xhat_coeff, q.bias, p.bias(c));
    } else {
      k.grad_input(dy + o, x + o, dx + o, end - begin, rstd[group] * p.weight(c), mean[group],
                   rstd[group], q.xhat_coeff, q.bias);
    }
  };

  if (per_group) {
    // dy and x of a group stay in cache between the sums and dx.
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> group_buf(stash_g && !kExact ? D * HxW : 0);
      for (int64_t group = begin; group < end; ++group) {
        const int64_t first_c = (group % G) * D;
        const int64_t first_row = (group / G) * C + first_c;
        for (int64_t d = 0; d < D; ++d) {
          row_sums(first_row + d, group, first_c + d, d, group_buf.data());
        }
        coeffs[group] = group_coeffs(s, p, ds.data(), db.data(), rstd, group);
        if (dx != nullptr) {
          for (int64_t d = 0; d < D; ++d) {
            grad_input_row(first_row + d, group, first_c + d, d, 0, HxW, group_buf.data());
          }
        }
      }
    });
  } else {
    at::parallel_for(0, s.N * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t c = row % C;
        row_sums(row, (row / C) * G + c / D, c, c % D, nullptr);
      }
    });
    for (int64_t group = 0; group < groups; ++group) {
      coeffs[group] = group_coeffs(s, p, ds.data(), db.data(), rstd, group);
    }
    if (dx != nullptr) {
      const int64_t row_blocks = ceil_div(HxW, kChunkElems);
      at::parallel_for(0, s.N * C * row_blocks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t row = t / row_blocks, c = row % C;
          const int64_t b = (t % row_blocks) * kChunkElems;
          grad_input_row(row, (row / C) * G + c / D, c, c % D, b, std::min(HxW, b + kChunkElems),
                         nullptr);
        }
      });
    }
  }
  param_grads(s, ds.data(), db.data(), rstd, dgamma, dbeta);
}

template <typename scalar_t>
void backward_channels_last(const GroupNormShape& s, const scalar_t* dY, const scalar_t* X,
                            scalar_t* dX, Params<scalar_t, at::opmath_type<scalar_t>> p,
                            const at::opmath_type<scalar_t>* mean,
                            const at::opmath_type<scalar_t>* rstd, at::Tensor& dgamma,
                            at::Tensor& dbeta, int64_t act) {
  using T = typename Storage<scalar_t>::type;
  using acc_t = acc_type<T>;
  const VecKernels<T>& k = cpu::vec_kernels_for<T>(cpu::stream_output(3 * s.N * s.C * s.HxW * static_cast<int64_t>(sizeof(T))));
  const auto* dy = reinterpret_cast<const T*>(dY);
  const auto* x = reinterpret_cast<const T*>(X);
  auto* dx = reinterpret_cast<T*>(dX);
  const int64_t C = s.C, G = s.G, D = C / G, HxW = s.HxW;
  const int64_t Cp = cpu::padded_channels(C);  // per-channel arrays, one per sample, are padded
  const int64_t R = channels_last_chunk_rows(C);
  const int64_t nchunk = ceil_div(HxW, R);
  const int64_t tasks = s.N * nchunk;
  auto rows_of = [&](int64_t j) { return std::min(R, HxW - j * R); };

  // cc.scale is also the dx coefficient of dy; with an activation cc.scale and cc.bias recompute z.
  const ChannelCoeffs<acc_t> cc = channel_coeffs(s, p, mean, rstd);
  // As in backward_nchw: g stashed in dx when T is acc_t (no buffer for bf16 / fp16 here: the dx
  // pass runs after every chunk's sums).
  const bool stash_g = act && dx != nullptr && std::is_same<T, acc_t>::value;
  // 1. per chunk, per channel: ds and db, laid out [task][ds Cp | db Cp]
  std::vector<acc_t> partial(tasks * 2 * Cp);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / nchunk, j = t % nchunk;
      const int64_t offset = (n * HxW + j * R) * C;
      if (act) {
        k.grad_sums_act_cl[act - 1](dy + offset, x + offset, rows_of(j), C, &cc.mean[n * Cp],
                                    &cc.scale[n * Cp], &cc.bias[n * Cp], &partial[t * 2 * Cp],
                                    &partial[t * 2 * Cp + Cp],
                                    stash_g ? reinterpret_cast<acc_t*>(dx + offset) : nullptr);
      } else {
        k.grad_sums_cl(dy + offset, x + offset, rows_of(j), C, &cc.mean[n * Cp],
                       &partial[t * 2 * Cp], &partial[t * 2 * Cp + Cp]);
      }
    }
  });
  // 2. sum the chunks in order
  std::vector<acc_t> ds(s.N * C), db(s.N * C);
  at::parallel_for(0, s.N * C, 64, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin, n = begin / C, c = begin % C; nc < end; ++nc) {
      acc_t sum_ds = 0, sum_db = 0;
      for (int64_t j = 0; j < nchunk; ++j) {
        const acc_t* part = &partial[(n * nchunk + j) * 2 * Cp];
        sum_ds += part[c];
        sum_db += part[Cp + c];
      }
      ds[nc] = sum_ds;
      db[nc] = sum_db;
      if (++c == C) {
        c = 0;
        ++n;
      }
    }
  });
  // 3. per channel coefficients, then dx chunk by chunk
  if (dx != nullptr) {
    std::vector<acc_t> b_c(s.N * Cp), k_c(s.N * Cp);
    for (int64_t ng = 0; ng < s.N * G; ++ng) {
      const GroupBackwardCoeffs<acc_t> q = group_coeffs(s, p, ds.data(), db.data(), rstd, ng);
      const int64_t padded_first = (ng / G) * Cp + (ng % G) * D;
      for (int64_t d = 0; d < D; ++d) {
        b_c[padded_first + d] = q.xhat_coeff;
        k_c[padded_first + d] = q.bias;
      }
    }
    // Backwards over the same chunks as step 1, as in forward_channels_last.
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = end - 1; t >= begin; --t) {
        const int64_t n = t / nchunk, j = t % nchunk;
        const int64_t offset = (n * HxW + j * R) * C;
        if (stash_g) {
          // dx holds g: T is acc_t here
          k.grad_input_cl(dx + offset, x + offset, dx + offset, rows_of(j), C, &cc.scale[n * Cp],
                          &cc.mean[n * Cp], &cc.rstd[n * Cp], &b_c[n * Cp], &k_c[n * Cp]);
        } else if (act) {
          k.grad_input_act_cl[act - 1](dy + offset, x + offset, dx + offset, rows_of(j), C,
                                       &cc.scale[n * Cp], &cc.mean[n * Cp], &cc.rstd[n * Cp],
                                       &b_c[n * Cp], &k_c[n * Cp], &cc.bias[n * Cp]);
        } else {
          k.grad_input_cl(dy + offset, x + offset, dx + offset, rows_of(j), C, &cc.scale[n * Cp],
                          &cc.mean[n * Cp], &cc.rstd[n * Cp], &b_c[n * Cp], &k_c[n * Cp]);
        }
      }
    });
  }
  param_grads(s, ds.data(), db.data(), rstd, dgamma, dbeta);
}

} // namespace

void group_norm_forward_cpu_kernel(const GroupNormShape& shape, const at::Tensor& X,
                                   const at::Tensor& gamma, const at::Tensor& beta, double eps,
                                   const GroupNormFusion& fusion, at::Tensor& Y, at::Tensor& mean,
                                   at::Tensor& rstd) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, X.scalar_type(), "group_norm_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const Params<scalar_t, acc_t> p{const_data_or_null<acc_t>(gamma),
                                        const_data_or_null<acc_t>(beta)};
        auto run = shape.channels_last ? forward_channels_last<scalar_t> : forward_nchw<scalar_t>;
        const ForwardFusion<scalar_t> f{
            fusion.residual.defined() ? fusion.residual.const_data_ptr<scalar_t>() : nullptr,
            fusion.residual.defined() ? fusion.summed.data_ptr<scalar_t>() : nullptr,
            fusion.activation};
        run(shape, X.const_data_ptr<scalar_t>(), Y.data_ptr<scalar_t>(), p, eps,
            mean.data_ptr<acc_t>(), rstd.data_ptr<acc_t>(), f);
      });
}

void group_norm_backward_cpu_kernel(const GroupNormShape& shape, const at::Tensor& dY,
                                    const at::Tensor& X, const at::Tensor& mean,
                                    const at::Tensor& rstd, const at::Tensor& gamma,
                                    const at::Tensor& beta, int64_t activation, at::Tensor& dX,
                                    at::Tensor& dgamma, at::Tensor& dbeta) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, X.scalar_type(), "group_norm_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const Params<scalar_t, acc_t> p{const_data_or_null<acc_t>(gamma),
                                        const_data_or_null<acc_t>(beta)};
        auto run =
            shape.channels_last ? backward_channels_last<scalar_t> : backward_nchw<scalar_t>;
        run(shape, dY.const_data_ptr<scalar_t>(), X.const_data_ptr<scalar_t>(),
            dX.defined() ? dX.data_ptr<scalar_t>() : nullptr, p, mean.const_data_ptr<acc_t>(),
            rstd.const_data_ptr<acc_t>(), dgamma, dbeta, activation);
      });
}

} // namespace normext
