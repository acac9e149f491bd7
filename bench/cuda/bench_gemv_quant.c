/*
 * bench_gemv_quant: the quantized decode GEMVs by shape, with the weights
 * rotated through more memory than the L2 holds, as a model's layers read
 * them (each layer's matrices once a step), beside the copy rate of the
 * same run.
 *
 *   bench_gemv_quant [--shapes llama-8b|llama-1b] [--iters N] [--json FILE]
 *
 * `test_cuda_ops --perf` times a matmul on one weight over and over, so a
 * weight under ~50 MB (an H100's L2) is read partly from the L2 there:
 * Llama-3-8B's q/k/v (25 MB) and o (17 MB) looked 15-25% faster than they
 * run in the model (session 32). Here each call reads the next of several
 * copies of the weight (at least 1 GB together), so every byte comes from
 * memory. Kernels (one decode row, bf16 x, the launchers the matmul op
 * routes to, docs/cuda-backend.md "Quantized weights"):
 *   fp8 rows      the fp8 W8A8 row GEMV (cuda_gemv_fp8_rows.cu), the default at one row
 *                 (4 warps a block; "w8" 8)
 *   fp8 mma16     the 16-bit tensor-core GEMV on fp8 W8A8 (its own choice of warps)
 *   int8 mma16, int4 mma16   the same on int8 per channel, int4 in groups of 128 with zero points
 *   int4 rows     the int4 row GEMV (cuda_gemv_int4_rows.cu: x rounded to int8 in the launch), the
 *                 default at one row, on the same int4 (8 warps a block; "w4" 4, "w16" 16)
 * Shapes: q/k/v as one launch, o, gate/up with the silu as one launch,
 * down, the LM head. Prints us a call, GB/s over the weights' bytes and the
 * share of the copy rate (bytes read + written, cudaMemcpy device to device
 * of 1 GiB); --json writes the same rows.
 */
#include <cuda_runtime_api.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_gemv_fp8_rows.h"
#include "backend/cuda/cuda_gemv_int4_rows.h"
#include "backend/cuda/cuda_gemv_mma16_quant.h"
#include "backend/cuda/cuda_internal.h"
#include "core/error.h"

#define POOL_BYTES ((size_t)1 << 30) /* weights rotate through this much memory, past any L2 */

typedef struct shape {
    const char *name;
    int64_t K;
    int64_t N[3]; /* the parts (q/k/v: 3; gate/up: 2, silu) */
    int n_parts, silu;
} shape;

enum {
    K_FP8_ROWS,
    K_FP8_ROWS8,
    K_FP8_MMA16,
    K_I8_MMA16,
    K_U4_MMA16,
    K_U4_ROWS,
    K_U4_ROWS4,
    K_U4_ROWS16,
    N_KERNELS
};
static const char *const kernel_names[N_KERNELS] = {"fp8 rows",     "fp8 rows w8",  "fp8 mma16",
                                                    "int8 mma16",   "int4 mma16",   "int4 rows",
                                                    "int4 rows w4", "int4 rows w16"};

static int is_u4(int k)
{
    return k == K_U4_MMA16 || k == K_U4_ROWS || k == K_U4_ROWS4 || k == K_U4_ROWS16;
}
static int is_fp8_rows(int k)
{
    return k == K_FP8_ROWS || k == K_FP8_ROWS8;
}
static int is_u4_rows(int k)
{
    return k == K_U4_ROWS || k == K_U4_ROWS4 || k == K_U4_ROWS16;
}

static int fail(const char *what, cudaError_t e)
{
    fprintf(stderr, "bench_gemv_quant: %s: %s\n", what, cudaGetErrorString(e));
    return 1;
}

/* The copy rate: bytes read + written of a 1 GiB device-to-device copy, 10 times. */
static double copy_gbs(void *a, void *b, cudaStream_t s)
{
    cudaEvent_t e0, e1;
    float ms = 0.0f;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    cudaMemcpyAsync(b, a, POOL_BYTES, cudaMemcpyDeviceToDevice, s);
    cudaEventRecord(e0, s);
    for (int i = 0; i < 10; i++)
        cudaMemcpyAsync(b, a, POOL_BYTES, cudaMemcpyDeviceToDevice, s);
    cudaEventRecord(e1, s);
    cudaEventSynchronize(e1);
    cudaEventElapsedTime(&ms, e0, e1);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return 2.0 * (double)POOL_BYTES * 10 / (ms * 1e-3) / 1e9;
}

