/*
 * matmul of a quantized weight on CUDA (docs/quantization.md, the
 * canonical form; docs/cuda-backend.md, "Quantized weights"): which kernel
 * runs, by rows and scheme, the same choice for the same shape every time.
 *
 *  0. The GEMV on tensor cores (cuda_gemv_mma_quant.cu), up to 8 rows:
 *     int8 and int4 (K a multiple of 64, groups of a multiple of 32) with
 *     x' rounded to int8 per block of 32 as the CPU's int path does, and
 *     fp8 W8A8 per channel (sm_89+) with x' rounded to fp8 per row; x'
 *     (perm, rounding) made inside the launch. The matmuls of one x (q/k/v,
 *     gate/up with the silu) as one launch. From MMA_MIN_ROWS_* rows on
 *     (below: path 1, where it takes the weight), by the first H100 run
 *     (d1eb847, docs/performance.md; ms, Llama-3-8B gate 4096->14336):
 *
 *                      1 row   4 rows  8 rows   1 row, the five 8B shapes
 *        int4 g128 mma   0.0351  0.0420  0.0574    790-1167 GB/s
 *                  simt  0.0218  0.0661  0.1322   1052-1609 (faster on each)
 *        int8      mma   0.0372  0.0493  0.0661   1379-1921
 *                  simt  0.0252  0.0510  0.1011   1899-2772 (faster on each)
 *        fp8 W8A8  mma   0.0406  0.1053  0.1847   1241-1917 (faster on each)
 *                  simt  0.0467  0.1327  0.2599    841-1774 (with its prep)
 *
 *     The SIMT GEMV's time grows about linearly with the rows (0.0218 ->
 *     0.0661 int4 at 4), the mma's slowly; interpolated, int4 crosses
 *     between 2 and 3 rows (simt ~0.036 / ~0.051 at 2 / 3, mma ~0.037 /
 *     ~0.040), int8 between 3 and 4 (simt ~0.042 at 3, mma ~0.045; equal
 *     at 4). So int4 from 3 rows, int8 from 4; fp8 W8A8 from 1 (the SIMT
 *     GEMV with the W8A8 preparation is slower at every measured shape and
 *     row count; the W8A16 SIMT GEMV's 2618 GB/s is another arithmetic,
 *     x' not rounded to fp8). The knob matmul_quant = 4 takes path 0 at
 *     every row count it takes (the tests, the benchmarks).
 * 0w. The GEMV on tensor cores with 16-bit operands (cuda_gemv_mma16_quant.cu,
 *     session 27, issue 15), up to 8 rows of bf16 / f16 activations, no perm:
 *     int8 / int4 weight-only (x as it is: the SIMT GEMV's arithmetic, the
 *     products exact, f32 sums), int4 at 1-8 rows, int8 at 2-8 (one row:
 *     path 1, faster there), and fp8 W8A8 per channel at 1-8 rows (path
 *     0's definition, x' codes made in the launch); by the H100 run of
 *     session 27 (docs/cuda-backend.md). matmul_quant = 6 takes it at every
 *     row count it takes, 5 never (session 26's choice).
 * 0r. The fp8 row GEMV (cuda_gemv_fp8_rows.cu, session 32): one row of
 *     fp8 W8A8 per channel, K a multiple of 512, on CUDA cores with a warp a
 *     weight row: path 0w's definition but for the order of the f32 sums
 *     (another kernel than 0w's at 2-8 rows, as the SIMT and tensor-core
 *     paths of bf16 already are). First where it takes the weights and the
 *     launch reads 32 MB of them or more (rows_first: an 8B model's
 *     gate/up, down and LM head, not its q/k/v, o); 10 takes it wherever it
 *     takes them, the knobs that pin another path never.
 * 0i. The int4 row GEMV (cuda_gemv_int4_rows.cu, session 33): one row of
 *     int4 (groups of a power of two from 32, or per channel), K a
 *     multiple of 32, bf16 / f16 x, no perm, on CUDA cores with a warp a
 *     weight row and x rounded to int8 per block of 32 in the launch:
 *     path 0's definition (the CPU's), not path 0w's (x as it is). First
 *     wherever it takes the weights (irows_first), and under matmul_quant =
 *     11; the knobs that pin another path never.
 * 0s. The streaming GEMV (cuda_gemv_stream_quant.cu, session 28, issue 15):
 *     path 0w's arithmetic and the layouts it takes (but per-channel int4
 *     with zero points), 1-8 rows, with the weights streamed by cp.async
 *     through a shared-memory ring and K split over persistent blocks (a
 *     workspace and tile counters, gemv_stream_ws below). Only under
 *     matmul_quant = 7 until an H100 has timed it; where it declines a
 *     weight, the automatic choice.
 *  1. The weight-only GEMV (cuda_gemv_quant.cu): up to 32 rows of int4,
 *     16 of int8 and fp8 weight-only, 4 of W8A8 (16 where there is no FP8
 *     GEMM), four rows a pass, each pass reading the weight once; fp8,
 *     int8, int4 in pieces of 16 bytes (K and the group multiples of
 *     16 / 32 elements, aligned).
 *     The weights of one x (q/k/v, gate/up: matmul_multi and
 *     matmul_silu_mul) take one preparation of x and one launch
 *     (anvil_cuda_matmul_quant_multi; gate/up with the silu in it).
 *  2. fp8 W8A8 (fp8 weights with per-channel scales and fp8 activations),
 *     more rows, bf16/f16 activations, sm_89+: each row of x quantized to
 *     fp8 (its scale per row), then cuBLASLt's FP8 GEMM with the weight's
 *     scales and the rows' scales as outer vectors (cuda_matmul.c).
 *  3. Everything else (int8/int4 past the GEMV's rows, fp8 weight-only or in
 *     blocks, f32 activations, layouts the GEMV does not take, GPUs without
 *     an FP8 GEMM): the weight dequantized into the activation dtype and the
 *     plain matmul. Correct, not fast: it writes and reads the whole weight
 *     in 16 (or 32) bits every call.
 * 3g. The quantized GEMM on tensor cores (cuda_gemm_quant.cu, session 28,
 *     issue 15: Marlin's role): int4 / int8 weight-only where it takes the
 *     weight (bf16/f16 x, no perm, K a multiple of 128 / 64, int4 groups of
 *     a multiple of 32, int8 of 16), the stored bytes streamed through a
 *     cp.async ring and converted in registers, mma.sync m16n8k16, group
 *     scales on f32 partial sums. matmul_quant = 8 takes it wherever it
 *     takes the weight (every row count: the tests; fp8 W8A8 then off path
 *     2); by default first at 9-256 rows (gemm_first: measured on an
 *     H100, session 30), 9 there and wherever path 3 would run (slower at
 *     2048 rows: A/B runs).
 * perm and fp8 activations are applied to x first (cuda_quant_act.cu): into
 * f32 for the GEMV (x' = fl(fp8(x / sx) * sx) is not a bf16 value), into
 * the activation dtype for path 3, into codes and row scales for path 2.
 *
 * The knob matmul_quant pins path 3 (1), rules out path 2 (2) or paths 0
 * and 0w (3), takes path 0 below its rows too and never 0w (4), never 0w
 * (5), or 0w at every row count it takes (6), or 0s wherever it takes
 * the weight, else the automatic choice (7), or path 0r (10) / 0i (11)
 * wherever it takes the weights, so that tests compare the
 * fast paths with the slow one and the GEMVs; matmul_gemv = 2 rules
 * out paths 0 and 1, as it does for plain
 * weights. Path 0 changes the int8/int4 arithmetic (activations rounded to
 * int8: the CPU's definition), so a decode step of up to 8 rows and a
 * prefill of more rows (path 1 or 3, activations in floating point) differ
 * by that rounding, as llama.cpp's MMVQ and its dequantizing GEMM do;
 * path 0i (int4, one row) computes path 0's definition too.
 */
