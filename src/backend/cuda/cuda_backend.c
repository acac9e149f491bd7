/* The CUDA backend: device, stream, memory, copies, the error word, and the
 * op table. The ops live in cuda_*.c (host side) and cuda_*.cu (kernels). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/log.h"
#include "backend/cuda/cuda_embedding_part.h"
#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/cuda_mla.h"

#define STAGE_BYTES ((size_t)4 << 20)           /* per pinned upload buffer */
#define LT_WORKSPACE_BYTES ((size_t)32 << 20)   /* what cuBLAS advises for Hopper */

/* ---------------------------------------------------------------- errors */

anvil_status anvil_cuda_status(cudaError_t e, const char *what, const char *file, int line)
{
    if (e == cudaSuccess)
        return ANVIL_OK;
    return anvil_error_set(ANVIL_ERR_CUDA, file, line, "%s: %s (%s)", what, cudaGetErrorString(e),
                           cudaGetErrorName(e));
}

int anvil_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear it: "no device" is an answer, not an error */
        return 0;
    }
    return n;
}

anvil_status anvil_cuda_use(anvil_cuda_backend *cb)
{
    CUDA_TRY(cudaSetDevice(cb->device), "cudaSetDevice");
    return ANVIL_OK;
}

anvil_status anvil_cuda_reserve(anvil_cuda_backend *cb, void **buf, size_t *have, size_t bytes, const char *what)
{
    if (bytes <= *have)
        return ANVIL_OK;
    CHECK(!cb->capturing, ANVIL_ERR_INTERNAL, "%s: %zu bytes needed while a step graph is recorded", what, bytes);
    anvil_cuda_graphs_reset(cb); /* graphs hold the old pointer (and the sizes that came with it) */
    if (*buf != NULL) {
        /* kernels queued earlier may still read the old buffer */
        CUDA_TRY(cudaStreamSynchronize(cb->stream), what);
        CUDA_TRY(cudaFree(*buf), what);
        *buf = NULL;
        *have = 0;
    }
    size_t n = (bytes + 255) / 256 * 256;
    CUDA_TRY(cudaMalloc(buf, n), what);
    *have = n;
    return ANVIL_OK;
}

/* Reads the error word (after the queued work) and reports what it says. */
static anvil_status check_error_word(anvil_cuda_backend *cb, const char *what)
{
    anvil_cuda_fence(cb);
    CUDA_TRY(cudaMemcpyAsync(cb->h_err, cb->d_err, sizeof(int), cudaMemcpyDeviceToHost, cb->stream), what);
    CUDA_TRY(cudaStreamSynchronize(cb->stream), what);
    int bits = *cb->h_err;
    if (bits == 0)
        return ANVIL_OK;
    CUDA_TRY(cudaMemsetAsync(cb->d_err, 0, sizeof(int), cb->stream), what);
    CUDA_TRY(cudaStreamSynchronize(cb->stream), what);
    char msg[256];
    msg[0] = '\0';
    static const struct {
        int bit;
        const char *text;
    } names[] = {
        {ANVIL_CUDA_BAD_TOKEN, " token id outside the embedding table;"},
        {ANVIL_CUDA_BAD_SLOT, " cache slot outside the KV cache;"},
        {ANVIL_CUDA_BAD_BLOCK, " block id outside the KV cache or position past the block table;"},
        {ANVIL_CUDA_BAD_SEQ, " seq_of_token outside [0, n_seqs);"},
        {ANVIL_CUDA_BAD_ROW, " logit row outside the activations;"},
        {ANVIL_CUDA_BAD_PERM, " quantized weight's perm entry outside [0, K);"},
        {ANVIL_CUDA_BAD_POSITION, " position outside the position embedding table;"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (bits & names[i].bit)
            strncat(msg, names[i].text, sizeof msg - strlen(msg) - 1);
    return ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "%s: a kernel skipped invalid step data:%s", what, msg);
}

/* ---------------------------------------------------------------- memory */

static void cuda_destroy(anvil_backend *be)
{
    if (be == NULL)
        return;
    /* be is the first member (impl may not be set yet when creation fails) */
    anvil_cuda_backend *cb = (anvil_cuda_backend *)be;
    if (cb->stream == NULL) { /* creation stopped before the device was set up */
        pthread_mutex_destroy(&cb->lanes_mu);
        free(cb);
        return;
    }
    if (cudaSetDevice(cb->device) == cudaSuccess)
        (void)cudaStreamSynchronize(cb->stream);
    anvil_cuda_graphs_free(cb);
    anvil_cuda_matmul_cache_free(cb->mm_cache);
    if (cb->lt != NULL)
        cublasLtDestroy(cb->lt);
    cudaFree(cb->lt_workspace);
    cudaFree(cb->mm_scratch);
    cudaFree(cb->q_scratch);
    cudaFree(cb->fp8_x_buf);
    cudaFree(cb->attn_ws);
    cudaFree(cb->attn_cnt);
    cudaFree(cb->gsq_ws);
    cudaFree(cb->gsq_cnt);
    cudaFree(cb->d_err);
    cudaFreeHost(cb->h_err);
    cudaFreeHost(cb->h_err_slot);
    for (int i = 0; i < 2; i++)
        if (cb->dl_done[i] != NULL)
            cudaEventDestroy(cb->dl_done[i]);
    for (int i = 0; i < 2; i++) {
        cudaFreeHost(cb->stage[i]);
        if (cb->stage_done[i] != NULL)
            cudaEventDestroy(cb->stage_done[i]);
    }
    for (int i = 0; i < cb->lanes_made; i++)
        cudaStreamDestroy(cb->lanes[i]);
    pthread_mutex_destroy(&cb->lanes_mu);
    cudaStreamDestroy(cb->stream);
    (void)cudaGetLastError();
    free(cb);
}

static anvil_status cuda_alloc(anvil_backend *be, size_t bytes, void **out)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    *out = NULL;
    TRY(anvil_cuda_use(cb));
    /* whole 256-byte units: kernels may read a full vector at the end */
    size_t n = bytes == 0 ? 256 : bytes;
    CHECK(n <= SIZE_MAX - 255, ANVIL_ERR_OOM, "cuda alloc: %zu bytes", bytes);
    n = (n + 255) / 256 * 256;
    cudaError_t e = cudaMalloc(out, n);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        *out = NULL;
        return ANVIL_FAIL(ANVIL_ERR_OOM, "cuda alloc: cannot allocate %zu bytes on device %d", bytes, cb->device);
    }
    if (e != cudaSuccess)
        *out = NULL;
    CUDA_TRY(e, "cudaMalloc");
    return ANVIL_OK;
}

