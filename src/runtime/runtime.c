/*
 * The runtime: a model's network, its weights on a backend, the activation
 * buffers planned for the worst-case step, the paged KV cache, and the
 * forward step that walks the network op by op.
 */
#include "anvil/runtime.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/log.h"
#include "anvil/network.h"
#include "backend/backend.h"
#include "core/checked.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "runtime/rope_table.h"
#include "builder/build_plan.h"
#include "builder/fuse_plan.h"
#include "builder/kv_manifest.h"
#include "builder/lm_head.h"
#include "builder/manifest.h"
#include "io/engine_file.h"
#include "io/kv_scales.h"
#include "runtime/runtime_internal.h"
#include "runtime/runtime_plan.h"

void anvil_runtime_options_default(anvil_runtime_options *o)
{
    memset(o, 0, sizeof *o);
    o->device = "cpu";
    o->max_num_tokens = 512;
    o->max_batch_size = 64;
    o->kv_block_size = 32;
    o->weight_dtype = ANVIL_DTYPE_COUNT;
}

const anvil_model_config *anvil_runtime_config(const anvil_runtime *rt) { return &rt->cfg; }
const anvil_runtime_options *anvil_runtime_options_get(const anvil_runtime *rt) { return &rt->opts; }
anvil_dtype anvil_runtime_compute_dtype(const anvil_runtime *rt) { return rt->be->ops->act_dtype; }
anvil_dtype anvil_runtime_kv_cache_dtype(const anvil_runtime *rt) { return rt->kv_dtype; }
size_t anvil_runtime_weight_bytes(const anvil_runtime *rt) { return rt->weight_bytes; }
int32_t anvil_runtime_kv_block_size(const anvil_runtime *rt) { return rt->opts.kv_block_size; }
int32_t anvil_runtime_kv_blocks_total(const anvil_runtime *rt) { return rt->n_blocks; }
int32_t anvil_runtime_kv_blocks_free(const anvil_runtime *rt) { return rt->n_free; }

void anvil_runtime_free(anvil_runtime *rt)
{
    if (rt == NULL)
        return;
    anvil_rt_tp_release(rt); /* a leading rank 0 lets the others return */
    anvil_backend *be = rt->be;
    if (be != NULL) {
        for (int32_t i = 0; rt->plan && i < rt->plan->n_stored; i++)
            if (rt->stored_allocs && rt->stored_allocs[i])
                be->ops->free(be, rt->stored_allocs[i]);
        for (int32_t i = 0; i < rt->n_buffers; i++)
            be->ops->free(be, rt->buffers[i]);
        for (int32_t i = 0; rt->rope_tables && i < rt->n_ops; i++)
            if (rt->rope_tables[i])
                be->ops->free(be, rt->rope_tables[i]);
        for (int32_t l = 0; l < rt->n_kv_layers; l++) {
            if (rt->k_cache && rt->k_cache[l].data)
                be->ops->free(be, rt->k_cache[l].data);
            if (rt->v_cache && rt->v_cache[l].data)
                be->ops->free(be, rt->v_cache[l].data);
        }
        if (rt->meta_dev)
            be->ops->free(be, rt->meta_dev);
        anvil_rt_micro_free(rt);
        if (rt->moe_scratch)
            be->ops->free(be, rt->moe_scratch);
        if (rt->ids_dev)
            be->ops->free(be, rt->ids_dev);
        if (rt->sample_dev)
            be->ops->free(be, rt->sample_dev);
        if (rt->mask_dev)
            be->ops->free(be, rt->mask_dev);
        if (rt->tp_stage != NULL && rt->tp_stage_dev)
            be->ops->free(be, rt->tp_stage);
        for (int i = 0; i < 2; i++) {
            if (rt->launch_ids[i] != NULL && rt->launch_pinned)
                be->ops->host_free(be, rt->launch_ids[i]);
            else
                free(rt->launch_ids[i]);
        }
        anvil_backend_free(be);
    }
    free(rt->weights);
    free(rt->quants);
    free(rt->stored_allocs);
    free(rt->stored_data);
    anvil_build_plan_free(rt->plan);
    free(rt->value_buffer);
    free(rt->buffers);
    free(rt->buffer_bytes);
    free(rt->rope_tables);
    free(rt->rope_freqs);
    free(rt->fuse);
    free(rt->k_cache);
    free(rt->v_cache);
    free(rt->kv_scales);
    free(rt->free_blocks);
    free(rt->block_used);
    free(rt->meta_host);
    free(rt->logits_host_stage);
    free(rt->sample_host);
    free(rt->sample_saved);
    free(rt->mask_host);
    free(rt->mask_none);
    free(rt->launch_none[0]);
    free(rt->launch_none[1]);
    free(rt->pend_rows);
    free(rt->host_logits);
    if (!rt->tp_stage_dev)
        free(rt->tp_stage);
    anvil_sampler_free(rt->host_sampler);
    anvil_checkpoint_close(rt->ckpt);
    anvil_quant_config_free(&rt->prequant);
    anvil_engine_file_close(rt->engine);
    anvil_network_free(rt->net);
    anvil_rt_pp_free(rt); /* after the release above, which speaks over opts.comm */
    free(rt);
}

/* ------------------------------------------------------------ options */

/* kv_cache_dtype's text: ANVIL_DTYPE_COUNT for NULL or "auto"; "fp8" and
 * "fp8_e4m3" (vLLM's names) are F8_E4M3, as the dtype's own names are. */
static anvil_status parse_kv_cache_dtype(const char *name, anvil_dtype *out)
{
    *out = ANVIL_DTYPE_COUNT;
    if (name == NULL || strcmp(name, "auto") == 0)
        return ANVIL_OK;
    anvil_dtype dt;
    if (strcmp(name, "fp8") == 0 || strcmp(name, "fp8_e4m3") == 0)
        dt = ANVIL_DTYPE_F8_E4M3;
    else
        CHECK(anvil_dtype_parse(name, &dt) == 0 && (dt == ANVIL_DTYPE_F32 || dt == ANVIL_DTYPE_BF16 ||
                                                    dt == ANVIL_DTYPE_F16 || dt == ANVIL_DTYPE_F8_E4M3),
              ANVIL_ERR_INVALID_ARG, "kv_cache_dtype \"%s\": expected auto, f32, bf16, f16 or fp8", name);
    *out = dt;
    return ANVIL_OK;
}

static anvil_status resolve_options(anvil_runtime *rt, const anvil_runtime_options *in)
{
    anvil_runtime_options *o = &rt->opts;
    if (in)
        *o = *in;
    else
        anvil_runtime_options_default(o);
    if (o->device == NULL)
        o->device = "cpu";
    CHECK(o->max_num_tokens > 0, ANVIL_ERR_INVALID_ARG, "max_num_tokens must be > 0");
    CHECK(o->max_batch_size > 0, ANVIL_ERR_INVALID_ARG, "max_batch_size must be > 0");
    CHECK(o->pp_micro_batches >= 0, ANVIL_ERR_INVALID_ARG, "pp_micro_batches is %d (0 or more)",
          o->pp_micro_batches);
    CHECK(o->kv_block_size > 0 && o->kv_block_size <= 4096, ANVIL_ERR_INVALID_ARG,
          "kv_block_size must be in 1..4096");
    if (o->max_logit_rows <= 0)
        o->max_logit_rows = o->max_batch_size;
    if (o->max_seq_len <= 0) {
        /* the config's context is int64 and bounded when parsed; checked
         * again before it narrows to int32 (a value cut to 32 bits once ran
         * 2^32 + 512 as a context of 512) */
        const int64_t ctx = rt->cfg.max_position_embeddings;
        CHECK(ctx > 0 && ctx <= ANVIL_MAX_CONTEXT, ANVIL_ERR_UNSUPPORTED,
              "max_position_embeddings is %lld; anvil supports at most %d (set max_seq_len, --max-seq-len, to run "
              "with a shorter context)",
              (long long)ctx, ANVIL_MAX_CONTEXT);
        o->max_seq_len = (int32_t)ctx;
        rt->seq_len_from_config = 1;
    }
    CHECK(o->max_seq_len <= ANVIL_MAX_CONTEXT, ANVIL_ERR_UNSUPPORTED, "max_seq_len is %d; anvil supports at most %d",
          o->max_seq_len, ANVIL_MAX_CONTEXT);
    CHECK(o->kv_cache_fraction >= 0.0 && o->kv_cache_fraction <= 1.0, ANVIL_ERR_INVALID_ARG,
          "kv_cache_fraction must be in [0, 1], got %g", o->kv_cache_fraction);
    if (o->kv_cache_tokens <= 0)
        /* with a fraction alone, alloc_kv_cache sizes the pool from free memory */
        o->kv_cache_tokens = o->kv_cache_fraction > 0.0 ? 0 : (int64_t)o->max_seq_len;
    if (o->kv_cache_fraction > 0.0 && o->kv_cache_tokens / o->kv_block_size >= INT32_MAX)
        o->kv_cache_tokens = (int64_t)(INT32_MAX - 1) * o->kv_block_size; /* beside a fraction, only a cap */
    CHECK(o->kv_cache_tokens / o->kv_block_size < INT32_MAX, ANVIL_ERR_INVALID_ARG,
          "kv_cache_tokens is %lld; anvil supports at most %lld with blocks of %d tokens", (long long)o->kv_cache_tokens,
          (long long)(INT32_MAX - 1) * o->kv_block_size, o->kv_block_size);
    anvil_dtype kv;
    TRY(parse_kv_cache_dtype(o->kv_cache_dtype, &kv));
    CHECK(o->quantize >= ANVIL_QUANTIZE_NONE && o->quantize < ANVIL_QUANTIZE_COUNT, ANVIL_ERR_INVALID_ARG,
          "unknown quantization %d", (int)o->quantize);
    CHECK(o->quantize == ANVIL_QUANTIZE_NONE || o->random_weights, ANVIL_ERR_INVALID_ARG,
          "quantizing at load (--quantize %s) goes with random weights: a model folder is quantized by anvil build "
          "--quantize",
          anvil_quantize_name(o->quantize));
    CHECK(!o->quantize_lm_head || o->quantize != ANVIL_QUANTIZE_NONE, ANVIL_ERR_INVALID_ARG,
          "quantize_lm_head goes with a quantization (quantize)");
    CHECK(o->quant_group == 0 || (o->quantize == ANVIL_QUANTIZE_INT4_WO && o->quant_group > 0), ANVIL_ERR_INVALID_ARG,
          "a group size (%d) goes with int4-wo quantization only (fp8 and int8-wo scale whole rows)",
          (int)o->quant_group);
    return ANVIL_OK;
}

/*
 * The KV cache's dtype. "auto": the compute dtype on cuda; on the CPU,
 * whose kernels compute in f32, f16 for a model that computes in bf16/f16
 * (its checkpoint's torch_dtype, or weight_dtype), as llama.cpp does: half
 * the bytes a decode step reads from the cache and twice the contexts in
 * the same memory, with f16's 11-bit mantissa (bf16 keeps 8); f32 for an
 * f32 model. cuda keeps its cache in its compute dtype, or in fp8 beside
 * bf16/f16 compute (its fp8 kernels convert to the compute dtype).
 */
static anvil_status kv_cache_dtype_for(const anvil_model_config *cfg, const anvil_runtime_options *o, anvil_dtype wdt,
                                       anvil_dtype act, int fp8_default, anvil_dtype *out)
{
    anvil_dtype want;
    TRY(parse_kv_cache_dtype(o->kv_cache_dtype, &want));
    const int cuda = o->device != NULL && strncmp(o->device, "cuda", 4) == 0;
    /* auto with a checkpoint that declares an fp8 KV cache (or an engine
     * built for one): fp8, as TensorRT-LLM builds it, where the backend
     * reads fp8 beside this compute dtype (cuda: bf16/f16) */
    if (want == ANVIL_DTYPE_COUNT && fp8_default) {
        if (!cuda || act == ANVIL_DTYPE_BF16 || act == ANVIL_DTYPE_F16)
            want = ANVIL_DTYPE_F8_E4M3;
        else
            anvil_log(ANVIL_LOG_WARN,
                      "the checkpoint declares an fp8 KV cache, but the cuda backend reads fp8 beside bf16/f16 "
                      "compute only; the KV cache stays %s (--dtype bf16 for fp8)",
                      anvil_dtype_name(act));
    }
    if (cuda && want == ANVIL_DTYPE_F8_E4M3) {
        CHECK(act == ANVIL_DTYPE_BF16 || act == ANVIL_DTYPE_F16, ANVIL_ERR_UNSUPPORTED,
              "kv_cache_dtype fp8: the cuda backend reads an fp8 KV cache beside bf16/f16 compute, not %s; use "
              "--dtype bf16",
              anvil_dtype_name(act));
        *out = want;
        return ANVIL_OK;
    }
    if (cuda) {
        CHECK(want == ANVIL_DTYPE_COUNT || want == act, ANVIL_ERR_UNSUPPORTED,
              "kv_cache_dtype %s: the cuda backend keeps its KV cache in its compute dtype (%s) or fp8; use "
              "--kv-cache-dtype auto, %s or fp8 there",
              anvil_dtype_name(want), anvil_dtype_name(act), anvil_dtype_name(act));
        *out = act;
        return ANVIL_OK;
    }
    if (want == ANVIL_DTYPE_COUNT) {
        const anvil_dtype model = wdt != ANVIL_DTYPE_COUNT ? wdt : cfg->dtype;
        want = model == ANVIL_DTYPE_BF16 || model == ANVIL_DTYPE_F16 ? ANVIL_DTYPE_F16
               : act != ANVIL_DTYPE_F32                              ? act /* a plan for half activations */
                                                                     : ANVIL_DTYPE_F32;
    }
    *out = want;
    return ANVIL_OK;
}