#include "backend/cuda/cuda_gemm_quant.h"
#include "backend/cuda/cuda_gemv_fp8_rows.h"
#include "backend/cuda/cuda_gemv_int4_rows.h"
#include "backend/cuda/cuda_gemv_mma16_quant.h"
#include "backend/cuda/cuda_gemv_stream_quant.h"
#include "backend/cuda/cuda_internal.h"

/* Rows the GEMV takes. It reads the weight once per four rows; the
 * dequantizing path writes and reads it in 16 bits (4.5 bytes an int4
 * element, 5 an int8 one, with the read of the weight), then runs the GEMM:
 * so the GEMV up to 32 rows of int4 (8 reads of half a byte), 16 of int8
 * and fp8 weight-only. W8A8 past four rows goes to the FP8 GEMM (when
 * there is one). */
#define GEMV_ROWS_INT4 32
#define GEMV_ROWS_INT8 16
#define GEMV_ROWS_FP8 4

/* Fewest rows path 0 takes by default (the table at the top): below, the
 * SIMT GEMV is faster on an H100. */
#define MMA_MIN_ROWS_INT4 3
#define MMA_MIN_ROWS_INT8 4
#define MMA_MIN_ROWS_FP8 1

/* Fewest int8 rows path 0w takes by default (below: the SIMT GEMV). */
#define MMA16_MIN_ROWS_INT8 2

static size_t round256(size_t b) { return (b + 255) / 256 * 256; }

static int aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* Whether the FP8 GEMM may take this weight (not yet whether cuBLASLt has an
 * algorithm: anvil_cuda_gemm_fp8 says). */
static int fp8_gemm_ok(const anvil_cuda_backend *cb, const anvil_tensor *w)
{
    const anvil_quant *q = w->quant;
    const anvil_dtype dt = cb->ops.act_dtype;
    return w->dtype == ANVIL_DTYPE_F8_E4M3 && q->act != ANVIL_QUANT_ACT_NONE && q->group == 0 && cb->sm >= 89 &&
           (cb->knobs.matmul_quant == 0 || cb->knobs.matmul_quant == 4 || cb->knobs.matmul_quant == 7 ||
            cb->knobs.matmul_quant == 9) &&
           !cb->knobs.matmul_simt &&
           (dt == ANVIL_DTYPE_BF16 || dt == ANVIL_DTYPE_F16) && w->shape[1] % 16 == 0 && w->shape[0] % 16 == 0 &&
           aligned16(w->data) && aligned16(q->scales);
}

