// Row-norm CUDA kernels (LayerNorm, RMSNorm; RMSNorm is mean == nullptr): raw pointers and the
// launch plan of layer_norm_launch.h, no torch.
//
// Forward:  one team (a warp, or a block of 128-512 threads: the plan) per row: corrected two-pass
//           statistics (sum, then centered sums, as the CPU's chunk_stats) or the sum of squares,
//           then y = (x - mean) * rstd * gamma + beta. The register kernel loads the row once,
//           keeps it in registers (16-byte packs) through both reductions and reads gamma / beta
//           as 16-byte vectors; the re-reading kernel (rows too long, or arrays aligned unalike)
//           makes a pass over memory per step, the later ones hitting L1/L2. With a residual,
//           summed = x + r is written once and its values are the ones normalized.
// Backward: dx: the same team per row, sums ds = sum g*dy*(x - mean), db = sum g*dy, then
//           dx = rstd * (g*dy - mean(g*dy) - xhat * mean(g*dy * xhat)); dy and x in registers
//           as in the forward where they fit.
//           dgamma / dbeta: per (row split, column) partials, then an in-order sum per column.
// Deterministic without atomics: fixed per-thread element order, fixed shuffle trees, warps in
// order, partials summed in order; the row splits depend on M alone.
#include <cstdint>
#include <initializer_list>
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

// Calls f(i, W) for the elements of [0, n) thread `rank` of a team of `size` owns: an unaligned
// head one at a time, whole 16-byte vectors, then the tail. `vectorize` false: one at a time
// throughout. The mapping depends only on (head, n, rank, size), so every pass over a row gives a
// thread the same elements: what it wrote in one pass it reads back in the next, no sync needed.
// kCold: a rarely taken pass (the exact fallbacks), not unrolled: ptxas would otherwise spill
// registers in it rather than give the kernel more.
template <typename T, bool kCold = false, typename F>
__device__ __forceinline__ void for_row(int64_t head, int64_t n, bool vectorize, int rank,
                                        int size, F&& f) {
  constexpr int V = kVec<T>;
  [[maybe_unused]] constexpr int kUnroll = kCold ? 1 : 4;  // NB: unused where pragmas are ignored
  if (!vectorize) {
#pragma unroll kUnroll
    for (int64_t i = rank; i < n; i += size) {
      f(i, std::integral_constant<int, 1>{});
    }
    return;
  }
  for (int64_t i = rank; i < head; i += size) {
    f(i, std::integral_constant<int, 1>{});
  }
  const int64_t nvec = (n - head) / V;
#pragma unroll kUnroll
  for (int64_t v = rank; v < nvec; v += size) {
    f(head + v * V, std::integral_constant<int, V>{});
  }
  for (int64_t i = head + nvec * V + rank; i < n; i += size) {
    f(i, std::integral_constant<int, 1>{});
  }
}

// f(v) for each value of [0, n) thread `rank` of a team of `size` owns, widened to acc_type<T>, in
// for_row's order (a vector's values in index order).
template <typename T, bool kCold = false, typename F>
__device__ __forceinline__ void for_row_values(const T* p, int64_t head, int64_t n, bool vectorize,
                                               int rank, int size, F&& f) {
  for_row<T, kCold>(head, n, vectorize, rank, size, [&](int64_t i, auto w) {
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
// team gets the result. `shared` holds kTeam / kWarpSize values (block teams only).
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

// team_sum of v[0..kQ) at once with a single barrier (block teams): v[q] from warp w goes to
// shared[q * kWarps + w]. NB: no barrier before the writes, so the caller alternates two buffers:
// a buffer is written again only two calls later, after the barrier of the call in between,
// which every thread reaches only once it has read this call's values.
template <int kTeam, int kQ, typename A>
__device__ __forceinline__ void team_sums(A* v, A* shared) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      v[q] += __shfl_down_sync(kFullMask, v[q], offset);
    }
  }
  if constexpr (kTeam == kWarpSize) {
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      v[q] = __shfl_sync(kFullMask, v[q], 0);
    }
  } else {
    constexpr int kWarps = kTeam / kWarpSize;
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    if (lane == 0) {
#pragma unroll
      for (int q = 0; q < kQ; ++q) {
        shared[q * kWarps + warp] = v[q];
      }
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      A total = 0;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        total += shared[q * kWarps + w];
      }
      v[q] = total;
    }
  }
}

