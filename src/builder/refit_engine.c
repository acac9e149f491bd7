/*
 * anvil_refit_engine: an engine file with new weights of the same shapes
 * (builder.h). The engine's manifest is kept whole (config, network, plan,
 * the model's files, build options) with a "refit" record added to its
 * "build"; the data section is written again from the new weights
 * (refit.h checks that they fit) by the engine writer, which recomputes
 * every checksum and renames the file into place only when complete.
 */
#include "anvil/builder.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "builder/build_plan.h"
#include "builder/lm_head.h"
#include "builder/manifest.h"
#include "builder/refit.h"
#include "core/error.h"
#include "io/engine_file.h"

#ifndef ANVIL_VERSION_STRING
#define ANVIL_VERSION_STRING "0.0.0-dev"
#endif

/* What the writer's threads share while filling. */
typedef struct refit_job {
    const anvil_refit_source *src;
    pthread_mutex_t mu;
    anvil_build_scratch **pool; /* one per thread at most */
    int n_pool;
    size_t done, total; /* bytes read from the source (guarded by mu) */
} refit_job;

static anvil_status fill(void *user, int64_t index, size_t offset, void *dst, size_t len)
{
    refit_job *j = user;
    anvil_build_scratch *sc = NULL;
    pthread_mutex_lock(&j->mu);
    if (j->n_pool > 0)
        sc = j->pool[--j->n_pool];
    pthread_mutex_unlock(&j->mu);
    if (sc == NULL && !anvil_refit_source_is_engine(j->src))
        TRY(anvil_build_scratch_create(&sc));
    anvil_status st = anvil_refit_source_fill(j->src, (int32_t)index, offset, dst, len, sc);
    pthread_mutex_lock(&j->mu);
    if (sc != NULL)
        j->pool[j->n_pool++] = sc; /* room for every thread's */
    j->done += len;
    const int last = st == ANVIL_OK && j->done == j->total;
    pthread_mutex_unlock(&j->mu);
    TRY(st);
    /* the last bytes were read (every other fill counted its bytes after
     * its read): a source rewritten meanwhile stops the write before the
     * file is renamed into place */
    if (last)
        TRY(anvil_refit_source_check_unchanged(j->src));
    return ANVIL_OK;
}

/* build.refit: where the weights came from, and when. */
static anvil_status add_refit_record(json_t *manifest, const char *weights)
{
    json_t *b = json_object_get(manifest, "build");
    CHECK(json_is_object(b), ANVIL_ERR_FORMAT, "the engine's manifest has no \"build\" object");
    char when[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    char abs[4096];
    const char *src = realpath(weights, abs) ? abs : weights;
    json_t *r = json_object();
    CHECK(r != NULL, ANVIL_ERR_OOM, "out of memory");
    int ok = json_object_set_new(r, "source", json_string(src)) == 0;
    ok &= json_object_set_new(r, "created", json_string(when)) == 0;
    ok &= json_object_set_new(r, "anvil_version", json_string(ANVIL_VERSION_STRING)) == 0;
    ok &= json_object_set_new(b, "refit", r) == 0;
    CHECK(ok, ANVIL_ERR_OOM, "out of memory");
    return ANVIL_OK;
}

anvil_status anvil_refit_engine(const char *engine, const char *weights, const char *output,
                                const anvil_refit_options *o)
{
    CHECK(engine != NULL && weights != NULL, ANVIL_ERR_INVALID_ARG, "anvil_refit_engine: NULL argument");
    const anvil_refit_options none = {0};
    if (o == NULL)
        o = &none;
    if (output == NULL)
        output = engine;
    anvil_status st = ANVIL_OK;
    anvil_engine_file *f = NULL;
    anvil_network *net = NULL;
    anvil_build_plan *plan = NULL;
    anvil_refit_source *src = NULL;
    anvil_engine_writer *w = NULL;
    json_t *manifest = NULL;
    refit_job job = {0};
    pthread_mutex_init(&job.mu, NULL);
    anvil_model_config cfg;

    CHECK_GOTO(anvil_engine_file_is_engine(engine), ANVIL_ERR_INVALID_ARG, done,
               "%s is not an engine file (anvil refit rewrites an engine; build one with anvil build)",
               engine);
    TRY_GOTO(anvil_engine_file_open(engine, ANVIL_ST_READ, &f), done);
    TRY_GOTO(anvil_model_config_load(engine, &cfg), done);
    TRY_GOTO(anvil_model_build_network(&cfg, &net), done);
    TRY_GOTO(anvil_lm_head_untie_as_engine(f, net), done);
    TRY_GOTO(anvil_manifest_read_plan(f, net, &plan), done);
    TRY_GOTO(anvil_refit_source_open(weights, &cfg, net, plan, 1, &src), done);

    TRY_GOTO(anvil_engine_writer_create(output, &w), done);
    for (int64_t i = 0; i < anvil_engine_file_count(f); i++) {
        const anvil_engine_tensor *t = anvil_engine_file_tensor(f, i);
        int64_t idx;
        TRY_GOTO(anvil_engine_writer_add_tensor(w, t->name, t->kind, t->n_dims, t->shape, &idx), done);
    }
    for (int64_t i = 0; i < anvil_engine_file_count(f); i++) { /* scales follow their weights: all declared now */
        const anvil_engine_tensor *t = anvil_engine_file_tensor(f, i);
        if (t->scales >= 0) { /* the "scales" object whole: group, zero points, activations */
            TRY_GOTO(anvil_engine_writer_set_scales(w, i, t->scales), done);
            json_t *info = json_deep_copy(json_object_get(t->entry, "scales"));
            CHECK_GOTO(info != NULL, ANVIL_ERR_OOM, done, "out of memory");
            json_object_del(info, "tensor");
            st = anvil_engine_writer_set_scales_info(w, i, info);
            json_decref(info);
            TRY_GOTO(st, done);
        }
    }
    manifest = json_deep_copy(anvil_engine_file_manifest(f));
    CHECK_GOTO(manifest != NULL, ANVIL_ERR_OOM, done, "out of memory");
    TRY_GOTO(add_refit_record(manifest, weights), done);

    int threads = o->n_threads > 0 ? o->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads < 1)
        threads = 1;
    if (threads > 16 && o->n_threads <= 0)
        threads = 16;
    job.src = src;
    job.total = plan->total_bytes;
    job.pool = calloc((size_t)threads + 1, sizeof *job.pool);
    CHECK_GOTO(job.pool != NULL, ANVIL_ERR_OOM, done, "out of memory");
    st = anvil_engine_writer_finish(w, manifest, fill, &job, threads, o->progress, o->progress_user);
    w = NULL; /* finish frees it, whatever it returns */
done:
    if (st != ANVIL_OK)
        anvil_error_wrap("refitting %s with %s", engine, weights);
    anvil_engine_writer_abort(w);
    json_decref(manifest);
    for (int i = 0; i < job.n_pool; i++)
        anvil_build_scratch_free(job.pool[i]);
    free(job.pool);
    pthread_mutex_destroy(&job.mu);
    anvil_refit_source_close(src);
    anvil_build_plan_free(plan);
    anvil_network_free(net);
    anvil_engine_file_close(f);
    return st;
}
