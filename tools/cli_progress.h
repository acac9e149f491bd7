/*
 * The progress bar of anvil build and anvil refit: on stderr when it is a
 * terminal, at most ten times a second; the first Ctrl-C cancels the work
 * (the callback returns nonzero, the library stops with
 * ANVIL_ERR_CANCELLED and removes its partial output), a second exits.
 *
 *     cli_progress p;
 *     cli_progress_start(&p, "anvil build", show);
 *     o.progress = cli_progress_cb;
 *     o.progress_user = &p;
 *     st = anvil_build_engine(...);
 *     cli_progress_end(&p);
 */
#ifndef ANVIL_TOOLS_CLI_PROGRESS_H
#define ANVIL_TOOLS_CLI_PROGRESS_H

#include <stddef.h>

typedef struct cli_progress {
    const char *tool;
    int show;                 /* draw the bar (stderr is a terminal and not --no-progress) */
    double t0, last;
} cli_progress;

/* Starts the clock and takes SIGINT (cli_signal.h). show: the caller's
 * wish; the bar shows only when stderr is also a terminal. */
void cli_progress_start(cli_progress *p, const char *tool, int show);

/* The library's progress callback (user: the cli_progress). */
int cli_progress_cb(void *user, size_t done, size_t total);

/* Ends the bar's line. */
void cli_progress_end(const cli_progress *p);

/* Seconds since cli_progress_start. */
double cli_progress_elapsed(const cli_progress *p);

#endif
