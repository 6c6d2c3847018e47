// Driver of the quantized matmul: quantizes the activations to q8_0 (exactly as
// sllm.quant.quantize_q8_0_activations), then runs the tier's dot products over
// (output row, activation row) pairs on the kernel threads. Also the streaming-read
// bandwidth probe that `sllm bench` compares the quantized GEMV against.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "arch.h"
#include "kernels.h"
#include "quant.h"
#include "runtime.h"

namespace sllm {
namespace {

bool vnni_cpu() {
#if SLLM_X86
  return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

// Follows the float kernels' tier (SLLM_CPP_SIMD included): avx512 -> VNNI when the CPU
// has it, else the AVX2 body; scalar stays scalar.
const QuantOps* pick() {
#if SLLM_X86
  const std::string tier = ops().name;
  if (tier == "avx512" && vnni_cpu()) return &qops_avx512vnni;
  if (tier != "scalar" && __builtin_cpu_supports("f16c")) return &qops_avx2;
#endif
  return &qops_scalar;
}

Scratch g_scratch;
constexpr int64_t kGemmRows = 16;  // from this many input rows on, ggml's rows take the float GEMM
                                   // (SIMD tiers: 1.0-2.3x faster than the dots at 16-64 rows)

inline float load_half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return half_to_float(h);
}

// One block of ggml bytes as floats: its first n <= 32 values. One branch-free loop per
// type, which the compiler can vectorize (not a choice of type per value); a partial
// block goes through a local buffer.
void dequantize_block(const uint8_t* w, int qtype, int64_t n, float* out) {
  float part[QK];
  float* y = n == QK ? out : part;
  const float d = load_half(w);
  if (qtype == Q8_0) {
    const int8_t* q = reinterpret_cast<const int8_t*>(w + 2);
    for (int j = 0; j < QK; ++j) y[j] = (float)q[j] * d;
  } else if (qtype == Q4_0) {
    const uint8_t* q = w + 2;
    for (int j = 0; j < QK / 2; ++j) {
      y[j] = (float)((q[j] & 0x0F) - 8) * d;
      y[j + QK / 2] = (float)((q[j] >> 4) - 8) * d;
    }
  } else {
    const uint8_t* q = w + 4;
    const float m = load_half(w + 2);
    for (int j = 0; j < QK / 2; ++j) {
      y[j] = (float)(q[j] & 0x0F) * d + m;
      y[j + QK / 2] = (float)(q[j] >> 4) * d + m;
    }
  }
  if (y == part) std::memcpy(out, part, (size_t)n * sizeof(float));
}

// One quantized weight row as floats (its first K values).
void dequantize_row(const uint8_t* w, int qtype, int64_t K, float* out) {
  for (int64_t b = 0; b * QK < K; ++b, w += kBlockBytes[qtype])
    dequantize_block(w, qtype, std::min(QK, K - b * QK), out + b * QK);
}

// Many input rows (prefill, evaluation) on ggml's rows: the same products as the integer
// path, but through the float GEMM: weights dequantized once per call, activations
// quantized to q8_0 and dequantized (q_x * d_x), so only the float summation order
// differs. (Packed weights take the integer kernels at every N: 3-15x faster.)
void matmul_q_gemm(float* out, const uint8_t* wq, const float* bias, int qtype, int64_t N,
                   int64_t K, int64_t OC, const int8_t* q, const float* d) {
  // weights in slices of kSlice rows, so the float copy stays small (it is kept for reuse)
  constexpr int64_t kSlice = 256;
  static Scratch floats;
  auto lock = floats.lock();
  const int64_t rows = std::min(OC, kSlice);
  float* w = floats.get((size_t)(rows * K + N * K));
  float* x = w + rows * K;
  const int64_t nb = (K + QK - 1) / QK, row_bytes = nb * kBlockBytes[qtype];
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) x[n * K + k] = (float)q[n * nb * QK + k] * d[n * nb + k / QK];
  for (int64_t o0 = 0; o0 < OC; o0 += kSlice) {
    const int64_t o1 = std::min(OC, o0 + kSlice);
    parallel_for(o1 - o0, [&](int64_t i, int) {
      dequantize_row(wq + (o0 + i) * row_bytes, qtype, K, w + i * K);
    });
    gemm(N, o1 - o0, K, x, K, false, w, K, true, out + o0, OC, false, bias ? bias + o0 : nullptr);
  }
}

// As the f32 GEMV (gemm.cpp's gemm_small_m): small products stay on one thread, so a
// decode step's per-layer GEMVs never wait for a second thread that another process keeps
// off its core (2 threads were 0.55x of 1 under load). ggml's rows split from 256K
// multiply-adds; the packed kernels, 3-4x faster, from 4M (measured alternating 1 and 2
// threads in one process, load 1.4: 2 threads 20-35% slower at 2M, 13-20% faster at 8M).
int gemv_threads(int64_t N, int64_t K, int64_t OC, bool packed) {
  return (N * OC * K < (packed ? (1 << 22) : (1 << 18))) ? 1 : num_threads();
}

// Few input rows on ggml's rows: one dot product per (output row, input row); chunks of
// output rows, each chunk's weights staying in cache while every input row passes.
void gemv_rows(float* out, const uint8_t* wq, const float* bias, int qtype, int64_t N,
               int64_t nb, int64_t OC, const QRow* xs) {
  const QDot dot = qops().dot[qtype];
  const int64_t row_bytes = nb * kBlockBytes[qtype];
  const int threads = gemv_threads(N, nb * QK, OC, false);
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(16, OC / (4 * threads)));
  parallel_for((OC + chunk - 1) / chunk, [&](int64_t c, int) {
    const int64_t o0 = c * chunk, o1 = std::min(OC, o0 + chunk);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = o0; o < o1; ++o)
        out[n * OC + o] = dot(wq + o * row_bytes, xs[n], nb) + (bias ? bias[o] : 0.0f);
  }, threads);
}

