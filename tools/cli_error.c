/* The anvil tool's report of a library error; see cli_error.h. */
#include "cli_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/status.h"
#include "cli_env.h"

int anvil_cli_debug(void) { return cli_env_debug(); }

void anvil_cli_report(const char *fmt, ...)
{
    char prefix[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    const char *msg = anvil_last_error();
    fprintf(stderr, "%s: %s\n", prefix, msg[0] ? msg : "unknown error");
    const char *origin = anvil_last_error_origin();
    if (anvil_cli_debug() && origin[0])
        fprintf(stderr, "%s: (raised at %s)\n", prefix, origin);
}
