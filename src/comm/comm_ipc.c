/*
 * The IPC all-reduce's host side (comm_ipc.h): the buffers, the exchange of
 * their handles, the launch and the deadline.
 *
 * Every step of the creation that may fail on one rank only (memory, a peer
 * that cannot be opened) is followed by a gather, so that every rank ends
 * with the same answer: IPC among all of them, or ANVIL_ERR_UNSUPPORTED and
 * the caller's other sum. A rank that fails outright (the gather itself) is
 * the caller's communicator's failure.
 */
#include "comm/comm_ipc.h"

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm_plan.h"
#include "core/error.h"

_Static_assert(sizeof(cudaIpcMemHandle_t) == ANVIL_IPC_HANDLE_BYTES, "cudaIpcMemHandle_t changed size");
_Static_assert(sizeof(ipc_signal) <= IPC_SIGNAL_BYTES, "the signal block outgrew its room");
_Static_assert(IPC_MAX_RANKS == ANVIL_IPC_MAX_RANKS, "two limits on the ranks");
_Static_assert(IPC_THREADS >= IPC_MAX_RANKS, "a barrier needs a thread a rank");

struct anvil_ipc_ar {
    int32_t rank, size;
    int device;
    size_t max_bytes;
    void *base;                       /* this rank's cudaMalloc: [signal][data max_bytes] */
    void *peer_base[IPC_MAX_RANKS];   /* the peers' opened (NULL: this rank's own, or not opened) */
    int *abort_host;                  /* cudaHostAlloc'ed, mapped: the kernel's waits read it */
    const volatile int *abort_dev;
    ipc_args args;                    /* the pointers; buf and n set per call */
    int spent;                        /* a wait passed its deadline: the kernel's state is unknown */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void why_cuda(char *why, size_t cap, const char *what, cudaError_t e)
{
    snprintf(why, cap, "%s: %s", what, cudaGetErrorString(e));
    (void)cudaGetLastError();
}

void anvil_ipc_ar_free(anvil_ipc_ar *a)
{
    if (a == NULL)
        return;
    (void)cudaSetDevice(a->device);
    for (int32_t r = 0; r < IPC_MAX_RANKS; r++)
        if (a->peer_base[r] != NULL)
            (void)cudaIpcCloseMemHandle(a->peer_base[r]);
    if (a->base != NULL)
        (void)cudaFree(a->base);
    if (a->abort_host != NULL)
        (void)cudaFreeHost(a->abort_host);
    (void)cudaGetLastError();
    free(a);
}

/* This rank's buffer and abort flag (why set and 0 on failure). */
static int make_buffer(anvil_ipc_ar *a, anvil_ipc_record *mine)
{
    cudaError_t e = cudaSetDevice(a->device);
    if (e != cudaSuccess) {
        why_cuda(mine->why, sizeof mine->why, "cudaSetDevice", e);
        return 0;
    }
    e = cudaMalloc(&a->base, IPC_SIGNAL_BYTES + a->max_bytes);
    if (e != cudaSuccess) {
        a->base = NULL;
        why_cuda(mine->why, sizeof mine->why, "cudaMalloc of the IPC buffer", e);
        return 0;
    }
    /* the generations start at 0 on every rank: zeroed before the handle
     * is sent, so before any peer can write into it */
    e = cudaMemset(a->base, 0, IPC_SIGNAL_BYTES);
    if (e == cudaSuccess)
        e = cudaDeviceSynchronize();
    if (e == cudaSuccess)
        e = cudaIpcGetMemHandle((cudaIpcMemHandle_t *)mine->handle, a->base);
    if (e != cudaSuccess) {
        why_cuda(mine->why, sizeof mine->why, "cudaIpcGetMemHandle", e);
        return 0;
    }
    e = cudaHostAlloc((void **)&a->abort_host, sizeof(int), cudaHostAllocMapped);
    void *dev = NULL;
    if (e == cudaSuccess) {
        *a->abort_host = 0;
        e = cudaHostGetDevicePointer(&dev, a->abort_host, 0);
    }
    if (e != cudaSuccess) {
        why_cuda(mine->why, sizeof mine->why, "mapped host memory for the abort flag", e);
        return 0;
    }
    a->abort_dev = dev;
    struct cudaDeviceProp prop;
    e = cudaGetDeviceProperties(&prop, a->device);
    if (e == cudaSuccess)
        e = cudaDeviceGetPCIBusId(mine->bus_id, (int)sizeof mine->bus_id, a->device);
    if (e != cudaSuccess) {
        why_cuda(mine->why, sizeof mine->why, "the GPU's identity", e);
        return 0;
    }
    memcpy(mine->uuid, &prop.uuid, sizeof mine->uuid);
    return 1;
}

/* Opens every peer's buffer (why set and 0 on the first failure). */
static int open_peers(anvil_ipc_ar *a, const anvil_ipc_record *all, anvil_ipc_verdict *v)
{
    const anvil_ipc_record *mine = &all[a->rank];
    for (int32_t p = 0; p < a->size; p++) {
        if (p == a->rank)
            continue;
        if (!anvil_ipc_same_gpu(mine, &all[p])) {
            /* another GPU: its memory must be reachable from this one */
            int dev = -1, can = 0;
            cudaError_t e = cudaDeviceGetByPCIBusId(&dev, all[p].bus_id);
            if (e == cudaSuccess)
                e = cudaDeviceCanAccessPeer(&can, a->device, dev);
            if (e != cudaSuccess) {
                (void)cudaGetLastError();
                snprintf(v->why, sizeof v->why, "rank %d's GPU (%s) is not visible to this process (%s)", p,
                         all[p].bus_id, cudaGetErrorString(e));
                return 0;
            }
            if (!can) {
                snprintf(v->why, sizeof v->why, "no peer access from cuda:%d to rank %d's GPU (%s)", a->device, p,
                         all[p].bus_id);
                return 0;
            }
        }
        /* one GPU shared by two processes needs no peer access: the handle
         * maps the same memory */
        cudaIpcMemHandle_t h;
        memcpy(&h, all[p].handle, sizeof h);
        const cudaError_t e = cudaIpcOpenMemHandle(&a->peer_base[p], h, cudaIpcMemLazyEnablePeerAccess);
        if (e != cudaSuccess) {
            a->peer_base[p] = NULL;
            (void)cudaGetLastError();
            snprintf(v->why, sizeof v->why, "cudaIpcOpenMemHandle of rank %d's buffer: %s", p,
                     cudaGetErrorString(e));
            return 0;
        }
    }
    return 1;
}

anvil_status anvil_ipc_ar_create(int32_t rank, int32_t size, int device, size_t max_bytes,
                                 anvil_ipc_gather_fn gather, void *ctx, anvil_ipc_ar **out, char *why_out,
                                 size_t why_cap)
{
    CHECK(out != NULL && gather != NULL && why_out != NULL && size >= 1 && rank >= 0 && rank < size,
          ANVIL_ERR_INVALID_ARG, "anvil_ipc_ar_create: rank %d of %d", rank, size);
    *out = NULL;
    why_out[0] = '\0';
    if (size > IPC_MAX_RANKS) {
        snprintf(why_out, why_cap, "%d ranks: the IPC all-reduce takes at most %d", size, IPC_MAX_RANKS);
        return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "%s", why_out);
    }
    anvil_ipc_ar *a = calloc(1, sizeof *a);
    anvil_ipc_record *all = calloc((size_t)size, sizeof *all);
    anvil_ipc_verdict *verdicts = calloc((size_t)size, sizeof *verdicts);
    anvil_status st = ANVIL_OK;
    if (a == NULL || all == NULL || verdicts == NULL) {
        st = ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
        goto done;
    }
    a->rank = rank;
    a->size = size;
    a->device = device;
    /* whole units: the data is read 16 bytes at a time */
    a->max_bytes = (max_bytes + IPC_UNIT_BYTES - 1) / IPC_UNIT_BYTES * IPC_UNIT_BYTES;
    anvil_ipc_record mine = {.rank = rank, .host = anvil_ipc_host_id()};
    mine.ok = make_buffer(a, &mine);
    /* 1. every rank's buffer, GPU and host */
    TRY_GOTO(gather(ctx, &mine, all, sizeof mine), done);
    char why[256];
    if (!anvil_ipc_records_ok(all, size, why, sizeof why)) {
        snprintf(why_out, why_cap, "%s", why);
        st = ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "%s", why);
        goto done;
    }
    /* 2. every rank opens every other's; IPC only if all could */
    anvil_ipc_verdict v = {0};
    v.ok = open_peers(a, all, &v);
    TRY_GOTO(gather(ctx, &v, verdicts, sizeof v), done);
    if (!anvil_ipc_verdicts_ok(verdicts, size, why, sizeof why)) {
        snprintf(why_out, why_cap, "%s", why);
        st = ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "%s", why);
        goto done;
    }
    a->args.rank = rank;
    a->args.size = size;
    a->args.abort = a->abort_dev;
    for (int32_t p = 0; p < size; p++) {
        char *b = p == rank ? a->base : a->peer_base[p];
        a->args.sig[p] = (ipc_signal *)b;
        a->args.data[p] = b + IPC_SIGNAL_BYTES;
    }
    *out = a;
    a = NULL;
