/*
 * anvil/comm.h: the communicator, how the ranks of a tensor- (and later
 * pipeline-) parallel model talk to each other.
 *
 * One process per device; a communicator joins them. Rank 0 .. size-1 each
 * hold a shard of the weights and run the same forward steps; the runtime
 * sums the shards' partial results through anvil_comm_all_reduce_sum where
 * the network says so (docs/parallel.md). Implementations:
 *
 *   - "self": one process, size 1 (every collective is a no-op); what a
 *     runtime without a communicator uses.
 *   - "mpi": Open MPI's MPI_COMM_WORLD (host buffers: the CPU backend), for
 *     processes started by mpirun. Sums are computed by anvil, in f32 and in
 *     rank order, so every rank gets the same bits whatever MPI's algorithm
 *     and whatever the element type.
 *   - "nccl": NCCL on device buffers (one GPU a rank), for the CUDA
 *     backend; made over a boot communicator (MPI) that carries its unique
 *     id (anvil_comm_create_nccl). Sums are NCCL's: the same bits on every
 *     rank, in NCCL's order; or, for the sizes anvil_comm_set_all_reduce
 *     gives them, one-shot / two-shot over CUDA IPC in rank order.
 *
 *     anvil_comm *comm;
 *     if (anvil_comm_create_mpi(&comm) != ANVIL_OK) ... // mpirun -np 2 prog
 *     anvil_runtime_options o;
 *     anvil_runtime_options_default(&o);
 *     o.comm = comm;                                     // --tp = the comm's size
 *     anvil_runtime_load(dir, &o, &rt);
 *     ... the same forward steps on every rank ...
 *     anvil_runtime_free(rt);
 *     anvil_comm_free(comm);
 *
 * Failures: a collective that fails (an MPI error, a peer gone) or that the
 * other ranks do not join within the communicator's timeout (30 s unless
 * anvil_comm_set_timeout says otherwise) returns ANVIL_ERR_COMM with a
 * message naming this rank and the call; the communicator is then broken,
 * and every later call fails at once with the same message, so that no
 * rank waits on a collective the others will never join. A program ends
 * the other ranks with anvil_comm_abort (the library never does); mpirun
 * itself ends the job when a rank dies (docs/parallel.md, "Failures").
 *
 * Thread safety: one communicator (with those split from it) is used by
 * one thread at a time (the runtime's step). Collectives must be called in the same order on every
 * rank.
 */
#ifndef ANVIL_COMM_H
#define ANVIL_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/dtype.h"
#include "anvil/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct anvil_comm anvil_comm;

/* Where a communicator's buffers live. */
typedef enum anvil_comm_memory {
    ANVIL_COMM_HOST = 0,   /* host memory (MPI, self) */
    ANVIL_COMM_DEVICE = 1, /* the device's memory (NCCL) */
} anvil_comm_memory;

/* A communicator of one process (rank 0 of 1). *out NULL on failure. */
anvil_status anvil_comm_create_self(anvil_comm **out);

/*
 * The processes of MPI_COMM_WORLD (started by mpirun), on a duplicate of it
 * with errors returned, not fatal. Initializes MPI when the program has not
 * (and finalizes it in anvil_comm_free); a program that initialized MPI
 * itself keeps it (so of several communicators, free the first one made
 * last). ANVIL_ERR_UNSUPPORTED when anvil was built without MPI.
 * *out NULL on failure. Call it from the thread that will use it.
 */
anvil_status anvil_comm_create_mpi(anvil_comm **out);

/* 1 when anvil was built with MPI (anvil_comm_create_mpi can work). */
int anvil_comm_mpi_built(void);

/*
 * A communicator of boot's ranks over NCCL, this rank on CUDA device
 * `device` (cuda:N), for device buffers (docs/parallel.md, "NCCL"): rank 0
 * makes NCCL's unique id, boot broadcasts it, every rank joins within
 * boot's timeout (the new one keeps it). NCCL_NVLS_ENABLE=0 is set in the
 * process environment before NCCL starts, always. The new communicator is
 * tied to boot as a split one is (a failure breaks both; anvil_comm_abort
 * ends the job through boot); free it before boot. Every rank calls it.
 * ANVIL_ERR_UNSUPPORTED when anvil's CUDA module was built without NCCL
 * or is missing. *out NULL on failure.
 */
anvil_status anvil_comm_create_nccl(anvil_comm *boot, int device, anvil_comm **out);

/* How long a call waits for the other ranks by default (seconds). */
#define ANVIL_COMM_TIMEOUT_DEFAULT_S 30.0

/*
 * How long each later call waits for the other ranks before it fails with
 * ANVIL_ERR_COMM ("... no answer within 30 s") and breaks the
 * communicator; 0: for ever. A rank that waits for work (a follower while
 * rank 0's server is idle) sets 0 around that wait. ANVIL_ERR_INVALID_ARG
 * outside 0 .. 1e7.
 */
anvil_status anvil_comm_set_timeout(anvil_comm *comm, double seconds);
double anvil_comm_timeout(const anvil_comm *comm);

/*
 * The first failure's message once the communicator is broken (valid until
 * it is freed), else NULL. Any thread may ask (a server's /health does
 * while its executor runs the steps).
 */
const char *anvil_comm_error(const anvil_comm *comm);

/*
 * Ends every rank's process at once with exit code `code` (MPI_Abort:
 * mpirun kills the others), for a program whose ranks cannot go on (one
 * failed, the others may wait for it). Does not return for "mpi" with
 * several ranks; does nothing for one rank. For programs only: the library
 * never calls it.
 */