// Input rows on packed weights: the tier's group kernel, R output rows by a panel of up to
// group_rows input rows per call, which writes the output rows (bias added) in place;
// tasks of whole groups, every panel passing while a group's weights are in cache. The
// panels are made once per call (N * K bytes moved, against N * K * OC multiply-adds) in
// codes (N * nb * 32), f (2 * N * nb floats) and nsum (N * nb).
void gemm_packed(float* out, const uint8_t* wq, const float* bias, int qtype, int64_t N,
                 int64_t nb, int64_t OC, const QRow* xs, int8_t* codes, float* f, int32_t* nsum) {
  const QuantOps& t = qops();
  const int R = t.rows, P = t.group_rows;
  const QGroup group = t.group[qtype];
  const int32_t offset = qtype == Q4_0 ? 8 : (qtype == Q8_0 && t.offset ? 128 : 0);
  const int64_t panels = (N + P - 1) / P;
  auto panel_rows = [&](int64_t p) { return (int)std::min<int64_t>(P, N - p * P); };
  QPanel few[4];  // (a decode step's rows; a prefill's take the vector)
  std::vector<QPanel> many(panels > 4 ? panels : 0);
  QPanel* x = panels > 4 ? many.data() : few;
  for (int64_t p = 0, n0 = 0; p < panels; ++p, n0 += P)
    x[p] = t.panel(xs + n0, panel_rows(p), nb, offset, codes + n0 * nb * QK, f + n0 * nb,
                   f + (N + n0) * nb, nsum + n0 * nb);
  const int64_t groups = (OC + R - 1) / R, gbytes = qgroup_bytes(qtype, nb, R);
  const int threads = gemv_threads(N, nb * QK, OC, true);
  // one activation row: runs of 4 (or 2) whole groups to the tier's multi-group kernels,
  // where it has them; on one thread, one task (the tasks only balance threads)
  const QGroupRow quad = N == 1 ? t.quad[qtype] : nullptr, pair = N == 1 ? t.pair[qtype] : nullptr;
  const int64_t per_task = threads == 1 ? groups
                           : std::max<int64_t>(1, std::min<int64_t>(4, groups / (4 * threads)));
  parallel_for((groups + per_task - 1) / per_task, [&](int64_t task, int) {
    float y[kGroupRows * 16], padded[16];
    const int64_t g1 = std::min(groups, (task + 1) * per_task);
    for (int64_t g = task * per_task; g < g1; ++g) {
      const int64_t o0 = g * R, n_out = std::min<int64_t>(R, OC - o0);
      const float* b = bias ? bias + o0 : nullptr;
      if (n_out < R && bias) {  // the last group's bias, padded to R
        std::fill(padded, padded + R, 0.0f);
        std::copy(bias + o0, bias + o0 + n_out, padded);
        b = padded;
      }
      if (quad && g + 4 <= g1 && o0 + 4 * R <= OC) {
        quad(out + o0, wq + g * gbytes, gbytes, x[0], nb, b);
        g += 3;
        continue;
      }
      if (pair && g + 2 <= g1 && o0 + 2 * R <= OC) {
        pair(out + o0, wq + g * gbytes, gbytes, x[0], nb, b);
        ++g;
        continue;
      }
      for (int64_t p = 0, n0 = 0; p < panels; ++p, n0 += P) {
        const int rows = panel_rows(p);
        if (n_out == R) {
          group(out + n0 * OC + o0, OC, wq + g * gbytes, x[p], rows, nb, b);
          continue;
        }
        group(y, R, wq + g * gbytes, x[p], rows, nb, b);  // the last group: its rows, copied
        for (int m = 0; m < rows; ++m)
          std::copy(y + m * R, y + m * R + n_out, out + (n0 + m) * OC + o0);
      }
    }
  }, threads);
}

}  // namespace

