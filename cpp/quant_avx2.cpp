// AVX2 tier of the quantized dot products (compiled with -mavx2 -mfma -mf16c).
#define SLLM_QTIER "avx2"
#define SLLM_QOPS qops_avx2
#define SLLM_VNNI 0
#include "quant_x86.inc"