static int64_t gemv_rows(const anvil_cuda_backend *cb, const anvil_tensor *w)
{
    if (fp8_gemm_ok(cb, w))
        return GEMV_ROWS_FP8;
    return w->dtype == ANVIL_DTYPE_U4 ? GEMV_ROWS_INT4 : GEMV_ROWS_INT8;
}

/* Whether path 0 takes this weight for T rows of x into out. */
static int mma_ok(const anvil_cuda_backend *cb, const anvil_cuda_qweight *qw, const anvil_quant *q, const void *x,
                  int64_t T)
{
    return cb->knobs.matmul_quant != 1 && cb->knobs.matmul_quant != 3 && cb->knobs.matmul_gemv != 2 &&
           !cb->knobs.matmul_simt && anvil_cuda_gemv_mma_quant_ok(qw, (int)q->act, cb->sm, x, cb->ops.act_dtype, T);
}

/* Whether path 0 is the first choice for T rows of this weight (where it
 * takes it): from MMA_MIN_ROWS_* on, or always under matmul_quant = 4. */
static int mma_first(const anvil_cuda_backend *cb, const anvil_cuda_qweight *qw, int64_t T)
{
    const int64_t min_rows = qw->dt == ANVIL_DTYPE_U4   ? MMA_MIN_ROWS_INT4
                             : qw->dt == ANVIL_DTYPE_I8 ? MMA_MIN_ROWS_INT8
                                                        : MMA_MIN_ROWS_FP8;
    return cb->knobs.matmul_quant == 4 || T >= min_rows;
}

/* Whether path 1 takes this weight for T rows of x into out. */
static int simt_ok(const anvil_cuda_backend *cb, const anvil_tensor *w, const anvil_cuda_qweight *qw, const void *x,
                   const void *out, int64_t T)
{
    return cb->knobs.matmul_quant != 1 && cb->knobs.matmul_gemv != 2 && !cb->knobs.matmul_simt &&
           T <= gemv_rows(cb, w) && anvil_cuda_gemv_quant_ok(qw, x, cb->ops.act_dtype, out);
}

/* Whether path 0w (the 16-bit tensor-core GEMV) takes this weight for T
 * rows of x: not under matmul_quant 1 (dequantize), 3 (SIMT), 4 (the
 * int8-activation GEMV at every row count) or 5 (session 26's routing). */
static int mma16_ok(const anvil_cuda_backend *cb, const anvil_cuda_qweight *qw, const anvil_quant *q, const void *x,
                    int64_t T)
{
    const int k = cb->knobs.matmul_quant;
    return k != 1 && k != 3 && k != 4 && k != 5 && cb->knobs.matmul_gemv != 2 && !cb->knobs.matmul_simt &&
           anvil_cuda_gemv_mma16_quant_ok(qw, (int)q->act, cb->sm, q->perm, x, cb->ops.act_dtype, T);
}

/* Whether path 0w is the first choice where it takes the weight, by the
 * H100 run of session 27 (docs/cuda-backend.md, "Which GEMV, by rows"):
 * fp8 W8A8 and int4 at every row count it takes (faster than path 0 at
 * 1-8 rows on every Llama-3-8B shape, and than the SIMT GEMV at one row),
 * int8 from 2 rows (at one row the SIMT GEMV is faster on the gate/up and
 * down shapes). int8 / int4 there compute the weight-only definition (x
 * not rounded to int8), as the SIMT GEMV and prefill do; path 0's int8
 * activations remain where path 0w does not take the weight (f32
 * activations, a perm, other layouts) and under matmul_quant = 4. Every
 * row count it takes under matmul_quant = 6. */
static int mma16_first(const anvil_cuda_backend *cb, const anvil_cuda_qweight *qw, int64_t T)
{
    return cb->knobs.matmul_quant == 6 || qw->dt != ANVIL_DTYPE_I8 || T >= MMA16_MIN_ROWS_INT8;
}

/* Whether path 0r (the fp8 row GEMV, cuda_gemv_fp8_rows.cu) takes this
 * weight for T rows of x (one row of fp8 W8A8 per channel): by default and
 * under matmul_quant = 10; never under the knobs that pin another path. */
static int rows_ok(const anvil_cuda_backend *cb, const anvil_cuda_qweight *qw, const anvil_quant *q, const void *x,
                   int64_t T)
{
    const int k = cb->knobs.matmul_quant;
    return (k == 0 || k == 10) && cb->knobs.matmul_gemv != 2 && !cb->knobs.matmul_simt &&
           anvil_cuda_gemv_fp8_rows_ok(qw, (int)q->act, q->perm, x, cb->ops.act_dtype, T);
}

