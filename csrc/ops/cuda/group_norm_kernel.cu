// GroupNorm CUDA kernels: raw pointers and the launch plan of group_norm_launch.h, no torch.
//
// Deterministic without atomics: every reduction is cut into pieces by the plan (a function of the
// shape and the SM count only), each piece is reduced in a fixed order (per-thread loops, then
// fixed shuffle trees and shared-memory sums in order; the loads depend on the shape and on the
// tensors' alignment, never on timing) into its own partial, and partials are merged in a fixed
// order. The same input on the same device model (SM count) gives the same bits on every run.
//
// Forward:  stats (partial Welford per piece) -> finalize (merge per group in double, mean / rstd,
//           per-(n, c) mean / scale / bias) -> apply  y = (x - mean) * scale + bias.
// Backward: sums (partial ds = sum dy * (x - mean), db = sum dy) -> per (n, c) totals ->
//           per group coefficients (group_backward_coeffs) -> dgamma / dbeta (sum over n in order)
//           and dx = rstd * gamma * dy + xhat_coeff * xhat + bias.
#include <cstdint>
#include <type_traits>

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

// ---------------------------------------------------------------------------------------------
// Channels-last reductions
//
// Block (n, split) of the ChannelsLastReducePlan reduces its positions (rows of C channels) with
// the thread layout of a ChannelsLastLanes, one pass of columns at a time: each thread folds its
// columns over its rows into registers (a warp reads runs of consecutive loads of a row, several
// rows in flight per thread), then the block combines the row lanes per channel in
// shared memory, in a fixed order, by teams of threads. Forward: statistics per channel, then per
// group (all of a group's channels have the same count: plain sums, no serial merge chains);
// backward: (ds, db) per channel.

// Shared memory of a channels-last reduction block: the values per (row lane, channel) of a pass,
// two per channel (forward: acc_t mean and M2; backward: double ds and db), at most
// 2 * kBlockThreads * kChannelsLastThreadChannels doubles by the layout's limits; the forward
// then keeps the double (mean, M2) per channel of the pass beside them.
constexpr int kChannelsLastLaneDoubles = 2 * kBlockThreads * kChannelsLastThreadChannels;
constexpr int kChannelsLastChannelDoubles = 2 * kChannelsLastPassChannels;

// Blocks per SM the channels-last reductions keep registers for (at most 128 a thread), and the
// bytes each thread has in flight per step: 2 blocks keep 64 KiB of reads in flight per SM.
constexpr int kChannelsLastMinBlocks = 2;
constexpr int kChannelsLastLoadBytes = 128;

// Channels per load of the channels-last reductions (where C and the alignment allow): 16 bytes,
// but no more than a thread may accumulate (8 bytes of half / bfloat16).
template <typename T>
constexpr int kChannelsLastVec =
    kVec<T> < kChannelsLastThreadChannels ? kVec<T> : kChannelsLastThreadChannels;

// Rows a thread loads before folding them in: kChannelsLastLoadBytes over its J columns of V
// channels in each of `tensors` tensors, 1 to 8 rows.
template <typename T, int V, int J, int tensors>
constexpr int kChannelsLastRowsPerStep =
    kChannelsLastLoadBytes / (tensors * J * V * static_cast<int>(sizeof(T))) < 1   ? 1
    : kChannelsLastLoadBytes / (tensors * J * V * static_cast<int>(sizeof(T))) > 8 ? 8
    : kChannelsLastLoadBytes / (tensors * J * V * static_cast<int>(sizeof(T)));

