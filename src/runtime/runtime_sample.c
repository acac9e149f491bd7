/*
 * The sampled steps: anvil_runtime_forward_sample, and the same step in
 * two halves for the overlap scheduler (launch / wait), with the rows'
 * allowed-token masks (anvil_sample_row.allowed, a grammar's).
 *
 * Where the sampling runs. With the backend's sample op (and no
 * host_sampling) only ids leave the device: the draws are taken on the
 * host, uploaded with the step, and the sampler runs after the step's ops,
 * inside its step graph. A step with masks runs its ops (the forward's
 * graph) and then, out of the graph, the masks' one upload and the sample
 * op with them (their count changes from step to step; an unconstrained
 * step keeps its graphs and kernels as they were). A launch whose masks
 * are pending stops after the ops; anvil_runtime_forward_sample_masks
 * queues the rest. Without a sample op the logits come to the host, are
 * masked there (anvil_sampler_mask) and sampled by the host sampler.
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "runtime/runtime_internal.h"
#include "sampler/sampler.h"

static int row_samples(const anvil_sample_row *r) { return !anvil_sampling_is_greedy(&r->sampling); }

/* Whether forward_sample samples on the backend (else on the host). */
static int samples_on_backend(const anvil_runtime *rt)
{
    return rt->be->ops->sample_rows != NULL && !rt->host_sampling;
}

static anvil_status check_rows(anvil_runtime *rt, const anvil_batch *batch, const anvil_sample_row *rows,
                               int launch, int *n_masked)
{
    const int32_t L = batch->n_logits;
    CHECK(L >= 0 && L <= rt->opts.max_logit_rows, ANVIL_ERR_CAPACITY, "%d logit rows exceed max_logit_rows %d", L,
          rt->opts.max_logit_rows);
    CHECK(L == 0 || rows != NULL, ANVIL_ERR_INVALID_ARG, "forward_sample: rows is NULL");
    CHECK(L == 0 || rt->has_logits, ANVIL_ERR_INVALID_ARG,
          "forward_sample: pipeline stage %d of %d has no logits to sample (the first and the last have them)",
          rt->pp_stage, rt->pp_stages);
    *n_masked = 0;
    for (int32_t i = 0; i < L; i++) {
        const anvil_sample_row *r = &rows[i];
        if (anvil_sampling_params_check(&r->sampling) != ANVIL_OK)
            return anvil_error_wrap("forward_sample: row %d", i);
        CHECK(r->rng != NULL || !row_samples(r), ANVIL_ERR_INVALID_ARG,
              "forward_sample: row %d samples without a generator", i);
        CHECK(r->mask_pending == 0 || (launch && r->mask_pending == 1), ANVIL_ERR_INVALID_ARG,
              "forward_sample: row %d: mask_pending %d (0, or 1 in forward_sample_launch)", i, r->mask_pending);
        *n_masked += r->mask_pending || r->allowed != NULL;
    }
    return ANVIL_OK;
}

/* ------------------------------------------------------------ masks */

/* The mask staging, made on first use. */
static anvil_status masks_ready(anvil_runtime *rt)
{
    if (rt->mask_host != NULL)
        return ANVIL_OK;
    anvil_backend *be = rt->be;
    const size_t R = (size_t)rt->opts.max_logit_rows;
    const int32_t W = (int32_t)((rt->cfg.vocab_size + 31) / 32);
    const size_t bytes = R * sizeof(anvil_sample_draw) + R * (1 + (size_t)W) * sizeof(uint32_t);
    unsigned char *none = calloc(R, 1), *n0 = calloc(R, 1), *n1 = calloc(R, 1), *pend = calloc(R, 1);
    unsigned char *host = malloc(bytes);
    void *dev = NULL;
    anvil_status st = ANVIL_OK;
    if (!(none && n0 && n1 && pend && host))
        st = ANVIL_FAIL(ANVIL_ERR_OOM, "forward_sample: out of memory for masks");
    if (st == ANVIL_OK && samples_on_backend(rt))
        st = be->ops->alloc(be, bytes, &dev);
    if (st != ANVIL_OK) {
        free(none), free(n0), free(n1), free(pend), free(host);
        return st;
    }
    rt->mask_words = W;
    rt->mask_host = host;
    rt->mask_dev = dev;
    rt->mask_none = none;
    rt->launch_none[0] = n0;
    rt->launch_none[1] = n1;
    rt->pend_rows = pend;
    return ANVIL_OK;
}

