/*
 * The IPC all-reduce's layout and addressing (comm_ipc_kernel.cu), in plain
 * C so that the kernel and the CPU test (tests/comm/test_comm_plan.c, which
 * runs the same barrier with threads) share one definition:
 *
 *   - each rank's buffer: an ipc_signal, then the data (IPC_SIGNAL_BYTES
 *     from the start), opened by every other rank;
 *   - the data in units of 16 bytes (V elements: the same on every rank,
 *     whatever the alignment of each rank's own buffer), the tail
 *     (n % V elements) by block 0, one element a thread;
 *   - one-shot: unit i is copied in and summed by the thread
 *     ipc_unit_block(i) of the grid; two-shot: the units form one slice a
 *     rank ([ipc_slice_lo(r), ipc_slice_lo(r + 1))) and local unit k of
 *     any slice belongs to block ipc_unit_block(k), so the block that
 *     copies a unit in on one rank is the block that reads it on the others
 *     and the barrier of that block alone orders them;
 *   - the barrier of block b: generation g = gen[b] + 1 (the rank's own
 *     count of block b's barriers, kept in its signal, so a graph replays
 *     it and nothing is reset); rank r writes g into flag[g & 1][b][r] of
 *     every rank and waits until its own flag[g & 1][b][p] holds g for
 *     every p. Two slots by parity: a rank can be one barrier ahead of a
 *     peer that has not yet read its slot, never two.
 */
#ifndef ANVIL_COMM_IPC_MAP_H
#define ANVIL_COMM_IPC_MAP_H

#include <stdint.h>

#ifdef __CUDACC__
#define IPC_HD __host__ __device__ __forceinline__
#else
#define IPC_HD static inline
#endif

#define IPC_MAX_RANKS 8      /* ANVIL_IPC_MAX_RANKS */
#define IPC_MAX_BLOCKS 64    /* blocks a call runs at most (each has its own barrier slots) */
#define IPC_THREADS 512      /* threads a block */
#define IPC_UNIT_BYTES 16    /* a thread's access to the IPC buffers */
#define IPC_SIGNAL_BYTES 8192

/* At the start of each rank's buffer (zeroed once at creation). */
typedef struct ipc_signal {
    uint32_t gen[IPC_MAX_BLOCKS];                    /* this rank's barriers passed, by block */
    uint32_t flag[2][IPC_MAX_BLOCKS][IPC_MAX_RANKS]; /* written by rank p: its generation at block b */
} ipc_signal;

/* The generation after g (wraps at 2^32: the parity still alternates). */
IPC_HD uint32_t ipc_next_gen(uint32_t g) { return g + 1u; }

/* The slot rank `from` writes generation g of block b into. */
IPC_HD uint32_t *ipc_slot(ipc_signal *s, uint32_t g, int32_t b, int32_t from)
{
    return &s->flag[g & 1u][b][from];
}

/* First unit of rank r's slice of n_units over size ranks. */
IPC_HD int64_t ipc_slice_lo(int64_t n_units, int32_t r, int32_t size) { return n_units * r / size; }

/* Blocks a call runs: one unit a thread for `work` units, at most
 * IPC_MAX_BLOCKS (then a thread takes several), at least 1; a function of
 * the sum's size only, so every rank runs the same grid. work: n_units
 * (one-shot) or the largest slice (two-shot). */
IPC_HD int32_t ipc_blocks(int64_t work)
{
    int64_t b = (work + IPC_THREADS - 1) / IPC_THREADS;
    return b < 1 ? 1 : b > IPC_MAX_BLOCKS ? IPC_MAX_BLOCKS : (int32_t)b;
}

/* The block of a grid of `blocks` that handles (local) unit k: the
 * kernel's grid-stride loops give unit k to thread k % (blocks x
 * IPC_THREADS). */
IPC_HD int32_t ipc_unit_block(int64_t k, int32_t blocks)
{
    return (int32_t)((k % ((int64_t)blocks * IPC_THREADS)) / IPC_THREADS);
}

/* Elements a unit holds (16 bytes of the IPC buffers, which are aligned;
 * the caller's buffer is read and written at any alignment). */
IPC_HD int32_t ipc_unit_elems(int32_t elem_bytes) { return IPC_UNIT_BYTES / elem_bytes; }

#endif
