/*
 * cpu_quant.h: quantized weights on the CPU backend (docs/quantization.md,
 * the canonical form; docs/cpu-backend.md, "Quantized weights").
 *
 * Two paths, each one arithmetic on every ISA, batch and thread split:
 *  - the int path (int8/int4 weights in groups of a multiple of 32, K a
 *    multiple of 32): int8 activations per block of 32 and exact integer
 *    dot products (its definition is below, "int path");
 *  - the f32 path (fp8, and other int8/int4 layouts): a weight w [N, K]
 *    with w->quant stands for the f32 matrix
 *        W[n][k] = fl((v - z) * s)
 *    (v the element's value, z its zero point, s its scale:
 *    core/tensor.h), one rounding, and the matmul is the f32 matmul (the
 *    dot16 of cpu_internal.h) of the prepared activations x' with W:
 *    bitwise the result the f32 kernels give on the dequantized matrix.
 *    x' is x with its columns permuted (perm) and, for fp8 activations,
 *    each row rounded to fp8: x'[k] = fl(fp8(x[k] / sx) * sx).
 *
 *     TRY(anvil_cpu_check_quant_weight(w));  // from anvil_cpu_check_matmul
 *     float v = anvil_cpu_quant_value(&qw, n, k);
 */
#ifndef ANVIL_BACKEND_CPU_QUANT_H
#define ANVIL_BACKEND_CPU_QUANT_H

#include "backend/cpu/cpu_internal.h"

static inline int anvil_cpu_is_quant_dtype(anvil_dtype dt)
{
    return dt == ANVIL_DTYPE_F8_E4M3 || dt == ANVIL_DTYPE_I8 || dt == ANVIL_DTYPE_U4;
}

/* ANVIL_ERR_INVALID_ARG unless w is a 2-D quantized weight in the
 * canonical form: a quantized dtype with its quant (and quant only on
 * those), scales present, a group that divides K, zeros only for U4, fp8
 * activations only for F8_E4M3 (a static scale finite and > 0). perm's
 * entries must lie in [0, K) (checked: they index x). Zero points above
 * 15 are not checked (the builder writes them; they only change values). */
anvil_status anvil_cpu_check_quant_weight(const anvil_tensor *w);

/* A quantized weight, as the kernels read it. */
typedef struct anvil_cpu_qw {
    const void *w;        /* [N, K] elements of dt (U4: packed, low nibble first) */
    anvil_dtype dt;
    const anvil_quant *q;
    int64_t K, N;
    int64_t gs;           /* columns per scale: q->group, or K when 0 */
    int64_t G;            /* scales per row: K / gs */
    const float *fp8_lut; /* NULL, or fp8's 256 values as f32 (anvil_cpu_fp8_to_f32) */
    /* NULL, or an ISA's dst[i] = fp8(w[i]) * s (the same values as the LUT) */
    void (*fp8_rows)(const uint8_t *w, float s, float *dst, int64_t n);
} anvil_cpu_qw;

anvil_cpu_qw anvil_cpu_qw_of(const anvil_tensor *w);

/* fp8 e4m3fn as f32 with integer steps (the bits moved into an f32, times
 * 2^120; subnormals come out as f32 denormals, exact): the same values as
 * anvil_fp8_e4m3_to_f32, NaN included, and vectorizable. */
static inline float anvil_cpu_fp8_to_f32(uint8_t q)
{
    const uint32_t u = ((uint32_t)(q & 0x80) << 24) | ((uint32_t)(q & 0x7f) << 20);
    float f;
    memcpy(&f, &u, sizeof f);
    return (q & 0x7f) == 0x7f ? NAN : f * 0x1p120f;
}

/* v: the stored element's value before its zero point and scale. */
static inline float anvil_cpu_quant_raw(const anvil_cpu_qw *qw, int64_t n, int64_t k)
{
    const int64_t i = n * qw->K + k;
    const uint8_t *b = qw->w;
    switch (qw->dt) {
    case ANVIL_DTYPE_I8:
        return (float)(int8_t)b[i];
    case ANVIL_DTYPE_U4:
        return (float)((i & 1) ? b[i >> 1] >> 4 : b[i >> 1] & 15);
    default:
        return anvil_fp8_e4m3_to_f32(b[i]);
    }
}

