/*
 * bench_cpu_ops: the CPU backend's matmul against the machine's ceilings.
 *
 *   GEMV (T = 1) at Llama-3.2-1B shapes with bf16 weights: GB/s of weight
 *   bytes streamed, next to a plain streaming read of the same bytes on the
 *   same threads (anvil_cpu_stream_read_gbps). Weight buffers are rotated
 *   through a pool of at least 4x the last-level cache, so every call reads
 *   from memory, as a decode step does.
 *   GEMM (T = 16, 128, 512): GFLOP/s next to the measured FMA peak, and
 *   GFLOP/s per CPU-second (the process's CPU time over the same calls:
 *   on a shared machine, time the threads were descheduled does not count;
 *   time they spun waiting does).
 *   Decode attention at the Llama-3.2-1B shape (32 heads, 8 kv heads,
 *   head_dim 64, f32 cache): GB/s of cached K/V read, next to the stream.
 *
 *   Quantized weights (--only quant): int4 (groups of 128, zero points),
 *   int8 and fp8 (per channel) beside bf16, T = 1, 2, 4 (decode: weights
 *   from memory), 16 and 128, at the GEMV shapes.
 *
 *   --tokens T: only the GEMMs (and quantized runs) of T tokens.
 *   --shape K,N: the quantized runs at this shape only (llama.cpp's
 *   test-backend-ops perf times MUL_MAT at 14336,4096).
 *
 *   usage: bench_cpu_ops [--threads N] [--quick] [--only gemv|gemm|attn|quant] [--tokens T] [--shape K,N] [--json FILE]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "anvil_internal.h" /* internal: not part of the API */

typedef struct result {
    const char *kind;
    int64_t T, K, N;
    double seconds, rate, ceiling; /* GB/s and stream GB/s, or GFLOP/s and peak */
    double ratio;                  /* rate / ceiling (for GEMV: the median of per-round ratios) */
    double cpu_rate;               /* GEMM: GFLOP per CPU-second */
    double gflops;                 /* quantized: GFLOP/s */
} result;

/* Random bf16 in +-[2^-7, 1): no zeros, denormals, infinities or NaNs. */
static void fill_bf16(uint16_t *w, size_t n, uint64_t *s)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t x = *s;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *s = x;
        uint16_t sign = (uint16_t)((x >> 20) & 0x8000u), exp = (uint16_t)(120 + (x >> 8) % 7), mant = (uint16_t)(x & 0x7f);
        w[i] = (uint16_t)(sign | (exp << 7) | mant);
    }
}

static double cpu_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static size_t llc_bytes(void)
{
#ifdef _SC_LEVEL3_CACHE_SIZE
    long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l3 > 0)
        return (size_t)l3;
#endif
    return (size_t)64 << 20;
}

/* One GEMV timing: the median over >= 15 calls (and the time budget), each
 * call on the next weight buffer of the pool. */
static double time_gemv(anvil_backend *be, anvil_tensor *tx, anvil_tensor *to, char *pool, size_t stride,
                        size_t n_bufs, int64_t K, int64_t N, double budget)
{
    enum { MAX_REPS = 1000 };
    double times[MAX_REPS];
    int reps = 0;
    double start = anvil_cpu_now_s();
    while (reps < MAX_REPS && (reps < 15 || anvil_cpu_now_s() - start < budget)) {
        anvil_tensor tw = anvil_tensor_2d(ANVIL_DTYPE_BF16, N, K, pool + ((size_t)reps % n_bufs) * stride);
        double t0 = anvil_cpu_now_s();
        anvil_status st = be->ops->matmul(be, tx, &tw, NULL, to);
        times[reps++] = anvil_cpu_now_s() - t0;
        if (st != ANVIL_OK) {
            fprintf(stderr, "matmul failed: %s\n", anvil_last_error());
            return -1.0;
        }
    }
    qsort(times, (size_t)reps, sizeof times[0], cmp_double);
    return times[reps / 2];
}

static double median3(double a, double b, double c)
{
    double v[3] = {a, b, c};
    qsort(v, 3, sizeof v[0], cmp_double);
    return v[1];
}

/* GEMV against the streaming read, in GEMV_ROUNDS alternating rounds (the
 * memory bandwidth of a shared VM drifts): GB/s, stream GB/s and their
 * ratio are the medians over the rounds. */
