/* The progress bar of anvil build and anvil refit; see cli_progress.h. */
#include "cli_progress.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli_signal.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void cli_progress_start(cli_progress *p, const char *tool, int show)
{
    p->tool = tool;
    p->show = show && isatty(STDERR_FILENO);
    p->t0 = p->last = now_s();
    cli_sigint_install(tool);
    cli_sigint_keep();
}

int cli_progress_cb(void *user, size_t done, size_t total)
{
    cli_progress *p = user;
    const double t = now_s();
    if (p->show && (t - p->last >= 0.1 || done == total)) {
        p->last = t;
        const double frac = total ? (double)done / (double)total : 1.0;
        const double el = t - p->t0;
        char line[32];
        int n = (int)(frac * 30.0);
        memset(line, '#', (size_t)n);
        memset(line + n, '.', (size_t)(30 - n));
        line[30] = '\0';
        fprintf(stderr, "\r%s: [%s] %5.1f%%  %.2f of %.2f GB  %.0f MB/s ", p->tool, line, 100.0 * frac,
                (double)done / 1e9, (double)total / 1e9, el > 0 ? (double)done / el / 1e6 : 0.0);
        fflush(stderr);
    }
    return cli_sigint_seen();
}

void cli_progress_end(const cli_progress *p)
{
    if (p->show)
        fputc('\n', stderr);
}

double cli_progress_elapsed(const cli_progress *p) { return now_s() - p->t0; }
