/*
 * cuda_internal.h: what the CUDA backend's files share (not a public
 * interface; the CUDA tests include it to reach the test knobs).
 *
 * Layout of the backend:
 *   cuda_backend.c   creation, memory, copies, the error word, the op table
 *   cuda_check.c     host-side argument checks (shapes, dtypes, aliasing)
 *   cuda_matmul.c    GEMMs through cuBLASLt, algorithm cache per shape
 *   cuda_attention.c kernel choice and launch geometry for attention
 *   cuda_*.cu        one op per file: the kernel(s) and an extern "C"
 *                    launcher that checks its sizes and the last CUDA error
 *
 * Everything runs on one CUDA stream per backend, asynchronously; download()
 * and synchronize() wait. Step arrays (token ids, slots, block tables) live
 * in device memory, so kernels cannot return a status for a bad index: they
 * skip the access and set a bit in a device "error word", which download()
 * and synchronize() read back and turn into ANVIL_ERR_INVALID_ARG.
 *
 * This header is C and CUDA C++: the .cu files include it too.
 */
#ifndef ANVIL_BACKEND_CUDA_INTERNAL_H
#define ANVIL_BACKEND_CUDA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <pthread.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "core/error.h"

/* Bits of the device error word. */
enum {
    ANVIL_CUDA_BAD_TOKEN = 1,   /* embedding: token id outside the table */
    ANVIL_CUDA_BAD_SLOT = 2,    /* attention: cache slot outside the cache */
    ANVIL_CUDA_BAD_BLOCK = 4,   /* attention: block id outside the cache, or position past the table */
    ANVIL_CUDA_BAD_SEQ = 8,     /* attention: seq_of_token outside [0, n_seqs) */
    ANVIL_CUDA_BAD_ROW = 16,    /* gather_rows: row outside x */
    ANVIL_CUDA_BAD_PERM = 32,   /* quantized matmul: a perm entry outside [0, K) */
    ANVIL_CUDA_BAD_POSITION = 64, /* pos_embedding: position outside the table */
};

typedef struct anvil_cuda_mm_cache anvil_cuda_mm_cache; /* cuda_matmul.c */
typedef struct anvil_cuda_graphs anvil_cuda_graphs;     /* cuda_graph.c */

/* The fp8 W8A8 codes of one x shared by the matmuls that read it, inside
 * one op call (cuda_fp8_x.c). */
typedef struct anvil_cuda_fp8_x {
    const void *x;             /* the activations [T, K] shared; NULL: no share open */
    int64_t T, K;
    int made;                  /* codes and sx hold x's, quantized with act, input_scale, perm */
    int act;
    float input_scale;
    const int32_t *perm;
    void *codes;               /* [T, K] fp8 e4m3, in fp8_x_buf */
    float *sx;                 /* [T] */
} anvil_cuda_fp8_x;

typedef struct anvil_cuda_backend {
    anvil_backend be;          /* be.impl points back here */
    anvil_backend_ops ops;     /* per instance: act_dtype differs */
    int device;
    anvil_backend_config config; /* as created (cpu_isa cleared) */
    cudaStream_t stream;
    int n_sm;
    int sm;                    /* compute capability, major * 10 + minor (90: sm_90) */
    int pdl;                   /* launch a decode step's kernels with programmatic dependent launch
                                  (sm_90+, unless config.no_pdl) */
    int pdl_fence;             /* 1 after a copy or memset was queued on the stream: the next kernel
                                  launches without the attribute (anvil_cuda_pdl) */
    size_t smem_optin;         /* largest dynamic shared memory a block may opt in to */

    /* cuBLASLt: one handle, one workspace, the algorithm per GEMM shape */
    cublasLtHandle_t lt;
    void *lt_workspace;
    size_t lt_workspace_bytes;
    anvil_cuda_mm_cache *mm_cache;

    /* device scratch, grown on demand (never shrinks) */
    void *mm_scratch;          /* matmul: a weight converted to the activation dtype */
    size_t mm_scratch_bytes;
    void *q_scratch;           /* quantized matmul: prepared activations (x', fp8 codes and row scales) */
    size_t q_scratch_bytes;
    void *fp8_x_buf;           /* the shared fp8 codes and row scales (fp8_x) */
    size_t fp8_x_bytes;
    anvil_cuda_fp8_x fp8_x;
    /* what the share did, for the tests: codes made by a norm kernel, made by
     * a matmul's quantization launch, and matmuls that read codes made before */
    int64_t fp8_x_norm_made, fp8_x_quant_made, fp8_x_reused;
    void *attn_ws;             /* attention: split-K partial results */
    size_t attn_ws_bytes;
    void *attn_cnt;            /* attention: the splits done per block of heads, zero between launches */
    size_t attn_cnt_bytes;
    void *gsq_ws;              /* the streaming quantized GEMV: split-K partial sums */
    size_t gsq_ws_bytes;
    void *gsq_cnt;             /* the streaming quantized GEMV: splits done per tile, zero between launches */
    size_t gsq_cnt_bytes;

    /* the error word: device int, and a pinned host copy */
    int *d_err;
    int *h_err;
    /* download_async's slots: the error word copied after each copy (pinned,
     * two ints) and the event that ends it, so download_wait waits for that
     * copy alone, not for a step launched after it */
    int *h_err_slot;
    cudaEvent_t dl_done[2];

    /* pinned staging for uploads: two buffers used in turn, each with the
     * event of its last copy, so upload() returns as soon as src is copied */
    void *stage[2];
    cudaEvent_t stage_done[2];
    size_t stage_bytes;
    /* upload_async's copy lanes, made on first use (lanes_mu) */
    cudaStream_t lanes[ANVIL_UPLOAD_LANES];
    pthread_mutex_t lanes_mu;
    int lanes_made;
    int stage_next;

    /* step graphs (cuda_graph.c) */
    int graphs_enabled;        /* 0 with config.no_cuda_graphs */
    int capturing;             /* between graph_begin (recording) and graph_end */
    anvil_cuda_graphs *graphs;

    anvil_cuda_knobs knobs;    /* test knobs, see cuda_backend.h */
    int decode_occupancy[3][4][4]; /* decode kernel blocks per SM by [dtype][head_dim class][group class], 0: not asked yet */
    int decode_mma_occupancy[2][3][3]; /* tensor-core decode kernel blocks per SM by [bf16/f16][head_dim 32/64/128][2/3 stages, fp8 cache] */
    /* the norm GEMV kernel's blocks per SM by [bf16/f16][rows - 1][silu], for norm_gemv_k (0: not asked yet) */
    int norm_gemv_occupancy[2][4][2];
    int64_t norm_gemv_k[2][4][2];
} anvil_cuda_backend;

