/*
 * Internal error helpers: set the thread's last error and return a status in
 * one expression. The message is plain text for users (anvil_last_error());
 * the file:line that raised it is kept apart (anvil_last_error_origin()),
 * so messages never start with a source path.
 *
 *     CHECK(n >= 0, ANVIL_ERR_INVALID_ARG, "n must be >= 0, got %d", n);
 *     TRY(anvil_st_open(path, &st));
 *
 * In functions that must clean up, use the _GOTO forms with a local
 * `anvil_status st` and one cleanup label:
 *
 *     CHECK_GOTO(p != NULL, ANVIL_ERR_OOM, fail, "out of memory");
 *     TRY_GOTO(parse(x), fail);
 */
#ifndef ANVIL_CORE_ERROR_H
#define ANVIL_CORE_ERROR_H

#include "anvil/status.h"

/* Records the error (message from fmt, origin "file:line" with file as a
 * path from the source tree's root: "src/models/registry.c") and returns code. The arguments may point into
 * anvil_last_error(): they are read before it is overwritten. */
anvil_status anvil_error_set(anvil_status code, const char *file, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* Prepends "context: " to the thread's current message, keeps the status
 * and the origin, and returns the status. Used to say which file or tensor a lower error is about. */
anvil_status anvil_error_wrap(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

#define ANVIL_FAIL(code, ...) anvil_error_set((code), __FILE__, __LINE__, __VA_ARGS__)

#define CHECK(cond, code, ...)                      \
    do {                                            \
        if (!(cond))                                \
            return ANVIL_FAIL((code), __VA_ARGS__); \
    } while (0)

#define TRY(expr)                        \
    do {                                 \
        anvil_status try_st_ = (expr);   \
        if (try_st_ != ANVIL_OK)         \
            return try_st_;              \
    } while (0)

#define CHECK_GOTO(cond, code, label, ...)       \
    do {                                         \
        if (!(cond)) {                           \
            st = ANVIL_FAIL((code), __VA_ARGS__); \
            goto label;                          \
        }                                        \
    } while (0)

#define TRY_GOTO(expr, label)    \
    do {                         \
        st = (expr);             \
        if (st != ANVIL_OK)      \
            goto label;          \
    } while (0)

#endif
