/* The anvil command's environment variables; see cli_env.h. */
#include "cli_env.h"

#include <stdlib.h>
#include <string.h>

#include "anvil/log.h"

static int is(const char *name, const char *value)
{
    const char *v = getenv(name);
    return v != NULL && strcmp(v, value) == 0;
}

void cli_env_log(void)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    const char *v = getenv("ANVIL_LOG");
    for (int i = 0; v != NULL && i < 4; i++)
        if (strcmp(v, names[i]) == 0)
            anvil_log_set_level((anvil_log_level)i);
}

int cli_env_debug(void)
{
    const char *v = getenv("ANVIL_DEBUG");
    return v != NULL && v[0] != '\0' && strcmp(v, "0") != 0;
}

const char *cli_env_key(const char *name) { return getenv(name); }

void cli_env_runtime_options(anvil_runtime_options *o)
{
    const char *isa = getenv("ANVIL_CPU_ISA");
    if (isa != NULL && isa[0] != '\0')
        o->cpu_isa = isa;
    if (is("ANVIL_CUDA_GRAPHS", "0"))
        o->no_cuda_graphs = 1;
    if (is("ANVIL_CUDA_PDL", "0"))
        o->no_pdl = 1;
    if (is("ANVIL_HOST_SAMPLING", "1"))
        o->host_sampling = 1;
    if (is("ANVIL_NORM_GEMV", "1"))
        o->norm_gemv = 1;
    if (is("ANVIL_CUDA_FP8_UNSHARED", "1"))
        o->cuda_fp8_unshared = 1;
    if (is("ANVIL_CUDA_COMBINE_IN_KERNEL", "1"))
        o->attn_combine_in_kernel = 1;
    const char *mq = getenv("ANVIL_CUDA_MATMUL_QUANT");
    if (mq != NULL && mq[0] >= '0' && mq[0] <= '9' &&
        (mq[1] == '\0' || (mq[0] == '1' && (mq[1] == '0' || mq[1] == '1') && mq[2] == '\0')))
        o->cuda_matmul_quant = atoi(mq); /* 0..11 */
    const char *rw = getenv("ANVIL_CUDA_ROWS_WARPS");
    if (rw != NULL && (strcmp(rw, "4") == 0 || strcmp(rw, "8") == 0 || strcmp(rw, "16") == 0))
        o->cuda_rows_warps = atoi(rw);
    const char *ml = getenv("ANVIL_CUDA_MOE_LOOP");
    if (ml != NULL && ml[0] >= '0' && ml[0] <= '3' && ml[1] == '\0')
        o->cuda_moe_loop = ml[0] - '0';
    const char *ar = getenv("ANVIL_ALLREDUCE");
    if (ar != NULL && ar[0] != '\0')
        o->all_reduce = ar; /* checked by the load: auto, nccl, oneshot, twoshot */
}