/* Bytes of one part's weight (codes) in kernel k's scheme. */
static size_t part_bytes(int k, int64_t N, int64_t K)
{
    return is_u4(k) ? (size_t)(N * K / 2) : (size_t)(N * K);
}

/* The call of kernel k on copy r of the shape's weights in the pool. */
static void make_call(int k, const shape *sh, int r, size_t copy_bytes, uint8_t *pool, const float *scales,
                      const uint8_t *zeros, const void *x, void *out, cudaStream_t s,
                      anvil_cuda_gemv_mma_call *c)
{
    memset(c, 0, sizeof *c);
    c->stream = s;
    c->n_parts = sh->n_parts;
    c->silu = sh->silu;
    c->x = x;
    c->x_dt = ANVIL_DTYPE_BF16;
    c->T = 1;
    c->sm = 90;
    c->act = is_fp8_rows(k) || k == K_FP8_MMA16 ? ANVIL_QUANT_ACT_FP8_DYNAMIC : ANVIL_QUANT_ACT_NONE;
    c->rows_warps = k == K_FP8_ROWS8 ? 8 : k == K_U4_ROWS4 ? 4 : k == K_U4_ROWS16 ? 16 : 0;
    const anvil_dtype dt = k == K_I8_MMA16 ? ANVIL_DTYPE_I8 : is_u4(k) ? ANVIL_DTYPE_U4 : ANVIL_DTYPE_F8_E4M3;
    size_t off = (size_t)r * copy_bytes;
    for (int p = 0; p < sh->n_parts; p++) {
        c->w[p] = (anvil_cuda_qweight){
            .w = pool + off,
            .dt = dt,
            .scales = scales,
            .zeros = is_u4(k) ? zeros : NULL,
            .gs = is_u4(k) ? 128 : sh->K,
            .N = sh->N[p],
            .K = sh->K,
        };
        c->out[p] = out;
        off += part_bytes(k, sh->N[p], sh->K);
    }
}

static anvil_status launch(int k, const anvil_cuda_gemv_mma_call *c)
{
    return is_fp8_rows(k)  ? anvil_cuda_launch_gemv_fp8_rows(c)
           : is_u4_rows(k) ? anvil_cuda_launch_gemv_int4_rows(c)
                           : anvil_cuda_launch_gemv_mma16_quant(c);
}

