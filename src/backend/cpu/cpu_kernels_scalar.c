/* The portable kernels: the templates over cpu_vec_scalar.h. Slow (one
 * fmaf per lane) but bitwise equal to the SIMD paths; used on CPUs without
 * AVX2 and on other architectures. */
#include "backend/cpu/cpu_vec_scalar.h"

#define MM_GEMV_MAX_T 8
#define MM_GEMV_ROWS_T2 4
#define MM_GEMV_ROWS 4
#define MM_GEMM_ROWS 4
#define MM_GEMM_TOKENS 4
#define MM_ENTRY mm_entry_scalar
#include "backend/cpu/cpu_matmul_tmpl.h"

#define ATTN_DCHUNKS 4
#define ATTN_ENTRY attn_entry_scalar
#include "backend/cpu/cpu_attention_tmpl.h"

const anvil_cpu_kernels anvil_cpu_kernels_scalar = {
    .mm_shape = {MM_GEMV_MAX_T, MM_GEMV_ROWS_T2, MM_GEMM_ROWS, MM_GEMM_TOKENS, NULL},
    .matmul = mm_entry_scalar,
    .attention = attn_entry_scalar,
};
