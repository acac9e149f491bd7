/*
 * The HTTP side: libmicrohttpd in external epoll mode, run by the server's
 * event loop (server_loop.c): one thread for every connection. Nothing here
 * blocks: a request waiting for the executor suspends its connection, and
 * srv_wake resumes it (docs/server.md, "Threads"). A streamed response is a
 * content reader that hands over what the executor's callbacks formatted,
 * or suspends; a repository load or unload runs on a thread of its own.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "anvil/log.h"
#include "core/error.h"
#include "core/fileutil.h"
#include "server/server_openai.h"
#include "server/server_tools.h"

/* How long a shutdown waits for repository jobs that did not end. */
#define JOBS_WAIT_S 10.0

/* A repository load, unload or refit on its own thread. */
enum { JOB_LOAD = 0, JOB_UNLOAD, JOB_REFIT };
typedef struct repo_job {
    anvil_server *s;
    srv_waiter w;
    char name[130];
    int verb;                  /* JOB_* */
    char *weights;             /* JOB_REFIT: the body's path */
    int done;                  /* guarded by s->wake_mu */
    int orphaned;              /* guarded by s->wake_mu: answered without it (shutdown); the thread frees it */
    int status;
    json_t *body;
    struct repo_job *next, *prev; /* s->jobs, guarded by s->wake_mu */
} repo_job;

/* One HTTP request: its body as it arrives, then what it waits for. */
typedef struct conn_ctx {
    char *body;
    size_t len;
    int too_large;
    srv_gen *g;                /* a non-streamed generation in flight */
    repo_job *job;             /* a repository load or unload in flight */
} conn_ctx;

void anvil_server_options_default(anvil_server_options *o)
{
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 8000;
    o->max_request_bytes = 1 << 20;
    o->max_connections = 1024;
    o->kv_cache_auto = 1;
    o->unload_timeout_s = 10;
    o->load_timeout_s = 900;
    o->stream_interval = 1;
    o->grammar_cache_entries = 64;
    o->header_timeout_s = 10;
    o->max_connections_per_client = 0; /* max_connections / 2 */
}

/* ------------------------------------------------------------ responses */

static void count_status(anvil_server *s, int status)
{
    pthread_mutex_lock(&s->mu);
    if (status >= 100 && status < 600)
        s->http_status_counts[status]++;
    pthread_mutex_unlock(&s->mu);
}

static enum MHD_Result send_buf(anvil_server *s, struct MHD_Connection *c, int status, const char *type,
                                const char *data, size_t len, const char *allow)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_MUST_COPY);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    if (allow)
        MHD_add_response_header(r, "Allow", allow);
    if (status == 401)
        MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    srv_http_decorate(s, c, r);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    count_status(s, status);
    return ret;
}

/* Sends JSON (takes j). */
static enum MHD_Result send_json(anvil_server *s, struct MHD_Connection *c, int status, json_t *j,
                                 const char *allow)
{
    /* under /v2/, Triton's error shape {"error": "text"} (its clients read no other) */
    if (j && status >= 400 && s->reply_v2 && json_is_object(json_object_get(j, "error")))
        j = srv_triton_error(j);
    char *t = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (t == NULL)
        return send_buf(s, c, 500, "application/json", "{}", 2, NULL);
    enum MHD_Result r = send_buf(s, c, status, "application/json", t, strlen(t), allow);
    free(t);
    return r;
}

static enum MHD_Result send_error(anvil_server *s, struct MHD_Connection *c, int status, const char *msg,
                                  const char *type, const char *param, const char *code, const char *allow)
{
    return send_json(s, c, status, srv_error_json(msg, type, param, code), allow);
}

/* ------------------------------------------------------------ requests in flight */

static void gen_track(anvil_server *s, srv_gen *g, struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    pthread_mutex_lock(&s->wake_mu);
    g->w.conn = c;
    g->w.fd = ci ? ci->connect_fd : -1;
    pthread_mutex_unlock(&s->wake_mu);
    pthread_mutex_lock(&s->mu);
    g->next = s->gens;
    g->prev = NULL;
    if (s->gens)
        s->gens->prev = g;
    s->gens = g;
    s->in_flight++;
    pthread_mutex_unlock(&s->mu);
}

/* The HTTP side is done with g: untrack it and drop its reference. */
static void gen_untrack(anvil_server *s, srv_gen *g)
{
    pthread_mutex_lock(&s->wake_mu);
    g->w.conn = NULL; /* no wake-ups for a connection that is going */
    pthread_mutex_unlock(&s->wake_mu);
    pthread_mutex_lock(&s->mu);
    if (g->prev)
        g->prev->next = g->next;
    else
        s->gens = g->next;
    if (g->next)
        g->next->prev = g->prev;
    s->in_flight--;
    pthread_mutex_unlock(&s->mu);
    srv_gen_release(g);
}

void srv_http_cancel_model(anvil_server *s, srv_model *m)
{
    pthread_mutex_lock(&s->mu);
    for (srv_gen *g = s->gens; g; g = g->next)
        if (g->model == m)
            srv_gen_cancel(g);
    pthread_mutex_unlock(&s->mu);
}

/* MHD's content reader of a stream: what the executor's callbacks
 * formatted so far, or (nothing new) the connection is suspended until
 * srv_wake. */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    srv_gen *g = cls;
    anvil_server *s = g->srv;
    if (atomic_load(&s->closing))
        return MHD_CONTENT_READER_END_WITH_ERROR;
    pthread_mutex_lock(&g->mu);
    srv_gen_format_ready(g);
    ssize_t n = 0;
    if (g->sent < g->flush_len) {
        size_t k = g->flush_len - g->sent < max ? g->flush_len - g->sent : max;
        memcpy(buf, g->buf + g->sent, k);
        g->sent += k;
        n = (ssize_t)k;
    } else if (g->done && g->sent == g->len) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        srv_suspend(s, &g->w); /* under g->mu: an event appended now wakes it */
    }
    pthread_mutex_unlock(&g->mu);
    return n;
}

static void stream_free(void *cls)
{
    srv_gen *g = cls;
    srv_gen_cancel(g); /* a no-op when it finished; else the client went away */
    gen_untrack(g->srv, g);
}

/* A non-streamed request's answer once it is done (else it suspends
 * again: a wake-up that came early). */
static enum MHD_Result finish_generate(anvil_server *s, struct MHD_Connection *c, conn_ctx *cc)
{
    srv_gen *g = cc->g;
    if (atomic_load(&s->closing)) {
        srv_gen_cancel(g);
        gen_untrack(s, g);
        cc->g = NULL;
        return MHD_NO;
    }
    pthread_mutex_lock(&g->mu);
    int done = g->done;
    if (!done)
        srv_suspend(s, &g->w);
    pthread_mutex_unlock(&g->mu);
    if (!done)
        return MHD_YES;
    /* KServe's binary tensors: a JSON header of that length, then the bytes */
    json_t *hl = g->wire_ctx ? json_object_get(g->wire_ctx, "header_length") : NULL;
    if (hl && g->http_status == 200) {
        struct MHD_Response *r =
            MHD_create_response_from_buffer(g->len, g->buf ? g->buf : (void *)"", MHD_RESPMEM_MUST_COPY);
        if (r == NULL) {
            gen_untrack(s, g);
            cc->g = NULL;
            return MHD_NO;
        }
        char n[24];
        snprintf(n, sizeof n, "%" JSON_INTEGER_FORMAT, json_integer_value(hl));
        MHD_add_response_header(r, "Content-Type", "application/octet-stream");
        MHD_add_response_header(r, "Inference-Header-Content-Length", n);
        srv_http_decorate(s, c, r);
        enum MHD_Result ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        count_status(s, 200);
        gen_untrack(s, g);
        cc->g = NULL;
        return ret;
    }
    enum MHD_Result ret =
        send_buf(s, c, g->http_status, "application/json", g->buf ? g->buf : "", g->len, NULL);
    gen_untrack(s, g);
    cc->g = NULL;
    return ret;
}

