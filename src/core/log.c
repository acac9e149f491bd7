#include "anvil/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* -1 until first use, when ANVIL_LOG (if set) decides the starting level. */
static atomic_int log_level = -1;

static int level_from_env(void)
{
    const char *v = getenv("ANVIL_LOG");
    if (v == NULL) return ANVIL_LOG_WARN;
    if (strcmp(v, "error") == 0) return ANVIL_LOG_ERROR;
    if (strcmp(v, "info") == 0) return ANVIL_LOG_INFO;
    if (strcmp(v, "debug") == 0) return ANVIL_LOG_DEBUG;
    return ANVIL_LOG_WARN;
}

void anvil_log_set_level(anvil_log_level level) { atomic_store(&log_level, (int)level); }

anvil_log_level anvil_log_get_level(void)
{
    int lv = atomic_load(&log_level);
    if (lv < 0) {
        lv = level_from_env();
        atomic_store(&log_level, lv);
    }
    return (anvil_log_level)lv;
}

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
