// Launch plans of the CUDA row-norm kernels (LayerNorm, RMSNorm): how M rows of D contiguous
// values are cut into blocks and how large the dgamma / dbeta partial buffer is. Plain host/device
// C++ (no torch, no CUDA types), so tests/cpp/test_row_norm_plan.cpp checks with g++ that every
// row and every (row, column) of the parameter gradients is covered exactly once, for any shape,
// by the very functions the kernels call.
//
// Kernels (layer_norm_kernel.cu):
//   rows (forward; backward dx):  a team of `team_threads` threads (a warp for rows up to
//       kWarpRowMaxElems, else the whole block) owns a row: its statistics (or backward sums) in
//       a fixed-order reduction, then its output. Block b takes rows b * teams_per_block + team,
//       then strides by grid * teams_per_block.
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
constexpr int kBlockThreads = 256;
constexpr int64_t kMaxGridX = 2147483647;  // 2^31 - 1
// Rows up to this length are owned by one warp (8 rows per block): a block per short row would
// leave most of its threads idle.
constexpr int64_t kWarpRowMaxElems = 1024;
// Blocks of kBlockThreads one SM holds at once (2048 threads on sm_80 / sm_90).
constexpr int64_t kBlocksPerSm = 8;
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

struct RowNormPlan {
  int64_t M;
  int64_t D;
  // rows
  int team_threads;
  int teams_per_block;
  int64_t row_grid;
  // parameter gradients
  int64_t col_tiles;
  int64_t row_splits;
  int64_t rows_per_split;
  int64_t param_grid;       // col_tiles * row_splits tiles, grid-strided
  int64_t partials;         // row_splits * D (each of dgamma and dbeta)
  int64_t finalize_grid;    // one thread per column
};

NORMEXT_HOST_DEVICE RowNormPlan make_row_norm_plan(int64_t M, int64_t D, int64_t sm_count) {
  RowNormPlan p{};
  p.M = M;
  p.D = D;
  p.team_threads = D <= kWarpRowMaxElems ? kWarpSize : kBlockThreads;
  p.teams_per_block = kBlockThreads / p.team_threads;
  // NB: a full wave or more of blocks; past that, blocks stride over the remaining rows.
  const int64_t blocks = ceil_div(M, p.teams_per_block);
  const int64_t wave = (sm_count > 0 ? sm_count : 1) * kBlocksPerSm;
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

} // namespace row_norm
} // namespace cuda
} // namespace normext
