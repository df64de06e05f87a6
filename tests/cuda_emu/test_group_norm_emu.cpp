// Emulated end-to-end check of the CUDA GroupNorm kernels (csrc/ops/cuda/group_norm_kernel.cu) on
// the CPU (include/emu.h) against a float64 reference, in both layouts (NCHW and channels-last):
//   forward        mean / rstd, and y = act(xhat * gamma + beta) for every fused activation;
//   act grad       g = dy * act'(z) (launch_group_norm_act_grad), z from the forward's statistics;
//   backward       dx, dgamma, dbeta of GroupNorm with dy (or g), every subset of the outputs;
//   determinism    a second forward and backward, with the block's threads resumed in reverse
//                  order and another grid (the kernels are grid-stride loops), bit for bit equal;
//   bounds         every buffer, scratch included, has canaries either side, and every output
//                  starts as NaN, so a missed or stray write fails.
// Tolerances (run_case): from the storage type's epsilon (rounding of the outputs) and the
// accumulation type's (arithmetic), per element, scaled by the magnitudes of the terms that make
// the value up; each error is printed as a fraction of its tolerance (1 at most passes). gamma and
// beta are random per channel and x has per-channel offsets, so an indexing bug (a wrong channel,
// group or element) errs by order 0.1 to 1, several times the loosest tolerance (bf16).
//
// Usage: test_group_norm_emu [small|big|all] [f32,f64,f16,bf16]. ctest runs "small".
#include "include/emu.h"
#include "include/emu_test_util.h"
#include "group_norm_kernel_emu.cpp"

#include <chrono>
#include <cstdlib>
#include <random>
#include <string>

using namespace normext;
using namespace normext::cuda;

template <class T> constexpr ScalarKind kind_of() { return scalar_kind<ScalarKind, T>(); }

int g_fail = 0;
constexpr double kPi = 3.14159265358979323846;

// ---------------------------------------------------------------------------------------------
// One case

struct Case {
  int64_t N, C, HxW, G;
  bool cl = false;       // channels-last (else NCHW)
  int act = 0;           // fused activation: 0 none, 1 silu, 2 gelu, 3 gelu_tanh, 4 relu
  bool gamma = true, beta = true;
  bool dx = true, dgamma = true, dbeta = true;  // backward outputs wanted (none: forward only)
  int ox = 0, ody = 0, oy = 0;  // elements of misalignment of x; dy; y, g and dx
  bool inplace = false;  // forward with y == x (group_norm_inplace)
  double base = 0, scale = 1;   // x = base + scale * (per-channel offset + N(0, 1))
  int64_t sms = 132;
  unsigned max_blocks = 0;      // grid cap of the first run (0: the plan's grid)
  const char* what = "";
};

const char* act_name(int act) {
  static const char* names[] = {"none", "silu", "gelu", "gelu_tanh", "relu"};
  return names[act];
}

// torch's definitions, in the form torch writes them (gelu_tanh through tanh, not the kernel's
// sigmoid form), and their derivatives.
double act_ref(double z, int act) {
  switch (act) {
    case 1: return z / (1 + std::exp(-z));
    case 2: return 0.5 * z * (1 + std::erf(z / std::sqrt(2.0)));
    case 3: return 0.5 * z * (1 + std::tanh(std::sqrt(2 / kPi) * (z + 0.044715 * z * z * z)));
    case 4: return z > 0 ? z : 0;
    default: return z;
  }
}
double act_grad_ref(double z, int act) {
  switch (act) {
    case 1: { const double s = 1 / (1 + std::exp(-z)); return s * (1 + z * (1 - s)); }
    case 2: return 0.5 * (1 + std::erf(z / std::sqrt(2.0))) + z * std::exp(-0.5 * z * z) / std::sqrt(2 * kPi);
    case 3: {
      const double k = std::sqrt(2 / kPi), t = std::tanh(k * (z + 0.044715 * z * z * z));
      return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * k * (1 + 3 * 0.044715 * z * z);
    }
    case 4: return z > 0 ? 1 : 0;
    default: return 1;
  }
}

