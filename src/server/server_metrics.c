/* GET /metrics: Prometheus text exposition (format 0.0.4) of the HTTP
 * statuses, and per model the token counters, latency histograms and the
 * executor's queue, running requests and KV blocks. */
#include <stdarg.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>

#include "server/server_guided.h"
#include "server/server_internal.h"

static const double bounds[SRV_N_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                             0.25,  0.5,    1.0,   2.5,  5.0,   10.0, 30.0};

void srv_hist_add(srv_hist *h, double v)
{
    int i = 0;
    while (i < SRV_N_BUCKETS && v > bounds[i])
        i++;
    h->counts[i]++;
    h->sum += v;
    h->n++;
}

typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (k < 0)
            return;
        if (b->p && b->len + (size_t)k < b->cap) {
            b->len += (size_t)k;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 8192;
        while (cap < b->len + (size_t)k + 1)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (q == NULL) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
}

static void hist(sbuf *b, const char *name, const char *model, const srv_hist *h)
{
    uint64_t cum = 0;
    for (int i = 0; i < SRV_N_BUCKETS; i++) {
        cum += h->counts[i];
        put(b, "%s_bucket{model=\"%s\",le=\"%g\"} %llu\n", name, model, bounds[i], (unsigned long long)cum);
    }
    put(b, "%s_bucket{model=\"%s\",le=\"+Inf\"} %llu\n", name, model, (unsigned long long)h->n);
    put(b, "%s_sum{model=\"%s\"} %.6f\n", name, model, h->sum);
    put(b, "%s_count{model=\"%s\"} %llu\n", name, model, (unsigned long long)h->n);
}

