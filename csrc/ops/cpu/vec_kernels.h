// Vectorized leaf loops of the CPU kernels, compiled once per instruction set (vec_kernels_*.cpp)
// and picked at load time by the CPU's features, as ATen's DispatchStub does.
//
// NB: no torch headers here or in the per-ISA files: those files are compiled with
// `#pragma GCC target(...)`, and an inline torch function instantiated there could be emitted with
// AVX-512 instructions and then chosen by the linker for the whole library.
#pragma once

#include <cstdint>

#include "common/welford.h"

namespace normext {
namespace cpu {

// Bit layouts of c10::BFloat16 and c10::Half; the glue reinterprets tensor pointers as these.
struct bf16_t {
  uint16_t bits;
};
struct fp16_t {
  uint16_t bits;
};

// Statistics accumulate in normext::acc_type<T> (common/welford.h): float, double for double.

// Channels-last loops keep per-channel arrays (coefficients, accumulators) padded to a multiple
// of 16 so whole vectors can be loaded from them: callers allocate padded_channels(C) entries.
constexpr int64_t padded_channels(int64_t C) {
  return (C + 15) / 16 * 16;
}

// Largest n chunk_stats accepts: 16 KB of fp32, so a chunk's passes run from L1.
constexpr int64_t kMaxChunkElems = 4096;
// Values per piece of grad_sums_planes for bf16 / fp16 input: summed in fp32 lanes, then added in
// double (a sum of dy * (x - mean) need not be centered, e.g. with running statistics, and long
// fp32 lane sums lose ulps): 8 terms per lane with AVX-512.
constexpr int64_t kGradSumPiece = 256;
// Most rows one row_grad_input call takes.
constexpr int64_t kMaxGradRows = 4;

// Leaf loops for one storage type T. Every reduction runs in a fixed order (fixed vector lanes,
// fixed tail handling), so results depend only on the data, never on threads.
// "_cl" variants work on channels-last rows: `rows` rows of C contiguous channels.
template <typename T>
struct VecKernels {
  using acc_t = acc_type<T>;
  // Mean and M2 of n <= kMaxChunkElems contiguous values (fp32 / fp64: two passes over data in
  // L1; bf16 / fp16: one, from a shift). NB: the mean in double: the first pass's acc_t mean (the
  // shift) plus the correction, unrounded, since a
  // mean rounded to fp32 (an ulp of 0.06 at 1e6) puts its error squared into every Chan merge of
  // the chunks (M2 off by 1e-4 at 1e6 + randn over 64 chunks).
  void (*chunk_stats)(const T* x, int64_t n, double* mean, acc_t* m2);
  // Per-group mean and M2 (G = C / D groups of D adjacent channels) of a rows x C block;
  // scratch holds 3 * padded_channels(C) accumulators.
  void (*chunk_stats_cl)(const T* x, int64_t rows, int64_t C, int64_t D, acc_t* scratch,
                         double* mean_g, acc_t* m2_g);
  // y[r, c] = (x[r, c] - mean_c[c]) * scale_c[c] + bias_c[c]. Per-channel arrays are padded.
  void (*normalize_cl)(const T* x, T* y, int64_t rows, int64_t C, const acc_t* mean_c,
                       const acc_t* scale_c, const acc_t* bias_c);
  // ds = sum dy * (x - mean), db = sum dy over n contiguous values.
  void (*grad_sums)(const T* dy, const T* x, int64_t n, acc_t mean, acc_t* ds, acc_t* db);
  // dx = a * dy + b * ((x - mean) * rstd) + c over n contiguous values.
  void (*grad_input)(const T* dy, const T* x, T* dx, int64_t n, acc_t a, acc_t mean, acc_t rstd,
                     acc_t b, acc_t c);
  // Per-channel ds_c / db_c (overwritten, padded) of a rows x C block.
  void (*grad_sums_cl)(const T* dy, const T* x, int64_t rows, int64_t C, const acc_t* mean_c,
                       acc_t* ds_c, acc_t* db_c);
  // dx[r, c] = a_c * dy + b_c * ((x - mean_c) * rstd_c) + c_c, per channel coefficients.
  void (*grad_input_cl)(const T* dy, const T* x, T* dx, int64_t rows, int64_t C, const acc_t* a_c,
                        const acc_t* mean_c, const acc_t* rstd_c, const acc_t* b_c,
                        const acc_t* c_c);