/* Starts the step's staging: no mask, no row without a token. */
static void masks_clear(anvil_runtime *rt, int32_t L)
{
    rt->n_masks = 0;
    memset(rt->mask_none, 0, (size_t)L);
    memset(rt->pend_rows, 0, (size_t)L);
}

/* Whether a mask allows a token of the vocabulary. */
static int mask_allows_any(const anvil_runtime *rt, const uint32_t *allowed)
{
    const int64_t V = rt->cfg.vocab_size;
    const int32_t W = rt->mask_words;
    for (int32_t k = 0; k < W; k++) {
        uint32_t m = allowed[k];
        if ((int64_t)k * 32 + 32 > V)
            m &= (1u << (V - (int64_t)k * 32)) - 1u;
        if (m != 0)
            return 1;
    }
    return 0;
}

/*
 * The staging of a masked step, in host and in backend memory alike:
 * draws [max_logit_rows], then the masked rows [max_logit_rows], then
 * their masks [n_masks * mask_words], so that one copy takes them all.
 */
static size_t stage_rows_off(const anvil_runtime *rt)
{
    return (size_t)rt->opts.max_logit_rows * sizeof(anvil_sample_draw);
}

static size_t stage_words_off(const anvil_runtime *rt)
{
    return stage_rows_off(rt) + (size_t)rt->opts.max_logit_rows * sizeof(uint32_t);
}

/* Stages row i's mask (device path). */
static void mask_stage(anvil_runtime *rt, int32_t i, const uint32_t *allowed)
{
    const size_t W = (size_t)rt->mask_words;
    uint32_t *rows = (uint32_t *)(void *)(rt->mask_host + stage_rows_off(rt));
    uint32_t *words = (uint32_t *)(void *)(rt->mask_host + stage_words_off(rt));
    rows[rt->n_masks] = (uint32_t)i;
    memcpy(words + (size_t)rt->n_masks * W, allowed, W * sizeof *allowed);
    rt->n_masks++;
    rt->mask_none[i] = !mask_allows_any(rt, allowed);
}

/* The sampler of step s with its masks, queued after its ops: the draws
 * (in rt->sample_host), the masked rows and the masks go up in one copy,
 * then the sample op writes ids_dev. A step has two uploads so (its
 * arrays before the ops, this one after), which keeps the backend's two
 * staging buffers each on its side of the forward: no upload of a later
 * step waits for this step's forward to finish. */
static anvil_status sample_masked(anvil_runtime *rt, const anvil_step *s)
{
    anvil_backend *be = rt->be;
    const int32_t L = s->n_logits;
    memcpy(rt->mask_host, rt->sample_host, (size_t)L * sizeof(anvil_sample_draw));
    const size_t bytes = stage_words_off(rt) + (size_t)rt->n_masks * (size_t)rt->mask_words * sizeof(uint32_t);
    TRY(be->ops->upload(be, rt->mask_dev, rt->mask_host, bytes));
    const unsigned char *dev = rt->mask_dev;
    const anvil_sample_masks m = {
        .n = rt->n_masks,
        .n_words = rt->mask_words,
        .rows = (const int32_t *)(const void *)(dev + stage_rows_off(rt)),
        .words = (const uint32_t *)(const void *)(dev + stage_words_off(rt)),
    };
    anvil_tensor lg = anvil_rt_logits_tensor(rt, s);
    return be->ops->sample_rows(be, &lg, (const anvil_sample_draw *)(const void *)dev, m.n > 0 ? &m : NULL,
                                rt->ids_dev);
}

/* ------------------------------------------------------------ on the host */

static anvil_status host_ready(anvil_runtime *rt, int32_t L)
{
    const int64_t vocab = rt->cfg.vocab_size;
    if (L > 0 && rt->host_logits == NULL) {
        rt->host_logits = malloc((size_t)rt->opts.max_logit_rows * (size_t)vocab * sizeof *rt->host_logits);
        CHECK(rt->host_logits != NULL, ANVIL_ERR_OOM, "forward_sample: out of memory for the logits");
    }
    if (L > 0 && rt->host_sampler == NULL)
        TRY(anvil_sampler_create((int32_t)vocab, &rt->host_sampler));
    return ANVIL_OK;
}