/* W[n][k] = fl((v - z) * s). */
static inline float anvil_cpu_quant_value(const anvil_cpu_qw *qw, int64_t n, int64_t k)
{
    const int64_t g = n * qw->G + k / qw->gs;
    float z = 0.0f;
    if (qw->dt == ANVIL_DTYPE_U4)
        z = qw->q->zeros != NULL ? (float)qw->q->zeros[g] : 8.0f;
    return (anvil_cpu_quant_raw(qw, n, k) - z) * qw->q->scales[g];
}

/* Whether the activations need preparing (perm or fp8 rounding). */
static inline int anvil_cpu_quant_needs_prep(const anvil_quant *q)
{
    return q->perm != NULL || q->act != ANVIL_QUANT_ACT_NONE;
}

/* x' of one row of K activations into dst (see above): dst[k] =
 * x[perm[k]], then with fp8 activations fl(fp8(dst[k] / sx) * sx), sx =
 * max|x| / 448 (dynamic; a row of zeros stays zeros) or input_scale. */
void anvil_cpu_quant_prep_row(const anvil_quant *q, const float *x, int64_t K, float *dst);

/* ---------------------------------------------------------------- int path
 * int8 and int4 weights with a group of 0 (per channel) or a multiple of
 * 32, and K a multiple of 32 (every real checkpoint), multiply int8
 * activations with integer dot products, as llama.cpp's Q8_0/Q4_0 do
 * (docs/cpu-backend.md, "Quantized weights", has the measurements that
 * chose this). Its definition, per token:
 *  - x' = x permuted (perm); per block b of 32 columns, d_b = max|x'| / 127
 *    and q_k = rint(x'_k / d_b) (via the reciprocal: rint(x'_k * (1 / d_b)),
 *    clamped to [-127, 127]; a block of zeros has d_b = 0, q = 0);
 *  - for weight row n, a block's 32 columns sit at positions p = 0..31,
 *    column b * 32 + anvil_cpu_quant_kmap(dt, p) (u4: its 16 low nibbles,
 *    then its 16 high ones); lane l = p / 4 of the block holds the exact
 *    integer I_b[l] = sum of q_k (v_k - z) over its 4 positions;
 *  - 16 f32 lanes from +0: block b updates lane (b % 2) * 8 + l with
 *    acc = fma(fl(d_b * s), (float)I_b[l], acc), blocks in order;
 *  - out = the dot16 reduction of the 16 lanes (+ bias).
 * Other int8/int4 weights, and fp8, take the f32 path (cpu_quant.h top). */

#define ANVIL_CPU_QB 32 /* activation block: columns per d_b */

/* A decode tile prefetches the next tile's rows as it streams its own
 * (cpu_quant_avx512.h, q_prefetch): into L1 while a tile is at most this
 * many bytes, into L2 beyond. Two tiles of 16 KiB (4 int4 rows of K =
 * 8192) and the activations do not fit a 32 KiB L1 with room to spare: the
 * prefetched lines were evicted before their use (bench_cpu_ops int4 8192
 * x 2048: 442 us with L1, 331 with L2; 2048 x 8192, 4 KiB tiles: 335 with
 * L1, 374 with L2; best of 4 on a Zen 4). */
#define ANVIL_CPU_QPF_L1_MAX 4096

static inline int anvil_cpu_quant_int_path(const anvil_cpu_qw *qw)
{
    return (qw->dt == ANVIL_DTYPE_I8 || qw->dt == ANVIL_DTYPE_U4) && qw->K % ANVIL_CPU_QB == 0 &&
           qw->gs % ANVIL_CPU_QB == 0;
}

/* The column (within its block) at position p of the block. */
static inline int anvil_cpu_quant_kmap(anvil_dtype dt, int p)
{
    return dt == ANVIL_DTYPE_U4 ? (p < 16 ? 2 * p : 2 * (p - 16) + 1) : p;
}

/* One token's int8 activations, per block b (nb = K / 32 of them): q
 * [nb][32] in position order, dl [nb][8] (d_b eight times: one vector
 * load), qs [nb][8] (u4: lane l's sum of q, as float). Bytes per token: */
static inline size_t anvil_cpu_q8_bytes(int64_t K)
{
    return (size_t)(K / ANVIL_CPU_QB) * (ANVIL_CPU_QB + 8 * sizeof(float) * 2);
}

