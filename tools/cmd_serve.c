/* anvil serve: the OpenAI-compatible HTTP server (src/server/, docs/server.md). */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "anvil/server.h"
#include "cli_env.h"
#include "cli_error.h"
#include "cli_flags.h"
#include "cli_tp.h"
#include "commands.h"
#include "exec_cli.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: anvil serve [--model [NAME=]DIR ...] [--model-repo DIR] [options]  (one of the two at least)\n\n"
            "Serves the models over HTTP with OpenAI's API: /v1/completions, /v1/chat/completions,\n"
            "/v1/models, /v1/tokenize, /v1/detokenize, /health, /metrics; and Triton's repository API:\n"
            "GET|POST /v2/repository/index, POST /v2/repository/models/NAME/load, /unload and /refit\n"
            "(/refit: new weights of the same shapes while the model serves; docs/server.md).\n\n"
            "  -m, --model [NAME=]DIR      a model folder, served as NAME (default: the folder's name);\n"
            "                              repeat for more models; loaded at start. Requests without\n"
            "                              'model' go to the first loaded model (--model ones first)\n"
            "      --model-repo DIR        a model repository: every subfolder holding a model\n"
            "                              (config.json + *.safetensors) is served under its folder's\n"
            "                              name; all are loaded at start unless --load-model or\n"
            "                              --no-load-all say otherwise\n"
            "      --load-model NAME       load only these of the repository at start (repeatable)\n"
            "      --no-load-all           load none of the repository at start (the repository API\n"
            "                              loads them on demand)\n"
            "      --admin-key KEY         require 'Authorization: Bearer KEY' on /v2/repository/ (default:\n"
            "                              env ANVIL_ADMIN_KEY, else the API key; none if neither)\n"
            "      --unload-timeout S      an unload lets the model's requests finish for S seconds, then\n"
            "                              cancels them (default 10)\n"

            "      --host ADDR             address to listen on (default 127.0.0.1); an IPv6 one is\n"
            "                              dual-stack: '::' serves IPv4 and IPv6 on every interface\n"
            "      --allowed-origins LIST  CORS: the origins whose pages may call the server,\n"
            "                              comma-separated (e.g. http://localhost:3000), or '*' for any\n"
            "                              (default: none)\n"
            "      --port N                port (default 8000; 0: any free port)\n"
            "      --api-key KEY           require 'Authorization: Bearer KEY' on /v1/ (default: env\n"
            "                              ANVIL_API_KEY; none if unset)\n"
            "      --chat-template FILE    a Jinja chat template for models without their own\n"
            "      --tool-call-parser P    how chat outputs become tool calls: auto (default: from the\n"
            "                              model's template), llama3_json, hermes, mistral or none\n"
            "      --max-request-bytes N   larger request bodies are 413 (default 1048576)\n"
            "      --max-queue-size N      requests waiting per model before 429 (default 1024)\n"
            "      --max-connections N     simultaneous connections (default 1024)\n"
            "      --max-connections-per-client N\n"
            "                              simultaneous connections from one address; more are closed\n"
            "                              at once (default: half of --max-connections; behind a proxy,\n"
            "                              set it to --max-connections)\n"
            "      --header-timeout S      a connection must send a complete request head within S\n"
            "                              seconds of opening or of its previous response, else it is\n"
            "                              closed (also the idle keep-alive time; default 10; 0: none)\n"
            "      --stream-interval N     write a stream every N steps, the steps between together\n"
            "                              (default 1: every token as it comes)\n"
            "      --grammar-cache N       compiled grammars (structured output, forced tool calls) each\n"
            "                              model keeps for requests that send them again (default 64; 0: none)\n"
            "      --load-timeout S        a model load that takes longer fails (default 900; 0: none)\n"
            "      --shutdown-timeout S    on SIGINT/SIGTERM, seconds to let requests finish (default 10);\n"
            "                              a signal during the start's loads cancels them; a second\n"
            "                              signal, or a shutdown 30 s past this, exits at once\n" CLI_TP_HELP
            "                              (--tp: one --model; /health names the ranks, 503 once one\n"
            "                              failed; the repository API is refused)\n" EXEC_CLI_HELP EXEC_CLI_RANDOM_HELP
            "  -h, --help                  this help\n\n"
            "Model names (NAME, repository folders) are 1 to 128 of A-Z a-z 0-9 . _ -, not starting\n"
            "with '.', without '..'.\n");
}

