// The emulator's scheduler (include/emu.h): a block's threads are fibers on the calling OS thread.
// The scheduler always resumes the runnable fiber of highest priority (the order g_sched_order
// gives) and runs it until it waits at a barrier (__syncthreads, or a warp's shuffle); a barrier
// completes when its last member arrives, which then yields too. So the first thread runs as far
// ahead of the others as the barriers let it (whole warps run ahead of the others between block
// barriers), and a second run in the reverse order flips every such race. Fibers switch
// by a few instructions on x86-64 (emu_switch below: callee-saved registers, the stack pointer,
// MXCSR and the x87 control word), else, or where the process runs with a shadow stack, by
// ucontext (whose swapcontext costs a system call a switch: about 5x slower).
#include "include/emu.h"

#include <sys/mman.h>
#include <ucontext.h>

#include <cstdlib>
#include <fstream>
#include <string>

#if defined(__x86_64__)
// void emu_switch(void** save_sp, void* next_sp): saves this context's registers on its stack and
// its stack pointer in *save_sp, then resumes the context whose stack pointer is next_sp.
extern "C" void emu_switch(void** save_sp, void* next_sp);
asm(R"(
  .text
  .globl emu_switch
  .type emu_switch, @function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch, .-emu_switch
)");
#endif
dim3 threadIdx;
dim3 blockIdx;
dim3 blockDim;
dim3 gridDim;
namespace emu {
unsigned g_max_blocks = 1u << 30;
int g_sched_order = 0;
uint64_t* g_slots = nullptr;

namespace {
constexpr size_t kStackBytes = 256 * 1024;  // per fiber, after a guard page
constexpr size_t kGuardBytes = 4096;

struct Sched {
  bool fast = false;  // emu_switch, not ucontext
  int threads = 0;
  char* stacks = nullptr;  // capacity fibers of kGuardBytes + kStackBytes
  int capacity = 0;
  std::vector<ucontext_t> ctx;  // ucontext
  ucontext_t main;
  std::vector<void*> sp;  // emu_switch: saved stack pointers
  void* main_sp = nullptr;
  std::vector<char> done;
  std::vector<int> order;      // priority: order[0] first
  std::vector<int> wait_kind;  // 0 runnable, 1 at __syncthreads, 2 + w at warp w's barrier
  std::vector<uint64_t> wait_gen;  // the barrier's generation it waits to pass
  uint64_t completions = 0;    // barriers completed
  std::vector<uint64_t> slots;
  int current = 0;
  int exited = 0;
  int bar_count = 0;
  uint64_t bar_gen = 0;
  std::vector<int> warp_count, warp_exited;
  std::vector<uint64_t> warp_gen;
  const std::function<void()>* body = nullptr;
};
Sched s;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "emu: %s (block %u, thread %d)\n", what, blockIdx.x, s.current);
  std::fflush(stderr);
  std::abort();
}

void yield() {
#if defined(__x86_64__)
  if (s.fast) {
    emu_switch(&s.sp[s.current], s.main_sp);
    return;
  }
#endif
  swapcontext(&s.ctx[s.current], &s.main);
}

void fiber_main() {
  (*s.body)();
  if (s.bar_count > 0) fail("returned while other threads of the block wait at __syncthreads");
  if (s.warp_count[s.current / 32] > 0) fail("returned while other lanes of the warp wait at a shuffle or __syncwarp");
  s.done[s.current] = 1;
  ++s.exited;
  ++s.warp_exited[s.current / 32];
  // ucontext: returns to uc_link, the scheduler
}

#if defined(__x86_64__)
void fiber_entry() {  // entered by emu_switch's ret; never returns
  fiber_main();
  emu_switch(&s.sp[s.current], s.main_sp);
  fail("a finished fiber was resumed");
}

// emu_switch is safe unless the process runs with a shadow stack (its ret would not match).
bool fast_switch_ok() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("x86_Thread_features:", 0) == 0 && line.find("shstk") != std::string::npos) return false;
  }
  return std::getenv("EMU_UCONTEXT") == nullptr;
}
#endif

char* stack_top(int t) { return s.stacks + size_t(t + 1) * (kGuardBytes + kStackBytes); }

void start_fiber(int t) {
#if defined(__x86_64__)
  if (s.fast) {
    // The frame emu_switch pops: MXCSR and x87 control word, r15, r14, r13, r12, rbx, rbp, the
    // return address (fiber_entry) and a dummy caller's return address: fiber_entry starts with
    // rsp = 8 mod 16, as after a call.
    uint64_t* top = reinterpret_cast<uint64_t*>(stack_top(t));  // 16-byte aligned
    uint64_t* sp = top - 9;
    uint32_t csr[2];
    asm volatile("stmxcsr %0" : "=m"(csr[0]));
    asm volatile("fnstcw %0" : "=m"(csr[1]));
    std::memcpy(&sp[0], csr, 8);
    for (int i = 1; i <= 6; ++i) sp[i] = 0;
    sp[7] = reinterpret_cast<uint64_t>(&fiber_entry);
    sp[8] = 0;
    s.sp[t] = sp;
    return;
  }
#endif
  ucontext_t& c = s.ctx[t];
  getcontext(&c);
  c.uc_stack.ss_sp = stack_top(t) - kStackBytes;
  c.uc_stack.ss_size = kStackBytes;
  c.uc_link = &s.main;
  makecontext(&c, fiber_main, 0);
}

