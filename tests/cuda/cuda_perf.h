/*
 * cuda_perf.h: the --perf mode of test_cuda_ops (included by it once; not
 * a test, nothing asserted): timings of the CUDA ops at Llama-3-8B shapes
 * in bf16 next to the device's own ceilings (a device-to-device copy for
 * bandwidth, the largest cuBLASLt GEMM for arithmetic), measured in the
 * same run. CUDA events around repeated launches on the backend's stream;
 * median of 7 repetitions after a warm-up.
 */
#ifndef ANVIL_TEST_CUDA_PERF_H
#define ANVIL_TEST_CUDA_PERF_H

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"

typedef enum perf_kind {
    PERF_MATMUL,
    PERF_ATTN,
    PERF_RMSNORM,
    PERF_SILU,
    PERF_ADD,
    PERF_COPY,
    PERF_FP8_GEMM,
    PERF_MATMUL_SILU
} perf_kind;

typedef struct perf_op {
    perf_kind kind;
    anvil_backend *be;
    anvil_tensor x, w, out, y;
    anvil_tensor w2, gate, up; /* PERF_MATMUL_SILU: out = silu(x w^T) * (x w2^T), gate and up its scratch */
    anvil_attention_args attn;
    void *copy_dst, *copy_src;
    size_t copy_bytes;
    /* PERF_FP8_GEMM: cuBLASLt's FP8 GEMM alone (anvil_cuda_gemm_fp8) on x.data, w.data, out.data */
    const float *sx, *sw;
} perf_op;

static int perf_run(perf_op *p)
{
    anvil_backend *be = p->be;
    anvil_status st = ANVIL_OK;
    switch (p->kind) {
    case PERF_MATMUL: st = be->ops->matmul(be, &p->x, &p->w, NULL, &p->out); break;
    case PERF_MATMUL_SILU:
        st = be->ops->matmul_silu_mul(be, &p->x, &p->w, NULL, &p->w2, NULL, &p->gate, &p->up, &p->out);
        break;
    case PERF_FP8_GEMM:
        st = anvil_cuda_gemm_fp8(anvil_cuda_impl(be), p->x.data, p->sx, p->w.data, p->sw, NULL, ANVIL_DTYPE_F32,
                                 p->out.data, ANVIL_DTYPE_BF16, p->x.shape[0], p->x.shape[1], p->w.shape[0]);
        break;
    case PERF_ATTN: st = be->ops->attention(be, &p->attn); break;
    case PERF_RMSNORM: st = be->ops->rmsnorm(be, &p->x, &p->w, 1e-5f, 0.0f, &p->out); break;
    case PERF_SILU: st = be->ops->silu_mul(be, &p->x, &p->y, &p->out); break;
    case PERF_ADD: st = be->ops->add(be, &p->x, &p->y, &p->out); break;
    case PERF_COPY:
        st = cudaMemcpyAsync(p->copy_dst, p->copy_src, p->copy_bytes, cudaMemcpyDeviceToDevice,
                             anvil_cuda_impl(be)->stream) == cudaSuccess
                 ? ANVIL_OK
                 : ANVIL_ERR_CUDA;
        break;
    }
    if (st != ANVIL_OK) {
        fprintf(stderr, "perf: op failed: %s\n", anvil_last_error());
        return -1;
    }
    return 0;
}

static int perf_cmp(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* ANVIL_PERF_FILTER=text: only the rows whose name holds it (the ceilings
 * always run); ANVIL_PERF_QUICK=1: one timed call per row (for profilers). */
static int perf_wanted(const char *what)
{
    const char *f = getenv("ANVIL_PERF_FILTER");
    return f == NULL || strstr(what, f) != NULL;
}

/* Median milliseconds per call. */
static float perf_time(perf_op *p, int iters)
{
    const int quick = getenv("ANVIL_PERF_QUICK") != NULL;
    if (quick)
        iters = 1;
    cudaStream_t s = anvil_cuda_impl(p->be)->stream;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    for (int i = 0; i < (quick ? 1 : 3); i++)
        if (perf_run(p) != 0)
            return -1.0f;
    float ms[7];
    const int reps = quick ? 1 : 7;
    for (int r = 0; r < reps; r++) {
        cudaEventRecord(e0, s);
        for (int i = 0; i < iters; i++)
            if (perf_run(p) != 0)
                return -1.0f;
        cudaEventRecord(e1, s);
        cudaEventSynchronize(e1);
        cudaEventElapsedTime(&ms[r], e0, e1);
        ms[r] /= (float)iters;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    if (p->be->ops->synchronize(p->be) != ANVIL_OK)
        fprintf(stderr, "perf: %s\n", anvil_last_error());
    qsort(ms, (size_t)reps, sizeof ms[0], perf_cmp);
    return ms[reps / 2];
}

/* A device buffer of n bf16 values in [-1, 1). */
static void *perf_buf(anvil_backend *be, int64_t n)
{
    uint16_t *h = malloc((size_t)n * 2);
    uint64_t rng = 0x1234567ull + (uint64_t)n;
    for (int64_t i = 0; i < n; i++)
        h[i] = anvil_f32_to_bf16(anvil_test_randf(&rng));
    void *d = NULL;
    if (be->ops->alloc(be, (size_t)n * 2, &d) != ANVIL_OK || be->ops->upload(be, d, h, (size_t)n * 2) != ANVIL_OK) {
        fprintf(stderr, "perf: %s\n", anvil_last_error());
        exit(1);
    }
    free(h);
    return d;
}

static void *perf_ints(anvil_backend *be, const int32_t *h, int64_t n)
{
    void *d = NULL;
    if (be->ops->alloc(be, (size_t)n * 4, &d) != ANVIL_OK || be->ops->upload(be, d, h, (size_t)n * 4) != ANVIL_OK) {
        fprintf(stderr, "perf: %s\n", anvil_last_error());
        exit(1);
    }
    return d;
}

static double perf_copy_gbs;   /* the bandwidth ceiling, bytes read + written */
static double perf_gemm_tflops; /* the arithmetic ceiling */

static void perf_matmul(anvil_backend *be, const char *what, int64_t T, int64_t K, int64_t N)
{
    if (perf_gemm_tflops != 0 && !perf_wanted(what))
        return;
    perf_op p = {.kind = PERF_MATMUL, .be = be};
    void *x = perf_buf(be, T * K), *w = perf_buf(be, N * K), *o = perf_buf(be, T * N);
    p.x = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, K, x);
    p.w = anvil_tensor_2d(ANVIL_DTYPE_BF16, N, K, w);
    p.out = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, N, o);
    float ms = perf_time(&p, T * K * N > ((int64_t)1 << 33) ? 5 : 50);
    double flops = 2.0 * (double)T * (double)K * (double)N, bytes = 2.0 * (double)(T * K + N * K + T * N);
    double tf = flops / (ms * 1e-3) / 1e12, gbs = bytes / (ms * 1e-3) / 1e9;
    if (perf_gemm_tflops == 0)
        perf_gemm_tflops = tf;
    printf("%-34s %9.4f ms %8.1f TFLOP/s %7.0f GB/s  (%3.0f%% of GEMM, %3.0f%% of copy)\n", what, ms, tf, gbs,
           100.0 * tf / perf_gemm_tflops, 100.0 * gbs / perf_copy_gbs);
    be->ops->free(be, x);
    be->ops->free(be, w);
    be->ops->free(be, o);
}