  // ---- BatchNorm NCHW chunks (ops/cpu/batch_norm_kernel.cpp): `planes` runs of `len` contiguous
  // values, `stride` elements apart (one channel in consecutive samples), as one chunk, so small
  // planes (7x7, 14x14) cost one call, one set of lane reductions and one merge per chunk rather
  // than per plane.
  // Mean and M2 of the runs (planes * len <= kMaxChunkElems).
  void (*planes_stats)(const T* x, int64_t planes, int64_t len, int64_t stride, double* mean,
                       acc_t* m2);
  // normalize over the runs.
  void (*normalize_planes)(const T* x, T* y, int64_t planes, int64_t len, int64_t stride,
                           acc_t mean, acc_t scale, acc_t bias);
  // ds = sum dy * (x - mean), db = sum dy over the runs, added in double (fp32: every four
  // vectors; bf16 / fp16: every kGradSumPiece values).
  void (*grad_sums_planes)(const T* dy, const T* x, int64_t planes, int64_t len, int64_t stride,
                           acc_t mean, double* ds, double* db);
  // grad_input over the runs.
  void (*grad_input_planes)(const T* dy, const T* x, T* dx, int64_t planes, int64_t len,
                            int64_t stride, acc_t a, acc_t mean, acc_t rstd, acc_t b, acc_t c);

  // ---- Row norms (LayerNorm, RMSNorm; ops/cpu/layer_norm_kernel.cpp) ----
  // gamma / beta: per-element parameters of the row in acc_t, or nullptr (1 / 0).
  // Sum of squares of n contiguous values (RMSNorm statistics).
  acc_t (*sum_squares)(const T* x, int64_t n);
  // y = (x - mean) * rstd * gamma[i] + beta[i] over n values.
  void (*normalize_row)(const T* x, T* y, int64_t n, acc_t mean, acc_t rstd, const acc_t* gamma,
                        const acc_t* beta);
  // ds = sum g * dy * (x - mean), db = sum g * dy, g = gamma[i], over n values (gamma not null:
  // a norm without weight passes a row of ones).
  void (*row_grad_sums)(const T* dy, const T* x, const acc_t* gamma, int64_t n, acc_t mean,
                        acc_t* ds, acc_t* db);
  // For `rows` <= kMaxGradRows rows r of n values, `stride` apart: xhat = (x - mean[r]) * rstd[r];
  // dx = rstd[r] * g * dy + b[r] * xhat + c[r] (skipped when dx is null); dgamma_acc[i] +=
  // sum_r dy * xhat and dbeta_acc[i] += sum_r dy, rows added in order (both given, or both null
  // and skipped). gamma is not null. NB: several rows per call load and store the accumulators
  // once per vector for all of them.
  void (*row_grad_input)(const T* dy, const T* x, const acc_t* gamma, T* dx, int64_t rows,
                         int64_t stride, int64_t n, const acc_t* mean, const acc_t* rstd,
                         const acc_t* b, const acc_t* c, acc_t* dgamma_acc, acc_t* dbeta_acc);

  // ---- DyT (dyt_kernel.cpp): y = w * tanh(alpha * x) + b -----------------------------------
  // Over n contiguous values with one weight and bias.
  void (*dyt_forward)(const T* x, T* y, int64_t n, acc_t alpha, acc_t w, acc_t b);
  // Over a rows x width block of rows `ld` apart, per-column (padded) weights and biases.
  void (*dyt_forward_cl)(const T* x, T* y, int64_t rows, int64_t width, int64_t ld, acc_t alpha,
                         const acc_t* w_c, const acc_t* b_c);
  // dx = dy * w * alpha * (1 - t^2) (skipped when dx is null), t = tanh(alpha * x);
  // sum_dyt = sum dy * t, sum_dy = sum dy, dalpha = sum dy * w * x * (1 - t^2).
  void (*dyt_backward)(const T* dy, const T* x, T* dx, int64_t n, acc_t alpha, acc_t w,
                       acc_t* sum_dyt, acc_t* sum_dy, acc_t* dalpha);
  // The same over a rows x width block; per-column sums (overwritten, padded) and one dalpha.
  void (*dyt_backward_cl)(const T* dy, const T* x, T* dx, int64_t rows, int64_t width,
                          int64_t ld, acc_t alpha, const acc_t* w_c, acc_t* sum_dyt_c,
                          acc_t* sum_dy_c, acc_t* dalpha);

