/* anvil_comm_create_mpi in a build without MPI (CMake found none). */
#include "comm/comm_internal.h"
#include "core/error.h"

int anvil_comm_mpi_built(void) { return 0; }

anvil_status anvil_comm_create_mpi(anvil_comm **out)
{
    if (out != NULL)
        *out = NULL;
    return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED,
                      "anvil was built without MPI, so it runs one rank only: install Open MPI "
                      "(libopenmpi-dev openmpi-bin: scripts/setup.sh --test installs them) and configure again "
                      "(ANVIL_MPI)");
}