/* Attention over a fresh cache: n_seqs sequences of ctx positions (blocks
 * of 16, tables in order), `new_tokens` tokens each in the step. */

/* A quantized weight [N, K] in the canonical form (docs/quantization.md),
 * random codes and scales, on the device: the matmul of bf16 activations
 * with it (the quantized GEMV for few rows, the FP8 GEMM or the
 * dequantizing path for many: cuda_matmul_quant.c), or with fp8_gemm the
 * FP8 GEMM alone (x quantized beforehand: the ceiling of the W8A8 path).
 * GB/s counts the weight's bytes (codes, scales, zeros) and x and out. */
static void perf_matmul_quant(anvil_backend *be, const char *what, anvil_dtype wdt, int32_t group,
                              anvil_quant_act act, int fp8_gemm, int64_t T, int64_t K, int64_t N)
{
    if (!perf_wanted(what))
        return;
    const int64_t G = group > 0 ? K / group : 1;
    const size_t wb = wdt == ANVIL_DTYPE_U4 ? (size_t)(N * K / 2) : (size_t)(N * K);
    unsigned char *h = malloc(wb > (size_t)(N * G * 4) ? wb : (size_t)(N * G * 4));
    uint64_t rng = 0xabcdefull + (uint64_t)(N * K);
    for (size_t i = 0; i < wb; i++)
        h[i] = (unsigned char)((anvil_test_rand(&rng) >> 56) & (wdt == ANVIL_DTYPE_F8_E4M3 ? 0x77 : 0xff));
    void *w = NULL, *sc = NULL, *z = NULL, *xq = NULL, *sx = NULL;
    int ok = be->ops->alloc(be, wb, &w) == ANVIL_OK && be->ops->upload(be, w, h, wb) == ANVIL_OK;
    float *f = (float *)(void *)h;
    for (int64_t i = 0; i < N * G; i++)
        f[i] = 1.0f / 512;
    ok = ok && be->ops->alloc(be, (size_t)(N * G) * 4, &sc) == ANVIL_OK &&
         be->ops->upload(be, sc, f, (size_t)(N * G) * 4) == ANVIL_OK;
    if (wdt == ANVIL_DTYPE_U4) { /* zero points 8 */
        memset(h, 8, (size_t)(N * G));
        ok = ok && be->ops->alloc(be, (size_t)(N * G), &z) == ANVIL_OK &&
             be->ops->upload(be, z, h, (size_t)(N * G)) == ANVIL_OK;
    }
    if (fp8_gemm && T * K <= (int64_t)wb) { /* x as codes (the weight's), unit row scales */
        ok = ok && be->ops->alloc(be, (size_t)(T * K), &xq) == ANVIL_OK &&
             be->ops->upload(be, xq, h, (size_t)(T * K)) == ANVIL_OK;
        for (int64_t i = 0; i < T; i++)
            f[i] = 1.0f;
        ok = ok && be->ops->alloc(be, (size_t)T * 4, &sx) == ANVIL_OK &&
             be->ops->upload(be, sx, f, (size_t)T * 4) == ANVIL_OK;
    } else if (fp8_gemm) {
        ok = 0;
    }
    free(h);
    if (!ok) {
        fprintf(stderr, "perf: %s\n", anvil_last_error());
        exit(1);
    }
    anvil_quant q = {.group = group, .scales = sc, .zeros = z, .act = act};
    perf_op p = {.kind = fp8_gemm ? PERF_FP8_GEMM : PERF_MATMUL, .be = be, .sx = sx, .sw = sc};
    void *x = perf_buf(be, T * K), *o = perf_buf(be, T * N);
    p.x = anvil_tensor_2d(fp8_gemm ? ANVIL_DTYPE_F8_E4M3 : ANVIL_DTYPE_BF16, T, K, fp8_gemm ? xq : x);
    p.w = anvil_tensor_2d(wdt, N, K, w);
    p.w.quant = &q;
    p.out = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, N, o);
    float ms = perf_time(&p, T * K * N > ((int64_t)1 << 33) ? 5 : 50);
    double flops = 2.0 * (double)T * (double)K * (double)N;
    double bytes = (double)wb + 4.0 * (double)(N * G) + (z ? (double)(N * G) : 0) + 2.0 * (double)(T * K + T * N);
    if (ms > 0)
        printf("%-34s %9.4f ms %8.1f TFLOP/s %7.0f GB/s  (%3.0f%% of GEMM, %3.0f%% of copy)\n", what, ms,
               flops / (ms * 1e-3) / 1e12, bytes / (ms * 1e-3) / 1e9, 100.0 * flops / (ms * 1e-3) / 1e12 / perf_gemm_tflops,
               100.0 * bytes / (ms * 1e-3) / 1e9 / perf_copy_gbs);
    be->ops->free(be, w);
    be->ops->free(be, sc);
    be->ops->free(be, z);
    be->ops->free(be, xq);
    be->ops->free(be, sx);
    be->ops->free(be, x);
    be->ops->free(be, o);
}

