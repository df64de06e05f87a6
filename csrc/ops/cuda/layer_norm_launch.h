// Launch plans of the CUDA row-norm kernels (LayerNorm, RMSNorm): how M rows of D contiguous
// values are cut into blocks and how large the dgamma / dbeta partial buffer is. Plain host/device
// C++ (no torch, no CUDA types), so tests/cpp/test_row_norm_plan.cpp checks with g++ that every
// row, every element of a row the register kernels hold and every (row, column) of the parameter
// gradients is covered exactly once, for any shape, by the very functions the kernels call.
//
// Kernels (layer_norm_kernel.cu):
//   rows (forward; backward dx):  a team of `team_threads` threads owns a row: its statistics (or
//       backward sums) in a fixed-order reduction, then its output. Short rows get a warp (four
//       teams per block of kWarpTeamBlockThreads), longer ones a block of 128 to 512 threads, so
//       each thread holds at most kMaxRegVecs 16-byte vectors of the row. Block b takes rows
//       b * teams_per_block + team, then strides by grid * teams_per_block.
//       vecs_per_thread > 0: the row fits in registers (see RowSplit: an unaligned head, whole
//       16-byte vectors, a tail) and the kernel reads each element once; the kernels fall back to
//       re-reading the row (L1/L2 hits) when vecs_per_thread is 0 (longer rows) or the arrays are
//       not aligned alike.
//   parameter gradients:  tile (col_tile, row_split) sums dy * xhat and dy down rows
//       [row_split * rows_per_split, ...) for columns [col_tile * kColTile, ...), one column per
//       thread, into partial[row_split][column]; a second kernel sums the row_splits partials of
//       each column in order. row_splits depends on M only (never on the device), so dgamma and
//       dbeta are bitwise reproducible on any GPU.
// Every grid is 1D and at most kMaxGridX blocks; kernels loop over their work with a grid stride.
// All offsets are 64-bit.
#pragma once

#include <cstdint>

#include "common/welford.h"  // NORMEXT_HOST_DEVICE