#define GEMV_ROUNDS 3
static int bench_gemv(anvil_backend *be, int n_threads, int64_t K, int64_t N, int quick, result *r)
{
    size_t wbytes = (size_t)(N * K) * 2, stride = (wbytes + 4095) / 4096 * 4096;
    size_t n_bufs = (4 * llc_bytes() + stride - 1) / stride;
    n_bufs = n_bufs < 2 ? 2 : n_bufs;
    char *pool = NULL;
    if (posix_memalign((void **)&pool, 4096, n_bufs * stride) != 0)
        return -1;
    uint64_t rng = 7;
    for (size_t b = 0; b < n_bufs; b++)
        fill_bf16((uint16_t *)(pool + b * stride), (size_t)(N * K), &rng);
    float *x = malloc((size_t)K * 4), *out = malloc((size_t)N * 4);
    for (int64_t k = 0; k < K; k++)
        x[k] = (float)((k * 37) % 101) / 101.0f - 0.5f;
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, K, x), to = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, N, out);
    for (size_t b = 0; b < n_bufs; b++) { /* untimed pass: page tables, clocks */
        anvil_tensor tw = anvil_tensor_2d(ANVIL_DTYPE_BF16, N, K, pool + b * stride);
        be->ops->matmul(be, &tx, &tw, NULL, &to);
    }
    double secs[GEMV_ROUNDS], gbps[GEMV_ROUNDS], stream[GEMV_ROUNDS], ratio[GEMV_ROUNDS];
    for (int i = 0; i < GEMV_ROUNDS; i++) {
        stream[i] = anvil_cpu_stream_read_gbps(wbytes, n_threads);
        secs[i] = time_gemv(be, &tx, &to, pool, stride, n_bufs, K, N, quick ? 0.15 : 0.4);
        if (secs[i] < 0 || stream[i] < 0)
            return -1;
        gbps[i] = (double)wbytes / secs[i] * 1e-9;
        ratio[i] = gbps[i] / stream[i];
    }
    *r = (result){"gemv", 1, K, N, median3(secs[0], secs[1], secs[2]), median3(gbps[0], gbps[1], gbps[2]),
                  median3(stream[0], stream[1], stream[2]), median3(ratio[0], ratio[1], ratio[2]), 0, 0};
    free(x);
    free(out);
    free(pool);
    return 0;
}

static int bench_gemm(anvil_backend *be, double peak, int64_t T, int64_t K, int64_t N, int quick, result *r)
{
    uint16_t *w = malloc((size_t)(N * K) * 2);
    float *x = malloc((size_t)(T * K) * 4), *out = malloc((size_t)(T * N) * 4);
    if (w == NULL || x == NULL || out == NULL)
        return -1;
    uint64_t rng = 9;
    fill_bf16(w, (size_t)(N * K), &rng);
    for (int64_t i = 0; i < T * K; i++)
        x[i] = (float)((i * 37) % 101) / 101.0f - 0.5f;
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, T, K, x), tw = anvil_tensor_2d(ANVIL_DTYPE_BF16, N, K, w);
    anvil_tensor to = anvil_tensor_2d(ANVIL_DTYPE_F32, T, N, out);
    be->ops->matmul(be, &tx, &tw, NULL, &to); /* warm-up */
    double times[64];
    int reps = 0;
    double start = anvil_cpu_now_s(), budget = quick ? 0.3 : 1.0, cpu0 = cpu_now_s();
    while (reps < 64 && (reps < 3 || anvil_cpu_now_s() - start < budget)) {
        double t0 = anvil_cpu_now_s();
        be->ops->matmul(be, &tx, &tw, NULL, &to);
        times[reps++] = anvil_cpu_now_s() - t0;
    }
    double cpu = cpu_now_s() - cpu0;
    qsort(times, (size_t)reps, sizeof times[0], cmp_double);
    double flops = 2.0 * (double)T * (double)K * (double)N;
    *r = (result){"gemm", T, K, N, times[reps / 2], flops / times[reps / 2] * 1e-9, peak,
                  flops / times[reps / 2] * 1e-9 / peak, flops * reps / cpu * 1e-9, 0};
    free(w);
    free(x);
    free(out);
    return 0;
}