done:
    anvil_ipc_ar_free(a);
    free(all);
    free(verdicts);
    return st;
}

size_t anvil_ipc_ar_max_bytes(const anvil_ipc_ar *a) { return a ? a->max_bytes : 0; }

anvil_status anvil_ipc_ar_enqueue(anvil_ipc_ar *a, void *buf, int64_t n, anvil_dtype dt, anvil_all_reduce_algo algo,
                                  void *stream)
{
    CHECK(a != NULL && !a->spent, ANVIL_ERR_COMM, "the IPC all-reduce stopped after a deadline");
    CHECK(algo == ANVIL_ALL_REDUCE_ONESHOT || algo == ANVIL_ALL_REDUCE_TWOSHOT, ANVIL_ERR_INVALID_ARG,
          "the IPC all-reduce runs oneshot or twoshot, not %s", anvil_all_reduce_algo_name(algo));
    CHECK(dt == ANVIL_DTYPE_F32 || dt == ANVIL_DTYPE_BF16 || dt == ANVIL_DTYPE_F16, ANVIL_ERR_UNSUPPORTED,
          "the IPC all-reduce sums f32, bf16 or f16, not %s", anvil_dtype_name(dt));
    CHECK(n >= 0 && (size_t)n * anvil_dtype_size(dt) <= a->max_bytes, ANVIL_ERR_INVALID_ARG,
          "a sum of %lld %s elements past the IPC buffer's %zu bytes", (long long)n, anvil_dtype_name(dt),
          a->max_bytes);
    const cudaError_t e = cudaSetDevice(a->device);
    CHECK(e == cudaSuccess, ANVIL_ERR_CUDA, "cudaSetDevice(%d): %s", a->device, cudaGetErrorString(e));
    ipc_args args = a->args;
    args.buf = buf;
    args.n = n;
    return anvil_ipc_ar_launch(&args, dt, algo == ANVIL_ALL_REDUCE_TWOSHOT, stream);
}

