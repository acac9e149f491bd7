/*
 * cuda_backend.h: what the CUDA backend offers besides the op table
 * (anvil_backend_cuda_create is declared in backend/backend.h).
 *
 *     if (anvil_cuda_device_count() == 0)
 *         ... no GPU (or no driver): use the CPU backend, or skip the test
 *
 * Plain C, no CUDA headers: tests and tools include it freely.
 */
#ifndef ANVIL_BACKEND_CUDA_BACKEND_H
#define ANVIL_BACKEND_CUDA_BACKEND_H

#include <stdint.h>

#include "backend/backend.h"

/* The number of CUDA devices this process can use; 0 when there is none,
 * no driver, or the runtime reports any error. Never fails. */
int anvil_cuda_device_count(void);

/*
 * Knobs that pin choices the backend otherwise makes by itself, so tests
 * can reach every kernel on every shape. Zero everywhere means automatic.
 */
typedef enum anvil_cuda_attn_kernel {
    ANVIL_CUDA_ATTN_AUTO = 0,
    ANVIL_CUDA_ATTN_DECODE,   /* the per-token split-K kernel, whatever the batch */
    ANVIL_CUDA_ATTN_PREFILL,  /* the tiled kernel (tensor cores where it can), whatever the batch */
    ANVIL_CUDA_ATTN_PREFILL_SIMT, /* the tiled kernel without tensor cores */
    ANVIL_CUDA_ATTN_DECODE_SIMT,  /* the per-token kernel without tensor cores (DECODE takes the tensor-core
                                     one where it can: bf16/f16, head_dim a multiple of 16 up to 128) */
} anvil_cuda_attn_kernel;

