/*
 * The model repository: the table of models the server knows (the --model
 * folders and every model folder of --model-repo), loaded and unloaded at
 * run time. Decisions (docs/server.md, "Model repository"):
 *
 * - Entries are never freed while the server lives (a thread waiting on one
 *   never sees it go); a repository folder that disappears is only hidden.
 * - A load runs on a thread of its own (server_http.c: the event loop
 *   serves everybody else meanwhile), outside the lock; the entry is
 *   LOADING meanwhile, so a second load of it waits for the first and never
 *   loads twice.
 * - An unload marks the model UNLOADING (srv_model_acquire refuses it: new
 *   requests are 404 at once), waits for its references to go (requests in
 *   flight finishing), cancels what is left after the timeout, and frees the
 *   model on its own thread. If references still remain 10 s after the
 *   cancel (a client that does not read its stream), the model is detached:
 *   the next repository operation frees it once they are gone.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "anvil/log.h"
#include "core/error.h"
#include "core/fileutil.h"
#include "io/engine_file.h"
#include "server/server_internal.h"

static const char *const state_names[] = {"UNAVAILABLE", "LOADING", "READY", "UNLOADING"};

const char *srv_state_name(int state)
{
    return state >= 0 && state < 4 ? state_names[state] : "UNAVAILABLE";
}

int anvil_server_model_name_ok(const char *n)
{
    if (n == NULL || n[0] == '\0' || n[0] == '.' || strstr(n, "..") != NULL)
        return 0;
    size_t i = 0;
    for (; n[i]; i++) {
        char c = n[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                 c == '_' || c == '-';
        if (!ok || i >= 128)
            return 0;
    }
    return 1;
}

/* ------------------------------------------------------------ the table (repo_mu held) */

static srv_entry *entry_find(anvil_server *s, const char *name)
{
    for (int i = 0; i < s->n_entries; i++)
        if (strcmp(s->entries[i]->name, name) == 0)
            return s->entries[i];
    return NULL;
}

static srv_entry *entry_add(anvil_server *s, const char *name, const char *dir, int in_repo)
{
    srv_entry **es = realloc(s->entries, (size_t)(s->n_entries + 1) * sizeof *es);
    if (es == NULL)
        return NULL;
    s->entries = es;
    srv_entry *e = calloc(1, sizeof *e);
    if (e == NULL)
        return NULL;
    e->name = strdup(name);
    e->dir = strdup(dir);
    if (e->name == NULL || e->dir == NULL) {
        free(e->name);
        free(e->dir);
        free(e);
        return NULL;
    }
    e->in_repo = in_repo;
    s->entries[s->n_entries++] = e;
    return e;
}

