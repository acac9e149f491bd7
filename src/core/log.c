#include "anvil/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

/* Warnings and errors until someone sets a level (the anvil command, from
 * ANVIL_LOG: the library reads no environment). */
static atomic_int log_level = ANVIL_LOG_WARN;

void anvil_log_set_level(anvil_log_level level) { atomic_store(&log_level, (int)level); }

anvil_log_level anvil_log_get_level(void) { return (anvil_log_level)atomic_load(&log_level); }

void anvil_log(anvil_log_level level, const char *fmt, ...)
{
    if ((int)level > (int)anvil_log_get_level())
        return;
    static const char *const names[] = {"error", "warn", "info", "debug"};
    char line[2048];
    int n = snprintf(line, sizeof line, "anvil %s: ", names[level]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    /* One fputs per line, so lines from different threads do not interleave. */
    size_t len = strlen(line);
    line[len] = '\n';
    line[len + 1] = '\0';
    fputs(line, stderr);
}
