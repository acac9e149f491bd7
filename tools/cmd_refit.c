/* anvil refit: an engine with new weights of the same shapes, without a rebuild (docs/engine.md, "Refit"). */
#include <getopt.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "anvil/builder.h"
#include "cli_error.h"
#include "cli_flags.h"
#include "commands.h"
#include "exec_cli.h"

#define TOOL "anvil refit"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: anvil refit FILE --weights DIR|ENGINE [--output NEW] [options]\n\n"
            "Puts new weights of the same shapes (a fine-tuned checkpoint) into the engine FILE without a\n"
            "rebuild: the manifest (config, network, plan, tokenizer, chat template, build options) is\n"
            "kept, the weights come from a Hugging Face folder (converted and fused as FILE stores them)\n"
            "or another engine, and the manifest's build records the refit. The new weights must fit\n"
            "exactly: the same config (every value but the dtype and the generation defaults) and every\n"
            "tensor of the shape the config implies; the first difference is named otherwise.\n\n"
            "  -w, --weights PATH      the new weights: a Hugging Face folder or an engine file\n"
            "  -o, --output NEW        the engine to write (default: FILE is replaced, only when the\n"
            "                          refit succeeds)\n"
            "      --threads N         threads reading and writing (default: the CPUs, at most 16)\n"
            "      --no-progress       no progress bar (it shows only on a terminal)\n"
            "  -h, --help              this help\n");
}

typedef struct bar {
    int show;
    double t0, last;
} bar;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static atomic_int interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    atomic_store(&interrupted, 1);
}

/* A progress bar on stderr, at most ten times a second; Ctrl-C cancels. */
static int progress(void *user, size_t done, size_t total)
{
    bar *b = user;
    const double t = now_s();
    if (b->show && (t - b->last >= 0.1 || done == total)) {
        b->last = t;
        const double frac = total ? (double)done / (double)total : 1.0;
        char line[32];
        int n = (int)(frac * 30.0);
        memset(line, '#', (size_t)n);
        memset(line + n, '.', (size_t)(30 - n));
        line[30] = '\0';
        fprintf(stderr, "\r" TOOL ": [%s] %5.1f%%  %.2f of %.2f GB ", line, 100.0 * frac, (double)done / 1e9,
                (double)total / 1e9);
        fflush(stderr);
    }
    return atomic_load(&interrupted);
}

int anvil_cmd_refit(int argc, char **argv)
{
    enum { OPT_THREADS = 256, OPT_NO_PROGRESS };
    static const struct option longopts[] = {
        {"weights", required_argument, 0, 'w'},
        {"output", required_argument, 0, 'o'},
        {"threads", required_argument, 0, OPT_THREADS},
        {"no-progress", no_argument, 0, OPT_NO_PROGRESS},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    anvil_refit_options o = {0};
    const char *weights = NULL, *output = NULL;
    int no_progress = 0;
    long v;
    optind = 1;
    int c;
    while ((c = cli_getopt(argc, argv, "w:o:h", longopts)) != -1) {
        switch (c) {
        case 'w':
            weights = optarg;
            break;
        case 'o':
            output = optarg;
            break;
        case OPT_THREADS:
            if (exec_cli_int(optarg, "--threads", 0, 1024, &v, TOOL))
                return 2;
            o.n_threads = (int)v;
            break;
        case OPT_NO_PROGRESS:
            no_progress = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default: return cli_bad_flag(TOOL, argv, "w:o:h", longopts);
        }
    }
    if (optind >= argc) {
        fprintf(stderr, TOOL ": the engine FILE to refit is required (see anvil refit --help)\n");
        return 2;
    }
    const char *engine = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, TOOL ": unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (weights == NULL) {
        fprintf(stderr, TOOL ": --weights DIR|ENGINE is required (see anvil refit --help)\n");
        return 2;
    }
    bar b = {.show = !no_progress && isatty(STDERR_FILENO), .t0 = now_s()};
    o.progress = progress;
    o.progress_user = &b;
    struct sigaction sa = {.sa_handler = on_sigint}, old_int;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    anvil_status st = anvil_refit_engine(engine, weights, output, &o);
    sigaction(SIGINT, &old_int, NULL);
    if (b.show)
        fputc('\n', stderr);
    if (st != ANVIL_OK) {
        anvil_cli_report(TOOL);
        return st == ANVIL_ERR_CANCELLED ? 130 : 1;
    }
    fprintf(stderr, TOOL ": wrote %s in %.2f s\n", output ? output : engine, now_s() - b.t0);
    return 0;
}
