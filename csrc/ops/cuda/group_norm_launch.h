// Launch plans of the CUDA GroupNorm kernels: how an (N, C, HxW, G, layout) problem is cut into
// blocks, how large the partial buffers are and where each block writes. Plain host/device C++
// (no torch, no CUDA types), so tests/cpp/test_launch_plan.cpp checks with g++ that every element
// is covered exactly once, for any shape, by the very functions the kernels call.
//
// Kernels (group_norm_kernel.cu):
//   NCHW   forward  stats: a ReducePlan over the N*G groups (D*HxW contiguous elements each);
//                          one WelfordStat<double> partial per piece (group * splits + split).
//          backward sums:  a ReducePlan over the N*C channel rows (HxW elements each); one
//                          (ds, db) partial per piece (row * splits + split).
//   channels-last, both:   a ChannelsLastReducePlan: block (n, split) reduces positions
//                          [split * rows_per_split, ...) of sample n for every channel, with the
//                          thread layout of a ChannelsLastLanes (threads own columns of up to 4
//                          channels, one load each, and walk the block's rows; channels in passes
//                          of at most kChannelsLastPassChannels). Forward: one
//                          WelfordStat<double> partial per (n, split, g), index
//                          (n * splits + split) * G + g; backward: one (ds, db) partial per
//                          (n, split, c), index (n * splits + split) * C + c.
//   apply (y or dx):       an ApplyPlan over rows of contiguous elements (NCHW: the N*C channel
//                          rows; channels-last: the N samples of HxW*C elements), in tiles.
// Every grid is 1D and at most kMaxGridX blocks; kernels loop over their work items with a grid
// stride, so no limit on the problem size follows from the grid. All offsets are 64-bit.
#pragma once

#include <cstdint>

#include "common/welford.h"  // NORMEXT_HOST_DEVICE

