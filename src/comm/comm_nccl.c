/*
 * The NCCL communicator (comm_nccl.h): the seam's calls on device buffers
 * of one GPU a rank, built into the CUDA module only.
 *
 * Every call is enqueued on the communicator's own CUDA stream (the
 * runtime drains the backend's queue before a collective, so the buffers
 * hold what the step wrote) and then waited for under the communicator's
 * deadline, as comm_mpi.c waits for MPI: the stream is polled
 * (cudaStreamQuery) together with ncclCommGetAsyncError, spinning first,
 * then napping. A call that does not finish within the timeout aborts the
 * NCCL communicator (ncclCommAbort: its kernels stop waiting for the rank
 * that is gone) and fails with ANVIL_ERR_COMM; comm.c then keeps the
 * communicator broken, and the runtime's program ends the job (the boot
 * communicator's MPI_Abort). The communicator is made non-blocking
 * (ncclConfig_t.blocking 0), so that its initialization waits under the
 * same deadline rather than for ever.
 *
 * Sums are NCCL's (ncclSum in the element type): every rank gets the same
 * bits (NCCL's ring and tree reduce once and broadcast the result), but
 * not comm_mpi.c's rank-order f32 sum rounded once: with more than two
 * ranks a bf16/f16 sum is rounded at each step of NCCL's order
 * (docs/parallel.md).
 *
 * NCCL is opened at run time (dlopen of libnccl.so.2 on the first call),
 * not linked: the CUDA module must load on a machine without NCCL (one
 * GPU needs none), and a --tp job there fails with a message naming the
 * library instead of the whole CUDA backend failing to load.
 *
 * Splits (pipeline stages) go through ncclCommSplit where the library has
 * it, else through a new communicator from a unique id made by the part's
 * first rank and sent through this one. Either way the ranks' colors and
 * keys are gathered first under the deadline (comm_plan.c ranks them), as
 * comm_mpi.c does before MPI_Comm_split.
 *
 * Sums up to the size anvil_comm_set_all_reduce gave may run one-shot or
 * two-shot over CUDA IPC peer buffers instead (comm_ipc.c), chosen by size
 * (comm_plan.c: anvil_ar_pick); their handles are exchanged through this
 * communicator's own all-gather.
 *
 * NCCL_NVLS_ENABLE=0 is set before NCCL reads its environment, always:
 * NVLink SHARP (multicast) needs a fabric manager setup the GPU machines
 * this runs on do not have, and NCCL then fails or hangs at init.
 */
#include "comm/comm_nccl.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <nccl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "anvil/log.h"
#include "comm/comm_ipc.h"
#include "comm/comm_plan.h"
#include "core/error.h"

/* NCCL's entry points, found by dlsym (nccl_load); the names below call
 * through them, so the code reads as plain NCCL. */
#define NCCL_FUNCS(X)                                                                          \
    X(AllGather) X(AllReduce) X(Broadcast) X(CommAbort) X(CommDestroy) X(CommGetAsyncError)    \
    X(CommInitRankConfig) X(GetErrorString) X(GetLastError) X(GetUniqueId) X(Recv) X(Send)
#define NCCL_PTR(f) static __typeof__(&nccl##f) nccl_p_##f;
NCCL_FUNCS(NCCL_PTR)
#undef NCCL_PTR
#define ncclAllGather          nccl_p_AllGather
#define ncclAllReduce          nccl_p_AllReduce
#define ncclBroadcast          nccl_p_Broadcast
#define ncclCommAbort          nccl_p_CommAbort
#define ncclCommDestroy        nccl_p_CommDestroy
#define ncclCommGetAsyncError  nccl_p_CommGetAsyncError
#define ncclCommInitRankConfig nccl_p_CommInitRankConfig
#define ncclGetErrorString     nccl_p_GetErrorString
#define ncclGetLastError       nccl_p_GetLastError
#define ncclGetUniqueId        nccl_p_GetUniqueId
#define ncclRecv               nccl_p_Recv
#define ncclSend               nccl_p_Send

/* Optional: NCCL 2.18 and later (NULL: splits take a new unique id). */
static __typeof__(&ncclCommSplit) nccl_p_CommSplit;

static pthread_once_t nccl_once = PTHREAD_ONCE_INIT;
static char nccl_load_error[512]; /* empty: loaded */