/* Weight bytes of a launch from which path 0r comes before path 0w by
 * default. bench_gemv_quant (session 33, H100, weights past the L2, blocks
 * of 8 warps): gate/up with the silu (117 MB) 43.3 us against 56.7, down
 * (59 MB, K = 14336) 27.2 against 33.4, the LM head (525 MB) 169.9 against
 * 220.2; q/k/v (25 MB) 15.7 against 15.1 and o (17 MB) 12.2 against 12.1,
 * even: their time is a launch's ramp and drain. (Session 32's rule, three
 * waves of blocks of 4 warps, left down on path 0w.) */
#define ROWS_FIRST_BYTES ((int64_t)32 << 20)

/* Whether path 0r is the first choice for a launch of `bytes` of fp8
 * weights (gate/up with the silu: both) where it takes them. */
static int rows_first(const anvil_cuda_backend *cb, int64_t bytes)
{
    return cb->knobs.matmul_quant == 10 || bytes >= ROWS_FIRST_BYTES;
}

/* Whether path 0i (the int4 row GEMV, cuda_gemv_int4_rows.cu) takes this
 * weight for T rows of x (one row of int4): by default and under
 * matmul_quant = 11; never under the knobs that pin another path. */
static int irows_ok(const anvil_cuda_backend *cb, const anvil_cuda_qweight *qw, const anvil_quant *q, const void *x,
                    int64_t T)
{
    const int k = cb->knobs.matmul_quant;
    return (k == 0 || k == 11) && cb->knobs.matmul_gemv != 2 && !cb->knobs.matmul_simt &&
           anvil_cuda_gemv_int4_rows_ok(qw, (int)q->act, q->perm, x, cb->ops.act_dtype, T);
}

/* Whether path 0i is the first choice where it takes the weights: always.
 * bench_gemv_quant (session 33, H100, weights past the L2, us a call): in
 * blocks of 16 warps q/k/v 8.5 against the 16-bit GEMV's 12.6, o 6.8 /
 * 9.3, gate/up with the silu 25.7 / 43.1, down 19.1 / 22.3, an int4 LM
 * head 90.1 / 159.1; 8B int4 decode 2.854 ms a token against 3.502 (blocks
 * of 8 warps then). */
static int irows_first(const anvil_cuda_backend *cb, int64_t rows)
{
    (void)rows;
    return cb->knobs.matmul_quant == 11 || cb->knobs.matmul_quant == 0;
}

/* Whether path 0s (the streaming GEMV) takes this weight for T rows of x:
 * only under matmul_quant = 7 (the default stays as measured until an H100
 * times it). */
static int stream_ok(const anvil_cuda_backend *cb, const anvil_cuda_qweight *qw, const anvil_quant *q, const void *x,
                     int64_t T)
{
    return cb->knobs.matmul_quant == 7 && cb->knobs.matmul_gemv != 2 && !cb->knobs.matmul_simt &&
           anvil_cuda_gemv_stream_quant_ok(qw, (int)q->act, cb->sm, q->perm, x, cb->ops.act_dtype, T,
                                           cb->smem_optin);
}

/* Path 0s: its workspace (partials, and tile counters zeroed when they are
 * made: every launch leaves them zero, so a grown buffer is zeroed once),
 * then the launch. */
static anvil_status run_stream(anvil_cuda_backend *cb, const anvil_cuda_gemv_mma_call *call)
{
    anvil_cuda_gemv_mma_call cc = *call, *c = &cc;
    anvil_cuda_gemv_stream_ws ws = {NULL, NULL};
    const int64_t n_cnt = anvil_cuda_gemv_stream_counters(c);
    if (n_cnt > 0) {
        TRY(anvil_cuda_reserve(cb, &cb->gsq_ws, &cb->gsq_ws_bytes, anvil_cuda_gemv_stream_ws_bytes(c),
                               "matmul: streaming GEMV partials"));
        const size_t need = (size_t)n_cnt * sizeof(int);
        const int grows = need > cb->gsq_cnt_bytes;
        TRY(anvil_cuda_reserve(cb, &cb->gsq_cnt, &cb->gsq_cnt_bytes, need, "matmul: streaming GEMV counters"));
        if (grows) {
            CUDA_TRY(cudaMemsetAsync(cb->gsq_cnt, 0, cb->gsq_cnt_bytes, cb->stream), "matmul: streaming GEMV counters");
            cc.pdl = 0; /* behind a memset: a plain launch (anvil_cuda_pdl) */
        }
        ws.partials = (float *)cb->gsq_ws;
        ws.counters = (int *)cb->gsq_cnt;
    }
    return anvil_cuda_launch_gemv_stream_quant(c, &ws);
}

/* Path 0's call for n parts of one x (their biases and outputs set by the caller). */
static anvil_cuda_gemv_mma_call mma_call(anvil_cuda_backend *cb, const anvil_tensor *x, const anvil_quant *q, int n,
                                         const anvil_cuda_qweight *qw)
{
    anvil_cuda_gemv_mma_call c = {
        .stream = cb->stream, .pdl = anvil_cuda_pdl(cb), .n_parts = n, .x = x->data, .x_dt = cb->ops.act_dtype,
        .T = x->shape[0], .perm = q->perm, .err = cb->d_err, .act = (int)q->act, .input_scale = q->input_scale,
        .sm = cb->sm, .tiles_knob = cb->knobs.gemv_quant_tiles, .warps_knob = cb->knobs.gemv_quant_warps,
        .rows_warps = cb->knobs.rows_warps,
    };
    for (int i = 0; i < n; i++)
        c.w[i] = qw[i];
    return c;
}