static inline anvil_cuda_backend *anvil_cuda_impl(anvil_backend *be) { return (anvil_cuda_backend *)be->impl; }

/*
 * Programmatic dependent launch (sm_90+): the kernels of a decode step that
 * wait for their predecessor inside (anvil_pdl_wait, cuda_common.cuh) are
 * launched with the attribute that lets them start while it drains, so
 * their launch and their first weight loads overlap its tail. Each
 * launcher takes the backend's pdl (anvil_cuda_backend.pdl) as an argument,
 * the attention launchers in anvil_cuda_attn.pdl.
 */

/* Whether the next kernel on cb's stream launches with programmatic
 * dependent launch: cb->pdl, except right after a copy or memset on the
 * stream (cb->pdl_fence, which this clears). A dependent launch waits for
 * the kernel before it (anvil_pdl_wait); after anything else, the kernel
 * launches plainly, behind everything queued before it. Session 31 saw,
 * on an H100 shared with another process, kernels launched with the
 * attribute right after uploads compute with data the uploads had not yet
 * written (test_cuda_fused, 3 runs of 3; none without the attribute). Each
 * launch site reads this once a launch. */
static inline int anvil_cuda_pdl(anvil_cuda_backend *cb)
{
    const int p = cb->pdl && !cb->pdl_fence;
    cb->pdl_fence = 0;
    return p;
}

/* Marks a copy, memset or graph launch queued on cb's stream (above). */
static inline void anvil_cuda_fence(anvil_cuda_backend *cb) { cb->pdl_fence = 1; }

/* ---------------------------------------------------------------- errors */

/* ANVIL_ERR_CUDA with "what: <CUDA error string> (<name>)" when e fails. */
anvil_status anvil_cuda_status(cudaError_t e, const char *what, const char *file, int line);

/* The last launch error (cudaGetLastError) as a status, for the launchers. */
#define ANVIL_CUDA_LAUNCHED(what) anvil_cuda_status(cudaGetLastError(), (what), __FILE__, __LINE__)

#define CUDA_TRY(call, what)                                               \
    do {                                                                   \
        cudaError_t cuda_try_e_ = (call);                                  \
        if (cuda_try_e_ != cudaSuccess)                                    \
            return anvil_cuda_status(cuda_try_e_, (what), __FILE__, __LINE__); \
    } while (0)

/* Makes the backend's device current (every entry point does this first, so
 * backends on several devices can share a thread). */
anvil_status anvil_cuda_use(anvil_cuda_backend *cb);

/* Grows *buf to at least `bytes` (waits for the stream before freeing the
 * old buffer, and drops the step graphs, which hold the old pointer).
 * During a graph capture a buffer cannot grow: an error, and the capture is
 * dropped. */
anvil_status anvil_cuda_reserve(anvil_cuda_backend *cb, void **buf, size_t *have, size_t bytes, const char *what);

/* ---------------------------------------------------------------- step graphs (cuda_graph.c) */

anvil_status anvil_cuda_graph_begin(anvil_backend *be, uint64_t key, int *action);
anvil_status anvil_cuda_graph_end(anvil_backend *be, uint64_t key, anvil_status ops_status, int *ran);
/* Drops every graph (the keys start over). */
void anvil_cuda_graphs_reset(anvil_cuda_backend *cb);
void anvil_cuda_graphs_free(anvil_cuda_backend *cb);

/* ---------------------------------------------------------------- checks */

int anvil_cuda_is_float_dtype(anvil_dtype dt);
/* A quantized weight (docs/quantization.md, the canonical form) as the
 * CUDA matmul takes it: ANVIL_ERR_INVALID_ARG for a malformed one (quant
 * on a float weight, a quantized dtype without quant or scales, a group
 * that does not divide K, zeros on anything but u4, fp8 activations on
 * anything but fp8, a bad static input scale), as the CPU's check; perm's
 * entries are device memory: the kernels check them (ANVIL_CUDA_BAD_PERM).
 * ANVIL_OK for NULL and plain weights. */
anvil_status anvil_cuda_check_quant(const anvil_tensor *w, const char *what);
static inline int anvil_cuda_is_quant_dtype(anvil_dtype dt)
{
    return dt == ANVIL_DTYPE_F8_E4M3 || dt == ANVIL_DTYPE_I8 || dt == ANVIL_DTYPE_U4;
}
anvil_status anvil_cuda_check_act(const anvil_cuda_backend *cb, const anvil_tensor *t, const char *what);
anvil_status anvil_cuda_check_vector(const anvil_tensor *w, int64_t n, const char *what);
anvil_status anvil_cuda_check_same_shape(const anvil_tensor *a, const anvil_tensor *b, const char *what);
anvil_status anvil_cuda_check_step_rows(const anvil_step *step, int64_t rows, const char *what);
anvil_status anvil_cuda_check_attention(const anvil_cuda_backend *cb, const anvil_attention_args *a);

/* ---------------------------------------------------------------- ops (host side) */

void anvil_cuda_matmul_cache_free(anvil_cuda_mm_cache *c);
anvil_status anvil_cuda_op_matmul(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w,
                                  const anvil_tensor *bias, anvil_tensor *out);
