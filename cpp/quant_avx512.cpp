// AVX-512 VNNI tier of the quantized dot products (vpdpbusd on 256-bit vectors).
#define SLLM_QTIER "avx512vnni"
#define SLLM_QOPS qops_avx512vnni
#define SLLM_VNNI 1
#include "quant_x86.inc"