static void cuda_free(anvil_backend *be, void *ptr)
{
    if (ptr == NULL)
        return;
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    if (cudaSetDevice(cb->device) == cudaSuccess) {
        (void)cudaStreamSynchronize(cb->stream); /* no queued kernel may still use ptr */
        (void)cudaFree(ptr);
    }
    (void)cudaGetLastError();
}

/*
 * Host to device. src is copied into a pinned staging buffer before this
 * returns (so the caller may reuse it at once), then the DMA runs
 * asynchronously on the stream. Large copies go through the two buffers in
 * turn, the CPU filling one while the other is on its way.
 */
static anvil_status cuda_upload(anvil_backend *be, void *dst, const void *src, size_t bytes)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    if (bytes == 0)
        return ANVIL_OK;
    CHECK(dst != NULL && src != NULL, ANVIL_ERR_INVALID_ARG, "cuda upload: NULL pointer");
    TRY(anvil_cuda_use(cb));
    anvil_cuda_fence(cb);
    for (size_t off = 0; off < bytes;) {
        size_t n = bytes - off < cb->stage_bytes ? bytes - off : cb->stage_bytes;
        int i = cb->stage_next;
        cb->stage_next ^= 1;
        CUDA_TRY(cudaEventSynchronize(cb->stage_done[i]), "cuda upload: waiting for the staging buffer");
        memcpy(cb->stage[i], (const char *)src + off, n);
        CUDA_TRY(cudaMemcpyAsync((char *)dst + off, cb->stage[i], n, cudaMemcpyHostToDevice, cb->stream),
                 "cuda upload");
        CUDA_TRY(cudaEventRecord(cb->stage_done[i], cb->stream), "cuda upload");
        off += n;
    }
    return ANVIL_OK;
}

/* ---------------------------------------------------------------- loading from threads */

static anvil_status cuda_host_alloc(anvil_backend *be, size_t bytes, void **out)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    *out = NULL;
    TRY(anvil_cuda_use(cb));
    cudaError_t e = cudaMallocHost(out, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        *out = NULL;
        (void)cudaGetLastError();
        return ANVIL_FAIL(ANVIL_ERR_OOM, "cuda: cannot pin %zu bytes of host memory: %s", bytes, cudaGetErrorString(e));
    }
    return ANVIL_OK;
}

static void cuda_host_free(anvil_backend *be, void *ptr)
{
    (void)be;
    if (ptr != NULL)
        (void)cudaFreeHost(ptr);
    (void)cudaGetLastError();
}