/* x' (perm, fp8 rounding) into the scratch as out_dt; *xp its address. */
static anvil_status prep_x(anvil_cuda_backend *cb, const anvil_tensor *x, const anvil_quant *q, anvil_dtype out_dt,
                           const void **xp)
{
    const int64_t T = x->shape[0], K = x->shape[1];
    TRY(anvil_cuda_reserve(cb, &cb->q_scratch, &cb->q_scratch_bytes, (size_t)(T * K) * anvil_dtype_size(out_dt),
                           "matmul: quantized activations buffer"));
    TRY(anvil_cuda_launch_quant_act(cb->stream, anvil_cuda_pdl(cb), x->data, cb->ops.act_dtype, q->perm, (int)q->act,
                                    q->input_scale, T, K, cb->q_scratch, out_dt, NULL, cb->d_err));
    *xp = cb->q_scratch;
    return ANVIL_OK;
}

/* Path 2; ANVIL_ERR_UNSUPPORTED (nothing left queued that matters, no
 * error) when cuBLASLt has no FP8 algorithm for the problem. */
static anvil_status run_fp8_gemm(anvil_cuda_backend *cb, const anvil_tensor *x, const anvil_tensor *w,
                                 const anvil_tensor *bias, anvil_tensor *out)
{
    const anvil_quant *q = w->quant;
    const int64_t T = x->shape[0], K = x->shape[1], N = w->shape[0];
    const void *xq = NULL;
    const float *sx = NULL;
    TRY(anvil_cuda_fp8_x_get(cb, x, q, &xq, &sx)); /* the codes the matmuls of x share (cuda_fp8_x.c) */
    if (xq == NULL) {
        const size_t codes = round256((size_t)(T * K));
        TRY(anvil_cuda_reserve(cb, &cb->q_scratch, &cb->q_scratch_bytes, codes + (size_t)T * sizeof(float),
                               "matmul: fp8 activations buffer"));
        float *row_scale = (float *)(void *)((char *)cb->q_scratch + codes);
        TRY(anvil_cuda_launch_quant_act(cb->stream, anvil_cuda_pdl(cb), x->data, cb->ops.act_dtype, q->perm, (int)q->act,
                                        q->input_scale, T, K, cb->q_scratch, ANVIL_DTYPE_F8_E4M3, row_scale,
                                        cb->d_err));
        xq = cb->q_scratch;
        sx = row_scale;
    }
    return anvil_cuda_gemm_fp8(cb, xq, sx, w->data, q->scales, bias ? bias->data : NULL,
                               bias ? bias->dtype : ANVIL_DTYPE_F32, out->data, cb->ops.act_dtype, T, K, N);
}

int anvil_cuda_matmul_quant_on_fp8_gemm(const anvil_cuda_backend *cb, const anvil_tensor *x, const anvil_tensor *w,
                                        const anvil_tensor *out)
{
    const anvil_quant *q = w->quant;
    if (q == NULL || !fp8_gemm_ok(cb, w))
        return 0;
    const int64_t T = x->shape[0], K = x->shape[1];
    const anvil_cuda_qweight qw = {
        .w = w->data, .dt = w->dtype, .scales = q->scales, .zeros = q->zeros,
        .gs = q->group > 0 ? q->group : K, .N = w->shape[0], .K = K,
    };
    /* no GEMV path takes the rows at all: whatever their order, path 2 */
    return !mma16_ok(cb, &qw, q, x->data, T) && !mma_ok(cb, &qw, q, x->data, T) &&
           !simt_ok(cb, w, &qw, x->data, out->data, T);
}

/* Path 3: W and x' in the activation dtype, then the plain matmul. */
static anvil_status run_dequant(anvil_cuda_backend *cb, const anvil_cuda_qweight *qw, const anvil_tensor *x,
                                const anvil_quant *q, const anvil_tensor *bias, anvil_tensor *out)
{
    const anvil_dtype dt = cb->ops.act_dtype;
    const int64_t T = x->shape[0], K = qw->K, N = qw->N;
    TRY(anvil_cuda_reserve(cb, &cb->mm_scratch, &cb->mm_scratch_bytes, (size_t)(N * K) * anvil_dtype_size(dt),
                           "matmul: dequantized weight buffer"));
    TRY(anvil_cuda_launch_dequant(cb->stream, qw, cb->mm_scratch, dt));
    const void *xp = x->data;
    if (q->perm != NULL || q->act != ANVIL_QUANT_ACT_NONE)
        TRY(prep_x(cb, x, q, dt, &xp));
    anvil_tensor xt = anvil_tensor_2d(dt, T, K, (void *)(uintptr_t)xp);
    anvil_tensor wt = anvil_tensor_2d(dt, N, K, cb->mm_scratch);
    return anvil_cuda_op_matmul(&cb->be, &xt, &wt, bias, out);
}

