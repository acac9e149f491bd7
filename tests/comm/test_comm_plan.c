/*
 * The communicators' decisions that need no GPU (src/comm/comm_plan.c) and
 * the IPC all-reduce's protocol on the CPU (src/comm/comm_ipc_map.h):
 *   - a split's ranks (as MPI_Comm_split and ncclCommSplit rank them) and
 *     its leader (who makes a new NCCL id without ncclCommSplit);
 *   - the algorithm names, the choice by size (anvil_ar_pick: the table
 *     empty until measured, so NCCL under auto) and the IPC buffer it needs;
 *     a host communicator taking the choice and ignoring it;
 *   - the exchange's checks: records out of order, a rank without a buffer,
 *     two hosts, too many ranks, a rank that could not open a peer;
 *   - the barrier of comm_ipc_map.h run by threads (a thread a rank and
 *     block, C11 release / acquire as the kernel's st.release / ld.acquire):
 *     many calls with changing block counts, generations crossing 2^32, no
 *     reset; every rank sees every peer's write of the call after the first
 *     barrier and none of the next call's before the second;
 *   - the kernel's addressing emulated (one-shot and two-shot, 1 to 8 ranks,
 *     sizes around the unit, the slices and the grid): every read of a
 *     peer's buffer reads what the same block wrote before a barrier, every
 *     element is written once, and the result is the rank-order f32 sum
 *     rounded once, bit for bit (f32, bf16, f16).
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/dtype.h"
#include "comm/comm_ipc_map.h"
#include "comm/comm_plan.h"
#include "core/error.h"
#include "testutil.h"

static void test_split_place(void **state)
{
    (void)state;
    /* colors 0 1 0 1 0, keys 5 0 5 1 2: color 0 = ranks {4 (key 2), 0, 2 (key 5, by rank)} */
    const int32_t pairs[] = {0, 5, 1, 0, 0, 5, 1, 1, 0, 2};
    int32_t rank, size, leader;
    anvil_split_place(pairs, 5, 0, &rank, &size, &leader);
    assert_int_equal(rank, 1);
    assert_int_equal(size, 3);
    assert_int_equal(leader, 4);
    anvil_split_place(pairs, 5, 2, &rank, &size, &leader);
    assert_int_equal(rank, 2);
    assert_int_equal(leader, 4);
    anvil_split_place(pairs, 5, 4, &rank, &size, &leader);
    assert_int_equal(rank, 0);
    anvil_split_place(pairs, 5, 3, &rank, &size, &leader);
    assert_int_equal(rank, 1);
    assert_int_equal(size, 2);
    assert_int_equal(leader, 1);
    /* the runtime's splits of 2 stages x 2 TP ranks (key = rank): the
     * stage's ranks and the chain */
    for (int32_t r = 0; r < 4; r++) {
        int32_t stage[8], chain[8];
        for (int32_t k = 0; k < 4; k++) {
            stage[2 * k] = k / 2, stage[2 * k + 1] = k;
            chain[2 * k] = k % 2, chain[2 * k + 1] = k;
        }
        anvil_split_place(stage, 4, r, &rank, &size, &leader);
        assert_true(rank == r % 2 && size == 2 && leader == r / 2 * 2);
        anvil_split_place(chain, 4, r, &rank, &size, &leader);
        assert_true(rank == r / 2 && size == 2 && leader == r % 2);
    }
    /* a singleton */
    const int32_t one[] = {7, 0, 3, 0};
    anvil_split_place(one, 2, 1, &rank, &size, &leader);
    assert_true(rank == 0 && size == 1 && leader == 1);
}

static void test_algo_names(void **state)
{
    (void)state;
    anvil_all_reduce_algo a;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(anvil_all_reduce_algo_parse(anvil_all_reduce_algo_name((anvil_all_reduce_algo)i), &a),
                         ANVIL_OK);
        assert_int_equal(a, i);
    }
    assert_int_equal(anvil_all_reduce_algo_parse(NULL, &a), ANVIL_OK);
    assert_int_equal(a, ANVIL_ALL_REDUCE_AUTO);
    assert_int_equal(anvil_all_reduce_algo_parse("one-shot", &a), ANVIL_ERR_INVALID_ARG);
    assert_non_null(strstr(anvil_last_error(), "auto, nccl, oneshot or twoshot"));
}

