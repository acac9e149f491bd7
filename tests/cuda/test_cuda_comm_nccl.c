/*
 * The NCCL communicator (src/comm/comm_nccl.c, docs/parallel.md "NCCL") on
 * device buffers, one GPU a rank:
 *
 *   test_cuda_comm_nccl                     one rank on one GPU (booted by
 *                                           the self communicator): every
 *                                           call is the identity
 *   mpirun -np 2 test_cuda_comm_nccl        two ranks on two GPUs (booted by
 *                                           MPI; rank r on cuda:<local rank>):
 *                                           the real collectives
 *   test_cuda_comm_nccl --fork 2            the same without MPI (a machine
 *                                           without mpirun): a process a rank,
 *                                           forked before CUDA starts, booted by
 *                                           pipes (fork_comm.h)
 *
 * Checked on every rank: sums of f32, bf16 and f16 (small integers, so the
 * sum is exact whatever NCCL's order) at 1 to 2^20 + 3 elements, all_gather
 * and the runtime's gather by columns, broadcast from every root, a
 * send/recv ring, barrier; splits (ncclCommSplit): singletons and every
 * rank ranked backwards, with sums and a ring inside; with several ranks,
 * tiny-llama3 (f32) cut over the ranks on cuda (NCCL's sums, then one-shot
 * and two-shot over CUDA IPC), and over 2 pipeline stages (ncclSend /
 * ncclRecv), against the same model on one GPU: the prefill logits within
 * 1e-4 x max|logit| and the greedy tokens equal. Prints PASS/FAIL
 * lines and the all-reduce's time per call at decode and prefill sizes
 * (no timed assertion). Skips (77) without a GPU or without NCCL.
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "anvil/comm.h"
#include "anvil/runtime.h"
#include "anvil/sampling.h"
#include "backend/cuda/cuda_backend.h"
#include "comm/comm_internal.h"
#include "core/error.h"
#include "fork_comm.h"
#include "testutil.h"

/* A copy from pageable host memory to the device, finished: cudaMemcpy
 * may return before its DMA lands, and the sums run on a non-blocking
 * stream, which does not wait for the legacy stream's copy (session 31:
 * on an H100 shared with other processes, a call summed the previous
 * call's values). */
static cudaError_t h2d_sync(void *d, const void *h, size_t n)
{
    const cudaError_t e = cudaMemcpy(d, h, n, cudaMemcpyHostToDevice);
    return e != cudaSuccess ? e : cudaDeviceSynchronize();
}

static anvil_comm *boot; /* MPI under mpirun, else self */
static anvil_comm *nccl;
static int device;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *dev_alloc(size_t bytes)
{
    void *p = NULL;
    assert_int_equal(cudaMalloc(&p, bytes), cudaSuccess);
    return p;
}

/* Sums of small integers: exact in every dtype and order. */
static void check_sum_on(anvil_comm *c, anvil_dtype dt, int64_t n)
{
    const int32_t rank = anvil_comm_rank(c), size = anvil_comm_size(c);
    const size_t es = anvil_dtype_size(dt);
    float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
    void *h = malloc((size_t)n * es);
    assert_true(x && y && h);
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)((rank + 1) * (int)(i % 7) - 3);
    anvil_convert_from_f32(dt, x, h, n);
    void *d = dev_alloc((size_t)n * es);
    assert_int_equal(h2d_sync(d, h, (size_t)n * es), cudaSuccess);
    if (anvil_comm_all_reduce_sum(c, d, n, dt) != ANVIL_OK)
        fail_msg("all_reduce %s x %lld: %s", anvil_dtype_name(dt), (long long)n, anvil_last_error());
    assert_int_equal(cudaMemcpy(h, d, (size_t)n * es, cudaMemcpyDeviceToHost), cudaSuccess);
    anvil_convert_to_f32(dt, h, y, n);
    for (int64_t i = 0; i < n; i++) {
        const float want = (float)((size * (size + 1) / 2) * (int)(i % 7) - 3 * size);
        if (y[i] != want)
            fail_msg("FAIL all_reduce %s x %lld: [%lld] = %g, want %g (rank %d of %d)", anvil_dtype_name(dt),
                     (long long)n, (long long)i, (double)y[i], (double)want, rank, size);
    }
    cudaFree(d);
    free(x);
    free(y);
    free(h);
}

static void check_sum(anvil_dtype dt, int64_t n) { check_sum_on(nccl, dt, n); }

