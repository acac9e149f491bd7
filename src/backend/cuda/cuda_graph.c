/*
 * Step graphs on CUDA (backend.h: graph_begin / graph_end).
 *
 * A decode step launches a few hundred small kernels; from the host each
 * launch costs microseconds, which for a small model is longer than the
 * kernel itself and leaves gaps on the GPU between kernels even for a large
 * one. A CUDA graph of the whole step is launched with one call.
 *
 * Per key (a step shape, chosen by the runtime) the backend goes through:
 *   seen once  -> the ops run as usual: this first run sizes the scratch
 *                 buffers, fills the matmul plan cache and the occupancy
 *                 answers, none of which may happen during a capture
 *                 (cudaMalloc after a stream synchronize, cuBLASLt's
 *                 heuristic);
 *   second     -> the ops are captured on the stream (thread-local mode)
 *                 and instantiated, and the graph launched;
 *   later      -> the graph is launched.
 * A capture that fails (an op that synchronizes, say) is dropped and the
 * ops run as usual; after MAX_FAILS failures the key is left to run as
 * usual for good. When a scratch buffer is reallocated or the knobs
 * change, every graph is dropped (they hold the old pointers and choices)
 * and the keys start over.
 *
 * A backend made with no_cuda_graphs (anvil_backend_config) keeps graphs
 * off (to compare, or to rule them out).
 */
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"

#define MAX_GRAPHS 256
#define MAX_FAILS 2

enum { G_SEEN = 1, G_RECORDED = 2, G_OFF = 3 };

typedef struct graph_entry {
    uint64_t key;
    int state;
    int fails;
    cudaGraphExec_t exec;
} graph_entry;

struct anvil_cuda_graphs {
    int n;
    graph_entry e[MAX_GRAPHS];
};

static unsigned long long g_recorded, g_replayed;

void anvil_cuda_graph_counts(unsigned long long *recorded, unsigned long long *replayed)
{
    *recorded = __atomic_load_n(&g_recorded, __ATOMIC_RELAXED);
    *replayed = __atomic_load_n(&g_replayed, __ATOMIC_RELAXED);
}

void anvil_cuda_graphs_reset(anvil_cuda_backend *cb)
{
    anvil_cuda_graphs *g = cb->graphs;
    if (g == NULL)
        return;
    for (int i = 0; i < g->n; i++)
        if (g->e[i].exec != NULL)
            (void)cudaGraphExecDestroy(g->e[i].exec);
    g->n = 0;
}

void anvil_cuda_graphs_free(anvil_cuda_backend *cb)
{
    anvil_cuda_graphs_reset(cb);
    free(cb->graphs);
    cb->graphs = NULL;
}

static graph_entry *find(anvil_cuda_graphs *g, uint64_t key)
{
    for (int i = 0; i < g->n; i++)
        if (g->e[i].key == key)
            return &g->e[i];
    return NULL;
}

anvil_status anvil_cuda_graph_begin(anvil_backend *be, uint64_t key, int *action)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    *action = ANVIL_GRAPH_RUN;
    if (!cb->graphs_enabled)
        return ANVIL_OK;
    if (cb->graphs == NULL) {
        cb->graphs = calloc(1, sizeof *cb->graphs);
        CHECK(cb->graphs != NULL, ANVIL_ERR_OOM, "cuda graphs: out of memory");
    }
    anvil_cuda_graphs *g = cb->graphs;
    graph_entry *e = find(g, key);
    if (e == NULL) {
        if (g->n < MAX_GRAPHS) /* past that, keys just run as usual */
            g->e[g->n++] = (graph_entry){.key = key, .state = G_SEEN};
        return ANVIL_OK;
    }
    TRY(anvil_cuda_use(cb));
    if (e->state == G_RECORDED) {
        CUDA_TRY(cudaGraphLaunch(e->exec, cb->stream), "cuda graph launch");
        anvil_cuda_fence(cb);
        __atomic_add_fetch(&g_replayed, 1, __ATOMIC_RELAXED);
        *action = ANVIL_GRAPH_REPLAYED;
        return ANVIL_OK;
    }
    if (e->state != G_SEEN)
        return ANVIL_OK;
    CUDA_TRY(cudaStreamBeginCapture(cb->stream, cudaStreamCaptureModeThreadLocal), "cuda graph capture");
    cb->capturing = 1;
    *action = ANVIL_GRAPH_RECORDING;
    return ANVIL_OK;
}

anvil_status anvil_cuda_graph_end(anvil_backend *be, uint64_t key, anvil_status ops_status, int *ran)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    *ran = 0;
    CHECK(cb->capturing, ANVIL_ERR_INTERNAL, "cuda graph end without a capture");
    cb->capturing = 0;
    TRY(anvil_cuda_use(cb));
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(cb->stream, &graph);
    cudaGraphExec_t exec = NULL;
    if (e == cudaSuccess && ops_status == ANVIL_OK && graph != NULL)
        e = cudaGraphInstantiate(&exec, graph, 0);
    if (graph != NULL)
        (void)cudaGraphDestroy(graph);
    graph_entry *ge = cb->graphs ? find(cb->graphs, key) : NULL;
    if (e != cudaSuccess || ops_status != ANVIL_OK || exec == NULL || ge == NULL) {
        /* dropped: the caller runs the ops as usual */
        (void)cudaGetLastError();
        if (exec != NULL)
            (void)cudaGraphExecDestroy(exec);
        if (ge != NULL && ++ge->fails >= MAX_FAILS)
            ge->state = G_OFF;
        return ANVIL_OK;
    }
    ge->exec = exec;
    ge->state = G_RECORDED;
    __atomic_add_fetch(&g_recorded, 1, __ATOMIC_RELAXED);
    CUDA_TRY(cudaGraphLaunch(exec, cb->stream), "cuda graph launch");
    anvil_cuda_fence(cb);
    *ran = 1;
    return ANVIL_OK;
}