/* ---------------------------------------------------------------- quantized
 * The matmul over quantized weights (docs/quantization.md's canonical
 * form; cpu_quant.h): int4 in groups of 128 with zero points and int8 per
 * channel (the int path: int8 activations, integer dot products), fp8 per
 * channel (the f32 path), and bf16 beside them. Each pool slot holds a
 * weight's elements, scales and zero points, rotated as in the GEMV bench
 * so that every call reads them from memory. GB/s counts those bytes. */

typedef enum qkind { QK_U4, QK_I8, QK_F8, QK_BF16, QK_COUNT } qkind;
static const char *const qkind_name[QK_COUNT] = {"int4 g128", "int8", "fp8", "bf16"};

static size_t qk_bytes(qkind k, int64_t N, int64_t K, size_t *sc_off, size_t *z_off)
{
    size_t w = k == QK_U4 ? (size_t)(N * K) / 2 : k == QK_BF16 ? (size_t)(N * K) * 2 : (size_t)(N * K);
    size_t ns = k == QK_U4 ? (size_t)(N * (K / 128)) : (size_t)N;
    *sc_off = (w + 63) / 64 * 64;
    *z_off = *sc_off + (k == QK_BF16 ? 0 : ns * 4);
    return *z_off + (k == QK_U4 ? ns : 0);
}

static int bench_quant(anvil_backend *be, int n_threads, qkind kind, int64_t T, int64_t K, int64_t N, int quick,
                       result *r)
{
    size_t sc_off, z_off, bytes = qk_bytes(kind, N, K, &sc_off, &z_off);
    size_t stride = (bytes + 4095) / 4096 * 4096;
    size_t n_bufs = T > 8 ? 1 : (4 * llc_bytes() + stride - 1) / stride;
    n_bufs = n_bufs < 1 ? 1 : n_bufs;
    char *pool = NULL;
    if (posix_memalign((void **)&pool, 4096, n_bufs * stride) != 0)
        return -1;
    uint64_t rng = 11;
    for (size_t b = 0; b < n_bufs; b++) {
        char *p = pool + b * stride;
        if (kind == QK_BF16)
            fill_bf16((uint16_t *)(void *)p, (size_t)(N * K), &rng);
        else {
            for (size_t i = 0; i < sc_off; i++) { /* fp8: finite values only (no 0x7f / 0xff) */
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                uint8_t v = (uint8_t)(rng >> 56);
                p[i] = (char)(kind == QK_F8 && (v & 0x7f) == 0x7f ? v - 1 : v);
            }
            float *sc = (float *)(void *)(p + sc_off);
            for (size_t i = 0; i < (z_off - sc_off) / 4; i++)
                sc[i] = 0.01f + (float)(i % 7) * 0.001f;
            for (size_t i = z_off; i < bytes; i++)
                p[i] = (char)(i % 16);
        }
    }
    float *x = malloc((size_t)(T * K) * 4), *out = malloc((size_t)(T * N) * 4);
    for (int64_t i = 0; i < T * K; i++)
        x[i] = (float)((i * 37) % 101) / 101.0f - 0.5f;
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, T, K, x), to = anvil_tensor_2d(ANVIL_DTYPE_F32, T, N, out);
    static const anvil_dtype dts[QK_COUNT] = {ANVIL_DTYPE_U4, ANVIL_DTYPE_I8, ANVIL_DTYPE_F8_E4M3, ANVIL_DTYPE_BF16};
    enum { MAX_REPS = 1000 };
    double times[MAX_REPS], secs[GEMV_ROUNDS], stream[GEMV_ROUNDS], cpu = 0.0;
    int total = 0;
    for (int round = -1; round < GEMV_ROUNDS; round++) { /* round -1: untimed (page tables, clocks) */
        if (round >= 0)
            stream[round] = anvil_cpu_stream_read_gbps(bytes, n_threads);
        int reps = 0;
        double start = anvil_cpu_now_s(), budget = round < 0 ? 0.0 : quick ? 0.15 : 0.4, cpu0 = cpu_now_s();
        while (reps < MAX_REPS && (reps < (round < 0 ? (int)n_bufs : 5) || anvil_cpu_now_s() - start < budget)) {
            char *p = pool + ((size_t)reps % n_bufs) * stride;
            anvil_quant q = {.group = kind == QK_U4 ? 128 : 0,
                             .scales = (const float *)(const void *)(p + sc_off),
                             .zeros = kind == QK_U4 ? (const uint8_t *)(p + z_off) : NULL};
            anvil_tensor tw = anvil_tensor_2d(dts[kind], N, K, p);
            tw.quant = kind == QK_BF16 ? NULL : &q;
            double t0 = anvil_cpu_now_s();
            if (be->ops->matmul(be, &tx, &tw, NULL, &to) != ANVIL_OK) {
                fprintf(stderr, "matmul failed: %s\n", anvil_last_error());
                return -1;
            }
            times[reps++] = anvil_cpu_now_s() - t0;
        }
        if (round < 0)
            continue;
        cpu += cpu_now_s() - cpu0;
        total += reps;
        qsort(times, (size_t)reps, sizeof times[0], cmp_double);
        secs[round] = times[reps / 2];
    }
    double sec = median3(secs[0], secs[1], secs[2]), flops = 2.0 * (double)T * (double)K * (double)N;
    const double st = median3(stream[0], stream[1], stream[2]);
    *r = (result){qkind_name[kind], T, K, N, sec, (double)bytes / sec * 1e-9, st, (double)bytes / sec * 1e-9 / st,
                  flops * total / cpu * 1e-9, flops / sec * 1e-9};
    free(x);
    free(out);
    free(pool);
    return 0;
}