static void test_pick(void **state)
{
    (void)state;
    const size_t MB = 1 << 20;
    /* no IPC buffers, or past them: NCCL */
    assert_int_equal(anvil_ar_pick(ANVIL_ALL_REDUCE_ONESHOT, 1024, 2, 0), ANVIL_ALL_REDUCE_NCCL);
    assert_int_equal(anvil_ar_pick(ANVIL_ALL_REDUCE_ONESHOT, 8 * MB + 1, 2, 8 * MB), ANVIL_ALL_REDUCE_NCCL);
    assert_int_equal(anvil_ar_pick(ANVIL_ALL_REDUCE_ONESHOT, 8 * MB, 2, 8 * MB), ANVIL_ALL_REDUCE_ONESHOT);
    assert_int_equal(anvil_ar_pick(ANVIL_ALL_REDUCE_TWOSHOT, 16, 4, 8 * MB), ANVIL_ALL_REDUCE_TWOSHOT);
    assert_int_equal(anvil_ar_pick(ANVIL_ALL_REDUCE_NCCL, 16, 4, 8 * MB), ANVIL_ALL_REDUCE_NCCL);
    assert_int_equal(anvil_ar_pick(ANVIL_ALL_REDUCE_ONESHOT, 16, 9, 8 * MB), ANVIL_ALL_REDUCE_NCCL);
    /* auto follows the table; nothing measured yet: NCCL everywhere and no
     * buffers made */
    for (int32_t ranks = 2; ranks <= 8; ranks *= 2) {
        const anvil_ar_crossover x = anvil_ar_crossover_for(ranks);
        assert_int_equal(x.ranks, ranks);
        for (size_t b = 16; b <= 64 * MB; b *= 4) {
            const anvil_all_reduce_algo want = b <= x.oneshot_max   ? ANVIL_ALL_REDUCE_ONESHOT
                                               : b <= x.twoshot_max ? ANVIL_ALL_REDUCE_TWOSHOT
                                                                    : ANVIL_ALL_REDUCE_NCCL;
            assert_int_equal(anvil_ar_pick(ANVIL_ALL_REDUCE_AUTO, b, ranks, 64 * MB), want);
        }
        const size_t most = x.twoshot_max > x.oneshot_max ? x.twoshot_max : x.oneshot_max;
        assert_int_equal(anvil_ar_ipc_bytes(ANVIL_ALL_REDUCE_AUTO, ranks, 64 * MB), most < 64 * MB ? most : 64 * MB);
    }
    assert_int_equal(anvil_ar_ipc_bytes(ANVIL_ALL_REDUCE_NCCL, 2, MB), 0);
    assert_int_equal(anvil_ar_ipc_bytes(ANVIL_ALL_REDUCE_ONESHOT, 2, MB), MB);
    assert_int_equal(anvil_ar_ipc_bytes(ANVIL_ALL_REDUCE_TWOSHOT, 8, MB), MB);
    assert_int_equal(anvil_ar_ipc_bytes(ANVIL_ALL_REDUCE_TWOSHOT, 9, MB), 0);
}

/* A communicator whose sum is its own ("self"; "mpi" alike) takes the
 * choice and ignores it; an unknown algorithm is refused. */
static void test_set_all_reduce_host(void **state)
{
    (void)state;
    anvil_comm *c = NULL;
    assert_int_equal(anvil_comm_create_self(&c), ANVIL_OK);
    assert_int_equal(anvil_comm_set_all_reduce(c, ANVIL_ALL_REDUCE_ONESHOT, 1 << 20), ANVIL_OK);
    assert_int_equal(anvil_comm_all_reduce_algo(c, 1024, ANVIL_DTYPE_BF16), ANVIL_ALL_REDUCE_NCCL);
    assert_int_equal(anvil_comm_set_all_reduce(c, (anvil_all_reduce_algo)7, 1 << 20), ANVIL_ERR_INVALID_ARG);
    assert_null(anvil_comm_error(c)); /* an argument error breaks nothing */
    assert_int_equal(anvil_comm_set_all_reduce(NULL, ANVIL_ALL_REDUCE_AUTO, 0), ANVIL_ERR_INVALID_ARG);
    anvil_comm_free(c);
}

