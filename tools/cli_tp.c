/* --tp N, --pp N: joining the ranks mpirun started (cli_tp.h). */
#include "cli_tp.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "anvil/builder.h"
#include "anvil/model_config.h"

#include "cli_error.h"

/* Whether the model of dir has at least pp layers (1: yes, or its config
 * does not load: the load then says why); 0 after rank 0's message. */
static int layers_enough(const char *cmd, int32_t pp, const char *dir, int32_t rank)
{
    anvil_model_config cfg;
    if (pp <= 1 || dir == NULL || anvil_model_config_load(dir, &cfg) != ANVIL_OK || cfg.n_layers >= pp)
        return 1;
    if (rank == 0)
        fprintf(stderr, "%s: --pp %d: the model has %lld layers, and each pipeline stage needs one at least\n", cmd,
                pp, (long long)cfg.n_layers);
    return 0;
}

/* A folder of per-rank engines (anvil build --tp N): rank `rank`'s file
 * in buf, else NULL. */
static const char *rank_engine(const char *dir, int32_t rank, char *buf, size_t cap)
{
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode) || anvil_engine_rank_path(dir, 0, buf, cap) != ANVIL_OK ||
        stat(buf, &sb) != 0 || anvil_engine_rank_path(dir, rank, buf, cap) != ANVIL_OK)
        return NULL;
    return buf;
}

int cli_tp_join(const char *cmd, int32_t tp, int32_t pp, const char **model, double timeout_s,
                anvil_runtime_options *opts, anvil_comm **comm)
{
    static char rank_file[4096]; /* one join a process: the model path the command goes on with */
    const char *model_dir = *model;
    *comm = NULL;
    tp = tp > 1 ? tp : 1;
    pp = pp > 1 ? pp : 1;
    if (anvil_comm_create_mpi(comm) != ANVIL_OK) {
        if (pp > 1)
            anvil_cli_report("%s: --tp %d --pp %d", cmd, tp, pp);
        else
            anvil_cli_report("%s: --tp %d", cmd, tp);
        return 1;
    }
    const int32_t rank = anvil_comm_rank(*comm);
    /* a folder of per-rank engines: each rank goes on with its own file
     * (a missing one is the load's to report) */
    const char *own = rank_engine(model_dir, rank, rank_file, sizeof rank_file);
    if (own != NULL)
        *model = model_dir = own;
    if ((int64_t)anvil_comm_size(*comm) != (int64_t)tp * pp || !layers_enough(cmd, pp, model_dir, rank)) {
        if (rank == 0 && (int64_t)anvil_comm_size(*comm) != (int64_t)tp * pp) {
            if (pp > 1)
                fprintf(stderr, "%s: --tp %d --pp %d needs %lld ranks (mpirun -np %lld), this job has %d\n", cmd,
                        tp, pp, (long long)tp * pp, (long long)tp * pp, anvil_comm_size(*comm));
            else
                fprintf(stderr, "%s: --tp %d needs %d ranks (mpirun -np %d), this job has %d\n", cmd, tp, tp, tp,
                        anvil_comm_size(*comm));
        }
        anvil_comm_free(*comm);
        *comm = NULL;
        return 1;
    }
    if (timeout_s >= 0 && anvil_comm_set_timeout(*comm, timeout_s) != ANVIL_OK) {
        anvil_cli_report("%s: --comm-timeout", cmd);
        anvil_comm_free(*comm);
        *comm = NULL;
        return 1;
    }
    opts->comm = *comm;
    opts->comm_lead = 1;
    opts->pipeline_stages = pp;
    /* --device cuda without an index: one GPU a rank, by the rank's place
     * on its node (mpirun's OMPI_COMM_WORLD_LOCAL_RANK; the job's rank
     * without it), as TensorRT-LLM places its ranks */
    static char device[32];
    if (opts->device != NULL && strcmp(opts->device, "cuda") == 0) {
        const char *local = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
        snprintf(device, sizeof device, "cuda:%d", local != NULL ? atoi(local) : rank);
        opts->device = device;
    }
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
    if (rc != 0) /* rank 0 may wait on this rank: end them all (mpirun does) */
        cli_tp_abort(cmd, comm);
    anvil_comm_free(comm);
    return rc;
}

void cli_tp_abort(const char *cmd, anvil_comm *comm)
{
    if (comm == NULL || anvil_comm_size(comm) == 1)
        return;
    const char *why = anvil_comm_error(comm);
    fprintf(stderr, "%s: rank %d of %d: ending every rank%s%s\n", cmd, anvil_comm_rank(comm), anvil_comm_size(comm),
            why ? " after a failed collective: " : "", why ? why : "");
    anvil_comm_abort(comm, 1);
}

void cli_tp_end(const char *cmd, anvil_comm *comm, int runtime_loaded)
{
    if (comm == NULL)
        return;
    if (anvil_comm_error(comm) != NULL) { /* the followers may be waiting on a step that failed */
        cli_tp_abort(cmd, comm);
    } else if (!runtime_loaded && anvil_runtime_lead_end(comm) != ANVIL_OK) {
        anvil_cli_report("%s: releasing the other ranks", cmd);
        cli_tp_abort(cmd, comm);
    }
    anvil_comm_free(comm);
}

void cli_tp_kv_tokens(anvil_runtime_options *ro, const char *dir)
{
    char first[4096];
    const char *engine = rank_engine(dir, 0, first, sizeof first); /* every rank's config is the same */
    if (engine != NULL)
        dir = engine;
    anvil_model_config cfg;
    if (ro->kv_cache_tokens != 0 || ro->kv_cache_fraction != 0 || anvil_model_config_load_path(dir, &cfg) != ANVIL_OK)
        return;
    const int64_t ctx = ro->max_seq_len > 0 ? ro->max_seq_len : cfg.max_position_embeddings;
    ro->kv_cache_tokens = ctx < INT64_MAX / 32 ? 32 * ctx : INT64_MAX;
}