/* wire NULL: OpenAI's completions or chat; else another format (its
 * fields wire_ctx; rename: its names in the mapping's errors) */
static enum MHD_Result serve_generate(anvil_server *s, struct MHD_Connection *c, json_t *body, int chat,
                                      conn_ctx *cc, const srv_wire *wire, json_t *wire_ctx,
                                      void (*rename)(json_t *, json_t *))
{
    srv_gen *g = NULL;
    int status = 500;
    json_t *err = NULL;
    if (srv_openai_generate_wire(s, body, chat, wire, wire_ctx, &g, &status, &err) < 0) {
        if (rename)
            rename(err, wire_ctx);
        return send_json(s, c, status, err, NULL);
    }
    gen_track(s, g, c);
    if (!g->stream) {
        cc->g = g;
        return finish_generate(s, c, cc);
    }
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, g, stream_free);
    if (r == NULL) {
        srv_gen_cancel(g);
        gen_untrack(s, g);
        return send_error(s, c, 500, "out of memory", "server_error", NULL, NULL, NULL);
    }
    MHD_add_response_header(r, "Content-Type", "text/event-stream");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no"); /* nginx: pass each event on at once */
    srv_http_decorate(s, c, r);
    enum MHD_Result ret = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    count_status(s, 200);
    return ret;
}

/* ------------------------------------------------------------ other endpoints */

static enum MHD_Result tokenize_with(anvil_server *s, struct MHD_Connection *c, json_t *body, int detok,
                                     srv_model *m);

static enum MHD_Result serve_tokenize(anvil_server *s, struct MHD_Connection *c, json_t *body, int detok)
{
    const char *name;
    int status;
    json_t *err;
    if (srv_openai_model_name(body, &name, &status, &err) < 0)
        return send_json(s, c, status, err, NULL);
    srv_model *m = srv_model_acquire(s, name);
    if (m == NULL)
        return send_error(s, c, 404, "The model does not exist or is not loaded", "invalid_request_error",
                          "model", "model_not_found", NULL);
    enum MHD_Result r = tokenize_with(s, c, body, detok, m);
    srv_model_release(m);
    return r;
}

static enum MHD_Result tokenize_with(anvil_server *s, struct MHD_Connection *c, json_t *body, int detok,
                                     srv_model *m)
{
    if (m->tok == NULL)
        return send_error(s, c, 400, "The model has no tokenizer", "invalid_request_error", "model", NULL,
                          NULL);
    json_t *o = json_object();
    if (!detok) {
        json_t *p = json_object_get(body, "prompt"), *asp = json_object_get(body, "add_special_tokens");
        if (!json_is_string(p) || (asp && !json_is_boolean(asp))) {
            json_decref(o);
            return send_error(s, c, 400, "'prompt' must be a string (and 'add_special_tokens' a boolean)",
                              "invalid_request_error", "prompt", "invalid_type", NULL);
        }
        if (strlen(json_string_value(p)) != json_string_length(p)) { /* as /v1/completions refuses it */
            json_decref(o);
            return send_error(s, c, 400, "'prompt' must not contain a NUL character", "invalid_request_error",
                              "prompt", "invalid_value", NULL);
        }
        int32_t *ids = NULL;
        int64_t n = 0;
        if (anvil_tokenizer_encode(m->tok, json_string_value(p), json_string_length(p),
                                   asp ? json_is_true(asp) : 1, &ids, &n) != ANVIL_OK) {
            json_decref(o);
            return send_error(s, c, 400, anvil_last_error(), "invalid_request_error", "prompt", NULL, NULL);
        }
        json_t *a = json_array();
        for (int64_t i = 0; i < n; i++)
            json_array_append_new(a, json_integer(ids[i]));
        free(ids);
        json_object_set_new(o, "tokens", a);
        json_object_set_new(o, "count", json_integer(n));
        json_object_set_new(o, "max_model_len", json_integer(m->max_seq_len));
    } else {
        json_t *t = json_object_get(body, "tokens");
        size_t k = json_is_array(t) ? json_array_size(t) : 0;
        int32_t *ids = malloc((k ? k : 1) * sizeof *ids);
        int ok = json_is_array(t) && ids;
        for (size_t i = 0; ok && i < k; i++) {
            json_t *e = json_array_get(t, i);
            ok = json_is_integer(e) && json_integer_value(e) >= 0 && json_integer_value(e) <= INT32_MAX;
            if (ok)
                ids[i] = (int32_t)json_integer_value(e);
        }
        char *text = NULL;
        size_t len = 0;
        if (!ok || anvil_tokenizer_decode(m->tok, ids, (int64_t)k, 1, &text, &len) != ANVIL_OK) {
            free(ids);
            json_decref(o);
            return send_error(s, c, 400, "'tokens' must be an array of token ids", "invalid_request_error",
                              "tokens", "invalid_type", NULL);
        }
        free(ids);
        json_t *js = json_stringn(text, len);
        free(text);
        json_object_set_new(o, "prompt", js ? js : json_string(""));
    }
    return send_json(s, c, 200, o, NULL);
}

/* what, then (je given) jansson's message and where: "...: '}' expected
 * near end of file (line 1, column 16)". The message quotes the client's
 * bytes: only printable ASCII is kept (the message must be a JSON string). */
static void parse_error(const json_error_t *je, const char *what, char *buf, size_t cap)
{
    if (je == NULL) {
        snprintf(buf, cap, "%s.", what);
        return;
    }
    char text[JSON_ERROR_TEXT_LENGTH];
    size_t i = 0;
    for (; i + 1 < sizeof text && je->text[i]; i++)
        text[i] = je->text[i] >= 0x20 && je->text[i] < 0x7f ? je->text[i] : '?';
    text[i] = '\0';
    if (je->line >= 1)
        snprintf(buf, cap, "%s: %s (line %d, column %d).", what, text, je->line, je->column);
    else
        snprintf(buf, cap, "%s: %s.", what, text);
}

/* Constant-time comparison of the Authorization header with "Bearer KEY"
 * (key NULL: no authentication). */
static int authorized(const char *key, struct MHD_Connection *c)
{
    if (key == NULL)
        return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    /* the scheme is case-insensitive (RFC 9110 11.1), one or more spaces after it */
    if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0)
        return 0;
    h += 7;
    while (*h == ' ')
        h++;
    size_t n = strlen(h), k = strlen(key);
    unsigned diff = (unsigned)(n ^ k);
    for (size_t i = 0; i < k; i++)
        diff |= (unsigned char)key[i] ^ (unsigned char)(i < n ? h[i] : 0);
    return diff == 0;
}

static void job_unlink(anvil_server *s, repo_job *j) /* wake_mu held */
{
    if (j->prev)
        j->prev->next = j->next;
    else
        s->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    j->next = j->prev = NULL;
}

