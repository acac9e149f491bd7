/* --tp N: joining the ranks mpirun started (cli_tp.h). */
#include "cli_tp.h"

#include <stdio.h>

#include "cli_error.h"

int cli_tp_join(const char *cmd, int32_t tp, anvil_runtime_options *opts, anvil_comm **comm)
{
    *comm = NULL;
    if (anvil_comm_create_mpi(comm) != ANVIL_OK) {
        anvil_cli_report("%s: --tp %d", cmd, tp);
        return 1;
    }
    if (anvil_comm_size(*comm) != tp) {
        if (anvil_comm_rank(*comm) == 0)
            fprintf(stderr, "%s: --tp %d needs %d ranks (mpirun -np %d), this job has %d\n", cmd, tp, tp, tp,
                    anvil_comm_size(*comm));
        anvil_comm_free(*comm);
        *comm = NULL;
        return 1;
    }
    opts->comm = *comm;
    opts->comm_lead = 1;
    return 0;
}

int cli_tp_follow(const char *cmd, const char *model_dir, const anvil_runtime_options *opts)
{
    anvil_comm *comm = opts->comm;
    anvil_runtime *rt = NULL;
    int rc = 0;
    if (anvil_runtime_load(model_dir, opts, &rt) != ANVIL_OK) {
        anvil_cli_report("%s: rank %d", cmd, anvil_comm_rank(comm));
        rc = 1;
    } else if (anvil_runtime_follow(rt) != ANVIL_OK) {
        anvil_cli_report("%s: rank %d", cmd, anvil_comm_rank(comm));
        rc = 1;
    }
    anvil_runtime_free(rt);
    anvil_comm_free(comm);
    return rc;
}

void cli_tp_end(const char *cmd, anvil_comm *comm, int runtime_loaded)
{
    if (comm == NULL)
        return;
    if (!runtime_loaded && anvil_runtime_lead_end(comm) != ANVIL_OK)
        anvil_cli_report("%s: releasing the other ranks", cmd);
    anvil_comm_free(comm);
}
