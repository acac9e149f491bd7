/* Measured ceilings of the machine (see cpu_bench.h): streaming read
 * bandwidth and FMA peak, with the same thread pool the backend uses. */
#include "backend/cpu/cpu_bench.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backend/cpu/cpu_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

double anvil_cpu_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------------------------------------------------------------- read */

/* Each thread reads its range as READ_STREAMS contiguous pieces side by
 * side, one cache line of each per step: one sequential stream per core
 * leaves memory bandwidth unused on many machines (the hardware prefetcher
 * tracks several streams, and a GEMV reads several weight rows at once), and
 * the ceiling should be the best a plain read can do. */
#define READ_STREAMS 8

static uint64_t read_tail(const char *p, size_t n)
{
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++)
        s += (unsigned char)p[i];
    return s;
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static uint64_t read_avx512(const char *p, size_t n)
{
    size_t per = n / READ_STREAMS / 64 * 64;
    __m512i acc[READ_STREAMS];
    for (int s = 0; s < READ_STREAMS; s++)
        acc[s] = _mm512_setzero_si512();
    for (size_t i = 0; i < per; i += 64)
#pragma GCC unroll 8
        for (int s = 0; s < READ_STREAMS; s++)
            acc[s] = _mm512_add_epi32(acc[s], _mm512_loadu_si512(p + (size_t)s * per + i));
    for (int s = 1; s < READ_STREAMS; s++)
        acc[0] = _mm512_add_epi32(acc[0], acc[s]);
    return (uint64_t)(uint32_t)_mm512_reduce_add_epi32(acc[0]) + read_tail(p + READ_STREAMS * per, n - READ_STREAMS * per);
}

__attribute__((target("avx2"))) static uint64_t read_avx2(const char *p, size_t n)
{
    size_t per = n / READ_STREAMS / 64 * 64;
    __m256i acc[READ_STREAMS];
    for (int s = 0; s < READ_STREAMS; s++)
        acc[s] = _mm256_setzero_si256();
    for (size_t i = 0; i < per; i += 64)
#pragma GCC unroll 8
        for (int s = 0; s < READ_STREAMS; s++) {
            const char *q = p + (size_t)s * per + i;
            acc[s] = _mm256_add_epi32(acc[s], _mm256_loadu_si256((const __m256i *)q));
            acc[s] = _mm256_add_epi32(acc[s], _mm256_loadu_si256((const __m256i *)(q + 32)));
        }
    for (int s = 1; s < READ_STREAMS; s++)
        acc[0] = _mm256_add_epi32(acc[0], acc[s]);
    uint32_t lanes[8];
    _mm256_storeu_si256((__m256i *)lanes, acc[0]);
    uint64_t sum = 0;
    for (int l = 0; l < 8; l++)
        sum += lanes[l];
    return sum + read_tail(p + READ_STREAMS * per, n - READ_STREAMS * per);
}
#endif

static uint64_t read_scalar(const char *p, size_t n)
{
    size_t per = n / READ_STREAMS / 8 * 8;
    uint64_t acc[READ_STREAMS] = {0}, v;
    for (size_t i = 0; i < per; i += 8)
        for (int s = 0; s < READ_STREAMS; s++) {
            memcpy(&v, p + (size_t)s * per + i, 8);
            acc[s] += v;
        }
    uint64_t sum = 0;
    for (int s = 0; s < READ_STREAMS; s++)
        sum += acc[s];
    return sum + read_tail(p + READ_STREAMS * per, n - READ_STREAMS * per);
}

typedef struct read_job {
    const char *buf;
    size_t bytes;
    anvil_cpu_isa isa;
    uint64_t sink[64]; /* one per thread, spaced a line apart */
} read_job;