/* The 16-bit tensor-core quantized GEMV (knob matmul_quant = 6) at each
 * number of warps a tile (knob gemv_quant_warps: 0, its choice, then 4, 6,
 * 8, 12, 24), one weight [N, K] of wdt (int4 in groups of 128 with zero
 * points, int8 per channel, fp8 W8A8 per channel) or, with silu, gate and up
 * of that shape in one launch; GB/s over the weights' bytes. Rows named
 * "mma16w <scheme> <silu|plain> T=<T> K->N W=<w>". */
static void perf_mma16_warps(anvil_backend *be, anvil_dtype wdt, int silu, int64_t T, int64_t K, int64_t N)
{
    const char *sch = wdt == ANVIL_DTYPE_U4 ? "q4g128" : wdt == ANVIL_DTYPE_I8 ? "q8" : "w8a8";
    char name[96];
    snprintf(name, sizeof name, "mma16w %s %s T=%lld %lld->%lld", sch, silu ? "silu" : "plain", (long long)T,
             (long long)K, (long long)N);
    if (!perf_wanted(name))
        return;
    const int32_t group = wdt == ANVIL_DTYPE_U4 ? 128 : 0;
    const int64_t G = group > 0 ? K / group : 1;
    const size_t wb = wdt == ANVIL_DTYPE_U4 ? (size_t)(N * K / 2) : (size_t)(N * K);
    unsigned char *h = malloc(wb > (size_t)(N * G * 4) ? wb : (size_t)(N * G * 4));
    uint64_t rng = 0xfeedull + (uint64_t)(N * K);
    for (size_t i = 0; i < wb; i++)
        h[i] = (unsigned char)((anvil_test_rand(&rng) >> 56) & (wdt == ANVIL_DTYPE_F8_E4M3 ? 0x77 : 0xff));
    void *w[2] = {NULL, NULL}, *sc = NULL, *z = NULL;
    int ok = 1;
    for (int i = 0; i < 1 + silu; i++)
        ok = ok && be->ops->alloc(be, wb, &w[i]) == ANVIL_OK && be->ops->upload(be, w[i], h, wb) == ANVIL_OK;
    float *f = (float *)(void *)h;
    for (int64_t i = 0; i < N * G; i++)
        f[i] = 1.0f / 512;
    ok = ok && be->ops->alloc(be, (size_t)(N * G) * 4, &sc) == ANVIL_OK &&
         be->ops->upload(be, sc, f, (size_t)(N * G) * 4) == ANVIL_OK;
    if (wdt == ANVIL_DTYPE_U4) {
        memset(h, 8, (size_t)(N * G));
        ok = ok && be->ops->alloc(be, (size_t)(N * G), &z) == ANVIL_OK &&
             be->ops->upload(be, z, h, (size_t)(N * G)) == ANVIL_OK;
    }
    free(h);
    if (!ok) {
        fprintf(stderr, "perf: %s\n", anvil_last_error());
        exit(1);
    }
    const anvil_quant_act act = wdt == ANVIL_DTYPE_F8_E4M3 ? ANVIL_QUANT_ACT_FP8_DYNAMIC : ANVIL_QUANT_ACT_NONE;
    anvil_quant q = {.group = group, .scales = sc, .zeros = z, .act = act};
    perf_op p = {.kind = silu ? PERF_MATMUL_SILU : PERF_MATMUL, .be = be};
    void *x = perf_buf(be, T * K), *o = perf_buf(be, T * N), *g1 = perf_buf(be, T * N), *g2 = perf_buf(be, T * N);
    p.x = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, K, x);
    p.w = anvil_tensor_2d(wdt, N, K, w[0]);
    p.w.quant = &q;
    p.w2 = anvil_tensor_2d(wdt, N, K, silu ? w[1] : w[0]);
    p.w2.quant = &q;
    p.out = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, N, o);
    p.gate = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, N, g1);
    p.up = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, N, g2);
    static const int warps[6] = {0, 4, 6, 8, 12, 24};
    for (int wi = 0; wi < 6; wi++) {
        anvil_cuda_knobs k = {.matmul_quant = 6, .gemv_quant_warps = warps[wi]};
        anvil_cuda_set_knobs(be, &k);
        if (perf_run(&p) != 0) { /* past the kernel's bounds */
            (void)anvil_last_error();
            continue;
        }
        const float ms = perf_time(&p, 50);
        const double bytes = (1.0 + silu) * ((double)wb + 4.0 * (double)(N * G) + (z ? (double)(N * G) : 0));
        if (ms > 0)
            printf("%s W=%-2d %9.4f ms %7.0f GB/s  (%3.0f%% of copy)\n", name, warps[wi], ms,
                   bytes / (ms * 1e-3) / 1e9, 100.0 * bytes / (ms * 1e-3) / 1e9 / perf_copy_gbs);
    }
    anvil_cuda_knobs k0 = {0};
    anvil_cuda_set_knobs(be, &k0);
    for (int i = 0; i < 2; i++)
        be->ops->free(be, w[i]);
    be->ops->free(be, sc);
    be->ops->free(be, z);
    be->ops->free(be, x);
    be->ops->free(be, o);
    be->ops->free(be, g1);
    be->ops->free(be, g2);
}

