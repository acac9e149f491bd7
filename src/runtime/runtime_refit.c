/*
 * Refit of a live runtime (anvil/runtime.h): new weights of the same shapes
 * read and checked into host staging memory off the step thread
 * (anvil_runtime_refit_prepare), then copied into the runtime's weight
 * memory in place between two steps (anvil_runtime_refit_commit).
 *
 * Why in place: the network's weights are views into the stored tensors'
 * allocations, and on CUDA the captured step graphs hold those device
 * pointers; a copy into the same memory keeps every view and graph valid,
 * so a commit is only the copy (no graph is dropped, nothing is
 * re-planned). Why staged on the host first: the read and conversion of a
 * checkpoint take seconds to minutes and may fail halfway (a missing
 * tensor, a NaN, a truncated file); staged, all of that happens before the
 * first byte of the runtime changes, and the pause a serving loop sees is
 * the copy alone.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "anvil/log.h"
#include "builder/refit.h"
#include "core/error.h"
#include "runtime/runtime_internal.h"
#include "runtime/runtime_plan.h"

/* The commit's pinned copies go in pieces of REFIT_COPY_CHUNK bytes over
 * REFIT_LANES copy lanes, so that a large tensor (the embeddings) is not
 * one lane's alone. On an H100 host 1 to 32 lanes and 16 MiB to 1 GiB
 * pieces copied at the same rate (the link's, docs/engine.md); several
 * lanes are for hosts whose copy engines are the limit. */
#define REFIT_LANES      8
#define REFIT_COPY_CHUNK ((size_t)64 << 20)

struct anvil_refit_staging {
    const anvil_runtime *rt; /* the runtime it was prepared for (its backend frees pinned memory) */
    int32_t n;               /* stored tensors */
    void **data;             /* [n] each stored tensor's new bytes, as the runtime stores them */
    unsigned char *pinned;   /* [n] 1: data[s] is the backend's pinned host memory (host_alloc) */
    size_t bytes;
};

void anvil_refit_staging_free(anvil_refit_staging *sg)
{
    if (sg == NULL)
        return;
    anvil_backend *be = sg->rt->be;
    for (int32_t s = 0; sg->data && s < sg->n; s++) {
        if (sg->pinned && sg->pinned[s])
            be->ops->host_free(be, sg->data[s]);
        else
            free(sg->data[s]);
    }
    free(sg->data);
    free(sg->pinned);
    free(sg);
}

/* Host memory for stored tensor s's new bytes: pinned where the backend
 * has it (a GPU: the commit's copies then run at full speed, on several
 * copy lanes at once, which shortens the pause), else (or when pinning
 * fails: it is a scarcer resource than memory) from the heap. */
static void *stage_alloc(anvil_refit_staging *sg, int32_t s, size_t bytes)
{
    anvil_backend *be = sg->rt->be;
    if (be->ops->host_alloc != NULL && be->ops->host_free != NULL) {
        void *p = NULL;
        if (be->ops->host_alloc(be, bytes, &p) == ANVIL_OK) {
            sg->pinned[s] = 1;
            return p;
        }
        anvil_clear_error();
    }
    return malloc(bytes ? bytes : 1);
}

size_t anvil_refit_staging_bytes(const anvil_refit_staging *sg)
{
    return sg ? sg->bytes : 0;
}

/*
 * Staging on several threads: the stored tensors in chunks of
 * ANVIL_BUILD_CHUNK bytes, which the threads take in turn (read, convert,
 * scan: on a GPU's host, with pinned staging, this is what bounds a
 * refit's preparation). The calling thread reports progress between its
 * own chunks. How many threads: o->n_threads, else 1 where the weights
 * live in host memory (the CPU backend: a serving loop keeps its cores;
 * it has the pause alone to fear, not the preparation) and up to 8 on a
 * GPU's host, whose cores are idle while the GPU serves.
 */
#define STAGE_THREADS_MAX 8

typedef struct stage_job {
    const anvil_runtime *rt;
    const anvil_refit_source *src;
    anvil_refit_staging *sg;
    _Atomic int64_t next; /* the next chunk: (tensor, offset) in plan order */
    _Atomic size_t done;  /* bytes staged */
    atomic_int stop;      /* a thread failed, or the caller cancelled */
    int64_t n_chunks;
    int32_t *chunk_s;   /* [n_chunks] */
    size_t *chunk_off;  /* [n_chunks] */
    pthread_mutex_t mu; /* the first failure */
    anvil_status st;
    char msg[1024];
} stage_job;