namespace normext {
namespace cuda {
namespace row_norm {

constexpr int kWarpSize = 32;
// Threads per block of the parameter-gradient kernels.
constexpr int kBlockThreads = 256;
constexpr int64_t kMaxGridX = 2147483647;  // 2^31 - 1
// Row kernels: the most 16-byte vectors of a row one thread keeps in registers (32 registers of
// data), the largest team (one block), and the threads of a block of warp teams.
// NB: layer_norm_kernel.cu instantiates exactly the (team_threads, vecs_per_thread) pairs
// make_row_norm_plan can pick: (32, 1 2 4 8), (128, 4 8), (256, 8), (512, 8), and vecs 0 for
// each team; change them together (the plan test checks the pairs).
constexpr int kMaxRegVecs = 8;
constexpr int kMaxTeamThreads = 512;
constexpr int kWarpTeamBlockThreads = 128;
// Threads an SM holds at once (sm_80 / sm_90), for the grid cap.
constexpr int64_t kThreadsPerSm = 2048;
// Parameter gradients: columns per tile (one per thread), rows per split (at least), and the most
// splits (the partial buffer is row_splits x 2 x D values).
constexpr int64_t kColTile = kBlockThreads;
constexpr int64_t kMinRowsPerSplit = 32;
constexpr int64_t kMaxRowSplits = 128;

NORMEXT_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

NORMEXT_HOST_DEVICE int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// Threads per block of the row kernels for a team of `team` threads.
NORMEXT_HOST_DEVICE constexpr int row_block_threads(int team) {
  return team == kWarpSize ? kWarpTeamBlockThreads : team;
}

struct RowNormPlan {
  int64_t M;
  int64_t D;
  // rows
  int team_threads;     // 32 (a warp), 128, 256 or 512
  int block_threads;    // row_block_threads(team_threads)
  int teams_per_block;
  int vecs_per_thread;  // 16-byte vector slots per thread (1, 2, 4, 8), 0: re-read the row
  int64_t row_grid;
  // parameter gradients
  int64_t col_tiles;
  int64_t row_splits;
  int64_t rows_per_split;
  int64_t param_grid;       // col_tiles * row_splits tiles, grid-strided
  int64_t partials;         // row_splits * D (each of dgamma and dbeta)
  int64_t finalize_grid;    // one thread per column
};

// elem_bytes: the size of one stored element (2, 4 or 8).
NORMEXT_HOST_DEVICE RowNormPlan make_row_norm_plan(int64_t M, int64_t D, int64_t elem_bytes,
                                                   int64_t sm_count) {
  RowNormPlan p{};
  p.M = M;
  p.D = D;
  // NB: no row of D elements has more whole 16-byte vectors than this, whatever its head.
  const int64_t vecs = ceil_div(D, 16 / elem_bytes);
  if (vecs <= kWarpSize * kMaxRegVecs) {
    p.team_threads = kWarpSize;
  } else {
    // The smallest team from 128 threads up whose threads keep at most kMaxRegVecs vectors each:
    // a few loads in flight per thread, and few warps to wait for at each reduction.
    p.team_threads = 128;
    while (p.team_threads < kMaxTeamThreads && p.team_threads * kMaxRegVecs < vecs) {
      p.team_threads *= 2;
    }
  }
  // NB: a power of two, for fewer kernel instantiations; the unused slots cost registers only.
  const int64_t per_thread = ceil_div(vecs, p.team_threads);
  p.vecs_per_thread = 0;
  if (per_thread <= kMaxRegVecs) {
    p.vecs_per_thread = 1;
    while (p.vecs_per_thread < per_thread) {
      p.vecs_per_thread *= 2;
    }
  }
  p.block_threads = row_block_threads(p.team_threads);
  p.teams_per_block = p.block_threads / p.team_threads;
  // NB: a full wave or more of blocks; past 64 waves, blocks stride over the remaining rows.
  const int64_t blocks = ceil_div(M, p.teams_per_block);
  const int64_t wave = (sm_count > 0 ? sm_count : 1) * (kThreadsPerSm / p.block_threads);
  p.row_grid = clamp64(blocks, 1, blocks > 64 * wave ? 64 * wave : kMaxGridX);
  p.row_splits = clamp64(ceil_div(M, kMinRowsPerSplit), 1, kMaxRowSplits);
  p.rows_per_split = ceil_div(M > 0 ? M : 1, p.row_splits);
  p.row_splits = ceil_div(M > 0 ? M : 1, p.rows_per_split);  // none empty
  p.col_tiles = ceil_div(D, kColTile);
  p.param_grid = clamp64(p.col_tiles * p.row_splits, 1, kMaxGridX);
  p.partials = p.row_splits * D;
  p.finalize_grid = clamp64(ceil_div(D, kBlockThreads), 1, kMaxGridX);
  return p;
}

// The row a team works on at step `step` of its grid-stride loop (>= M: done).
NORMEXT_HOST_DEVICE int64_t team_row(const RowNormPlan& p, int64_t block, int team,
                                     int64_t step) {
  return (step * p.row_grid + block) * p.teams_per_block + team;
}

struct Tile {
  int64_t col_begin, col_end;  // [begin, end) columns
  int64_t row_begin, row_end;  // [begin, end) rows
  int64_t split;               // partial row
};

NORMEXT_HOST_DEVICE Tile param_tile(const RowNormPlan& p, int64_t tile) {
  const int64_t split = tile / p.col_tiles;
  const int64_t col_tile = tile - split * p.col_tiles;
  Tile t{};
  t.col_begin = col_tile * kColTile;
  t.col_end = t.col_begin + kColTile < p.D ? t.col_begin + kColTile : p.D;
  t.row_begin = split * p.rows_per_split;
  t.row_end = t.row_begin + p.rows_per_split < p.M ? t.row_begin + p.rows_per_split : p.M;
  t.split = split;
  return t;
}

// Elements [0, n) of a row starting at address `addr`: the count before the first 16-byte
// aligned element (n when no element is aligned), for vectors of `vec` elements of `elem` bytes.
NORMEXT_HOST_DEVICE int64_t aligned_head(uint64_t addr, int64_t elem, int64_t n) {
  const uint64_t mis = addr & 15u;
  if (mis == 0) {
    return 0;
  }
  if (mis % static_cast<uint64_t>(elem) != 0) {
    return n;  // never aligned: scalar throughout
  }
  const int64_t head = static_cast<int64_t>((16u - mis) / static_cast<uint64_t>(elem));
  return head < n ? head : n;
}

// How the register kernels cut a row of n elements whose first `head` elements precede its first
// 16-byte aligned one (aligned_head; head < vec for an element-aligned row): `nvec` whole vectors
// of `vec` elements from element head, then `tail` (< vec) elements. Thread `rank` of a team of
// `team` threads holds head element `rank` (rank < head), vectors j * team + rank (those < nvec)
// for j < vecs_per_thread, and tail element head + nvec * vec + rank (rank < tail).
struct RowSplit {
  int64_t head, nvec, tail;
};

NORMEXT_HOST_DEVICE RowSplit row_split(int64_t head, int64_t n, int64_t vec) {
  const int64_t nvec = (n - head) / vec;
  return {head, nvec, n - head - nvec * vec};
}

// Row element of vector slot j (< vecs_per_thread) of thread `rank`, valid when
// j * team + rank < nvec.
NORMEXT_HOST_DEVICE int64_t slot_elem(const RowSplit& s, int64_t vec, int team, int rank, int j) {
  return s.head + (static_cast<int64_t>(j) * team + rank) * vec;
}

} // namespace row_norm
} // namespace cuda
} // namespace normext
