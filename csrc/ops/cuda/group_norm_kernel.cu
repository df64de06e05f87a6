// GroupNorm CUDA kernels: raw pointers and the launch plan of group_norm_launch.h, no torch.
//
// Deterministic without atomics: every reduction is cut into pieces by the plan (a function of the
// shape and the SM count only), each piece is reduced in a fixed order (per-thread loops, then a
// fixed shuffle tree, then warps in order) into its own partial, and partials are merged in a
// fixed order. The same input on the same device model (SM count) gives the same bits on every
// run.
//
// Forward:  stats (partial Welford per piece) -> finalize (merge per group in double, mean / rstd,
//           per-(n, c) mean / scale / bias) -> apply  y = (x - mean) * scale + bias.
// Backward: sums (partial ds = sum dy * (x - mean), db = sum dy) -> per (n, c) totals ->
//           per group coefficients (group_backward_coeffs) -> dgamma / dbeta (sum over n in order)
//           and dx = rstd * gamma * dy + xhat_coeff * xhat + bias.
#include <cstdint>

#include "common/welford.h"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/group_norm_kernel.h"
#include "ops/cuda/group_norm_launch.h"

namespace normext {
namespace cuda {
namespace {

// Visits the elements [0, n) of a contiguous span that thread `rank` of a team of `size` owns:
// first the unaligned head one at a time, then aligned whole vectors, then the tail. The order
// each thread visits its elements in is fixed by (p, n, rank, size).
template <typename T, typename Scalar, typename Vector>
__device__ __forceinline__ void for_span(const T* p, int64_t n, bool vectorize, int rank, int size,
                                         Scalar scalar, Vector vector) {
  constexpr int V = kVec<T>;
  const int64_t head =
      vectorize ? misaligned_head(reinterpret_cast<uint64_t>(p), sizeof(T), V, n) : n;
  for (int64_t i = rank; i < head; i += size) {
    scalar(i);
  }
  const int64_t nvec = (n - head) / V;
  for (int64_t v = rank; v < nvec; v += size) {
    vector(head + v * V);
  }
  for (int64_t i = head + nvec * V + rank; i < n; i += size) {
    scalar(i);
  }
}

// ---------------------------------------------------------------------------------------------
// Reductions

// Merge of a team's statistics (one thread, a warp, or the whole block), valid in the team's
// rank 0. A block team calls it uniformly (it synchronizes the block).
template <int kTeam>
__device__ __forceinline__ WelfordStat<double> team_merge_stat(WelfordStat<double> s,
                                                               WelfordStat<double>* smem) {
  constexpr int kTeamWarps = kTeam / kWarpSize;
  if constexpr (kTeam >= kWarpSize) {
    s = warp_merge_stat(s);
  }
  if constexpr (kTeamWarps > 1) {
    const int warp = threadIdx.x / kWarpSize;
    if (threadIdx.x % kWarpSize == 0) {
      smem[warp] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < kTeamWarps; ++w) {
        s = welford_merge(s, smem[w]);
      }
    }
    __syncthreads();
  }
  return s;
}

template <int kTeam, typename acc_t>
__device__ __forceinline__ void team_sum_pair(acc_t& a, acc_t& b, acc_t* smem) {
  constexpr int kTeamWarps = kTeam / kWarpSize;
  if constexpr (kTeam >= kWarpSize) {
    warp_sum_pair(a, b);
  }
  if constexpr (kTeamWarps > 1) {
    const int warp = threadIdx.x / kWarpSize;
    if (threadIdx.x % kWarpSize == 0) {
      smem[2 * warp] = a;
      smem[2 * warp + 1] = b;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < kTeamWarps; ++w) {
        a += smem[2 * w];
        b += smem[2 * w + 1];
      }
    }
    __syncthreads();
  }
}

// NCHW statistics: one partial per piece of a group (D * HxW contiguous elements).
// NB: each thread folds a whole 16-byte vector into its running statistics with one Chan merge
// (one division per vector, not per element), accumulating in acc_t; teams merge in double.
template <typename T, int kTeam>
__global__ void __launch_bounds__(kBlockThreads)
    group_stats_kernel(const T* __restrict__ x, ReducePlan plan,
                       WelfordStat<double>* __restrict__ partials) {
  using acc_t = acc_type<T>;
  constexpr int kTeamsPerBlock = kBlockThreads / kTeam;
  constexpr int V = kVec<T>;
  __shared__ WelfordStat<double> smem[kBlockWarps];
  const int rank = threadIdx.x % kTeam;
  const int team = threadIdx.x / kTeam;
  for (int64_t piece = static_cast<int64_t>(blockIdx.x) * kTeamsPerBlock + team;
       piece < plan.pieces; piece += static_cast<int64_t>(gridDim.x) * kTeamsPerBlock) {
    const Range r = reduce_piece(plan, piece);
    const T* span = x + r.segment * plan.length + r.begin;
    WelfordStat<acc_t> s{acc_t(0), acc_t(0), 0};
    for_span(
        span, r.end - r.begin, true, rank, kTeam,
        [&](int64_t i) { s = welford_add(s, to_acc(span[i])); },
        [&](int64_t i) {
          const Pack<T> pack = load_pack(span + i);
          acc_t v[V];
          acc_t sum = 0;
#pragma unroll
          for (int e = 0; e < V; ++e) {
            v[e] = to_acc(pack.v[e]);
            sum += v[e];
          }
          const acc_t mean = sum * (acc_t(1) / acc_t(V));
          acc_t m2 = 0;
#pragma unroll
          for (int e = 0; e < V; ++e) {
            m2 += (v[e] - mean) * (v[e] - mean);
          }
          s = welford_merge(s, WelfordStat<acc_t>{mean, m2, V});
        });
    const WelfordStat<double> merged = team_merge_stat<kTeam>(widen(s), smem);
    if (rank == 0) {
      partials[piece] = merged;
    }
  }
}

// NCHW backward sums: one (ds, db) partial per piece of a channel row (HxW contiguous elements).
template <typename T, int kTeam>
__global__ void __launch_bounds__(kBlockThreads)
    grad_sums_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                     const acc_type<T>* __restrict__ mean, ReducePlan plan, int64_t D,
                     acc_type<T>* __restrict__ partials) {
  using acc_t = acc_type<T>;
  constexpr int kTeamsPerBlock = kBlockThreads / kTeam;
  constexpr int V = kVec<T>;
  __shared__ acc_t smem[2 * kBlockWarps];
  const int rank = threadIdx.x % kTeam;
  const int team = threadIdx.x / kTeam;
  const bool vectorize = same_alignment(dy, x);
  for (int64_t piece = static_cast<int64_t>(blockIdx.x) * kTeamsPerBlock + team;
       piece < plan.pieces; piece += static_cast<int64_t>(gridDim.x) * kTeamsPerBlock) {
    const Range r = reduce_piece(plan, piece);
    const acc_t m = mean[r.segment / D];  // row n * C + c belongs to group n * G + c / D
    const int64_t offset = r.segment * plan.length + r.begin;
    const T* dy_span = dy + offset;
    const T* x_span = x + offset;
    acc_t ds = 0, db = 0;
    for_span(
        dy_span, r.end - r.begin, vectorize, rank, kTeam,
        [&](int64_t i) {
          const acc_t g = to_acc(dy_span[i]);
          ds += g * (to_acc(x_span[i]) - m);
          db += g;
        },
        [&](int64_t i) {
          const Pack<T> gp = load_pack(dy_span + i);
          const Pack<T> xp = load_pack(x_span + i);
#pragma unroll
          for (int e = 0; e < V; ++e) {
            const acc_t g = to_acc(gp.v[e]);
            ds += g * (to_acc(xp.v[e]) - m);
            db += g;
          }
        });
    team_sum_pair<kTeam>(ds, db, smem);
    if (rank == 0) {
      partials[2 * piece] = ds;
      partials[2 * piece + 1] = db;
    }
  }
}

