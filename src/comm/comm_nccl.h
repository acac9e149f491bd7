/*
 * The NCCL communicator's two halves (docs/parallel.md, "NCCL"):
 *
 *   comm_nccl.c       the collectives on device buffers, in the CUDA module
 *                     (libanvil-cuda.so: it links NCCL and the CUDA
 *                     runtime, which libanvil does not); offered to
 *                     libanvil through the module table (backend_module.h)
 *   comm_nccl_boot.c  anvil_comm_create_nccl in libanvil: the unique id made
 *                     on rank 0 and broadcast through the boot communicator
 *                     (MPI), then every rank opens its NCCL communicator
 *
 * Internal: both sides are built from one tree.
 */
#ifndef ANVIL_COMM_NCCL_H
#define ANVIL_COMM_NCCL_H

#include <stddef.h>
#include <stdint.h>

#include "comm/comm_internal.h"

/* sizeof(ncclUniqueId) (NCCL_UNIQUE_ID_BYTES): the bytes rank 0 broadcasts */
#define ANVIL_NCCL_ID_BYTES 128

/* Rank 0's unique id of a new NCCL communicator into id. Sets
 * NCCL_NVLS_ENABLE=0 first (see comm_nccl.c). */
anvil_status anvil_nccl_unique_id(unsigned char id[ANVIL_NCCL_ID_BYTES]);

/*
 * Opens this rank's NCCL communicator of `size` ranks on CUDA device
 * `device` (made current on the calling thread) with rank 0's id, within
 * timeout_s (0: for ever): *ops and *impl for anvil_comm_wrap (the impl
 * owns the NCCL communicator and a CUDA stream; ops->destroy frees them).
 */
anvil_status anvil_nccl_open(const unsigned char id[ANVIL_NCCL_ID_BYTES], int32_t rank, int32_t size, int device,
                             double timeout_s, const anvil_comm_ops **ops, void **impl);

#endif
