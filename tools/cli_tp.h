/*
 * --tp N and --pp N in the anvil command: the ranks mpirun started, joined
 * through the MPI communicator, rank 0 leading (docs/parallel.md).
 *
 *     mpirun -np 2 anvil run --model M --tp 2 --prompt "..."
 *     mpirun -np 4 anvil run --model M --tp 2 --pp 2 --prompt "..."
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

/* The help lines of --tp, --pp and --comm-timeout. */
#define CLI_TP_HELP                                                                                       \
    "      --tp N                  tensor parallelism over the N ranks of mpirun -np N (rank 0 leads,\n" \
    "                              the others follow; --device cuda: a GPU a rank, summed by NCCL;\n"    \
    "                              docs/parallel.md)\n"                                                 \
    "      --pp N                  pipeline parallelism: the layers in N stages, each over --tp ranks\n" \
    "                              (mpirun -np tp x pp; rank 0 runs the first stage and samples)\n"      \
    "      --pp-micro-batches N    with --pp: a step's sequences in N micro-batches, so the stages\n"    \
    "                              overlap (default 0: as many as stages; 1: the step whole)\n"         \
    "      --comm-timeout S        with --tp/--pp: a collective the other ranks do not join within S\n"  \
    "                              seconds fails and ends every rank (default 30; 0: wait for ever)\n"

/* Joins the ranks for --tp tp and --pp pp (0: not given, 1; their
 * product > 1): *comm and opts->comm / comm_lead / pipeline_stages set,
 * the communicator's timeout timeout_s (< 0: its default). 0, or 1 after a
 * message on stderr from rank 0 ("<cmd>: --tp 4 needs 4 ranks (mpirun -np
 * 4), this job has 2"; "--pp 4: the model has 3 layers"; anvil built
 * without MPI; ...), every rank returning so. model_dir: the model whose
 * layers --pp divides (its config read here; one that does not load is
 * left to the load to report). *model: the model's path, replaced by
 * this rank's file when it is a folder of per-rank engines (anvil build
 * --tp N: rank0.engine ...; the path stays valid for the process).
 * opts->device "cuda" becomes "cuda:<the rank's place on its node>". */
int cli_tp_join(const char *cmd, int32_t tp, int32_t pp, const char **model, double timeout_s,
                anvil_runtime_options *opts, anvil_comm **comm);

/* Ranks 1..: loads model_dir with opts and follows rank 0's steps until it
 * ends. The exit code (0, or 1 after a message). */
int cli_tp_follow(const char *cmd, const char *model_dir, const anvil_runtime_options *opts);

/* A rank that cannot go on: says so on stderr (with the communicator's
 * failure, if any) and ends every rank of the job (anvil_comm_abort:
 * mpirun kills the others, the exit code is 1). Does not return with
 * several ranks; NULL comm or one rank: nothing. */
void cli_tp_abort(const char *cmd, anvil_comm *comm);

/* Seconds a server whose ranks failed keeps answering (/health: 503 and
 * why) before it ends every rank. */
#define CLI_TP_FAIL_GRACE_S 2

/* A KV cache every rank sizes alike: 32 contexts of the model in dir (the
 * server's automatic size without its share of free memory, which differs
 * between ranks). Leaves ro as it is when the config does not load (the
 * load then says why). */
void cli_tp_kv_tokens(anvil_runtime_options *ro, const char *dir);

/* Rank 0, at its end: releases the others when no runtime of its own did
 * (runtime_loaded 0: its load failed, or the command stopped before it;
 * releasing twice does nothing, so 0 is always safe),
 * then frees comm; a communicator that failed ends every rank instead
 * (cli_tp_abort). NULL comm: nothing. */
void cli_tp_end(const char *cmd, anvil_comm *comm, int runtime_loaded);

#endif