/* ---------------------------------------------------------------- option (b)
 * The alternative the int path was measured against (docs/cpu-backend.md,
 * "Quantized weights"), kept here only as an experiment: int4 weights
 * (groups of 128, zero points) dequantized to f32 in registers, w = v * s
 * - z * s (one fma), then f32 fmas with x. x is read in the weights'
 * nibble order (each 32-column block's even columns, then its odd ones),
 * as the int path stores its activations, so no shuffles. AVX2 only. */
#if defined(__x86_64__)
#include <immintrin.h>

typedef struct b_job {
    const uint8_t *w;
    const float *sc;
    const uint8_t *zp;
    const float *x; /* [T, K] in nibble order */
    float *out;
    int64_t T, K, N;
} b_job;

static inline __attribute__((always_inline, target("avx2,fma"))) void b_rows(const int T, const b_job *j, int ith,
                                                                            int nth)
{
    const int64_t K = j->K, G = K / 128;
    int64_t n0, n1;
    anvil_cpu_split(j->N, 4, ith, nth, &n0, &n1);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    for (int64_t n = n0; n < n1; n++) {
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int64_t g = 0; g < G; g++) {
            const float s = j->sc[n * G + g];
            const __m256 sv = _mm256_set1_ps(s), zs = _mm256_set1_ps(-(float)j->zp[n * G + g] * s);
            for (int64_t c = g * 128; c < g * 128 + 128; c += 32) {
                const __m128i by = _mm_loadu_si128((const __m128i *)(const void *)(j->w + (n * K + c) / 2));
                const __m128i lo = _mm_and_si128(by, m4), hi = _mm_and_si128(_mm_srli_epi16(by, 4), m4);
                const __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
#pragma GCC unroll 4
                for (int q = 0; q < 4; q++) {
                    const __m256 wv = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part[q])), sv, zs);
#pragma GCC unroll 4
                    for (int t = 0; t < T; t++)
                        acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(j->x + t * K + c + q * 8), acc[t]);
                }
            }
        }
        for (int64_t t = 0; t < T; t++) {
            float l[8];
            _mm256_storeu_ps(l, acc[t]);
            j->out[t * j->N + n] = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
        }
    }
}

__attribute__((target("avx2,fma"))) static void b_task(void *ctx, int ith, int nth)
{
    const b_job *j = ctx;
    switch (j->T) { /* T a constant: the accumulators in registers */
    case 1: b_rows(1, j, ith, nth); break;
    case 2: b_rows(2, j, ith, nth); break;
    case 3: b_rows(3, j, ith, nth); break;
    default: b_rows(4, j, ith, nth); break;
    }
}

