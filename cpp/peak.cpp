// The machine's FP32 peak: independent FMA chains on every thread, long enough to keep
// all FMA ports busy, with the widest vectors the CPU has. `sllm bench` divides achieved
// FLOP/s by this figure to report MFU (model FLOPs utilisation).
#include <chrono>
#include <cstdint>

#include "runtime.h"

namespace sllm {
namespace {

constexpr int kChains = 12;  // enough independent accumulators to cover FMA latency x ports

template <int Lanes>
struct Vec {
  typedef float type __attribute__((vector_size(Lanes * 4)));
};

// One thread's chains; returns a value that depends on every chain so nothing is elided.
template <int Lanes>
__attribute__((always_inline)) inline float fma_chains(int64_t iters) {
  typedef typename Vec<Lanes>::type V;
  V acc[kChains], a, b;
  for (int l = 0; l < Lanes; ++l) { a[l] = 0.999999f; b[l] = 1e-7f; }
  for (int j = 0; j < kChains; ++j) acc[j] = a * (float)(j + 1);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < kChains; ++j) acc[j] = acc[j] * a + b;  // contracted to FMA
  float sum = 0;
  for (int j = 0; j < kChains; ++j)
    for (int l = 0; l < Lanes; ++l) sum += acc[j][l];
  return sum;
}

#if defined(__x86_64__)
__attribute__((target("avx512f,fma"))) float chains_avx512(int64_t n) { return fma_chains<16>(n); }
__attribute__((target("avx2,fma"))) float chains_avx2(int64_t n) { return fma_chains<8>(n); }
#endif
float chains_generic(int64_t n) { return fma_chains<4>(n); }

// Lanes and chain function of the widest vector unit this CPU has.
int widest(float (**fn)(int64_t)) {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) { *fn = chains_avx512; return 16; }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    *fn = chains_avx2;
    return 8;
  }
#endif
  *fn = chains_generic;
  return 4;
}

}  // namespace

double peak_gflops(double seconds) {
  float (*fn)(int64_t);
  const int lanes = widest(&fn);
  const int threads = num_threads();
  int64_t iters = 1 << 16;
  double elapsed = 0;
  volatile float sink = 0;
  while (elapsed < seconds) {  // grow the work until one run lasts long enough to time
    iters *= 2;
    auto start = std::chrono::steady_clock::now();
    parallel_for(threads, [&](int64_t, int) { sink = sink + fn(iters); });
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  const double flops = 2.0 * kChains * lanes * (double)iters * threads;
  return flops / elapsed / 1e9;
}

}  // namespace sllm