/* ------------------------------------------------------------ weights */

/*
 * The load runs on several threads (the cores are what bounds reading a
 * warm page cache, converting and scanning): the stored tensors are cut
 * into chunks of ANVIL_BUILD_CHUNK bytes, which the threads take in turn.
 * On the CPU a thread prepares a chunk in place; on a GPU it prepares it in
 * one of its two pinned buffers and copies it on a lane of its own
 * (upload_async) while it prepares the next, so reading, scanning and
 * copying overlap. The progress callback runs on the calling thread.
 */
#define LOAD_THREADS_MAX 16

typedef struct load_chunk {
    int32_t s;       /* stored tensor */
    size_t off, len; /* its bytes */
} load_chunk;

typedef struct weight_loader {
    anvil_runtime *rt;
    load_chunk *chunks;
    int64_t n_chunks;
    _Atomic int64_t next;    /* the next chunk to take */
    _Atomic size_t done;     /* bytes prepared */
    _Atomic int threads;     /* started so far (each takes its own copy lanes) */
    _Atomic int finished;    /* ended so far */
    size_t total;
    atomic_int stop;         /* a thread failed, or the caller cancelled */
    pthread_mutex_t mu;      /* the first failure, and upload without lanes */
    anvil_status st;
    char msg[1024];
} weight_loader;

static void loader_fail(weight_loader *wl, anvil_status st)
{
    pthread_mutex_lock(&wl->mu);
    if (wl->st == ANVIL_OK) { /* messages are per thread: carry the text over */
        wl->st = st;
        snprintf(wl->msg, sizeof wl->msg, "%s", anvil_last_error());
    }
    pthread_mutex_unlock(&wl->mu);
    atomic_store(&wl->stop, 1);
}

/* An int4 zero point above 15, or an fp8 NaN (S.1111.111), among the n
 * bytes at p (elements [first, first + n) of t): a damaged engine. */
static anvil_status check_codes(const anvil_stored *t, const void *p, int64_t n, int64_t first)
{
    const unsigned char *b = p;
    const int zeros = t->role == ANVIL_STORED_ZEROS;
    for (int64_t i = 0; i < n; i++)
        CHECK(zeros ? b[i] <= 15 : (b[i] & 0x7f) != 0x7f, ANVIL_ERR_FORMAT, "tensor '%s' holds %s at element %lld",
              t->name, zeros ? "a zero point above 15" : "an fp8 NaN", (long long)(first + i));
    return ANVIL_OK;
}

/* A NaN or infinity among the n elements at p, elements [first, first + n)
 * of stored tensor s, is a damaged checkpoint: it would be served as
 * garbage. The message names the network weight and its element. */
static anvil_status check_finite(const anvil_runtime *rt, int32_t s, const void *p, int64_t n, int64_t first)
{
    const anvil_stored *t = &rt->plan->stored[s];
    if (rt->opts.no_weight_check)
        return ANVIL_OK;
    if (t->role == ANVIL_STORED_ZEROS || t->kind == ANVIL_DTYPE_F8_E4M3) /* codes: bytes */
        return check_codes(t, p, n, first);
    if (!anvil_stored_kind_is_float(t->kind))
        return ANVIL_OK; /* int8, int4: every code is a value */
    const int64_t i = anvil_find_nonfinite(t->kind, p, n);
    if (i < 0)
        return ANVIL_OK;
    float v;
    anvil_convert_to_f32(t->kind, (const char *)p + i * (int64_t)anvil_dtype_size(t->kind), &v, 1);
    const int64_t at = first + i;
    const char *name = t->name;
    int64_t off = at;
    for (int32_t k = t->n - 1; k >= 0; k--) { /* the member holding it */
        const int32_t wi = rt->plan->members[t->first + k];
        if (rt->plan->weight_offset[wi] <= at) {
            name = anvil_network_weight(rt->net, wi)->name;
            off = at - rt->plan->weight_offset[wi];
            break;
        }
    }
    return ANVIL_FAIL(ANVIL_ERR_FORMAT, "tensor '%s' holds %s at element %lld: the checkpoint is damaged", name,
                      isnan(v) ? "NaN" : v > 0 ? "+inf" : "-inf", (long long)off);
}

/* Bytes [off, off + len) of stored tensor s: prepared from the checkpoint
 * by the builder (with none, random_weights: the plan's seed's values, as
 * anvil build --random-weights writes them), or read from the engine file. */
static anvil_status stored_fill(anvil_runtime *rt, int32_t s, size_t off, void *dst, size_t len,
                                anvil_build_scratch *scratch)
{
    if (rt->engine != NULL)
        return anvil_engine_file_read(rt->engine, s, off, dst, len);
    return anvil_build_fill(rt->plan, rt->net, rt->ckpt, s, off, dst, len, scratch);
}

/* Stored tensor s's bytes as they are in a mapping (use_mmap), or NULL. */
static const void *stored_in_place(const anvil_runtime *rt, int32_t s)
{
    if (rt->engine != NULL)
        return anvil_engine_file_tensor(rt->engine, s)->data;
    if (rt->ckpt == NULL) /* random weights: made, never mapped */
        return NULL;
    const anvil_st_tensor *plain = anvil_build_plain_source(rt->plan, rt->net, rt->ckpt, s);
    return plain ? plain->data : NULL;
}

/*
 * Where stored tensor s goes: on the CPU with use_mmap, a tensor that is in
 * the mapping as it is stays there (its chunks are only scanned); else an
 * allocation of the backend, filled by the threads.
 */
static anvil_status place_stored(anvil_runtime *rt, int32_t s)
{
    anvil_backend *be = rt->be;
    const void *mapped = stored_in_place(rt, s);
    if (be->ops->weights_in_host_memory && mapped != NULL) {
        rt->stored_data[s] = (void *)mapped;
        return ANVIL_OK;
    }
    void *dev = NULL;
    TRY(be->ops->alloc(be, rt->plan->stored[s].bytes, &dev));
    rt->stored_allocs[s] = dev;
    rt->stored_data[s] = dev;
    return ANVIL_OK;
}

/* One chunk: prepared (in place on the CPU, else in buf), scanned, and
 * copied to the device (on lane `lane` when the backend has lanes, else
 * through upload under the loader's lock). */
static anvil_status load_one(weight_loader *wl, const load_chunk *c, void *buf, int lane,
                             anvil_build_scratch *scratch)
{
    anvil_runtime *rt = wl->rt;
    anvil_backend *be = rt->be;
    const size_t es = anvil_dtype_size(rt->plan->stored[c->s].kind);
    /* elements for the scan (float kinds only: U4 has no whole-byte element) */
    const int64_t n = es ? (int64_t)(c->len / es) : 0, first = es ? (int64_t)(c->off / es) : 0;
    char *dev = (char *)rt->stored_data[c->s] + c->off;
    if (be->ops->weights_in_host_memory) {
        if (rt->stored_allocs[c->s] != NULL) /* else in the mapping: scanned only */
            TRY(stored_fill(rt, c->s, c->off, dev, c->len, scratch));
        return check_finite(rt, c->s, dev, n, first);
    }
    if (lane >= 0) /* the copy that last used this buffer is done */
        TRY(be->ops->upload_wait(be, lane));
    TRY(stored_fill(rt, c->s, c->off, buf, c->len, scratch));
    TRY(check_finite(rt, c->s, buf, n, first));
    if (lane >= 0)
        return be->ops->upload_async(be, lane, dev, buf, c->len);
    pthread_mutex_lock(&wl->mu); /* upload is for one thread at a time */
    anvil_status st = be->ops->upload(be, dev, buf, c->len);
    pthread_mutex_unlock(&wl->mu);
    return st;
}

/* One thread of the load (see weight_loader): takes chunks until none is
 * left or the load stops. */
static void *load_thread(void *arg)
{
    weight_loader *wl = arg;
    anvil_runtime *rt = wl->rt;
    anvil_backend *be = rt->be;
    const int host = be->ops->weights_in_host_memory;
    const int lanes = !host && be->ops->upload_async && be->ops->host_alloc;
    const int me = atomic_fetch_add(&wl->threads, 1); /* lanes 2 me and 2 me + 1 */
    void *buf[2] = {NULL, NULL};
    anvil_build_scratch *scratch = NULL;
    /* the builder's fills (a checkpoint's, or random weights) need one */
    anvil_status st = rt->engine == NULL ? anvil_build_scratch_create(&scratch) : ANVIL_OK;
    for (int b = 0; b < 2 && st == ANVIL_OK && !host; b++) {
        if (lanes)
            st = be->ops->host_alloc(be, ANVIL_BUILD_CHUNK, &buf[b]);
        else if ((buf[b] = malloc(ANVIL_BUILD_CHUNK)) == NULL)
            st = ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory for the load's buffers");
    }
    for (int b = 0; st == ANVIL_OK && !atomic_load(&wl->stop); b ^= 1) {
        const int64_t i = atomic_fetch_add(&wl->next, 1);
        if (i >= wl->n_chunks)
            break;
        st = load_one(wl, &wl->chunks[i], buf[b], lanes ? 2 * me + b : -1, scratch);
        if (st == ANVIL_OK)
            atomic_fetch_add(&wl->done, wl->chunks[i].len);
    }
    for (int k = 0; k < 2 && lanes; k++) { /* every copy of ours is done before the buffers go */
        anvil_status w = be->ops->upload_wait(be, 2 * me + k);
        if (st == ANVIL_OK)
            st = w;
    }
    if (st != ANVIL_OK)
        loader_fail(wl, st);
    for (int k = 0; k < 2; k++) {
        if (lanes)
            be->ops->host_free(be, buf[k]);
        else
            free(buf[k]);
    }
    anvil_build_scratch_free(scratch);
    atomic_fetch_add(&wl->finished, 1);
    return NULL;
}

/* Runs the load's threads over every chunk, the progress callback on this
 * thread (a nonzero return stops them). */
static anvil_status load_chunks(anvil_runtime *rt, weight_loader *wl)
{
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int n = cpus > 1 ? (int)(cpus < LOAD_THREADS_MAX ? cpus : LOAD_THREADS_MAX) : 1;
    if ((int64_t)n > wl->n_chunks)
        n = wl->n_chunks > 0 ? (int)wl->n_chunks : 1;
    pthread_t th[LOAD_THREADS_MAX];
    int started = 0;
    while (started < n && pthread_create(&th[started], NULL, load_thread, wl) == 0)
        started++;
    if (started == 0)
        load_thread(wl); /* no thread to be had: this one does it all */
    for (int running = started > 0; running;) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
        running = atomic_load(&wl->finished) < started;
        const size_t done = atomic_load(&wl->done);
        if (rt->opts.progress && !atomic_load(&wl->stop) && rt->opts.progress(rt->opts.progress_user, done, wl->total)) {
            pthread_mutex_lock(&wl->mu);
            if (wl->st == ANVIL_OK) {
                wl->st = ANVIL_ERR_CANCELLED;
                snprintf(wl->msg, sizeof wl->msg, "the load was cancelled");
            }
            pthread_mutex_unlock(&wl->mu);
            atomic_store(&wl->stop, 1);
        }
        if (atomic_load(&wl->stop))
            break;
    }
    for (int k = 0; k < started; k++)
        pthread_join(th[k], NULL);
    if (wl->st == ANVIL_OK && rt->opts.progress &&
        rt->opts.progress(rt->opts.progress_user, atomic_load(&wl->done), wl->total)) {
        wl->st = ANVIL_ERR_CANCELLED; /* the last report: every byte, once */
        snprintf(wl->msg, sizeof wl->msg, "the load was cancelled");
    }
    if (wl->st != ANVIL_OK)
        return anvil_error_set(wl->st, __FILE__, __LINE__, "%s", wl->msg);
    return ANVIL_OK;
}

/* A quantized weight's anvil_quant: its stored tensor's scales (zeros,
 * perm) in backend memory, from its first row on (a member of a fused
 * tensor starts at a later row: its scales rows are sliced with it). */
static void make_quant(const anvil_runtime *rt, int32_t i, anvil_quant *q)
{
    const anvil_stored *t = &rt->plan->stored[rt->plan->weight_stored[i]];
    const int64_t k = t->shape[1], g = t->q.group ? k / t->q.group : 1;
    const int64_t row = rt->plan->weight_offset[i] / k;
    memset(q, 0, sizeof *q);
    q->group = t->q.group;
    q->scales = (const float *)rt->stored_data[t->q.scales] + row * g;
    q->zeros = t->q.zeros >= 0 ? (const uint8_t *)rt->stored_data[t->q.zeros] + row * g : NULL;
    q->perm = t->q.perm >= 0 ? (const int32_t *)rt->stored_data[t->q.perm] : NULL;
    q->act = t->q.act;
    q->input_scale = t->q.input_scale;
}

/* The network's weights as views into the stored tensors. */
static void make_views(anvil_runtime *rt)
{
    for (int32_t i = 0; i < rt->n_weights; i++) {
        const anvil_net_weight *w = anvil_network_weight(rt->net, i);
        const int32_t s = rt->plan->weight_stored[i];
        const anvil_stored *t = &rt->plan->stored[s];
        anvil_tensor *v = &rt->weights[i];
        memset(v, 0, sizeof *v);
        v->dtype = t->kind;
        v->n_dims = w->n_dims;
        v->shape[0] = w->shape[0];
        v->shape[1] = w->n_dims > 1 ? w->shape[1] : 0;
        v->data = (char *)rt->stored_data[s] + anvil_stored_kind_bytes(t->kind, rt->plan->weight_offset[i]);
        if (t->q.scales >= 0) {
            make_quant(rt, i, &rt->quants[i]);
            v->quant = &rt->quants[i];
        }
    }
}

