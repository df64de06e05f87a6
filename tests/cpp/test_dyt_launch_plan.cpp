// Unit test of the CUDA DyT launch plan (csrc/ops/cuda/dyt_launch.h), on the CPU: for both
// layouts and shapes from one element to 2^40, every element of the backward reduction is covered
// by exactly one block (and one thread of it), every partial index is inside its buffer and
// written once, the elementwise grid-stride loop covers every element, and every grid is within
// the hardware limits. Plain C++, no torch, no GPU; run by ctest.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "ops/cuda/dyt_launch.h"
#include "plan_test_util.h"

namespace {

using namespace normext::cuda;

constexpr int64_t kExhaustive = int64_t(1) << 21;

bool grid_ok(int64_t g) {
  return g >= 1 && g <= kDytMaxGrid;
}

// Element coverage of the rows-layout reduction, by replaying the kernel's loops.
void check_rows(int64_t rows, int64_t C, int64_t target) {
  const DytPlan p = make_dyt_plan(rows, C, 1, false, target);
  EXPECT(grid_ok(p.sum_grid) && grid_ok(p.elem_grid) && p.sum_grid <= p.sum_tiles,
         "rows %lld C %lld: grids %lld %lld",
         (long long)rows, (long long)C, (long long)p.sum_grid, (long long)p.elem_grid);
  EXPECT(p.sum_partials == p.row_blocks * C, "partials");
  EXPECT(p.row_blocks * p.rows_per_block >= rows && (p.row_blocks - 1) * p.rows_per_block < rows,
         "row blocks cover rows exactly");
  if (rows * C > kExhaustive) {
    // sample the first and last tiles
    for (int64_t b : {int64_t(0), p.sum_tiles - 1}) {
      const DytTile t = dyt_rows_tile(p, b);
      EXPECT(t.row_begin < t.row_end && t.row_end <= rows && t.col_begin < t.col_end && t.col_end <= C,
             "tile %lld", (long long)b);
    }
    const DytTile last = dyt_rows_tile(p, p.sum_tiles - 1);
    EXPECT(last.row_end == rows && last.col_end == C, "last tile ends at the end");
    return;
  }
  std::vector<int> seen(rows * C, 0);
  std::vector<int> partial_written(p.sum_partials, 0);
  for (int64_t b = 0; b < p.sum_tiles; ++b) {
    const DytTile t = dyt_rows_tile(p, b);
    for (int thread = 0; thread < kDytBlockThreads; ++thread) {
      const int lane = thread % kDytColsPerBlock, row_lane = thread / kDytColsPerBlock;
      const int64_t c = t.col_begin + lane;
      if (c >= t.col_end) {
        continue;
      }
      for (int64_t r = t.row_begin + row_lane; r < t.row_end; r += kDytRowLanes) {
        ++seen[r * C + c];
      }
      if (row_lane == 0) {
        const int64_t idx = (b / p.col_blocks) * C + c;
        EXPECT(idx >= 0 && idx < p.sum_partials, "partial index %lld", (long long)idx);
        if (idx >= 0 && idx < p.sum_partials) {
          ++partial_written[idx];
        }
      }
    }
  }
  for (int64_t i = 0; i < rows * C; ++i) {
    EXPECT(seen[i] == 1, "rows %lld C %lld: element %lld seen %d times", (long long)rows,
           (long long)C, (long long)i, seen[i]);
  }
  for (int64_t i = 0; i < p.sum_partials; ++i) {
    EXPECT(partial_written[i] == 1, "partial %lld written %d times", (long long)i, partial_written[i]);
  }
}

void check_planes(int64_t N, int64_t C, int64_t inner, int64_t target) {
  const DytPlan p = make_dyt_plan(N, C, inner, true, target);
  EXPECT(grid_ok(p.sum_grid) && grid_ok(p.elem_grid), "planes grids");
  EXPECT(p.sum_partials == p.sum_tiles && p.sum_tiles == N * C * p.chunks, "partials");
  EXPECT(p.chunks * p.chunk_len >= inner && (p.chunks - 1) * p.chunk_len < inner, "chunks");
  const int64_t numel = N * C * inner;
  if (numel > kExhaustive) {
    const DytSpan last = dyt_plane_span(p, p.sum_tiles - 1);
    EXPECT(last.plane == N * C - 1 && last.end == inner && last.begin < last.end, "last span");
    return;
  }
  std::vector<int> seen(numel, 0);
  for (int64_t b = 0; b < p.sum_tiles; ++b) {
    const DytSpan s = dyt_plane_span(p, b);
    EXPECT(s.plane >= 0 && s.plane < N * C && s.begin < s.end && s.end <= inner, "span %lld",
           (long long)b);
    for (int thread = 0; thread < kDytBlockThreads; ++thread) {
      for (int64_t i = s.begin + thread; i < s.end; i += kDytBlockThreads) {
        ++seen[s.plane * inner + i];
      }
    }
  }
  for (int64_t i = 0; i < numel; ++i) {
    EXPECT(seen[i] == 1, "planes %lld/%lld/%lld: element %lld seen %d times", (long long)N,
           (long long)C, (long long)inner, (long long)i, seen[i]);
    EXPECT(dyt_channel_of(p, i) == (i / inner) % C, "channel of %lld", (long long)i);
  }
}

// The elementwise grid-stride loop reaches every element exactly once.
void check_elementwise(int64_t numel) {
  const DytPlan p = make_dyt_plan(1, numel, 1, false, 528);
  const int64_t stride = p.elem_grid * kDytBlockThreads;
  EXPECT(stride * kDytElemsPerThread >= numel || p.elem_grid == kDytMaxGrid, "grid");
  if (numel <= kExhaustive) {
    std::vector<int> seen(numel, 0);
    for (int64_t start = 0; start < stride; ++start) {
      for (int64_t i = start; i < numel; i += stride) {
        ++seen[i];
      }
    }
    for (int64_t i = 0; i < numel; ++i) {
      EXPECT(seen[i] == 1, "elementwise %lld: element %lld seen %d", (long long)numel, (long long)i, seen[i]);
    }
  }
}

} // namespace

int main() {
  for (int64_t target : {int64_t(1), int64_t(528), int64_t(4 * 132)}) {
    for (int64_t rows : {int64_t(1), int64_t(7), int64_t(64), int64_t(65), int64_t(1000), int64_t(8193)}) {
      for (int64_t C : {int64_t(1), int64_t(20), int64_t(32), int64_t(33), int64_t(100), int64_t(1024)}) {
        check_rows(rows, C, target);
      }
    }
    for (int64_t N : {int64_t(1), int64_t(3)}) {
      for (int64_t C : {int64_t(1), int64_t(5), int64_t(64)}) {
        for (int64_t inner : {int64_t(1), int64_t(100), int64_t(4096), int64_t(4097), int64_t(70000)}) {
          check_planes(N, C, inner, target);
        }
      }
    }
  }
  // Huge shapes: grids stay within limits (the kernels grid-stride over tiles), 64-bit offsets.
  check_rows(3, int64_t(1) << 40, 528);  // more channel tiles than a grid holds
  check_rows(int64_t(1) << 31, 4096, 528);
  check_rows(int64_t(1) << 36, 16, 528);
  check_planes(1, 3, int64_t(1) << 38, 528);
  check_planes(int64_t(1) << 20, 1024, 1024, 528);
  for (int64_t n : {int64_t(1), int64_t(255), int64_t(2049), int64_t(1) << 20, int64_t(1) << 40}) {
    check_elementwise(n);
  }
  return plan_test::report();
}