typedef struct anvil_cpu_q8 {
    int8_t *q;
    float *dl, *qs;
} anvil_cpu_q8;

/* Token t's blocks inside a buffer of T x anvil_cpu_q8_bytes(K): the q
 * of all tokens, then their dl, then their qs (the kernels use unaligned
 * loads). */
static inline anvil_cpu_q8 anvil_cpu_q8_at(const void *buf, int64_t T, int64_t K, int64_t t)
{
    const int64_t nb = K / ANVIL_CPU_QB;
    int8_t *base = (int8_t *)(uintptr_t)buf; /* the kernels only read through it */
    float *f = (float *)(void *)(base + T * nb * ANVIL_CPU_QB);
    anvil_cpu_q8 a = {.q = base + t * nb * ANVIL_CPU_QB, .dl = f + t * nb * 8, .qs = f + T * nb * 8 + t * nb * 8};
    return a;
}

/* Quantizes one row of K activations (the definition above). */
void anvil_cpu_quant_prep_q8(const anvil_cpu_qw *qw, const float *x, anvil_cpu_q8 a);
#if defined(__x86_64__)
/* The same, to the byte, for a weight without perm, on AVX-512 (F, BW). */
void anvil_cpu_quant_prep_q8_avx512(const anvil_cpu_qw *qw, const float *x, anvil_cpu_q8 a);
#endif

/* The int path's kernels: out[t0:t1, n0:n1]. */
typedef struct anvil_cpu_qmm {
    anvil_cpu_qw qw;
    const void *xq;   /* the tokens' int8 activations (anvil_cpu_q8_at) */
    const void *bias; /* [N] of bias_dt, or NULL */
    anvil_dtype bias_dt;
    float *out;       /* [T, N] */
    int64_t T;
} anvil_cpu_qmm;

/* out[t, n] from its 16 lanes' dot16 sum s: s (+ bias[n]), as the f32 matmul */
static inline float anvil_cpu_qmm_out(const anvil_cpu_qmm *m, int64_t n, float s)
{
    return m->bias != NULL ? s + anvil_cpu_load_elem(m->bias, m->bias_dt, n) : s;
}

typedef void (*anvil_cpu_qmm_fn)(const anvil_cpu_qmm *m, int64_t t0, int64_t t1, int64_t n0, int64_t n1);
void anvil_cpu_qmm_scalar(const anvil_cpu_qmm *m, int64_t t0, int64_t t1, int64_t n0, int64_t n1);
#if defined(__x86_64__)
void anvil_cpu_qmm_avx2(const anvil_cpu_qmm *m, int64_t t0, int64_t t1, int64_t n0, int64_t n1);
void anvil_cpu_qmm_avx512(const anvil_cpu_qmm *m, int64_t t0, int64_t t1, int64_t n0, int64_t n1);
void anvil_cpu_qmm_avx512vnni(const anvil_cpu_qmm *m, int64_t t0, int64_t t1, int64_t n0, int64_t n1);
void anvil_cpu_dequant_fp8_avx2(const uint8_t *w, float s, float *dst, int64_t n);
#endif

/* Rows [n, n + nr) of W as f32 into dst (row stride ld >= K). */
void anvil_cpu_quant_dequant_rows(const anvil_cpu_qw *qw, int64_t n, int64_t nr, float *dst, int64_t ld);

/* The matmul op for a quantized w (already checked). */
anvil_status anvil_cpu_quant_matmul(anvil_cpu_backend *cb, const anvil_cpu_kernels *kern, const anvil_tensor *x,
                                    const anvil_tensor *w, const anvil_tensor *bias, anvil_tensor *out);

/* The matmul_multi op (already checked) as one job, where its n (2 to
 * ANVIL_MATMUL_MULTI_MAX) weights all take the int path with one K, dtype
 * and column order (q, k, v; gate, up): their activations prepared once,
 * their rows one range. 0 where they do not (nothing done); else 1, the
 * op's status in *st. Each output as the matmul op's, to the bit. */
int anvil_cpu_quant_matmul_multi(anvil_cpu_backend *cb, const anvil_tensor *x, int n, const anvil_tensor *const *w,
                                 const anvil_tensor *const *bias, anvil_tensor *const *out, anvil_status *st);

#endif