/* The add + rmsnorm groups joined to the matmuls that read the norm
 * (anvil_fuse_merge_norm): every group with the option norm_gemv; by
 * default those whose matmuls all round their input to fp8 (W8A8), so that
 * the backend's fused op makes the fp8 activations in the norm (on CUDA,
 * cuda_fp8_x.c: one pass instead of a quantization launch per matmul at
 * prefill sizes; at decode sizes the same kernels as the separate ops).
 * Other groups stay apart: the norm in the GEMV's prologue is slower on an
 * H100 (docs/performance.md). */
static anvil_status merge_norm_groups(anvil_runtime *rt)
{
    const anvil_fuse_caps caps = anvil_fuse_caps_of(rt->be->ops);
    if (rt->opts.norm_gemv) {
        anvil_fuse_merge_norm(rt->net, &caps, rt->fuse);
        return ANVIL_OK;
    }
    const int32_t n = anvil_network_op_count(rt->net);
    uint8_t *fp8 = calloc((size_t)(n > 0 ? n : 1), 1);
    CHECK(fp8 != NULL, ANVIL_ERR_OOM, "out of memory");
    int any = 0;
    for (int32_t i = 0; i < n; i++) {
        const anvil_net_op *op = anvil_network_op(rt->net, i);
        if (op->kind != ANVIL_OP_LINEAR || op->weights[0] < 0 || op->weights[0] >= rt->n_weights)
            continue;
        const anvil_quant *q = rt->weights[op->weights[0]].quant;
        fp8[i] = q != NULL && q->act != ANVIL_QUANT_ACT_NONE;
        any |= fp8[i];
    }
    if (any)
        anvil_fuse_merge_norm_where(rt->net, &caps, rt->fuse, fp8);
    free(fp8);
    return ANVIL_OK;
}

/* An engine's fusion plan on this backend: a group whose fused op the
 * backend lacks (or every group, with no_fusion) runs as its separate ops. */
static void adapt_fusion(anvil_runtime *rt)
{
    const anvil_fuse_caps caps = anvil_fuse_caps_of(rt->be->ops);
    anvil_fuse *f = rt->plan->fuse;
    for (int32_t i = 0; i < rt->plan->n_ops; i++) {
        const int kind = f[i].kind;
        const int have = kind == ANVIL_FUSE_ADD_RMSNORM     ? caps.add_rmsnorm
                         : kind == ANVIL_FUSE_MATMUL_MULTI  ? caps.matmul_multi
                         : kind == ANVIL_FUSE_SILU_MUL      ? caps.matmul_silu_mul
                         : kind == ANVIL_FUSE_ROPE_ATTENTION ? caps.attention_rope
                                                             : 1;
        if (have && !rt->opts.no_fusion)
            continue;
        const int32_t span = kind == ANVIL_FUSE_ADD_RMSNORM ? 2 : kind == ANVIL_FUSE_MATMUL_MULTI ? f[i].n
                             : kind == ANVIL_FUSE_SILU_MUL  ? 3 : 1;
        if (kind == ANVIL_FUSE_ROPE_ATTENTION) { /* its ropes come before it */
            const anvil_net_op *op = anvil_network_op(rt->net, i);
            f[op->inputs[0]].kind = f[op->inputs[1]].kind = ANVIL_FUSE_NONE;
        }
        for (int32_t j = 0; j < span; j++)
            f[i + j].kind = ANVIL_FUSE_NONE;
    }
}

/* The build plan (made for this backend and options from a checkpoint or
 * for random weights, or an engine's), then every stored tensor placed and
 * the views made. */
static anvil_status load_weights(anvil_runtime *rt)
{
    if (rt->engine == NULL) {
        const anvil_fuse_caps caps = anvil_fuse_caps_of(rt->be->ops);
        const anvil_plan_options bo = {
            .weight_dtype = rt->opts.weight_dtype, .caps = &caps, .no_fusion = rt->opts.no_fusion,
            .prequant = &rt->prequant, .quantize = rt->opts.quantize, .quant_group = rt->opts.quant_group,
            .quantize_lm_head = rt->opts.quantize_lm_head,
        };
        /* a tied head is the embedding table: the builder unties it into an engine, the load does not */
        CHECK(!rt->opts.quantize_lm_head || !anvil_lm_head_is_tied(rt->net), ANVIL_ERR_UNSUPPORTED,
              "quantize_lm_head: this model's LM head is its embedding table (tied); anvil build "
              "--quantize-lm-head unties it into an engine");
        TRY(anvil_build_plan_make(rt->net, rt->ckpt, &bo, &rt->plan));
        rt->plan->seed = rt->opts.seed; /* what random weights are made from (no checkpoint) */
    } else {
        adapt_fusion(rt);
    }
    const int32_t ns = rt->plan->n_stored;
    for (int32_t t = 0; t < ns && !rt->be->ops->quantized_weights; t++) {
        const anvil_stored *st = &rt->plan->stored[t];
        if (st->q.scales >= 0)
            return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED,
                              "quantized weights (%s, e.g. %s) are not supported on %s yet: run this model on the cpu",
                              anvil_dtype_name(st->kind), st->name, rt->be->ops->name);
    }
    rt->n_weights = anvil_network_weight_count(rt->net);
    rt->weights = calloc((size_t)(rt->n_weights ? rt->n_weights : 1), sizeof *rt->weights);
    rt->quants = calloc((size_t)(rt->n_weights ? rt->n_weights : 1), sizeof *rt->quants);
    rt->stored_allocs = calloc((size_t)(ns ? ns : 1), sizeof *rt->stored_allocs);
    rt->stored_data = calloc((size_t)(ns ? ns : 1), sizeof *rt->stored_data);
    CHECK(rt->weights && rt->quants && rt->stored_allocs && rt->stored_data, ANVIL_ERR_OOM, "out of memory");
    rt->weight_bytes = rt->plan->total_bytes;
    weight_loader wl = {.rt = rt, .total = rt->plan->total_bytes};
    int64_t n_chunks = 0;
    for (int32_t t = 0; t < ns; t++)
        n_chunks += (int64_t)((rt->plan->stored[t].bytes + ANVIL_BUILD_CHUNK - 1) / ANVIL_BUILD_CHUNK);
    wl.chunks = malloc((size_t)(n_chunks ? n_chunks : 1) * sizeof *wl.chunks);
    CHECK(wl.chunks != NULL, ANVIL_ERR_OOM, "out of memory");
    anvil_status st = ANVIL_OK;
    for (int32_t t = 0; t < ns && st == ANVIL_OK; t++) {
        st = place_stored(rt, t);
        for (size_t off = 0; off < rt->plan->stored[t].bytes; off += ANVIL_BUILD_CHUNK) {
            const size_t left = rt->plan->stored[t].bytes - off;
            wl.chunks[wl.n_chunks++] =
                (load_chunk){.s = t, .off = off, .len = left < ANVIL_BUILD_CHUNK ? left : ANVIL_BUILD_CHUNK};
        }
    }
    pthread_mutex_init(&wl.mu, NULL);
    if (st == ANVIL_OK)
        st = load_chunks(rt, &wl);
    pthread_mutex_destroy(&wl.mu);
    free(wl.chunks);
    if (st == ANVIL_OK) /* rewritten in place while read */
        st = rt->engine ? anvil_engine_file_check_unchanged(rt->engine) : anvil_checkpoint_check_unchanged(rt->ckpt);
    if (st == ANVIL_OK)
        make_views(rt);
    return st;
}

/* ------------------------------------------------------------ activations */

/*
 * Whether bytes fit in the backend's free memory (what, the need, the
 * hint what to change). Checked before allocating so that an impossible
 * size is a message naming what needed how much, never an attempt (an
 * ASan build aborts on one over 1 TiB; cudaMalloc says only "out of
 * memory"). A backend that cannot tell its free memory is not checked.
 */
static anvil_status check_fits(anvil_runtime *rt, size_t bytes, const char *what, const char *hint)
{
    size_t avail = 0;
    if (rt->be->ops->mem_available == NULL || rt->be->ops->mem_available(rt->be, &avail) != ANVIL_OK)
        return ANVIL_OK;
    char need_s[32], avail_s[32];
    CHECK(bytes <= avail, ANVIL_ERR_OOM, "%s would take %s (%zu bytes), but %s has %s available%s%s", what,
          anvil_plan_fmt_bytes(bytes, need_s, sizeof need_s), bytes, rt->be->ops->name,
          anvil_plan_fmt_bytes(avail, avail_s, sizeof avail_s), hint ? "; " : "", hint ? hint : "");
    return ANVIL_OK;
}

/* The scratch the network's moe ops need for a step of n_tokens (the
 * largest of them: they run one at a time), 0 without any. */
static anvil_status moe_scratch_bytes(const anvil_network *net, int32_t n_tokens, size_t *out)
{
    *out = 0;
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        if (op->kind != ANVIL_OP_MOE)
            continue;
        anvil_moe_scratch L;
        TRY(anvil_moe_scratch_layout(n_tokens, op->width, op->moe.n_experts, op->moe.top_k, op->moe.inter,
                                     op->moe.shared_inter, &L));
        *out = L.bytes > *out ? L.bytes : *out;
    }
    return ANVIL_OK;
}

/*
 * Activation buffers (runtime_plan.c assigns them) and the RoPE tables,
 * allocated once for the worst-case step.
 */
static anvil_status plan_activations(anvil_runtime *rt)
{
    const int32_t n = rt->n_ops = anvil_network_op_count(rt->net);
    const size_t act = anvil_dtype_size(rt->be->ops->act_dtype);
    rt->value_buffer = malloc((size_t)n * sizeof *rt->value_buffer);
    rt->buffers = calloc((size_t)n, sizeof *rt->buffers);
    rt->buffer_bytes = calloc((size_t)n, sizeof *rt->buffer_bytes);
    rt->rope_tables = calloc((size_t)n, sizeof *rt->rope_tables);
    rt->rope_freqs = calloc((size_t)n, sizeof *rt->rope_freqs);
    CHECK(rt->value_buffer && rt->buffers && rt->buffer_bytes && rt->rope_tables && rt->rope_freqs, ANVIL_ERR_OOM,
          "out of memory for the plan of %d ops", n);
    int32_t n_buffers = 0;
    size_t total = 0;
    TRY(anvil_plan_activations(rt->net, rt->fuse, rt->opts.max_num_tokens, rt->opts.max_logit_rows, act,
                               rt->value_buffer, rt->buffer_bytes, &n_buffers, &total));
    char what[160];
    snprintf(what, sizeof what, "activations for %d tokens a step (%d buffers)", rt->opts.max_num_tokens, n_buffers);
    size_t moe_bytes;
    TRY(moe_scratch_bytes(rt->net, rt->opts.max_num_tokens, &moe_bytes));
    CHECK(total <= SIZE_MAX - moe_bytes, ANVIL_ERR_OOM, "activations overflow");
    total += moe_bytes;
    TRY(check_fits(rt, total, what, "lower max_num_tokens (--max-num-tokens)"));
    if (moe_bytes > 0) {
        if (rt->be->ops->alloc(rt->be, moe_bytes, &rt->moe_scratch) != ANVIL_OK)
            return anvil_error_wrap("the mixture-of-experts scratch of %zu bytes", moe_bytes);
        rt->moe_scratch_bytes = moe_bytes;
    }
    for (int32_t b = 0; b < n_buffers; b++) {
        if (rt->be->ops->alloc(rt->be, rt->buffer_bytes[b], &rt->buffers[b]) != ANVIL_OK)
            return anvil_error_wrap("activation buffer %d of %zu bytes", b, rt->buffer_bytes[b]);
        rt->n_buffers++;
    }
    for (int32_t i = 0; i < n; i++) {
        const anvil_net_op *op = anvil_network_op(rt->net, i);
        if (op->kind != ANVIL_OP_ROPE && op->kind != ANVIL_OP_MLA) /* mla rotates inside, by its own tables */
            continue;
        float table[2048]; /* LongRoPE's two tables of head_dim / 2 */
        CHECK(op->head_dim > 0 && op->head_dim <= 2048, ANVIL_ERR_UNSUPPORTED, "rope: head_dim %lld too large",
              (long long)op->head_dim);
        int n_tables;
        anvil_rope_freqs *f = &rt->rope_freqs[i];
        TRY(anvil_rope_tables(&op->rope, op->head_dim, table, &n_tables, &f->long_after, &f->scale));
        size_t bytes = (size_t)(op->head_dim / 2) * sizeof(float) * (size_t)n_tables;
        TRY(rt->be->ops->alloc(rt->be, bytes, (void **)&rt->rope_tables[i]));
        TRY(rt->be->ops->upload(rt->be, rt->rope_tables[i], table, bytes));
        f->inv_freq = rt->rope_tables[i];
        f->inv_freq_long = n_tables == 2 ? rt->rope_tables[i] + op->head_dim / 2 : NULL;
    }
    anvil_log(ANVIL_LOG_INFO, "activations: %d buffers, %.1f MiB for %d tokens", rt->n_buffers,
              (double)total / 1048576.0, rt->opts.max_num_tokens);
    return ANVIL_OK;
}

/* ------------------------------------------------------------ KV cache */

/* The KV cache's rows: per token and layer, n_kv_heads x head_dim values in
 * k and as many in v; or, with multi-head latent attention (DeepSeek-V2's
 * mla op), one row of kv_rank + rope_dim (the latent and the rope key) in
 * k alone: values are products of the latent, not cached. */
typedef struct kv_shape {
    int64_t heads, head_dim;
    int n_caches; /* 2: k and v; 1: k alone */
} kv_shape;