/* Times option (b) on int4 weights as bench_quant times the op (T <= 4). */
static int bench_quant_b(anvil_backend *be, int n_threads, int64_t T, int64_t K, int64_t N, int quick, result *r)
{
    size_t sc_off, z_off, bytes = qk_bytes(QK_U4, N, K, &sc_off, &z_off);
    size_t stride = (bytes + 4095) / 4096 * 4096, n_bufs = (4 * llc_bytes() + stride - 1) / stride;
    char *pool = NULL;
    if (T > 4 || posix_memalign((void **)&pool, 4096, n_bufs * stride) != 0)
        return -1;
    for (size_t i = 0; i < n_bufs * stride; i++)
        pool[i] = (char)((i * 7) % 16);
    for (size_t b = 0; b < n_bufs; b++)
        for (size_t i = sc_off; i < z_off; i += 4)
            *(float *)(void *)(pool + b * stride + i) = 0.01f;
    float *x = malloc((size_t)(T * K) * 4), *out = malloc((size_t)(T * N) * 4);
    for (int64_t i = 0; i < T * K; i++)
        x[i] = (float)((i * 37) % 101) / 101.0f - 0.5f;
    anvil_threadpool *tp = anvil_cpu_impl(be)->pool;
    double times[1000], secs[GEMV_ROUNDS], stream[GEMV_ROUNDS];
    for (int round = -1; round < GEMV_ROUNDS; round++) {
        if (round >= 0)
            stream[round] = anvil_cpu_stream_read_gbps(bytes, n_threads);
        int reps = 0;
        double start = anvil_cpu_now_s(), budget = round < 0 ? 0.0 : quick ? 0.15 : 0.4;
        while (reps < 1000 && (reps < (round < 0 ? (int)n_bufs : 5) || anvil_cpu_now_s() - start < budget)) {
            char *p = pool + ((size_t)reps % n_bufs) * stride;
            b_job j = {(const uint8_t *)p, (const float *)(const void *)(p + sc_off), (const uint8_t *)p + z_off,
                       x, out, T, K, N};
            double t0 = anvil_cpu_now_s();
            anvil_threadpool_run(tp, b_task, &j);
            times[reps++] = anvil_cpu_now_s() - t0;
        }
        if (round < 0)
            continue;
        qsort(times, (size_t)reps, sizeof times[0], cmp_double);
        secs[round] = times[reps / 2];
    }
    const double sec = median3(secs[0], secs[1], secs[2]), st = median3(stream[0], stream[1], stream[2]);
    *r = (result){"int4 (b)", T, K, N, sec, (double)bytes / sec * 1e-9, st, (double)bytes / sec * 1e-9 / st, 0,
                  2.0 * (double)(T * K * N) / sec * 1e-9};
    free(x);
    free(out);
    free(pool);
    return 0;
}
#endif

/* One decode step: n_seqs sequences of ctx cached tokens, one new token
 * each, scattered blocks of 16. Rate: bytes of K and V read per second. */
