// Unit test of the CUDA GroupNorm launch plans (csrc/ops/cuda/group_norm_launch.h), on the CPU:
// for shapes up to 2^34 elements and N * G from 1 to 1e5, every element is covered exactly once by
// the block decomposition the kernels use, every partial index is inside its buffer (and each
// partial written once), and every grid is within the hardware limits. Plain C++, no torch, no
// GPU; run by ctest.
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "ops/cuda/group_norm_launch.h"
#include "plan_test_util.h"

namespace {

using namespace normext::cuda;

// Small enough to enumerate every element / partial.
constexpr int64_t kExhaustiveElems = int64_t(1) << 20;
// Enumerate every piece / tile up to this many, else sample.
constexpr int64_t kEnumerateItems = int64_t(1) << 22;

bool grid_ok(int64_t grid) {
  return grid >= 1 && grid <= kMaxGridX;
}

// Items visited by the grid-stride loops of the kernels: block b, team t handles
// b * teams + t, then strides by grid * teams. Each item in [0, items) exactly once.
void check_grid_stride(int64_t items, int64_t grid, int64_t teams, const char* what) {
  if (items > kEnumerateItems) {
    EXPECT(grid * teams >= 1, "%s", what);
    return;
  }
  std::vector<uint8_t> seen(items, 0);
  for (int64_t b = 0; b < grid; ++b) {
    for (int64_t t = 0; t < teams; ++t) {
      for (int64_t i = b * teams + t; i < items; i += grid * teams) {
        ++seen[i];
      }
    }
  }
  int64_t bad = 0;
  for (int64_t i = 0; i < items; ++i) {
    bad += seen[i] != 1;
  }
  EXPECT(bad == 0, "%s: %lld of %lld items not visited exactly once", what, (long long)bad,
         (long long)items);
}

// ReducePlan: pieces of each segment tile [0, length) in order, none empty; offsets and partial
// indices in range.
void check_reduce_plan(int64_t segments, int64_t length, int64_t target, const char* what) {
  const ReducePlan p = make_reduce_plan(segments, length, target);
  EXPECT(p.splits >= 1 && p.split_len >= 1, "%s: splits %lld split_len %lld", what,
         (long long)p.splits, (long long)p.split_len);
  // Tiling: (splits - 1) * split_len < length <= splits * split_len, so no gap, no overlap, no
  // empty piece.
  EXPECT((p.splits - 1) * p.split_len < length && length <= p.splits * p.split_len,
         "%s: %lld splits of %lld for length %lld", what, (long long)p.splits,
         (long long)p.split_len, (long long)length);
  EXPECT(p.pieces == segments * p.splits, "%s: pieces", what);
  EXPECT(p.team_threads * p.teams_per_block == kBlockThreads, "%s: teams", what);
  EXPECT(p.team_threads == 1 || p.team_threads == kWarpSize || p.team_threads == kBlockThreads,
         "%s: team_threads", what);
  EXPECT(p.team_threads == kBlockThreads || p.splits == 1, "%s: only block teams split", what);
  EXPECT(p.splits == 1 || p.split_len % kSplitAlign == 0, "%s: split alignment", what);
  EXPECT(p.splits == 1 || p.split_len >= kMinSplitElems, "%s: split too small", what);
  EXPECT(grid_ok(p.grid), "%s: grid %lld", what, (long long)p.grid);
  EXPECT(p.grid * p.teams_per_block >= p.pieces || p.grid == kMaxGridX, "%s: grid too small",
         what);
  // NB: splitting targets about `target` blocks in all; never far above it.
  EXPECT(p.splits == 1 || p.pieces < target + segments, "%s: %lld pieces for target %lld", what,
         (long long)p.pieces, (long long)target);
  check_grid_stride(p.pieces, p.grid, p.teams_per_block, what);
  check_grid_stride(p.pieces, 3, p.teams_per_block, what);  // a capped grid still covers all

  auto check_piece = [&](int64_t piece) {
    const Range r = reduce_piece(p, piece);
    const int64_t split = piece % p.splits;
    EXPECT(r.segment == piece / p.splits && r.begin < r.end && r.end <= length,
           "%s: piece %lld -> segment %lld [%lld, %lld)", what, (long long)piece,
           (long long)r.segment, (long long)r.begin, (long long)r.end);
    EXPECT(r.begin == split * p.split_len, "%s: piece %lld begin", what, (long long)piece);
    EXPECT((split + 1 == p.splits) == (r.end == length), "%s: piece %lld end", what,
           (long long)piece);
    if (split + 1 < p.splits) {
      EXPECT(reduce_piece(p, piece + 1).begin == r.end, "%s: gap after piece %lld", what,
             (long long)piece);
    }
  };
  if (p.pieces <= kEnumerateItems) {
    for (int64_t piece = 0; piece < p.pieces; ++piece) {
      check_piece(piece);
    }
  } else {
    for (int64_t piece = 0; piece < p.pieces; piece += p.pieces / 4099 + 1) {
      check_piece(piece);
    }
    check_piece(p.pieces - 1);
  }
  if (segments * length <= kExhaustiveElems) {
    std::vector<uint8_t> seen(segments * length, 0);
    for (int64_t piece = 0; piece < p.pieces; ++piece) {
      const Range r = reduce_piece(p, piece);
      for (int64_t i = r.begin; i < r.end; ++i) {
        ++seen[r.segment * length + i];
      }
    }
    int64_t bad = 0;
    for (uint8_t s : seen) {
      bad += s != 1;
    }
    EXPECT(bad == 0, "%s: %lld elements not covered exactly once", what, (long long)bad);
  }
}

void check_apply_plan(int64_t rows, int64_t row_len, const char* what) {
  const ApplyPlan p = make_apply_plan(rows, row_len);
  EXPECT(grid_ok(p.grid), "%s: grid", what);
  EXPECT(p.rows_per_tile == 1 || p.splits == 1, "%s: mode", what);
  EXPECT(p.rows_per_tile == 1 || p.rows_per_tile * row_len <= kApplyTileElems,
         "%s: multi-row tile too large", what);
  EXPECT((p.splits - 1) * p.split_len < row_len && row_len <= p.splits * p.split_len,
         "%s: row split", what);
  check_grid_stride(p.tiles, p.grid, 1, what);
  const int64_t total = rows * row_len;
  auto check_tile = [&](int64_t t, int64_t expect_begin) {
    const Tile tile = apply_tile(p, t);
    EXPECT(tile.begin == expect_begin || expect_begin < 0, "%s: tile %lld begins at %lld", what,
           (long long)t, (long long)tile.begin);
    EXPECT(tile.begin < tile.end && tile.end <= total, "%s: tile %lld [%lld, %lld)", what,
           (long long)t, (long long)tile.begin, (long long)tile.end);
    EXPECT(tile.end - tile.begin <= kApplyTileElems, "%s: tile %lld too long", what, (long long)t);
    EXPECT(tile.row * row_len <= tile.begin && tile.begin < (tile.row + 1) * row_len,
           "%s: tile %lld row %lld", what, (long long)t, (long long)tile.row);
    if (p.rows_per_tile == 1) {
      EXPECT(tile.end <= (tile.row + 1) * row_len, "%s: tile %lld crosses a row", what,
             (long long)t);
    } else {
      EXPECT(tile.begin % row_len == 0 && tile.end % row_len == 0, "%s: partial rows", what);
    }
    return tile.end;
  };
  if (p.tiles <= kEnumerateItems) {
    int64_t next = 0;
    for (int64_t t = 0; t < p.tiles; ++t) {
      next = check_tile(t, next);
    }
    EXPECT(next == total, "%s: tiles end at %lld of %lld", what, (long long)next,
           (long long)total);
  } else {
    for (int64_t t = 0; t + 1 < p.tiles; t += p.tiles / 4099 + 1) {
      const int64_t end = check_tile(t, -1);
      check_tile(t + 1, end);
    }
    EXPECT(check_tile(p.tiles - 1, -1) == total, "%s: last tile", what);
  }
}

void check_channels_last_plan(const GroupNormPlan& plan, const char* what) {
  const ChannelsLastReducePlan& p = plan.cl;
  EXPECT(grid_ok(p.grid), "%s: cl grid", what);
  EXPECT((p.splits - 1) * p.rows_per_split < p.HxW && p.HxW <= p.splits * p.rows_per_split,
         "%s: cl rows split", what);
  EXPECT(p.splits == 1 || p.rows_per_split >= channels_last_min_rows(p.C), "%s: cl split too small",
         what);
  EXPECT(p.partials == p.N * p.splits * p.C && p.stat_partials == p.N * p.splits * p.G,
         "%s: cl partials", what);
  check_grid_stride(p.blocks, p.grid, 1, what);
  auto check_block = [&](int64_t b) {
    const Range r = channels_last_block(p, b);
    const int64_t split = b % p.splits;
    EXPECT(r.segment == b / p.splits && r.begin == split * p.rows_per_split && r.begin < r.end &&
               r.end <= p.HxW && ((split + 1 == p.splits) == (r.end == p.HxW)),
           "%s: cl block %lld", what, (long long)b);
    EXPECT(channels_last_partial_index(p, r.segment, split, p.C - 1) < p.partials,
           "%s: cl partial index", what);
    EXPECT(channels_last_stat_index(p, r.segment, split, p.G - 1) < p.stat_partials,
           "%s: cl stat index", what);
  };
  for (int64_t b = 0; b < p.blocks; b += p.blocks > kEnumerateItems ? p.blocks / 4099 + 1 : 1) {
    check_block(b);
  }
  check_block(p.blocks - 1);
  // Every (n, split, g) statistics partial and (n, split, c) sums partial written exactly once.
  if (p.blocks * p.C <= kEnumerateItems) {
    std::vector<uint8_t> stat_written(p.stat_partials, 0), sum_written(p.partials, 0);
    int64_t out_of_range = 0;
    for (int64_t b = 0; b < p.blocks; ++b) {
      const Range r = channels_last_block(p, b);
      const int64_t split = b - r.segment * p.splits;
      for (int64_t g = 0; g < p.G; ++g) {
        const int64_t i = channels_last_stat_index(p, r.segment, split, g);
        i >= 0 && i < p.stat_partials ? ++stat_written[i] : ++out_of_range;
      }
      for (int64_t c = 0; c < p.C; ++c) {
        const int64_t i = channels_last_partial_index(p, r.segment, split, c);
        i >= 0 && i < p.partials ? ++sum_written[i] : ++out_of_range;
      }
    }
    int64_t bad = 0;
    for (uint8_t w : stat_written) {
      bad += w != 1;
    }
    for (uint8_t w : sum_written) {
      bad += w != 1;
    }
    EXPECT(out_of_range == 0 && bad == 0, "%s: cl partials: %lld out of range, %lld not written once",
           what, (long long)out_of_range, (long long)bad);
  }
  if (p.N * p.HxW * p.C <= kExhaustiveElems) {
    std::vector<uint8_t> seen(p.N * p.HxW * p.C, 0);
    for (int64_t b = 0; b < p.blocks; ++b) {
      const Range r = channels_last_block(p, b);
      for (int64_t row = r.begin; row < r.end; ++row) {
        for (int64_t c = 0; c < p.C; ++c) {
          ++seen[(r.segment * p.HxW + row) * p.C + c];
        }
      }
    }
    int64_t bad = 0;
    for (uint8_t s : seen) {
      bad += s != 1;
    }
    EXPECT(bad == 0, "%s: cl %lld elements not covered exactly once", what, (long long)bad);
  }
}

// The thread layout of a channels-last block for C channels loaded `vec` at a time: within the
// limits the kernels are built for (registers, shared memory, instantiated slots), and every column
// of every pass owned by exactly one (slot, column lane).
void check_channels_last_lanes(int64_t C, int vec, int64_t rows) {
  char what[96];
  std::snprintf(what, sizeof(what), "lanes C=%lld vec=%d rows=%lld", (long long)C, vec,
                (long long)rows);
  const ChannelsLastLanes l = make_channels_last_lanes(C, vec, rows);
  EXPECT(l.vec == vec && l.cols == C / vec, "%s: cols %lld", what, (long long)l.cols);
  EXPECT(l.slots >= 1 && l.slots <= kChannelsLastMaxSlots &&
             l.slots * vec <= kChannelsLastThreadChannels,
         "%s: slots %d", what, l.slots);
  EXPECT(l.col_lanes >= 1 && l.row_lanes >= 1 && l.col_lanes * l.row_lanes <= kBlockThreads,
         "%s: %d x %d lanes", what, l.col_lanes, l.row_lanes);
  // NB: as many row lanes as fit: a layout with room for another never leaves it idle.
  EXPECT((l.row_lanes + 1) * l.col_lanes > kBlockThreads, "%s: row lanes", what);
  EXPECT(l.pass_cols >= 1 && l.pass_cols * vec <= kChannelsLastPassChannels &&
             l.slots * l.col_lanes >= l.pass_cols,
         "%s: pass of %lld columns", what, (long long)l.pass_cols);
  EXPECT((l.passes - 1) * l.pass_cols < l.cols && l.cols <= l.passes * l.pass_cols,
         "%s: %lld passes of %lld", what, (long long)l.passes, (long long)l.pass_cols);
  // Shared memory of the kernels: two values per (row lane, channel) of a pass.
  EXPECT(l.row_lanes * l.pass_cols * vec <= kBlockThreads * kChannelsLastThreadChannels,
         "%s: shared memory", what);
  if (l.cols <= (int64_t(1) << 16)) {
    std::vector<uint8_t> owned(l.cols, 0);
    int64_t outside = 0;
    for (int64_t pass = 0; pass < l.passes; ++pass) {
      const int64_t col0 = pass * l.pass_cols;
      const int64_t pass_cols = l.pass_cols < l.cols - col0 ? l.pass_cols : l.cols - col0;
      for (int j = 0; j < l.slots; ++j) {
        for (int lane = 0; lane < l.col_lanes; ++lane) {
          const int64_t col = int64_t(j) * l.col_lanes + lane;
          if (col < pass_cols) {
            col0 + col < l.cols ? ++owned[col0 + col] : ++outside;
          }
        }
      }
    }
    int64_t bad = 0;
    for (uint8_t o : owned) {
      bad += o != 1;
    }
    EXPECT(outside == 0 && bad == 0, "%s: %lld columns outside, %lld not owned once", what,
           (long long)outside, (long long)bad);
  }
}

// The finalize kernels' view of the partials: every (group, k) and (channel row, k) in range, each
// partial read by exactly one of them, and the items of a group hold exactly D * HxW elements.
void check_partial_indices(const GroupNormPlan& plan, const char* what) {
  const int64_t groups = plan.N * plan.G;
  const int64_t rows = plan.N * plan.C;
  EXPECT(plan.stat_items_per_group >= 1 && plan.sum_items_per_channel >= 1, "%s: items", what);
  // Elements behind one group's partials.
  if (plan.channels_last) {
    EXPECT(plan.stat_items_per_group == plan.cl.splits && plan.cl.G == plan.G, "%s: cl items",
           what);
  } else {
    EXPECT(plan.stats.length == plan.D * plan.HxW && plan.stats.segments == groups,
           "%s: stats segments", what);
    EXPECT(plan.sums.length == plan.HxW && plan.sums.segments == rows, "%s: sums segments",
           what);
  }
  const bool exhaustive = groups * plan.stat_items_per_group <= kEnumerateItems &&
                          rows * plan.sum_items_per_channel <= kEnumerateItems;
  if (exhaustive) {
    std::vector<uint8_t> seen(plan.stat_partials, 0);
    int64_t out_of_range = 0;
    for (int64_t ng = 0; ng < groups; ++ng) {
      for (int64_t k = 0; k < plan.stat_items_per_group; ++k) {
        const int64_t i = stat_partial_index(plan, ng, k);
        if (i < 0 || i >= plan.stat_partials) {
          ++out_of_range;
        } else {
          ++seen[i];
        }
      }
    }
    int64_t bad = 0;
    for (uint8_t s : seen) {
      bad += s != 1;
    }
    EXPECT(out_of_range == 0 && bad == 0, "%s: stat partials: %lld out of range, %lld not read once",
           what, (long long)out_of_range, (long long)bad);
    std::vector<uint8_t> seen_sums(plan.sum_partials, 0);
    out_of_range = 0;
    for (int64_t nc = 0; nc < rows; ++nc) {
      for (int64_t k = 0; k < plan.sum_items_per_channel; ++k) {
        const int64_t i = sum_partial_index(plan, nc, k);
        if (i < 0 || i >= plan.sum_partials) {
          ++out_of_range;
        } else {
          ++seen_sums[i];
        }
      }
    }
    bad = 0;
    for (uint8_t s : seen_sums) {
      bad += s != 1;
    }
    EXPECT(out_of_range == 0 && bad == 0, "%s: sum partials: %lld out of range, %lld not read once",
           what, (long long)out_of_range, (long long)bad);
  } else {
    const int64_t last_group = groups - 1, last_item = plan.stat_items_per_group - 1;
    for (int64_t ng : {int64_t(0), groups / 2, last_group}) {
      for (int64_t k : {int64_t(0), last_item / 2, last_item}) {
        const int64_t i = stat_partial_index(plan, ng, k);
        EXPECT(i >= 0 && i < plan.stat_partials, "%s: stat partial (%lld, %lld)", what,
               (long long)ng, (long long)k);
      }
    }
    EXPECT(stat_partial_index(plan, last_group, last_item) == plan.stat_partials - 1,
           "%s: last stat partial", what);
    const int64_t last_item_c = plan.sum_items_per_channel - 1;
    for (int64_t nc : {int64_t(0), rows / 2, rows - 1}) {
      for (int64_t k : {int64_t(0), last_item_c / 2, last_item_c}) {
        const int64_t i = sum_partial_index(plan, nc, k);
        EXPECT(i >= 0 && i < plan.sum_partials, "%s: sum partial (%lld, %lld)", what,
               (long long)nc, (long long)k);
      }
    }
    EXPECT(sum_partial_index(plan, rows - 1, last_item_c) == plan.sum_partials - 1,
           "%s: last sum partial", what);
  }
  EXPECT(plan.finalize_team_threads == 1 || plan.finalize_team_threads == kWarpSize,
         "%s: finalize team", what);
  EXPECT(grid_ok(plan.group_grid) &&
             plan.group_grid * (kBlockThreads / plan.finalize_team_threads) >= groups,
         "%s: group grid", what);
  check_grid_stride(groups, plan.group_grid, kBlockThreads / plan.finalize_team_threads, what);
  EXPECT(grid_ok(plan.group_thread_grid) && plan.group_thread_grid * kBlockThreads >= groups,
         "%s: group thread grid", what);
  EXPECT(grid_ok(plan.channel_grid) && plan.channel_grid * kBlockThreads >= rows,
         "%s: channel grid", what);
  EXPECT(grid_ok(plan.param_grid) && plan.param_grid * kBlockThreads >= plan.C, "%s: param grid",
         what);
}

void check_shape(int64_t N, int64_t C, int64_t HxW, int64_t G, int64_t sm_count) {
  char what[160];
  for (bool cl : {false, true}) {
    std::snprintf(what, sizeof(what), "N=%lld C=%lld HxW=%lld G=%lld %s sms=%lld", (long long)N,
                  (long long)C, (long long)HxW, (long long)G, cl ? "channels_last" : "nchw",
                  (long long)sm_count);
    const GroupNormPlan plan = make_group_norm_plan(N, C, HxW, G, cl, sm_count);
    EXPECT(plan.D * G == C, "%s: D", what);
    if (cl) {
      check_channels_last_plan(plan, what);
      check_apply_plan(N, HxW * C, what);
    } else {
      check_reduce_plan(N * G, (C / G) * HxW, sm_count * kBlocksPerSm, what);
      check_reduce_plan(N * C, HxW, sm_count * kBlocksPerSm, what);
      check_apply_plan(N * C, HxW, what);
    }
    check_partial_indices(plan, what);
  }
}

void check_misaligned_head() {
  for (int64_t size : {2, 4, 8}) {
    const int64_t vec = 16 / size;
    for (uint64_t addr = 0; addr < 96; ++addr) {
      for (int64_t n = 0; n < 24; ++n) {
        const int64_t head = misaligned_head(addr, size, vec, n);
        if (addr % size != 0) {
          EXPECT(head == n, "unaligned element address %llu", (unsigned long long)addr);
          continue;
        }
        EXPECT(head >= 0 && head <= n && head < vec, "head %lld", (long long)head);
        EXPECT(head == n || (addr + head * size) % 16 == 0, "addr %llu head %lld not aligned",
               (unsigned long long)addr, (long long)head);
        // The smallest such head: one element fewer is not aligned.
        EXPECT(head == 0 || (addr + (head - 1) * size) % 16 != 0, "head %lld not minimal",
               (long long)head);
      }
    }
  }
}

} // namespace

