/* The thread's last error: fixed buffers per thread, so that recording an
 * error never allocates (it is often an out-of-memory error). The message is
 * what users read; the origin (file:line) is kept apart, for developers. */
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define ERROR_MSG_MAX 1024
#define ERROR_ORIGIN_MAX 256

static _Thread_local char last_msg[ERROR_MSG_MAX];
static _Thread_local char last_origin[ERROR_ORIGIN_MAX];
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
    case ANVIL_ERR_CANCELLED: return "ANVIL_ERR_CANCELLED";
    case ANVIL_ERR_COMM: return "ANVIL_ERR_COMM";
    }
    return "ANVIL_ERR_UNKNOWN";
}

const char *anvil_last_error(void) { return last_msg; }

const char *anvil_last_error_origin(void) { return last_origin; }

anvil_status anvil_last_status(void) { return last_code; }

void anvil_clear_error(void)
{
    last_msg[0] = '\0';
    last_origin[0] = '\0';
    last_code = ANVIL_OK;
}

/* file as a path from the source tree's root ("src/models/registry.c",
 * "tools/cmd_run.c"): the build gives __FILE__ as an absolute path, and the
 * root is what precedes "src/core/error.c" in this file's own. Files from
 * elsewhere keep their base name. */
static const char *source_relative(const char *file)
{
    static const char self[] = "src/core/error.c";
    const char *me = __FILE__;
    size_t own = strlen(me), tail = sizeof self - 1;
    if (own >= tail && strcmp(me + own - tail, self) == 0 && strncmp(file, me, own - tail) == 0)
        return file + (own - tail);
    const char *base = strrchr(file, '/');
    return base ? base + 1 : file;
}

anvil_status anvil_error_set(anvil_status code, const char *file, int line, const char *fmt, ...)
{
    /* Format apart first: callers may pass anvil_last_error() itself as an
     * argument ("cannot load '%s': %s"), which must be read before the
     * buffer is overwritten. */
    char msg[ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        msg[0] = '\0';
    memcpy(last_msg, msg, strlen(msg) + 1);

    snprintf(last_origin, sizeof last_origin, "%s:%d", file ? source_relative(file) : "?", line);
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