static void read_task(void *ctx, int ith, int nth)
{
    read_job *job = ctx;
    int64_t lo, hi;
    anvil_cpu_split((int64_t)job->bytes, 4096, ith, nth, &lo, &hi);
    uint64_t s;
#if defined(__x86_64__)
    if (job->isa == ANVIL_CPU_ISA_AVX512)
        s = read_avx512(job->buf + lo, (size_t)(hi - lo));
    else if (job->isa == ANVIL_CPU_ISA_AVX2)
        s = read_avx2(job->buf + lo, (size_t)(hi - lo));
    else
#endif
        s = read_scalar(job->buf + lo, (size_t)(hi - lo));
    job->sink[(ith * 8) % 64] += s;
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

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double anvil_cpu_stream_read_gbps(size_t bytes, int n_threads)
{
    if (bytes == 0)
        return -1.0;
    size_t stride = (bytes + 4095) / 4096 * 4096;
    size_t n_bufs = (4 * llc_bytes() + stride - 1) / stride;
    n_bufs = n_bufs < 2 ? 2 : n_bufs;
    char *pool_mem = NULL;
    if (posix_memalign((void **)&pool_mem, 4096, n_bufs * stride) != 0)
        return -1.0;
    memset(pool_mem, 1, n_bufs * stride); /* fault every page in */
    anvil_threadpool *tp = NULL;
    if (anvil_threadpool_create(n_threads, &tp) != ANVIL_OK) {
        free(pool_mem);
        return -1.0;
    }
    read_job *job = calloc(1, sizeof *job);
    if (job == NULL) {
        anvil_threadpool_free(tp);
        free(pool_mem);
        return -1.0;
    }
    job->bytes = bytes;
    job->isa = anvil_cpu_isa_best();
    /* one untimed pass over the pool, then at least 15 calls and 0.3 s */
    for (size_t b = 0; b < n_bufs; b++) {
        job->buf = pool_mem + b * stride;
        anvil_threadpool_run(tp, read_task, job);
    }
    enum { MAX_REPS = 2000 };
    double *gbps = malloc(MAX_REPS * sizeof *gbps);
    int reps = 0;
    double start = anvil_cpu_now_s();
    while (gbps != NULL && reps < MAX_REPS && (reps < 15 || anvil_cpu_now_s() - start < 0.3)) {
        job->buf = pool_mem + ((size_t)reps % n_bufs) * stride;
        double t0 = anvil_cpu_now_s();
        anvil_threadpool_run(tp, read_task, job);
        gbps[reps++] = (double)bytes / (anvil_cpu_now_s() - t0) * 1e-9;
    }
    double med = -1.0;
    if (gbps != NULL) {
        qsort(gbps, (size_t)reps, sizeof *gbps, cmp_double);
        med = gbps[reps / 2];
    }
    free(gbps);
    free(job);
    anvil_threadpool_free(tp);
    free(pool_mem);
    return med;
}

/* ---------------------------------------------------------------- FMA peak */

#define PEAK_ITERS 20000000L /* ~50 ms a run: long enough for AVX-512 clocks to settle */

typedef struct peak_job {
    anvil_cpu_isa isa;
    float sink[64];
} peak_job;

#if defined(__x86_64__)
/* 12 independent chains: enough to cover 4-cycle latency on 2 FMA ports. */
__attribute__((target("avx512f"))) static float peak_avx512(float seed)
{
    __m512 a[12], m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++)
        a[i] = _mm512_set1_ps(seed + (float)i);
    for (long it = 0; it < PEAK_ITERS; it++)
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++)
            a[i] = _mm512_fmadd_ps(a[i], m, c);
    __m512 s = a[0];
    for (int i = 1; i < 12; i++)
        s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) static float peak_avx2(float seed)
{
    __m256 a[12], m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++)
        a[i] = _mm256_set1_ps(seed + (float)i);
    for (long it = 0; it < PEAK_ITERS; it++)
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++)
            a[i] = _mm256_fmadd_ps(a[i], m, c);
    float out[8], s = 0;
    for (int i = 1; i < 12; i++)
        a[0] = _mm256_add_ps(a[0], a[i]);
    _mm256_storeu_ps(out, a[0]);
    for (int l = 0; l < 8; l++)
        s += out[l];
    return s;
}
#endif

static float peak_scalar(float seed)
{
    float a[12];
    for (int i = 0; i < 12; i++)
        a[i] = seed + (float)i;
    for (long it = 0; it < PEAK_ITERS / 16; it++)
        for (int i = 0; i < 12; i++)
            a[i] = fmaf(a[i], 0.999999f, 1e-7f);
    float s = 0;
    for (int i = 0; i < 12; i++)
        s += a[i];
    return s;
}

static void peak_task(void *ctx, int ith, int nth)
{
    (void)nth;
    peak_job *job = ctx;
    float s;
#if defined(__x86_64__)
    if (job->isa == ANVIL_CPU_ISA_AVX512)
        s = peak_avx512((float)ith);
    else if (job->isa == ANVIL_CPU_ISA_AVX2)
        s = peak_avx2((float)ith);
    else
#endif
        s = peak_scalar((float)ith);
    job->sink[(ith * 16) % 64] += s;
}

double anvil_cpu_fma_peak_gflops(int n_threads)
{
    anvil_threadpool *tp = NULL;
    if (anvil_threadpool_create(n_threads, &tp) != ANVIL_OK)
        return -1.0;
    peak_job job = {.isa = anvil_cpu_isa_best()};
    double lanes = job.isa == ANVIL_CPU_ISA_AVX512 ? 16 : job.isa == ANVIL_CPU_ISA_AVX2 ? 8 : 1;
    double iters = job.isa == ANVIL_CPU_ISA_SCALAR ? (double)(PEAK_ITERS / 16) : (double)PEAK_ITERS;
    double best = 0.0;
    for (int rep = 0; rep < 5; rep++) { /* the first also wakes the clocks up */
        double t0 = anvil_cpu_now_s();
        anvil_threadpool_run(tp, peak_task, &job);
        double dt = anvil_cpu_now_s() - t0;
        double gflops = anvil_threadpool_size(tp) * iters * 12.0 * lanes * 2.0 / dt * 1e-9;
        best = gflops > best ? gflops : best;
    }
    anvil_threadpool_free(tp);
    return best;
}