int main() {
  check_misaligned_head();

  // Channels-last thread layouts: every C up to 4100 and some large ones, for each vector width
  // the kernels load (1, and 2 or 4 channels: 16 bytes of double / float, 8 of half) and blocks
  // of a few to many rows.
  for (int vec : {1, 2, 4}) {
    for (int64_t rows : {1, 4, 63, 1000, 1 << 20}) {
      for (int64_t C = vec; C <= 4100; C += vec) {
        check_channels_last_lanes(C, vec, rows);
      }
      for (int64_t C :
           {int64_t(1) << 16, int64_t(3) << 20, int64_t(1) << 31, (int64_t(1) << 34) - 4}) {
        check_channels_last_lanes(C, vec, rows);
      }
    }
  }

  // Exhaustive element coverage on small shapes, every layout, many SM counts.
  for (int64_t sms : {1, 132}) {
    for (int64_t N : {1, 3}) {
      for (int64_t G : {1, 3, 32}) {
        for (int64_t D : {1, 3, 16}) {
          for (int64_t HxW : {1, 3, 7, 31, 257, 4097, 40000}) {
            check_shape(N, G * D, HxW, G, sms);
          }
        }
      }
    }
  }
  // Batch 1, G = 32, large images (the case that needs split groups), up to 2^34 elements.
  for (int64_t sms : {108, 132}) {
    check_shape(1, 128, 1024 * 1024, 32, sms);
    check_shape(1, 512, 512 * 512, 32, sms);
    check_shape(1, 32, int64_t(1) << 29, 32, sms);  // 2^34 elements
    check_shape(2, 64, int64_t(1) << 27, 32, sms);  // 2^34 elements
    check_shape(1, 1, int64_t(1) << 34, 1, sms);    // one group of 2^34 elements
    check_shape(int64_t(1) << 24, 1024, 1, 32, sms);  // 2^34 elements, HxW = 1
    check_shape(int64_t(1) << 17, 16, 8192, 1, sms);  // 2^34 elements, N * G = 131072
  }
  // N * G from 1 to 1e5 (and beyond), with several group lengths.
  for (int64_t NG : {1, 7, 32, 100, 1000, 4096, 12345, 100000}) {
    for (int64_t HxW : {1, 9, 64, 3000, 65536}) {
      if (NG * 2 * HxW <= (int64_t(1) << 34)) {
        check_shape(NG, 2, HxW, 1, 132);
        check_shape(1, 2 * NG, HxW, NG, 132);
      }
    }
  }

  return plan_test::report();
}