static void test_all_reduce(void **state)
{
    (void)state;
    static const int64_t sizes[] = {1, 7, 4097, 65537, ((int64_t)1 << 20) + 3};
    static const anvil_dtype dts[] = {ANVIL_DTYPE_F32, ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};
    for (size_t d = 0; d < 3; d++)
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
            check_sum(dts[d], sizes[k]);
    printf("PASS all_reduce f32/bf16/f16, 1 .. 2^20+3 elements (rank %d of %d)\n", anvil_comm_rank(nccl),
           anvil_comm_size(nccl));
}

static void test_gather_broadcast_p2p(void **state)
{
    (void)state;
    const int32_t rank = anvil_comm_rank(nccl), size = anvil_comm_size(nccl);
    enum { BYTES = 1000, ROWS = 3, ROW = 8 };
    unsigned char h[BYTES * 8];
    unsigned char *send = dev_alloc(BYTES), *recv = dev_alloc((size_t)BYTES * (size_t)size);
    unsigned char *stage = dev_alloc((size_t)BYTES * (size_t)size);
    /* all_gather: rank k's bytes are k + 1 + i % 5 */
    for (int i = 0; i < BYTES; i++)
        h[i] = (unsigned char)(rank + 1 + i % 5);
    assert_int_equal(h2d_sync(send, h, BYTES), cudaSuccess);
    assert_int_equal(anvil_comm_all_gather(nccl, send, recv, BYTES), ANVIL_OK);
    assert_int_equal(cudaMemcpy(h, recv, (size_t)BYTES * (size_t)size, cudaMemcpyDeviceToHost), cudaSuccess);
    for (int32_t k = 0; k < size; k++)
        for (int i = 0; i < BYTES; i++)
            if (h[k * BYTES + i] != (unsigned char)(k + 1 + i % 5))
                fail_msg("FAIL all_gather: rank %d's byte %d is %d (on rank %d)", k, i, h[k * BYTES + i], rank);
    /* by columns: row r of rank k's [ROWS, ROW] is 16 k + r, side by side */
    for (int r = 0; r < ROWS; r++)
        memset(h + r * ROW, 16 * rank + r, ROW);
    assert_int_equal(h2d_sync(send, h, ROWS * ROW), cudaSuccess);
    assert_int_equal(anvil_comm_all_gather_cols(nccl, send, recv, stage, ROWS, ROW), ANVIL_OK);
    assert_int_equal(cudaMemcpy(h, recv, (size_t)ROWS * ROW * (size_t)size, cudaMemcpyDeviceToHost), cudaSuccess);
    for (int r = 0; r < ROWS; r++)
        for (int32_t k = 0; k < size; k++)
            for (int i = 0; i < ROW; i++)
                if (h[(r * size + k) * ROW + i] != (unsigned char)(16 * k + r))
                    fail_msg("FAIL all_gather by columns: row %d, rank %d's part holds %d", r, k,
                             h[(r * size + k) * ROW + i]);
    /* broadcast from every root */
    for (int32_t root = 0; root < size; root++) {
        memset(h, rank == root ? 100 + root : 0, BYTES);
        assert_int_equal(h2d_sync(send, h, BYTES), cudaSuccess);
        assert_int_equal(anvil_comm_broadcast(nccl, send, BYTES, root), ANVIL_OK);
        assert_int_equal(cudaMemcpy(h, send, BYTES, cudaMemcpyDeviceToHost), cudaSuccess);
        for (int i = 0; i < BYTES; i++)
            if (h[i] != (unsigned char)(100 + root))
                fail_msg("FAIL broadcast from %d: byte %d is %d on rank %d", root, i, h[i], rank);
    }
    /* a ring: each rank sends its number to the next (even ranks send
     * first, odd ones receive first: NCCL's send waits for its receive) */
    if (size > 1) {
        const int32_t next = (rank + 1) % size, prev = (rank + size - 1) % size;
        memset(h, rank, 64);
        assert_int_equal(h2d_sync(send, h, 64), cudaSuccess);
        for (int turn = 0; turn < 2; turn++) {
            if ((rank % 2 == 0) == (turn == 0))
                assert_int_equal(anvil_comm_send(nccl, send, 64, next, 5), ANVIL_OK);
            else
                assert_int_equal(anvil_comm_recv(nccl, recv, 64, prev, 5), ANVIL_OK);
        }
        assert_int_equal(cudaMemcpy(h, recv, 64, cudaMemcpyDeviceToHost), cudaSuccess);
        for (int i = 0; i < 64; i++)
            if (h[i] != (unsigned char)prev)
                fail_msg("FAIL send/recv ring: rank %d got %d, want %d", rank, h[i], prev);
    }
    assert_int_equal(anvil_comm_barrier(nccl), ANVIL_OK);
    cudaFree(send);
    cudaFree(recv);
    cudaFree(stage);
    printf("PASS all_gather, by columns, broadcast from every root%s, barrier (rank %d of %d)\n",
           size > 1 ? ", send/recv ring" : "", rank, size);
}