static int bench_attention(anvil_backend *be, int n_threads, int32_t n_seqs, int32_t ctx, int quick, result *r)
{
    const int32_t H = 32, KVH = 8, hd = 64, bs = 16;
    int32_t blocks_per_seq = (ctx + bs) / bs + 1, n_blocks = n_seqs * blocks_per_seq;
    int64_t kw = (int64_t)KVH * hd, qw = (int64_t)H * hd;
    size_t cache_bytes = (size_t)n_blocks * bs * (size_t)kw * 4;
    float *kc = malloc(cache_bytes), *vc = malloc(cache_bytes);
    float *q = malloc((size_t)(n_seqs * qw) * 4), *k = malloc((size_t)(n_seqs * kw) * 4);
    float *v = malloc((size_t)(n_seqs * kw) * 4), *out = malloc((size_t)(n_seqs * qw) * 4);
    int32_t *pos = malloc((size_t)n_seqs * 4), *seq_of = malloc((size_t)n_seqs * 4), *starts = malloc((size_t)(n_seqs + 1) * 4);
    int32_t *lens = malloc((size_t)n_seqs * 4), *slots = malloc((size_t)n_seqs * 4);
    int32_t *bt = malloc((size_t)n_blocks * 4);
    if (!kc || !vc || !q || !k || !v || !out || !pos || !seq_of || !starts || !lens || !slots || !bt)
        return -1;
    for (size_t i = 0; i < cache_bytes / 4; i++)
        kc[i] = vc[i] = (float)(i % 97) / 97.0f - 0.5f;
    for (int64_t i = 0; i < n_seqs * qw; i++)
        q[i] = (float)(i % 89) / 89.0f - 0.5f;
    for (int64_t i = 0; i < n_seqs * kw; i++)
        k[i] = v[i] = (float)(i % 83) / 83.0f - 0.5f;
    for (int32_t b = 0; b < n_blocks; b++) /* interleaved: scattered over the cache */
        bt[b] = (b % blocks_per_seq) * n_seqs + b / blocks_per_seq;
    for (int32_t s = 0; s < n_seqs; s++) {
        pos[s] = ctx;
        seq_of[s] = s;
        starts[s] = s;
        lens[s] = ctx + 1;
        slots[s] = bt[s * blocks_per_seq + ctx / bs] * bs + ctx % bs;
    }
    starts[n_seqs] = n_seqs;
    anvil_step st = {.n_tokens = n_seqs, .n_seqs = n_seqs, .max_blocks_per_seq = blocks_per_seq, .block_size = bs,
                     .max_context = ctx + 1, .positions = pos, .seq_of_token = seq_of, .seq_starts = starts,
                     .seq_lens = lens, .block_tables = bt, .slots = slots};
    anvil_tensor tq = anvil_tensor_2d(ANVIL_DTYPE_F32, n_seqs, qw, q), tk = anvil_tensor_2d(ANVIL_DTYPE_F32, n_seqs, kw, k);
    anvil_tensor tv = anvil_tensor_2d(ANVIL_DTYPE_F32, n_seqs, kw, v), to = anvil_tensor_2d(ANVIL_DTYPE_F32, n_seqs, qw, out);
    anvil_tensor tkc = {.dtype = ANVIL_DTYPE_F32, .n_dims = 4, .shape = {n_blocks, bs, KVH, hd}, .data = kc};
    anvil_tensor tvc = tkc;
    tvc.data = vc;
    anvil_attention_args a = {.q = &tq, .k = &tk, .v = &tv, .k_cache = &tkc, .v_cache = &tvc, .out = &to,
                              .step = &st, .n_heads = H, .n_kv_heads = KVH, .head_dim = hd, .scale = 0.125f};
    if (be->ops->attention(be, &a) != ANVIL_OK) {
        fprintf(stderr, "attention failed: %s\n", anvil_last_error());
        return -1;
    }
    double times[256];
    int reps = 0;
    double start = anvil_cpu_now_s(), budget = quick ? 0.2 : 0.6;
    while (reps < 256 && (reps < 10 || anvil_cpu_now_s() - start < budget)) {
        double t0 = anvil_cpu_now_s();
        be->ops->attention(be, &a);
        times[reps++] = anvil_cpu_now_s() - t0;
    }
    qsort(times, (size_t)reps, sizeof times[0], cmp_double);
    double kv_bytes = 2.0 * (double)n_seqs * (ctx + 1) * (double)kw * 4;
    double stream = anvil_cpu_stream_read_gbps((size_t)kv_bytes, n_threads);
    *r = (result){"attention", n_seqs, ctx, 0, times[reps / 2], kv_bytes / times[reps / 2] * 1e-9, stream,
                  kv_bytes / times[reps / 2] * 1e-9 / stream, 0, 0};
    free(kc);
    free(vc);
    free(q);
    free(k);
    free(v);
    free(out);
    free(pos);
    free(seq_of);
    free(starts);
    free(lens);
    free(slots);
    free(bt);
    return 0;
}