/* 1 when dir holds a model: a config.json and a *.safetensors file. */
static int is_model_dir(const char *dir)
{
    char path[4096];
    if (anvil_path_join(path, sizeof path, dir, "config.json") != ANVIL_OK || !anvil_file_exists(path))
        return 0;
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    int found = 0;
    struct dirent *de;
    while (!found && (de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);
        found = n > 12 && strcmp(de->d_name + n - 12, ".safetensors") == 0;
    }
    closedir(d);
    return found;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads the repository folder: each subfolder (or link to one) with a
 * usable name that holds a model, and each engine file NAME.engine (anvil
 * build's output), becomes an entry named after it (in name order); an
 * entry whose folder or file went away is hidden unless it is loaded. A
 * name taken by a --model entry stays that entry's (and a folder's name
 * wins over an engine file's). */
static void repo_scan(anvil_server *s)
{
    if (s->repo_dir == NULL)
        return;
    DIR *d = opendir(s->repo_dir);
    if (d == NULL)
        return; /* gone or unreadable: the entries stay as they are */
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char path[4096];
        struct stat st;
        if (anvil_path_join(path, sizeof path, s->repo_dir, de->d_name) != ANVIL_OK || stat(path, &st) != 0)
            continue;
        char name[256];
        snprintf(name, sizeof name, "%s", de->d_name);
        const size_t len = strlen(name);
        if (S_ISREG(st.st_mode) && len > 7 && strcmp(name + len - 7, ".engine") == 0 &&
            anvil_engine_file_is_engine(path)) {
            name[len - 7] = '\0'; /* NAME.engine serves as NAME */
        } else if (!S_ISDIR(st.st_mode) || !is_model_dir(path)) {
            continue;
        }
        if (!anvil_server_model_name_ok(name))
            continue;
        if (n == cap) {
            size_t c = cap ? cap * 2 : 16;
            char **t = realloc(names, c * sizeof *t);
            if (t == NULL)
                break;
            names = t;
            cap = c;
        }
        int dup = 0; /* a folder and an engine of one name: listed once */
        for (size_t k = 0; k < n && !dup; k++)
            dup = strcmp(names[k], name) == 0;
        if (!dup && (names[n] = strdup(name)) != NULL)
            n++;
    }
    closedir(d);
    if (n > 1)
        qsort(names, n, sizeof *names, cmp_str);
    for (int i = 0; i < s->n_entries; i++) {
        srv_entry *e = s->entries[i];
        if (!e->in_repo)
            continue;
        int there = bsearch(&e->name, names, n, sizeof *names, cmp_str) != NULL;
        e->hidden = !there && e->state == SRV_UNAVAILABLE;
    }
    for (size_t i = 0; i < n; i++) {
        if (entry_find(s, names[i]) == NULL) {
            char path[4096], file[300];
            struct stat st;
            /* the folder if there is one, else the engine file */
            if (anvil_path_join(path, sizeof path, s->repo_dir, names[i]) == ANVIL_OK &&
                (stat(path, &st) == 0 && S_ISDIR(st.st_mode)))
                entry_add(s, names[i], path, 1);
            else if (snprintf(file, sizeof file, "%s.engine", names[i]) < (int)sizeof file &&
                     anvil_path_join(path, sizeof path, s->repo_dir, file) == ANVIL_OK)
                entry_add(s, names[i], path, 1);
        }
        free(names[i]);
    }
    free(names);
}

/* Takes the detached models nobody references any more off their list; the
 * caller frees them (srv_model_free, without the lock). */
static srv_model *reap_take(anvil_server *s)
{
    srv_model *out = NULL, **p = &s->detached;
    while (*p) {
        srv_model *m = *p;
        if (m->refs == 0) {
            *p = m->next_detached;
            m->next_detached = out;
            out = m;
        } else {
            p = &m->next_detached;
        }
    }
    return out;
}

static void reap_free(srv_model *list)
{
    while (list) {
        srv_model *next = list->next_detached;
        srv_model_free(list);
        list = next;
    }
}

static void deadline_in(struct timespec *ts, double s)
{
    clock_gettime(CLOCK_REALTIME, ts);
    double whole = (double)(long)s;
    ts->tv_sec += (time_t)whole;
    ts->tv_nsec += (long)((s - whole) * 1e9);
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static int before(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return now.tv_sec < t->tv_sec || (now.tv_sec == t->tv_sec && now.tv_nsec < t->tv_nsec);
}

/* ------------------------------------------------------------ the public API */

anvil_status anvil_server_add_model(anvil_server *s, const char *name, const char *dir,
                                    const char *chat_template_source, anvil_runtime *rt, anvil_tokenizer *tok,
                                    anvil_executor *ex)
{
    if (!anvil_server_model_name_ok(name)) {
        anvil_executor_free(ex);
        anvil_runtime_free(rt);
        anvil_tokenizer_free(tok);
        CHECK(0, ANVIL_ERR_INVALID_ARG,
              "bad model name '%s': use 1 to 128 of A-Z a-z 0-9 . _ -, not starting with '.', without '..'",
              name ? name : "(null)");
    }
    srv_model *m = NULL;
    TRY(srv_model_new(s, name, dir, chat_template_source, rt, tok, ex, &m));
    anvil_status st = ANVIL_OK;
    pthread_mutex_lock(&s->repo_mu);
    srv_entry *e = entry_find(s, name);
    if (e != NULL) {
        st = ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "two models named '%s'", name);
    } else if ((e = entry_add(s, name, dir ? dir : "", 0)) == NULL) {
        st = ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
    } else {
        e->m = m;
        e->state = SRV_READY;
    }
    pthread_mutex_unlock(&s->repo_mu);
    if (st != ANVIL_OK)
        srv_model_free(m);
    return st;
}

anvil_status anvil_server_add_model_dir(anvil_server *s, const char *name, const char *dir)
{
    CHECK(anvil_server_model_name_ok(name), ANVIL_ERR_INVALID_ARG,
          "bad model name '%s': use 1 to 128 of A-Z a-z 0-9 . _ -, not starting with '.', without '..'",
          name ? name : "(null)");
    CHECK(dir != NULL && dir[0], ANVIL_ERR_INVALID_ARG, "model '%s': no folder", name);
    anvil_status st = ANVIL_OK;
    pthread_mutex_lock(&s->repo_mu);
    if (entry_find(s, name) != NULL)
        st = ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "two models named '%s'", name);
    else if (entry_add(s, name, dir, 0) == NULL)
        st = ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
    pthread_mutex_unlock(&s->repo_mu);
    return st;
}