static void test_records(void **state)
{
    (void)state;
    anvil_ipc_record r[4];
    memset(r, 0, sizeof r);
    for (int32_t i = 0; i < 4; i++) {
        r[i].rank = i;
        r[i].ok = 1;
        r[i].host = anvil_ipc_host_id();
        r[i].uuid[0] = (unsigned char)(i / 2); /* two ranks a GPU */
    }
    char why[256];
    assert_true(anvil_ipc_records_ok(r, 4, why, sizeof why));
    assert_true(anvil_ipc_same_gpu(&r[0], &r[1]));
    assert_false(anvil_ipc_same_gpu(&r[1], &r[2]));
    assert_int_equal(anvil_ipc_host_id(), r[0].host); /* stable */
    anvil_ipc_record bad[4];
    memcpy(bad, r, sizeof r);
    bad[1] = r[2], bad[2] = r[1];
    assert_false(anvil_ipc_records_ok(bad, 4, why, sizeof why));
    assert_non_null(strstr(why, "rank 2's record in place 1"));
    memcpy(bad, r, sizeof r);
    bad[3].ok = 0;
    snprintf(bad[3].why, sizeof bad[3].why, "cudaMalloc: out of memory");
    assert_false(anvil_ipc_records_ok(bad, 4, why, sizeof why));
    assert_non_null(strstr(why, "rank 3 has no IPC buffer (cudaMalloc: out of memory)"));
    memcpy(bad, r, sizeof r);
    bad[2].host ^= 1;
    assert_false(anvil_ipc_records_ok(bad, 4, why, sizeof why));
    assert_non_null(strstr(why, "another host"));
    anvil_ipc_record many[9];
    memset(many, 0, sizeof many);
    assert_false(anvil_ipc_records_ok(many, 9, why, sizeof why));
    assert_non_null(strstr(why, "at most 8"));

    anvil_ipc_verdict v[3] = {{1, ""}, {1, ""}, {1, ""}};
    assert_true(anvil_ipc_verdicts_ok(v, 3, why, sizeof why));
    v[2].ok = 0;
    snprintf(v[2].why, sizeof v[2].why, "no peer access from cuda:1");
    assert_false(anvil_ipc_verdicts_ok(v, 3, why, sizeof why));
    assert_string_equal(why, "rank 2: no peer access from cuda:1");
}

/* ------------------------------------------------------------ the barrier, by threads */

enum { BR_RANKS = 4, BR_BLOCKS = 3, BR_CALLS = 400 };

typedef struct br_world {
    ipc_signal sig[BR_RANKS];
    ipc_signal *sigp[BR_RANKS];
    uint32_t value[BR_RANKS][BR_BLOCKS]; /* the "data" each block writes a call */
    int bad;
} br_world;

typedef struct br_thread {
    br_world *w;
    int32_t rank, block;
} br_thread;

/* comm_ipc_kernel.cu's ipc_barrier, one thread standing for the block */
static void emu_barrier(ipc_signal **sig, int32_t rank, int32_t size, int32_t b)
{
    ipc_signal *self = sig[rank];
    const uint32_t g = ipc_next_gen(self->gen[b]);
    for (int32_t p = 0; p < size; p++)
        __atomic_store_n(ipc_slot(sig[p], g, b, rank), g, __ATOMIC_RELEASE);
    for (int32_t p = 0; p < size; p++)
        while (__atomic_load_n(ipc_slot(self, g, b, p), __ATOMIC_ACQUIRE) != g)
            sched_yield();
    self->gen[b] = g;
}

/* the block count of call c: the same on every rank, changing */
static int32_t br_blocks(int32_t c) { return 1 + (c * 7 + c / 5) % BR_BLOCKS; }