static void stage_fail(stage_job *j, anvil_status st)
{
    pthread_mutex_lock(&j->mu);
    if (j->st == ANVIL_OK) { /* messages are per thread: carry the text over */
        j->st = st;
        snprintf(j->msg, sizeof j->msg, "%s", anvil_last_error());
    }
    pthread_mutex_unlock(&j->mu);
    atomic_store(&j->stop, 1);
}

/* One chunk, or 0 when none is left (or the work stopped). */
static int stage_one(stage_job *j, anvil_build_scratch *scratch)
{
    if (atomic_load(&j->stop))
        return 0;
    const int64_t c = atomic_fetch_add(&j->next, 1);
    if (c >= j->n_chunks)
        return 0;
    const int32_t s = j->chunk_s[c];
    const size_t off = j->chunk_off[c], bytes = j->rt->plan->stored[s].bytes;
    const size_t len = bytes - off < ANVIL_BUILD_CHUNK ? bytes - off : ANVIL_BUILD_CHUNK;
    const anvil_status st =
        anvil_refit_source_fill(j->src, s, off, (char *)j->sg->data[s] + off, len, scratch);
    if (st != ANVIL_OK) {
        stage_fail(j, st);
        return 0;
    }
    atomic_fetch_add(&j->done, len);
    return 1;
}

static void *stage_thread(void *arg)
{
    stage_job *j = arg;
    anvil_build_scratch *scratch = NULL;
    if (!anvil_refit_source_is_engine(j->src)) {
        const anvil_status st = anvil_build_scratch_create(&scratch);
        if (st != ANVIL_OK) {
            stage_fail(j, st);
            return NULL;
        }
    }
    while (stage_one(j, scratch))
        ;
    anvil_build_scratch_free(scratch);
    return NULL;
}

static anvil_status stage_all(const anvil_runtime *rt, const anvil_refit_source *src, anvil_refit_staging *sg,
                              const anvil_refit_options *o)
{
    /* the staging memory first: running out of it fails before any reading */
    int64_t n_chunks = 0;
    for (int32_t s = 0; s < sg->n; s++) {
        const anvil_stored *t = &rt->plan->stored[s];
        sg->data[s] = stage_alloc(sg, s, t->bytes);
        if (sg->data[s] == NULL) {
            char b[32];
            return ANVIL_FAIL(ANVIL_ERR_OOM, "refit: out of host memory staging tensor '%s' (%s)", t->name,
                              anvil_plan_fmt_bytes(t->bytes, b, sizeof b));
        }
        sg->bytes += t->bytes;
        n_chunks += (int64_t)((t->bytes + ANVIL_BUILD_CHUNK - 1) / ANVIL_BUILD_CHUNK);
    }
    stage_job j = {.rt = rt, .src = src, .sg = sg, .n_chunks = n_chunks};
    j.chunk_s = malloc((size_t)(n_chunks ? n_chunks : 1) * sizeof *j.chunk_s);
    j.chunk_off = malloc((size_t)(n_chunks ? n_chunks : 1) * sizeof *j.chunk_off);
    anvil_build_scratch *scratch = NULL;
    anvil_status st = j.chunk_s && j.chunk_off ? ANVIL_OK : ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
    if (st == ANVIL_OK && !anvil_refit_source_is_engine(src))
        st = anvil_build_scratch_create(&scratch);
    if (st != ANVIL_OK) {
        free(j.chunk_s);
        free(j.chunk_off);
        return st;
    }
    for (int32_t s = 0, c = 0; s < sg->n; s++)
        for (size_t off = 0; off < rt->plan->stored[s].bytes; off += ANVIL_BUILD_CHUNK, c++) {
            j.chunk_s[c] = s;
            j.chunk_off[c] = off;
        }
    pthread_mutex_init(&j.mu, NULL);
    int n_threads = o->n_threads > 0                      ? o->n_threads
                    : rt->be->ops->weights_in_host_memory ? 1
                                                          : STAGE_THREADS_MAX;
    if (n_threads > STAGE_THREADS_MAX)
        n_threads = STAGE_THREADS_MAX;
    if (n_threads > n_chunks)
        n_threads = (int)(n_chunks > 0 ? n_chunks : 1);
    pthread_t threads[STAGE_THREADS_MAX];
    int started = 0;
    for (int i = 1; i < n_threads; i++) /* the calling thread is the first */
        if (pthread_create(&threads[started], NULL, stage_thread, &j) == 0)
            started++;
    const size_t total = rt->plan->total_bytes;
    while (stage_one(&j, scratch)) {
        if (o->progress && o->progress(o->progress_user, atomic_load(&j.done), total)) {
            ANVIL_FAIL(ANVIL_ERR_CANCELLED, "the refit was cancelled");
            stage_fail(&j, ANVIL_ERR_CANCELLED);
        }
    }
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    st = j.st;
    if (st != ANVIL_OK)
        ANVIL_FAIL(st, "%s", j.msg); /* the failing thread's message, on this thread */
    else if (o->progress && o->progress(o->progress_user, total, total))
        st = ANVIL_FAIL(ANVIL_ERR_CANCELLED, "the refit was cancelled");
    if (st == ANVIL_OK) /* rewritten while read: what was staged is not to be trusted */
        st = anvil_refit_source_check_unchanged(src);
    pthread_mutex_destroy(&j.mu);
    anvil_build_scratch_free(scratch);
    free(j.chunk_s);
    free(j.chunk_off);
    return st;
}

