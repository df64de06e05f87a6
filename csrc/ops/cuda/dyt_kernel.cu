// DyT CUDA kernels: raw pointers and the launch plan of dyt_launch.h, no torch.
//
// Forward and dx are elementwise (grid-stride). The forward goes in 16-byte vectors where x and y
// are aligned: one element per thread left a single 2- or 4-byte load in flight per thread and
// found its channel with a 64-bit division per element. The parameter gradients and dalpha are
// reduced deterministically without atomics: fixed per-thread loops, a fixed in-block order,
// per-block partials, then per-channel and dalpha sums over the partials in block order
// (dyt_launch.h).
#include <cstdint>

#include "common/welford.h"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/dyt_kernel.h"
#include "ops/cuda/dyt_launch.h"

namespace normext {
namespace cuda {
namespace {

// tanh(u) and 1 - tanh(u)^2; NB: where tanh saturates, 1 - t*t cancels, so the derivative comes
// from e = exp(-2|u|) as 4e / (1 + e)^2 instead.
__device__ __forceinline__ float tanh_sech2(float u, float* sech2) {
  const float t = tanhf(u);
  const float a = fabsf(u);
  if (a < 0.625f) {
    *sech2 = 1.0f - t * t;
  } else {
    const float e = expf(-2.0f * a);
    const float d = 1.0f + e;
    *sech2 = 4.0f * e / (d * d);
  }
  return t;
}

__device__ __forceinline__ double tanh_sech2(double u, double* sech2) {
  const double t = tanh(u);
  const double a = fabs(u);
  if (a < 0.625) {
    *sech2 = 1.0 - t * t;
  } else {
    const double e = exp(-2.0 * a);
    const double d = 1.0 + e;
    *sech2 = 4.0 * e / (d * d);
  }
  return t;
}

// Sum of one value per thread of the block, in a fixed tree order; the result in thread 0.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int s = kDytBlockThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) {
      shared[threadIdx.x] += shared[threadIdx.x + s];
    }
    __syncthreads();
  }
  const acc_t total = shared[0];
  __syncthreads();
  return total;
}

// The forward one element at a time: x or y not 16-byte aligned.
template <typename T>
__global__ void __launch_bounds__(kDytBlockThreads)
    dyt_forward_kernel(const T* __restrict__ x, T* __restrict__ y, DytPlan p,
                       const acc_type<T>* __restrict__ alpha, const acc_type<T>* __restrict__ gamma,
                       const acc_type<T>* __restrict__ beta) {
  using acc_t = acc_type<T>;
  const acc_t a = alpha[0];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kDytBlockThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kDytBlockThreads + threadIdx.x; i < p.numel;
       i += stride) {
    const int64_t c = dyt_channel_of(p, i);
    const acc_t t = tanh(a * to_acc(x[i]));
    y[i] = from_acc<T>(t * param_or(gamma, c, acc_t(1)) + param_or(beta, c, acc_t(0)));
  }
}

// The forward in 16-byte vectors (x and y 16-byte aligned): each thread loads kDytVecsInFlight
// vectors before it computes any, and works out the channels once per vector (a vector within one
// row, or within one plane, has consecutive channels, or one channel; one that straddles a row or
// plane end, per element). The elements past the last whole vector go one per thread. The values
// are those of dyt_forward_kernel, element for element.
constexpr int kDytVecsInFlight = 2;

