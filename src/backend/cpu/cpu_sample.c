/*
 * sample_rows on the CPU: each logits row through the sampler
 * (anvil_sampler_pick, src/sampler/), rows spread over the backend's
 * threads. The op exists so that anvil_runtime_forward_sample works on
 * every backend, and is by construction what the executor's host path
 * computes, bit for bit, whichever thread takes a row. A mask writes -inf
 * over the tokens it does not allow, in place, before the pick: what the
 * executor's host path does to its copy of the row (anvil_sampler_mask).
 */
#include <stdlib.h>

#include "backend/cpu/cpu_internal.h"
#include "core/error.h"
#include "sampler/sampler.h"

typedef struct sample_job {
    const float *x;
    int64_t rows, cols;
    const anvil_sample_draw *draws;
    int32_t *ids;
    anvil_sampler **samplers; /* one per thread that has rows */
} sample_job;

static void sample_task(void *ctx, int ith, int nth)
{
    const sample_job *j = ctx;
    for (int64_t r = ith; r < j->rows; r += nth)
        j->ids[r] = anvil_sampler_pick(j->samplers[ith], j->x + r * j->cols, &j->draws[r]);
}

anvil_status anvil_cpu_op_sample_rows(anvil_backend *be, const anvil_tensor *x, const anvil_sample_draw *draws,
                                      const anvil_sample_masks *masks, int32_t *ids)
{
    anvil_cpu_backend *cb = anvil_cpu_impl(be);
    CHECK(x != NULL && x->dtype == ANVIL_DTYPE_F32 && x->data != NULL, ANVIL_ERR_INVALID_ARG,
          "sample_rows: x must be f32 logits");
    const int64_t rows = x->shape[0], cols = x->shape[1];
    if (rows == 0)
        return ANVIL_OK;
    CHECK(draws != NULL && ids != NULL, ANVIL_ERR_INVALID_ARG, "sample_rows: draws or ids is NULL");
    CHECK(cols > 0 && cols <= INT32_MAX, ANVIL_ERR_INVALID_ARG, "sample_rows: rows of %lld columns", (long long)cols);
    for (int64_t r = 0; r < rows; r++) {
        const anvil_sample_draw *q = &draws[r];
        CHECK(q->sampling.temperature >= 0.0f && q->sampling.top_p > 0.0f && q->sampling.top_p <= 1.0f &&
                  q->u >= 0.0 && q->u < 1.0,
              ANVIL_ERR_INVALID_ARG, "sample_rows: row %lld: temperature %g, top_p %g, u %g", (long long)r,
              (double)q->sampling.temperature, (double)q->sampling.top_p, q->u);
    }
    if (masks != NULL && masks->n > 0) {
        CHECK(masks->rows != NULL && masks->words != NULL && masks->n_words >= (cols + 31) / 32,
              ANVIL_ERR_INVALID_ARG, "sample_rows: %d masks of %d words for rows of %lld columns", masks->n,
              masks->n_words, (long long)cols);
        for (int32_t k = 0; k < masks->n; k++)
            CHECK(masks->rows[k] >= 0 && masks->rows[k] < rows, ANVIL_ERR_INVALID_ARG,
                  "sample_rows: mask %d names row %d of %lld", k, masks->rows[k], (long long)rows);
        for (int32_t k = 0; k < masks->n; k++)
            (void)anvil_sampler_mask((float *)x->data + (int64_t)masks->rows[k] * cols, (int32_t)cols,
                                     masks->words + (size_t)k * (size_t)masks->n_words);
    }
    /* a sampler per thread (scratch of cols entries); at most one thread per row */
    int nth = cb->n_threads < rows ? cb->n_threads : (int)rows;
    anvil_sampler **samplers = calloc((size_t)cb->n_threads, sizeof *samplers);
    CHECK(samplers != NULL, ANVIL_ERR_OOM, "sample_rows: out of memory");
    anvil_status st = ANVIL_OK;
    for (int i = 0; i < nth && st == ANVIL_OK; i++)
        st = anvil_sampler_create((int32_t)cols, &samplers[i]);
    if (st == ANVIL_OK) {
        sample_job j = {.x = x->data, .rows = rows, .cols = cols, .draws = draws, .ids = ids, .samplers = samplers};
        if (nth == 1)
            sample_task(&j, 0, 1);
        else
            anvil_threadpool_run(cb->pool, sample_task, &j);
    }
    for (int i = 0; i < cb->n_threads; i++)
        anvil_sampler_free(samplers[i]);
    free(samplers);
    return st;
}

/* resolve_tokens on the CPU: the step's ids and the previous step's are
 * host memory; the launch runs synchronously, so the previous ids are
 * final when this runs. */
anvil_status anvil_cpu_op_resolve_tokens(anvil_backend *be, const anvil_step *step, const int32_t *prev_ids)
{
    (void)be;
    CHECK(step != NULL && prev_ids != NULL, ANVIL_ERR_INVALID_ARG, "resolve_tokens: NULL argument");
    int32_t *ids = (int32_t *)step->token_ids; /* the step's own metadata, rewritten before its ops read it */
    for (int32_t t = 0; t < step->n_tokens; t++) {
        if (ids[t] < 0) {
            const int32_t v = prev_ids[-1 - ids[t]];
            ids[t] = v < 0 ? 0 : v;
        }
    }
    return ANVIL_OK;
}