/* Rows path 3g (the quantized GEMM) takes first by default (and under
 * matmul_quant = 9): above the 16-bit GEMV's 8, up to 256. Measured on an
 * H100 (session 30, test_cuda_gemm_quant --perf, Llama-3-8B shapes): at 16
 * rows 9-14x faster than dequantize + cuBLASLt and 1.15-1.76x bf16
 * cuBLASLt; at 256 about 2x faster than dequantizing; at 512 about even; at
 * 2048 half as fast. Whole 8B models (bench_cuda_latency, decode of 16 and
 * 64 sequences): int8 27.3 -> 6.6 and 46.5 -> 11.1 ms a step, int4 33.7 ->
 * 5.7 and 49.0 -> 10.7 ms, against the SIMT / int8-activation GEMVs and
 * the dequantizing path they took before. */
#define GEMM_FIRST_MIN_ROWS 9
#define GEMM_FIRST_MAX_ROWS 256

/* Whether path 3g comes before the GEMVs for T rows: under matmul_quant =
 * 8 always; by default and under 9 for GEMM_FIRST_MIN_ROWS..GEMM_FIRST_MAX_ROWS
 * rows. */
static int gemm_first(const anvil_cuda_backend *cb, int64_t T)
{
    const int k = cb->knobs.matmul_quant;
    return k == 8 || ((k == 0 || k == 9) && T >= GEMM_FIRST_MIN_ROWS && T <= GEMM_FIRST_MAX_ROWS);
}

/* Whether path 3g (the quantized GEMM) takes this weight for T rows of x
 * (the knob says where it is tried: gemm_first, and under matmul_quant = 9
 * wherever path 3 would run too: slower at 2048 rows, for A/B runs). */
static int gemm_ok(const anvil_cuda_backend *cb, const anvil_cuda_qweight *qw, const anvil_quant *q, const void *x,
                   int64_t T)
{
    return !cb->knobs.matmul_simt && T >= 1 &&
           anvil_cuda_gemm_quant_ok(qw, q->perm, (int)q->act, cb->sm, cb->smem_optin, x, cb->ops.act_dtype,
                                    cb->ops.act_dtype);
}

/* Path 3g: its split-K partials (where K is split) in the quantized
 * scratch, then the launch. */
static anvil_status run_gemm(anvil_cuda_backend *cb, const anvil_cuda_qweight *qw, const anvil_tensor *x,
                             const anvil_tensor *bias, anvil_tensor *out)
{
    anvil_cuda_gemm_quant_call c = {
        .stream = cb->stream, .w = *qw, .x = x->data, .x_dt = cb->ops.act_dtype, .M = x->shape[0],
        .bias = bias ? bias->data : NULL, .bias_dt = bias ? bias->dtype : ANVIL_DTYPE_F32, .out = out->data,
        .out_dt = cb->ops.act_dtype, .n_sm = cb->n_sm, .smem_optin = cb->smem_optin,
    };
    const size_t need = anvil_cuda_gemm_quant_scratch_bytes(&c);
    if (need > 0) {
        TRY(anvil_cuda_reserve(cb, &cb->q_scratch, &cb->q_scratch_bytes, need,
                               "matmul: quantized GEMM split-K partials"));
        c.scratch = (float *)cb->q_scratch;
        c.scratch_bytes = cb->q_scratch_bytes;
    }
    return anvil_cuda_launch_gemm_quant(&c);
}

