/* The kernel ABI shared by every export of the sllm WebAssembly modules.
 *
 * Calls across the host boundary are expensive (each argument costs the host
 * time to convert), so every kernel is a zero-argument export that reads its
 * arguments from one parameter block in linear memory: the host writes
 * pointers (byte offsets), sizes and floats into ARGS, then calls the kernel.
 * The block's address is returned by the export `args_address`.
 */
#ifndef SLLM_WASM_ABI_H
#define SLLM_WASM_ABI_H

#include <stdint.h>
#include <stddef.h>

#ifdef __wasm_simd128__
#include <wasm_simd128.h>
#endif

#define ARGS_SLOTS 32

typedef union {
    uint32_t u;
    int32_t i;
    float f;
} arg_slot;

extern arg_slot ARGS[ARGS_SLOTS];

#define EXPORT(name) __attribute__((export_name(#name))) void name(void)

/* Argument n read as a float pointer, int32 pointer, size or float. */
#define ARG_F32P(n) ((float *)(uintptr_t)ARGS[n].u)
#define ARG_I32P(n) ((int32_t *)(uintptr_t)ARGS[n].u)
#define ARG_INT(n) ((int)ARGS[n].i)
#define ARG_FLT(n) (ARGS[n].f)

/* Before a loop whose float64 conversions the compiler would vectorize into
 * f64x2.convert_low_i32x4 / f64x2.promote_low_f32x4, which wasmer 1.x refuses: in the
 * compat module (the one that must load there) the loop stays scalar; elsewhere nothing. */
#ifdef SLLM_WASM_COMPAT
#define COMPAT_SCALAR_LOOP _Pragma("clang loop vectorize(disable) interleave(disable)")
#else
#define COMPAT_SCALAR_LOOP
#endif

/* Freestanding helpers (no libc): used instead of memset/memcpy. */
void zero_floats(float *dst, size_t n);
void copy_floats(float *dst, const float *src, size_t n);

/* c (M,N) = a (M,K) @ b (K,N), row-major with row strides lda, ldb, ldc, overwritten: the
 * matmul kernels' GEMM (gemm.c), for kernels of other files (matmul_q_bwd). */
void gemm_rows(float *c, int ldc, const float *a, int lda, const float *b, int ldb, int M,
               int N, int K);

#endif