static kv_shape kv_shape_of(const anvil_network *net, int64_t heads, int64_t head_dim)
{
    kv_shape s = {heads, head_dim, 2};
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        if (op->kind == ANVIL_OP_MLA) {
            s.heads = 1;
            s.head_dim = op->attn.head_dim;
            s.n_caches = 1;
            break;
        }
    }
    return s;
}

/* The KV pool for the options as they stand, every size checked. A pool
 * still to be sized from memory (kv_cache_tokens 0) has no blocks yet. */
typedef struct kv_plan {
    int32_t n_blocks;
    int32_t max_blocks_per_seq;
    size_t per_token;   /* keys and values of every layer */
    size_t layer_bytes; /* one layer's keys (its values alike) */
    size_t pool_bytes;  /* every layer's keys and values, and the block lists */
} kv_plan;

static anvil_status plan_kv(kv_shape ks, const anvil_runtime_options *o, int32_t n_kv_layers, size_t act, kv_plan *p)
{
    const int64_t n_kv_heads = ks.heads, head_dim = ks.head_dim;
    memset(p, 0, sizeof *p);
    const int64_t bs = o->kv_block_size;
    /* resolve_options bounds both: blocks fit int32 */
    p->n_blocks = (int32_t)((o->kv_cache_tokens + bs - 1) / bs);
    p->max_blocks_per_seq = (int32_t)(((int64_t)o->max_seq_len + bs - 1) / bs);
    TRY(anvil_plan_kv_bytes_per_token(n_kv_layers, n_kv_heads, head_dim, act, &p->per_token));
    if (ks.n_caches == 1) /* keys alone: half of what the count of k and v gives */
        p->per_token /= 2;
    size_t row, lists;
    CHECK(anvil_mul_size_ok((size_t)n_kv_heads, (size_t)head_dim, &row) &&
              anvil_mul_size_ok(row, act, &row) && anvil_mul_size_ok(row, (size_t)p->n_blocks, &p->layer_bytes) &&
              anvil_mul_size_ok(p->layer_bytes, (size_t)bs, &p->layer_bytes) &&
              anvil_mul_size_ok(p->per_token, (size_t)p->n_blocks, &p->pool_bytes) &&
              anvil_mul_size_ok(p->pool_bytes, (size_t)bs, &p->pool_bytes) &&
              anvil_mul_size_ok((size_t)p->n_blocks, sizeof(int32_t) + 1, &lists) &&
              anvil_add_size_ok(p->pool_bytes, lists, &p->pool_bytes),
          ANVIL_ERR_UNSUPPORTED, "KV cache: %d blocks of %lld tokens of %zu bytes overflow a size", p->n_blocks,
          (long long)bs, p->per_token);
    return ANVIL_OK;
}

/* Whether the pool of p fits the backend's free memory, with a message
 * that says where its size came from and what to change. */
static anvil_status check_kv_fits(anvil_runtime *rt, const kv_plan *p)
{
    const anvil_runtime_options *o = &rt->opts;
    char what[256], per[32];
    const kv_shape ks = kv_shape_of(rt->net, rt->n_kv_heads, rt->cfg.head_dim);
    snprintf(what, sizeof what,
             "the KV cache for %lld tokens (%s a token: %d layers x %d x %lld KV heads x %lld x %zu bytes)",
             (long long)o->kv_cache_tokens, anvil_plan_fmt_bytes(p->per_token, per, sizeof per),
             anvil_network_kv_layers(rt->net), ks.n_caches, (long long)ks.heads, (long long)ks.head_dim,
             anvil_dtype_size(rt->kv_dtype));
    char hint[256];
    if (rt->seq_len_from_config && o->kv_cache_tokens == o->max_seq_len)
        snprintf(hint, sizeof hint,
                 "the pool holds one context of max_position_embeddings (%d, from config.json): set a smaller "
                 "max_seq_len (--max-seq-len) or kv_cache_tokens (--kv-cache-tokens)",
                 o->max_seq_len);
    else
        snprintf(hint, sizeof hint,
                 "set a smaller kv_cache_tokens (--kv-cache-tokens) or max_seq_len (--max-seq-len, now %d)",
                 o->max_seq_len);
    return check_fits(rt, p->pool_bytes, what, hint);
}

/*
 * With kv_cache_fraction, the pool takes that fraction of the memory the
 * backend reports free once weights and activations are allocated (the
 * smaller of that and kv_cache_tokens when both are given), in whole
 * blocks, at least one. A pool smaller than one context of the config's
 * max_position_embeddings (when no max_seq_len was given) lowers
 * max_seq_len to what it holds, with a warning: a context that no
 * sequence could reach would be advertised for nothing, and the step's
 * block tables would be sized for it.
 */
static anvil_status size_kv_cache_from_memory(anvil_runtime *rt)
{
    anvil_runtime_options *o = &rt->opts;
    if (o->kv_cache_fraction <= 0.0)
        return ANVIL_OK;
    size_t avail = 0;
    TRY(rt->be->ops->mem_available(rt->be, &avail));
    size_t per_token = 0;
    const kv_shape ks = kv_shape_of(rt->net, rt->n_kv_heads, rt->cfg.head_dim);
    TRY(anvil_plan_kv_bytes_per_token(anvil_network_kv_layers(rt->net), ks.heads, ks.head_dim,
                                      anvil_dtype_size(rt->kv_dtype), &per_token));
    per_token = ks.n_caches == 1 ? per_token / 2 : per_token;
    CHECK(per_token > 0, ANVIL_ERR_INTERNAL, "the model has no KV cache");
    double tokens = (double)avail * o->kv_cache_fraction / (double)per_token;
    const double cap = (double)(INT32_MAX - 1) * (double)o->kv_block_size;
    if (tokens > cap)
        tokens = cap;
    int64_t t = (int64_t)tokens / o->kv_block_size * o->kv_block_size;
    if (t < o->kv_block_size)
        t = o->kv_block_size;
    if (o->kv_cache_tokens <= 0 || t < o->kv_cache_tokens)
        o->kv_cache_tokens = t;
    anvil_log(ANVIL_LOG_INFO, "kv cache: %.1f MiB available, fraction %.2f: %lld tokens", (double)avail / 1048576.0,
              o->kv_cache_fraction, (long long)o->kv_cache_tokens);
    if (rt->seq_len_from_config && o->kv_cache_tokens < o->max_seq_len) {
        int64_t fit = o->kv_cache_tokens / o->kv_block_size * o->kv_block_size;
        if (fit < o->kv_block_size)
            fit = o->kv_cache_tokens;
        anvil_log(ANVIL_LOG_WARN,
                  "max_seq_len: the KV cache holds %lld tokens, fewer than config.json's max_position_embeddings "
                  "(%d): sequences are limited to %lld tokens (set max_seq_len, --max-seq-len, to choose)",
                  (long long)o->kv_cache_tokens, o->max_seq_len, (long long)fit);
        o->max_seq_len = (int32_t)fit;
    }
    return ANVIL_OK;
}

static anvil_status alloc_kv_cache(anvil_runtime *rt)
{
    TRY(size_kv_cache_from_memory(rt));
    const anvil_runtime_options *o = &rt->opts;
    kv_plan kp;
    const kv_shape ks = kv_shape_of(rt->net, rt->n_kv_heads, rt->cfg.head_dim);
    TRY(plan_kv(ks, o, anvil_network_kv_layers(rt->net), anvil_dtype_size(rt->kv_dtype), &kp));
    TRY(check_kv_fits(rt, &kp));
    rt->n_kv_layers = anvil_network_kv_layers(rt->net);
    rt->n_blocks = kp.n_blocks;
    rt->max_blocks_per_seq = kp.max_blocks_per_seq;
    rt->k_cache = calloc((size_t)rt->n_kv_layers, sizeof *rt->k_cache);
    rt->v_cache = calloc((size_t)rt->n_kv_layers, sizeof *rt->v_cache);
    rt->free_blocks = malloc((size_t)rt->n_blocks * sizeof *rt->free_blocks);
    rt->block_used = calloc((size_t)rt->n_blocks, 1);
    CHECK(rt->k_cache && rt->v_cache && rt->free_blocks && rt->block_used, ANVIL_ERR_OOM,
          "out of memory for the lists of %d KV blocks", rt->n_blocks);
    CHECK(rt->kv_scales || !rt->n_kv_layers, ANVIL_ERR_INTERNAL, "the KV scales were not read at load");
    /* pop order 0, 1, 2, ...: blocks are handed out lowest first */
    for (int32_t i = 0; i < rt->n_blocks; i++)
        rt->free_blocks[i] = rt->n_blocks - 1 - i;
    rt->n_free = rt->n_blocks;

    const anvil_dtype dt = rt->kv_dtype;
    CHECK(ks.n_caches == 2 || dt != ANVIL_DTYPE_F8_E4M3, ANVIL_ERR_UNSUPPORTED,
          "kv_cache_dtype fp8: the latent cache of multi-head latent attention (DeepSeek-V2) is f32, bf16 or f16");
    const int64_t kv_heads = ks.heads, hd = ks.head_dim;
    const size_t bytes = kp.layer_bytes;
    for (int32_t l = 0; l < rt->n_kv_layers; l++) {
        anvil_tensor *k = &rt->k_cache[l], *v = &rt->v_cache[l];
        k->dtype = v->dtype = dt;
        k->n_dims = v->n_dims = 4;
        k->shape[0] = v->shape[0] = rt->n_blocks;
        k->shape[1] = v->shape[1] = o->kv_block_size;
        k->shape[2] = v->shape[2] = kv_heads;
        k->shape[3] = v->shape[3] = hd;
        /* keys alone (mla): the v tensor keeps its shape and no data */
        if (rt->be->ops->alloc(rt->be, bytes, &k->data) != ANVIL_OK ||
            (ks.n_caches == 2 && rt->be->ops->alloc(rt->be, bytes, &v->data) != ANVIL_OK))
            return anvil_error_wrap("KV cache of layer %d (%zu bytes for keys, as many for values)", l, bytes);
    }
    anvil_log(ANVIL_LOG_INFO, "kv cache: %d blocks of %d tokens, %s, %.1f MiB", rt->n_blocks, o->kv_block_size,
              anvil_dtype_name(dt), (double)ks.n_caches * (double)bytes * rt->n_kv_layers / 1048576.0);
    return ANVIL_OK;
}

anvil_status anvil_runtime_kv_alloc(anvil_runtime *rt, int32_t n, int32_t *ids)
{
    CHECK(n >= 0, ANVIL_ERR_INVALID_ARG, "cannot allocate %d blocks", n);
    CHECK(n <= rt->n_free, ANVIL_ERR_CAPACITY, "KV cache full: %d blocks wanted, %d free of %d", n, rt->n_free,
          rt->n_blocks);
    for (int32_t i = 0; i < n; i++) {
        ids[i] = rt->free_blocks[--rt->n_free];
        rt->block_used[ids[i]] = 1;
    }
    return ANVIL_OK;
}

void anvil_runtime_kv_release(anvil_runtime *rt, int32_t n, const int32_t *ids)
{
    for (int32_t i = 0; i < n; i++) {
        int32_t b = ids[i];
        if (b < 0 || b >= rt->n_blocks || !rt->block_used[b]) {
            anvil_log(ANVIL_LOG_WARN, "kv release: block %d is not allocated", b);
            continue;
        }
        rt->block_used[b] = 0;
        rt->free_blocks[rt->n_free++] = b;
    }
}

anvil_status anvil_runtime_kv_copy(anvil_runtime *rt, int32_t n, const int32_t *src, const int32_t *dst,
                                   int32_t n_tokens)
{
    const int32_t bs = rt->opts.kv_block_size;
    CHECK(n >= 0 && n_tokens >= 0 && n_tokens <= bs, ANVIL_ERR_INVALID_ARG,
          "kv copy: %d blocks of %d tokens (block size %d)", n, n_tokens, bs);
    for (int32_t i = 0; i < n; i++) {
        CHECK(src[i] >= 0 && src[i] < rt->n_blocks && dst[i] >= 0 && dst[i] < rt->n_blocks &&
                  rt->block_used[src[i]] && rt->block_used[dst[i]] && src[i] != dst[i],
              ANVIL_ERR_INVALID_ARG, "kv copy: bad block pair %d -> %d", src[i], dst[i]);
    }
    if (n == 0 || n_tokens == 0)
        return ANVIL_OK;
    TRY(anvil_rt_tp_lead_kv_copy(rt, n, src, dst, n_tokens));
    /* Through a host buffer: the backend interface has upload and download,
     * and this runs once per fork, not per token. */
    const kv_shape ks = kv_shape_of(rt->net, rt->n_kv_heads, rt->cfg.head_dim);
    const size_t row = (size_t)(ks.heads * ks.head_dim) * anvil_dtype_size(rt->kv_dtype);
    const size_t block_bytes = row * (size_t)bs, bytes = row * (size_t)n_tokens;
    void *stage = malloc(bytes);
    CHECK(stage != NULL, ANVIL_ERR_OOM, "out of memory");
    anvil_status st = ANVIL_OK;
    for (int32_t l = 0; l < rt->n_kv_layers && st == ANVIL_OK; l++) {
        anvil_tensor *caches[2] = {&rt->k_cache[l], &rt->v_cache[l]};
        for (int c = 0; c < ks.n_caches && st == ANVIL_OK; c++) {
            char *base = caches[c]->data;
            for (int32_t i = 0; i < n && st == ANVIL_OK; i++) {
                st = rt->be->ops->download(rt->be, stage, base + (size_t)src[i] * block_bytes, bytes);
                if (st == ANVIL_OK)
                    st = rt->be->ops->upload(rt->be, base + (size_t)dst[i] * block_bytes, stage, bytes);
            }
        }
    }
    free(stage);
    return st;
}

