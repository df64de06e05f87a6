// LayerNorm and RMSNorm CPU kernels ("row norms": M rows of D contiguous values, per-element
// affine over D): how the work is cut into tasks and statistics merged. The vectorized loops live
// in vec_kernels_impl.h. RMSNorm is the same code with mean == nullptr: no centering.
//
// Every row is computed by one task from its own data only, in a fixed order: results are bitwise
// identical for any thread count. Rows longer than kChunkElems are, by definition, the in-order
// Chan merge (LayerNorm) or in-order sum (RMSNorm) of kChunkElems-element chunk statistics, whether
// one task or several compute the chunks. dgamma / dbeta are column sums over blocks of
// rows_per_block(M, D) rows (a function of the shape alone), reduced over the blocks in block order.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/welford.h"
#include "ops/cpu/kernel_common.h"
#include "ops/cpu/vec_kernels.h"
#include "ops/layer_norm.h"

namespace normext {
namespace {

using cpu::VecKernels;

constexpr int64_t kChunkElems = cpu::kMaxChunkElems;
// NB: rows up to this length are one task each: the row stays in L1/L2 (64 KB of fp32) between
// its statistics and its normalize pass (forward), its sums and its dx pass (backward), so memory
// sees a single read of the input and a single write of the output. Longer rows are split into
// chunks spread over the threads (few long rows would otherwise leave threads idle).
constexpr int64_t kInCacheRowElems = 4 * kChunkElems;
// Backward: each block of rows accumulates its own dgamma / dbeta partial of D values, in L1/L2.
// A block covers at least kBlockElems elements (the partial's zeroing and final sum stay a few
// percent of the block's work) and there are at most kMaxBlocks blocks (the partials stay a few
// percent of the input: 64 x 2 x D values). Both depend on the shape alone, never on threads.
constexpr int64_t kBlockElems = 32 * 1024;
constexpr int64_t kMaxBlocks = 64;

int64_t rows_per_block(int64_t M, int64_t D) {
  return std::max({int64_t{1}, kBlockElems / D, ceil_div(M, kMaxBlocks)});
}

// Exact statistics in double (exact_stats_of) of n contiguous values.
template <typename scalar_t>
WelfordStat<double> exact_stats(const scalar_t* x, int64_t n) {
  return exact_stats_of(n, [&](int64_t i) { return static_cast<double>(x[i]); });
}

template <typename scalar_t>
double exact_sum_squares(const scalar_t* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(x[i]);
    s += v * v;
  }
  return s;
}

// Statistics of one row from its chunk partials (merged in double, in chunk order, as GroupNorm's
// groups are). LayerNorm: (count, mean, M2) partials. RMSNorm: sums of squares in `m2`.
struct RowStats {
  double mean;
  double rstd;
};

template <typename scalar_t>
RowStats finalize_layer_norm(WelfordStat<double> stat, const scalar_t* row, double eps) {
  if (welford_overflowed(stat)) {
    stat = exact_stats(row, stat.count);
  }
  return {stat.mean, welford_rstd(stat, eps)};
}

// NB: also recomputed when the accumulated squares may have underflowed (|x| below ~1e-16 in
// fp32): sum 0 with nonzero x would give rstd = 1 / sqrt(eps) instead of the exact value. Rows of
// zeros take this (scalar) path too; they are rare outside padding.
template <typename acc_t, typename scalar_t>
RowStats finalize_rms_norm(double sum_squares, const scalar_t* row, int64_t D, double eps) {
  constexpr double kUnderflow =
      std::numeric_limits<acc_t>::min() / std::numeric_limits<acc_t>::epsilon();
  if (!std::isfinite(sum_squares) || !(sum_squares >= kUnderflow)) {
    sum_squares = exact_sum_squares(row, D);
  }
  return {0.0, 1.0 / std::sqrt(sum_squares / static_cast<double>(D) + eps)};
}

// ---------------------------------------------------------------------------------------------
// Forward

template <typename scalar_t>
void forward_impl(const RowNormShape& s, const scalar_t* X, const scalar_t* R, scalar_t* Y,
                  scalar_t* S, const at::opmath_type<scalar_t>* gamma,
                  const at::opmath_type<scalar_t>* beta, double eps,
                  at::opmath_type<scalar_t>* mean, at::opmath_type<scalar_t>* rstd) {
  using T = typename Storage<scalar_t>::type;
  using acc_t = acc_type<T>;
  static_assert(std::is_same<acc_t, at::opmath_type<scalar_t>>::value, "accumulation type");
  // x and y, plus r and s with a residual
  const int64_t tensors = R != nullptr ? 4 : 2;
  const VecKernels<T>& k = cpu::vec_kernels_for<T>(
      cpu::stream_output(tensors * s.M * s.D * static_cast<int64_t>(sizeof(T))));
  const bool rms = mean == nullptr;
  const int64_t M = s.M, D = s.D;
  const auto* x = reinterpret_cast<const T*>(X);
  const auto* r = reinterpret_cast<const T*>(R);
  auto* y = reinterpret_cast<T*>(Y);
  auto* sum = reinterpret_cast<T*>(S);
  const int64_t nchunk = ceil_div(D, kChunkElems);
  auto chunk_len = [&](int64_t j) { return std::min(kChunkElems, D - j * kChunkElems); };

  // The values to normalize at element offset `at`: x, or x + r written to S first.
  auto source = [&](int64_t at, int64_t n) -> const T* {
    if (r == nullptr) {
      return x + at;
    }
    k.add_values(x + at, r + at, sum + at, n);
    return sum + at;
  };
  auto source_row = [&](int64_t row) -> const scalar_t* {
    return (r == nullptr ? X : S) + row * D;
  };
  // Partial statistics of one chunk: (mean, M2, count), or (-, sum of squares, count) for RMS.
  auto chunk_stat = [&](const T* src, int64_t n) -> WelfordStat<double> {
    if (rms) {
      return {0.0, static_cast<double>(k.sum_squares(src, n)), n};
    }
    double m;
    acc_t m2;
    k.chunk_stats(src, n, &m, &m2);
    return {m, static_cast<double>(m2), n};
  };
  auto merge = [&](WelfordStat<double> a, WelfordStat<double> b) -> WelfordStat<double> {
    if (rms) {
      return {0.0, a.m2 + b.m2, a.count + b.count};
    }
    return welford_merge(a, b);
  };
  auto finalize = [&](int64_t row, WelfordStat<double> stat) {
    const RowStats st = rms ? finalize_rms_norm<acc_t>(stat.m2, source_row(row), D, eps)
                            : finalize_layer_norm(stat, source_row(row), eps);
    if (!rms) {
      mean[row] = static_cast<acc_t>(st.mean);
    }
    rstd[row] = static_cast<acc_t>(st.rstd);
  };
  auto normalize = [&](int64_t row, int64_t at, int64_t n) {
    const T* src = (r == nullptr ? x : sum) + row * D + at;
    k.normalize_row(src, y + row * D + at, n, rms ? acc_t(0) : mean[row], rstd[row],
                    gamma == nullptr ? nullptr : gamma + at, beta == nullptr ? nullptr : beta + at);
  };

  if (D <= kInCacheRowElems) {
    const int64_t grain = std::max<int64_t>(1, kBlockElems / D);
    at::parallel_for(0, M, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        WelfordStat<double> stat{0, 0, 0};
        for (int64_t j = 0; j < nchunk; ++j) {
          const int64_t at = row * D + j * kChunkElems;
          stat = merge(stat, chunk_stat(source(at, chunk_len(j)), chunk_len(j)));
        }
        finalize(row, stat);
        normalize(row, 0, D);
      }
    });
    return;
  }
  // Long rows: chunk statistics over every thread, in-order merges, then normalize chunk by chunk.
  std::vector<WelfordStat<double>> chunks(M * nchunk);
  at::parallel_for(0, M * nchunk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = t / nchunk, j = t % nchunk;
      chunks[t] = chunk_stat(source(row * D + j * kChunkElems, chunk_len(j)), chunk_len(j));
    }
  });
  at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      WelfordStat<double> stat{0, 0, 0};
      for (int64_t j = 0; j < nchunk; ++j) {
        stat = merge(stat, chunks[row * nchunk + j]);
      }
      finalize(row, stat);
    }
  });
  // NB: walked backwards, so the chunks each thread read last (still in its L2) come first.
  at::parallel_for(0, M * nchunk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = end - 1; t >= begin; --t) {
      const int64_t row = t / nchunk, j = t % nchunk;
      normalize(row, j * kChunkElems, chunk_len(j));
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward

// dx = rstd * g * dy + b * xhat + c, with (b, c) from the row sums (common/welford.h): the same
// formula as GroupNorm's, a group being one row. RMSNorm: mean 0 and c = 0.
template <typename acc_t>
GroupBackwardCoeffs<acc_t> row_coeffs(double ds, double db, acc_t rstd, int64_t D, bool rms) {
  const GroupBackwardCoeffs<acc_t> q =
      group_backward_coeffs(static_cast<acc_t>(ds), static_cast<acc_t>(db), rstd, D);
  return {q.xhat_coeff, rms ? acc_t(0) : q.bias};
}

template <typename scalar_t>
void backward_impl(const RowNormShape& s, const scalar_t* dY, const scalar_t* X, scalar_t* dX,
                   const at::opmath_type<scalar_t>* gamma, const at::opmath_type<scalar_t>* mean,
                   const at::opmath_type<scalar_t>* rstd, at::opmath_type<scalar_t>* dgamma,
                   at::opmath_type<scalar_t>* dbeta) {
  using T = typename Storage<scalar_t>::type;
  using acc_t = acc_type<T>;
  const VecKernels<T>& k = cpu::vec_kernels_for<T>(
      dX != nullptr && cpu::stream_output(3 * s.M * s.D * static_cast<int64_t>(sizeof(T))));
  const bool rms = mean == nullptr;
  const int64_t M = s.M, D = s.D;
  const auto* dy = reinterpret_cast<const T*>(dY);
  const auto* x = reinterpret_cast<const T*>(X);
  auto* dx = reinterpret_cast<T*>(dX);
  const bool params = dgamma != nullptr || dbeta != nullptr;
  const int64_t nchunk = ceil_div(D, kChunkElems);
  auto chunk_len = [&](int64_t j) { return std::min(kChunkElems, D - j * kChunkElems); };
  auto mean_of = [&](int64_t row) { return rms ? acc_t(0) : mean[row]; };

  std::vector<acc_t> ones;
  if (gamma == nullptr) {
    ones.assign(D, acc_t(1));
    gamma = ones.data();
  }
  const int64_t Rb = rows_per_block(M, D);
  const int64_t nblocks = ceil_div(M, Rb);
  // [block][dgamma D | dbeta D], each block's written by the tasks that own its rows
  std::vector<acc_t> partial(params ? nblocks * 2 * D : 0);
  auto acc_of = [&](int64_t block, int64_t at) -> std::pair<acc_t*, acc_t*> {
    if (!params) {
      return {nullptr, nullptr};
    }
    acc_t* base = partial.data() + block * 2 * D;
    return {base + at, base + D + at};
  };
  auto chunk_sums = [&](int64_t row, int64_t at, int64_t n) -> std::pair<double, double> {
    acc_t ds, db;
    k.row_grad_sums(dy + row * D + at, x + row * D + at, gamma + at, n, mean_of(row), &ds, &db);
    return {static_cast<double>(ds), static_cast<double>(db)};
  };
  // dx and the partials of rows [first, first + rows) (rows <= kMaxGradRows), elements
  // [at, at + n), with the rows' coefficients q[0 .. rows).
  auto grad_input = [&](int64_t first, int64_t rows, int64_t at, int64_t n,
                        const GroupBackwardCoeffs<acc_t>* q, std::pair<acc_t*, acc_t*> acc) {
    acc_t m[cpu::kMaxGradRows], rs[cpu::kMaxGradRows], b[cpu::kMaxGradRows],
        c[cpu::kMaxGradRows];
    for (int64_t r = 0; r < rows; ++r) {
      m[r] = mean_of(first + r);
      rs[r] = rstd[first + r];
      b[r] = q[r].xhat_coeff;
      c[r] = q[r].bias;
    }
    const int64_t offset = first * D + at;
    k.row_grad_input(dy + offset, x + offset, gamma + at, dx == nullptr ? nullptr : dx + offset,
                     rows, D, n, m, rs, b, c, acc.first, acc.second);
  };
  auto row_coeffs_of = [&](int64_t row) {
    double ds = 0, db = 0;
    for (int64_t j = 0; j < nchunk; ++j) {
      const auto sums = chunk_sums(row, j * kChunkElems, chunk_len(j));
      ds += sums.first;
      db += sums.second;
    }
    return row_coeffs(ds, db, rstd[row], D, rms);
  };

  if (D <= kInCacheRowElems) {
    // One task per block of rows: a row's sums and its dx pass run while it is in cache.
    at::parallel_for(0, nblocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        if (params) {
          std::memset(partial.data() + block * 2 * D, 0, 2 * D * sizeof(acc_t));
        }
        const int64_t end_row = std::min(M, (block + 1) * Rb);
        for (int64_t first = block * Rb; first < end_row; first += cpu::kMaxGradRows) {
          const int64_t rows = std::min(cpu::kMaxGradRows, end_row - first);
          GroupBackwardCoeffs<acc_t> q[cpu::kMaxGradRows] = {};
          if (dx != nullptr) {
            for (int64_t r = 0; r < rows; ++r) {
              q[r] = row_coeffs_of(first + r);
            }
          }
          grad_input(first, rows, 0, D, q, acc_of(block, 0));
        }
      }
    });
  } else {
    // Long rows: chunk sums over every thread, in-order row sums, then dx and the partials over
    // (block of rows, column chunk) tasks.
    std::vector<GroupBackwardCoeffs<acc_t>> coeffs(M, GroupBackwardCoeffs<acc_t>{0, 0});
    if (dx != nullptr) {
      std::vector<std::pair<double, double>> sums(M * nchunk);
      at::parallel_for(0, M * nchunk, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t j = t % nchunk;
          sums[t] = chunk_sums(t / nchunk, j * kChunkElems, chunk_len(j));
        }
      });
      for (int64_t row = 0; row < M; ++row) {
        double ds = 0, db = 0;
        for (int64_t j = 0; j < nchunk; ++j) {
          ds += sums[row * nchunk + j].first;
          db += sums[row * nchunk + j].second;
        }
        coeffs[row] = row_coeffs(ds, db, rstd[row], D, rms);
      }
    }
    at::parallel_for(0, nblocks * nchunk, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t block = t / nchunk, j = t % nchunk;
        const int64_t at = j * kChunkElems, n = chunk_len(j);
        const auto acc = acc_of(block, at);
        if (params) {
          std::memset(acc.first, 0, n * sizeof(acc_t));
          std::memset(acc.second, 0, n * sizeof(acc_t));
        }
        const int64_t end_row = std::min(M, (block + 1) * Rb);
        for (int64_t first = block * Rb; first < end_row; first += cpu::kMaxGradRows) {
          grad_input(first, std::min(cpu::kMaxGradRows, end_row - first), at, n, &coeffs[first],
                     acc);
        }
      }
    });
  }
  if (!params) {
    return;
  }
  // Column sums of the block partials, in block order.
  at::parallel_for(0, nchunk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t at = j * kChunkElems, n = chunk_len(j);
      for (acc_t* out : {dgamma, dbeta}) {
        if (out == nullptr) {
          continue;
        }
        const int64_t offset = out == dgamma ? 0 : D;
        std::fill(out + at, out + at + n, acc_t(0));
        for (int64_t block = 0; block < nblocks; ++block) {
          const acc_t* part = partial.data() + block * 2 * D + offset + at;
          for (int64_t i = 0; i < n; ++i) {
            out[at + i] += part[i];
          }
        }
      }
    }
  });
}

} // namespace

