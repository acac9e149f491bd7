/*
 * The communicator's seam (anvil/comm.h): a table of functions per
 * implementation, as backend.h is for devices.
 *
 *   comm.c          the public calls: arguments checked, the broken state,
 *                   dispatch
 *   comm_self.c     size 1: no-ops
 *   comm_mpi.c      Open MPI (built when CMake finds MPI; comm_mpi_none.c
 *                   otherwise)
 *   comm_nccl.c      NCCL on device buffers, in the CUDA module (comm_nccl.h);
 *   comm_nccl_boot.c its creation in libanvil, over a boot communicator
 *   comm_ipc.c       the one-shot / two-shot all-reduce over CUDA IPC peer
 *                    buffers, in the CUDA module (comm_ipc.h; its kernel:
 *                    comm_ipc_kernel.cu, its addressing: comm_ipc_map.h)
 *   comm_plan.c      the decisions that need no GPU (comm_plan.h), in both
 *
 * An implementation's functions get arguments already checked (ranks in
 * range, n > 0, a dtype it is asked to sum: f32, bf16, f16) and return
 * ANVIL_ERR_COMM with a message on failure; comm.c then marks the
 * communicator broken.
 */
#ifndef ANVIL_COMM_INTERNAL_H
#define ANVIL_COMM_INTERNAL_H

#include <stdatomic.h>
#include <stdlib.h>

#include "anvil/comm.h"

typedef struct anvil_comm_ops {
    const char *name;
    anvil_comm_memory memory;
    anvil_status (*all_reduce_sum)(anvil_comm *c, void *buf, int64_t n, anvil_dtype dtype);
    anvil_status (*all_gather)(anvil_comm *c, const void *send, void *recv, size_t bytes);
    /* every rank's [rows, row_bytes] side by side in recv [rows, size x
     * row_bytes], through stage (size x rows x row_bytes); NULL: comm.c
     * gathers into stage and moves the parts with memcpy (host memory) */
    anvil_status (*all_gather_cols)(anvil_comm *c, const void *send, void *recv, void *stage, int64_t rows,
                                    size_t row_bytes);
    anvil_status (*broadcast)(anvil_comm *c, void *buf, size_t bytes, int32_t root);
    anvil_status (*send)(anvil_comm *c, const void *buf, size_t bytes, int32_t peer, int32_t tag);
    anvil_status (*recv)(anvil_comm *c, void *buf, size_t bytes, int32_t peer, int32_t tag);
    anvil_status (*barrier)(anvil_comm *c);
    /* the ranks of c whose color is `color`, ranked by key then rank
     * (comm.c makes a self communicator when c has one rank) */
    anvil_status (*split)(anvil_comm *c, int32_t color, int32_t key, anvil_comm **out);
    /* how all_reduce_sum sums (anvil_comm_set_all_reduce: a collective)
     * and what a sum of `bytes` runs; NULL: the implementation's own sum */
    anvil_status (*set_all_reduce)(anvil_comm *c, anvil_all_reduce_algo algo, size_t max_bytes);
    anvil_all_reduce_algo (*all_reduce_algo)(const anvil_comm *c, size_t bytes);
    void (*abort)(anvil_comm *c, int code); /* ends every rank; NULL: nothing to end */
    void (*destroy)(anvil_comm *c); /* frees impl (not the struct) */
} anvil_comm_ops;

struct anvil_comm {
    const anvil_comm_ops *ops;
    int32_t rank, size;
    void *impl;
    /* how long a call waits for the other ranks (seconds; 0: for ever);
     * the implementation reads it (anvil_comm_set_timeout) */
    double timeout_s;
    /* the first failed call's status and message: a broken communicator
     * refuses every later call (a peer may be gone or out of step).
     * broken_msg is written before failed is set, and never after, so any
     * thread that sees failed may read it (anvil_comm_error). */
    anvil_status broken;
    char broken_msg[512];
    atomic_int failed;
    /* rank 0 leading (runtime_tp.c): the followers were met, released.
     * Kept here, not in a runtime: a rank 0 whose load failed has none
     * (anvil_runtime_lead_end), and the followers must be released once
     * per lead (a new leading runtime resets both) */
    int lead_met, lead_ended;
    /* the communicator this one was split from (anvil_comm_split), which
     * outlives it; NULL for a job's own. A failure here breaks it too */
    anvil_comm *parent;
};

/* A communicator struct around ops and impl; NULL when out of memory.
 * Inline: the CUDA module, which links no libanvil, wraps its splits too. */
static inline anvil_comm *anvil_comm_wrap(const anvil_comm_ops *ops, int32_t rank, int32_t size, void *impl)
{
    anvil_comm *c = (anvil_comm *)calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->ops = ops;
    c->rank = rank;
    c->size = size;
    c->impl = impl;
    c->timeout_s = ANVIL_COMM_TIMEOUT_DEFAULT_S;
    atomic_init(&c->failed, 0);
    return c;
}

#endif
