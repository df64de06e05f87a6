// BatchNorm CUDA kernels: raw pointers and the launch plan of batch_norm_launch.h, no torch.
//
// Deterministic without atomics: each per-channel reduction is cut into pieces by the plan (a
// function of the shape and the SM count only); a piece is reduced in a fixed order (per-thread
// loops, then a fixed shared-memory tree) into its own partial, and a channel's partials are
// merged in split order in double by one thread. The same input on the same device model gives
// the same bits on every run.
//
// Forward:  stats (Welford partial per piece) -> finalize (Chan merge per channel, in double)
//           -> per-channel invstd and apply coefficients (train_finalize_kernel in training; the
//           op layer's ATen ops for the other callers) -> apply y = (x - m) * s + b.
// Backward: sums (ds = sum dy * (x - mean), db = sum dy per piece) -> finalize (sum per channel
//           in double) -> per-channel coefficients (train_grad_coeffs_kernel in training, with
//           common/welford.h's batch_norm_grad_coeffs, as the CPU) -> dx = a dy + b xhat + k.
#include <cstdint>
#include <type_traits>

#include "common/welford.h"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/batch_norm_kernel.h"
#include "ops/cuda/batch_norm_launch.h"

namespace normext {
namespace cuda {
namespace bn {
namespace {

// Fixed-order tree over `lanes` entries of `s` (a power of two), `width` apart, for the first
// `width` threads' columns: entry 0 of each column ends with the merge of the column.
template <typename Merge, typename V>
__device__ __forceinline__ void tree_reduce(V* s, int lanes, int width, Merge merge) {
  for (int stride = lanes / 2; stride > 0; stride /= 2) {
    __syncthreads();
    const int lane = static_cast<int>(threadIdx.x) / width;
    if (lane < stride) {
      s[threadIdx.x] = merge(s[threadIdx.x], s[threadIdx.x + stride * width]);
    }
  }
  __syncthreads();
}

// f(offset, len) for each run of channel c's elements [begin, end) (NCHW) that lies in one plane:
// `len` contiguous values from `offset`. One division per piece, none per element (a 64-bit
// division per element, as nchw_offset does, made the reductions compute-bound: 67 us for a
// 51 MB ResNet feature map on an H200, whose memory reads it in 14).
template <typename F>
__device__ __forceinline__ void for_each_plane_run(const BatchNormPlan& p, int64_t c,
                                                   int64_t begin, int64_t end, F&& f) {
  int64_t n = begin / p.HxW;
  int64_t j = begin - n * p.HxW;
  for (int64_t i = begin; i < end; ++n, j = 0) {
    const int64_t len = p.HxW - j < end - i ? p.HxW - j : end - i;
    f((n * p.C + c) * p.HxW + j, len);
    i += len;
  }
}

// The channel of consecutive elements from a flat offset: one division for the first (32-bit
// where the shape allows, as channel_of), then a counter per element. A channels-last run of
// one channel is one element long, an NCHW run a plane.
struct ChannelCursor {
  int64_t c, pos, run, C;
  __device__ __forceinline__ void next() {
    if (++pos == run) {
      pos = 0;
      if (++c == C) {
        c = 0;
      }
    }
  }
};

__device__ __forceinline__ ChannelCursor channel_cursor(const BatchNormPlan& p, int64_t offset) {
  const int64_t run = p.channels_last ? 1 : p.HxW;
  int64_t pos;
  if (offset <= UINT32_MAX && run <= UINT32_MAX) {
    const uint32_t o = static_cast<uint32_t>(offset), r = static_cast<uint32_t>(run);
    pos = o % r;
  } else {
    pos = offset % run;
  }
  return {channel_of(p, offset), pos, run, p.C};
}

// use(load(i)) for i = first, first + step, ... < end, in that order, with the loads of four
// steps issued before their uses: the uses form a dependent chain (a Welford step, a double
// add), which otherwise holds every load back until the previous use is done.
template <typename Load, typename Use>
__device__ __forceinline__ void strided_loads(int64_t first, int64_t end, int64_t step,
                                              Load&& load, Use&& use) {
  int64_t i = first;
  for (; i + 3 * step < end; i += 4 * step) {
    const auto v0 = load(i);
    const auto v1 = load(i + step);
    const auto v2 = load(i + 2 * step);
    const auto v3 = load(i + 3 * step);
    use(v0);
    use(v1);
    use(v2);
    use(v3);
  }
  for (; i < end; i += step) {
    use(load(i));
  }
}

// ---------------------------------------------------------------------------------------------
// Statistics

template <typename T>
__global__ void __launch_bounds__(kBlockThreads)
    stats_kernel(BatchNormPlan p, const T* __restrict__ x, WelfordStat<double>* partials) {
  using acc_t = acc_type<T>;
  __shared__ WelfordStat<double> shared[kBlockThreads];
  auto merge = [](WelfordStat<double> a, WelfordStat<double> b) { return welford_merge(a, b); };
  for (int64_t item = blockIdx.x; item < p.reduce_items; item += gridDim.x) {
    const int64_t tile = item_tile(p, item), split = item_split(p, item);
    const int64_t begin = piece_begin(p, split), end = piece_end(p, split);
    WelfordStat<acc_t> s{0, 0, 0};
    if (p.channels_last) {
      const int64_t c = tile * kChannelTile + threadIdx.x % kChannelTile;
      if (c < p.C) {
        strided_loads(
            begin + threadIdx.x / kChannelTile, end, kRowLanes,
            [&](int64_t r) { return to_acc(x[r * p.C + c]); },
            [&](acc_t v) { s = welford_add(s, v); });
      }
      shared[threadIdx.x] = widen(s);
      tree_reduce(shared, kRowLanes, kChannelTile, merge);
      if (threadIdx.x < kChannelTile && c < p.C) {
        partials[partial_index(p, c, split)] = shared[threadIdx.x];
      }
    } else {
      for_each_plane_run(p, tile, begin, end, [&](int64_t plane, int64_t len) {
        strided_loads(
            threadIdx.x, len, kBlockThreads, [&](int64_t j) { return to_acc(x[plane + j]); },
            [&](acc_t v) { s = welford_add(s, v); });
      });
      shared[threadIdx.x] = widen(s);
      tree_reduce(shared, kBlockThreads, 1, merge);
      if (threadIdx.x == 0) {
        partials[partial_index(p, tile, split)] = shared[0];
      }
    }
    __syncthreads();
  }
}

// Exact statistics in double (exact_stats_of) of channel c, by one thread, as the CPU's
// exact_channel_stats: only channels whose fp32 accumulation overflowed pay for it.
template <typename T>
__device__ WelfordStat<double> exact_channel_stats(const BatchNormPlan& p,
                                                   const T* __restrict__ x, int64_t c) {
  return exact_stats_of(p.N * p.HxW, [&](int64_t i) {
    return static_cast<double>(to_acc(x[p.channels_last ? i * p.C + c : nchw_offset(p, c, i)]));
  });
}

// The finalize kernels take one team per channel: a thread where a channel has few partials, a
// warp where it has many (channels-last: ~130 row splits per channel, which one thread merged
// one dependent load after the other in ~45 us on an H200), lanes strided, then a fixed tree.
constexpr int64_t kThreadFinalizeMaxSplits = 16;
constexpr int kWarpSize = 32;

template <int kTeam>
__device__ __forceinline__ int64_t first_team(int64_t block) {
  return block * (kBlockThreads / kTeam) + threadIdx.x / kTeam;
}

template <int kTeam>
__device__ __forceinline__ int64_t team_stride() {
  return static_cast<int64_t>(gridDim.x) * (kBlockThreads / kTeam);
}

template <typename T, int kTeam>
__global__ void __launch_bounds__(kBlockThreads)
    stats_finalize_kernel(BatchNormPlan p, const T* __restrict__ x,
                          const WelfordStat<double>* partials, double* mean, double* m2) {
  const int rank = static_cast<int>(threadIdx.x) % kTeam;
  // NB: a team is a whole warp and shares c, so the loop and the shuffles are warp-uniform.
  for (int64_t c = first_team<kTeam>(blockIdx.x); c < p.C; c += team_stride<kTeam>()) {
    WelfordStat<double> s{0, 0, 0};
    for (int64_t split = rank; split < p.splits; split += kTeam) {
      s = welford_merge(s, partials[partial_index(p, c, split)]);
    }
    if constexpr (kTeam > 1) {
      s = warp_merge_stat(s);
    }
    if (rank != 0) {
      continue;
    }
    if constexpr (!std::is_same<acc_type<T>, double>::value) {
      if (welford_overflowed(s)) {
        s = exact_channel_stats(p, x, c);
      }
    }
    mean[c] = s.mean;
    m2[c] = s.m2;
  }
}

// ---------------------------------------------------------------------------------------------
// Gradient sums

struct Sums {
  double ds;
  double db;
};

// One element's dy and x; add_to accumulates ds += dy * (x - mean), db += dy.
template <typename acc_t>
struct GradTerm {
  acc_t g, v;
  __device__ __forceinline__ void add_to(double& ds, double& db, acc_t mean) const {
    ds += static_cast<double>(g * (v - mean));
    db += static_cast<double>(g);
  }
};

template <typename T>
__global__ void __launch_bounds__(kBlockThreads)
    grad_sums_kernel(BatchNormPlan p, const T* __restrict__ dy, const T* __restrict__ x,
                     const acc_type<T>* __restrict__ mean, double* partials) {
  using acc_t = acc_type<T>;
  __shared__ Sums shared[kBlockThreads];
  auto merge = [](Sums a, Sums b) { return Sums{a.ds + b.ds, a.db + b.db}; };
  for (int64_t item = blockIdx.x; item < p.reduce_items; item += gridDim.x) {
    const int64_t tile = item_tile(p, item), split = item_split(p, item);
    const int64_t begin = piece_begin(p, split), end = piece_end(p, split);
    // NB: per-thread sums in double: a thread adds up to piece_elems / 256 terms (thousands),
    // which in fp32 would drift from the CPU's sums (added in double every kGradSumPiece values).
    double ds = 0, db = 0;
    int64_t c = tile;
    if (p.channels_last) {
      c = tile * kChannelTile + threadIdx.x % kChannelTile;
      if (c < p.C) {
        const acc_t m = mean[c];
        strided_loads(
            begin + threadIdx.x / kChannelTile, end, kRowLanes,
            [&](int64_t r) { return GradTerm<acc_t>{to_acc(dy[r * p.C + c]), to_acc(x[r * p.C + c])}; },
            [&](GradTerm<acc_t> t) { t.add_to(ds, db, m); });
      }
      shared[threadIdx.x] = Sums{ds, db};
      tree_reduce(shared, kRowLanes, kChannelTile, merge);
    } else {
      const acc_t m = mean[c];
      for_each_plane_run(p, c, begin, end, [&](int64_t plane, int64_t len) {
        strided_loads(
            threadIdx.x, len, kBlockThreads,
            [&](int64_t j) { return GradTerm<acc_t>{to_acc(dy[plane + j]), to_acc(x[plane + j])}; },
            [&](GradTerm<acc_t> t) { t.add_to(ds, db, m); });
      });
      shared[threadIdx.x] = Sums{ds, db};
      tree_reduce(shared, kBlockThreads, 1, merge);
    }
    const bool writer = p.channels_last ? (threadIdx.x < kChannelTile && c < p.C) : threadIdx.x == 0;
    if (writer) {
      const Sums s = shared[p.channels_last ? threadIdx.x : 0];
      partials[2 * partial_index(p, c, split)] = s.ds;
      partials[2 * partial_index(p, c, split) + 1] = s.db;
    }
    __syncthreads();
  }
}

template <typename acc_t, int kTeam>
__global__ void __launch_bounds__(kBlockThreads)
    grad_sums_finalize_kernel(BatchNormPlan p, const double* partials, acc_t* sum_dy_xmu,
                              acc_t* sum_dy) {
  const int rank = static_cast<int>(threadIdx.x) % kTeam;
  for (int64_t c = first_team<kTeam>(blockIdx.x); c < p.C; c += team_stride<kTeam>()) {
    double ds = 0, db = 0;
    for (int64_t split = rank; split < p.splits; split += kTeam) {
      ds += partials[2 * partial_index(p, c, split)];
      db += partials[2 * partial_index(p, c, split) + 1];
    }
    if constexpr (kTeam > 1) {
      warp_sum_pair(ds, db);
    }
    if (rank == 0) {
      sum_dy_xmu[c] = static_cast<acc_t>(ds);
      sum_dy[c] = static_cast<acc_t>(db);
    }
  }
}

// Blocks of the finalize kernels for a team of kTeam threads per channel.
template <int kTeam>
unsigned finalize_grid(const BatchNormPlan& p) {
  const int64_t blocks = ceil_div(p.C, kBlockThreads / kTeam);
  return static_cast<unsigned>(clamp64(blocks, 1, kMaxGridX));
}

// A double rounded to storage type R the way the CPU's static_cast<scalar_t>(double) does
// (through float for half and bfloat16).
template <typename R>
__device__ __forceinline__ R from_double(double v) {
  if constexpr (std::is_same<R, double>::value) {
    return v;
  } else {
    return from_acc<R>(static_cast<acc_type<R>>(v));
  }
}

// Channel c's running statistics after this step, stored as R.
template <typename R>
__device__ __forceinline__ void update_running(const TrainFinalizeArgs& a, int64_t c) {
  const auto* running_mean = static_cast<const R*>(a.running_mean);
  const auto* running_var = static_cast<const R*>(a.running_var);
  // The unbiased variance divides M2 by count - 1 (inf or nan for one value, as ATen).
  static_cast<R*>(a.new_mean)[c] = from_double<R>(running_stat_update(
      static_cast<double>(to_acc(running_mean[c])), a.mean[c], 1.0, a.momentum));
  static_cast<R*>(a.new_var)[c] = from_double<R>(
      running_stat_update(static_cast<double>(to_acc(running_var[c])), a.m2[c],
                          static_cast<double>(a.count - 1), a.momentum));
}

// One thread per channel: the training forward's invstd, apply coefficients and running
// statistics (see TrainFinalizeArgs), the values the op layer's ATen expressions compute.
template <typename T>
__global__ void __launch_bounds__(kBlockThreads)
    train_finalize_kernel(int64_t C, TrainFinalizeArgs a) {
  using acc_t = acc_type<T>;
  const auto* weight = static_cast<const acc_t*>(a.weight);
  const auto* bias = static_cast<const acc_t*>(a.bias);
  auto* invstd_out = static_cast<acc_t*>(a.invstd);
  auto* coeffs = static_cast<acc_t*>(a.coeffs);
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc_t invstd =
        static_cast<acc_t>(welford_rstd(WelfordStat<double>{a.mean[c], a.m2[c], a.count}, a.eps));
    invstd_out[c] = invstd;
    coeffs[c] = static_cast<acc_t>(a.mean[c]);
    coeffs[C + c] = weight != nullptr ? invstd * weight[c] : invstd;
    coeffs[2 * C + c] = bias != nullptr ? bias[c] : acc_t(0);
    if (a.running_mean != nullptr) {
      if (a.running_in_acc) {
        update_running<acc_t>(a, c);
      } else {
        update_running<T>(a, c);
      }
    }
  }
}

// One thread per channel: the training backward's dx coefficients (see TrainGradCoeffsArgs).
template <typename acc_t>
__global__ void __launch_bounds__(kBlockThreads)
    train_grad_coeffs_kernel(int64_t C, TrainGradCoeffsArgs g) {
  const auto* sum_dy_xmu = static_cast<const acc_t*>(g.sum_dy_xmu);
  const auto* sum_dy = static_cast<const acc_t*>(g.sum_dy);
  const auto* invstd = static_cast<const acc_t*>(g.invstd);
  const auto* weight = static_cast<const acc_t*>(g.weight);
  auto* coeffs = static_cast<acc_t*>(g.coeffs);
  const acc_t inv_count = static_cast<acc_t>(g.inv_count);
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const BatchNormGradCoeffs<acc_t> q = batch_norm_grad_coeffs<acc_t>(
        sum_dy_xmu[c], sum_dy[c], invstd[c], weight != nullptr ? weight[c] : acc_t(1), inv_count);
    coeffs[c] = q.a;
    coeffs[C + c] = q.b;
    coeffs[2 * C + c] = q.k;
  }
}

// ---------------------------------------------------------------------------------------------
// Elementwise

// Calls f(offset, W, cursor) over all `total` elements with a grid stride: 16-byte vectors of
// W = kVec<T> elements where every pointer is 16-byte aligned, then the tail (or everything,
// unaligned) one element at a time (W = 1). `cursor` gives the channel of element offset.
template <typename T, typename F>
__device__ __forceinline__ void for_each_element(const BatchNormPlan& p, bool aligned, F&& f) {
  constexpr int V = kVec<T>;
  const int64_t total = p.N * p.C * p.HxW;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t vectors = aligned ? total / V : 0;
  for (int64_t v = first; v < vectors; v += stride) {
    f(v * V, std::integral_constant<int, V>{}, channel_cursor(p, v * V));
  }
  for (int64_t o = vectors * V + first; o < total; o += stride) {
    f(o, std::integral_constant<int, 1>{}, channel_cursor(p, o));
  }
}

__device__ __forceinline__ bool aligned16(const void* a) {
  return (reinterpret_cast<uintptr_t>(a) & 15u) == 0;
}

template <typename T>
__global__ void __launch_bounds__(kBlockThreads)
    apply_kernel(BatchNormPlan p, const T* __restrict__ x, T* __restrict__ y,
                 const acc_type<T>* __restrict__ mean, const acc_type<T>* __restrict__ scale,
                 const acc_type<T>* __restrict__ shift) {
  using acc_t = acc_type<T>;
  for_each_element<T>(p, aligned16(x) && aligned16(y), [&](int64_t o, auto w, ChannelCursor cur) {
    constexpr int W = decltype(w)::value;
    acc_t v[W];
    load_acc<W>(x, o, v);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      v[k] = (v[k] - mean[cur.c]) * scale[cur.c] + shift[cur.c];
      cur.next();
    }
    store_acc<W>(y, o, v);
  });
}

template <typename T>
__global__ void __launch_bounds__(kBlockThreads)
    grad_input_kernel(BatchNormPlan p, const T* __restrict__ dy, const T* __restrict__ x,
                      T* __restrict__ dx, const acc_type<T>* __restrict__ a,
                      const acc_type<T>* __restrict__ mean, const acc_type<T>* __restrict__ rstd,
                      const acc_type<T>* __restrict__ b, const acc_type<T>* __restrict__ k) {
  using acc_t = acc_type<T>;
  const bool aligned = aligned16(dy) && aligned16(x) && aligned16(dx);
  for_each_element<T>(p, aligned, [&](int64_t o, auto w, ChannelCursor cur) {
    constexpr int W = decltype(w)::value;
    acc_t g[W], v[W];
    load_acc<W>(dy, o, g);
    load_acc<W>(x, o, v);
#pragma unroll
    for (int e = 0; e < W; ++e) {
      const int64_t c = cur.c;
      const acc_t xhat = (v[e] - mean[c]) * rstd[c];
      v[e] = a[c] * g[e] + b[c] * xhat + k[c];
      cur.next();
    }
    store_acc<W>(dx, o, v);
  });
}

template <typename T>
cudaError_t stats(const BatchNormPlan& p, const StatsArgs& args, cudaStream_t stream) {
  stats_kernel<T><<<static_cast<unsigned>(p.reduce_grid), kBlockThreads, 0, stream>>>(
      p, static_cast<const T*>(args.x), args.partials);
  NORMEXT_RETURN_IF_LAUNCH_FAILED();
  if (p.splits > kThreadFinalizeMaxSplits) {
    stats_finalize_kernel<T, kWarpSize><<<finalize_grid<kWarpSize>(p), kBlockThreads, 0, stream>>>(
        p, static_cast<const T*>(args.x), args.partials, args.mean, args.m2);
  } else {
    stats_finalize_kernel<T, 1><<<finalize_grid<1>(p), kBlockThreads, 0, stream>>>(
        p, static_cast<const T*>(args.x), args.partials, args.mean, args.m2);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t apply(const BatchNormPlan& p, const ApplyArgs& args, cudaStream_t stream) {
  using acc_t = acc_type<T>;
  apply_kernel<T><<<static_cast<unsigned>(p.elem_grid), kBlockThreads, 0, stream>>>(
      p, static_cast<const T*>(args.x), static_cast<T*>(args.y),
      static_cast<const acc_t*>(args.mean), static_cast<const acc_t*>(args.scale),
      static_cast<const acc_t*>(args.shift));
  return cudaGetLastError();
}

template <typename T>
cudaError_t grad_sums(const BatchNormPlan& p, const GradSumsArgs& args, cudaStream_t stream) {
  using acc_t = acc_type<T>;
  grad_sums_kernel<T><<<static_cast<unsigned>(p.reduce_grid), kBlockThreads, 0, stream>>>(
      p, static_cast<const T*>(args.dy), static_cast<const T*>(args.x),
      static_cast<const acc_t*>(args.mean), args.partials);
  NORMEXT_RETURN_IF_LAUNCH_FAILED();
  auto* sum_dy_xmu = static_cast<acc_t*>(args.sum_dy_xmu);
  auto* sum_dy = static_cast<acc_t*>(args.sum_dy);
  if (p.splits > kThreadFinalizeMaxSplits) {
    grad_sums_finalize_kernel<acc_t, kWarpSize>
        <<<finalize_grid<kWarpSize>(p), kBlockThreads, 0, stream>>>(p, args.partials, sum_dy_xmu,
                                                                    sum_dy);
  } else {
    grad_sums_finalize_kernel<acc_t, 1><<<finalize_grid<1>(p), kBlockThreads, 0, stream>>>(
        p, args.partials, sum_dy_xmu, sum_dy);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t grad_input(const BatchNormPlan& p, const GradInputArgs& args, cudaStream_t stream) {
  using acc_t = acc_type<T>;
  grad_input_kernel<T><<<static_cast<unsigned>(p.elem_grid), kBlockThreads, 0, stream>>>(
      p, static_cast<const T*>(args.dy), static_cast<const T*>(args.x), static_cast<T*>(args.dx),
      static_cast<const acc_t*>(args.a), static_cast<const acc_t*>(args.mean),
      static_cast<const acc_t*>(args.rstd), static_cast<const acc_t*>(args.b),
      static_cast<const acc_t*>(args.k));
  return cudaGetLastError();
}

template <typename T>
cudaError_t train_finalize(const BatchNormPlan& p, const TrainFinalizeArgs& args,
                           cudaStream_t stream) {
  train_finalize_kernel<T>
      <<<static_cast<unsigned>(p.finalize_grid), kBlockThreads, 0, stream>>>(p.C, args);
  return cudaGetLastError();
}

template <typename T>
cudaError_t train_grad_coeffs(const BatchNormPlan& p, const TrainGradCoeffsArgs& args,
                              cudaStream_t stream) {
  train_grad_coeffs_kernel<acc_type<T>>
      <<<static_cast<unsigned>(p.finalize_grid), kBlockThreads, 0, stream>>>(p.C, args);
  return cudaGetLastError();
}

} // namespace

cudaError_t launch_batch_norm_train_finalize(const BatchNormPlan& plan, ScalarKind kind,
                                             const TrainFinalizeArgs& args, cudaStream_t stream) {
  return dispatch_scalar(kind, [&](auto tag) {
    return train_finalize<typename decltype(tag)::type>(plan, args, stream);
  });
}
cudaError_t launch_batch_norm_train_grad_coeffs(const BatchNormPlan& plan, ScalarKind kind,
                                                const TrainGradCoeffsArgs& args,
                                                cudaStream_t stream) {
  return dispatch_scalar(kind, [&](auto tag) {
    return train_grad_coeffs<typename decltype(tag)::type>(plan, args, stream);
  });
}
cudaError_t launch_batch_norm_stats(const BatchNormPlan& plan, ScalarKind kind,
                                    const StatsArgs& args, cudaStream_t stream) {
  return dispatch_scalar(kind, [&](auto tag) {
    return stats<typename decltype(tag)::type>(plan, args, stream);
  });
}
cudaError_t launch_batch_norm_apply(const BatchNormPlan& plan, ScalarKind kind,
                                    const ApplyArgs& args, cudaStream_t stream) {
  return dispatch_scalar(kind, [&](auto tag) {
    return apply<typename decltype(tag)::type>(plan, args, stream);
  });
}
cudaError_t launch_batch_norm_grad_sums(const BatchNormPlan& plan, ScalarKind kind,
                                        const GradSumsArgs& args, cudaStream_t stream) {
  return dispatch_scalar(kind, [&](auto tag) {
    return grad_sums<typename decltype(tag)::type>(plan, args, stream);
  });
}
cudaError_t launch_batch_norm_grad_input(const BatchNormPlan& plan, ScalarKind kind,
                                         const GradInputArgs& args, cudaStream_t stream) {
  return dispatch_scalar(kind, [&](auto tag) {
    return grad_input<typename decltype(tag)::type>(plan, args, stream);
  });
}

} // namespace bn
} // namespace cuda
} // namespace normext
