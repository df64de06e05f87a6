// Row-norm CUDA kernels (LayerNorm, RMSNorm; RMSNorm is mean == nullptr): raw pointers and the
// launch plan of layer_norm_launch.h, no torch.
//
// Forward:  one team (a warp for rows up to kWarpRowMaxElems, else the block) per row: corrected
//           two-pass statistics (sum, then centered sums, as the CPU's chunk_stats) or the sum of
//           squares, then y = (x - mean) * rstd * gamma + beta. The row's later passes hit L1/L2.
//           With a residual, the first pass writes summed = x + r and later passes read it back.
// Backward: dx: the same team per row, sums ds = sum g*dy*(x - mean), db = sum g*dy, then
//           dx = rstd * (g*dy - mean(g*dy) - xhat * mean(g*dy * xhat)).
//           dgamma / dbeta: per (row split, column) partials, then an in-order sum per column.
// Deterministic without atomics: fixed per-thread element order, fixed shuffle trees, warps in
// order, partials summed in order; the row splits depend on M alone.
#include <cstdint>
#include <limits>
#include <type_traits>

#include "common/welford.h"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/layer_norm_kernel.h"
#include "ops/cuda/layer_norm_launch.h"

namespace normext {
namespace cuda {
namespace row_norm {
namespace {

// W values of a row at element i, widened to acc_t (W == kVec<T>: one 16-byte load, aligned by
// the caller; W == 1: one element).
template <int W, typename T>
__device__ __forceinline__ void load_acc(const T* p, int64_t i, acc_type<T> (&out)[W]) {
  if constexpr (W == 1) {
    out[0] = to_acc(p[i]);
  } else {
    const Pack<T> pk = load_pack(p + i);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      out[k] = to_acc(pk.v[k]);
    }
  }
}

template <int W, typename T>
__device__ __forceinline__ void store_acc(T* p, int64_t i, const acc_type<T> (&in)[W]) {
  if constexpr (W == 1) {
    p[i] = from_acc<T>(in[0]);
  } else {
    Pack<T> pk;
#pragma unroll
    for (int k = 0; k < W; ++k) {
      pk.v[k] = from_acc<T>(in[k]);
    }
    store_pack(p + i, pk);
  }
}

// Calls f(i, W) for the elements of [0, n) thread `rank` of a team of `size` owns: an unaligned
// head one at a time, whole 16-byte vectors, then the tail. `vectorize` false: one at a time
// throughout. The mapping depends only on (head, n, rank, size), so every pass over a row gives a
// thread the same elements: what it wrote in one pass it reads back in the next, no sync needed.
template <typename T, typename F>
__device__ __forceinline__ void for_row(int64_t head, int64_t n, bool vectorize, int rank,
                                        int size, F&& f) {
  constexpr int V = kVec<T>;
  if (!vectorize) {
    for (int64_t i = rank; i < n; i += size) {
      f(i, std::integral_constant<int, 1>{});
    }
    return;
  }
  for (int64_t i = rank; i < head; i += size) {
    f(i, std::integral_constant<int, 1>{});
  }
  const int64_t nvec = (n - head) / V;
  for (int64_t v = rank; v < nvec; v += size) {
    f(head + v * V, std::integral_constant<int, V>{});
  }
  for (int64_t i = head + nvec * V + rank; i < n; i += size) {
    f(i, std::integral_constant<int, 1>{});
  }
}

// f(v) for each value of [0, n) thread `rank` of a team of `size` owns, widened to acc_type<T>, in
// for_row's order (a vector's values in index order).
template <typename T, typename F>
__device__ __forceinline__ void for_row_values(const T* p, int64_t head, int64_t n, bool vectorize,
                                               int rank, int size, F&& f) {
  for_row<T>(head, n, vectorize, rank, size, [&](int64_t i, auto w) {
    constexpr int W = decltype(w)::value;
    acc_type<T> v[W];
    load_acc<W>(p, i, v);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      f(v[k]);
    }
  });
}

// Sum over a team of kTeam threads (a warp, or the block), in a fixed order; every thread of the
// team gets the result. `shared` holds kBlockThreads / kWarpSize values per reduced quantity.
template <int kTeam, typename A>
__device__ __forceinline__ A team_sum(A v, A* shared) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_down_sync(kFullMask, v, offset);
  }
  if constexpr (kTeam == kWarpSize) {
    return __shfl_sync(kFullMask, v, 0);
  } else {
    constexpr int kWarps = kTeam / kWarpSize;
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    __syncthreads();  // the previous use of `shared` is over
    if (lane == 0) {
      shared[warp] = v;
    }
    __syncthreads();
    A total = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      total += shared[w];
    }
    return total;
  }
}

