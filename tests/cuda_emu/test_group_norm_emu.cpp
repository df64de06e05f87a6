// Emulated end-to-end check of the CUDA GroupNorm kernels on the CPU against a double reference.
#include "include/emu.h"
#include "group_norm_kernel_emu.cpp"

#include <random>
#include <string>
#include <cstdlib>

using namespace normext;
using namespace normext::cuda;



template <class T> T from_d(double v);
template <> float from_d<float>(double v) { return (float)v; }
template <> double from_d<double>(double v) { return v; }
template <> __half from_d<__half>(double v) { return __float2half_rn((float)v); }
template <> __nv_bfloat16 from_d<__nv_bfloat16>(double v) { return __float2bfloat16_rn((float)v); }
double to_d(float v) { return v; }
double to_d(double v) { return v; }
double to_d(__half v) { return __half2float(v); }
double to_d(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T> ScalarKind kind_of();
template <> ScalarKind kind_of<float>() { return ScalarKind::Float; }
template <> ScalarKind kind_of<double>() { return ScalarKind::Double; }
template <> ScalarKind kind_of<__half>() { return ScalarKind::Half; }
template <> ScalarKind kind_of<__nv_bfloat16>() { return ScalarKind::BFloat16; }
template <class T> const char* name_of();
template <> const char* name_of<float>() { return "f32"; }
template <> const char* name_of<double>() { return "f64"; }
template <> const char* name_of<__half>() { return "f16"; }
template <> const char* name_of<__nv_bfloat16>() { return "bf16"; }

int g_fail = 0;

// x (and dy) in channels-last order: ((n * HxW) + p) * C + c. `offset` elements of misalignment.
template <class T>
void run_case(int64_t N, int64_t C, int64_t HxW, int64_t G, int64_t sms, double base, double tol_scale,
              int offset = 0, bool check_bwd = true, double scale = 1) {
  using acc_t = acc_type<T>;
  const int64_t D = C / G, M = N * HxW * C;
  std::mt19937_64 rng(N * 1000003 + C * 101 + HxW * 7 + G);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<T> xbuf(M + 8), dybuf(M + 8), ybuf(M + 8), dxbuf(M + 8);
  T* x = xbuf.data() + offset;
  T* dy = dybuf.data() + offset;
  T* y = ybuf.data() + offset;
  T* dx = dxbuf.data() + offset;
  std::vector<double> xd(M), dyd(M);
  for (int64_t i = 0; i < M; ++i) {
    // per-channel offsets too, so groups are not all alike
    const int64_t c = i % C;
    x[i] = from_d<T>(base + scale * (0.5 * (c % 5) + nd(rng)));
    xd[i] = to_d(x[i]);
    dy[i] = from_d<T>(nd(rng) + 0.1);
    dyd[i] = to_d(dy[i]);
  }
  std::vector<acc_t> gamma(C), beta(C);
  for (int64_t c = 0; c < C; ++c) { gamma[c] = acc_t(1 + 0.01 * (c % 7)); beta[c] = acc_t(0.1 * (c % 3)); }
  const double eps = 1e-5;
  // reference
  std::vector<double> rmean(N * G), rrstd(N * G);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < G; ++g) {
      double s = 0;
      for (int64_t p = 0; p < HxW; ++p) for (int64_t d = 0; d < D; ++d) s += xd[(n * HxW + p) * C + g * D + d];
      const double m = s / double(D * HxW);
      double q = 0;
      for (int64_t p = 0; p < HxW; ++p) for (int64_t d = 0; d < D; ++d) { double t = xd[(n * HxW + p) * C + g * D + d] - m; q += t * t; }
      rmean[n * G + g] = m; rrstd[n * G + g] = 1.0 / std::sqrt(q / double(D * HxW) + eps);
    }
  const GroupNormPlan plan = make_group_norm_plan(N, C, HxW, G, true, sms);
  std::vector<acc_t> mean(N * G), rstd(N * G), coeffs(3 * N * C);
  std::vector<unsigned char> stat_partials(plan.stat_partials * kStatPartialBytes);
  ForwardArgs fa{};
  fa.x = x; fa.y = y; fa.gamma = gamma.data(); fa.beta = beta.data(); fa.mean = mean.data(); fa.rstd = rstd.data();
  fa.stat_partials = stat_partials.data(); fa.channel_coeffs = coeffs.data(); fa.eps = eps; fa.activation = 0;
  if (launch_group_norm_forward(plan, kind_of<T>(), fa, nullptr) != cudaSuccess) { std::printf("launch failed\n"); ++g_fail; return; }
  // a second run: bitwise identical
  std::vector<acc_t> mean2(N * G), rstd2(N * G);
  {
    ForwardArgs fb = fa; fb.mean = mean2.data(); fb.rstd = rstd2.data();
    std::vector<T> y2(M + 8); fb.y = y2.data() + offset;
    launch_group_norm_forward(plan, kind_of<T>(), fb, nullptr);
    if (std::memcmp(mean.data(), mean2.data(), sizeof(acc_t) * N * G) || std::memcmp(rstd.data(), rstd2.data(), sizeof(acc_t) * N * G)) {
      std::printf("NONDETERMINISTIC forward\n"); ++g_fail;
    }
  }
  double em = 0, er = 0, ey = 0;
  for (int64_t i = 0; i < N * G; ++i) {
    em = std::max(em, std::fabs(double(mean[i]) - rmean[i]) * rrstd[i]);  // in units of std
    er = std::max(er, std::fabs(double(rstd[i]) / rrstd[i] - 1));
  }
  for (int64_t n = 0; n < N; ++n) for (int64_t p = 0; p < HxW; ++p) for (int64_t c = 0; c < C; ++c) {
    const int64_t i = (n * HxW + p) * C + c, ng = n * G + c / D;
    const double ref = (xd[i] - rmean[ng]) * rrstd[ng] * double(gamma[c]) + double(beta[c]);
    ey = std::max(ey, std::fabs(to_d(y[i]) - ref));
  }
  // backward
  double edx = 0, edg = 0, edb = 0;
  if (check_bwd) {
    std::vector<double> rdg(C, 0), rdb(C, 0), rdx(M);
    for (int64_t n = 0; n < N; ++n) for (int64_t g = 0; g < G; ++g) {
      const int64_t ng = n * G + g;
      // use the kernel's own mean / rstd (as the backward does) for the reference dx
      const double m = double(mean[ng]), r = double(rstd[ng]);
      double a1 = 0, a2 = 0;  // mean(gamma dy), mean(gamma dy xhat)
      for (int64_t p = 0; p < HxW; ++p) for (int64_t d = 0; d < D; ++d) {
        const int64_t c = g * D + d, i = (n * HxW + p) * C + c;
        const double xh = (xd[i] - m) * r;
        a1 += double(gamma[c]) * dyd[i]; a2 += double(gamma[c]) * dyd[i] * xh;
        rdg[c] += dyd[i] * xh; rdb[c] += dyd[i];
      }
      a1 /= double(D * HxW); a2 /= double(D * HxW);
      for (int64_t p = 0; p < HxW; ++p) for (int64_t d = 0; d < D; ++d) {
        const int64_t c = g * D + d, i = (n * HxW + p) * C + c;
        const double xh = (xd[i] - m) * r;
        rdx[i] = r * (double(gamma[c]) * dyd[i] - a1 - xh * a2);
      }
    }
    std::vector<acc_t> sum_partials(2 * plan.sum_partials), channel_sums(2 * N * C), dx_coeffs(5 * N * C), dgamma(C), dbeta(C);
    BackwardArgs ba{};
    ba.dy = dy; ba.x = x; ba.mean = mean.data(); ba.rstd = rstd.data(); ba.gamma = gamma.data();
    ba.dx = dx; ba.dgamma = dgamma.data(); ba.dbeta = dbeta.data(); ba.sum_partials = sum_partials.data();
    ba.channel_sums = channel_sums.data(); ba.dx_coeffs = dx_coeffs.data();
    if (launch_group_norm_backward(plan, kind_of<T>(), ba, nullptr) != cudaSuccess) { std::printf("bwd launch failed\n"); ++g_fail; return; }
    double sdx = 0, sdg = 0, sdb = 0;
    for (int64_t i = 0; i < M; ++i) { edx = std::max(edx, std::fabs(to_d(dx[i]) - rdx[i])); sdx = std::max(sdx, std::fabs(rdx[i])); }
    for (int64_t c = 0; c < C; ++c) {
      edg = std::max(edg, std::fabs(double(dgamma[c]) - rdg[c])); sdg = std::max(sdg, std::fabs(rdg[c]));
      edb = std::max(edb, std::fabs(double(dbeta[c]) - rdb[c])); sdb = std::max(sdb, std::fabs(rdb[c]));
    }
    edx /= sdx > 0 ? sdx : 1; edg /= sdg > 0 ? sdg : 1; edb /= sdb > 0 ? sdb : 1;
  }
  // tolerances: storage rounding for y / dx, accumulation for the statistics
  const double eps_t = sizeof(T) == 2 ? (std::is_same_v<T, __half> ? 1e-3 : 8e-3) : (sizeof(T) == 4 ? 1.2e-7 : 2.3e-16);
  const double eps_acc = sizeof(acc_t) == 4 ? 1.2e-7 : 2.3e-16;
  const double stat_tol = 2000 * eps_acc * tol_scale * (1 + std::fabs(base) / scale);
  const double out_tol = 4 * eps_t * (8 + std::fabs(base) * 0) + stat_tol * 8;
  const bool ok = em < stat_tol && er < stat_tol && ey < out_tol &&
                  (!check_bwd || (edx < out_tol * 4 && edg < 1e3 * eps_acc * tol_scale && edb < 1e3 * eps_acc * tol_scale));
  int vec = channels_last_vec<T>(C, x, x);
  const ChannelsLastLanes L = make_channels_last_lanes(C, vec, plan.cl.rows_per_split);
  std::printf("%s %-5s N=%lld C=%lld HxW=%lld G=%lld off=%d base=%g | splits %lld rows %lld blocks %lld | vec %d slots %d lanes %dx%d passes %lld pass_cols %lld | mean %.2e rstd %.2e y %.2e dx %.2e dg %.2e db %.2e\n",
              ok ? "ok  " : "FAIL", name_of<T>(), (long long)N, (long long)C, (long long)HxW, (long long)G, offset, base,
              (long long)plan.cl.splits, (long long)plan.cl.rows_per_split, (long long)plan.cl.blocks, L.vec, L.slots,
              L.col_lanes, L.row_lanes, (long long)L.passes, (long long)L.pass_cols, em, er, ey, edx, edg, edb);
  if (!ok) ++g_fail;
}

