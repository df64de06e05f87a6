// DyT CPU kernels: task split and the fixed-order reductions of the backward. The vectorized
// loops (and the fp32 tanh) live in vec_kernels_impl.h.
//
// NB: every reduction is cut into blocks whose size depends only on the shape (never on the
// thread count), each block is summed by one leaf call in a fixed order, and the block partials
// are then summed in block order, so gradients are bitwise identical for any thread count.
#include <algorithm>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "ops/cpu/kernel_common.h"
#include "ops/cpu/vec_kernels.h"
#include "ops/dyt.h"

namespace normext {
namespace {

using cpu::VecKernels;

// Elements per forward task and per reduction block of the planes layout.
constexpr int64_t kTaskElems = 16384;
constexpr int64_t kBlockElems = 8192;
// Rows-of-C backward: channel blocks of at most this many channels (a multiple of 16), and at
// least this many rows per block so the per-block partials stay a few percent of the input.
constexpr int64_t kMaxBlockChannels = 1024;
constexpr int64_t kMinBlockRows = 64;

// Per-channel parameter arrays padded for whole-vector loads; missing parameters are 1 / 0.
template <typename acc_t>
std::vector<acc_t> padded_param(const at::Tensor& t, int64_t C, acc_t fill) {
  std::vector<acc_t> out(cpu::padded_channels(C) + kMaxBlockChannels, acc_t(0));
  const acc_t* p = t.defined() ? t.const_data_ptr<acc_t>() : nullptr;
  for (int64_t c = 0; c < C; ++c) {
    out[c] = p ? p[c] : fill;
  }
  return out;
}

template <typename scalar_t>
void forward_impl(const DytShape& s, const scalar_t* X, scalar_t* Y, at::opmath_type<scalar_t> alpha,
                  const at::Tensor& gamma, const at::Tensor& beta) {
  using T = typename Storage<scalar_t>::type;
  using acc_t = acc_type<T>;
  const VecKernels<T>& k = cpu::vec_kernels_for<T>(
      cpu::stream_output(2 * s.rows * s.C * s.inner * static_cast<int64_t>(sizeof(T))));
  const auto* x = reinterpret_cast<const T*>(X);
  auto* y = reinterpret_cast<T*>(Y);
  const std::vector<acc_t> w = padded_param<acc_t>(gamma, s.C, acc_t(1));
  const std::vector<acc_t> b = padded_param<acc_t>(beta, s.C, acc_t(0));
  if (!s.planes) {
    const int64_t R = std::max<int64_t>(1, kTaskElems / s.C);
    at::parallel_for(0, ceil_div(s.rows, R), 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t r0 = t * R, rows = std::min(R, s.rows - r0);
        k.dyt_forward_cl(x + r0 * s.C, y + r0 * s.C, rows, s.C, s.C, alpha, w.data(), b.data());
      }
    });
    return;
  }
  const int64_t nchunk = ceil_div(s.inner, kTaskElems);
  at::parallel_for(0, s.rows * s.C * nchunk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t plane = t / nchunk, j = t % nchunk, c = plane % s.C;
      const int64_t offset = plane * s.inner + j * kTaskElems;
      k.dyt_forward(x + offset, y + offset, std::min(kTaskElems, s.inner - j * kTaskElems), alpha,
                    w[c], b[c]);
    }
  });
}

