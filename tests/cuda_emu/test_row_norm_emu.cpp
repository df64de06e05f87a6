// Emulated end-to-end check of the CUDA row-norm kernels (LayerNorm, RMSNorm, add + norm; the
// forward and dx) on the CPU against a float64 reference: every team size and register slot count
// the plan picks, rows that start unaligned (a head), odd lengths (a tail), arrays aligned unalike
// (the re-reading kernels), rows too long for the registers, parameters read one at a time, the
// exact-double fallbacks, and a second run bitwise identical to the first.
#include "include/emu.h"
#include "include/emu_test_util.h"
#include "layer_norm_kernel_emu.cpp"

#include <cstdlib>
#include <random>
#include <string>

using namespace normext;
using namespace normext::cuda::row_norm;

template <class T> constexpr Scalar kind_of() { return scalar_kind<Scalar, T>(); }

int g_fail = 0;

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

struct Case {
  int64_t M, D;
  bool rms = false, residual = false, affine = true;
  int x_off = 0;      // elements every row array (x, r, y, s, dy, dx) starts past a 16-byte boundary
  int y_off = 0;      // y and dx instead (unlike x: the re-reading kernels)
  int param_off = 0;  // gamma / beta (unaligned: one at a time)
  double base = 0, scale = 1;
  bool check_bwd = true;
};