/* Time per all_reduce at a decode step's size (one row of a 8192-wide
 * model, bf16) and a prefill's (512 rows). */
static void test_timing(void **state)
{
    (void)state;
    static const int64_t rows[] = {1, 512};
    for (int k = 0; k < 2; k++) {
        const int64_t n = rows[k] * 8192;
        void *d = dev_alloc((size_t)n * 2);
        assert_int_equal(cudaMemset(d, 0, (size_t)n * 2), cudaSuccess);
        const int iters = 200;
        for (int i = 0; i < 10; i++)
            assert_int_equal(anvil_comm_all_reduce_sum(nccl, d, n, ANVIL_DTYPE_BF16), ANVIL_OK);
        const double t0 = now_s();
        for (int i = 0; i < iters; i++)
            assert_int_equal(anvil_comm_all_reduce_sum(nccl, d, n, ANVIL_DTYPE_BF16), ANVIL_OK);
        const double us = (now_s() - t0) / iters * 1e6;
        if (anvil_comm_rank(nccl) == 0)
            printf("TIME all_reduce bf16 %lld x 8192 (%.1f KiB) on %d ranks: %.1f us a call (with the host's wait), "
                   "%.2f GB/s algorithm bandwidth\n",
                   (long long)rows[k], (double)n * 2 / 1024, anvil_comm_size(nccl), us, (double)n * 2 / us * 1e-3);
        cudaFree(d);
    }
}

static const char *all_reduce; /* the runtime option all_reduce of the next load (NULL: auto) */

static anvil_status load_pp(const char *model, anvil_comm *c, int32_t stages, anvil_runtime **rt)
{
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    char dev[32];
    snprintf(dev, sizeof dev, "cuda:%d", device);
    o.device = dev;
    o.weight_dtype = ANVIL_DTYPE_F32;
    o.max_seq_len = 256;
    o.max_num_tokens = 256;
    o.max_logit_rows = 256;
    o.max_batch_size = 4;
    o.kv_cache_tokens = 1024;
    o.comm = c;
    o.pipeline_stages = stages;
    o.all_reduce = all_reduce;
    char path[512];
    snprintf(path, sizeof path, "models/%s", model);
    return anvil_runtime_load(anvil_test_shared_path(path), &o, rt);
}

static anvil_status load(const char *model, anvil_comm *c, anvil_runtime **rt) { return load_pp(model, c, 1, rt); }

/* One prompt's prefill logits and 16 greedy tokens of rt. */
static void prefill_and_decode(anvil_runtime *rt, const int32_t *ids, int32_t n, float *logits, int32_t *greedy)
{
    int32_t table[16], pos[64], rows[64], starts[2] = {0, n};
    const int32_t bs = anvil_runtime_kv_block_size(rt), nb = (n + 16 + bs - 1) / bs;
    assert_true(nb <= 16 && n <= 48);
    assert_int_equal(anvil_runtime_kv_alloc(rt, nb, table), ANVIL_OK);
    for (int32_t t = 0; t < n; t++)
        pos[t] = rows[t] = t;
    anvil_batch b = {.n_tokens = n, .token_ids = ids, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                     .block_tables = table, .max_blocks_per_seq = nb, .n_logits = n, .logit_rows = rows};
    if (anvil_runtime_forward(rt, &b, logits) != ANVIL_OK)
        fail_msg("prefill: %s", anvil_last_error());
    const int64_t vocab = anvil_runtime_config(rt)->vocab_size;
    int32_t next = anvil_greedy_pick(logits + (size_t)(n - 1) * (size_t)vocab, (int32_t)vocab);
    for (int32_t s = 0; s < 16; s++) {
        greedy[s] = next;
        int32_t p = n + s, r = 0, st[2] = {0, 1};
        anvil_batch d = {.n_tokens = 1, .token_ids = &next, .positions = &p, .n_seqs = 1, .seq_starts = st,
                         .block_tables = table, .max_blocks_per_seq = nb, .n_logits = 1, .logit_rows = &r};
        if (anvil_runtime_forward_greedy(rt, &d, &next) != ANVIL_OK)
            fail_msg("decode step %d: %s", s, anvil_last_error());
    }
    anvil_runtime_kv_release(rt, nb, table);
}

