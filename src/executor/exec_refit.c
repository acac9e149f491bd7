/*
 * New weights while requests run (anvil_executor_refit).
 *
 * The caller's thread prepares: it reads and checks the new weights into
 * host staging (anvil_runtime_refit_prepare touches only what the load
 * fixed, so the loop keeps stepping meanwhile). Then it hands the staging
 * to the loop under the mutex and waits on `done`. The loop takes it at
 * the top of an iteration, where no step is in flight, and commits it
 * before it schedules the next step: every step runs entirely with the old
 * weights or entirely with the new ones. Requests are not touched; their
 * KV blocks stay. The prefix cache is emptied and the root of the prefix
 * hashes moves to the new weights' generation, so that no block holding
 * KV of the old weights (or of both) is ever found by a later lookup.
 */
#include <stdio.h>
#include <string.h>

#include "anvil/log.h"
#include "core/error.h"
#include "executor/exec_internal.h"

/* The prefix cache after new weights: nothing computed before is reusable. */
static void forget_prefixes(anvil_executor *ex)
{
    ex->weights_gen++;
    /* any value other than the earlier roots would do; a hash keeps the
     * roots of successive generations unrelated */
    ex->kv_root = anvil_kv_hash(ANVIL_KV_ROOT_HASH, (const int32_t *)&ex->weights_gen, 2);
    const int32_t freed = anvil_kv_forget_all(ex->kv);
    anvil_log(ANVIL_LOG_DEBUG, "executor: refit: %d cached prefix blocks dropped", freed);
}

void anvil_exec_refit_commit(anvil_executor *ex, anvil_refit_staging *sg, int stopping)
{
    anvil_status st;
    const double t0 = anvil_exec_now();
    if (stopping) {
        anvil_refit_staging_free(sg);
        st = ANVIL_FAIL(ANVIL_ERR_CANCELLED, "refit: the executor is shutting down");
    } else {
        st = anvil_runtime_refit_commit(ex->rt, sg);
    }
    const double pause = anvil_exec_now() - t0;
    if (st == ANVIL_OK)
        forget_prefixes(ex);
    pthread_mutex_lock(&ex->mu);
    ex->refit_status = st;
    snprintf(ex->refit_msg, sizeof ex->refit_msg, "%s", st == ANVIL_OK ? "" : anvil_last_error());
    if (st == ANVIL_OK) {
        ex->c_refits++;
        ex->refit_pause_s = pause;
        /* published now, not after the next step: an event callback of that
         * step that reads the stats sees that its tokens come from the new
         * weights */
        ex->metrics.refits = ex->c_refits;
        ex->metrics.refit_pause_s = pause;
    }
    ex->refit_done = 1;
    pthread_cond_broadcast(&ex->done);
    pthread_mutex_unlock(&ex->mu);
    if (st == ANVIL_OK)
        anvil_log(ANVIL_LOG_INFO,
                  "executor: new weights from the next step on (steps paused %.2f ms for the copy)",
                  pause * 1e3);
}

anvil_status anvil_executor_refit(anvil_executor *ex, const char *weights, const anvil_refit_options *o)
{
    CHECK(ex != NULL && weights != NULL, ANVIL_ERR_INVALID_ARG, "refit: NULL argument");
    pthread_mutex_lock(&ex->refit_mu);
    anvil_refit_staging *sg = NULL;
    anvil_status st = anvil_runtime_refit_prepare(ex->rt, weights, o, &sg);
    if (st != ANVIL_OK) {
        pthread_mutex_unlock(&ex->refit_mu);
        return st;
    }
    char msg[sizeof ex->refit_msg];
    pthread_mutex_lock(&ex->mu);
    if (ex->stopping) {
        pthread_mutex_unlock(&ex->mu);
        pthread_mutex_unlock(&ex->refit_mu);
        anvil_refit_staging_free(sg);
        return ANVIL_FAIL(ANVIL_ERR_CANCELLED, "refit: the executor is shutting down");
    }
    ex->refit_staged = sg;
    ex->refit_done = 0;
    pthread_cond_signal(&ex->wake);
    while (!ex->refit_done)
        pthread_cond_wait(&ex->done, &ex->mu);
    st = ex->refit_status;
    memcpy(msg, ex->refit_msg, sizeof msg);
    pthread_mutex_unlock(&ex->mu);
    pthread_mutex_unlock(&ex->refit_mu);
    if (st != ANVIL_OK)
        return ANVIL_FAIL(st, "%s", msg); /* the loop's message, raised again on this thread */
    return ANVIL_OK;
}
