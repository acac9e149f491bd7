#include "core/threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* About 50-100 us of spinning before a worker sleeps. */
#define SPIN_ITERS 4000

struct anvil_threadpool {
    int n_threads;
    pthread_t *threads;     /* [n_threads - 1] workers; the caller is thread 0 */
    pthread_mutex_t mutex;
    pthread_cond_t wake;
    atomic_uint generation; /* bumped once per job */
    atomic_int pending;     /* workers still running the current job */
    atomic_int stop;
    anvil_task_fn fn;
    void *ctx;
};

typedef struct worker_arg {
    anvil_threadpool *tp;
    int ith;
} worker_arg;

int anvil_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void *worker_main(void *p)
{
    worker_arg *arg = p;
    anvil_threadpool *tp = arg->tp;
    int ith = arg->ith;
    free(arg);
    unsigned seen = 0;
    for (;;) {
        unsigned gen = atomic_load_explicit(&tp->generation, memory_order_acquire);
        for (int i = 0; gen == seen && i < SPIN_ITERS; i++) {
            CPU_RELAX();
            gen = atomic_load_explicit(&tp->generation, memory_order_acquire);
        }
        if (gen == seen) {
            pthread_mutex_lock(&tp->mutex);
            while ((gen = atomic_load(&tp->generation)) == seen && !atomic_load(&tp->stop))
                pthread_cond_wait(&tp->wake, &tp->mutex);
            pthread_mutex_unlock(&tp->mutex);
        }
        if (atomic_load(&tp->stop))
            return NULL;
        seen = gen;
        tp->fn(tp->ctx, ith, tp->n_threads);
        atomic_fetch_sub_explicit(&tp->pending, 1, memory_order_acq_rel);
    }
}

anvil_status anvil_threadpool_create(int n_threads, anvil_threadpool **out)
{
    *out = NULL;
    if (n_threads <= 0)
        n_threads = anvil_cpu_count();
    anvil_threadpool *tp = calloc(1, sizeof *tp);
    CHECK(tp != NULL, ANVIL_ERR_OOM, "out of memory");
    tp->n_threads = n_threads;
    pthread_mutex_init(&tp->mutex, NULL);
    pthread_cond_init(&tp->wake, NULL);
    if (n_threads > 1) {
        tp->threads = calloc((size_t)n_threads - 1, sizeof *tp->threads);
        if (tp->threads == NULL) {
            anvil_threadpool_free(tp);
            return ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
        }
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *arg = malloc(sizeof *arg);
        if (arg != NULL) {
            arg->tp = tp;
            arg->ith = i;
        }
        if (arg == NULL || pthread_create(&tp->threads[i - 1], NULL, worker_main, arg) != 0) {
            free(arg);
            tp->n_threads = i; /* join only the ones started */
            anvil_threadpool_free(tp);
            return ANVIL_FAIL(ANVIL_ERR_OOM, "cannot start thread %d of %d", i, n_threads);
        }
    }
    *out = tp;
    return ANVIL_OK;
}

void anvil_threadpool_free(anvil_threadpool *tp)
{
    if (tp == NULL)
        return;
    pthread_mutex_lock(&tp->mutex);
    atomic_store(&tp->stop, 1);
    atomic_fetch_add(&tp->generation, 1);
    pthread_cond_broadcast(&tp->wake);
    pthread_mutex_unlock(&tp->mutex);
    for (int i = 1; i < tp->n_threads; i++)
        pthread_join(tp->threads[i - 1], NULL);
    pthread_cond_destroy(&tp->wake);
    pthread_mutex_destroy(&tp->mutex);
    free(tp->threads);
    free(tp);
}

int anvil_threadpool_size(const anvil_threadpool *tp) { return tp ? tp->n_threads : 1; }

void anvil_threadpool_run(anvil_threadpool *tp, anvil_task_fn fn, void *ctx)
{
    if (tp == NULL || tp->n_threads == 1) {
        fn(ctx, 0, 1);
        return;
    }
    tp->fn = fn;
    tp->ctx = ctx;
    atomic_store(&tp->pending, tp->n_threads - 1);
    pthread_mutex_lock(&tp->mutex);
    atomic_fetch_add_explicit(&tp->generation, 1, memory_order_release);
    pthread_cond_broadcast(&tp->wake);
    pthread_mutex_unlock(&tp->mutex);
    fn(ctx, 0, tp->n_threads);
    /* Yield now and then: with more threads than free cores a worker may be
     * waiting for this core. */
    for (unsigned spins = 0; atomic_load_explicit(&tp->pending, memory_order_acquire) > 0; spins++) {
        if ((spins & 1023u) == 1023u)
            sched_yield();
        else
            CPU_RELAX();
    }
}