typedef struct anvil_cuda_knobs {
    anvil_cuda_attn_kernel attn_kernel;
    int32_t attn_splits;      /* > 0: this many splits in the decode kernel (capped by the context) */
    int matmul_no_epilogue;   /* 1: bias added by a separate kernel, not the cuBLASLt epilogue */
    int matmul_simt;          /* 1: the plain fallback GEMM kernel instead of cuBLASLt */
    int moe_loop;             /* the moe op's experts: 1 a loop of matmuls over each expert's rows (the
                                 reference for the grouped launches; not in step graphs); 2 the grouped
                                 launches (the tensor-core GEMM where it applies, else the GEMV for <= 8
                                 tokens and the SIMT GEMM above); 3 the grouped launches on CUDA cores only
                                 (GEMV, SIMT); 0: as 2, but the loop where 2 would take the SIMT GEMM outside
                                 step graphs (cuda_moe.c) */
    int moe_tile_rows;        /* the tensor-core grouped GEMM's row tiles: 16, 32 or 64; 0: by the average
                                 rows an expert gets (cuda_moe_schedule.h) */
    int moe_split_k;          /* the tensor-core down GEMM in two halves of K (partials added by the combine):
                                 1 when its blocks would not fill the GPU twice (decode), 2 always; 0 never
                                 (the default until it is timed on a GPU: session 27 wrote it after its
                                 device time was spent) */
    int attn_decode_stages;   /* 3: the tensor-core decode kernel keeps 3 tiles in shared memory (default 2) */
    int matmul_gemv;          /* for 1..4 rows: 2 cuBLASLt instead of the GEMV kernel (0, 1: the GEMV) */
    int norm_gemv;            /* add_rmsnorm_matmul_*: 2 add_rmsnorm then the GEMV (two launches) instead of
                                 the GEMV with the norm in its prologue (0, 1: the one launch) */
    int fp8_act_share;        /* fp8 W8A8 matmuls on the FP8 GEMM (prefill): 2 each quantizes its x itself
                                 (session 27's path, the reference) instead of the matmuls of one x (q/k/v,
                                 gate/up) sharing one quantization and the add + rmsnorm before them making
                                 it (cuda_fp8_x.c); 0, 1: shared. The same bits either way */
    int attn_combine_in_kernel; /* 1: the split-K decode on tensor cores merges its splits in the same launch
                                   (the last split of each block of heads); 0: in the combine kernel */
    int attn_prefill_rows;    /* query rows a block of the tensor-core prefill kernel: 64 (one m-tile a warp)
                                 or 128 (two); 0: the default (128 where head_dim is 32, 64 or 128) */
    int matmul_quant;         /* quantized weights: 1 the weight dequantized to the activation dtype and the
                                 plain GEMM, always (the slow reference path); 2 never cuBLASLt's FP8 GEMM
                                 (the GEMV, or 1); 3 the SIMT quantized GEMV (cuda_gemv_quant.cu) where the
                                 tensor-core one would run (fp8 W8A8 activations then prepared by their own
                                 kernel, int8/int4 weight-only in f32); 4 the tensor-core one at every row
                                 count it takes (automatic: from 3 rows of int4, 4 of int8; tests,
                                 benchmarks), never the 16-bit one; 5 never the 16-bit tensor-core GEMV
                                 (cuda_gemv_mma16_quant.cu: session 26's choice); 6 the 16-bit one at every
                                 row count it takes (automatic: fp8 W8A8 and int4 always, int8 from 2
                                 rows); 7 the streaming GEMV (cuda_gemv_stream_quant.cu) wherever it takes
                                 the weight (1-8 rows), else as 0 (not the default until an H100 times
                                 it; ANVIL_CUDA_MATMUL_QUANT=7 for the anvil command and
                                 bench_cuda_latency);
                                 8 the quantized GEMM on tensor cores (cuda_gemm_quant.cu, int4 / int8 weight-only)
                                 wherever it takes the weight, every row count, fp8 W8A8 never on the FP8 GEMM (as
                                 2); 9 that GEMM at 9-256 rows of int4 / int8 (as 0) and also where the weight would
                                 be dequantized (slower at 2048 rows); 10 the fp8 row GEMV
                                 (cuda_gemv_fp8_rows.cu) wherever it takes the weight (one row of fp8 W8A8 per
                                 channel), else as 0; 11 the int4 row GEMV (cuda_gemv_int4_rows.cu: one row,
                                 x rounded to int8 per block of 32) wherever it takes the weight, else as 0;
                                 0: automatic (that GEMM first at 9-256 rows, the fp8 and int4 row GEMVs at
                                 one row: cuda_matmul_quant.c) */
    int gemv_quant_tiles;     /* the tensor-core quantized GEMV: 2 or 4 tiles of 16 weight rows a block
                                 (fewer quantizations of x, another order of the f32 sums); else 1. 3:
                                 the 16-bit one's int4 kernel at three blocks an SM (85 registers,
                                 ~150 bytes of spills; benchmarks) instead of two */
    int rows_warps;           /* the fp8 / int4 row GEMVs' warps a block: 4, 8 or 16; else their default
                                 (ANVIL_CUDA_ROWS_WARPS for the anvil command and bench_cuda_latency) */
    int gemv_quant_warps;     /* the 16-bit tensor-core quantized GEMV's warps a tile of 16 weight rows (1..24;
                                 gate/up with the silu: twice that a block, at most 24, int4 16); 0: picked
                                 per launch to fill the GPU (cuda_gemv_mma16_split.h). The same bits at
                                 every value: the sums' order is fixed by the weight */
    int mla_kernel;           /* the mla op (cuda_mla.h): 1 the reference kernels (a block per token and
                                 head, SIMT) for every row; 2 the absorbed form on tensor cores for every
                                 row; 3 the expanded form on tensor cores for the rows after the decode
                                 rows; 0: expanded for prefill chunks where it pays (cuda_mla.c, expand_pays),
                                 else absorbed (each where it applies, the reference elsewhere). attn_splits > 0 pins the
                                 absorbed form's splits too */
} anvil_cuda_knobs;

/* Sets the knobs of a CUDA backend (ANVIL_ERR_INVALID_ARG for another kind
 * of backend) and drops its step graphs. Not thread-safe with ops running
 * on be. */
anvil_status anvil_cuda_set_knobs(anvil_backend *be, const anvil_cuda_knobs *knobs);

/* Step graphs recorded and replayed by every CUDA backend of this process
 * so far (see cuda_graph.c), for tests and benchmarks. */
void anvil_cuda_graph_counts(unsigned long long *recorded, unsigned long long *replayed);

#endif