/* The copy lanes: streams of their own, made once, so that copies from
 * several loading threads overlap each other (and nothing else waits). */
static anvil_status lanes_ready(anvil_cuda_backend *cb)
{
    anvil_status st = ANVIL_OK;
    pthread_mutex_lock(&cb->lanes_mu);
    while (cb->lanes_made < ANVIL_UPLOAD_LANES && st == ANVIL_OK) {
        cudaError_t e = cudaStreamCreateWithFlags(&cb->lanes[cb->lanes_made], cudaStreamNonBlocking);
        if (e != cudaSuccess)
            st = ANVIL_FAIL(ANVIL_ERR_CUDA, "cudaStreamCreate (copy lane): %s", cudaGetErrorString(e));
        else
            cb->lanes_made++;
    }
    pthread_mutex_unlock(&cb->lanes_mu);
    return st;
}

static anvil_status cuda_upload_async(anvil_backend *be, int lane, void *dst, const void *src, size_t bytes)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    CHECK(lane >= 0 && lane < ANVIL_UPLOAD_LANES, ANVIL_ERR_INVALID_ARG, "cuda upload: lane %d", lane);
    TRY(anvil_cuda_use(cb)); /* this thread's current device */
    TRY(lanes_ready(cb));
    if (bytes > 0)
        CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cb->lanes[lane]), "cuda upload (lane)");
    return ANVIL_OK;
}

static anvil_status cuda_upload_wait(anvil_backend *be, int lane)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    CHECK(lane >= 0 && lane < ANVIL_UPLOAD_LANES, ANVIL_ERR_INVALID_ARG, "cuda upload: lane %d", lane);
    TRY(anvil_cuda_use(cb));
    TRY(lanes_ready(cb));
    CUDA_TRY(cudaStreamSynchronize(cb->lanes[lane]), "cuda upload (lane)");
    return ANVIL_OK;
}

/* Device to host, after everything queued before it; waits. */
static anvil_status cuda_download(anvil_backend *be, void *dst, const void *src, size_t bytes)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    CHECK(bytes == 0 || (dst != NULL && src != NULL), ANVIL_ERR_INVALID_ARG, "cuda download: NULL pointer");
    TRY(anvil_cuda_use(cb));
    anvil_cuda_fence(cb);
    if (bytes > 0)
        CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cb->stream), "cuda download");
    return check_error_word(cb, "cuda download");
}

/* Device to host into pinned dst, queued after everything before it; the
 * error word follows into the slot's own pinned int, then the slot's
 * event. The host goes on at once (the overlap scheduler's step n + 1 is
 * queued behind this copy while step n's ids come back). */
static anvil_status cuda_download_async(anvil_backend *be, int slot, void *dst, const void *src, size_t bytes)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    CHECK(slot == 0 || slot == 1, ANVIL_ERR_INVALID_ARG, "cuda download_async: slot %d", slot);
    CHECK(bytes == 0 || (dst != NULL && src != NULL), ANVIL_ERR_INVALID_ARG, "cuda download_async: NULL pointer");
    TRY(anvil_cuda_use(cb));
    anvil_cuda_fence(cb);
    if (bytes > 0)
        CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cb->stream), "cuda download_async");
    CUDA_TRY(cudaMemcpyAsync(&cb->h_err_slot[slot], cb->d_err, sizeof(int), cudaMemcpyDeviceToHost, cb->stream),
             "cuda download_async");
    CUDA_TRY(cudaEventRecord(cb->dl_done[slot], cb->stream), "cuda download_async");
    return ANVIL_OK;
}

/* Waits for the slot's copy alone (not for work queued after it). */
static anvil_status cuda_download_wait(anvil_backend *be, int slot)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    CHECK(slot == 0 || slot == 1, ANVIL_ERR_INVALID_ARG, "cuda download_wait: slot %d", slot);
    TRY(anvil_cuda_use(cb));
    CUDA_TRY(cudaEventSynchronize(cb->dl_done[slot]), "cuda download_wait");
    if (cb->h_err_slot[slot] == 0)
        return ANVIL_OK;
    /* a kernel flagged invalid data: the full check (waits for the stream,
     * names the flags, clears the word) */
    anvil_status st = check_error_word(cb, "cuda step");
    return st != ANVIL_OK ? st
                          : ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "cuda step: a kernel skipped invalid step data");
}

static anvil_status cuda_synchronize(anvil_backend *be)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    TRY(anvil_cuda_use(cb));
    return check_error_word(cb, "cuda synchronize");
}

