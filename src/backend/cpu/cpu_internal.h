/*
 * cpu_internal.h: what the CPU backend's files share (not part of any
 * public interface; tests include it to reach the kernels directly).
 *
 * The backend keeps one thread pool and one scratch arena. Ops are not
 * reentrant: one op at a time per backend (the runtime runs one step at a
 * time), which is what lets the scratch and the pool be shared.
 *
 * Arithmetic contract (batch invariance, see docs/cpu-backend.md): every
 * dot product of the optimized kernels is the "dot16" defined below, on
 * every instruction set, so results are bitwise identical whatever T, the
 * row's place in the batch, the thread count or the ISA chosen.
 */
#ifndef ANVIL_BACKEND_CPU_INTERNAL_H
#define ANVIL_BACKEND_CPU_INTERNAL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "backend/backend.h"
#include "core/threadpool.h"

/* Set under AddressSanitizer (GCC or clang): the kernels then skip forced
 * unrolling and inlining, which only buys speed and makes the instrumented
 * build very slow to compile. The arithmetic is the same either way. */
#if defined(__SANITIZE_ADDRESS__)
#define ANVIL_CPU_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ANVIL_CPU_SANITIZED 1
#endif
#endif

/* Code paths, best last. The backend picks the best the CPU supports. */
typedef enum anvil_cpu_isa {
    ANVIL_CPU_ISA_SCALAR = 0, /* portable C (fmaf), any architecture */
    ANVIL_CPU_ISA_AVX2,       /* AVX2 + FMA + F16C */
    ANVIL_CPU_ISA_AVX512,     /* AVX-512 F/BW/VL */
    ANVIL_CPU_ISA_COUNT,
} anvil_cpu_isa;

/* The best ISA this CPU runs, and whether it runs a given one. */
anvil_cpu_isa anvil_cpu_isa_best(void);
int anvil_cpu_isa_supported(anvil_cpu_isa isa);
const char *anvil_cpu_isa_name(anvil_cpu_isa isa);

/*
 * The CPU backend with a chosen code path (tests compare paths with each
 * other). ANVIL_ERR_UNSUPPORTED if this CPU cannot run isa.
 */
anvil_status anvil_backend_cpu_create_isa(int n_threads, anvil_cpu_isa isa, anvil_backend **out);

typedef struct anvil_cpu_backend {
    anvil_threadpool *pool; /* owned */
    int n_threads;
    anvil_cpu_isa isa;
    void *scratch;          /* owned, 64-byte aligned, n_threads * scratch_stride bytes */
    size_t scratch_bytes;
    size_t scratch_stride;  /* bytes per thread, a multiple of 64 */
} anvil_cpu_backend;

static inline anvil_cpu_backend *anvil_cpu_impl(anvil_backend *be) { return (anvil_cpu_backend *)be->impl; }

/* Makes sure each thread has bytes_per_thread bytes of scratch (64-byte
 * aligned) at scratch + ith * scratch_stride. Grows, never shrinks. */
anvil_status anvil_cpu_scratch_reserve(anvil_cpu_backend *cb, size_t bytes_per_thread);

static inline void *anvil_cpu_scratch_at(anvil_cpu_backend *cb, int ith)
{
    return (char *)cb->scratch + (size_t)ith * cb->scratch_stride;
}

/* ---------------------------------------------------------------- elements */

static inline int anvil_cpu_is_float_dtype(anvil_dtype dt)
{
    return dt == ANVIL_DTYPE_F32 || dt == ANVIL_DTYPE_BF16 || dt == ANVIL_DTYPE_F16;
}

/* Element i of a F32/BF16/F16 (or F8_E4M3, unscaled) array as float.
 * memcpy because weights point into an mmap'd file and may be only 2-byte
 * aligned. */
static inline float anvil_cpu_load_elem(const void *base, anvil_dtype dt, int64_t i)
{
    if (dt == ANVIL_DTYPE_F32) {
        float f;
        memcpy(&f, (const char *)base + i * 4, 4);
        return f;
    }
    if (dt == ANVIL_DTYPE_F8_E4M3)
        return anvil_fp8_e4m3_to_f32(((const uint8_t *)base)[i]);
    uint16_t h;
    memcpy(&h, (const char *)base + i * 2, 2);
    return dt == ANVIL_DTYPE_BF16 ? anvil_bf16_to_f32(h) : anvil_f16_to_f32(h);
}

/* Stores f as element i of a F32/BF16/F16 (or F8_E4M3: saturating) array
 * (round to nearest even). */
