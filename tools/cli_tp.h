/*
 * --tp N in the anvil command: the ranks mpirun started, joined through the
 * MPI communicator, rank 0 leading (docs/parallel.md).
 *
 *     mpirun -np 2 anvil run --model M --tp 2 --prompt "..."
 *
 * Rank 0 runs the command as usual with opts->comm set (comm_lead: its
 * steps go to the others); ranks 1.. load the same model with the same
 * options and follow rank 0's steps, printing nothing.
 */
#ifndef ANVIL_TOOLS_CLI_TP_H
#define ANVIL_TOOLS_CLI_TP_H

#include <stdint.h>

#include "anvil/comm.h"
#include "anvil/runtime.h"

/* Joins the ranks for --tp tp (> 1): *comm and opts->comm / comm_lead
 * set. 0, or 1 after a message on stderr ("<cmd>: --tp 4 needs 4 ranks
 * (mpirun -np 4), this job has 2"; anvil built without MPI; ...). */
int cli_tp_join(const char *cmd, int32_t tp, anvil_runtime_options *opts, anvil_comm **comm);

/* Ranks 1..: loads model_dir with opts and follows rank 0's steps until it
 * ends. The exit code (0, or 1 after a message). */
int cli_tp_follow(const char *cmd, const char *model_dir, const anvil_runtime_options *opts);

/* Rank 0, at its end: releases the others when no runtime of its own did
 * (runtime_loaded 0: its load failed, or the command stopped before it),
 * then frees comm. NULL comm: nothing. */
void cli_tp_end(const char *cmd, anvil_comm *comm, int runtime_loaded);

#endif