static void *repo_job_main(void *arg)
{
    repo_job *j = arg;
    anvil_server *s = j->s;
    json_t *body = NULL;
    int status = j->verb == JOB_UNLOAD  ? srv_repo_unload_http(s, j->name, &body)
                 : j->verb == JOB_REFIT ? srv_repo_refit_http(s, j->name, j->weights, &body)
                                        : srv_repo_load_http(s, j->name, &body);
    pthread_mutex_lock(&s->wake_mu);
    j->status = status;
    j->body = body;
    j->done = 1;
    job_unlink(s, j);
    const int orphaned = j->orphaned;
    pthread_mutex_unlock(&s->wake_mu);
    if (orphaned) { /* its connection was answered and closed at shutdown */
        json_decref(body);
        free(j->weights);
        free(j);
    } else {
        srv_wake(s, &j->w);
    }
    atomic_fetch_sub(&s->n_jobs, 1);
    return NULL;
}

void srv_http_wake_jobs(anvil_server *s)
{
    /* a job's memory is freed only on the loop's thread (this one), so the
     * waiters collected stay valid; srv_wake takes wake_mu itself */
    srv_waiter *ws[64];
    int n = 0;
    pthread_mutex_lock(&s->wake_mu);
    for (repo_job *j = s->jobs; j && n < 64; j = j->next)
        ws[n++] = &j->w;
    pthread_mutex_unlock(&s->wake_mu);
    for (int i = 0; i < n; i++)
        srv_wake(s, ws[i]); /* the rest on the next pass */
}

/* A load, unload or refit takes seconds: on a thread of its own, the
 * connection suspended meanwhile (the event loop serves everybody else).
 * weights: a refit's path (copied). */
static enum MHD_Result start_repo_job(anvil_server *s, struct MHD_Connection *c, conn_ctx *cc, const char *name,
                                      int verb, const char *weights)
{
    repo_job *j = calloc(1, sizeof *j);
    if (j != NULL && weights != NULL && (j->weights = strdup(weights)) == NULL) {
        free(j);
        j = NULL;
    }
    if (j == NULL)
        return send_error(s, c, 500, "out of memory", "server_error", NULL, NULL, NULL);
    j->s = s;
    j->w.conn = c;
    j->w.fd = -1;
    j->verb = verb;
    snprintf(j->name, sizeof j->name, "%s", name);
    cc->job = j;
    atomic_fetch_add(&s->n_jobs, 1);
    pthread_mutex_lock(&s->wake_mu);
    j->next = s->jobs;
    if (s->jobs)
        s->jobs->prev = j;
    s->jobs = j;
    pthread_mutex_unlock(&s->wake_mu);
    srv_suspend(s, &j->w); /* before the thread can wake it */
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int e = pthread_create(&t, &attr, repo_job_main, j);
    pthread_attr_destroy(&attr);
    if (e != 0) {
        /* answered on the resumed connection's next call */
        atomic_fetch_sub(&s->n_jobs, 1);
        pthread_mutex_lock(&s->wake_mu);
        j->status = 500;
        j->body = srv_error_json("cannot start a thread for the load", "server_error", NULL, NULL);
        j->done = 1;
        job_unlink(s, j);
        pthread_mutex_unlock(&s->wake_mu);
        srv_wake(s, &j->w);
    }
    return MHD_YES;
}

/* The answer of a load or unload once its thread is done. */
static enum MHD_Result finish_repo_job(anvil_server *s, struct MHD_Connection *c, conn_ctx *cc)
{
    repo_job *j = cc->job;
    pthread_mutex_lock(&s->wake_mu);
    int done = j->done;
    /* the server is closing and the job is not done (a load stuck in a
     * system call: a cancelled one ends within a chunk of its reading):
     * answered now, the job left to its thread, which frees it */
    const int orphan = !done && atomic_load(&s->closing);
    if (orphan)
        j->orphaned = 1;
    pthread_mutex_unlock(&s->wake_mu);
    if (orphan) {
        cc->job = NULL;
        return send_error(s, c, 503, "The server is shutting down; the load, unload or refit was left unfinished",
                          "service_unavailable", NULL, NULL, NULL);
    }
    if (!done) {
        srv_suspend(s, &j->w);
        return MHD_YES;
    }
    cc->job = NULL;
    json_t *body = j->body;
    int status = j->status;
    free(j->weights);
    free(j);
    return send_json(s, c, status, body, NULL);
}

/* /v2/repository/...: the index, or a model's load / unload (the name is
 * checked before anything looks for it: never a path outside the
 * repository). */
static enum MHD_Result serve_repository(anvil_server *s, struct MHD_Connection *c, const char *url,
                                        const char *method, conn_ctx *cc)
{
    const char *rest = url + strlen("/v2/repository");
    if (strcmp(rest, "/index") == 0) {
        if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0 && strcmp(method, "HEAD") != 0)
            return send_error(s, c, 405, "Method not allowed", "invalid_request_error", NULL,
                              "method_not_allowed", "GET, POST");
        if (cc->too_large)
            return send_error(s, c, 413, "Request body too large", "invalid_request_error", NULL,
                              "request_too_large", NULL);
        int ready_only = 0;
        if (cc->len > 0) { /* Triton's optional {"ready": true} */
            json_error_t je;
            json_t *b = json_loadb(cc->body, cc->len, 0, &je);
            json_t *r = json_object_get(b, "ready");
            if (!json_is_object(b) || (r && !json_is_boolean(r))) {
                char msg[400];
                parse_error(b ? NULL : &je, "The body must be a JSON object like {\"ready\": true}", msg,
                            sizeof msg);
                json_decref(b);
                return send_error(s, c, 400, msg, "invalid_request_error", "ready", "invalid_json", NULL);
            }
            ready_only = json_is_true(r);
            json_decref(b);
        }
        return send_json(s, c, 200, srv_repo_index_json(s, ready_only), NULL);
    }
    const char *verb = NULL;
    size_t n = 0;
    if (strncmp(rest, "/models/", 8) == 0) {
        const char *name = rest + 8, *end = strrchr(name, '/');
        if (end && (strcmp(end, "/load") == 0 || strcmp(end, "/unload") == 0 || strcmp(end, "/refit") == 0)) {
            verb = end + 1;
            n = (size_t)(end - name);
        }
    }
    if (verb == NULL)
        return send_error(s, c, 404,
                          "Not found: the repository API is GET|POST /v2/repository/index and POST "
                          "/v2/repository/models/{name}/load, /unload or /refit",
                          "invalid_request_error", NULL, "not_found", NULL);
    if (strcmp(method, "POST") != 0)
        return send_error(s, c, 405, "Method not allowed", "invalid_request_error", NULL,
                          "method_not_allowed", "POST");
    if (cc->too_large)
        return send_error(s, c, 413, "Request body too large", "invalid_request_error", NULL,
                          "request_too_large", NULL);
    char name[130];
    if (n == 0 || n > 128) {
        name[0] = '\0';
    } else {
        memcpy(name, rest + 8, n);
        name[n] = '\0';
    }
    if (!anvil_server_model_name_ok(name))
        return send_error(s, c, 400,
                          "Invalid model name: use 1 to 128 of A-Z a-z 0-9 . _ -, not starting with '.', "
                          "without '..' (the name of a folder of the model repository)",
                          "invalid_request_error", "name", "invalid_model_name", NULL);
    if (atomic_load(&s->shutting_down))
        return send_error(s, c, 503, "The server is shutting down", "service_unavailable", NULL, NULL, NULL);
    if (anvil_comm_size(s->rt_opts.comm) > 1)
        return send_error(s, c, 501,
                          "The repository API (load, unload, refit) is not available with tensor parallelism "
                          "(--tp): the other ranks follow the one runtime loaded at the start (docs/parallel.md)",
                          "invalid_request_error", NULL, "unsupported", NULL);
    if (strcmp(verb, "refit") != 0)
        return start_repo_job(s, c, cc, name, strcmp(verb, "unload") == 0 ? JOB_UNLOAD : JOB_LOAD, NULL);
    /* refit: {"weights": "PATH"} */
    json_error_t je;
    json_t *b = cc->len > 0 ? json_loadb(cc->body, cc->len, 0, &je) : NULL;
    const json_t *w = json_object_get(b, "weights");
    if (!json_is_object(b) || !json_is_string(w) || json_string_length(w) == 0 ||
        strlen(json_string_value(w)) != json_string_length(w)) {
        char msg[400];
        parse_error(b || cc->len == 0 ? NULL : &je,
                    "The body must be a JSON object like {\"weights\": \"PATH\"}: PATH a Hugging Face folder or an "
                    "engine file, absolute or in the model repository",
                    msg, sizeof msg);
        json_decref(b);
        return send_error(s, c, 400, msg, "invalid_request_error", "weights", "invalid_json", NULL);
    }
    enum MHD_Result r = start_repo_job(s, c, cc, name, JOB_REFIT, json_string_value(w));
    json_decref(b);
    return r;
}