/* The entry named `name` (repo_mu held), the repository read again when it
 * is not known; NULL with an error set when there is none. */
static srv_entry *lookup(anvil_server *s, const char *name)
{
    srv_entry *e = entry_find(s, name);
    if (e == NULL || e->hidden) {
        repo_scan(s);
        e = entry_find(s, name);
    }
    if (e == NULL || e->hidden) {
        ANVIL_FAIL(ANVIL_ERR_NOT_FOUND, "no model named '%s'%s", name,
                   s->repo_dir ? " in the model repository" : "");
        return NULL;
    }
    return e;
}

anvil_status anvil_server_load_model(anvil_server *s, const char *name)
{
    CHECK(anvil_server_model_name_ok(name), ANVIL_ERR_INVALID_ARG,
          "bad model name '%s': use 1 to 128 of A-Z a-z 0-9 . _ -, not starting with '.', without '..'",
          name ? name : "(null)");
    anvil_status st = ANVIL_OK;
    pthread_mutex_lock(&s->repo_mu);
    srv_model *dead = reap_take(s);
    srv_entry *e = lookup(s, name);
    int seq = -1; /* the failure count of a load by another thread that this one waits for */
    while (e != NULL) {
        if (atomic_load(&s->shutting_down)) {
            st = ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "the server is shutting down");
            break;
        }
        if (e->state == SRV_READY)
            break;
        if (e->state == SRV_UNAVAILABLE && seq >= 0 && e->load_failed_seq != seq) {
            st = ANVIL_FAIL(e->load_status, "%s", e->reason ? e->reason : "the load failed");
            break;
        }
        if (e->state == SRV_UNAVAILABLE)
            break;
        if (e->state == SRV_LOADING && seq < 0)
            seq = e->load_failed_seq;
        pthread_cond_wait(&s->repo_cv, &s->repo_mu);
    }
    if (e == NULL) {
        st = anvil_last_status();
    } else if (st == ANVIL_OK && e->state == SRV_UNAVAILABLE) {
        srv_load_ctl ctl = {.s = s};
        double limit = s->opts.load_timeout_s;
        if (limit > 0)
            ctl.deadline = srv_now() + limit;
        e->state = SRV_LOADING;
        e->loading = &ctl;
        pthread_mutex_unlock(&s->repo_mu);
        reap_free(dead);
        dead = NULL;
        srv_model *m = NULL;
        st = srv_model_load_dir(s, name, e->dir, &ctl, &m);
        char msg[1024];
        if (st == ANVIL_ERR_CANCELLED && ctl.why != NULL) {
            snprintf(msg, sizeof msg, "cannot load model '%s': %s", name, ctl.why);
        } else if (st != ANVIL_OK) {
            char why[900];
            snprintf(why, sizeof why, "%s", anvil_last_error());
            snprintf(msg, sizeof msg, "cannot load model '%s': %s", name, why);
        }
        pthread_mutex_lock(&s->repo_mu);
        e->loading = NULL;
        free(e->reason);
        e->reason = NULL;
        if (st == ANVIL_OK) {
            e->m = m;
            e->state = SRV_READY;
            e->n_loads++;
        } else {
            e->state = SRV_UNAVAILABLE;
            e->reason = strdup(msg);
            e->load_status = st;
            e->load_failed_seq++;
            ANVIL_FAIL(st, "%s", msg);
        }
        pthread_cond_broadcast(&s->repo_cv);
    }
    pthread_mutex_unlock(&s->repo_mu);
    reap_free(dead);
    return st;
}