template <class T>
void run_case(const Case& k) {
  using acc_t = acc_type<T>;
  const int64_t M = k.M, D = k.D, n = M * D;
  std::mt19937_64 rng(M * 1000003 + D * 101 + k.x_off * 7 + k.y_off * 3 + k.rms + 2 * k.residual);
  std::normal_distribution<double> nd(0.0, 1.0);
  auto buf = [&](int off) { return std::vector<T>(n + 16 + off); };
  std::vector<T> xb = buf(k.x_off), rb = buf(k.x_off), sb = buf(k.x_off), yb = buf(k.y_off + k.x_off),
                 dyb = buf(k.x_off), dxb = buf(k.y_off + k.x_off);
  // NB: std::vector's storage is 16-byte aligned here (operator new), so offsets are exact.
  T* x = xb.data() + k.x_off;
  T* r = rb.data() + k.x_off;
  T* s = sb.data() + k.x_off;
  T* y = yb.data() + k.x_off + k.y_off;
  T* dy = dyb.data() + k.x_off;
  T* dx = dxb.data() + k.x_off + k.y_off;
  std::vector<double> sd(n), dyd(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = i % D;
    x[i] = from_d<T>(k.base + k.scale * (0.25 * (c % 5) + nd(rng)));
    r[i] = from_d<T>(k.scale * 0.5 * nd(rng));
    dy[i] = from_d<T>(nd(rng) + 0.1);
    dyd[i] = to_d(dy[i]);
    sd[i] = k.residual ? to_d(from_d<T>(to_d(x[i]) + to_d(r[i]))) : to_d(x[i]);
  }
  std::vector<acc_t> gb(D + 8), bb(D + 8);
  acc_t* gamma = gb.data() + k.param_off;
  acc_t* beta = bb.data() + k.param_off;
  for (int64_t c = 0; c < D; ++c) {
    gamma[c] = acc_t(1 + 0.01 * (c % 7));
    beta[c] = acc_t(0.1 * (c % 3) - 0.05);
  }
  const double eps = 1e-5;
  // reference statistics and output, in double
  std::vector<double> rmean(M), rrstd(M), ry(n);
  for (int64_t m = 0; m < M; ++m) {
    const double* v = sd.data() + m * D;
    double mean = 0, q = 0;
    if (!k.rms) {
      for (int64_t i = 0; i < D; ++i) mean += v[i];
      mean /= double(D);
    }
    for (int64_t i = 0; i < D; ++i) q += (v[i] - mean) * (v[i] - mean);
    rmean[m] = mean;
    rrstd[m] = 1.0 / std::sqrt(q / double(D) + eps);
    for (int64_t i = 0; i < D; ++i) {
      const double g = k.affine ? double(gamma[i]) : 1.0, b = k.affine && !k.rms ? double(beta[i]) : 0.0;
      ry[m * D + i] = (v[i] - mean) * rrstd[m] * g + b;
    }
  }
  const RowNormPlan plan = make_row_norm_plan(M, D, sizeof(T), 4);
  std::vector<acc_t> mean(M), rstd(M);
  ForwardArgs fa{};
  fa.x = x;
  fa.residual = k.residual ? r : nullptr;
  fa.y = y;
  fa.summed = k.residual ? s : nullptr;
  fa.gamma = k.affine ? gamma : nullptr;
  fa.beta = k.affine && !k.rms ? beta : nullptr;
  fa.mean = k.rms ? nullptr : mean.data();
  fa.rstd = rstd.data();
  fa.eps = eps;
  if (launch_row_norm_forward(plan, kind_of<T>(), fa, nullptr) != cudaSuccess) {
    std::printf("FAIL forward launch\n");
    ++g_fail;
    return;
  }
  std::vector<T> y1(y, y + n), s1(s, s + n);
  std::vector<acc_t> mean1 = mean, rstd1 = rstd;
  std::fill(y, y + n, from_d<T>(0));
  std::fill(s, s + n, from_d<T>(0));
  launch_row_norm_forward(plan, kind_of<T>(), fa, nullptr);
  const bool same = same_bits(y1, std::vector<T>(y, y + n)) && same_bits(mean1, mean) &&
                    same_bits(rstd1, rstd) && (!k.residual || same_bits(s1, std::vector<T>(s, s + n)));

  double em = 0, er = 0, ey = 0, es = 0;
  for (int64_t m = 0; m < M; ++m) {
    const double sc = k.scale * (1 + std::fabs(k.base) / k.scale);
    if (!k.rms) em = std::max(em, std::fabs(double(mean[m]) - rmean[m]) / sc);
    er = std::max(er, std::fabs(double(rstd[m]) - rrstd[m]) / rrstd[m]);
  }
  for (int64_t i = 0; i < n; ++i) {
    ey = std::max(ey, std::fabs(to_d(y[i]) - ry[i]) / (1 + std::fabs(ry[i])));
    if (k.residual) es = std::max(es, std::fabs(to_d(s[i]) - sd[i]));
  }
  // backward dx, from the kernel's own statistics (as autograd passes them)
  double edx = 0;
  bool same_dx = true;
  if (k.check_bwd) {
    // NB: dx cancels (exactly 0 at D = 1 for LayerNorm): errors are measured against the size
    // of its terms, rstd * (|g dy| + |mean(g dy)| + |xhat mean(g dy xhat)|).
    std::vector<double> rdx(n), rterms(n);
    for (int64_t m = 0; m < M; ++m) {
      const double mu = k.rms ? 0.0 : double(mean[m]), rs = double(rstd[m]);
      double sg = 0, sgx = 0;
      for (int64_t i = 0; i < D; ++i) {
        const double g = (k.affine ? double(gamma[i]) : 1.0) * dyd[m * D + i];
        sg += g;
        sgx += g * (sd[m * D + i] - mu) * rs;
      }
      for (int64_t i = 0; i < D; ++i) {
        const double g = (k.affine ? double(gamma[i]) : 1.0) * dyd[m * D + i];
        const double xhat = (sd[m * D + i] - mu) * rs;
        rdx[m * D + i] = rs * (g - (k.rms ? 0.0 : sg / double(D)) - xhat * sgx / double(D));
        rterms[m * D + i] = rs * (std::fabs(g) + (k.rms ? 0.0 : std::fabs(sg / double(D))) +
                                  std::fabs(xhat * sgx / double(D)));
      }
    }
    BackwardArgs ba{};
    ba.dy = dy;
    ba.x = k.residual ? s : x;
    ba.mean = k.rms ? nullptr : mean.data();
    ba.rstd = rstd.data();
    ba.gamma = k.affine ? gamma : nullptr;
    ba.dx = dx;
    // NB: the x of the backward is x (or summed) with dy and dx: offsets as in the forward.
    if (launch_row_norm_backward(plan, kind_of<T>(), ba, nullptr) != cudaSuccess) {
      std::printf("FAIL backward launch\n");
      ++g_fail;
      return;
    }
    std::vector<T> dx1(dx, dx + n);
    std::fill(dx, dx + n, from_d<T>(0));
    launch_row_norm_backward(plan, kind_of<T>(), ba, nullptr);
    same_dx = same_bits(dx1, std::vector<T>(dx, dx + n));
    for (int64_t m = 0; m < M; ++m) {
      double dscale = 1e-300;
      for (int64_t i = 0; i < D; ++i) dscale = std::max(dscale, rterms[m * D + i]);
      for (int64_t i = 0; i < D; ++i) {
        edx = std::max(edx, std::fabs(to_d(dx[m * D + i]) - rdx[m * D + i]) / dscale);
      }
    }
  }
  const double eps_t = eps_of<T>(), eps_acc = sizeof(acc_t) == 4 ? 1.2e-7 : 2.3e-16;
  // NB: the mean error is relative to the data's magnitude, the rstd error to rstd.
  const double stat_tol = 256 * eps_acc * std::sqrt(double(D));
  const double out_tol = 2 * eps_t + 8 * stat_tol;
  const double dx_tol = 4 * eps_t + 64 * eps_acc * std::sqrt(double(D));
  const bool ok = same && same_dx && em < stat_tol && er < stat_tol && ey < out_tol && es == 0 &&
                  edx < dx_tol;
  const bool regs = plan.vecs_per_thread > 0 && k.y_off == 0;
  std::printf("%s %-4s M=%lld D=%lld %s%s%s x_off=%d y_off=%d p_off=%d base=%g scale=%g | team %d vecs %d %s"
              " | mean %.1e rstd %.1e y %.1e dx %.1e%s\n",
              ok ? "ok  " : "FAIL", name_of<T>(), (long long)M, (long long)D, k.rms ? "rms" : "ln",
              k.residual ? "+res" : "", k.affine ? "" : " no-affine", k.x_off, k.y_off, k.param_off, k.base,
              k.scale, plan.team_threads, plan.vecs_per_thread, regs ? "regs" : "re-read", em, er, ey, edx,
              same && same_dx ? "" : " NOT BITWISE REPRODUCIBLE");
  if (!ok) ++g_fail;
}