static void perf_attention(anvil_backend *be, const char *what, int n_seqs, int ctx, int new_tokens, int H, int KV,
                           int hd)
{
    if (!perf_wanted(what))
        return;
    const int bs = 16, MB = (ctx + bs - 1) / bs, T = n_seqs * new_tokens;
    const int64_t qw = (int64_t)H * hd, kw = (int64_t)KV * hd, n_blocks = (int64_t)n_seqs * MB;
    int32_t *pos = malloc((size_t)T * 4), *seq = malloc((size_t)T * 4), *slot = malloc((size_t)T * 4);
    int32_t *starts = malloc((size_t)(n_seqs + 1) * 4), *lens = malloc((size_t)n_seqs * 4);
    int32_t *tables = malloc((size_t)n_blocks * 4);
    for (int64_t i = 0; i < n_blocks; i++)
        tables[i] = (int32_t)i;
    for (int s = 0, t = 0; s < n_seqs; s++) {
        starts[s] = t;
        lens[s] = ctx;
        for (int j = 0; j < new_tokens; j++, t++) {
            pos[t] = ctx - new_tokens + j;
            seq[t] = s;
            slot[t] = tables[s * MB + pos[t] / bs] * bs + pos[t] % bs;
        }
    }
    starts[n_seqs] = T;
    void *q = perf_buf(be, T * qw), *k = perf_buf(be, T * kw), *v = perf_buf(be, T * kw), *o = perf_buf(be, T * qw);
    void *kc = perf_buf(be, n_blocks * bs * kw), *vc = perf_buf(be, n_blocks * bs * kw);
    static anvil_tensor tq, tk, tv, to, tkc, tvc;
    static anvil_step st;
    tq = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, qw, q);
    tk = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, kw, k);
    tv = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, kw, v);
    to = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, qw, o);
    tkc = (anvil_tensor){.dtype = ANVIL_DTYPE_BF16, .n_dims = 4, .shape = {n_blocks, bs, KV, hd}, .data = kc};
    tvc = tkc;
    tvc.data = vc;
    st = (anvil_step){.n_tokens = T, .n_seqs = n_seqs, .max_blocks_per_seq = MB, .block_size = bs,
                      .max_context = ctx, .positions = perf_ints(be, pos, T), .seq_of_token = perf_ints(be, seq, T),
                      .slots = perf_ints(be, slot, T), .seq_starts = perf_ints(be, starts, n_seqs + 1),
                      .seq_lens = perf_ints(be, lens, n_seqs), .block_tables = perf_ints(be, tables, n_blocks)};
    perf_op p = {.kind = PERF_ATTN, .be = be};
    p.attn = (anvil_attention_args){.q = &tq, .k = &tk, .v = &tv, .k_cache = &tkc, .v_cache = &tvc, .out = &to,
                                    .step = &st, .n_heads = H, .n_kv_heads = KV, .head_dim = hd,
                                    .scale = 1.0f / sqrtf((float)hd)};
    float ms = perf_time(&p, 20);
    /* bytes: every query reads its context's K and V once (decode); flops: causal QK^T and PV */
    double kv_bytes = 2.0 * (double)n_seqs * ctx * kw * 2;
    double flops = 0;
    for (int j = 0; j < new_tokens; j++)
        flops += 4.0 * (double)n_seqs * (ctx - new_tokens + j + 1) * qw;
    printf("%-34s %9.4f ms %8.1f TFLOP/s %7.0f GB/s  (%3.0f%% of GEMM, %3.0f%% of copy)\n", what, ms,
           flops / (ms * 1e-3) / 1e12, kv_bytes / (ms * 1e-3) / 1e9, 100.0 * flops / (ms * 1e-3) / 1e12 / perf_gemm_tflops,
           100.0 * kv_bytes / (ms * 1e-3) / 1e9 / perf_copy_gbs);
    void *bufs[] = {q, k, v, o, kc, vc, (void *)st.positions, (void *)st.seq_of_token, (void *)st.slots,
                    (void *)st.seq_starts, (void *)st.seq_lens, (void *)st.block_tables};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        be->ops->free(be, bufs[i]);
    free(pos);
    free(seq);
    free(slot);
    free(starts);
    free(lens);
    free(tables);
}