anvil_status anvil_server_load_all(anvil_server *s)
{
    pthread_mutex_lock(&s->repo_mu);
    repo_scan(s);
    int n = s->n_entries;
    char **names = calloc((size_t)(n ? n : 1), sizeof *names);
    for (int i = 0; names && i < n; i++)
        if (!s->entries[i]->hidden)
            names[i] = strdup(s->entries[i]->name);
    pthread_mutex_unlock(&s->repo_mu);
    CHECK(names != NULL, ANVIL_ERR_OOM, "out of memory");
    anvil_status st = ANVIL_OK;
    for (int i = 0; i < n; i++) {
        if (st == ANVIL_OK && names[i])
            st = anvil_server_load_model(s, names[i]);
        free(names[i]);
    }
    free(names);
    return st;
}

anvil_status anvil_server_unload_model(anvil_server *s, const char *name, double timeout_s)
{
    CHECK(anvil_server_model_name_ok(name), ANVIL_ERR_INVALID_ARG,
          "bad model name '%s': use 1 to 128 of A-Z a-z 0-9 . _ -, not starting with '.', without '..'",
          name ? name : "(null)");
    if (timeout_s < 0)
        timeout_s = s->opts.unload_timeout_s;
    pthread_mutex_lock(&s->repo_mu);
    srv_model *dead = reap_take(s);
    srv_entry *e = lookup(s, name);
    if (e == NULL) {
        pthread_mutex_unlock(&s->repo_mu);
        reap_free(dead);
        return anvil_last_status();
    }
    /* a load in progress is cancelled (it stops within a chunk of its
     * reading); an unload in progress ends first */
    while (e->state == SRV_LOADING || e->state == SRV_UNLOADING) {
        if (e->state == SRV_LOADING && e->loading != NULL)
            atomic_store(&e->loading->cancel, 1);
        pthread_cond_wait(&s->repo_cv, &s->repo_mu);
    }
    if (e->state != SRV_READY) {
        pthread_mutex_unlock(&s->repo_mu);
        reap_free(dead);
        return ANVIL_OK; /* not loaded: nothing to do */
    }
    srv_model *m = e->m;
    e->state = SRV_UNLOADING;
    m->unloading = 1; /* from now on srv_model_acquire refuses it */
    pthread_cond_broadcast(&s->repo_cv);
    struct timespec t;
    deadline_in(&t, timeout_s);
    while (m->refs > 1 && before(&t))
        pthread_cond_timedwait(&s->repo_cv, &s->repo_mu, &t);
    /* the rest is cancelled; a request that was between its reference and
     * its enqueue is caught by the next round */
    struct timespec give_up;
    deadline_in(&give_up, 10.0);
    while (m->refs > 1 && before(&give_up)) {
        pthread_mutex_unlock(&s->repo_mu);
        srv_http_cancel_model(s, m);
        pthread_mutex_lock(&s->repo_mu);
        deadline_in(&t, 0.05);
        while (m->refs > 1 && before(&t))
            pthread_cond_timedwait(&s->repo_cv, &s->repo_mu, &t);
    }
    e->m = NULL;
    e->state = SRV_UNAVAILABLE;
    free(e->reason);
    e->reason = strdup("unloaded");
    e->n_unloads++;
    m->refs--; /* the table's */
    int free_now = m->refs == 0;
    if (!free_now) {
        m->detached = 1;
        m->next_detached = s->detached;
        s->detached = m;
    }
    pthread_cond_broadcast(&s->repo_cv);
    pthread_mutex_unlock(&s->repo_mu);
    if (free_now)
        srv_model_free(m);
    reap_free(dead);
    return ANVIL_OK;
}