template <class T>
void run_all(const std::string& which) {
  constexpr int V = 16 / sizeof(T);
  // Rows around every team / slot boundary of the plan (in 16-byte vectors: 32, 64, 128, 256 for a
  // warp; 512, 1024 for 128 threads; 2048 for 256; 4096 for 512), odd and unaligned lengths.
  std::vector<int64_t> Ds = {1, 2, 3, V - 1, V, V + 1, 33, 100, 32 * V, 32 * V + 1, 768, 1000, 1024,
                             64 * V + 3, 128 * V, 256 * V, 256 * V + 1, 512 * V - 5, 512 * V + V};
  if (which == "all") {
    Ds.insert(Ds.end(), {1024 * V, 1024 * V + 1, 2048 * V + 7, 4096 * V, 4096 * V + 1});
  }
  for (int64_t D : Ds) {
    for (int x_off : {0, 1}) {
      Case k{3, D};
      k.x_off = x_off;
      run_case<T>(k);  // LayerNorm
      k.rms = true;
      run_case<T>(k);
      k.rms = false;
      k.residual = true;
      k.x_off = (x_off + V / 2) % V;
      run_case<T>(k);
    }
  }
  // more rows than teams (grid stride), RMS with a residual, no affine parameters
  Case many{37, 768};
  run_case<T>(many);
  many.rms = true;
  many.residual = true;
  run_case<T>(many);
  Case plain{9, 257};
  plain.affine = false;
  run_case<T>(plain);
  plain.rms = true;
  run_case<T>(plain);
  // arrays aligned unalike (re-reading kernels), parameters unaligned (read one at a time)
  for (int64_t D : {int64_t(100), int64_t(768), int64_t(128 * V + 5)}) {
    Case k{4, D};
    k.y_off = 1;
    run_case<T>(k);
    k.y_off = 0;
    k.param_off = 1;
    run_case<T>(k);
    k.x_off = 1;
    k.residual = true;
    run_case<T>(k);
  }
  // rows longer than the registers hold: the re-reading kernels with 512-thread teams
  Case longrow{2, 4096 * V + 3};
  run_case<T>(longrow);
  longrow.rms = true;
  longrow.residual = true;
  run_case<T>(longrow);
  // a large mean (the corrected two-pass statistics)
  Case big{3, 4096};
  big.base = 1e4;
  run_case<T>(big);
  if (sizeof(T) == 4) {
    // fp32 overflow / underflow: the exact-double fallbacks, from registers and re-read
    for (double scale : {3e19, 1e-30}) {
      for (int64_t D : {int64_t(768), int64_t(5000), int64_t(20000)}) {
        Case k{2, D};
        k.scale = scale;
        k.check_bwd = false;
        run_case<T>(k);
        k.rms = true;
        run_case<T>(k);
      }
    }
  }
}

int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "small";
  const std::string types = argc > 2 ? argv[2] : "f32,f64,f16,bf16";
  if (types.find("f32") != std::string::npos) run_all<float>(which);
  if (types.find("f64") != std::string::npos) run_all<double>(which);
  if (types.find("f16") != std::string::npos) run_all<__half>(which);
  if (types.find("bf16") != std::string::npos) run_all<__nv_bfloat16>(which);
  std::printf("%d failures\n", g_fail);
  return g_fail != 0;
}