anvil_status anvil_ipc_ar_wait(anvil_ipc_ar *a, void *stream, double timeout_s, const char *what)
{
    const double t0 = now_s();
    for (int polls = 0;; polls++) {
        const cudaError_t q = cudaStreamQuery((cudaStream_t)stream);
        if (q == cudaSuccess)
            return ANVIL_OK;
        if (q != cudaErrorNotReady) {
            (void)cudaGetLastError();
            return ANVIL_FAIL(ANVIL_ERR_COMM, "%s: %s (%s)", what, cudaGetErrorString(q), cudaGetErrorName(q));
        }
        const double waited = now_s() - t0;
        if (timeout_s > 0 && waited > timeout_s) {
            /* the kernel's waits read the flag every 1024 polls and leave:
             * the stream then drains, and nothing runs on the buffers again */
            a->spent = 1;
            *(volatile int *)a->abort_host = 1;
            (void)cudaStreamSynchronize((cudaStream_t)stream);
            (void)cudaGetLastError();
            return ANVIL_FAIL(ANVIL_ERR_COMM,
                              "%s: no answer within %g s (a rank died, was stopped, or is not running the same "
                              "steps; the IPC all-reduce was stopped)",
                              what, timeout_s);
        }
        if (polls < 2000)
            continue;
        struct timespec nap = {0, waited < 1.0 ? 20000 : 1000000};
        nanosleep(&nap, NULL);
    }
}