template <typename T>
__global__ void __launch_bounds__(kDytBlockThreads)
    dyt_forward_vec_kernel(const T* __restrict__ x, T* __restrict__ y, DytPlan p,
                           const acc_type<T>* __restrict__ alpha,
                           const acc_type<T>* __restrict__ gamma,
                           const acc_type<T>* __restrict__ beta) {
  using acc_t = acc_type<T>;
  constexpr int V = kVec<T>;
  const acc_t a = alpha[0];
  const int64_t nvec = p.numel / V;
  const int64_t threads = static_cast<int64_t>(gridDim.x) * kDytBlockThreads;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kDytBlockThreads + threadIdx.x;
  for (int64_t base = first; base < nvec; base += kDytVecsInFlight * threads) {
    Pack<T> in[kDytVecsInFlight];
#pragma unroll
    for (int u = 0; u < kDytVecsInFlight; ++u) {
      const int64_t v = base + u * threads;
      if (v < nvec) {
        in[u] = load_pack(x + v * V);
      }
    }
#pragma unroll
    for (int u = 0; u < kDytVecsInFlight; ++u) {
      const int64_t v = base + u * threads;
      if (v >= nvec) {
        continue;
      }
      const int64_t i = v * V;
      acc_t g[V], b[V];
      if (!p.planes) {
        const int64_t c0 = i % p.C;
        if (c0 + V <= p.C) {
          load_params(gamma, c0, aligned16_at(gamma, c0), acc_t(1), g);
          load_params(beta, c0, aligned16_at(beta, c0), acc_t(0), b);
        } else {
#pragma unroll
          for (int k = 0; k < V; ++k) {
            const int64_t c = (i + k) % p.C;
            g[k] = param_or(gamma, c, acc_t(1));
            b[k] = param_or(beta, c, acc_t(0));
          }
        }
      } else {
        const int64_t plane = i / p.inner;
        if (i - plane * p.inner + V <= p.inner) {
          const int64_t c = plane % p.C;
          const acc_t gc = param_or(gamma, c, acc_t(1)), bc = param_or(beta, c, acc_t(0));
#pragma unroll
          for (int k = 0; k < V; ++k) {
            g[k] = gc;
            b[k] = bc;
          }
        } else {
#pragma unroll
          for (int k = 0; k < V; ++k) {
            const int64_t c = ((i + k) / p.inner) % p.C;
            g[k] = param_or(gamma, c, acc_t(1));
            b[k] = param_or(beta, c, acc_t(0));
          }
        }
      }
      Pack<T> out;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const acc_t t = tanh(a * to_acc(in[u].v[k]));
        out.v[k] = from_acc<T>(t * g[k] + b[k]);
      }
      store_pack(y + i, out);
    }
  }
  const int64_t i = nvec * V + first;
  if (i < p.numel) {
    const int64_t c = dyt_channel_of(p, i);
    const acc_t t = tanh(a * to_acc(x[i]));
    y[i] = from_acc<T>(t * param_or(gamma, c, acc_t(1)) + param_or(beta, c, acc_t(0)));
  }
}

// One element of the backward: dx (if wanted) and the three running sums.
template <typename T>
struct GradStep {
  using acc_t = acc_type<T>;
  acc_t a;
  __device__ __forceinline__ void operator()(const T* dy, const T* x, T* dx, int64_t off, acc_t w,
                                             acc_t& s_dyt, acc_t& s_dy, acc_t& s_da) const {
    const acc_t g = to_acc(dy[off]);
    const acc_t xv = to_acc(x[off]);
    acc_t sech2;
    const acc_t t = tanh_sech2(a * xv, &sech2);
    s_dyt += g * t;
    s_dy += g;
    const acc_t gu = g * w * sech2;
    s_da += gu * xv;
    if (dx != nullptr) {
      dx[off] = from_acc<T>(gu * a);
    }
  }
};