// n elements of E with kGuard canary elements either side, and `off` elements of misalignment
// after the leading ones (16-byte aligned). Every byte starts as 0xff: NaN in every float type.
template <class E>
struct Buf {
  static constexpr int kGuard = 16;
  std::vector<E> v;
  int64_t n;
  int off;
  explicit Buf(int64_t n_ = 0, int off_ = 0) : v(n_ + 2 * kGuard + off_), n(n_), off(off_) {
    std::memset(static_cast<void*>(v.data()), 0xff, v.size() * sizeof(E));
  }
  E* p() { return v.data() + kGuard + off; }
  const E* p() const { return v.data() + kGuard + off; }
  E& operator[](int64_t i) { return p()[i]; }
  const E& operator[](int64_t i) const { return p()[i]; }
  bool guards_ok() const {
    const auto* b = reinterpret_cast<const unsigned char*>(v.data());
    const size_t lo = (kGuard + off) * sizeof(E), hi = (kGuard + off + n) * sizeof(E);
    for (size_t i = 0; i < lo; ++i) if (b[i] != 0xff) return false;
    for (size_t i = hi; i < v.size() * sizeof(E); ++i) if (b[i] != 0xff) return false;
    return true;
  }
  bool same_bits(const Buf& o) const {
    return n == o.n && std::memcmp(p(), o.p(), n * sizeof(E)) == 0;
  }
};

// The largest error seen, as a fraction of the error allowed there (a NaN error is infinite).
struct MaxErr {
  double v = 0;
  void add(double err, double allowed) {
    const double e = err / allowed;
    v = std::isnan(e) ? INFINITY : std::max(v, e);
  }
};

// Element (n, c, p) of an (N, C, HxW) tensor in the case's layout.
struct Layout {
  int64_t C, HxW;
  bool cl;
  int64_t operator()(int64_t n, int64_t c, int64_t p) const {
    return cl ? (n * HxW + p) * C + c : (n * C + c) * HxW + p;
  }
};

// Everything one run of the kernels writes.
template <class T>
struct Run {
  using acc_t = acc_type<T>;
  Buf<acc_t> mean, rstd, dgamma, dbeta;
  Buf<T> y, g, dx;
  bool launched = true;
  bool guards = true;  // every buffer's canaries intact
  std::string bad_guards;
};

// Forward, then (when any backward output is wanted) the activation gradient and the backward,
// with fiber priority `order` (emu::g_sched_order) and the grid capped at `max_blocks`.
template <class T>
Run<T> run_kernels(const Case& c, const GroupNormPlan& plan, const Buf<T>& x, const Buf<T>& dy,
                   const Buf<acc_type<T>>& gamma, const Buf<acc_type<T>>& beta, int order,
                   unsigned max_blocks) {
  using acc_t = acc_type<T>;
  emu::g_sched_order = order;
  emu::g_max_blocks = max_blocks ? max_blocks : (1u << 30);
  const int64_t M = c.N * c.C * c.HxW, NC = c.N * c.C, NG = c.N * c.G;
  const bool bwd = c.dx || c.dgamma || c.dbeta;
  Run<T> r;
  r.mean = Buf<acc_t>(NG); r.rstd = Buf<acc_t>(NG);
  r.y = Buf<T>(M, c.inplace ? c.ox : c.oy);
  Buf<unsigned char> stat_partials(plan.stat_partials * kStatPartialBytes);
  Buf<acc_t> fwd_coeffs(3 * NC);
  if (c.inplace) std::memcpy(r.y.p(), x.p(), M * sizeof(T));
  ForwardArgs fa{};
  fa.x = c.inplace ? r.y.p() : x.p(); fa.y = r.y.p();
  fa.gamma = c.gamma ? gamma.p() : nullptr; fa.beta = c.beta ? beta.p() : nullptr;
  fa.mean = r.mean.p(); fa.rstd = r.rstd.p();
  fa.stat_partials = stat_partials.p(); fa.channel_coeffs = fwd_coeffs.p();
  fa.eps = 1e-5; fa.activation = c.act;
  r.launched &= launch_group_norm_forward(plan, kind_of<T>(), fa, nullptr) == cudaSuccess;
  auto guard = [&](const char* name, bool ok) {
    if (!ok) { r.guards = false; r.bad_guards += std::string(" ") + name; }
  };
  guard("stat_partials", stat_partials.guards_ok()); guard("fwd_coeffs", fwd_coeffs.guards_ok());
  if (bwd) {
    const T* grad = dy.p();
    Buf<acc_t> act_coeffs(3 * NC);
    if (c.act != 0) {
      r.g = Buf<T>(M, c.oy);
      ActGradArgs ga{};
      ga.dy = dy.p(); ga.x = x.p(); ga.mean = r.mean.p(); ga.rstd = r.rstd.p();
      ga.gamma = fa.gamma; ga.beta = fa.beta; ga.coeffs = act_coeffs.p(); ga.g = r.g.p();
      ga.activation = c.act;
      r.launched &= launch_group_norm_act_grad(plan, kind_of<T>(), ga, nullptr) == cudaSuccess;
      grad = r.g.p();
    }
    Buf<acc_t> sum_partials(2 * plan.sum_partials), channel_sums(2 * NC), dx_coeffs(5 * NC);
    if (c.dx) r.dx = Buf<T>(M, c.oy);
    if (c.dgamma) r.dgamma = Buf<acc_t>(c.C);
    if (c.dbeta) r.dbeta = Buf<acc_t>(c.C);
    BackwardArgs ba{};
    ba.dy = grad; ba.x = x.p(); ba.mean = r.mean.p(); ba.rstd = r.rstd.p(); ba.gamma = fa.gamma;
    ba.dx = c.dx ? r.dx.p() : nullptr;
    ba.dgamma = c.dgamma ? r.dgamma.p() : nullptr;
    ba.dbeta = c.dbeta ? r.dbeta.p() : nullptr;
    ba.sum_partials = sum_partials.p(); ba.channel_sums = channel_sums.p();
    ba.dx_coeffs = c.dx ? dx_coeffs.p() : nullptr;
    r.launched &= launch_group_norm_backward(plan, kind_of<T>(), ba, nullptr) == cudaSuccess;
    guard("act_coeffs", act_coeffs.guards_ok()); guard("sum_partials", sum_partials.guards_ok());
    guard("channel_sums", channel_sums.guards_ok()); guard("dx_coeffs", dx_coeffs.guards_ok());
  }
  guard("mean", r.mean.guards_ok()); guard("rstd", r.rstd.guards_ok()); guard("y", r.y.guards_ok());
  guard("g", r.g.guards_ok()); guard("dx", r.dx.guards_ok());
  guard("dgamma", r.dgamma.guards_ok()); guard("dbeta", r.dbeta.guards_ok());
  return r;
}