/* ------------------------------------------------------------ load */

/* Bytes of one step's metadata (int32s, on the host and the backend each)
 * and of the logits staging (host, when activations are not f32). */
static anvil_status plan_step(const anvil_runtime *rt, anvil_dtype act, int32_t max_blocks_per_seq, size_t *meta_ints,
                              size_t *stage_bytes)
{
    const anvil_runtime_options *o = &rt->opts;
    *stage_bytes = 0;
    TRY(anvil_plan_step_ints(o, max_blocks_per_seq, meta_ints));
    if (act != ANVIL_DTYPE_F32)
        CHECK(anvil_mul_size_ok((size_t)o->max_logit_rows, (size_t)rt->cfg.vocab_size, stage_bytes) &&
                  anvil_mul_size_ok(*stage_bytes, anvil_dtype_size(act), stage_bytes),
              ANVIL_ERR_UNSUPPORTED, "logits: %d rows of %lld overflow a size", o->max_logit_rows,
              (long long)rt->cfg.vocab_size);
    return ANVIL_OK;
}

static anvil_status check_step_fits(anvil_runtime *rt, int32_t max_blocks_per_seq)
{
    size_t ints, stage, bytes;
    TRY(plan_step(rt, rt->be->ops->act_dtype, max_blocks_per_seq, &ints, &stage));
    char what[160];
    snprintf(what, sizeof what, "the step metadata (%d tokens; block tables of %d sequences x %d blocks) and logits",
             rt->opts.max_num_tokens, rt->opts.max_batch_size, max_blocks_per_seq);
    CHECK(anvil_add_size_ok(ints * sizeof(int32_t), stage, &bytes), ANVIL_ERR_UNSUPPORTED, "%s overflow a size",
          what);
    return check_fits(rt, bytes, what, "set a smaller max_batch_size (--max-batch-size) or max_seq_len (--max-seq-len)");
}

static anvil_status alloc_step_meta(anvil_runtime *rt)
{
    size_t stage = 0;
    TRY(check_step_fits(rt, rt->max_blocks_per_seq));
    TRY(plan_step(rt, rt->be->ops->act_dtype, rt->max_blocks_per_seq, &rt->meta_ints, &stage));
    rt->meta_host = malloc(rt->meta_ints * sizeof(int32_t));
    CHECK(rt->meta_host != NULL, ANVIL_ERR_OOM, "out of memory for the step metadata (%zu bytes)",
          rt->meta_ints * sizeof(int32_t));
    if (rt->be->ops->alloc(rt->be, rt->meta_ints * sizeof(int32_t), &rt->meta_dev) != ANVIL_OK)
        return anvil_error_wrap("step metadata (%zu bytes)", rt->meta_ints * sizeof(int32_t));
    if (stage > 0) {
        rt->logits_host_stage = malloc(stage);
        CHECK(rt->logits_host_stage != NULL, ANVIL_ERR_OOM, "out of memory for the logits staging (%zu bytes)",
              stage);
    }
    return ANVIL_OK;
}

/*
 * Sizes known before the weights come: the KV pool and the step metadata,
 * when the pool's size is given (not sized from memory, which may also
 * lower max_seq_len). Refused here, not after a long weight load, when they
 * cannot fit the backend's free memory even before the weights take their
 * share; alloc_kv_cache checks again with what is left.
 */
static anvil_status check_sizes_early(anvil_runtime *rt)
{
    if (rt->opts.kv_cache_fraction > 0.0)
        return ANVIL_OK;
    kv_plan kp;
    TRY(plan_kv(kv_shape_of(rt->net, rt->n_kv_heads, rt->cfg.head_dim), &rt->opts, anvil_network_kv_layers(rt->net),
                anvil_dtype_size(rt->kv_dtype), &kp));
    TRY(check_kv_fits(rt, &kp));
    return check_step_fits(rt, kp.max_blocks_per_seq);
}

/*
 * Whether the checkpoint names every weight the config implies, before the
 * backend or any weight is allocated: a config with more layers than its
 * checkpoint (or of another family) fails here, in the time of a few
 * lookups, with a message that says which config value to suspect.
 */
static anvil_status check_checkpoint_names(const anvil_runtime *rt)
{
    int32_t n = anvil_network_weight_count(rt->net);
    int32_t missing = 0;
    const char *first = NULL;
    long long top_present = -1, first_missing_layer = -1;
    int32_t n_sources = 0;
    for (int32_t i = 0; i < n; i++) {
        const anvil_net_weight *w = anvil_network_weight(rt->net, i);
        for (int32_t k = 0; k < w->n_sources; k++, n_sources++) {
            const char *name = w->sources[k];
            long long layer = -1;
            if (sscanf(name, "model.layers.%lld.", &layer) != 1)
                layer = -1;
            if (anvil_checkpoint_find(rt->ckpt, name) != NULL) {
                if (layer > top_present)
                    top_present = layer;
                continue;
            }
            if (missing++ == 0) {
                first = name;
                first_missing_layer = layer;
            }
        }
    }
    n = n_sources;
    if (missing == 0)
        return ANVIL_OK;
    /* every missing weight past the last layer the checkpoint has: the
     * config names more layers than there are (a malformed config, not a
     * missing model: ANVIL_ERR_FORMAT) */
    if (first_missing_layer > top_present && top_present >= 0)
        return ANVIL_FAIL(ANVIL_ERR_FORMAT,
                          "config.json: num_hidden_layers is %lld but the checkpoint holds layers 0 to %lld only "
                          "(no tensor '%s'; %d of the %d tensors the config implies are missing)",
                          (long long)rt->cfg.n_layers, top_present, first, missing, n);
    return ANVIL_FAIL(ANVIL_ERR_NOT_FOUND,
                      "missing tensor '%s' in the checkpoint (%d of the %d tensors the config implies are missing)",
                      first, missing, n);
}

/*
 * The weight dtype an engine's build chose (its manifest's build.dtype:
 * "auto" is as stored), which sets the compute dtype as the same --dtype
 * sets it for a folder. An engine's weights are what they were built to be:
 * a --dtype other than auto or the build's is refused rather than
 * converted at every load.
 */
static anvil_status engine_weight_dtype(const anvil_runtime *rt, anvil_dtype *out)
{
    const json_t *b = json_object_get(anvil_engine_file_manifest(rt->engine), "build");
    const char *name = json_string_value(json_object_get(b, "dtype"));
    anvil_dtype built = ANVIL_DTYPE_COUNT;
    CHECK(name != NULL && (strcmp(name, "auto") == 0 || anvil_dtype_parse(name, &built) == 0), ANVIL_ERR_FORMAT,
          "%s: the manifest's build has no valid \"dtype\"", anvil_engine_file_path(rt->engine));
    const anvil_dtype want = rt->opts.weight_dtype;
    CHECK(want == ANVIL_DTYPE_COUNT || want == built, ANVIL_ERR_INVALID_ARG,
          "the engine was built with --dtype %s; it runs as built (--dtype auto), or build another with --dtype %s",
          name, anvil_dtype_name(want));
    *out = built;
    return ANVIL_OK;
}

/* A model with learned position embeddings (GPT-2's wpe) has none past its
 * table: a max_seq_len beyond it is refused at load, before any step
 * could reach such a position (RoPE models extrapolate; these cannot). */
static anvil_status check_learned_positions(const anvil_runtime *rt)
{
    for (int32_t i = 0; i < anvil_network_op_count(rt->net); i++) {
        const anvil_net_op *op = anvil_network_op(rt->net, i);
        if (op->kind != ANVIL_OP_POS_EMBEDDING)
            continue;
        const int64_t n_pos = anvil_network_weight(rt->net, op->weights[0])->shape[0];
        CHECK(rt->opts.max_seq_len <= n_pos, ANVIL_ERR_UNSUPPORTED,
              "max_seq_len (--max-seq-len) %d is past the model's %lld learned positions (n_positions): a position "
              "embedding table has no rows beyond it",
              rt->opts.max_seq_len, (long long)n_pos);
    }
    return ANVIL_OK;
}

/* A network with mla ops (DeepSeek-V2) on a backend without that op is
 * refused at load, naming the model, before any weight is copied. */
static anvil_status check_backend_mla(const anvil_runtime *rt)
{
    if (rt->be->ops->mla != NULL)
        return ANVIL_OK;
    for (int32_t i = 0; i < anvil_network_op_count(rt->net); i++)
        CHECK(anvil_network_op(rt->net, i)->kind != ANVIL_OP_MLA, ANVIL_ERR_UNSUPPORTED,
              "%s (%s): the %s backend has no mla op (multi-head latent attention runs on the cpu backend for "
              "now)",
              rt->cfg.architecture, rt->cfg.model_type, rt->be->ops->name);
    return ANVIL_OK;
}

/*
 * Every KV layer's k_scale and v_scale, read while the checkpoint or engine
 * is open (it is closed after the weights are copied): a folder's from its
 * tensors (io/kv_scales.h), an engine's from its manifest
 * (builder/kv_manifest.h); 1 where they give none, vLLM's default. The
 * attention op of KV layer l is model layer l's (the models number their
 * attention layers so), so layer l's tensors are model.layers.l's (on a
 * pipeline stage, model layer kv_layer0 + l's); on every rank of a
 * tensor-parallel run the same, since scales are per tensor, not per
 * head.
 */
static anvil_status load_kv_scales(anvil_runtime *rt, const char *model_dir)
{
    /* a pipeline stage's KV layer l is model layer kv_layer0 + l (0 on one
     * stage): the model's layers before the stage are read too, then
     * dropped */
    const int32_t l0 = rt->kv_layer0, n = anvil_network_kv_layers(rt->net);
    rt->kv_scales = malloc(((size_t)(l0 + n) * 2 + 1) * sizeof *rt->kv_scales);
    CHECK(rt->kv_scales != NULL, ANVIL_ERR_OOM, "out of memory");
    for (int32_t i = 0; i < 2 * (l0 + n); i++)
        rt->kv_scales[i] = 1.0f;
    if (rt->engine != NULL)
        return anvil_manifest_read_kv(rt->engine, n, rt->kv_scales, &rt->kv_scales_given, &rt->kv_fp8_default);
    if (rt->ckpt == NULL) /* random weights: no scales */
        return ANVIL_OK;
    rt->kv_fp8_default = rt->prequant.kv_fp8;
    TRY(anvil_kv_scales_read(rt->ckpt, rt->prequant.kv_fp8, model_dir, l0 + n, rt->kv_scales,
                             &rt->kv_scales_given));
    memmove(rt->kv_scales, rt->kv_scales + 2 * l0, (size_t)n * 2 * sizeof *rt->kv_scales);
    return ANVIL_OK;
}

/* Says which scales the KV cache uses, or that an explicit cache dtype
 * other than fp8 leaves the checkpoint's unused. */
static void log_kv_scales(const anvil_runtime *rt)
{
    if (!rt->kv_scales_given)
        return;
    if (rt->kv_dtype == ANVIL_DTYPE_F8_E4M3)
        anvil_log(ANVIL_LOG_INFO, "kv cache: fp8 with the model's k/v scales (layer 0: k_scale %g, v_scale %g)",
                  (double)rt->kv_scales[0], (double)rt->kv_scales[1]);
    else
        anvil_log(ANVIL_LOG_INFO,
                  "kv cache: %s; the model's fp8 k/v scales are not used (they apply to --kv-cache-dtype fp8)",
                  anvil_dtype_name(rt->kv_dtype));
}