static void *br_run(void *arg)
{
    br_thread *t = arg;
    br_world *w = t->w;
    for (int32_t c = 1; c <= BR_CALLS; c++) {
        if (t->block >= br_blocks(c))
            continue; /* this block is not launched in call c */
        __atomic_store_n(&w->value[t->rank][t->block], (uint32_t)c, __ATOMIC_RELAXED);
        emu_barrier(w->sigp, t->rank, BR_RANKS, t->block);
        for (int32_t p = 0; p < BR_RANKS; p++)
            if (__atomic_load_n(&w->value[p][t->block], __ATOMIC_RELAXED) != (uint32_t)c)
                __atomic_store_n(&w->bad, c, __ATOMIC_RELAXED);
        emu_barrier(w->sigp, t->rank, BR_RANKS, t->block);
    }
    return NULL;
}

static void test_barrier_threads(void **state)
{
    (void)state;
    br_world *w = calloc(1, sizeof *w);
    assert_non_null(w);
    for (int32_t r = 0; r < BR_RANKS; r++) {
        w->sigp[r] = &w->sig[r];
        /* generations about to wrap (a long-running server): the parity
         * still alternates and no slot needs a reset */
        for (int32_t b = 0; b < BR_BLOCKS; b++)
            w->sig[r].gen[b] = UINT32_MAX - 101u;
    }
    pthread_t th[BR_RANKS * BR_BLOCKS];
    br_thread args[BR_RANKS * BR_BLOCKS];
    for (int32_t i = 0; i < BR_RANKS * BR_BLOCKS; i++) {
        args[i] = (br_thread){w, i / BR_BLOCKS, i % BR_BLOCKS};
        assert_int_equal(pthread_create(&th[i], NULL, br_run, &args[i]), 0);
    }
    for (int32_t i = 0; i < BR_RANKS * BR_BLOCKS; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(w->bad, 0);
    /* every rank's block b passed as many barriers: the same generation */
    for (int32_t b = 0; b < BR_BLOCKS; b++) {
        for (int32_t r = 1; r < BR_RANKS; r++)
            assert_int_equal(w->sig[r].gen[b], w->sig[0].gen[b]);
        assert_true(w->sig[0].gen[b] < 1000u); /* it wrapped */
    }
    free(w);
}

/* ------------------------------------------------------------ the kernel's addressing, emulated */

typedef struct tag {
    int32_t block, phase; /* who wrote a unit of an IPC buffer, when */
} tag;

typedef struct emu_rank {
    unsigned char *buf, *ipc; /* [n] caller's, [units x 16 + tail] IPC */
    tag *tags;                /* [units + V]: units, then the tail's elements */
    int32_t *writes;          /* [n] writes of each output element */
} emu_rank;

static float load_el(anvil_dtype dt, const unsigned char *p, int64_t e)
{
    if (dt == ANVIL_DTYPE_F32) {
        float v;
        memcpy(&v, p + e * 4, 4);
        return v;
    }
    uint16_t h;
    memcpy(&h, p + e * 2, 2);
    return dt == ANVIL_DTYPE_BF16 ? anvil_bf16_to_f32(h) : anvil_f16_to_f32(h);
}

static void store_el(anvil_dtype dt, unsigned char *p, int64_t e, float v)
{
    anvil_convert_from_f32(dt, &v, p + e * (int64_t)anvil_dtype_size(dt), 1);
}

/* A read of peer p's unit u (or tail element) by block b in phase ph: it
 * must have been written by p's block b in an earlier phase. */
static void check_read(const emu_rank *ranks, int32_t p, int64_t slot, int32_t b, int32_t ph, int *bad)
{
    const tag t = ranks[p].tags[slot];
    if (t.block != b || t.phase >= ph || t.phase == 0)
        *bad = 1;
}

/* Sum of unit/element slot (elements [e0, e0 + cnt)) over the ranks in
 * rank order, as the kernel adds them; written to dst (and, two-shot, the
 * rank's IPC buffer). */
static void emu_sum(anvil_dtype dt, emu_rank *ranks, int32_t size, int32_t me, int64_t slot, int64_t e0, int32_t cnt,
                    int32_t b, int32_t ph, int to_ipc, int *bad)
{
    for (int32_t j = 0; j < cnt; j++) {
        float acc = 0;
        for (int32_t r = 0; r < size; r++) {
            check_read(ranks, r, slot, b, ph, bad);
            const float v = load_el(dt, ranks[r].ipc, e0 + j);
            acc = r == 0 ? v : acc + v;
        }
        store_el(dt, ranks[me].buf, e0 + j, acc);
        ranks[me].writes[e0 + j]++;
        if (to_ipc)
            store_el(dt, ranks[me].ipc, e0 + j, acc);
    }
    if (to_ipc)
        ranks[me].tags[slot] = (tag){b, ph};
}

static void emulate(anvil_dtype dt, int two, int32_t size, int64_t n)
{
    const int32_t es = (int32_t)anvil_dtype_size(dt), V = ipc_unit_elems(es);
    const int64_t units = n / V, tail_at = units * V;
    const int32_t tail = (int32_t)(n - tail_at);
    const int32_t blocks = ipc_blocks(two ? (units + size - 1) / size : units);
    emu_rank ranks[IPC_MAX_RANKS];
    float *want = calloc((size_t)n + 1, sizeof *want);
    assert_non_null(want);
    for (int32_t r = 0; r < size; r++) {
        ranks[r].buf = malloc((size_t)n * (size_t)es + 1);
        ranks[r].ipc = calloc((size_t)n + 1, (size_t)es);
        ranks[r].tags = calloc((size_t)(units + V), sizeof(tag));
        ranks[r].writes = calloc((size_t)n + 1, sizeof(int32_t));
        assert_true(ranks[r].buf && ranks[r].ipc && ranks[r].tags && ranks[r].writes);
        for (int64_t e = 0; e < n; e++) /* values whose f32 sums round */
            store_el(dt, ranks[r].buf, e, (float)((e * 37 + r * 11) % 101) * 0.173f - 7.31f + 0.01f * (float)r);
    }
    for (int64_t e = 0; e < n; e++) /* the reference: rank order, f32, rounded once */
        for (int32_t r = 0; r < size; r++)
            want[e] = r == 0 ? load_el(dt, ranks[r].buf, e) : want[e] + load_el(dt, ranks[r].buf, e);
    int bad = 0;
    /* phase 1: the copy into the IPC buffer */
    for (int32_t r = 0; r < size; r++) {
        for (int32_t p = 0; p < (two ? size : 1); p++) {
            const int64_t lo = two ? ipc_slice_lo(units, p, size) : 0;
            const int64_t len = two ? ipc_slice_lo(units, p + 1, size) - lo : units;
            for (int64_t k = 0; k < len; k++) {
                memcpy(ranks[r].ipc + (lo + k) * IPC_UNIT_BYTES, ranks[r].buf + (lo + k) * IPC_UNIT_BYTES,
                       IPC_UNIT_BYTES);
                ranks[r].tags[lo + k] = (tag){ipc_unit_block(k, blocks), 1};
            }
        }
        for (int32_t t = 0; t < tail; t++) {
            memcpy(ranks[r].ipc + (tail_at + t) * es, ranks[r].buf + (tail_at + t) * es, (size_t)es);
            ranks[r].tags[units + t] = (tag){0, 1};
        }
    }
    /* phase 2 (after barrier 1) */
    for (int32_t r = 0; r < size; r++) {
        if (!two) {
            for (int64_t i = 0; i < units; i++)
                emu_sum(dt, ranks, size, r, i, i * V, V, ipc_unit_block(i, blocks), 2, 0, &bad);
            for (int32_t t = 0; t < tail; t++)
                emu_sum(dt, ranks, size, r, units + t, tail_at + t, 1, 0, 2, 0, &bad);
            continue;
        }
        const int64_t lo = ipc_slice_lo(units, r, size), len = ipc_slice_lo(units, r + 1, size) - lo;
        for (int64_t k = 0; k < len; k++)
            emu_sum(dt, ranks, size, r, lo + k, (lo + k) * V, V, ipc_unit_block(k, blocks), 2, 1, &bad);
        if (r == size - 1)
            for (int32_t t = 0; t < tail; t++)
                emu_sum(dt, ranks, size, r, units + t, tail_at + t, 1, 0, 2, 1, &bad);
    }
    /* two-shot phase 3 (after barrier 2): the other slices */
    for (int32_t r = 0; two && r < size; r++) {
        for (int32_t p = 0; p < size; p++) {
            if (p == r)
                continue;
            const int64_t lo = ipc_slice_lo(units, p, size), len = ipc_slice_lo(units, p + 1, size) - lo;
            for (int64_t k = 0; k < len; k++) {
                check_read(ranks, p, lo + k, ipc_unit_block(k, blocks), 3, &bad);
                if (ranks[p].tags[lo + k].phase != 2)
                    bad = 1; /* the sum, not the copied input */
                memcpy(ranks[r].buf + (lo + k) * IPC_UNIT_BYTES, ranks[p].ipc + (lo + k) * IPC_UNIT_BYTES,
                       IPC_UNIT_BYTES);
                for (int32_t j = 0; j < V; j++)
                    ranks[r].writes[(lo + k) * V + j]++;
            }
        }
        for (int32_t t = 0; r != size - 1 && t < tail; t++) {
            check_read(ranks, size - 1, units + t, 0, 3, &bad);
            memcpy(ranks[r].buf + (tail_at + t) * es, ranks[size - 1].ipc + (tail_at + t) * es, (size_t)es);
            ranks[r].writes[tail_at + t]++;
        }
    }
    if (bad)
        fail_msg("%s %s, %d ranks, %lld elements: a read of a unit another block wrote, or before its barrier",
                 two ? "two-shot" : "one-shot", anvil_dtype_name(dt), size, (long long)n);
    for (int32_t r = 0; r < size; r++)
        for (int64_t e = 0; e < n; e++) {
            if (ranks[r].writes[e] != 1)
                fail_msg("%s %s, %d ranks, %lld elements: element %lld written %d times on rank %d",
                         two ? "two-shot" : "one-shot", anvil_dtype_name(dt), size, (long long)n, (long long)e,
                         ranks[r].writes[e], r);
            unsigned char ref[4];
            store_el(dt, ref, 0, want[e]);
            if (memcmp(ref, ranks[r].buf + e * es, (size_t)es) != 0)
                fail_msg("%s %s, %d ranks, %lld elements: element %lld is %g on rank %d, the rank-order sum %g",
                         two ? "two-shot" : "one-shot", anvil_dtype_name(dt), size, (long long)n, (long long)e,
                         (double)load_el(dt, ranks[r].buf, e), r, (double)load_el(dt, ref, 0));
        }
    for (int32_t r = 0; r < size; r++) {
        free(ranks[r].buf);
        free(ranks[r].ipc);
        free(ranks[r].tags);
        free(ranks[r].writes);
    }
    free(want);
}

static void test_addressing(void **state)
{
    (void)state;
    /* the last: more units than the grid's threads (a thread takes several) */
    static const int64_t sizes[] = {1, 3, 4, 7, 8, 9, 31, 4096 + 5, 4 * IPC_MAX_BLOCKS * IPC_THREADS + 13};
    static const anvil_dtype dts[] = {ANVIL_DTYPE_F32, ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};
    for (int two = 0; two < 2; two++)
        for (int32_t size = 1; size <= IPC_MAX_RANKS; size++)
            for (size_t d = 0; d < 3; d++)
                for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
                    if (sizes[k] > 100000 && size > 4 && d > 0)
                        continue; /* the large size once a dtype and algorithm is enough */
                    emulate(dts[d], two, size, sizes[k]);
                }
    /* the grid: a function of the size alone, within its bounds */
    assert_int_equal(ipc_blocks(0), 1);
    assert_int_equal(ipc_blocks(IPC_THREADS), 1);
    assert_int_equal(ipc_blocks(IPC_THREADS + 1), 2);
    assert_int_equal(ipc_blocks((int64_t)1 << 40), IPC_MAX_BLOCKS);
    assert_true(sizeof(ipc_signal) <= IPC_SIGNAL_BYTES);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_place), cmocka_unit_test(test_algo_names), cmocka_unit_test(test_pick),
        cmocka_unit_test(test_set_all_reduce_host), cmocka_unit_test(test_records),
        cmocka_unit_test(test_barrier_threads),
        cmocka_unit_test(test_addressing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