static void nccl_load_once(void)
{
    /* the library stays open for the process: NCCL keeps threads of its own */
    void *h = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (h == NULL)
        h = dlopen("libnccl.so", RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        const char *e = dlerror();
        snprintf(nccl_load_error, sizeof nccl_load_error,
                 "NCCL could not be loaded (%s): tensor parallelism on CUDA needs libnccl.so.2 (the NCCL "
                 "package, or pip's nvidia-nccl-cu13) where the dynamic loader finds it (LD_LIBRARY_PATH)",
                 e ? e : "libnccl.so.2 not found");
        return;
    }
#define NCCL_SYM(f)                                                                                     \
    if (nccl_load_error[0] == 0 && (*(void **)&nccl_p_##f = dlsym(h, "nccl" #f)) == NULL)              \
        snprintf(nccl_load_error, sizeof nccl_load_error, "NCCL was loaded but lacks nccl" #f           \
                 " (a version older than this build's nccl.h %d.%d?)", NCCL_MAJOR, NCCL_MINOR);
    NCCL_FUNCS(NCCL_SYM)
#undef NCCL_SYM
    *(void **)&nccl_p_CommSplit = dlsym(h, "ncclCommSplit");
}

static anvil_status nccl_load(void)
{
    pthread_once(&nccl_once, nccl_load_once);
    CHECK(nccl_load_error[0] == 0, ANVIL_ERR_UNSUPPORTED, "%s", nccl_load_error);
    return ANVIL_OK;
}

typedef struct nccl_impl {
    ncclComm_t comm;     /* NULL once aborted */
    cudaStream_t stream; /* the collectives' own */
    int device;
    void *one;           /* [1] float on the device: the barrier's all-reduce */
    /* the sums (anvil_comm_set_all_reduce): the mode, and the IPC buffers
     * for one-shot / two-shot (NULL: NCCL for every size) */
    anvil_all_reduce_algo ar_mode;
    anvil_ipc_ar *ipc;
} nccl_impl;

_Static_assert(sizeof(ncclUniqueId) == ANVIL_NCCL_ID_BYTES, "NCCL's unique id changed size");

static void nvls_off(void)
{
    /* the library's one environment write: NCCL reads only its
     * environment for this (docs/parallel.md, "NCCL") */
    setenv("NCCL_NVLS_ENABLE", "0", 1);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static anvil_status nccl_fail(ncclResult_t r, ncclComm_t comm, const char *what)
{
    const char *last = comm != NULL ? ncclGetLastError(comm) : NULL;
    return ANVIL_FAIL(ANVIL_ERR_COMM, "%s: %s%s%s", what, ncclGetErrorString(r), last && *last ? ": " : "",
                      last && *last ? last : "");
}

/* Waits for what is enqueued on m's stream (and, with init, for the
 * communicator's initialization) to finish, fail, or pass the deadline:
 * then the NCCL communicator is aborted. */
static anvil_status wait_done(nccl_impl *m, double timeout_s, int stream_too, const char *what)
{
    const double t0 = now_s();
    for (int polls = 0;; polls++) {
        ncclResult_t ar = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(m->comm, &ar);
        if (r != ncclSuccess)
            ar = r;
        if (ar != ncclSuccess && ar != ncclInProgress) {
            const anvil_status st = nccl_fail(ar, m->comm, what);
            ncclCommAbort(m->comm);
            m->comm = NULL;
            return st;
        }
        int done = ar == ncclSuccess;
        if (done && stream_too) {
            const cudaError_t q = cudaStreamQuery(m->stream);
            if (q != cudaSuccess && q != cudaErrorNotReady) {
                (void)cudaGetLastError();
                return ANVIL_FAIL(ANVIL_ERR_COMM, "%s: %s (%s)", what, cudaGetErrorString(q), cudaGetErrorName(q));
            }
            done = q == cudaSuccess;
        }
        if (done)
            return ANVIL_OK;
        const double waited = now_s() - t0;
        if (timeout_s > 0 && waited > timeout_s) {
            ncclCommAbort(m->comm); /* its kernels stop waiting for the rank that is gone */
            m->comm = NULL;
            return ANVIL_FAIL(ANVIL_ERR_COMM,
                              "%s: no answer within %g s (a rank died, was stopped, or is not running the same "
                              "steps; the NCCL communicator was aborted)",
                              what, timeout_s);
        }
        if (polls < 2000)
            continue;
        struct timespec nap = {0, waited < 1.0 ? 20000 : 1000000};
        nanosleep(&nap, NULL);
    }
}

/* Enqueues `call` (an ncclResult_t expression) on m and waits for it. */
#define NCCL_RUN(c, m, call, what)                                              \
    do {                                                                        \
        CHECK((m)->comm != NULL, ANVIL_ERR_COMM, "%s: the NCCL communicator was aborted", what); \
        TRY(cuda_device(m));                                                    \
        ncclResult_t nccl_r_ = (call);                                          \
        if (nccl_r_ != ncclSuccess && nccl_r_ != ncclInProgress)                \
            return nccl_fail(nccl_r_, (m)->comm, what);                         \
        return wait_done(m, (c)->timeout_s, 1, what);                           \
    } while (0)

static anvil_status cuda_device(const nccl_impl *m)
{
    const cudaError_t e = cudaSetDevice(m->device);
    CHECK(e == cudaSuccess, ANVIL_ERR_CUDA, "cudaSetDevice(%d): %s", m->device, cudaGetErrorString(e));
    return ANVIL_OK;
}

static ncclDataType_t nccl_type(anvil_dtype dt)
{
    return dt == ANVIL_DTYPE_BF16 ? ncclBfloat16 : dt == ANVIL_DTYPE_F16 ? ncclFloat16 : ncclFloat32;
}

static anvil_status nccl_all_reduce(anvil_comm *c, void *buf, int64_t n, anvil_dtype dt)
{
    nccl_impl *m = c->impl;
    const anvil_all_reduce_algo algo =
        anvil_ar_pick(m->ar_mode, (size_t)n * anvil_dtype_size(dt), c->size, anvil_ipc_ar_max_bytes(m->ipc));
    if (algo != ANVIL_ALL_REDUCE_NCCL) {
        const char *what = algo == ANVIL_ALL_REDUCE_ONESHOT ? "one-shot all-reduce" : "two-shot all-reduce";
        TRY(anvil_ipc_ar_enqueue(m->ipc, buf, n, dt, algo, m->stream));
        return anvil_ipc_ar_wait(m->ipc, m->stream, c->timeout_s, what);
    }
    NCCL_RUN(c, m, ncclAllReduce(buf, buf, (size_t)n, nccl_type(dt), ncclSum, m->comm, m->stream), "ncclAllReduce");
}

static anvil_status nccl_all_gather(anvil_comm *c, const void *send, void *recv, size_t bytes)
{
    nccl_impl *m = c->impl;
    NCCL_RUN(c, m, ncclAllGather(send, recv, bytes, ncclUint8, m->comm, m->stream), "ncclAllGather");
}

/* ncclAllGather into stage ([rank][rows][row_bytes]), then each rank's
 * part copied into its columns of recv ([rows][size x row_bytes]), on the
 * same stream. */
static ncclResult_t gather_cols(nccl_impl *m, int32_t size, const void *send, void *recv, void *stage, int64_t rows,
                                size_t row_bytes)
{
    const size_t part = (size_t)rows * row_bytes;
    ncclResult_t r = ncclAllGather(send, stage, part, ncclUint8, m->comm, m->stream);
    if (r != ncclSuccess && r != ncclInProgress)
        return r;
    for (int32_t k = 0; k < size; k++)
        if (cudaMemcpy2DAsync((char *)recv + (size_t)k * row_bytes, (size_t)size * row_bytes,
                              (const char *)stage + (size_t)k * part, row_bytes, row_bytes, (size_t)rows,
                              cudaMemcpyDeviceToDevice, m->stream) != cudaSuccess) {
            (void)cudaGetLastError();
            return ncclUnhandledCudaError;
        }
    return r;
}

static anvil_status nccl_all_gather_cols(anvil_comm *c, const void *send, void *recv, void *stage, int64_t rows,
                                         size_t row_bytes)
{
    nccl_impl *m = c->impl;
    NCCL_RUN(c, m, gather_cols(m, c->size, send, recv, stage, rows, row_bytes), "ncclAllGather (columns)");
}

static anvil_status nccl_broadcast(anvil_comm *c, void *buf, size_t bytes, int32_t root)
{
    nccl_impl *m = c->impl;
    NCCL_RUN(c, m, ncclBroadcast(buf, buf, bytes, ncclUint8, root, m->comm, m->stream), "ncclBroadcast");
}

/* Point to point: NCCL matches a pair's messages in the order they are
 * posted (no tags): the pipeline posts them in the same order on both
 * sides, so the tag is only checked by comm.c. */
static anvil_status nccl_send(anvil_comm *c, const void *buf, size_t bytes, int32_t peer, int32_t tag)
{
    (void)tag;
    nccl_impl *m = c->impl;
    NCCL_RUN(c, m, ncclSend(buf, bytes, ncclUint8, peer, m->comm, m->stream), "ncclSend");
}

static anvil_status nccl_recv(anvil_comm *c, void *buf, size_t bytes, int32_t peer, int32_t tag)
{
    (void)tag;
    nccl_impl *m = c->impl;
    NCCL_RUN(c, m, ncclRecv(buf, bytes, ncclUint8, peer, m->comm, m->stream), "ncclRecv");
}

/* A sum of one float: returns on every rank once all have called it. */
static anvil_status nccl_barrier(anvil_comm *c)
{
    nccl_impl *m = c->impl;
    NCCL_RUN(c, m, ncclAllReduce(m->one, m->one, 1, ncclFloat32, ncclSum, m->comm, m->stream), "barrier");
}

static void nccl_destroy(anvil_comm *c)
{
    nccl_impl *m = c->impl;
    if (m == NULL)
        return;
    (void)cudaSetDevice(m->device);
    anvil_ipc_ar_free(m->ipc);
    if (m->comm != NULL) {
        /* broken: a peer may be gone, and a destroy may wait for it */
        if (atomic_load(&c->failed))
            ncclCommAbort(m->comm);
        else
            ncclCommDestroy(m->comm);
    }
    if (m->one != NULL)
        cudaFree(m->one);
    if (m->stream != NULL)
        cudaStreamDestroy(m->stream);
    free(m);
}

/* ------------------------------------------------------------ exchanges, splits, the sums' choice */

/* Every rank's `bytes` of host memory, in rank order, into all (size x
 * bytes), through ncclAllGather on a device buffer made for the call (only
 * at set-up: splits and the IPC handles). */
static anvil_status nccl_exchange(void *ctx, const void *mine, void *all, size_t bytes)
{
    anvil_comm *c = ctx;
    nccl_impl *m = c->impl;
    CHECK(m->comm != NULL, ANVIL_ERR_COMM, "exchange: the NCCL communicator was aborted");
    TRY(cuda_device(m));
    unsigned char *d = NULL;
    const size_t total = bytes * (size_t)(c->size + 1);
    cudaError_t e = cudaMalloc((void **)&d, total);
    if (e == cudaSuccess)
        /* on the communicator's stream: a plain cudaMemcpy from pageable memory may return before its
         * DMA lands, and the non-blocking stream would not wait for it */
        e = cudaMemcpyAsync(d + bytes * (size_t)c->size, mine, bytes, cudaMemcpyHostToDevice, m->stream);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        if (d != NULL)
            cudaFree(d);
        return ANVIL_FAIL(ANVIL_ERR_CUDA, "exchange of %zu bytes a rank on cuda:%d: %s", bytes, m->device,
                          cudaGetErrorString(e));
    }
    anvil_status st = ANVIL_OK;
    const ncclResult_t r = ncclAllGather(d + bytes * (size_t)c->size, d, bytes, ncclUint8, m->comm, m->stream);
    if (r != ncclSuccess && r != ncclInProgress)
        st = nccl_fail(r, m->comm, "exchange (ncclAllGather)");
    else
        st = wait_done(m, c->timeout_s, 1, "exchange (ncclAllGather)");
    if (st == ANVIL_OK && (e = cudaMemcpy(all, d, bytes * (size_t)c->size, cudaMemcpyDeviceToHost)) != cudaSuccess) {
        (void)cudaGetLastError();
        st = ANVIL_FAIL(ANVIL_ERR_CUDA, "exchange: %s", cudaGetErrorString(e));
    }
    cudaFree(d);
    return st;
}

static anvil_status impl_new(int device, nccl_impl **out);
static void impl_free(nccl_impl *m);
static const anvil_comm_ops nccl_ops;

/* The ranks of c whose color is `color`, ranked by key then rank: their
 * (color, key) gathered first under the deadline, then ncclCommSplit, or
 * without it a new communicator from a unique id the part's first rank
 * makes and sends through c. */
static anvil_status nccl_split(anvil_comm *c, int32_t color, int32_t key, anvil_comm **out)
{
    nccl_impl *m = c->impl;
    *out = NULL;
    const int32_t mine[2] = {color, key};
    int32_t *pairs = malloc((size_t)c->size * sizeof mine);
    CHECK(pairs != NULL, ANVIL_ERR_OOM, "out of memory");
    anvil_status st = nccl_exchange(c, mine, pairs, sizeof mine);
    for (int32_t r = 0; st == ANVIL_OK && r < c->size; r++)
        if (pairs[2 * r] < 0)
            st = ANVIL_FAIL(ANVIL_ERR_COMM, "rank %d split with color %d", r, pairs[2 * r]);
    int32_t new_rank = 0, new_size = 1, leader = 0;
    if (st == ANVIL_OK)
        anvil_split_place(pairs, c->size, c->rank, &new_rank, &new_size, &leader);
    free(pairs);
    TRY(st);
    nccl_impl *n = NULL;
    TRY(impl_new(m->device, &n));
    char what[96] = "a split";
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0; /* waited for under the deadline */
    if (nccl_p_CommSplit != NULL) {
        snprintf(what, sizeof what, "ncclCommSplit (color %d, rank %d of %d)", color, new_rank, new_size);
        const ncclResult_t r = nccl_p_CommSplit(m->comm, color, key, &n->comm, &cfg);
        if (r != ncclSuccess && r != ncclInProgress)
            st = nccl_fail(r, m->comm, what);
    } else {
        /* every rank takes part in the exchange, whether its id was made */
        unsigned char id[ANVIL_NCCL_ID_BYTES] = {0};
        const anvil_status ist = c->rank == leader ? anvil_nccl_unique_id(id) : ANVIL_OK;
        unsigned char *ids = malloc((size_t)c->size * sizeof id);
        st = ids != NULL ? nccl_exchange(c, id, ids, sizeof id) : ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
        if (st == ANVIL_OK)
            st = ist;
        if (st == ANVIL_OK) {
            ncclUniqueId u;
            memcpy(&u, ids + (size_t)leader * sizeof id, sizeof u);
            snprintf(what, sizeof what, "ncclCommInitRankConfig (a split: color %d, rank %d of %d)", color,
                     new_rank, new_size);
            const ncclResult_t r = ncclCommInitRankConfig(&n->comm, new_size, u, new_rank, &cfg);
            if (r != ncclSuccess && r != ncclInProgress)
                st = nccl_fail(r, n->comm, what);
        }
        free(ids);
    }
    if (st == ANVIL_OK && n->comm == NULL)
        st = ANVIL_FAIL(ANVIL_ERR_COMM, "%s gave no communicator", what);
    if (st == ANVIL_OK)
        st = wait_done(n, c->timeout_s, 0, what);
    if (st == ANVIL_OK) /* a non-blocking parent takes part in the split too */
        st = wait_done(m, c->timeout_s, 0, what);
    anvil_comm *part = st == ANVIL_OK ? anvil_comm_wrap(&nccl_ops, new_rank, new_size, n) : NULL;
    if (st == ANVIL_OK && part == NULL)
        st = ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
    if (st != ANVIL_OK) {
        impl_free(n);
        return st;
    }
    *out = part;
    return ANVIL_OK;
}

static anvil_status nccl_set_all_reduce(anvil_comm *c, anvil_all_reduce_algo algo, size_t max_bytes)
{
    nccl_impl *m = c->impl;
    const size_t need = anvil_ar_ipc_bytes(algo, c->size, max_bytes);
    m->ar_mode = algo;
    if (m->ipc != NULL && anvil_ipc_ar_max_bytes(m->ipc) >= need && need > 0)
        return ANVIL_OK; /* every rank holds buffers as large already */
    /* every rank frees and makes alike: the choice depends on the
     * arguments alone */
    TRY(cuda_device(m));
    (void)cudaStreamSynchronize(m->stream);
    anvil_ipc_ar_free(m->ipc);
    m->ipc = NULL;
    if (need == 0)
        return ANVIL_OK;
    char why[256];
    const anvil_status st =
        anvil_ipc_ar_create(c->rank, c->size, m->device, need, nccl_exchange, c, &m->ipc, why, sizeof why);
    if (st == ANVIL_ERR_UNSUPPORTED) {
        /* the same answer on every rank: NCCL sums every size */
        if (c->rank == 0)
            anvil_log(ANVIL_LOG_WARN, "all-reduce %s on %d ranks: CUDA IPC cannot run here (%s); NCCL sums instead",
                      anvil_all_reduce_algo_name(algo), c->size, why);
        return ANVIL_OK;
    }
    return st;
}

static anvil_all_reduce_algo nccl_all_reduce_algo(const anvil_comm *c, size_t bytes)
{
    const nccl_impl *m = c->impl;
    return anvil_ar_pick(m->ar_mode, bytes, c->size, anvil_ipc_ar_max_bytes(m->ipc));
}

static const anvil_comm_ops nccl_ops = {
    .name = "nccl",
    .memory = ANVIL_COMM_DEVICE,
    .all_reduce_sum = nccl_all_reduce,
    .all_gather = nccl_all_gather,
    .all_gather_cols = nccl_all_gather_cols,
    .broadcast = nccl_broadcast,
    .send = nccl_send,
    .recv = nccl_recv,
    .barrier = nccl_barrier,
    .split = nccl_split,
    .set_all_reduce = nccl_set_all_reduce,
    .all_reduce_algo = nccl_all_reduce_algo,
    .abort = NULL,  /* the boot communicator's (comm.c walks to the parent) */
    .destroy = nccl_destroy,
};

anvil_status anvil_nccl_unique_id(unsigned char id[ANVIL_NCCL_ID_BYTES])
{
    nvls_off();
    TRY(nccl_load());
    ncclUniqueId u;
    const ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess)
        return nccl_fail(r, NULL, "ncclGetUniqueId");
    memcpy(id, &u, sizeof u);
    return ANVIL_OK;
}

/* A communicator's CUDA side on `device` (its NCCL communicator comes
 * after): its stream and the barrier's float. */
static anvil_status impl_new(int device, nccl_impl **out)
{
    *out = NULL;
    nccl_impl *m = calloc(1, sizeof *m);
    CHECK(m != NULL, ANVIL_ERR_OOM, "out of memory");
    m->device = device;
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess)
        e = cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking);
    if (e == cudaSuccess)
        e = cudaMalloc(&m->one, sizeof(float));
    if (e == cudaSuccess)
        e = cudaMemset(m->one, 0, sizeof(float));
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        impl_free(m);
        return ANVIL_FAIL(ANVIL_ERR_CUDA, "NCCL communicator on cuda:%d: %s", device, cudaGetErrorString(e));
    }
    *out = m;
    return ANVIL_OK;
}

