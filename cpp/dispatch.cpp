// Run-time choice of the SIMD tier; the scratch buffers.
#include <cstdlib>
#include <cstring>
#include <cstdio>
#include <new>
#include <string>

#include "arch.h"
#include "runtime.h"

namespace sllm {
namespace {

bool cpu_supports(const Ops& o) {
#if SLLM_X86
  if (&o == &ops_avx512)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
  if (&o == &ops_avx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return &o == &ops_scalar;
}

const Ops* const kTiers[] = {
#if SLLM_X86
    &ops_avx512, &ops_avx2,
#endif
    &ops_scalar};

std::string g_error;

const Ops* initial_tier() {
  const char* forced = std::getenv("SLLM_CPP_SIMD");
  if (forced && *forced) {
    for (const Ops* o : kTiers)
      if (std::strcmp(o->name, forced) == 0) {
        if (cpu_supports(*o)) return o;
        g_error = std::string("SLLM_CPP_SIMD=") + forced + " but this CPU lacks it";
        return &ops_scalar;
      }
    g_error = std::string("SLLM_CPP_SIMD=") + forced + " is not one of avx512|avx2|scalar" +
              " available in this build";
    return &ops_scalar;
  }
  for (const Ops* o : kTiers)
    if (cpu_supports(*o)) return o;
  return &ops_scalar;
}

const Ops* const g_ops = initial_tier();

}  // namespace

const Ops& ops() { return *g_ops; }
const char* simd_error() { return g_error.c_str(); }

Scratch::~Scratch() { std::free(data_); }

float* Scratch::get(size_t n) {
  if (n > size_) {
    std::free(data_);
    size_t bytes = ((n * sizeof(float)) + 63) / 64 * 64;
    data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!data_) {
      size_ = 0;
      throw std::bad_alloc();
    }
    size_ = n;
  }
  return data_;
}

}  // namespace sllm