typedef struct route {
    const char *path;
    const char *method;
    int id;
} route;

enum {
    R_HEALTH, R_METRICS, R_MODELS, R_COMPLETIONS, R_CHAT, R_RESPONSES, R_TOKENIZE, R_DETOKENIZE,
    R_V2, R_V2_LIVE, R_V2_READY, R_V2_STATS
};

static const route routes[] = {
    {"/health", "GET", R_HEALTH},
    {"/metrics", "GET", R_METRICS},
    {"/v1/models", "GET", R_MODELS},
    {"/v1/completions", "POST", R_COMPLETIONS},
    {"/v1/chat/completions", "POST", R_CHAT},
    {"/v1/responses", "POST", R_RESPONSES},
    {"/v1/tokenize", "POST", R_TOKENIZE},
    {"/tokenize", "POST", R_TOKENIZE},
    {"/v1/detokenize", "POST", R_DETOKENIZE},
    {"/detokenize", "POST", R_DETOKENIZE},
    {"/v2", "GET", R_V2},
    {"/v2/health/live", "GET", R_V2_LIVE},
    {"/v2/health/ready", "GET", R_V2_READY},
    {"/v2/models/stats", "GET", R_V2_STATS},
};

/* /health of a model served by several ranks (anvil serve --tp, --pp):
 * the ranks (and their pipeline stages), and a failed communicator's reason (a rank died, stopped or timed
 * out: every step fails from then on) as 503 "failed". */
static enum MHD_Result send_health_ranks(anvil_server *s, struct MHD_Connection *c)
{
    const anvil_comm *comm = s->rt_opts.comm;
    const char *why = anvil_comm_error(comm);
    const char *status = why                               ? "failed"
                         : atomic_load(&s->shutting_down) ? "shutting down"
                         : !atomic_load(&s->ready)         ? "loading"
                                                           : "ok";
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string(status));
    json_object_set_new(o, "ranks", json_integer(anvil_comm_size(comm)));
    json_object_set_new(o, "communicator", json_string(anvil_comm_name(comm)));
    if (s->rt_opts.pipeline_stages > 1) /* anvil serve --pp: the ranks in stages */
        json_object_set_new(o, "pipeline_stages", json_integer(s->rt_opts.pipeline_stages));
    if (why != NULL)
        json_object_set_new(o, "reason", json_string(why));
    return send_json(s, c, strcmp(status, "ok") == 0 ? 200 : 503, o, NULL);
}

/* 404 naming what was asked for (the path cut to printable ASCII) and what
 * there is. */
static enum MHD_Result send_not_found(anvil_server *s, struct MHD_Connection *c, const char *method,
                                      const char *url)
{
    char path[130], msg[700];
    size_t k = 0;
    for (const char *p = url; *p && k < 120; p++)
        path[k++] = *p >= 0x20 && *p < 0x7f ? *p : '?';
    path[k] = '\0';
    snprintf(msg, sizeof msg,
             "Not found: %.10s %s%s. The endpoints are POST /v1/completions, /v1/chat/completions, "
             "/v1/responses, /v1/tokenize, /v1/detokenize; GET /v1/models, /health, /metrics; Triton's GET /v2, "
             "/v2/health/live, /v2/health/ready, /v2/models/{model}[/ready|/config|/stats], POST "
             "/v2/models/{model}/generate, /generate_stream, /infer and /v2/repository/...",
             method, path, url[k] ? "..." : "");
    return send_error(s, c, 404, msg, "invalid_request_error", NULL, "not_found", NULL);
}

/* OPTIONS: a CORS preflight (docs/server.md, "Browsers and proxies"), or a
 * plain one: 204 with what the server allows. Never authenticated (a
 * preflight carries no credentials). */
static enum MHD_Result serve_options(anvil_server *s, struct MHD_Connection *c)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (r == NULL)
        return MHD_NO;
    int pre = srv_cors_preflight(s, c, r);
    if (pre < 0) {
        MHD_destroy_response(r);
        return send_error(s, c, 403,
                          "CORS: this origin may not call the server; start it with --allowed-origins ORIGIN "
                          "(or '*')",
                          "invalid_request_error", NULL, "origin_not_allowed", NULL);
    }
    MHD_add_response_header(r, "Allow", "GET, POST, HEAD, OPTIONS");
    if (pre == 0)
        srv_http_decorate(s, c, r);
    enum MHD_Result ret = MHD_queue_response(c, 204, r);
    MHD_destroy_response(r);
    count_status(s, 204);
    return ret;
}

/* The body as a JSON object, or NULL with the 400 sent (*sent). */
static json_t *body_object(anvil_server *s, struct MHD_Connection *c, conn_ctx *cc, enum MHD_Result *sent)
{
    /* \u0000 is valid JSON: the mapping refuses it in each field it reads,
     * naming the field (a C string would be cut at it) */
    json_error_t je;
    json_t *body = json_loadb(cc->body ? cc->body : "", cc->len, JSON_ALLOW_NUL, &je);
    if (body == NULL) {
        char msg[400];
        parse_error(&je, "We could not parse the JSON body of your request", msg, sizeof msg);
        *sent = send_error(s, c, 400, msg, "invalid_request_error", NULL, "invalid_json", NULL);
        return NULL;
    }
    if (!json_is_object(body)) {
        json_decref(body);
        *sent = send_error(s, c, 400, "The request body must be a JSON object.", "invalid_request_error", NULL,
                           "invalid_json", NULL);
        return NULL;
    }
    return body;
}

/* A model's name in a path (anvil_server_model_name_ok's rule), cut and
 * made printable for a message. */
static void name_for_message(const char *name, char out[72])
{
    size_t k = 0;
    for (const char *p = name; *p && k < 64; p++)
        out[k++] = *p >= 0x20 && *p < 0x7f ? *p : '?';
    out[k] = '\0';
}

/* The 404 of a model that is not loaded, naming those that are (a
 * TensorRT-LLM user's "ensemble" is anvil's model folder name). */
static enum MHD_Result send_no_model(anvil_server *s, struct MHD_Connection *c, const char *shown, int status)
{
    int n = 0;
    srv_model **ms = srv_repo_acquire_all(s, &n);
    char names[256] = "", msg[512];
    size_t k = 0;
    for (int i = 0; i < n && k + 4 < sizeof names; i++)
        k += (size_t)snprintf(names + k, sizeof names - k, "%s%s", i ? ", " : "", ms[i]->name);
    srv_repo_release_all(ms, n);
    if (k >= sizeof names)
        strcpy(names + sizeof names - 4, "...");
    snprintf(msg, sizeof msg, "%s model '%s'; the loaded models: %s (GET /v2/repository/index lists every one)",
             status == 400 ? "Not ready:" : "Unknown", shown, n ? names : "none");
    return send_error(s, c, status, msg, "invalid_request_error", "model", "model_not_found", NULL);
}