anvil_status anvil_cuda_op_attention(anvil_backend *be, const anvil_attention_args *args);
/* matmul of a quantized weight (cuda_matmul_quant.c; w checked by
 * anvil_cuda_check_quant, x/out/bias by anvil_cuda_op_matmul, T, N, K > 0) */
anvil_status anvil_cuda_matmul_quant(anvil_cuda_backend *cb, const anvil_tensor *x, const anvil_tensor *w,
                                     const anvil_tensor *bias, anvil_tensor *out);
/* The matmuls of one x with quantized weights of one layout (q/k/v,
 * gate/up): one preparation of x and one GEMV launch where the GEMV takes
 * them (*done = 1); else nothing done (*done = 0) and the caller runs the
 * separate matmuls. Each part checked as anvil_cuda_op_matmul checks.
 * With silu (n 2: gate, up): out[0] = silu(x W0^T + b0) * (x W1^T + b1)
 * in the same launch, each product rounded first (out[1] not written). */
anvil_status anvil_cuda_matmul_quant_multi(anvil_cuda_backend *cb, const anvil_tensor *x, int n,
                                           const anvil_tensor *const *w, const anvil_tensor *const *bias,
                                           anvil_tensor *const *out, int silu, int *done);
/* Whether anvil_cuda_matmul_quant takes cuBLASLt's FP8 GEMM (path 2) for
 * x [T, K] through w into out for certain: the GEMM takes w and no GEMV
 * path takes these rows (1 for every prefill of an fp8 W8A8 weight; at
 * the GEMV's rows 0, also where a GEMV would decline x's alignment and
 * leave it to the GEMM: callers use it to decide whether to make codes
 * ahead, which only costs time when wrong). */
int anvil_cuda_matmul_quant_on_fp8_gemm(const anvil_cuda_backend *cb, const anvil_tensor *x, const anvil_tensor *w,
                                        const anvil_tensor *out);

/*
 * Shared fp8 activations (cuda_fp8_x.c). anvil_cuda_fp8_x_open(x) before
 * the matmuls of one x (1: it opened the share, the caller closes it;
 * 0: one is open already, or the knob fp8_act_share = 2 keeps it off),
 * anvil_cuda_fp8_x_close after, on every path. Inside, anvil_cuda_fp8_x_get
 * gives the FP8 GEMM path the codes of x for a weight's quantization: the
 * share's (made by the first caller, through anvil_cuda_launch_quant_act
 * as the unshared path), or *codes NULL when no share holds x or it holds
 * another quantization (the caller makes its own). anvil_cuda_fp8_x_fill:
 * the share's buffers for the codes of x under q, marked made (the caller
 * writes them before anything reads them: the norm kernel).
 */
int anvil_cuda_fp8_x_open(anvil_cuda_backend *cb, const anvil_tensor *x);
void anvil_cuda_fp8_x_close(anvil_cuda_backend *cb);
anvil_status anvil_cuda_fp8_x_get(anvil_cuda_backend *cb, const anvil_tensor *x, const anvil_quant *q,
                                  const void **codes, const float **sx);
anvil_status anvil_cuda_fp8_x_fill(anvil_cuda_backend *cb, const anvil_quant *q, void **codes, float **sx);

/* out[T, N] = (sx[t] * sw[n]) * sum_k xq[t, k] wq[n, k] (+ bias[N]) on
 * cuBLASLt's FP8 GEMM (e4m3 x e4m3, f32 accumulation, outer-vector scales;
 * cuda_matmul.c): xq [T, K] and wq [N, K] fp8 e4m3, sx [T] and sw [N] f32,
 * out in act_dt (bf16/f16). ANVIL_ERR_UNSUPPORTED (nothing launched, no
 * error left) when cuBLASLt has no algorithm for it: the caller takes
 * another path. */
anvil_status anvil_cuda_gemm_fp8(anvil_cuda_backend *cb, const void *xq, const float *sx, const void *wq,
                                 const float *sw, const void *bias, anvil_dtype bias_dt, void *out,
                                 anvil_dtype act_dt, int64_t T, int64_t K, int64_t N);
/* resolve_tokens (backend.h), cuda_ops.c */
anvil_status anvil_cuda_op_resolve_tokens(anvil_backend *be, const anvil_step *step, const int32_t *prev_ids);
anvil_status anvil_cuda_op_embedding(anvil_backend *be, const anvil_tensor *table, const anvil_step *step,
                                     anvil_tensor *out);
anvil_status anvil_cuda_op_rmsnorm(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w, float eps,
                                   float w_offset, anvil_tensor *out);
anvil_status anvil_cuda_op_head_rmsnorm(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w,
                                        int32_t head_dim, float eps, anvil_tensor *out);
anvil_status anvil_cuda_op_rope(anvil_backend *be, anvil_tensor *x, const anvil_step *step, int32_t head_dim,
                                const anvil_rope_freqs *f);
anvil_status anvil_cuda_op_silu_mul(anvil_backend *be, const anvil_tensor *gate, const anvil_tensor *up,
                                    anvil_tensor *out);
anvil_status anvil_cuda_op_add(anvil_backend *be, const anvil_tensor *a, const anvil_tensor *b, anvil_tensor *out);
anvil_status anvil_cuda_op_gelu_tanh_mul(anvil_backend *be, const anvil_tensor *gate, const anvil_tensor *up,
                                         anvil_tensor *out);
anvil_status anvil_cuda_op_scale(anvil_backend *be, const anvil_tensor *x, float c, anvil_tensor *out);
anvil_status anvil_cuda_op_softcap(anvil_backend *be, const anvil_tensor *x, float cap, anvil_tensor *out);
anvil_status anvil_cuda_op_gather_rows(anvil_backend *be, const anvil_tensor *x, const anvil_step *step,
                                       anvil_tensor *out);