/* Frees what impl_new made, aborting a communicator that never served. */
static void impl_free(nccl_impl *m)
{
    if (m == NULL)
        return;
    if (m->comm != NULL)
        ncclCommAbort(m->comm);
    anvil_ipc_ar_free(m->ipc);
    if (m->one != NULL)
        cudaFree(m->one);
    if (m->stream != NULL)
        cudaStreamDestroy(m->stream);
    free(m);
}

anvil_status anvil_nccl_open(const unsigned char id[ANVIL_NCCL_ID_BYTES], int32_t rank, int32_t size, int device,
                             double timeout_s, const anvil_comm_ops **ops, void **impl)
{
    *ops = NULL;
    *impl = NULL;
    nvls_off();
    TRY(nccl_load());
    nccl_impl *m = NULL;
    TRY(impl_new(device, &m));
    anvil_status st = ANVIL_OK;
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0; /* the init waits under the deadline (wait_done), not for ever */
    const ncclResult_t r = ncclCommInitRankConfig(&m->comm, size, u, rank, &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        st = nccl_fail(r, m->comm, "ncclCommInitRankConfig");
        goto fail;
    }
    char what[96];
    snprintf(what, sizeof what, "ncclCommInitRankConfig (rank %d of %d, cuda:%d)", rank, size, device);
    st = wait_done(m, timeout_s, 0, what);
    if (st != ANVIL_OK)
        goto fail;
    *ops = &nccl_ops;
    *impl = m;
    return ANVIL_OK;
fail:
    impl_free(m);
    return st;
}