anvil_status anvil_cuda_matmul_quant(anvil_cuda_backend *cb, const anvil_tensor *x, const anvil_tensor *w,
                                     const anvil_tensor *bias, anvil_tensor *out)
{
    const anvil_quant *q = w->quant;
    const anvil_dtype dt = cb->ops.act_dtype;
    const int64_t T = x->shape[0], K = x->shape[1], N = w->shape[0];
    anvil_cuda_qweight qw = {
        .w = w->data, .dt = w->dtype, .scales = q->scales, .zeros = q->zeros,
        .gs = q->group > 0 ? q->group : K, .N = N, .K = K,
    };
    const int prep = q->perm != NULL || q->act != ANVIL_QUANT_ACT_NONE;
    const int fp8_gemm = fp8_gemm_ok(cb, w);
    const void *bp = bias ? bias->data : NULL;
    const anvil_dtype bdt = bias ? bias->dtype : ANVIL_DTYPE_F32;

    if (gemm_first(cb, T) && gemm_ok(cb, &qw, q, x->data, T))
        return run_gemm(cb, &qw, x, bias, out);
    if (stream_ok(cb, &qw, q, x->data, T)) {
        anvil_cuda_gemv_mma_call c = mma_call(cb, x, q, 1, &qw);
        c.bias[0] = bp;
        c.bias_dt[0] = bdt;
        c.out[0] = out->data;
        return run_stream(cb, &c);
    }
    if (rows_ok(cb, &qw, q, x->data, T) && rows_first(cb, N * K)) {
        anvil_cuda_gemv_mma_call c = mma_call(cb, x, q, 1, &qw);
        c.bias[0] = bp;
        c.bias_dt[0] = bdt;
        c.out[0] = out->data;
        return anvil_cuda_launch_gemv_fp8_rows(&c);
    }
    if (irows_ok(cb, &qw, q, x->data, T) && irows_first(cb, N)) {
        anvil_cuda_gemv_mma_call c = mma_call(cb, x, q, 1, &qw);
        c.bias[0] = bp;
        c.bias_dt[0] = bdt;
        c.out[0] = out->data;
        return anvil_cuda_launch_gemv_int4_rows(&c);
    }
    if (mma16_ok(cb, &qw, q, x->data, T) && mma16_first(cb, &qw, T)) {
        anvil_cuda_gemv_mma_call c = mma_call(cb, x, q, 1, &qw);
        c.bias[0] = bp;
        c.bias_dt[0] = bdt;
        c.out[0] = out->data;
        return anvil_cuda_launch_gemv_mma16_quant(&c);
    }
    const int simt = simt_ok(cb, w, &qw, x->data, out->data, T);
    if (mma_ok(cb, &qw, q, x->data, T) && (mma_first(cb, &qw, T) || !simt)) {
        anvil_cuda_gemv_mma_call c = mma_call(cb, x, q, 1, &qw);
        c.bias[0] = bp;
        c.bias_dt[0] = bdt;
        c.out[0] = out->data;
        return anvil_cuda_launch_gemv_mma_quant(&c);
    }
    if (simt) {
        const void *xp = x->data;
        anvil_dtype xdt = dt;
        if (prep) {
            TRY(prep_x(cb, x, q, ANVIL_DTYPE_F32, &xp));
            xdt = ANVIL_DTYPE_F32;
        }
        return anvil_cuda_launch_gemv_quant(cb->stream, anvil_cuda_pdl(cb), &qw, xp, xdt, bp, bdt, out->data, dt, T);
    }
    if (fp8_gemm) {
        const anvil_status st = run_fp8_gemm(cb, x, w, bias, out);
        if (st != ANVIL_ERR_UNSUPPORTED)
            return st;
        anvil_clear_error();
    }
    if (cb->knobs.matmul_quant == 9 && gemm_ok(cb, &qw, q, x->data, T))
        return run_gemm(cb, &qw, x, bias, out);
    return run_dequant(cb, &qw, x, q, bias, out);
}

/* What anvil_cuda_op_matmul checks, for one part of a group. */
static anvil_status check_part(anvil_cuda_backend *cb, const anvil_tensor *x, const anvil_tensor *w,
                               const anvil_tensor *bias, const anvil_tensor *out)
{
    TRY(anvil_cuda_check_act(cb, x, "matmul x"));
    TRY(anvil_cuda_check_act(cb, out, "matmul out"));
    CHECK(w != NULL && w->data != NULL && w->n_dims == 2, ANVIL_ERR_INVALID_ARG, "matmul: expected a 2-D weight");
    TRY(anvil_cuda_check_quant(w, "matmul"));
    CHECK(w->shape[1] == x->shape[1] && w->shape[0] == out->shape[1] && x->shape[0] == out->shape[0],
          ANVIL_ERR_INVALID_ARG, "matmul: x [%lld, %lld] w [%lld, %lld] out [%lld, %lld]", (long long)x->shape[0],
          (long long)x->shape[1], (long long)w->shape[0], (long long)w->shape[1], (long long)out->shape[0],
          (long long)out->shape[1]);
    CHECK(out->data != x->data || x->shape[0] == 0, ANVIL_ERR_INVALID_ARG, "matmul: out must not alias x");
    if (bias != NULL)
        TRY(anvil_cuda_check_vector(bias, w->shape[0], "matmul bias"));
    return ANVIL_OK;
}

