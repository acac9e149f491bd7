/* The server's models as reference-counted objects (srv_model_acquire /
 * srv_model_release), loading one from a folder, freeing one. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "core/checked.h"
#include "core/error.h"
#include "core/fileutil.h"
#include "server/server_guided.h"
#include "server/server_internal.h"

srv_model *srv_model_acquire(struct anvil_server *s, const char *name)
{
    srv_model *found = NULL;
    pthread_mutex_lock(&s->repo_mu);
    for (int i = 0; i < s->n_entries; i++) {
        srv_entry *e = s->entries[i];
        if (name != NULL && strcmp(e->name, name) != 0)
            continue;
        /* no name: the default, the first model of the table that is loaded */
        if (e->state == SRV_READY && e->m && !e->m->unloading) {
            found = e->m;
            break;
        }
        if (name != NULL)
            break; /* names are unique: that one is not ready */
    }
    if (found)
        found->refs++;
    pthread_mutex_unlock(&s->repo_mu);
    return found;
}

/* The last reference of a model that is still on the table is the table's
 * own, dropped by an unload on its own thread, which frees it there. A model
 * that an unload had to leave behind (detached) is freed by the next
 * repository operation (srv_repo_reap): never here, because this may run on
 * the model's own executor thread (a srv_gen's last release), which cannot
 * free its executor. */
void srv_model_release(srv_model *m)
{
    if (m == NULL)
        return;
    anvil_server *s = m->srv;
    pthread_mutex_lock(&s->repo_mu);
    m->refs--;
    pthread_cond_broadcast(&s->repo_cv);
    pthread_mutex_unlock(&s->repo_mu);
}

anvil_status srv_model_new(struct anvil_server *s, const char *name, const char *dir, const char *template_src,
                           anvil_runtime *rt, anvil_tokenizer *tok, anvil_executor *ex, srv_model **out)
{
    anvil_status st = ANVIL_OK;
    *out = NULL;
    srv_model *m = calloc(1, sizeof *m);
    CHECK_GOTO(m != NULL, ANVIL_ERR_OOM, fail, "out of memory");
    m->name = strdup(name);
    CHECK_GOTO(m->name != NULL, ANVIL_ERR_OOM, fail, "out of memory");
    if (template_src || dir) {
        anvil_status ts = anvil_chat_template_load_source(dir, template_src, &m->tmpl);
        /* a folder without a template is fine (chat requests are then 400) */
        CHECK_GOTO(ts == ANVIL_OK || (!template_src && ts == ANVIL_ERR_NOT_FOUND), ts, fail,
                   "chat template of '%s': %s", name, anvil_last_error());
    }
    m->srv = s;
    m->refs = 1; /* the table's */
    m->rt = rt;
    m->tok = tok;
    m->ex = ex;
    /* the runtime's, after its defaults: the config's context bounded and
     * checked, or lowered to what the KV cache holds (never the int64
     * config value cut to 32 bits) */
    m->max_seq_len = anvil_runtime_options_get(rt)->max_seq_len;
    pthread_mutex_init(&m->mu, NULL);
    pthread_mutex_init(&m->guided_mu, NULL);
    *out = m;
    return ANVIL_OK;
fail:
    if (m) {
        free(m->name);
        free(m);
    }
    anvil_executor_free(ex);
    anvil_runtime_free(rt);
    anvil_tokenizer_free(tok);
    return st;
}

/* The runtime's progress callback during a server load: a nonzero return
 * cancels it (an unload of the model, the server's shutdown, the load's
 * deadline, or the callback of the server's runtime options, called
 * first), and ctl->why says which. */
static int load_progress(void *user, size_t done, size_t total)
{
    srv_load_ctl *ctl = user;
    const anvil_runtime_options *own = &ctl->s->rt_opts; /* the server's runtime options may have one too */
    if (own->progress && own->progress(own->progress_user, done, total))
        ctl->why = "cancelled by the progress callback of the server's runtime options";
    else if (atomic_load(&ctl->cancel))
        ctl->why = "cancelled by an unload of the model";
    else if (atomic_load(&ctl->s->shutting_down))
        ctl->why = "cancelled: the server is shutting down";
    else if (ctl->deadline > 0 && srv_now() > ctl->deadline)
        ctl->why = "it took longer than the load timeout (--load-timeout)";
    return ctl->why != NULL;
}

anvil_status srv_model_load_dir(struct anvil_server *s, const char *name, const char *dir, srv_load_ctl *ctl,
                                srv_model **out)
{
    *out = NULL;
    anvil_tokenizer *tok = NULL;
    anvil_runtime *rt = NULL;
    anvil_executor *ex = NULL;
    if (anvil_tokenizer_available(dir))
        TRY(anvil_tokenizer_load(dir, &tok));
    anvil_runtime_options ro = s->rt_opts;
    if (s->opts.kv_cache_auto && ro.kv_cache_tokens == 0 && ro.kv_cache_fraction == 0) {
        /* room for many sequences in flight, without taking the machine (as anvil run --input) */
        anvil_model_config cfg;
        /* a config that does not load (or is out of bounds) is left for
         * anvil_runtime_load, which fails with its message */
        if (anvil_model_config_load(dir, &cfg) == ANVIL_OK) {
            int64_t ctx = ro.max_seq_len > 0 ? ro.max_seq_len : cfg.max_position_embeddings, tokens;
            ro.kv_cache_tokens = anvil_mul_i64_ok(32, ctx, &tokens) ? tokens : INT64_MAX;
            ro.kv_cache_fraction = 0.25; /* the smaller of the two */
        }
    }
    if (ctl != NULL) {
        ro.progress = load_progress;
        ro.progress_user = ctl;
    }
    anvil_status st = anvil_runtime_load(dir, &ro, &rt);
    if (st == ANVIL_OK)
        st = anvil_executor_create(rt, tok, &s->ex_opts, &ex);
    if (st != ANVIL_OK) {
        anvil_runtime_free(rt);
        anvil_tokenizer_free(tok);
        return st;
    }
    /* random weights from a config file: no folder to hold a chat template */
    struct stat sb;
    const int config_file = ro.random_weights && !(stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode));
    return srv_model_new(s, name, config_file ? NULL : dir, s->template_src, rt, tok, ex, out);
}

void srv_model_free(srv_model *m)
{
    if (m == NULL)
        return;
    /* the executor first: it must not run while the rest goes; requests
     * still queued end there (their final events drop their references) */
    anvil_executor_free(m->ex);
    anvil_runtime_free(m->rt);
    anvil_tokenizer_free(m->tok);
    anvil_chat_template_free(m->tmpl);
    srv_guided_model_free(m); /* after the executor: no request uses it now */
    pthread_mutex_destroy(&m->guided_mu);
    pthread_mutex_destroy(&m->mu);
    free(m->name);
    free(m);
#if defined(__GLIBC__)
    /* weights and KV blocks that came from the heap go back to the system
     * now, not at some later allocation: an unload returns its memory */
    malloc_trim(0);
#endif
}