template <typename T>
__global__ void __launch_bounds__(kDytBlockThreads)
    dyt_grad_rows_kernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx,
                         DytPlan p, const acc_type<T>* __restrict__ alpha,
                         const acc_type<T>* __restrict__ gamma, acc_type<T>* __restrict__ partials,
                         acc_type<T>* __restrict__ alpha_partials) {
  using acc_t = acc_type<T>;
  __shared__ acc_t shared[2][kDytRowLanes][kDytColsPerBlock];
  __shared__ acc_t reduce[kDytBlockThreads];
  const int lane = threadIdx.x % kDytColsPerBlock;
  const int row_lane = threadIdx.x / kDytColsPerBlock;
  const GradStep<T> step{alpha[0]};
  for (int64_t block = blockIdx.x; block < p.sum_tiles; block += gridDim.x) {
    const DytTile tile = dyt_rows_tile(p, block);
    const int64_t c = tile.col_begin + lane;
    acc_t s_dyt = 0, s_dy = 0, s_da = 0;
    if (c < tile.col_end) {
      const acc_t w = param_or(gamma, c, acc_t(1));
      for (int64_t r = tile.row_begin + row_lane; r < tile.row_end; r += kDytRowLanes) {
        step(dy, x, dx, r * p.C + c, w, s_dyt, s_dy, s_da);
      }
    }
    shared[0][row_lane][lane] = s_dyt;
    shared[1][row_lane][lane] = s_dy;
    __syncthreads();
    if (row_lane == 0 && c < tile.col_end) {
      acc_t a = 0, b = 0;
      for (int r = 0; r < kDytRowLanes; ++r) {
        a += shared[0][r][lane];
        b += shared[1][r][lane];
      }
      const int64_t row_block = block / p.col_blocks;
      partials[row_block * p.C + c] = a;
      partials[p.sum_partials + row_block * p.C + c] = b;
    }
    // NB: block_sum's barriers also keep `shared` intact until every thread has read it.
    const acc_t da = block_sum(s_da, reduce);
    if (threadIdx.x == 0) {
      alpha_partials[block] = da;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kDytBlockThreads)
    dyt_grad_planes_kernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx,
                           DytPlan p, const acc_type<T>* __restrict__ alpha,
                           const acc_type<T>* __restrict__ gamma,
                           acc_type<T>* __restrict__ partials,
                           acc_type<T>* __restrict__ alpha_partials) {
  using acc_t = acc_type<T>;
  __shared__ acc_t reduce[kDytBlockThreads];
  for (int64_t block = blockIdx.x; block < p.sum_tiles; block += gridDim.x) {
    const DytSpan span = dyt_plane_span(p, block);
    const acc_t w = param_or(gamma, span.plane % p.C, acc_t(1));
    const GradStep<T> step{alpha[0]};
    acc_t s_dyt = 0, s_dy = 0, s_da = 0;
    for (int64_t i = span.begin + threadIdx.x; i < span.end; i += kDytBlockThreads) {
      step(dy, x, dx, span.plane * p.inner + i, w, s_dyt, s_dy, s_da);
    }
    const acc_t a = block_sum(s_dyt, reduce);
    const acc_t b = block_sum(s_dy, reduce);
    const acc_t da = block_sum(s_da, reduce);
    if (threadIdx.x == 0) {
      partials[block] = a;
      partials[p.sum_partials + block] = b;
      alpha_partials[block] = da;
    }
  }
}

// dgamma[c] / dbeta[c]: the channel's partials in block order, summed in double.
template <typename acc_t>
__global__ void __launch_bounds__(kDytBlockThreads)
    dyt_channel_totals_kernel(DytPlan p, const acc_t* __restrict__ partials,
                              acc_t* __restrict__ dgamma, acc_t* __restrict__ dbeta) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kDytBlockThreads + threadIdx.x;
  if (c >= p.C) {
    return;
  }
  double a = 0, b = 0;
  if (!p.planes) {
    for (int64_t rb = 0; rb < p.row_blocks; ++rb) {
      a += static_cast<double>(partials[rb * p.C + c]);
      b += static_cast<double>(partials[p.sum_partials + rb * p.C + c]);
    }
  } else {
    for (int64_t n = 0; n < p.rows; ++n) {
      for (int64_t j = 0; j < p.chunks; ++j) {
        const int64_t block = (n * p.C + c) * p.chunks + j;
        a += static_cast<double>(partials[block]);
        b += static_cast<double>(partials[p.sum_partials + block]);
      }
    }
  }
  if (dgamma != nullptr) {
    dgamma[c] = static_cast<acc_t>(a);
  }
  if (dbeta != nullptr) {
    dbeta[c] = static_cast<acc_t>(b);
  }
}

// dalpha: every block's partial, one block, fixed order.
template <typename acc_t>
__global__ void __launch_bounds__(kDytBlockThreads)
    dyt_alpha_total_kernel(int64_t count, const acc_t* __restrict__ alpha_partials,
                           acc_t* __restrict__ dalpha) {
  __shared__ double reduce[kDytBlockThreads];
  double v = 0;
  for (int64_t i = threadIdx.x; i < count; i += kDytBlockThreads) {
    v += static_cast<double>(alpha_partials[i]);
  }
  const double total = block_sum(v, reduce);
  if (threadIdx.x == 0) {
    dalpha[0] = static_cast<acc_t>(total);
  }
}