void row_norm_forward_cpu_kernel(const RowNormShape& shape, const at::Tensor& X,
                                 const at::Tensor& R, const at::Tensor& gamma,
                                 const at::Tensor& beta, double eps, at::Tensor& Y, at::Tensor& S,
                                 at::Tensor& mean, at::Tensor& rstd) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, X.scalar_type(), "row_norm_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        forward_impl<scalar_t>(shape, X.const_data_ptr<scalar_t>(),
                               const_data_or_null<scalar_t>(R), Y.data_ptr<scalar_t>(),
                               data_or_null<scalar_t>(S), const_data_or_null<acc_t>(gamma),
                               const_data_or_null<acc_t>(beta), eps, data_or_null<acc_t>(mean),
                               rstd.data_ptr<acc_t>());
      });
}

void row_norm_backward_cpu_kernel(const RowNormShape& shape, const at::Tensor& dY,
                                  const at::Tensor& X, const at::Tensor& mean,
                                  const at::Tensor& rstd, const at::Tensor& gamma,
                                  at::Tensor& dX, at::Tensor& dgamma, at::Tensor& dbeta) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, X.scalar_type(), "row_norm_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        backward_impl<scalar_t>(shape, dY.const_data_ptr<scalar_t>(),
                                X.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(dX),
                                const_data_or_null<acc_t>(gamma), const_data_or_null<acc_t>(mean),
                                rstd.const_data_ptr<acc_t>(), data_or_null<acc_t>(dgamma),
                                data_or_null<acc_t>(dbeta));
      });
}

} // namespace normext
