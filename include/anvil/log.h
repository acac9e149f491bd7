/*
 * anvil/log.h: leveled logging to stderr.
 *
 * The level is process-wide (like a verbosity flag); it starts at
 * ANVIL_LOG_WARN. The library reads no environment: the anvil command sets
 * the level from its ANVIL_LOG variable (error, warn, info, debug).
 */
#ifndef ANVIL_LOG_H
#define ANVIL_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum anvil_log_level {
    ANVIL_LOG_ERROR = 0,
    ANVIL_LOG_WARN = 1,
    ANVIL_LOG_INFO = 2,
    ANVIL_LOG_DEBUG = 3,
} anvil_log_level;

/* Sets the level below which messages are dropped. Thread-safe. */
void anvil_log_set_level(anvil_log_level level);
anvil_log_level anvil_log_get_level(void);

/* Logs one line (a newline is added). Thread-safe. */
void anvil_log(anvil_log_level level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#ifdef __cplusplus
}
#endif
#endif