anvil_status anvil_runtime_load(const char *model_dir, const anvil_runtime_options *opts, anvil_runtime **out)
{
    *out = NULL;
    CHECK(model_dir != NULL, ANVIL_ERR_INVALID_ARG, "no model folder given");
    char rank_file[4096]; /* a folder of per-rank engines (anvil build --tp N): this rank's */
    TRY(anvil_rt_tp_rank_engine(model_dir, opts != NULL ? opts->comm : NULL, rank_file, sizeof rank_file));
    if (rank_file[0] != '\0')
        model_dir = rank_file;
    anvil_runtime *rt = calloc(1, sizeof *rt);
    CHECK(rt != NULL, ANVIL_ERR_OOM, "out of memory");
    anvil_status st;
    const int random = opts != NULL && opts->random_weights;
    const int engine = !random && anvil_engine_file_is_engine(model_dir);
    if (random) /* a config alone: a file of any name, a folder or an engine's */
        TRY_GOTO(anvil_model_config_load_path(model_dir, &rt->cfg), fail);
    else
        TRY_GOTO(anvil_model_config_load(model_dir, &rt->cfg), fail);
    TRY_GOTO(resolve_options(rt, opts), fail);
    const anvil_st_access access = rt->opts.use_mmap ? ANVIL_ST_MMAP : ANVIL_ST_READ;
    if (engine) /* before the cut: an engine of a TP rank says how it was cut */
        TRY_GOTO(anvil_engine_file_open(model_dir, access, &rt->engine), fail);
    TRY_GOTO(anvil_model_build_network(&rt->cfg, &rt->net), fail);
    TRY_GOTO(check_learned_positions(rt), fail);
    TRY_GOTO(anvil_rt_tp_setup(rt, engine), fail);
    anvil_dtype wdt = rt->opts.weight_dtype;
    if (engine) {
        TRY_GOTO(anvil_lm_head_untie_as_engine(rt->engine, rt->net), fail);
        TRY_GOTO(anvil_manifest_read_plan(rt->engine, rt->net, &rt->plan), fail);
        TRY_GOTO(engine_weight_dtype(rt, &wdt), fail);
    } else if (random) {
        /* the dtype anvil build --random-weights stores: the config's
         * unless one is asked for (the plan converts the values to it) */
        if (wdt == ANVIL_DTYPE_COUNT)
            wdt = rt->cfg.dtype;
        CHECK_GOTO(wdt == ANVIL_DTYPE_F32 || wdt == ANVIL_DTYPE_BF16 || wdt == ANVIL_DTYPE_F16, ANVIL_ERR_UNSUPPORTED,
                   fail, "random weights in %s are not supported (f32, bf16 or f16)", anvil_dtype_name(wdt));
        rt->opts.weight_dtype = wdt;
        anvil_log(ANVIL_LOG_INFO, "random weights (seed %llu, %s%s%s): no checkpoint is read",
                  (unsigned long long)rt->opts.seed, anvil_dtype_name(wdt),
                  rt->opts.quantize != ANVIL_QUANTIZE_NONE ? ", quantized " : "",
                  rt->opts.quantize != ANVIL_QUANTIZE_NONE ? anvil_quantize_name(rt->opts.quantize) : "");
    } else {
        TRY_GOTO(anvil_checkpoint_open_ex(model_dir, access, &rt->ckpt), fail);
        TRY_GOTO(anvil_quant_config_load(model_dir, &rt->prequant), fail);
        /* a pre-quantized folder has no "<linear>.weight": the plan checks its tensors */
        if (rt->prequant.format == ANVIL_QFORMAT_NONE)
            TRY_GOTO(check_checkpoint_names(rt), fail);
    }
    TRY_GOTO(load_kv_scales(rt, model_dir), fail);
    /* activations and KV cache: the dtype the weights are converted to when
     * that is bf16/f16; with weights as stored, a bf16/f16 checkpoint
     * computes in its own dtype on cuda (vLLM's --dtype auto: f32 compute
     * there runs without tensor cores, several times slower); f32 on the
     * CPU, whose kernels compute in f32. An engine computes as the folder
     * it was built from would with its build's --dtype. */
    anvil_dtype act = wdt == ANVIL_DTYPE_BF16 || wdt == ANVIL_DTYPE_F16 ? wdt : ANVIL_DTYPE_F32;
    if (wdt == ANVIL_DTYPE_COUNT && rt->opts.device && strncmp(rt->opts.device, "cuda", 4) == 0 &&
        (rt->cfg.dtype == ANVIL_DTYPE_BF16 || rt->cfg.dtype == ANVIL_DTYPE_F16))
        act = rt->cfg.dtype;
    TRY_GOTO(kv_cache_dtype_for(&rt->cfg, &rt->opts, wdt, act, rt->kv_fp8_default, &rt->kv_dtype), fail);
    log_kv_scales(rt);
    anvil_backend_config bc;
    anvil_backend_config_default(&bc);
    bc.n_threads = rt->opts.n_threads;
    bc.act_dtype = act;
    bc.cpu_isa = rt->opts.cpu_isa;
    bc.no_cuda_graphs = rt->opts.no_cuda_graphs;
    bc.no_pdl = rt->opts.no_pdl;
    bc.pdl = rt->opts.pdl;
    bc.attn_combine_in_kernel = rt->opts.attn_combine_in_kernel;
    bc.cuda_matmul_quant = rt->opts.cuda_matmul_quant;
    bc.cuda_rows_warps = rt->opts.cuda_rows_warps;
    bc.cuda_moe_loop = rt->opts.cuda_moe_loop;
    bc.cuda_fp8_unshared = rt->opts.cuda_fp8_unshared;
    bc.cuda_module = rt->opts.cuda_module;
    TRY_GOTO(anvil_backend_create(rt->opts.device, &bc, &rt->be), fail);
    TRY_GOTO(anvil_rt_tp_check_backend(rt), fail);
    TRY_GOTO(check_backend_mla(rt), fail);
    TRY_GOTO(check_sizes_early(rt), fail);
    TRY_GOTO(load_weights(rt), fail);
    if (!rt->be->ops->weights_in_host_memory || !rt->opts.use_mmap) {
        anvil_checkpoint_close(rt->ckpt); /* everything was copied to the backend */
        rt->ckpt = NULL;
        anvil_engine_file_close(rt->engine);
        rt->engine = NULL;
    }
    rt->fuse = rt->plan->fuse; /* the plan's, made with this backend's fused ops */
    rt->plan->fuse = NULL;
    if (!rt->opts.no_fusion)
        TRY_GOTO(merge_norm_groups(rt), fail);
    {
        int32_t c[ANVIL_FUSE_KINDS];
        anvil_fuse_counts(rt->fuse, anvil_network_op_count(rt->net), c);
        anvil_log(ANVIL_LOG_INFO,
                  "fused ops: %d add+rmsnorm, %d matmul groups, %d gate/up+silu, %d rope+attention, "
                  "%d add+rmsnorm+matmuls, %d add+rmsnorm+gate/up+silu",
                  c[ANVIL_FUSE_ADD_RMSNORM], c[ANVIL_FUSE_MATMUL_MULTI], c[ANVIL_FUSE_SILU_MUL],
                  c[ANVIL_FUSE_ROPE_ATTENTION], c[ANVIL_FUSE_NORM_MULTI], c[ANVIL_FUSE_NORM_SILU]);
    }
    TRY_GOTO(plan_activations(rt), fail);
    TRY_GOTO(alloc_kv_cache(rt), fail);
    TRY_GOTO(alloc_step_meta(rt), fail);
    TRY_GOTO(anvil_rt_micro_alloc(rt), fail);
    rt->host_sampling = rt->opts.host_sampling != 0;
    anvil_log(ANVIL_LOG_INFO, "loaded %s (%s) on %s: %.1f MiB of weights", model_dir, rt->cfg.architecture,
              rt->be->ops->name, (double)rt->weight_bytes / 1048576.0);
    *out = rt;
    return ANVIL_OK;
fail:
    anvil_error_wrap("loading %s", model_dir);
    anvil_runtime_free(rt);
    return st;
}

anvil_status anvil_runtime_plan_sizes(const anvil_model_config *cfg, const anvil_runtime_options *opts,
                                      anvil_dtype act_dtype, size_t mem_limit, anvil_runtime_sizes *out)
{
    CHECK(cfg != NULL && out != NULL, ANVIL_ERR_INVALID_ARG, "anvil_runtime_plan_sizes: NULL argument");
    memset(out, 0, sizeof *out);
    CHECK(act_dtype == ANVIL_DTYPE_F32 || act_dtype == ANVIL_DTYPE_BF16 || act_dtype == ANVIL_DTYPE_F16,
          ANVIL_ERR_INVALID_ARG, "activations must be f32, bf16 or f16");
    anvil_runtime *rt = calloc(1, sizeof *rt);
    CHECK(rt != NULL, ANVIL_ERR_OOM, "out of memory");
    anvil_status st = ANVIL_OK;
    rt->cfg = *cfg;
    /* the steps of anvil_runtime_load up to its allocations, in its order */
    TRY_GOTO(resolve_options(rt, opts), done);
    TRY_GOTO(anvil_model_build_network(&rt->cfg, &rt->net), done);
    const int32_t n = anvil_network_op_count(rt->net);
    const size_t act = anvil_dtype_size(act_dtype);
    rt->fuse = calloc((size_t)n, sizeof *rt->fuse); /* no fusion: every op by itself */
    rt->value_buffer = malloc((size_t)n * sizeof *rt->value_buffer);
    rt->buffer_bytes = calloc((size_t)n, sizeof *rt->buffer_bytes);
    CHECK_GOTO(rt->fuse && rt->value_buffer && rt->buffer_bytes, ANVIL_ERR_OOM, done, "out of memory");
    TRY_GOTO(anvil_plan_activations(rt->net, rt->fuse, rt->opts.max_num_tokens, rt->opts.max_logit_rows, act,
                                    rt->value_buffer, rt->buffer_bytes, &out->n_act_buffers, &out->act_bytes),
             done);
    size_t moe_bytes = 0;
    TRY_GOTO(moe_scratch_bytes(rt->net, rt->opts.max_num_tokens, &moe_bytes), done);
    out->act_bytes += moe_bytes; /* (far below overflow: checked in the layout) */
    for (int32_t i = 0; i < n; i++) {
        const anvil_net_op *op = anvil_network_op(rt->net, i);
        float table[2048], scale;
        int n_tables;
        int32_t long_after;
        if (op->kind != ANVIL_OP_ROPE && op->kind != ANVIL_OP_MLA)
            continue;
        CHECK_GOTO(op->head_dim > 0 && op->head_dim <= 2048, ANVIL_ERR_UNSUPPORTED, done,
                   "rope: head_dim %lld too large", (long long)op->head_dim);
        TRY_GOTO(anvil_rope_tables(&op->rope, op->head_dim, table, &n_tables, &long_after, &scale), done);
    }
    anvil_dtype kv_dt;
    TRY_GOTO(kv_cache_dtype_for(&rt->cfg, &rt->opts, rt->opts.weight_dtype, act_dtype, 0, &kv_dt), done);
    kv_plan kp;
    TRY_GOTO(plan_kv(kv_shape_of(rt->net, rt->cfg.n_kv_heads, rt->cfg.head_dim), &rt->opts,
                     anvil_network_kv_layers(rt->net), anvil_dtype_size(kv_dt), &kp),
             done);
    size_t ints = 0, stage = 0;
    TRY_GOTO(plan_step(rt, act_dtype, kp.max_blocks_per_seq, &ints, &stage), done);
    CHECK_GOTO(anvil_add_size_ok(ints * sizeof(int32_t), stage, &out->step_bytes), ANVIL_ERR_UNSUPPORTED, done,
               "the step metadata overflows a size");
    out->max_seq_len = rt->opts.max_seq_len;
    out->kv_cache_tokens = rt->opts.kv_cache_tokens;
    out->n_kv_layers = anvil_network_kv_layers(rt->net);
    out->kv_dtype = kv_dt;
    out->kv_bytes_per_token = kp.per_token;
    out->kv_bytes = kp.pool_bytes;
    if (mem_limit > 0) {
        char need_s[32], lim_s[32];
        const size_t parts[3] = {out->act_bytes, out->kv_bytes, out->step_bytes};
        static const char *const names[3] = {"activations", "the KV cache", "the step metadata"};
        for (int k = 0; k < 3; k++)
            CHECK_GOTO(parts[k] <= mem_limit, ANVIL_ERR_OOM, done, "%s would take %s (%zu bytes), over the limit of %s",
                       names[k], anvil_plan_fmt_bytes(parts[k], need_s, sizeof need_s), parts[k],
                       anvil_plan_fmt_bytes(mem_limit, lim_s, sizeof lim_s));
    }
done:
    if (st != ANVIL_OK)
        memset(out, 0, sizeof *out);
    anvil_runtime_free(rt);
    return st;
}

/* ------------------------------------------------------------ forward */

/* Checks the batch and fills the step's metadata (host arrays in meta_host,
 * pointers rebased onto the backend copy). A token id < 0 is a placeholder
 * for the id the last launched step sampled for its logits row -1 - id,
 * allowed only when prev_rows > 0 (that step's row count): with prev_host
 * (those ids on the host) it is resolved here, else it goes to the backend
 * as it is (resolve_tokens rewrites it there); *n_ph counts them. */