/* Row i of the host logits, masked with allowed (NULL: none) and sampled;
 * d (not NULL) is its draw, taken earlier, else the row draws from rng. */
static int32_t host_pick(anvil_runtime *rt, int32_t i, const anvil_sample_row *r, const uint32_t *allowed,
                         const anvil_sample_draw *d)
{
    const int64_t vocab = rt->cfg.vocab_size;
    float *row = rt->host_logits + (int64_t)i * vocab;
    if (allowed != NULL && !anvil_sampler_mask(row, (int32_t)vocab, allowed))
        return ANVIL_TOKEN_NONE_ALLOWED;
    return d != NULL ? anvil_sampler_pick(rt->host_sampler, row, d)
                     : anvil_sampler_sample(rt->host_sampler, row, &r->sampling, r->rng);
}

/*
 * forward_sample where the backend has no sample op (or opts.host_sampling):
 * the logits come to the host and go through the host sampler. With
 * `launch`, a row whose mask is pending takes its draw now (into
 * sample_host) and is picked at forward_sample_masks; *pending says
 * whether one is.
 */
static anvil_status sample_on_host(anvil_runtime *rt, const anvil_batch *batch, const anvil_sample_row *rows,
                                   int32_t *next_ids, int *pending)
{
    const int32_t L = batch->n_logits;
    TRY(host_ready(rt, L));
    if (pending != NULL)
        *pending = 0;
    for (int32_t i = 0; pending != NULL && i < L; i++)
        if (rows[i].mask_pending) {
            TRY(masks_ready(rt));
            if (rt->sample_host == NULL) {
                rt->sample_host = malloc((size_t)rt->opts.max_logit_rows * sizeof *rt->sample_host);
                CHECK(rt->sample_host != NULL, ANVIL_ERR_OOM, "forward_sample: out of memory");
            }
            masks_clear(rt, L);
            *pending = 1;
            break;
        }
    TRY(anvil_rt_forward_logits(rt, batch, rt->host_logits));
    for (int32_t i = 0; i < L; i++) {
        if (pending != NULL && *pending && rows[i].mask_pending) {
            /* the draw now, as the launch takes it on the device path */
            const double u = row_samples(&rows[i]) ? anvil_rng_uniform(rows[i].rng) : 0.0;
            anvil_sample_draw_make(&rt->sample_host[i], &rows[i].sampling, u);
            rt->pend_rows[i] = 1;
            next_ids[i] = -1;
            continue;
        }
        next_ids[i] = host_pick(rt, i, &rows[i], rows[i].allowed, NULL);
    }
    return ANVIL_OK;
}

/* ------------------------------------------------------------ on the backend */

/*
 * The device-sampled step up to its ids in ids_dev (queued, not waited
 * for): the draws on the host, the step's arrays and draws uploaded, the
 * ops and the sampler (with masks: after the ops, out of the step graph;
 * with a mask pending: not yet, *pending = 1). Placeholders (prev_rows >
 * 0) are resolved on the backend from ids_dev, which still holds the
 * previous step's ids when the step's first op runs. On failure every
 * generator is as it was.
 */
