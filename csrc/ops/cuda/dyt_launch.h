// Launch plan of the CUDA DyT kernels (dyt_kernel.cu): how the elementwise pass and the
// deterministic reductions of the backward are cut into blocks. Plain host/device C++ (no torch,
// no CUDA types): tests/cpp/test_dyt_launch_plan.cpp checks on the CPU that every element is
// covered exactly once and every partial index is in range, with the functions the kernels call.
//
// Layouts (ops/dyt.h DytShape): rows x C with C contiguous (inner == 1), or planes: rows = N
// planes of C channels x `inner` contiguous values.
//
// Backward reductions (no atomics):
// Tiles (the units below) are visited by a grid-stride loop over blocks, so no shape is limited
// by the grid size.
//   rows:   tile b = (row_block, col_block) reduces rows [row_block * rows_per_block, ...) of the
//           kDytColsPerBlock channels starting at col_block * kDytColsPerBlock: one (dy*t, dy)
//           partial per (row_block, c), index row_block * C + c, and one dalpha partial per tile.
//   planes: tile b = (plane, chunk) reduces elements [chunk * chunk_len, ...) of plane
//           b / chunks: one (dy*t, dy, dalpha) partial per tile.
//   Then one thread per channel sums its partials in order, and one block sums the dalpha
//   partials in order.
#pragma once

#include <cstdint>

#include "common/welford.h"  // NORMEXT_HOST_DEVICE

namespace normext {
namespace cuda {

constexpr int kDytBlockThreads = 256;
constexpr int kDytColsPerBlock = 32;  // one warp's worth of channels: coalesced row segments
constexpr int kDytRowLanes = kDytBlockThreads / kDytColsPerBlock;  // rows in flight per block
constexpr int64_t kDytMaxGrid = 2147483647;
constexpr int64_t kDytMinRowsPerBlock = 64;
constexpr int64_t kDytMinChunk = 4096;
constexpr int64_t kDytElemsPerThread = 8;  // elementwise grid: elements per thread per pass

NORMEXT_HOST_DEVICE int64_t dyt_ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

struct DytPlan {
  int64_t rows;
  int64_t C;
  int64_t inner;
  bool planes;
  int64_t numel;
  int64_t elem_grid;  // elementwise kernels: grid-stride over numel
  // backward reductions
  int64_t rows_per_block;  // rows layout
  int64_t row_blocks;
  int64_t col_blocks;
  int64_t chunk_len;  // planes layout
  int64_t chunks;
  int64_t sum_tiles;     // tiles of the reduction kernel, one dalpha partial each
  int64_t sum_grid;      // blocks of the reduction kernel (grid-stride over the tiles)
  int64_t sum_partials;  // (dy*t, dy) partial pairs
};

// target_blocks: blocks that fill the device (a few per SM); only the cut depends on it.
NORMEXT_HOST_DEVICE DytPlan make_dyt_plan(int64_t rows, int64_t C, int64_t inner, bool planes,
                                          int64_t target_blocks) {
  DytPlan p{};
  p.rows = rows;
  p.C = C;
  p.inner = inner;
  p.planes = planes;
  p.numel = rows * C * inner;
  const int64_t elem_blocks = dyt_ceil_div(p.numel, kDytBlockThreads * kDytElemsPerThread);
  p.elem_grid = elem_blocks < 1 ? 1 : (elem_blocks > kDytMaxGrid ? kDytMaxGrid : elem_blocks);
  if (!planes) {
    p.col_blocks = dyt_ceil_div(C, kDytColsPerBlock);
    const int64_t want_row_blocks = dyt_ceil_div(target_blocks, p.col_blocks);
    int64_t rpb = dyt_ceil_div(rows, want_row_blocks < 1 ? 1 : want_row_blocks);
    rpb = rpb < kDytMinRowsPerBlock ? kDytMinRowsPerBlock : rpb;
    p.rows_per_block = rpb;
    p.row_blocks = dyt_ceil_div(rows, rpb);
    p.sum_tiles = p.row_blocks * p.col_blocks;
    p.sum_partials = p.row_blocks * C;
  } else {
    const int64_t planes_n = rows * C;
    const int64_t want_chunks = dyt_ceil_div(target_blocks, planes_n);
    int64_t len = dyt_ceil_div(inner, want_chunks < 1 ? 1 : want_chunks);
    len = len < kDytMinChunk ? kDytMinChunk : len;
    p.chunk_len = len;
    p.chunks = dyt_ceil_div(inner, len);
    p.sum_tiles = planes_n * p.chunks;
    p.sum_partials = p.sum_tiles;
  }
  p.sum_grid = p.sum_tiles < 1 ? 1 : (p.sum_tiles > kDytMaxGrid ? kDytMaxGrid : p.sum_tiles);
  return p;
}

// Rows layout: the rows and channels block b reduces.
struct DytTile {
  int64_t row_begin, row_end, col_begin, col_end;
};

NORMEXT_HOST_DEVICE DytTile dyt_rows_tile(const DytPlan& p, int64_t block) {
  const int64_t rb = block / p.col_blocks, cb = block - rb * p.col_blocks;
  DytTile t{};
  t.row_begin = rb * p.rows_per_block;
  t.row_end = t.row_begin + p.rows_per_block < p.rows ? t.row_begin + p.rows_per_block : p.rows;
  t.col_begin = cb * kDytColsPerBlock;
  t.col_end = t.col_begin + kDytColsPerBlock < p.C ? t.col_begin + kDytColsPerBlock : p.C;
  return t;
}

// Planes layout: the plane (n * C + c) and its element range block b reduces.
struct DytSpan {
  int64_t plane, begin, end;
};

NORMEXT_HOST_DEVICE DytSpan dyt_plane_span(const DytPlan& p, int64_t block) {
  DytSpan s{};
  s.plane = block / p.chunks;
  const int64_t j = block - s.plane * p.chunks;
  s.begin = j * p.chunk_len;
  s.end = s.begin + p.chunk_len < p.inner ? s.begin + p.chunk_len : p.inner;
  return s;
}

// Channel of the element at flat offset i.
NORMEXT_HOST_DEVICE int64_t dyt_channel_of(const DytPlan& p, int64_t i) {
  return p.planes ? (i / p.inner) % p.C : i % p.C;
}

} // namespace cuda
} // namespace normext
