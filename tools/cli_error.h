/* How the anvil tool reports a failed library call: one line,
 * "<who>: <anvil_last_error()>", and where in the source it was raised only
 * when ANVIL_DEBUG asks for it (users read messages, developers origins). */
#ifndef ANVIL_TOOLS_CLI_ERROR_H
#define ANVIL_TOOLS_CLI_ERROR_H

/* 1 when the environment variable ANVIL_DEBUG is set, non-empty and not "0". */
int anvil_cli_debug(void);

/*
 * Prints "<prefix>: <message>\n" to stderr, prefix formatted from fmt (e.g.
 * "anvil run", or "anvil serve: --model %s"), message the thread's
 * anvil_last_error(). With anvil_cli_debug(), a second line
 * "<prefix>: (raised at src/dir/file.c:LINE)" follows.
 */
void anvil_cli_report(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

#endif