/* POST /v2/models/{name}/infer: KServe tensors (JSON or binary) as a
 * generate request, answered with the text_output tensor. */
static enum MHD_Result serve_infer(anvil_server *s, struct MHD_Connection *c, const char *name, conn_ctx *cc)
{
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Inference-Header-Content-Length");
    char *end = NULL;
    unsigned long long hl = h ? strtoull(h, &end, 10) : 0;
    if (h && (end == h || *end != '\0'))
        return send_error(s, c, 400, "Inference-Header-Content-Length must be a number of bytes",
                          "invalid_request_error", NULL, "invalid_tensor", NULL);
    json_t *gen = NULL, *ictx = NULL, *oai = NULL, *ctx = NULL, *err = NULL;
    int status = 400;
    enum MHD_Result r;
    if (hl > cc->len)
        r = send_error(s, c, 400, "Inference-Header-Content-Length is larger than the body",
                       "invalid_request_error", NULL, "invalid_tensor", NULL);
    else if (srv_triton_infer_map(cc->body ? cc->body : "", cc->len, (size_t)hl, &gen, &ictx, &status, &err) < 0)
        r = send_json(s, c, status, err, NULL);
    else if (srv_triton_map(gen, name, 0, &oai, &ctx, &status, &err) < 0)
        r = send_json(s, c, status, err, NULL);
    else {
        json_object_update(ctx, ictx);
        r = serve_generate(s, c, oai, 0, cc, &srv_triton_infer_wire, ctx, srv_triton_rename);
    }
    json_decref(gen);
    json_decref(ictx);
    json_decref(oai);
    json_decref(ctx);
    return r;
}

/* /v2/models/{name}[/versions/1][/ready|/config|/stats|/generate|/generate_stream|/infer]:
 * Triton's per-model endpoints (docs/server.md, "Triton's protocol"). */
static enum MHD_Result serve_v2_model(anvil_server *s, struct MHD_Connection *c, const char *url,
                                      const char *method, conn_ctx *cc)
{
    char name[130], shown[72];
    const char *verb = "";
    int pr = srv_triton_path(url + strlen("/v2/models/"), name, sizeof name, &verb);
    if (pr == -1)
        return send_not_found(s, c, method, url);
    name_for_message(pr == -2 ? url + strlen("/v2/models/") : name, shown);
    if (pr == -2)
        return send_error(s, c, 404, "Unknown model version: every model has version 1 only",
                          "invalid_request_error", "version", "model_not_found", NULL);
    int post = strncmp(verb, "generate", 8) == 0 || strcmp(verb, "infer") == 0;
    const char *want = post ? "POST" : "GET";
    if (strcmp(method, want) != 0 && !(strcmp(method, "HEAD") == 0 && !post))
        return send_error(s, c, 405, "Method not allowed", "invalid_request_error", NULL, "method_not_allowed",
                          want);
    if (cc->too_large)
        return send_error(s, c, 413, "Request body too large", "invalid_request_error", NULL,
                          "request_too_large", NULL);
    if (post) {
        if (atomic_load(&s->shutting_down))
            return send_error(s, c, 503, "The server is shutting down", "service_unavailable", NULL, NULL, NULL);
        srv_model *known = srv_model_acquire(s, name);
        if (known == NULL)
            return send_no_model(s, c, shown, 404);
        srv_model_release(known); /* (one unloaded meanwhile is the mapping's 404) */
        if (strcmp(verb, "infer") == 0)
            return serve_infer(s, c, name, cc);
        enum MHD_Result sent = MHD_NO;
        json_t *body = body_object(s, c, cc, &sent);
        if (body == NULL)
            return sent;
        json_t *oai = NULL, *ctx = NULL, *err = NULL;
        int status = 400;
        enum MHD_Result r;
        if (srv_triton_map(body, name, strcmp(verb, "generate_stream") == 0, &oai, &ctx, &status, &err) < 0)
            r = send_json(s, c, status, err, NULL);
        else
            r = serve_generate(s, c, oai, 0, cc, &srv_triton_wire, ctx, srv_triton_rename);
        json_decref(oai);
        json_decref(ctx);
        json_decref(body);
        return r;
    }
    srv_model *m = srv_model_acquire(s, name);
    if (m == NULL) /* Triton answers a model that is not ready 400 */
        return send_no_model(s, c, shown, strcmp(verb, "ready") == 0 ? 400 : 404);
    json_t *o;
    if (strcmp(verb, "ready") == 0)
        o = json_object();
    else if (strcmp(verb, "config") == 0)
        o = srv_triton_model_config(m, s->ex_opts.max_batch_size);
    else if (strcmp(verb, "stats") == 0)
        o = srv_triton_model_stats(&m, 1);
    else
        o = srv_triton_model_metadata(m);
    srv_model_release(m);
    if (strcmp(verb, "ready") == 0) {
        json_decref(o);
        return send_buf(s, c, 200, "application/json", "", 0, NULL);
    }
    return send_json(s, c, 200, o, NULL);
}

