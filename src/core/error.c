/* The thread's last error: a fixed buffer per thread, so that recording an
 * error never allocates (it is often an out-of-memory error). */
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define ERROR_MSG_MAX 1024

static _Thread_local char last_msg[ERROR_MSG_MAX];
static _Thread_local anvil_status last_code = ANVIL_OK;

const char *anvil_status_name(anvil_status st)
{
    switch (st) {
    case ANVIL_OK: return "ANVIL_OK";
    case ANVIL_ERR_INVALID_ARG: return "ANVIL_ERR_INVALID_ARG";
    case ANVIL_ERR_FORMAT: return "ANVIL_ERR_FORMAT";
    case ANVIL_ERR_IO: return "ANVIL_ERR_IO";
    case ANVIL_ERR_OOM: return "ANVIL_ERR_OOM";
    case ANVIL_ERR_UNSUPPORTED: return "ANVIL_ERR_UNSUPPORTED";
    case ANVIL_ERR_NOT_FOUND: return "ANVIL_ERR_NOT_FOUND";
    case ANVIL_ERR_CUDA: return "ANVIL_ERR_CUDA";
    case ANVIL_ERR_CAPACITY: return "ANVIL_ERR_CAPACITY";
    case ANVIL_ERR_INTERNAL: return "ANVIL_ERR_INTERNAL";
    }
    return "ANVIL_ERR_UNKNOWN";
}

const char *anvil_last_error(void) { return last_msg; }

anvil_status anvil_last_status(void) { return last_code; }

void anvil_clear_error(void)
{
    last_msg[0] = '\0';
    last_code = ANVIL_OK;
}

anvil_status anvil_error_set(anvil_status code, const char *file, int line, const char *fmt, ...)
{
    /* Keep only the path below src/ (or the base name) to keep messages short. */
    const char *short_file = strstr(file, "src/");
    if (short_file == NULL) {
        short_file = strrchr(file, '/');
        short_file = short_file ? short_file + 1 : file;
    }
    int n = snprintf(last_msg, sizeof last_msg, "%s:%d: ", short_file, line);
    if (n < 0 || n >= (int)sizeof last_msg)
        n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_msg + n, sizeof last_msg - (size_t)n, fmt, ap);
    va_end(ap);
    last_code = code;
    return code;
}

anvil_status anvil_error_wrap(const char *fmt, ...)
{
    char prefix[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    /* Shift the old message right to make room for "prefix: ". */
    size_t plen = strlen(prefix);
    if (plen + 2 >= sizeof last_msg)
        plen = sizeof last_msg - 3;
    size_t olen = strlen(last_msg);
    if (plen + 2 + olen >= sizeof last_msg)
        olen = sizeof last_msg - plen - 3;
    memmove(last_msg + plen + 2, last_msg, olen);
    memcpy(last_msg, prefix, plen);
    last_msg[plen] = ':';
    last_msg[plen + 1] = ' ';
    last_msg[plen + 2 + olen] = '\0';
    return last_code;
}