int main(int argc, char **argv)
{
    int n_threads = 0, quick = 0;
    int64_t only_t = 0;
    long long qshape_k = 0, qshape_n = 0; /* --shape: the quantized runs at this K, N only */
    const char *json = NULL, *only = "";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            n_threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc)
            only = argv[++i];
        else if (strcmp(argv[i], "--tokens") == 0 && i + 1 < argc)
            only_t = atoll(argv[++i]);
        else if (strcmp(argv[i], "--shape") == 0 && i + 1 < argc) {
            if (sscanf(argv[++i], "%lld,%lld", &qshape_k, &qshape_n) != 2 || qshape_k <= 0 || qshape_n <= 0) {
                fprintf(stderr, "--shape K,N: two positive sizes\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--json") == 0 && i + 1 < argc)
            json = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--threads N] [--quick] [--only gemv|gemm|attn|quant] [--tokens T] [--shape K,N] [--json FILE]\n", argv[0]);
            return 2;
        }
    }
    anvil_backend *be = NULL;
    if (anvil_backend_cpu_create(n_threads, &be) != ANVIL_OK) {
        fprintf(stderr, "error: %s\n", anvil_last_error());
        return 1;
    }
    anvil_cpu_backend *cb = anvil_cpu_impl(be);
    n_threads = cb->n_threads;
    double peak = anvil_cpu_fma_peak_gflops(n_threads);
    printf("anvil CPU kernels: %d threads, %s code path, FMA peak %.1f GFLOP/s (measured)\n\n", n_threads,
           anvil_cpu_isa_name(cb->isa), peak);

    static const int64_t gemv_shapes[][2] = {{2048, 2048}, {2048, 512}, {2048, 8192}, {8192, 2048}, {2048, 128256}};
    static const int64_t gemm_shapes[][2] = {{2048, 2048}, {2048, 512}, {2048, 8192}, {8192, 2048}};
    static const int64_t gemm_tokens[] = {16, 128, 512};
    result res[120];
    int n_res = 0;

    printf("GEMV, T = 1, bf16 weights (GB/s of weights; stream = plain read of the same bytes, same threads;\n"
           "medians of %d alternating rounds)\n", GEMV_ROUNDS);
    printf("%8s %8s %10s %10s %10s %10s %8s\n", "K", "N", "MB", "us", "GB/s", "stream", "%");
    for (size_t i = 0; strcmp(only, "gemm") != 0 && strcmp(only, "attn") != 0 && strcmp(only, "quant") != 0 && i < sizeof gemv_shapes / sizeof gemv_shapes[0]; i++) {
        result *r = &res[n_res];
        if (bench_gemv(be, n_threads, gemv_shapes[i][0], gemv_shapes[i][1], quick, r) != 0)
            return 1;
        n_res++;
        printf("%8lld %8lld %10.1f %10.1f %10.2f %10.2f %7.1f%%\n", (long long)r->K, (long long)r->N,
               (double)(r->K * r->N * 2) / 1e6, r->seconds * 1e6, r->rate, r->ceiling, 100 * r->ratio);
        fflush(stdout);
    }
    printf("\nGEMM, bf16 weights (GFLOP/s; peak = measured FMA peak, same threads;\n"
           "cpu = GFLOP per CPU-second of the process: one core's FMA peak is the peak / threads when\n"
           "measured on an idle machine)\n");
    printf("%8s %8s %8s %10s %10s %8s %10s\n", "T", "K", "N", "ms", "GFLOP/s", "%peak", "cpu");
    for (size_t t = 0; strcmp(only, "gemv") != 0 && strcmp(only, "attn") != 0 && strcmp(only, "quant") != 0 && t < sizeof gemm_tokens / sizeof gemm_tokens[0]; t++)
        for (size_t i = 0; (only_t == 0 || only_t == gemm_tokens[t]) && i < sizeof gemm_shapes / sizeof gemm_shapes[0]; i++) {
            result *r = &res[n_res];
            if (bench_gemm(be, peak, gemm_tokens[t], gemm_shapes[i][0], gemm_shapes[i][1], quick, r) != 0)
                return 1;
            n_res++;
            printf("%8lld %8lld %8lld %10.2f %10.1f %7.1f%% %10.1f\n", (long long)r->T, (long long)r->K,
                   (long long)r->N, r->seconds * 1e3, r->rate, 100 * r->rate / r->ceiling, r->cpu_rate);
            fflush(stdout);
        }

    static const int64_t quant_tokens[] = {1, 2, 4, 16, 128};
    const int do_quant = strcmp(only, "quant") == 0 || only[0] == 0;
    if (do_quant) {
        printf("\nQuantized weights (GB/s of weight bytes incl. scales and zero points; stream = a plain read of\n"
               "the same bytes; medians of %d alternating rounds; cpu = GFLOP per CPU-second)\n", GEMV_ROUNDS);
        printf("%10s %5s %6s %7s %10s %8s %8s %9s %8s\n", "weights", "T", "K", "N", "us", "GB/s", "stream",
               "GFLOP/s", "cpu");
    }
    const size_t n_qshapes = qshape_k > 0 ? 1 : sizeof gemv_shapes / sizeof gemv_shapes[0];
    for (size_t t = 0; do_quant && t < sizeof quant_tokens / sizeof quant_tokens[0]; t++)
        for (size_t i = 0; (only_t == 0 || only_t == quant_tokens[t]) && i < n_qshapes; i++)
            for (int k = 0; k < QK_COUNT; k++) {
                const int64_t K = qshape_k > 0 ? qshape_k : gemv_shapes[i][0];
                const int64_t N = qshape_k > 0 ? qshape_n : gemv_shapes[i][1];
                if (quant_tokens[t] > 4 && N > 8192)
                    continue; /* the LM head: decode only */
                result *r = &res[n_res < 119 ? n_res++ : n_res];
                if (bench_quant(be, n_threads, (qkind)k, quant_tokens[t], K, N, quick, r) != 0)
                    return 1;
                printf("%10s %5lld %6lld %7lld %10.1f %8.2f %8.2f %9.1f %8.1f\n", r->kind, (long long)r->T,
                       (long long)r->K, (long long)r->N, r->seconds * 1e6, r->rate, r->ceiling, r->gflops,
                       r->cpu_rate);
                fflush(stdout);
#if defined(__x86_64__)
                if (k == QK_U4 && quant_tokens[t] <= 4 && K % 128 == 0 && cb->isa >= ANVIL_CPU_ISA_AVX2) {
                    r = &res[n_res < 119 ? n_res++ : n_res];
                    if (bench_quant_b(be, n_threads, quant_tokens[t], K, N, quick, r) != 0)
                        return 1;
                    printf("%10s %5lld %6lld %7lld %10.1f %8.2f %8.2f %9.1f %8s\n", r->kind, (long long)r->T,
                           (long long)r->K, (long long)r->N, r->seconds * 1e6, r->rate, r->ceiling, r->gflops, "-");
                    fflush(stdout);
                }
#endif
            }

    static const int32_t attn_cases[][2] = {{1, 512}, {1, 4096}, {8, 512}, {8, 4096}};
    if (strcmp(only, "gemv") != 0 && strcmp(only, "gemm") != 0 && strcmp(only, "quant") != 0) {
        printf("\nDecode attention, 32 heads / 8 kv heads x 64, f32 cache (GB/s of K/V read; stream = same bytes)\n");
        printf("%8s %8s %10s %10s %10s %10s %8s\n", "seqs", "context", "MB", "us", "GB/s", "stream", "%");
    }
    for (size_t i = 0; strcmp(only, "gemv") != 0 && strcmp(only, "gemm") != 0 && strcmp(only, "quant") != 0 && i < 4; i++) {
        result *r = &res[n_res];
        if (bench_attention(be, n_threads, attn_cases[i][0], attn_cases[i][1], quick, r) != 0)
            return 1;
        n_res++;
        double mb = 2.0 * (double)r->T * (double)(r->K + 1) * 512 * 4 / 1e6;
        printf("%8lld %8lld %10.1f %10.1f %10.2f %10.2f %7.1f%%\n", (long long)r->T, (long long)r->K, mb,
               r->seconds * 1e6, r->rate, r->ceiling, 100 * r->rate / r->ceiling);
        fflush(stdout);
    }

    if (json != NULL) {
        FILE *f = fopen(json, "w");
        if (f == NULL) {
            fprintf(stderr, "cannot write %s\n", json);
            return 1;
        }
        fprintf(f, "{\"threads\": %d, \"isa\": \"%s\", \"fma_peak_gflops\": %.2f, \"results\": [\n", n_threads,
                anvil_cpu_isa_name(cb->isa), peak);
        for (int i = 0; i < n_res; i++) {
            const result *r = &res[i];
            int gemv = strcmp(r->kind, "gemm") != 0;
            fprintf(f,
                    "  {\"kind\": \"%s\", \"T\": %lld, \"K\": %lld, \"N\": %lld, \"seconds\": %.9f, \"%s\": %.3f, "
                    "\"%s\": %.3f, \"ratio\": %.4f, \"gflops_per_cpu_s\": %.3f, \"gflops\": %.3f}%s\n",
                    r->kind, (long long)r->T, (long long)r->K, (long long)r->N, r->seconds,
                    gemv ? "gbps" : "gflops", r->rate, gemv ? "stream_gbps" : "peak_gflops", r->ceiling, r->ratio,
                    r->cpu_rate, r->gflops != 0 ? r->gflops : gemv ? 0 : r->rate, i + 1 < n_res ? "," : "");
        }
        fprintf(f, "]}\n");
        fclose(f);
    }
    anvil_backend_free(be);
    return 0;
}
