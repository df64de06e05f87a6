// Unit test of the CUDA BatchNorm launch plans (csrc/ops/cuda/batch_norm_launch.h), on the CPU: for
// shapes up to 2^34 elements, every element of every channel is covered exactly once by the pieces
// the reduction kernels walk, every partial index is inside its buffer and written exactly once,
// element offsets map to their channel, and every grid is within the hardware limits. Plain C++,
// no torch, no GPU; run by ctest.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "ops/cuda/batch_norm_launch.h"
#include "plan_test_util.h"

namespace {

using namespace normext::cuda::bn;

constexpr int64_t kExhaustiveElems = int64_t(1) << 20;

bool grid_ok(int64_t grid) {
  return grid >= 1 && grid <= kMaxGridX;
}

void check_shape(int64_t N, int64_t C, int64_t HxW, bool cl, int64_t sms) {
  const BatchNormPlan p = make_batch_norm_plan(N, C, HxW, cl, sms);
  const int64_t M = N * HxW;
  const int64_t total = N * C * HxW;
  EXPECT(grid_ok(p.reduce_grid) && grid_ok(p.finalize_grid) && grid_ok(p.elem_grid),
         "grids %lld %lld %lld", (long long)p.reduce_grid, (long long)p.finalize_grid,
         (long long)p.elem_grid);
  EXPECT(p.splits >= 1 && p.piece_elems >= 1, "splits %lld piece %lld", (long long)p.splits,
         (long long)p.piece_elems);
  EXPECT(p.partials == C * p.splits, "partials");
  EXPECT(p.reduce_items == p.tiles * p.splits, "items");
  EXPECT(p.tiles == (cl ? (C + kChannelTile - 1) / kChannelTile : C), "tiles");
  EXPECT(p.elem_tiles * kElemTile >= total && (p.elem_tiles - 1) * kElemTile < total,
         "elementwise tiles cover the tensor");
  EXPECT(p.finalize_grid * kBlockThreads >= C || p.finalize_grid == kMaxGridX, "finalize covers C");
  // A piece of each channel is reduced by exactly one item, and its pieces tile [0, M) in order.
  int64_t covered = 0;
  for (int64_t s = 0; s < p.splits; ++s) {
    const int64_t b = piece_begin(p, s), e = piece_end(p, s);
    EXPECT(b == covered || (b == M && e == M), "piece %lld starts at %lld, expected %lld",
           (long long)s, (long long)b, (long long)covered);
    EXPECT(b <= e && e <= M, "piece bounds");
    covered = e;
  }
  EXPECT(covered == M, "pieces cover %lld of %lld", (long long)covered, (long long)M);
  // Partials: (channel, split) -> index is a bijection onto [0, partials).
  if (p.partials <= kExhaustiveElems) {
    std::vector<int> written(p.partials, 0);
    for (int64_t item = 0; item < p.reduce_items; ++item) {
      const int64_t tile = item_tile(p, item), split = item_split(p, item);
      EXPECT(tile < p.tiles && split < p.splits, "item decomposition");
      const int64_t c0 = cl ? tile * kChannelTile : tile;
      const int64_t c1 = cl ? (c0 + kChannelTile < C ? c0 + kChannelTile : C) : c0 + 1;
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t idx = partial_index(p, c, split);
        EXPECT(idx >= 0 && idx < p.partials, "partial index %lld", (long long)idx);
        if (idx >= 0 && idx < p.partials) {
          ++written[idx];
        }
      }
    }
    for (int64_t i = 0; i < p.partials; ++i) {
      EXPECT(written[i] == 1, "partial %lld written %d times", (long long)i, written[i]);
    }
  }
  // Element offsets: NCHW (channel, i) -> offset is a bijection and channel_of inverts it.
  if (total <= kExhaustiveElems) {
    std::vector<int> seen(total, 0);
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t i = 0; i < M; ++i) {
        const int64_t o = cl ? i * C + c : nchw_offset(p, c, i);
        EXPECT(o >= 0 && o < total, "offset");
        if (o >= 0 && o < total) {
          ++seen[o];
          EXPECT(channel_of(p, o) == c, "channel_of(%lld) = %lld, expected %lld", (long long)o,
                 (long long)channel_of(p, o), (long long)c);
        }
      }
    }
    for (int64_t o = 0; o < total; ++o) {
      EXPECT(seen[o] == 1, "element %lld visited %d times", (long long)o, seen[o]);
    }
  }
}

} // namespace

int main() {
  const int64_t sms[] = {1, 108, 132};
  const int64_t Ns[] = {1, 2, 7, 64};
  const int64_t Cs[] = {1, 3, 32, 33, 256, 2048};
  const int64_t HxWs[] = {1, 5, 196, 3136, 12544};
  for (int64_t sm : sms) {
    for (int64_t N : Ns) {
      for (int64_t C : Cs) {
        for (int64_t HxW : HxWs) {
          for (bool cl : {false, true}) {
            check_shape(N, C, HxW, cl, sm);
          }
        }
      }
    }
  }
  // Large: 2^34 elements, 64-bit offsets and grids in range.
  check_shape(16, 1024, int64_t(1) << 20, false, 132);
  check_shape(16, 1024, int64_t(1) << 20, true, 132);
  check_shape(int64_t(1) << 20, 16384, 1, true, 132);
  check_shape(1, 1, int64_t(1) << 34, false, 132);
  return plan_test::report();
}