std::string plan_summary(const GroupNormPlan& p, int vec) {
  char s[200];
  if (p.channels_last) {
    const ChannelsLastLanes L = make_channels_last_lanes(p.C, vec, p.cl.rows_per_split);
    std::snprintf(s, sizeof s, "cl splits %lld rows %lld vec %d slots %d lanes %dx%d passes %lld",
                  (long long)p.cl.splits, (long long)p.cl.rows_per_split, L.vec, L.slots,
                  L.col_lanes, L.row_lanes, (long long)L.passes);
  } else {
    std::snprintf(s, sizeof s, "stats team %d splits %lld, sums team %d splits %lld, apply %lld rows/tile",
                  p.stats.team_threads, (long long)p.stats.splits, p.sums.team_threads,
                  (long long)p.sums.splits, (long long)p.apply.rows_per_tile);
  }
  return s;
}

template <class T>
void run_case(const Case& c) {
  using acc_t = acc_type<T>;
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t N = c.N, C = c.C, HxW = c.HxW, G = c.G, D = C / G, M = N * C * HxW;
  const Layout at{C, HxW, c.cl};
  const bool bwd = c.dx || c.dgamma || c.dbeta;
  const double eps = 1e-5;

  // Inputs: per-channel offsets (groups are not all alike), gamma of either sign.
  std::mt19937_64 rng(N * 1000003 + C * 101 + HxW * 7 + G + (c.cl ? 55 : 0) + c.act * 13);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::uniform_real_distribution<double> ud(0.0, 1.0);
  Buf<T> x(M, c.ox), dy(M, c.ody);
  std::vector<double> xd(M), dyd(M);
  for (int64_t n = 0; n < N; ++n) for (int64_t ch = 0; ch < C; ++ch) for (int64_t p = 0; p < HxW; ++p) {
    const int64_t i = at(n, ch, p);
    x[i] = from_d<T>(c.base + c.scale * (0.5 * (ch % 5) + nd(rng)));
    xd[i] = to_d(x[i]);
    dy[i] = from_d<T>(nd(rng) + 0.1);
    dyd[i] = to_d(dy[i]);
  }
  Buf<acc_t> gamma(C), beta(C);
  std::vector<double> gd(C, 1.0), bd(C, 0.0);  // as the kernels see them (null: 1 and 0)
  for (int64_t ch = 0; ch < C; ++ch) {
    gamma[ch] = acc_t((0.5 + ud(rng)) * (ch % 4 == 3 ? -1 : 1));
    beta[ch] = acc_t(2 * ud(rng) - 1);
    if (c.gamma) gd[ch] = double(gamma[ch]);
    if (c.beta) bd[ch] = double(beta[ch]);
  }

  const GroupNormPlan plan = make_group_norm_plan(N, C, HxW, G, c.cl, c.sms);
  Run<T> r = run_kernels<T>(c, plan, x, dy, gamma, beta, 0, c.max_blocks);
  // Determinism: the same bits with the threads resumed in reverse and another grid.
  Run<T> r2 = run_kernels<T>(c, plan, x, dy, gamma, beta, 1, c.max_blocks ? 0 : 5);
  const bool same = r.mean.same_bits(r2.mean) && r.rstd.same_bits(r2.rstd) && r.y.same_bits(r2.y) &&
                    r.g.same_bits(r2.g) && r.dx.same_bits(r2.dx) && r.dgamma.same_bits(r2.dgamma) &&
                    r.dbeta.same_bits(r2.dbeta);

  // Errors allowed. eps_t: rounding to the storage type; eps_acc: arithmetic in acc_t.
  //   mean, rstd  kStat eps_acc kappa (mean in units of the group's std, rstd relative), kappa =
  //               max |x| / std of the group: the accumulation rounds at the data's magnitude;
  //   y           (eps_t + 32 eps_acc)(1 + |gamma xhat| + |beta|), plus the statistics' errors
  //               through gamma (1 + |xhat|);
  //   g           (eps_t + 64 eps_acc) |dy| (1 + |u| + |beta|), u = gamma xhat (z = u + beta);
  //   dx          (eps_t + kSum eps_acc) rstd (|gamma g| + mean|gamma g| + |xhat| mean|gamma g xhat|),
  //               the magnitudes of its terms;
  //   dgamma, dbeta  kSum eps_acc times the sum of the magnitudes of their terms;
  // and the subnormal spacing of T for y, g, dx (fp16 rounds absolutely below 6e-5).
  // NB: fp64 runs the same indexing as the others with tolerances of ~1e-14, so even a single
  // missed element of a large group (an error of 1 / count) fails there.
  const double eps_t = eps_of<T>(), eps_acc = eps_of<acc_t>(), tiny = denorm_of<T>();
  constexpr double kStat = 64, kSum = 32;

  // Reference statistics in double, two passes.
  MaxErr em, er, ey, eg, edx, edg, edb;
  std::vector<double> rmean(N * G), rrstd(N * G), kappa(N * G);
  for (int64_t n = 0; n < N; ++n) for (int64_t g = 0; g < G; ++g) {
    double s = 0, q = 0, xmax = 0;
    for (int64_t ch = g * D; ch < g * D + D; ++ch) for (int64_t p = 0; p < HxW; ++p) {
      s += xd[at(n, ch, p)];
      xmax = std::max(xmax, std::fabs(xd[at(n, ch, p)]));
    }
    const double m = s / double(D * HxW);
    for (int64_t ch = g * D; ch < g * D + D; ++ch) for (int64_t p = 0; p < HxW; ++p) {
      const double t = xd[at(n, ch, p)] - m;
      q += t * t;
    }
    const int64_t ng = n * G + g;
    rmean[ng] = m;
    rrstd[ng] = 1 / std::sqrt(q / double(D * HxW) + eps);
    kappa[ng] = std::max(1.0, xmax * rrstd[ng]);
    em.add(std::fabs(double(r.mean[ng]) - m) * rrstd[ng], kStat * eps_acc * kappa[ng]);
    er.add(std::fabs(double(r.rstd[ng]) / rrstd[ng] - 1), kStat * eps_acc * kappa[ng]);
  }
  for (int64_t n = 0; n < N; ++n) for (int64_t ch = 0; ch < C; ++ch) for (int64_t p = 0; p < HxW; ++p) {
    const int64_t i = at(n, ch, p), ng = n * G + ch / D;
    const double xh = (xd[i] - rmean[ng]) * rrstd[ng], u = gd[ch] * xh;
    const double allowed = (eps_t + 32 * eps_acc) * (1 + std::fabs(u) + std::fabs(bd[ch])) +
                           2 * kStat * eps_acc * kappa[ng] * std::fabs(gd[ch]) * (1 + std::fabs(xh)) + tiny;
    ey.add(std::fabs(to_d(r.y[i]) - act_ref(u + bd[ch], c.act)), allowed);
  }

  int64_t ambiguous = 0;  // relu: |z| within rounding of 0, either side accepted
  if (bwd) {
    // The gradient the backward takes: g of the activation (checked here against act'(z) with
    // z from the kernel's statistics), or dy.
    std::vector<double> grad = dyd;
    if (c.act != 0) {
      for (int64_t n = 0; n < N; ++n) for (int64_t ch = 0; ch < C; ++ch) for (int64_t p = 0; p < HxW; ++p) {
        const int64_t i = at(n, ch, p), ng = n * G + ch / D;
        const double u = (xd[i] - double(r.mean[ng])) * double(r.rstd[ng]) * gd[ch];
        const double z = u + bd[ch], mag = 1 + std::fabs(u) + std::fabs(bd[ch]);
        grad[i] = to_d(r.g[i]);
        if (c.act == 4 && std::fabs(z) <= 16 * eps_acc * mag) {
          ++ambiguous;
          if (grad[i] != 0 && grad[i] != dyd[i]) eg.add(INFINITY, 1);
          continue;
        }
        eg.add(std::fabs(grad[i] - dyd[i] * act_grad_ref(z, c.act)),
               (eps_t + 64 * eps_acc) * std::fabs(dyd[i]) * mag + tiny);
      }
    }
    // GroupNorm's backward with the kernel's statistics, per group:
    // dx = rstd (gamma g - mean(gamma g) - xhat mean(gamma g xhat)).
    std::vector<double> rdg(C, 0), rdb(C, 0), sdg(C, 0), sdb(C, 0);
    for (int64_t n = 0; n < N; ++n) for (int64_t g = 0; g < G; ++g) {
      const int64_t ng = n * G + g;
      const double m = double(r.mean[ng]), rs = double(r.rstd[ng]), cnt = double(D * HxW);
      double a1 = 0, a2 = 0, s1 = 0, s2 = 0;  // mean(gamma g), mean(gamma g xhat), and of |.|
      for (int64_t ch = g * D; ch < g * D + D; ++ch) for (int64_t p = 0; p < HxW; ++p) {
        const int64_t i = at(n, ch, p);
        const double xh = (xd[i] - m) * rs;
        a1 += gd[ch] * grad[i]; a2 += gd[ch] * grad[i] * xh;
        s1 += std::fabs(gd[ch] * grad[i]); s2 += std::fabs(gd[ch] * grad[i] * xh);
        rdg[ch] += grad[i] * xh; rdb[ch] += grad[i];
        sdg[ch] += std::fabs(grad[i] * xh); sdb[ch] += std::fabs(grad[i]);
      }
      a1 /= cnt; a2 /= cnt; s1 /= cnt; s2 /= cnt;
      if (!c.dx) continue;
      for (int64_t ch = g * D; ch < g * D + D; ++ch) for (int64_t p = 0; p < HxW; ++p) {
        const int64_t i = at(n, ch, p);
        const double xh = (xd[i] - m) * rs;
        const double ref = rs * (gd[ch] * grad[i] - a1 - xh * a2);
        const double mag = rs * (std::fabs(gd[ch] * grad[i]) + s1 + std::fabs(xh) * s2);
        edx.add(std::fabs(to_d(r.dx[i]) - ref), (eps_t + kSum * eps_acc) * mag + tiny);
      }
    }
    for (int64_t ch = 0; ch < C; ++ch) {
      if (c.dgamma) edg.add(std::fabs(double(r.dgamma[ch]) - rdg[ch]), kSum * eps_acc * sdg[ch] + 1e-300);
      if (c.dbeta) edb.add(std::fabs(double(r.dbeta[ch]) - rdb[ch]), kSum * eps_acc * sdb[ch] + 1e-300);
    }
  }

  const bool ok = r.launched && r2.launched && r.guards && r2.guards && same && em.v <= 1 &&
                  er.v <= 1 && ey.v <= 1 && eg.v <= 1 && edx.v <= 1 && edg.v <= 1 && edb.v <= 1;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int vec = c.cl ? channels_last_vec<T>(C, x.p(), x.p()) : 0;
  std::string outs = bwd ? std::string(c.dx ? "dx" : "") + (c.dgamma ? " dg" : "") + (c.dbeta ? " db" : "") : "fwd";
  std::printf("%s %-4s %-4s N=%lld C=%lld HxW=%lld G=%lld act=%s g%d b%d off=%d%d%d%s bwd=[%s] sms=%lld cap=%u"
              " | %s | err/tol: mean %.3f rstd %.3f y %.3f g %.3f dx %.3f dg %.3f db %.3f%s%s%s%s | %.2fs %s\n",
              ok ? "ok  " : "FAIL", name_of<T>(), c.cl ? "cl" : "nchw", (long long)N, (long long)C,
              (long long)HxW, (long long)G, act_name(c.act), c.gamma, c.beta, c.ox, c.ody, c.oy,
              c.inplace ? " inplace" : "", outs.c_str(), (long long)c.sms, c.max_blocks,
              plan_summary(plan, vec).c_str(), em.v, er.v, ey.v, eg.v, edx.v, edg.v, edb.v,
              ambiguous ? " (relu ties skipped)" : "", !r.launched || !r2.launched ? " LAUNCH FAILED" : "",
              same ? "" : " NONDETERMINISTIC", r.guards && r2.guards ? "" : (" GUARDS:" + r.bad_guards + r2.bad_guards).c_str(),
              secs, c.what);
  if (!ok) ++g_fail;
}