anvil_status anvil_rt_prepare_step(anvil_runtime *rt, const anvil_batch *b, anvil_step *s, int32_t prev_rows,
                                    const int32_t *prev_host, int32_t *n_ph)
{
    const anvil_runtime_options *o = &rt->opts;
    const int32_t T = b->n_tokens, S = b->n_seqs, L = b->n_logits, MB = b->max_blocks_per_seq;
    const int32_t bs = o->kv_block_size;
    CHECK(T > 0 && b->token_ids && b->positions, ANVIL_ERR_INVALID_ARG, "a batch needs tokens and positions");
    CHECK(T <= o->max_num_tokens, ANVIL_ERR_CAPACITY, "batch of %d tokens exceeds max_num_tokens %d", T,
          o->max_num_tokens);
    CHECK(S > 0 && S <= o->max_batch_size && b->seq_starts, ANVIL_ERR_CAPACITY,
          "batch of %d sequences: must be 1..max_batch_size (%d)", S, o->max_batch_size);
    CHECK(L >= 0 && L <= o->max_logit_rows, ANVIL_ERR_CAPACITY, "%d logit rows exceed max_logit_rows %d", L,
          o->max_logit_rows);
    CHECK(MB > 0 && MB <= rt->max_blocks_per_seq && b->block_tables, ANVIL_ERR_INVALID_ARG,
          "max_blocks_per_seq must be 1..%d, got %d", rt->max_blocks_per_seq, MB);
    CHECK(b->seq_starts[0] == 0 && b->seq_starts[S] == T, ANVIL_ERR_INVALID_ARG,
          "seq_starts must run from 0 to n_tokens");

    int32_t *m = rt->meta_host;
    int32_t *ids = m, *pos = ids + T, *seq_of = pos + T, *slots = seq_of + T;
    int32_t *starts = slots + T, *lens = starts + S + 1, *tables = lens + S, *rows = tables + (size_t)S * MB;
    memcpy(ids, b->token_ids, (size_t)T * 4);
    memcpy(pos, b->positions, (size_t)T * 4);
    memcpy(starts, b->seq_starts, (size_t)(S + 1) * 4);
    memcpy(tables, b->block_tables, (size_t)S * MB * 4);
    if (L > 0) {
        CHECK(b->logit_rows != NULL, ANVIL_ERR_INVALID_ARG, "n_logits > 0 needs logit_rows");
        memcpy(rows, b->logit_rows, (size_t)L * 4);
    }
    int32_t max_ctx = 0, n_dec = 0, dec_ctx = 0;
    for (int32_t q = 0; q < S; q++) {
        CHECK(starts[q + 1] > starts[q], ANVIL_ERR_INVALID_ARG, "sequence %d of the batch has no tokens", q);
        for (int32_t t = starts[q]; t < starts[q + 1]; t++) {
            if (ids[t] < 0) {
                CHECK(-1 - (int64_t)ids[t] < prev_rows, ANVIL_ERR_INVALID_ARG,
                      "token id %d: %s", ids[t],
                      prev_rows > 0 ? "a placeholder for a row the last launched step does not have"
                                    : "out of range (placeholders only in a step launched after another)");
                (*n_ph)++;
                if (prev_host != NULL)
                    ids[t] = prev_host[-1 - ids[t]] < 0 ? 0 : prev_host[-1 - ids[t]];
            }
            CHECK(ids[t] < rt->cfg.vocab_size, ANVIL_ERR_INVALID_ARG,
                  "token id %d out of range (vocabulary %lld)", ids[t], (long long)rt->cfg.vocab_size);
            CHECK(pos[t] >= 0 && pos[t] < o->max_seq_len, ANVIL_ERR_CAPACITY,
                  "position %d outside the context (max_seq_len %d)", pos[t], o->max_seq_len);
            CHECK(t == starts[q] || pos[t] == pos[t - 1] + 1, ANVIL_ERR_INVALID_ARG,
                  "positions of sequence %d are not consecutive", q);
            CHECK(pos[t] / bs < MB, ANVIL_ERR_INVALID_ARG, "position %d needs block %d of a %d-block table",
                  pos[t], pos[t] / bs, MB);
            int32_t blk = tables[(size_t)q * MB + pos[t] / bs];
            CHECK(blk >= 0 && blk < rt->n_blocks, ANVIL_ERR_INVALID_ARG,
                  "sequence %d: block id %d out of range (%d blocks)", q, blk, rt->n_blocks);
            seq_of[t] = q;
            slots[t] = blk * bs + pos[t] % bs;
        }
        lens[q] = pos[starts[q + 1] - 1] + 1;
        /* every earlier position is read from the cache: its block must be valid */
        for (int32_t j = 0; j < (lens[q] + bs - 1) / bs; j++) {
            int32_t blk = tables[(size_t)q * MB + j];
            CHECK(blk >= 0 && blk < rt->n_blocks, ANVIL_ERR_INVALID_ARG,
                  "sequence %d: block id %d out of range (%d blocks)", q, blk, rt->n_blocks);
        }
        if (lens[q] > max_ctx)
            max_ctx = lens[q];
        if (n_dec == q && starts[q + 1] - starts[q] == 1) {
            n_dec++;
            dec_ctx = lens[q] > dec_ctx ? lens[q] : dec_ctx;
        }
    }
    for (int32_t i = 0; i < L; i++)
        CHECK(rows[i] >= 0 && rows[i] < T, ANVIL_ERR_INVALID_ARG, "logit row %d out of range", rows[i]);

    size_t used = (size_t)(rows + L - m);
    TRY(rt->be->ops->upload(rt->be, rt->meta_dev, m, used * 4));
    const int32_t *d = rt->meta_dev;
    s->n_tokens = T;
    s->n_seqs = S;
    s->n_logits = L;
    s->max_blocks_per_seq = MB;
    s->block_size = bs;
    s->max_context = max_ctx;
    s->n_decode = n_dec;
    s->decode_max_context = dec_ctx;
    s->token_ids = d + (ids - m);
    s->positions = d + (pos - m);
    s->seq_of_token = d + (seq_of - m);
    s->slots = d + (slots - m);
    s->seq_starts = d + (starts - m);
    s->seq_lens = d + (lens - m);
    s->block_tables = d + (tables - m);
    s->logit_rows = d + (rows - m);
    return ANVIL_OK;
}

static anvil_status prepare_step(anvil_runtime *rt, const anvil_batch *b, anvil_step *s)
{
    int32_t n_ph = 0;
    return anvil_rt_prepare_step(rt, b, s, 0, NULL, &n_ph);
}

static anvil_tensor value_tensor(const anvil_runtime *rt, const anvil_step *s, anvil_value v)
{
    const anvil_net_op *op = anvil_network_op(rt->net, v);
    int64_t rows = op->row_kind == 0 ? s->n_tokens : s->n_logits;
    return anvil_tensor_2d(rt->be->ops->act_dtype, rows, op->width, rt->buffers[rt->value_buffer[v]]);
}

anvil_tensor anvil_rt_logits_tensor(const anvil_runtime *rt, const anvil_step *s)
{
    return value_tensor(rt, s, anvil_network_output(rt->net));
}

static anvil_status run_op(anvil_runtime *rt, const anvil_step *s, int32_t i)
{
    anvil_backend *be = rt->be;
    const anvil_backend_ops *ops = be->ops;
    const anvil_net_op *op = anvil_network_op(rt->net, i);
    anvil_tensor out = value_tensor(rt, s, i);
    anvil_tensor a, b, c;
    if (op->inputs[0] != ANVIL_VALUE_NONE)
        a = value_tensor(rt, s, op->inputs[0]);
    if (op->inputs[1] != ANVIL_VALUE_NONE)
        b = value_tensor(rt, s, op->inputs[1]);
    if (op->inputs[2] != ANVIL_VALUE_NONE)
        c = value_tensor(rt, s, op->inputs[2]);
    const anvil_tensor *w0 = op->weights[0] >= 0 ? &rt->weights[op->weights[0]] : NULL;
    const anvil_tensor *w1 = op->weights[1] >= 0 ? &rt->weights[op->weights[1]] : NULL;

    switch (op->kind) {
    case ANVIL_OP_EMBEDDING:
        if (w0->shape[0] < rt->cfg.vocab_size) { /* a TP rank's vocabulary slice */
            CHECK(ops->embedding_part != NULL, ANVIL_ERR_UNSUPPORTED, "the %s backend has no embedding_part",
                  ops->name);
            return ops->embedding_part(be, w0, op->first_id, s, &out);
        }
        return ops->embedding(be, w0, s, &out);
    case ANVIL_OP_RMSNORM:
        return ops->rmsnorm(be, &a, w0, (float)op->eps, op->weight_offset, &out);
    case ANVIL_OP_HEAD_RMSNORM:
        return ops->head_rmsnorm(be, &a, w0, (int32_t)op->head_dim, (float)op->eps, &out);
    case ANVIL_OP_LINEAR:
        return ops->matmul(be, &a, w0, w1, &out);
    case ANVIL_OP_ROPE:
        return ops->rope(be, &out, s, (int32_t)op->head_dim, &rt->rope_freqs[i]);
    case ANVIL_OP_ATTENTION: {
        const anvil_attention_params *p = &op->attn;
        anvil_attention_args args = {
            .q = &a, .k = &b, .v = &c,
            .k_cache = &rt->k_cache[p->layer], .v_cache = &rt->v_cache[p->layer],
            .out = &out, .step = s,
            .n_heads = p->n_heads, .n_kv_heads = p->n_kv_heads, .head_dim = p->head_dim,
            .sliding_window = p->sliding_window, .scale = p->scale, .softcap = p->softcap,
            .k_scale = rt->kv_scales[2 * p->layer], .v_scale = rt->kv_scales[2 * p->layer + 1],
        };
        return ops->attention(be, &args);
    }
    case ANVIL_OP_SILU_MUL:
        return ops->silu_mul(be, &a, &b, &out);
    case ANVIL_OP_ADD:
        return ops->add(be, &a, &b, &out);
    case ANVIL_OP_LOGIT_ROWS:
        return ops->gather_rows(be, &a, s, &out);
    case ANVIL_OP_GELU_TANH_MUL:
        CHECK(ops->gelu_tanh_mul != NULL, ANVIL_ERR_UNSUPPORTED, "the %s backend has no gelu_tanh_mul", ops->name);
        return ops->gelu_tanh_mul(be, &a, &b, &out);
    case ANVIL_OP_SCALE:
        CHECK(ops->scale != NULL, ANVIL_ERR_UNSUPPORTED, "the %s backend has no scale op", ops->name);
        return ops->scale(be, &a, op->scalar, &out);
    case ANVIL_OP_SOFTCAP:
        CHECK(ops->softcap != NULL, ANVIL_ERR_UNSUPPORTED, "the %s backend has no softcap op", ops->name);
        return ops->softcap(be, &a, op->scalar, &out);
    case ANVIL_OP_LAYERNORM:
        CHECK(ops->layernorm != NULL, ANVIL_ERR_UNSUPPORTED, "the %s backend has no layernorm", ops->name);
        return ops->layernorm(be, &a, w0, w1, (float)op->eps, &out);
    case ANVIL_OP_GELU_TANH:
        CHECK(ops->gelu_tanh != NULL, ANVIL_ERR_UNSUPPORTED, "the %s backend has no gelu_tanh", ops->name);
        return ops->gelu_tanh(be, &a, &out);
    case ANVIL_OP_POS_EMBEDDING:
        CHECK(ops->pos_embedding != NULL, ANVIL_ERR_UNSUPPORTED, "the %s backend has no pos_embedding", ops->name);
        return ops->pos_embedding(be, &a, w0, s, &out);
    case ANVIL_OP_ALL_REDUCE:
    case ANVIL_OP_ALL_GATHER:
        return anvil_rt_tp_collective(rt, op, &a, &out);
    case ANVIL_OP_SEND:
        return anvil_rt_pp_transfer(rt, op, &a, &out);
    case ANVIL_OP_RECV:
        return anvil_rt_pp_transfer(rt, op, NULL, &out);
    case ANVIL_OP_MOE: {
        CHECK(ops->moe != NULL, ANVIL_ERR_UNSUPPORTED, "the %s backend has no moe op", ops->name);
        const anvil_moe_params *p = &op->moe;
        const int32_t *wi = op->weights;
        anvil_moe_args args = {
            .x = &a, .router = &rt->weights[wi[0]], .gate_up = &rt->weights[wi[1]], .down = &rt->weights[wi[2]],
            .shared_gate_up = wi[3] >= 0 ? &rt->weights[wi[3]] : NULL,
            .shared_down = wi[4] >= 0 ? &rt->weights[wi[4]] : NULL,
            .shared_gate = wi[5] >= 0 ? &rt->weights[wi[5]] : NULL,
            .out = &out, .n_experts = p->n_experts, .top_k = p->top_k, .inter = p->inter,
            .shared_inter = p->shared_inter, .norm_topk_prob = p->norm_topk_prob,
            .n_group = p->n_group, .topk_group = p->topk_group, .routed_scale = p->routed_scale,
            .scratch = rt->moe_scratch, .scratch_bytes = rt->moe_scratch_bytes,
        };
        return ops->moe(be, &args);
    }
    case ANVIL_OP_MLA: {
        CHECK(ops->mla != NULL, ANVIL_ERR_UNSUPPORTED, "the %s backend has no mla op", ops->name);
        const anvil_mla_params *p = &op->mla;
        anvil_mla_args args = {
            .q = &a, .c = &b, .k_pe = &c, .kv_b = w0, .cache = &rt->k_cache[p->layer], .out = &out, .step = s,
            .rope = &rt->rope_freqs[i], .n_heads = p->n_heads, .kv_rank = p->kv_rank, .nope_dim = p->nope_dim,
            .rope_dim = p->rope_dim, .v_dim = p->v_dim, .scale = p->scale,
        };
        return ops->mla(be, &args);
    }
    case ANVIL_OP_COUNT:
        break;
    }
    return ANVIL_FAIL(ANVIL_ERR_INTERNAL, "unknown op kind %d", (int)op->kind);
}