static anvil_status cuda_mem_available(anvil_backend *be, size_t *out)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    *out = 0;
    TRY(anvil_cuda_use(cb));
    size_t free_b = 0, total = 0;
    CUDA_TRY(cudaMemGetInfo(&free_b, &total), "cudaMemGetInfo");
    *out = free_b;
    return ANVIL_OK;
}

anvil_status anvil_cuda_set_knobs(anvil_backend *be, const anvil_cuda_knobs *knobs)
{
    CHECK(be != NULL && be->ops != NULL && be->ops->destroy == cuda_destroy && knobs != NULL,
          ANVIL_ERR_INVALID_ARG, "anvil_cuda_set_knobs: not a CUDA backend");
    anvil_cuda_impl(be)->knobs = *knobs;
    anvil_cuda_graphs_reset(anvil_cuda_impl(be)); /* recorded with the old choices */
    return ANVIL_OK;
}

/* ---------------------------------------------------------------- creation */

static anvil_status cuda_init(anvil_cuda_backend *cb)
{
    int n = 0;
    CUDA_TRY(cudaGetDeviceCount(&n), "cuda backend: cudaGetDeviceCount");
    CHECK(cb->device >= 0 && cb->device < n, ANVIL_ERR_INVALID_ARG, "cuda backend: device %d, but %d device%s",
          cb->device, n, n == 1 ? "" : "s");
    TRY(anvil_cuda_use(cb));
    struct cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, cb->device), "cudaGetDeviceProperties");
    CHECK(prop.major >= 8, ANVIL_ERR_UNSUPPORTED,
          "cuda backend: device %d (%s) is sm_%d%d; anvil needs sm_80 or newer", cb->device, prop.name,
          prop.major, prop.minor);
    cb->n_sm = prop.multiProcessorCount;
    cb->sm = prop.major * 10 + prop.minor;
    /* programmatic dependent launch needs sm_90; each backend decides for
     * its own launches (several devices may differ). On by default: the
     * wrong results session 31 saw with it beside another process were
     * loads of x that the compiler had hoisted above griddepcontrol.wait
     * (ld.global.nc: the kernel's inputs read before their producer ended),
     * gone since x is read with coherent loads (cuda_common.cuh); session
     * 32 checked it under the same contention (docs/cuda-backend.md, "Fused
     * ops and dependent launches") */
    cb->pdl = prop.major >= 9 && !cb->config.no_pdl;
    cb->smem_optin = prop.sharedMemPerBlockOptin;
    CUDA_TRY(cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking), "cudaStreamCreate");
    CUDA_TRY(cudaMalloc((void **)&cb->d_err, sizeof(int)), "cuda backend: error word");
    CUDA_TRY(cudaMemsetAsync(cb->d_err, 0, sizeof(int), cb->stream), "cuda backend: error word");
    anvil_cuda_fence(cb);
    CUDA_TRY(cudaMallocHost((void **)&cb->h_err, sizeof(int)), "cuda backend: error word");
    CUDA_TRY(cudaMallocHost((void **)&cb->h_err_slot, 2 * sizeof(int)), "cuda backend: error word");
    for (int i = 0; i < 2; i++)
        CUDA_TRY(cudaEventCreateWithFlags(&cb->dl_done[i], cudaEventDisableTiming), "cudaEventCreate");
    cb->stage_bytes = STAGE_BYTES;
    for (int i = 0; i < 2; i++) {
        CUDA_TRY(cudaMallocHost(&cb->stage[i], cb->stage_bytes), "cuda backend: staging buffer");
        CUDA_TRY(cudaEventCreateWithFlags(&cb->stage_done[i], cudaEventDisableTiming), "cudaEventCreate");
    }
    cublasStatus_t bs = cublasLtCreate(&cb->lt);
    CHECK(bs == CUBLAS_STATUS_SUCCESS, ANVIL_ERR_CUDA, "cublasLtCreate: %s", cublasGetStatusString(bs));
    cb->lt_workspace_bytes = LT_WORKSPACE_BYTES;
    CUDA_TRY(cudaMalloc(&cb->lt_workspace, cb->lt_workspace_bytes), "cuda backend: cuBLASLt workspace");
    CUDA_TRY(cudaStreamSynchronize(cb->stream), "cuda backend: init");
    return ANVIL_OK;
}

anvil_status anvil_backend_cuda_create(int device, anvil_dtype act_dtype, anvil_backend **out)
{
    anvil_backend_config c;
    anvil_backend_config_default(&c);
    c.act_dtype = act_dtype;
    return anvil_backend_cuda_create_config(device, &c, out);
}