template <class T>
void run_all(const std::string& which) {
  if (which == "small" || which == "all") {
    run_case<T>(2, 6, 5, 3, 132, 0, 1);
    run_case<T>(2, 30, 7, 6, 132, 0, 1);
    run_case<T>(3, 1, 50, 1, 132, 0, 1);
    run_case<T>(1000, 8, 1, 4, 132, 0, 1, 0);
    run_case<T>(2, 9, 6, 3, 132, 0, 1);
    run_case<T>(2, 64, 37, 8, 4, 0, 1);
    run_case<T>(2, 64, 37, 8, 4, 0, 1, 1);       // misaligned: one channel at a time
    run_case<T>(2, 1280, 16, 32, 132, 0, 1);     // passes, groups across a pass edge?
    run_case<T>(1, 1028, 9, 4, 132, 0, 1);       // D = 257
    run_case<T>(1, 8192, 3, 1, 132, 0, 1);       // one group over many passes
    run_case<T>(1, 4100, 5, 41, 132, 0, 1);      // D = 100
    run_case<T>(2, 3000, 4, 1000, 132, 0, 1);    // D = 3
    run_case<T>(1, 33, 1500, 11, 2, 0, 1);       // long rows per thread
    run_case<T>(2, 64, 300, 8, 132, 1e4, 1);     // large mean
    run_case<T>(2, 1280, 16, 32, 132, 1e4, 1);
    run_case<T>(2, 302, 8, 2, 132, 0, 1);        // one element at a time, 2 slots
    run_case<T>(2, 302, 8, 2, 132, 0, 1, 1);
    run_case<T>(1, 1280, 200, 32, 132, 0, 1);    // many small blocks
    run_case<T>(3, 40, 1000, 4, 1, 0, 1);        // few large blocks
    if (sizeof(T) == 4) {
      run_case<T>(2, 64, 37, 8, 4, 0, 1, 0, false, 3e19);      // fp32 overflow: exact fallback
      run_case<T>(2, 1280, 16, 32, 132, 0, 1, 0, false, 3e19);
    }
  }
  if (which == "big" || which == "all") {
    run_case<T>(2, 1280, 256, 32, 132, 0, 1);
    run_case<T>(2, 320, 4096, 32, 132, 0, 1);
    run_case<T>(8, 256, 950, 32, 132, 0, 1);
    run_case<T>(1, 256, 65536, 32, 132, 0, 1, 0, true);
    run_case<T>(2, 64, 131072, 8, 132, 0, 1, 0, true);
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
