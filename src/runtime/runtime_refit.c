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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/log.h"
#include "builder/refit.h"
#include "core/error.h"
#include "runtime/runtime_internal.h"
#include "runtime/runtime_plan.h"

/* Copy lanes the commit spreads pinned copies over (a few streams keep the
 * host-to-device link busy; more add nothing). */
#define REFIT_LANES 4

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
        if (sg->pinned[s])
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

/* Every stored tensor of src into sg, chunk by chunk, with progress. One
 * thread: a serving loop keeps its cores meanwhile. */
static anvil_status stage_all(const anvil_runtime *rt, const anvil_refit_source *src, anvil_refit_staging *sg,
                              const anvil_refit_options *o)
{
    anvil_build_scratch *scratch = NULL;
    if (!anvil_refit_source_is_engine(src))
        TRY(anvil_build_scratch_create(&scratch));
    anvil_status st = ANVIL_OK;
    size_t done = 0;
    for (int32_t s = 0; s < sg->n && st == ANVIL_OK; s++) {
        const anvil_stored *t = &rt->plan->stored[s];
        sg->data[s] = stage_alloc(sg, s, t->bytes);
        if (sg->data[s] == NULL) {
            char b[32];
            st = ANVIL_FAIL(ANVIL_ERR_OOM, "refit: out of host memory staging tensor '%s' (%s)", t->name,
                            anvil_plan_fmt_bytes(t->bytes, b, sizeof b));
            break;
        }
        sg->bytes += t->bytes;
        for (size_t off = 0; off < t->bytes && st == ANVIL_OK; off += ANVIL_BUILD_CHUNK) {
            const size_t len = t->bytes - off < ANVIL_BUILD_CHUNK ? t->bytes - off : ANVIL_BUILD_CHUNK;
            st = anvil_refit_source_fill(src, s, off, (char *)sg->data[s] + off, len, scratch);
            done += len;
            if (st == ANVIL_OK && o->progress && o->progress(o->progress_user, done, rt->plan->total_bytes))
                st = ANVIL_FAIL(ANVIL_ERR_CANCELLED, "the refit was cancelled");
        }
    }
    if (st == ANVIL_OK) /* rewritten while read: what was staged is not to be trusted */
        st = anvil_refit_source_check_unchanged(src);
    anvil_build_scratch_free(scratch);
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
    int lanes_used = 0;
    for (int32_t s = 0; s < n && st == ANVIL_OK; s++) {
        const size_t bytes = rt->plan->stored[s].bytes;
        if (fresh[s] != NULL) {
            memcpy(fresh[s], sg->data[s], bytes);
        } else if (be->ops->weights_in_host_memory) {
            memcpy(rt->stored_data[s], sg->data[s], bytes);
        } else if (sg->pinned[s] && be->ops->upload_async != NULL && be->ops->upload_wait != NULL) {
            const int lane = s % REFIT_LANES;
            st = be->ops->upload_async(be, lane, rt->stored_data[s], sg->data[s], bytes);
            lanes_used = lane + 1 > lanes_used ? lane + 1 : lanes_used;
        } else {
            st = be->ops->upload(be, rt->stored_data[s], sg->data[s], bytes);
        }
        copied += st == ANVIL_OK;
    }
    for (int lane = 0; lane < lanes_used; lane++) { /* every lane, also after a failure: the staging goes next */
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
                rt->weights[i].data = (char *)fresh[s] + (size_t)rt->plan->weight_offset[i] *
                                                             anvil_dtype_size(rt->plan->stored[s].kind);
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
    if (st == ANVIL_OK)
        anvil_log(ANVIL_LOG_INFO, "refit: %.1f MiB of weights replaced in place%s", (double)bytes / 1048576.0,
                  n_fresh ? " (mapped weights copied into memory of their own)" : "");
    return st;
}

anvil_status anvil_runtime_refit(anvil_runtime *rt, const char *weights, const anvil_refit_options *o)
{
    anvil_refit_staging *sg = NULL;
    TRY(anvil_runtime_refit_prepare(rt, weights, o, &sg));
    return anvil_runtime_refit_commit(rt, sg);
}