anvil_status anvil_cuda_op_argmax_rows(anvil_backend *be, const anvil_tensor *x, int32_t *ids);
/* GPT-2's ops (cuda_ops.c) */
anvil_status anvil_cuda_op_layernorm(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w,
                                     const anvil_tensor *b, float eps, anvil_tensor *out);
anvil_status anvil_cuda_op_gelu_tanh(anvil_backend *be, const anvil_tensor *x, anvil_tensor *out);
anvil_status anvil_cuda_op_pos_embedding(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *table,
                                         const anvil_step *step, anvil_tensor *out);
/* sample_rows (cuda_sample.cu); anvil_cuda_sample_set_chunk: a test knob, the
 * shared-memory chunk (1..4096 candidates) of the streamed paths */
anvil_status anvil_cuda_op_sample_rows(anvil_backend *be, const anvil_tensor *x, const anvil_sample_draw *draws,
                                       const anvil_sample_masks *masks, int32_t *ids);
void anvil_cuda_sample_set_chunk(int cap);
/* cuda_fused.c */
anvil_status anvil_cuda_op_add_rmsnorm(anvil_backend *be, const anvil_tensor *a, const anvil_tensor *b,
                                       const anvil_tensor *w, float eps, anvil_tensor *sum, anvil_tensor *norm);
anvil_status anvil_cuda_op_matmul_multi(anvil_backend *be, const anvil_tensor *x, int n, const anvil_tensor *const *w,
                                        const anvil_tensor *const *bias, anvil_tensor *const *out);
anvil_status anvil_cuda_op_matmul_silu_mul(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *wg,
                                           const anvil_tensor *bg, const anvil_tensor *wu, const anvil_tensor *bu,
                                           anvil_tensor *gate, anvil_tensor *up, anvil_tensor *out);
anvil_status anvil_cuda_op_add_rmsnorm_matmul_multi(anvil_backend *be, const anvil_tensor *a, const anvil_tensor *b,
                                                   const anvil_tensor *norm_w, float eps, anvil_tensor *sum,
                                                   anvil_tensor *x, int n, const anvil_tensor *const *w,
                                                   const anvil_tensor *const *bias, anvil_tensor *const *out);
anvil_status anvil_cuda_op_add_rmsnorm_matmul_silu_mul(anvil_backend *be, const anvil_tensor *a,
                                                      const anvil_tensor *b, const anvil_tensor *norm_w, float eps,
                                                      anvil_tensor *sum, anvil_tensor *x, const anvil_tensor *wg,
                                                      const anvil_tensor *bg, const anvil_tensor *wu,
                                                      const anvil_tensor *bu, anvil_tensor *gate, anvil_tensor *up,
                                                      anvil_tensor *out);

/* ---------------------------------------------------------------- launchers (cuda_*.cu)
 * Each checks what the kernel itself relies on, launches on `stream`, and
 * returns the launch error. dtypes are F32, BF16 or F16 unless said. */

/* ids[t] < 0 becomes prev[-1 - ids[t]] (0 where that is negative). */
anvil_status anvil_cuda_launch_resolve_tokens(cudaStream_t stream, int32_t *ids, int32_t n_tokens, const int32_t *prev);
anvil_status anvil_cuda_launch_embedding(cudaStream_t stream, const void *table, anvil_dtype table_dt,
                                         int64_t vocab, const int32_t *ids, int32_t n_tokens, void *out,
                                         anvil_dtype out_dt, int64_t width, int *err);

/* n_pieces pieces of `width` elements each, contiguous; w is [width];
 * y = x / rms(x) * (w_offset + w). */
anvil_status anvil_cuda_launch_rmsnorm(cudaStream_t stream, int pdl, const void *x, const void *w, anvil_dtype w_dt,
                                       void *out, anvil_dtype act_dt, int64_t n_pieces, int64_t width, float eps,
                                       float w_offset);
/* out = gelu_tanh(gate) * up in f32 (cuda_gelu.cu) */
anvil_status anvil_cuda_launch_gelu_tanh_mul(cudaStream_t stream, const void *gate, const void *up, void *out,
                                             anvil_dtype act_dt, int64_t n);
/* out = gelu_tanh(x) in f32, out may alias x (cuda_gelu.cu) */
anvil_status anvil_cuda_launch_gelu_tanh(cudaStream_t stream, const void *x, void *out, anvil_dtype act_dt, int64_t n);
/* rows rows of `width`: y = (x - mean) / sqrt(var + eps) * w + b in f32 (cuda_layernorm.cu) */
anvil_status anvil_cuda_launch_layernorm(cudaStream_t stream, int pdl, const void *x, const void *w, anvil_dtype w_dt,
                                         const void *b, anvil_dtype b_dt, void *out, anvil_dtype act_dt, int64_t rows,
                                         int64_t width, float eps);
/* out[t] = x[t] + table[positions[t]] in f32; a position outside [0,
 * n_positions) adds nothing and sets ANVIL_CUDA_BAD_POSITION (cuda_pos_embedding.cu) */
anvil_status anvil_cuda_launch_pos_embedding(cudaStream_t stream, const void *x, const void *table,
                                             anvil_dtype table_dt, int64_t n_positions, const int32_t *positions,
                                             int32_t n_tokens, void *out, anvil_dtype act_dt, int64_t width, int *err);
/* softcap 0: out = x * c, c rounded to act_dt first; softcap 1: out =
 * tanhf(x / c) * c in f32 (cuda_softcap.cu). out may alias x. */
anvil_status anvil_cuda_launch_scale(cudaStream_t stream, const void *x, float c, int softcap, void *out,
                                     anvil_dtype act_dt, int64_t n);

/* A rope's frequencies (backend.h's anvil_rope_freqs) as the kernels take
 * them, by value: with inv_freq_long, token t of sequence seq_of_token[t]
 * uses it when seq_lens of that sequence > long_after. */