static enum MHD_Result dispatch(anvil_server *s, struct MHD_Connection *c, const char *url,
                                const char *method, conn_ctx *cc)
{
    if (strcmp(method, "OPTIONS") == 0)
        return serve_options(s, c);
    if (strncmp(url, "/v2/repository/", 15) == 0) {
        if (!authorized(s->admin_key, c))
            return send_error(s, c, 401,
                              "Incorrect admin key provided (the repository API needs the admin key).",
                              "invalid_request_error", NULL, "invalid_api_key", NULL);
        return serve_repository(s, c, url, method, cc);
    }
    const route *rt = NULL;
    int model_path = strncmp(url, "/v1/models/", 11) == 0 && url[11] != '\0';
    for (size_t i = 0; i < sizeof routes / sizeof routes[0] && !model_path; i++)
        if (strcmp(url, routes[i].path) == 0)
            rt = &routes[i];
    int v2_model = rt == NULL && strncmp(url, "/v2/models/", 11) == 0 && url[11] != '\0';
    int needs_auth = strncmp(url, "/v1/", 4) == 0 || strncmp(url, "/v2/models/", 11) == 0 ||
                     (rt && (rt->id == R_TOKENIZE || rt->id == R_DETOKENIZE));
    if (needs_auth && !authorized(s->api_key, c))
        return send_error(s, c, 401, "Incorrect API key provided.", "invalid_request_error", NULL,
                          "invalid_api_key", NULL);
    if (v2_model)
        return serve_v2_model(s, c, url, method, cc);
    if (rt == NULL && !model_path)
        return send_not_found(s, c, method, url);
    const char *want = rt ? rt->method : "GET";
    if (strcmp(method, want) != 0 && !(strcmp(method, "HEAD") == 0 && strcmp(want, "GET") == 0))
        return send_error(s, c, 405, "Method not allowed", "invalid_request_error", NULL,
                          "method_not_allowed", want);
    if (cc->too_large)
        return send_error(s, c, 413, "Request body too large", "invalid_request_error", NULL,
                          "request_too_large", NULL);
    if (model_path) {
        srv_model *m = srv_model_acquire(s, url + 11);
        if (m == NULL)
            return send_error(s, c, 404, "The model does not exist or is not loaded", "invalid_request_error",
                              "model", "model_not_found", NULL);
        json_t *o = json_object();
        json_object_set_new(o, "id", json_string(m->name));
        json_object_set_new(o, "object", json_string("model"));
        json_object_set_new(o, "created", json_integer(0));
        json_object_set_new(o, "owned_by", json_string("anvil"));
        json_object_set_new(o, "max_model_len", json_integer(m->max_seq_len));
        srv_model_release(m);
        return send_json(s, c, 200, o, NULL);
    }
    switch (rt->id) {
    case R_HEALTH:
        if (anvil_comm_size(s->rt_opts.comm) > 1)
            return send_health_ranks(s, c);
        if (atomic_load(&s->shutting_down))
            return send_error(s, c, 503, "shutting down", "service_unavailable", NULL, NULL, NULL);
        if (!atomic_load(&s->ready))
            return send_buf(s, c, 503, "application/json", "{\"status\":\"loading\"}", 20, NULL);
        return send_buf(s, c, 200, "application/json", "{\"status\":\"ok\"}", 15, NULL);
    case R_V2:
        return send_json(s, c, 200, srv_triton_server_metadata(), NULL);
    case R_V2_LIVE: /* Triton's: the process answers */
        return send_buf(s, c, 200, "application/json", "", 0, NULL);
    case R_V2_READY: /* Triton's: 200 ready, 400 not (yet, or any longer) */
        if (atomic_load(&s->shutting_down) || !atomic_load(&s->ready))
            return send_error(s, c, 400,
                              atomic_load(&s->shutting_down) ? "The server is shutting down"
                                                             : "The server is loading its models",
                              "service_unavailable", NULL, NULL, NULL);
        return send_buf(s, c, 200, "application/json", "", 0, NULL);
    case R_V2_STATS: {
        int n = 0;
        srv_model **ms = srv_repo_acquire_all(s, &n);
        json_t *o = srv_triton_model_stats(ms, n);
        srv_repo_release_all(ms, n);
        return send_json(s, c, 200, o, NULL);
    }
    case R_METRICS: {
        char *t = srv_metrics_text(s);
        if (t == NULL)
            return send_error(s, c, 500, "out of memory", "server_error", NULL, NULL, NULL);
        enum MHD_Result r = send_buf(s, c, 200, "text/plain; version=0.0.4", t, strlen(t), NULL);
        free(t);
        return r;
    }
    case R_MODELS: {
        json_t *o = json_object(), *a = srv_repo_models_json(s);
        json_object_set_new(o, "object", json_string("list"));
        json_object_set_new(o, "data", a);
        return send_json(s, c, 200, o, NULL);
    }
    default:
        break;
    }
    if (atomic_load(&s->shutting_down))
        return send_error(s, c, 503, "The server is shutting down", "service_unavailable", NULL, NULL, NULL);
    enum MHD_Result r = MHD_NO;
    json_t *body = body_object(s, c, cc, &r);
    if (body == NULL)
        return r;
    if (rt->id == R_COMPLETIONS || rt->id == R_CHAT) {
        r = serve_generate(s, c, body, rt->id == R_CHAT, cc, NULL, NULL, NULL);
    } else if (rt->id == R_RESPONSES) {
        json_t *chat = NULL, *ctx = NULL, *err = NULL;
        int status = 400;
        if (srv_responses_map(body, &chat, &ctx, &status, &err) < 0)
            r = send_json(s, c, status, err, NULL);
        else
            r = serve_generate(s, c, chat, 1, cc, &srv_responses_wire, ctx, srv_responses_rename);
        json_decref(chat);
        json_decref(ctx);
    } else {
        r = serve_tokenize(s, c, body, rt->id == R_DETOKENIZE);
    }
    json_decref(body);
    return r;
}

/* ------------------------------------------------------------ request framing */

/* What the headers say about the body's framing. */
typedef struct framing {
    int n_length, n_encoding, n_host; /* Content-Length, Transfer-Encoding, Host headers */
    const char *encoding;     /* the (last) Transfer-Encoding value */
    int bad_name;             /* a header name with whitespace in it */
} framing;

static enum MHD_Result count_framing(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    (void)kind;
    framing *f = cls;
    if (strcasecmp(key, "Content-Length") == 0) {
        f->n_length++;
    } else if (strcasecmp(key, "Transfer-Encoding") == 0) {
        f->n_encoding++;
        f->encoding = value;
    } else if (strcasecmp(key, "Host") == 0) {
        f->n_host++;
    }
    if (key[strcspn(key, " \t")] != '\0')
        f->bad_name = 1;
    return MHD_YES;
}

/* Why the request's framing is refused, or NULL. libmicrohttpd is lenient
 * (the first of two Content-Lengths wins, Transfer-Encoding beats
 * Content-Length, an unknown coding reads to the end of the connection);
 * a proxy in front that frames the same bytes by the other header would
 * take the rest of this body for a request of its own (request
 * smuggling). So every framing two readers could disagree on is refused,
 * as nginx does: one Content-Length or one Transfer-Encoding: chunked
 * (HTTP/1.1 only), never both, and no whitespace in a header name
 * ("Transfer-Encoding : chunked" is a header MHD does not know, but a
 * lenient proxy reads it as Transfer-Encoding). An HTTP/1.1 request has
 * exactly one Host (RFC 9112 3.2); MHD's strict mode checks that too, but
 * answers with its status line twice, so the check is here. */
static const char *framing_error(struct MHD_Connection *c, const char *version)
{
    framing f = {0};
    MHD_get_connection_values(c, MHD_HEADER_KIND, count_framing, &f);
    if (f.bad_name)
        return "A header name contains whitespace.";
    if (f.n_length > 1)
        return "The request has more than one Content-Length header.";
    if (f.n_length > 0 && f.n_encoding > 0)
        return "The request has both Content-Length and Transfer-Encoding.";
    if (f.n_encoding > 1)
        return "The request has more than one Transfer-Encoding header.";
    if (f.n_encoding == 1 && strcasecmp(f.encoding ? f.encoding : "", "chunked") != 0)
        return "Transfer-Encoding must be exactly 'chunked'.";
    int http11 = version && strcmp(version, MHD_HTTP_VERSION_1_1) == 0;
    if (f.n_encoding == 1 && !http11)
        return "Transfer-Encoding needs HTTP/1.1.";
    if (f.n_host > 1 || (f.n_host == 0 && http11))
        return "An HTTP/1.1 request must have exactly one Host header.";
    return NULL;
}

/* The 400 of a refused framing, in OpenAI's error shape, with Connection:
 * close: nothing after this head can be trusted to start the next request.
 * Queued before the body is read, which MHD then never reads. */
static enum MHD_Result send_framing_error(anvil_server *s, struct MHD_Connection *c, const char *msg)
{
    json_t *j = srv_error_json(msg, "invalid_request_error", NULL, "invalid_framing");
    char *t = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (t == NULL)
        return MHD_NO; /* MHD closes the connection */
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(t), t, MHD_RESPMEM_MUST_COPY);
    free(t);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "application/json");
    MHD_add_response_header(r, "Connection", "close");
    srv_http_decorate(s, c, r);
    enum MHD_Result ret = MHD_queue_response(c, 400, r);
    MHD_destroy_response(r);
    count_status(s, 400);
    return ret;
}

/* The connection's record (on_connection's socket context), or NULL. */
static srv_conn *conn_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