static void perf_elementwise(anvil_backend *be, const char *what, perf_kind kind, int64_t rows, int64_t cols)
{
    if (!perf_wanted(what))
        return;
    perf_op p = {.kind = kind, .be = be};
    void *x = perf_buf(be, rows * cols), *y = perf_buf(be, rows * cols), *o = perf_buf(be, rows * cols);
    void *w = perf_buf(be, cols);
    p.x = anvil_tensor_2d(ANVIL_DTYPE_BF16, rows, cols, x);
    p.y = anvil_tensor_2d(ANVIL_DTYPE_BF16, rows, cols, y);
    p.out = anvil_tensor_2d(ANVIL_DTYPE_BF16, rows, cols, o);
    p.w = anvil_tensor_1d(ANVIL_DTYPE_BF16, cols, w);
    float ms = perf_time(&p, 50);
    double bytes = 2.0 * (double)(rows * cols) * (kind == PERF_RMSNORM ? 2 : 3);
    printf("%-34s %9.4f ms %8s         %7.0f GB/s  (%3.0f%% of copy)\n", what, ms, "", bytes / (ms * 1e-3) / 1e9,
           100.0 * bytes / (ms * 1e-3) / 1e9 / perf_copy_gbs);
    be->ops->free(be, x);
    be->ops->free(be, y);
    be->ops->free(be, o);
    be->ops->free(be, w);
}

/* add + rmsnorm and the matmuls of its norm at decode rows (Llama-3-8B's
 * q/k/v, or gate/up + silu): knob norm_gemv 0, the one launch with the norm
 * in the GEMV prologue, against 2, add_rmsnorm then the GEMV. Timed as the
 * other rows (back-to-back launches, median of 7), so the gap between the
 * two kernels of the second is what the first saves, less what PDL and
 * graphs already hide in a real step (bench_cuda_latency --fusion
 * on,norm-gemv measures that). */
static void perf_norm_gemv(anvil_backend *be, int64_t T, int silu)
{
    const int64_t K = 4096, ns[3] = {4096, 1024, 1024}, N_mlp = 14336;
    const int n = silu ? 2 : 3;
    void *a = perf_buf(be, T * K), *b = perf_buf(be, T * K), *nw = perf_buf(be, K);
    void *sum = perf_buf(be, T * K), *x = perf_buf(be, T * K), *w[3], *o[3];
    anvil_tensor ta = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, K, a), tb = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, K, b);
    anvil_tensor tnw = anvil_tensor_1d(ANVIL_DTYPE_BF16, K, nw);
    anvil_tensor ts = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, K, sum), tx = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, K, x);
    anvil_tensor tw[3], to[3];
    const anvil_tensor *wp[3], *bp[3] = {NULL, NULL, NULL};
    anvil_tensor *op[3];
    double wbytes = 0;
    for (int i = 0; i < n; i++) {
        const int64_t N = silu ? N_mlp : ns[i];
        w[i] = perf_buf(be, N * K);
        o[i] = perf_buf(be, T * N);
        tw[i] = anvil_tensor_2d(ANVIL_DTYPE_BF16, N, K, w[i]);
        to[i] = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, N, o[i]);
        wp[i] = &tw[i];
        op[i] = &to[i];
        wbytes += 2.0 * (double)(N * K);
    }
    void *so = perf_buf(be, T * N_mlp); /* silu: the result (to[0], to[1]: gate and up scratch) */
    anvil_tensor tso = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, N_mlp, so);
    cudaStream_t s = anvil_cuda_impl(be)->stream;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    for (int knob = 0; knob <= 2; knob += 2) {
        char what[64];
        snprintf(what, sizeof what, "add+norm+%s T=%lld %s", silu ? "gate/up+silu" : "qkv", (long long)T,
                 knob ? "2 launches" : "1 launch");
        if (!perf_wanted(what))
            continue;
        anvil_cuda_knobs k = {.norm_gemv = knob};
        anvil_cuda_set_knobs(be, &k);
        float ms[7];
        int failed = 0;
        for (int r = -1; r < 7 && !failed; r++) {
            cudaEventRecord(e0, s);
            for (int i = 0; i < 50 && !failed; i++)
                failed = (silu ? be->ops->add_rmsnorm_matmul_silu_mul(be, &ta, &tb, &tnw, 1e-5f, &ts, &tx, wp[0], NULL,
                                                                       wp[1], NULL, &to[0], &to[1], &tso)
                               : be->ops->add_rmsnorm_matmul_multi(be, &ta, &tb, &tnw, 1e-5f, &ts, &tx, 3, wp, bp,
                                                                    op)) != ANVIL_OK;
            cudaEventRecord(e1, s);
            cudaEventSynchronize(e1);
            if (r >= 0) {
                cudaEventElapsedTime(&ms[r], e0, e1);
                ms[r] /= 50.0f;
            }
        }
        if (failed) {
            fprintf(stderr, "perf: %s: %s\n", what, anvil_last_error());
            break;
        }
        qsort(ms, 7, sizeof ms[0], perf_cmp);
        const double gbs = wbytes / (ms[3] * 1e-3) / 1e9;
        printf("%-34s %9.4f ms %8s         %7.0f GB/s  (%3.0f%% of copy)\n", what, ms[3], "", gbs,
               100.0 * gbs / perf_copy_gbs);
    }
    anvil_cuda_knobs k0 = {0};
    anvil_cuda_set_knobs(be, &k0);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    void *bufs[] = {a, b, nw, sum, x, so};
    for (int i = 0; i < 6; i++)
        be->ops->free(be, bufs[i]);
    for (int i = 0; i < n; i++) {
        be->ops->free(be, w[i]);
        be->ops->free(be, o[i]);
    }
}

