/*
 * anvil/status.h: result codes and the last error message.
 *
 * Every fallible anvil function returns an anvil_status. On failure it also
 * leaves a message that anvil_last_error() returns until the next failure on
 * the same thread. The message is plain text meant for users ("unsupported
 * architecture 'FalconForCausalLM' ..."), possibly behind "context: "
 * prefixes that say which file or tensor it is about; it never starts with
 * a source location. Where in anvil's source the error was raised
 * ("src/models/registry.c:36") is kept apart, for bug reports:
 * anvil_last_error_origin(). The anvil tool prints it when the environment
 * variable ANVIL_DEBUG is set (non-empty and not "0").
 *
 *     anvil_status st = anvil_runtime_load(dir, &opts, &rt);
 *     if (st != ANVIL_OK)
 *         fprintf(stderr, "error: %s\n", anvil_last_error());
 */
#ifndef ANVIL_STATUS_H
#define ANVIL_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum anvil_status {
    ANVIL_OK = 0,
    ANVIL_ERR_INVALID_ARG,  /* a caller passed a value outside the contract */
    ANVIL_ERR_FORMAT,       /* a file or request is malformed */
    ANVIL_ERR_IO,           /* open/read/mmap failed */
    ANVIL_ERR_OOM,          /* an allocation failed */
    ANVIL_ERR_UNSUPPORTED,  /* valid input that anvil does not implement */
    ANVIL_ERR_NOT_FOUND,    /* a named thing (tensor, file, model) is missing */
    ANVIL_ERR_CUDA,         /* a CUDA or cuBLAS call failed */
    ANVIL_ERR_CAPACITY,     /* a fixed limit (KV blocks, max tokens) is exceeded */
    ANVIL_ERR_INTERNAL,     /* a bug in anvil */
    ANVIL_ERR_CANCELLED,    /* the caller asked to stop (a load's progress callback, a deadline) */
    ANVIL_ERR_COMM,         /* a collective or message between ranks failed (anvil/comm.h) */
} anvil_status;

/* A short constant name for a status ("ANVIL_ERR_FORMAT"); never NULL. */
const char *anvil_status_name(anvil_status st);

/*
 * The message of the last failure on the calling thread: plain text, without
 * a source location ("context: text" when a caller added context). Empty
 * string when there was none. The pointer stays valid until the next anvil
 * call on this thread.
 */
const char *anvil_last_error(void);

/*
 * Where that last failure was raised in anvil's source, "src/dir/file.c:LINE"
 * (a path from the source tree's root), for logs and bug reports; context
 * added on the way up keeps it. Empty string when there was no failure. The
 * pointer stays valid until the next anvil call on this thread.
 */
const char *anvil_last_error_origin(void);

/* The status of that last failure (ANVIL_OK when none). */
anvil_status anvil_last_status(void);

/* Forgets the last error of the calling thread. */
void anvil_clear_error(void);

#ifdef __cplusplus
}
#endif
#endif