// Channels-last statistics: block (n, split) reduces its positions for 32 channels at a time
// (lane = channel, warp = every 8th position), merges the 8 warps in order per channel, then the
// channels of each group in channel order into one partial per (n, split, g).
// NB: in a tile of 32 channels, each group's first lane merges that group's channels while the
// other groups' first lanes do theirs; a group that runs past the tile carries its running
// statistics over in shared memory to lane 0 of the next tile, so the order stays channel order.
template <typename T>
__global__ void __launch_bounds__(kBlockThreads)
    channels_last_stats_kernel(const T* __restrict__ x, ChannelsLastReducePlan plan, int64_t D,
                               WelfordStat<double>* __restrict__ partials) {
  using acc_t = acc_type<T>;
  __shared__ WelfordStat<double> smem[kBlockWarps][kWarpSize];
  __shared__ WelfordStat<double> carry;
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  for (int64_t b = blockIdx.x; b < plan.blocks; b += gridDim.x) {
    const Range r = channels_last_block(plan, b);
    const int64_t split = b - r.segment * plan.splits;
    const T* sample = x + r.segment * plan.HxW * plan.C;
    for (int64_t c0 = 0; c0 < plan.C; c0 += kWarpSize) {
      const int64_t c = c0 + lane;
      WelfordStat<acc_t> s{acc_t(0), acc_t(0), 0};
      if (c < plan.C) {
        for (int64_t row = r.begin + warp; row < r.end; row += kBlockWarps) {
          s = welford_add(s, to_acc(sample[row * plan.C + c]));
        }
      }
      smem[warp][lane] = widen(s);
      __syncthreads();
      if (warp == 0) {
        WelfordStat<double> channel = smem[0][lane];
        for (int w = 1; w < kBlockWarps; ++w) {
          channel = welford_merge(channel, smem[w][lane]);
        }
        smem[0][lane] = channel;
        const bool group_head = c % D == 0;
        // NB: read before the __syncwarp, written after it (by the tile's last group), so lane 0
        // sees the previous tile's carry even when another lane writes this tile's.
        const WelfordStat<double> carried =
            group_head ? WelfordStat<double>{0.0, 0.0, 0} : carry;
        __syncwarp();
        if (c < plan.C && (group_head || lane == 0)) {
          WelfordStat<double> group = carried;
          int l = lane;
          int64_t next = c;
          do {
            group = welford_merge(group, smem[0][l]);
            ++l;
            ++next;
          } while (l < kWarpSize && next < plan.C && next % D != 0);
          if (next % D == 0) {
            partials[channels_last_stat_index(plan, r.segment, split, next / D - 1)] = group;
          } else {
            carry = group;  // the group goes on in the next tile
          }
        }
      }
      __syncthreads();
    }
  }
}