void anvil_server_stop_loads(anvil_server *s)
{
    if (s == NULL)
        return;
    atomic_store(&s->shutting_down, 1); /* the loads' progress callbacks see it */
    pthread_mutex_lock(&s->repo_mu);
    pthread_cond_broadcast(&s->repo_cv); /* loads waiting on another's see it too */
    pthread_mutex_unlock(&s->repo_mu);
}

void anvil_server_set_ready(anvil_server *s, int ready)
{
    atomic_store(&s->ready, ready ? 1 : 0);
}

/* ------------------------------------------------------------ for the HTTP side */

static json_t *index_row(const srv_entry *e)
{
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(e->name));
    json_object_set_new(o, "version", json_string("1"));
    json_object_set_new(o, "state", json_string(srv_state_name(e->state)));
    const char *reason = e->reason ? e->reason : e->state == SRV_UNAVAILABLE ? "not loaded" : "";
    json_object_set_new(o, "reason", json_string(reason));
    return o;
}

json_t *srv_repo_index_json(anvil_server *s, int ready_only)
{
    json_t *a = json_array();
    pthread_mutex_lock(&s->repo_mu);
    srv_model *dead = reap_take(s);
    repo_scan(s);
    for (int i = 0; i < s->n_entries; i++) {
        srv_entry *e = s->entries[i];
        if (!e->hidden && (!ready_only || e->state == SRV_READY))
            json_array_append_new(a, index_row(e));
    }
    pthread_mutex_unlock(&s->repo_mu);
    reap_free(dead);
    return a;
}

/* The HTTP answer of a failed repository call. */
static int repo_error(anvil_status st, json_t **body)
{
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", anvil_last_error());
    /* a load that failed is the server's (500), whatever the runtime's
     * status: a tensor missing from a model that exists is not a 404 */
    const int load_failed = strncmp(msg, "cannot load model", 17) == 0 && st != ANVIL_ERR_CANCELLED;
    int status = load_failed                   ? 500
                 : st == ANVIL_ERR_NOT_FOUND   ? 404
                 : st == ANVIL_ERR_INVALID_ARG ? (strstr(msg, "shutting down") ? 503 : 400)
                 : st == ANVIL_ERR_CANCELLED   ? 503
                                               : 500;
    const char *code = status == 404                  ? "model_not_found"
                       : status == 400                ? "invalid_model_name"
                       : st == ANVIL_ERR_CANCELLED    ? "model_load_cancelled"
                       : status == 503                ? NULL
                                                      : "model_load_failed";
    const char *type = status == 503 ? "service_unavailable" : status == 500 ? "server_error" : "invalid_request_error";
    *body = srv_error_json(msg, type, "name", code);
    return status;
}

static int repo_answer(anvil_server *s, const char *name, anvil_status st, json_t **body)
{
    if (st != ANVIL_OK)
        return repo_error(st, body);
    pthread_mutex_lock(&s->repo_mu);
    srv_entry *e = entry_find(s, name);
    *body = e ? index_row(e) : json_object();
    pthread_mutex_unlock(&s->repo_mu);
    return 200;
}

int srv_repo_load_http(anvil_server *s, const char *name, json_t **body)
{
    return repo_answer(s, name, anvil_server_load_model(s, name), body);
}