anvil_status anvil_runtime_refit_prepare(const anvil_runtime *rt, const char *weights,
                                         const anvil_refit_options *o, anvil_refit_staging **out)
{
    CHECK(out != NULL, ANVIL_ERR_INVALID_ARG, "refit: NULL argument");
    *out = NULL;
    CHECK(rt != NULL && weights != NULL, ANVIL_ERR_INVALID_ARG, "refit: NULL argument");
    const anvil_refit_options none = {0};
    if (o == NULL)
        o = &none;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    anvil_refit_source *src = NULL;
    anvil_status st =
        anvil_refit_source_open(weights, &rt->cfg, rt->net, rt->plan, !rt->opts.no_weight_check, &src);
    if (st != ANVIL_OK)
        return anvil_error_wrap("refit with %s", weights);
    anvil_refit_staging *sg = calloc(1, sizeof *sg);
    if (sg != NULL) {
        sg->rt = rt;
        sg->n = rt->plan->n_stored;
        sg->data = calloc((size_t)(sg->n ? sg->n : 1), sizeof *sg->data);
        sg->pinned = calloc((size_t)(sg->n ? sg->n : 1), 1);
    }
    if (sg == NULL || sg->data == NULL || sg->pinned == NULL)
        st = ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
    else
        st = stage_all(rt, src, sg, o);
    anvil_refit_source_close(src);
    if (st != ANVIL_OK) {
        anvil_refit_staging_free(sg);
        return anvil_error_wrap("refit with %s", weights);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    anvil_log(ANVIL_LOG_INFO, "refit: %.1f MiB of new weights from %s staged in %.2f s%s",
              (double)sg->bytes / 1048576.0, weights,
              (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9,
              sg->n > 0 && sg->pinned[0] ? " (pinned)" : "");
    *out = sg;
    return ANVIL_OK;
}

/* Whether stored tensor s is used in place from the checkpoint's or
 * engine's mapping (CPU with use_mmap): read-only pages of the old file,
 * which the commit cannot write. */
static int is_mapped(const anvil_runtime *rt, int32_t s)
{
    return rt->be->ops->weights_in_host_memory && rt->stored_allocs[s] == NULL;
}

anvil_status anvil_runtime_refit_commit(anvil_runtime *rt, anvil_refit_staging *sg)
{
    if (rt == NULL || sg == NULL || sg->rt != rt || sg->n != rt->plan->n_stored) {
        anvil_refit_staging_free(sg);
        return ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "refit commit: %s",
                          rt == NULL || sg == NULL ? "NULL argument"
                                                   : "the staging was prepared for another runtime");
    }
    anvil_backend *be = rt->be;
    const int32_t n = sg->n;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    void **fresh = calloc((size_t)(n ? n : 1), sizeof *fresh);
    anvil_status st = fresh ? ANVIL_OK : ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
    /* memory of their own for mapped tensors, all before the first copy:
     * a failed allocation leaves the runtime as it was */
    int n_fresh = 0;
    for (int32_t s = 0; s < n && st == ANVIL_OK; s++) {
        if (!is_mapped(rt, s))
            continue;
        st = be->ops->alloc(be, rt->plan->stored[s].bytes, &fresh[s]);
        if (st != ANVIL_OK)
            anvil_error_wrap("refit: memory for tensor '%s' (mapped from the old file until now)",
                             rt->plan->stored[s].name);
        n_fresh++;
    }
    if (st != ANVIL_OK) {
        for (int32_t s = 0; fresh && s < n; s++)
            if (fresh[s])
                be->ops->free(be, fresh[s]);
        free(fresh);
        anvil_refit_staging_free(sg);
        return st;
    }
    int32_t copied = 0;
    int lanes_used = 0, next_lane = 0;
    for (int32_t s = 0; s < n && st == ANVIL_OK; s++) {
        const size_t bytes = rt->plan->stored[s].bytes;
        if (fresh[s] != NULL) {
            memcpy(fresh[s], sg->data[s], bytes);
        } else if (be->ops->weights_in_host_memory) {
            memcpy(rt->stored_data[s], sg->data[s], bytes);
        } else if (sg->pinned[s] && be->ops->upload_async != NULL && be->ops->upload_wait != NULL) {
            for (size_t off = 0; off < bytes && st == ANVIL_OK; off += REFIT_COPY_CHUNK, next_lane++) {
                const int lane = next_lane % REFIT_LANES;
                const size_t len = bytes - off < REFIT_COPY_CHUNK ? bytes - off : REFIT_COPY_CHUNK;
                st = be->ops->upload_async(be, lane, (char *)rt->stored_data[s] + off,
                                           (char *)sg->data[s] + off, len);
                lanes_used = lane + 1 > lanes_used ? lane + 1 : lanes_used;
            }
        } else {
            st = be->ops->upload(be, rt->stored_data[s], sg->data[s], bytes);
        }
        copied += st == ANVIL_OK;
    }
    for (int lane = 0; lane < lanes_used;
         lane++) { /* every lane, also after a failure: the staging goes next */
        const anvil_status w = be->ops->upload_wait(be, lane);
        if (st == ANVIL_OK)
            st = w;
    }
    if (st == ANVIL_OK)
        st = be->ops->synchronize(be);
    if (st != ANVIL_OK && copied > 0)
        anvil_error_wrap(
            "refit: copying the new weights failed after %d of %d tensors: the runtime's weights are "
            "partly replaced (free it and load the model again)",
            copied, n);
    /* a quantized weight's scales, zero points and perm move with their
     * stored tensors (each pointer keeps its offset; before the bases change) */
    for (int32_t i = 0; n_fresh > 0 && i < rt->n_weights; i++) {
        const anvil_stored_quant *q = &rt->plan->stored[rt->plan->weight_stored[i]].q;
        anvil_quant *wq = &rt->quants[i];
        if (q->scales < 0)
            continue;
        if (fresh[q->scales] != NULL)
            wq->scales = (const float *)((char *)fresh[q->scales] +
                                         ((const char *)wq->scales - (const char *)rt->stored_data[q->scales]));
        if (q->zeros >= 0 && fresh[q->zeros] != NULL)
            wq->zeros = (const uint8_t *)fresh[q->zeros] + (wq->zeros - (const uint8_t *)rt->stored_data[q->zeros]);
        if (q->perm >= 0 && fresh[q->perm] != NULL)
            wq->perm = (const int32_t *)fresh[q->perm] + (wq->perm - (const int32_t *)rt->stored_data[q->perm]);
    }
    for (int32_t s = 0; s < n; s++) {
        if (fresh[s] == NULL)
            continue;
        /* on the CPU (the only backend with mapped weights) copies cannot
         * fail: the views move to the new memory */
        rt->stored_allocs[s] = rt->stored_data[s] = fresh[s];
    }
    if (n_fresh > 0) {
        for (int32_t i = 0; i < rt->n_weights; i++) {
            const int32_t s = rt->plan->weight_stored[i];
            if (fresh[s] != NULL)
                rt->weights[i].data = (char *)fresh[s] + anvil_stored_kind_bytes(rt->plan->stored[s].kind,
                                                                                  rt->plan->weight_offset[i]);
        }
        /* no weight points into the old file any longer */
        anvil_checkpoint_close(rt->ckpt);
        rt->ckpt = NULL;
        anvil_engine_file_close(rt->engine);
        rt->engine = NULL;
    }
    free(fresh);
    const size_t bytes = sg->bytes;
    anvil_refit_staging_free(sg);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (st == ANVIL_OK)
        anvil_log(ANVIL_LOG_INFO, "refit: %.1f MiB of weights replaced in place in %.2f ms%s",
                  (double)bytes / 1048576.0,
                  ((double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9) * 1e3,
                  n_fresh ? " (mapped weights copied into memory of their own)" : "");
    return st;
}

anvil_status anvil_runtime_refit(anvil_runtime *rt, const char *weights, const anvil_refit_options *o)
{
    anvil_refit_staging *sg = NULL;
    TRY(anvil_runtime_refit_prepare(rt, weights, o, &sg));
    return anvil_runtime_refit_commit(rt, sg);
}