enum {
    OPT_HOST = 2000,
    OPT_ORIGINS,
    OPT_TOOL_PARSER,
    OPT_PORT,
    OPT_KEY,
    OPT_TEMPLATE,
    OPT_MAX_BYTES,
    OPT_QUEUE,
    OPT_CONNS,
    OPT_STREAM_INTERVAL,
    OPT_GRAMMAR_CACHE,
    OPT_SHUTDOWN,
    OPT_REPO,
    OPT_LOAD,
    OPT_NO_LOAD_ALL,
    OPT_ADMIN_KEY,
    OPT_UNLOAD_TIMEOUT,
    OPT_CONNS_PER_CLIENT,
    OPT_HEADER_TIMEOUT,
    OPT_LOAD_TIMEOUT,
    OPT_TP,
    OPT_PP,
    OPT_COMM_TIMEOUT,
    OPT_PP_MICRO,
};

/* SIGINT / SIGTERM, taken by a thread of their own from before the first
 * load: the first stops the loads in progress (a long start can be
 * interrupted) and wakes the main thread to shut down; a second signal, or
 * a shutdown running `bound_s` past the first, ends the process at once
 * (a load stuck in a system call must not keep a server alive). */
typedef struct sig_watch {
    anvil_server *srv;
    sigset_t set;
    double bound_s;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int sig; /* the first signal; 0 before it */
} sig_watch;

static void *sig_main(void *arg)
{
    sig_watch *w = arg;
    int sig = 0;
    if (sigwait(&w->set, &sig) != 0)
        return NULL;
    /* before the main thread hears of it: once it does, it may free the
     * server (ThreadSanitizer caught the two at once) */
    anvil_server_stop_loads(w->srv);
    pthread_mutex_lock(&w->mu);
    w->sig = sig;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    /* a second signal, or the bound; sigtimedwait returns early on EINTR */
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int again = 0;
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        const double left = w->bound_s - ((double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) * 1e-9);
        if (left <= 0)
            break;
        struct timespec ts = {.tv_sec = (time_t)left, .tv_nsec = (long)((left - (double)(time_t)left) * 1e9)};
        if (sigtimedwait(&w->set, NULL, &ts) > 0) {
            again = 1;
            break;
        }
    }
    char msg[160];
    int n = again ? snprintf(msg, sizeof msg, "anvil serve: a second signal: exiting now\n")
                  : snprintf(msg, sizeof msg, "anvil serve: the shutdown did not end within %.0f s: exiting now\n",
                             w->bound_s);
    if (write(STDERR_FILENO, msg, (size_t)n) < 0)
        n = 0;
    _exit(again ? 130 : 1);
}