int srv_repo_unload_http(anvil_server *s, const char *name, json_t **body)
{
    return repo_answer(s, name, anvil_server_unload_model(s, name, -1), body);
}

/* ------------------------------------------------------------ refit */

/* A refit's controls: its progress callback cancels it when the model is
 * being unloaded or the server shuts down (why says which). */
typedef struct refit_ctl {
    anvil_server *s;
    srv_model *m;
    const char *why;
} refit_ctl;

static int refit_progress(void *user, size_t done, size_t total)
{
    (void)done;
    (void)total;
    refit_ctl *c = user;
    if (atomic_load(&c->s->shutting_down)) {
        c->why = "the server is shutting down";
    } else {
        pthread_mutex_lock(&c->s->repo_mu);
        if (c->m->unloading)
            c->why = "the model is being unloaded";
        pthread_mutex_unlock(&c->s->repo_mu);
    }
    return c->why != NULL;
}

/*
 * The refit of anvil_server_refit_model, with the HTTP answer's status and
 * error code: the model looked up (404) and required READY (409), a
 * reference held meanwhile (an unload waits for it, and cancels the refit
 * through its progress callback), the weights read and committed by the
 * model's executor between two steps.
 */
static anvil_status refit_model(anvil_server *s, const char *name, const char *weights, int *http, const char **code)
{
    *http = 400;
    *code = "invalid_model_name";
    CHECK(anvil_server_model_name_ok(name), ANVIL_ERR_INVALID_ARG,
          "bad model name '%s': use 1 to 128 of A-Z a-z 0-9 . _ -, not starting with '.', without '..'",
          name ? name : "(null)");
    *code = "invalid_weights";
    CHECK(weights != NULL && weights[0], ANVIL_ERR_INVALID_ARG, "refit: no weights path given");
    char path[4096];
    if (weights[0] == '/') {
        CHECK(strlen(weights) < sizeof path, ANVIL_ERR_INVALID_ARG, "refit: the weights path is too long");
        snprintf(path, sizeof path, "%s", weights);
    } else {
        /* a relative path means the repository's: never the server's working folder */
        CHECK(s->repo_dir != NULL, ANVIL_ERR_INVALID_ARG,
              "refit: the weights path '%s' is relative, and the server has no model repository (--model-repo) "
              "to take it in: give an absolute path",
              weights);
        TRY(anvil_path_join(path, sizeof path, s->repo_dir, weights));
    }
    pthread_mutex_lock(&s->repo_mu);
    srv_model *dead = reap_take(s);
    srv_entry *e = lookup(s, name);
    srv_model *m = NULL;
    anvil_status st = ANVIL_OK;
    if (e == NULL) {
        *http = 404;
        *code = "model_not_found";
        st = anvil_last_status();
    } else if (e->state != SRV_READY || e->m == NULL || e->m->unloading) {
        *http = 409;
        *code = "model_not_ready";
        st = ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "model '%s' is %s: a refit needs a loaded model", name,
                        srv_state_name(e->state == SRV_READY ? SRV_UNLOADING : e->state));
    } else {
        m = e->m;
        m->refs++; /* the model stays while its weights are replaced */
    }
    pthread_mutex_unlock(&s->repo_mu);
    reap_free(dead);
    if (m == NULL)
        return st;
    refit_ctl ctl = {.s = s, .m = m};
    const anvil_refit_options o = {.progress = refit_progress, .progress_user = &ctl};
    anvil_log(ANVIL_LOG_INFO, "model '%s': refit with %s", name, path);
    st = anvil_executor_refit(m->ex, path, &o);
    if (st == ANVIL_OK) {
        pthread_mutex_lock(&s->repo_mu);
        e->n_refits++;
        pthread_mutex_unlock(&s->repo_mu);
        anvil_log(ANVIL_LOG_INFO, "model '%s': serving the weights of %s", name, path);
        *http = 200;
        *code = NULL;
    } else if (st == ANVIL_ERR_CANCELLED && ctl.why != NULL) {
        const int unloading = strstr(ctl.why, "unloaded") != NULL;
        *http = unloading ? 409 : 503;
        *code = unloading ? "model_not_ready" : NULL;
        st = ANVIL_FAIL(ANVIL_ERR_CANCELLED, "refit of model '%s' cancelled: %s", name, ctl.why);
    } else {
        /* what does not fit, or cannot be read as weights, is the caller's to fix */
        *http = st == ANVIL_ERR_INVALID_ARG || st == ANVIL_ERR_NOT_FOUND || st == ANVIL_ERR_FORMAT ||
                        st == ANVIL_ERR_UNSUPPORTED
                    ? 400
                    : st == ANVIL_ERR_CANCELLED ? 503 : 500;
        *code = st == ANVIL_ERR_INVALID_ARG ? "refit_mismatch"
                : st == ANVIL_ERR_NOT_FOUND ? "weights_not_found"
                : *http == 400              ? "invalid_weights"
                : *http == 503              ? NULL
                                            : "refit_failed";
    }
    srv_model_release(m);
    return st;
}