template <typename T>
__device__ __forceinline__ bool aligned_alike(const T* a, const void* b) {
  return b == nullptr || same_alignment(a, b);
}

// ---------------------------------------------------------------------------------------------
// Forward

template <typename T, int kTeam>
__global__ void __launch_bounds__(kBlockThreads)
    forward_kernel(const RowNormPlan plan, const T* __restrict__ x, const T* __restrict__ r,
                   T* __restrict__ y, T* __restrict__ s, const acc_type<T>* __restrict__ gamma,
                   const acc_type<T>* __restrict__ beta, acc_type<T>* __restrict__ mean_out,
                   acc_type<T>* __restrict__ rstd_out, double eps) {
  using A = acc_type<T>;
  __shared__ A shared[kBlockThreads / kWarpSize];
  __shared__ double shared_exact[kBlockThreads / kWarpSize];
  const int team = threadIdx.x / kTeam, rank = threadIdx.x % kTeam;
  const int64_t D = plan.D;
  const bool rms = mean_out == nullptr;
  // NB: the gamma / beta vectors are read per element (scalar) and hit L1: D values.
  for (int64_t step = 0;; ++step) {
    const int64_t row = team_row(plan, blockIdx.x, team, step);
    if (row >= plan.M) {
      break;
    }
    const T* xr = x + row * D;
    const T* rr = r != nullptr ? r + row * D : nullptr;
    T* sr = s != nullptr ? s + row * D : nullptr;
    T* yr = y + row * D;
    const T* src = sr != nullptr ? sr : xr;
    const int64_t head = aligned_head(reinterpret_cast<uint64_t>(xr), sizeof(T), D);
    const bool vec = aligned_alike(xr, rr) && aligned_alike(xr, sr) && aligned_alike(xr, yr);

    // Pass 1: sum (or sum of squares); with a residual, summed = x + r is written here. NB: every
    // later pass visits a thread's elements through the same for_row mapping, so it reads back
    // only what that thread wrote (no fence needed between the passes of a warp team).
    A acc = 0;
    for_row<T>(head, D, vec, rank, kTeam, [&](int64_t i, auto w) {
      constexpr int W = decltype(w)::value;
      A v[W];
      load_acc<W>(xr, i, v);
      if (rr != nullptr) {
        A rv[W];
        load_acc<W>(rr, i, rv);
#pragma unroll
        for (int k = 0; k < W; ++k) {
          v[k] = to_acc(from_acc<T>(v[k] + rv[k]));  // rounded to T, as torch's x + r
        }
        store_acc<W>(sr, i, v);
      }
#pragma unroll
      for (int k = 0; k < W; ++k) {
        acc += rms ? v[k] * v[k] : v[k];
      }
    });
    acc = team_sum<kTeam>(acc, shared);
    double mean = 0, rstd;
    if (rms) {
      double ss = acc;
      // The CPU's threshold (finalize_rms_norm): below it the squares may have underflowed.
      constexpr double kUnderflow =
          std::numeric_limits<A>::min() / std::numeric_limits<A>::epsilon();
      if (!isfinite(acc) || !(static_cast<double>(acc) >= kUnderflow)) {
        // fp32 squares overflowed or underflowed: the exact sum in double
        double e = 0;
        for_row_values(src, head, D, vec, rank, kTeam, [&](A v) {
          e += static_cast<double>(v) * static_cast<double>(v);
        });
        ss = team_sum<kTeam>(e, shared_exact);
      }
      rstd = 1.0 / sqrt(ss / static_cast<double>(D) + eps);
    } else {
      // Pass 2: centered sums, corrected (Chan, Golub and LeVeque): mean += c / D, M2 -= c^2 / D.
      const A m0 = acc / static_cast<A>(D);
      A q = 0, c = 0;
      for_row_values(src, head, D, vec, rank, kTeam, [&](A v) {
        const A d = v - m0;
        q += d * d;
        c += d;
      });
      q = team_sum<kTeam>(q, shared);
      c = team_sum<kTeam>(c, shared);
      WelfordStat<double> st{static_cast<double>(m0) + static_cast<double>(c) / D,
                             static_cast<double>(q) - static_cast<double>(c) * c / D, D};
      if (welford_overflowed(st)) {
        // |x| near the fp32 limit: exact statistics in double (inf / nan propagate)
        double e = 0;
        for_row_values(src, head, D, vec, rank, kTeam, [&](A v) {
          e += static_cast<double>(v);
        });
        const double em = team_sum<kTeam>(e, shared_exact) / D;
        double e2 = 0;
        for_row_values(src, head, D, vec, rank, kTeam, [&](A v) {
          const double d = static_cast<double>(v) - em;
          e2 += d * d;
        });
        st = {em, team_sum<kTeam>(e2, shared_exact), D};
      }
      mean = st.mean;
      rstd = welford_rstd(st, eps);
    }
    if (rank == 0) {
      if (!rms) {
        mean_out[row] = static_cast<A>(mean);
      }
      rstd_out[row] = static_cast<A>(rstd);
    }
    // Pass 3: normalize.
    const A am = static_cast<A>(mean), ar = static_cast<A>(rstd);
    for_row<T>(head, D, vec, rank, kTeam, [&](int64_t i, auto w) {
      constexpr int W = decltype(w)::value;
      A v[W];
      load_acc<W>(src, i, v);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        v[k] = (v[k] - am) * ar * param_or(gamma, i + k, A(1)) + param_or(beta, i + k, A(0));
      }
      store_acc<W>(yr, i, v);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Backward

// A rounded product the compiler may not fuse into a later add: gamma * dy must be the same value
// in the sums and in dx, or gg - mean(gg) (an fma of the exact product) misses its cancellation.
__device__ __forceinline__ float mul_rn(float a, float b) {
  return __fmul_rn(a, b);
}
__device__ __forceinline__ double mul_rn(double a, double b) {
  return __dmul_rn(a, b);
}

template <typename T, int kTeam>
__global__ void __launch_bounds__(kBlockThreads)
    grad_input_kernel(const RowNormPlan plan, const T* __restrict__ dy, const T* __restrict__ x,
                      const acc_type<T>* __restrict__ mean, const acc_type<T>* __restrict__ rstd,
                      const acc_type<T>* __restrict__ gamma, T* __restrict__ dx) {
  using A = acc_type<T>;
  __shared__ A shared[kBlockThreads / kWarpSize];
  const int team = threadIdx.x / kTeam, rank = threadIdx.x % kTeam;
  const int64_t D = plan.D;
  for (int64_t step = 0;; ++step) {
    const int64_t row = team_row(plan, blockIdx.x, team, step);
    if (row >= plan.M) {
      break;
    }
    const T* dyr = dy + row * D;
    const T* xr = x + row * D;
    T* dxr = dx + row * D;
    const int64_t head = aligned_head(reinterpret_cast<uint64_t>(xr), sizeof(T), D);
    const bool vec = aligned_alike(xr, dyr) && aligned_alike(xr, dxr);
    const A m = mean != nullptr ? mean[row] : A(0);
    const A rs = rstd[row];
    A ds = 0, db = 0;
    for_row<T>(head, D, vec, rank, kTeam, [&](int64_t i, auto w) {
      constexpr int W = decltype(w)::value;
      A g[W], v[W];
      load_acc<W>(dyr, i, g);
      load_acc<W>(xr, i, v);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const A gg = mul_rn(g[k], param_or(gamma, i + k, A(1)));
        ds += gg * (v[k] - m);
        db += gg;
      }
    });
    ds = team_sum<kTeam>(ds, shared);
    db = team_sum<kTeam>(db, shared);
    // dx = rstd * (gg - mean(gg) - xhat * mean(gg * xhat)), gg = gamma * dy (RMSNorm: no mean(gg)
    // term). NB: gg - mean(gg) in this order cancels exactly where it should (D = 1: dx = 0, as
    // torch's), where a folded a * dy + b * xhat + c leaves the rounding of two products.
    const A inv_d = A(1) / static_cast<A>(D);
    const A mean_gg_xhat = ds * rs * inv_d;
    const A mean_gg = mean != nullptr ? db * inv_d : A(0);
    for_row<T>(head, D, vec, rank, kTeam, [&](int64_t i, auto w) {
      constexpr int W = decltype(w)::value;
      A g[W], v[W];
      load_acc<W>(dyr, i, g);
      load_acc<W>(xr, i, v);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const A xhat = (v[k] - m) * rs;
        const A gg = mul_rn(g[k], param_or(gamma, i + k, A(1)));
        v[k] = rs * (gg - mean_gg - xhat * mean_gg_xhat);
      }
      store_acc<W>(dxr, i, v);
    });
  }
}

// partial[split][col] = sum over the split's rows of dy * xhat (dgamma) and dy (dbeta).
template <typename T>
__global__ void __launch_bounds__(kBlockThreads)
    param_partials_kernel(const RowNormPlan plan, const T* __restrict__ dy,
                          const T* __restrict__ x, const acc_type<T>* __restrict__ mean,
                          const acc_type<T>* __restrict__ rstd, acc_type<T>* __restrict__ partials) {
  using A = acc_type<T>;
  const int64_t tiles = plan.col_tiles * plan.row_splits;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const Tile t = param_tile(plan, tile);
    const int64_t col = t.col_begin + threadIdx.x;
    if (col >= t.col_end) {
      continue;
    }
    // NB: added in double: a split holds up to M / row_splits rows (thousands), one after the
    // other, whose fp32 sum would drift (the CPU adds these sums in double too).
    double dg = 0, db = 0;
    for (int64_t row = t.row_begin; row < t.row_end; ++row) {
      const A g = to_acc(dy[row * plan.D + col]);
      const A m = mean != nullptr ? mean[row] : A(0);
      dg += static_cast<double>(g * (to_acc(x[row * plan.D + col]) - m) * rstd[row]);
      db += static_cast<double>(g);
    }
    partials[t.split * plan.D + col] = static_cast<A>(dg);
    partials[plan.partials + t.split * plan.D + col] = static_cast<A>(db);
  }
}