static anvil_status sample_step_queue(anvil_runtime *rt, const anvil_batch *batch, const anvil_sample_row *rows,
                                      int32_t prev_rows, int n_masked, int *pending)
{
    anvil_backend *be = rt->be;
    const int32_t L = batch->n_logits;
    const size_t n_max = (size_t)rt->opts.max_logit_rows;
    if (rt->sample_host == NULL)
        rt->sample_host = malloc(n_max * sizeof *rt->sample_host);
    if (rt->sample_saved == NULL)
        rt->sample_saved = malloc(n_max * sizeof *rt->sample_saved);
    CHECK(rt->sample_host != NULL && rt->sample_saved != NULL, ANVIL_ERR_OOM, "forward_sample: out of memory");
    if (rt->sample_dev == NULL)
        TRY(be->ops->alloc(be, n_max * sizeof(anvil_sample_draw), &rt->sample_dev));
    if (rt->ids_dev == NULL)
        TRY(be->ops->alloc(be, n_max * sizeof(int32_t), &rt->ids_dev));
    *pending = 0;
    if (n_masked > 0) {
        TRY(masks_ready(rt));
        masks_clear(rt, L);
        for (int32_t i = 0; i < L; i++) {
            if (rows[i].mask_pending)
                rt->pend_rows[i] = 1, *pending = 1;
            else if (rows[i].allowed != NULL)
                mask_stage(rt, i, rows[i].allowed);
        }
    }

    /* the draws happen here, on the host, in the generators' own order;
     * the device only uses them */
    for (int32_t i = 0; i < L; i++) {
        const anvil_sample_row *r = &rows[i];
        double u = 0.0;
        if (row_samples(r)) {
            rt->sample_saved[i] = *r->rng;
            u = anvil_rng_uniform(r->rng);
        }
        anvil_sample_draw_make(&rt->sample_host[i], &r->sampling, u);
    }
    anvil_step s;
    int32_t n_ph = 0;
    anvil_status st = anvil_rt_prepare_step(rt, batch, &s, prev_rows, NULL, &n_ph);
    if (st == ANVIL_OK && n_ph > 0 && be->ops->resolve_tokens == NULL)
        st = ANVIL_FAIL(ANVIL_ERR_INTERNAL, "forward_sample: the backend cannot resolve placeholders");
    if (st == ANVIL_OK && L > 0 && n_masked == 0) /* else with the masks (sample_masked) */
        st = be->ops->upload(be, rt->sample_dev, rt->sample_host, (size_t)L * sizeof(anvil_sample_draw));
    if (st == ANVIL_OK) {
        rt->step_prev_ids = n_ph > 0 ? rt->ids_dev : NULL;
        if (n_masked == 0) {
            rt->step_sample = rt->sample_dev;
            st = anvil_rt_run_step(rt, &s, rt->ids_dev);
            rt->step_sample = NULL;
        } else {
            st = anvil_rt_run_step(rt, &s, NULL);
            if (st == ANVIL_OK && !*pending)
                st = sample_masked(rt, &s);
        }
        rt->step_prev_ids = NULL;
    }
    if (st == ANVIL_OK && *pending)
        rt->pend_step = s;
    if (st != ANVIL_OK)
        for (int32_t i = 0; i < L; i++)
            if (row_samples(&rows[i]))
                *rows[i].rng = rt->sample_saved[i];
    return st;
}

anvil_status anvil_runtime_forward_sample(anvil_runtime *rt, const anvil_batch *batch, const anvil_sample_row *rows,
                                          int32_t *next_ids)
{
    CHECK(rt != NULL && batch != NULL, ANVIL_ERR_INVALID_ARG, "forward: NULL argument");
    int n_masked = 0;
    TRY(check_rows(rt, batch, rows, 0, &n_masked));
    const int32_t L = batch->n_logits;
    CHECK(L == 0 || next_ids != NULL, ANVIL_ERR_INVALID_ARG, "forward_sample: next_ids is NULL");
    TRY(anvil_rt_check_not_launched(rt, "forward_sample"));
    if (!samples_on_backend(rt))
        return sample_on_host(rt, batch, rows, next_ids, NULL);
    anvil_backend *be = rt->be;
    int pending = 0;
    TRY(sample_step_queue(rt, batch, rows, 0, n_masked, &pending));
    anvil_status st = L == 0 ? be->ops->synchronize(be)
                             : be->ops->download(be, next_ids, rt->ids_dev, (size_t)L * sizeof(int32_t));
    for (int32_t i = 0; st == ANVIL_OK && n_masked > 0 && i < L; i++)
        if (rt->mask_none[i])
            next_ids[i] = ANVIL_TOKEN_NONE_ALLOWED;
    for (int32_t i = 0; i < L; i++) {
        /* a poisoned row (-1), or one whose mask allows nothing, draws nothing, as on the host */
        const int undraw = st != ANVIL_OK || next_ids[i] < 0;
        if (undraw && row_samples(&rows[i]))
            *rows[i].rng = rt->sample_saved[i];
    }
    return st;
}

/* ------------------------------------------------------------ steps launched ahead */

