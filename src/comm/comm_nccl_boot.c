/*
 * anvil_comm_create_nccl (anvil/comm.h): the NCCL communicator made over a
 * boot communicator. NCCL itself lives in the CUDA module (comm_nccl.c),
 * which libanvil loads as it loads the CUDA backend; here rank 0 asks it
 * for the unique id, the boot communicator broadcasts the id under its
 * deadline, and every rank opens its part.
 */
#include <stdlib.h>

#include "backend/backend_module.h"
#include "comm/comm_internal.h"
#include "comm/comm_nccl.h"
#include "core/error.h"

anvil_status anvil_comm_create_nccl(anvil_comm *boot, int device, anvil_comm **out)
{
    CHECK(out != NULL, ANVIL_ERR_INVALID_ARG, "anvil_comm_create_nccl: NULL out");
    *out = NULL;
    CHECK(boot != NULL && device >= 0, ANVIL_ERR_INVALID_ARG, "anvil_comm_create_nccl: no boot communicator or "
          "device %d", device);
    anvil_backend_module m;
    TRY(anvil_backend_cuda_module(NULL, &m));
    CHECK(m.nccl_unique_id != NULL && m.nccl_open != NULL, ANVIL_ERR_UNSUPPORTED,
          "anvil's CUDA backend was built without NCCL, so device buffers cannot be summed across ranks "
          "(install NCCL's headers and library and configure again: docs/parallel.md)");
    unsigned char id[ANVIL_NCCL_ID_BYTES] = {0};
    /* every rank joins the broadcast, even when rank 0's id failed: its
     * zeros then fail every open (NCCL refuses an id of zeros), and no rank
     * waits for a broadcast that never comes */
    anvil_status st = boot->rank == 0 ? m.nccl_unique_id(id) : ANVIL_OK;
    const anvil_status bst = anvil_comm_broadcast(boot, id, sizeof id, 0);
    TRY(st);
    TRY(bst);
    const anvil_comm_ops *ops = NULL;
    void *impl = NULL;
    TRY(m.nccl_open(id, boot->rank, boot->size, device, boot->timeout_s, &ops, &impl));
    anvil_comm *c = anvil_comm_wrap(ops, boot->rank, boot->size, impl);
    if (c == NULL) {
        anvil_comm tmp = {.ops = ops, .impl = impl};
        ops->destroy(&tmp);
        return ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
    }
    c->timeout_s = boot->timeout_s;
    c->parent = boot; /* a failure breaks both; the job ends through boot */
    *out = c;
    return ANVIL_OK;
}