// Pairwise sum of g(k) for k in [Lo, Lo + N): a fixed order with a short dependency chain.
template <int Lo, int N, typename R, typename G>
__device__ __forceinline__ R tree_sum(const G& g) {
  if constexpr (N == 1) {
    return g(Lo);
  } else {
    return tree_sum<Lo, N / 2, R>(g) + tree_sum<Lo + N / 2, N - N / 2, R>(g);
  }
}

// The elements of a row thread `rank` of a team of kTeam holds in the register kernels, in
// RowSplit's layout: up to kN 16-byte packs, plus its head and tail element. Kept as stored (T):
// a pack is 4 registers whatever T is; values are widened to acc_type<T> (exactly) where used.
// NB: offsets within the row are int: a row the registers hold is at most kMaxRegVecs *
// kMaxTeamThreads * 8 elements long.
template <typename T, int kTeam, int kN>
struct RowRegs {
  using A = acc_type<T>;
  static constexpr int V = kVec<T>;
  Pack<T> pack[kN];
  T head_v, tail_v;
  int rank;     // the thread's rank in its team, and the element of its head value
  int first;    // element of pack 0: slot_elem(split, V, kTeam, rank, 0)
  int tail_at;  // element of its tail value
  int packs;    // slots j < packs hold a vector (j * kTeam + rank < split.nvec)
  bool has_head, has_tail;

  __device__ __forceinline__ RowRegs(const RowSplit& s, int r) : rank(r) {
    const int head = static_cast<int>(s.head), nvec = static_cast<int>(s.nvec);
    first = head + rank * V;
    tail_at = head + nvec * V + rank;
    const int mine = nvec > rank ? (nvec - rank + kTeam - 1) / kTeam : 0;
    packs = mine < kN ? mine : kN;  // NB: the plan makes mine <= kN
    has_head = rank < head;
    has_tail = rank < s.tail;
  }
  // Element of pack j: slot_elem(split, V, kTeam, rank, j).
  __device__ __forceinline__ int elem(int j) const {
    return first + j * kTeam * V;
  }
  __device__ __forceinline__ void load(const T* p) {
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      if (j < packs) {
        pack[j] = load_pack(p + elem(j));
      }
    }
    if (has_head) {
      head_v = p[rank];
    }
    if (has_tail) {
      tail_v = p[tail_at];
    }
  }
  __device__ __forceinline__ void store(T* p) const {
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      if (j < packs) {
        store_pack(p + elem(j), pack[j]);
      }
    }
    if (has_head) {
      p[rank] = head_v;
    }
    if (has_tail) {
      p[tail_at] = tail_v;
    }
  }
  // Hides the packs from the compiler between the passes (an empty asm that may change them), so
  // each pass widens the values it uses again instead of the compiler keeping widened copies of
  // the whole row alive: twice the registers for 2-byte T, and fewer rows in flight per SM.
  __device__ __forceinline__ void reload_barrier() {
    if constexpr (sizeof(T) < sizeof(A)) {
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        if (j < packs) {
          uint32_t w[4];
          memcpy(w, &pack[j], sizeof(w));
          asm volatile("" : "+r"(w[0]), "+r"(w[1]), "+r"(w[2]), "+r"(w[3]));
          memcpy(&pack[j], w, sizeof(w));
        }
      }
    }
  }
  // this += o, each sum rounded to T (torch's x + r).
  __device__ __forceinline__ void add_rounded(const RowRegs& o) {
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      if (j < packs) {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          pack[j].v[k] = from_acc<T>(to_acc(pack[j].v[k]) + to_acc(o.pack[j].v[k]));
        }
      }
    }
    if (has_head) {
      head_v = from_acc<T>(to_acc(head_v) + to_acc(o.head_v));
    }
    if (has_tail) {
      tail_v = from_acc<T>(to_acc(tail_v) + to_acc(o.tail_v));
    }
  }
  // The sum in R of f(value) over the elements held: head, each pack pairwise, tail, in order.
  template <typename R, typename F>
  __device__ __forceinline__ R sum(const F& f) const {
    R total = has_head ? f(to_acc(head_v)) : R(0);
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      if (j < packs) {
        total += tree_sum<0, V, R>([&](int k) { return f(to_acc(pack[j].v[k])); });
      }
    }
    if (has_tail) {
      total += f(to_acc(tail_v));
    }
    return total;
  }
};