static inline void anvil_cpu_store_elem(void *base, anvil_dtype dt, int64_t i, float f)
{
    if (dt == ANVIL_DTYPE_F32) {
        memcpy((char *)base + i * 4, &f, 4);
        return;
    }
    if (dt == ANVIL_DTYPE_F8_E4M3) {
        ((uint8_t *)base)[i] = anvil_f32_to_fp8_e4m3(f);
        return;
    }
    uint16_t h = dt == ANVIL_DTYPE_BF16 ? anvil_f32_to_bf16(f) : anvil_f32_to_f16(f);
    memcpy((char *)base + i * 2, &h, 2);
}

/* An fp8 KV cache's scale as attention uses it (anvil_attention_args:
 * 0 means 1); 1 for the other cache dtypes, which are not scaled. */
static inline float anvil_cpu_kv_scale(anvil_dtype cache_dt, float s)
{
    return cache_dt == ANVIL_DTYPE_F8_E4M3 && s != 0.0f ? s : 1.0f;
}

/* ---------------------------------------------------------------- validation
 * Shared by the reference and the optimized ops so both accept exactly the
 * same arguments. Each returns ANVIL_ERR_INVALID_ARG (shapes, ranges) or
 * ANVIL_ERR_UNSUPPORTED (a dtype the CPU backend does not handle). */

anvil_status anvil_cpu_check_embedding(const anvil_tensor *table, const anvil_step *step, const anvil_tensor *out);
/* The same for a vocabulary slice from first_id: any id >= 0 (outside the
 * slice: zeros). */
anvil_status anvil_cpu_check_embedding_part(const anvil_tensor *table, int64_t first_id, const anvil_step *step,
                                            const anvil_tensor *out);
anvil_status anvil_cpu_check_rmsnorm(const anvil_tensor *x, const anvil_tensor *w, int64_t width, const anvil_tensor *out);
anvil_status anvil_cpu_check_matmul(const anvil_tensor *x, const anvil_tensor *w, const anvil_tensor *bias,
                                    const anvil_tensor *out);
anvil_status anvil_cpu_check_rope(const anvil_tensor *x, const anvil_step *step, int32_t head_dim,
                                  const anvil_rope_freqs *f);
/* Also checks every slot, position and block-table entry the op will use. */
anvil_status anvil_cpu_check_attention(const anvil_attention_args *a);
anvil_status anvil_cpu_check_binary(const anvil_tensor *a, const anvil_tensor *b, const anvil_tensor *out);
/* Also checks every slot, position and block-table entry the op will use. */
anvil_status anvil_cpu_check_mla(const anvil_mla_args *a);
/* x and out (which may alias) f32 activations of one shape; what names the op */
anvil_status anvil_cpu_check_unary(const anvil_tensor *x, const anvil_tensor *out, const char *what);
anvil_status anvil_cpu_check_layernorm(const anvil_tensor *x, const anvil_tensor *w, const anvil_tensor *b,
                                       float eps, const anvil_tensor *out);
anvil_status anvil_cpu_check_pos_embedding(const anvil_tensor *x, const anvil_tensor *table, const anvil_step *step,
                                           const anvil_tensor *out);
anvil_status anvil_cpu_check_gather_rows(const anvil_tensor *x, const anvil_step *step, const anvil_tensor *out);

/* The inverse frequencies token t of step rotates with: LongRoPE's long
 * table when its sequence is longer than f->long_after after the step. */
static inline const float *anvil_cpu_rope_table(const anvil_rope_freqs *f, const anvil_step *step, int32_t t)
{
    if (f->inv_freq_long != NULL && step->seq_lens[step->seq_of_token[t]] > f->long_after)
        return f->inv_freq_long;
    return f->inv_freq;
}

/* What cos and sin are multiplied by (0 in anvil_rope_freqs means none). */
static inline float anvil_cpu_rope_scale(const anvil_rope_freqs *f) { return f->scale == 0.0f ? 1.0f : f->scale; }

/* GELU, tanh approximation (PyTorch's approximate="tanh"), in f32: the
 * reference and the op compute it with this one function. */
static inline float anvil_cpu_gelu_tanh(float g)
{
    const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
    return 0.5f * g * (1.0f + tanhf(k * (g + 0.044715f * g * g * g)));
}

/* A soft-capped score: tanhf(s / cap) * cap, or s when cap is 0 (none). */
static inline float anvil_cpu_softcap_score(float s, float cap)
{
    return cap > 0.0f ? tanhf(s / cap) * cap : s;
}

