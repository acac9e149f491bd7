/*
 * The communicators' decisions that need neither a GPU nor another rank, in
 * plain C so that the CPU tests (tests/comm/test_comm_plan.c) check the
 * code the NCCL communicator runs (comm_plan.c is compiled into libanvil
 * and into the CUDA module):
 *
 *   - a split's new rank and size from every rank's (color, key), as
 *     MPI_Comm_split and ncclCommSplit rank them;
 *   - which all-reduce a sum of a given size runs (the measured table);
 *   - whether the ranks can open each other's buffers with CUDA IPC, from
 *     the records they exchange and the verdicts each gives after trying.
 */
#ifndef ANVIL_COMM_PLAN_H
#define ANVIL_COMM_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/comm.h"

/* ------------------------------------------------------------ split */

/* This rank's place in its part: pairs [size][2] are every rank's (color,
 * key) in rank order; the part is the ranks of `me`'s color, ranked by key
 * then rank. *leader: the old rank of the part's new rank 0. */
void anvil_split_place(const int32_t *pairs, int32_t size, int32_t me, int32_t *new_rank, int32_t *new_size,
                       int32_t *leader);

/* ------------------------------------------------------------ which all-reduce */

/* The largest sums (bytes a rank) one-shot and two-shot take with `ranks`
 * ranks under AUTO; past twoshot_max, NCCL. 0: none. */
typedef struct anvil_ar_crossover {
    int32_t ranks;
    size_t oneshot_max, twoshot_max;
} anvil_ar_crossover;

/* The crossovers AUTO uses for `ranks` ranks (zeros until measured:
 * docs/parallel.md). */
anvil_ar_crossover anvil_ar_crossover_for(int32_t ranks);

/* What a sum of `bytes` runs under `mode` on `ranks` ranks when the IPC
 * buffers hold ipc_max bytes (0: no IPC buffers): never AUTO. */
anvil_all_reduce_algo anvil_ar_pick(anvil_all_reduce_algo mode, size_t bytes, int32_t ranks, size_t ipc_max);

/* The IPC buffer (bytes a rank) `mode` needs for sums up to max_bytes on
 * `ranks` ranks: 0 for NCCL, and for AUTO where its table names no IPC
 * algorithm. */
size_t anvil_ar_ipc_bytes(anvil_all_reduce_algo mode, int32_t ranks, size_t max_bytes);

/* ------------------------------------------------------------ CUDA IPC between the ranks */

#define ANVIL_IPC_MAX_RANKS 8
#define ANVIL_IPC_HANDLE_BYTES 64 /* sizeof(cudaIpcMemHandle_t) */

/* What each rank tells the others before they open its buffer. */
typedef struct anvil_ipc_record {
    int32_t rank;                   /* checks the exchange's order */
    int32_t ok;                     /* 1: its buffer was made (else why says why) */
    uint64_t host;                  /* its host (anvil_ipc_host_id): IPC needs one host */
    unsigned char uuid[16];         /* its GPU */
    char bus_id[24];                /* its GPU's PCI bus id ("0000:18:00.0") */
    unsigned char handle[ANVIL_IPC_HANDLE_BYTES]; /* cudaIpcGetMemHandle of its buffer */
    char why[128];
} anvil_ipc_record;

/* What each rank says after trying to open every other rank's buffer. */
typedef struct anvil_ipc_verdict {
    int32_t ok;
    char why[160];
} anvil_ipc_verdict;

/* This host's id: the host name's hash with gethostid's. */
uint64_t anvil_ipc_host_id(void);

/* 1 when the records [size] allow IPC between the ranks (every buffer
 * made, the records in rank order, one host, at most ANVIL_IPC_MAX_RANKS);
 * else 0 with the first reason in why. */
int anvil_ipc_records_ok(const anvil_ipc_record *all, int32_t size, char *why, size_t cap);

/* 1 when peer `p`'s GPU is this rank's own (two processes on one GPU: IPC
 * works without peer access). */
int anvil_ipc_same_gpu(const anvil_ipc_record *mine, const anvil_ipc_record *peer);

/* 1 when every rank's verdict [size] is yes; else 0 with the first no
 * (rank and reason) in why. Every rank computes the same answer. */
int anvil_ipc_verdicts_ok(const anvil_ipc_verdict *all, int32_t size, char *why, size_t cap);

#endif