template <typename T>
__device__ __forceinline__ bool aligned_alike(const T* a, const void* b) {
  return b == nullptr || same_alignment(a, b);
}

// Blocks per SM the row kernels are compiled for (__launch_bounds__' second argument: ptxas then
// gives a thread at most 64K / (blocks * threads) registers). `packs`: the 16-byte packs a thread
// holds (2 for the re-reading kernels). The register counts are the least the kernels take without
// spilling on sm_80 and sm_90 with CUDA 13.0 (-Xptxas -v), over every team and the types of that
// size, rounded up. NB: without a bound ptxas picks its own cap and spills in the rarely run
// fallbacks; with a loose one it takes registers that cost rows in flight.
template <typename T>
constexpr int row_min_blocks(int team, int packs) {
  constexpr bool kWide = sizeof(T) == 8;
  const int regs = packs <= 1   ? 48
                   : packs <= 2 ? (kWide ? 64 : 56)
                   : packs <= 4 ? (kWide ? 72 : 64)
                   : packs <= 8 ? 96
                                : (kWide ? 176 : 128);
  const int blocks = 65536 / (regs * row_block_threads(team));
  return blocks > 1 ? blocks : 1;
}

// Row statistics shared by the register and the re-reading forward kernels.

// Whether an RMS row's fp32 sum of squares `acc` must be recomputed exactly in double: it
// overflowed, or lies below the CPU's threshold (finalize_rms_norm) where squares may have
// underflowed. NB: for double data acc is that exact sum already (the same terms, same order).
template <typename A>
__device__ __forceinline__ bool rms_needs_exact(A acc) {
  constexpr double kUnderflow = std::numeric_limits<A>::min() / std::numeric_limits<A>::epsilon();
  return !std::is_same_v<A, double> &&
         (!isfinite(acc) || !(static_cast<double>(acc) >= kUnderflow));
}

// Corrected two-pass statistics (Chan, Golub and LeVeque) of D values from the first pass's mean
// m0 and the centered sums q = sum (v - m0)^2, c = sum (v - m0): mean = m0 + c / D,
// M2 = q - c^2 / D, in double.
template <typename A>
__device__ __forceinline__ WelfordStat<double> corrected_stats(A m0, A q, A c, int64_t D) {
  return {static_cast<double>(m0) + static_cast<double>(c) / D,
          static_cast<double>(q) - static_cast<double>(c) * c / D, D};
}

// A row's mean (LayerNorm; mean_out is null for RMSNorm) and rstd, stored in acc_t.
template <typename A>
__device__ __forceinline__ void write_row_stats(int64_t row, double mean, double rstd,
                                                A* mean_out, A* rstd_out) {
  if (mean_out != nullptr) {
    mean_out[row] = static_cast<A>(mean);
  }
  rstd_out[row] = static_cast<A>(rstd);
}

// ---------------------------------------------------------------------------------------------
// Forward