typedef struct anvil_cuda_rope {
    const float *inv_freq;       /* [head_dim / 2] */
    const float *inv_freq_long;  /* [head_dim / 2] or NULL */
    const int32_t *seq_of_token; /* [n_tokens], with inv_freq_long */
    const int32_t *seq_lens;     /* [n_seqs], with inv_freq_long */
    int32_t long_after;
    float scale;                 /* cos and sin multiplied by it (1: none) */
} anvil_cuda_rope;

/* The kernels' form of f for a step (f NULL: inv_freq NULL). */
anvil_cuda_rope anvil_cuda_rope_of(const anvil_rope_freqs *f, const anvil_step *step);

anvil_status anvil_cuda_launch_rope(cudaStream_t stream, void *x, anvil_dtype act_dt, int64_t n_tokens,
                                    int64_t width, int32_t head_dim, const int32_t *positions,
                                    const anvil_cuda_rope *rope);

anvil_status anvil_cuda_launch_silu_mul(cudaStream_t stream, const void *gate, const void *up, void *out,
                                        anvil_dtype act_dt, int64_t n);
anvil_status anvil_cuda_launch_add(cudaStream_t stream, int pdl, const void *a, const void *b, void *out, anvil_dtype act_dt,
                                   int64_t n);
anvil_status anvil_cuda_launch_gather_rows(cudaStream_t stream, int pdl, const void *x, int64_t n_rows, void *out,
                                           anvil_dtype act_dt, int64_t width, const int32_t *rows,
                                           int32_t n_out, int *err);

/* ids[r] = argmax of row r of x [rows, cols] (lowest column on ties). */
anvil_status anvil_cuda_launch_argmax_rows(cudaStream_t stream, int pdl, const void *x, anvil_dtype act_dt, int64_t rows,
                                           int64_t cols, int32_t *ids);

/* dst[i] = (dst_dt) src[i] */
anvil_status anvil_cuda_launch_convert(cudaStream_t stream, const void *src, anvil_dtype src_dt, void *dst,
                                       anvil_dtype dst_dt, int64_t n);
/* out[r, c] += bias[c] (out is [rows, cols] of out_dt), summed in f32. */
anvil_status anvil_cuda_launch_bias_add(cudaStream_t stream, void *out, anvil_dtype out_dt, const void *bias,
                                        anvil_dtype bias_dt, int64_t rows, int64_t cols);

/* out[rows, N] = x[rows, K] w[N, K]^T (+ bias[N]): a plain tiled kernel,
 * for shapes cuBLASLt takes no algorithm for. x, w, out in act_dt. */
anvil_status anvil_cuda_launch_gemm_simt(cudaStream_t stream, const void *x, const void *w, const void *bias,
                                         anvil_dtype bias_dt, void *out, anvil_dtype act_dt, int64_t rows,
                                         int64_t K, int64_t N);

/* out[T, N] = x[T, K] w[N, K]^T (+ bias[N]) for T <= 4 rows: a stream over
 * w (cuda_gemv.cu). x, w, out in act_dt (bf16/f16); K a multiple of 8;
 * 16-byte aligned pointers: anvil_cuda_gemv_ok. */
int anvil_cuda_gemv_ok(anvil_dtype dt, int64_t T, int64_t K, const void *x, const void *w, const void *out);
anvil_status anvil_cuda_launch_gemv(cudaStream_t stream, int pdl, const void *x, const void *w, const void *bias,
                                    anvil_dtype bias_dt, void *out, anvil_dtype act_dt, int64_t T, int64_t K,
                                    int64_t N);
/* Several GEMVs of one x in one launch: out[i] [T, n[i]] = x w[i]^T (+ bias[i]), i < n_parts
 * (1..4); every w[i] and out[i] as anvil_cuda_gemv_ok asks. */
anvil_status anvil_cuda_launch_gemv_multi(cudaStream_t stream, int pdl, const void *x, int n_parts, const void *const *w,
                                          const void *const *bias, const anvil_dtype *bias_dt, void *const *out,
                                          const int64_t *n, anvil_dtype act_dt, int64_t T, int64_t K);
/* out [T, N] = silu(x wg^T + bg) * (x wu^T + bu), each product rounded to the activation dtype first. */
anvil_status anvil_cuda_launch_gemv_silu_mul(cudaStream_t stream, int pdl, const void *x, const void *wg, const void *bg,
                                             anvil_dtype bg_dt, const void *wu, const void *bu, anvil_dtype bu_dt,
                                             void *out, anvil_dtype act_dt, int64_t T, int64_t K, int64_t N);
/* ---- quantized weights (docs/quantization.md's canonical form; docs/cuda-backend.md "Quantized weights") */

/* A quantized weight w [N, K] as the kernels take it (device pointers). */
typedef struct anvil_cuda_qweight {
    const void *w;          /* [N, K] of dt: F8_E4M3, I8 or U4 (two a byte along K, low nibble first) */
    anvil_dtype dt;
    const float *scales;    /* [N, K / gs] */
    const uint8_t *zeros;   /* U4 only: [N, K / gs]; NULL: 8 */
    int64_t gs;             /* columns per scale (the group, or K when per channel) */
    int64_t N, K;
} anvil_cuda_qweight;

/* The weight-only GEMV (cuda_gemv_quant.cu): out[t, n] = sum_k x[t, k]
 * W[n][k] (+ bias[n]), W[n][k] = (v - z) * s, for T rows (any T >= 1, run
 * four at a time: each pass reads the weight once). x [T, K] in x_dt
 * (the activation dtype, or F32: prepared activations), out [T, N] in
 * out_dt (F32, BF16, F16). Takes (anvil_cuda_gemv_quant_ok): K a multiple
 * of a 16-byte piece (16 fp8/i8 elements, 32 u4 ones), the group a multiple
 * of it, x, w and out 16-byte aligned. */
int anvil_cuda_gemv_quant_ok(const anvil_cuda_qweight *w, const void *x, anvil_dtype x_dt, const void *out);
anvil_status anvil_cuda_launch_gemv_quant(cudaStream_t stream, int pdl, const anvil_cuda_qweight *w, const void *x,
                                          anvil_dtype x_dt, const void *bias, anvil_dtype bias_dt, void *out,
                                          anvil_dtype out_dt, int64_t T);
