/* The AVX-512 kernels: the templates over cpu_vec_avx512.h. Built with
 * target attributes, so the rest of the library stays generic x86-64;
 * chosen at run time when the CPU has AVX-512 F/BW/VL. */
#if defined(__x86_64__)
#include "backend/cpu/cpu_vec_avx512.h"

/* 32 zmm registers: the GEMM tile is 4 tokens x 6 rows = 24 accumulators,
 * plus the 6 weight vectors of a chunk and one x vector. */
#define MM_GEMV_MAX_T 8
#define MM_GEMV_ROWS_T2 8
#define MM_GEMV_ROWS 4
#define MM_GEMM_ROWS 6
#define MM_GEMM_TOKENS 4
#define MM_ENTRY mm_entry_avx512
#include "backend/cpu/cpu_matmul_tmpl.h"

#define ATTN_DCHUNKS 4
#define ATTN_ENTRY attn_entry_avx512
#include "backend/cpu/cpu_attention_tmpl.h"

const anvil_cpu_kernels anvil_cpu_kernels_avx512 = {
    .mm_shape = {MM_GEMV_MAX_T, MM_GEMV_ROWS_T2, MM_GEMM_ROWS, MM_GEMM_TOKENS, NULL},
    .matmul = mm_entry_avx512,
    .attention = attn_entry_avx512,
};
#else
typedef int anvil_cpu_kernels_avx512_unused; /* ISO C: no empty translation unit */
#endif