char *srv_metrics_text(struct anvil_server *s)
{
    sbuf b = {0};
    put(&b, "# HELP anvil_http_requests_total HTTP requests answered, by status code.\n"
            "# TYPE anvil_http_requests_total counter\n");
    pthread_mutex_lock(&s->mu);
    for (int c = 100; c < 600; c++)
        if (s->http_status_counts[c])
            put(&b, "anvil_http_requests_total{status=\"%d\"} %llu\n", c,
                (unsigned long long)s->http_status_counts[c]);
    int in_flight = s->in_flight;
    pthread_mutex_unlock(&s->mu);
    put(&b, "# HELP anvil_http_requests_in_flight Generation requests being served.\n"
            "# TYPE anvil_http_requests_in_flight gauge\nanvil_http_requests_in_flight %d\n",
        in_flight);
    /* the cost counters: the server's own work (HTTP handlers, request
     * mapping, event formatting) and the whole process, user + system */
    struct rusage ru;
    double proc = 0;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        proc = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
               (double)ru.ru_stime.tv_usec * 1e-6;
    put(&b,
        "# HELP anvil_server_cpu_seconds_total CPU time of the server's own work outside the executor's forward "
        "passes (HTTP handlers, request mapping, tokenization, response formatting).\n"
        "# TYPE anvil_server_cpu_seconds_total counter\nanvil_server_cpu_seconds_total %.6f\n"
        "# HELP process_cpu_seconds_total Total user and system CPU time of the process.\n"
        "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %.6f\n",
        (double)srv_cost_total(s) * 1e-9, proc);
    put(&b, "# HELP anvil_model_loads_total Loads of each model of the repository that succeeded.\n"
            "# TYPE anvil_model_loads_total counter\n");
    pthread_mutex_lock(&s->repo_mu);
    for (int i = 0; i < s->n_entries; i++)
        put(&b, "anvil_model_loads_total{model=\"%s\"} %llu\n", s->entries[i]->name,
            (unsigned long long)s->entries[i]->n_loads);
    put(&b, "# HELP anvil_model_unloads_total Unloads of each model of the repository.\n"
            "# TYPE anvil_model_unloads_total counter\n");
    for (int i = 0; i < s->n_entries; i++)
        put(&b, "anvil_model_unloads_total{model=\"%s\"} %llu\n", s->entries[i]->name,
            (unsigned long long)s->entries[i]->n_unloads);
    put(&b, "# HELP anvil_model_refits_total Refits of each model (new weights of the same shapes while served).\n"
            "# TYPE anvil_model_refits_total counter\n");
    for (int i = 0; i < s->n_entries; i++)
        put(&b, "anvil_model_refits_total{model=\"%s\"} %llu\n", s->entries[i]->name,
            (unsigned long long)s->entries[i]->n_refits);
    pthread_mutex_unlock(&s->repo_mu);
    int n_models = 0;
    srv_model **models = srv_repo_acquire_all(s, &n_models); /* each with a reference */
    static const char *const gauges[][2] = {
        {"anvil_num_requests_waiting", "Requests queued in the executor."},
        {"anvil_num_requests_running", "Requests admitted by the executor."},
        {"anvil_kv_blocks", "KV-cache blocks by state (used, free, cached)."},
        {"anvil_kv_blocks_total", "KV-cache blocks in the pool."},
        {"anvil_requests_total", "Generation requests finished, by finish reason."},
        {"anvil_prompt_tokens_total", "Prompt tokens of finished requests."},
        {"anvil_generation_tokens_total", "Generated tokens of finished requests."},
        {"anvil_executor_steps_total", "Steps the executor ran."},
        {"anvil_executor_busy_seconds_total",
         "The executor's time in steps, by phase (schedule; forward: the model, waited for on a GPU; tokens: "
         "sampling on the host, stop checks, detokenization, the server's callbacks)."},
    };
    for (size_t gi = 0; gi < sizeof gauges / sizeof gauges[0]; gi++) {
        const char *name = gauges[gi][0];
        put(&b, "# HELP %s %s\n# TYPE %s %s\n", name, gauges[gi][1], name, gi < 4 ? "gauge" : "counter");
        for (int i = 0; i < n_models; i++) {
            srv_model *m = models[i];
            anvil_executor_metrics em;
            memset(&em, 0, sizeof em);
            anvil_executor_stats(m->ex, &em);
            pthread_mutex_lock(&m->mu);
            switch (gi) {
            case 0:
                put(&b, "%s{model=\"%s\"} %d\n", name, m->name, em.queued);
                break;
            case 1:
                put(&b, "%s{model=\"%s\"} %d\n", name, m->name, em.running);
                break;
            case 2:
                put(&b, "%s{model=\"%s\",state=\"used\"} %d\n", name, m->name, em.kv_blocks_used);
                put(&b, "%s{model=\"%s\",state=\"free\"} %d\n", name, m->name, em.kv_blocks_free);
                put(&b, "%s{model=\"%s\",state=\"cached\"} %d\n", name, m->name, em.kv_blocks_cached);
                break;
            case 3:
                put(&b, "%s{model=\"%s\"} %d\n", name, m->name, em.kv_blocks_total);
                break;
            case 4:
                for (int f = 1; f < 5; f++)
                    put(&b, "%s{model=\"%s\",finish_reason=\"%s\"} %llu\n", name, m->name,
                        anvil_request_finish_name((anvil_request_finish)f), (unsigned long long)m->finished[f]);
                break;
            case 5:
                put(&b, "%s{model=\"%s\"} %llu\n", name, m->name, (unsigned long long)m->prompt_tokens);
                break;
            case 6:
                put(&b, "%s{model=\"%s\"} %llu\n", name, m->name, (unsigned long long)m->generated_tokens);
                break;
            case 7:
                put(&b, "%s{model=\"%s\"} %lld\n", name, m->name, (long long)em.steps);
                break;
            default:
                put(&b, "%s{model=\"%s\",phase=\"schedule\"} %.6f\n", name, m->name, em.schedule_s);
                put(&b, "%s{model=\"%s\",phase=\"forward\"} %.6f\n", name, m->name, em.forward_s);
                put(&b, "%s{model=\"%s\",phase=\"tokens\"} %.6f\n", name, m->name, em.tokens_s);
                break;
            }
            pthread_mutex_unlock(&m->mu);
        }
    }
    /* the compiled-grammar cache (server_grammar_cache.c) */
    static const char *const gc[][2] = {
        {"anvil_grammar_cache_hits_total", "Structured-output and tool grammars reused from the model's cache."},
        {"anvil_grammar_cache_misses_total", "Structured-output and tool grammars compiled (not in the cache)."},
        {"anvil_grammar_cache_evictions_total", "Compiled grammars dropped from the cache at its bound."},
        {"anvil_grammar_cache_entries", "Compiled grammars in the model's cache."},
    };
    for (int gi = 0; gi < 4; gi++) {
        put(&b, "# HELP %s %s\n# TYPE %s %s\n", gc[gi][0], gc[gi][1], gc[gi][0], gi < 3 ? "counter" : "gauge");
        for (int i = 0; i < n_models; i++) {
            srv_gcache_stats gs;
            srv_guided_cache_stats(models[i], &gs);
            const unsigned long long v = gi == 0   ? gs.hits
                                         : gi == 1 ? gs.misses
                                         : gi == 2 ? gs.evictions
                                                   : (unsigned long long)gs.entries;
            put(&b, "%s{model=\"%s\"} %llu\n", gc[gi][0], models[i]->name, v);
        }
    }
    static const char *const hists[][2] = {
        {"anvil_time_to_first_token_seconds", "Enqueue to first generated token."},
        {"anvil_inter_token_latency_seconds", "Time between generated tokens."},
        {"anvil_e2e_request_latency_seconds", "Enqueue to finish."},
    };
    for (int hi = 0; hi < 3; hi++) {
        put(&b, "# HELP %s %s\n# TYPE %s histogram\n", hists[hi][0], hists[hi][1], hists[hi][0]);
        for (int i = 0; i < n_models; i++) {
            srv_model *m = models[i];
            pthread_mutex_lock(&m->mu);
            hist(&b, hists[hi][0], m->name, hi == 0 ? &m->ttft : hi == 1 ? &m->itl : &m->e2e);
            pthread_mutex_unlock(&m->mu);
        }
    }
    srv_repo_release_all(models, n_models);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}
