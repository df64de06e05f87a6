// Unit test of the CUDA row-norm launch plans (csrc/ops/cuda/layer_norm_launch.h), on the CPU: for
// M up to 2^31 rows, D up to 2^24 and 2-, 4- and 8-byte elements, every row is owned by exactly
// one team, the team and per-thread vector count are a pair the kernels instantiate, a row the
// register kernels take is held whole (every element by exactly one thread, for any head), every
// (row, column) of the parameter gradients is summed by exactly one tile into a partial inside its
// buffer, the row splits do not depend on the device, every grid is within the hardware limits,
// and the vector head computation aligns. Plain C++, no torch, no GPU; run by ctest.
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <vector>

#include "ops/cuda/layer_norm_launch.h"
#include "plan_test_util.h"

namespace {

using namespace normext::cuda::row_norm;

constexpr int64_t kEnumerateRows = int64_t(1) << 20;
constexpr int64_t kEnumerateCells = int64_t(1) << 22;

// The (team_threads, vecs_per_thread) pairs layer_norm_kernel.cu instantiates (with_row_kernel).
bool instantiated(int team, int vecs) {
  switch (team) {
    case 32:
      return vecs == 0 || vecs == 1 || vecs == 2 || vecs == 4 || vecs == 8;
    case 128:
      return vecs == 0 || vecs == 4 || vecs == 8;
    case 256:
    case 512:
      return vecs == 0 || vecs == 8;
  }
  return false;
}

// The register kernels' layout of a row (RowSplit, slot_elem, RowRegs): for every head a row can
// have (x element-aligned: head < vec), each element is held by exactly one (thread, slot), and
// no thread needs more slots than it has. `enumerate`: also count every element (small D).
void check_register_layout(const RowNormPlan& p, int64_t vec, bool enumerate) {
  const int team = p.team_threads;
  for (int64_t head = 0; head < vec; ++head) {
    const RowSplit s = row_split(head < p.D ? head : p.D, p.D, vec);
    EXPECT(s.head + s.nvec * vec + s.tail == p.D && s.tail >= 0 && s.tail < vec,
           "D=%lld head %lld: split", (long long)p.D, (long long)head);
    EXPECT(s.nvec <= static_cast<int64_t>(p.vecs_per_thread) * team,
           "D=%lld vec %lld head %lld: %lld vectors for %d x %d slots", (long long)p.D,
           (long long)vec, (long long)head, (long long)s.nvec, team, p.vecs_per_thread);
    EXPECT(s.head <= team && s.tail <= team, "head / tail wider than the team");
    // NB: the kernels keep offsets within a register row in int
    EXPECT(p.D < (int64_t(1) << 30), "D=%lld: int offsets", (long long)p.D);
    if (!enumerate) {
      continue;
    }
    std::vector<int> seen(p.D, 0);
    for (int rank = 0; rank < team; ++rank) {
      if (rank < s.head) {
        ++seen[rank];
      }
      for (int j = 0; j < p.vecs_per_thread; ++j) {
        if (static_cast<int64_t>(j) * team + rank < s.nvec) {
          const int64_t e = slot_elem(s, vec, team, rank, j);
          EXPECT(e >= s.head && e + vec <= p.D && (e - s.head) % vec == 0, "slot element %lld",
                 (long long)e);
          for (int64_t k = 0; k < vec && e + k < p.D; ++k) {
            ++seen[e + k];
          }
        }
      }
      if (rank < s.tail) {
        ++seen[s.head + s.nvec * vec + rank];
      }
    }
    int64_t bad = 0;
    for (int v : seen) {
      bad += v != 1;
    }
    EXPECT(bad == 0, "D=%lld vec %lld head %lld: %lld elements not held exactly once",
           (long long)p.D, (long long)vec, (long long)head, (long long)bad);
  }
}

// layout_max_d: rows up to this length get their register layout enumerated element by element.
void check_rows(const RowNormPlan& p, int64_t elem_bytes, int64_t layout_max_d) {
  const int64_t vec = 16 / elem_bytes;
  const int64_t vecs = (p.D + vec - 1) / vec;
  EXPECT(p.row_grid >= 1 && p.row_grid <= kMaxGridX, "row grid %lld", (long long)p.row_grid);
  EXPECT(p.block_threads == row_block_threads(p.team_threads) && p.block_threads <= 1024 &&
             p.block_threads % kWarpSize == 0,
         "block %d", p.block_threads);
  EXPECT(p.team_threads * p.teams_per_block == p.block_threads, "team %d x %d", p.team_threads,
         p.teams_per_block);
  EXPECT(instantiated(p.team_threads, p.vecs_per_thread), "D=%lld: no kernel for team %d vecs %d",
         (long long)p.D, p.team_threads, p.vecs_per_thread);
  // The smallest team that holds the row (a warp up to kWarpSize * kMaxRegVecs vectors), and the
  // re-reading kernel only for rows no team holds.
  EXPECT(p.team_threads == kWarpSize ? vecs <= kWarpSize * kMaxRegVecs
         : p.team_threads == 128   ? vecs > kWarpSize * kMaxRegVecs
                                   : vecs > (p.team_threads / 2) * kMaxRegVecs,
         "D=%lld: team %d larger than needed", (long long)p.D, p.team_threads);
  EXPECT((p.vecs_per_thread == 0) == (vecs > int64_t(kMaxTeamThreads) * kMaxRegVecs),
         "D=%lld: vecs %d", (long long)p.D, p.vecs_per_thread);
  if (p.vecs_per_thread > 0) {
    EXPECT(p.vecs_per_thread < 2 * ((vecs + p.team_threads - 1) / p.team_threads),
           "D=%lld: %d slots, far more than needed", (long long)p.D, p.vecs_per_thread);
    check_register_layout(p, vec, p.D <= layout_max_d);
  }
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
  const int64_t Ds[] = {1,    2,    3,    7,     8,     9,     31,    127,    128,  129,
                        255,  256,  257,  511,   512,   513,   768,   1023,   1024, 1025,
                        2047, 2048, 2049, 4095,  4096,  4097,  8191,  8192,   8193, 16384,
                        16385, 32768, 32769, 65536, 100000, int64_t(1) << 24};
  const int64_t sms[] = {1, 80, 108, 132};
  for (int64_t elem_bytes : {2, 4, 8}) {
    for (int64_t M : Ms) {
      for (int64_t D : Ds) {
        int64_t splits = -1;
        for (int64_t sm : sms) {
          const RowNormPlan p = make_row_norm_plan(M, D, elem_bytes, sm);
          check_rows(p, elem_bytes, sm == 132 ? int64_t(1) << 16 : 0);
          if (elem_bytes == 4) {  // NB: the parameter plan does not depend on the element size
            check_params(p);
          }
          if (splits >= 0) {
            EXPECT(p.row_splits == splits, "M=%lld: row splits depend on the device",
                   (long long)M);
          }
          splits = p.row_splits;
        }
      }
    }
    // Every row length up to 4 vectors past the largest register row: team and slot choice.
    for (int64_t D = 1; D <= int64_t(kMaxTeamThreads) * kMaxRegVecs * (16 / elem_bytes) + 64;
         ++D) {
      check_rows(make_row_norm_plan(3, D, elem_bytes, 132), elem_bytes, 1100);
    }
  }
  check_aligned_head();
  return plan_test::report();
}