static int anvil_cuda_perf_main(void)
{
    if (anvil_cuda_device_count() == 0) {
        printf("no CUDA device\n");
        return 0;
    }
    anvil_backend *be = NULL;
    if (anvil_backend_cuda_create(0, ANVIL_DTYPE_BF16, &be) != ANVIL_OK) {
        fprintf(stderr, "%s\n", anvil_last_error());
        return 1;
    }
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    /* ceilings */
    const size_t cb = (size_t)1 << 30;
    perf_op cp = {.kind = PERF_COPY, .be = be, .copy_bytes = cb};
    if (be->ops->alloc(be, cb, &cp.copy_src) != ANVIL_OK || be->ops->alloc(be, cb, &cp.copy_dst) != ANVIL_OK)
        return 1;
    float ms = perf_time(&cp, 5);
    perf_copy_gbs = 2.0 * (double)cb / (ms * 1e-3) / 1e9;
    printf("%-34s %9.4f ms %8s         %7.0f GB/s  (read + written)\n", "copy 1 GiB device to device", ms, "",
           perf_copy_gbs);
    be->ops->free(be, cp.copy_src);
    be->ops->free(be, cp.copy_dst);
    perf_matmul(be, "GEMM 8192^3 (ceiling)", 8192, 8192, 8192);
    /* Llama-3-8B: hidden 4096, 32 heads / 8 KV heads of 128, intermediate 14336 */
    perf_matmul(be, "matmul T=1 4096->4096 (q, o)", 1, 4096, 4096);
    perf_matmul(be, "matmul T=1 4096->14336 (gate, up)", 1, 4096, 14336);
    perf_matmul(be, "matmul T=1 14336->4096 (down)", 1, 14336, 4096);
    perf_matmul(be, "matmul T=1 4096->128256 (lm head)", 1, 4096, 128256);
    perf_matmul(be, "matmul T=1 4096->1024 (k, v)", 1, 4096, 1024);
    perf_matmul(be, "matmul T=4 4096->4096", 4, 4096, 4096);
    {
        /* the same through the GEMV kernel, and through cuBLASLt alone */
        for (int kind = 1; kind <= 2; kind++) {
            anvil_cuda_knobs k = {.matmul_gemv = kind};
            anvil_cuda_set_knobs(be, &k);
            char name[64];
            static const int64_t shp[6][3] = {{1, 4096, 4096},  {1, 4096, 1024},   {1, 4096, 14336},
                                              {1, 14336, 4096}, {1, 4096, 128256}, {4, 4096, 4096}};
            for (int i = 0; i < 6; i++) {
                snprintf(name, sizeof name, "%s T=%lld %lld->%lld", kind == 1 ? "gemv" : "cublasLt",
                         (long long)shp[i][0], (long long)shp[i][1], (long long)shp[i][2]);
                perf_matmul(be, name, shp[i][0], shp[i][1], shp[i][2]);
            }
        }
        anvil_cuda_knobs k0 = {0};
        anvil_cuda_set_knobs(be, &k0);
    }
    perf_matmul(be, "matmul T=16 4096->14336", 16, 4096, 14336);
    perf_matmul(be, "matmul T=512 4096->4096", 512, 4096, 4096);
    perf_matmul(be, "matmul T=512 4096->14336", 512, 4096, 14336);
    perf_matmul(be, "matmul T=2048 4096->14336", 2048, 4096, 14336);
    /* quantized weights (cuda_matmul_quant.c): int4 groups of 128 with zero points, int8, fp8 per channel */
    perf_matmul_quant(be, "q4 gemv T=1 4096->14336", ANVIL_DTYPE_U4, 128, ANVIL_QUANT_ACT_NONE, 0, 1, 4096, 14336);
    perf_matmul_quant(be, "q4 gemv T=1 14336->4096", ANVIL_DTYPE_U4, 128, ANVIL_QUANT_ACT_NONE, 0, 1, 14336, 4096);
    perf_matmul_quant(be, "q4 gemv T=1 4096->4096", ANVIL_DTYPE_U4, 128, ANVIL_QUANT_ACT_NONE, 0, 1, 4096, 4096);
    perf_matmul_quant(be, "q4 gemv T=4 4096->14336", ANVIL_DTYPE_U4, 128, ANVIL_QUANT_ACT_NONE, 0, 4, 4096, 14336);
    perf_matmul_quant(be, "q8 gemv T=1 4096->14336", ANVIL_DTYPE_I8, 0, ANVIL_QUANT_ACT_NONE, 0, 1, 4096, 14336);
    perf_matmul_quant(be, "fp8 w8a16 gemv T=1 4096->14336", ANVIL_DTYPE_F8_E4M3, 0, ANVIL_QUANT_ACT_NONE, 0, 1, 4096,
                      14336);
    perf_matmul_quant(be, "fp8 w8a8 T=1 4096->14336 (+prep)", ANVIL_DTYPE_F8_E4M3, 0, ANVIL_QUANT_ACT_FP8_DYNAMIC, 0,
                      1, 4096, 14336);
    perf_matmul_quant(be, "fp8 GEMM alone T=2048 4096->14336", ANVIL_DTYPE_F8_E4M3, 0, ANVIL_QUANT_ACT_FP8_DYNAMIC,
                      1, 2048, 4096, 14336);
    perf_matmul_quant(be, "fp8 w8a8 T=2048 4096->14336", ANVIL_DTYPE_F8_E4M3, 0, ANVIL_QUANT_ACT_FP8_DYNAMIC, 0,
                      2048, 4096, 14336);
    perf_matmul_quant(be, "q4 T=2048 4096->14336 (dequant)", ANVIL_DTYPE_U4, 128, ANVIL_QUANT_ACT_NONE, 0, 2048,
                      4096, 14336);
    {
        /* the quantized GEMVs per Llama-3-8B shape: tensor cores (knob matmul_quant = 4:
         * cuda_gemv_mma_quant.cu at every row count; the automatic choice from 3 rows of int4, 4 of
         * int8, 1 of fp8 W8A8) against the SIMT kernel (knob matmul_quant = 3: cuda_gemv_quant.cu, W8A8
         * with its preparation launch) and the 16-bit tensor-core one (knob matmul_quant = 6:
         * cuda_gemv_mma16_quant.cu, x in bf16, W8A8's codes made in the launch); GB/s over the
         * weight's bytes and the copy ceiling above */
        static const int64_t shp[5][2] = {{4096, 6144}, {4096, 4096}, {4096, 14336}, {14336, 4096}, {4096, 128256}};
        static const int64_t rows[5] = {1, 2, 3, 4, 8};
        for (int kind = 0; kind < 4; kind++) {
            /* kind 3: the 16-bit GEMV's int4 kernel at three blocks an SM (gemv_quant_tiles = 3) */
            anvil_cuda_knobs kq = {.matmul_quant = kind == 0 ? 4 : kind == 1 ? 3 : 6,
                                   .gemv_quant_tiles = kind == 3 ? 3 : 0};
            anvil_cuda_set_knobs(be, &kq);
            for (int sc = 0; sc < 3; sc++)
                for (int ri = 0; ri < 5; ri++)
                    for (int i = 0; i < 5; i++) {
                        if ((rows[ri] > 1 && i != 2) || (kind == 3 && sc != 0)) /* more rows: one shape */
                            continue;
                        char name[64];
                        snprintf(name, sizeof name, "%s %s T=%lld %lld->%lld",
                                 kind == 0 ? "mma" : kind == 1 ? "simt" : kind == 2 ? "mma16" : "mma16x3",
                                 sc == 0 ? "q4g128" : sc == 1 ? "q8" : "w8a8", (long long)rows[ri],
                                 (long long)shp[i][0], (long long)shp[i][1]);
                        const anvil_dtype wdt =
                            sc == 0 ? ANVIL_DTYPE_U4 : sc == 1 ? ANVIL_DTYPE_I8 : ANVIL_DTYPE_F8_E4M3;
                        const anvil_quant_act act = sc == 2 ? ANVIL_QUANT_ACT_FP8_DYNAMIC : ANVIL_QUANT_ACT_NONE;
                        perf_matmul_quant(be, name, wdt, sc == 0 ? 128 : 0, act, 0, rows[ri], shp[i][0], shp[i][1]);
                    }
        }
        anvil_cuda_knobs k0 = {0};
        anvil_cuda_set_knobs(be, &k0);
    }
    {
        /* the 16-bit GEMV at each number of warps a tile (issue 15's work split), the Llama-3-8B
         * shapes at one row and gate/up with the silu, and at 4 rows; only with ANVIL_PERF_FILTER
         * (=mma16w) */
        static const int64_t shp[5][2] = {{4096, 6144}, {4096, 4096}, {4096, 14336}, {14336, 4096}, {4096, 128256}};
        static const anvil_dtype wdts[3] = {ANVIL_DTYPE_U4, ANVIL_DTYPE_I8, ANVIL_DTYPE_F8_E4M3};
        for (int sc = 0; sc < 3 && getenv("ANVIL_PERF_FILTER") != NULL; sc++)
            for (int T = 1; T <= 4; T += 3) {
                for (int i = 0; i < (T == 1 ? 5 : 4); i++) /* the LM head at one row */
                    perf_mma16_warps(be, wdts[sc], 0, T, shp[i][0], shp[i][1]);
                perf_mma16_warps(be, wdts[sc], 1, T, 4096, 14336);
            }
    }
    {
        /* the streaming GEMV (knob matmul_quant = 7: cuda_gemv_stream_quant.cu, issue 15) beside the
         * 16-bit tensor-core one it follows (6), every Llama-3-8B shape at 1, 2, 4 and 8 rows, int4
         * g128 with zero points, int8, fp8 W8A8; where the streaming one declines (W8A8 at 8 rows of
         * K = 14336: x's codes past the shared memory) knob 7 runs the automatic choice. 120 rows with
         * their weights made on the host: only with ANVIL_PERF_FILTER (e.g. =stream, =mma16), so that
         * the default table keeps its time */
        static const int64_t shp[5][2] = {{4096, 6144}, {4096, 4096}, {4096, 14336}, {14336, 4096}, {4096, 128256}};
        static const int64_t rows[4] = {1, 2, 4, 8};
        for (int sc = 0; sc < 3 && getenv("ANVIL_PERF_FILTER") != NULL; sc++)
            for (int ri = 0; ri < 4; ri++)
                for (int i = 0; i < 5; i++)
                    for (int kind = 0; kind < 2; kind++) {
                        anvil_cuda_knobs kq = {.matmul_quant = kind == 0 ? 6 : 7};
                        anvil_cuda_set_knobs(be, &kq);
                        char name[64];
                        snprintf(name, sizeof name, "%s %s T=%lld %lld->%lld", kind == 0 ? "mma16" : "stream",
                                 sc == 0 ? "q4g128" : sc == 1 ? "q8" : "w8a8", (long long)rows[ri],
                                 (long long)shp[i][0], (long long)shp[i][1]);
                        const anvil_dtype wdt =
                            sc == 0 ? ANVIL_DTYPE_U4 : sc == 1 ? ANVIL_DTYPE_I8 : ANVIL_DTYPE_F8_E4M3;
                        const anvil_quant_act act = sc == 2 ? ANVIL_QUANT_ACT_FP8_DYNAMIC : ANVIL_QUANT_ACT_NONE;
                        perf_matmul_quant(be, name, wdt, sc == 0 ? 128 : 0, act, 0, rows[ri], shp[i][0], shp[i][1]);
                    }
        anvil_cuda_knobs k0 = {0};
        anvil_cuda_set_knobs(be, &k0);
    }
    perf_attention(be, "attn decode B=1 ctx=4096", 1, 4096, 1, 32, 8, 128);
    perf_attention(be, "attn decode B=1 ctx=32768", 1, 32768, 1, 32, 8, 128);
    perf_attention(be, "attn decode B=32 ctx=1024", 32, 1024, 1, 32, 8, 128);
    perf_attention(be, "attn decode B=1 ctx=512", 1, 512, 1, 32, 8, 128);
    perf_attention(be, "attn decode B=64 ctx=512", 64, 512, 1, 32, 8, 128);
    perf_attention(be, "attn decode B=256 ctx=512", 256, 512, 1, 32, 8, 128);
    /* the serving shapes: many sequences at long contexts (issue 14) */
    perf_attention(be, "attn decode B=256 ctx=2048", 256, 2048, 1, 32, 8, 128);
    perf_attention(be, "attn decode B=512 ctx=2048", 512, 2048, 1, 32, 8, 128);
    perf_attention(be, "attn decode B=1024 ctx=1024", 1024, 1024, 1, 32, 8, 128);
    perf_attention(be, "attn decode B=64 ctx=8192", 64, 8192, 1, 32, 8, 128);
    perf_attention(be, "attn decode B=8 ctx=8192", 8, 8192, 1, 32, 8, 128);
    {
        /* three tiles in shared memory instead of two */
        anvil_cuda_knobs k3 = {.attn_decode_stages = 3};
        anvil_cuda_set_knobs(be, &k3);
        perf_attention(be, "attn decode-3st B=1 ctx=32768", 1, 32768, 1, 32, 8, 128);
        perf_attention(be, "attn decode-3st B=32 ctx=1024", 32, 1024, 1, 32, 8, 128);
        perf_attention(be, "attn decode-3st B=256 ctx=512", 256, 512, 1, 32, 8, 128);
    }
    {
        /* the same without tensor cores, for comparison */
        anvil_cuda_knobs k = {.attn_kernel = ANVIL_CUDA_ATTN_DECODE_SIMT};
        anvil_cuda_set_knobs(be, &k);
        perf_attention(be, "attn decode-simt B=1 ctx=4096", 1, 4096, 1, 32, 8, 128);
        perf_attention(be, "attn decode-simt B=32 ctx=1024", 32, 1024, 1, 32, 8, 128);
        perf_attention(be, "attn decode-simt B=256 ctx=512", 256, 512, 1, 32, 8, 128);
        anvil_cuda_knobs k0 = {0};
        anvil_cuda_set_knobs(be, &k0);
    }
    perf_attention(be, "attn prefill 1x2048", 1, 2048, 2048, 32, 8, 128);
    perf_attention(be, "attn prefill 4x512", 4, 512, 512, 32, 8, 128);
    perf_attention(be, "attn prefill 4x2048", 4, 2048, 2048, 32, 8, 128); /* a full 8,192-token step of 2048/128 */
    {
        /* the tensor-core prefill kernel with two m-tiles a warp (128 rows a block) */
        anvil_cuda_knobs k128 = {.attn_prefill_rows = 128};
        anvil_cuda_set_knobs(be, &k128);
        perf_attention(be, "attn prefill-128 1x2048", 1, 2048, 2048, 32, 8, 128);
        perf_attention(be, "attn prefill-128 4x512", 4, 512, 512, 32, 8, 128);
        perf_attention(be, "attn prefill-128 4x2048", 4, 2048, 2048, 32, 8, 128);
        anvil_cuda_knobs k64 = {.attn_prefill_rows = 64};
        anvil_cuda_set_knobs(be, &k64);
        perf_attention(be, "attn prefill-64 4x2048", 4, 2048, 2048, 32, 8, 128);
        anvil_cuda_knobs k0 = {0};
        anvil_cuda_set_knobs(be, &k0);
    }
    perf_elementwise(be, "rmsnorm 512x4096", PERF_RMSNORM, 512, 4096);
    perf_elementwise(be, "silu_mul 512x14336", PERF_SILU, 512, 14336);
    perf_elementwise(be, "add 512x4096", PERF_ADD, 512, 4096);
    perf_norm_gemv(be, 1, 0);
    perf_norm_gemv(be, 4, 0);
    perf_norm_gemv(be, 1, 1);
    anvil_backend_free(be);
    return 0;
}

#endif