int main(int argc, char **argv)
{
    const char *shapes_name = "llama-8b", *json = NULL;
    int iters = 64;
    static const struct option lo[] = {{"shapes", required_argument, 0, 's'},
                                       {"iters", required_argument, 0, 'i'},
                                       {"json", required_argument, 0, 'j'},
                                       {0, 0, 0, 0}};
    for (int o; (o = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
        switch (o) {
        case 's':
            shapes_name = optarg;
            break;
        case 'i':
            iters = atoi(optarg);
            break;
        case 'j':
            json = optarg;
            break;
        default:
            fprintf(stderr,
                    "usage: bench_gemv_quant [--shapes llama-8b|llama-1b] [--iters N] [--json FILE]\n");
            return 2;
        }
    }
    const int big = strcmp(shapes_name, "llama-8b") == 0;
    if (!big && strcmp(shapes_name, "llama-1b") != 0) {
        fprintf(stderr, "bench_gemv_quant: --shapes llama-8b or llama-1b\n");
        return 2;
    }
    if (iters < 1)
        iters = 1;
    const int64_t H = big ? 4096 : 2048, I = big ? 14336 : 8192, KV = big ? 1024 : 512, V = 128256;
    const shape shapes[] = {
        {"q/k/v", H, {H, KV, KV}, 3, 0}, {"o", H, {H}, 1, 0},       {"gate/up silu", H, {I, I}, 2, 1},
        {"down", I, {H}, 1, 0},          {"LM head", H, {V}, 1, 0},
    };
    cudaStream_t s;
    cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    if (e != cudaSuccess)
        return fail("stream", e);
    uint8_t *pool = NULL, *pool2 = NULL, *zeros = NULL;
    float *scales = NULL;
    void *x = NULL, *out = NULL;
    if ((e = cudaMalloc((void **)&pool, POOL_BYTES)) != cudaSuccess ||
        (e = cudaMalloc((void **)&pool2, POOL_BYTES)) != cudaSuccess ||
        (e = cudaMalloc((void **)&scales, (size_t)V * (I / 128) * sizeof(float))) != cudaSuccess ||
        (e = cudaMalloc((void **)&zeros, (size_t)V * (I / 128))) != cudaSuccess ||
        (e = cudaMalloc(&x, (size_t)I * 2)) != cudaSuccess ||
        (e = cudaMalloc(&out, (size_t)V * 2)) != cudaSuccess)
        return fail("cudaMalloc", e);
    /* codes that are numbers in every scheme (fp8: 0x00-0x77, no NaN), unit-ish scales, zero points 8, x 1/4
     */
    cudaMemset(pool, 0x35, POOL_BYTES);
    const size_t n_sc = (size_t)V * (I / 128);
    float *hs = malloc(n_sc * sizeof *hs);
    uint16_t *hx = malloc((size_t)I * 2);
    if (hs == NULL || hx == NULL)
        return 1;
    for (size_t i = 0; i < n_sc; i++)
        hs[i] = 1.0f / 512;
    for (int64_t i = 0; i < I; i++)
        hx[i] = 0x3e80; /* bf16 0.25 */
    cudaMemcpy(scales, hs, n_sc * sizeof *hs, cudaMemcpyHostToDevice);
    cudaMemcpy(x, hx, (size_t)I * 2, cudaMemcpyHostToDevice);
    cudaMemset(zeros, 8, n_sc);
    free(hs);
    free(hx);
    if ((e = cudaDeviceSynchronize()) != cudaSuccess)
        return fail("setup", e);
    const double copy = copy_gbs(pool, pool2, s);
    cudaFree(pool2);
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    printf("%s, %d SMs; copy %.0f GB/s (read + written); %s shapes, one row, bf16 x, weights rotated through "
           "%zu MB\n",
           prop.name, prop.multiProcessorCount, copy, shapes_name, POOL_BYTES >> 20);
    printf("%-14s %-13s %10s %10s %8s %8s\n", "shape", "kernel", "MB", "us", "GB/s", "of copy");
    FILE *jf = json ? fopen(json, "w") : NULL;
    if (json && jf == NULL) {
        fprintf(stderr, "bench_gemv_quant: %s: cannot write\n", json);
        return 1;
    }
    if (jf)
        fprintf(jf, "{\"device\": \"%s\", \"copy_gbs\": %.1f, \"shapes\": \"%s\", \"rows\": [", prop.name,
                copy, shapes_name);
    int first = 1;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const shape *sh = &shapes[si];
        for (int k = 0; k < N_KERNELS; k++) {
            size_t bytes = 0;
            for (int p = 0; p < sh->n_parts; p++)
                bytes += part_bytes(k, sh->N[p], sh->K);
            const size_t copy_bytes = (bytes + 255) / 256 * 256;
            int copies = (int)(POOL_BYTES / copy_bytes);
            copies = copies > 64 ? 64 : copies;
            if (copies < 1)
                continue;
            anvil_cuda_gemv_mma_call c;
            make_call(k, sh, 0, copy_bytes, pool, scales, zeros, x, out, s, &c);
            if (launch(k, &c) != ANVIL_OK) { /* a kernel that does not take the shape: its reason, no row */
                printf("%-14s %-13s %s\n", sh->name, kernel_names[k], anvil_last_error());
                continue;
            }
            for (int i = 1; i < 4; i++) {
                make_call(k, sh, i % copies, copy_bytes, pool, scales, zeros, x, out, s, &c);
                (void)launch(k, &c);
            }
            cudaEventRecord(e0, s);
            for (int i = 0; i < iters; i++) {
                make_call(k, sh, i % copies, copy_bytes, pool, scales, zeros, x, out, s, &c);
                (void)launch(k, &c);
            }
            cudaEventRecord(e1, s);
            if ((e = cudaEventSynchronize(e1)) != cudaSuccess)
                return fail(kernel_names[k], e);
            float ms = 0.0f;
            cudaEventElapsedTime(&ms, e0, e1);
            const double us = 1e3 * ms / iters, gbs = (double)bytes / (us * 1e-6) / 1e9;
            printf("%-14s %-13s %10.1f %10.2f %8.0f %7.1f%%\n", sh->name, kernel_names[k], bytes / 1e6, us,
                   gbs, 100.0 * gbs / copy);
            if (jf)
                fprintf(jf,
                        "%s\n {\"shape\": \"%s\", \"kernel\": \"%s\", \"bytes\": %zu, \"us\": %.3f, \"gbs\": "
                        "%.1f}",
                        first ? "" : ",", sh->name, kernel_names[k], bytes, us, gbs);
            first = 0;
        }
    }
    if (jf) {
        fprintf(jf, "\n]}\n");
        fclose(jf);
    }
    cudaFree(pool);
    cudaFree(scales);
    cudaFree(zeros);
    cudaFree(x);
    cudaFree(out);
    cudaStreamDestroy(s);
    return 0;
}