void anvil_comm_abort(anvil_comm *comm, int code);

/* Frees the communicator (and finalizes MPI when it initialized it). NULL
 * is a no-op. */
void anvil_comm_free(anvil_comm *comm);

int32_t anvil_comm_rank(const anvil_comm *comm);
int32_t anvil_comm_size(const anvil_comm *comm);
const char *anvil_comm_name(const anvil_comm *comm); /* "self", "mpi", "nccl" */
anvil_comm_memory anvil_comm_memory_kind(const anvil_comm *comm);

/*
 * Sums buf (n elements of dtype: f32, bf16 or f16) over every rank, in
 * place: afterwards every rank holds the same sum. bf16/f16 are summed in
 * f32 and rounded once (to nearest, ties to even). Deterministic: the
 * addends are added in rank order.
 */
anvil_status anvil_comm_all_reduce_sum(anvil_comm *comm, void *buf, int64_t n, anvil_dtype dtype);

/* recv (size x bytes) receives every rank's send (bytes), in rank order. */
anvil_status anvil_comm_all_gather(anvil_comm *comm, const void *send, void *recv, size_t bytes);

/* Every rank's send [rows, row_bytes] side by side, in rank order, in recv
 * [rows, size x row_bytes] (the LM head's vocabulary slices of each logit
 * row); stage: size x rows x row_bytes of scratch in the communicator's
 * memory. */
anvil_status anvil_comm_all_gather_cols(anvil_comm *comm, const void *send, void *recv, void *stage, int64_t rows,
                                        size_t row_bytes);

/* buf (bytes) of rank `root` copied into buf on every rank. */
anvil_status anvil_comm_broadcast(anvil_comm *comm, void *buf, size_t bytes, int32_t root);

/* Point to point (pipeline stages): bytes to / from rank peer, matched by
 * tag (0 .. 32767). A send may wait until the peer receives. */
anvil_status anvil_comm_send(anvil_comm *comm, const void *buf, size_t bytes, int32_t peer, int32_t tag);
anvil_status anvil_comm_recv(anvil_comm *comm, void *buf, size_t bytes, int32_t peer, int32_t tag);

/* Returns when every rank has called it. */
anvil_status anvil_comm_barrier(anvil_comm *comm);

/*
 * How a device communicator (NCCL) sums (docs/parallel.md, "The
 * small-message all-reduce"):
 *   - AUTO: by message size, from a table of measured crossovers (until
 *     measured: NCCL at every size);
 *   - NCCL: ncclAllReduce;
 *   - ONESHOT: every rank reads every rank's buffer through CUDA IPC and
 *     adds them in rank order (f32, rounded once): one step, for small sums;
 *   - TWOSHOT: a reduce-scatter then an all-gather over the same buffers:
 *     each rank adds one slice of the ranks' values, then reads the others'.
 * One-shot and two-shot give the same bits as the "mpi" communicator's
 * rank-order sum, on every rank.
 */
typedef enum anvil_all_reduce_algo {
    ANVIL_ALL_REDUCE_AUTO = 0,
    ANVIL_ALL_REDUCE_NCCL = 1,
    ANVIL_ALL_REDUCE_ONESHOT = 2,
    ANVIL_ALL_REDUCE_TWOSHOT = 3,
} anvil_all_reduce_algo;

/* "auto", "nccl", "oneshot", "twoshot" (the ANVIL_ALLREDUCE values) and
 * back. Parse: ANVIL_ERR_INVALID_ARG for any other name (NULL: auto). */
anvil_status anvil_all_reduce_algo_parse(const char *name, anvil_all_reduce_algo *out);
const char *anvil_all_reduce_algo_name(anvil_all_reduce_algo algo);

/*
 * Chooses how anvil_comm_all_reduce_sum sums on a device communicator;
 * every rank calls it with the same arguments (a collective). One-shot and
 * two-shot take sums of up to max_bytes (larger ones go to NCCL) through a
 * buffer of max_bytes a rank that every other rank opens with CUDA IPC;
 * where that cannot be (ranks on several hosts, GPUs without peer access,
 * more than 8 ranks, no memory) every rank keeps NCCL and a warning says
 * why (anvil_comm_all_reduce_algo tells). A communicator whose sums are its
 * own ("self", "mpi") ignores it. Not during a CUDA graph capture.
 */
anvil_status anvil_comm_set_all_reduce(anvil_comm *comm, anvil_all_reduce_algo algo, size_t max_bytes);

/* What a sum of n elements of dtype on comm runs now (never AUTO): NCCL,
 * ONESHOT or TWOSHOT on a device communicator; NCCL elsewhere too (the
 * communicator's own sum). */
anvil_all_reduce_algo anvil_comm_all_reduce_algo(const anvil_comm *comm, int64_t n, anvil_dtype dtype);

/*
 * A communicator of the ranks that pass the same color (>= 0), ranked by
 * key (equal keys: by rank here), as MPI_Comm_split: pipeline x tensor
 * parallelism splits the job by stage (the TP collectives) and by TP rank
 * (the chain of stages). Every rank calls it. Under the timeout as the
 * other calls: the ranks' colors and keys are gathered first (a rank that
 * does not come fails the call here and breaks comm), then the
 * communicator is made. The new one has comm's timeout and is tied to it:
 * a failure of either breaks both (a program that checks anvil_comm_error
 * on the job's communicator sees a stage's failure). Free it before comm.
 * *out NULL on failure.
 */
anvil_status anvil_comm_split(anvil_comm *comm, int32_t color, int32_t key, anvil_comm **out);

#ifdef __cplusplus
}
#endif
#endif