anvil_status anvil_backend_cuda_create_config(int device, const anvil_backend_config *c, anvil_backend **out)
{
    *out = NULL;
    const anvil_dtype act_dtype = c->act_dtype;
    CHECK(act_dtype == ANVIL_DTYPE_F32 || act_dtype == ANVIL_DTYPE_BF16 || act_dtype == ANVIL_DTYPE_F16,
          ANVIL_ERR_UNSUPPORTED, "cuda backend: activations in %s (f32, bf16 or f16)", anvil_dtype_name(act_dtype));
    anvil_cuda_backend *cb = calloc(1, sizeof *cb);
    CHECK(cb != NULL, ANVIL_ERR_OOM, "cuda backend: out of memory");
    cb->device = device;
    cb->config = *c;
    cb->config.cpu_isa = NULL; /* not ours, and not kept past the call */
    cb->knobs.attn_combine_in_kernel = c->attn_combine_in_kernel != 0;
    cb->knobs.matmul_quant = c->cuda_matmul_quant;
    cb->knobs.rows_warps = c->cuda_rows_warps;
    cb->knobs.moe_loop = c->cuda_moe_loop;
    cb->knobs.fp8_act_share = c->cuda_fp8_unshared ? 2 : 0;
    pthread_mutex_init(&cb->lanes_mu, NULL);
    anvil_status st = cuda_init(cb);
    if (st != ANVIL_OK) {
        anvil_error_wrap("cuda backend on device %d", device);
        cuda_destroy(&cb->be);
        return st;
    }
    anvil_backend_ops *o = &cb->ops;
    o->name = act_dtype == ANVIL_DTYPE_F32 ? "cuda (f32)" : act_dtype == ANVIL_DTYPE_BF16 ? "cuda (bf16)" : "cuda (f16)";
    o->destroy = cuda_destroy;
    o->alloc = cuda_alloc;
    o->free = cuda_free;
    o->upload = cuda_upload;
    o->host_alloc = cuda_host_alloc;
    o->host_free = cuda_host_free;
    o->upload_async = cuda_upload_async;
    o->upload_wait = cuda_upload_wait;
    o->download = cuda_download;
    o->download_async = cuda_download_async;
    o->download_wait = cuda_download_wait;
    o->resolve_tokens = anvil_cuda_op_resolve_tokens;
    o->synchronize = cuda_synchronize;
    o->mem_available = cuda_mem_available;
    o->act_dtype = act_dtype;
    o->weights_in_host_memory = 0;
    o->quantized_weights = 1; /* fp8, int8, int4: cuda_matmul_quant.c */
    o->embedding = anvil_cuda_op_embedding;
    o->embedding_part = anvil_cuda_op_embedding_part;
    o->rmsnorm = anvil_cuda_op_rmsnorm;
    o->head_rmsnorm = anvil_cuda_op_head_rmsnorm;
    o->matmul = anvil_cuda_op_matmul;
    o->rope = anvil_cuda_op_rope;
    o->attention = anvil_cuda_op_attention;
    o->silu_mul = anvil_cuda_op_silu_mul;
    o->add = anvil_cuda_op_add;
    o->gelu_tanh_mul = anvil_cuda_op_gelu_tanh_mul;
    o->scale = anvil_cuda_op_scale;
    o->softcap = anvil_cuda_op_softcap;
    o->gather_rows = anvil_cuda_op_gather_rows;
    o->layernorm = anvil_cuda_op_layernorm;
    o->gelu_tanh = anvil_cuda_op_gelu_tanh;
    o->pos_embedding = anvil_cuda_op_pos_embedding;
    o->argmax_rows = anvil_cuda_op_argmax_rows;
    o->sample_rows = anvil_cuda_op_sample_rows;
    o->graph_begin = anvil_cuda_graph_begin;
    o->graph_end = anvil_cuda_graph_end;
    o->add_rmsnorm = anvil_cuda_op_add_rmsnorm;
    o->matmul_multi = anvil_cuda_op_matmul_multi;
    o->matmul_silu_mul = anvil_cuda_op_matmul_silu_mul;
    o->add_rmsnorm_matmul_multi = anvil_cuda_op_add_rmsnorm_matmul_multi;
    o->add_rmsnorm_matmul_silu_mul = anvil_cuda_op_add_rmsnorm_matmul_silu_mul;
    o->attention_rope = 1;
    o->moe = anvil_cuda_op_moe;
    o->mla = anvil_cuda_op_mla;
    cb->graphs_enabled = !c->no_cuda_graphs;
    cb->be.ops = &cb->ops;
    cb->be.impl = cb;
    *out = &cb->be;
    return ANVIL_OK;
}
