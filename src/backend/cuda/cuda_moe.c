/*
 * The moe op on CUDA (backend.h, anvil_moe_args): checks, then the kernels
 * of cuda_moe.cu / cuda_moe_mma.cu in stream order: route, sort, the
 * experts' gate|up with the silu and their down as one grouped launch each,
 * the shared expert through the backend's own matmuls, and the combine.
 * The grouped launches:
 *   tensor cores  the grouped GEMM of cuda_moe_mma.cu wherever it applies
 *                 (activations and weights both bf16 or both f16, H and I
 *                 multiples of 8): row tiles of 16-64 rows per expert, at
 *                 every token count (on an H100 it beat the GEMV at one
 *                 token: docs/cuda-backend.md);
 *   GEMV          elsewhere, at most 8 tokens: a warp a weight row, the
 *                 expert's few rows in registers;
 *   SIMT          elsewhere, above 8 tokens: the grouped GEMM on CUDA cores.
 *
 * The loop: the experts as a loop of the backend's matmul_silu_mul and
 * matmul over each expert's gathered rows, the reference the tests and the
 * benchmark compare the grouped launches with. It reads the expert counts
 * back to the host, so it cannot run inside a step graph. Which runs (the
 * knob moe_loop, cuda_backend.h): 1 the loop; 2 the grouped launches as
 * above; 3 the grouped launches on CUDA cores only (the GEMV, the SIMT
 * GEMM); 0 (the default) as 2, except that where 2 would take the SIMT
 * GEMM outside a step graph the loop runs (on an H100, session 26,
 * docs/performance.md, the SIMT GEMM was 6-14x slower than cuBLASLt per
 * expert at 16 to 256 tokens). Quantized experts (fp8, int8, int4:
 * docs/quantization.md "Mixture of experts"): the loop, each expert's
 * slice through the quantized matmuls (no step graph holds it: the capture
 * is refused by name, and the step then runs unrecorded); the quantized
 * grouped GEMV (cuda_moe_quant.cu: one launch each for gate|up and down,
 * step graphs hold it) at most 8 tokens only under the knob 2 or 3 (or
 * matmul_quant = 7, which takes its streaming form for fp8). On an
 * H100 (session 30, test_cuda_moe_quant --perf, one Mixtral-8x7B layer)
 * the loop took 0.243 / 0.441 / 0.658 / 0.944 ms at 1 / 2 / 4 / 8 tokens of
 * fp8 experts against the grouped GEMV's 0.685 / 1.278 / 2.218 / 4.540
 * (int8, int4 alike), and the whole fp8 model's decode 10.3 ms a token
 * against 23.0 at batch 1, 31.6 against 125.1 at batch 8.
 */
#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/cuda_moe_quant.h"
#include "backend/cuda/cuda_moe_route_groups.h"
#include "backend/cuda/cuda_moe_schedule.h"

#define AT(base, off) ((void *)((char *)(base) + (off)))

/* The experts one at a time (the loop reference): x's rows gathered by
 * expert, then each expert's matmul_silu_mul and matmul on its rows, the
 * products in the activation dtype; y in act dtype at L->y. */
/* The quantized experts on the streaming GEMV (knob matmul_quant = 7,
 * cuda_moe_quant.h): its workspace (the dense streaming GEMV's buffers,
 * the counters zeroed when they grow: every launch leaves them zero), then
 * gate|up with the silu into a [T k, I] and down into y [T k, H]. */
