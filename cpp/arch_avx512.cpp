// AVX-512 tier (compiled with -mavx512f ...): 6 x 32 GEMM tile in 12 zmm accumulators (8 x 32
// in 16 for a few rows read in place).
#define SLLM_TIER "avx512"
#define SLLM_OPS ops_avx512
#define SLLM_MR 6
#define SLLM_NR 32
#define SLLM_KC 256
#define SLLM_TALL_MR 8
namespace sllm { namespace { typedef float vec __attribute__((vector_size(64))); } }
#include "arch_body.inc"
