// Launch plans of the CUDA BatchNorm kernels: how the per-channel reductions over N x HxW are cut
// into blocks, how large the partial buffers are and where each block writes. Plain host/device
// C++ (no torch, no CUDA types), so tests/cpp/test_batch_norm_launch_plan.cpp checks with g++ that
// every element is covered exactly once, for any shape, by the very functions the kernels call.
//
// Kernels (batch_norm_kernel.cu):
//   NCHW reductions:  channel c's M = N * HxW elements (N planes of HxW, C * HxW apart) are cut
//                     into `splits` pieces of `piece_elems` consecutive (n, hw) indices; block
//                     (c, split) reduces its piece into partial c * splits + split.
//   channels-last:    the N * HxW rows of C channels are cut into `splits` row ranges of
//                     `piece_elems` rows; block (tile, split) reduces channels
//                     [tile * kChannelTile, ...) of its rows into partials c * splits + split.
//   finalize:         one thread per channel merges its `splits` partials in split order.
//   elementwise:      y / dx over all elements with a grid stride, as 16-byte vectors where
//                     aligned (elem_grid blocks: about 16 elements per thread).
// Every grid is 1D and at most kMaxGridX blocks; kernels loop over their work items with a grid
// stride, so no limit on the problem size follows from the grid. All offsets are 64-bit.
#pragma once

#include <cstdint>

#include "common/welford.h"  // NORMEXT_HOST_DEVICE

namespace normext {
namespace cuda {
namespace bn {

constexpr int kBlockThreads = 256;
constexpr int64_t kMaxGridX = 2147483647;  // 2^31 - 1
// Blocks of kBlockThreads one SM holds at once: the reductions aim at one full wave.
constexpr int64_t kBlocksPerSm = 8;
// A block reduces at least this many elements (64 per thread) before a channel is split further.
constexpr int64_t kMinPieceElems = 16384;
// Channels-last blocks: 32 adjacent channels (one warp, coalesced) times 8 rows at a time.
constexpr int kChannelTile = 32;
constexpr int kRowLanes = kBlockThreads / kChannelTile;
// Channels-last pieces take at least this many rows, so partials stay a few percent of the input.
constexpr int64_t kMinPieceRows = 256;
// Elements per block and grid-stride step of the elementwise kernels (16 per thread).
constexpr int64_t kElemTile = 4096;

NORMEXT_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

NORMEXT_HOST_DEVICE int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

struct BatchNormPlan {
  int64_t N;
  int64_t C;
  int64_t HxW;
  bool channels_last;
  int64_t splits;         // pieces per channel (NCHW) or row ranges (channels-last)
  int64_t piece_elems;    // elements (NCHW) or rows (channels-last) per piece
  int64_t tiles;          // channel groups of a reduction block: C (NCHW), ceil(C / 32) (CL)
  int64_t reduce_items;   // tiles * splits: reduction work items
  int64_t reduce_grid;    // blocks of the reduction kernels (grid-stride over reduce_items)
  int64_t partials;       // C * splits
  int64_t finalize_grid;  // blocks of kBlockThreads, one thread per channel
  int64_t elem_tiles;     // ceil(N * C * HxW / kElemTile)
  int64_t elem_grid;      // blocks of the elementwise kernels (one per elem_tile of elements)
};

NORMEXT_HOST_DEVICE BatchNormPlan make_batch_norm_plan(int64_t N, int64_t C, int64_t HxW,
                                                       bool channels_last, int64_t sm_count) {
  BatchNormPlan p{};
  p.N = N;
  p.C = C;
  p.HxW = HxW;
  p.channels_last = channels_last;
  const int64_t target = (sm_count > 0 ? sm_count : 1) * kBlocksPerSm;
  const int64_t M = N * HxW;  // elements per channel, rows channels-last
  if (channels_last) {
    p.tiles = ceil_div(C, kChannelTile);
    const int64_t most = ceil_div(M, kMinPieceRows);
    p.splits = clamp64(ceil_div(target, p.tiles), 1, most > 0 ? most : 1);
  } else {
    p.tiles = C;
    const int64_t most = ceil_div(M, kMinPieceElems);
    p.splits = clamp64(ceil_div(target, p.tiles), 1, most > 0 ? most : 1);
  }
  p.piece_elems = ceil_div(M, p.splits);
  if (p.piece_elems == 0) {
    p.piece_elems = 1;
  }
  // NB: with the rounded-up piece length some trailing pieces may be empty; they still write
  // their (empty) partial, so the finalize reads only written partials.
  p.reduce_items = p.tiles * p.splits;
  p.reduce_grid = clamp64(p.reduce_items, 1, kMaxGridX);
  p.partials = C * p.splits;
  p.finalize_grid = clamp64(ceil_div(C, kBlockThreads), 1, kMaxGridX);
  p.elem_tiles = ceil_div(N * C * HxW, kElemTile);
  p.elem_grid = clamp64(p.elem_tiles, 1, kMaxGridX);
  return p;
}

// Piece `split` of a channel: indices [begin, end) of its M elements (NCHW) or rows (CL).
NORMEXT_HOST_DEVICE int64_t piece_begin(const BatchNormPlan& p, int64_t split) {
  const int64_t M = p.N * p.HxW;
  const int64_t b = split * p.piece_elems;
  return b < M ? b : M;
}
NORMEXT_HOST_DEVICE int64_t piece_end(const BatchNormPlan& p, int64_t split) {
  const int64_t M = p.N * p.HxW;
  const int64_t e = (split + 1) * p.piece_elems;
  return e < M ? e : M;
}

// Offset in the tensor of element i (0 <= i < N * HxW) of channel c, NCHW.
NORMEXT_HOST_DEVICE int64_t nchw_offset(const BatchNormPlan& p, int64_t c, int64_t i) {
  return ((i / p.HxW) * p.C + c) * p.HxW + i % p.HxW;
}

// Channel of the element at `offset` (either layout).
// NB: 32-bit division wherever it is exact: a 64-bit one is a ~70-instruction software routine,
// two per element made the elementwise kernels compute-bound.
NORMEXT_HOST_DEVICE int64_t channel_of(const BatchNormPlan& p, int64_t offset) {
  if (offset <= UINT32_MAX && p.HxW <= UINT32_MAX && p.C <= UINT32_MAX) {
    const uint32_t o = static_cast<uint32_t>(offset);
    const uint32_t C = static_cast<uint32_t>(p.C);
    return p.channels_last ? o % C : (o / static_cast<uint32_t>(p.HxW)) % C;
  }
  return p.channels_last ? offset % p.C : (offset / p.HxW) % p.C;
}

// Reduction work item -> (tile, split) and the partial of channel c in split s.
NORMEXT_HOST_DEVICE int64_t item_tile(const BatchNormPlan& p, int64_t item) {
  return item / p.splits;
}
NORMEXT_HOST_DEVICE int64_t item_split(const BatchNormPlan& p, int64_t item) {
  return item % p.splits;
}
NORMEXT_HOST_DEVICE int64_t partial_index(const BatchNormPlan& p, int64_t c, int64_t split) {
  return c * p.splits + split;
}

} // namespace bn
} // namespace cuda
} // namespace normext