// Chosen on first use: ops() lives in another translation unit, whose statics may not be
// initialised yet while this one's are.
const QuantOps& qops() {
  static const QuantOps* const chosen = pick();
  return *chosen;
}

void matmul_q_fwd(float* out, const float* inp, const uint8_t* wq, const float* bias,
                  int qtype, int64_t N, int64_t K, int64_t OC, bool packed) {
  const int64_t nb = (K + QK - 1) / QK;
  // scratch: N rows of nb*32 int8 codes, then N*nb scales, float block sums and integer
  // block sums, then N QRows; packed weights also take the panels: N*nb*32 codes, then
  // 2*N*nb floats and N*nb corrections (64-byte aligned, as the codes' blocks)
  const int64_t code_floats = (N * nb * QK + 3) / 4;
  const int64_t row_floats = (N * (int64_t)sizeof(QRow) + 3) / 4;
  const int64_t panel_floats = packed ? code_floats + 3 * N * nb + 16 : 0;
  auto lock = g_scratch.lock();
  float* scratch = g_scratch.get((size_t)(code_floats + 3 * N * nb + row_floats + 16 + panel_floats));
  int8_t* q = reinterpret_cast<int8_t*>(scratch);
  float* d = scratch + code_floats;
  float* s = d + N * nb;
  int32_t* sums = reinterpret_cast<int32_t*>(s + N * nb);
  // QRow holds pointers: align its slot to 8 bytes (scratch is float-aligned)
  const uintptr_t at = reinterpret_cast<uintptr_t>(sums + N * nb);
  QRow* xs = reinterpret_cast<QRow*>((at + 7) & ~uintptr_t(7));
  for (int64_t n = 0; n < N; ++n) {
    const int64_t o = n * nb;
    qops().quantize(inp + n * K, K, q + o * QK, d + o, s + o, sums + o);
    xs[n] = QRow{q + o * QK, d + o, s + o, sums + o};
  }
  if (packed) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(xs + N);
    int8_t* codes = reinterpret_cast<int8_t*>((p + 63) & ~uintptr_t(63));
    float* f = reinterpret_cast<float*>(codes + N * nb * QK);
    return gemm_packed(out, wq, bias, qtype, N, nb, OC, xs, codes, f,
                       reinterpret_cast<int32_t*>(f + 2 * N * nb));
  }
  // the float GEMM's win needs its SIMD tier: scalar GEMM took 1.6-1.75x the dot products'
  // time at 16-64 rows (interleaved in one process, one medium-model layer)
  const bool gemm_wins = std::strcmp(ops().name, "scalar") != 0;
  if (N >= kGemmRows && gemm_wins) return matmul_q_gemm(out, wq, bias, qtype, N, K, OC, q, d);
  gemv_rows(out, wq, bias, qtype, N, nb, OC, xs);
}