template <typename scalar_t>
void backward_impl(const DytShape& s, const scalar_t* dY, const scalar_t* X, scalar_t* dX,
                   at::opmath_type<scalar_t> alpha, const at::Tensor& gamma, at::Tensor& dalpha,
                   at::Tensor& dgamma, at::Tensor& dbeta) {
  using T = typename Storage<scalar_t>::type;
  using acc_t = acc_type<T>;
  const VecKernels<T>& k = cpu::vec_kernels_for<T>(
      dX != nullptr && cpu::stream_output(3 * s.rows * s.C * s.inner * static_cast<int64_t>(sizeof(T))));
  const auto* dy = reinterpret_cast<const T*>(dY);
  const auto* x = reinterpret_cast<const T*>(X);
  auto* dx = reinterpret_cast<T*>(dX);
  const std::vector<acc_t> w = padded_param<acc_t>(gamma, s.C, acc_t(1));
  std::vector<acc_t> sum_dyt(s.C), sum_dy(s.C);
  std::vector<acc_t> block_dalpha;

  if (!s.planes) {
    const int64_t CB = std::min(cpu::padded_channels(s.C), kMaxBlockChannels);
    const int64_t ncb = ceil_div(s.C, CB);
    const int64_t R = std::max(kMinBlockRows, ceil_div(kBlockElems, CB));
    const int64_t nrb = ceil_div(s.rows, R);
    const int64_t blocks = nrb * ncb;
    // per block: [sum dy*t | sum dy], CB each
    std::vector<acc_t> partial(blocks * 2 * CB);
    block_dalpha.resize(blocks);
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t rb = t / ncb, cb = t % ncb;
        const int64_t r0 = rb * R, c0 = cb * CB;
        const int64_t offset = r0 * s.C + c0;
        k.dyt_backward_cl(dy + offset, x + offset, dx ? dx + offset : nullptr,
                          std::min(R, s.rows - r0), std::min(CB, s.C - c0), s.C, alpha,
                          w.data() + c0, &partial[t * 2 * CB], &partial[t * 2 * CB + CB],
                          &block_dalpha[t]);
      }
    });
    at::parallel_for(0, s.C, 64, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t cb = c / CB, cc = c % CB;
        double a = 0, b = 0;  // NB: block partials summed in double, in block order
        for (int64_t rb = 0; rb < nrb; ++rb) {
          const acc_t* part = &partial[(rb * ncb + cb) * 2 * CB];
          a += part[cc];
          b += part[CB + cc];
        }
        sum_dyt[c] = static_cast<acc_t>(a);
        sum_dy[c] = static_cast<acc_t>(b);
      }
    });
  } else {
    const int64_t nchunk = ceil_div(s.inner, kBlockElems);
    const int64_t blocks = s.rows * s.C * nchunk;
    std::vector<acc_t> partial(blocks * 2);
    block_dalpha.resize(blocks);
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t plane = t / nchunk, j = t % nchunk, c = plane % s.C;
        const int64_t offset = plane * s.inner + j * kBlockElems;
        k.dyt_backward(dy + offset, x + offset, dx ? dx + offset : nullptr,
                       std::min(kBlockElems, s.inner - j * kBlockElems), alpha, w[c],
                       &partial[2 * t], &partial[2 * t + 1], &block_dalpha[t]);
      }
    });
    at::parallel_for(0, s.C, 16, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        double a = 0, b = 0;
        for (int64_t n = 0; n < s.rows; ++n) {
          for (int64_t j = 0; j < nchunk; ++j) {
            const int64_t t = (n * s.C + c) * nchunk + j;
            a += partial[2 * t];
            b += partial[2 * t + 1];
          }
        }
        sum_dyt[c] = static_cast<acc_t>(a);
        sum_dy[c] = static_cast<acc_t>(b);
      }
    });
  }
  if (dalpha.defined()) {
    // NB: block partials summed in double, in block order: the sum over every element of the
    // tensor stays accurate and deterministic however many blocks there are.
    double total = 0;
    for (const acc_t v : block_dalpha) {
      total += static_cast<double>(v);
    }
    dalpha.data_ptr<acc_t>()[0] = static_cast<acc_t>(total);
  }
  if (dgamma.defined()) {
    std::copy(sum_dyt.begin(), sum_dyt.end(), dgamma.data_ptr<acc_t>());
  }
  if (dbeta.defined()) {
    std::copy(sum_dy.begin(), sum_dy.end(), dbeta.data_ptr<acc_t>());
  }
}

} // namespace

void dyt_forward_cpu_kernel(const DytShape& shape, const at::Tensor& X, const at::Tensor& alpha,
                            const at::Tensor& gamma, const at::Tensor& beta, at::Tensor& Y) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, X.scalar_type(), "dyt_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_impl<scalar_t>(shape, X.const_data_ptr<scalar_t>(), Y.data_ptr<scalar_t>(),
                           alpha.const_data_ptr<acc_t>()[0], gamma, beta);
  });
}

void dyt_backward_cpu_kernel(const DytShape& shape, const at::Tensor& dY, const at::Tensor& X,
                             const at::Tensor& alpha, const at::Tensor& gamma, at::Tensor& dX,
                             at::Tensor& dalpha, at::Tensor& dgamma, at::Tensor& dbeta) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, X.scalar_type(), "dyt_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_impl<scalar_t>(shape, dY.const_data_ptr<scalar_t>(), X.const_data_ptr<scalar_t>(),
                            dX.defined() ? dX.data_ptr<scalar_t>() : nullptr,
                            alpha.const_data_ptr<acc_t>()[0], gamma, dalpha, dgamma, dbeta);
  });
}

} // namespace normext