/* --model's NAME=DIR, or DIR served as its folder's name. */
static void model_arg(const char *arg, char *name, size_t cap, const char **dir)
{
    const char *eq = strchr(arg, '=');
    *dir = arg;
    if (eq && eq != arg && (size_t)(eq - arg) < cap) {
        memcpy(name, arg, (size_t)(eq - arg));
        name[eq - arg] = '\0';
        *dir = eq + 1;
        return;
    }
    size_t n = strlen(arg);
    while (n > 1 && arg[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && arg[b - 1] != '/')
        b--;
    snprintf(name, cap, "%.*s", (int)(n - b), arg + b);
}

/* A whole file as a NUL-terminated string (malloc'd); NULL with errno set. */
static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 4096, n = 0, k;
    char *buf = malloc(cap);
    while (buf != NULL && (k = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += k;
        if (cap - n < 2) {
            char *b = realloc(buf, cap * 2);
            if (b == NULL) {
                free(buf);
                buf = NULL;
                errno = ENOMEM;
                break;
            }
            buf = b;
            cap *= 2;
        }
    }
    const int bad = buf == NULL || ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        errno = errno ? errno : EIO;
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

int anvil_cmd_serve(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},
        {"host", required_argument, 0, OPT_HOST},
        {"allowed-origins", required_argument, 0, OPT_ORIGINS},
        {"tool-call-parser", required_argument, 0, OPT_TOOL_PARSER},
        {"port", required_argument, 0, OPT_PORT},
        {"api-key", required_argument, 0, OPT_KEY},
        {"chat-template", required_argument, 0, OPT_TEMPLATE},
        {"max-request-bytes", required_argument, 0, OPT_MAX_BYTES},
        {"max-queue-size", required_argument, 0, OPT_QUEUE},
        {"max-connections", required_argument, 0, OPT_CONNS},
        {"stream-interval", required_argument, 0, OPT_STREAM_INTERVAL},
        {"grammar-cache", required_argument, 0, OPT_GRAMMAR_CACHE},
        {"shutdown-timeout", required_argument, 0, OPT_SHUTDOWN},
        {"model-repo", required_argument, 0, OPT_REPO},
        {"load-model", required_argument, 0, OPT_LOAD},
        {"no-load-all", no_argument, 0, OPT_NO_LOAD_ALL},
        {"admin-key", required_argument, 0, OPT_ADMIN_KEY},
        {"unload-timeout", required_argument, 0, OPT_UNLOAD_TIMEOUT},
        {"max-connections-per-client", required_argument, 0, OPT_CONNS_PER_CLIENT},
        {"header-timeout", required_argument, 0, OPT_HEADER_TIMEOUT},
        {"load-timeout", required_argument, 0, OPT_LOAD_TIMEOUT},
        {"tp", required_argument, 0, OPT_TP},
        {"pp", required_argument, 0, OPT_PP},
        {"pp-micro-batches", required_argument, 0, OPT_PP_MICRO},
        {"comm-timeout", required_argument, 0, OPT_COMM_TIMEOUT},
        {"help", no_argument, 0, 'h'},
        EXEC_CLI_LONGOPTS,
        {0, 0, 0, 0},
    };
    const char *tool = "anvil serve";
    exec_cli_opts eo;
    exec_cli_opts_default(&eo);
    eo.ex.max_queue_size = 1024;
    anvil_server_options so;
    anvil_server_options_default(&so);
    so.api_key = cli_env_key("ANVIL_API_KEY");
    so.admin_key = cli_env_key("ANVIL_ADMIN_KEY");
    const char *api_key_from = "ANVIL_API_KEY", *admin_key_from = "ANVIL_ADMIN_KEY";
    const char *models[64], *loads[64];
    int n_models = 0, n_loads = 0, no_load_all = 0;
    const char *template_path = NULL;
    double shutdown_s = 10, comm_timeout = -1;
    int32_t tp = 0, pp = 0;
    long v;
    int opt;
    optind = 1;
    while ((opt = cli_getopt(argc, argv, "m:h", longopts)) != -1) {
        int r = exec_cli_option(&eo, opt, optarg, tool);
        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        switch (opt) {
        case 'm':
            if (n_models == 64) {
                fprintf(stderr, "%s: at most 64 models\n", tool);
                return 2;
            }
            models[n_models++] = optarg;
            break;
        case OPT_REPO:
            so.model_repo = optarg;
            break;
        case OPT_LOAD:
            if (n_loads == 64) {
                fprintf(stderr, "%s: at most 64 --load-model\n", tool);
                return 2;
            }
            loads[n_loads++] = optarg;
            break;
        case OPT_NO_LOAD_ALL:
            no_load_all = 1;
            break;
        case OPT_ADMIN_KEY:
            so.admin_key = optarg;
            admin_key_from = "--admin-key";
            break;
        case OPT_UNLOAD_TIMEOUT:
            if (exec_cli_double(optarg, "--unload-timeout", 0, 3600, &so.unload_timeout_s, tool))
                return 2;
            break;
        case OPT_HOST:
            so.host = optarg;
            break;
        case OPT_ORIGINS:
            so.allowed_origins = optarg;
            break;
        case OPT_TOOL_PARSER:
            if (strcmp(optarg, "auto") && strcmp(optarg, "llama3_json") && strcmp(optarg, "hermes") &&
                strcmp(optarg, "mistral") && strcmp(optarg, "none")) {
                fprintf(stderr, "%s: --tool-call-parser must be auto, llama3_json, hermes, mistral or none, got '%s'\n",
                        tool, optarg);
                return 2;
            }
            so.tool_call_parser = optarg;
            break;
        case OPT_PORT:
            if (exec_cli_int(optarg, "--port", 0, 65535, &v, tool))
                return 2;
            so.port = (int)v;
            break;
        case OPT_KEY:
            so.api_key = optarg;
            api_key_from = "--api-key";
            break;
        case OPT_TEMPLATE:
            template_path = optarg;
            break;
        case OPT_MAX_BYTES:
            if (exec_cli_int(optarg, "--max-request-bytes", 1, 1L << 30, &v, tool))
                return 2;
            so.max_request_bytes = (size_t)v;
            break;
        case OPT_QUEUE:
            if (exec_cli_int(optarg, "--max-queue-size", 1, 1 << 24, &v, tool))
                return 2;
            eo.ex.max_queue_size = (int32_t)v;
            break;
        case OPT_CONNS:
            if (exec_cli_int(optarg, "--max-connections", 1, 65536, &v, tool))
                return 2;
            so.max_connections = (unsigned)v;
            break;
        case OPT_CONNS_PER_CLIENT:
            if (exec_cli_int(optarg, "--max-connections-per-client", 1, 65536, &v, tool))
                return 2;
            so.max_connections_per_client = (unsigned)v;
            break;
        case OPT_HEADER_TIMEOUT: {
            double sec;
            if (exec_cli_double(optarg, "--header-timeout", 0, 3600, &sec, tool))
                return 2;
            so.header_timeout_s = sec > 0 ? sec : -1; /* the library's 0 is its default */
            break;
        }
        case OPT_STREAM_INTERVAL:
            if (exec_cli_int(optarg, "--stream-interval", 1, 1000, &v, tool))
                return 2;
            so.stream_interval = (int)v;
            break;
        case OPT_GRAMMAR_CACHE:
            if (exec_cli_int(optarg, "--grammar-cache", 0, 1 << 20, &v, tool))
                return 2;
            so.grammar_cache_entries = (int)v;
            break;
        case OPT_SHUTDOWN:
            if (exec_cli_double(optarg, "--shutdown-timeout", 0, 3600, &shutdown_s, tool))
                return 2;
            break;
        case OPT_LOAD_TIMEOUT: {
            double sec;
            if (exec_cli_double(optarg, "--load-timeout", 0, 1e6, &sec, tool))
                return 2;
            so.load_timeout_s = sec > 0 ? sec : -1; /* the library's 0 is its default */
            break;
        }
        case OPT_TP:
            if (exec_cli_int(optarg, "--tp", 1, 4096, &v, tool))
                return 2;
            tp = (int32_t)v;
            break;
        case OPT_PP:
            if (exec_cli_int(optarg, "--pp", 1, 4096, &v, tool))
                return 2;
            pp = (int32_t)v;
            break;
        case OPT_PP_MICRO:
            if (exec_cli_int(optarg, "--pp-micro-batches", 0, 4096, &v, tool))
                return 2;
            eo.rt.pp_micro_batches = (int32_t)v;
            break;
        case OPT_COMM_TIMEOUT:
            if (exec_cli_double(optarg, "--comm-timeout", 0, 1e7, &comm_timeout, tool))
                return 2;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default: return cli_bad_flag(tool, argv, "m:h", longopts);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "%s: unexpected argument '%s'\n", tool, argv[optind]);
        return 2;
    }
    if (eo.random.random || eo.random.config || eo.random.seed_set || eo.random.quantize_set ||
        eo.random.lm_head_set) {
        /* --config FILE --random-weights: the one model, served as FILE's name */
        const char *m = NULL;
        if (eo.random.random && (n_models > 0 || so.model_repo != NULL)) {
            fprintf(stderr, "%s: --random-weights serves the one model of --config FILE (no --model or --model-repo)\n",
                    tool);
            return 2;
        }
        if (exec_cli_random_resolve(&eo.random, &eo.rt, &m, tool) != 0)
            return 2;
        models[n_models++] = m;
    }
    if (n_models == 0 && so.model_repo == NULL) {
        fprintf(stderr, "%s: --model or --model-repo is required\n\n", tool);
        usage(stderr);
        return 2;
    }
    /* an empty key (a variable a script failed to fill in) must not turn
     * authentication off unnoticed */
    if (so.api_key && so.api_key[0] == '\0') {
        fprintf(stderr, "%s: %s is empty; give a key, or %s to serve without authentication\n", tool, api_key_from,
                api_key_from[0] == '-' ? "leave the flag out" : "unset it");
        return 2;
    }
    if (so.admin_key && so.admin_key[0] == '\0') {
        fprintf(stderr, "%s: %s is empty; give a key, or %s to guard the repository with the API key\n", tool,
                admin_key_from, admin_key_from[0] == '-' ? "leave the flag out" : "unset it");
        return 2;
    }
    if ((n_loads > 0 || no_load_all) && so.model_repo == NULL) {
        fprintf(stderr, "%s: --load-model and --no-load-all choose among the models of --model-repo\n", tool);
        return 2;
    }
    if ((tp > 1 || pp > 1) && (n_models != 1 || so.model_repo != NULL)) {
        fprintf(stderr, "%s: --%s serves one --model (the other ranks follow one runtime), not %s\n", tool,
                tp > 1 ? "tp" : "pp", so.model_repo ? "--model-repo" : "several");
        return 2;
    }
    char *template_src = NULL;
    if (template_path && (template_src = read_text(template_path)) == NULL) {
        fprintf(stderr, "%s: cannot read --chat-template %s: %s\n", tool, template_path, strerror(errno));
        return 1;
    }
    /* SIGINT / SIGTERM are taken by sigwait below: block them before any
     * thread starts so that every thread inherits the mask */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* on a GPU: its sizes; the KV cache's 90% only for one model (a
     * repository's models share the GPU: their caches keep the automatic
     * size, at most a quarter of what is free at each load) */
    const int one_model = so.model_repo == NULL && n_models == 1;
    const int gpu_kv = exec_cli_gpu_sizes(&eo, &eo.rt, one_model) && one_model && !eo.kv_set;
    so.runtime = &eo.rt;
    so.executor = &eo.ex;
    so.kv_cache_auto = !eo.kv_set && !gpu_kv;
    so.chat_template_source = template_src;
    anvil_comm *comm = NULL;
    const char *tp_dir = NULL; /* with --tp: the model's path (rank 0's own engine of a per-rank folder) */
    if (tp > 1 || pp > 1) {
        char name[256];
        const char *dir;
        model_arg(models[0], name, sizeof name, &dir);
        /* the same KV cache on every rank: a count, not a share of each
         * rank's free memory (rank 0's block ids name the others' blocks) */
        if (!eo.kv_set && !gpu_kv)
            cli_tp_kv_tokens(&eo.rt, dir);
        so.kv_cache_auto = 0;
        if (cli_tp_join(tool, tp, pp, &dir, comm_timeout, &eo.rt, &comm) != 0) {
            free(template_src);
            return 1;
        }
        if (anvil_comm_rank(comm) != 0) { /* the others follow rank 0's steps; mpirun's signals end them */
            free(template_src);
            pthread_sigmask(SIG_UNBLOCK, &sigs, NULL);
            return cli_tp_follow(tool, dir, &eo.rt);
        }
        tp_dir = dir;
    }
    anvil_server *srv = NULL;
    int rc = 1, tp_loaded = 0;
    if (anvil_server_create(&so, &srv) != ANVIL_OK) {
        anvil_cli_report("%s", tool);
        free(template_src);
        cli_tp_end(tool, comm, 0);
        return 1;
    }
    /* static: the signal thread outlives this function (it ends with the process) */
    static sig_watch w;
    w = (sig_watch){.srv = srv, .set = sigs, .bound_s = shutdown_s + 30};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    pthread_t sig_thread;
    if (pthread_create(&sig_thread, NULL, sig_main, &w) != 0) {
        fprintf(stderr, "%s: cannot start the signal thread\n", tool);
        goto done;
    }
    pthread_detach(sig_thread); /* it ends with the process */
    for (int i = 0; i < n_models; i++) {
        char name[256];
        const char *dir;
        model_arg(models[i], name, sizeof name, &dir);
        if (i == 0 && tp_dir != NULL)
            dir = tp_dir;
        if (anvil_server_add_model_dir(srv, name, dir) != ANVIL_OK) {
            anvil_cli_report("%s: --model %s", tool, models[i]);
            goto done;
        }
    }
    /* listening first: /health says 503 "loading" until the models of the
     * start are loaded (a bad --port fails before a long load) */
    anvil_server_set_ready(srv, 0);
    if (anvil_server_start(srv) != ANVIL_OK) {
        anvil_cli_report("%s", tool);
        goto done;
    }
    /* an IPv6 address goes in brackets in a URL */
    const int v6 = strchr(so.host, ':') != NULL;
    fprintf(stderr, "%s: listening on http://%s%s%s:%d (loading)\n", tool, v6 ? "[" : "", so.host, v6 ? "]" : "",
            anvil_server_port(srv));
    anvil_status st = ANVIL_OK;
    if (n_loads == 0 && !no_load_all) {
        st = anvil_server_load_all(srv);
    } else {
        for (int i = 0; i < n_models && st == ANVIL_OK; i++) {
            char name[256];
            const char *dir;
            model_arg(models[i], name, sizeof name, &dir);
            st = anvil_server_load_model(srv, name);
        }
        for (int i = 0; i < n_loads && st == ANVIL_OK; i++)
            st = anvil_server_load_model(srv, loads[i]);
    }
    pthread_mutex_lock(&w.mu);
    int sig = w.sig;
    pthread_mutex_unlock(&w.mu);
    if (st != ANVIL_OK && sig != 0) { /* the loads were cancelled by the signal */
        fprintf(stderr, "%s: %s during the start's loads: shutting down\n", tool, sig == SIGINT ? "SIGINT" : "SIGTERM");
        anvil_server_shutdown(srv, 0);
        rc = 0;
        goto done;
    }
    if (st != ANVIL_OK) {
        anvil_cli_report("%s", tool);
        anvil_server_shutdown(srv, 0);
        goto done;
    }
    tp_loaded = 1;
    anvil_server_set_ready(srv, 1);
    fprintf(stderr, "%s: ready on http://%s%s%s:%d\n", tool, v6 ? "[" : "", so.host, v6 ? "]" : "",
            anvil_server_port(srv));
    pthread_mutex_lock(&w.mu);
    while (w.sig == 0) {
        if (comm == NULL) {
            pthread_cond_wait(&w.cv, &w.mu);
            continue;
        }
        /* --tp: a failed collective (a rank died, stopped or timed out)
         * leaves the ranks unable to step: /health says why (503) for a
         * moment, then every rank ends */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&w.cv, &w.mu, &ts);
        const char *why = anvil_comm_error(comm);
        if (why != NULL && w.sig == 0) {
            pthread_mutex_unlock(&w.mu);
            fprintf(stderr, "%s: rank 0: the ranks failed (%s): /health reports it; ending every rank in %d s\n",
                    tool, why, CLI_TP_FAIL_GRACE_S);
            sleep(CLI_TP_FAIL_GRACE_S);
            cli_tp_abort(tool, comm); /* does not return */
            pthread_mutex_lock(&w.mu);
        }
    }
    sig = w.sig;
    pthread_mutex_unlock(&w.mu);
    fprintf(stderr, "%s: %s: shutting down (%d requests in flight)%s\n", tool, sig == SIGINT ? "SIGINT" : "SIGTERM",
            anvil_server_in_flight(srv),
            comm ? "; with --tp, mpirun sends it when a rank died (its message names the rank)" : "");
    anvil_server_shutdown(srv, shutdown_s);
    rc = 0;
done:
    anvil_server_free(srv); /* with --tp: the other ranks return */
    cli_tp_end(tool, comm, tp_loaded);
    free(template_src);
    return rc;
}