/* Several weights of one x and one layout (dtype, K, group) in one launch
 * (q, k and v; gate and up): out[i] [T, w[i].N] = x W_i^T (+ bias[i]),
 * i < n_parts (1..4); bias NULL or [n_parts] (entries may be NULL). */
anvil_status anvil_cuda_launch_gemv_quant_multi(cudaStream_t stream, int pdl, int n_parts, const anvil_cuda_qweight *w,
                                                const void *x, anvil_dtype x_dt, const void *const *bias,
                                                const anvil_dtype *bias_dt, void *const *out, anvil_dtype out_dt,
                                                int64_t T);
/* out [T, N] = silu(x Wg^T + bg) * (x Wu^T + bu), each product rounded to
 * out_dt first (as two matmuls and silu_mul), in one launch: wg and wu of
 * one layout and N. */
anvil_status anvil_cuda_launch_gemv_quant_silu(cudaStream_t stream, int pdl, const anvil_cuda_qweight *wg,
                                               const anvil_cuda_qweight *wu, const void *x, anvil_dtype x_dt,
                                               const void *bg, anvil_dtype bg_dt, const void *bu, anvil_dtype bu_dt,
                                               void *out, anvil_dtype out_dt, int64_t T);

/* The quantized GEMV on tensor cores (cuda_gemv_mma_quant.cu), T = 1..8
 * rows: int8 / int4 weights times x' rounded to int8 per block of 32 (the
 * CPU's int path), fp8 W8A8 per channel (sm_89+) times x' rounded to fp8
 * per row; x' (perm, rounding) made inside the launch from x in its own
 * dtype. Takes (anvil_cuda_gemv_mma_quant_ok): K a multiple of 64, int
 * groups of a multiple of 32, fp8 per channel with act dynamic or static,
 * w and x 16-byte aligned, x' in the device's shared memory. */
typedef struct anvil_cuda_gemv_mma_call {
    cudaStream_t stream;
    int pdl;
    int n_parts;                 /* 1..4 (q, k, v); 2 with silu (gate, up of one N) */
    int silu;                    /* out[0] = silu(x W0^T + b0) * (x W1^T + b1), each rounded to x_dt first */
    anvil_cuda_qweight w[4];     /* one layout (dtype, K, group) */
    const void *bias[4];         /* NULL or [w[i].N] */
    anvil_dtype bias_dt[4];
    void *out[4];                /* [T, w[i].N] in x_dt */
    const void *x;               /* [T, K] in x_dt (F32, BF16, F16) */
    anvil_dtype x_dt;
    int64_t T;
    const int32_t *perm;         /* NULL or [K]: an entry outside [0, K) reads 0 and sets ANVIL_CUDA_BAD_PERM */
    int *err;
    int act;                     /* fp8: ANVIL_QUANT_ACT_FP8_DYNAMIC / _STATIC; int: NONE */
    float input_scale;
    int sm;                      /* compute capability (89: 8.9) */
    int tiles_knob;              /* 2, 4: tiles of 16 rows a block; else 1 */
    int warps_knob;              /* the 16-bit GEMV's warps a tile (knob gemv_quant_warps); 0: its choice */
    int rows_warps;              /* the row GEMVs' warps a block: 4, 8 or 16 (bench_gemv_quant); 0: theirs */
} anvil_cuda_gemv_mma_call;
int anvil_cuda_gemv_mma_quant_ok(const anvil_cuda_qweight *w, int act, int sm, const void *x, anvil_dtype x_dt,
                                 int64_t T);
anvil_status anvil_cuda_launch_gemv_mma_quant(const anvil_cuda_gemv_mma_call *c);

/* Prepared activations (cuda_quant_act.cu): x' [T, K] from x [T, K] (x_dt):
 * x'[t, k] = x[t, perm[k]] (perm NULL: x[t, k]), then with fp8 activations
 * (act, input_scale as anvil_quant) each row rounded to fp8 with sx =
 * max|row| / 448 (dynamic) or input_scale (static), as the CPU does. Into
 * out as out_dt (F32, BF16, F16: fl(fp8(x' / sx) * sx) rounded to it) or,
 * with F8_E4M3, the codes fp8(x' / sx) and sx per row into row_scale [T]
 * (act NONE: sx 1). A row of zeros (sx 0) gives zeros (codes 0, sx 0). A
 * perm entry outside [0, K) reads 0 and sets ANVIL_CUDA_BAD_PERM in err. */
anvil_status anvil_cuda_launch_quant_act(cudaStream_t stream, int pdl, const void *x, anvil_dtype x_dt,
                                         const int32_t *perm, int act, float input_scale, int64_t T, int64_t K,
                                         void *out, anvil_dtype out_dt, float *row_scale, int *err);

/* out[t, n] = acc[t, n] * (sx[t] * sw[n]) (+ bias[n]), rounded to out_dt: the
 * FP8 GEMM's scales where cuBLASLt takes no scale vectors (cuda_fp8_scale.cu). */
anvil_status anvil_cuda_launch_fp8_scale(cudaStream_t stream, const float *acc, const float *sx, const float *sw,
                                         const void *bias, anvil_dtype bias_dt, void *out, anvil_dtype out_dt,
                                         int64_t T, int64_t N);

/* W as out_dt (F32, BF16, F16) [N, K]: fl((v - z) * s) rounded to it (cuda_dequant.cu). */
anvil_status anvil_cuda_launch_dequant(cudaStream_t stream, const anvil_cuda_qweight *w, void *out,
                                       anvil_dtype out_dt);

/* sum = a + b, norm = rmsnorm(sum) * w over rows of `width` (cuda_add_rmsnorm.cu). */
anvil_status anvil_cuda_launch_add_rmsnorm(cudaStream_t stream, int pdl, const void *a, const void *b, const void *w,
                                           anvil_dtype w_dt, void *sum, void *norm, anvil_dtype act_dt, int64_t rows,
                                           int64_t width, float eps);