namespace normext {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr int kBlockThreads = 256;
constexpr int kBlockWarps = kBlockThreads / kWarpSize;
constexpr int64_t kMaxGridX = 2147483647;  // 2^31 - 1
// Blocks of kBlockThreads that one SM holds at once (2048 threads on sm_80 and sm_90): the target
// block count of the reductions is one full wave of the device.
constexpr int64_t kBlocksPerSm = 8;
// A group (or row) of at most this many elements is reduced by one warp, not a whole block, so
// that many small groups do not each occupy a block of mostly idle threads; one of at most
// kThreadReduceMaxElems by a single thread (rows of HxW = 1..16, tiny groups), so that a warp is
// not spent on one or two elements.
constexpr int64_t kWarpReduceMaxElems = 2048;
constexpr int64_t kThreadReduceMaxElems = 16;
// A block reduces at least this many elements (64 per thread) before a group is split further:
// smaller pieces cost more in partials and finalize merges than they gain in parallelism.
constexpr int64_t kMinSplitElems = 16384;
// Split lengths are multiples of this, so pieces of a 16-byte aligned group start 16-byte aligned.
constexpr int64_t kSplitAlign = 64;
// Channels-last reductions give a block at least kMinChannelsLastBlockElems elements (all channels
// of ceil(that / C) positions, but never more than kMaxChannelsLastMinRows positions as a minimum):
// blocks of every thread's column for a few rows are cheap, and a small batch still fills the
// device (C = 1280, 16x16 positions: 4 positions a block, a batch of 2 fills 128 blocks).
constexpr int64_t kMinChannelsLastBlockElems = 4096;
constexpr int64_t kMaxChannelsLastMinRows = 256;
// A channels-last block reduces at most this many channels at a time (a pass): its per-channel
// statistics sit in shared memory as double (mean, M2) pairs, 16 KiB.
constexpr int64_t kChannelsLastPassChannels = 1024;
// Channels a thread accumulates at once (its columns of a pass: slots * vec), and columns it may
// own in a pass (the kernels instantiate 1 and 2 slots). NB: the backward keeps two doubles per
// channel in registers, so 4 channels cost 16 registers; the per-(row lane, channel) values a pass
// leaves in shared memory stay within 16 KiB.
constexpr int kChannelsLastThreadChannels = 4;
constexpr int kChannelsLastMaxSlots = 2;
// What a pass costs beyond its rows, in rows a thread walks: the block-wide merges at its end
// (four barriers, the row-lane and group sums).
constexpr int64_t kChannelsLastPassCostRows = 8;
// The forward finalize merges a group's partials with one thread when there are at most this many
// (tiny groups, N * G in the millions: a warp each would mostly idle), else with a warp.
constexpr int64_t kThreadFinalizeMaxItems = 16;
// Elements per tile of the elementwise apply kernels (32 per thread).
constexpr int64_t kApplyTileElems = 8192;

NORMEXT_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

NORMEXT_HOST_DEVICE int64_t round_up(int64_t a, int64_t b) {
  return ceil_div(a, b) * b;
}

NORMEXT_HOST_DEVICE int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

NORMEXT_HOST_DEVICE int64_t grid_for(int64_t blocks) {
  return clamp64(blocks, 1, kMaxGridX);
}

// `segments` independent reductions over `length` contiguous elements each, each cut into
// `splits` pieces of `split_len` elements (the last one shorter, none empty). A team of
// `team_threads` threads (1, a warp, or the whole block) reduces one piece at a time; the block
// b of the grid takes pieces b * teams_per_block + team, then strides by grid * teams_per_block.
struct ReducePlan {
  int64_t segments;
  int64_t length;
  int64_t splits;
  int64_t split_len;
  int64_t pieces;  // segments * splits: also the number of partials
  int team_threads;
  int teams_per_block;
  int64_t grid;
};

struct Range {
  int64_t segment;  // which group / row / sample
  int64_t begin;    // offsets inside the segment, [begin, end)
  int64_t end;
};

NORMEXT_HOST_DEVICE ReducePlan make_reduce_plan(int64_t segments, int64_t length,
                                                int64_t target_blocks) {
  ReducePlan p{};
  p.segments = segments;
  p.length = length;
  if (length <= kWarpReduceMaxElems) {
    p.team_threads = length <= kThreadReduceMaxElems ? 1 : kWarpSize;
    p.splits = 1;
    p.split_len = length;
  } else {
    p.team_threads = kBlockThreads;
    // NB: split only while N*G blocks would leave the device partly idle (batch 1, G=32, huge
    // HxW: 32 blocks on 132 SMs); never below kMinSplitElems per block.
    const int64_t max_splits = length / kMinSplitElems > 1 ? length / kMinSplitElems : 1;
    const int64_t want = ceil_div(target_blocks, segments);
    const int64_t splits = clamp64(want, 1, max_splits);
    p.split_len = round_up(ceil_div(length, splits), kSplitAlign);
    p.splits = ceil_div(length, p.split_len);
  }
  p.pieces = segments * p.splits;
  p.teams_per_block = kBlockThreads / p.team_threads;
  p.grid = grid_for(ceil_div(p.pieces, p.teams_per_block));
  return p;
}

NORMEXT_HOST_DEVICE Range reduce_piece(const ReducePlan& p, int64_t piece) {
  const int64_t segment = piece / p.splits;
  const int64_t split = piece - segment * p.splits;
  const int64_t begin = split * p.split_len;
  const int64_t end = begin + p.split_len < p.length ? begin + p.split_len : p.length;
  return {segment, begin, end};
}

// Channels-last reduction: block (n, split) covers positions [split * rows_per_split, ...) of
// sample n, every channel. Statistics partial (n, split, g) sits at (n * splits + split) * G + g,
// sums partial (n, split, c) at (n * splits + split) * C + c.
struct ChannelsLastReducePlan {
  int64_t N;
  int64_t HxW;
  int64_t C;
  int64_t G;
  int64_t splits;
  int64_t rows_per_split;
  int64_t blocks;        // N * splits
  int64_t partials;      // N * splits * C: (ds, db) partials of the backward
  int64_t stat_partials; // N * splits * G: statistics partials of the forward
  int64_t grid;
};

// The fewest positions a channels-last block reduces (see kMinChannelsLastBlockElems).
NORMEXT_HOST_DEVICE int64_t channels_last_min_rows(int64_t C) {
  const int64_t rows = ceil_div(kMinChannelsLastBlockElems, C);
  return clamp64(rows, 1, kMaxChannelsLastMinRows);
}

NORMEXT_HOST_DEVICE ChannelsLastReducePlan make_channels_last_reduce_plan(int64_t N, int64_t HxW,
                                                                        int64_t C, int64_t G,
                                                                        int64_t target_blocks) {
  ChannelsLastReducePlan p{};
  p.N = N;
  p.HxW = HxW;
  p.C = C;
  p.G = G;
  const int64_t min_rows = channels_last_min_rows(C);
  const int64_t max_splits = HxW / min_rows > 1 ? HxW / min_rows : 1;
  const int64_t splits = clamp64(ceil_div(target_blocks, N), 1, max_splits);
  p.rows_per_split = ceil_div(HxW, splits);
  p.splits = ceil_div(HxW, p.rows_per_split);
  p.blocks = N * p.splits;
  p.partials = p.blocks * C;
  p.stat_partials = p.blocks * G;
  p.grid = grid_for(p.blocks);
  return p;
}

// Positions [begin, end) of sample `segment` that block-work item b reduces.
NORMEXT_HOST_DEVICE Range channels_last_block(const ChannelsLastReducePlan& p, int64_t b) {
  const int64_t n = b / p.splits;
  const int64_t split = b - n * p.splits;
  const int64_t begin = split * p.rows_per_split;
  const int64_t end = begin + p.rows_per_split < p.HxW ? begin + p.rows_per_split : p.HxW;
  return {n, begin, end};
}

NORMEXT_HOST_DEVICE int64_t channels_last_partial_index(const ChannelsLastReducePlan& p, int64_t n,
                                                        int64_t split, int64_t c) {
  return (n * p.splits + split) * p.C + c;
}

NORMEXT_HOST_DEVICE int64_t channels_last_stat_index(const ChannelsLastReducePlan& p, int64_t n,
                                                     int64_t split, int64_t g) {
  return (n * p.splits + split) * p.G + g;
}

// Thread layout of a channels-last reduction block. A row (position) of C channels is `cols`
// columns of `vec` channels (one load: 16 bytes of float or double, 8 of half; or vec = 1); the
// block takes them in `passes` passes of `pass_cols` columns (the last one shorter). In a pass,
// thread t is column lane t % col_lanes and row lane t / col_lanes (threads from
// row_lanes * col_lanes on idle): it owns columns j * col_lanes + lane (j < slots) of the pass and
// visits rows lane, lane + row_lanes, ... of the block, so a warp reads whole runs of consecutive
// columns of a row.
struct ChannelsLastLanes {
  int vec;
  int slots;
  int col_lanes;
  int row_lanes;
  int64_t cols;       // C / vec
  int64_t pass_cols;  // columns per pass: pass p covers [p * pass_cols, ...) of cols
  int64_t passes;
};

// The layout for C channels loaded `vec` at a time (vec divides C, vec <=
// kChannelsLastThreadChannels) in blocks of up to `rows` rows: the least work for the busiest
// thread, passes * (slots * ceil(rows / row_lanes) + kChannelsLastPassCostRows), trying from the
// fewest passes to twice that (16 more at most); on a tie, fewer passes, then fewer slots. Many
// rows favour full use of the threads (more, narrower passes); a few rows favour fewer passes.
// NB: the kernels need 1 <= slots <= kChannelsLastMaxSlots, slots * vec <=
// kChannelsLastThreadChannels, row_lanes * col_lanes <= kBlockThreads, slots * col_lanes >=
// pass_cols and pass_cols * vec <= kChannelsLastPassChannels; tests/cpp/test_launch_plan.cpp
// checks them.
NORMEXT_HOST_DEVICE ChannelsLastLanes make_channels_last_lanes(int64_t C, int vec, int64_t rows) {
  ChannelsLastLanes best{};
  best.vec = vec;
  best.cols = C / vec;
  int max_slots = kChannelsLastThreadChannels / vec;
  max_slots = max_slots < 1 ? 1 : (max_slots > kChannelsLastMaxSlots ? kChannelsLastMaxSlots
                                                                       : max_slots);
  const int64_t max_pass_cols = kChannelsLastPassChannels / vec < kBlockThreads * max_slots
                                    ? kChannelsLastPassChannels / vec
                                    : kBlockThreads * max_slots;
  const int64_t min_passes = ceil_div(best.cols, max_pass_cols);
  int64_t best_cost = 0;
  const int64_t max_passes = min_passes + (min_passes < 16 ? min_passes : 16);
  for (int64_t try_passes = min_passes; try_passes <= max_passes; ++try_passes) {
    const int64_t pass_cols = ceil_div(best.cols, try_passes);
    const int64_t passes = ceil_div(best.cols, pass_cols);
    for (int slots = 1; slots <= max_slots; ++slots) {
      const int64_t col_lanes = ceil_div(pass_cols, slots);
      if (col_lanes > kBlockThreads) {
        continue;
      }
      const int64_t row_lanes = kBlockThreads / col_lanes;
      const int64_t cost = passes * (slots * ceil_div(rows, row_lanes) + kChannelsLastPassCostRows);
      if (best.slots == 0 || cost < best_cost) {
        best_cost = cost;
        best.slots = slots;
        best.col_lanes = static_cast<int>(col_lanes);
        best.row_lanes = static_cast<int>(row_lanes);
        best.pass_cols = pass_cols;
        best.passes = passes;
      }
    }
  }
  return best;
}

// Elementwise pass over `rows` rows of `row_len` contiguous elements. Long rows are cut into
// `splits` tiles of `split_len` elements (rows_per_tile = 1); short rows are packed
// `rows_per_tile` whole rows to a tile (splits = 1), so a tile is always one contiguous range of
// at most about kApplyTileElems elements.
struct ApplyPlan {
  int64_t rows;
  int64_t row_len;
  int64_t rows_per_tile;
  int64_t splits;
  int64_t split_len;
  int64_t tiles;
  int64_t grid;
};

struct Tile {
  int64_t row;    // first row of the tile
  int64_t begin;  // flat element offsets [begin, end)
  int64_t end;
};

NORMEXT_HOST_DEVICE ApplyPlan make_apply_plan(int64_t rows, int64_t row_len) {
  ApplyPlan p{};
  p.rows = rows;
  p.row_len = row_len;
  if (2 * row_len >= kApplyTileElems) {
    p.rows_per_tile = 1;
    p.split_len = row_len < kApplyTileElems ? row_len : kApplyTileElems;
    p.splits = ceil_div(row_len, p.split_len);
  } else {
    p.rows_per_tile = kApplyTileElems / row_len;
    p.splits = 1;
    p.split_len = row_len;
  }
  p.tiles = ceil_div(rows, p.rows_per_tile) * p.splits;
  p.grid = grid_for(p.tiles);
  return p;
}

NORMEXT_HOST_DEVICE Tile apply_tile(const ApplyPlan& p, int64_t t) {
  if (p.rows_per_tile == 1) {
    const int64_t row = t / p.splits;
    const int64_t split = t - row * p.splits;
    const int64_t begin = split * p.split_len;
    const int64_t end = begin + p.split_len < p.row_len ? begin + p.split_len : p.row_len;
    return {row, row * p.row_len + begin, row * p.row_len + end};
  }
  const int64_t row = t * p.rows_per_tile;
  const int64_t row_end = row + p.rows_per_tile < p.rows ? row + p.rows_per_tile : p.rows;
  return {row, row * p.row_len, row_end * p.row_len};
}

// Elements before the first `vec`-element aligned address of a range of `n` elements of
// `elem_size` bytes starting at byte address `addr`: the vectorized loops do these one by one,
// then whole vectors, then the tail. n when the address is not even element aligned.
NORMEXT_HOST_DEVICE int64_t misaligned_head(uint64_t addr, int64_t elem_size, int64_t vec,
                                           int64_t n) {
  if (addr % static_cast<uint64_t>(elem_size) != 0) {
    return n;
  }
  const int64_t elem_index = static_cast<int64_t>((addr / elem_size) % vec);
  const int64_t head = (vec - elem_index) % vec;
  return head < n ? head : n;
}

// Everything one GroupNorm call launches, forward and backward, for one layout.
struct GroupNormPlan {
  int64_t N;
  int64_t C;
  int64_t HxW;
  int64_t G;
  int64_t D;
  bool channels_last;
  ReducePlan stats;               // NCHW forward statistics
  ReducePlan sums;                // NCHW backward (ds, db)
  ChannelsLastReducePlan cl;      // channels-last statistics and (ds, db)
  ApplyPlan apply;                // y and dx
  int64_t stat_partials;          // WelfordStat<double> partials of the forward
  int64_t stat_items_per_group;   // partials merged into one group's statistics
  int64_t sum_partials;           // (ds, db) partials of the backward
  int64_t sum_items_per_channel;  // partials summed into one (n, c)
  int finalize_team_threads;      // finalize: one thread or one warp per (n, g)
  int64_t group_grid;             // finalize grid
  int64_t group_thread_grid;      // backward coefficients: one thread per (n, g)
  int64_t channel_grid;           // one thread per (n, c)
  int64_t param_grid;             // one thread per c
};

NORMEXT_HOST_DEVICE GroupNormPlan make_group_norm_plan(int64_t N, int64_t C, int64_t HxW,
                                                       int64_t G, bool channels_last,
                                                       int64_t sm_count) {
  GroupNormPlan p{};
  p.N = N;
  p.C = C;
  p.HxW = HxW;
  p.G = G;
  p.D = C / G;
  p.channels_last = channels_last;
  const int64_t target_blocks = (sm_count > 0 ? sm_count : 1) * kBlocksPerSm;
  if (channels_last) {
    p.cl = make_channels_last_reduce_plan(N, HxW, C, G, target_blocks);
    p.apply = make_apply_plan(N, HxW * C);
    p.stat_partials = p.cl.stat_partials;
    p.stat_items_per_group = p.cl.splits;
    p.sum_partials = p.cl.partials;
    p.sum_items_per_channel = p.cl.splits;
  } else {
    p.stats = make_reduce_plan(N * G, p.D * HxW, target_blocks);
    p.sums = make_reduce_plan(N * C, HxW, target_blocks);
    p.apply = make_apply_plan(N * C, HxW);
    p.stat_partials = p.stats.pieces;
    p.stat_items_per_group = p.stats.splits;
    p.sum_partials = p.sums.pieces;
    p.sum_items_per_channel = p.sums.splits;
  }
  p.finalize_team_threads = p.stat_items_per_group <= kThreadFinalizeMaxItems ? 1 : kWarpSize;
  p.group_grid = grid_for(ceil_div(N * G, kBlockThreads / p.finalize_team_threads));
  p.group_thread_grid = grid_for(ceil_div(N * G, kBlockThreads));
  p.channel_grid = grid_for(ceil_div(N * C, kBlockThreads));
  p.param_grid = grid_for(ceil_div(C, kBlockThreads));
  return p;
}

// Partial k (0 <= k < stat_items_per_group: the split) of group ng = n * G + g.
// NB: the finalize merges the k in a fixed order, which fixes the result bit for bit.
NORMEXT_HOST_DEVICE int64_t stat_partial_index(const GroupNormPlan& p, int64_t ng, int64_t k) {
  if (!p.channels_last) {
    return ng * p.stats.splits + k;
  }
  const int64_t n = ng / p.G;
  return channels_last_stat_index(p.cl, n, k, ng - n * p.G);
}

// Partial k (0 <= k < sum_items_per_channel) of channel row nc = n * C + c.
NORMEXT_HOST_DEVICE int64_t sum_partial_index(const GroupNormPlan& p, int64_t nc, int64_t k) {
  if (!p.channels_last) {
    return nc * p.sums.splits + k;
  }
  const int64_t n = nc / p.C;
  return channels_last_partial_index(p.cl, n, k, nc - n * p.C);
}

} // namespace cuda
} // namespace normext