/* The first cached position a query at position p attends to. */
static inline int32_t anvil_cpu_window_lo(int32_t p, int32_t window)
{
    return window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
}

/* ---------------------------------------------------------------- kernels
 * One set per ISA (cpu_kernels_*.c instantiate cpu_matmul_tmpl.h and
 * cpu_attention_tmpl.h with that ISA's 16-lane vector primitives). */

typedef struct anvil_cpu_mm {
    const float *x;      /* [T, K], row stride K */
    const void *w;       /* [N, K] of wdt, may be 2-byte aligned */
    anvil_dtype wdt;
    const void *bias;    /* [N] of bias_dt, or NULL */
    anvil_dtype bias_dt;
    float *out;          /* [T, N] */
    int64_t T, K, N;
} anvil_cpu_mm;

/* The tile sizes of one ISA's matmul (the driver splits work in units of
 * them, which changes only which elements are computed together). */
typedef struct anvil_cpu_mm_shape {
    int gemv_max_t;   /* T up to this streams the weights directly */
    int gemv_rows;    /* weight rows per GEMV thread-split unit (a multiple of every GEMV tile) */
    int gemm_rows;    /* weight rows per converted panel */
    int gemm_tokens;  /* tokens per GEMM tile */
    size_t (*gemm_scratch)(int64_t K); /* scratch of an ISA's own GEMM driver (T > gemv_max_t), or NULL */
} anvil_cpu_mm_shape;

/* Computes out[t0:t1, n0:n1]. scratch: anvil_cpu_mm_scratch_bytes(),
 * 64-byte aligned (used when T > gemv_max_t). */
static inline size_t anvil_cpu_mm_scratch_bytes(const anvil_cpu_mm_shape *sh, int64_t K)
{
    size_t kp = ((size_t)K + 15) / 16 * 16 + 16; /* + the padding of mm_panel_ld() */
    if (sh->gemm_scratch != NULL)
        return sh->gemm_scratch(K);
    return (size_t)sh->gemm_rows * kp * sizeof(float);
}

typedef void (*anvil_cpu_mm_fn)(const anvil_cpu_mm *m, int64_t t0, int64_t t1, int64_t n0, int64_t n1,
                                float *scratch);

/* One attention work item: every query head of kv head g for token t.
 * The k/v cache rows are already written. scratch: see
 * anvil_cpu_attention_scratch_bytes(). */
typedef void (*anvil_cpu_attn_fn)(const anvil_attention_args *a, int32_t t, int32_t g, void *scratch);

/* Scratch one attention work item needs with contexts up to n_ctx. */
size_t anvil_cpu_attention_scratch_bytes(int32_t group, int32_t n_ctx);

typedef struct anvil_cpu_kernels {
    anvil_cpu_mm_shape mm_shape;
    anvil_cpu_mm_fn matmul;
    anvil_cpu_attn_fn attention;
} anvil_cpu_kernels;

extern const anvil_cpu_kernels anvil_cpu_kernels_scalar;
#if defined(__x86_64__)
extern const anvil_cpu_kernels anvil_cpu_kernels_avx2;
extern const anvil_cpu_kernels anvil_cpu_kernels_avx512;
#endif

const anvil_cpu_kernels *anvil_cpu_kernels_for(anvil_cpu_isa isa);

/* ---------------------------------------------------------------- ops */

anvil_status anvil_cpu_op_embedding(anvil_backend *be, const anvil_tensor *table, const anvil_step *step,
                                    anvil_tensor *out);
anvil_status anvil_cpu_op_embedding_part(anvil_backend *be, const anvil_tensor *table, int64_t first_id,
                                         const anvil_step *step, anvil_tensor *out);
anvil_status anvil_cpu_op_rmsnorm(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w, float eps,
                                  float w_offset, anvil_tensor *out);
anvil_status anvil_cpu_op_head_rmsnorm(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w,
                                       int32_t head_dim, float eps, anvil_tensor *out);
anvil_status anvil_cpu_op_matmul(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w,
                                 const anvil_tensor *bias, anvil_tensor *out);
anvil_status anvil_cpu_op_rope(anvil_backend *be, anvil_tensor *x, const anvil_step *step, int32_t head_dim,
                               const anvil_rope_freqs *f);