void embed_q_fwd(float* out, const int32_t* tokens, int64_t n, const uint8_t* wq, int qtype,
                 int64_t C, bool packed) {
  const int64_t nb = (C + QK - 1) / QK, B = kBlockBytes[qtype], row_bytes = nb * B;
  std::vector<uint8_t> row(packed ? row_bytes : 0);  // a packed row, read back
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* src = wq + tokens[i] * row_bytes;
    if (packed) {
      for (int64_t b = 0; b < nb; ++b) unpack_block(row.data() + b * B, wq, qtype, nb, tokens[i], b);
      src = row.data();
    }
    dequantize_row(src, qtype, C, out + i * C);
  }
}

void encoder_q_fwd(float* out, const int32_t* tokens, int64_t n, int64_t T, const uint8_t* wq,
                   int qtype, const float* wpe, int64_t pos, int64_t C, bool packed) {
  embed_q_fwd(out, tokens, n, wq, qtype, C, packed);
  for (int64_t i = 0; i < n; ++i) {  // two passes: the float32 sums of the composed path
    const float* p = wpe + (pos + i % T) * C;
    float* o = out + i * C;
    for (int64_t c = 0; c < C; ++c) o[c] += p[c];
  }
}

// The backward to the input, dinp = dout @ W: W's columns [k0, k1) dequantized for all OC
// rows into a bounded float slice (kDequantChunkFloats, whole blocks), then the float
// GEMM (N x slice width, depth OC) writes dinp's columns. The dequantization is O(OC*K)
// against the GEMM's O(N*OC*K), so the tiered GEMM carries the speed; each element of
// dinp is one GEMM sum over OC, as matmul_fwd on the dequantized matrix.
void matmul_q_bwd(float* dinp, const float* dout, const uint8_t* wq, int qtype, int64_t N,
                  int64_t K, int64_t OC, bool packed) {
  const int64_t nb = (K + QK - 1) / QK, B = kBlockBytes[qtype];
  const int64_t cols = std::min(std::max<int64_t>(1, kDequantChunkFloats / (OC * QK)), nb) * QK;
  static Scratch floats;
  auto lock = floats.lock();
  float* w = floats.get((size_t)(OC * cols));
  constexpr int64_t kRowsPerTask = 16;
  for (int64_t k0 = 0; k0 < K; k0 += cols) {
    const int64_t k1 = std::min(K, k0 + cols), width = k1 - k0, b0 = k0 / QK;
    const int64_t b1 = (k1 + QK - 1) / QK;
    parallel_grains(OC, kRowsPerTask, OC * width >= kParallelFloats, [&](int64_t o0, int64_t o1) {
      uint8_t block[34];
      for (int64_t o = o0; o < o1; ++o)
        for (int64_t b = b0; b < b1; ++b) {
          const uint8_t* src = wq + (o * nb + b) * B;
          if (packed) src = unpack_block(block, wq, qtype, nb, o, b);
          dequantize_block(src, qtype, std::min(QK, K - b * QK), w + o * width + (b - b0) * QK);
        }
    });
    gemm(N, width, OC, dout, OC, false, w, width, false, dinp + k0, K, false, nullptr);
  }
}

double stream_read_gbps(double seconds, int64_t bytes) {
  const int threads = num_threads();
  const int64_t n = std::max<int64_t>(bytes / 8, 1 << 12);
  std::vector<uint64_t> buf((size_t)n);
  for (int64_t i = 0; i < n; ++i) buf[i] = (uint64_t)i;  // touch every page
  volatile uint64_t sink = 0;
  double best = 0, elapsed = 0;
  int passes = 0;
  while (elapsed < seconds || passes < 3) {
    auto start = std::chrono::steady_clock::now();
    parallel_for(threads, [&](int64_t part, int) {
      int64_t b, e;
      split_range(n, threads, (int)part, 8, &b, &e);
      uint64_t acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
      for (int64_t i = b; i + 4 <= e; i += 4) {  // 4 independent streams of 8-byte loads
        acc0 ^= buf[i]; acc1 ^= buf[i + 1]; acc2 ^= buf[i + 2]; acc3 ^= buf[i + 3];
      }
      sink = sink + (acc0 ^ acc1 ^ acc2 ^ acc3);
    }, threads);
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    elapsed += t;
    ++passes;
    best = std::max(best, (double)n * 8 / t / 1e9);
  }
  return best;
}

}  // namespace sllm
