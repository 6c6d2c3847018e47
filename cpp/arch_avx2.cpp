// AVX2 + FMA tier (compiled with -mavx2 -mfma): 6 x 16 GEMM tile in 12 ymm accumulators.
#define SLLM_TIER "avx2"
#define SLLM_OPS ops_avx2
#define SLLM_MR 6
#define SLLM_NR 16
#define SLLM_KC 256
#define SLLM_TALL_MR 6  // no taller tile fits 16 ymm registers
namespace sllm { namespace { typedef float vec __attribute__((vector_size(32))); } }
#include "arch_body.inc"
