// Emulated end-to-end check of the CUDA BatchNorm kernels (csrc/ops/cuda/batch_norm_kernel.cu) on
// the CPU against a float64 reference. Every launcher of batch_norm_kernel.h runs, wired as
// batch_norm_cuda.cpp's train_forward_cuda / train_backward_cuda wire them:
//   forward:  stats -> train_finalize (invstd, mean | scale | shift, running statistics) -> apply
//   backward: grad_sums (with the forward's acc mean, save_mean) -> train_grad_coeffs
//             (a | b | k) -> grad_input
// in NCHW and channels-last, for fp32, fp64, fp16 and bf16, twice (the second run must be bitwise
// identical). Outputs and scratch start filled with 0xff bytes (NaN, a partial count of -1), so an
// output or partial that is never written, or read before it is, shows as a NaN; the bytes around
// every output and scratch buffer must still be 0xff afterwards (no write out of bounds).
//
// usage: test_batch_norm_emu [small|big|all] [f32,f64,f16,bf16]
#include "include/emu.h"
#include "include/emu_test_util.h"
#include "batch_norm_kernel_emu.cpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <random>
#include <string>

using namespace normext;
using namespace normext::cuda;
using namespace normext::cuda::bn;

namespace emu { extern unsigned g_max_blocks; }

namespace {

template <class T> constexpr ScalarKind kind_of() { return scalar_kind<ScalarKind, T>(); }

int g_fail = 0;

// `n` elements of T at `p`, `off` elements past a 64-byte boundary, with 64 guard bytes before
// and after; everything starts as 0xff bytes (NaN for every float type, -1 for a count).
template <class T>
struct Buf {
  std::vector<unsigned char> raw;
  T* p = nullptr;
  int64_t n = 0;
  Buf(int64_t n_, int off = 0) : raw(64 + (n_ + off) * sizeof(T) + 64 + 64, 0xff), n(n_) {
    const uintptr_t a = (reinterpret_cast<uintptr_t>(raw.data()) + 64 + 63) & ~uintptr_t(63);
    p = reinterpret_cast<T*>(a) + off;
  }
  bool guards_intact() const {
    const unsigned char* b = reinterpret_cast<const unsigned char*>(p);
    const unsigned char* e = reinterpret_cast<const unsigned char*>(p + n);
    for (const unsigned char* q = raw.data(); q < raw.data() + raw.size(); ++q) {
      if ((q < b || q >= e) && *q != 0xff) return false;
    }
    return true;
  }
  bool same_bits(const Buf& o) const { return std::memcmp(p, o.p, n * sizeof(T)) == 0; }
};

struct Case {
  int64_t N, C, HxW;
  bool cl;
  int64_t sms;
  bool big_mean = false;   // mean 1e4 (per dtype, see run_case) against a spread of ~1
  double scale = 1;        // spread of the values (3e19: fp32 Welford overflows, exact fallback)
  int off_in = 0;          // elements of misalignment of x
  int off_dy = 0;          // ... of dy
  int off_out = 0;         // ... of y and dx
  bool weight = true, bias = true;
  int running = 1;         // 0: no running statistics, 1: in the acc type, 2: in the input's dtype
  double momentum = 0.1;
  unsigned max_blocks = 0; // cap on the emulated grid (0: none)
  Case(int64_t n, int64_t c, int64_t hxw, bool cl_, int64_t sms_)
      : N(n), C(c), HxW(hxw), cl(cl_), sms(sms_) {}
  Case mean_1e4() const { Case k = *this; k.big_mean = true; return k; }
  Case spread(double s) const { Case k = *this; k.scale = s; return k; }
  Case misalign(int in, int out, int dy) const {
    Case k = *this;
    k.off_in = in;
    k.off_out = out;
    k.off_dy = dy;
    return k;
  }
  Case no_weight() const { Case k = *this; k.weight = false; return k; }
  Case no_bias() const { Case k = *this; k.bias = false; return k; }
  Case run(int r, double m = 0.1) const { Case k = *this; k.running = r; k.momentum = m; return k; }
  Case cap(unsigned b) const { Case k = *this; k.max_blocks = b; return k; }
};

const char* running_name(int r) { return r == 0 ? "none" : (r == 1 ? "acc" : "T"); }

// NaN-aware |a - b| <= tol (both NaN passes; one NaN fails).
bool close(double a, double b, double tol) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  if (std::isinf(a) || std::isinf(b)) return a == b;
  return std::fabs(a - b) <= tol;
}