/* The same, and the norm's fp8 W8A8 activations (act dynamic or static,
 * input_scale as anvil_quant) into codes [rows, width] and row_scale
 * [rows]: what anvil_cuda_launch_quant_act (no perm, F8_E4M3 out) makes of
 * the norm as stored, to the bit. */
anvil_status anvil_cuda_launch_add_rmsnorm_quant(cudaStream_t stream, int pdl, const void *a, const void *b,
                                                 const void *w, anvil_dtype w_dt, void *sum, void *norm,
                                                 anvil_dtype act_dt, int64_t rows, int64_t width, float eps, int act,
                                                 float input_scale, void *codes, float *row_scale);

/* add + rmsnorm in the prologue of the GEMVs of its norm (cuda_gemv_norm.cu):
 * sum = a + b (written once), x = rmsnorm(sum) * norm_w (in each block's
 * shared memory only), then as anvil_cuda_launch_gemv_multi of x (n_parts
 * matrices) or, with silu, as anvil_cuda_launch_gemv_silu_mul (w[0] gate,
 * w[1] up, out[0]). a, b, sum [T, K] in act_dt; sum aliases neither a nor b. */
typedef struct anvil_cuda_norm_gemv {
    const void *a, *b, *norm_w;
    anvil_dtype norm_w_dt;
    float eps;
    void *sum;
    int silu;
    int n_parts;
    const void *w[ANVIL_MATMUL_MULTI_MAX];
    const void *bias[ANVIL_MATMUL_MULTI_MAX];
    anvil_dtype bias_dt[ANVIL_MATMUL_MULTI_MAX];
    void *out[ANVIL_MATMUL_MULTI_MAX];
    int64_t n[ANVIL_MATMUL_MULTI_MAX]; /* columns of each matrix */
} anvil_cuda_norm_gemv;
/* Whether the kernel takes these rows (bf16/f16, 1..4 rows, K a multiple
 * of 8, x fitting 48 KB of shared memory, a, b and sum 16-byte aligned). */
int anvil_cuda_norm_gemv_ok(anvil_dtype dt, int64_t T, int64_t K, const void *a, const void *b, const void *sum);
/* Blocks of the kernel for (dt, T, K, silu) one SM holds at once. */
int anvil_cuda_norm_gemv_per_sm(anvil_dtype dt, int64_t T, int64_t K, int silu);
/* max_blocks: the blocks of one wave (n_sm x per_sm; <= 0: a block per 8 columns). */
anvil_status anvil_cuda_launch_norm_gemv(cudaStream_t stream, int pdl, int max_blocks, const anvil_cuda_norm_gemv *g,
                                         anvil_dtype act_dt, int64_t T, int64_t K);

/* Attention geometry shared by the attention kernels. */
typedef struct anvil_cuda_attn {
    const void *q, *k, *v;       /* [T, n_heads * hd], [T, n_kv_heads * hd] x2 */
    void *k_cache, *v_cache;     /* [n_blocks, block_size, n_kv_heads, hd] */
    void *out;                   /* [T, n_heads * hd] */
    anvil_dtype dt;              /* activations (and the cache, unless cache_dt is F8_E4M3) */
    anvil_dtype cache_dt;        /* dt, or F8_E4M3: the fp8 KV cache (docs/quantization.md) */
    float k_scale, v_scale;      /* an fp8 cache holds k / k_scale, v / v_scale; 1 otherwise */
    const int32_t *positions, *seq_of_token, *block_tables, *slots;
    int32_t n_tokens, n_seqs, max_blocks_per_seq, block_size, n_blocks;
    int32_t n_heads, n_kv_heads, head_dim, window;
    float scale;
    float softcap;               /* 0: none; else scaled scores s -> tanhf(s / softcap) * softcap */
    int *err;
    anvil_cuda_rope rope;        /* rope.inv_freq non-NULL: q and k arrive unrotated (rope_kv_write rotates them) */
    int pdl;                     /* the backend's pdl: launch with programmatic dependent launch */
} anvil_cuda_attn;

/* k/v rows of every token into the cache at slots[t]. */
anvil_status anvil_cuda_launch_kv_write(cudaStream_t stream, const anvil_cuda_attn *a);
/* The same after rotating q (in place) and k with a->rope, in one launch. */
anvil_status anvil_cuda_launch_rope_kv_write(cudaStream_t stream, const anvil_cuda_attn *a);

/* Tiled ("prefill") kernel: a block takes a run of consecutive tokens and
 * the query heads of one KV head, so each K/V tile is loaded once for all of
 * them. Correct for any batch. */
anvil_status anvil_cuda_launch_attn_prefill(cudaStream_t stream, const anvil_cuda_attn *a, size_t smem_optin);

/* The same on tensor cores (mma.sync, bf16/f16, head_dim a multiple of 16
 * up to 128: anvil_cuda_attn_prefill_mma_ok). rows: query rows a block, 64
 * (one m-tile a warp) or 128 (two, where head_dim is 32, 64 or 128); 0:
 * the default (the knob attn_prefill_rows). */
int anvil_cuda_attn_prefill_mma_ok(const anvil_cuda_attn *a);
anvil_status anvil_cuda_launch_attn_prefill_mma(cudaStream_t stream, const anvil_cuda_attn *a, size_t smem_optin,
                                                int rows);

/* Per-token ("decode") kernel, split-K over the context: a block takes one
 * token, the query heads of one KV head, and one split of its keys. With
 * n_splits > 1 it writes partials to ws ([T, n_heads, n_splits] of
 * (m, l) and [.., hd] of acc) and a combine kernel writes out. Correct for
 * any batch. ws must hold anvil_cuda_attn_decode_ws_bytes() bytes. */