static anvil_status launch_slots_ready(anvil_runtime *rt)
{
    if (rt->launch_ids[0] != NULL)
        return ANVIL_OK;
    anvil_backend *be = rt->be;
    const size_t bytes = (size_t)rt->opts.max_logit_rows * sizeof(int32_t);
    /* pinned memory where the backend copies into it asynchronously */
    rt->launch_pinned = be->ops->host_alloc != NULL && be->ops->download_async != NULL;
    for (int i = 0; i < 2; i++) {
        if (rt->launch_pinned) {
            void *p = NULL;
            TRY(be->ops->host_alloc(be, bytes, &p));
            rt->launch_ids[i] = p;
        } else {
            rt->launch_ids[i] = malloc(bytes);
            CHECK(rt->launch_ids[i] != NULL, ANVIL_ERR_OOM, "forward_sample_launch: out of memory");
        }
    }
    return ANVIL_OK;
}

int anvil_runtime_launches_ahead(const anvil_runtime *rt)
{
    const anvil_backend_ops *o = rt->be->ops;
    return samples_on_backend(rt) && o->resolve_tokens != NULL && o->download_async != NULL &&
           o->download_wait != NULL && o->host_alloc != NULL;
}

/* The ids of a device-sampled step (its sampler queued) on their way to slot's host memory. */
static anvil_status launch_download(anvil_runtime *rt, int slot, int32_t L)
{
    anvil_backend *be = rt->be;
    int32_t *ids = rt->launch_ids[slot];
    if (be->ops->download_async != NULL && rt->launch_pinned)
        return be->ops->download_async(be, slot, ids, rt->ids_dev, (size_t)L * sizeof(int32_t));
    return L == 0 ? be->ops->synchronize(be) : be->ops->download(be, ids, rt->ids_dev, (size_t)L * sizeof(int32_t));
}

anvil_status anvil_runtime_forward_sample_launch(anvil_runtime *rt, const anvil_batch *batch,
                                                 const anvil_sample_row *rows)
{
    CHECK(rt != NULL && batch != NULL, ANVIL_ERR_INVALID_ARG, "forward_sample_launch: NULL argument");
    int n_masked = 0;
    TRY(check_rows(rt, batch, rows, 1, &n_masked));
    CHECK(!rt->pend, ANVIL_ERR_INVALID_ARG,
          "forward_sample_launch: the last launched step waits for its masks (anvil_runtime_forward_sample_masks)");
    CHECK(rt->launch_count < 2, ANVIL_ERR_INVALID_ARG,
          "forward_sample_launch: two launched steps not waited for (wait for the older first)");
    TRY(launch_slots_ready(rt));
    const int32_t L = batch->n_logits;
    const int slot = (rt->launch_first + rt->launch_count) % 2;
    const int prev_slot = (slot + 1) % 2;
    int32_t *ids = rt->launch_ids[slot];
    const int32_t prev_rows = rt->launch_prev_rows;
    rt->launch_prev_rows = 0; /* until this launch succeeds: no placeholder names a failed step */
    anvil_status st;
    int pending = 0;
    if (!samples_on_backend(rt)) {
        /* synchronous, on the host: the previous step's ids are in its slot
         * (this path downloads at launch); placeholders resolve into a copy */
        int32_t n_ph = 0;
        for (int32_t t = 0; t < batch->n_tokens && batch->token_ids; t++)
            n_ph += batch->token_ids[t] < 0;
        anvil_batch b = *batch;
        int32_t *tok = NULL;
        if (n_ph > 0) {
            tok = malloc((size_t)batch->n_tokens * sizeof *tok);
            CHECK(tok != NULL, ANVIL_ERR_OOM, "forward_sample_launch: out of memory");
            for (int32_t t = 0; t < batch->n_tokens; t++) {
                int32_t v = batch->token_ids[t];
                if (v < 0 && -1 - (int64_t)v < prev_rows)
                    v = rt->launch_ids[prev_slot][-1 - v] < 0 ? 0 : rt->launch_ids[prev_slot][-1 - v];
                else if (v < 0) {
                    free(tok);
                    return ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "token id %d: %s", v,
                                      prev_rows > 0 ? "a placeholder for a row the last launched step does not have"
                                                    : "out of range (placeholders only in a step launched after "
                                                      "another)");
                }
                tok[t] = v;
            }
            b.token_ids = tok;
        }
        st = sample_on_host(rt, &b, rows, ids, &pending);
        free(tok);
    } else {
        st = sample_step_queue(rt, batch, rows, prev_rows, n_masked, &pending);
        if (st == ANVIL_OK && !pending)
            st = launch_download(rt, slot, L);
        if (st == ANVIL_OK && rt->launch_none[slot] != NULL) {
            if (n_masked > 0)
                memcpy(rt->launch_none[slot], rt->mask_none, (size_t)L);
            else
                memset(rt->launch_none[slot], 0, (size_t)L);
        }
    }
    if (st != ANVIL_OK)
        return st; /* sample_step_queue gave the draws back */
    rt->launch_status[slot] = ANVIL_OK;
    rt->launch_rows[slot] = L;
    rt->launch_count++;
    rt->launch_prev_rows = L;
    rt->pend = pending;
    return ANVIL_OK;
}