static enum MHD_Result handle_request(anvil_server *s, struct MHD_Connection *c, const char *url,
                                      const char *method, const char *version, const char *upload,
                                      size_t *upload_size, void **con_cls)
{
    conn_ctx *cc = *con_cls;
    /* Triton's clients read errors as {"error": "text"} (send_json) */
    s->reply_v2 = strncmp(url, "/v2/", 4) == 0 || strcmp(url, "/v2") == 0;
    if (cc == NULL) {
        /* the first call: the head is complete, the body not read yet */
        srv_conn_head_done(s, conn_of(c));
        cc = calloc(1, sizeof *cc);
        if (cc == NULL)
            return MHD_NO;
        *con_cls = cc;
        const char *why = framing_error(c, version);
        if (why)
            return send_framing_error(s, c, why);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > s->opts.max_request_bytes) {
            /* answer at once; MHD closes the connection rather than read the body */
            cc->too_large = 1;
            return send_error(s, c, 413, "Request body too large", "invalid_request_error", NULL,
                              "request_too_large", NULL);
        }
        return MHD_YES;
    }
    if (*upload_size > 0) {
        if (!cc->too_large && cc->len + *upload_size <= s->opts.max_request_bytes) {
            char *b = realloc(cc->body, cc->len + *upload_size + 1);
            if (b == NULL) {
                cc->too_large = 1;
            } else {
                memcpy(b + cc->len, upload, *upload_size);
                cc->body = b;
                cc->len += *upload_size;
                b[cc->len] = '\0';
            }
        } else {
            cc->too_large = 1;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    /* called again once resumed: what the request waited for is there */
    if (cc->g)
        return finish_generate(s, c, cc);
    if (cc->job)
        return finish_repo_job(s, c, cc);
    /* a trailing slash names the same endpoint (/v1/completions/) */
    size_t ul = strlen(url);
    if (ul > 1 && url[ul - 1] == '/') {
        while (ul > 1 && url[ul - 1] == '/')
            ul--;
        char *u = strndup(url, ul);
        if (u == NULL)
            return send_error(s, c, 500, "out of memory", "server_error", NULL, NULL, NULL);
        enum MHD_Result r = dispatch(s, c, u, method, cc);
        free(u);
        return r;
    }
    return dispatch(s, c, url, method, cc);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size,
                                  void **con_cls)
{
    return handle_request(cls, c, url, method, version, upload, upload_size, con_cls);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode t)
{
    (void)t;
    anvil_server *s = cls;
    /* the response ended: on a kept-alive connection the next head has
     * the same deadline as a new connection's first (a closing one is
     * freed by its CLOSED notification next) */
    srv_conn_await_head(s, conn_of(c));
    conn_ctx *cc = *con_cls;
    if (cc == NULL)
        return;
    if (cc->g) { /* never seen: a waiting request's connection is suspended, so it cannot end */
        srv_gen_cancel(cc->g);
        gen_untrack(s, cc->g);
    }
    if (cc->job) { /* likewise; a job still running keeps its memory */
        pthread_mutex_lock(&s->wake_mu);
        int done = cc->job->done;
        pthread_mutex_unlock(&s->wake_mu);
        if (done) {
            json_decref(cc->job->body);
            free(cc->job);
        }
    }
    free(cc->body);
    free(cc);
    *con_cls = NULL;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    anvil_server *s = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        atomic_fetch_add(&s->n_conns, 1);
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        *socket_context = srv_conn_open(s, ci ? ci->connect_fd : -1);
        return;
    }
    atomic_fetch_sub(&s->n_conns, 1);
    srv_conn_closed(s, *socket_context); /* counted: the loop runs MHD again (server_loop.c) */
    *socket_context = NULL;
}

/* ------------------------------------------------------------ lifecycle */

anvil_status anvil_server_create(const anvil_server_options *o, anvil_server **out)
{
    *out = NULL;
    /* an empty key would match "Bearer " or turn authentication off
     * unnoticed: refused, so a key that a script failed to fill in stops
     * the start */
    CHECK(o == NULL || o->api_key == NULL || o->api_key[0], ANVIL_ERR_INVALID_ARG,
          "the API key is empty; give a key, or none (NULL) to serve without authentication");
    CHECK(o == NULL || o->admin_key == NULL || o->admin_key[0], ANVIL_ERR_INVALID_ARG,
          "the admin key is empty; give a key, or none (NULL) for the API key's");
    CHECK(o == NULL || srv_tools_parser_from_name(o->tool_call_parser) != -2, ANVIL_ERR_INVALID_ARG,
          "unknown tool-call parser '%s' (auto, llama3_json, hermes, mistral or none)", o->tool_call_parser);
    anvil_server *s = calloc(1, sizeof *s);
    CHECK(s != NULL, ANVIL_ERR_OOM, "out of memory");
    if (o)
        s->opts = *o;
    else
        anvil_server_options_default(&s->opts);
    if (s->opts.host == NULL)
        s->opts.host = "127.0.0.1";
    if (s->opts.max_request_bytes == 0)
        s->opts.max_request_bytes = 1 << 20;
    if (s->opts.max_connections == 0)
        s->opts.max_connections = 1024;
    if (s->opts.unload_timeout_s < 0)
        s->opts.unload_timeout_s = 0;
    if (s->opts.load_timeout_s == 0)
        s->opts.load_timeout_s = 900;
    if (s->opts.stream_interval < 1)
        s->opts.stream_interval = 1;
    if (s->opts.header_timeout_s == 0)
        s->opts.header_timeout_s = 10;
    if (s->opts.max_connections_per_client == 0)
        s->opts.max_connections_per_client = s->opts.max_connections > 1 ? s->opts.max_connections / 2 : 1;
    s->tool_parser = srv_tools_parser_from_name(s->opts.tool_call_parser);
    s->opts.tool_call_parser = NULL; /* the caller's string: read into tool_parser */
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->wake_mu, NULL);
    s->wake_fd = -1;
    pthread_mutex_init(&s->repo_mu, NULL);
    pthread_cond_init(&s->repo_cv, NULL);
    atomic_store(&s->ready, 1);
    if (s->opts.runtime)
        s->rt_opts = *s->opts.runtime;
    else
        anvil_runtime_options_default(&s->rt_opts);
    if (s->opts.executor)
        s->ex_opts = *s->opts.executor;
    else
        anvil_executor_options_default(&s->ex_opts);
    const anvil_server_options *in = &s->opts;
    /* the admin key defaults to the API key: the repository is never more open than /v1/ */
    const char *admin = in->admin_key ? in->admin_key : in->api_key;
    int oom = (s->host = strdup(in->host)) == NULL;
    oom |= in->api_key && (s->api_key = strdup(in->api_key)) == NULL;
    oom |= admin && (s->admin_key = strdup(admin)) == NULL;
    oom |= in->allowed_origins && (s->allowed_origins = strdup(in->allowed_origins)) == NULL;
    oom |= s->rt_opts.device && (s->device = strdup(s->rt_opts.device)) == NULL;
    oom |= s->rt_opts.cpu_isa && (s->cpu_isa = strdup(s->rt_opts.cpu_isa)) == NULL;
    oom |= in->chat_template_source && (s->template_src = strdup(in->chat_template_source)) == NULL;
    oom |= in->model_repo && (s->repo_dir = strdup(in->model_repo)) == NULL;
    if (oom) {
        anvil_server_free(s);
        CHECK(0, ANVIL_ERR_OOM, "out of memory");
    }
    if (s->repo_dir) {
        DIR *d = opendir(s->repo_dir);
        if (d == NULL) {
            int e = errno;
            anvil_server_free(s);
            CHECK(0, e == ENOENT ? ANVIL_ERR_NOT_FOUND : ANVIL_ERR_IO, "model repository %s: %s",
                  in->model_repo, strerror(e));
        }
        closedir(d);
    }
    s->rt_opts.device = s->device;
    s->rt_opts.cpu_isa = s->cpu_isa;
    s->opts.host = s->host;
    s->opts.api_key = s->api_key;
    s->opts.admin_key = s->admin_key;
    s->opts.allowed_origins = s->allowed_origins;
    s->opts.model_repo = s->repo_dir;
    s->opts.chat_template_source = s->template_src;
    s->opts.runtime = NULL; /* copied into rt_opts / ex_opts */
    s->opts.executor = NULL;
    *out = s;
    return ANVIL_OK;
}

