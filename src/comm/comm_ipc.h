/*
 * The small-message all-reduce over CUDA IPC peer buffers (docs/parallel.md,
 * "The small-message all-reduce"), what TensorRT-LLM's and vLLM's custom
 * all-reduce do over NVLink. In the CUDA module; the NCCL communicator
 * (comm_nccl.c) uses it for the sizes anvil_ar_pick gives it, and the CUDA
 * test drives it directly (test_cuda_allreduce: two processes on one GPU,
 * where NCCL refuses to run).
 *
 *   anvil_ipc_ar_create    every rank: a buffer (cudaMalloc: a signal block,
 *                          then max_bytes of data), its IPC handle sent to
 *                          every rank through `gather` (any all-gather of
 *                          host bytes: NCCL's, MPI's, the test's pipes),
 *                          every peer's opened (cudaIpcOpenMemHandle), then
 *                          a second gather of the verdicts: IPC runs only
 *                          where every rank could open every peer
 *   anvil_ipc_ar_enqueue   one launch on a stream (capturable in a CUDA
 *                          graph: the buffers are fixed and the barrier's
 *                          generations live in device memory)
 *   anvil_ipc_ar_wait      the host's wait for the stream under a deadline;
 *                          past it the kernel's waits are told to stop
 *                          (a flag in mapped host memory) and the call fails
 */
#ifndef ANVIL_COMM_IPC_H
#define ANVIL_COMM_IPC_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/comm.h"
#include "anvil/dtype.h"
#include "anvil/status.h"
#include "comm/comm_ipc_map.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The kernel's arguments (by value). */
typedef struct ipc_args {
    void *data[IPC_MAX_RANKS];       /* every rank's data buffer (its own included), in rank order */
    ipc_signal *sig[IPC_MAX_RANKS];  /* every rank's signal block */
    void *buf;                       /* this rank's values, summed in place */
    int64_t n;                       /* elements */
    int32_t rank, size;
    const volatile int *abort;       /* mapped host memory: nonzero stops every wait */
} ipc_args;

/* Launches the one-shot (two_shot 0) or two-shot sum of a->n elements of
 * dt (f32, bf16, f16) on stream (a cudaStream_t). comm_ipc_kernel.cu. */
anvil_status anvil_ipc_ar_launch(const ipc_args *a, anvil_dtype dt, int two_shot, void *stream);

typedef struct anvil_ipc_ar anvil_ipc_ar;

/* Every rank's `bytes` of host memory, in rank order, into all (size x
 * bytes): a collective over the same ranks. */
typedef anvil_status (*anvil_ipc_gather_fn)(void *ctx, const void *mine, void *all, size_t bytes);

/*
 * This rank's part of an IPC all-reduce among `size` ranks, for sums of up
 * to max_bytes, on CUDA device `device`. Every rank calls it (two gathers).
 * ANVIL_ERR_UNSUPPORTED, the same on every rank, where IPC cannot run
 * (anvil_ipc_records_ok, anvil_ipc_verdicts_ok), with the reason in why
 * (also the error's message; the CUDA module cannot read that back): the
 * caller then sums another way. *out NULL on failure.
 */
anvil_status anvil_ipc_ar_create(int32_t rank, int32_t size, int device, size_t max_bytes,
                                 anvil_ipc_gather_fn gather, void *ctx, anvil_ipc_ar **out, char *why,
                                 size_t why_cap);

/* The sum of buf (n elements of dt, device memory of this rank's GPU, in
 * place) over the ranks, one-shot or two-shot (algo), enqueued on stream
 * (a cudaStream_t). Every rank enqueues the same sums in the same order.
 * n x element size <= max_bytes. */
anvil_status anvil_ipc_ar_enqueue(anvil_ipc_ar *a, void *buf, int64_t n, anvil_dtype dt, anvil_all_reduce_algo algo,
                                  void *stream);

/* Waits for stream (a cudaStream_t) to finish what was enqueued, under
 * timeout_s (0: for ever): past it the kernel's waits stop, `a` is spent
 * (every later call fails) and the call fails with ANVIL_ERR_COMM naming
 * `what`. */
anvil_status anvil_ipc_ar_wait(anvil_ipc_ar *a, void *stream, double timeout_s, const char *what);

size_t anvil_ipc_ar_max_bytes(const anvil_ipc_ar *a);

/* Closes the peers' buffers and frees this rank's. NULL is a no-op. */
void anvil_ipc_ar_free(anvil_ipc_ar *a);

#ifdef __cplusplus
}
#endif
#endif