static anvil_status moe_stream(anvil_cuda_backend *cb, const anvil_moe_args *a, anvil_dtype adt, int64_t T,
                               int32_t k, int32_t E, int64_t H, int64_t I, const int32_t *offsets,
                               const int32_t *active, const int32_t *order, float *ab, float *y)
{
    size_t wb[2];
    int64_t nc[2];
    anvil_cuda_moe_stream_ws(1, T, k, E, H, I, &wb[0], &nc[0]);
    anvil_cuda_moe_stream_ws(0, T, k, E, I, H, &wb[1], &nc[1]);
    const size_t ws_bytes = wb[0] > wb[1] ? wb[0] : wb[1];
    const int64_t n_cnt = nc[0] > nc[1] ? nc[0] : nc[1];
    if (n_cnt > 0) {
        TRY(anvil_cuda_reserve(cb, &cb->gsq_ws, &cb->gsq_ws_bytes, ws_bytes, "moe: streaming GEMV partials"));
        const size_t need = (size_t)n_cnt * sizeof(int);
        const int grows = need > cb->gsq_cnt_bytes;
        TRY(anvil_cuda_reserve(cb, &cb->gsq_cnt, &cb->gsq_cnt_bytes, need, "moe: streaming GEMV counters"));
        if (grows) {
            CUDA_TRY(cudaMemsetAsync(cb->gsq_cnt, 0, cb->gsq_cnt_bytes, cb->stream), "moe: streaming GEMV counters");
            anvil_cuda_fence(cb);
        }
    }
    TRY(anvil_cuda_launch_moe_experts_stream(cb->stream, 1, a->x->data, adt, a->gate_up, T, k, E, H, I, offsets,
                                             active, order, ab, (float *)cb->gsq_ws, (int *)cb->gsq_cnt,
                                             cb->smem_optin));
    return anvil_cuda_launch_moe_experts_stream(cb->stream, 0, ab, ANVIL_DTYPE_F32, a->down, T, k, E, I, H, offsets,
                                                active, order, y, (float *)cb->gsq_ws, (int *)cb->gsq_cnt,
                                                cb->smem_optin);
}

static anvil_status moe_loop(anvil_backend *be, anvil_cuda_backend *cb, const anvil_moe_args *a,
                             const anvil_moe_scratch *L)
{
    CHECK(!cb->capturing, ANVIL_ERR_UNSUPPORTED, "cuda moe: the loop over experts%s cannot run in a step graph",
          a->gate_up->quant != NULL || a->down->quant != NULL ? " (which quantized experts take)" : "");
    const int64_t T = a->x->shape[0], H = a->x->shape[1], I = a->inter;
    const int32_t E = a->n_experts, k = a->top_k;
    const anvil_dtype adt = a->x->dtype;
    const size_t as = anvil_dtype_size(adt);
    void *s = a->scratch;
    TRY(anvil_cuda_launch_moe_gather(cb->stream, a->x->data, adt, H, k, T * k, AT(s, L->order), AT(s, L->xs)));
    int32_t offsets[4097]; /* E <= 4096 (the route launcher's bound) */
    CHECK(E <= 4096, ANVIL_ERR_INVALID_ARG, "cuda moe: %d experts", E);
    TRY(anvil_cuda_status(cudaMemcpyAsync(offsets, AT(s, L->offsets), (size_t)(E + 1) * sizeof *offsets,
                                          cudaMemcpyDeviceToHost,
                                          cb->stream), "moe offsets", __FILE__, __LINE__));
    anvil_cuda_fence(cb);
    TRY(anvil_cuda_status(cudaStreamSynchronize(cb->stream), "moe offsets", __FILE__, __LINE__));
    for (int32_t e = 0; e < E; e++) {
        const int64_t r0 = offsets[e], n = offsets[e + 1] - offsets[e];
        if (n == 0)
            continue;
        /* an expert's slices of the stacks; quantized ones with their rows of the scales and zero points */
        anvil_quant qg, qu, qd;
        anvil_tensor xe = anvil_tensor_2d(adt, n, H, AT(s, L->xs + (size_t)r0 * H * as));
        anvil_tensor wg = anvil_moe_weight_rows(a->gate_up, 2 * e * I, I, &qg);
        anvil_tensor wu = anvil_moe_weight_rows(a->gate_up, (2 * e + 1) * I, I, &qu);
        anvil_tensor wd = anvil_moe_weight_rows(a->down, e * H, H, &qd);
        anvil_tensor ge = anvil_tensor_2d(adt, n, I, AT(s, L->g + (size_t)r0 * I * as));
        anvil_tensor ue = anvil_tensor_2d(adt, n, I, AT(s, L->u + (size_t)r0 * I * as));
        anvil_tensor ae = anvil_tensor_2d(adt, n, I, AT(s, L->a + (size_t)r0 * I * as));
        anvil_tensor ye = anvil_tensor_2d(adt, n, H, AT(s, L->y + (size_t)r0 * H * as));
        TRY(anvil_cuda_op_matmul_silu_mul(be, &xe, &wg, NULL, &wu, NULL, &ge, &ue, &ae));
        TRY(anvil_cuda_op_matmul(be, &ae, &wd, NULL, &ye));
    }
    return ANVIL_OK;
}