/* tiny-llama3 cut over the ranks (the runtime makes its own NCCL
 * communicator over boot) against one GPU alone, in lockstep. */
static void test_runtime_tp(void **state)
{
    (void)state;
    const int32_t size = anvil_comm_size(boot);
    if (size == 1)
        skip(); /* one rank: the runtime runs no collective */
    static const int32_t ids[] = {1, 403, 407, 261, 299, 310, 262, 114, 278, 262, 329, 289}; /* vocabulary 512 */
    const int32_t n = (int32_t)(sizeof ids / sizeof ids[0]);
    anvil_runtime *one = NULL, *cut = NULL;
    if (load("tiny-llama3", NULL, &one) != ANVIL_OK)
        fail_msg("load one GPU: %s", anvil_last_error());
    if (load("tiny-llama3", boot, &cut) != ANVIL_OK)
        fail_msg("load over %d ranks: %s", size, anvil_last_error());
    const int64_t vocab = anvil_runtime_config(one)->vocab_size;
    float *a = malloc((size_t)n * (size_t)vocab * 4), *b = malloc((size_t)n * (size_t)vocab * 4);
    int32_t ga[16], gb[16];
    assert_true(a && b);
    prefill_and_decode(one, ids, n, a, ga);
    prefill_and_decode(cut, ids, n, b, gb);
    float amax = 0, dmax = 0;
    for (int64_t i = 0; i < (int64_t)n * vocab; i++) {
        amax = fmaxf(amax, fabsf(a[i]));
        dmax = fmaxf(dmax, fabsf(a[i] - b[i]));
    }
    if (dmax > 1e-4f * amax)
        fail_msg("FAIL tiny-llama3 over %d ranks: logits differ by %g (max|logit| %g)", size, (double)dmax,
                 (double)amax);
    for (int s = 0; s < 16; s++)
        if (ga[s] != gb[s])
            fail_msg("FAIL tiny-llama3 over %d ranks: greedy token %d is %d, one GPU %d", size, s, gb[s], ga[s]);
    printf("PASS tiny-llama3 f32 over %d ranks on cuda (NCCL): logits within %.2g x max|logit| of one GPU, 16 "
           "greedy tokens equal (rank %d)\n",
           size, (double)(dmax / amax), anvil_comm_rank(boot));
    anvil_runtime_free(cut);
    anvil_runtime_free(one);
    free(a);
    free(b);
}

/* tiny-llama3 over the ranks with the TP sums one-shot, then two-shot,
 * over CUDA IPC (the runtime option all_reduce; NCCL where IPC cannot run,
 * which the communicator logs): one GPU's logits and greedy tokens. */
static void test_runtime_tp_ipc(void **state)
{
    (void)state;
    if (anvil_comm_size(boot) == 1)
        skip();
    static const char *const algos[] = {"oneshot", "twoshot"};
    for (int a = 0; a < 2; a++) {
        all_reduce = algos[a];
        /* test_runtime_tp's comparison, with the sums chosen */
        test_runtime_tp(state);
        all_reduce = NULL;
        printf("PASS the same with ANVIL_ALLREDUCE=%s (rank %d)\n", algos[a], anvil_comm_rank(boot));
    }
}

/* A send/recv ring inside c (even ranks send first: NCCL's send waits for
 * its receive): each rank receives its predecessor's number. */
