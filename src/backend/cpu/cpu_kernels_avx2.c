/* The AVX2 + FMA + F16C kernels: the templates over cpu_vec_avx2.h. Built
 * with target attributes, so the rest of the library stays generic x86-64;
 * chosen at run time when the CPU has AVX2 but not AVX-512. */
#if defined(__x86_64__)
#include "backend/cpu/cpu_vec_avx2.h"

#include "backend/cpu/cpu_gemm_avx2.h"

/* 16 ymm registers: a streamed tile is TT x NT outputs of two registers
 * each; the GEMM runs the two halves in turn, k-blocked (cpu_gemm_avx2.h). */
#define MM_GEMV_MAX_T 8
#define MM_GEMV_ROWS_T2 4
#define MM_GEMV_ROWS 2
#define MM_GEMM_ROWS GEMM_AVX2_NT
#define MM_GEMM_TOKENS GEMM_AVX2_TT
#define MM_GEMM_DRIVER mm_gemm_avx2
#define MM_ENTRY mm_entry_avx2
#include "backend/cpu/cpu_matmul_tmpl.h"

#define ATTN_DCHUNKS 2
#define ATTN_ENTRY attn_entry_avx2
#include "backend/cpu/cpu_attention_tmpl.h"

const anvil_cpu_kernels anvil_cpu_kernels_avx2 = {
    .mm_shape = {MM_GEMV_MAX_T, MM_GEMV_ROWS_T2, MM_GEMM_ROWS, MM_GEMM_TOKENS, gemm_avx2_scratch},
    .matmul = mm_entry_avx2,
    .attention = attn_entry_avx2,
};
#else
typedef int anvil_cpu_kernels_avx2_unused; /* ISO C: no empty translation unit */
#endif