anvil_status anvil_cuda_op_moe(anvil_backend *be, const anvil_moe_args *a)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    anvil_moe_scratch L;
    TRY(anvil_moe_check_args_quant(a, &L));
    TRY(anvil_cuda_check_act(cb, a->x, "moe x"));
    TRY(anvil_cuda_check_act(cb, a->out, "moe out"));
    const int64_t T = a->x->shape[0], H = a->x->shape[1], I = a->inter, Is = a->shared_inter;
    const int32_t E = a->n_experts, k = a->top_k;
    if (T == 0)
        return ANVIL_OK;
    TRY(anvil_cuda_use(cb));
    const anvil_dtype adt = a->x->dtype;
    void *s = a->scratch;
    int32_t *ids = AT(s, L.topk_ids), *offsets = AT(s, L.offsets), *active = AT(s, L.active);
    int32_t *tiles = AT(s, L.tiles), *order = AT(s, L.order), *row_of = AT(s, L.row_of);
    float *topw = AT(s, L.topk_w);
    if (a->n_group > 1 || (a->routed_scale != 0.0f && a->routed_scale != 1.0f)) /* DeepSeek-V2's router */
        TRY(anvil_cuda_launch_moe_route_groups(cb->stream, a->x->data, adt, a->router->data, a->router->dtype, T, H,
                                               E, k, a->norm_topk_prob, a->n_group, a->topk_group, a->routed_scale,
                                               ids, topw));
    else
        TRY(anvil_cuda_launch_moe_route(cb->stream, a->x->data, adt, a->router->data, a->router->dtype, T, H, E, k,
                                        a->norm_topk_prob, ids, topw));
    const int64_t n_pairs = T * k;
    const int knob = cb->knobs.moe_loop;
    /* quantized experts: the loop through the quantized matmuls (cuda_matmul_quant.c); under the knob 2
     * or 3, at most 8 tokens, the quantized grouped GEMV (cuda_moe_quant.cu) where it takes both stacks
     * (3-4x slower on an H100: the comment at the top); the other grouped launches read dense weights
     * only */
    const int quant = a->gate_up->quant != NULL || a->down->quant != NULL;
    const int qgemv = quant && (knob == 2 || knob == 3 || cb->knobs.matmul_quant == 7) &&
                      anvil_cuda_moe_gemv_quant_ok(a->gate_up, T) &&
                      anvil_cuda_moe_gemv_quant_ok(a->down, T);
    const int mma = !quant && knob != 3 && anvil_cuda_moe_mma_ok(adt, a->gate_up->dtype, H, I, a->x->data, a->gate_up->data,
                                                       a->down->data, cb->smem_optin);
    enum { LOOP, GEMV, MMA, SIMT, QGEMV } path;
    if (qgemv)
        path = QGEMV;
    else if (knob == 1 || quant)
        path = LOOP;
    else if (mma)
        path = MMA;
    else if (T <= 8)
        path = GEMV;
    else
        path = knob == 0 && !cb->capturing ? LOOP : SIMT;
    /* the sort cuts each expert's rows into the tiles of the GEMM that runs */
    const int forced = cb->knobs.moe_tile_rows;
    const int tile_m = path != MMA                                     ? MOE_SIMT_TILE_ROWS
                       : forced == 16 || forced == 32 || forced == 64 ? forced
                                                                      : moe_tile_rows(n_pairs, E);
    float *y2 = NULL; /* a split down GEMM's second partial */
    TRY(anvil_cuda_launch_moe_sort(cb->stream, ids, n_pairs, E, tile_m, offsets, active, tiles, order, row_of));
    if (path == LOOP) {
        TRY(moe_loop(be, cb, a, &L));
    } else if (path == MMA) {
        /* a (scratch piece of f32 size) holds the silu products in the weights' dtype */
        /* The down GEMM of a decode step has few blocks (experts with rows x H / 64: 128 for Mixtral's one
         * token on 132 SMs), too few reads in flight (67% of the copy rate at one token, the loop's GEMV
         * 82%): knob moe_split_k runs it in two halves of K, the second's partial products in xs (f32
         * [T k, H], unused here), added by the combine. Off by default until timed. */
        const int64_t est_blocks = (n_pairs < E ? n_pairs : E) * ((H + 63) / 64);
        const int split = cb->knobs.moe_split_k == 2 || (cb->knobs.moe_split_k == 1 && est_blocks < 2 * cb->n_sm);
        y2 = split ? AT(s, L.xs) : NULL;
        TRY(anvil_cuda_launch_moe_experts_mma(cb->stream, 1, a->x->data, adt, a->gate_up->data, T, k, E, H, I, tile_m,
                                              offsets, tiles, order, AT(s, L.a), NULL));
        TRY(anvil_cuda_launch_moe_experts_mma(cb->stream, 0, AT(s, L.a), adt, a->down->data, T, k, E, I, H, tile_m,
                                              offsets, tiles, order, AT(s, L.y), y2));
    } else if (path == QGEMV && cb->knobs.matmul_quant == 7 &&
               anvil_cuda_moe_stream_quant_ok(a->gate_up, T, cb->smem_optin) &&
               anvil_cuda_moe_stream_quant_ok(a->down, T, cb->smem_optin)) {
        TRY(moe_stream(cb, a, adt, T, k, E, H, I, offsets, active, order, AT(s, L.a), AT(s, L.y)));
    } else if (path == QGEMV) {
        TRY(anvil_cuda_launch_moe_experts_quant(cb->stream, 1, a->x->data, adt, a->gate_up, T, k, E, H, I, offsets,
                                                active, order, AT(s, L.a)));
        TRY(anvil_cuda_launch_moe_experts_quant(cb->stream, 0, AT(s, L.a), ANVIL_DTYPE_F32, a->down, T, k, E, I, H,
                                                offsets, active, order, AT(s, L.y)));
    } else {
        TRY(anvil_cuda_launch_moe_experts(cb->stream, 1, a->x->data, adt, a->gate_up->data, a->gate_up->dtype, T, k,
                                          E, H, I, offsets, active, tiles, order, AT(s, L.a)));
        TRY(anvil_cuda_launch_moe_experts(cb->stream, 0, AT(s, L.a), ANVIL_DTYPE_F32, a->down->data,
                                          a->down->dtype, T, k, E, I, H, offsets, active, tiles, order,
                                          AT(s, L.y)));
    }
    const void *sgw = NULL, *sy = NULL;
    anvil_dtype sg_dt = a->router->dtype;
    if (Is > 0) {
        anvil_quant qg, qu;
        anvil_tensor wg = anvil_moe_weight_rows(a->shared_gate_up, 0, Is, &qg);
        anvil_tensor wu = anvil_moe_weight_rows(a->shared_gate_up, Is, Is, &qu);
        anvil_tensor gt = anvil_tensor_2d(adt, T, Is, AT(s, L.sg));
        anvil_tensor ut = anvil_tensor_2d(adt, T, Is, AT(s, L.su));
        anvil_tensor at = anvil_tensor_2d(adt, T, Is, AT(s, L.sa));
        anvil_tensor yt = anvil_tensor_2d(adt, T, H, AT(s, L.sy));
        TRY(anvil_cuda_op_matmul_silu_mul(be, a->x, &wg, NULL, &wu, NULL, &gt, &ut, &at));
        TRY(anvil_cuda_op_matmul(be, &at, a->shared_down, NULL, &yt));
        if (a->shared_gate != NULL) { /* NULL: DeepSeek's shared experts, added ungated */
            sgw = a->shared_gate->data;
            sg_dt = a->shared_gate->dtype;
        }
        sy = yt.data;
    }
    return anvil_cuda_launch_moe_combine(cb->stream, a->x->data, adt, T, H, k, topw, row_of, AT(s, L.y), path != LOOP,
                                         y2, sgw, sg_dt, sy, a->out->data);
}