  // ---- fused GroupNorm activations (index = activation - 1: silu, gelu, gelu_tanh, relu) ----
  // y = act((x - mean) * rstd * gamma[r] + beta[r]) over `rows` consecutive runs r of n values
  // (gamma / beta null: 1 / 0), index = activation (0 none, then silu, gelu, gelu_tanh, relu),
  // fetching meanwhile as many values from `prefetch` on (null: none).
  void (*normalize_rows[5])(const T* x, T* y, int64_t rows, int64_t n, acc_t mean, acc_t rstd,
                            const acc_t* gamma, const acc_t* beta, const T* prefetch);
  // y = act((x - mean_c) * scale_c + bias_c), as normalize_cl.
  void (*normalize_act_cl[4])(const T* x, T* y, int64_t rows, int64_t C, const acc_t* mean_c,
                              const acc_t* scale_c, const acc_t* bias_c);
  // As grad_sums / grad_input with dy replaced by g = dy * act'(z), z = (x - mean) * scale + bias
  // recomputed from x (in grad_input_act, scale is a: z = (x - mean) * a + bias). The sums also
  // store g into g_out (acc_t) unless it is null, for grad_input_from_g.
  void (*grad_sums_act[4])(const T* dy, const T* x, int64_t n, acc_t mean, acc_t scale,
                           acc_t bias, acc_t* ds, acc_t* db, acc_t* g_out);
  void (*grad_input_act[4])(const T* dy, const T* x, T* dx, int64_t n, acc_t a, acc_t mean,
                            acc_t rstd, acc_t b, acc_t c, acc_t bias);
  void (*grad_sums_act_cl[4])(const T* dy, const T* x, int64_t rows, int64_t C,
                              const acc_t* mean_c, const acc_t* scale_c, const acc_t* bias_c,
                              acc_t* ds_c, acc_t* db_c, acc_t* g_out);
  void (*grad_input_act_cl[4])(const T* dy, const T* x, T* dx, int64_t rows, int64_t C,
                               const acc_t* a_c, const acc_t* mean_c, const acc_t* rstd_c,
                               const acc_t* b_c, const acc_t* c_c, const acc_t* bias_c);
  // s = x + r over n contiguous values, rounded to T as torch's x + r is (the residual add of
  // add_group_norm, add_layer_norm and add_rms_norm).
  void (*add_values)(const T* x, const T* r, T* s, int64_t n);
  // grad_input with g (the gradient at the GroupNorm output) from an acc_t buffer.
  void (*grad_input_from_g)(const acc_t* g, const T* x, T* dx, int64_t n, acc_t a, acc_t mean,
                            acc_t rstd, acc_t b, acc_t c);
};

struct VecKernelTable {
  const char* isa;
  // [0]: plain stores; [1]: the leaves that write an output (y, dx) use streaming stores, which
  // skip the read of each written line but bypass the cache (for outputs larger than the cache).
  VecKernels<float> f32[2];
  VecKernels<double> f64[2];
  VecKernels<bf16_t> bf16[2];
  VecKernels<fp16_t> f16[2];
};

namespace avx512_bf16 {
const VecKernelTable& vec_kernel_table();
}
namespace avx512 {
const VecKernelTable& vec_kernel_table();
}
namespace avx2 {
const VecKernelTable& vec_kernel_table();
}
namespace scalar {
const VecKernelTable& vec_kernel_table();
}

// The table for this CPU: avx512_bf16 (AVX-512 with native bf16 conversion), else avx512
// (F+BW+VL+DQ), else avx2 (+FMA+F16C), else portable code.
// NORMEXT_CPU_CAPABILITY=avx512_bf16|avx512|avx2|default caps the choice (tests use it to cover every table).
const VecKernelTable& vec_kernels();

// Whether an op whose loops touch `bytes` of tensors (inputs and outputs) should write its output
// with streaming stores: when they exceed what stays in cache between calls. The default, 16 MiB
// (4x the L2 of the 2-core benchmark machine), is measured there: GroupNorm forward 1.4x faster
// at 2 x 64 MiB and at 2 x 10 MiB (0.87x -> 1.6x torch at 2x320x64x64 fp32; LayerNorm
// 8x512x768 fp32 forward+backward 0.85x -> 1.44x), slower at 2 x 2.5 MiB (0.89x -> 0.62x), even
// at 2 x 5 and 2 x 7.5 MiB; the whole suite 2% faster than with 48 MiB.
// NORMEXT_STREAM_MIN_BYTES overrides it (0: always, -1: never).
bool stream_output(int64_t bytes);

template <typename T>
const VecKernels<T>& vec_kernels_for(bool stream = false);
template <>
inline const VecKernels<float>& vec_kernels_for<float>(bool stream) {
  return vec_kernels().f32[stream];
}
template <>
inline const VecKernels<double>& vec_kernels_for<double>(bool stream) {
  return vec_kernels().f64[stream];
}
template <>
inline const VecKernels<bf16_t>& vec_kernels_for<bf16_t>(bool stream) {
  return vec_kernels().bf16[stream];
}
template <>
inline const VecKernels<fp16_t>& vec_kernels_for<fp16_t>(bool stream) {
  return vec_kernels().f16[stream];
}

} // namespace cpu
} // namespace normext