/* The fused group that starts at op i (or, for attention, ends there). */
static anvil_status run_fused(anvil_runtime *rt, const anvil_step *s, int32_t i)
{
    anvil_backend *be = rt->be;
    const anvil_backend_ops *ops = be->ops;
    const anvil_net_op *op = anvil_network_op(rt->net, i);
    const anvil_fuse *f = &rt->fuse[i];
    switch ((anvil_fuse_kind)f->kind) {
    case ANVIL_FUSE_ADD_RMSNORM: {
        const anvil_net_op *norm = anvil_network_op(rt->net, i + 1);
        anvil_tensor a = value_tensor(rt, s, op->inputs[0]), b = value_tensor(rt, s, op->inputs[1]);
        anvil_tensor sum = value_tensor(rt, s, i), out = value_tensor(rt, s, i + 1);
        return ops->add_rmsnorm(be, &a, &b, &rt->weights[norm->weights[0]], (float)norm->eps, &sum, &out);
    }
    case ANVIL_FUSE_MATMUL_MULTI: {
        anvil_tensor x = value_tensor(rt, s, op->inputs[0]);
        anvil_tensor outs[ANVIL_MATMUL_MULTI_MAX];
        const anvil_tensor *w[ANVIL_MATMUL_MULTI_MAX], *bias[ANVIL_MATMUL_MULTI_MAX];
        anvil_tensor *o[ANVIL_MATMUL_MULTI_MAX];
        for (int j = 0; j < f->n; j++) {
            const anvil_net_op *lj = anvil_network_op(rt->net, i + j);
            outs[j] = value_tensor(rt, s, i + j);
            o[j] = &outs[j];
            w[j] = &rt->weights[lj->weights[0]];
            bias[j] = lj->weights[1] >= 0 ? &rt->weights[lj->weights[1]] : NULL;
        }
        return ops->matmul_multi(be, &x, f->n, w, bias, o);
    }
    case ANVIL_FUSE_SILU_MUL: {
        const anvil_net_op *up = anvil_network_op(rt->net, i + 1);
        anvil_tensor x = value_tensor(rt, s, op->inputs[0]);
        anvil_tensor g = value_tensor(rt, s, i), u = value_tensor(rt, s, i + 1), out = value_tensor(rt, s, i + 2);
        return ops->matmul_silu_mul(be, &x, &rt->weights[op->weights[0]],
                                    op->weights[1] >= 0 ? &rt->weights[op->weights[1]] : NULL,
                                    &rt->weights[up->weights[0]],
                                    up->weights[1] >= 0 ? &rt->weights[up->weights[1]] : NULL, &g, &u, &out);
    }
    case ANVIL_FUSE_NORM_MULTI:
    case ANVIL_FUSE_NORM_SILU: {
        const anvil_net_op *norm = anvil_network_op(rt->net, i + 1), *lin = anvil_network_op(rt->net, i + 2);
        anvil_tensor a = value_tensor(rt, s, op->inputs[0]), b = value_tensor(rt, s, op->inputs[1]);
        anvil_tensor sum = value_tensor(rt, s, i), x = value_tensor(rt, s, i + 1);
        const anvil_tensor *nw = &rt->weights[norm->weights[0]];
        if (f->kind == ANVIL_FUSE_NORM_SILU) {
            const anvil_net_op *up = anvil_network_op(rt->net, i + 3);
            anvil_tensor g = value_tensor(rt, s, i + 2), u = value_tensor(rt, s, i + 3);
            anvil_tensor out = value_tensor(rt, s, i + 4);
            return ops->add_rmsnorm_matmul_silu_mul(
                be, &a, &b, nw, (float)norm->eps, &sum, &x, &rt->weights[lin->weights[0]],
                lin->weights[1] >= 0 ? &rt->weights[lin->weights[1]] : NULL, &rt->weights[up->weights[0]],
                up->weights[1] >= 0 ? &rt->weights[up->weights[1]] : NULL, &g, &u, &out);
        }
        anvil_tensor outs[ANVIL_MATMUL_MULTI_MAX];
        const anvil_tensor *w[ANVIL_MATMUL_MULTI_MAX], *bias[ANVIL_MATMUL_MULTI_MAX];
        anvil_tensor *o[ANVIL_MATMUL_MULTI_MAX];
        for (int j = 0; j < f->n; j++) {
            const anvil_net_op *lj = anvil_network_op(rt->net, i + 2 + j);
            outs[j] = value_tensor(rt, s, i + 2 + j);
            o[j] = &outs[j];
            w[j] = &rt->weights[lj->weights[0]];
            bias[j] = lj->weights[1] >= 0 ? &rt->weights[lj->weights[1]] : NULL;
        }
        return ops->add_rmsnorm_matmul_multi(be, &a, &b, nw, (float)norm->eps, &sum, &x, f->n, w, bias, o);
    }
    case ANVIL_FUSE_ROPE_ATTENTION: {
        const anvil_attention_params *p = &op->attn;
        anvil_tensor q = value_tensor(rt, s, op->inputs[0]), k = value_tensor(rt, s, op->inputs[1]);
        anvil_tensor v = value_tensor(rt, s, op->inputs[2]), out = value_tensor(rt, s, i);
        anvil_attention_args args = {
            .q = &q, .k = &k, .v = &v,
            .k_cache = &rt->k_cache[p->layer], .v_cache = &rt->v_cache[p->layer],
            .out = &out, .step = s,
            .n_heads = p->n_heads, .n_kv_heads = p->n_kv_heads, .head_dim = p->head_dim,
            .sliding_window = p->sliding_window, .scale = p->scale, .softcap = p->softcap,
            .k_scale = rt->kv_scales[2 * p->layer], .v_scale = rt->kv_scales[2 * p->layer + 1],
            .rope = &rt->rope_freqs[f->rope_op],
        };
        return ops->attention(be, &args);
    }
    case ANVIL_FUSE_NONE:
    case ANVIL_FUSE_SKIP:
    case ANVIL_FUSE_KINDS:
        break;
    }
    return ANVIL_FAIL(ANVIL_ERR_INTERNAL, "op %d: unknown fusion %d", i, (int)f->kind);
}

/* Every op of the step in plan order (runtime_internal.h). */
anvil_status anvil_rt_op_loop(anvil_runtime *rt, const anvil_step *s, anvil_rt_micro *mb)
{
    const anvil_value outv = anvil_network_output(rt->net);
    for (int32_t i = 0; i < rt->n_ops; i++) {
        const anvil_net_op *op = anvil_network_op(rt->net, i);
        /* ops over the logit rows are skipped when no row wants logits */
        if (op->row_kind == 1 && s->n_logits == 0)
            continue;
        if (rt->fuse[i].kind == ANVIL_FUSE_SKIP)
            continue;
        if (mb != NULL && op->kind == ANVIL_OP_RECV && i == outv)
            continue; /* stage 0's logits: received by the schedule (runtime_micro.c) */
        if (mb != NULL && op->kind == ANVIL_OP_SEND)
            TRY(anvil_rt_micro_before_send(rt, mb));
        anvil_status st = rt->fuse[i].kind == ANVIL_FUSE_NONE ? run_op(rt, s, i) : run_fused(rt, s, i);
        if (st != ANVIL_OK)
            return anvil_error_wrap("op %d (%s)", i, anvil_op_kind_name(op->kind));
        if (rt->op_hook != NULL && rt->fuse[i].kind == ANVIL_FUSE_NONE) {
            const anvil_tensor out = value_tensor(rt, s, i);
            TRY(rt->op_hook(rt->op_hook_user, i, &out, s));
        }
    }
    return ANVIL_OK;
}

/* Every op of the step (as micro-batches where they apply), and with
 * ids_dev the argmax of each logit row into it. */
static anvil_status run_ops(anvil_runtime *rt, const anvil_step *s, int32_t *ids_dev)
{
    if (rt->step_prev_ids != NULL) /* placeholders: the previous step's ids, in stream order */
        TRY(rt->be->ops->resolve_tokens(rt->be, s, rt->step_prev_ids));
    TRY(anvil_rt_tp_lead_step(rt, s)); /* a leading rank 0 sends the step to the others */
    int micro = 0;
    TRY(anvil_rt_micro_run(rt, s, &micro)); /* pipeline stages: the step as micro-batches */
    if (!micro)
        TRY(anvil_rt_op_loop(rt, s, NULL));
    if (ids_dev != NULL && s->n_logits > 0 && rt->has_logits) { /* (a stage between has none) */
        anvil_tensor lg = value_tensor(rt, s, anvil_network_output(rt->net));
        if (rt->step_sample != NULL)
            TRY(rt->be->ops->sample_rows(rt->be, &lg, rt->step_sample, NULL, ids_dev));
        else
            TRY(rt->be->ops->argmax_rows(rt->be, &lg, ids_dev));
    }
    return ANVIL_OK;
}

/* Decode steps of at most this many sequences go through step graphs. */
#define GRAPH_MAX_TOKENS 1024

/*
 * The step-graph key of a step, or 0 when it takes none: only decode steps
 * (one token per sequence), on backends with graphs. Their launches depend
 * on the token, logit-row and block-table sizes (which fix the layout of the
 * step arrays in meta_dev), on whether the argmax or the sampler runs
 * (`greedy` 1 or 2), and, through the
 * attention split count, on max_context: that is rounded up to a power of
 * two (at least 64) here, for the graph and for the runs before it alike,
 * so one graph serves a range of contexts.
 */
static uint64_t step_graph_key(const anvil_runtime *rt, anvil_step *s, int greedy)
{
    const anvil_backend_ops *ops = rt->be->ops;
    if (ops->graph_begin == NULL || ops->graph_end == NULL)
        return 0;
    /* the collectives of TP ranks and pipeline stages wait for the
     * backend's queue on the host, which a graph's capture cannot hold
     * (NCCL inside the graph is next: docs/parallel.md) */
    if (anvil_comm_size(rt->tp_comm) > 1 || rt->pp_comm != NULL)
        return 0;
    if (s->n_tokens != s->n_seqs || s->n_tokens > GRAPH_MAX_TOKENS || s->n_logits > 4095 ||
        s->max_blocks_per_seq >= (1 << 20))
        return 0;
    int lg = 6;
    while (lg < 30 && (1 << lg) < s->max_context)
        lg++;
    s->max_context = 1 << lg;
    return 1u | (uint64_t)(greedy == 1) << 1 | (uint64_t)lg << 2 | (uint64_t)(greedy == 2) << 7 |
           (uint64_t)s->n_tokens << 8 |
           (uint64_t)s->n_logits << 20 | (uint64_t)s->max_blocks_per_seq << 32 |
           (uint64_t)(rt->step_prev_ids != NULL) << 52; /* the placeholders' fix-up runs first */
}

/* The ops of the step, through a step graph where one applies. */
anvil_status anvil_rt_run_step(anvil_runtime *rt, anvil_step *s, int32_t *ids_dev)
{
    anvil_backend *be = rt->be;
    /* the ids come from the argmax (1) or, in a forward_sample step, the sampler (2) */
    const uint64_t key = step_graph_key(rt, s, ids_dev == NULL ? 0 : rt->step_sample != NULL ? 2 : 1);
    int action = ANVIL_GRAPH_RUN;
    if (key != 0)
        TRY(be->ops->graph_begin(be, key, &action));
    if (action == ANVIL_GRAPH_REPLAYED)
        return ANVIL_OK;
    anvil_status st = run_ops(rt, s, ids_dev);
    if (action != ANVIL_GRAPH_RECORDING)
        return st;
    int ran = 0;
    TRY(be->ops->graph_end(be, key, st, &ran));
    /* not recorded (an op failed, or the backend could not make the
     * graph): run the ops as usual, which also reports a real error */
    return ran ? ANVIL_OK : run_ops(rt, s, ids_dev);
}

/* The synchronous steps: refused while a launched step was not waited
 * for (its ids and buffers are still in use); after one, no placeholder
 * may name the last launched step. */
anvil_status anvil_rt_check_not_launched(anvil_runtime *rt, const char *what)
{
    CHECK(rt->launch_count == 0, ANVIL_ERR_INVALID_ARG,
          "%s: %d launched step%s not waited for (anvil_runtime_forward_sample_wait)", what, rt->launch_count,
          rt->launch_count == 1 ? "" : "s");
    rt->launch_prev_rows = 0;
    return ANVIL_OK;
}

/* The step with its logits to the host (forward's body). */
anvil_status anvil_rt_forward_logits(anvil_runtime *rt, const anvil_batch *batch, float *logits)
{
    anvil_step s;
    TRY(prepare_step(rt, batch, &s));
    TRY(anvil_rt_run_step(rt, &s, NULL));
    if (s.n_logits == 0 || !rt->has_logits) /* a pipeline stage between the first and the last */
        return rt->be->ops->synchronize(rt->be);
    const anvil_value outv = anvil_network_output(rt->net);
    const void *src = rt->buffers[rt->value_buffer[outv]];
    const int64_t n = (int64_t)s.n_logits * rt->cfg.vocab_size;
    const anvil_dtype dt = rt->be->ops->act_dtype;
    if (dt == ANVIL_DTYPE_F32)
        return rt->be->ops->download(rt->be, logits, src, (size_t)n * 4);
    TRY(rt->be->ops->download(rt->be, rt->logits_host_stage, src, (size_t)n * anvil_dtype_size(dt)));
    anvil_convert_to_f32(dt, rt->logits_host_stage, logits, n);
    return ANVIL_OK;
}

anvil_status anvil_runtime_forward(anvil_runtime *rt, const anvil_batch *batch, float *logits)
{
    CHECK(rt != NULL && batch != NULL, ANVIL_ERR_INVALID_ARG, "forward: NULL argument");
    CHECK(batch->n_logits == 0 || logits != NULL, ANVIL_ERR_INVALID_ARG, "forward: logits buffer is NULL");
    TRY(anvil_rt_check_not_launched(rt, "forward"));
    return anvil_rt_forward_logits(rt, batch, logits);
}

anvil_status anvil_runtime_forward_greedy(anvil_runtime *rt, const anvil_batch *batch, int32_t *next_ids)
{
    CHECK(rt != NULL && batch != NULL, ANVIL_ERR_INVALID_ARG, "forward: NULL argument");
    CHECK(batch->n_logits == 0 || next_ids != NULL, ANVIL_ERR_INVALID_ARG, "forward: next_ids is NULL");
    TRY(anvil_rt_check_not_launched(rt, "forward_greedy"));
    anvil_backend *be = rt->be;
    if (be->ops->argmax_rows == NULL) {
        /* the logits come to the host, one row at a time through a buffer */
        const int64_t vocab = rt->cfg.vocab_size;
        float *lg = batch->n_logits > 0 ? malloc((size_t)batch->n_logits * (size_t)vocab * sizeof *lg) : NULL;
        CHECK(batch->n_logits == 0 || lg != NULL, ANVIL_ERR_OOM, "out of memory");
        anvil_status st = anvil_runtime_forward(rt, batch, lg);
        for (int32_t r = 0; st == ANVIL_OK && r < batch->n_logits; r++) {
            next_ids[r] = anvil_greedy_pick(lg + (int64_t)r * vocab, (int32_t)vocab);
        }
        free(lg);
        return st;
    }
    if (rt->ids_dev == NULL)
        TRY(be->ops->alloc(be, (size_t)rt->opts.max_logit_rows * sizeof(int32_t), &rt->ids_dev));
    anvil_step s;
    TRY(prepare_step(rt, batch, &s));
    TRY(anvil_rt_run_step(rt, &s, rt->ids_dev));
    if (s.n_logits == 0 || !rt->has_logits)
        return be->ops->synchronize(be);
    return be->ops->download(be, next_ids, rt->ids_dev, (size_t)s.n_logits * sizeof(int32_t));
}

