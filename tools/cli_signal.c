/* Ctrl-C for commands that keep their partial work; see cli_signal.h. */
#include "cli_signal.h"

#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

/* The process's one SIGINT disposition; a handler can only reach statics. */
static atomic_int keep;   /* cli_sigint_keep was called */
static atomic_int seen;   /* SIGINTs since then */
static char message[96];  /* "\n<tool>: interrupted\n", written by the handler */

static void on_sigint(int sig)
{
    (void)sig;
    if (atomic_load(&keep) && atomic_fetch_add(&seen, 1) == 0)
        return; /* the command cancels and prints what it has */
    ssize_t w = write(STDERR_FILENO, message, strlen(message));
    (void)w;
    _exit(130);
}

void cli_sigint_install(const char *tool)
{
    size_t n = strlen(tool);
    if (n > sizeof message - 16)
        n = sizeof message - 16;
    message[0] = '\n';
    memcpy(message + 1, tool, n);
    memcpy(message + 1 + n, ": interrupted\n", 15);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
}

void cli_sigint_keep(void) { atomic_store(&keep, 1); }

int cli_sigint_seen(void) { return atomic_load(&seen) > 0; }