/* Why MHD could not listen on addr (it keeps no errno): the error of a
 * plain bind there, as MHD binds it. */
static const char *bind_error(const struct sockaddr *addr, socklen_t len)
{
    int fd = socket(addr->sa_family, SOCK_STREAM, 0), one = 1, zero = 0, e = 0;
    if (fd < 0)
        return strerror(errno);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (addr->sa_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    if (bind(fd, addr, len) != 0 || listen(fd, 1) != 0)
        e = errno;
    close(fd);
    return e ? strerror(e) : "the HTTP daemon did not start";
}

anvil_status anvil_server_start(anvil_server *s)
{
    pthread_mutex_lock(&s->repo_mu);
    int n = s->n_entries;
    pthread_mutex_unlock(&s->repo_mu);
    CHECK(n > 0 || s->repo_dir, ANVIL_ERR_INVALID_ARG, "no model to serve (add one, or a model repository)");
    CHECK(s->daemon == NULL, ANVIL_ERR_INVALID_ARG, "the server is already started");
    /* an IPv6 address is bound dual-stack (IPV6_V6ONLY off, MHD's
     * MHD_USE_DUAL_STACK): "::" takes IPv4 clients too, as 0.0.0.0 and ::
     * together would */
    struct sockaddr_in addr;
    struct sockaddr_in6 addr6;
    memset(&addr, 0, sizeof addr);
    memset(&addr6, 0, sizeof addr6);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)s->opts.port);
    addr6.sin6_family = AF_INET6;
    addr6.sin6_port = htons((uint16_t)s->opts.port);
    const char *host = strcmp(s->host, "localhost") == 0 ? "127.0.0.1" : s->host;
    int v6 = 0;
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        CHECK(inet_pton(AF_INET6, host, &addr6.sin6_addr) == 1, ANVIL_ERR_INVALID_ARG,
              "--host expects an IPv4 or IPv6 address (e.g. 127.0.0.1, 0.0.0.0, ::1, ::), got '%s'", s->host);
        v6 = 1;
    }
    const struct sockaddr *sa = v6 ? (const struct sockaddr *)&addr6 : (const struct sockaddr *)&addr;
    socklen_t sa_len = v6 ? (socklen_t)sizeof addr6 : (socklen_t)sizeof addr;
    /* external epoll mode: the server's own loop runs MHD (server_loop.c).
     * The inactivity timeout (nothing read or written) ends a body upload
     * or a response write that stalls, as nginx's client_body_timeout and
     * send_timeout (60 s); a suspended connection is exempt (MHD takes it
     * off its timeout list), and the request head has its own, shorter
     * deadline (header_timeout_s). A per-client limit at or over the
     * global one is none (0 spares MHD its per-address bookkeeping).
     * MHD's strict client discipline (MHD_OPTION_STRICT_FOR_CLIENT) is
     * left off: in 0.9.75 it answers a request without Host with its
     * status line twice and closes on a space in the target without an
     * answer; the framing and Host checks are handle_request's. */
    unsigned per_client = s->opts.max_connections_per_client >= s->opts.max_connections
                              ? 0
                              : s->opts.max_connections_per_client;
    s->daemon = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | (v6 ? MHD_USE_DUAL_STACK : 0), 0, NULL, NULL, on_request, s,
        MHD_OPTION_SOCK_ADDR, sa, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_NOTIFY_CONNECTION,
        on_connection, s, MHD_OPTION_CONNECTION_LIMIT, s->opts.max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)60, MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_client, MHD_OPTION_END);
    /* (MHD's default SO_REUSEADDR only: a restart binds at once, and a
     * second server on a port in use fails, rather than sharing it as
     * SO_REUSEPORT would) */
    CHECK(s->daemon != NULL, ANVIL_ERR_IO, "cannot listen on %s:%d: %s", s->host, s->opts.port,
          bind_error(sa, sa_len));
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : s->opts.port;
    anvil_status st = srv_loop_start(s);
    if (st != ANVIL_OK) {
        MHD_stop_daemon(s->daemon);
        s->daemon = NULL;
    }
    return st;
}

int anvil_server_port(const anvil_server *s)
{
    return s->port;
}

int anvil_server_in_flight(anvil_server *s)
{
    pthread_mutex_lock(&s->mu);
    int n = s->in_flight;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void wait_drained(anvil_server *s, double timeout_s)
{
    double end = srv_now() + timeout_s;
    while (anvil_server_in_flight(s) > 0 && srv_now() < end)
        usleep(20000);
}

void anvil_server_shutdown(anvil_server *s, double timeout_s)
{
    if (s == NULL || s->daemon == NULL)
        return;
    anvil_server_stop_loads(s); /* loads in progress are cancelled, new ones refused */
    srv_loop_quiesce(s); /* no new connections */
    wait_drained(s, timeout_s);
    /* what is left is cancelled; its final events end the responses */
    pthread_mutex_lock(&s->mu);
    for (srv_gen *g = s->gens; g; g = g->next)
        srv_gen_cancel(g); /* every prompt of it */
    pthread_mutex_unlock(&s->mu);
    wait_drained(s, 10.0);
    /* loads and unloads on their threads end on their own: a cancelled load
     * within a chunk of its reading. One stuck in a system call (a hung
     * network filesystem) is left behind after JOBS_WAIT_S: its connection
     * is answered 503 as the loop closes, and the server's memory is left
     * to it (anvil_server_free) */
    double jobs_end = srv_now() + JOBS_WAIT_S;
    while (atomic_load(&s->n_jobs) > 0 && srv_now() < jobs_end)
        usleep(20000);
    /* a response's last bytes may still be in MHD's buffer when its free
     * callback ran: give open connections a moment to flush */
    double end = srv_now() + 1.0;
    while (atomic_load(&s->n_conns) > 0 && srv_now() < end)
        usleep(20000);
    srv_loop_stop(s);
    MHD_stop_daemon(s->daemon);
    s->daemon = NULL;
}

void anvil_server_free(anvil_server *s)
{
    if (s == NULL)
        return;
    anvil_server_shutdown(s, 0);
    if (atomic_load(&s->n_jobs) > 0) {
        /* a load thread still uses the server (stuck in a system call):
         * freeing it would pull its memory from under it */
        anvil_log(ANVIL_LOG_ERROR, "server: %d repository jobs did not end; their memory is not freed",
                  atomic_load(&s->n_jobs));
        return;
    }
    srv_repo_free(s);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->wake_mu);
    pthread_mutex_destroy(&s->repo_mu);
    pthread_cond_destroy(&s->repo_cv);
    free(s->host);
    free(s->api_key);
    free(s->admin_key);
    free(s->allowed_origins);
    free(s->device);
    free(s->cpu_isa);
    free(s->template_src);
    free(s->repo_dir);
    free(s);
}