// V consecutive channels of one position, loaded at once (up to 16 bytes, or one element).
template <typename T, int V>
struct alignas(sizeof(T) * V) ChannelVec {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ ChannelVec<T, V> load_channels(const T* p) {
  return *reinterpret_cast<const ChannelVec<T, V>*>(p);
}

__device__ __forceinline__ int64_t min_i64(int64_t a, int64_t b) {
  return a < b ? a : b;
}

// Sum over a team of `team` consecutive lanes (a power of two, at most a warp) in a fixed
// butterfly order. Every member ends with the same bits: each step adds the same two values on
// both sides. NB: the whole warp calls it (full-mask shuffles).
__device__ __forceinline__ double team_sum_xor(double v, int team) {
  for (int offset = team / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(kFullMask, v, offset);
  }
  return v;
}

// Team size for `items` independent sums of at most `width` terms each: doubled while the teams
// of all items still fit the block at once and a member still gets a term. A power of two up to
// kWarpSize (teams never straddle a warp); the block takes the items kBlockThreads / team at a
// time, team t item i0 + t.
__device__ __forceinline__ int team_size_for(int64_t items, int64_t width) {
  int team = 1;
  while (team < kWarpSize && team < width && 2 * team * items <= kBlockThreads) {
    team *= 2;
  }
  return team;
}

// Rows each row lane visits in a block of `rows` rows: lane r takes rows r, r + row_lanes, ...,
// that is q + 1 rows for r < m and q for the others, rows = q * row_lanes + m.
struct LaneRows {
  int64_t q;
  int64_t m;
  __device__ __forceinline__ int64_t of(int64_t lane) const { return q + (lane < m ? 1 : 0); }
};

__device__ __forceinline__ LaneRows lane_rows(int64_t rows, int row_lanes) {
  const int64_t q = rows / row_lanes;
  return {q, rows - q * row_lanes};
}

// Rows of a step (at most `step`, one every row_lanes) left for a row lane whose next row is
// `left` > 0 rows before the end of the block.
__device__ __forceinline__ int channels_last_step_rows(int64_t left, int row_lanes, int step) {
  if (left >= static_cast<int64_t>(step) * row_lanes) {
    return step;
  }
  return (static_cast<int>(left) + row_lanes - 1) / row_lanes;  // NB: left < step * row_lanes
}

// This thread's place in a ChannelsLastLanes layout.
struct ChannelsLastThread {
  int col_lane;
  int row_lane;
  bool has_rows;  // threads from row_lanes * col_lanes on idle
};

__device__ __forceinline__ ChannelsLastThread channels_last_thread(const ChannelsLastLanes& lanes) {
  const int col_lane = threadIdx.x % lanes.col_lanes;
  const int row_lane = threadIdx.x / lanes.col_lanes;
  return {col_lane, row_lane, row_lane < lanes.row_lanes};
}

// Channels-last statistics: one WelfordStat<double> partial per (n, split, g).
// Per thread: running (mean, M2) per owned channel in acc_t, a step of rows at a time. Per
// channel, over the row lanes that have rows, in double: mean = sum(count * lane mean) / rows,
// M2 = sum(lane M2 + count * (lane mean - mean)^2) (Chan's formula for many parts at once). Per
// group segment of a pass, over its channels (each with `rows` values): the same with equal
// counts. A group that runs past the end of a pass is carried to the next pass and merged there
// by welford_merge, earlier channels first.
template <typename T, int V, int J>
__global__ void __launch_bounds__(kBlockThreads, kChannelsLastMinBlocks)
    channels_last_stats_kernel(const T* __restrict__ x, ChannelsLastReducePlan plan,
                               ChannelsLastLanes lanes, int64_t D,
                               WelfordStat<double>* __restrict__ partials) {
  using acc_t = acc_type<T>;
  constexpr int kRowsPerStep = kChannelsLastRowsPerStep<T, V, J, 1>;
  __shared__ double smem[kChannelsLastLaneDoubles + kChannelsLastChannelDoubles];
  // NB: two, by pass parity: a pass reads the carry of the previous one while it may write its own.
  __shared__ WelfordStat<double> carry[2];
  const ChannelsLastThread th = channels_last_thread(lanes);
  const int64_t lane_stride = static_cast<int64_t>(lanes.row_lanes) * plan.C;
  for (int64_t b = blockIdx.x; b < plan.blocks; b += gridDim.x) {
    const Range r = channels_last_block(plan, b);
    const int64_t split = b - r.segment * plan.splits;
    const int64_t rows = r.end - r.begin;
    const T* block_x = x + (r.segment * plan.HxW + r.begin) * plan.C;
    for (int64_t pass = 0; pass < lanes.passes; ++pass) {
      const int64_t col0 = pass * lanes.pass_cols;
      const int64_t pass_cols = min_i64(lanes.pass_cols, lanes.cols - col0);
      const int64_t pass_ch = pass_cols * V;
      bool owns[J];
      acc_t mean[J][V], m2[J][V];
#pragma unroll
      for (int j = 0; j < J; ++j) {
        owns[j] = th.has_rows && j * lanes.col_lanes + th.col_lane < pass_cols;
#pragma unroll
        for (int e = 0; e < V; ++e) {
          mean[j][e] = acc_t(0);
          m2[j][e] = acc_t(0);
        }
      }
      if (th.has_rows) {
        int64_t count = 0;
        const T* lane_x = block_x + th.row_lane * plan.C + (col0 + th.col_lane) * V;
        for (int64_t row = th.row_lane; row < rows; row += lanes.row_lanes * kRowsPerStep) {
          const int step_rows = channels_last_step_rows(rows - row, lanes.row_lanes, kRowsPerStep);
          ChannelVec<T, V> in[kRowsPerStep][J];
#pragma unroll
          for (int u = 0; u < kRowsPerStep; ++u) {
#pragma unroll
            for (int j = 0; j < J; ++j) {
              if (owns[j] && u < step_rows) {
                in[u][j] = load_channels<T, V>(lane_x + u * lane_stride +
                                               static_cast<int64_t>(j) * lanes.col_lanes * V);
              }
            }
          }
          // The step's rows as one batch per channel, folded in by the shifted-data form of
          // Chan's formula: with d = v - mean (the running mean; the batch's first value on the
          // first step, when any shift is exact), S1 = sum d, S2 = sum d^2 and n the count after
          // the step, mean += S1 / n and M2 += S2 - S1^2 / n. The shift keeps d at the scale of
          // the spread (no cancellation for a large mean); 1 / n is shared by all of the thread's
          // channels (one division per step, none per element), and each value is used once.
          if (count == 0) {
#pragma unroll
            for (int j = 0; j < J; ++j) {
              if (owns[j]) {
#pragma unroll
                for (int e = 0; e < V; ++e) {
                  mean[j][e] = to_acc(in[0][j].v[e]);
                }
              }
            }
          }
          count += step_rows;
          const acc_t inv_count = acc_t(1) / static_cast<acc_t>(count);
#pragma unroll
          for (int j = 0; j < J; ++j) {
            if (owns[j]) {
#pragma unroll
              for (int e = 0; e < V; ++e) {
                acc_t s1 = 0, s2 = 0;
#pragma unroll
                for (int u = 0; u < kRowsPerStep; ++u) {
                  if (u < step_rows) {
                    const acc_t d = to_acc(in[u][j].v[e]) - mean[j][e];
                    s1 += d;
                    s2 += d * d;
                  }
                }
                const acc_t shift = s1 * inv_count;
                mean[j][e] += shift;
                m2[j][e] += s2 - s1 * shift;
              }
            }
          }
          lane_x += kRowsPerStep * lane_stride;
        }
      }

      // Row lanes -> channels, in double, by a team of threads per channel over the row lanes
      // that have rows (in lane order, strided by member, then the butterfly).
      acc_t* lane_mean = reinterpret_cast<acc_t*>(smem);
      acc_t* lane_m2 = lane_mean + lanes.row_lanes * pass_ch;
      double* chan_mean = smem + kChannelsLastLaneDoubles;
      double* chan_m2 = chan_mean + pass_ch;
      __syncthreads();  // the previous pass (or block) is done with smem
#pragma unroll
      for (int j = 0; j < J; ++j) {
        if (owns[j]) {
          const int64_t at = th.row_lane * pass_ch + (j * lanes.col_lanes + th.col_lane) * V;
#pragma unroll
          for (int e = 0; e < V; ++e) {
            lane_mean[at + e] = mean[j][e];
            lane_m2[at + e] = m2[j][e];
          }
        }
      }
      __syncthreads();
      const int64_t rows_used = min_i64(lanes.row_lanes, rows);
      const LaneRows counts = lane_rows(rows, lanes.row_lanes);
      const int team = team_size_for(pass_ch, rows_used);
      const int member = threadIdx.x % team;
      for (int64_t ch0 = 0; ch0 < pass_ch; ch0 += kBlockThreads / team) {  // block-uniform
        const int64_t ch = ch0 + threadIdx.x / team;
        const bool valid = ch < pass_ch;
        double sum = 0;
        for (int64_t lane = member; valid && lane < rows_used; lane += team) {
          sum += static_cast<double>(counts.of(lane)) *
                 static_cast<double>(lane_mean[lane * pass_ch + ch]);
        }
        const double m = team_sum_xor(sum, team) / static_cast<double>(rows);
        double m2_sum = 0;
        for (int64_t lane = member; valid && lane < rows_used; lane += team) {
          const double d = static_cast<double>(lane_mean[lane * pass_ch + ch]) - m;
          m2_sum += static_cast<double>(lane_m2[lane * pass_ch + ch]) +
                    static_cast<double>(counts.of(lane)) * d * d;
        }
        m2_sum = team_sum_xor(m2_sum, team);
        if (valid && member == 0) {
          chan_mean[ch] = m;
          chan_m2[ch] = m2_sum;
        }
      }
      __syncthreads();

      // Channels -> groups: the segment of each group inside this pass, by a team of threads.
      const int64_t c_begin = col0 * V;
      const int64_t c_end = c_begin + pass_ch;
      const int64_t g_first = c_begin / D;
      const int64_t segs = (c_end - 1) / D - g_first + 1;
      const int gteam = team_size_for(segs, min_i64(D, pass_ch));
      const int gmember = threadIdx.x % gteam;
      for (int64_t s0 = 0; s0 < segs; s0 += kBlockThreads / gteam) {  // block-uniform
        const int64_t s = s0 + threadIdx.x / gteam;
        const int64_t g = g_first + s;
        const bool valid = s < segs;
        // channels [lo, hi) of the pass
        const int64_t lo = valid ? (g * D > c_begin ? g * D : c_begin) - c_begin : 0;
        const int64_t hi = valid ? min_i64(g * D + D, c_end) - c_begin : 0;
        double sum = 0;
        for (int64_t ch = lo + gmember; ch < hi; ch += gteam) {
          sum += chan_mean[ch];
        }
        sum = team_sum_xor(sum, gteam);
        const double seg_mean = valid ? sum / static_cast<double>(hi - lo) : 0.0;
        double m2_sum = 0;
        for (int64_t ch = lo + gmember; ch < hi; ch += gteam) {
          const double d = chan_mean[ch] - seg_mean;
          m2_sum += chan_m2[ch] + static_cast<double>(rows) * d * d;
        }
        m2_sum = team_sum_xor(m2_sum, gteam);
        if (valid && gmember == 0) {
          WelfordStat<double> stat{seg_mean, m2_sum, (hi - lo) * rows};
          if (g * D < c_begin) {  // the group began in the previous pass
            stat = welford_merge(carry[(pass + 1) & 1], stat);
          }
          if (g * D + D <= c_end) {
            partials[channels_last_stat_index(plan, r.segment, split, g)] = stat;
          } else {
            carry[pass & 1] = stat;
          }
        }
      }
    }
  }
}

// Channels-last backward sums: one (ds, db) partial per (n, split, c), ds = sum dy * (x - mean),
// db = sum dy. Per thread and owned channel in double: a thread sums a channel over up to
// rows_per_split / row_lanes positions one after the other (thousands at batch 1), whose fp32 sum
// drifts (db was off by 5x torch's error). Then per channel over the row lanes, in lane order.
template <typename T, int V, int J>
__global__ void __launch_bounds__(kBlockThreads, kChannelsLastMinBlocks)
    channels_last_grad_sums_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                   const acc_type<T>* __restrict__ mean,
                                   ChannelsLastReducePlan plan, ChannelsLastLanes lanes, int64_t G,
                                   int64_t D, acc_type<T>* __restrict__ partials) {
  using acc_t = acc_type<T>;
  constexpr int kRowsPerStep = kChannelsLastRowsPerStep<T, V, J, 2>;
  __shared__ double smem[kChannelsLastLaneDoubles];
  const ChannelsLastThread th = channels_last_thread(lanes);
  const int64_t lane_stride = static_cast<int64_t>(lanes.row_lanes) * plan.C;
  for (int64_t b = blockIdx.x; b < plan.blocks; b += gridDim.x) {
    const Range r = channels_last_block(plan, b);
    const int64_t split = b - r.segment * plan.splits;
    const int64_t rows = r.end - r.begin;
    const int64_t block_offset = (r.segment * plan.HxW + r.begin) * plan.C;
    for (int64_t pass = 0; pass < lanes.passes; ++pass) {
      const int64_t col0 = pass * lanes.pass_cols;
      const int64_t pass_cols = min_i64(lanes.pass_cols, lanes.cols - col0);
      const int64_t pass_ch = pass_cols * V;
      bool owns[J];
      acc_t m[J][V];
      double ds[J][V], db[J][V];
#pragma unroll
      for (int j = 0; j < J; ++j) {
        const int64_t col = j * lanes.col_lanes + th.col_lane;
        owns[j] = th.has_rows && col < pass_cols;
#pragma unroll
        for (int e = 0; e < V; ++e) {
          // channel c = (col0 + col) * V + e belongs to group n * G + c / D
          m[j][e] = owns[j] ? mean[r.segment * G + ((col0 + col) * V + e) / D] : acc_t(0);
          ds[j][e] = 0;
          db[j][e] = 0;
        }
      }
      if (th.has_rows) {
        const int64_t lane_offset = block_offset + th.row_lane * plan.C + (col0 + th.col_lane) * V;
        const T* lane_dy = dy + lane_offset;
        const T* lane_x = x + lane_offset;
        for (int64_t row = th.row_lane; row < rows; row += lanes.row_lanes * kRowsPerStep) {
          const int step_rows = channels_last_step_rows(rows - row, lanes.row_lanes, kRowsPerStep);
          ChannelVec<T, V> dy_in[kRowsPerStep][J];
          ChannelVec<T, V> x_in[kRowsPerStep][J];
#pragma unroll
          for (int u = 0; u < kRowsPerStep; ++u) {
#pragma unroll
            for (int j = 0; j < J; ++j) {
              if (owns[j] && u < step_rows) {
                const int64_t at = u * lane_stride + static_cast<int64_t>(j) * lanes.col_lanes * V;
                dy_in[u][j] = load_channels<T, V>(lane_dy + at);
                x_in[u][j] = load_channels<T, V>(lane_x + at);
              }
            }
          }
          // NB: the step's few (<= 8) terms in acc_t, then into the double sums: one conversion
          // per step, not two per element (64-bit conversions run at 16 a clock per SM).
#pragma unroll
          for (int j = 0; j < J; ++j) {
            if (owns[j]) {
#pragma unroll
              for (int e = 0; e < V; ++e) {
                acc_t step_ds = 0, step_db = 0;
#pragma unroll
                for (int u = 0; u < kRowsPerStep; ++u) {
                  if (u < step_rows) {
                    const acc_t g = to_acc(dy_in[u][j].v[e]);
                    step_ds += g * (to_acc(x_in[u][j].v[e]) - m[j][e]);
                    step_db += g;
                  }
                }
                ds[j][e] += static_cast<double>(step_ds);
                db[j][e] += static_cast<double>(step_db);
              }
            }
          }
          lane_dy += kRowsPerStep * lane_stride;
          lane_x += kRowsPerStep * lane_stride;
        }
      }

      // Row lanes -> channels: a team of threads per channel sums the row lanes that have rows
      // (in lane order, strided by member, then the butterfly).
      double* lane_ds = smem;
      double* lane_db = smem + lanes.row_lanes * pass_ch;
      __syncthreads();  // the previous pass (or block) is done with smem
#pragma unroll
      for (int j = 0; j < J; ++j) {
        if (owns[j]) {
          const int64_t at = th.row_lane * pass_ch + (j * lanes.col_lanes + th.col_lane) * V;
#pragma unroll
          for (int e = 0; e < V; ++e) {
            lane_ds[at + e] = ds[j][e];
            lane_db[at + e] = db[j][e];
          }
        }
      }
      __syncthreads();
      const int64_t rows_used = min_i64(lanes.row_lanes, rows);
      const int team = team_size_for(pass_ch, rows_used);
      const int member = threadIdx.x % team;
      for (int64_t ch0 = 0; ch0 < pass_ch; ch0 += kBlockThreads / team) {  // block-uniform
        const int64_t ch = ch0 + threadIdx.x / team;
        const bool valid = ch < pass_ch;
        double sum_ds = 0, sum_db = 0;
        for (int64_t lane = member; valid && lane < rows_used; lane += team) {
          sum_ds += lane_ds[lane * pass_ch + ch];
          sum_db += lane_db[lane * pass_ch + ch];
        }
        sum_ds = team_sum_xor(sum_ds, team);
        sum_db = team_sum_xor(sum_db, team);
        if (valid && member == 0) {
          const int64_t p = channels_last_partial_index(plan, r.segment, split, col0 * V + ch);
          partials[2 * p] = static_cast<acc_t>(sum_ds);
          partials[2 * p + 1] = static_cast<acc_t>(sum_db);
        }
      }
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
    apply_kernel<true, Op><<<grid_of(plan.apply.grid), kBlockThreads, 0, stream>>>(op, plan.apply,
                                                                               plan.C);
  } else {
    apply_kernel<false, Op><<<grid_of(plan.apply.grid), kBlockThreads, 0, stream>>>(op, plan.apply,
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

// Channels per load of the channels-last reductions: kChannelsLastVec<T> when every row of both
// tensors starts aligned to that many elements (C a multiple of it, aligned bases), else one.
template <typename T>
int channels_last_vec(int64_t C, const void* a, const void* b) {
  constexpr int V = kChannelsLastVec<T>;
  const uintptr_t bases = reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b);
  return C % V == 0 && bases % (V * sizeof(T)) == 0 ? V : 1;
}

// Calls f(vec, slots), as std::integral_constant, for the kernel instantiation of `lanes`: vec is
// kChannelsLastVec<T> or 1, slots 1 or 2 within kChannelsLastThreadChannels (as
// make_channels_last_lanes keeps them). False when no instantiation matches (nothing launched).
template <typename T, typename F>
bool with_channels_last_layout(const ChannelsLastLanes& lanes, F&& f) {
  bool launched = false;
  auto try_layout = [&](auto vec, auto slots) {
    constexpr int V = decltype(vec)::value;
    constexpr int J = decltype(slots)::value;
    if constexpr (J * V <= kChannelsLastThreadChannels) {
      if (lanes.vec == V && lanes.slots == J) {
        f(vec, slots);
        launched = true;
      }
    }
  };
  try_layout(std::integral_constant<int, kChannelsLastVec<T>>{}, std::integral_constant<int, 1>{});
  try_layout(std::integral_constant<int, kChannelsLastVec<T>>{}, std::integral_constant<int, 2>{});
  try_layout(std::integral_constant<int, 1>{}, std::integral_constant<int, 1>{});
  try_layout(std::integral_constant<int, 1>{}, std::integral_constant<int, 2>{});
  return launched;
}

template <typename T>
cudaError_t forward(const GroupNormPlan& plan, const ForwardArgs& a, cudaStream_t stream) {
  using acc_t = acc_type<T>;
  const T* x = static_cast<const T*>(a.x);
  auto* partials = static_cast<WelfordStat<double>*>(a.stat_partials);
  auto* coeffs = static_cast<acc_t*>(a.channel_coeffs);
  if (plan.channels_last) {
    const ChannelsLastLanes lanes = make_channels_last_lanes(
        plan.C, channels_last_vec<T>(plan.C, x, x), plan.cl.rows_per_split);
    const bool launched = with_channels_last_layout<T>(lanes, [&](auto vec, auto slots) {
      channels_last_stats_kernel<T, decltype(vec)::value, decltype(slots)::value>
          <<<grid_of(plan.cl.grid), kBlockThreads, 0, stream>>>(x, plan.cl, lanes, plan.D,
                                                                 partials);
    });
    if (!launched) {
      return cudaErrorInvalidValue;
    }
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
    const ChannelsLastLanes lanes = make_channels_last_lanes(
        plan.C, channels_last_vec<T>(plan.C, dy, x), plan.cl.rows_per_split);
    const bool launched = with_channels_last_layout<T>(lanes, [&](auto vec, auto slots) {
      channels_last_grad_sums_kernel<T, decltype(vec)::value, decltype(slots)::value>
          <<<grid_of(plan.cl.grid), kBlockThreads, 0, stream>>>(dy, x, mean, plan.cl, lanes,
                                                                 plan.G, plan.D, partials);
    });
    if (!launched) {
      return cudaErrorInvalidValue;
    }
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
