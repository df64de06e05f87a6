// Check counting shared by the launch-plan tests (tests/cpp/test_*plan*.cpp): EXPECT(cond, fmt,
// ...) counts a check and prints the first 50 failures; main returns plan_test::report().
// Plain C++, no torch.
#pragma once

#include <cstdint>
#include <cstdio>

namespace plan_test {

inline int64_t g_checks = 0;
inline int64_t g_failures = 0;

// Prints the totals; the process exit code: 0 when every check passed.
inline int report() {
  std::printf("%lld checks, %lld failures\n", (long long)g_checks, (long long)g_failures);
  return g_failures == 0 ? 0 : 1;
}

} // namespace plan_test

#define EXPECT(cond, ...)                                           \
  do {                                                              \
    ++plan_test::g_checks;                                          \
    if (!(cond)) {                                                  \
      ++plan_test::g_failures;                                      \
      if (plan_test::g_failures <= 50) {                            \
        std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
        std::printf(__VA_ARGS__);                                   \
        std::printf("\n");                                          \
      }                                                             \
    }                                                               \
  } while (0)