static void ring(anvil_comm *c, const char *what)
{
    const int32_t rank = anvil_comm_rank(c), size = anvil_comm_size(c);
    if (size == 1)
        return;
    unsigned char h[64];
    unsigned char *send = dev_alloc(64), *recv = dev_alloc(64);
    const int32_t next = (rank + 1) % size, prev = (rank + size - 1) % size;
    memset(h, 40 + rank, 64);
    assert_int_equal(h2d_sync(send, h, 64), cudaSuccess);
    for (int turn = 0; turn < 2; turn++) {
        const anvil_status st = (rank % 2 == 0) == (turn == 0) ? anvil_comm_send(c, send, 64, next, 1)
                                                                : anvil_comm_recv(c, recv, 64, prev, 1);
        if (st != ANVIL_OK)
            fail_msg("FAIL %s: send/recv ring: %s", what, anvil_last_error());
    }
    assert_int_equal(cudaMemcpy(h, recv, 64, cudaMemcpyDeviceToHost), cudaSuccess);
    for (int i = 0; i < 64; i++)
        if (h[i] != (unsigned char)(40 + prev))
            fail_msg("FAIL %s: ring: rank %d got %d, want %d", what, rank, h[i], 40 + prev);
    cudaFree(send);
    cudaFree(recv);
}

/* ncclCommSplit (or a new id through the parent where NCCL lacks it): one
 * rank's split is a self part; on several ranks, singletons (NCCL
 * communicators of one rank: a gather is a copy) and the whole job ranked
 * backwards by key, whose sums, gathers and ring run inside the part. */
static void test_split(void **state)
{
    (void)state;
    const int32_t rank = anvil_comm_rank(nccl), size = anvil_comm_size(nccl);
    anvil_comm *one = NULL, *all = NULL;
    if (anvil_comm_split(nccl, rank, 0, &one) != ANVIL_OK)
        fail_msg("FAIL split into singletons: %s", anvil_last_error());
    assert_int_equal(anvil_comm_rank(one), 0);
    assert_int_equal(anvil_comm_size(one), 1);
    assert_string_equal(anvil_comm_name(one), size == 1 ? "self" : "nccl");
    if (size > 1) {
        unsigned char h[16], *d = dev_alloc(16), *g = dev_alloc(16);
        memset(h, 7 + rank, 16);
        assert_int_equal(h2d_sync(d, h, 16), cudaSuccess);
        assert_int_equal(anvil_comm_all_gather(one, d, g, 16), ANVIL_OK);
        memset(h, 0, 16);
        assert_int_equal(cudaMemcpy(h, g, 16, cudaMemcpyDeviceToHost), cudaSuccess);
        assert_int_equal(h[15], 7 + rank);
        assert_int_equal(anvil_comm_barrier(one), ANVIL_OK);
        cudaFree(d);
        cudaFree(g);
    }
    if (anvil_comm_split(nccl, 3, size - rank, &all) != ANVIL_OK)
        fail_msg("FAIL split of every rank: %s", anvil_last_error());
    assert_int_equal(anvil_comm_size(all), size);
    assert_int_equal(anvil_comm_rank(all), size - 1 - rank);
    assert_ptr_equal(anvil_comm_error(all), NULL);
    check_sum_on(all, ANVIL_DTYPE_BF16, 4097);
    check_sum_on(all, ANVIL_DTYPE_F32, 65537);
    ring(all, "split of every rank");
    assert_int_equal(anvil_comm_barrier(all), ANVIL_OK);
    anvil_comm_free(all);
    anvil_comm_free(one);
    printf("PASS split: singletons, every rank ranked backwards (sums, gather, ring inside) (rank %d of %d)\n", rank,
           size);
}

/* tiny-llama3 (f32) over 2 pipeline stages on cuda (with 4 ranks, 2 TP
 * ranks each): the hidden state through ncclSend / ncclRecv, the logits
 * back to stage 0; both stages return one GPU's logits and greedy tokens. */