template <class T, class R>
void run_case_r(Case k, double base) {
  using acc_t = acc_type<T>;
  const double eps_t = eps_of<T>(), eps_acc = eps_of<acc_t>(), eps_r = eps_of<R>();
  const double tiny_t = denorm_of<T>();
  const int64_t N = k.N, C = k.C, HxW = k.HxW, M = N * HxW, total = N * C * HxW;
  const double eps = 1e-5;
  const auto t0 = std::chrono::steady_clock::now();
  const unsigned saved_cap = emu::g_max_blocks;
  if (k.max_blocks != 0) emu::g_max_blocks = k.max_blocks;
  auto at = [&](int64_t n, int64_t c, int64_t h) {
    return k.cl ? (n * HxW + h) * C + c : (n * C + c) * HxW + h;
  };

  // ---- inputs: per channel a different mean (-9 .. 9) and spread (0.5 .. 1.25), times scale,
  // so a value read for the wrong channel is off by order 1 in every dtype; dy correlates with x
  // so the b xhat term of dx matters.
  std::mt19937_64 rng(uint64_t(N) * 1000003 + C * 101 + HxW * 7 + (k.cl ? 1 : 0));
  std::normal_distribution<double> nd(0.0, 1.0);
  Buf<T> x(total, k.off_in), dy(total, k.off_dy);
  std::vector<double> xd(total), dyd(total);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < HxW; ++h) {
        const int64_t i = at(n, c, h);
        const double z = nd(rng);
        x.p[i] = from_d<T>(base + k.scale * (3.0 * (c % 7 - 3) + (0.5 + 0.25 * (c % 4)) * z));
        xd[i] = to_d(x.p[i]);
        dy.p[i] = from_d<T>(0.8 * nd(rng) + 0.25 * z + 0.1 * (c % 3 - 1));
        dyd[i] = to_d(dy.p[i]);
      }
  Buf<acc_t> weight(C), bias(C);
  Buf<R> running_mean(C), running_var(C);
  for (int64_t c = 0; c < C; ++c) {
    weight.p[c] = acc_t(0.35 * (c % 5 - 2) + 0.15);  // -0.55 .. 0.85, never 0
    bias.p[c] = acc_t(0.1 * (c % 7) - 0.25);
    running_mean.p[c] = from_d<R>(0.05 * (c % 9) - 0.2);
    running_var.p[c] = from_d<R>(0.5 + 0.1 * (c % 4));
  }
  const BatchNormPlan plan = make_batch_norm_plan(N, C, HxW, k.cl, k.sms);
  const ScalarKind kind = kind_of<T>();

  // ---- the kernels, wired as train_forward_cuda / train_backward_cuda
  struct Out {
    Buf<T> y, dx;
    Buf<double> mean, m2;
    Buf<acc_t> invstd, coeffs, sum_dy_xmu, sum_dy, grad_coeffs;
    Buf<R> new_mean, new_var;
    Buf<WelfordStat<double>> stat_partials;
    Buf<double> sum_partials;
    Out(const BatchNormPlan& p, int64_t total, int off)
        : y(total, off), dx(total, off), mean(p.C), m2(p.C), invstd(p.C), coeffs(3 * p.C),
          sum_dy_xmu(p.C), sum_dy(p.C), grad_coeffs(3 * p.C), new_mean(p.C), new_var(p.C),
          stat_partials(p.partials), sum_partials(2 * p.partials) {}
  };
  auto run = [&](Out& o) -> bool {
    StatsArgs sa{};
    sa.x = x.p;
    sa.mean = o.mean.p;
    sa.m2 = o.m2.p;
    sa.partials = o.stat_partials.p;
    if (launch_batch_norm_stats(plan, kind, sa, nullptr) != cudaSuccess) return false;
    TrainFinalizeArgs fin{};
    fin.mean = o.mean.p;
    fin.m2 = o.m2.p;
    fin.count = M;
    fin.eps = eps;
    fin.weight = k.weight ? weight.p : nullptr;
    fin.bias = k.bias ? bias.p : nullptr;
    fin.invstd = o.invstd.p;
    fin.coeffs = o.coeffs.p;
    if (k.running != 0) {
      fin.running_mean = running_mean.p;
      fin.running_var = running_var.p;
      fin.new_mean = o.new_mean.p;
      fin.new_var = o.new_var.p;
      fin.running_in_acc = std::is_same_v<R, acc_t>;  // running dtype == invstd dtype
      fin.momentum = k.momentum;
    }
    if (launch_batch_norm_train_finalize(plan, kind, fin, nullptr) != cudaSuccess) return false;
    ApplyArgs aa{};
    aa.x = x.p;
    aa.y = o.y.p;
    aa.mean = o.coeffs.p;
    aa.scale = o.coeffs.p + C;
    aa.shift = o.coeffs.p + 2 * C;
    if (launch_batch_norm_apply(plan, kind, aa, nullptr) != cudaSuccess) return false;
    // backward: mean = save_mean (the coeffs' mean slice), invstd = the forward's
    GradSumsArgs ga{};
    ga.dy = dy.p;
    ga.x = x.p;
    ga.mean = o.coeffs.p;
    ga.sum_dy_xmu = o.sum_dy_xmu.p;
    ga.sum_dy = o.sum_dy.p;
    ga.partials = o.sum_partials.p;
    if (launch_batch_norm_grad_sums(plan, kind, ga, nullptr) != cudaSuccess) return false;
    TrainGradCoeffsArgs co{};
    co.sum_dy_xmu = o.sum_dy_xmu.p;
    co.sum_dy = o.sum_dy.p;
    co.invstd = o.invstd.p;
    co.weight = k.weight ? weight.p : nullptr;
    co.inv_count = 1.0 / static_cast<double>(M);
    co.coeffs = o.grad_coeffs.p;
    if (launch_batch_norm_train_grad_coeffs(plan, kind, co, nullptr) != cudaSuccess) return false;
    GradInputArgs gi{};
    gi.dy = dy.p;
    gi.x = x.p;
    gi.dx = o.dx.p;
    gi.a = o.grad_coeffs.p;
    gi.mean = o.coeffs.p;
    gi.rstd = o.invstd.p;
    gi.b = o.grad_coeffs.p + C;
    gi.k = o.grad_coeffs.p + 2 * C;
    return launch_batch_norm_grad_input(plan, kind, gi, nullptr) == cudaSuccess;
  };
  Out o(plan, total, k.off_out), o2(plan, total, k.off_out);
  const bool launched = run(o) && run(o2);
  emu::g_max_blocks = saved_cap;

  std::string why;
  auto fail = [&](const char* what) {
    if (!why.empty()) why += ",";
    why += what;
  };
  if (!launched) fail("launch");
  // Determinism: every output of the second run bitwise equal to the first.
  if (!(o.y.same_bits(o2.y) && o.dx.same_bits(o2.dx) && o.mean.same_bits(o2.mean) &&
        o.m2.same_bits(o2.m2) && o.invstd.same_bits(o2.invstd) && o.coeffs.same_bits(o2.coeffs) &&
        o.sum_dy_xmu.same_bits(o2.sum_dy_xmu) && o.sum_dy.same_bits(o2.sum_dy) &&
        o.grad_coeffs.same_bits(o2.grad_coeffs) &&
        (k.running == 0 || (o.new_mean.same_bits(o2.new_mean) && o.new_var.same_bits(o2.new_var)))))
    fail("nondeterministic");
  if (!(o.y.guards_intact() && o.dx.guards_intact() && o.mean.guards_intact() &&
        o.m2.guards_intact() && o.invstd.guards_intact() && o.coeffs.guards_intact() &&
        o.sum_dy_xmu.guards_intact() && o.sum_dy.guards_intact() &&
        o.grad_coeffs.guards_intact() && o.new_mean.guards_intact() &&
        o.new_var.guards_intact() && o.stat_partials.guards_intact() &&
        o.sum_partials.guards_intact()))
    fail("out-of-bounds write");
  if (k.running == 0 && !(o.new_mean.guards_intact() && std::isnan(to_d(o.new_mean.p[0]))))
    fail("running written");  // (NaN: untouched)

  // ---- reference and checks. Tolerances (all in units of the dtype's machine epsilon, eps_t, or
  // of the accumulation type's, eps_acc):
  //  * mean, M2 (float64 outputs of a Welford per thread in acc_t, merged in double): each
  //    Welford step rounds the running mean (|mean| eps_acc) and M2; relative to the spread that
  //    is eps_acc (1 + |mean| / sd) per step, a random walk over a thread's values, so
  //    stat_tol = 8 eps_acc (1 + |mean| / sd) sqrt(values per thread): mean in units of sd, M2
  //    relative. That is ~1e-5 .. 1e-4 in fp32 (means of up to 18 sd; ~1e-2 at mean 1e4 against
  //    sd 0.5), ~1e-14 .. 1e-13 in fp64, so the fp64 cases catch a single missed or doubly
  //    counted element in any reduction (the reductions index the same way for every dtype).
  //  * invstd: 1 / sqrt(M2 / count + eps) from the kernel's own M2, one rounding to acc_t
  //    (eps_acc); and against the float64 reference within stat_tol (half M2's relative error).
  //  * running statistics: the same double expression from the kernel's own mean and M2, then one
  //    rounding to their dtype: within eps_r |ref| (NaN for count 1, as ATen).
  //  * y, from the kernel's mean and invstd: a few acc roundings, then one to T:
  //    eps_t |y| + 4 eps_acc (|xhat w| + |bias|).
  //  * ds = sum dy (x - mean), db = sum dy with the kernel's acc mean: a product and a difference
  //    rounded in acc_t per term, added in double: (8 eps_acc + 2^-52 (additions per value, worst
  //    case)) sum |term| (+ eps_acc |sum|, the rounding to acc_t). A missed element is
  //    ~sum |term| / count, caught up to count ~1e5 in fp32 and always in fp64.
  //  * dx = a dy + b xhat + k, from the kernel's mean and invstd and the reference sums: eps_t |dx|
  //    + 8 eps_acc (|a dy| + |b xhat| + |k|) + what the sums' tolerance moves b and k by.
  //  * y and dx also allow T's smallest subnormal (fp16 stores |v| < 6e-5 in steps of 2^-24).
  // The reference sums run in long double, far below every tolerance.
  // A wrong channel (means 3 sd apart, weights 0.35 apart) or a wrong element gives errors of
  // order 1 against all of these.
  const double vpt = k.cl ? std::ceil(double(plan.piece_elems) / bn::kRowLanes)
                          : std::ceil(double(plan.piece_elems) / bn::kBlockThreads) + 1;
  // The double additions of the sums: worst case one rounding per term of a thread, per tree
  // level and per split merged (only visible in fp64, where the terms are exact to eps too).
  const double sum_tol = 8 * eps_acc + 0x1p-52 * (vpt + 8 + double(plan.splits));
  double e_mean = 0, e_m2 = 0, e_inv = 0, e_run = 0, e_y = 0, e_ds = 0, e_dx = 0;  // in tolerances
  for (int64_t c = 0; c < C; ++c) {
    // (sums in long double, so the reference's own rounding stays far below fp64's tolerances)
    long double s = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < HxW; ++h) s += xd[at(n, c, h)];
    const long double ml = s / M;
    long double ql = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < HxW; ++h) ql += (xd[at(n, c, h)] - ml) * (xd[at(n, c, h)] - ml);
    const double m = double(ml), q = double(ql);
    const double sd = std::sqrt(q / double(M));
    const double stat_tol = 8 * eps_acc * (1 + std::fabs(m) / (sd > 0 ? sd : 1)) * std::sqrt(vpt);
    const double km = o.mean.p[c], km2 = o.m2.p[c];
    if (std::isnan(km) || std::isnan(km2)) {
      e_mean = e_m2 = INFINITY;
    } else {
      e_mean = std::max(e_mean, std::fabs(km - m) / (sd > 0 ? sd : 1) / stat_tol);
      e_m2 = std::max(e_m2, std::fabs(km2 - q) / (q > 0 ? q : 1) / stat_tol);
    }
    // invstd from the kernel's M2 (one rounding to acc_t), and against the reference
    const double var_k = std::max(km2 / double(M), 0.0);
    const double inv_k = 1.0 / std::sqrt(var_k + eps);
    const double inv_ref = 1.0 / std::sqrt(q / double(M) + eps);
    const double ki = o.invstd.p[c];
    const double ei = std::max(std::fabs(ki / inv_k - 1) / eps_acc,
                               std::fabs(ki / inv_ref - 1) / (stat_tol + 2 * eps_acc));
    e_inv = std::max(e_inv, std::isnan(ei) ? INFINITY : ei);
    // running statistics from the kernel's mean and M2
    if (k.running != 0) {
      const double mo = k.momentum;
      const double nm = to_d(from_d<R>(to_d(running_mean.p[c]) * (1 - mo) + km / 1.0 * mo));
      const double nv =
          to_d(from_d<R>(to_d(running_var.p[c]) * (1 - mo) + km2 / double(M - 1) * mo));
      const double gm = to_d(o.new_mean.p[c]), gv = to_d(o.new_var.p[c]);
      if (!close(gm, nm, eps_r * std::fabs(nm)) || !close(gv, nv, eps_r * std::fabs(nv))) {
        e_run = INFINITY;
      } else if (!std::isnan(nv)) {
        e_run = std::max(e_run, std::max(std::fabs(gm - nm) / (eps_r * std::fabs(nm) + 1e-300),
                                         std::fabs(gv - nv) / (eps_r * std::fabs(nv) + 1e-300)));
      }
    }
    // y from the kernel's acc mean (the coeffs' mean slice) and invstd
    const double mk = o.coeffs.p[c];
    if (!(mk == double(acc_t(km)))) e_y = INFINITY;  // save_mean = the double mean in acc_t
    const double w = k.weight ? double(weight.p[c]) : 1.0, b = k.bias ? double(bias.p[c]) : 0.0;
    long double dsl = 0, dbl = 0;
    double ds_abs = 0, db_abs = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < HxW; ++h) {
        const int64_t i = at(n, c, h);
        const double t = (xd[i] - mk) * ki * w;
        const double ref = t + b;
        const double tol = eps_t * std::fabs(ref) + 4 * eps_acc * (std::fabs(t) + std::fabs(b)) + tiny_t;
        const double got = to_d(o.y.p[i]);
        e_y = std::max(e_y, std::isnan(got) ? INFINITY : std::fabs(got - ref) / tol);
        dsl += (long double)dyd[i] * ((long double)xd[i] - mk);
        dbl += dyd[i];
        ds_abs += std::fabs(dyd[i] * (xd[i] - mk));
        db_abs += std::fabs(dyd[i]);
      }
    const double ds = double(dsl), db = double(dbl);
    const double ds_tol = sum_tol * ds_abs + eps_acc * std::fabs(ds) + 1e-300;
    const double db_tol = sum_tol * db_abs + eps_acc * std::fabs(db) + 1e-300;
    const double gds = o.sum_dy_xmu.p[c], gdb = o.sum_dy.p[c];
    const double es = std::max(std::fabs(gds - ds) / ds_tol, std::fabs(gdb - db) / db_tol);
    e_ds = std::max(e_ds, std::isnan(es) ? INFINITY : es);
    // dx = a dy + b xhat + k from the kernel's mean and invstd and the reference sums
    const double a = ki * w, bb = -a * ds * ki / double(M), kk = -a * db / double(M);
    const double bb_tol = std::fabs(a) * ki / double(M) * ds_tol;
    const double kk_tol = std::fabs(a) / double(M) * db_tol;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < HxW; ++h) {
        const int64_t i = at(n, c, h);
        const double xh = (xd[i] - mk) * ki;
        const double ref = a * dyd[i] + bb * xh + kk;
        const double tol = eps_t * std::fabs(ref) +
                           8 * eps_acc * (std::fabs(a * dyd[i]) + std::fabs(bb * xh) + std::fabs(kk)) +
                           bb_tol * std::fabs(xh) + kk_tol + tiny_t;
        const double got = to_d(o.dx.p[i]);
        e_dx = std::max(e_dx, std::isnan(got) ? INFINITY : std::fabs(got - ref) / tol);
      }
  }
  if (e_mean > 1) fail("mean");
  if (e_m2 > 1) fail("m2");
  if (e_inv > 1) fail("invstd");
  if (e_run > 1) fail("running");
  if (e_y > 1) fail("y");
  if (e_ds > 1) fail("sums");
  if (e_dx > 1) fail("dx");
  // (EMU_MAX_BLOCKS, read by the emulator at every launch, overrides the case's cap)
  const char* env_cap = std::getenv("EMU_MAX_BLOCKS");
  const std::string cap_name = env_cap != nullptr ? std::string("env:") + env_cap
                                                  : std::to_string(k.max_blocks);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "%s %-4s %s N=%lld C=%lld HxW=%lld sms=%lld off x/dy/out=%d/%d/%d mean=%g scale=%g w=%d b=%d run=%s m=%g "
      "cap=%s | splits %lld piece %lld grids %lld/%lld/%lld %s | err/tol mean %.2f m2 %.2f "
      "invstd %.2f run %.2f y %.2f sums %.2f dx %.2f | %.2fs%s%s\n",
      why.empty() ? "ok  " : "FAIL", name_of<T>(), k.cl ? "CL  " : "NCHW", (long long)N,
      (long long)C, (long long)HxW, (long long)k.sms, k.off_in, k.off_dy, k.off_out, base, k.scale,
      k.weight, k.bias, running_name(k.running), k.momentum, cap_name.c_str(), (long long)plan.splits,
      (long long)plan.piece_elems, (long long)plan.reduce_grid, (long long)plan.finalize_grid,
      (long long)plan.elem_grid, plan.splits > 16 ? "warp" : "thread", e_mean, e_m2, e_inv,
      e_run, e_y, e_ds, e_dx, secs, why.empty() ? "" : " ", why.c_str());
  std::fflush(stdout);
  if (!why.empty()) ++g_fail;
}

