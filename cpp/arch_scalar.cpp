// Portable tier: plain C++ (the compiler may still use the baseline SSE2/NEON).
#define SLLM_TIER "scalar"
#define SLLM_OPS ops_scalar
#define SLLM_MR 4
#define SLLM_NR 4
#define SLLM_KC 256
#define SLLM_TALL_MR 4
namespace sllm { namespace { typedef float vec; } }
#include "arch_body.inc"