void resume_fiber(int t) {
#if defined(__x86_64__)
  if (s.fast) {
    emu_switch(&s.main_sp, s.sp[t]);
    return;
  }
#endif
  swapcontext(&s.main, &s.ctx[t]);
}

void reserve(int threads) {
  if (threads <= s.capacity) return;
  if (s.stacks) munmap(s.stacks, size_t(s.capacity) * (kGuardBytes + kStackBytes));
  const size_t bytes = size_t(threads) * (kGuardBytes + kStackBytes);
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) fail("mmap of the fiber stacks failed");
  s.stacks = static_cast<char*>(p);
  for (int t = 0; t < threads; ++t) mprotect(s.stacks + size_t(t) * (kGuardBytes + kStackBytes), kGuardBytes, PROT_NONE);
  s.capacity = threads;
}
}  // namespace

// Arrival at a barrier of `members` threads (count, gen): the last one completes it and yields as
// runnable (a thread of higher priority may go first), the others wait until it completes.
void arrive(int& count, uint64_t& gen, int members, int kind) {
  if (++count == members) {
    count = 0;
    ++gen;
    ++s.completions;
    s.wait_kind[s.current] = 0;
  } else {
    s.wait_kind[s.current] = kind;
    s.wait_gen[s.current] = gen;
  }
  yield();
}

void block_sync() {
  if (s.exited > 0) fail("__syncthreads after some threads of the block returned");
  arrive(s.bar_count, s.bar_gen, s.threads, 1);
}

void warp_sync(int warp) {
  if (s.warp_exited[warp] > 0) fail("warp barrier or shuffle after some lanes of the warp returned");
  arrive(s.warp_count[warp], s.warp_gen[warp], 32, 2 + warp);
}

namespace {
bool runnable(int t) {
  if (s.done[t]) return false;
  const int k = s.wait_kind[t];
  return k == 0 || (k == 1 ? s.bar_gen : s.warp_gen[k - 2]) != s.wait_gen[t];
}
}  // namespace

void run_grid(dim3 grid, int block, const std::function<void()>& body) {
  if (const char* e = std::getenv("EMU_MAX_BLOCKS")) g_max_blocks = unsigned(std::atoi(e));
  if (const char* e = std::getenv("EMU_SCHED")) g_sched_order = std::atoi(e);
  if (block <= 0 || block % 32 != 0) fail("block size must be a positive multiple of 32");
  const unsigned nblocks = grid.x < g_max_blocks ? grid.x : g_max_blocks;
  gridDim = dim3(nblocks);  // NB: kernels see the capped grid, so their grid strides cover the work
  blockDim = dim3(block);
  reserve(block);
#if defined(__x86_64__)
  static const bool fast = fast_switch_ok();
  s.fast = fast;
#endif
  s.threads = block;
  s.body = &body;
  s.ctx.resize(block);
  s.sp.resize(block);
  s.done.assign(block, 0);
  s.order.resize(block);
  s.wait_kind.assign(block, 0);
  s.wait_gen.assign(block, 0);
  s.slots.assign(block, 0);
  g_slots = s.slots.data();
  const int warps = block / 32;
  for (unsigned b = 0; b < nblocks; ++b) {
    blockIdx = dim3(b);
    for (int t = 0; t < block; ++t) {
      s.order[t] = g_sched_order == 1 ? block - 1 - t : t;
    }
    if (g_sched_order == 2) {
      uint64_t r = 0x9e3779b97f4a7c15ull * (b + 1);
      for (int t = block - 1; t > 0; --t) {
        r ^= r >> 29; r *= 0xbf58476d1ce4e5b9ull; r ^= r >> 32;
        std::swap(s.order[t], s.order[int(r % uint64_t(t + 1))]);
      }
    }
    std::fill(s.done.begin(), s.done.end(), 0);
    std::fill(s.wait_kind.begin(), s.wait_kind.end(), 0);
    s.exited = 0;
    s.bar_count = 0;
    s.warp_count.assign(warps, 0);
    s.warp_exited.assign(warps, 0);
    s.warp_gen.assign(warps, 0);
    for (int t = 0; t < block; ++t) start_fiber(t);
    // NB: every fiber before order[i] is not runnable; only a completed barrier changes that.
    int live = block;
    for (int i = 0; live > 0;) {
      while (i < block && !runnable(s.order[i])) ++i;
      if (i == block) fail("deadlock: every live thread waits at a barrier that cannot complete");
      const int t = s.order[i];
      const uint64_t completions = s.completions;
      s.current = t;
      threadIdx = dim3(t);
      resume_fiber(t);
      if (s.done[t]) --live;
      if (s.completions != completions) i = 0;
    }
  }
  g_slots = nullptr;
}
}  // namespace emu