// ---------------------------------------------------------------------------------------------
// The cases

template <class T>
void run_all(const std::string& which) {
  const bool small = which == "small" || which == "all", big = which == "big" || which == "all";
  if (small) {
    // Channels-last: lanes, passes, vector widths, splits.
    run_case<T>({.N = 2, .C = 6, .HxW = 5, .G = 3, .cl = true});
    run_case<T>({.N = 2, .C = 30, .HxW = 7, .G = 6, .cl = true});
    run_case<T>({.N = 3, .C = 1, .HxW = 50, .G = 1, .cl = true});
    run_case<T>({.N = 1000, .C = 8, .HxW = 1, .G = 4, .cl = true, .what = "many samples"});
    run_case<T>({.N = 2, .C = 9, .HxW = 6, .G = 3, .cl = true});
    run_case<T>({.N = 2, .C = 64, .HxW = 37, .G = 8, .cl = true, .sms = 4});
    run_case<T>({.N = 2, .C = 64, .HxW = 37, .G = 8, .cl = true, .ox = 1, .ody = 1, .oy = 1, .sms = 4, .what = "misaligned: one channel a load"});
    run_case<T>({.N = 2, .C = 64, .HxW = 37, .G = 8, .cl = true, .ox = 1, .sms = 4, .what = "x misaligned only"});
    run_case<T>({.N = 2, .C = 64, .HxW = 37, .G = 8, .cl = true, .ody = 1, .sms = 4, .what = "dy misaligned only"});
    run_case<T>({.N = 2, .C = 1280, .HxW = 16, .G = 32, .cl = true, .what = "passes"});
    run_case<T>({.N = 1, .C = 1028, .HxW = 9, .G = 4, .cl = true, .what = "D = 257 across passes"});
    run_case<T>({.N = 1, .C = 8192, .HxW = 3, .G = 1, .cl = true, .what = "one group over 8 passes"});
    run_case<T>({.N = 1, .C = 4100, .HxW = 5, .G = 41, .cl = true, .what = "D = 100"});
    run_case<T>({.N = 2, .C = 3000, .HxW = 4, .G = 1000, .cl = true, .what = "D = 3"});
    run_case<T>({.N = 1, .C = 33, .HxW = 1500, .G = 11, .cl = true, .sms = 2, .what = "long rows per thread"});
    run_case<T>({.N = 2, .C = 64, .HxW = 300, .G = 8, .cl = true, .base = 1e4, .what = "large mean"});
    run_case<T>({.N = 2, .C = 1280, .HxW = 16, .G = 32, .cl = true, .base = 1e4, .what = "large mean"});
    run_case<T>({.N = 2, .C = 302, .HxW = 8, .G = 2, .cl = true, .what = "one element a load, 2 slots"});
    run_case<T>({.N = 2, .C = 302, .HxW = 8, .G = 2, .cl = true, .ox = 1, .ody = 1, .oy = 1});
    run_case<T>({.N = 1, .C = 1280, .HxW = 200, .G = 32, .cl = true, .what = "50 splits: warp finalize and channel sums"});
    run_case<T>({.N = 1, .C = 64, .HxW = 64 * 64, .G = 32, .cl = true, .what = "64 splits: warp channel sums"});
    run_case<T>({.N = 1, .C = 64, .HxW = 16 * 64, .G = 32, .cl = true, .what = "16 splits: thread finalize and channel sums"});
    run_case<T>({.N = 1, .C = 64, .HxW = 17 * 64, .G = 32, .cl = true, .what = "17 splits: warp finalize and channel sums"});
    run_case<T>({.N = 3, .C = 40, .HxW = 1000, .G = 4, .cl = true, .sms = 1, .what = "few large blocks"});
    run_case<T>({.N = 2, .C = 64, .HxW = 300, .G = 8, .cl = true, .max_blocks = 3, .what = "grid-strided blocks"});
    // Channels-last apply over tiles of one sample (HxW * C >= 4096): heads, wrapping vectors.
    run_case<T>({.N = 2, .C = 64, .HxW = 100, .G = 8, .cl = true, .ox = 1, .ody = 1, .oy = 1, .what = "long samples, misaligned"});
    run_case<T>({.N = 2, .C = 64, .HxW = 100, .G = 8, .cl = true, .oy = 1, .what = "long samples, y and dx misaligned"});
    run_case<T>({.N = 1, .C = 6, .HxW = 1500, .G = 3, .cl = true, .what = "C = 6: vectors wrap past the last channel"});
    run_case<T>({.N = 1, .C = 3, .HxW = 3001, .G = 1, .cl = true, .what = "C = 3 below the vector width"});

    // NCHW: one-thread teams (groups and rows of <= 16 elements).
    run_case<T>({.N = 3, .C = 12, .HxW = 1, .G = 4, .what = "HxW 1, D 3"});
    run_case<T>({.N = 5, .C = 16, .HxW = 16, .G = 16, .what = "groups of 16"});
    run_case<T>({.N = 2, .C = 8, .HxW = 2, .G = 1, .what = "group of 16, rows of 2"});
    run_case<T>({.N = 300, .C = 8, .HxW = 3, .G = 8, .what = "2400 groups of 3: grid stride"});
    run_case<T>({.N = 1, .C = 4096, .HxW = 1, .G = 32, .what = "HxW 1: warp groups, rows of one"});
    run_case<T>({.N = 7, .C = 10, .HxW = 5, .G = 5, .ox = 1, .ody = 1, .oy = 1, .what = "odd, misaligned"});
    // Warp teams (groups of 17 .. 2048 elements).
    run_case<T>({.N = 2, .C = 6, .HxW = 7, .G = 2, .what = "D*HxW 21 (odd)"});
    run_case<T>({.N = 2, .C = 4, .HxW = 17, .G = 4, .what = "D*HxW 17, rows of 17: warp both"});
    run_case<T>({.N = 2, .C = 64, .HxW = 32, .G = 8, .what = "D*HxW 256"});
    run_case<T>({.N = 2, .C = 2, .HxW = 2047, .G = 2, .what = "D*HxW 2047"});
    run_case<T>({.N = 3, .C = 8, .HxW = 256, .G = 1, .what = "D*HxW 2048 (warp), rows of 256"});
    run_case<T>({.N = 2, .C = 30, .HxW = 45, .G = 6, .ox = 1, .ody = 1, .oy = 1, .what = "odd, misaligned"});
    run_case<T>({.N = 2, .C = 30, .HxW = 45, .G = 6, .ox = 1, .what = "x misaligned only"});
    run_case<T>({.N = 2, .C = 30, .HxW = 45, .G = 6, .oy = 1, .what = "y, dx misaligned only"});
    run_case<T>({.N = 2, .C = 30, .HxW = 45, .G = 6, .max_blocks = 1, .what = "one block"});
    // Block teams, apply over long rows (tiles of one row).
    run_case<T>({.N = 2, .C = 1, .HxW = 2049, .G = 1, .what = "D*HxW 2049 (block, odd)"});
    run_case<T>({.N = 2, .C = 6, .HxW = 4099, .G = 3, .ox = 1, .ody = 1, .oy = 1, .what = "long odd rows, misaligned"});
    run_case<T>({.N = 1, .C = 64, .HxW = 64 * 64, .G = 32, .what = "batch 1: 32 block groups"});
    // Split groups (D*HxW >= 32768) and split rows (HxW >= 32768).
    run_case<T>({.N = 1, .C = 4, .HxW = 16384, .G = 1, .what = "4 splits of a group"});
    run_case<T>({.N = 1, .C = 2, .HxW = 40000, .G = 1, .ox = 1, .ody = 1, .oy = 1, .what = "split rows: thread channel sums, misaligned"});
    run_case<T>({.N = 1, .C = 1, .HxW = 300001, .G = 1, .max_blocks = 8, .what = "3D-like: 19 splits, warp finalize and channel sums"});
    run_case<T>({.N = 1, .C = 512, .HxW = 128 * 128, .G = 32, .what = "batch 1: 16 splits a group"});
    run_case<T>({.N = 2, .C = 64, .HxW = 300, .G = 8, .base = 1e4, .what = "large mean"});

    // Fused activations and their gradient, both layouts, with and without gamma / beta.
    for (int act = 1; act <= 4; ++act) {
      run_case<T>({.N = 2, .C = 32, .HxW = 50, .G = 8, .act = act, .what = "activation"});
      run_case<T>({.N = 2, .C = 32, .HxW = 50, .G = 8, .cl = true, .act = act, .what = "activation"});
    }
    run_case<T>({.N = 2, .C = 32, .HxW = 50, .G = 8, .act = 1, .gamma = false, .what = "no gamma"});
    run_case<T>({.N = 2, .C = 32, .HxW = 50, .G = 8, .cl = true, .act = 2, .beta = false, .what = "no beta"});
    run_case<T>({.N = 2, .C = 32, .HxW = 50, .G = 8, .act = 3, .gamma = false, .beta = false, .what = "neither"});
    run_case<T>({.N = 2, .C = 32, .HxW = 50, .G = 8, .cl = true, .act = 4, .gamma = false, .beta = false, .what = "neither"});
    run_case<T>({.N = 2, .C = 32, .HxW = 50, .G = 8, .gamma = false, .beta = false, .what = "neither"});
    run_case<T>({.N = 2, .C = 32, .HxW = 50, .G = 8, .cl = true, .gamma = false, .what = "no gamma"});
    run_case<T>({.N = 3, .C = 6, .HxW = 4, .G = 3, .act = 1, .ox = 1, .ody = 1, .oy = 1, .what = "thread teams, misaligned"});
    run_case<T>({.N = 1, .C = 8, .HxW = 5000, .G = 2, .act = 2, .ox = 1, .oy = 1, .what = "long rows, x and g misaligned"});
    run_case<T>({.N = 2, .C = 64, .HxW = 37, .G = 8, .cl = true, .act = 3, .ox = 1, .ody = 1, .oy = 1, .what = "misaligned"});
    run_case<T>({.N = 1, .C = 64, .HxW = 64 * 64, .G = 32, .cl = true, .act = 1, .what = "split, warp channel sums"});

    // Backward outputs: dx only, dgamma / dbeta only, one of them; forward only; in place.
    run_case<T>({.N = 2, .C = 30, .HxW = 45, .G = 6, .dgamma = false, .dbeta = false, .what = "dx only"});
    run_case<T>({.N = 2, .C = 30, .HxW = 45, .G = 6, .dx = false, .what = "dgamma, dbeta only"});
    run_case<T>({.N = 2, .C = 30, .HxW = 45, .G = 6, .dx = false, .dgamma = false, .what = "dbeta only"});
    run_case<T>({.N = 2, .C = 64, .HxW = 37, .G = 8, .cl = true, .dgamma = false, .dbeta = false, .what = "dx only"});
    run_case<T>({.N = 2, .C = 64, .HxW = 37, .G = 8, .cl = true, .act = 4, .dx = false, .what = "dgamma, dbeta only"});
    run_case<T>({.N = 2, .C = 64, .HxW = 37, .G = 8, .cl = true, .dx = false, .dbeta = false, .what = "dgamma only"});
    run_case<T>({.N = 2, .C = 30, .HxW = 45, .G = 6, .act = 2, .dx = false, .dgamma = false, .dbeta = false, .what = "forward only"});
    run_case<T>({.N = 2, .C = 30, .HxW = 45, .G = 6, .act = 1, .inplace = true, .what = "in place"});
    run_case<T>({.N = 2, .C = 64, .HxW = 37, .G = 8, .cl = true, .inplace = true, .what = "in place"});

    if (std::is_same_v<T, float>) {  // fp32 overflow of the accumulation: the exact fallback
      run_case<T>({.N = 2, .C = 64, .HxW = 37, .G = 8, .cl = true, .dx = false, .dgamma = false, .dbeta = false, .scale = 3e19, .sms = 4});
      run_case<T>({.N = 2, .C = 1280, .HxW = 16, .G = 32, .cl = true, .dx = false, .dgamma = false, .dbeta = false, .scale = 3e19});
      run_case<T>({.N = 2, .C = 30, .HxW = 45, .G = 6, .dx = false, .dgamma = false, .dbeta = false, .scale = 3e19});
      run_case<T>({.N = 3, .C = 12, .HxW = 1, .G = 4, .dx = false, .dgamma = false, .dbeta = false, .scale = 3e19});
      run_case<T>({.N = 1, .C = 4, .HxW = 16384, .G = 1, .dx = false, .dgamma = false, .dbeta = false, .scale = 3e19});
    }
  }
  if (big) {
    run_case<T>({.N = 2, .C = 1280, .HxW = 256, .G = 32, .cl = true});
    run_case<T>({.N = 2, .C = 320, .HxW = 4096, .G = 32, .cl = true});
    run_case<T>({.N = 8, .C = 256, .HxW = 950, .G = 32, .cl = true});
    run_case<T>({.N = 1, .C = 256, .HxW = 65536, .G = 32, .cl = true});
    run_case<T>({.N = 2, .C = 64, .HxW = 131072, .G = 8, .cl = true});
    run_case<T>({.N = 1, .C = 512, .HxW = 128 * 128, .G = 32, .cl = true});
    run_case<T>({.N = 1, .C = 512, .HxW = 128 * 128, .G = 32, .act = 1});
    run_case<T>({.N = 2, .C = 320, .HxW = 64 * 64, .G = 32, .act = 2});
    run_case<T>({.N = 1, .C = 32, .HxW = 16 * 64 * 64, .G = 8, .what = "3D: split rows"});
    run_case<T>({.N = 1, .C = 4, .HxW = 32 * 128 * 128, .G = 2, .what = "3D: warp channel sums"});
    run_case<T>({.N = 1, .C = 4, .HxW = 32 * 128 * 128, .G = 2, .cl = true, .act = 3});
  }
}

int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "small";
  const std::string types = argc > 2 ? argv[2] : "f32,f64,f16,bf16";
  auto has = [&](const char* t) { return ("," + types + ",").find(std::string(",") + t + ",") != std::string::npos; };
  if (has("f32")) run_all<float>(which);
  if (has("f64")) run_all<double>(which);
  if (has("f16")) run_all<__half>(which);
  if (has("bf16")) run_all<__nv_bfloat16>(which);
  std::printf("%d failures\n", g_fail);
  return g_fail != 0;
}