// Channels-last backward sums, laid out like channels_last_stats_kernel.
template <typename T>
__global__ void __launch_bounds__(kBlockThreads)
    channels_last_grad_sums_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                   const acc_type<T>* __restrict__ mean, ChannelsLastReducePlan plan,
                                   int64_t G, int64_t D, acc_type<T>* __restrict__ partials) {
  using acc_t = acc_type<T>;
  __shared__ double smem[kBlockWarps][2 * kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  for (int64_t b = blockIdx.x; b < plan.blocks; b += gridDim.x) {
    const Range r = channels_last_block(plan, b);
    const int64_t split = b - r.segment * plan.splits;
    const int64_t offset = r.segment * plan.HxW * plan.C;
    for (int64_t c0 = 0; c0 < plan.C; c0 += kWarpSize) {
      const int64_t c = c0 + lane;
      // NB: added in double: a lane sums one channel over (end - begin) / 8 positions one after
      // the other (thousands at batch 1), whose fp32 sum drifts (db off by 5x torch's error).
      double ds = 0, db = 0;
      if (c < plan.C) {
        const acc_t m = mean[r.segment * G + c / D];
        for (int64_t row = r.begin + warp; row < r.end; row += kBlockWarps) {
          const int64_t i = offset + row * plan.C + c;
          const acc_t g = to_acc(dy[i]);
          ds += static_cast<double>(g * (to_acc(x[i]) - m));
          db += static_cast<double>(g);
        }
      }
      smem[warp][2 * lane] = ds;
      smem[warp][2 * lane + 1] = db;
      __syncthreads();
      if (warp == 0 && c < plan.C) {
        for (int w = 1; w < kBlockWarps; ++w) {
          ds += smem[w][2 * lane];
          db += smem[w][2 * lane + 1];
        }
        const int64_t p = channels_last_partial_index(plan, r.segment, split, c);
        partials[2 * p] = static_cast<acc_t>(ds);
        partials[2 * p + 1] = static_cast<acc_t>(db);
      }
      __syncthreads();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward finalize

// Element k (0 <= k < D * HxW) of group ng, in either layout.
__device__ __forceinline__ int64_t group_element_offset(const GroupNormPlan& p, int64_t ng,
                                                        int64_t k) {
  if (!p.channels_last) {
    return ng * p.D * p.HxW + k;
  }
  const int64_t n = ng / p.G;
  const int64_t g = ng - n * p.G;
  const int64_t pos = k / p.D;
  return (n * p.HxW + pos) * p.C + g * p.D + (k - pos * p.D);
}

// Sum over a team (one thread or a warp), in a fixed tree, known to every member.
template <int kTeam>
__device__ __forceinline__ double team_sum_all(double v) {
  if constexpr (kTeam > 1) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      v += __shfl_down_sync(kFullMask, v, offset);
    }
    v = __shfl_sync(kFullMask, v, 0);
  }
  return v;
}

// Exact statistics of a group in double by the whole team: two passes over the data. Used only
// when the fp32 accumulation overflowed (|x| ~ 1e19 and above), so a huge finite input still gets
// the right answer instead of a silently wrong one.
template <typename T, int kTeam>
__device__ WelfordStat<double> exact_group_stats(const GroupNormPlan& p, const T* x, int64_t ng,
                                                 int rank) {
  const int64_t count = p.D * p.HxW;
  double sum = 0;
  for (int64_t k = rank; k < count; k += kTeam) {
    sum += static_cast<double>(to_acc(x[group_element_offset(p, ng, k)]));
  }
  const double mean = team_sum_all<kTeam>(sum) / static_cast<double>(count);
  double m2 = 0;
  for (int64_t k = rank; k < count; k += kTeam) {
    const double d = static_cast<double>(to_acc(x[group_element_offset(p, ng, k)])) - mean;
    m2 += d * d;
  }
  return {mean, team_sum_all<kTeam>(m2), count};
}

// One team (a thread when a group has few partials, else a warp) per group (n, g): merge its
// partials in a fixed order (team-strided, then a fixed tree), write mean / rstd, and the
// per-(n, c) mean, scale = rstd * gamma, bias = beta of its channels.
template <typename T, int kTeam>
__global__ void __launch_bounds__(kBlockThreads)
    group_finalize_kernel(GroupNormPlan plan, const WelfordStat<double>* __restrict__ partials,
                          const T* __restrict__ x, const acc_type<T>* __restrict__ gamma,
                          const acc_type<T>* __restrict__ beta, double eps,
                          acc_type<T>* __restrict__ mean, acc_type<T>* __restrict__ rstd,
                          acc_type<T>* __restrict__ coeffs) {
  using acc_t = acc_type<T>;
  constexpr int kTeamsPerBlock = kBlockThreads / kTeam;
  const int rank = threadIdx.x % kTeam;
  const int64_t groups = plan.N * plan.G;
  const int64_t NC = plan.N * plan.C;
  for (int64_t ng = static_cast<int64_t>(blockIdx.x) * kTeamsPerBlock + threadIdx.x / kTeam;
       ng < groups; ng += static_cast<int64_t>(gridDim.x) * kTeamsPerBlock) {
    WelfordStat<double> s{0.0, 0.0, 0};
    for (int64_t k = rank; k < plan.stat_items_per_group; k += kTeam) {
      s = welford_merge(s, partials[stat_partial_index(plan, ng, k)]);
    }
    if constexpr (kTeam > 1) {
      s = warp_merge_stat(s);
      s = {__shfl_sync(kFullMask, s.mean, 0), __shfl_sync(kFullMask, s.m2, 0),
           static_cast<int64_t>(__shfl_sync(kFullMask, static_cast<long long>(s.count), 0))};
    }
    // NB: team-uniform branch (s is broadcast); double input accumulates in double throughout
    // and has nothing to recompute in.
    if (sizeof(acc_t) < sizeof(double) && welford_overflowed(s)) {
      s = exact_group_stats<T, kTeam>(plan, x, ng, rank);
    }
    const acc_t m = static_cast<acc_t>(s.mean);
    const acc_t r = static_cast<acc_t>(welford_rstd(s, eps));
    if (rank == 0) {
      mean[ng] = m;
      rstd[ng] = r;
    }
    const int64_t n = ng / plan.G;
    const int64_t g = ng - n * plan.G;
    for (int64_t d = rank; d < plan.D; d += kTeam) {
      const int64_t c = g * plan.D + d;
      const int64_t nc = n * plan.C + c;
      coeffs[nc] = m;
      coeffs[NC + nc] = gamma != nullptr ? r * gamma[c] : r;
      coeffs[2 * NC + nc] = beta != nullptr ? beta[c] : acc_t(0);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Fused activations (issue 5), torch's definitions: silu(z) = z / (1 + exp(-z)),
// gelu(z) = z / 2 (1 + erf(z / sqrt 2)), gelu_tanh(z) = z sigmoid(2u) with
// u = sqrt(2 / pi) (z + 0.044715 z^3) (= z / 2 (1 + tanh u) without its cancellation),
// relu(z) = max(z, 0) keeping NaN. act: 1 silu, 2 gelu, 3 gelu_tanh, 4 relu (0: identity).

__device__ __forceinline__ float dev_exp(float v) {
  return expf(v);
}
__device__ __forceinline__ double dev_exp(double v) {
  return exp(v);
}
__device__ __forceinline__ float dev_erf(float v) {
  return erff(v);
}
__device__ __forceinline__ double dev_erf(double v) {
  return erf(v);
}

template <typename acc_t>
__device__ __forceinline__ acc_t gelu_tanh_arg(acc_t z) {
  return acc_t(0.79788456080286536) * (z + acc_t(0.044715) * z * z * z);
}

template <typename acc_t>
__device__ __forceinline__ acc_t activate(acc_t z, int act) {
  switch (act) {
    case 1:
      return z / (acc_t(1) + dev_exp(-z));
    case 2:
      return acc_t(0.5) * z * (acc_t(1) + dev_erf(z * acc_t(0.70710678118654752)));
    case 3:
      return z / (acc_t(1) + dev_exp(acc_t(-2) * gelu_tanh_arg(z)));
    case 4:
      return z > acc_t(0) ? z : (z != z ? z : acc_t(0));
    default:
      return z;
  }
}

// s = sigmoid(y) from e = exp(-y), with 1 - s = e s where that avoids cancellation.
template <typename acc_t>
__device__ __forceinline__ acc_t sigmoid_of(acc_t e, acc_t* one_minus) {
  const acc_t s = acc_t(1) / (acc_t(1) + e);
  *one_minus = e < acc_t(1) ? e * s : acc_t(1) - s;
  return s;
}

template <typename acc_t>
__device__ __forceinline__ acc_t activation_grad(acc_t z, int act) {
  switch (act) {
    case 1: {
      acc_t one_minus;
      const acc_t s = sigmoid_of(dev_exp(-z), &one_minus);
      return s * (acc_t(1) + z * one_minus);
    }
    case 2:
      return acc_t(0.5) * (acc_t(1) + dev_erf(z * acc_t(0.70710678118654752))) +
             z * dev_exp(acc_t(-0.5) * z * z) * acc_t(0.39894228040143268);
    case 3: {
      acc_t one_minus;
      const acc_t s = sigmoid_of(dev_exp(acc_t(-2) * gelu_tanh_arg(z)), &one_minus);
      return s + acc_t(2) * z * s * one_minus * acc_t(0.79788456080286536) *
                     (acc_t(1) + acc_t(3 * 0.044715) * z * z);
    }
    case 4:
      return z <= acc_t(0) ? acc_t(0) : acc_t(1);  // NaN passes, as in torch's relu backward
    default:
      return acc_t(1);
  }
}

// ---------------------------------------------------------------------------------------------
// Elementwise apply (y or dx)

// y = (x - mean) * scale + bias with per-(n, c) coefficients.
template <typename T>
struct ForwardApply {
  using scalar_t = T;
  using acc_t = acc_type<T>;
  // NB: not __restrict__: group_norm_inplace passes y == x (each element is read, then written,
  // by the same thread).
  const T* x;
  T* y;
  const acc_t* __restrict__ coeffs;  // [mean | scale | bias], NC each
  int64_t NC;
  int act;  // fused activation (0: none)

  struct Coef {
    acc_t mean, scale, bias;
  };
  __device__ __forceinline__ Coef coef(int64_t nc) const {
    return {coeffs[nc], coeffs[NC + nc], coeffs[2 * NC + nc]};
  }
  __device__ __forceinline__ bool vectorizable() const { return same_alignment(x, y); }
  __device__ __forceinline__ const T* span() const { return x; }
  __device__ __forceinline__ acc_t compute(acc_t v, const Coef& q) const {
    const acc_t z = (v - q.mean) * q.scale + q.bias;
    return act != 0 ? activate(z, act) : z;
  }
  __device__ __forceinline__ void scalar(int64_t i, const Coef& q) const {
    y[i] = from_acc<T>(compute(to_acc(x[i]), q));
  }
  template <typename CoefOf>
  __device__ __forceinline__ void vector(int64_t i, CoefOf coef_of) const {
    const Pack<T> in = load_pack(x + i);
    Pack<T> out;
#pragma unroll
    for (int e = 0; e < kVec<T>; ++e) {
      out.v[e] = from_acc<T>(compute(to_acc(in.v[e]), coef_of(e)));
    }
    store_pack(y + i, out);
  }
};

// g = dy * act'((x - mean) * scale + bias) with per-(n, c) coefficients.
template <typename T>
struct ActGradApply {
  using scalar_t = T;
  using acc_t = acc_type<T>;
  const T* __restrict__ dy;
  const T* __restrict__ x;
  T* __restrict__ g;
  const acc_t* __restrict__ coeffs;  // [mean | scale | bias], NC each
  int64_t NC;
  int act;

  struct Coef {
    acc_t mean, scale, bias;
  };
  __device__ __forceinline__ Coef coef(int64_t nc) const {
    return {coeffs[nc], coeffs[NC + nc], coeffs[2 * NC + nc]};
  }
  __device__ __forceinline__ bool vectorizable() const {
    return same_alignment(dy, x) && same_alignment(x, g);
  }
  __device__ __forceinline__ const T* span() const { return x; }
  __device__ __forceinline__ acc_t compute(acc_t d, acc_t v, const Coef& q) const {
    return d * activation_grad((v - q.mean) * q.scale + q.bias, act);
  }
  __device__ __forceinline__ void scalar(int64_t i, const Coef& q) const {
    g[i] = from_acc<T>(compute(to_acc(dy[i]), to_acc(x[i]), q));
  }
  template <typename CoefOf>
  __device__ __forceinline__ void vector(int64_t i, CoefOf coef_of) const {
    const Pack<T> gp = load_pack(dy + i);
    const Pack<T> xp = load_pack(x + i);
    Pack<T> out;
#pragma unroll
    for (int e = 0; e < kVec<T>; ++e) {
      out.v[e] = from_acc<T>(compute(to_acc(gp.v[e]), to_acc(xp.v[e]), coef_of(e)));
    }
    store_pack(g + i, out);
  }
};

// dx = a * dy + b * (x - mean) * rstd + k with per-(n, c) coefficients.
template <typename T>
struct BackwardApply {
  using scalar_t = T;
  using acc_t = acc_type<T>;
  const T* __restrict__ dy;
  const T* __restrict__ x;
  T* __restrict__ dx;
  const acc_t* __restrict__ coeffs;  // [a | mean | rstd | b | k], NC each
  int64_t NC;

  struct Coef {
    acc_t a, mean, rstd, b, k;
  };
  __device__ __forceinline__ Coef coef(int64_t nc) const {
    return {coeffs[nc], coeffs[NC + nc], coeffs[2 * NC + nc], coeffs[3 * NC + nc],
            coeffs[4 * NC + nc]};
  }
  __device__ __forceinline__ bool vectorizable() const {
    return same_alignment(dy, x) && same_alignment(x, dx);
  }
  __device__ __forceinline__ const T* span() const { return x; }
  __device__ __forceinline__ static acc_t compute(acc_t g, acc_t v, const Coef& q) {
    return q.a * g + q.b * ((v - q.mean) * q.rstd) + q.k;
  }
  __device__ __forceinline__ void scalar(int64_t i, const Coef& q) const {
    dx[i] = from_acc<T>(compute(to_acc(dy[i]), to_acc(x[i]), q));
  }
  template <typename CoefOf>
  __device__ __forceinline__ void vector(int64_t i, CoefOf coef_of) const {
    const Pack<T> gp = load_pack(dy + i);
    const Pack<T> xp = load_pack(x + i);
    Pack<T> out;
#pragma unroll
    for (int e = 0; e < kVec<T>; ++e) {
      out.v[e] = from_acc<T>(compute(to_acc(gp.v[e]), to_acc(xp.v[e]), coef_of(e)));
    }
    store_pack(dx + i, out);
  }
};

// Channel of the element i places after one of channel c0 < C in a channels-last sample.
// NB: 32-bit arithmetic whenever it is exact (i < kApplyTileElems, so c0 + i < 2^32 for C < 2^31).
__device__ __forceinline__ int64_t channel_of(int64_t c0, int64_t i, int64_t C) {
  if (C <= INT32_MAX) {
    return static_cast<uint32_t>(c0 + i) % static_cast<uint32_t>(C);
  }
  return (c0 + i) % C;
}

// One tile of the ApplyPlan per block and grid-stride step. Coefficient index of an element:
// NCHW: its row (n * C + c); channels-last: row (= n) * C + c.
template <bool kChannelsLast, typename Op>
__global__ void __launch_bounds__(kBlockThreads) apply_kernel(Op op, ApplyPlan plan, int64_t C) {
  using T = typename Op::scalar_t;
  const bool vectorize = op.vectorizable();
  for (int64_t t = blockIdx.x; t < plan.tiles; t += gridDim.x) {
    const Tile tile = apply_tile(plan, t);
    const int64_t n = tile.end - tile.begin;
    if (plan.rows_per_tile == 1) {
      if constexpr (!kChannelsLast) {
        const auto q = op.coef(tile.row);
        for_span(
            op.span() + tile.begin, n, vectorize, threadIdx.x, kBlockThreads,
            [&](int64_t i) { op.scalar(tile.begin + i, q); },
            [&](int64_t i) { op.vector(tile.begin + i, [&](int) { return q; }); });
      } else {
        const int64_t c0 = (tile.begin - tile.row * plan.row_len) % C;
        const int64_t base = tile.row * C;
        for_span(
            op.span() + tile.begin, n, vectorize && C >= kVec<T>, threadIdx.x, kBlockThreads,
            [&](int64_t i) { op.scalar(tile.begin + i, op.coef(base + channel_of(c0, i, C))); },
            [&](int64_t i) {
              const int64_t c = channel_of(c0, i, C);
              op.vector(tile.begin + i, [&](int e) {
                // NB: C >= the vector width, so a vector wraps past the last channel at most once.
                const int64_t ce = c + e < C ? c + e : c + e - C;
                return op.coef(base + ce);
              });
            });
      }
    } else {
      // Whole short rows (row_len < kApplyTileElems / 2): 32-bit index arithmetic.
      const uint32_t row_len = static_cast<uint32_t>(plan.row_len);
      for (uint32_t i = threadIdx.x; i < static_cast<uint32_t>(n); i += kBlockThreads) {
        const uint32_t r = i / row_len;
        const int64_t row = tile.row + r;
        int64_t nc = row;
        if constexpr (kChannelsLast) {
          nc = row * C + (i - r * row_len) % static_cast<uint32_t>(C);
        }
        op.scalar(tile.begin + i, op.coef(nc));
      }
    }
  }
}

// The apply pass of a plan's layout (forward output, dx, or the activation gradient).
template <typename Op>
void launch_apply(const GroupNormPlan& plan, const Op& op, cudaStream_t stream) {
  if (plan.channels_last) {
    apply_kernel<true><<<grid_of(plan.apply.grid), kBlockThreads, 0, stream>>>(op, plan.apply,
                                                                               plan.C);
  } else {
    apply_kernel<false><<<grid_of(plan.apply.grid), kBlockThreads, 0, stream>>>(op, plan.apply,
                                                                                plan.C);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward finalize

// One team per (n, c): total ds, db over its partials. A thread sums them in index order where
// there are few; a warp where there are many (channels-last at batch 1: a thousand row splits,
// which one thread per channel summed in ~55 us on an H200), lanes strided, then a fixed tree.
template <typename acc_t, int kTeam>
__global__ void __launch_bounds__(kBlockThreads)
    channel_sums_kernel(GroupNormPlan plan, const acc_t* __restrict__ partials,
                        acc_t* __restrict__ sums) {
  constexpr int kTeamsPerBlock = kBlockThreads / kTeam;
  const int rank = static_cast<int>(threadIdx.x) % kTeam;
  const int64_t NC = plan.N * plan.C;
  // NB: a team is a whole warp and shares nc, so the loop and the shuffles are warp-uniform.
  for (int64_t nc = static_cast<int64_t>(blockIdx.x) * kTeamsPerBlock + threadIdx.x / kTeam;
       nc < NC; nc += static_cast<int64_t>(gridDim.x) * kTeamsPerBlock) {
    acc_t ds = 0, db = 0;
    for (int64_t k = rank; k < plan.sum_items_per_channel; k += kTeam) {
      const int64_t p = sum_partial_index(plan, nc, k);
      ds += partials[2 * p];
      db += partials[2 * p + 1];
    }
    if constexpr (kTeam > 1) {
      warp_sum_pair(ds, db);
    }
    if (rank == 0) {
      sums[nc] = ds;
      sums[NC + nc] = db;
    }
  }
}

// One thread per (n, c): the forward's apply coefficients [mean | scale | bias] from the saved
// (N, G) statistics, the values group_finalize_kernel wrote (scale = rstd * gamma in acc_t), for
// the activation gradient pass. One launch where ATen ops (expand, mul, cat) took six.
template <typename acc_t>
__global__ void __launch_bounds__(kBlockThreads)
    channel_coeffs_kernel(GroupNormPlan plan, const acc_t* __restrict__ mean,
                          const acc_t* __restrict__ rstd, const acc_t* __restrict__ gamma,
                          const acc_t* __restrict__ beta, acc_t* __restrict__ coeffs) {
  const int64_t NC = plan.N * plan.C;
  for (int64_t nc = static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x; nc < NC;
       nc += static_cast<int64_t>(gridDim.x) * kBlockThreads) {
    const int64_t n = nc / plan.C;
    const int64_t c = nc - n * plan.C;
    const int64_t ng = n * plan.G + c / plan.D;
    const acc_t r = rstd[ng];
    coeffs[nc] = mean[ng];
    coeffs[NC + nc] = gamma != nullptr ? r * gamma[c] : r;
    coeffs[2 * NC + nc] = beta != nullptr ? beta[c] : acc_t(0);
  }
}

// One thread per (n, g): the group's dx coefficients, written per (n, c) as [a | mean | rstd | b | k].
template <typename acc_t>
__global__ void __launch_bounds__(kBlockThreads)
    group_backward_coeffs_kernel(GroupNormPlan plan, const acc_t* __restrict__ sums,
                                 const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
                                 const acc_t* __restrict__ gamma, acc_t* __restrict__ coeffs) {
  const int64_t groups = plan.N * plan.G;
  const int64_t NC = plan.N * plan.C;
  for (int64_t ng = static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x; ng < groups;
       ng += static_cast<int64_t>(gridDim.x) * kBlockThreads) {
    const int64_t n = ng / plan.G;
    const int64_t c_first = (ng - n * plan.G) * plan.D;
    const int64_t nc_first = n * plan.C + c_first;
    acc_t sum_gamma_ds = 0, sum_gamma_db = 0;
    for (int64_t d = 0; d < plan.D; ++d) {
      const acc_t w = gamma != nullptr ? gamma[c_first + d] : acc_t(1);
      sum_gamma_ds += w * sums[nc_first + d];
      sum_gamma_db += w * sums[NC + nc_first + d];
    }
    const acc_t r = rstd[ng];
    const GroupBackwardCoeffs<acc_t> q =
        group_backward_coeffs(sum_gamma_ds, sum_gamma_db, r, plan.D * plan.HxW);
    for (int64_t d = 0; d < plan.D; ++d) {
      const int64_t nc = nc_first + d;
      coeffs[nc] = gamma != nullptr ? r * gamma[c_first + d] : r;
      coeffs[NC + nc] = mean[ng];
      coeffs[2 * NC + nc] = r;
      coeffs[3 * NC + nc] = q.xhat_coeff;
      coeffs[4 * NC + nc] = q.bias;
    }
  }
}

// One thread per channel: dgamma[c] = sum_n ds[n, c] * rstd[n, g], dbeta[c] = sum_n db[n, c], in
// n order.
template <typename acc_t>
__global__ void __launch_bounds__(kBlockThreads)
    param_grads_kernel(GroupNormPlan plan, const acc_t* __restrict__ sums,
                       const acc_t* __restrict__ rstd, acc_t* __restrict__ dgamma,
                       acc_t* __restrict__ dbeta) {
  const int64_t NC = plan.N * plan.C;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x; c < plan.C;
       c += static_cast<int64_t>(gridDim.x) * kBlockThreads) {
    const int64_t g = c / plan.D;
    acc_t sum_ds = 0, sum_db = 0;
    for (int64_t n = 0; n < plan.N; ++n) {
      sum_ds += sums[n * plan.C + c] * rstd[n * plan.G + g];
      sum_db += sums[NC + n * plan.C + c];
    }
    if (dgamma != nullptr) {
      dgamma[c] = sum_ds;
    }
    if (dbeta != nullptr) {
      dbeta[c] = sum_db;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Launchers

template <typename T>
cudaError_t forward(const GroupNormPlan& plan, const ForwardArgs& a, cudaStream_t stream) {
  using acc_t = acc_type<T>;
  const T* x = static_cast<const T*>(a.x);
  auto* partials = static_cast<WelfordStat<double>*>(a.stat_partials);
  auto* coeffs = static_cast<acc_t*>(a.channel_coeffs);
  if (plan.channels_last) {
    channels_last_stats_kernel<T>
        <<<grid_of(plan.cl.grid), kBlockThreads, 0, stream>>>(x, plan.cl, plan.D, partials);
  } else if (plan.stats.team_threads == 1) {
    group_stats_kernel<T, 1>
        <<<grid_of(plan.stats.grid), kBlockThreads, 0, stream>>>(x, plan.stats, partials);
  } else if (plan.stats.team_threads == kWarpSize) {
    group_stats_kernel<T, kWarpSize>
        <<<grid_of(plan.stats.grid), kBlockThreads, 0, stream>>>(x, plan.stats, partials);
  } else {
    group_stats_kernel<T, kBlockThreads>
        <<<grid_of(plan.stats.grid), kBlockThreads, 0, stream>>>(x, plan.stats, partials);
  }
  NORMEXT_RETURN_IF_LAUNCH_FAILED();
  auto* finalize = plan.finalize_team_threads == 1 ? group_finalize_kernel<T, 1>
                                                  : group_finalize_kernel<T, kWarpSize>;
  finalize<<<grid_of(plan.group_grid), kBlockThreads, 0, stream>>>(
      plan, partials, x, static_cast<const acc_t*>(a.gamma), static_cast<const acc_t*>(a.beta),
      a.eps, static_cast<acc_t*>(a.mean), static_cast<acc_t*>(a.rstd), coeffs);
  NORMEXT_RETURN_IF_LAUNCH_FAILED();
  const ForwardApply<T> op{x, static_cast<T*>(a.y), coeffs, plan.N * plan.C, a.activation};
  launch_apply(plan, op, stream);
  NORMEXT_RETURN_IF_LAUNCH_FAILED();
  return cudaSuccess;
}

template <typename T>
cudaError_t backward(const GroupNormPlan& plan, const BackwardArgs& a, cudaStream_t stream) {
  using acc_t = acc_type<T>;
  const T* dy = static_cast<const T*>(a.dy);
  const T* x = static_cast<const T*>(a.x);
  const auto* mean = static_cast<const acc_t*>(a.mean);
  const auto* rstd = static_cast<const acc_t*>(a.rstd);
  const auto* gamma = static_cast<const acc_t*>(a.gamma);
  auto* partials = static_cast<acc_t*>(a.sum_partials);
  auto* sums = static_cast<acc_t*>(a.channel_sums);
  if (plan.channels_last) {
    channels_last_grad_sums_kernel<T><<<grid_of(plan.cl.grid), kBlockThreads, 0, stream>>>(
        dy, x, mean, plan.cl, plan.G, plan.D, partials);
  } else if (plan.sums.team_threads == 1) {
    grad_sums_kernel<T, 1><<<grid_of(plan.sums.grid), kBlockThreads, 0, stream>>>(
        dy, x, mean, plan.sums, plan.D, partials);
  } else if (plan.sums.team_threads == kWarpSize) {
    grad_sums_kernel<T, kWarpSize><<<grid_of(plan.sums.grid), kBlockThreads, 0, stream>>>(
        dy, x, mean, plan.sums, plan.D, partials);
  } else {
    grad_sums_kernel<T, kBlockThreads><<<grid_of(plan.sums.grid), kBlockThreads, 0, stream>>>(
        dy, x, mean, plan.sums, plan.D, partials);
  }
  NORMEXT_RETURN_IF_LAUNCH_FAILED();
  if (plan.sum_items_per_channel > kThreadFinalizeMaxItems) {
    channel_sums_kernel<acc_t, kWarpSize>
        <<<grid_of(grid_for(ceil_div(plan.N * plan.C, kBlockWarps))), kBlockThreads, 0, stream>>>(
            plan, partials, sums);
  } else {
    channel_sums_kernel<acc_t, 1>
        <<<grid_of(plan.channel_grid), kBlockThreads, 0, stream>>>(plan, partials, sums);
  }
  NORMEXT_RETURN_IF_LAUNCH_FAILED();
  if (a.dgamma != nullptr || a.dbeta != nullptr) {
    param_grads_kernel<acc_t><<<grid_of(plan.param_grid), kBlockThreads, 0, stream>>>(
        plan, sums, rstd, static_cast<acc_t*>(a.dgamma), static_cast<acc_t*>(a.dbeta));
    NORMEXT_RETURN_IF_LAUNCH_FAILED();
  }
  if (a.dx != nullptr) {
    auto* coeffs = static_cast<acc_t*>(a.dx_coeffs);
    group_backward_coeffs_kernel<acc_t>
        <<<grid_of(plan.group_thread_grid), kBlockThreads, 0, stream>>>(
            plan, sums, mean, rstd, gamma, coeffs);
    NORMEXT_RETURN_IF_LAUNCH_FAILED();
    const BackwardApply<T> op{dy, x, static_cast<T*>(a.dx), coeffs, plan.N * plan.C};
    launch_apply(plan, op, stream);
    NORMEXT_RETURN_IF_LAUNCH_FAILED();
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t act_grad(const GroupNormPlan& plan, const ActGradArgs& a, cudaStream_t stream) {
  using acc_t = acc_type<T>;
  auto* coeffs = static_cast<acc_t*>(a.coeffs);
  channel_coeffs_kernel<acc_t><<<grid_of(plan.channel_grid), kBlockThreads, 0, stream>>>(
      plan, static_cast<const acc_t*>(a.mean), static_cast<const acc_t*>(a.rstd),
      static_cast<const acc_t*>(a.gamma), static_cast<const acc_t*>(a.beta), coeffs);
  NORMEXT_RETURN_IF_LAUNCH_FAILED();
  const ActGradApply<T> op{static_cast<const T*>(a.dy), static_cast<const T*>(a.x),
                           static_cast<T*>(a.g), coeffs, plan.N * plan.C, a.activation};
  launch_apply(plan, op, stream);
  NORMEXT_RETURN_IF_LAUNCH_FAILED();
  return cudaSuccess;
}


} // namespace

cudaError_t launch_group_norm_act_grad(const GroupNormPlan& plan, ScalarKind kind,
                                       const ActGradArgs& args, cudaStream_t stream) {
  return dispatch_scalar(kind, [&](auto tag) {
    return act_grad<typename decltype(tag)::type>(plan, args, stream);
  });
}

cudaError_t launch_group_norm_forward(const GroupNormPlan& plan, ScalarKind kind,
                                      const ForwardArgs& args, cudaStream_t stream) {
  return dispatch_scalar(kind, [&](auto tag) {
    return forward<typename decltype(tag)::type>(plan, args, stream);
  });
}

cudaError_t launch_group_norm_backward(const GroupNormPlan& plan, ScalarKind kind,
                                       const BackwardArgs& args, cudaStream_t stream) {
  return dispatch_scalar(kind, [&](auto tag) {
    return backward<typename decltype(tag)::type>(plan, args, stream);
  });
}

} // namespace cuda
} // namespace normext