anvil_status anvil_cpu_op_attention(anvil_backend *be, const anvil_attention_args *args);
anvil_status anvil_cpu_op_silu_mul(anvil_backend *be, const anvil_tensor *gate, const anvil_tensor *up,
                                   anvil_tensor *out);
anvil_status anvil_cpu_op_add(anvil_backend *be, const anvil_tensor *a, const anvil_tensor *b, anvil_tensor *out);
/* cpu_activation.c */
anvil_status anvil_cpu_op_gelu_tanh_mul(anvil_backend *be, const anvil_tensor *gate, const anvil_tensor *up,
                                        anvil_tensor *out);
anvil_status anvil_cpu_op_scale(anvil_backend *be, const anvil_tensor *x, float c, anvil_tensor *out);
anvil_status anvil_cpu_op_softcap(anvil_backend *be, const anvil_tensor *x, float cap, anvil_tensor *out);
/* cpu_layernorm.c: GPT-2's layernorm, gelu_tanh, pos_embedding */
anvil_status anvil_cpu_op_layernorm(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w,
                                    const anvil_tensor *b, float eps, anvil_tensor *out);
anvil_status anvil_cpu_op_gelu_tanh(anvil_backend *be, const anvil_tensor *x, anvil_tensor *out);
anvil_status anvil_cpu_op_pos_embedding(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *table,
                                        const anvil_step *step, anvil_tensor *out);
/* cpu_fused.c */
anvil_status anvil_cpu_op_add_rmsnorm(anvil_backend *be, const anvil_tensor *a, const anvil_tensor *b,
                                      const anvil_tensor *w, float eps, anvil_tensor *sum, anvil_tensor *norm);
anvil_status anvil_cpu_op_matmul_multi(anvil_backend *be, const anvil_tensor *x, int n, const anvil_tensor *const *w,
                                       const anvil_tensor *const *bias, anvil_tensor *const *out);
anvil_status anvil_cpu_op_matmul_silu_mul(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *wg,
                                          const anvil_tensor *bg, const anvil_tensor *wu, const anvil_tensor *bu,
                                          anvil_tensor *gate, anvil_tensor *up, anvil_tensor *out);
anvil_status anvil_cpu_op_add_rmsnorm_matmul_multi(anvil_backend *be, const anvil_tensor *a, const anvil_tensor *b,
                                                  const anvil_tensor *norm_w, float eps, anvil_tensor *sum,
                                                  anvil_tensor *x, int n, const anvil_tensor *const *w,
                                                  const anvil_tensor *const *bias, anvil_tensor *const *out);
anvil_status anvil_cpu_op_add_rmsnorm_matmul_silu_mul(anvil_backend *be, const anvil_tensor *a,
                                                     const anvil_tensor *b, const anvil_tensor *norm_w, float eps,
                                                     anvil_tensor *sum, anvil_tensor *x, const anvil_tensor *wg,
                                                     const anvil_tensor *bg, const anvil_tensor *wu,
                                                     const anvil_tensor *bu, anvil_tensor *gate, anvil_tensor *up,
                                                     anvil_tensor *out);
anvil_status anvil_cpu_attention_with_rope(anvil_backend *be, const anvil_attention_args *args);
anvil_status anvil_cpu_op_gather_rows(anvil_backend *be, const anvil_tensor *x, const anvil_step *step,
                                      anvil_tensor *out);
/* sample_rows through the host sampler, a row per thread (cpu_sample.c) */
anvil_status anvil_cpu_op_sample_rows(anvil_backend *be, const anvil_tensor *x, const anvil_sample_draw *draws,
                                      const anvil_sample_masks *masks, int32_t *ids);
/* resolve_tokens (backend.h), in cpu_sample.c */
anvil_status anvil_cpu_op_resolve_tokens(anvil_backend *be, const anvil_step *step, const int32_t *prev_ids);
/* cpu_moe.c */
anvil_status anvil_cpu_op_moe(anvil_backend *be, const anvil_moe_args *args);
anvil_status anvil_cpu_op_mla(anvil_backend *be, const anvil_mla_args *args);

/* Splits [0, n) into nth nearly equal ranges aligned to `unit` (except the
 * end) and returns range ith in [*lo, *hi). */
static inline void anvil_cpu_split(int64_t n, int64_t unit, int ith, int nth, int64_t *lo, int64_t *hi)
{
    int64_t units = (n + unit - 1) / unit;
    int64_t a = units * ith / nth, b = units * (ith + 1) / nth;
    *lo = a * unit < n ? a * unit : n;
    *hi = b * unit < n ? b * unit : n;
}

#endif