// The re-reading forward: rows longer than the registers hold, or x, r, summed and y not
// aligned alike. Each pass reads the row again (the later ones from L1/L2).
template <typename T, int kTeam>
__global__ void __launch_bounds__(row_block_threads(kTeam), row_min_blocks<T>(kTeam, 2))
    forward_kernel(const RowNormPlan plan, const T* __restrict__ x, const T* __restrict__ r,
                   T* __restrict__ y, T* __restrict__ s, const acc_type<T>* __restrict__ gamma,
                   const acc_type<T>* __restrict__ beta, acc_type<T>* __restrict__ mean_out,
                   acc_type<T>* __restrict__ rstd_out, double eps) {
  using A = acc_type<T>;
  __shared__ A shared[row_block_threads(kTeam) / kWarpSize];
  __shared__ double shared_exact[row_block_threads(kTeam) / kWarpSize];
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
      if (rms_needs_exact(acc)) {
        // fp32 squares overflowed or underflowed: the exact sum in double
        double e = 0;
        for_row_values<T, true>(src, head, D, vec, rank, kTeam, [&](A v) {
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
      WelfordStat<double> st = corrected_stats(m0, q, c, D);
      if (welford_overflowed(st)) {
        // |x| near the fp32 limit: exact statistics in double (inf / nan propagate)
        double e = 0;
        for_row_values<T, true>(src, head, D, vec, rank, kTeam, [&](A v) {
          e += static_cast<double>(v);
        });
        const double em = team_sum<kTeam>(e, shared_exact) / D;
        double e2 = 0;
        for_row_values<T, true>(src, head, D, vec, rank, kTeam, [&](A v) {
          const double d = static_cast<double>(v) - em;
          e2 += d * d;
        });
        st = {em, team_sum<kTeam>(e2, shared_exact), D};
      }
      mean = st.mean;
      rstd = welford_rstd(st, eps);
    }
    if (rank == 0) {
      write_row_stats(row, mean, rstd, mean_out, rstd_out);
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

// The register forward: each element of x (and r) is read from memory once and y (and summed)
// written once. Same statistics as forward_kernel; the per-thread sums go through RowRegs::sum.
// kResidual: r and s are given (their packs in flight cost registers the plain norm does without).
template <typename T, int kTeam, int kN, bool kResidual>
__global__ void __launch_bounds__(row_block_threads(kTeam),
                                  row_min_blocks<T>(kTeam, kResidual ? 2 * kN : kN))
    forward_regs_kernel(const RowNormPlan plan, const T* __restrict__ x, const T* __restrict__ r,
                        T* __restrict__ y, T* __restrict__ s, const acc_type<T>* __restrict__ gamma,
                        const acc_type<T>* __restrict__ beta, acc_type<T>* __restrict__ mean_out,
                        acc_type<T>* __restrict__ rstd_out, double eps) {
  using A = acc_type<T>;
  constexpr int V = kVec<T>;
  constexpr int kWarps = row_block_threads(kTeam) / kWarpSize;
  // two buffers of team_sums (see there) of up to two values, and team_sum's for the fallbacks
  __shared__ A shared[2][2 * kWarps];
  __shared__ double shared_exact[kWarps];
  const int team = threadIdx.x / kTeam, rank = threadIdx.x % kTeam;
  const int64_t D = plan.D;
  const bool rms = mean_out == nullptr;
  int buf = 0;  // the team_sums buffer of the next call; the same sequence in every thread
  for (int64_t step = 0;; ++step) {
    const int64_t row = team_row(plan, blockIdx.x, team, step);
    if (row >= plan.M) {
      break;
    }
    const T* xr = x + row * D;
    T* yr = y + row * D;
    // NB: the launcher checked that x is element-aligned (head < V) and r, s and y are aligned
    // like x, so one split serves them all.
    const RowSplit split = row_split(aligned_head(reinterpret_cast<uint64_t>(xr), sizeof(T), D), D,
                                     V);
    RowRegs<T, kTeam, kN> v(split, rank);
    v.load(xr);
    if constexpr (kResidual) {
      RowRegs<T, kTeam, kN> rv(split, rank);
      rv.load(r + row * D);
      v.reload_barrier();  // NB: else both rows are held unpacked (a register per 2-byte value)
      rv.reload_barrier();
      v.add_rounded(rv);  // rounded to T, as torch's x + r
      v.store(s + row * D);
      v.reload_barrier();
    }

    A sums[2];
    sums[0] = rms ? v.template sum<A>([](A e) { return e * e; })
                  : v.template sum<A>([](A e) { return e; });
    v.reload_barrier();
    team_sums<kTeam, 1>(sums, shared[buf]);
    buf ^= 1;
    const A acc = sums[0];
    double mean = 0, rstd;
    if (rms) {
      double ss = acc;
      if (rms_needs_exact(acc)) {
        // fp32 squares overflowed or underflowed: the exact sum in double
        const double e = v.template sum<double>([](A e) {
          return static_cast<double>(e) * static_cast<double>(e);
        });
        ss = team_sum<kTeam>(e, shared_exact);
      }
      rstd = 1.0 / sqrt(ss / static_cast<double>(D) + eps);
    } else {
      // Centered sums, corrected (Chan, Golub and LeVeque): mean += c / D, M2 -= c^2 / D.
      const A m0 = acc / static_cast<A>(D);
      sums[0] = v.template sum<A>([m0](A e) { return (e - m0) * (e - m0); });
      sums[1] = v.template sum<A>([m0](A e) { return e - m0; });
      v.reload_barrier();
      team_sums<kTeam, 2>(sums, shared[buf]);
      buf ^= 1;
      const A q = sums[0], c = sums[1];
      WelfordStat<double> st = corrected_stats(m0, q, c, D);
      if (welford_overflowed(st)) {
        // |x| near the fp32 limit: exact statistics in double (inf / nan propagate)
        const double em =
            team_sum<kTeam>(v.template sum<double>([](A e) { return static_cast<double>(e); }),
                            shared_exact) /
            D;
        const double e2 = v.template sum<double>([em](A e) {
          const double d = static_cast<double>(e) - em;
          return d * d;
        });
        st = {em, team_sum<kTeam>(e2, shared_exact), D};
      }
      mean = st.mean;
      rstd = welford_rstd(st, eps);
    }
    if (rank == 0) {
      write_row_stats(row, mean, rstd, mean_out, rstd_out);
    }

    const A am = static_cast<A>(mean), ar = static_cast<A>(rstd);
    // NB: the row's vectors start at elements head + multiples of V, and V acc_t values are
    // whole 16-byte vectors: gamma + head aligned means every vector of gamma is.
    const bool gvec = aligned16_at(gamma, split.head), bvec = aligned16_at(beta, split.head);
    v.reload_barrier();
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      if (j < v.packs) {
        const int64_t e = v.elem(j);
        A g[V], b[V];
        load_params(gamma, e, gvec, A(1), g);
        load_params(beta, e, bvec, A(0), b);
        Pack<T> out;
#pragma unroll
        for (int k = 0; k < V; ++k) {
          out.v[k] = from_acc<T>((to_acc(v.pack[j].v[k]) - am) * ar * g[k] + b[k]);
        }
        store_pack(yr + e, out);
      }
    }
    if (v.has_head) {
      const int64_t e = rank;
      yr[e] = from_acc<T>((to_acc(v.head_v) - am) * ar * param_or(gamma, e, A(1)) +
                          param_or(beta, e, A(0)));
    }
    if (v.has_tail) {
      const int64_t e = v.tail_at;
      yr[e] = from_acc<T>((to_acc(v.tail_v) - am) * ar * param_or(gamma, e, A(1)) +
                          param_or(beta, e, A(0)));
    }
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

// The re-reading dx: rows longer than the registers hold, or dy, x and dx not aligned alike.
template <typename T, int kTeam>
__global__ void __launch_bounds__(row_block_threads(kTeam), row_min_blocks<T>(kTeam, 2))
    grad_input_kernel(const RowNormPlan plan, const T* __restrict__ dy, const T* __restrict__ x,
                      const acc_type<T>* __restrict__ mean, const acc_type<T>* __restrict__ rstd,
                      const acc_type<T>* __restrict__ gamma, T* __restrict__ dx) {
  using A = acc_type<T>;
  __shared__ A shared[row_block_threads(kTeam) / kWarpSize];
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

// The register dx: dy and x read from memory once each, dx written once; the same math as
// grad_input_kernel (gamma read again, from L1, for the second step).
template <typename T, int kTeam, int kN>
__global__ void __launch_bounds__(row_block_threads(kTeam), row_min_blocks<T>(kTeam, 2 * kN))
    grad_input_regs_kernel(const RowNormPlan plan, const T* __restrict__ dy,
                           const T* __restrict__ x, const acc_type<T>* __restrict__ mean,
                           const acc_type<T>* __restrict__ rstd,
                           const acc_type<T>* __restrict__ gamma, T* __restrict__ dx) {
  using A = acc_type<T>;
  constexpr int V = kVec<T>;
  constexpr int kWarps = row_block_threads(kTeam) / kWarpSize;
  __shared__ A shared[2][2 * kWarps];  // two buffers of team_sums (see there)
  const int team = threadIdx.x / kTeam, rank = threadIdx.x % kTeam;
  const int64_t D = plan.D;
  int buf = 0;
  for (int64_t step = 0;; ++step) {
    const int64_t row = team_row(plan, blockIdx.x, team, step);
    if (row >= plan.M) {
      break;
    }
    const T* xr = x + row * D;
    T* dxr = dx + row * D;
    // NB: the launcher checked that x is element-aligned and dy, dx are aligned like x.
    const RowSplit split = row_split(aligned_head(reinterpret_cast<uint64_t>(xr), sizeof(T), D), D,
                                     V);
    RowRegs<T, kTeam, kN> g(split, rank), v(split, rank);
    g.load(dy + row * D);
    v.load(xr);
    const A m = mean != nullptr ? mean[row] : A(0);
    const A rs = rstd[row];
    const bool gvec = aligned16_at(gamma, split.head);  // as in forward_regs_kernel

    // ds = sum gg * (x - mean), db = sum gg, gg = gamma * dy: head, packs pairwise, tail.
    A sums[2] = {0, 0};
    if (g.has_head) {
      const A gg = mul_rn(to_acc(g.head_v), param_or(gamma, rank, A(1)));
      sums[0] = gg * (to_acc(v.head_v) - m);
      sums[1] = gg;
    }
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      if (j < g.packs) {
        A gm[V], gg[V];
        load_params(gamma, g.elem(j), gvec, A(1), gm);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          gg[k] = mul_rn(to_acc(g.pack[j].v[k]), gm[k]);
        }
        sums[0] += tree_sum<0, V, A>([&](int k) { return gg[k] * (to_acc(v.pack[j].v[k]) - m); });
        sums[1] += tree_sum<0, V, A>([&](int k) { return gg[k]; });
      }
    }
    if (g.has_tail) {
      const A gg = mul_rn(to_acc(g.tail_v), param_or(gamma, g.tail_at, A(1)));
      sums[0] += gg * (to_acc(v.tail_v) - m);
      sums[1] += gg;
    }
    g.reload_barrier();
    v.reload_barrier();
    team_sums<kTeam, 2>(sums, shared[buf]);
    buf ^= 1;
    // As grad_input_kernel: dx = rstd * (gg - mean(gg) - xhat * mean(gg * xhat)).
    const A inv_d = A(1) / static_cast<A>(D);
    const A mean_gg_xhat = sums[0] * rs * inv_d;
    const A mean_gg = mean != nullptr ? sums[1] * inv_d : A(0);
    auto dx_of = [&](A dyv, A xv, A gam) {
      const A xhat = (xv - m) * rs;
      const A gg = mul_rn(dyv, gam);
      return from_acc<T>(rs * (gg - mean_gg - xhat * mean_gg_xhat));
    };
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      if (j < g.packs) {
        const int64_t e = g.elem(j);
        A gm[V];
        load_params(gamma, e, gvec, A(1), gm);
        Pack<T> out;
#pragma unroll
        for (int k = 0; k < V; ++k) {
          out.v[k] = dx_of(to_acc(g.pack[j].v[k]), to_acc(v.pack[j].v[k]), gm[k]);
        }
        store_pack(dxr + e, out);
      }
    }
    if (g.has_head) {
      dxr[rank] = dx_of(to_acc(g.head_v), to_acc(v.head_v), param_or(gamma, rank, A(1)));
    }
    if (g.has_tail) {
      const int64_t e = g.tail_at;
      dxr[e] = dx_of(to_acc(g.tail_v), to_acc(v.tail_v), param_or(gamma, e, A(1)));
    }
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

// True when the register kernels may take these arrays: x element-aligned (so a row's head is
// shorter than a vector) and every other array (null: absent) 16-byte aligned at the same
// elements as x, which then holds for every row alike.
template <typename T>
bool registers_fit(const void* x, std::initializer_list<const void*> others) {
  const auto xa = reinterpret_cast<uintptr_t>(x);
  if (xa % sizeof(T) != 0) {
    return false;
  }
  for (const void* o : others) {
    if (o != nullptr && ((reinterpret_cast<uintptr_t>(o) ^ xa) & 15u) != 0) {
      return false;
    }
  }
  return true;
}

template <int N>
using Int = std::integral_constant<int, N>;

// f(Int<team>, Int<vecs>) for the plan's team and vecs_per_thread (0 where !in_registers: the
// re-reading kernels): exactly the pairs make_row_norm_plan picks (layer_norm_launch.h).
template <typename F>
cudaError_t with_row_kernel(const RowNormPlan& plan, bool in_registers, F&& f) {
  const int vecs = in_registers ? plan.vecs_per_thread : 0;
  switch (plan.team_threads) {
    case kWarpSize:
      switch (vecs) {
        case 0: return f(Int<kWarpSize>{}, Int<0>{});
        case 1: return f(Int<kWarpSize>{}, Int<1>{});
        case 2: return f(Int<kWarpSize>{}, Int<2>{});
        case 4: return f(Int<kWarpSize>{}, Int<4>{});
        case 8: return f(Int<kWarpSize>{}, Int<8>{});
      }
      break;
    case 128:
      switch (vecs) {
        case 0: return f(Int<128>{}, Int<0>{});
        case 4: return f(Int<128>{}, Int<4>{});
        case 8: return f(Int<128>{}, Int<8>{});
      }
      break;
    case 256:
      switch (vecs) {
        case 0: return f(Int<256>{}, Int<0>{});
        case 8: return f(Int<256>{}, Int<8>{});
      }
      break;
    case 512:
      switch (vecs) {
        case 0: return f(Int<512>{}, Int<0>{});
        case 8: return f(Int<512>{}, Int<8>{});
      }
      break;
  }
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t forward(const RowNormPlan& plan, const ForwardArgs& a, cudaStream_t stream) {
  using A = acc_type<T>;
  const bool in_registers = registers_fit<T>(a.x, {a.residual, a.summed, a.y});
  return with_row_kernel(plan, in_registers, [&](auto team, auto vecs) {
    constexpr int kTeam = decltype(team)::value, kN = decltype(vecs)::value;
    auto* kernel = [&] {
      if constexpr (kN == 0) {
        return forward_kernel<T, kTeam>;
      } else {
        return a.residual != nullptr ? forward_regs_kernel<T, kTeam, kN, true>
                                     : forward_regs_kernel<T, kTeam, kN, false>;
      }
    }();
    kernel<<<grid_of(plan.row_grid), row_block_threads(kTeam), 0, stream>>>(
        plan, static_cast<const T*>(a.x), static_cast<const T*>(a.residual), static_cast<T*>(a.y),
        static_cast<T*>(a.summed), static_cast<const A*>(a.gamma), static_cast<const A*>(a.beta),
        static_cast<A*>(a.mean), static_cast<A*>(a.rstd), a.eps);
    return cudaGetLastError();
  });
}

template <typename T>
cudaError_t backward(const RowNormPlan& plan, const BackwardArgs& a, cudaStream_t stream) {
  using A = acc_type<T>;
  const auto* dy = static_cast<const T*>(a.dy);
  const auto* x = static_cast<const T*>(a.x);
  const auto* mean = static_cast<const A*>(a.mean);
  const auto* rstd = static_cast<const A*>(a.rstd);
  if (a.dx != nullptr) {
    const bool in_registers = registers_fit<T>(a.x, {a.dy, a.dx});
    const cudaError_t err = with_row_kernel(plan, in_registers, [&](auto team, auto vecs) {
      constexpr int kTeam = decltype(team)::value, kN = decltype(vecs)::value;
      auto* kernel = [] {
        if constexpr (kN == 0) {
          return grad_input_kernel<T, kTeam>;
        } else {
          return grad_input_regs_kernel<T, kTeam, kN>;
        }
      }();
      kernel<<<grid_of(plan.row_grid), row_block_threads(kTeam), 0, stream>>>(
          plan, dy, x, mean, rstd, static_cast<const A*>(a.gamma), static_cast<T*>(a.dx));
      return cudaGetLastError();
    });
    if (err != cudaSuccess) {
      return err;
    }
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
