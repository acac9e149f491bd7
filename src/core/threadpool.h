/*
 * A fork-join thread pool: anvil_threadpool_run() calls fn(ctx, ith, nth) on
 * every thread of the pool (the caller is thread 0) and returns when all
 * have finished. Kernels split their work by ith/nth themselves, so a given
 * output element is always computed by the same code whatever the split.
 *
 * Workers spin briefly between jobs (a forward step launches a few hundred
 * short jobs back to back), then sleep on a condition variable.
 *
 * Not reentrant: one run at a time per pool (the runtime owns its pool).
 */
#ifndef ANVIL_CORE_THREADPOOL_H
#define ANVIL_CORE_THREADPOOL_H

#include "anvil/status.h"

typedef struct anvil_threadpool anvil_threadpool;

typedef void (*anvil_task_fn)(void *ctx, int ith, int nth);

/* n_threads <= 0 means one per online CPU. *out is NULL on failure. */
anvil_status anvil_threadpool_create(int n_threads, anvil_threadpool **out);

/* Stops and joins the workers. NULL is a no-op. */
void anvil_threadpool_free(anvil_threadpool *tp);

int anvil_threadpool_size(const anvil_threadpool *tp);

/* Runs fn on all threads and waits. tp may be NULL: fn(ctx, 0, 1). */
void anvil_threadpool_run(anvil_threadpool *tp, anvil_task_fn fn, void *ctx);

/* The number of online CPUs (at least 1). */
int anvil_cpu_count(void);

#endif
