/*
 * The communicators' host-side decisions (comm_plan.h): stateless, in
 * libanvil and in the CUDA module alike.
 */
#include "comm/comm_plan.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"

/* ------------------------------------------------------------ split */

void anvil_split_place(const int32_t *pairs, int32_t size, int32_t me, int32_t *new_rank, int32_t *new_size,
                       int32_t *leader)
{
    const int32_t color = pairs[2 * me], key = pairs[2 * me + 1];
    int32_t rank = 0, n = 0, lead = me;
    int32_t lead_key = key;
    for (int32_t r = 0; r < size; r++) {
        if (pairs[2 * r] != color)
            continue;
        n++;
        const int32_t k = pairs[2 * r + 1];
        /* ranked by key, then by old rank */
        if (k < key || (k == key && r < me))
            rank++;
        if (k < lead_key || (k == lead_key && r < lead)) {
            lead = r;
            lead_key = k;
        }
    }
    *new_rank = rank;
    *new_size = n;
    *leader = lead;
}

/* ------------------------------------------------------------ which all-reduce */

anvil_status anvil_all_reduce_algo_parse(const char *name, anvil_all_reduce_algo *out)
{
    CHECK(out != NULL, ANVIL_ERR_INVALID_ARG, "anvil_all_reduce_algo_parse: NULL out");
    *out = ANVIL_ALL_REDUCE_AUTO;
    if (name == NULL || name[0] == '\0')
        return ANVIL_OK;
    static const char *const names[] = {"auto", "nccl", "oneshot", "twoshot"};
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0) {
            *out = (anvil_all_reduce_algo)i;
            return ANVIL_OK;
        }
    return ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "all-reduce \"%s\": auto, nccl, oneshot or twoshot", name);
}

const char *anvil_all_reduce_algo_name(anvil_all_reduce_algo algo)
{
    switch (algo) {
    case ANVIL_ALL_REDUCE_AUTO:
        return "auto";
    case ANVIL_ALL_REDUCE_NCCL:
        return "nccl";
    case ANVIL_ALL_REDUCE_ONESHOT:
        return "oneshot";
    case ANVIL_ALL_REDUCE_TWOSHOT:
        return "twoshot";
    }
    return "?";
}

/* AUTO's table: the largest sums one-shot and two-shot beat NCCL at, by
 * rank count. Empty until bench_allreduce has measured them on the GPU
 * machines (docs/parallel.md): NCCL at every size meanwhile. */
static const anvil_ar_crossover crossovers[] = {
    {2, 0, 0},
    {4, 0, 0},
    {8, 0, 0},
};

anvil_ar_crossover anvil_ar_crossover_for(int32_t ranks)
{
    for (size_t i = 0; i < sizeof crossovers / sizeof crossovers[0]; i++)
        if (crossovers[i].ranks == ranks)
            return crossovers[i];
    return (anvil_ar_crossover){ranks, 0, 0};
}

anvil_all_reduce_algo anvil_ar_pick(anvil_all_reduce_algo mode, size_t bytes, int32_t ranks, size_t ipc_max)
{
    if (ipc_max == 0 || bytes > ipc_max || ranks < 1 || ranks > ANVIL_IPC_MAX_RANKS)
        return ANVIL_ALL_REDUCE_NCCL;
    if (mode == ANVIL_ALL_REDUCE_ONESHOT || mode == ANVIL_ALL_REDUCE_TWOSHOT)
        return mode;
    if (mode != ANVIL_ALL_REDUCE_AUTO)
        return ANVIL_ALL_REDUCE_NCCL;
    const anvil_ar_crossover x = anvil_ar_crossover_for(ranks);
    if (bytes <= x.oneshot_max)
        return ANVIL_ALL_REDUCE_ONESHOT;
    if (bytes <= x.twoshot_max)
        return ANVIL_ALL_REDUCE_TWOSHOT;
    return ANVIL_ALL_REDUCE_NCCL;
}

size_t anvil_ar_ipc_bytes(anvil_all_reduce_algo mode, int32_t ranks, size_t max_bytes)
{
    if (ranks < 1 || ranks > ANVIL_IPC_MAX_RANKS)
        return 0;
    if (mode == ANVIL_ALL_REDUCE_ONESHOT || mode == ANVIL_ALL_REDUCE_TWOSHOT)
        return max_bytes;
    if (mode != ANVIL_ALL_REDUCE_AUTO)
        return 0;
    const anvil_ar_crossover x = anvil_ar_crossover_for(ranks);
    const size_t most = x.twoshot_max > x.oneshot_max ? x.twoshot_max : x.oneshot_max;
    return most < max_bytes ? most : max_bytes;
}

/* ------------------------------------------------------------ CUDA IPC between the ranks */

uint64_t anvil_ipc_host_id(void)
{
    char name[256] = {0};
    (void)gethostname(name, sizeof name - 1);
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return h ^ ((uint64_t)(uint32_t)gethostid() << 17);
}

int anvil_ipc_records_ok(const anvil_ipc_record *all, int32_t size, char *why, size_t cap)
{
    if (size > ANVIL_IPC_MAX_RANKS) {
        snprintf(why, cap, "%d ranks: the IPC all-reduce takes at most %d", size, ANVIL_IPC_MAX_RANKS);
        return 0;
    }
    for (int32_t r = 0; r < size; r++) {
        if (all[r].rank != r) {
            snprintf(why, cap, "the exchange put rank %d's record in place %d", all[r].rank, r);
            return 0;
        }
        if (!all[r].ok) {
            snprintf(why, cap, "rank %d has no IPC buffer (%.*s)", r, (int)sizeof all[r].why, all[r].why);
            return 0;
        }
        if (all[r].host != all[0].host) {
            snprintf(why, cap, "rank %d is on another host than rank 0 (CUDA IPC needs one host)", r);
            return 0;
        }
    }
    return 1;
}

int anvil_ipc_same_gpu(const anvil_ipc_record *mine, const anvil_ipc_record *peer)
{
    return memcmp(mine->uuid, peer->uuid, sizeof mine->uuid) == 0;
}

int anvil_ipc_verdicts_ok(const anvil_ipc_verdict *all, int32_t size, char *why, size_t cap)
{
    for (int32_t r = 0; r < size; r++)
        if (!all[r].ok) {
            snprintf(why, cap, "rank %d: %.*s", r, (int)sizeof all[r].why, all[r].why);
            return 0;
        }
    return 1;
}
