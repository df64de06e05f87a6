// Emulated check of the CUDA DyT forward on the CPU: the 16-byte vector kernel (x and y aligned)
// against a float64 reference and, element for element, against the one-element kernel (x and y
// unaligned), for both layouts, channel counts that are and are not whole vectors (vectors that
// straddle a row or plane end), parameters absent or unaligned, and a tail past the last vector.
#include "include/emu.h"
#include "include/emu_test_util.h"
#include "dyt_kernel_emu.cpp"

#include <cstdlib>
#include <random>
#include <string>

using namespace normext;
using namespace normext::cuda;

template <class T> constexpr DytScalarKind kind_of() { return scalar_kind<DytScalarKind, T>(); }

int g_fail = 0;

// rows x C (inner == 1), or planes: rows x C x inner. param_off: gamma / beta that many values past
// a 16-byte boundary (read one at a time); affine false: neither.
template <class T>
void run_case(int64_t rows, int64_t C, int64_t inner, bool planes, int param_off = 0,
              bool affine = true) {
  using acc_t = acc_type<T>;
  const int64_t n = rows * C * inner;
  std::mt19937_64 rng(rows * 1000003 + C * 101 + inner * 7 + planes);
  std::normal_distribution<double> nd(0.0, 1.5);
  // aligned copies for the vector kernel, copies one element off for the one-element kernel
  std::vector<T> xa(n + 16), ya(n + 16), xu(n + 16), yu(n + 16);
  T* x = xa.data();
  T* y = ya.data();
  T* x1 = xu.data() + 1;
  T* y1 = yu.data() + 1;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = from_d<T>(nd(rng));
    x1[i] = x[i];
  }
  std::vector<acc_t> gb(C + 8), bb(C + 8);
  acc_t* gamma = gb.data() + param_off;
  acc_t* beta = bb.data() + param_off;
  for (int64_t c = 0; c < C; ++c) {
    gamma[c] = acc_t(0.5 + 0.01 * (c % 7));
    beta[c] = acc_t(0.1 * (c % 3) - 0.1);
  }
  const acc_t alpha = acc_t(0.7);
  const DytPlan plan = make_dyt_plan(rows, C, inner, planes, 4 * 8);
  DytForwardArgs a{x, y, &alpha, affine ? gamma : nullptr, affine ? beta : nullptr};
  DytForwardArgs a1{x1, y1, &alpha, affine ? gamma : nullptr, affine ? beta : nullptr};
  launch_dyt_forward(plan, kind_of<T>(), a, nullptr);
  launch_dyt_forward(plan, kind_of<T>(), a1, nullptr);
  double err = 0;
  int64_t differ = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = planes ? (i / inner) % C : i % C;
    const double g = affine ? double(gamma[c]) : 1.0, b = affine ? double(beta[c]) : 0.0;
    const double ref = std::tanh(double(alpha) * to_d(x[i])) * g + b;
    err = std::max(err, std::fabs(to_d(y[i]) - ref) / (1 + std::fabs(ref)));
    differ += std::memcmp(&y[i], &y1[i], sizeof(T)) != 0;
  }
  const double tol = sizeof(T) == 2 ? 1e-2 : sizeof(T) == 4 ? 1e-6 : 1e-14;
  const bool ok = err < tol && differ == 0;
  std::printf("%s %-4s rows=%lld C=%lld inner=%lld %s p_off=%d%s | err %.1e, %lld differ from the "
              "one-element kernel\n",
              ok ? "ok  " : "FAIL", name_of<T>(), (long long)rows, (long long)C, (long long)inner,
              planes ? "planes" : "rows", param_off, affine ? "" : " no-affine", err,
              (long long)differ);
  if (!ok) ++g_fail;
}

template <class T>
void run_all() {
  constexpr int V = 16 / sizeof(T);
  for (int64_t C : {int64_t(1), int64_t(3), int64_t(V), int64_t(V + 1), int64_t(64), int64_t(100),
                    int64_t(768)}) {
    run_case<T>(7, C, 1, false);
    run_case<T>(5, C, 1, false, 1);
    run_case<T>(3, C, 1, false, 0, false);
  }
  for (int64_t inner : {int64_t(1), int64_t(5), int64_t(V), int64_t(3 * V), int64_t(3 * V + 1),
                        int64_t(1000)}) {
    run_case<T>(2, 6, inner, true);
    run_case<T>(1, 3, inner, true, 0, false);
  }
  run_case<T>(300, 64, 1, false);  // more vectors than threads: the grid stride
}

int main(int argc, char** argv) {
  const std::string types = argc > 1 ? argv[1] : "f32,f64,f16,bf16";
  if (types.find("f32") != std::string::npos) run_all<float>();
  if (types.find("f64") != std::string::npos) run_all<double>();
  if (types.find("f16") != std::string::npos) run_all<__half>();
  if (types.find("bf16") != std::string::npos) run_all<__nv_bfloat16>();
  std::printf("%d failures\n", g_fail);
  return g_fail != 0;
}