template <class T>
void run_case(Case k) {
  // The large mean per dtype: 1e4 against a spread of 0.5 .. 1.25 where the dtype resolves it
  // (fp32, fp64); fp16 (max 65504, ulp 2 at 1e4) and bf16 (ulp 64 at 1e4) get a wider spread so
  // the values are not a handful of levels.
  double base = 0;
  if (k.big_mean) {
    base = 1e4;
    if (std::is_same_v<T, __half>) k.scale = 8;
    if (std::is_same_v<T, __nv_bfloat16>) k.scale = 128;
  }
  if (k.running == 2) {
    run_case_r<T, T>(k, base);
  } else {
    run_case_r<T, acc_type<T>>(k, base);
  }
}

// The reductions index alike for every dtype (only acc_t differs: float, or double for fp64), the
// elementwise kernels by their vector width (4 fp32, 2 fp64, 8 fp16 / bf16): every dtype runs the
// shapes of the apply / dx paths, the conversions and the running statistics in both dtypes;
// fp32 and fp64 also the reduction plans (splits, finalize paths, grid caps). Each launch of the
// emulator starts 256 threads and each __syncthreads is a barrier of 256 threads, so the "small"
// set is sized for ~30 s on 2 cores; "big" adds larger shapes.
template <class T>
void run_all(const std::string& which) {
  const bool small = which == "small" || which == "all", big = which == "big" || which == "all";
  constexpr bool wide = std::is_same_v<T, float> || std::is_same_v<T, double>;
  if (small) {
    for (bool cl : {false, true}) {
      run_case<T>(Case(4, 3, 25, cl, 132));
      run_case<T>(Case(2, 5, 7, cl, 4).no_weight().no_bias().run(2, 0.3));
      // x, dy, y / dx misaligned by one element: all, or one of them (one element at a time).
      // NB: a 16-byte vector taken on a misaligned pointer faults here as on a GPU (g++
      // loads the alignas(16) Pack with movdqa: SIGSEGV); -fsanitize=alignment names the line.
      run_case<T>(Case(3, 7, 1001, cl, 4).misalign(1, 1, 1));
      run_case<T>(Case(3, 7, 1001, cl, 132).misalign(0, 1, 0).no_bias());
      run_case<T>(Case(3, 7, 1001, cl, 132).misalign(0, 0, 1).run(2));
      run_case<T>(Case(7, 1, 33, cl, 132).run(2));          // C = 1
      run_case<T>(Case(1, 5, 1, cl, 132));                  // count 1: unbiased var NaN
      // CL: 25 splits, the warp finalize
      run_case<T>(Case(2, 8, 3136, cl, 132).mean_1e4().run(2));
      if (wide) {
        run_case<T>(Case(2, 5, 7, cl, 132).mean_1e4());
        run_case<T>(Case(16, 64, 196, cl, 132).run(2));     // CL: 2 tiles x 13 splits
        run_case<T>(Case(2, 8, 3136, cl, 4).no_weight());   // CL: 4 splits
        run_case<T>(Case(512, 3, 100, cl, 4).run(0));       // NCHW 4, CL 32 splits (warp)
      }
    }
    // C > 256: two train-finalize blocks (NCHW reduces C items of 10 barriers each: big set)
    run_case<T>(Case(1, 512, 49, true, 132));
    if (wide) {
      run_case<T>(Case(1, 512, 49, true, 132).cap(1));    // every grid one block
      // CL: 200 splits (7 per lane of the warp finalize) onto a grid capped at 16 blocks
      if (std::is_same_v<T, double>) run_case<T>(Case(512, 3, 100, true, 132).cap(16));
      // CL: 264 splits of 257 rows over 67585 rows: the last piece is empty
      if (std::is_same_v<T, double>) run_case<T>(Case(5, 3, 13517, true, 33).cap(8));
      // HxW = 1: NCHW planes of one element; CL 16 splits (the thread finalize's limit)
      run_case<T>(Case(4096, 6, 1, false, 132).cap(4));
      run_case<T>(Case(4096, 64, 1, true, 132).cap(8));
      // CL: 2 tiles x 20 splits, the warp finalize's 5 blocks capped at 2 (its grid stride)
      run_case<T>(Case(5, 40, 1000, true, 5).cap(2));
      // NCHW pieces of 13600 starting inside a plane of 97 (runs of whole and partial planes)
      run_case<T>(Case(701, 2, 97, false, 132).cap(4));
      // NCHW with more than 16 splits (17 pieces of 15424, across the two planes): warp finalize
      run_case<T>(Case(2, 1, 131100, false, 132).cap(12));
    }
    if (std::is_same_v<T, float>) {
      // fp32 Welford overflows (|x| ~ 1e20): the exact double fallback of the finalize
      run_case<T>(Case(2, 5, 37, false, 132).spread(3e19));
      run_case<T>(Case(2, 5, 37, true, 132).spread(3e19));
      run_case<T>(Case(2, 8, 3136, true, 132).spread(3e19));  // in the warp finalize
    }
  }
  if (big) {
    for (bool cl : {false, true}) {
      run_case<T>(Case(1, 512, 49, cl, 132));
      run_case<T>(Case(16, 64, 196, cl, 132).run(2));
      run_case<T>(Case(4096, 64, 1, cl, 132).cap(8));
      run_case<T>(Case(512, 3, 100, cl, 132).cap(16));
      run_case<T>(Case(32, 64, 784, cl, 132).cap(64));
      run_case<T>(Case(64, 3, 50176, cl, 132).cap(64).mean_1e4());
      run_case<T>(Case(1, 2048, 49, cl, 132).misalign(1, 0, 1).cap(64));
      run_case<T>(Case(5, 3, 13517, cl, 33).cap(8));
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "small";
  const std::string types = argc > 2 ? argv[2] : "f32,f64,f16,bf16";
  auto has = [&](const char* t) {
    for (size_t b = 0; b <= types.size();) {
      size_t e = types.find(',', b);
      if (e == std::string::npos) e = types.size();
      if (types.compare(b, e - b, t) == 0) return true;
      b = e + 1;
    }
    return false;
  };
  const auto t0 = std::chrono::steady_clock::now();
  if (has("f32")) run_all<float>(which);
  if (has("f64")) run_all<double>(which);
  if (has("f16")) run_all<__half>(which);
  if (has("bf16")) run_all<__nv_bfloat16>(which);
  std::printf("%d failures (%.1fs)\n", g_fail,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return g_fail != 0;
}