template <typename A>
__global__ void __launch_bounds__(kBlockThreads)
    param_finalize_kernel(const RowNormPlan plan, const A* __restrict__ partials,
                          A* __restrict__ dgamma, A* __restrict__ dbeta) {
  for (int64_t col = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; col < plan.D;
       col += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    A dg = 0, db = 0;
    for (int64_t split = 0; split < plan.row_splits; ++split) {
      dg += partials[split * plan.D + col];
      db += partials[plan.partials + split * plan.D + col];
    }
    if (dgamma != nullptr) {
      dgamma[col] = dg;
    }
    if (dbeta != nullptr) {
      dbeta[col] = db;
    }
  }
}

template <typename T>
cudaError_t forward(const RowNormPlan& plan, const ForwardArgs& a, cudaStream_t stream) {
  using A = acc_type<T>;
  auto run = [&](auto kernel) {
    kernel<<<grid_of(plan.row_grid), kBlockThreads, 0, stream>>>(
        plan, static_cast<const T*>(a.x), static_cast<const T*>(a.residual), static_cast<T*>(a.y),
        static_cast<T*>(a.summed), static_cast<const A*>(a.gamma), static_cast<const A*>(a.beta),
        static_cast<A*>(a.mean), static_cast<A*>(a.rstd), a.eps);
  };
  if (plan.team_threads == kWarpSize) {
    run(forward_kernel<T, kWarpSize>);
  } else {
    run(forward_kernel<T, kBlockThreads>);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward(const RowNormPlan& plan, const BackwardArgs& a, cudaStream_t stream) {
  using A = acc_type<T>;
  const auto* dy = static_cast<const T*>(a.dy);
  const auto* x = static_cast<const T*>(a.x);
  const auto* mean = static_cast<const A*>(a.mean);
  const auto* rstd = static_cast<const A*>(a.rstd);
  if (a.dx != nullptr) {
    auto run = [&](auto kernel) {
      kernel<<<grid_of(plan.row_grid), kBlockThreads, 0, stream>>>(
          plan, dy, x, mean, rstd, static_cast<const A*>(a.gamma), static_cast<T*>(a.dx));
    };
    if (plan.team_threads == kWarpSize) {
      run(grad_input_kernel<T, kWarpSize>);
    } else {
      run(grad_input_kernel<T, kBlockThreads>);
    }
    NORMEXT_RETURN_IF_LAUNCH_FAILED();
  }
  if (a.dgamma != nullptr || a.dbeta != nullptr) {
    auto* partials = static_cast<A*>(a.partials);
    param_partials_kernel<T><<<grid_of(plan.param_grid), kBlockThreads, 0, stream>>>(
        plan, dy, x, mean, rstd, partials);
    NORMEXT_RETURN_IF_LAUNCH_FAILED();
    param_finalize_kernel<A><<<grid_of(plan.finalize_grid), kBlockThreads, 0, stream>>>(
        plan, partials, static_cast<A*>(a.dgamma), static_cast<A*>(a.dbeta));
    return cudaGetLastError();
  }
  return cudaSuccess;
}

} // namespace

cudaError_t launch_row_norm_forward(const RowNormPlan& plan, Scalar kind, const ForwardArgs& args,
                                    cudaStream_t stream) {
  return dispatch_scalar(kind, [&](auto tag) {
    return forward<typename decltype(tag)::type>(plan, args, stream);
  });
}

cudaError_t launch_row_norm_backward(const RowNormPlan& plan, Scalar kind,
                                     const BackwardArgs& args, cudaStream_t stream) {
  return dispatch_scalar(kind, [&](auto tag) {
    return backward<typename decltype(tag)::type>(plan, args, stream);
  });
}

} // namespace row_norm
} // namespace cuda
} // namespace normext