anvil_status anvil_server_refit_model(anvil_server *s, const char *name, const char *weights)
{
    CHECK(s != NULL, ANVIL_ERR_INVALID_ARG, "refit: NULL server");
    int http;
    const char *code;
    return refit_model(s, name, weights, &http, &code);
}

int srv_repo_refit_http(anvil_server *s, const char *name, const char *weights, json_t **body)
{
    int http;
    const char *code;
    if (refit_model(s, name, weights, &http, &code) == ANVIL_OK)
        return repo_answer(s, name, ANVIL_OK, body);
    const char *type = http == 503 ? "service_unavailable" : http == 500 ? "server_error" : "invalid_request_error";
    const char *param = http == 404 || strcmp(code ? code : "", "invalid_model_name") == 0 ? "name" : "weights";
    *body = srv_error_json(anvil_last_error(), type, http == 409 ? NULL : param, code);
    return http;
}

json_t *srv_repo_models_json(anvil_server *s)
{
    json_t *a = json_array();
    pthread_mutex_lock(&s->repo_mu);
    for (int i = 0; i < s->n_entries; i++) {
        srv_entry *e = s->entries[i];
        if (e->state != SRV_READY)
            continue;
        json_t *o = json_object();
        json_object_set_new(o, "id", json_string(e->name));
        json_object_set_new(o, "object", json_string("model"));
        json_object_set_new(o, "created", json_integer(0));
        json_object_set_new(o, "owned_by", json_string("anvil"));
        json_object_set_new(o, "max_model_len", json_integer(e->m->max_seq_len));
        json_array_append_new(a, o);
    }
    pthread_mutex_unlock(&s->repo_mu);
    return a;
}

srv_model **srv_repo_acquire_all(anvil_server *s, int *n)
{
    *n = 0;
    pthread_mutex_lock(&s->repo_mu);
    srv_model **ms = malloc((size_t)(s->n_entries ? s->n_entries : 1) * sizeof *ms);
    for (int i = 0; ms && i < s->n_entries; i++) {
        srv_entry *e = s->entries[i];
        if (e->state == SRV_READY) {
            e->m->refs++;
            ms[(*n)++] = e->m;
        }
    }
    pthread_mutex_unlock(&s->repo_mu);
    return ms;
}

void srv_repo_release_all(srv_model **ms, int n)
{
    for (int i = 0; i < n; i++)
        srv_model_release(ms[i]);
    free(ms);
}

void srv_repo_free(anvil_server *s)
{
    for (int i = 0; i < s->n_entries; i++) {
        srv_entry *e = s->entries[i];
        srv_model_free(e->m);
        free(e->name);
        free(e->dir);
        free(e->reason);
        free(e);
    }
    free(s->entries);
    s->entries = NULL;
    s->n_entries = 0;
    while (s->detached) {
        srv_model *m = s->detached;
        s->detached = m->next_detached;
        srv_model_free(m);
    }
}