anvil_status anvil_cuda_matmul_quant_multi(anvil_cuda_backend *cb, const anvil_tensor *x, int n,
                                           const anvil_tensor *const *w, const anvil_tensor *const *bias,
                                           anvil_tensor *const *out, int silu, int *done)
{
    *done = 0;
    /* where path 3g comes first (matmul_quant 8; 9 at its rows) the separate matmuls, each on the quantized
     * GEMM where it takes the weight (int8 / int4: fp8 keeps its paths) */
    if (n < 1 || n > ANVIL_MATMUL_MULTI_MAX || (silu && n != 2) || cb->knobs.matmul_quant == 1 ||
        (gemm_first(cb, x->shape[0]) && w[0] != NULL && w[0]->dtype != ANVIL_DTYPE_F8_E4M3) ||
        cb->knobs.matmul_gemv == 2 || cb->knobs.matmul_simt)
        return ANVIL_OK;
    for (int i = 0; i < n; i++)
        TRY(check_part(cb, x, w[i], bias[i], out[i]));
    if (silu && w[0]->shape[0] != w[1]->shape[0])
        return ANVIL_OK;
    const anvil_quant *q0 = w[0]->quant;
    const anvil_dtype dt = cb->ops.act_dtype;
    const int64_t T = x->shape[0], K = x->shape[1];
    if (q0 == NULL || T == 0 || K == 0 || T > INT32_MAX || K > INT32_MAX)
        return ANVIL_OK;
    anvil_cuda_qweight qw[ANVIL_MATMUL_MULTI_MAX];
    const void *bp[ANVIL_MATMUL_MULTI_MAX];
    anvil_dtype bdt[ANVIL_MATMUL_MULTI_MAX];
    void *op[ANVIL_MATMUL_MULTI_MAX];
    int stream = n <= 4; /* path 0s takes every part */
    int rows = n <= 4;   /* path 0r takes every part */
    int irows = n <= 4;  /* path 0i takes every part */
    int mma16 = n <= 4;  /* path 0w takes every part */
    int mma = n <= 4;   /* path 0 takes every part */
    int simt = 1;       /* path 1 takes every part */
    for (int i = 0; i < n; i++) {
        const anvil_quant *q = w[i]->quant;
        /* one layout, one preparation of x */
        if (q == NULL || w[i]->dtype != w[0]->dtype || q->group != q0->group || q->act != q0->act ||
            q->perm != q0->perm || (q->act == ANVIL_QUANT_ACT_FP8_STATIC && q->input_scale != q0->input_scale) ||
            w[i]->shape[0] == 0)
            return ANVIL_OK;
        qw[i] = (anvil_cuda_qweight){
            .w = w[i]->data, .dt = w[i]->dtype, .scales = q->scales, .zeros = q->zeros,
            .gs = q->group > 0 ? q->group : K, .N = w[i]->shape[0], .K = K,
        };
        bp[i] = bias[i] ? bias[i]->data : NULL;
        bdt[i] = bias[i] ? bias[i]->dtype : ANVIL_DTYPE_F32;
        op[i] = out[i]->data;
        stream = stream && stream_ok(cb, &qw[i], q, x->data, T) &&
                 (qw[i].dt != ANVIL_DTYPE_U4 || (qw[i].zeros != NULL) == (qw[0].zeros != NULL));
        rows = rows && rows_ok(cb, &qw[i], q, x->data, T);
        irows = irows && irows_ok(cb, &qw[i], q, x->data, T);
        mma16 = mma16 && mma16_ok(cb, &qw[i], q, x->data, T);
        mma = mma && mma_ok(cb, &qw[i], q, x->data, T);
        simt = simt && simt_ok(cb, w[i], &qw[i], x->data, op[i], T);
    }
    TRY(anvil_cuda_use(cb));
    /* one dtype for every part: mma16_first / mma_first say the same for each */
    const int use16 = mma16 && mma16_first(cb, &qw[0], T);
    int64_t rows_total = 0; /* the launch's weight rows (gate/up: both) */
    for (int i = 0; i < n; i++)
        rows_total += qw[i].N;
    rows = rows && rows_first(cb, rows_total * K);
    irows = irows && irows_first(cb, rows_total);
    if (stream) {
        anvil_cuda_gemv_mma_call c = mma_call(cb, x, q0, n, qw);
        c.silu = silu;
        for (int i = 0; i < n; i++) {
            c.bias[i] = bp[i];
            c.bias_dt[i] = bdt[i];
            c.out[i] = op[i];
        }
        TRY(run_stream(cb, &c));
        *done = 1;
        return ANVIL_OK;
    }
    if (rows || irows || use16 || (mma && (mma_first(cb, &qw[0], T) || !simt))) {
        anvil_cuda_gemv_mma_call c = mma_call(cb, x, q0, n, qw);
        c.silu = silu;
        for (int i = 0; i < n; i++) {
            c.bias[i] = bp[i];
            c.bias_dt[i] = bdt[i];
            c.out[i] = op[i];
        }
        TRY(rows    ? anvil_cuda_launch_gemv_fp8_rows(&c)
            : irows ? anvil_cuda_launch_gemv_int4_rows(&c)
            : use16 ? anvil_cuda_launch_gemv_mma16_quant(&c)
                    : anvil_cuda_launch_gemv_mma_quant(&c));
        *done = 1;
        return ANVIL_OK;
    }
    if (!simt)
        return ANVIL_OK;
    const void *xp = x->data;
    anvil_dtype xdt = dt;
    if (q0->perm != NULL || q0->act != ANVIL_QUANT_ACT_NONE) {
        TRY(prep_x(cb, x, q0, ANVIL_DTYPE_F32, &xp));
        xdt = ANVIL_DTYPE_F32;
    }
    if (silu)
        TRY(anvil_cuda_launch_gemv_quant_silu(cb->stream, anvil_cuda_pdl(cb), &qw[0], &qw[1], xp, xdt, bp[0], bdt[0], bp[1],
                                              bdt[1], op[0], dt, T));
    else
        TRY(anvil_cuda_launch_gemv_quant_multi(cb->stream, anvil_cuda_pdl(cb), n, qw, xp, xdt, bp, bdt, op, dt, T));
    *done = 1;
    return ANVIL_OK;
}
