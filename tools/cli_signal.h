/*
 * Ctrl-C for the commands that keep what they did so far (anvil run, anvil
 * bench): while they load, a SIGINT exits at once with 130; once they have
 * work to keep, the first SIGINT only raises a flag the command polls (it
 * cancels, prints what it has and exits 130), and a second exits at once.
 *
 *   cli_sigint_install("anvil run");   loading: Ctrl-C exits 130
 *   ...
 *   cli_sigint_keep();                 generating: Ctrl-C sets cli_sigint_seen()
 *   while (... && !cli_sigint_seen()) ...
 */
#ifndef ANVIL_TOOLS_CLI_SIGNAL_H
#define ANVIL_TOOLS_CLI_SIGNAL_H

/* Takes SIGINT; tool names the command in the messages ("anvil run: interrupted"). */
void cli_sigint_install(const char *tool);

/* From now on the first SIGINT is the command's to handle. */
void cli_sigint_keep(void);

/* 1 once a SIGINT came after cli_sigint_keep. */
int cli_sigint_seen(void);

#endif
