// Unit test of the CUDA row-norm launch plans (csrc/ops/cuda/layer_norm_launch.h), on the CPU: for
// M up to 2^31 rows and D up to 2^24, every row is owned by exactly one team, every (row, column)
// of the parameter gradients is summed by exactly one tile into a partial inside its buffer, the
// row splits do not depend on the device, every grid is within the hardware limits, and the
// vector head computation aligns. Plain C++, no torch, no GPU; run by ctest.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "ops/cuda/layer_norm_launch.h"
#include "plan_test_util.h"

namespace {

using namespace normext::cuda::row_norm;

constexpr int64_t kEnumerateRows = int64_t(1) << 20;
constexpr int64_t kEnumerateCells = int64_t(1) << 22;

void check_rows(const RowNormPlan& p) {
  EXPECT(p.row_grid >= 1 && p.row_grid <= kMaxGridX, "row grid %lld", (long long)p.row_grid);
  EXPECT(p.team_threads * p.teams_per_block == kBlockThreads, "team %d x %d", p.team_threads,
         p.teams_per_block);
  EXPECT(p.team_threads == (p.D <= kWarpRowMaxElems ? kWarpSize : kBlockThreads), "team %d",
         p.team_threads);
  if (p.M > kEnumerateRows) {
    // The mapping (step, block, team) -> row is a bijection onto the naturals; check its ends.
    const int64_t per_step = p.row_grid * p.teams_per_block;
    const int64_t last_step = (p.M - 1) / per_step;
    EXPECT(team_row(p, 0, 0, 0) == 0, "first row");
    EXPECT(team_row(p, p.row_grid - 1, p.teams_per_block - 1, last_step) >= p.M - 1, "last row");
    return;
  }
  std::vector<int> seen(p.M, 0);
  for (int64_t b = 0; b < p.row_grid; ++b) {
    for (int t = 0; t < p.teams_per_block; ++t) {
      for (int64_t step = 0;; ++step) {
        const int64_t row = team_row(p, b, t, step);
        if (row >= p.M) {
          break;
        }
        ++seen[row];
      }
    }
  }
  int64_t bad = 0;
  for (int64_t r = 0; r < p.M; ++r) {
    bad += seen[r] != 1;
  }
  EXPECT(bad == 0, "M=%lld D=%lld: %lld rows not owned exactly once", (long long)p.M,
         (long long)p.D, (long long)bad);
}

void check_params(const RowNormPlan& p) {
  EXPECT(p.param_grid >= 1 && p.param_grid <= kMaxGridX, "param grid %lld",
         (long long)p.param_grid);
  EXPECT(p.finalize_grid >= 1 && p.finalize_grid <= kMaxGridX, "finalize grid");
  EXPECT(p.row_splits >= 1 && p.row_splits <= kMaxRowSplits, "splits %lld",
         (long long)p.row_splits);
  EXPECT((p.row_splits - 1) * p.rows_per_split < p.M, "M=%lld: an empty split", (long long)p.M);
  EXPECT(p.row_splits * p.rows_per_split >= p.M, "M=%lld: rows left over", (long long)p.M);
  EXPECT(p.partials == p.row_splits * p.D, "partials");
  const int64_t tiles = p.col_tiles * p.row_splits;
  EXPECT(p.col_tiles * kColTile >= p.D && (p.col_tiles - 1) * kColTile < p.D, "col tiles");
  if (p.M * p.D > kEnumerateCells) {
    return;
  }
  std::vector<int> seen(p.M * p.D, 0), partial(p.partials, 0);
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const Tile t = param_tile(p, tile);
    EXPECT(t.col_end - t.col_begin <= kColTile, "tile width");
    for (int64_t c = t.col_begin; c < t.col_end; ++c) {
      const int64_t at = t.split * p.D + c;
      EXPECT(at >= 0 && at < p.partials, "partial index %lld", (long long)at);
      if (at >= 0 && at < p.partials) {
        ++partial[at];
      }
      for (int64_t r = t.row_begin; r < t.row_end; ++r) {
        ++seen[r * p.D + c];
      }
    }
  }
  int64_t bad = 0, bad_partials = 0;
  for (int v : seen) {
    bad += v != 1;
  }
  for (int v : partial) {
    bad_partials += v != 1;
  }
  EXPECT(bad == 0, "M=%lld D=%lld: %lld cells not summed exactly once", (long long)p.M,
         (long long)p.D, (long long)bad);
  EXPECT(bad_partials == 0, "M=%lld D=%lld: %lld partials not written exactly once",
         (long long)p.M, (long long)p.D, (long long)bad_partials);
}

void check_aligned_head() {
  for (int64_t elem : {2, 4, 8}) {
    for (uint64_t addr = 0; addr < 64; addr += static_cast<uint64_t>(elem)) {
      for (int64_t n : {0, 1, 3, 7, 100}) {
        const int64_t head = aligned_head(addr, elem, n);
        EXPECT(head >= 0 && head <= n, "head range");
        if (head < n) {
          EXPECT((addr + static_cast<uint64_t>(head * elem)) % 16 == 0,
                 "addr %llu elem %lld: head %lld not aligned", (unsigned long long)addr,
                 (long long)elem, (long long)head);
        }
      }
    }
  }
  // An address no element of which is aligned (odd byte offset for 2-byte elements): scalar.
  EXPECT(aligned_head(1, 2, 50) == 50, "misaligned element");
}

} // namespace

int main() {
  const int64_t Ms[] = {1, 2, 7, 8, 9, 31, 33, 100, 1000, 4097, 65536, 1000003, int64_t(1) << 31};
  const int64_t Ds[] = {1, 2, 31, 255, 256, 257, 768, 1024, 1025, 4096, 8192, 100000,
                        int64_t(1) << 24};
  const int64_t sms[] = {1, 80, 108, 132};
  for (int64_t M : Ms) {
    for (int64_t D : Ds) {
      int64_t splits = -1;
      for (int64_t sm : sms) {
        const RowNormPlan p = make_row_norm_plan(M, D, sm);
        check_rows(p);
        check_params(p);
        if (splits >= 0) {
          EXPECT(p.row_splits == splits, "M=%lld: row splits depend on the device", (long long)M);
        }
        splits = p.row_splits;
      }
    }
  }
  check_aligned_head();
  return plan_test::report();
}