anvil_status anvil_cuda_launch_attn_decode(cudaStream_t stream, const anvil_cuda_attn *a, int32_t n_splits,
                                           int32_t split_len, float *ws);
size_t anvil_cuda_attn_decode_ws_bytes(const anvil_cuda_attn *a, int32_t n_splits);
/* Blocks of the decode kernel for a's shape that fit on one SM at once (>= 1). */
int anvil_cuda_attn_decode_blocks_per_sm(const anvil_cuda_attn *a);
/* Merges the splits' partials in ws (the layout above) into a->out. */
anvil_status anvil_cuda_launch_attn_combine(cudaStream_t stream, const anvil_cuda_attn *a, int32_t n_splits,
                                            const float *ws);

/* The decode kernel on tensor cores (cuda_attn_decode_mma.cu): bf16/f16,
 * head_dim a multiple of 16 up to 128 (anvil_cuda_attn_decode_mma_ok). The
 * same split-K contract and workspace layout as the kernel above. With
 * counters (anvil_cuda_attn_decode_mma_counters ints, zero, left zero) the
 * last split of each block of heads to finish merges the partials itself,
 * as the combine kernel would; NULL: the combine kernel. */
int anvil_cuda_attn_decode_mma_ok(const anvil_cuda_attn *a);
anvil_status anvil_cuda_launch_attn_decode_mma(cudaStream_t stream, const anvil_cuda_attn *a, int32_t n_splits,
                                               int32_t split_len, float *ws, int *counters, int stages,
                                               size_t smem_optin);
int64_t anvil_cuda_attn_decode_mma_counters(const anvil_cuda_attn *a);
/* stages: 2 or 3 tiles of 64 keys in shared memory */
int anvil_cuda_attn_decode_mma_blocks_per_sm(const anvil_cuda_attn *a, int stages, size_t smem_optin);

/* ---------------------------------------------------------------- moe (cuda_moe.c, cuda_moe.cu) */
anvil_status anvil_cuda_op_moe(anvil_backend *be, const anvil_moe_args *args);
/* route: each token's top-k experts (ascending) and weights; sort: the
 * (token, slot) pairs by expert (offsets, active, tiles, order, row_of as
 * backend.h's anvil_moe_scratch says), tiles of tile_m rows (the GEMM's:
 * cuda_moe_schedule.h) */
anvil_status anvil_cuda_launch_moe_route(cudaStream_t stream, const void *x, anvil_dtype act_dt, const void *router,
                                         anvil_dtype w_dt, int64_t T, int64_t H, int32_t E, int32_t k, int norm,
                                         int32_t *topk_ids, float *topk_w);
anvil_status anvil_cuda_launch_moe_sort(cudaStream_t stream, const int32_t *topk_ids, int64_t n_pairs, int32_t E,
                                        int tile_m, int32_t *offsets, int32_t *active, int32_t *tiles,
                                        int32_t *order, int32_t *row_of);
/* every active expert in one launch, on CUDA cores: silu 1: a = silu(x
 * Wg^T) * (x Wu^T) from x's token rows (X act dtype) and the stacked
 * gate|up; silu 0: y = a Wd^T (X the f32 a) and the stacked down; out f32
 * [T k, N] by sorted row. A GEMV for T <= 8 (only the active experts'
 * weights read, once), else the SIMT GEMM (tiles of MOE_SIMT_TILE_ROWS). */
anvil_status anvil_cuda_launch_moe_experts(cudaStream_t stream, int silu, const void *X, anvil_dtype x_dt,
                                           const void *W, anvil_dtype w_dt, int64_t T, int32_t k, int32_t E,
                                           int64_t K, int64_t N, const int32_t *offsets, const int32_t *active,
                                           const int32_t *tiles, const int32_t *order, float *out);
/* The same on tensor cores (cuda_moe_mma.cu), X and W both of dtype dt
 * (bf16/f16): silu 1: out a [T k, N] in dt; silu 0: X that a, out y [T k,
 * N] f32, and with out2 (f32 [T k, N], or NULL) split in two halves of K:
 * out the first's partial products, out2 the second's (the combine adds
 * them). tile_m: the sort's (16, 32 or 64, moe_tile_rows). K a multiple
 * of 8, operands 16-byte aligned. */
anvil_status anvil_cuda_launch_moe_experts_mma(cudaStream_t stream, int silu, const void *X, anvil_dtype dt,
                                               const void *W, int64_t T, int32_t k, int32_t E, int64_t K, int64_t N,
                                               int tile_m, const int32_t *offsets, const int32_t *tiles,
                                               const int32_t *order, void *out, float *out2);
/* Whether the tensor-core launches take this op (both activations and
 * weights bf16 or both f16, H and I multiples of 8, aligned, shared memory). */
int anvil_cuda_moe_mma_ok(anvil_dtype x_dt, anvil_dtype w_dt, int64_t H, int64_t I, const void *x,
                          const void *gate_up, const void *down, size_t smem_optin);
/* xs[r] = x[order[r] / k] (the loop reference's gathered rows) */
anvil_status anvil_cuda_launch_moe_gather(cudaStream_t stream, const void *x, anvil_dtype act_dt, int64_t H, int32_t k,
                                          int64_t n_pairs, const int32_t *order, void *xs);
/* out[t] = sum_j w[t, j] y[row_of[t k + j]] (+ sigmoid(x[t] . sgw) sy[t]);
 * y f32 when y_f32, else act_dt; y2 NULL, or (with y_f32) a second f32
 * partial of y (y + y2: a down GEMM split in K); sgw NULL: no shared expert */
anvil_status anvil_cuda_launch_moe_combine(cudaStream_t stream, const void *x, anvil_dtype act_dt, int64_t T,
                                           int64_t H, int32_t k, const float *topk_w, const int32_t *row_of,
                                           const void *y, int y_f32, const float *y2, const void *sgw,
                                           anvil_dtype w_dt, const void *sy, void *out);

#ifdef __cplusplus
}
#endif
#endif