template <typename T>
cudaError_t forward_for(const DytPlan& plan, const DytForwardArgs& args, cudaStream_t stream) {
  using acc_t = acc_type<T>;
  const auto* x = static_cast<const T*>(args.x);
  auto* y = static_cast<T*>(args.y);
  const auto* alpha = static_cast<const acc_t*>(args.alpha);
  const auto* gamma = static_cast<const acc_t*>(args.gamma);
  const auto* beta = static_cast<const acc_t*>(args.beta);
  if ((reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(y)) % 16 != 0) {
    dyt_forward_kernel<T><<<grid_of(plan.elem_grid), kDytBlockThreads, 0, stream>>>(
        x, y, plan, alpha, gamma, beta);
    return cudaGetLastError();
  }
  // NB: kDytVecsInFlight vectors per thread (the grid strides over any more); at least one block,
  // which also takes the elements past the last whole vector.
  const int64_t per_block = static_cast<int64_t>(kDytVecsInFlight) * kDytBlockThreads * kVec<T>;
  const int64_t blocks = dyt_ceil_div(plan.numel, per_block);
  const int64_t grid = blocks < 1 ? 1 : (blocks > plan.elem_grid ? plan.elem_grid : blocks);
  dyt_forward_vec_kernel<T><<<grid_of(grid), kDytBlockThreads, 0, stream>>>(x, y, plan, alpha,
                                                                            gamma, beta);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_for(const DytPlan& plan, const DytBackwardArgs& args, cudaStream_t stream) {
  using acc_t = acc_type<T>;
  const auto* dy = static_cast<const T*>(args.dy);
  const auto* x = static_cast<const T*>(args.x);
  auto* dx = static_cast<T*>(args.dx);
  const auto* alpha = static_cast<const acc_t*>(args.alpha);
  const auto* gamma = static_cast<const acc_t*>(args.gamma);
  auto* partials = static_cast<acc_t*>(args.sum_partials);
  auto* alpha_partials = static_cast<acc_t*>(args.alpha_partials);
  if (!plan.planes) {
    dyt_grad_rows_kernel<T><<<grid_of(plan.sum_grid), kDytBlockThreads, 0, stream>>>(
        dy, x, dx, plan, alpha, gamma, partials, alpha_partials);
  } else {
    dyt_grad_planes_kernel<T><<<grid_of(plan.sum_grid), kDytBlockThreads, 0, stream>>>(
        dy, x, dx, plan, alpha, gamma, partials, alpha_partials);
  }
  NORMEXT_RETURN_IF_LAUNCH_FAILED();
  if (args.dgamma != nullptr || args.dbeta != nullptr) {
    dyt_channel_totals_kernel<acc_t>
        <<<grid_of(dyt_ceil_div(plan.C, kDytBlockThreads)), kDytBlockThreads, 0, stream>>>(
            plan, partials, static_cast<acc_t*>(args.dgamma), static_cast<acc_t*>(args.dbeta));
    NORMEXT_RETURN_IF_LAUNCH_FAILED();
  }
  if (args.dalpha != nullptr) {
    dyt_alpha_total_kernel<acc_t><<<1, kDytBlockThreads, 0, stream>>>(
        plan.sum_tiles, alpha_partials, static_cast<acc_t*>(args.dalpha));
    NORMEXT_RETURN_IF_LAUNCH_FAILED();
  }
  return cudaSuccess;
}

} // namespace

cudaError_t launch_dyt_forward(const DytPlan& plan, DytScalarKind kind, const DytForwardArgs& args,
                               cudaStream_t stream) {
  return dispatch_scalar(kind, [&](auto tag) {
    return forward_for<typename decltype(tag)::type>(plan, args, stream);
  });
}

cudaError_t launch_dyt_backward(const DytPlan& plan, DytScalarKind kind,
                                const DytBackwardArgs& args, cudaStream_t stream) {
  return dispatch_scalar(kind, [&](auto tag) {
    return backward_for<typename decltype(tag)::type>(plan, args, stream);
  });
}

} // namespace cuda
} // namespace normext
