// LibTorch-only test of libnormext: finds the ops through the dispatcher, as a C++ user without
// Python would, and checks them against ATen's group_norm and its autograd. Run by ctest.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd.h>

#include <array>
#include <cstdint>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>

namespace {

using TensorTriple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using ForwardFn = TensorTriple(const at::Tensor&, const std::optional<at::Tensor>&,
                               const std::optional<at::Tensor>&, int64_t, double, int64_t);
using BackwardFn = TensorTriple(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&, const std::optional<at::Tensor>&, int64_t,
                                std::array<bool, 3>, const std::optional<at::Tensor>&, int64_t);

constexpr int64_t kNumGroups = 3;
constexpr double kEps = 1e-5;
constexpr double kTol = 1e-5;

int g_passed = 0;
int g_failed = 0;

void check(bool ok, const std::string& name, const std::string& detail = "") {
  if (ok) {
    ++g_passed;
    std::cout << "PASS " << name << "\n";
  } else {
    ++g_failed;
    std::cout << "FAIL " << name << (detail.empty() ? "" : ": " + detail) << "\n";
  }
}

std::string describe_mismatch(const at::Tensor& actual, const at::Tensor& expected) {
  std::ostringstream out;
  if (actual.sizes() != expected.sizes()) {
    out << "sizes " << actual.sizes() << " vs expected " << expected.sizes();
  } else {
    out << "max abs diff " << (actual - expected).abs().max().item<double>();
  }
  return out.str();
}

void check_close(const at::Tensor& actual, const at::Tensor& expected, const std::string& name) {
  const bool ok = actual.defined() && actual.sizes() == expected.sizes() &&
                  actual.scalar_type() == expected.scalar_type() &&
                  at::allclose(actual, expected, kTol, kTol);
  check(ok, name, actual.defined() ? describe_mismatch(actual, expected) : "undefined tensor");
}

void check_sizes(const at::Tensor& t, at::IntArrayRef expected, const std::string& name) {
  std::ostringstream detail;
  if (t.defined()) {
    detail << "sizes " << t.sizes() << ", expected " << expected;
  }
  check(t.defined() && t.sizes() == expected, name, t.defined() ? detail.str() : "undefined");
}

void test_forward(const c10::TypedOperatorHandle<ForwardFn>& forward) {
  const at::Tensor x = at::randn({2, 6, 4, 4});
  const at::Tensor w = at::randn({6});
  const at::Tensor b = at::randn({6});
  const at::Tensor expected = at::group_norm(x, kNumGroups, w, b, kEps);

  auto [y, mean, rstd] = forward.call(x, w, b, kNumGroups, kEps, /*activation=*/0);
  check_close(y, expected, "forward contiguous: y matches at::group_norm");
  check_sizes(mean, {2, kNumGroups}, "forward: mean has shape (N, G)");
  check_sizes(rstd, {2, kNumGroups}, "forward: rstd has shape (N, G)");

  const at::Tensor x_cl = x.contiguous(at::MemoryFormat::ChannelsLast);
  auto [y_cl, mean_cl, rstd_cl] = forward.call(x_cl, w, b, kNumGroups, kEps, /*activation=*/0);
  check(y_cl.is_contiguous(at::MemoryFormat::ChannelsLast),
        "forward channels_last: y is channels_last");
  check_close(y_cl, expected, "forward channels_last: y matches at::group_norm");
  check_close(mean_cl, mean, "forward channels_last: mean matches contiguous");
  check_close(rstd_cl, rstd, "forward channels_last: rstd matches contiguous");

  auto [y_nw, mean_nw, rstd_nw] = forward.call(x, std::nullopt, std::nullopt, kNumGroups, kEps, /*activation=*/0);
  check_close(y_nw, at::group_norm(x, kNumGroups, {}, {}, kEps),
              "forward without weight/bias: y matches at::group_norm");
}

// Gradients of at::group_norm through autograd: the reference for the backward op.
TensorTriple reference_grads(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                             const at::Tensor& grad_out) {
  const at::Tensor xr = x.detach().clone().set_requires_grad(true);
  const at::Tensor wr = w.detach().clone().set_requires_grad(true);
  const at::Tensor br = b.detach().clone().set_requires_grad(true);
  const at::Tensor y = at::group_norm(xr, kNumGroups, wr, br, kEps);
  const auto grads = torch::autograd::grad({y}, {xr, wr, br}, {grad_out});
  return {grads[0], grads[1], grads[2]};
}

void test_backward(const c10::TypedOperatorHandle<ForwardFn>& forward,
                   const c10::TypedOperatorHandle<BackwardFn>& backward) {
  const at::Tensor x = at::randn({2, 6, 4, 4});
  const at::Tensor w = at::randn({6});
  const at::Tensor b = at::randn({6});
  const at::Tensor grad_out = at::randn({2, 6, 4, 4});
  auto [dx_ref, dw_ref, db_ref] = reference_grads(x, w, b, grad_out);

  auto [y, mean, rstd] = forward.call(x, w, b, kNumGroups, kEps, /*activation=*/0);
  auto [dx, dw, db] = backward.call(grad_out, x, mean, rstd, w, kNumGroups, {true, true, true}, std::nullopt, 0);
  check_close(dx, dx_ref, "backward: dx matches autograd");
  check_close(dw, dw_ref, "backward: dweight matches autograd");
  check_close(db, db_ref, "backward: dbias matches autograd");

  const at::Tensor x_cl = x.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor grad_out_cl = grad_out.contiguous(at::MemoryFormat::ChannelsLast);
  auto [y_cl, mean_cl, rstd_cl] = forward.call(x_cl, w, b, kNumGroups, kEps, /*activation=*/0);
  auto [dx_cl, dw_cl, db_cl] =
      backward.call(grad_out_cl, x_cl, mean_cl, rstd_cl, w, kNumGroups, {true, true, true}, std::nullopt, 0);
  check_close(dx_cl, dx_ref, "backward channels_last: dx matches autograd");
  check_close(dw_cl, dw_ref, "backward channels_last: dweight matches autograd");
  check_close(db_cl, db_ref, "backward channels_last: dbias matches autograd");

  auto [dx_only, dw_none, db_none] =
      backward.call(grad_out, x, mean, rstd, w, kNumGroups, {true, false, false}, std::nullopt, 0);
  check_close(dx_only, dx_ref, "backward mask (1,0,0): dx matches autograd");
  check_sizes(dw_none, {0}, "backward mask (1,0,0): dweight is empty [0]");
  check_sizes(db_none, {0}, "backward mask (1,0,0): dbias is empty [0]");
}

} // namespace

int main() {
  at::manual_seed(0);
  try {
    const auto forward = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("normext::group_norm_forward", "")
                             .typed<ForwardFn>();
    const auto backward = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("normext::group_norm_backward", "")
                              .typed<BackwardFn>();
    test_forward(forward);
    test_backward(forward, backward);
  } catch (const std::exception& e) {
    check(false, "unexpected exception", e.what());
  }
  std::cout << g_passed << " passed, " << g_failed << " failed\n";
  return g_failed == 0 ? 0 : 1;
}