static void test_runtime_pp(void **state)
{
    (void)state;
    const int32_t size = anvil_comm_size(boot);
    if (size == 1 || size % 2 != 0)
        skip();
    static const int32_t ids[] = {1, 403, 407, 261, 299, 310, 262, 114, 278, 262, 329, 289};
    const int32_t n = (int32_t)(sizeof ids / sizeof ids[0]);
    anvil_runtime *one = NULL, *cut = NULL;
    if (load("tiny-llama3", NULL, &one) != ANVIL_OK)
        fail_msg("load one GPU: %s", anvil_last_error());
    if (load_pp("tiny-llama3", boot, 2, &cut) != ANVIL_OK)
        fail_msg("FAIL load over 2 stages of %d ranks on cuda: %s", size / 2, anvil_last_error());
    const int64_t vocab = anvil_runtime_config(one)->vocab_size;
    float *a = malloc((size_t)n * (size_t)vocab * 4), *b = malloc((size_t)n * (size_t)vocab * 4);
    int32_t ga[16], gb[16];
    assert_true(a && b);
    prefill_and_decode(one, ids, n, a, ga);
    prefill_and_decode(cut, ids, n, b, gb);
    float amax = 0, dmax = 0;
    for (int64_t i = 0; i < (int64_t)n * vocab; i++) {
        amax = fmaxf(amax, fabsf(a[i]));
        dmax = fmaxf(dmax, fabsf(a[i] - b[i]));
    }
    if (dmax > 1e-4f * amax)
        fail_msg("FAIL tiny-llama3 over 2 stages: logits differ by %g (max|logit| %g)", (double)dmax, (double)amax);
    for (int s = 0; s < 16; s++)
        if (ga[s] != gb[s])
            fail_msg("FAIL tiny-llama3 over 2 stages: greedy token %d is %d, one GPU %d", s, gb[s], ga[s]);
    printf("PASS tiny-llama3 f32 over 2 pipeline stages x %d TP ranks on cuda (ncclSend/ncclRecv): logits within "
           "%.2g x max|logit| of one GPU, 16 greedy tokens equal (rank %d)\n",
           size / 2, (double)(dmax / amax), anvil_comm_rank(boot));
    anvil_runtime_free(cut);
    anvil_runtime_free(one);
    free(a);
    free(b);
}

static int setup(void **state)
{
    (void)state;
    if (anvil_cuda_device_count() == 0) {
        printf("SKIP: no CUDA GPU\n");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    setenv("CMOCKA_TEST_ABORT", "1", 1); /* a failed rank ends; mpirun ends the others */
    const int under_mpirun = getenv("OMPI_COMM_WORLD_SIZE") != NULL || getenv("PMIX_RANK") != NULL;
    const int32_t n_fork = argc == 3 && strcmp(argv[1], "--fork") == 0 ? (int32_t)atoi(argv[2]) : 0;
    if (n_fork > MAX_FORK || (argc > 1 && n_fork < 1)) {
        fprintf(stderr, "usage: test_cuda_comm_nccl [--fork N (1..%d)]\n", MAX_FORK);
        return 2;
    }
    if (n_fork > 1) {
        boot = fork_ranks(n_fork);
        if (boot == NULL) {
            fprintf(stderr, "test_cuda_comm_nccl: cannot fork %d ranks\n", n_fork);
            return 1;
        }
    } else if (under_mpirun && anvil_comm_mpi_built() ? anvil_comm_create_mpi(&boot) != ANVIL_OK
                                                      : anvil_comm_create_self(&boot) != ANVIL_OK) {
        fprintf(stderr, "test_cuda_comm_nccl: %s\n", anvil_last_error());
        return 1;
    }
    const int n_dev = anvil_cuda_device_count();
    if (n_dev == 0) {
        printf("SKIP: no CUDA GPU\n");
        anvil_comm_free(boot);
        return 77;
    }
    const char *local = n_fork > 1 ? NULL : getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    device = (local ? atoi(local) : anvil_comm_rank(boot)) % n_dev;
    const anvil_status st = anvil_comm_create_nccl(boot, device, &nccl);
    if (st == ANVIL_ERR_UNSUPPORTED) {
        printf("SKIP: %s\n", anvil_last_error());
        anvil_comm_free(boot);
        return 77;
    }
    if (st != ANVIL_OK) {
        fprintf(stderr, "FAIL: anvil_comm_create_nccl on cuda:%d: %s\n", device, anvil_last_error());
        return 1;
    }
    printf("nccl communicator: rank %d of %d on cuda:%d (boot: %s)\n", anvil_comm_rank(nccl), anvil_comm_size(nccl),
           device, anvil_comm_name(boot));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_reduce),
        cmocka_unit_test(test_gather_broadcast_p2p),
        cmocka_unit_test(test_timing),
        cmocka_unit_test(test_runtime_tp),
        cmocka_unit_test(test_runtime_tp_ipc),
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_runtime_pp),
    };
    int rc = cmocka_run_group_tests(tests, setup, NULL);
    anvil_comm_free(nccl);
    anvil_comm_free(boot);
    if (n_fork > 1 && fork_rank == 0 && !fork_wait(n_fork))
        rc = 1;
    if (n_fork > 1 && fork_rank == 0)
        printf("%s: %d forked ranks\n", rc == 0 ? "PASS" : "FAIL", n_fork);
    return rc;
}
