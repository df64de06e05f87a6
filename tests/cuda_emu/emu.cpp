#include "include/emu.h"
#include <cstdlib>
thread_local dim3 threadIdx;
thread_local dim3 blockIdx;
dim3 blockDim;
dim3 gridDim;
namespace emu {
Block* g_block = nullptr;
long long g_syncs = 0;
// Grid caps: the kernels are grid-stride, so emulate at most this many blocks (the rest of the
// work is strided onto them), unless EMU_FULL_GRID.
unsigned g_max_blocks = 1u << 30;
void run_grid(dim3 grid, int block, const std::function<void()>& body) {
  if (const char* e = std::getenv("EMU_MAX_BLOCKS")) g_max_blocks = unsigned(std::atoi(e));
  unsigned nblocks = grid.x < g_max_blocks ? grid.x : g_max_blocks;
  gridDim = dim3(nblocks);   // NB: kernels see the capped grid, so their grid strides cover the work
  blockDim = dim3(block);
  Block blk(block);
  g_block = &blk;
  std::barrier<> start(block);
  std::vector<std::thread> ts;
  for (int t = 0; t < block; ++t) {
    ts.emplace_back([&, t]() {
      threadIdx = dim3(t);
      for (unsigned b = 0; b < nblocks; ++b) {
        blockIdx = dim3(b);
        body();
        blk.bar.arrive_and_wait();  // block done: shared memory may be reused
      }
    });
  }
  for (auto& t : ts) t.join();
  g_block = nullptr;
}
}  // namespace emu