anvil_status anvil_runtime_forward_sample_masks(anvil_runtime *rt, const uint32_t *const *allowed)
{
    CHECK(rt != NULL, ANVIL_ERR_INVALID_ARG, "forward_sample_masks: NULL runtime");
    CHECK(rt->pend, ANVIL_ERR_INVALID_ARG, "forward_sample_masks: the last launched step has no pending mask");
    CHECK(allowed != NULL, ANVIL_ERR_INVALID_ARG, "forward_sample_masks: allowed is NULL");
    const int slot = (rt->launch_first + rt->launch_count - 1) % 2;
    const int32_t L = rt->launch_rows[slot];
    rt->pend = 0;
    anvil_status st = ANVIL_OK;
    if (!samples_on_backend(rt)) {
        /* the logits wait on the host, each pending row with its draw */
        int32_t *ids = rt->launch_ids[slot];
        for (int32_t i = 0; i < L; i++)
            if (rt->pend_rows[i])
                ids[i] = host_pick(rt, i, NULL, allowed[i], &rt->sample_host[i]);
    } else {
        for (int32_t i = 0; i < L; i++)
            if (rt->pend_rows[i] && allowed[i] != NULL)
                mask_stage(rt, i, allowed[i]);
        st = sample_masked(rt, &rt->pend_step);
        if (st == ANVIL_OK)
            st = launch_download(rt, slot, L);
        memcpy(rt->launch_none[slot], rt->mask_none, (size_t)L);
    }
    if (st != ANVIL_OK) {
        rt->launch_status[slot] = st;
        rt->launch_prev_rows = 0; /* no placeholder may name its rows */
    }
    return st;
}

anvil_status anvil_runtime_forward_sample_wait(anvil_runtime *rt, int32_t *next_ids)
{
    CHECK(rt != NULL, ANVIL_ERR_INVALID_ARG, "forward_sample_wait: NULL runtime");
    CHECK(rt->launch_count > 0, ANVIL_ERR_INVALID_ARG, "forward_sample_wait: no launched step");
    CHECK(!(rt->pend && rt->launch_count == 1), ANVIL_ERR_INVALID_ARG,
          "forward_sample_wait: the step waits for its masks (anvil_runtime_forward_sample_masks)");
    const int slot = rt->launch_first;
    const int32_t L = rt->launch_rows[slot];
    CHECK(L == 0 || next_ids != NULL, ANVIL_ERR_INVALID_ARG, "forward_sample_wait: next_ids is NULL");
    anvil_backend *be = rt->be;
    /* the slot is taken whatever the outcome: a failed step is not waited twice */
    rt->launch_first = (slot + 1) % 2;
    rt->launch_count--;
    if (rt->launch_status[slot] != ANVIL_OK) {
        const anvil_status st = rt->launch_status[slot];
        rt->launch_status[slot] = ANVIL_OK;
        return ANVIL_FAIL(st, "forward_sample_wait: the step's sampler was never queued "
                              "(anvil_runtime_forward_sample_masks failed)");
    }
    const int device = samples_on_backend(rt);
    if (device && be->ops->download_async != NULL && rt->launch_pinned)
        TRY(be->ops->download_wait(be, slot));
    if (L > 0)
        memcpy(next_ids, rt->launch_ids[slot], (size_t)L * sizeof *next_ids);
    for (int32_t i = 0; device && rt->launch_none[slot] != NULL && i < L; i++)
        if (rt->launch_none[slot][i])
            next_ids[i] = ANVIL_TOKEN_NONE_ALLOWED;
    return ANVIL_OK;
}
