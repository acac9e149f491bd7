/* The attention op: checks, writes the new keys and values into the cache,
 * then runs one work item per (token, kv head) on the pool, handed out
 * dynamically (prefill tokens see contexts of different lengths). Which
 * thread runs an item never changes its arithmetic. */
#include <stdatomic.h>

#include "backend/cpu/cpu_internal.h"
#include "core/error.h"

size_t anvil_cpu_attention_scratch_bytes(int32_t group, int32_t n_ctx)
{
    size_t ld = ((size_t)n_ctx + 15) / 16 * 16;
    return ld * sizeof(int64_t) + (size_t)group * ld * sizeof(float);
}

typedef struct attn_job {
    anvil_cpu_backend *cb;
    const anvil_attention_args *a;
    anvil_cpu_attn_fn fn;
    atomic_int_fast64_t next;
    int64_t n_items;
} attn_job;

/* dst[i] = fp8(src[i] / scale), as the reference's store (division, not a
 * reciprocal's product: the same bits as anvil_cpu_ref_attention). */
static void write_fp8_row(const float *src, uint8_t *dst, int64_t n, float scale)
{
    if (scale == 1.0f) {
        for (int64_t i = 0; i < n; i++)
            dst[i] = anvil_f32_to_fp8_e4m3(src[i]);
        return;
    }
    for (int64_t i = 0; i < n; i++)
        dst[i] = anvil_f32_to_fp8_e4m3(src[i] / scale);
}

/* Writes the rows of tokens [t0, t1) into their cache slots. */
static void write_cache(const anvil_attention_args *a, int64_t t0, int64_t t1)
{
    int64_t kw = (int64_t)a->n_kv_heads * a->head_dim;
    anvil_dtype cdt = a->k_cache->dtype;
    const float *k = a->k->data, *v = a->v->data;
    const float ks = anvil_cpu_kv_scale(cdt, a->k_scale), vs = anvil_cpu_kv_scale(cdt, a->v_scale);
    for (int64_t t = t0; t < t1; t++) {
        int64_t slot = a->step->slots[t];
        if (cdt == ANVIL_DTYPE_F8_E4M3) {
            write_fp8_row(k + t * kw, (uint8_t *)a->k_cache->data + slot * kw, kw, ks);
            write_fp8_row(v + t * kw, (uint8_t *)a->v_cache->data + slot * kw, kw, vs);
        } else if (cdt == ANVIL_DTYPE_F32) {
            memcpy((float *)a->k_cache->data + slot * kw, k + t * kw, (size_t)kw * 4);
            memcpy((float *)a->v_cache->data + slot * kw, v + t * kw, (size_t)kw * 4);
        } else {
            anvil_convert_from_f32(cdt, k + t * kw, (uint16_t *)a->k_cache->data + slot * kw, kw);
            anvil_convert_from_f32(cdt, v + t * kw, (uint16_t *)a->v_cache->data + slot * kw, kw);
        }
    }
}

static void cache_task(void *ctx, int ith, int nth)
{
    attn_job *job = ctx;
    int64_t t0, t1;
    anvil_cpu_split(job->a->step->n_tokens, 1, ith, nth, &t0, &t1);
    write_cache(job->a, t0, t1);
}

static void attn_task(void *ctx, int ith, int nth)
{
    (void)nth;
    attn_job *job = ctx;
    int64_t T = job->a->step->n_tokens;
    void *scratch = anvil_cpu_scratch_at(job->cb, ith);
    /* items are kv-head-major, so consecutive items of a sequence share
     * that head's cached rows in L2 */
    for (;;) {
        int64_t i = atomic_fetch_add_explicit(&job->next, 1, memory_order_relaxed);
        if (i >= job->n_items)
            break;
        job->fn(job->a, (int32_t)(i % T), (int32_t)(i / T), scratch);
    }
}

anvil_status anvil_cpu_op_attention(anvil_backend *be, const anvil_attention_args *args)
{
    if (args != NULL && args->rope != NULL)
        return anvil_cpu_attention_with_rope(be, args);
    TRY(anvil_cpu_check_attention(args));
    anvil_cpu_backend *cb = anvil_cpu_impl(be);
    const anvil_step *st = args->step;
    if (st->n_tokens == 0)
        return ANVIL_OK;
    int32_t n_ctx = 1;
    for (int32_t t = 0; t < st->n_tokens; t++) {
        int32_t p = st->positions[t];
        int32_t n = p - anvil_cpu_window_lo(p, args->sliding_window) + 1;
        n_ctx = n > n_ctx ? n : n_ctx;
    }
    TRY(anvil_cpu_scratch_reserve(cb, anvil_cpu_attention_scratch_bytes(args->n_heads / args->n_kv_heads, n_ctx)));

    attn_job job = {.cb = cb, .a = args, .fn = anvil_cpu_kernels_for(cb->isa)->attention};
    job.n_items = (int64_t)st->n_tokens * args->n_kv_heads;
    atomic_init(&job.next, 0);
    int64_t kw = (int64_t)args->n_kv_heads * args->head_dim;
    if ((int64_t)st->n_tokens * kw >= 65536)
        anvil_threadpool_run(cb->pool, cache_task, &job);
    else
        write_cache(args, 0, st->n_tokens);
    anvil_threadpool_run(cb->pool, attn_task, &job);
    return ANVIL_OK;
}
